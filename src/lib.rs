//! Root package of the Breakwater workspace.
//!
//! It owns the cross-crate end-to-end tests (`tests/`), the criterion benchmarks (`benches/`)
//! and, later, the fleet simulator. The product lives in the member crates:
//! `breakwater-protocol`, `breakwater-agent` and `breakwater-gateway`.

pub use breakwater_protocol as protocol;

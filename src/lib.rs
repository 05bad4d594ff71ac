//! Root package of the Breakwater workspace.
//!
//! It owns the cross-crate end-to-end tests (`tests/`), the criterion benchmarks (`benches/`)
//! the fleet simulator `breakwater-storm` ([`storm`]) and the do-it-yourself baseline
//! forwarder ([`baseline`]) it is compared with. The product lives in the member crates:
//! `breakwater-protocol`, `breakwater-agent` and `breakwater-gateway`.

pub use breakwater_protocol as protocol;

pub mod baseline;
pub mod storm;

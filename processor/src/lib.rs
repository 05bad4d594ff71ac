//! Breakwater processor: turns the gateway's Kafka topics into sessions, window aggregates and
//! anomalies, with state checkpointed in redb next to the computation.
//!
//! A record's path, one module per stage:
//!
//! * [`kafka`] — consumer (group or explicit assignment) and output producer.
//! * [`state`] — the pure core per input partition, built from
//!   [`dedupe`] → [`session`] → [`window`] → [`anomaly`]; writes [`output`] records with
//!   deterministic [`ids`].
//! * [`checkpoint`] — one redb write transaction holds the state and the consumed offsets; the
//!   same changes go to a Kafka [`changelog`] first, so any instance can restore a partition.
//! * [`run`] — the loop that ties them together, with [`config`] and [`metrics`].
//!
//! See `ARCHITECTURE.md` in this crate for the invariants and the exactly-once argument.

pub mod anomaly;
pub mod changelog;
pub mod checkpoint;
pub mod config;
pub mod dedupe;
pub mod ids;
pub mod kafka;
pub mod metrics;
pub mod output;
pub mod run;
pub mod session;
pub mod state;
pub mod window;

//! Breakwater gateway: an embedded MQTT broker that absorbs reconnection storms and moves device
//! batches into Kafka, acking each device only once its readings are durable.
//!
//! The path of a batch, one module per stage:
//!
//! 1. [`broker`] — rumqttd embedded in-process; the gateway reads through local links.
//! 2. [`link`] — the link consumer: decode, validate, never block.
//! 3. [`sequencer`] — per (device, epoch): duplicates, gaps, what may be acked.
//! 4. [`spool`] — the redb spool (group commit, fsync): every accepted batch in ack mode
//!    `spool`; in ack mode `kafka` only the batches Kafka does not keep up with (the others are
//!    produced from memory, see [`spool::writer`]).
//! 5. [`kafka`] — the drain into Kafka (idempotent producer), from the spool and from memory;
//!    topic creation.
//! 6. [`ack`] — acks with credit and retry hints once a batch is durable.
//!
//! Standard MQTT clients (devices without the agent) publish QoS 1 on their own topics and get
//! their PUBACK once the publish is durable ([`standard`]: `[[json_devices]]`, the entry point
//! for Sparkplug B). Sparkplug B edge nodes take their own path in ([`sparkplug`]: payload decoding, per-edge-node
//! sessions, the host application's STATE and Rebirth commands).
//!
//! Around it: [`admission`] (connect pacing and authentication), [`events`] (fleet lifecycle
//! records), [`http`] (`/metrics`, `/healthz`, `/readyz`), [`status`] (the status page, the JSON
//! API under `/api/v1/` and `breakwater-gateway status`), [`config`], [`service`] (wiring and
//! shutdown), [`stats`] (metric names).
//!
//! # Invariants
//!
//! * A device is acked up to `seq` only when every reading `<= seq` of its epoch is durable: in
//!   the spool after fsync (ack mode `spool`, or no Kafka) or in Kafka after the delivery report
//!   (ack mode `kafka`). An ack never passes a gap, except a range the device declared dropped
//!   with a floor message ([`sequencer`], `breakwater_protocol::Floor`), and only once every
//!   reading accepted before that range is durable.
//! * Nothing downstream can block the link consumer; whatever it cannot hand on is dropped,
//!   counted, and not acked, so the device resends it.
//! * Every drop or refusal has a counter (`breakwater_gateway_dropped_batches_total{reason}`,
//!   `..._invalid_payloads_total{reason}`, `..._acks_dropped_total`, `..._events_dropped_total`).

pub mod ack;
pub mod admission;
pub mod broker;
pub mod config;
pub mod events;
pub mod http;
pub mod kafka;
pub mod link;
pub mod sequencer;
pub mod service;
pub mod sessions;
pub mod sparkplug;
pub mod spool;
pub mod standard;
pub mod stats;
pub mod status;
pub mod tls;

pub use config::Config;
pub use service::Gateway;

/// `CARGO_PKG_VERSION (commit <12 hex digits>)`, or `(commit unknown)` when built without git
/// and without `BREAKWATER_GIT_COMMIT`; what `--version` prints (`build/git_version.rs`).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("BREAKWATER_GIT_COMMIT"),
    ")"
);

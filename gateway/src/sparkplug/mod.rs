//! The Sparkplug B host application: edge nodes that speak Sparkplug B (Eclipse Tahu, Ignition,
//! PLC gateways) publish to the embedded broker like any MQTT client, and the gateway turns
//! their metrics into readings in the same Kafka telemetry records as the agent's.
//!
//! The path of a Sparkplug message, one module per stage:
//!
//! 1. [`topic`] — `spBv1.0/{group}/{type}/{edge_node}[/{device}]`, and the injective mapping of
//!    group / edge node / device to a [`breakwater_protocol::DeviceId`] (`spb.{group}.{node}`,
//!    `spb.{group}.{node}.{device}`, each part escaped; see there).
//! 2. [`proto`] — the protobuf payload (Eclipse Tahu's `sparkplug_b.proto`, EPL-2.0; why
//!    hand-written prost structs and no Sparkplug crate is said there).
//! 3. [`session`] — per edge node: NBIRTH/DBIRTH alias tables, `bdSeq`, `seq` 0-255 wrapping,
//!    Rebirth requests (rate-limited), metrics -> readings, BIRTH/DEATH -> fleet events.
//! 4. [`host`] — the thread on the gateway's `sparkplug` link that runs 1-3 and hands the
//!    readings to the standard clients' ingest ([`crate::standard::Ingest`]: gateway epoch and
//!    seqs, sequencer, spool, Kafka in the agent's record format, and the QoS 1 PUBACK only once
//!    durable); it publishes the host STATE and the Rebirth NCMDs.
//!
//! Around it: [`config`] (`[sparkplug]`), [`authz`] (what an edge node may publish and
//! subscribe to, part of the gateway's one policy), [`store`] (the sessions' BIRTH tables on
//! disk, `{spool dir}/sparkplug-sessions.log`, so that a restarted gateway decodes the DATA
//! edge nodes resend before their new NBIRTH).
//!
//! # Trust boundary
//!
//! Payloads and topics come from network clients and are untrusted: every decode error,
//! unsupported metric and refused message is counted (`breakwater_gateway_sparkplug_*_total`,
//! see [`crate::stats`]) and never panics (property tests in [`proto`], [`topic`] and
//! [`session`]). The identity of the publisher is decided by authorization before the message
//! reaches the host: an edge node may publish only within its own
//! `spBv1.0/{group}/*/{edge_node}[/...]` namespace.
//!
//! # Host state
//!
//! [`state_payload`] is the Sparkplug 3.0 STATE message (`{"online":..,"timestamp":..}`, JSON,
//! retained on `spBv1.0/STATE/{host_id}`); [`rebirth_payload`] the NCMD
//! `Node Control/Rebirth = true` the host sends on a gap.

pub mod authz;
pub mod config;
pub mod host;
pub mod proto;
pub mod session;
pub mod store;
pub mod topic;

use proto::{datatype, Metric, MetricValue, Payload};

/// Name of the node control metric that asks an edge node to publish its BIRTHs again.
pub const REBIRTH_METRIC: &str = "Node Control/Rebirth";

/// The NCMD payload asking for a Rebirth: one Boolean metric `Node Control/Rebirth = true`.
#[must_use]
pub fn rebirth_payload(now_ms: u64) -> Vec<u8> {
    proto::encode(&Payload {
        timestamp: Some(now_ms),
        metrics: vec![Metric {
            name: Some(REBIRTH_METRIC.to_owned()),
            alias: None,
            timestamp: Some(now_ms),
            datatype: Some(datatype::BOOLEAN),
            is_null: None,
            value: Some(MetricValue::BooleanValue(true)),
        }],
        seq: None,
    })
}

/// The host application's STATE payload (Sparkplug 3.0): `{"online":true,"timestamp":...}`.
/// The same `timestamp` must be used for the online and the matching offline message.
#[must_use]
pub fn state_payload(online: bool, timestamp_ms: u64) -> Vec<u8> {
    format!("{{\"online\":{online},\"timestamp\":{timestamp_ms}}}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebirth_and_state_payloads() {
        let p = proto::decode(&rebirth_payload(42)).unwrap();
        assert_eq!(p.metrics.len(), 1);
        assert_eq!(p.metrics[0].name.as_deref(), Some(REBIRTH_METRIC));
        assert_eq!(p.metrics[0].datatype, Some(datatype::BOOLEAN));
        assert_eq!(p.metrics[0].value, Some(MetricValue::BooleanValue(true)));
        let v: serde_json::Value = serde_json::from_slice(&state_payload(true, 7)).unwrap();
        assert_eq!(v, serde_json::json!({"online": true, "timestamp": 7}));
    }
}

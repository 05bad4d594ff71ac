//! How Breakwater data looks in Kafka: the contract with every downstream consumer.
//!
//! # Telemetry topic (`[kafka] topic`, default `breakwater.telemetry`)
//!
//! One record per device batch.
//!
//! * key: the device id (UTF-8), so each device's records stay in one partition, in order.
//! * value: the batch, either the binary envelope ([`crate::envelope`], default) or the JSON
//!   shape of [`crate::json`] (`[kafka] encoding = "json"`).
//! * headers (all values UTF-8):
//!   * `bw-device`: device id
//!   * `bw-epoch`: epoch, decimal
//!   * `bw-first-seq`, `bw-last-seq`: the batch's sequence range, decimal, inclusive
//!   * `content-type`: [`CONTENT_TYPE_POSTCARD`] or [`CONTENT_TYPE_JSON`]
//!   * only on a batch of a *standard* MQTT client (a device without the agent: a
//!     `[[json_devices]]` topic or Sparkplug B), one record per MQTT publish:
//!     * `bw-source`: `json` or `sparkplug`
//!     * `bw-mqtt-client`: the publisher's MQTT client id
//!     * `bw-mqtt-pkid`: the publish's packet id, decimal (clients reuse packet ids: not an
//!       identity)
//!     * `bw-mqtt-dup`: `1` if the publish had the DUP flag (a resend), else `0`
//!
//! A record may be delivered more than once (a gateway restart before its ack reached the
//! device makes the device resend). Consumers dedupe by `(device, epoch, seq)`; the headers let
//! them skip a whole duplicate record without decoding it.
//!
//! A standard client's batch gets its epoch and seqs from the gateway (a random epoch per device
//! and gateway process, seqs from 1), not from the client, so `(device, epoch, seq)` never names
//! two different readings. But such a client resends a publish whose PUBACK it did not get
//! (after a reconnect, e.g. across a gateway crash, with the DUP flag set), and the gateway
//! cannot tell a resend of a publish that was already durable from a new one: it gets a new
//! `(epoch, seq)`, and the same readings can be in Kafka twice under different seqs. Readings
//! carry the device's own timestamps, so a consumer that must drop those drops readings equal
//! in `(device, metric, ts, value)`; `bw-mqtt-dup = 1` marks the records that may be such
//! resends.
//!
//! # Fleet events topic (`[kafka] events_topic`, default `breakwater.events`)
//!
//! One JSON [`FleetEvent`] per connection lifecycle event, keyed by device id.

use serde::{Deserialize, Serialize};

use crate::envelope::{self, DecodeError};
use crate::json;
use crate::limits::Limits;
use crate::types::{Batch, DeviceId};

pub const HEADER_DEVICE: &str = "bw-device";
pub const HEADER_EPOCH: &str = "bw-epoch";
pub const HEADER_FIRST_SEQ: &str = "bw-first-seq";
pub const HEADER_LAST_SEQ: &str = "bw-last-seq";
pub const HEADER_CONTENT_TYPE: &str = "content-type";
/// Standard MQTT clients only (see the module doc).
pub const HEADER_SOURCE: &str = "bw-source";
pub const HEADER_MQTT_CLIENT: &str = "bw-mqtt-client";
pub const HEADER_MQTT_PKID: &str = "bw-mqtt-pkid";
pub const HEADER_MQTT_DUP: &str = "bw-mqtt-dup";

pub const CONTENT_TYPE_POSTCARD: &str = "application/vnd.breakwater.batch.v1+postcard";
pub const CONTENT_TYPE_JSON: &str = "application/json";

pub const DEFAULT_TOPIC: &str = "breakwater.telemetry";
pub const DEFAULT_EVENTS_TOPIC: &str = "breakwater.events";

/// Value encoding of telemetry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    #[default]
    Postcard,
    Json,
}

impl Encoding {
    #[must_use]
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Postcard => CONTENT_TYPE_POSTCARD,
            Self::Json => CONTENT_TYPE_JSON,
        }
    }

    #[must_use]
    pub fn from_content_type(ct: &str) -> Option<Self> {
        match ct {
            CONTENT_TYPE_POSTCARD => Some(Self::Postcard),
            CONTENT_TYPE_JSON => Some(Self::Json),
            _ => None,
        }
    }

    /// Encodes a batch as a record value.
    #[must_use]
    pub fn encode(self, batch: &Batch) -> Vec<u8> {
        match self {
            Self::Postcard => envelope::encode_batch(batch),
            Self::Json => json::encode_batch(batch).into_bytes(),
        }
    }
}

/// Decodes a telemetry record value. With no content type, sniffs the envelope magic.
///
/// # Errors
/// See [`envelope::decode_batch`] and [`json::decode_batch`].
pub fn decode_record_value(
    value: &[u8],
    content_type: Option<&str>,
    limits: &Limits,
) -> Result<Batch, DecodeError> {
    let encoding = content_type
        .and_then(Encoding::from_content_type)
        .unwrap_or(if value.starts_with(&envelope::MAGIC) {
            Encoding::Postcard
        } else {
            Encoding::Json
        });
    match encoding {
        Encoding::Postcard => envelope::decode_batch(value, limits),
        Encoding::Json => json::decode_batch(value, limits),
    }
}

/// What happened to a device's connection, as seen by the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FleetEventKind {
    /// The device connected and published its birth message.
    Birth,
    /// The device disconnected gracefully (death message).
    Death,
    /// The connection died ungracefully (the broker delivered the last-will).
    Lost,
    /// The gateway refused the connection (admission control or authentication).
    Refused,
}

/// One record of the fleet events topic, JSON, keyed by device id:
///
/// ```json
/// {"device":"press-01","epoch":123,"kind":"birth","ts":1764115200000,"gateway_ts":1764115200012}
/// ```
///
/// `epoch` is 0 and `reason` is set for `refused` events (the device never said its epoch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetEvent {
    pub device: DeviceId,
    pub epoch: u64,
    pub kind: FleetEventKind,
    /// Device clock, ms since the Unix epoch (for `refused`, the gateway clock).
    pub ts: u64,
    /// Gateway clock when the gateway saw the event, ms since the Unix epoch.
    pub gateway_ts: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl FleetEvent {
    /// # Errors
    /// Malformed JSON or an invalid device id.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let ev: Self =
            serde_json::from_slice(bytes).map_err(|e| DecodeError::Json(e.to_string()))?;
        DeviceId::parse(ev.device.as_str())?;
        Ok(ev)
    }

    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        match serde_json::to_vec(self) {
            Ok(v) => v,
            Err(e) => unreachable!("serde_json cannot fail on FleetEvent: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Reading;

    #[test]
    fn record_value_sniffing() {
        let b = Batch {
            device: DeviceId::parse("d").unwrap(),
            epoch: 1,
            first_seq: 1,
            readings: vec![Reading::new("m", 1.5, 2)],
        };
        for enc in [Encoding::Postcard, Encoding::Json] {
            let v = enc.encode(&b);
            let l = Limits::DEFAULT;
            assert_eq!(
                decode_record_value(&v, Some(enc.content_type()), &l).unwrap(),
                b
            );
            assert_eq!(decode_record_value(&v, None, &l).unwrap(), b);
        }
    }

    #[test]
    fn fleet_event_json() {
        let ev = FleetEvent {
            device: DeviceId::parse("press-01").unwrap(),
            epoch: 123,
            kind: FleetEventKind::Birth,
            ts: 1_764_115_200_000,
            gateway_ts: 1_764_115_200_012,
            reason: None,
        };
        let text = String::from_utf8(ev.encode()).unwrap();
        assert_eq!(
            text,
            r#"{"device":"press-01","epoch":123,"kind":"birth","ts":1764115200000,"gateway_ts":1764115200012}"#
        );
        assert_eq!(FleetEvent::decode(text.as_bytes()).unwrap(), ev);
        assert!(FleetEvent::decode(
            br#"{"device":"a/b","epoch":0,"kind":"lost","ts":0,"gateway_ts":0}"#
        )
        .is_err());
    }
}

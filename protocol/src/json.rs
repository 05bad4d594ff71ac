//! JSON encoding of the protocol messages, for Kafka consumers in any language.
//!
//! A batch is exactly this shape (one object per reading, with its own `seq`):
//!
//! ```json
//! {"device":"press-01","epoch":123,"readings":[{"seq":1,"ts":1764115200000,"metric":"temp","value":21.5}]}
//! ```
//!
//! An ack is `{"device":..,"epoch":..,"upto_seq":..,"credit":..,"retry_after_ms":..}` (the
//! last key is omitted when unset) and a status is
//! `{"device":..,"epoch":..,"kind":"birth"|"death"|"lost","ts":..}`. A floor is
//! `{"device":..,"epoch":..,"first_seq":..}`.
//!
//! Note for JavaScript consumers: `epoch` is a full 64-bit integer; parse it with a big-integer
//! aware JSON reader if you need it exactly.

use serde::{Deserialize, Serialize};

use crate::envelope::DecodeError;
use crate::limits::{Limits, ValidationError};
use crate::types::{Ack, Batch, CompactString, DeviceId, Floor, Reading, Status, Value};

/// A reading value as it appears in JSON: an untagged number, boolean or string.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum JsonValue {
    I64(i64),
    F64(f64),
    Bool(bool),
    Str(CompactString),
}

impl From<&Value> for JsonValue {
    fn from(v: &Value) -> Self {
        match v {
            Value::I64(x) => Self::I64(*x),
            Value::F64(x) => Self::F64(*x),
            Value::Bool(x) => Self::Bool(*x),
            Value::Str(x) => Self::Str(x.clone()),
        }
    }
}

impl From<JsonValue> for Value {
    fn from(v: JsonValue) -> Self {
        match v {
            JsonValue::I64(x) => Self::I64(x),
            JsonValue::F64(x) => Self::F64(x),
            JsonValue::Bool(x) => Self::Bool(x),
            JsonValue::Str(x) => Self::Str(x),
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonReading {
    seq: u64,
    ts: u64,
    metric: CompactString,
    value: JsonValue,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonBatch {
    device: String,
    epoch: u64,
    readings: Vec<JsonReading>,
}

/// Encodes a batch as JSON in the documented shape.
#[must_use]
pub fn encode_batch(batch: &Batch) -> String {
    let json = JsonBatch {
        device: batch.device.as_str().to_owned(),
        epoch: batch.epoch,
        readings: batch
            .iter_seq()
            .map(|(seq, r)| JsonReading {
                seq,
                ts: r.ts,
                metric: r.metric.clone(),
                value: JsonValue::from(&r.value),
            })
            .collect(),
    };
    to_string(&json)
}

fn to_string<T: Serialize>(v: &T) -> String {
    // These types have string keys and no non-finite floats reach here through validated
    // messages; serde_json writes a non-finite float as `null` rather than failing.
    match serde_json::to_string(v) {
        Ok(s) => s,
        Err(e) => unreachable!("serde_json cannot fail on protocol types: {e}"),
    }
}

fn parse<'a, T: Deserialize<'a>>(bytes: &'a [u8], limits: &Limits) -> Result<T, DecodeError> {
    if bytes.len() > limits.max_payload_bytes {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            limit: limits.max_payload_bytes,
        });
    }
    serde_json::from_slice(bytes).map_err(|e| DecodeError::Json(e.to_string()))
}

/// Decodes and validates a JSON batch. Sequence numbers must be consecutive.
///
/// # Errors
/// [`DecodeError::Json`] for malformed JSON, [`DecodeError::Invalid`] for a rule broken.
pub fn decode_batch(bytes: &[u8], limits: &Limits) -> Result<Batch, DecodeError> {
    let json: JsonBatch = parse(bytes, limits)?;
    let device = DeviceId::parse(json.device)?;
    let first_seq = json.readings.first().map_or(0, |r| r.seq);
    let mut readings = Vec::with_capacity(json.readings.len());
    for (expected, r) in (first_seq..).zip(json.readings) {
        if r.seq != expected {
            return Err(ValidationError::NonConsecutiveSeq {
                expected,
                found: r.seq,
            }
            .into());
        }
        readings.push(Reading {
            ts: r.ts,
            metric: r.metric,
            value: r.value.into(),
        });
    }
    let batch = Batch {
        device,
        epoch: json.epoch,
        first_seq,
        readings,
    };
    batch.validate(limits)?;
    Ok(batch)
}

/// Encodes an ack as JSON.
#[must_use]
pub fn encode_ack(ack: &Ack) -> String {
    to_string(&JsonAck::from(ack))
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonAck {
    device: String,
    epoch: u64,
    upto_seq: u64,
    credit: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retry_after_ms: Option<u32>,
}

impl From<&Ack> for JsonAck {
    fn from(a: &Ack) -> Self {
        Self {
            device: a.device.as_str().to_owned(),
            epoch: a.epoch,
            upto_seq: a.upto_seq,
            credit: a.credit,
            retry_after_ms: a.retry_after_ms,
        }
    }
}

/// Decodes and validates a JSON ack.
///
/// # Errors
/// [`DecodeError::Json`] or [`DecodeError::Invalid`].
pub fn decode_ack(bytes: &[u8]) -> Result<Ack, DecodeError> {
    let j: JsonAck = parse(bytes, &Limits::DEFAULT)?;
    Ok(Ack {
        device: DeviceId::parse(j.device)?,
        epoch: j.epoch,
        upto_seq: j.upto_seq,
        credit: j.credit,
        retry_after_ms: j.retry_after_ms,
    })
}

/// Encodes a status message as JSON.
#[must_use]
pub fn encode_status(status: &Status) -> String {
    to_string(status)
}

/// Decodes and validates a JSON status message.
///
/// # Errors
/// [`DecodeError::Json`] or [`DecodeError::Invalid`].
pub fn decode_status(bytes: &[u8]) -> Result<Status, DecodeError> {
    let s: Status = parse(bytes, &Limits::DEFAULT)?;
    s.validate()?;
    Ok(s)
}

/// Encodes a floor declaration as JSON.
#[must_use]
pub fn encode_floor(floor: &Floor) -> String {
    to_string(floor)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonFloor {
    device: DeviceId,
    epoch: u64,
    first_seq: u64,
}

/// Decodes and validates a JSON floor declaration.
///
/// # Errors
/// [`DecodeError::Json`] or [`DecodeError::Invalid`] (including `first_seq` 0).
pub fn decode_floor(bytes: &[u8]) -> Result<Floor, DecodeError> {
    let j: JsonFloor = parse(bytes, &Limits::DEFAULT)?;
    let f = Floor {
        device: j.device,
        epoch: j.epoch,
        first_seq: j.first_seq,
    };
    f.validate()?;
    Ok(f)
}

//! The messages exchanged between agents and the gateway.

use std::fmt;

pub use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use crate::limits::{self, ValidationError};

/// A device identifier: 1-64 characters of `[A-Za-z0-9._-]`.
///
/// Constructed only through [`DeviceId::parse`] (or by the decoders, which validate every
/// message they return), so a `DeviceId` is always safe to splice into an MQTT topic or a
/// Kafka key.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeviceId(String);

impl DeviceId {
    /// Longest accepted device id, in bytes (all accepted characters are ASCII).
    pub const MAX_LEN: usize = 64;

    /// Validates and wraps a device id.
    ///
    /// # Errors
    /// [`ValidationError::DeviceIdEmpty`], [`ValidationError::DeviceIdTooLong`] or
    /// [`ValidationError::DeviceIdInvalidChar`].
    pub fn parse(s: impl Into<String>) -> Result<Self, ValidationError> {
        let s = s.into();
        limits::check_device_id(&s)?;
        Ok(Self(s))
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl AsRef<str> for DeviceId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for DeviceId {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The value of one reading.
///
/// In postcard it is tagged by variant index. In JSON ([`crate::json`]) it is a bare number,
/// boolean or string: whole numbers decode as [`Value::I64`]; a float is always written with a
/// fraction or exponent (`21.0`), so it decodes back as [`Value::F64`]. Non-finite floats are
/// rejected by validation (JSON cannot carry them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    I64(i64),
    F64(f64),
    Bool(bool),
    /// Short strings (up to 24 bytes) are stored inline, without a heap allocation.
    Str(CompactString),
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Self::F64(v)
    }
}
impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Self::I64(v)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Self::Bool(v)
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Self::Str(v.into())
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Self::Str(v.into())
    }
}
impl From<CompactString> for Value {
    fn from(v: CompactString) -> Self {
        Self::Str(v)
    }
}

/// One measurement. Its sequence number is given by its position in a [`Batch`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// Milliseconds since the Unix epoch.
    pub ts: u64,
    /// Metric name; names up to 24 bytes are stored inline, without a heap allocation.
    pub metric: CompactString,
    pub value: Value,
}

impl Reading {
    pub fn new(metric: impl Into<CompactString>, value: impl Into<Value>, ts: u64) -> Self {
        Self {
            ts,
            metric: metric.into(),
            value: value.into(),
        }
    }
}

/// Readings from one device with consecutive sequence numbers `first_seq, first_seq + 1, ...`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub device: DeviceId,
    /// Random id of the device's buffer; a new buffer starts a new epoch and restarts `seq`.
    pub epoch: u64,
    /// Sequence number of `readings[0]`; sequence numbers start at 1.
    pub first_seq: u64,
    pub readings: Vec<Reading>,
}

impl Batch {
    /// Sequence number of the last reading (equal to `first_seq - 1` for an empty batch, which
    /// validation rejects).
    #[must_use]
    pub fn last_seq(&self) -> u64 {
        (self.first_seq + self.readings.len() as u64).saturating_sub(1)
    }

    /// Readings paired with their sequence numbers.
    pub fn iter_seq(&self) -> impl Iterator<Item = (u64, &Reading)> {
        (self.first_seq..).zip(self.readings.iter())
    }
}

/// The gateway's answer to a device: everything up to `upto_seq` (inclusive) in `epoch` is
/// durable and may be deleted from the device's buffer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub device: DeviceId,
    pub epoch: u64,
    /// Cumulative: every reading with `seq <= upto_seq` is durable. 0 means "nothing yet".
    pub upto_seq: u64,
    /// How many batches the device may have in flight (unacknowledged) from now on.
    pub credit: u32,
    /// When set, the device should wait this long before sending more (backpressure) or, on a
    /// refused connection, before reconnecting.
    pub retry_after_ms: Option<u32>,
}

/// A device's declaration that it will never send a seq below `first_seq` of `epoch` again:
/// every reading below it was either acked by the gateway or dropped by the device (its buffer's
/// `drop-oldest` policy). Travels on the telemetry topic, ordered with the batches.
///
/// `first_seq` is the oldest seq the device still stores (its buffer's floor), so the device can
/// derive it at any moment without remembering what it sent, also after a restart. It never
/// decreases within an epoch. The gateway treats the seqs between what it accepted and
/// `first_seq` as dropped at the device: it counts them and acks past them once everything it
/// accepted before them is durable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Floor {
    pub device: DeviceId,
    pub epoch: u64,
    /// Oldest seq the device may still send (>= 1). `first_seq = 1` declares nothing.
    pub first_seq: u64,
}

/// Lifecycle of a device's connection, published on its status topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusKind {
    /// Published by the agent right after it connects.
    Birth,
    /// Published by the agent before a graceful disconnect.
    Death,
    /// The MQTT last-will: delivered by the broker when the connection dies ungracefully.
    Lost,
}

impl StatusKind {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Birth => "birth",
            Self::Death => "death",
            Self::Lost => "lost",
        }
    }
}

/// A device status message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub device: DeviceId,
    pub epoch: u64,
    pub kind: StatusKind,
    /// Milliseconds since the Unix epoch when the agent produced the message (for `Lost`, when
    /// the connection that registered the will was made).
    pub ts: u64,
}

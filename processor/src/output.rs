//! The records the processor writes: JSON, keyed by device id, each with a deterministic `id`.
//!
//! A replay after a crash re-emits records with the same `id`; consumers drop repeats by `id`.

use serde::{Deserialize, Serialize};

/// Which session a [`SessionRecord`] describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionKind {
    /// From a birth to the matching death or last-will (fleet events topic).
    Connectivity,
    /// A run of readings with no gap longer than `[sessions] inactivity_gap`, in event time.
    Activity,
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// Graceful disconnect (death message).
    Death,
    /// Ungraceful disconnect (the broker delivered the last-will).
    Lost,
    /// A new birth arrived while the session was open: the end was never seen.
    Superseded,
    /// No reading for longer than the inactivity gap (event time, closed by the watermark).
    Inactivity,
    /// The device was not seen for `state.device_ttl` (partition event time) and its state was
    /// evicted; the session was still open.
    Expired,
}

/// `sessions` topic record.
///
/// ```json
/// {"id":"5f0c...","device":"press-01","kind":"connectivity","epoch":7,"start":1764115200000,
///  "end":1764115260000,"duration_ms":60000,"readings":120,"end_reason":"death"}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Connectivity: hash of (device, epoch, start); activity: hash of (device, start).
    pub id: String,
    pub device: String,
    pub kind: SessionKind,
    /// Connectivity: the epoch of the birth; activity: the epoch of the first reading.
    pub epoch: u64,
    /// Event time, ms since the Unix epoch.
    pub start: u64,
    pub end: u64,
    pub duration_ms: u64,
    /// Readings counted in the session (deduplicated, late-dropped excluded).
    pub readings: u64,
    pub end_reason: EndReason,
}

/// `windows` topic record: one closed tumbling window of one (device, metric).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowRecord {
    /// Hash of (device, metric, start).
    pub id: String,
    pub device: String,
    pub metric: String,
    /// Inclusive start and exclusive end, event time, ms.
    pub start: u64,
    pub end: u64,
    pub count: u64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    /// Population standard deviation (Welford).
    pub stddev: f64,
}

/// `anomalies` topic record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AnomalyRecord {
    /// One reading far from its (device, metric) EWMA baseline. Keyed by device.
    Metric {
        /// Hash of (device, epoch, seq): a reading is named by those forever.
        id: String,
        device: String,
        metric: String,
        epoch: u64,
        seq: u64,
        ts: u64,
        value: f64,
        baseline_mean: f64,
        baseline_stddev: f64,
        z: f64,
        threshold: f64,
    },
    /// Connects (births and refusals) in one fleet window of one input partition far above their
    /// baseline: a reconnect storm seen downstream. Keyed by `fleet`.
    ReconnectStorm {
        /// Hash of (partition, window start).
        id: String,
        partition: i32,
        start: u64,
        end: u64,
        connects: u64,
        baseline_mean: f64,
        baseline_stddev: f64,
        z: f64,
        threshold: f64,
    },
}

impl AnomalyRecord {
    #[must_use]
    pub fn id(&self) -> &str {
        match self {
            Self::Metric { id, .. } | Self::ReconnectStorm { id, .. } => id,
        }
    }
}

/// `late` topic record: one reading older than its device's watermark (its own newest event
/// time minus `windows.allowed_lateness`). It is in no window, session or baseline; it is
/// written here so that nothing the agent delivered disappears silently.
///
/// ```json
/// {"id":"…","device":"press-01","epoch":7,"seq":301,"metric":"temp","ts":1764115500000,
///  "value":21.5,"watermark":1764115530000}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LateRecord {
    /// Hash of (device, epoch, seq), like the reading's metric anomaly would be.
    pub id: String,
    pub device: String,
    pub epoch: u64,
    pub seq: u64,
    pub metric: String,
    pub ts: u64,
    /// The reading's value as JSON (number, bool or string).
    pub value: serde_json::Value,
    /// The device's watermark when the reading arrived.
    pub watermark: u64,
}

/// Key used for fleet-level records.
pub const FLEET_KEY: &str = "fleet";

/// One output of the core, before it is written to Kafka.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Session(SessionRecord),
    Window(WindowRecord),
    Anomaly(AnomalyRecord),
    Late(LateRecord),
}

impl Output {
    #[must_use]
    pub fn id(&self) -> &str {
        match self {
            Self::Session(s) => &s.id,
            Self::Window(w) => &w.id,
            Self::Anomaly(a) => a.id(),
            Self::Late(l) => &l.id,
        }
    }

    /// The Kafka key: the device id, or [`FLEET_KEY`].
    #[must_use]
    pub fn key(&self) -> &str {
        match self {
            Self::Session(s) => &s.device,
            Self::Window(w) => &w.device,
            Self::Anomaly(AnomalyRecord::Metric { device, .. }) => device,
            Self::Anomaly(AnomalyRecord::ReconnectStorm { .. }) => FLEET_KEY,
            Self::Late(l) => &l.device,
        }
    }

    /// The JSON value.
    #[must_use]
    pub fn to_json(&self) -> Vec<u8> {
        let r = match self {
            Self::Session(s) => serde_json::to_vec(s),
            Self::Window(w) => serde_json::to_vec(w),
            Self::Anomaly(a) => serde_json::to_vec(a),
            Self::Late(l) => serde_json::to_vec(l),
        };
        // Plain structs of strings and numbers; NaN/inf are never produced (see window.rs).
        r.unwrap_or_default()
    }
}

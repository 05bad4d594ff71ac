//! Gateway configuration: TOML into validated types, defaults in one place.
//!
//! Every section is `#[serde(default, deny_unknown_fields)]`: an empty file (or no file) is the
//! embedded quick-start setup — MQTT on `127.0.0.1:1883`, metrics on `127.0.0.1:9464`, the
//! spool in `./breakwater-data`, no Kafka. [`Config::validate`] reports every problem at once,
//! each with its key, so `check-config` can print them all.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use breakwater_protocol::kafka::{Encoding, DEFAULT_EVENTS_TOPIC, DEFAULT_TOPIC};
use breakwater_protocol::Limits;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::admission::{AdmissionConfig, AuthConfig, AuthMode};
use crate::standard::config::{JsonDeviceConfig, StandardConfig};

/// `config/gateway.toml`: every key with its default and what it does.
pub const DOCUMENTED_DEFAULTS: &str = include_str!("../../config/gateway.toml");

/// Environment variable that overrides `[kafka] brokers`.
pub const ENV_KAFKA_BROKERS: &str = "BREAKWATER_KAFKA_BROKERS";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub mqtt: MqttConfig,
    pub kafka: KafkaConfig,
    pub spool: SpoolConfig,
    pub ack: AckConfig,
    pub pipeline: PipelineConfig,
    pub metrics: MetricsConfig,
    pub shutdown: ShutdownConfig,
    pub admission: AdmissionConfig,
    pub auth: AuthConfig,
    pub sparkplug: crate::sparkplug::config::SparkplugConfig,
    /// Standard MQTT clients (issue 13): PUBACK bounds.
    pub standard: StandardConfig,
    /// Topics of plain JSON devices (`[[json_devices]]`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub json_devices: Vec<JsonDeviceConfig>,
}

/// The embedded MQTT broker (rumqttd).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// MQTT 3.1.1 listener, plaintext (see `plaintext`).
    pub listen: SocketAddr,
    /// Serve the plaintext listener. `false`: MQTT only over TLS (`[mqtt.tls]`).
    pub plaintext: bool,
    /// Largest accepted MQTT packet payload, bytes. At least the protocol's payload limit.
    pub max_payload_bytes: usize,
    /// Time a new connection has to send CONNECT, ms.
    pub connection_timeout_ms: u16,
    /// QoS 1 messages in flight to one device (acks to it).
    pub max_inflight_count: usize,
    /// In-memory log segment size of the telemetry subscription, bytes. The gateway's link is
    /// skipped ahead (data lost there, recovered by the devices' resend) when it falls more than
    /// `segment_bytes * segment_count` behind.
    pub segment_bytes: usize,
    pub segment_count: usize,
    /// Persistent sessions (clients connecting with `clean_session = false`) kept for clients
    /// that have gone, at most; saving one more drops the oldest (rumqttd patch 21).
    pub max_saved_sessions: usize,
    /// Seconds a persistent session is kept after its client has gone (rumqttd patch 21).
    pub saved_session_expiry_secs: u64,
    /// Keep persistent sessions (client id, subscriptions) in `{spool.dir}/mqtt-sessions.jsonl`, so
    /// they survive a gateway restart (`crate::sessions`, rumqttd patch 23). `false`: in memory
    /// only; after a restart every client gets `session present = 0`.
    pub persist_sessions: bool,
    /// The TLS listener, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
}

/// `[mqtt.tls]`: an MQTT listener over TLS (rustls). Certificates reload on SIGHUP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// e.g. `0.0.0.0:8883`.
    pub listen: SocketAddr,
    /// PEM: the server certificate, then its chain.
    pub cert_file: PathBuf,
    /// PEM: the server's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM: CA certificates. Set: every client must present a certificate signed by one of them;
    /// its subject CN is the device id (`[auth] mode = "mtls"` requires this).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,
    /// Longest a TLS handshake may take, ms (it runs on the connection's own task).
    #[serde(default = "TlsConfig::default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
}

impl TlsConfig {
    fn default_handshake_timeout_ms() -> u64 {
        5_000
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            plaintext: true,
            max_payload_bytes: Limits::DEFAULT.max_payload_bytes + 1024,
            connection_timeout_ms: 10_000,
            max_inflight_count: 100,
            segment_bytes: 16 * 1024 * 1024,
            segment_count: 4,
            max_saved_sessions: 10_000,
            saved_session_expiry_secs: 3_600,
            persist_sessions: true,
            tls: None,
        }
    }
}

impl MqttConfig {
    /// The listeners that are on: (name, address, TLS).
    #[must_use]
    pub fn listeners(&self) -> Vec<(&'static str, SocketAddr, Option<&TlsConfig>)> {
        let mut l = Vec::new();
        if self.plaintext {
            l.push(("plain", self.listen, None));
        }
        if let Some(tls) = &self.tls {
            l.push(("tls", tls.listen, Some(tls)));
        }
        l
    }
}

/// Value compression of the Kafka producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    #[default]
    Lz4,
    Zstd,
}

impl Compression {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Gzip => "gzip",
            Self::Snappy => "snappy",
            Self::Lz4 => "lz4",
            Self::Zstd => "zstd",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port,host:port`. Empty: no Kafka, the gateway runs on its spool
    /// alone. Overridden by `BREAKWATER_KAFKA_BROKERS`.
    pub brokers: Option<String>,
    pub topic: String,
    pub events_topic: String,
    pub encoding: Encoding,
    pub compression: Compression,
    /// librdkafka `linger.ms`.
    pub linger_ms: u32,
    /// librdkafka `batch.size`, bytes.
    pub batch_bytes: u32,
    /// Records handed to the producer and not yet delivered, at most.
    pub max_in_flight_records: usize,
    /// Ack mode `kafka`: batches produced straight from memory (past the spool) and not yet
    /// delivered, at most. While Kafka keeps up, batches skip the spool; beyond this many, or
    /// while the spool holds batches not yet produced, they go through the spool. 0: every
    /// batch goes through the spool.
    pub direct_max_in_flight_records: usize,
    /// librdkafka `message.timeout.ms`; 0 = retry forever (the spool keeps the data either way).
    pub message_timeout_ms: u32,
    /// Create `topic` and `events_topic` at start-up when missing.
    pub create_topics: bool,
    pub partitions: i32,
    pub replication: i32,
    /// Extra librdkafka properties (`security.protocol`, `sasl.*`, ...), passed through.
    pub properties: std::collections::BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: None,
            topic: DEFAULT_TOPIC.to_owned(),
            events_topic: DEFAULT_EVENTS_TOPIC.to_owned(),
            encoding: Encoding::Postcard,
            compression: Compression::Lz4,
            linger_ms: 5,
            batch_bytes: 1_000_000,
            max_in_flight_records: 20_000,
            direct_max_in_flight_records: 5_000,
            message_timeout_ms: 0,
            create_topics: true,
            partitions: 6,
            replication: 1,
            properties: std::collections::BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    /// The brokers, if Kafka is configured (non-empty).
    #[must_use]
    pub fn brokers(&self) -> Option<&str> {
        self.brokers
            .as_deref()
            .map(str::trim)
            .filter(|b| !b.is_empty())
    }
}

/// When a device gets its ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    /// After Kafka's delivery report: while Kafka is away devices keep their data. Without
    /// `[kafka] brokers` this falls back to `spool` (the spool is then the end of the line).
    #[default]
    Kafka,
    /// After the spool's fsync: devices drain even while Kafka is away.
    Spool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    /// Bytes of batches the spool holds at most; beyond it new batches are refused (not acked).
    pub max_bytes: u64,
    pub ack_mode: AckMode,
    /// Batches written per fsync'd transaction, at most.
    pub max_batches_per_commit: usize,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("./breakwater-data"),
            max_bytes: 1024 * 1024 * 1024,
            ack_mode: AckMode::Kafka,
            max_batches_per_commit: 2_000,
        }
    }
}

/// Credit and retry hints in acks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AckConfig {
    /// Credit (batches in flight) granted when the gateway is idle.
    pub max_credit: u32,
    /// Credit granted under pressure, at least.
    pub min_credit: u32,
    /// Pressure (0..1, the fuller of the queue and the spool) above which acks carry
    /// `retry_after_ms`.
    pub retry_after_pressure: f64,
    /// `retry_after_ms` at full pressure.
    pub max_retry_after_ms: u32,
    /// Acks waiting to be published, at most (beyond: dropped and counted; the device resends
    /// and is re-acked).
    pub queue_capacity: usize,
}

impl Default for AckConfig {
    fn default() -> Self {
        Self {
            max_credit: 16,
            min_credit: 1,
            retry_after_pressure: 0.5,
            max_retry_after_ms: 5_000,
            queue_capacity: 65_536,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// Accepted batches waiting for the spool writer, at most. When full the link consumer drops
    /// the batch (counted, not acked: the device resends).
    pub queue_capacity: usize,
    /// Status and refusal events waiting for the events producer, at most.
    pub events_queue_capacity: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 8_192,
            events_queue_capacity: 16_384,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// HTTP listener for `/metrics`, `/healthz`, `/readyz`.
    pub listen: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// Time to flush in-flight batches to the spool and Kafka on stop. Keep it below systemd's
    /// `TimeoutStopSec`.
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(10),
        }
    }
}

/// A configuration problem, with the key it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("{} problem(s) in the configuration:\n{}", .0.len(), .0.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

impl Config {
    /// Parses TOML text (no validation, no environment override).
    ///
    /// # Errors
    /// Malformed TOML, unknown keys, or values of the wrong type; the message names the key.
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Loads `path` (or the defaults with `None`), applies `BREAKWATER_KAFKA_BROKERS`, validates.
    ///
    /// # Errors
    /// [`ConfigError::Read`], [`ConfigError::Parse`], or [`ConfigError::Invalid`] listing every
    /// problem.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut cfg = match path {
            None => Self::default(),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_owned(),
                    source,
                })?;
                Self::from_toml(&text).map_err(|source| ConfigError::Parse {
                    path: p.to_owned(),
                    source: Box::new(source),
                })?
            }
        };
        cfg.apply_env(|k| std::env::var(k).ok());
        let problems = cfg.validate();
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// Applies environment overrides (`BREAKWATER_KAFKA_BROKERS`); `get` reads a variable.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) {
        if let Some(b) = get(ENV_KAFKA_BROKERS) {
            self.kafka.brokers = Some(b);
        }
    }

    /// The effective ack mode: `spool` when no Kafka is configured.
    #[must_use]
    pub fn effective_ack_mode(&self) -> AckMode {
        if self.kafka.brokers().is_none() {
            AckMode::Spool
        } else {
            self.spool.ack_mode
        }
    }

    /// The default configuration as commented TOML (`print-default-config`): the documented
    /// `config/gateway.toml`, which a test keeps equal to [`Config::default`].
    #[must_use]
    pub fn default_toml() -> &'static str {
        DOCUMENTED_DEFAULTS
    }

    /// TLS, the listeners, and what the auth mode needs from them.
    fn validate_listeners(&self, bad: &mut impl FnMut(&str, String)) {
        if !self.mqtt.plaintext && self.mqtt.tls.is_none() {
            bad(
                "mqtt.plaintext",
                "false, but there is no [mqtt.tls] listener: no device could connect".into(),
            );
        }
        if let Some(tls) = &self.mqtt.tls {
            if self.mqtt.plaintext && tls.listen == self.mqtt.listen && tls.listen.port() != 0 {
                bad(
                    "mqtt.tls.listen",
                    format!("same address as mqtt.listen ({})", self.mqtt.listen),
                );
            }
            if tls.handshake_timeout_ms == 0 {
                bad("mqtt.tls.handshake_timeout_ms", "must be > 0".into());
            }
            if let Err(e) = crate::tls::server_config(tls) {
                bad("mqtt.tls", e.to_string());
            }
        }
        let mtls_ready = self
            .mqtt
            .tls
            .as_ref()
            .is_some_and(|t| t.client_ca_file.is_some());
        if self.auth.mode == AuthMode::Mtls && !mtls_ready {
            bad(
                "auth.mode",
                "\"mtls\" needs [mqtt.tls] with client_ca_file (the device id comes from the client certificate)".into(),
            );
        }
        if self.auth.mode == AuthMode::Open && !self.auth.allow_open_on_network {
            for (name, addr, _) in self.mqtt.listeners() {
                if !addr.ip().is_loopback() {
                    bad(
                        "auth.mode",
                        format!(
                            "\"open\" on the {name} listener {addr}, which is not loopback: any client on the network could claim any device id; use \"file\" or \"mtls\", or set auth.allow_open_on_network = true"
                        ),
                    );
                }
            }
        }
    }

    /// True when `open` mode serves a listener that is not loopback (allowed only with
    /// `allow_open_on_network`; warned about at every start).
    #[must_use]
    pub fn open_on_network(&self) -> bool {
        self.auth.mode == AuthMode::Open
            && self
                .mqtt
                .listeners()
                .iter()
                .any(|(_, addr, _)| !addr.ip().is_loopback())
    }

    /// Every problem, each with its key.
    #[must_use]
    pub fn validate(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        let mut bad = |key: &str, message: String| {
            p.push(Problem {
                key: key.to_owned(),
                message,
            });
        };
        let limit = Limits::DEFAULT.max_payload_bytes;
        if self.mqtt.max_payload_bytes < limit {
            bad(
                "mqtt.max_payload_bytes",
                format!("must be at least the protocol payload limit {limit}"),
            );
        }
        if self.mqtt.connection_timeout_ms == 0 {
            bad("mqtt.connection_timeout_ms", "must be > 0".into());
        }
        if self.mqtt.max_inflight_count == 0 {
            bad("mqtt.max_inflight_count", "must be > 0".into());
        }
        if self.mqtt.segment_bytes < 64 * 1024 {
            bad("mqtt.segment_bytes", "must be at least 65536".into());
        }
        if self.mqtt.segment_count == 0 {
            bad("mqtt.segment_count", "must be > 0".into());
        }
        if self.mqtt.saved_session_expiry_secs == 0 {
            bad(
                "mqtt.saved_session_expiry_secs",
                "must be > 0 (max_saved_sessions = 0 keeps none)".into(),
            );
        }
        if self.mqtt.listen == self.metrics.listen && self.mqtt.listen.port() != 0 {
            bad(
                "metrics.listen",
                format!("same address as mqtt.listen ({})", self.mqtt.listen),
            );
        }
        self.validate_listeners(&mut bad);
        crate::standard::config::validate(&self.standard, &self.json_devices, &mut bad);
        let topic_ok = |t: &str| {
            !t.is_empty()
                && t.len() <= 249
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        };
        if !topic_ok(&self.kafka.topic) {
            bad(
                "kafka.topic",
                format!("{:?} is not a valid Kafka topic name", self.kafka.topic),
            );
        }
        if !topic_ok(&self.kafka.events_topic) {
            bad(
                "kafka.events_topic",
                format!(
                    "{:?} is not a valid Kafka topic name",
                    self.kafka.events_topic
                ),
            );
        }
        if self.kafka.topic == self.kafka.events_topic {
            bad(
                "kafka.events_topic",
                "must differ from kafka.topic".to_owned(),
            );
        }
        if let Some(b) = self.kafka.brokers() {
            for (i, part) in b.split(',').enumerate() {
                let part = part.trim();
                let ok = part
                    .rsplit_once(':')
                    .is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok());
                if !ok {
                    bad(
                        "kafka.brokers",
                        format!("entry {i} ({part:?}) is not host:port"),
                    );
                }
            }
        }
        if self.kafka.partitions < 1 {
            bad("kafka.partitions", "must be >= 1".into());
        }
        if self.kafka.replication < 1 {
            bad("kafka.replication", "must be >= 1".into());
        }
        if self.kafka.batch_bytes == 0 {
            bad("kafka.batch_bytes", "must be > 0".into());
        }
        if self.kafka.max_in_flight_records == 0 {
            bad("kafka.max_in_flight_records", "must be > 0".into());
        }
        if self.spool.dir.as_os_str().is_empty() {
            bad("spool.dir", "must not be empty".into());
        }
        if self.spool.max_bytes < 1024 * 1024 {
            bad("spool.max_bytes", "must be at least 1 MiB".into());
        }
        if self.spool.max_batches_per_commit == 0 {
            bad("spool.max_batches_per_commit", "must be > 0".into());
        }
        if self.ack.max_credit == 0 {
            bad("ack.max_credit", "must be > 0".into());
        }
        if self.ack.min_credit == 0 || self.ack.min_credit > self.ack.max_credit {
            bad(
                "ack.min_credit",
                "must be between 1 and ack.max_credit".into(),
            );
        }
        if !(0.0..=1.0).contains(&self.ack.retry_after_pressure) {
            bad("ack.retry_after_pressure", "must be within 0..=1".into());
        }
        if self.ack.queue_capacity == 0 {
            bad("ack.queue_capacity", "must be > 0".into());
        }
        if self.pipeline.queue_capacity == 0 {
            bad("pipeline.queue_capacity", "must be > 0".into());
        }
        if self.pipeline.events_queue_capacity == 0 {
            bad("pipeline.events_queue_capacity", "must be > 0".into());
        }
        if self.shutdown.deadline.is_zero() {
            bad("shutdown.deadline", "must be > 0".into());
        }
        // Their keys are full dotted paths already (`admission.connect_rate_per_sec`).
        for (key, message) in self.admission.validate() {
            bad(&key, message);
        }
        for (key, message) in self.auth.validate() {
            bad(&key, message);
        }
        self.sparkplug.validate(&mut bad);
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_round_trip() {
        let cfg = Config::default();
        assert!(cfg.validate().is_empty(), "{:?}", cfg.validate());
        let back = Config::from_toml(Config::default_toml()).unwrap();
        assert!(back.validate().is_empty());
        assert_eq!(back.mqtt.listen.to_string(), "127.0.0.1:1883");
        assert_eq!(back.metrics.listen.to_string(), "127.0.0.1:9464");
        assert_eq!(back.spool.dir, PathBuf::from("./breakwater-data"));
        assert!(back.kafka.brokers().is_none());
        assert_eq!(back.effective_ack_mode(), AckMode::Spool);
    }

    /// `config/gateway.toml` documents every key, and its values are the defaults.
    #[test]
    fn documented_file_is_the_defaults_and_complete() {
        let doc = Config::from_toml(DOCUMENTED_DEFAULTS).unwrap();
        let a = toml::to_string(&doc).unwrap();
        let b = toml::to_string(&Config::default()).unwrap();
        assert_eq!(a, b, "config/gateway.toml differs from Config::default()");
        let full: toml::Table = toml::from_str(&b).unwrap();
        for (section, v) in &full {
            let Some(t) = v.as_table() else { continue };
            assert!(
                DOCUMENTED_DEFAULTS.contains(&format!("[{section}]")),
                "section [{section}] not documented"
            );
            for (key, val) in t {
                if val.is_table() {
                    assert!(
                        DOCUMENTED_DEFAULTS.contains(&format!("[{section}.{key}]")),
                        "table [{section}.{key}] not documented"
                    );
                    continue;
                }
                assert!(
                    DOCUMENTED_DEFAULTS.contains(&format!("\n{key} = ")),
                    "key {section}.{key} not documented"
                );
            }
        }
        // The two optional keys are shown commented out.
        assert!(DOCUMENTED_DEFAULTS.contains("# brokers = "));
        assert!(DOCUMENTED_DEFAULTS.contains("# credentials_file = "));
    }

    #[test]
    fn reports_every_problem_with_its_key() {
        let cfg = Config::from_toml(
            r#"
            [mqtt]
            max_payload_bytes = 10
            [kafka]
            brokers = "nohost,also:bad"
            topic = "bad topic"
            partitions = 0
            [ack]
            min_credit = 0
            "#,
        )
        .unwrap();
        let keys: Vec<_> = cfg.validate().into_iter().map(|p| p.key).collect();
        for k in [
            "mqtt.max_payload_bytes",
            "kafka.brokers",
            "kafka.topic",
            "kafka.partitions",
            "ack.min_credit",
        ] {
            assert!(keys.iter().any(|x| x == k), "{k} missing from {keys:?}");
        }
    }

    /// `config/gateway.production.toml` is valid but for the certificate files, which only exist
    /// on a real plant server.
    #[test]
    fn the_production_example_is_valid_but_for_its_certificate_files() {
        let cfg = Config::from_toml(include_str!("../../config/gateway.production.toml")).unwrap();
        let problems = cfg.validate();
        assert!(!problems.is_empty());
        assert!(problems.iter().all(|p| p.key == "mqtt.tls"), "{problems:?}");
        assert_eq!(cfg.auth.mode, AuthMode::Mtls);
        assert!(!cfg.mqtt.plaintext);
        assert!(!cfg.open_on_network());
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let err = Config::from_toml("[kafka]\nbrokerz = \"x:1\"\n").unwrap_err();
        assert!(err.to_string().contains("brokerz"), "{err}");
    }

    #[test]
    fn env_overrides_brokers() {
        let mut cfg = Config::default();
        cfg.apply_env(|k| (k == ENV_KAFKA_BROKERS).then(|| "10.0.0.1:9092".to_owned()));
        assert_eq!(cfg.kafka.brokers(), Some("10.0.0.1:9092"));
        assert_eq!(cfg.effective_ack_mode(), AckMode::Kafka);
    }
}

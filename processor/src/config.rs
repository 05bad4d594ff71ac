//! Configuration: a TOML file, with environment overrides for what differs per deployment.
//!
//! Every key, its default and its meaning is in `processor/config/processor.toml`. Parsing
//! collects *every* problem with its key ([`ConfigErrors`]) instead of stopping at the first, so
//! `check-config` shows them all at once.
//!
//! Environment overrides (applied before validation):
//! * `BREAKWATER_PROCESSOR_BROKERS` → `kafka.brokers`
//! * `BREAKWATER_PROCESSOR_GROUP_INSTANCE_ID` → `kafka.group_instance_id`
//! * `BREAKWATER_PROCESSOR_ASSIGN` (`"0,1"`, or `""` for group mode) → `kafka.assign`
//! * `BREAKWATER_PROCESSOR_STATE_PATH` → `state.path`
//! * `BREAKWATER_PROCESSOR_METRICS_LISTEN` → `metrics.listen`

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use toml::{Table, Value};

use crate::anomaly::{FleetParams, MetricParams};
use crate::state::Params;

/// Whether outputs, changelog and offsets are written in Kafka transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExactlyOnce {
    /// Transactions if the broker supports them, else at-least-once (logged).
    Auto,
    /// Transactions, or refuse to start.
    On,
    /// At-least-once with deterministic ids.
    Off,
}

/// Kafka settings.
#[derive(Debug, Clone, PartialEq)]
pub struct KafkaConfig {
    pub brokers: String,
    pub telemetry_topic: String,
    pub events_topic: String,
    pub sessions_topic: String,
    pub anomalies_topic: String,
    /// `None`: window aggregates are not written.
    pub windows_topic: Option<String>,
    /// Readings beyond their device's allowed lateness.
    pub late_topic: String,
    pub exactly_once: ExactlyOnce,
    /// `transactional.id` of the output producer (default: group id + instance id or host).
    pub transactional_id: Option<String>,
    /// State changelog (compacted; one partition per input partition).
    pub changelog_topic: String,
    /// Give up restoring a partition from the changelog after this long.
    pub restore_timeout: Duration,
    /// After the high watermark, wait this long for further changelog records (tansu's high
    /// watermarks are below the real end).
    pub restore_quiet: Duration,
    pub group_id: String,
    pub group_instance_id: Option<String>,
    /// `Some`: consume exactly these partitions of both input topics, no consumer group.
    pub assign: Option<Vec<i32>>,
    /// Create the output topics at start-up if missing.
    pub create_topics: bool,
    pub output_partitions: i32,
    /// Extra librdkafka properties.
    pub consumer: BTreeMap<String, String>,
    pub producer: BTreeMap<String, String>,
    /// How long to wait for outputs to be acknowledged before a checkpoint.
    pub flush_timeout: Duration,
    /// How often to fetch high watermarks for the lag gauge.
    pub lag_interval: Duration,
}

/// State and checkpoint settings.
#[derive(Debug, Clone, PartialEq)]
pub struct StateConfig {
    pub path: PathBuf,
    pub checkpoint_interval: Duration,
    pub checkpoint_records: u64,
}

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub state: StateConfig,
    pub params: Params,
    pub metrics_listen: Option<SocketAddr>,
}

/// One problem with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

/// Every problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: {}", e.key, e.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Reads a table's keys, recording every error and every unknown key.
struct Section<'a> {
    name: &'static str,
    table: Option<&'a Table>,
    used: Vec<&'static str>,
    errors: &'a mut Vec<ConfigError>,
}

impl<'a> Section<'a> {
    fn new(root: &'a Table, name: &'static str, errors: &'a mut Vec<ConfigError>) -> Self {
        let table = match root.get(name) {
            None => None,
            Some(Value::Table(t)) => Some(t),
            Some(_) => {
                errors.push(ConfigError {
                    key: name.to_owned(),
                    message: "must be a table".to_owned(),
                });
                None
            }
        };
        Self {
            name,
            table,
            used: Vec::new(),
            errors,
        }
    }

    fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.name)
    }

    fn err(&mut self, k: &str, message: impl Into<String>) {
        let key = self.key(k);
        self.errors.push(ConfigError {
            key,
            message: message.into(),
        });
    }

    fn raw(&mut self, k: &'static str) -> Option<&'a Value> {
        self.used.push(k);
        self.table.and_then(|t| t.get(k))
    }

    fn string(&mut self, k: &'static str, default: &str) -> String {
        match self.raw(k) {
            None => default.to_owned(),
            Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
            Some(Value::String(_)) => {
                self.err(k, "must not be empty");
                default.to_owned()
            }
            Some(v) => {
                self.err(k, format!("must be a string, found {}", v.type_str()));
                default.to_owned()
            }
        }
    }

    fn opt_string(&mut self, k: &'static str) -> Option<String> {
        match self.raw(k) {
            None => None,
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
            Some(Value::String(_)) => {
                self.err(k, "must not be empty (leave the key out instead)");
                None
            }
            Some(v) => {
                self.err(k, format!("must be a string, found {}", v.type_str()));
                None
            }
        }
    }

    fn boolean(&mut self, k: &'static str, default: bool) -> bool {
        match self.raw(k) {
            None => default,
            Some(Value::Boolean(b)) => *b,
            Some(v) => {
                self.err(k, format!("must be a boolean, found {}", v.type_str()));
                default
            }
        }
    }

    fn int(&mut self, k: &'static str, default: i64, min: i64, max: i64) -> i64 {
        match self.raw(k) {
            None => default,
            Some(Value::Integer(i)) if (min..=max).contains(i) => *i,
            Some(Value::Integer(i)) => {
                self.err(k, format!("{i} is out of range {min}..={max}"));
                default
            }
            Some(v) => {
                self.err(k, format!("must be an integer, found {}", v.type_str()));
                default
            }
        }
    }

    fn float(&mut self, k: &'static str, default: f64, min: f64, max: f64) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let x = match self.raw(k) {
            None => return default,
            Some(Value::Float(f)) => *f,
            Some(Value::Integer(i)) => *i as f64,
            Some(v) => {
                self.err(k, format!("must be a number, found {}", v.type_str()));
                return default;
            }
        };
        if x.is_finite() && x >= min && x <= max {
            x
        } else {
            self.err(k, format!("{x} is out of range {min}..={max}"));
            default
        }
    }

    fn duration(&mut self, k: &'static str, default: Duration) -> Duration {
        self.duration_allow_zero(k, default, false)
    }

    fn duration_allow_zero(
        &mut self,
        k: &'static str,
        default: Duration,
        allow_zero: bool,
    ) -> Duration {
        match self.raw(k) {
            None => default,
            Some(Value::String(s)) if allow_zero && s.trim() == "0" => Duration::ZERO,
            Some(Value::String(s)) => match humantime::parse_duration(s) {
                Ok(d) if allow_zero || !d.is_zero() => d,
                Ok(_) => {
                    self.err(k, "must be greater than zero");
                    default
                }
                Err(e) => {
                    self.err(k, format!("{s:?} is not a duration like \"30s\": {e}"));
                    default
                }
            },
            Some(v) => {
                self.err(
                    k,
                    format!(
                        "must be a duration string like \"30s\", found {}",
                        v.type_str()
                    ),
                );
                default
            }
        }
    }

    fn string_map(&mut self, k: &'static str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        match self.raw(k) {
            None => {}
            Some(Value::Table(t)) => {
                for (name, v) in t {
                    match v {
                        Value::String(s) => {
                            out.insert(name.clone(), s.clone());
                        }
                        Value::Integer(i) => {
                            out.insert(name.clone(), i.to_string());
                        }
                        Value::Boolean(b) => {
                            out.insert(name.clone(), b.to_string());
                        }
                        other => {
                            let key = format!("{k}.{name}");
                            self.err(
                                &key,
                                format!(
                                    "librdkafka property must be a string, integer or boolean, found {}",
                                    other.type_str()
                                ),
                            );
                        }
                    }
                }
            }
            Some(v) => self.err(k, format!("must be a table, found {}", v.type_str())),
        }
        out
    }

    /// Reports keys nobody asked for (typos).
    fn finish(self) {
        if let Some(t) = self.table {
            for k in t.keys() {
                if !self.used.contains(&k.as_str()) {
                    self.errors.push(ConfigError {
                        key: format!("{}.{k}", self.name),
                        message: "unknown key".to_owned(),
                    });
                }
            }
        }
    }
}

/// The changelog topic of group `group_id` reading `telemetry_topic`, when none is configured.
#[must_use]
pub fn default_changelog_topic(group_id: &str, telemetry_topic: &str) -> String {
    format!("{group_id}-{telemetry_topic}-changelog")
}

/// Kafka's rule for topic names: 1 to 249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
fn is_topic_name(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 249
        && t != "."
        && t != ".."
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn parse_assign(s: &str) -> Result<Option<Vec<i32>>, String> {
    if s.trim().is_empty() {
        return Ok(None);
    }
    s.split(',')
        .map(|p| {
            p.trim()
                .parse::<i32>()
                .ok()
                .filter(|p| *p >= 0)
                .ok_or_else(|| format!("{p:?} is not a partition number"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

impl Config {
    /// Parses and validates `text`, applying the given environment (name → value).
    ///
    /// # Errors
    /// Every problem found, each with its key.
    pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigErrors> {
        let root: Table = match text.parse::<Table>() {
            Ok(t) => t,
            Err(e) => {
                return Err(ConfigErrors(vec![ConfigError {
                    key: "(file)".to_owned(),
                    message: format!("not valid TOML: {e}"),
                }]))
            }
        };
        let mut errors = Vec::new();
        for k in root.keys() {
            if ![
                "kafka", "state", "sessions", "windows", "anomaly", "fleet", "metrics",
            ]
            .contains(&k.as_str())
            {
                errors.push(ConfigError {
                    key: k.clone(),
                    message: "unknown section".to_owned(),
                });
            }
        }
        let d = Params::default();

        let mut s = Section::new(&root, "kafka", &mut errors);
        let mut brokers = s.string("brokers", "127.0.0.1:9092");
        let telemetry_topic =
            s.string("telemetry_topic", breakwater_protocol::kafka::DEFAULT_TOPIC);
        let events_topic = s.string(
            "events_topic",
            breakwater_protocol::kafka::DEFAULT_EVENTS_TOPIC,
        );
        let sessions_topic = s.string("sessions_topic", "breakwater.sessions");
        let anomalies_topic = s.string("anomalies_topic", "breakwater.anomalies");
        let windows_topic = s.opt_string("windows_topic");
        let late_topic = s.string("late_topic", "breakwater.late");
        // Default off until the transactional path is verified end to end (README).
        let exactly_once = match s.string("exactly_once", "off").as_str() {
            "auto" => ExactlyOnce::Auto,
            "on" => ExactlyOnce::On,
            "off" => ExactlyOnce::Off,
            other => {
                s.err(
                    "exactly_once",
                    format!("{other:?}: must be \"auto\", \"on\" or \"off\""),
                );
                ExactlyOnce::Auto
            }
        };
        let transactional_id = s.opt_string("transactional_id");
        let changelog_topic = s.opt_string("changelog_topic");
        let restore_timeout = s.duration("restore_timeout", Duration::from_secs(300));
        let restore_quiet = s.duration("restore_quiet", Duration::from_millis(300));
        let group_id = s.string("group_id", "breakwater-processor");
        // One changelog per group and input, like Kafka Streams' `<application.id>-...-changelog`:
        // a changelog shared with other input topics would restore their offsets (changelog.rs
        // refuses that on restore; the default never shares).
        let changelog_topic = match changelog_topic {
            Some(t) => t,
            None => {
                let t = default_changelog_topic(&group_id, &telemetry_topic);
                if !is_topic_name(&t) {
                    s.err(
                        "changelog_topic",
                        format!("the default {t:?} (from group_id and telemetry_topic) is not a valid Kafka topic name; set changelog_topic"),
                    );
                }
                t
            }
        };
        let mut group_instance_id = s.opt_string("group_instance_id");
        let mut assign = match s.raw("assign") {
            None => None,
            Some(Value::Array(a)) => {
                let mut v = Vec::new();
                for x in a {
                    match x {
                        Value::Integer(i) if (0..=i64::from(i32::MAX)).contains(i) => {
                            v.push(i32::try_from(*i).unwrap_or_default());
                        }
                        _ => s.err("assign", format!("{x} is not a partition number")),
                    }
                }
                Some(v)
            }
            Some(v) => {
                s.err(
                    "assign",
                    format!("must be an array of partitions, found {}", v.type_str()),
                );
                None
            }
        };
        let create_topics = s.boolean("create_topics", true);
        let output_partitions =
            i32::try_from(s.int("output_partitions", 3, 1, 10_000)).unwrap_or(3);
        let consumer = s.string_map("consumer");
        let producer = s.string_map("producer");
        let flush_timeout = s.duration("flush_timeout", Duration::from_secs(30));
        let lag_interval = s.duration("lag_interval", Duration::from_secs(15));
        s.finish();

        let mut s = Section::new(&root, "state", &mut errors);
        let mut path = PathBuf::from(s.string("path", "/var/lib/breakwater-processor/state.redb"));
        let checkpoint_interval = s.duration("checkpoint_interval", Duration::from_secs(5));
        let checkpoint_records =
            u64::try_from(s.int("checkpoint_records", 100_000, 1, i64::MAX)).unwrap_or(100_000);
        // Zero: never evict.
        let device_ttl =
            ms(s.duration_allow_zero("device_ttl", Duration::from_millis(d.device_ttl), true));
        s.finish();

        let mut s = Section::new(&root, "sessions", &mut errors);
        let inactivity_gap =
            ms(s.duration("inactivity_gap", Duration::from_millis(d.inactivity_gap)));
        s.finish();

        let mut s = Section::new(&root, "windows", &mut errors);
        let window = ms(s.duration("size", Duration::from_millis(d.window)));
        // Zero lateness is legal (unlike the other durations): every out-of-order reading is late.
        let allowed_lateness = ms(s.duration_allow_zero(
            "allowed_lateness",
            Duration::from_millis(d.allowed_lateness),
            true,
        ));
        if s.raw("idle_timeout").is_some() {
            s.err(
                "idle_timeout",
                "removed: event time is per device, a quiet device's backlog is never late; bound state with state.device_ttl",
            );
        }
        let max_future_skew =
            ms(s.duration("max_future_skew", Duration::from_millis(d.max_future_skew)));
        let max_metrics_per_device = usize::try_from(s.int(
            "max_metrics_per_device",
            i64::try_from(d.max_metrics_per_device).unwrap_or(64),
            1,
            10_000,
        ))
        .unwrap_or(d.max_metrics_per_device);
        s.finish();

        let mut s = Section::new(&root, "anomaly", &mut errors);
        let metric = MetricParams {
            alpha: s.float("alpha", d.metric.alpha, 1e-6, 1.0),
            k: s.float("z_threshold", d.metric.k, 0.1, 1e6),
            warmup: u64::try_from(s.int("warmup", 30, 1, 1_000_000)).unwrap_or(30),
            min_stddev: s.float("min_stddev", d.metric.min_stddev, 0.0, 1e12),
        };
        s.finish();

        let mut s = Section::new(&root, "fleet", &mut errors);
        let fleet = FleetParams {
            window: ms(s.duration("window", Duration::from_millis(d.fleet.window))),
            alpha: s.float("alpha", d.fleet.alpha, 1e-6, 1.0),
            k: s.float("z_threshold", d.fleet.k, 0.1, 1e6),
            warmup: u64::try_from(s.int("warmup", 6, 1, 1_000_000)).unwrap_or(6),
            min_connects: u64::try_from(s.int("min_connects", 20, 1, i64::MAX)).unwrap_or(20),
        };
        s.finish();

        let mut s = Section::new(&root, "metrics", &mut errors);
        let mut listen = s.opt_string("listen");
        s.finish();

        // Environment overrides.
        if let Some(v) = env("BREAKWATER_PROCESSOR_BROKERS").filter(|v| !v.is_empty()) {
            brokers = v;
        }
        if let Some(v) = env("BREAKWATER_PROCESSOR_GROUP_INSTANCE_ID").filter(|v| !v.is_empty()) {
            group_instance_id = Some(v);
        }
        if let Some(v) = env("BREAKWATER_PROCESSOR_ASSIGN") {
            match parse_assign(&v) {
                Ok(a) => assign = a,
                Err(e) => errors.push(ConfigError {
                    key: "BREAKWATER_PROCESSOR_ASSIGN (kafka.assign)".to_owned(),
                    message: e,
                }),
            }
        }
        if let Some(v) = env("BREAKWATER_PROCESSOR_STATE_PATH").filter(|v| !v.is_empty()) {
            path = PathBuf::from(v);
        }
        if let Some(v) = env("BREAKWATER_PROCESSOR_METRICS_LISTEN") {
            listen = Some(v).filter(|v| !v.is_empty());
        }
        let metrics_listen = listen.and_then(|l| match l.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(e) => {
                errors.push(ConfigError {
                    key: "metrics.listen".to_owned(),
                    message: format!("{l:?} is not an address like 0.0.0.0:9464: {e}"),
                });
                None
            }
        });

        // Cross-field rules.
        if let Some(a) = &assign {
            if a.is_empty() {
                errors.push(ConfigError {
                    key: "kafka.assign".to_owned(),
                    message: "is empty: list partitions, or leave it out for consumer-group mode"
                        .to_owned(),
                });
            }
        }
        let topics = [
            ("kafka.telemetry_topic", &telemetry_topic),
            ("kafka.events_topic", &events_topic),
            ("kafka.sessions_topic", &sessions_topic),
            ("kafka.anomalies_topic", &anomalies_topic),
        ];
        for (i, (ka, a)) in topics.iter().enumerate() {
            for (kb, b) in &topics[i + 1..] {
                if a == b {
                    errors.push(ConfigError {
                        key: (*kb).to_owned(),
                        message: format!("is the same topic as {ka} ({a})"),
                    });
                }
            }
            if windows_topic.as_deref() == Some(a.as_str()) {
                errors.push(ConfigError {
                    key: "kafka.windows_topic".to_owned(),
                    message: format!("is the same topic as {ka} ({a})"),
                });
            }
        }
        let emit_windows = windows_topic.is_some();
        if errors.is_empty() {
            Ok(Self {
                kafka: KafkaConfig {
                    brokers,
                    telemetry_topic,
                    events_topic,
                    sessions_topic,
                    anomalies_topic,
                    windows_topic,
                    late_topic,
                    exactly_once,
                    transactional_id,
                    changelog_topic,
                    restore_timeout,
                    restore_quiet,
                    group_id,
                    group_instance_id,
                    assign,
                    create_topics,
                    output_partitions,
                    consumer,
                    producer,
                    flush_timeout,
                    lag_interval,
                },
                state: StateConfig {
                    path,
                    checkpoint_interval,
                    checkpoint_records,
                },
                params: Params {
                    window,
                    allowed_lateness,
                    device_ttl,
                    inactivity_gap,
                    metric,
                    fleet,
                    emit_windows,
                    max_future_skew,
                    max_metrics_per_device,
                },
                metrics_listen,
            })
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn the_example_file_parses() {
        let text = include_str!("../config/processor.toml");
        let c = Config::parse(text, &no_env).unwrap();
        assert_eq!(c.kafka.telemetry_topic, "breakwater.telemetry");
        assert_eq!(c.params.window, 60_000);
        assert!(c.params.emit_windows);
        assert_eq!(c.kafka.assign, None);
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::parse("", &no_env).unwrap();
        assert_eq!(
            c.params,
            Params {
                emit_windows: false,
                ..Params::default()
            }
        );
        assert_eq!(c.state.checkpoint_records, 100_000);
    }

    #[test]
    fn every_error_is_reported_with_its_key() {
        let text = r#"
            [kafka]
            brokers = 5
            assign = [0, -1]
            sessions_topic = "breakwater.anomalies"
            typo = true
            [state]
            checkpoint_interval = "soon"
            [windows]
            size = "0s"
            allowed_lateness = "0s"
            [anomaly]
            alpha = 2.0
            [metrics]
            listen = "nowhere"
            [extra]
        "#;
        let errs = Config::parse(text, &no_env).unwrap_err();
        let keys: Vec<&str> = errs.0.iter().map(|e| e.key.as_str()).collect();
        for k in [
            "kafka.brokers",
            "kafka.assign",
            "kafka.anomalies_topic",
            "kafka.typo",
            "state.checkpoint_interval",
            "windows.size",
            "anomaly.alpha",
            "metrics.listen",
            "extra",
        ] {
            assert!(keys.contains(&k), "{k} missing from {errs}");
        }
        assert!(!keys.contains(&"windows.allowed_lateness"), "{errs}");
    }

    /// Two processors that differ only in their input topics (or group) never share a changelog
    /// by default: a shared one would hand one of them the other's offsets.
    #[test]
    fn the_default_changelog_topic_is_per_group_and_input() {
        let c = |text: &str| Config::parse(text, &no_env).unwrap().kafka.changelog_topic;
        assert_eq!(c(""), "breakwater-processor-breakwater.telemetry-changelog");
        assert_eq!(
            c("[kafka]\ntelemetry_topic = \"t2\"\n"),
            "breakwater-processor-t2-changelog"
        );
        assert_eq!(
            c("[kafka]\ngroup_id = \"g\"\n"),
            "g-breakwater.telemetry-changelog"
        );
        assert_eq!(c("[kafka]\nchangelog_topic = \"mine\"\n"), "mine");
        let errs = Config::parse("[kafka]\ngroup_id = \"a b\"\n", &no_env).unwrap_err();
        assert_eq!(errs.0[0].key, "kafka.changelog_topic", "{errs}");
        assert!(Config::parse(
            "[kafka]\ngroup_id = \"a b\"\nchangelog_topic = \"c\"\n",
            &no_env
        )
        .is_ok());
    }

    #[test]
    fn environment_overrides() {
        let env = |k: &str| match k {
            "BREAKWATER_PROCESSOR_BROKERS" => Some("kafka:9092".to_owned()),
            "BREAKWATER_PROCESSOR_ASSIGN" => Some("2, 3".to_owned()),
            "BREAKWATER_PROCESSOR_STATE_PATH" => Some("/data/s.redb".to_owned()),
            "BREAKWATER_PROCESSOR_GROUP_INSTANCE_ID" => Some("proc-1".to_owned()),
            _ => None,
        };
        let c = Config::parse("[kafka]\nassign = [0]\n", &env).unwrap();
        assert_eq!(c.kafka.brokers, "kafka:9092");
        assert_eq!(c.kafka.assign, Some(vec![2, 3]));
        assert_eq!(c.state.path, PathBuf::from("/data/s.redb"));
        assert_eq!(c.kafka.group_instance_id.as_deref(), Some("proc-1"));
        let group = |k: &str| (k == "BREAKWATER_PROCESSOR_ASSIGN").then(String::new);
        assert_eq!(
            Config::parse("[kafka]\nassign = [0]\n", &group)
                .unwrap()
                .kafka
                .assign,
            None
        );
        let bad = |k: &str| (k == "BREAKWATER_PROCESSOR_ASSIGN").then(|| "x".to_owned());
        assert!(Config::parse("", &bad).is_err());
    }
}

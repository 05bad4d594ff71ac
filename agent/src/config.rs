//! The agent's configuration file (TOML), validated into typed settings.
//!
//! Every default lives in the `Default` impls below, and `config/agent.toml` documents every
//! key with that default. [`AgentConfig::from_toml`] walks the whole file and reports **every**
//! problem at once, each with its key (`sender.ack_timeout: ...`), including unknown keys and
//! TLS files that cannot be loaded.

use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use breakwater_protocol::{DeviceId, Limits};
use toml::{Table, Value};

use crate::buffer::FullPolicy;

/// The whole configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub device_id: DeviceId,
    pub gateway: GatewayConfig,
    pub buffer: BufferConfig,
    pub ingest: IngestConfig,
    pub sender: SenderConfig,
    pub shutdown: ShutdownConfig,
    pub metrics: MetricsConfig,
}

/// One configured gateway, `host:port`. A host name that resolves to several addresses
/// counts as several gateways (without TLS, see [`crate::sender::failover`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GatewayAddress {
    pub host: String,
    pub port: u16,
}

impl GatewayAddress {
    #[must_use]
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
        }
    }
}

impl fmt::Display for GatewayAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// `[gateway]`: where the gateways' MQTT brokers are and how to log in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayConfig {
    /// `address` (one gateway) or `addresses` (several, in order); never empty.
    pub addresses: Vec<GatewayAddress>,
    /// Failed connects in a row to the current gateway before the agent moves to the next.
    pub failover_after: NonZeroU32,
    pub keep_alive: Duration,
    pub connect_timeout: Duration,
    pub username: Option<String>,
    pub password: Option<String>,
    pub tls: Option<TlsConfig>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            addresses: vec![GatewayAddress::new("127.0.0.1", 1883)],
            failover_after: NonZeroU32::new(3).unwrap_or(NonZeroU32::MIN),
            keep_alive: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            username: None,
            password: None,
            tls: None,
        }
    }
}

/// `[gateway.tls]`: present means TLS is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM file with the CA certificate(s) that sign the gateway's certificate.
    pub ca_file: PathBuf,
    /// PEM client certificate chain, for mutual TLS (together with `client_key_file`).
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate.
    pub client_key_file: Option<PathBuf>,
}

/// `[buffer]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BufferConfig {
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub when_full: FullPolicy,
    pub commit_max_readings: usize,
}

impl Default for BufferConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/var/lib/breakwater-agent"),
            max_bytes: 256 * 1024 * 1024,
            when_full: FullPolicy::Block,
            commit_max_readings: 10_000,
        }
    }
}

/// `[ingest]`: the local NDJSON endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestConfig {
    pub enabled: bool,
    pub listen: SocketAddr,
    pub max_line_bytes: usize,
    pub max_clients: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 7878)),
            max_line_bytes: 4096,
            max_clients: 64,
        }
    }
}

/// `[sender]`: batching, flow control and reconnects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderConfig {
    /// Most readings per batch (at most the protocol's 1,000).
    pub batch_max_readings: usize,
    /// How long the oldest unsent reading may wait for a batch to fill.
    pub batch_max_delay: Duration,
    /// Batches allowed in flight before the first ack tells the real credit.
    pub initial_credit: u32,
    /// Upper bound on in-flight batches whatever credit the gateway grants.
    pub max_in_flight: u32,
    /// No ack within this time after a send -> resend from the oldest unacked seq.
    pub ack_timeout: Duration,
    /// Cap on readings sent per second (backlog drain rate); 0 = no cap.
    pub max_readings_per_sec: u32,
    /// Cap on a gateway's `retry_after_ms` (the pause of sending and the floor of the next
    /// reconnect delay): a forged ack must not silence the device for weeks.
    pub max_retry_after: Duration,
    pub backoff: BackoffConfig,
}

impl Default for SenderConfig {
    fn default() -> Self {
        Self {
            batch_max_readings: 500,
            batch_max_delay: Duration::from_millis(200),
            initial_credit: 2,
            max_in_flight: 16,
            ack_timeout: Duration::from_secs(15),
            max_readings_per_sec: 0,
            max_retry_after: Duration::from_secs(60),
            backoff: BackoffConfig::default(),
        }
    }
}

/// `[sender.backoff]`: exponential backoff with full jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    /// Window of the first retry: the delay is uniform in `[0, initial]`.
    pub initial: Duration,
    /// Cap of the window.
    pub max: Duration,
    /// A connection that stayed up this long resets the backoff.
    pub reset_after: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(2),
            max: Duration::from_secs(120),
            reset_after: Duration::from_secs(60),
        }
    }
}

/// `[shutdown]`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownConfig {
    /// On SIGTERM, how long to keep sending what is buffered before disconnecting.
    pub drain_timeout: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// `[metrics]`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MetricsConfig {
    /// Where to serve Prometheus text on `GET /metrics`; `None` (the default) = off.
    pub listen: Option<SocketAddr>,
}

/// One problem in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} configuration error(s):", self.issues.len())?;
        for i in &self.issues {
            write!(f, "\n  {i}")?;
        }
        Ok(())
    }
}

impl ConfigErrors {
    fn one(key: &str, message: impl Into<String>) -> Self {
        Self {
            issues: vec![ConfigIssue {
                key: key.into(),
                message: message.into(),
            }],
        }
    }

    /// True if some issue is about `key`.
    #[must_use]
    pub fn has(&self, key: &str) -> bool {
        self.issues.iter().any(|i| i.key == key)
    }
}

/// Collects issues while walking the file.
struct Walk {
    issues: Vec<ConfigIssue>,
}

impl Walk {
    fn err(&mut self, key: &str, message: impl Into<String>) {
        self.issues.push(ConfigIssue {
            key: key.into(),
            message: message.into(),
        });
    }

    /// Takes `key` from `t` (removing it so leftovers are "unknown") and converts it.
    fn take<T>(
        &mut self,
        t: &mut Table,
        prefix: &str,
        key: &str,
        conv: impl FnOnce(&Value) -> Result<T, String>,
    ) -> Option<T> {
        let v = t.remove(key)?;
        match conv(&v) {
            Ok(x) => Some(x),
            Err(e) => {
                self.err(&join(prefix, key), e);
                None
            }
        }
    }

    fn section(&mut self, t: &mut Table, name: &str) -> Table {
        match t.remove(name) {
            None => Table::new(),
            Some(Value::Table(s)) => s,
            Some(other) => {
                self.err(
                    name,
                    format!("expected a table, found {}", other.type_str()),
                );
                Table::new()
            }
        }
    }

    fn unknown(&mut self, t: &Table, prefix: &str) {
        for k in t.keys() {
            self.err(&join(prefix, k), "unknown key");
        }
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

fn string(v: &Value) -> Result<String, String> {
    v.as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("expected a string, found {}", v.type_str()))
}

fn boolean(v: &Value) -> Result<bool, String> {
    v.as_bool()
        .ok_or_else(|| format!("expected true or false, found {}", v.type_str()))
}

fn int_in(v: &Value, min: u64, max: u64) -> Result<u64, String> {
    let i = v
        .as_integer()
        .ok_or_else(|| format!("expected an integer, found {}", v.type_str()))?;
    match u64::try_from(i) {
        Ok(u) if (min..=max).contains(&u) => Ok(u),
        _ => Err(format!("{i} is out of range {min}..={max}")),
    }
}

fn duration(v: &Value) -> Result<Duration, String> {
    let s = v.as_str().ok_or_else(|| {
        format!(
            "expected a duration string like \"10s\", found {}",
            v.type_str()
        )
    })?;
    humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration: {e}"))
}

fn positive_duration(v: &Value) -> Result<Duration, String> {
    let d = duration(v)?;
    if d.is_zero() {
        Err("must be greater than zero".into())
    } else {
        Ok(d)
    }
}

/// An integer of bytes or a string like `"256MiB"`, `"64 KiB"`, `"1GB"`.
fn size(v: &Value) -> Result<u64, String> {
    if let Some(i) = v.as_integer() {
        return u64::try_from(i).map_err(|_| format!("{i} is negative"));
    }
    let s = v.as_str().ok_or_else(|| {
        format!(
            "expected bytes (integer or \"256MiB\"), found {}",
            v.type_str()
        )
    })?;
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like \"256MiB\""))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit {other:?} (use B, KiB, MiB, GiB, KB, MB, GB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn socket_addr(v: &Value) -> Result<SocketAddr, String> {
    let s = string(v)?;
    s.parse()
        .map_err(|_| format!("{s:?} is not an IP:port address like \"127.0.0.1:7878\""))
}

fn host_port(v: &Value) -> Result<(String, u16), String> {
    let s = string(v)?;
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not host:port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{s:?} has an empty host"));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{s:?} has an invalid port"))?;
    if port == 0 {
        return Err(format!("{s:?}: port 0 is not allowed"));
    }
    Ok((host.to_owned(), port))
}

/// A non-empty array of `host:port` strings without duplicates.
fn host_port_list(v: &Value) -> Result<Vec<GatewayAddress>, String> {
    let arr = v.as_array().ok_or_else(|| {
        format!(
            "expected an array of \"host:port\" strings, found {}",
            v.type_str()
        )
    })?;
    if arr.is_empty() {
        return Err("must list at least one gateway".into());
    }
    let mut out: Vec<GatewayAddress> = Vec::with_capacity(arr.len());
    for (i, item) in arr.iter().enumerate() {
        let (host, port) = host_port(item).map_err(|e| format!("entry {i}: {e}"))?;
        let a = GatewayAddress::new(host, port);
        if out.contains(&a) {
            return Err(format!("entry {i}: {a} is listed twice"));
        }
        out.push(a);
    }
    Ok(out)
}

impl AgentConfig {
    /// Reads and validates a configuration file.
    ///
    /// # Errors
    /// Every problem found, each with its key; an unreadable file is one issue with key `file`.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors::one("file", format!("cannot read {}: {e}", path.display()))
        })?;
        Self::from_toml(&text)
    }

    /// A configuration with every default and the given device id (for tests and embedding).
    #[must_use]
    pub fn with_defaults(device_id: DeviceId) -> Self {
        Self {
            device_id,
            gateway: GatewayConfig::default(),
            buffer: BufferConfig::default(),
            ingest: IngestConfig::default(),
            sender: SenderConfig::default(),
            shutdown: ShutdownConfig::default(),
            metrics: MetricsConfig::default(),
        }
    }

    /// Parses and validates TOML text.
    ///
    /// # Errors
    /// Every problem found, each with its key.
    pub fn from_toml(text: &str) -> Result<Self, ConfigErrors> {
        let mut root: Table = text.parse().map_err(|e: toml::de::Error| {
            ConfigErrors::one("file", format!("invalid TOML: {e}"))
        })?;
        let mut w = Walk { issues: Vec::new() };

        let device_id = match w.take(&mut root, "", "device_id", string) {
            Some(s) => match DeviceId::parse(s) {
                Ok(d) => Some(d),
                Err(e) => {
                    w.err("device_id", e.to_string());
                    None
                }
            },
            None => {
                if !w.issues.iter().any(|i| i.key == "device_id") {
                    w.err("device_id", "is required");
                }
                None
            }
        };

        let mut gateway = GatewayConfig::default();
        {
            let mut t = w.section(&mut root, "gateway");
            let p = "gateway";
            let had_address = t.contains_key("address");
            if let Some((h, port)) = w.take(&mut t, p, "address", host_port) {
                gateway.addresses = vec![GatewayAddress::new(h, port)];
            }
            if let Some(list) = w.take(&mut t, p, "addresses", host_port_list) {
                if had_address {
                    w.err(
                        "gateway.addresses",
                        "set either address (one gateway) or addresses (several), not both",
                    );
                } else {
                    gateway.addresses = list;
                }
            }
            if let Some(n) = w.take(&mut t, p, "failover_after", |v| int_in(v, 1, 1000)) {
                gateway.failover_after = u32::try_from(n)
                    .ok()
                    .and_then(NonZeroU32::new)
                    .unwrap_or(NonZeroU32::MIN);
            }
            if let Some(d) = w.take(&mut t, p, "keep_alive", duration) {
                if d < Duration::from_secs(5) || d > Duration::from_secs(65_535) {
                    w.err("gateway.keep_alive", "must be between 5s and 65535s");
                } else {
                    gateway.keep_alive = d;
                }
            }
            if let Some(d) = w.take(&mut t, p, "connect_timeout", positive_duration) {
                gateway.connect_timeout = d;
            }
            gateway.username = w.take(&mut t, p, "username", string);
            gateway.password = w.take(&mut t, p, "password", string);
            if let Some(file) = w.take(&mut t, p, "password_file", string) {
                if gateway.password.is_some() {
                    w.err(
                        "gateway.password_file",
                        "set either password or password_file",
                    );
                }
                match std::fs::read_to_string(&file) {
                    Ok(s) => gateway.password = Some(s.trim_end_matches(['\r', '\n']).to_owned()),
                    Err(e) => w.err("gateway.password_file", format!("cannot read {file}: {e}")),
                }
            }
            if gateway.password.is_some() && gateway.username.is_none() {
                w.err("gateway.username", "is required when a password is set");
            }
            if t.contains_key("tls") {
                let mut tt = w.section(&mut t, "tls");
                let p = "gateway.tls";
                let ca = w.take(&mut tt, p, "ca_file", string).map(PathBuf::from);
                let cert = w
                    .take(&mut tt, p, "client_cert_file", string)
                    .map(PathBuf::from);
                let key = w
                    .take(&mut tt, p, "client_key_file", string)
                    .map(PathBuf::from);
                w.unknown(&tt, p);
                if cert.is_some() != key.is_some() {
                    w.err(
                        if cert.is_some() {
                            "gateway.tls.client_key_file"
                        } else {
                            "gateway.tls.client_cert_file"
                        },
                        "client_cert_file and client_key_file must be set together",
                    );
                }
                match ca {
                    None => w.err(
                        "gateway.tls.ca_file",
                        "is required when [gateway.tls] is present",
                    ),
                    Some(ca_file) => {
                        let tls = TlsConfig {
                            ca_file,
                            client_cert_file: cert,
                            client_key_file: key,
                        };
                        if let Err(e) = crate::sender::tls::client_config(&tls) {
                            w.err(e.key(), e.to_string());
                        }
                        gateway.tls = Some(tls);
                    }
                }
            }
            w.unknown(&t, p);
        }

        let mut buffer = BufferConfig::default();
        {
            let mut t = w.section(&mut root, "buffer");
            let p = "buffer";
            if let Some(d) = w.take(&mut t, p, "dir", string) {
                if d.is_empty() {
                    w.err("buffer.dir", "must not be empty");
                } else {
                    buffer.dir = PathBuf::from(d);
                }
            }
            if let Some(b) = w.take(&mut t, p, "max_bytes", size) {
                if b < 64 * 1024 {
                    w.err("buffer.max_bytes", "must be at least 64KiB");
                } else {
                    buffer.max_bytes = b;
                }
            }
            if let Some(s) = w.take(&mut t, p, "when_full", string) {
                match s.as_str() {
                    "block" => buffer.when_full = FullPolicy::Block,
                    "drop-oldest" => buffer.when_full = FullPolicy::DropOldest,
                    other => w.err(
                        "buffer.when_full",
                        format!("{other:?} is not one of \"block\", \"drop-oldest\""),
                    ),
                }
            }
            if let Some(n) = w.take(&mut t, p, "commit_max_readings", |v| {
                int_in(v, 1, 1_000_000)
            }) {
                buffer.commit_max_readings = usize::try_from(n).unwrap_or(usize::MAX);
            }
            w.unknown(&t, p);
        }

        let mut ingest = IngestConfig::default();
        {
            let mut t = w.section(&mut root, "ingest");
            let p = "ingest";
            if let Some(b) = w.take(&mut t, p, "enabled", boolean) {
                ingest.enabled = b;
            }
            if let Some(a) = w.take(&mut t, p, "listen", socket_addr) {
                if !a.ip().is_loopback() {
                    w.err(
                        "ingest.listen",
                        format!("{a} is not a loopback address; the ingest endpoint has no authentication"),
                    );
                } else {
                    ingest.listen = a;
                }
            }
            if let Some(n) = w.take(&mut t, p, "max_line_bytes", |v| int_in(v, 64, 1 << 20)) {
                ingest.max_line_bytes = usize::try_from(n).unwrap_or(usize::MAX);
            }
            if let Some(n) = w.take(&mut t, p, "max_clients", |v| int_in(v, 1, 10_000)) {
                ingest.max_clients = usize::try_from(n).unwrap_or(usize::MAX);
            }
            w.unknown(&t, p);
        }

        let mut sender = SenderConfig::default();
        {
            let mut t = w.section(&mut root, "sender");
            let p = "sender";
            let max_batch = Limits::DEFAULT.max_readings_per_batch as u64;
            if let Some(n) = w.take(&mut t, p, "batch_max_readings", |v| int_in(v, 1, max_batch)) {
                sender.batch_max_readings = usize::try_from(n).unwrap_or(1);
            }
            if let Some(d) = w.take(&mut t, p, "batch_max_delay", duration) {
                sender.batch_max_delay = d;
            }
            if let Some(n) = w.take(&mut t, p, "initial_credit", |v| int_in(v, 1, 1024)) {
                sender.initial_credit = u32::try_from(n).unwrap_or(1);
            }
            if let Some(n) = w.take(&mut t, p, "max_in_flight", |v| int_in(v, 1, 1024)) {
                sender.max_in_flight = u32::try_from(n).unwrap_or(1);
            }
            if let Some(d) = w.take(&mut t, p, "ack_timeout", positive_duration) {
                sender.ack_timeout = d;
            }
            if let Some(n) = w.take(&mut t, p, "max_readings_per_sec", |v| {
                int_in(v, 0, u64::from(u32::MAX))
            }) {
                sender.max_readings_per_sec = u32::try_from(n).unwrap_or(u32::MAX);
            }
            if let Some(d) = w.take(&mut t, p, "max_retry_after", duration) {
                if d > Duration::from_secs(3600) {
                    w.err(
                        "sender.max_retry_after",
                        "must be at most 1h (a gateway pause longer than that is an attack or a bug)",
                    );
                } else {
                    sender.max_retry_after = d;
                }
            }
            if sender.initial_credit > sender.max_in_flight {
                w.err(
                    "sender.initial_credit",
                    "must not exceed sender.max_in_flight",
                );
            }
            if t.contains_key("backoff") {
                let mut bt = w.section(&mut t, "backoff");
                let p = "sender.backoff";
                if let Some(d) = w.take(&mut bt, p, "initial", positive_duration) {
                    sender.backoff.initial = d;
                }
                if let Some(d) = w.take(&mut bt, p, "max", positive_duration) {
                    sender.backoff.max = d;
                }
                if let Some(d) = w.take(&mut bt, p, "reset_after", positive_duration) {
                    sender.backoff.reset_after = d;
                }
                if sender.backoff.initial > sender.backoff.max {
                    w.err(
                        "sender.backoff.initial",
                        "must not exceed sender.backoff.max",
                    );
                }
                w.unknown(&bt, p);
            }
            w.unknown(&t, p);
        }

        let mut shutdown = ShutdownConfig::default();
        {
            let mut t = w.section(&mut root, "shutdown");
            if let Some(d) = w.take(&mut t, "shutdown", "drain_timeout", duration) {
                shutdown.drain_timeout = d;
            }
            w.unknown(&t, "shutdown");
        }

        let mut metrics = MetricsConfig::default();
        {
            let mut t = w.section(&mut root, "metrics");
            if let Some(s) = w.take(&mut t, "metrics", "listen", string) {
                if !s.is_empty() {
                    match s.parse::<SocketAddr>() {
                        Ok(a) => metrics.listen = Some(a),
                        Err(_) => w.err(
                            "metrics.listen",
                            format!(
                                "{s:?} is not an IP:port address (\"\" turns the endpoint off)"
                            ),
                        ),
                    }
                }
            }
            w.unknown(&t, "metrics");
        }

        w.unknown(&root, "");

        match (device_id, w.issues.is_empty()) {
            (Some(device_id), true) => Ok(Self {
                device_id,
                gateway,
                buffer,
                ingest,
                sender,
                shutdown,
                metrics,
            }),
            _ => Err(ConfigErrors { issues: w.issues }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = AgentConfig::from_toml("device_id = \"press-01\"").unwrap();
        assert_eq!(c.device_id.as_str(), "press-01");
        assert_eq!(c.gateway, GatewayConfig::default());
        assert_eq!(c.buffer, BufferConfig::default());
        assert_eq!(c.ingest.listen.to_string(), "127.0.0.1:7878");
        assert_eq!(c.sender, SenderConfig::default());
        assert_eq!(c.metrics.listen, None);
    }

    #[test]
    fn shipped_example_config_is_valid_and_matches_defaults() {
        let text = include_str!("../../config/agent.toml");
        let c = AgentConfig::from_toml(text).unwrap();
        // The example documents the defaults: apart from device_id it must equal them.
        let d = AgentConfig::with_defaults(c.device_id.clone());
        assert_eq!(c.gateway, d.gateway);
        assert_eq!(c.buffer, d.buffer);
        assert_eq!(c.ingest, d.ingest);
        assert_eq!(c.sender, d.sender);
        assert_eq!(c.shutdown, d.shutdown);
        assert_eq!(c.metrics, d.metrics);
    }

    #[test]
    fn full_config_parses() {
        let c = AgentConfig::from_toml(
            r#"
            device_id = "d-1"
            [gateway]
            address = "gw.local:8883"
            username = "u"
            password = "p"
            [buffer]
            dir = "/tmp/x"
            max_bytes = "64MiB"
            when_full = "drop-oldest"
            [ingest]
            listen = "127.0.0.1:9000"
            [sender]
            batch_max_readings = 100
            batch_max_delay = "50ms"
            max_readings_per_sec = 2000
            [sender.backoff]
            initial = "500ms"
            max = "30s"
            [metrics]
            listen = "127.0.0.1:9464"
            "#,
        )
        .unwrap();
        assert_eq!(
            c.gateway.addresses,
            vec![GatewayAddress::new("gw.local", 8883)]
        );
        assert_eq!(c.gateway.password.as_deref(), Some("p"));
        assert_eq!(c.buffer.max_bytes, 64 << 20);
        assert_eq!(c.buffer.when_full, FullPolicy::DropOldest);
        assert_eq!(c.sender.batch_max_delay, Duration::from_millis(50));
        assert_eq!(c.sender.backoff.initial, Duration::from_millis(500));
        assert_eq!(c.metrics.listen.map(|a| a.port()), Some(9464));
    }

    #[test]
    fn every_error_is_reported_with_its_key() {
        let e = AgentConfig::from_toml(
            r#"
            device_id = "bad id!"
            colour = "blue"
            [gateway]
            address = "nohostport"
            keep_alive = 3
            [buffer]
            max_bytes = "12 parsecs"
            when_full = "panic"
            [ingest]
            listen = "0.0.0.0:7878"
            [sender]
            batch_max_readings = 5000
            ack_timeout = "0s"
            max_retry_after = "49days"
            typo = 1
            [sender.backoff]
            initial = "10m"
            max = "1m"
            [metrics]
            listen = "nope"
            "#,
        )
        .unwrap_err();
        for key in [
            "device_id",
            "colour",
            "gateway.address",
            "gateway.keep_alive",
            "buffer.max_bytes",
            "buffer.when_full",
            "ingest.listen",
            "sender.batch_max_readings",
            "sender.ack_timeout",
            "sender.max_retry_after",
            "sender.typo",
            "sender.backoff.initial",
            "metrics.listen",
        ] {
            assert!(e.has(key), "no issue for {key}: {e}");
        }
        assert_eq!(e.issues.len(), 13, "{e}");
    }

    #[test]
    fn missing_device_id_and_bad_toml() {
        let e = AgentConfig::from_toml("").unwrap_err();
        assert!(e.has("device_id"));
        let e = AgentConfig::from_toml("device_id = ").unwrap_err();
        assert!(e.has("file"), "{e}");
    }

    #[test]
    fn tls_config_with_valid_files_loads() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls");
        let c = AgentConfig::from_toml(&format!(
            "device_id = \"d\"\n[gateway.tls]\nca_file = \"{dir}/ca.pem\"\n\
             client_cert_file = \"{dir}/client.pem\"\nclient_key_file = \"{dir}/client.key\"\n"
        ))
        .unwrap();
        let tls = c.gateway.tls.unwrap();
        assert!(tls.client_cert_file.is_some());
        // A key that does not belong to the certificate is refused with the cert's key.
        let e = AgentConfig::from_toml(&format!(
            "device_id = \"d\"\n[gateway.tls]\nca_file = \"{dir}/ca.pem\"\n\
             client_cert_file = \"{dir}/client.pem\"\nclient_key_file = \"{dir}/server.key\"\n"
        ))
        .unwrap_err();
        assert!(e.has("gateway.tls.client_cert_file"), "{e}");
    }

    #[test]
    fn tls_files_are_checked() {
        let e = AgentConfig::from_toml(
            r#"
            device_id = "d"
            [gateway.tls]
            ca_file = "/nonexistent/ca.pem"
            client_cert_file = "/nonexistent/cert.pem"
            "#,
        )
        .unwrap_err();
        assert!(e.has("gateway.tls.ca_file"), "{e}");
        assert!(e.has("gateway.tls.client_key_file"), "{e}");
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    }

    #[test]
    fn several_gateways_parse_in_order() {
        let c = AgentConfig::from_toml(
            r#"
            device_id = "d"
            [gateway]
            addresses = ["gw-a:8883", "[::1]:8883", "10.0.0.7:1883"]
            failover_after = 5
            "#,
        )
        .unwrap();
        assert_eq!(
            c.gateway.addresses,
            vec![
                GatewayAddress::new("gw-a", 8883),
                GatewayAddress::new("::1", 8883),
                GatewayAddress::new("10.0.0.7", 1883),
            ]
        );
        assert_eq!(c.gateway.failover_after.get(), 5);
        assert_eq!(c.gateway.addresses[1].to_string(), "[::1]:8883");
    }

    #[test]
    fn bad_gateway_lists_are_reported_with_their_key() {
        let both = AgentConfig::from_toml(
            "device_id = \"d\"\n[gateway]\naddress = \"a:1\"\naddresses = [\"b:1\"]\n",
        )
        .unwrap_err();
        assert!(both.has("gateway.addresses"), "{both}");
        assert!(both.to_string().contains("not both"), "{both}");
        for (text, needle) in [
            ("addresses = []", "at least one"),
            ("addresses = \"a:1\"", "expected an array"),
            ("addresses = [\"a:1\", \"nohostport\"]", "entry 1"),
            ("addresses = [\"a:1\", \"a:1\"]", "listed twice"),
            ("addresses = [\"a:0\"]", "port 0"),
        ] {
            let e = AgentConfig::from_toml(&format!("device_id = \"d\"\n[gateway]\n{text}\n"))
                .unwrap_err();
            assert!(e.has("gateway.addresses"), "{text}: {e}");
            assert!(e.to_string().contains(needle), "{text}: {e}");
        }
        for bad in ["0", "1001", "\"3\""] {
            let e = AgentConfig::from_toml(&format!(
                "device_id = \"d\"\n[gateway]\nfailover_after = {bad}\n"
            ))
            .unwrap_err();
            assert!(e.has("gateway.failover_after"), "{bad}: {e}");
        }
    }
}

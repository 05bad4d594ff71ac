//! `[admission]` and `[auth]`: serde shapes, defaults in one place, validation that reports every
//! problem with its key.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[admission]`: how fast devices may (re)connect, and when the gateway calls a burst.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdmissionConfig {
    /// Most MQTT connections at once (rumqttd's router limit). Mind the process's open-files
    /// limit: one descriptor per connection.
    pub max_connections: usize,
    /// Sustained CONNECTs admitted per second (token bucket refill).
    pub connect_rate_per_sec: u32,
    /// CONNECTs admitted at once before pacing starts (token bucket size).
    pub connect_burst: u32,
    /// Longest a paced CONNECT waits for its turn before it is refused, ms. Keep it below the
    /// devices' CONNACK timeout. 0: never wait, refuse beyond the burst.
    pub max_wait_ms: u64,
    /// Most CONNECTs waiting for their turn at once; beyond, refused at once. 0: never wait.
    pub max_waiting: usize,
    /// Burst detection: sliding window over which connects/s is measured, ms.
    pub burst_window_ms: u64,
    /// Burst detection: time constant of the baseline (EWMA of connects/s outside bursts), s.
    pub burst_baseline_secs: u64,
    /// Burst detection: a burst starts when the windowed rate exceeds this many times the
    /// baseline (and `burst_min_rate`), and ends when it falls below half of that threshold.
    pub burst_factor: f64,
    /// Burst detection: connects/s below which it is never a burst (a quiet plant's baseline is
    /// near zero).
    pub burst_min_rate: f64,
    /// Most open connections from one source address (counted from the TCP accept); beyond,
    /// new ones are closed at once. A NAT'd line of devices shares one address.
    pub per_address_max_connections: usize,
    /// Most CONNECTs from one source address waiting for their turn at once.
    pub per_address_max_waiting: usize,
    /// Sustained CONNECTs per second from one source address (its own token bucket, checked
    /// before the global one).
    pub per_address_connect_rate_per_sec: u32,
    /// CONNECTs one source address may make at once before its rate applies.
    pub per_address_connect_burst: u32,
    /// Addresses of L4 load balancers that send the PROXY protocol (HAProxy `send-proxy` or
    /// `send-proxy-v2`). A connection from one of them must start with a PROXY header, and the
    /// client address in it is the one the per-address limits, the connect hook and the logs
    /// see; connections from any other address are never asked for one. Empty (default): no
    /// PROXY protocol.
    pub proxy_protocol_from: Vec<std::net::IpAddr>,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            max_connections: 20_000,
            connect_rate_per_sec: 1_000,
            connect_burst: 2_000,
            max_wait_ms: 5_000,
            max_waiting: 10_000,
            burst_window_ms: 5_000,
            burst_baseline_secs: 300,
            burst_factor: 4.0,
            burst_min_rate: 20.0,
            per_address_max_connections: 2_000,
            per_address_max_waiting: 1_000,
            per_address_connect_rate_per_sec: 200,
            per_address_connect_burst: 1_000,
            proxy_protocol_from: Vec::new(),
        }
    }
}

impl AdmissionConfig {
    /// Every problem, as (key, what is wrong). Keys are full dotted paths
    /// (`admission.connect_rate_per_sec`).
    #[must_use]
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        let mut bad = |key: &str, msg: String| p.push((format!("admission.{key}"), msg));
        if self.max_connections == 0 {
            bad("max_connections", "must be > 0".into());
        }
        if self.connect_rate_per_sec == 0 {
            bad("connect_rate_per_sec", "must be > 0".into());
        }
        if self.connect_burst == 0 {
            bad("connect_burst", "must be > 0".into());
        }
        if self.max_wait_ms > 600_000 {
            bad(
                "max_wait_ms",
                format!(
                    "{} ms is more than 10 minutes; a waiting device holds a socket",
                    self.max_wait_ms
                ),
            );
        }
        if self.max_waiting > self.max_connections && self.max_connections > 0 {
            bad(
                "max_waiting",
                format!(
                    "{} is more than max_connections ({}): waiters hold sockets too",
                    self.max_waiting, self.max_connections
                ),
            );
        }
        if !(100..=600_000).contains(&self.burst_window_ms) {
            bad("burst_window_ms", "must be within 100..=600000".into());
        }
        if self.burst_baseline_secs.saturating_mul(1000) <= self.burst_window_ms {
            bad(
                "burst_baseline_secs",
                "must be longer than burst_window_ms (the baseline is the slow average)".into(),
            );
        }
        if !self.burst_factor.is_finite() || self.burst_factor <= 1.0 {
            bad("burst_factor", "must be a number > 1".into());
        }
        if !self.burst_min_rate.is_finite() || self.burst_min_rate < 0.0 {
            bad("burst_min_rate", "must be a number >= 0".into());
        }
        for (key, v) in [
            (
                "per_address_max_connections",
                self.per_address_max_connections,
            ),
            ("per_address_max_waiting", self.per_address_max_waiting),
            (
                "per_address_connect_rate_per_sec",
                self.per_address_connect_rate_per_sec as usize,
            ),
            (
                "per_address_connect_burst",
                self.per_address_connect_burst as usize,
            ),
        ] {
            if v == 0 {
                bad(key, "must be > 0".into());
            }
        }
        p
    }
}

/// How devices are authenticated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Any client whose id is a valid device id; user name and password are ignored.
    #[default]
    Open,
    /// Only devices listed in `credentials_file`, user name = client id = device id.
    File,
    /// Only clients with a certificate from `[mqtt.tls] client_ca_file`; its subject CN is the
    /// device id and must equal the client id. User name and password are ignored.
    Mtls,
}

/// `[auth]`: open mode (default) or a credentials file of hashed secrets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// `device_id:hash` lines (see [`crate::admission::hash_secret`]); read at start-up and
    /// on SIGHUP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    /// Allow `mode = "open"` on a listener that is not loopback (refused otherwise: any client
    /// could claim any device id). Warned about at every start.
    pub allow_open_on_network: bool,
}

impl AuthConfig {
    /// Every problem, as (key, what is wrong), including an unreadable or invalid credentials
    /// file (each bad line). Keys are full dotted paths (`auth.credentials_file`).
    #[must_use]
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        match (self.mode, &self.credentials_file) {
            (AuthMode::File, None) => p.push((
                "auth.credentials_file".into(),
                "required when mode = \"file\"".into(),
            )),
            (AuthMode::File, Some(path)) => {
                if let Err(errors) = super::auth::Credentials::load(path) {
                    for e in errors {
                        p.push(("auth.credentials_file".into(), e.to_string()));
                    }
                }
            }
            (AuthMode::Open, Some(path)) => p.push((
                "auth.credentials_file".into(),
                format!(
                    "{} is set but mode = \"open\" does not authenticate; set mode = \"file\" or remove it",
                    path.display()
                ),
            )),
            (AuthMode::Mtls, Some(path)) => p.push((
                "auth.credentials_file".into(),
                format!(
                    "{} is set but mode = \"mtls\" takes the identity from the certificate; remove it",
                    path.display()
                ),
            )),
            (AuthMode::Open | AuthMode::Mtls, None) => {}
        }
        p
    }
}

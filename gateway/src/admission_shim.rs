//! TEMPORARY stand-in for `admission/` (owned by a colleague, not landed yet): the agreed
//! contract's types with their config keys, admitting every connection. Deleted when the real
//! module lands; nothing here paces or authenticates.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdmissionConfig {
    pub max_connections: usize,
    pub connect_rate_per_sec: u32,
    pub connect_burst: u32,
    pub max_wait_ms: u64,
    pub max_waiting: usize,
    pub burst_window_ms: u64,
    pub burst_baseline_secs: u64,
    pub burst_factor: f64,
    pub burst_min_rate: f64,
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
        }
    }
}

impl AdmissionConfig {
    #[must_use]
    pub fn validate(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    #[default]
    Open,
    File,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub mode: AuthMode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<std::path::PathBuf>,
}

impl AuthConfig {
    #[must_use]
    pub fn validate(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

#[derive(Debug)]
pub struct Refused {
    pub client_id: String,
    pub reason: &'static str,
    pub at_ms: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("admission")]
pub struct AdmissionError;

#[derive(Debug)]
pub struct Admission {
    max_connections: usize,
}

impl Admission {
    /// # Errors
    /// Never (shim).
    pub fn new(
        adm: &AdmissionConfig,
        _auth: &AuthConfig,
        _refused: Option<tokio::sync::mpsc::Sender<Refused>>,
    ) -> Result<Arc<Self>, AdmissionError> {
        Ok(Arc::new(Self {
            max_connections: adm.max_connections,
        }))
    }

    pub fn install(self: &Arc<Self>, _settings: &mut rumqttd::ConnectionSettings) {}

    #[must_use]
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    pub fn observe_connect(&self) {}
}

//! Shared by the root package's end-to-end tests: the real gateway, in-process, on free ports.
#![allow(clippy::unwrap_used, dead_code)]

use breakwater_gateway::config::Config;
use breakwater_gateway::service::Gateway;
use breakwater_testkit::{free_port, kafka as tk};

/// A gateway started in this process against the test broker.
pub struct TestGateway {
    pub gateway: Gateway,
    pub mqtt_port: u16,
    /// The telemetry topic (unique per test); the gateway creates it.
    pub topic: String,
    /// Holds the spool directory (and whatever else the test puts there).
    pub dir: tempfile::TempDir,
}

/// Starts a gateway with a fresh spool, unique topics named after `prefix`, `partitions`
/// telemetry partitions, and `extra` TOML appended to the `[spool]` section.
pub async fn start_gateway(
    bootstrap: &str,
    prefix: &str,
    partitions: u32,
    spool_extra: &str,
) -> TestGateway {
    let dir = tempfile::tempdir().unwrap();
    let topic = tk::unique_topic(&format!("{prefix}-telemetry"));
    let events = tk::unique_topic(&format!("{prefix}-events"));
    let mqtt_port = free_port();
    let toml = format!(
        r#"
[mqtt]
listen = "127.0.0.1:{mqtt_port}"
[kafka]
brokers = "{bootstrap}"
topic = "{topic}"
events_topic = "{events}"
partitions = {partitions}
[spool]
dir = "{spool}"
{spool_extra}
[metrics]
listen = "127.0.0.1:0"
"#,
        spool = dir.path().join("spool").display()
    );
    let cfg = Config::from_toml(&toml).unwrap();
    assert!(cfg.validate().is_empty(), "{:?}", cfg.validate());
    let gateway = Gateway::start(cfg).await.unwrap();
    TestGateway {
        gateway,
        mqtt_port,
        topic,
        dir,
    }
}

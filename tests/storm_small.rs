//! A small reconnection storm through the real gateway and the real Kafka-API broker: a few
//! hundred virtual devices (the agent's real sending logic), every connection cut at once, all
//! back under their own backoff. Exact assertions: nothing lost, nothing duplicated in Kafka,
//! per-device order kept, everything acked. The big runs are benchmarks (`scripts/bench`).

#![allow(clippy::unwrap_used)]

use breakwater::storm::{self, Options, Scenario};
use breakwater_gateway::config::Config as GatewayConfig;
use breakwater_gateway::service::Gateway;
use breakwater_testkit::{free_port, kafka as tk, require_kafka};
use clap::Parser as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_storm_loses_and_duplicates_nothing() {
    let bootstrap = require_kafka!();
    let dir = tempfile::tempdir().unwrap();
    let topic = tk::unique_topic("storm-telemetry");
    let events = tk::unique_topic("storm-events");
    let mqtt_port = free_port();
    let gw_toml = format!(
        r#"
[mqtt]
listen = "127.0.0.1:{mqtt_port}"
[kafka]
brokers = "{bootstrap}"
topic = "{topic}"
events_topic = "{events}"
partitions = 4
[spool]
dir = "{spool}"
[metrics]
listen = "127.0.0.1:0"
"#,
        spool = dir.path().join("spool").display()
    );
    let gateway = Gateway::start(GatewayConfig::from_toml(&gw_toml).unwrap())
        .await
        .unwrap();

    let opts = Options::parse_from([
        "breakwater-storm",
        "--gateway",
        &format!("127.0.0.1:{mqtt_port}"),
        "--kafka",
        &bootstrap,
        "--topic",
        &topic,
        "--devices",
        "300",
        "--readings-per-device",
        "60",
        "--rate",
        "20",
        "--batch",
        "20",
        "--scenario",
        "storm",
        "--outage",
        "2",
        "--backoff-initial-ms",
        "1000",
        "--timeout",
        "180",
    ]);
    assert_eq!(opts.scenario, Scenario::Storm);
    let report = storm::run(&opts).await.unwrap();
    gateway.shutdown().await;

    let v = report
        .verification
        .as_ref()
        .expect("verified against Kafka");
    assert_eq!(v.expected_readings, 300 * 60);
    assert_eq!(v.lost, 0, "{v:?}");
    assert_eq!(v.duplicates, 0, "the gateway dedupes resends: {v:?}");
    assert_eq!(v.out_of_order, 0, "{v:?}");
    assert!(report.all_acked);
    assert!(report.cut_at.is_some(), "the storm happened");
    assert!(
        report.reconnect_seconds.is_some() && report.drain_seconds.is_some(),
        "every device came back and the backlog drained"
    );
    assert!(
        report.connects_total >= 600,
        "each device connected at least twice (before and after the cut): {}",
        report.connects_total
    );
}

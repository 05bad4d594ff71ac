//! The Sparkplug B device model against the real gateway (in-process, `[sparkplug] enabled`)
//! and the real Kafka-API broker, small: edge nodes of `breakwater-storm --device-model
//! sparkplug` (NBIRTH/DBIRTH with aliases, DDATA of 50 metrics by alias, QoS 1, PUBACK = done).
//! Every PUBACKed reading must be in Kafka under `spb.storm.{node}.d1`, decoded from aliases
//! back into the readings the verifier expects. The big runs are benchmarks
//! (`scripts/bench --only sparkplug`).

#![allow(clippy::unwrap_used)]

mod common;

use breakwater::storm::{self, DeviceModel, Options};
use breakwater_testkit::require_kafka;
use clap::Parser as _;

const SPARKPLUG: &str = "\n[sparkplug]\nenabled = true\n";

fn options(mqtt_port: u16, bootstrap: &str, topic: &str, scenario: &str) -> Options {
    Options::parse_from([
        "breakwater-storm",
        "--gateway",
        &format!("127.0.0.1:{mqtt_port}"),
        "--kafka",
        bootstrap,
        "--topic",
        topic,
        "--device-model",
        "sparkplug",
        "--devices",
        "20",
        "--readings-per-device",
        "500",
        "--metrics-per-message",
        "50",
        "--rate",
        "200",
        "--scenario",
        scenario,
        "--outage",
        "1",
        "--backoff-initial-ms",
        "500",
        "--backoff-max-ms",
        "1000",
        "--timeout",
        "60",
        "--verify-timeout",
        "60",
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparkplug_edge_nodes_deliver_every_reading_once() {
    let bootstrap = require_kafka!();
    let gw = common::start_gateway(&bootstrap, "spb-steady", 3, SPARKPLUG).await;
    let opts = options(gw.mqtt_port, &bootstrap, &gw.topic, "steady");
    assert_eq!(opts.device_model, DeviceModel::Sparkplug);
    let report = storm::run(&opts).await.unwrap();
    gw.gateway.shutdown().await;

    let v = report
        .verification
        .as_ref()
        .expect("verified against Kafka");
    assert_eq!(v.expected_readings, 20 * 500);
    assert_eq!(v.delivered_readings, 20 * 500, "{v:?}");
    assert_eq!(v.lost, 0, "{v:?}");
    assert_eq!(v.duplicates, 0, "{v:?}");
    assert_eq!(v.out_of_order, 0, "{v:?}");
    assert!(report.all_acked, "every DDATA was PUBACKed");
    assert_eq!(report.ack_latency.count, 20 * 10, "one PUBACK per DDATA");
    assert_eq!(report.connects_total, 20);
}

/// A network cut: every node reconnects, publishes NBIRTH/DBIRTH ahead of the DDATA rumqttc
/// republishes, and nothing PUBACKed is missing (redeliveries may duplicate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparkplug_edge_nodes_lose_nothing_across_a_network_cut() {
    let bootstrap = require_kafka!();
    let gw = common::start_gateway(&bootstrap, "spb-storm", 3, SPARKPLUG).await;
    let opts = options(gw.mqtt_port, &bootstrap, &gw.topic, "storm");
    let report = storm::run(&opts).await.unwrap();
    gw.gateway.shutdown().await;

    let v = report
        .verification
        .as_ref()
        .expect("verified against Kafka");
    assert!(report.cut_at.is_some(), "the cut happened");
    assert!(report.connects_total >= 40, "{}", report.connects_total);
    assert!(report.all_acked, "every DDATA was PUBACKed after the cut");
    assert_eq!(v.lost, 0, "{v:?}");
    assert_eq!(v.out_of_order, 0, "{v:?}");
}

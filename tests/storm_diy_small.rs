//! The DIY baseline path, small and exact: virtual devices of the `diy-json` model (one JSON
//! reading per MQTT message, QoS 1, PUBACK = done) -> real Mosquitto ->
//! `breakwater-baseline-forwarder` (in-process) -> the real Kafka-API broker. Nothing is killed
//! or cut, so every reading must be in Kafka exactly once, in order per device, one record per
//! reading. What the baseline loses when its forwarder dies is a benchmark (`scripts/bench`).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use breakwater::baseline;
use breakwater::storm::{self, DeviceModel, Options};
use breakwater_testkit::mosquitto::Mosquitto;
use breakwater_testkit::{kafka as tk, require_kafka};
use clap::Parser as _;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diy_json_baseline_delivers_every_reading_once_when_nothing_fails() {
    let bootstrap = require_kafka!();
    let Some(mosquitto) = Mosquitto::start() else {
        return;
    };
    let topic = tk::fresh_topic(&bootstrap, "diy-telemetry", 3).await;

    let fw_opts = baseline::Options::parse_from([
        "breakwater-baseline-forwarder",
        "--mqtt",
        &mosquitto.address(),
        "--kafka",
        &bootstrap,
        "--topic",
        &topic,
        "--client-id",
        &format!("fw-{topic}"),
    ]);
    let cancel = CancellationToken::new();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let fw = {
        let cancel = cancel.clone();
        tokio::spawn(
            async move { baseline::run_with_ready(&fw_opts, cancel, Some(ready_tx)).await },
        )
    };
    tokio::time::timeout(Duration::from_secs(10), ready_rx)
        .await
        .expect("the forwarder subscribed within 10 s")
        .unwrap();

    let opts = Options::parse_from([
        "breakwater-storm",
        "--gateway",
        &mosquitto.address(),
        "--kafka",
        &bootstrap,
        "--topic",
        &topic,
        "--device-model",
        "diy-json",
        "--devices",
        "40",
        "--readings-per-device",
        "50",
        "--rate",
        "100",
        "--scenario",
        "steady",
        "--timeout",
        "60",
        "--verify-timeout",
        "60",
    ]);
    assert_eq!(opts.device_model, DeviceModel::DiyJson);
    let report = storm::run(&opts).await.unwrap();
    cancel.cancel();
    fw.await.unwrap().unwrap();

    let v = report
        .verification
        .as_ref()
        .expect("verified against Kafka");
    assert_eq!(v.expected_readings, 40 * 50);
    assert_eq!(v.delivered_readings, 40 * 50, "{v:?}");
    assert_eq!(v.lost, 0, "{v:?}");
    assert_eq!(v.duplicates, 0, "{v:?}");
    assert_eq!(v.out_of_order, 0, "{v:?}");
    assert_eq!(v.foreign_or_bad_records, 0, "{v:?}");
    assert_eq!(v.records, 40 * 50, "one Kafka record per reading: {v:?}");
    assert!(report.all_acked, "every reading was PUBACKed");
    assert_eq!(report.ack_latency.count, 40 * 50, "one PUBACK per reading");
    assert_eq!(report.connects_total, 40);
    assert_eq!(report.resends_total, 0);
    assert!(v.last_record_ms.is_some() && report.into_kafka_readings_per_second.is_some());
}

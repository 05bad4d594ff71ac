//! End to end against the real Kafka-API broker: real MQTT devices (rumqttc), the real gateway
//! binary, records read back from Kafka.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use breakwater_protocol::envelope;
use breakwater_protocol::kafka::{FleetEvent, FleetEventKind};
use common::*;
use rumqttc::QoS;

/// Many devices at once, acked on Kafka delivery: every reading arrives, in order per device,
/// exactly once, and each device's birth is on the events topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reading_arrives_in_order_exactly_once() {
    let bootstrap = breakwater_testkit::require_kafka!();
    let topic = breakwater_testkit::kafka::unique_topic("gw-e2e");
    let events = breakwater_testkit::kafka::unique_topic("gw-e2e-ev");
    let dir = tempfile::tempdir().unwrap();
    let gw = GatewayProc::start(
        dir.path(),
        &format!(
            "[kafka]\nbrokers = \"{bootstrap}\"\ntopic = \"{topic}\"\nevents_topic = \"{events}\"\npartitions = 3\n"
        ),
    );
    let devices = names("e2e", 8);
    let total = 3_000;
    let specs = devices
        .iter()
        .map(|d| spec(gw.mqtt_port, d, total))
        .collect();
    let reports = run_devices(specs).await;
    for (d, r) in &reports {
        assert_eq!(r.acked_upto, total, "{d}");
    }
    let by = read_until_complete(&bootstrap, &topic, 3, &devices, total).await;
    assert_exact(&by, &devices, total);

    let ev = read_topic(&bootstrap, &events, 3, devices.len()).await;
    let births: std::collections::HashSet<String> = ev
        .iter()
        .map(|r| FleetEvent::decode(r.value.as_deref().unwrap()).unwrap())
        .filter(|e| e.kind == FleetEventKind::Birth && e.epoch == 42)
        .map(|e| e.device.as_str().to_owned())
        .collect();
    for d in &devices {
        assert!(births.contains(d), "no birth event for {d}");
    }
    assert!(gw.metric("breakwater_gateway_acks_sent_total", "") >= 1.0);
}

/// Duplicates are dropped (and re-acked); a batch after a gap is never acked past the gap; a
/// new epoch restarts the device. Runs on the spool alone (no Kafka: ack after fsync), then
/// checks the spool content with `spool export`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_dropped_and_never_ack_past_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let mut gw = GatewayProc::start(dir.path(), "");
    let mut d = RawDevice::connect(gw.mqtt_port, "gap-dev").await;

    d.send(1, 50).await;
    d.expect_ack(50).await;
    // Duplicate: re-acked at 50, not stored again.
    d.send(1, 50).await;
    d.expect_ack(50).await;
    // Gap: 101..150 before 51..100 -> dropped, no ack past 50.
    d.send(101, 50).await;
    // Then an in-order batch: acked 100, which proves the gap batch was not taken (else 150).
    d.send(51, 50).await;
    let seen = d.expect_ack(100).await;
    assert!(seen.iter().all(|a| a.upto_seq <= 100), "{seen:?}");
    // Overlapping resend 51..150 -> only 101..150 is new.
    d.send(51, 100).await;
    d.expect_ack(150).await;

    assert!(
        gw.metric(
            "breakwater_gateway_dropped_batches_total",
            "reason=\"duplicate\""
        ) >= 1.0
    );
    assert!(gw.metric("breakwater_gateway_dropped_batches_total", "reason=\"gap\"") >= 1.0);
    drop(d);
    assert!(gw.terminate(), "graceful stop failed:\n{}", gw.log_text());

    // The spool holds exactly 1..=150 once, in order.
    assert_eq!(
        spooled_seqs(&dir.path().join("spool")),
        (1..=150).collect::<Vec<_>>()
    );
}

/// A device's floor declaration (`drop-oldest` dropped readings it never sent): the gateway acks
/// past the declared range and counts it; a covered floor is only re-acked. After a kill -9 the
/// spool seeds the sequencer and the device's floor on the new connection works again. Spool
/// alone (ack after fsync); the spool holds exactly what was sent, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floor_acks_past_device_dropped_readings_also_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut gw = GatewayProc::start(dir.path(), "");
    let mut d = RawDevice::connect(gw.mqtt_port, "floor-dev").await;
    let dropped = "breakwater_gateway_device_dropped_readings_total";

    d.send(1, 50).await;
    d.expect_ack(50).await;
    // The device dropped 51..=100 before sending them. Its next batch is after a gap: dropped.
    d.send(101, 50).await;
    // The floor declares the range: acked past it at once (nothing else in flight).
    d.floor(101).await;
    let seen = d.expect_ack(100).await;
    assert!(seen.iter().all(|a| a.upto_seq <= 100), "{seen:?}");
    d.send(101, 50).await;
    d.expect_ack(150).await;
    assert_eq!(gw.metric(dropped, ""), 50.0);
    // Declared again (as on every new connection): covered, re-acked, not counted again.
    d.floor(101).await;
    d.expect_ack(150).await;
    assert_eq!(gw.metric(dropped, ""), 50.0);
    assert_eq!(
        gw.metric("breakwater_gateway_received_floors_total", ""),
        2.0
    );

    // Crash. Meanwhile the device dropped 151..=200.
    drop(d);
    gw.kill9();
    gw.spawn();
    let mut d = RawDevice::connect(gw.mqtt_port, "floor-dev").await;
    d.send(201, 10).await; // before the floor: a gap, not acked past 150
    d.floor(201).await;
    let seen = d.expect_ack(200).await;
    assert!(seen.iter().all(|a| a.upto_seq <= 200), "{seen:?}");
    d.send(201, 10).await;
    d.expect_ack(210).await;
    assert_eq!(
        gw.metric(dropped, ""),
        50.0,
        "the new process counted 151..=200"
    );
    drop(d);
    assert!(gw.terminate(), "graceful stop failed:\n{}", gw.log_text());
    assert!(
        gw.log_text().contains("device dropped readings"),
        "the drop is logged"
    );

    let seqs = spooled_seqs(&dir.path().join("spool"));
    let expected: Vec<u64> = (1..=50).chain(101..=150).chain(201..=210).collect();
    assert_eq!(seqs, expected);
}

/// Malformed payloads from a plain MQTT client (`mosquitto_pub`, or rumqttc when it is not
/// installed) are counted by reason and do not disturb a well-behaved device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_payloads_are_counted_and_harmless() {
    let dir = tempfile::tempdir().unwrap();
    let gw = GatewayProc::start(dir.path(), "");
    let port = gw.mqtt_port.to_string();
    let bad: [(&str, &[u8]); 4] = [
        ("bw/v1/bad-1/telemetry", b"hello"),
        ("bw/v1/bad-1/telemetry", b"BW\x01\x01\xff\xff\xff"),
        ("bw/v1/bad-1/telemetry", b"BW\x09\x01"),
        ("bw/v1/bad-1/status", b""),
    ];
    let pub_bin = which("mosquitto_pub");
    for (topic, payload) in bad {
        if let Some(bin) = &pub_bin {
            let path = dir.path().join("payload.bin");
            std::fs::write(&path, payload).unwrap();
            let mut cmd = std::process::Command::new(bin);
            cmd.args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-q",
                "1",
                "-i",
                "bad-1",
                "-t",
                topic,
            ]);
            if payload.is_empty() {
                cmd.arg("-n");
            } else {
                cmd.arg("-f").arg(&path);
            }
            let st = cmd.status().unwrap();
            assert!(st.success());
        } else {
            let raw = RawDevice::connect(gw.mqtt_port, "bad-1").await;
            raw.client
                .publish(topic, QoS::AtLeastOnce, false, payload.to_vec())
                .await
                .unwrap();
        }
    }
    // A batch for another device published on bad-1's topic.
    let other = make_batch("someone-else", 1, 1, 5);
    let raw = RawDevice::connect(gw.mqtt_port, "bad-2").await;
    raw.client
        .publish(
            "bw/v1/bad-2/telemetry",
            QoS::AtLeastOnce,
            false,
            envelope::encode_batch(&other),
        )
        .await
        .unwrap();

    let report = run_device(spec(gw.mqtt_port, "good-1", 500)).await;
    assert_eq!(report.acked_upto, 500);
    assert!(wait_until(Duration::from_secs(10), || {
        gw.metric("breakwater_gateway_invalid_payloads_total", "") >= 5.0
    }));
    let page = gw.metrics();
    for reason in [
        "bad_magic",
        "malformed",
        "unsupported_version",
        "device_mismatch",
        "truncated",
    ] {
        assert!(
            parse_metric(
                &page,
                "breakwater_gateway_invalid_payloads_total",
                &format!("reason=\"{reason}\"")
            ) >= 1.0,
            "no invalid payload counted for {reason}:\n{page}"
        );
    }
    assert_eq!(
        gw.metric("breakwater_gateway_accepted_readings_total", ""),
        500.0
    );
}

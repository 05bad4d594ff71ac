//! Kafka paused (a private tansu, SIGSTOP) while devices stream, then resumed (SIGCONT): the
//! spool takes the data, drains when Kafka returns, and nothing is lost, in both ack modes.
//!
//! * ack mode `spool`: devices are fully acked while Kafka is still paused (ack after fsync).
//! * ack mode `kafka`: batches skip the spool while Kafka keeps up; once paused, the producer
//!   holds at most `direct_max_in_flight_records` of them and the spool takes the rest; no
//!   delivery happens while paused and devices keep their data; after the resume the spool
//!   drains, batches skip it again, and every reading arrives once, in order.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;

struct Setup {
    _dir: tempfile::TempDir,
    gw: GatewayProc,
    kafka: PrivateKafka,
    topic: String,
}

fn setup(mode: &str, kafka_extra: &str) -> Option<Setup> {
    // Needs the tansu binary; skip like require_kafka! does when the harness is absent.
    let _ = breakwater_testkit::kafka::bootstrap()?;
    let kafka = PrivateKafka::start().expect("tansu binary on PATH (scripts/test installs it)");
    let dir = tempfile::tempdir().unwrap();
    let topic = "telemetry".to_owned();
    let gw = GatewayProc::start_with(
        dir.path(),
        &format!("ack_mode = \"{mode}\""),
        &format!(
            "[kafka]\nbrokers = \"{}\"\ntopic = \"{topic}\"\nevents_topic = \"events\"\npartitions = 2\n{kafka_extra}\n",
            kafka.bootstrap()
        ),
    );
    Some(Setup {
        _dir: dir,
        gw,
        kafka,
        topic,
    })
}

fn device_specs(port: u16, prefix: &str, total: u64) -> (Vec<String>, Vec<DeviceSpec>) {
    let devices = names(prefix, 4);
    let specs = devices
        .iter()
        .map(|d| {
            let mut s = spec(port, d, total);
            s.batch = 25;
            s.resend_after = Duration::from_secs(1);
            s.deadline = Duration::from_secs(150);
            s
        })
        .collect();
    (devices, specs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_paused_ack_mode_spool_acks_from_spool_then_drains() {
    let Some(s) = setup("spool", "") else { return };
    let total = 3_000;
    let (devices, specs) = device_specs(s.gw.mqtt_port, "out-spool", total);
    // Some data through a healthy Kafka first.
    let warm = run_device(spec(s.gw.mqtt_port, "out-spool-warm", 200)).await;
    assert_eq!(warm.acked_upto, 200);

    s.kafka.pause();
    // Devices complete while Kafka is paused: acks come from the spool.
    let reports = run_devices(specs).await;
    for (d, r) in &reports {
        assert_eq!(r.acked_upto, total, "{d}");
    }
    assert!(
        s.gw.metric("breakwater_gateway_spool_records", "") > 0.0,
        "the spool should hold the undelivered batches"
    );
    s.kafka.resume();

    let by = read_until_complete(&s.kafka.bootstrap(), &s.topic, 2, &devices, total).await;
    assert_exact(&by, &devices, total);
    // Drained: the spool empties.
    assert!(
        wait_until(Duration::from_secs(60), || s
            .gw
            .metric("breakwater_gateway_spool_records", "")
            == 0.0),
        "spool did not drain"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_paused_ack_mode_kafka_holds_acks_then_completes() {
    // A small window, so that the pause fills it and both paths carry batches.
    let Some(s) = setup("kafka", "direct_max_in_flight_records = 4") else {
        return;
    };
    let total = 2_000;
    let warm = run_device(spec(s.gw.mqtt_port, "out-kafka-warm", 200)).await;
    assert_eq!(warm.acked_upto, 200);
    let direct = |s: &Setup| s.gw.metric("breakwater_gateway_direct_batches_total", "");
    let direct_at_pause = direct(&s);
    assert!(
        direct_at_pause > 0.0,
        "with Kafka keeping up, batches skip the spool:\n{}",
        s.gw.metrics()
    );
    assert_eq!(
        s.gw.metric("breakwater_gateway_spool_written_batches_total", ""),
        0.0
    );

    s.kafka.pause();
    let delivered_at_pause =
        s.gw.metric("breakwater_gateway_kafka_delivered_batches_total", "");
    let (devices, specs) = device_specs(s.gw.mqtt_port, "out-kafka", total);
    let run = tokio::spawn(run_devices(specs));
    // While paused: batches pile up in the spool, nothing is delivered, devices are not done.
    assert!(
        wait_until(Duration::from_secs(30), || s
            .gw
            .metric("breakwater_gateway_spool_records", "")
            >= 8.0),
        "batches should wait in the spool:\n{}",
        s.gw.metrics()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        s.gw.metric("breakwater_gateway_kafka_delivered_batches_total", ""),
        delivered_at_pause,
        "nothing can be delivered while Kafka is paused"
    );
    assert!(
        !run.is_finished(),
        "devices must not be fully acked while Kafka is away"
    );

    assert!(
        direct(&s) - direct_at_pause <= 4.0,
        "at most the window goes past the spool while Kafka is away:\n{}",
        s.gw.metrics()
    );

    s.kafka.resume();
    let reports = run.await.unwrap();
    for (d, r) in &reports {
        assert_eq!(r.acked_upto, total, "{d}");
    }
    let by = read_until_complete(&s.kafka.bootstrap(), &s.topic, 2, &devices, total).await;
    assert_exact(&by, &devices, total);
    assert!(
        direct(&s) - direct_at_pause > 4.0,
        "once the spool has drained, batches skip it again:\n{}",
        s.gw.metrics()
    );
}

/// After batches skipped the spool, the spool's record of a device (its cursor) is behind what
/// the device was acked. A kill -9 and restart must not take the device's next batch for a gap
/// (it would never be acked again): the device goes on where its acks left it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_batches_skipped_the_spool_does_not_stall_the_device() {
    let Some(mut s) = setup("kafka", "direct_max_in_flight_records = 1") else {
        return;
    };
    let mut d = RawDevice::connect(s.gw.mqtt_port, "behind-dev").await;
    // Kafka away: 1..=50 waits in the producer (the window is 1), 51..=100 goes to the spool,
    // which records the device's cursor at 100.
    s.kafka.pause();
    d.send(1, 50).await;
    d.send(51, 50).await;
    assert!(
        wait_until(Duration::from_secs(30), || s
            .gw
            .metric("breakwater_gateway_spool_written_batches_total", "")
            >= 1.0),
        "the second batch should be spooled:\n{}",
        s.gw.metrics()
    );
    s.kafka.resume();
    d.expect_ack(100).await;
    // Kafka keeps up again: these skip the spool, whose cursor stays at 100.
    let direct_before = s.gw.metric("breakwater_gateway_direct_batches_total", "");
    d.send(101, 50).await;
    d.expect_ack(150).await;
    d.send(151, 50).await;
    d.expect_ack(200).await;
    assert_eq!(
        s.gw.metric("breakwater_gateway_direct_batches_total", "") - direct_before,
        2.0,
        "{}",
        s.gw.metrics()
    );

    drop(d);
    s.gw.kill9();
    s.gw.spawn();
    let mut d = RawDevice::connect(s.gw.mqtt_port, "behind-dev").await;
    // Resent below the cursor: a duplicate, re-acked at once.
    d.send(51, 50).await;
    d.expect_ack(100).await;
    // Where the device's acks left it: taken, not a gap.
    d.send(201, 50).await;
    d.expect_ack(250).await;
    // After that, a real gap is still a gap.
    d.send(301, 50).await;
    d.send(251, 50).await;
    let seen = d.expect_ack(300).await;
    assert!(seen.iter().all(|a| a.upto_seq <= 300), "{seen:?}");
    assert!(s.gw.metric("breakwater_gateway_dropped_batches_total", "reason=\"gap\"") >= 1.0);

    let devices = vec!["behind-dev".to_owned()];
    let by = read_until_complete(&s.kafka.bootstrap(), &s.topic, 2, &devices, 300).await;
    assert_complete_in_order(&by, &devices, 300);
}

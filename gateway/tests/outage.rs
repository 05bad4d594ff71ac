//! Kafka paused (a private tansu, SIGSTOP) while devices stream, then resumed (SIGCONT): the
//! spool takes the data, drains when Kafka returns, and nothing is lost, in both ack modes.
//!
//! * ack mode `spool`: devices are fully acked while Kafka is still paused (ack after fsync).
//! * ack mode `kafka`: no delivery happens while paused; the spool holds the unacked batches and
//!   devices keep theirs; after the resume every device completes.
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

fn setup(mode: &str) -> Option<Setup> {
    // Needs the tansu binary; skip like require_kafka! does when the harness is absent.
    let _ = breakwater_testkit::kafka::bootstrap()?;
    let kafka = PrivateKafka::start().expect("tansu binary on PATH (scripts/test installs it)");
    let dir = tempfile::tempdir().unwrap();
    let topic = "telemetry".to_owned();
    let gw = GatewayProc::start_with(
        dir.path(),
        &format!("ack_mode = \"{mode}\""),
        &format!(
            "[kafka]\nbrokers = \"{}\"\ntopic = \"{topic}\"\nevents_topic = \"events\"\npartitions = 2\n",
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
    let Some(s) = setup("spool") else { return };
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
    let Some(s) = setup("kafka") else { return };
    let total = 2_000;
    let warm = run_device(spec(s.gw.mqtt_port, "out-kafka-warm", 200)).await;
    assert_eq!(warm.acked_upto, 200);

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

    s.kafka.resume();
    let reports = run.await.unwrap();
    for (d, r) in &reports {
        assert_eq!(r.acked_upto, total, "{d}");
    }
    let by = read_until_complete(&s.kafka.bootstrap(), &s.topic, 2, &devices, total).await;
    assert_exact(&by, &devices, total);
}

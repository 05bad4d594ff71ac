//! Issue 18, the gateway half: SIGTERM while Kafka is unreachable (a private tansu, SIGSTOPped)
//! ends within `[shutdown] deadline` plus a margin, exits 0, keeps what Kafka did not confirm
//! in the spool, and a restart delivers it once Kafka is back. A second SIGTERM makes it stop
//! waiting for Kafka at once, with the same guarantees.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const DEADLINE: Duration = Duration::from_secs(3);
/// Process start-up of the stages' stop, the runtime and librdkafka teardown.
const MARGIN: Duration = Duration::from_secs(7);

/// SIGTERM; `Some((success, took))` if the process exited within `within`.
fn terminate_timed(g: &mut GatewayProc, within: Duration) -> Option<(bool, Duration)> {
    let c = g.child.as_mut()?;
    Command::new("kill")
        .arg("-TERM")
        .arg(c.id().to_string())
        .status()
        .unwrap();
    let started = Instant::now();
    while started.elapsed() < within {
        if let Some(st) = c.try_wait().unwrap() {
            g.child = None;
            return Some((st.success(), started.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn signal_term(g: &GatewayProc) {
    let c = g.child.as_ref().expect("running");
    Command::new("kill")
        .arg("-TERM")
        .arg(c.id().to_string())
        .status()
        .unwrap();
}

fn start(mode: &str, kafka: &PrivateKafka, dir: &std::path::Path) -> GatewayProc {
    start_with_deadline(mode, kafka, dir, DEADLINE)
}

fn start_with_deadline(
    mode: &str,
    kafka: &PrivateKafka,
    dir: &std::path::Path,
    deadline: Duration,
) -> GatewayProc {
    GatewayProc::start_with(
        dir,
        &format!("ack_mode = \"{mode}\""),
        &format!(
            "[kafka]\nbrokers = \"{}\"\ntopic = \"telemetry\"\nevents_topic = \"events\"\npartitions = 2\ndirect_max_in_flight_records = 2\n\
             [shutdown]\ndeadline = \"{}s\"\n",
            kafka.bootstrap(),
            deadline.as_secs()
        ),
    )
}

async fn kafka_paused_during_shutdown(mode: &str) {
    if breakwater_testkit::kafka::bootstrap().is_none() {
        return;
    }
    let kafka = PrivateKafka::start().expect("tansu binary on PATH (scripts/test installs it)");
    let dir = tempfile::tempdir().unwrap();
    let mut gw = start(mode, &kafka, dir.path());
    let device = format!("stop-{mode}");
    let mut d = RawDevice::connect(gw.mqtt_port, &device).await;
    // Through a healthy Kafka first (the producer is connected and has metadata).
    d.send(1, 50).await;
    d.expect_ack(50).await;

    // Kafka goes away; batches keep coming, the device stays connected during the shutdown.
    kafka.pause();
    for k in 0..6 {
        d.send(51 + k * 25, 25).await;
    }
    if mode == "spool" {
        // Acked after the fsync, Kafka or not.
        d.expect_ack(200).await;
    } else {
        assert!(
            wait_until(Duration::from_secs(30), || gw
                .metric("breakwater_gateway_spool_records", "")
                >= 1.0),
            "batches should wait in the spool:\n{}",
            gw.metrics()
        );
    }

    let exit = terminate_timed(&mut gw, DEADLINE + MARGIN);
    let log = gw.log_text();
    let Some((ok, took)) = exit else {
        panic!("gateway still running {DEADLINE:?} + {MARGIN:?} after SIGTERM with Kafka paused:\n{log}");
    };
    eprintln!("{mode}: gateway exited {took:?} after SIGTERM with Kafka paused");
    assert!(ok, "exit status not success:\n{log}");
    assert!(log.contains("gateway stopped"), "{log}");
    drop(d);

    // Kafka back, gateway restarted: what stayed in the spool is delivered; the device
    // resends what it was not acked for (ack mode kafka), as the agent would.
    kafka.resume();
    gw.spawn();
    let d = RawDevice::connect(gw.mqtt_port, &device).await;
    if mode == "kafka" {
        for k in 0..6 {
            d.send(51 + k * 25, 25).await;
        }
    }
    let devices = vec![device];
    let by = read_until_complete(&kafka.bootstrap(), "telemetry", 2, &devices, 200).await;
    assert_complete_in_order(&by, &devices, 200);
    assert!(gw.terminate(), "{}", gw.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_kafka_paused_ends_at_the_deadline_ack_mode_spool() {
    kafka_paused_during_shutdown("spool").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_kafka_paused_ends_at_the_deadline_ack_mode_kafka() {
    kafka_paused_during_shutdown("kafka").await;
}

/// Kafka paused, a 120 s deadline, two SIGTERMs: the second ends the wait for Kafka, so the
/// gateway exits long before the deadline (without the second-signal handling it waits all of
/// it), exits 0, and what was acked stays in the spool and reaches Kafka after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_stops_waiting_for_kafka_and_loses_nothing() {
    if breakwater_testkit::kafka::bootstrap().is_none() {
        return;
    }
    const LONG: Duration = Duration::from_secs(120);
    let kafka = PrivateKafka::start().expect("tansu binary on PATH (scripts/test installs it)");
    let dir = tempfile::tempdir().unwrap();
    let mut gw = start_with_deadline("spool", &kafka, dir.path(), LONG);
    let device = "stop-twice".to_owned();
    let mut d = RawDevice::connect(gw.mqtt_port, &device).await;
    d.send(1, 50).await;
    d.expect_ack(50).await;
    kafka.pause();
    for k in 0..6 {
        d.send(51 + k * 25, 25).await;
    }
    d.expect_ack(200).await;

    signal_term(&gw);
    assert!(
        wait_until(Duration::from_secs(20), || gw
            .log_text()
            .contains("shutting down")),
        "no shutdown after the first SIGTERM:\n{}",
        gw.log_text()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        gw.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "the gateway should still wait for Kafka after one SIGTERM:\n{}",
        gw.log_text()
    );
    let exit = terminate_timed(&mut gw, MARGIN + DEADLINE);
    let log = gw.log_text();
    let Some((ok, took)) = exit else {
        panic!(
            "gateway still running {:?} after a second SIGTERM (deadline {LONG:?}):\n{log}",
            MARGIN + DEADLINE
        );
    };
    eprintln!("gateway exited {took:?} after the second SIGTERM");
    assert!(ok, "exit status not success:\n{log}");
    assert!(log.contains("second stop signal"), "{log}");
    assert!(log.contains("gateway stopped"), "{log}");
    drop(d);

    kafka.resume();
    gw.spawn();
    let devices = vec![device];
    let by = read_until_complete(&kafka.bootstrap(), "telemetry", 2, &devices, 200).await;
    assert_complete_in_order(&by, &devices, 200);
    assert!(gw.terminate(), "{}", gw.log_text());
}

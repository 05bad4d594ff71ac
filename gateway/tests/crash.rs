//! kill -9 of the real gateway binary mid-stream, then a restart on the same spool: every
//! reading still reaches Kafka, in order per device (duplicates allowed: a crash between a
//! delivery and its spool delete, or before an ack reached the device, resends).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;

async fn crash_and_restart(mode: &str) {
    let bootstrap = breakwater_testkit::require_kafka!();
    let topic = breakwater_testkit::kafka::unique_topic("gw-crash");
    let events = breakwater_testkit::kafka::unique_topic("gw-crash-ev");
    let dir = tempfile::tempdir().unwrap();
    let mut gw = GatewayProc::start_with(
        dir.path(),
        &format!("ack_mode = \"{mode}\""),
        &format!(
            "[kafka]\nbrokers = \"{bootstrap}\"\ntopic = \"{topic}\"\nevents_topic = \"{events}\"\npartitions = 2\n"
        ),
    );
    let devices = names(&format!("crash-{mode}"), 6);
    let total = 6_000;
    let specs: Vec<_> = devices
        .iter()
        .map(|d| {
            let mut s = spec(gw.mqtt_port, d, total);
            s.batch = 20;
            s.resend_after = Duration::from_secs(1);
            s.deadline = Duration::from_secs(150);
            s
        })
        .collect();
    let run = tokio::spawn(run_devices(specs));

    // Let data flow, then crash mid-stream.
    assert!(
        wait_until(Duration::from_secs(60), || gw
            .metric("breakwater_gateway_accepted_readings_total", "")
            >= 5_000.0),
        "no progress before the crash:\n{}",
        gw.log_text()
    );
    gw.kill9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    gw.spawn();

    let reports = run.await.unwrap();
    for (d, r) in &reports {
        assert_eq!(r.acked_upto, total, "{d}");
    }
    let by = read_until_complete(&bootstrap, &topic, 2, &devices, total).await;
    assert_complete_in_order(&by, &devices, total);
    assert!(gw.log_text().contains("spool opened"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_stream_loses_nothing_ack_mode_spool() {
    crash_and_restart("spool").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_stream_loses_nothing_ack_mode_kafka() {
    crash_and_restart("kafka").await;
}

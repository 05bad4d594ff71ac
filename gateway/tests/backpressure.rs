//! Backpressure: as the spool fills, acks carry less credit and a `retry_after_ms`; at the bound
//! the gateway refuses batches (counted) and stops acking, and what it acked is exactly what it
//! holds. Runs on the spool alone with the smallest spool allowed (1 MiB).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_spool_lowers_credit_then_stops_acking() {
    let dir = tempfile::tempdir().unwrap();
    let mut gw = GatewayProc::start_with(
        dir.path(),
        "max_bytes = 1048576",
        "[ack]\nmax_credit = 8\nretry_after_pressure = 0.5\nmax_retry_after_ms = 2000\n",
    );
    let mut s = spec(gw.mqtt_port, "bp-dev", 1_000_000);
    s.credit = 8;
    s.batch = 500;
    s.resend_after = Duration::from_millis(500);
    s.stall_after = Some(Duration::from_secs(4));
    s.deadline = Duration::from_secs(120);
    let r = run_device(s).await;

    assert!(r.acked_upto > 0 && r.acked_upto < 1_000_000, "{r:?}");
    assert!(
        r.max_retry_after.is_some(),
        "no retry_after_ms under pressure: {r:?}"
    );
    assert!(r.min_credit.unwrap() < 8, "credit never fell: {r:?}");
    assert!(
        gw.metric(
            "breakwater_gateway_dropped_batches_total",
            "reason=\"spool_full\""
        ) >= 1.0,
        "{}",
        gw.metrics()
    );
    let spool_bytes = gw.metric("breakwater_gateway_spool_bytes", "");
    assert!(
        spool_bytes <= 1_048_576.0 && spool_bytes > 900_000.0,
        "{spool_bytes}"
    );

    // What was acked is exactly what the spool holds: 1..=acked_upto.
    assert!(gw.terminate());
    let seqs = spooled_seqs(&dir.path().join("spool"));
    assert_eq!(seqs, (1..=r.acked_upto).collect::<Vec<_>>());
}

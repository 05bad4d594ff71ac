//! `exactly_once = "auto"` against the real Kafka-API broker, tansu 0.6: what it does there, as
//! observed. tansu answers InitProducerId, AddPartitionsToTxn, TxnOffsetCommit and EndTxn, and a
//! committed record is visible to a read_committed reader, so the start-up probe passes and
//! `auto` runs transactional. Asserted: the outputs by id equal the pure core's, and a fresh
//! instance restores the state from the changelog written in transactions (before the restore
//! moved past commit markers it waited for `restore_timeout` and failed, on tansu as it would on
//! Apache Kafka). Not asserted here (measured by hand, see the README): tansu does not hide
//! aborted records from read_committed. The fallback and the
//! refusal of `on` are tested against the mock cluster with failing commits (`exactly_once.rs`).
#![allow(clippy::unwrap_used)]

mod common;

use common::proc::Proc;

use common::In;

const T: u64 = 1_700_000_000_000;

fn input() -> Vec<In> {
    let (mut v, rest) = common::Workload {
        prefix: "auto",
        devices: 6,
        epoch: 3,
        t: T,
        batches: 30,
        split: 30,
        spike_at: 200,
        spike_value: 75.0,
        pause_from: None,
        value: |i, d| ((i + d as u64) % 5) as f64 * 0.1,
        death_every: 2,
        death_ts: T + 310_000,
        partitions: common::PARTITIONS,
    }
    .phases();
    v.extend(rest);
    v
}

fn config_text(bootstrap: &str, t: &common::Topics, dir: &std::path::Path) -> String {
    common::config_text_with(
        bootstrap,
        t,
        &dir.join("s.redb"),
        "checkpoint_interval = \"300ms\"\ncheckpoint_records = 50",
        "[sessions]\ninactivity_gap = \"5s\"\n[windows]\nsize = \"10s\"\n[anomaly]\nwarmup = 30\n",
    )
    .replace(
        "[kafka]\n",
        "[kafka]\nexactly_once = \"auto\"\nrestore_timeout = \"30s\"\n",
    )
    .replace("device_ttl = \"60s\"", "device_ttl = \"300s\"")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_on_tansu_runs_transactional_and_a_fresh_instance_restores_its_changelog() {
    let bootstrap = breakwater_testkit::require_kafka!();
    let t = common::topics(&bootstrap).await;
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(&bootstrap, &t, dir.path());
    let cfg = dir.path().join("p.toml");
    std::fs::write(&cfg, &text).unwrap();
    let records = input();
    let want = common::oracle(&text, &records);
    assert_eq!(want["anomalies"].len(), 6, "one spike per device");
    let producer = breakwater_testkit::kafka::producer(&bootstrap);
    common::produce(&producer, &t, &records).await;
    let p = Proc::start(&cfg);
    p.wait_for(
        "exactly-once: outputs, changelog and offsets commit in Kafka transactions",
        1,
        60,
    )
    .await;
    let got = common::outputs(&bootstrap, &t, &want).await;
    common::assert_same("auto on tansu vs core", &common::dedup(&got), &want);
    p.wait_for("checkpoint committed", 1, 60).await;
    p.terminate();
    // A fresh instance: the whole state from the changelog (transactional records, commit
    // markers, the probe record), within restore_timeout.
    let dir2 = tempfile::tempdir().unwrap();
    let text2 = text.replace(
        &dir.path().join("s.redb").display().to_string(),
        &dir2.path().join("s.redb").display().to_string(),
    );
    let cfg2 = dir2.path().join("p.toml");
    std::fs::write(&cfg2, &text2).unwrap();
    let p2 = Proc::start(&cfg2);
    p2.wait_for("recovery complete", 1, 60).await;
    assert_eq!(p2.count("source=\"changelog\""), 2, "{}", p2.dump());
    p2.terminate();
}

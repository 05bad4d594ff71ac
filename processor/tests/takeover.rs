//! A partition moving to an instance that never held it, the hard way: two real processor
//! binaries in one consumer group; one is killed with SIGKILL and its state directory deleted.
//! The survivor takes the partition over, restores its state from the changelog (not by
//! replaying the input) and, once all input is consumed, the union of both instances' outputs
//! (by id) equals the pure core run over the whole input, content included (the crash test
//! shows an uninterrupted run equals the core). Slow: tansu's first group join takes ~20 s.
#![allow(clippy::unwrap_used)]

mod common;

use common::proc::Proc;

use std::path::Path;
use std::time::Duration;

use common::In;

const T: u64 = 1_700_000_000_000;

/// The binary in consumer-group mode (the shared config text assigns partitions explicitly).
fn in_group(config: &Path) -> Proc {
    Proc::start_with(config, &[("BREAKWATER_PROCESSOR_ASSIGN", String::new())])
}

fn noise(i: u64) -> f64 {
    let x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11;
    x as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
}

/// Devices in both partitions: births, readings with a spike and a pause, deaths, clocks.
fn phases() -> (Vec<In>, Vec<In>) {
    common::Workload {
        prefix: "mv",
        devices: 12,
        epoch: 2,
        t: T,
        batches: 40,
        split: 20,
        spike_at: 250,
        spike_value: 80.0,
        pause_from: Some(30),
        value: |i, d| noise(i + d as u64),
        death_every: 3,
        death_ts: T + 430_000,
        partitions: common::PARTITIONS,
    }
    .phases()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_a_deleted_state_dir_the_survivor_restores_from_the_changelog() {
    let bootstrap = breakwater_testkit::require_kafka!();
    let t = common::topics(&bootstrap).await;
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = phases();
    let all: Vec<In> = one.iter().chain(two.iter()).cloned().collect();
    let extra = "[sessions]\ninactivity_gap = \"5s\"\n[windows]\nsize = \"10s\"\n[anomaly]\nwarmup = 30\n[kafka.consumer]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"\n";
    let text = common::config_text_with(
        &bootstrap,
        &t,
        Path::new("STATE"),
        "checkpoint_interval = \"300ms\"\ncheckpoint_records = 100",
        extra,
    )
    .replace("device_ttl = \"60s\"", "device_ttl = \"300s\"");
    let want = common::oracle(&text, &all);
    assert_eq!(want["anomalies"].len(), 12, "one spike per device");
    let config = |name: &str| {
        let state = dir.path().join(name).join("state.redb");
        let p = dir.path().join(format!("{name}.toml"));
        std::fs::write(&p, text.replace("STATE", &state.display().to_string())).unwrap();
        p
    };
    let (cfg_a, cfg_b) = (config("a"), config("b"));
    let a = in_group(&cfg_a);
    let mut b = in_group(&cfg_b);
    // Each holds one partition of the two.
    a.wait_for("recovered partition state", 1, 90).await;
    b.wait_for("recovered partition state", 1, 90).await;
    let producer = breakwater_testkit::kafka::producer(&bootstrap);
    common::produce(&producer, &t, &one).await;
    // Both have checkpointed some of their input (and so written it to the changelog). One
    // checkpoint each: the loop drains up to 256 records per consumer between checkpoint checks,
    // so all of phase one may go into a single one.
    a.wait_for("checkpoint committed", 1, 60).await;
    b.wait_for("checkpoint committed", 1, 60).await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    b.kill();
    std::fs::remove_dir_all(dir.path().join("b")).unwrap();
    common::produce(&producer, &t, &two).await;
    // The survivor takes b's partition once the group notices, restoring it from the changelog.
    a.wait_for("source=\"changelog\"", 1, 90).await;
    let got = common::outputs(&bootstrap, &t, &want).await;
    let log = a.dump();
    common::assert_same(
        "survivor + killed instance vs core",
        &common::dedup(&got),
        &want,
    );
    // The takeover resumed at b's checkpointed offsets, not at offset 0.
    let takeover: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("source=\"changelog\""))
        .collect();
    assert!(
        takeover
            .iter()
            .any(|l| !l.contains("telemetry_offset=None")),
        "{log}"
    );
}

//! Scale-out with cooperative-sticky rebalancing: two processor binaries share four partitions,
//! then a third joins mid-run. It takes over only the partitions it gets (the only ones revoked
//! from the others, which keep the rest without interruption), restores them from the
//! changelog, and once all input is consumed the union of the three instances' outputs (by id)
//! equals the pure core over the whole input, content included. Slow: tansu's first group join
//! takes ~20 s.
#![allow(clippy::unwrap_used)]

mod common;

use common::proc::Proc;

use std::collections::BTreeSet;
use std::path::Path;

use common::In;

const T: u64 = 1_700_000_000_000;
const PARTITIONS: i32 = 4;

fn in_group(config: &Path) -> Proc {
    Proc::start_with(config, &[("BREAKWATER_PROCESSOR_ASSIGN", String::new())])
}

/// 16 devices over the four partitions: births, readings with a spike and a pause, deaths.
fn phases() -> (Vec<In>, Vec<In>) {
    common::Workload {
        prefix: "so",
        devices: 16,
        epoch: 3,
        t: T,
        batches: 40,
        split: 20,
        spike_at: 250,
        spike_value: 80.0,
        pause_from: Some(30),
        value: |i, d| ((i + d as u64) % 7) as f64 * 0.1,
        death_every: 3,
        death_ts: T + 430_000,
        partitions: PARTITIONS,
    }
    .phases()
}

/// Partitions in the `rebalance` lines of `kind` ("assign" or "revoke") among `lines`.
fn rebalanced(lines: &[&str], kind: &str) -> BTreeSet<i32> {
    let needle = format!("kind=\"{kind}\"");
    let mut set = BTreeSet::new();
    for l in lines
        .iter()
        .filter(|l| l.contains(" rebalance ") && l.contains(&needle))
    {
        let Some(start) = l.find("partitions=[") else {
            continue;
        };
        let rest = &l[start + "partitions=[".len()..];
        let list = &rest[..rest.find(']').unwrap()];
        set.extend(
            list.split(',')
                .filter(|p| !p.trim().is_empty())
                .map(|p| p.trim().parse::<i32>().unwrap()),
        );
    }
    set
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_instance_takes_over_only_its_partitions() {
    let bootstrap = breakwater_testkit::require_kafka!();
    let t = common::topics_in(&bootstrap, PARTITIONS).await;
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
    let want = common::oracle_in(&text, &all, PARTITIONS);
    assert_eq!(want["anomalies"].len(), 16, "one spike per device");
    let config = |name: &str| {
        let state = dir.path().join(name).join("state.redb");
        let p = dir.path().join(format!("{name}.toml"));
        std::fs::write(&p, text.replace("STATE", &state.display().to_string())).unwrap();
        p
    };
    let a = in_group(&config("a"));
    let b = in_group(&config("b"));
    // Four partitions between the two.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while a.count("recovered partition state") + b.count("recovered partition state") < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "a:\n{}\nb:\n{}",
            a.dump(),
            b.dump()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let producer = breakwater_testkit::kafka::producer(&bootstrap);
    common::produce_in(&producer, &t, &one, PARTITIONS).await;
    a.wait_for("checkpoint committed", 1, 60).await;
    b.wait_for("checkpoint committed", 1, 60).await;
    let (a_before, b_before) = (a.dump().lines().count(), b.dump().lines().count());
    let c = in_group(&config("c"));
    c.wait_for("recovered partition state", 1, 120).await;
    common::produce_in(&producer, &t, &two, PARTITIONS).await;
    let got = common::outputs(&bootstrap, &t, &want).await;
    common::assert_same(
        "three instances, one added mid-run, vs core",
        &common::dedup(&got),
        &want,
    );
    let (a_log, b_log, c_log) = (a.dump(), b.dump(), c.dump());
    let after = |log: &str, from: usize| -> Vec<String> {
        log.lines().skip(from).map(str::to_owned).collect()
    };
    let a_after = after(&a_log, a_before);
    let b_after = after(&b_log, b_before);
    let c_lines: Vec<&str> = c_log.lines().collect();
    let a_lines: Vec<&str> = a_after.iter().map(String::as_str).collect();
    let b_lines: Vec<&str> = b_after.iter().map(String::as_str).collect();
    let taken = rebalanced(&c_lines, "assign");
    assert!(!taken.is_empty(), "{c_log}");
    let mut revoked = rebalanced(&a_lines, "revoke");
    revoked.extend(rebalanced(&b_lines, "revoke"));
    eprintln!("new instance took {taken:?}; revoked from the others {revoked:?}");
    assert_eq!(
        revoked, taken,
        "only what the new instance took was revoked from the others\na:\n{a_log}\nb:\n{b_log}\nc:\n{c_log}"
    );
    // Nothing moved between the two old instances.
    assert!(rebalanced(&a_lines, "assign").is_empty(), "{a_log}");
    assert!(rebalanced(&b_lines, "assign").is_empty(), "{b_log}");
    // It restored what it took from the changelog and resumed at the checkpointed offsets.
    assert!(
        c_lines
            .iter()
            .any(|l| l.contains("source=\"changelog\"") && !l.contains("telemetry_offset=None")),
        "{c_log}"
    );
}

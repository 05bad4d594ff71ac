//! Consumer-group mode against the real broker: two instances in one group split the two
//! partitions (range assignor), each loading and checkpointing its partitions' state on
//! assignment and revocation, and together produce every output exactly as the core does.
//! Slow by nature: tansu's first group join takes ~20 s.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use breakwater_processor::config::Config;
use breakwater_processor::run;
use breakwater_protocol::Reading;
use common::{batch, partition_of, In};

const T: u64 = 1_700_000_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_in_a_group_split_the_partitions() {
    let bootstrap = breakwater_testkit::require_kafka!();
    let t = common::topics(&bootstrap).await;
    let dir = tempfile::tempdir().unwrap();
    let group = breakwater_testkit::kafka::unique_topic("proc-group");
    let start = |n: usize| {
        let text = common::config_text(
            &bootstrap,
            &t,
            &dir.path().join(format!("{n}.redb")),
            "[sessions]\ninactivity_gap = \"5s\"\n[windows]\nsize = \"10s\"\n",
        );
        let g = group.clone();
        let env = move |k: &str| match k {
            // Empty assignment = consumer-group mode.
            "BREAKWATER_PROCESSOR_ASSIGN" => Some(String::new()),
            _ => None,
        };
        let mut cfg = Config::parse(&text, &env).unwrap();
        assert_eq!(cfg.kafka.assign, None);
        cfg.kafka.group_id = g;
        cfg.kafka
            .consumer
            .insert("session.timeout.ms".to_owned(), "10000".to_owned());
        let cancel = tokio_util::sync::CancellationToken::new();
        let progress = Arc::new(run::Progress::default());
        let h = tokio::spawn(run::run_observed(cfg, cancel.clone(), progress.clone()));
        (cancel, h, progress)
    };
    let t0 = Instant::now();
    let (c1, h1, p1) = start(1);
    let (c2, h2, p2) = start(2);
    // Wait for the group to settle with one partition each (range assignor, two members).
    let held = |p: &run::Progress| p.partitions.load(Ordering::Relaxed);
    while !(held(&p1) == 1 && held(&p2) == 1) {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "group did not settle: {} and {} partitions",
            held(&p1),
            held(&p2)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let joined_after = t0.elapsed();
    // Devices in both partitions, one activity session each, closed by per-partition clocks.
    let mut input: Vec<In> = Vec::new();
    let devices: Vec<String> = (0..8).map(|i| format!("g-{i}")).collect();
    assert!((0..common::PARTITIONS).all(|p| devices.iter().any(|d| partition_of(d) == p)));
    for d in &devices {
        input.push(batch(
            d,
            1,
            1,
            (0..5)
                .map(|i| Reading::new("v", 1.0, T + i * 1_000))
                .collect(),
        ));
    }
    input.extend(common::clocks(T + 1_000_000));
    let producer = breakwater_testkit::kafka::producer(&bootstrap);
    common::produce(&producer, &t, &input).await;
    let got = common::read_json(
        &bootstrap,
        &t.sessions,
        devices.len(),
        Duration::from_secs(50),
    )
    .await;
    let ids = common::by_id(&got);
    let mut seen: Vec<&str> = ids
        .values()
        .map(|s| s["device"].as_str().unwrap())
        .collect();
    seen.sort_unstable();
    assert_eq!(
        seen,
        devices.iter().map(String::as_str).collect::<Vec<_>>(),
        "{got:#?}"
    );
    c1.cancel();
    c2.cancel();
    let s1 = h1.await.unwrap().unwrap();
    let s2 = h2.await.unwrap().unwrap();
    eprintln!(
        "group settled after {joined_after:?}; instance 1: {} telemetry records, instance 2: {}",
        s1.telemetry_records, s2.telemetry_records
    );
    // Between them every record was applied; a record may be applied by both only if its
    // partition moved before it was checkpointed (then the outputs repeat with the same ids).
    let batches = input.iter().filter(|r| matches!(r, In::Batch(_))).count() as u64;
    assert!(s1.telemetry_records + s2.telemetry_records >= batches);
    // The input came after the group settled with one partition each: the work is split.
    assert!(s1.telemetry_records > 0 && s2.telemetry_records > 0);
}

/// A second instance joins while the first holds both partitions with state: the first flushes
/// and checkpoints on revocation and reloads the partition it keeps from its checkpoint; the
/// newcomer, with no checkpoint, rebuilds its partition from the beginning. The deduplicated
/// outputs equal the pure core's on the same input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_mid_stream_keeps_outputs_exact() {
    let bootstrap = breakwater_testkit::require_kafka!();
    let t = common::topics(&bootstrap).await;
    let dir = tempfile::tempdir().unwrap();
    let group = breakwater_testkit::kafka::unique_topic("proc-group");
    let extra =
        "[sessions]\ninactivity_gap = \"5s\"\n[windows]\nsize = \"10s\"\n[anomaly]\nwarmup = 10\n";
    let text = |n: usize| {
        common::config_text(&bootstrap, &t, &dir.path().join(format!("{n}.redb")), extra)
    };
    let start = |n: usize| {
        let env = |k: &str| (k == "BREAKWATER_PROCESSOR_ASSIGN").then(String::new);
        let mut cfg = Config::parse(&text(n), &env).unwrap();
        cfg.kafka.group_id.clone_from(&group);
        cfg.kafka
            .consumer
            .insert("session.timeout.ms".to_owned(), "10000".to_owned());
        let cancel = tokio_util::sync::CancellationToken::new();
        let progress = Arc::new(run::Progress::default());
        let h = tokio::spawn(run::run_observed(cfg, cancel.clone(), progress.clone()));
        (cancel, h, progress)
    };
    let devices: Vec<String> = (0..6).map(|i| format!("r-{i}")).collect();
    let phase = |from: u64, to: u64| -> Vec<In> {
        let mut v = Vec::new();
        for b in from..to {
            for (d, name) in devices.iter().enumerate() {
                let rs = (0..10u64)
                    .map(|j| {
                        let i = b * 10 + j;
                        let x = if i == 150 && d == 2 {
                            99.0
                        } else {
                            (i % 7) as f64
                        };
                        Reading::new("v", x, T + i * 1_000)
                    })
                    .collect();
                v.push(batch(name, 3, b * 10 + 1, rs));
            }
        }
        v
    };
    let one = phase(0, 10);
    let mut two = phase(10, 20);
    two.extend(common::clocks(T + 10_000_000));
    let all: Vec<In> = one.iter().chain(two.iter()).cloned().collect();
    let want = common::oracle(&text(1), &all);
    let producer = breakwater_testkit::kafka::producer(&bootstrap);
    common::produce(&producer, &t, &one).await;

    let t0 = Instant::now();
    let (c1, h1, p1) = start(1);
    while p1.telemetry_records.load(Ordering::Relaxed) < one.len() as u64 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "instance 1 did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (c2, h2, p2) = start(2);
    let held = |p: &run::Progress| p.partitions.load(Ordering::Relaxed);
    while !(held(&p1) == 1 && held(&p2) == 1) {
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "group did not rebalance: {} and {} partitions",
            held(&p1),
            held(&p2)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rebalanced = t0.elapsed();
    common::produce(&producer, &t, &two).await;
    let mut got = BTreeMap::new();
    for (name, topic) in [
        ("sessions", &t.sessions),
        ("windows", &t.windows),
        ("anomalies", &t.anomalies),
    ] {
        let n = want.get(name).map_or(0, BTreeMap::len);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v = common::read_json(&bootstrap, topic, n, Duration::from_secs(10)).await;
            if common::by_id(&v).len() >= n || Instant::now() > deadline {
                got.insert(name, v);
                break;
            }
        }
    }
    c1.cancel();
    c2.cancel();
    let s1 = h1.await.unwrap().unwrap();
    let s2 = h2.await.unwrap().unwrap();
    eprintln!(
        "rebalanced after {rebalanced:?}; instance 1 applied {} telemetry records, instance 2 {} (of {})",
        s1.telemetry_records,
        s2.telemetry_records,
        all.len()
    );
    assert_eq!(want["anomalies"].len(), 1);
    common::assert_same("after a rebalance", &common::dedup(&got), &want);
    // Instance 2 had no local state of the partition it took: it restored instance 1's
    // revocation checkpoint from the changelog and resumed at its offsets, so every batch was
    // applied exactly once between them (a rebuild from offset 0 would apply some twice).
    let batches = all.iter().filter(|r| matches!(r, In::Batch(_))).count() as u64;
    assert_eq!(s1.telemetry_records + s2.telemetry_records, batches);
}

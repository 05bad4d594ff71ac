//! Consumer-group mode against the real broker: two instances in one group split the two
//! partitions (range assignor), each loading and checkpointing its partitions' state on
//! assignment and revocation, and together produce every output exactly as the core does.
//! Slow by nature: tansu's first group join takes ~20 s.
#![allow(clippy::unwrap_used)]

mod common;

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
            "[sessions]\ninactivity_gap = \"5s\"\n[windows]\nsize = \"10s\"\nidle_timeout = \"60s\"\n",
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
    for p in 0..common::PARTITIONS {
        let name = (0..)
            .map(|i| format!("clock-{i}"))
            .find(|n| partition_of(n) == p)
            .unwrap();
        input.push(batch(
            &name,
            1,
            1,
            vec![Reading::new("v", 0.0, T + 1_000_000)],
        ));
    }
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
    assert!(s1.telemetry_records + s2.telemetry_records >= input.len() as u64);
    // The input came after the group settled with one partition each: the work is split.
    assert!(s1.telemetry_records > 0 && s2.telemetry_records > 0);
}

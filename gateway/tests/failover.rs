//! Issue 15: a real agent (redb buffer, sender) with two real gateway processes. Gateway A is
//! killed with SIGKILL while readings are in flight; the agent fails over to B and resends
//! everything unacked; then A returns and nothing breaks (the agent stays on B, which works).
//!
//! * ack mode `spool`, no Kafka, so each gateway's spool holds exactly what it acked: both
//!   spools are exported afterwards; every reading the agent had confirmed is in A's or B's
//!   spool, at least once, and after dedupe on (device, epoch, seq) exactly once; the
//!   duplicates are bounded by what was in flight when A died.
//! * ack mode `kafka` (tansu, `BREAKWATER_TEST_KAFKA`): both gateways produce to one topic;
//!   Kafka holds every reading, first appearances in order, duplicates bounded the same way.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use breakwater_agent::buffer::{Buffer, FullPolicy, MemoryBuffer, RedbBuffer, RedbOptions};
use breakwater_agent::config::{GatewayAddress, SenderConfig};
use breakwater_agent::sender::failover::start_index;
use breakwater_agent::sender::{DeviceSender, LinkOptions, SenderEvent};
use breakwater_agent::Agent;
use breakwater_protocol::DeviceId;
use common::*;

const BATCH: u64 = 20;
const MAX_IN_FLIGHT: u64 = 8;

/// (epoch, seq) of every spooled reading of `device`, in export order.
fn spooled(spool_dir: &std::path::Path, device: &str) -> Vec<(u64, u64)> {
    spooled_by_device(spool_dir)
        .remove(device)
        .unwrap_or_default()
}

/// (epoch, seq) of every spooled reading, per device, in export order.
fn spooled_by_device(spool_dir: &std::path::Path) -> BTreeMap<String, Vec<(u64, u64)>> {
    let out = std::process::Command::new(BIN)
        .args(["spool", "export", "--dir"])
        .arg(spool_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut got: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let b = breakwater_protocol::json::decode_batch(
            v["batch"].to_string().as_bytes(),
            &breakwater_protocol::Limits::DEFAULT,
        )
        .unwrap();
        got.entry(b.device.as_str().to_owned())
            .or_default()
            .extend((b.first_seq..=b.last_seq()).map(|s| (b.epoch, s)));
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_fails_over_when_gateway_a_is_killed_ack_mode_spool() {
    fail_over(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_fails_over_when_gateway_a_is_killed_ack_mode_kafka() {
    let bootstrap = breakwater_testkit::require_kafka!();
    fail_over(Some(bootstrap)).await;
}

/// `kafka`: None = ack mode `spool` without Kafka; Some(bootstrap) = ack mode `kafka`.
async fn fail_over(kafka: Option<String>) {
    let topic = breakwater_testkit::kafka::unique_topic("gw-failover");
    let events_topic = breakwater_testkit::kafka::unique_topic("gw-failover-ev");
    let (spool_extra, extra) = match &kafka {
        None => (String::new(), String::new()),
        Some(bootstrap) => (
            "ack_mode = \"kafka\"".to_owned(),
            format!(
                "[kafka]\nbrokers = \"{bootstrap}\"\ntopic = \"{topic}\"\nevents_topic = \"{events_topic}\"\npartitions = 2\n"
            ),
        ),
    };
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let mut a = GatewayProc::start_with(dir_a.path(), &spool_extra, &extra);
    let mut b = GatewayProc::start_with(dir_b.path(), &spool_extra, &extra);

    // Order the list so that this device's hash start is A.
    let device: DeviceId = "failover-01".parse().unwrap();
    let (first, second) = if start_index(&device, 2) == 0 {
        (a.mqtt_port, b.mqtt_port)
    } else {
        (b.mqtt_port, a.mqtt_port)
    };
    let agent_dir = tempfile::tempdir().unwrap();
    let config = agent_config(
        device.as_str(),
        &format!("addresses = [\"127.0.0.1:{first}\", \"127.0.0.1:{second}\"]\nfailover_after = 2"),
        agent_dir.path(),
        BATCH,
        MAX_IN_FLIGHT,
    );
    let buffer: Arc<dyn Buffer> =
        Arc::new(RedbBuffer::open(agent_dir.path(), RedbOptions::default()).unwrap());
    let events: Arc<Mutex<Vec<SenderEvent>>> = Arc::default();
    let ev = events.clone();
    let agent = Agent::start_with(
        config,
        buffer,
        Some(Arc::new(move |_, e| ev.lock().unwrap().push(e.clone()))),
    )
    .await
    .unwrap();

    // Phase 1: on A, everything acked.
    agent
        .record_many((1..=300).map(reading).collect())
        .await
        .unwrap();
    assert_eq!(agent.flush(Duration::from_secs(60)).await.unwrap(), 300);
    let on_a = a.metric("breakwater_gateway_accepted_readings_total", "");
    assert!(on_a >= 300.0, "A accepted {on_a}");
    assert_eq!(
        b.metric("breakwater_gateway_accepted_readings_total", ""),
        0.0
    );

    // Phase 2: A hangs (SIGSTOP) with a backlog to send: batches go out and stay unacked
    // (in flight); then A is killed with SIGKILL and stays down. Recording continues.
    let pid = a.child.as_ref().unwrap().id().to_string();
    let st = std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap();
    assert!(st.success());
    let total = 1_500;
    agent
        .record_many((301..=1_000).map(reading).collect())
        .await
        .unwrap();
    let sent_unacked = || {
        events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, SenderEvent::Sent { last_seq, .. } if *last_seq > 300))
    };
    assert!(
        wait_until(Duration::from_secs(30), sent_unacked),
        "nothing sent to the stopped gateway"
    );
    let acked_at_kill = agent.sender().acked_upto();
    a.kill9();
    agent
        .record_many((1_001..=total).map(reading).collect())
        .await
        .unwrap();

    // Everything reaches B and is acked there.
    assert_eq!(
        agent.flush(Duration::from_secs(60)).await.unwrap(),
        total,
        "events: {:?}",
        events
            .lock()
            .unwrap()
            .iter()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
    );
    let failovers: Vec<_> = events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            SenderEvent::FailedOver { from, to, .. } => Some((from.clone(), to.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        failovers,
        vec![(
            format!("127.0.0.1:{}", a.mqtt_port),
            format!("127.0.0.1:{}", b.mqtt_port)
        )]
    );
    // Acked readings are deleted from the buffer (asynchronously, right after the ack).
    assert!(
        wait_until(Duration::from_secs(10), || agent.stats().readings == 0),
        "buffer not drained: {:?}",
        agent.stats()
    );

    // Phase 3: A returns (same spool, same port); the agent stays on B, which keeps working.
    a.spawn();
    agent
        .record_many((total + 1..=total + 200).map(reading).collect())
        .await
        .unwrap();
    let total = total + 200;
    assert_eq!(agent.flush(Duration::from_secs(60)).await.unwrap(), total);
    assert_eq!(
        events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(e, SenderEvent::FailedOver { .. }))
            .count(),
        1,
        "prefers its current gateway"
    );
    let _report = agent.shutdown().await;

    if let Some(bootstrap) = kafka {
        // Kafka: every reading, first appearances in order, duplicates only the in-flight
        // window (resent to B, and delivered by A from its spool after the restart).
        let devices = vec![device.to_string()];
        let by = read_until_complete(&bootstrap, &topic, 2, &devices, total).await;
        assert_complete_in_order(&by, &devices, total);
        let got = &by[device.as_str()];
        let dups = got.len() as u64 - total;
        assert!(dups <= MAX_IN_FLIGHT * BATCH, "{dups} duplicates");
        eprintln!(
            "kafka: {} readings (with duplicates) for {total}",
            got.len()
        );
        a.terminate();
        b.terminate();
        return;
    }

    // Both spools: what each gateway acked (no Kafka, nothing was delivered or deleted).
    a.kill9();
    b.kill9();
    let in_a = spooled(&dir_a.path().join("spool"), device.as_str());
    let in_b = spooled(&dir_b.path().join("spool"), device.as_str());
    let mut count: BTreeMap<(u64, u64), u32> = BTreeMap::new();
    for k in in_a.iter().chain(&in_b) {
        *count.entry(*k).or_default() += 1;
    }
    let epochs: std::collections::BTreeSet<u64> = count.keys().map(|k| k.0).collect();
    assert_eq!(epochs.len(), 1, "one epoch: {epochs:?}");
    let seqs: Vec<u64> = count.keys().map(|k| k.1).collect();
    assert_eq!(
        seqs,
        (1..=total).collect::<Vec<_>>(),
        "after dedupe every confirmed reading exactly once"
    );
    // Each gateway dedupes its own stream; duplicates only across the two, and only what was
    // in flight when A died (at most max_in_flight batches).
    let dups: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.iter().all(|(_, n)| **n == 2), "{dups:?}");
    assert!(
        dups.len() as u64 <= MAX_IN_FLIGHT * BATCH,
        "{} duplicates",
        dups.len()
    );
    // A holds a prefix (everything it acked, maybe more it stored but could not ack);
    // B starts where the agent's acks from A ended.
    let max_a = in_a.iter().map(|k| k.1).max().unwrap();
    assert!(
        max_a >= acked_at_kill,
        "A acked {acked_at_kill} but spooled {max_a}"
    );
    assert_eq!(
        in_a.iter().map(|k| k.1).collect::<Vec<_>>(),
        (1..=max_a).collect::<Vec<_>>()
    );
    // B got everything unacked, from the first reading A never acked: resent, not new.
    let min_b = in_b.iter().map(|k| k.1).min().unwrap();
    assert_eq!(min_b, acked_at_kill + 1);
    let evs = events.lock().unwrap().clone();
    let moved = evs
        .iter()
        .position(|e| matches!(e, SenderEvent::FailedOver { .. }))
        .unwrap();
    assert!(
        evs[moved..].iter().any(|e| matches!(
            e,
            SenderEvent::Sent { first_seq, resend: true, .. } if *first_seq == acked_at_kill + 1
        )),
        "the in-flight readings were resent to B"
    );
    eprintln!(
        "A spooled 1..={max_a}, B from {min_b}, {} duplicates, failovers {failovers:?}",
        dups.len()
    );
}

/// A small fleet spreads over A and B by the hash of each device id; when A is killed only
/// A's devices fail over (once each), B's never move, and every device's readings are acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_spreads_by_device_hash_and_only_the_dead_gateways_devices_move() {
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let mut a = GatewayProc::start(dir_a.path(), "");
    let mut b = GatewayProc::start(dir_b.path(), "");
    let mut link = LinkOptions::plain_many(vec![
        GatewayAddress::new("127.0.0.1", a.mqtt_port),
        GatewayAddress::new("127.0.0.1", b.mqtt_port),
    ]);
    link.failover_after = std::num::NonZeroU32::new(2).unwrap();
    let link = Arc::new(link);
    let mut cfg = SenderConfig {
        batch_max_readings: 20,
        batch_max_delay: Duration::from_millis(10),
        ..SenderConfig::default()
    };
    cfg.backoff.initial = Duration::from_millis(100);
    cfg.backoff.max = Duration::from_millis(400);

    let devices: Vec<DeviceId> = (0..8)
        .map(|i| format!("fleet-{i:02}").parse().unwrap())
        .collect();
    let on_a: Vec<bool> = devices.iter().map(|d| start_index(d, 2) == 0).collect();
    let n_a = on_a.iter().filter(|x| **x).count();
    assert!(
        n_a > 0 && n_a < devices.len(),
        "both gateways get devices: {on_a:?}"
    );

    let mut fleet = Vec::new();
    for (i, d) in devices.iter().enumerate() {
        let buffer: Arc<dyn Buffer> = Arc::new(MemoryBuffer::new(1 << 22, FullPolicy::Block));
        buffer
            .append((1..=200).map(reading).collect())
            .await
            .unwrap();
        let events: Arc<Mutex<Vec<SenderEvent>>> = Arc::default();
        let ev = events.clone();
        let handle = DeviceSender::new(d.clone(), buffer.clone(), link.clone(), cfg.clone())
            .with_seed(i as u64)
            .with_events(Arc::new(move |_, e| ev.lock().unwrap().push(e.clone())))
            .spawn(tokio_util::sync::CancellationToken::new());
        fleet.push((buffer, handle, events));
    }
    let all_acked = |upto: u64| fleet.iter().all(|(_, h, _)| h.acked_upto() >= upto);
    assert!(
        wait_until(Duration::from_secs(60), || all_acked(200)),
        "not all acked 200"
    );
    // Each device went to its hash start.
    let accepted = |g: &GatewayProc| g.metric("breakwater_gateway_accepted_readings_total", "");
    assert_eq!(accepted(&a), 200.0 * n_a as f64);
    assert_eq!(accepted(&b), 200.0 * (devices.len() - n_a) as f64);

    a.kill9();
    for (buffer, h, _) in &fleet {
        buffer
            .append((201..=400).map(reading).collect())
            .await
            .unwrap();
        h.flush_now();
    }
    assert!(
        wait_until(Duration::from_secs(60), || all_acked(400)),
        "not all acked 400"
    );
    for (i, (_, _, events)) in fleet.iter().enumerate() {
        let moves = events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(e, SenderEvent::FailedOver { .. }))
            .count();
        assert_eq!(moves, usize::from(on_a[i]), "device {}", devices[i]);
    }
    for (_, h, _) in fleet {
        let exit = h.shutdown(Duration::from_secs(2)).await;
        assert!(exit.drained);
    }
    b.kill9();
    // B's spool: B's devices complete, A's devices from where A's acks ended (201) on.
    let in_b = spooled_by_device(&dir_b.path().join("spool"));
    for (i, d) in devices.iter().enumerate() {
        let seqs: Vec<u64> = in_b[d.as_str()].iter().map(|k| k.1).collect();
        let from = if on_a[i] { 201 } else { 1 };
        assert_eq!(seqs, (from..=400).collect::<Vec<_>>(), "device {d}");
    }
}

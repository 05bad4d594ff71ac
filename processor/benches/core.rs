//! Benchmarks of the processor (a bench binary: it measures and prints, no assertions).
//!
//! ```sh
//! CARGO_TARGET_DIR=/work/target-processor cargo bench -p breakwater-processor --bench core
//! ```
//!
//! 1. Readings/s through the pure core (dedupe, activity and connectivity sessions, windows,
//!    anomaly baselines, output records) with 10,000 devices, one thread. Batches are decoded
//!    beforehand; decode speed of the same batches (postcard envelope) is printed separately.
//! 2. Checkpoint time and size with 100,000 devices of state (all dirty, then 10% dirty).
//! 3. Recovery time: open the database and load all 100,000 devices.
//! 4. With 1,000,000 devices of state (4 partitions, one metric each): checkpoints of 10,000
//!    changed devices (changelog records encoded as for Kafka + the redb commit; producing them
//!    over the network is not included; the first ones after the initial checkpoint also write
//!    the snapshots of the partitions that had none, one a checkpoint), each next to the same
//!    commit in the format-2 layout (one row per device), and restoring one partition (250,000 devices) from its
//!    changelog records (decode and rebuild, then the local cache refill; fetching them from a
//!    broker is not included: against tansu on this machine that would measure tansu).
#![allow(clippy::unwrap_used, clippy::cast_precision_loss)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use breakwater_processor::checkpoint::Store;
use breakwater_processor::state::{Params, Partition, Stats};
use breakwater_protocol::kafka::{decode_record_value, Encoding};
use breakwater_protocol::{Batch, DeviceId, Limits, Reading};

const METRICS: [&str; 4] = ["temp", "pressure", "vibration", "rpm"];

fn device_batches(devices: usize, per_batch: u64, t0: u64) -> Vec<Batch> {
    (0..devices)
        .map(|d| Batch {
            device: DeviceId::parse(format!("dev-{d:06}")).unwrap(),
            epoch: 42,
            first_seq: 1,
            readings: (0..per_batch)
                .map(|i| {
                    let m = METRICS[(i % 4) as usize];
                    let v = 20.0 + ((i * 7 + d as u64) % 13) as f64 * 0.1;
                    Reading::new(m, v, t0 + i * 250)
                })
                .collect(),
        })
        .collect()
}

/// Moves every batch one batch-length forward in sequence and time.
fn advance(batches: &mut [Batch], per_batch: u64) {
    for b in batches {
        b.first_seq += per_batch;
        for r in &mut b.readings {
            r.ts += per_batch * 250;
        }
    }
}

fn throughput() {
    let devices = 10_000;
    let per_batch = 50;
    let passes = 40;
    let p = Params::default();
    let mut part = Partition::new(0);
    let mut st = Stats::default();
    let mut out = Vec::new();
    let mut batches = device_batches(devices, per_batch, 1_700_000_000_000);
    // Warm-up pass: creates the device state.
    for b in &batches {
        part.on_batch(b, &p, &mut st, &mut out);
    }
    let mut timed = Duration::ZERO;
    let mut readings = 0u64;
    let mut outputs = 0usize;
    for _ in 0..passes {
        advance(&mut batches, per_batch);
        out.clear();
        let t = Instant::now();
        for b in &batches {
            part.on_batch(black_box(b), &p, &mut st, &mut out);
        }
        timed += t.elapsed();
        readings += devices as u64 * per_batch;
        outputs += out.len();
    }
    // A redelivery pass: every batch again (dedupe path).
    let t = Instant::now();
    for b in &batches {
        part.on_batch(black_box(b), &p, &mut st, &mut out);
    }
    let dup = t.elapsed();
    println!(
        "core: {readings} readings, {devices} devices, {per_batch}/batch, 4 metrics: {:.3} s, {:.0} readings/s ({:.0} ns/reading); {outputs} outputs (windows, sessions, anomalies)",
        timed.as_secs_f64(),
        readings as f64 / timed.as_secs_f64(),
        timed.as_nanos() as f64 / readings as f64
    );
    println!(
        "core: redelivered batches (all duplicates): {:.0} batches/s",
        devices as f64 / dup.as_secs_f64()
    );
    assert_eq!(st.duplicate_batches, devices as u64);

    // Decode of the same batches, for scale (not part of the goal).
    let encoded: Vec<Vec<u8>> = batches
        .iter()
        .map(|b| Encoding::Postcard.encode(b))
        .collect();
    let t = Instant::now();
    let mut n = 0;
    for e in &encoded {
        n += decode_record_value(black_box(e), None, &Limits::DEFAULT)
            .unwrap()
            .readings
            .len();
    }
    let d = t.elapsed();
    println!(
        "decode (postcard envelope, for scale): {:.0} readings/s",
        n as f64 / d.as_secs_f64()
    );
}

fn checkpoint_and_recovery() {
    let devices = 100_000;
    let partitions = 4;
    let p = Params::default();
    let mut st = Stats::default();
    let mut out = Vec::new();
    let mut parts: Vec<Partition> = (0..partitions).map(Partition::new).collect();
    // Each device: 2 batches (4 metrics with an open window and a warm baseline, an activity
    // session), and a connectivity session from a birth.
    let mut batches = device_batches(devices, 20, 1_700_000_000_000);
    for round in 0..2 {
        if round > 0 {
            advance(&mut batches, 20);
        }
        for (i, b) in batches.iter().enumerate() {
            parts[i % partitions as usize].on_batch(b, &p, &mut st, &mut out);
        }
    }
    for (i, b) in batches.iter().enumerate() {
        let ev = breakwater_protocol::kafka::FleetEvent {
            device: b.device.clone(),
            epoch: 42,
            kind: breakwater_protocol::kafka::FleetEventKind::Birth,
            ts: 1_700_000_000_000,
            gateway_ts: 1_700_000_000_000,
            reason: None,
        };
        parts[i % partitions as usize].on_event(&ev, &p, &mut st, &mut out);
    }
    for p in &mut parts {
        p.telemetry_next = Some(123_456);
        p.events_next = Some(789);
    }
    let dir =
        tempfile::tempdir_in(std::env::var("BENCH_TMP").unwrap_or_else(|_| ".".into())).unwrap();
    let path = dir.path().join("state.redb");
    let store = Store::open(&path).unwrap();
    let s = store.commit(parts.iter_mut(), "tel", "ev").unwrap();
    println!(
        "checkpoint: {} devices (all dirty) in {:.3} s, file {:.1} MB",
        s.devices_written,
        s.duration.as_secs_f64(),
        store.size_bytes() as f64 / 1e6
    );
    // 10% of devices change, then a checkpoint.
    advance(&mut batches, 20);
    for (i, b) in batches.iter().enumerate().filter(|(i, _)| i % 10 == 0) {
        parts[i % partitions as usize].on_batch(b, &p, &mut st, &mut out);
    }
    let s = store.commit(parts.iter_mut(), "tel", "ev").unwrap();
    println!(
        "checkpoint: 10,000 devices (10% dirty; {} written: {} partition snapshot(s), the rest deltas) in {:.3} s, file {:.1} MB",
        s.devices_written,
        s.snapshots,
        s.duration.as_secs_f64(),
        store.size_bytes() as f64 / 1e6
    );
    drop(store);
    drop(parts);
    for attempt in 0..3 {
        let t = Instant::now();
        let store = Store::open(&path).unwrap();
        let mut n = 0;
        for id in 0..partitions {
            let l = store.load(id, "tel", "ev").unwrap();
            n += l.devices;
            black_box(&l.partition);
        }
        println!(
            "recovery {attempt}: open + load {n} devices in {:.3} s",
            t.elapsed().as_secs_f64()
        );
    }
}

/// The format-2 local layout (one redb row per device, keyed `(partition, device)`), kept here
/// only to measure the current layout against it in the same run.
use redb::ReadableTable as _;

struct RowStore(redb::Database);

const ROWS: redb::TableDefinition<(i32, &str), &[u8]> = redb::TableDefinition::new("devices");

impl RowStore {
    /// Writes the dirty devices (or all, `all`) of `parts` as format 2 did; returns seconds.
    fn commit(&self, parts: &[Partition], all: bool) -> f64 {
        let t = Instant::now();
        let tx = self.0.begin_write().unwrap();
        {
            let mut rows = tx.open_table(ROWS).unwrap();
            let mut buf = Vec::new();
            for p in parts {
                let keys: Vec<&String> = if all {
                    p.devices.keys().collect()
                } else {
                    p.dirty_devices().iter().collect()
                };
                for d in keys {
                    buf.clear();
                    buf = postcard::to_extend(&p.devices[d], std::mem::take(&mut buf)).unwrap();
                    rows.insert((p.id, d.as_str()), buf.as_slice()).unwrap();
                }
            }
        }
        tx.commit().unwrap();
        t.elapsed().as_secs_f64()
    }

    /// Format 2's refill after a restore: delete the partition's rows, insert every device.
    fn replace(&self, p: &Partition) -> f64 {
        let t = Instant::now();
        let tx = self.0.begin_write().unwrap();
        {
            let mut rows = tx.open_table(ROWS).unwrap();
            let stale: Vec<String> = rows
                .range((p.id, "")..(p.id + 1, ""))
                .unwrap()
                .map(|r| r.unwrap().0.value().1.to_owned())
                .collect();
            for d in stale {
                rows.remove((p.id, d.as_str())).unwrap();
            }
            let mut buf = Vec::new();
            for (d, s) in &p.devices {
                buf.clear();
                buf = postcard::to_extend(s, std::mem::take(&mut buf)).unwrap();
                rows.insert((p.id, d.as_str()), buf.as_slice()).unwrap();
            }
        }
        tx.commit().unwrap();
        t.elapsed().as_secs_f64()
    }
}

fn million() {
    use breakwater_processor::changelog::{self, Marker, Rebuild};
    let devices = 1_000_000;
    let partitions = 4i32;
    let p = Params::default();
    let mut st = Stats::default();
    let mut out = Vec::new();
    let mut parts: Vec<Partition> = (0..partitions).map(Partition::new).collect();
    let one = |d: usize, first: u64, t0: u64| Batch {
        device: DeviceId::parse(format!("dev-{d:07}")).unwrap(),
        epoch: 42,
        first_seq: first,
        readings: (0..10)
            .map(|i| Reading::new("temp", 20.0 + (i % 3) as f64, t0 + i * 1_000))
            .collect(),
    };
    let t0 = 1_700_000_000_000;
    for d in 0..devices {
        parts[d % 4].on_batch(&one(d, 1, t0), &p, &mut st, &mut out);
    }
    out.clear();
    let dir =
        tempfile::tempdir_in(std::env::var("BENCH_TMP").unwrap_or_else(|_| ".".into())).unwrap();
    let rows = RowStore(redb::Database::create(dir.path().join("rows.redb")).unwrap());
    let old = rows.commit(&parts, true);
    let path = dir.path().join("state.redb");
    let store = Store::open(&path).unwrap();
    let t = Instant::now();
    let s = store.commit(parts.iter_mut(), "tel", "ev").unwrap();
    println!(
        "1M: initial checkpoint of {} devices in {:.2} s, file {:.0} MB ({} partition snapshot(s), the rest deltas; row per device, format 2: {old:.2} s)",
        s.devices_written,
        t.elapsed().as_secs_f64(),
        store.size_bytes() as f64 / 1e6,
        s.snapshots
    );
    let (mut new_ms, mut old_ms) = (Vec::new(), Vec::new());
    for round in 0..8u64 {
        // 10,000 devices change, spread over the partitions.
        for d in (0..devices / 100).map(|i| i * 100 + i % 4) {
            let b = one(d, 11 + round * 10, t0 + (round + 1) * 10_000);
            parts[d % 4].on_batch(&b, &p, &mut st, &mut out);
        }
        out.clear();
        // The format-2 path first (it needs the dirty set the commit below clears).
        let old = rows.commit(&parts, false) * 1e3;
        let t = Instant::now();
        // What a checkpoint does besides producing: encode every changed device for the
        // changelog, then commit them to redb.
        let mut bytes = 0usize;
        for part in &parts {
            for dev in part.dirty_devices() {
                let k = changelog::device_key(part.id, dev);
                let v = postcard::to_stdvec(&part.devices[dev]).unwrap();
                bytes += k.len() + v.len();
                black_box((k, v));
            }
        }
        let encoded = t.elapsed();
        let s = store.commit(parts.iter_mut(), "tel", "ev").unwrap();
        let ms = t.elapsed().as_secs_f64() * 1e3;
        println!(
            "1M: checkpoint {round} of {} changed devices in {ms:.1} ms (changelog encoding {:.1} ms, {:.1} MB; redb commit {:.1} ms, {:.1} MB, {} partition re-snapshot(s)); row per device, format 2: redb commit {old:.1} ms",
            if s.snapshots > 0 { 10_000 } else { s.devices_written },
            encoded.as_secs_f64() * 1e3,
            bytes as f64 / 1e6,
            s.duration.as_secs_f64() * 1e3,
            s.bytes as f64 / 1e6,
            s.snapshots
        );
        if s.snapshots == 0 {
            new_ms.push(s.duration.as_secs_f64() * 1e3);
            old_ms.push(old);
        }
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let (n, o) = (med(&mut new_ms), med(&mut old_ms));
    println!(
        "1M: checkpoints without a re-snapshot: redb commit median {n:.1} ms, format 2 median {o:.1} ms, {:.0}x",
        o / n
    );
    // A partition's changelog as a fresh instance reads it: every device once, then a marker.
    let owner = changelog::Owner {
        group_id: "g".to_owned(),
        telemetry_topic: "tel".to_owned(),
        events_topic: "ev".to_owned(),
    };
    let part = &parts[0];
    let mut records: Vec<(Vec<u8>, Vec<u8>)> = part
        .devices
        .iter()
        .map(|(d, s)| {
            (
                changelog::device_key(0, d).into_bytes(),
                postcard::to_stdvec(s).unwrap(),
            )
        })
        .collect();
    records.push((
        changelog::marker_key(0).into_bytes(),
        postcard::to_stdvec(&Marker {
            seq: 7,
            meta: part.meta.clone(),
            telemetry_next: Some(1),
            events_next: Some(1),
            devices: part.devices.len() as u64,
            owner: owner.clone(),
        })
        .unwrap(),
    ));
    let n = part.devices.len();
    drop(parts);
    for attempt in 0..2 {
        let t = Instant::now();
        let mut rb = Rebuild::empty(0, owner.clone());
        for (i, (k, v)) in records.iter().enumerate() {
            rb.apply(i as i64, k, Some(v)).unwrap();
        }
        let r = rb.finish();
        let rebuilt = t.elapsed();
        let fill = Instant::now();
        store.replace_partition(&r.partition, "tel", "ev").unwrap();
        let filled = fill.elapsed();
        let old = rows.replace(&r.partition);
        println!(
            "1M: restore {attempt} of a partition of {n} devices from its changelog in {:.2} s (decode + rebuild {:.2} s, local cache refill {:.2} s; format 2 refill {old:.2} s)",
            (rebuilt + filled).as_secs_f64(),
            rebuilt.as_secs_f64(),
            filled.as_secs_f64()
        );
    }
}

fn main() {
    // `cargo test --benches` runs bench targets with --bench absent; keep that fast.
    if !std::env::args().any(|a| a == "--bench") {
        println!("run with `cargo bench` to measure");
        return;
    }
    throughput();
    checkpoint_and_recovery();
    million();
}

//! End-to-end gateway benchmark (a bench binary, not a timed test): simulated devices (rumqttc)
//! in this process, the real gateway binary as a child process, Kafka (tansu) if
//! `BREAKWATER_TEST_KAFKA` is set, all on this machine.
//!
//! 1. Throughput: `BENCH_DEVICES` devices send 50-reading batches as fast as acks allow
//!    (credit-limited pipelining) for `BENCH_SECS`; reports acked readings/s.
//! 2. Ack latency at half that load: the same devices paced to 50 % of the measured rate;
//!    send-to-ack latency per batch in an HDR histogram (p50/p99/max).
//!
//! `BENCH_KAFKA_EXTRA="linger_ms = 1;compression = \"zstd\""` adds `[kafka]` keys.
//! `BENCH_HALF_RATE=N` skips phase 1 and offers N readings/s in phase 2 (to compare builds or
//! settings at one fixed load); `BENCH_GATEWAY_BIN=path` runs another gateway binary.
//! After phase 2 the gateway's `breakwater_gateway_stage_seconds` histograms give where the
//! ack latency went (per stage p50/p99, interpolated in the histogram buckets).
//!
//! `BENCH_MODE=produce` runs only a reference: a bare rdkafka producer with the gateway's
//! producer settings sends `BENCH_PRODUCE_RATE` records/s (default 8,340: the batches/s of
//! half of 834k readings/s) of 50-reading batches, keys from `BENCH_DEVICES` devices, for
//! `BENCH_SECS`, and reports the send-to-delivery-report latency (tansu's produce round trip
//! at that rate, without the gateway).
//! 3. RSS with `BENCH_IDLE` idle connected devices (0 skips): the gateway's VmRSS. With
//!    `BENCH_SECS=0` only this phase runs, on a fresh gateway.
//!
//! ```sh
//! ulimit -n 20000   # for phase 3
//! BREAKWATER_TEST_KAFKA=127.0.0.1:19092 CARGO_TARGET_DIR=/work/target-gateway \
//!   cargo bench -p breakwater-gateway --bench throughput
//! ```
#![allow(clippy::unwrap_used, clippy::cast_precision_loss)]

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use breakwater_protocol::{envelope, Batch, DeviceId, Reading, Topic};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

const BATCH: u64 = 50;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, buf.split_once("\r\n\r\n")?.1.to_owned()))
}

fn metric(port: u16, name: &str) -> f64 {
    let page = http_get(port, "/metrics").map(|x| x.1).unwrap_or_default();
    page.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

struct Gw {
    child: Child,
    mqtt: u16,
    http: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Gw {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_gateway(kafka: Option<&str>) -> Gw {
    let dir = tempfile::tempdir().unwrap();
    let mqtt = free_port();
    let http = free_port();
    let mut cfg = format!(
        "[mqtt]\nlisten = \"127.0.0.1:{mqtt}\"\n[metrics]\nlisten = \"127.0.0.1:{http}\"\n[spool]\ndir = \"{}\"\n",
        dir.path().join("spool").display()
    );
    if let Some(b) = kafka {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        cfg.push_str(&format!(
            "[kafka]\nbrokers = \"{b}\"\ntopic = \"bench-{nanos}\"\nevents_topic = \"bench-ev-{nanos}\"\npartitions = 6\n{}\n",
            std::env::var("BENCH_KAFKA_EXTRA").unwrap_or_default().replace(';', "\n")
        ));
    }
    cfg.push_str("[admission]\nmax_connections = 20000\n");
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, cfg).unwrap();
    let bin = std::env::var("BENCH_GATEWAY_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_breakwater-gateway").to_owned());
    let child = Command::new(bin)
        .arg("run")
        .arg("--config")
        .arg(&path)
        .env("BREAKWATER_LOG", "warn,rumqttd=error,librdkafka=error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while http_get(http, "/readyz").map(|x| x.0) != Some(200) {
        assert!(Instant::now() < deadline, "gateway not ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    Gw {
        child,
        mqtt,
        http,
        _dir: dir,
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

struct Shared {
    acked_readings: AtomicU64,
    hist: Mutex<Histogram<u64>>,
}

/// One device: keeps up to `credit` batches unacked; with `interval`, sends one batch per
/// interval at most. Runs until `stop`.
async fn device(
    port: u16,
    name: String,
    interval: Option<Duration>,
    stop: Instant,
    shared: Arc<Shared>,
    record_latency: bool,
) {
    let dev = DeviceId::parse(name.clone()).unwrap();
    let mut o = MqttOptions::new(&name, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(60));
    o.set_inflight(100);
    let (client, mut el) = AsyncClient::new(o, 256);
    let (tx, mut acks) = tokio::sync::mpsc::unbounded_channel();
    let ack_topic = Topic::ack(&dev);
    let sub = client.clone();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let mut ready_tx = Some(ready_tx);
    let el_task = tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = sub.try_subscribe(ack_topic.clone(), QoS::AtLeastOnce);
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(r) = ready_tx.take() {
                        let _ = r.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Ok(a) = envelope::decode_ack(&p.payload) {
                        let _ = tx.send(a);
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    let _ = tokio::time::timeout(Duration::from_secs(30), ready_rx).await;
    let topic = Topic::telemetry(&dev);
    let epoch = rand_epoch(&name);
    let mut next = 1u64;
    let mut credit = 16usize;
    let mut unacked: VecDeque<(u64, Instant)> = VecDeque::new();
    let mut acked = 0u64;
    let mut next_send = Instant::now();
    while Instant::now() < stop {
        let paced_ok = interval.is_none_or(|_| Instant::now() >= next_send);
        if unacked.len() < credit && paced_ok {
            let b = Batch {
                device: dev.clone(),
                epoch,
                first_seq: next,
                readings: (next..next + BATCH)
                    .map(|s| Reading::new("temp", s as f64 * 0.5, 1_700_000_000_000 + s))
                    .collect(),
            };
            let now = Instant::now();
            if client
                .publish(
                    topic.clone(),
                    QoS::AtLeastOnce,
                    false,
                    envelope::encode_batch(&b),
                )
                .await
                .is_err()
            {
                break;
            }
            unacked.push_back((next + BATCH - 1, now));
            next += BATCH;
            if let Some(i) = interval {
                next_send += i;
            }
            continue;
        }
        let wait = match interval {
            Some(_) if unacked.len() < credit => {
                next_send.saturating_duration_since(Instant::now())
            }
            _ => Duration::from_millis(200),
        };
        if let Ok(Some(a)) = tokio::time::timeout(wait, acks.recv()).await {
            credit = (a.credit as usize).max(1);
            let now = Instant::now();
            while unacked.front().is_some_and(|&(last, _)| last <= a.upto_seq) {
                let (_, sent) = unacked.pop_front().unwrap();
                if record_latency {
                    let us = now.duration_since(sent).as_micros() as u64;
                    let _ = shared.hist.lock().record(us.max(1));
                }
            }
            if a.upto_seq > acked {
                shared
                    .acked_readings
                    .fetch_add(a.upto_seq - acked, Ordering::Relaxed);
                acked = a.upto_seq;
            }
        }
    }
    let _ = client.disconnect().await;
    el_task.abort();
}

fn rand_epoch(name: &str) -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(name)
}

async fn run_phase(
    port: u16,
    devices: u64,
    secs: u64,
    interval: Option<Duration>,
    prefix: &str,
) -> (f64, Histogram<u64>) {
    let shared = Arc::new(Shared {
        acked_readings: AtomicU64::new(0),
        hist: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3).unwrap()),
    });
    let warmup = Duration::from_secs(3);
    let stop = Instant::now() + warmup + Duration::from_secs(secs);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..devices {
        set.spawn(device(
            port,
            format!("{prefix}-{i}"),
            interval,
            stop,
            shared.clone(),
            false,
        ));
    }
    tokio::time::sleep(warmup).await;
    let start_count = shared.acked_readings.load(Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let n = shared.acked_readings.load(Ordering::Relaxed) - start_count;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    while set.join_next().await.is_some() {}
    let h = shared.hist.lock().clone();
    (rate, h)
}

async fn latency_phase(port: u16, devices: u64, secs: u64, interval: Duration) -> Histogram<u64> {
    let shared = Arc::new(Shared {
        acked_readings: AtomicU64::new(0),
        hist: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3).unwrap()),
    });
    // Warm-up devices connect first (not recorded), then the measured run.
    let stop = Instant::now() + Duration::from_secs(secs + 3);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..devices {
        let sh = shared.clone();
        let start_at = Instant::now() + Duration::from_millis(3_000 * i / devices.max(1));
        set.spawn(async move {
            tokio::time::sleep_until(start_at.into()).await;
            device(port, format!("lat-{i}"), Some(interval), stop, sh, true).await;
        });
    }
    while set.join_next().await.is_some() {}
    let h = shared.hist.lock().clone();
    h
}

async fn idle_phase(port: u16, n: u64, gw_pid: u32) -> (u64, u64, Duration) {
    let before = rss_kib(gw_pid);
    let mut clients = Vec::with_capacity(n as usize);
    let connected = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    for i in 0..n {
        let mut o = MqttOptions::new(format!("idle-{i}"), "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(300));
        let (c, mut el) = AsyncClient::new(o, 4);
        let conn = connected.clone();
        let t = tokio::spawn(async move {
            let mut counted = false;
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) if !counted => {
                        counted = true;
                        conn.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            }
        });
        clients.push((c, t));
        if i % 500 == 499 {
            tokio::task::yield_now().await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    while connected.load(Ordering::Relaxed) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = start.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss_kib(gw_pid);
    let got = connected.load(Ordering::Relaxed);
    for (_, t) in clients {
        t.abort();
    }
    println!(
        "idle: {got}/{n} connected in {:.1} s; gateway RSS {:.1} MiB before, {:.1} MiB with them",
        took.as_secs_f64(),
        before as f64 / 1024.0,
        after as f64 / 1024.0
    );
    (got, after, took)
}

/// Cumulative bucket counts of `breakwater_gateway_stage_seconds`, per stage: (le, count).
fn stage_buckets(port: u16) -> std::collections::BTreeMap<String, Vec<(f64, f64)>> {
    let page = http_get(port, "/metrics").map(|x| x.1).unwrap_or_default();
    let mut out: std::collections::BTreeMap<String, Vec<(f64, f64)>> = Default::default();
    for l in page.lines() {
        let Some(rest) = l.strip_prefix("breakwater_gateway_stage_seconds_bucket{") else {
            continue;
        };
        let Some((labels, count)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |k: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(k)?.strip_prefix("=\"")?.strip_suffix('"'))
                .map(str::to_owned)
        };
        let (Some(stage), Some(le)) = (label("stage"), label("le")) else {
            continue;
        };
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap_or(f64::NAN)
        };
        out.entry(stage)
            .or_default()
            .push((le, count.parse().unwrap_or(0.0)));
    }
    for v in out.values_mut() {
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    out
}

/// Quantile `q` of the observations between two bucket snapshots, linearly interpolated inside
/// the bucket (upper bound when it falls in the +Inf bucket).
fn bucket_quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> (f64, f64) {
    let diff: Vec<(f64, f64)> = after
        .iter()
        .map(|&(le, c)| {
            let b = before.iter().find(|x| x.0 == le).map_or(0.0, |x| x.1);
            (le, c - b)
        })
        .collect();
    let total = diff.last().map_or(0.0, |x| x.1);
    if total <= 0.0 {
        return (0.0, f64::NAN);
    }
    let target = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, c) in &diff {
        if c >= target {
            if le.is_infinite() {
                return (total, prev.0);
            }
            let frac = if c > prev.1 {
                (target - prev.1) / (c - prev.1)
            } else {
                1.0
            };
            return (total, prev.0 + (le - prev.0) * frac);
        }
        prev = (le, c);
    }
    (total, prev.0)
}

fn print_stages(
    before: &std::collections::BTreeMap<String, Vec<(f64, f64)>>,
    after: &std::collections::BTreeMap<String, Vec<(f64, f64)>>,
) {
    for stage in ["spooled", "kafka_delivery", "durable", "ack_queue"] {
        let Some(a) = after.get(stage) else { continue };
        let b = before.get(stage).map_or(&[][..], Vec::as_slice);
        let (n, p50) = bucket_quantile(b, a, 0.5);
        let (_, p99) = bucket_quantile(b, a, 0.99);
        println!(
            "  stage {stage:<15} n={n:<8} p50={:.1} ms p99={:.1} ms",
            p50 * 1000.0,
            p99 * 1000.0
        );
    }
}

/// Bare producer reference: `rate` records/s for `secs`, send-to-delivery-report latency.
async fn produce_reference(brokers: &str, devices: u64, rate: u64, secs: u64) -> Histogram<u64> {
    use breakwater_gateway::config::KafkaConfig;
    use breakwater_gateway::kafka::sink::{record_headers, record_value};
    use breakwater_gateway::spool::SpoolRecord;
    use futures_util::stream::{FuturesUnordered, StreamExt};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let mut cfg = KafkaConfig {
        brokers: Some(brokers.to_owned()),
        topic: format!("bench-produce-{nanos}"),
        events_topic: format!("bench-produce-ev-{nanos}"),
        ..KafkaConfig::default()
    };
    for kv in std::env::var("BENCH_KAFKA_EXTRA")
        .unwrap_or_default()
        .split(';')
    {
        if let Some((k, v)) = kv.split_once('=') {
            let (k, v) = (k.trim(), v.trim().trim_matches('"'));
            match k {
                "linger_ms" => cfg.linger_ms = v.parse().unwrap(),
                "batch_bytes" => cfg.batch_bytes = v.parse().unwrap(),
                "compression" => {
                    cfg.compression = toml::from_str::<
                        std::collections::BTreeMap<String, breakwater_gateway::config::Compression>,
                    >(&format!("c = \"{v}\""))
                    .unwrap()["c"];
                }
                _ if k.starts_with("properties.") => {
                    cfg.properties.insert(
                        k["properties.".len()..].trim_matches('"').to_owned(),
                        v.to_owned(),
                    );
                }
                _ => panic!("BENCH_KAFKA_EXTRA key {k} not supported in produce mode"),
            }
        }
    }
    breakwater_gateway::kafka::admin::ensure_topics(&cfg, brokers, Duration::from_secs(10))
        .await
        .unwrap();
    let producer: FutureProducer =
        breakwater_gateway::kafka::config::producer_config(&cfg, brokers)
            .create()
            .unwrap();
    let records: Vec<SpoolRecord> = (0..devices)
        .map(|i| {
            let b = Batch {
                device: DeviceId::parse(format!("ref-{i}")).unwrap(),
                epoch: 1,
                first_seq: 1,
                readings: (1..=BATCH)
                    .map(|s| Reading::new("temp", s as f64 * 0.5, 1_700_000_000_000 + s))
                    .collect(),
            };
            SpoolRecord::from_batch(&b, envelope::encode_batch(&b), 0)
        })
        .collect();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let mut inflight = FuturesUnordered::new();
    // Sends in 2 ms ticks (like a drain that wakes on each spool commit).
    let tick = Duration::from_millis(2);
    let per_tick = rate as f64 * tick.as_secs_f64();
    let start = Instant::now();
    let warm = Duration::from_secs(2);
    let end = start + warm + Duration::from_secs(secs);
    let mut owed = 0.0;
    let mut i = 0usize;
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    while Instant::now() < end || !inflight.is_empty() {
        tokio::select! {
            _ = ticker.tick(), if Instant::now() < end => {
                owed += per_tick;
                while owed >= 1.0 {
                    owed -= 1.0;
                    let rec = &records[i % records.len()];
                    i += 1;
                    let value = record_value(rec, breakwater_protocol::kafka::Encoding::Postcard).unwrap();
                    let r = FutureRecord::to(&cfg.topic)
                        .key(rec.device.as_str())
                        .payload(&value)
                        .headers(record_headers(rec, breakwater_protocol::kafka::Encoding::Postcard));
                    let sent = Instant::now();
                    match producer.send_result(r) {
                        Ok(f) => inflight.push(async move { (sent, f.await) }),
                        Err((e, _)) => panic!("produce: {e}"),
                    }
                }
            }
            Some((sent, res)) = inflight.next() => {
                assert!(matches!(res, Ok(Ok(_))), "delivery failed");
                if sent >= start + warm {
                    hist.record((sent.elapsed().as_micros() as u64).max(1)).unwrap();
                }
            }
        }
    }
    hist
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    let kafka = std::env::var("BREAKWATER_TEST_KAFKA")
        .ok()
        .filter(|s| !s.is_empty());
    let devices = env_u64("BENCH_DEVICES", 100);
    let secs = env_u64("BENCH_SECS", 15);
    let idle = env_u64("BENCH_IDLE", 10_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if std::env::var("BENCH_MODE").as_deref() == Ok("produce") {
        let brokers = kafka.expect("BENCH_MODE=produce needs BREAKWATER_TEST_KAFKA");
        let rate = env_u64("BENCH_PRODUCE_RATE", 8_340);
        let h = rt.block_on(produce_reference(&brokers, devices, rate, secs));
        println!(
            "bare produce to {brokers}: {rate} records/s of {BATCH}-reading batches, {devices} keys: n={} p50={:.1} ms p99={:.1} ms p99.9={:.1} ms max={:.1} ms",
            h.len(),
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            h.value_at_quantile(0.999) as f64 / 1000.0,
            h.max() as f64 / 1000.0
        );
        return;
    }
    let gw = start_gateway(kafka.as_deref());
    println!(
        "gateway pid {} (kafka: {}, ack mode: {}), {devices} devices, {BATCH}-reading batches, {secs} s",
        gw.child.id(),
        kafka.as_deref().unwrap_or("none"),
        if kafka.is_some() { "kafka" } else { "spool (no Kafka)" }
    );
    rt.block_on(async {
        if secs == 0 {
            // Idle connections only, on a fresh gateway.
            idle_phase(gw.mqtt, idle, gw.child.id()).await;
            return;
        }
        let fixed = env_u64("BENCH_HALF_RATE", 0);
        let rate = if fixed > 0 {
            fixed as f64 * 2.0
        } else {
            let (rate, _) = run_phase(gw.mqtt, devices, secs, None, "tp").await;
            println!("throughput: {rate:.0} readings/s acked ({:.0} batches/s), load average {}", rate / BATCH as f64, loadavg());
            let delivered = metric(gw.http, "breakwater_gateway_kafka_delivered_batches_total");
            let dropped = metric(gw.http, "breakwater_gateway_dropped_batches_total");
            let jumps = metric(gw.http, "breakwater_gateway_link_cursor_jumps_total");
            println!("gateway: kafka delivered batches {delivered}, dropped batches {dropped}, cursor jumps {jumps}, rss {:.1} MiB", rss_kib(gw.child.id()) as f64 / 1024.0);
            rate
        };
        let stages_before = stage_buckets(gw.http);

        // Half load, spread evenly over the devices.
        let per_device = (rate / 2.0) / BATCH as f64 / devices as f64;
        let interval = Duration::from_secs_f64(1.0 / per_device.max(0.1));
        let h = latency_phase(gw.mqtt, devices, secs, interval).await;
        println!(
            "ack latency at half load ({:.0} readings/s offered): n={} p50={:.1} ms p99={:.1} ms p99.9={:.1} ms max={:.1} ms",
            rate / 2.0,
            h.len(),
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            h.value_at_quantile(0.999) as f64 / 1000.0,
            h.max() as f64 / 1000.0
        );
        println!("  load average {}; in the gateway, per stage:", loadavg());
        print_stages(&stages_before, &stage_buckets(gw.http));
        if idle > 0 {
            idle_phase(gw.mqtt, idle, gw.child.id()).await;
        }
    });
}

//! Reconnection-storm benchmark: N clients send MQTT CONNECT at the same instant; how long until
//! every one has its CONNACK.
//!
//! ```sh
//! ulimit -n 20000   # 2 fds per client in this process (client + broker side)
//! CARGO_TARGET_DIR=/work/target-admission cargo bench -p breakwater-gateway --bench connect_storm
//! # knobs: BENCH_CLIENTS (4000), BENCH_ROUNDS (3), BENCH_TARGET (rumqttd|mosquitto|admission|all)
//! ```
//!
//! Targets:
//! * `rumqttd`   — the embedded rumqttd this workspace builds (patched via `[patch.crates-io]`;
//!   build without the patch to get the unpatched figure), `next_connection_delay_ms = 0`.
//! * `admission` — the same with the gateway's admission hook installed (open mode, a rate high
//!   enough not to pace), i.e. the cost of the hook itself.
//! * `mosquitto` — a Mosquitto process, for reference (skipped if not installed).
//!
//! Clients are raw MQTT 3.1.1 CONNECTs (`admission::probe`) on a 2-worker tokio runtime in this
//! process, so clients and broker share the machine. Per round it prints the wall time, connects/s,
//! CONNACK latency percentiles and, for in-process brokers, the CPU time of each busy thread
//! (which is how the next bottleneck shows: the listener's single thread).
#![allow(clippy::unwrap_used, clippy::cast_precision_loss)]

use breakwater_gateway::admission;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use admission::probe::{self, ProbeOutcome};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn start_rumqttd(max_connections: usize, adm: Option<&Arc<admission::Admission>>) -> SocketAddr {
    let port = breakwater_testkit::free_port();
    let listen: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut server = rumqttd::ServerSettings {
        name: "v4".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections: rumqttd::ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: 64 * 1024,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: false,
            connect_handler: None,
            authz_handler: None,
            transport_handler: None,
            max_deferred_acks: None,
            deferred_ack_timeout_ms: None,
        },
    };
    if let Some(adm) = adm {
        adm.install(&mut server.connections, None);
    }
    let config = rumqttd::Config {
        router: rumqttd::RouterConfig {
            max_connections: max_connections + 10,
            max_outgoing_packet_count: 200,
            max_segment_size: 64 * 1024,
            max_segment_count: 2,
            ..Default::default()
        },
        v4: Some(HashMap::from([("1".to_string(), server)])),
        ..Default::default()
    };
    std::thread::spawn(move || {
        let mut broker = rumqttd::Broker::new(config);
        broker.start().unwrap();
    });
    wait_listening(listen);
    listen
}

fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// (thread name, utime + stime in clock ticks) for each thread of this process.
fn thread_cpu() -> HashMap<u32, (String, u64)> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for entry in dir.flatten() {
        let Ok(tid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_string();
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        // fields[0] is state (field 3); utime is field 14, stime field 15.
        let ticks = fields
            .get(11)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            + fields
                .get(12)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        out.insert(tid, (name, ticks));
    }
    out
}

/// System-wide TCP counters (`/proc/net/netstat`, `TcpExt`): accept-queue overflows and
/// retransmitted SYNs show when a storm outruns the listener's accept loop.
fn tcp_counters() -> (u64, u64) {
    let Ok(text) = std::fs::read_to_string("/proc/net/netstat") else {
        return (0, 0);
    };
    let mut lines = text.lines();
    while let (Some(keys), Some(vals)) = (lines.next(), lines.next()) {
        if !keys.starts_with("TcpExt:") {
            continue;
        }
        let get = |name: &str| {
            keys.split(' ')
                .position(|k| k == name)
                .and_then(|i| vals.split(' ').nth(i))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        return (get("ListenOverflows"), get("TCPSynRetrans"));
    }
    (0, 0)
}

struct Round {
    elapsed: Duration,
    ok: usize,
    failed: HashMap<String, usize>,
    latencies: Vec<Duration>,
    listen_overflows: u64,
    syn_retrans: u64,
}

async fn storm(addr: SocketAddr, clients: usize, round: usize) -> Round {
    let tcp_before = tcp_counters();
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..clients {
        tasks.spawn(async move {
            let id = format!("storm-{round}-{i}");
            let t0 = Instant::now();
            let res = probe::connect(addr, &id, None, Duration::from_secs(120)).await;
            (res, t0.elapsed())
        });
    }
    let mut held = Vec::with_capacity(clients);
    let mut failed: HashMap<String, usize> = HashMap::new();
    let mut latencies = Vec::with_capacity(clients);
    while let Some(res) = tasks.join_next().await {
        let (res, latency) = res.unwrap();
        match res {
            Ok(ProbeOutcome::Accepted(s)) => {
                held.push(s);
                latencies.push(latency);
            }
            Ok(ProbeOutcome::Refused(code)) => {
                *failed.entry(format!("connack {code}")).or_default() += 1;
            }
            Ok(ProbeOutcome::Closed) => *failed.entry("closed".into()).or_default() += 1,
            Err(e) => {
                let kind = format!("{e}");
                let kind = kind.split(':').next().unwrap_or("error").to_string();
                *failed.entry(kind).or_default() += 1;
            }
        }
    }
    let elapsed = start.elapsed();
    let tcp_after = tcp_counters();
    let ok = held.len();
    drop(held);
    latencies.sort();
    Round {
        elapsed,
        ok,
        failed,
        latencies,
        listen_overflows: tcp_after.0.saturating_sub(tcp_before.0),
        syn_retrans: tcp_after.1.saturating_sub(tcp_before.1),
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn report(target: &str, round: usize, clients: usize, r: &Round, cpu: &[(String, f64)]) {
    println!(
        "{target:<10} round {round}: {ok}/{clients} CONNACK in {el:.3} s = {rate:>6.0} connects/s; \
         latency p50 {p50:.3} s p99 {p99:.3} s max {max:.3} s; failed {failed:?}; \
         TCP (system-wide) listen overflows {lo}, SYN retransmits {sr}",
        ok = r.ok,
        el = r.elapsed.as_secs_f64(),
        rate = r.ok as f64 / r.elapsed.as_secs_f64(),
        p50 = pct(&r.latencies, 0.5).as_secs_f64(),
        p99 = pct(&r.latencies, 0.99).as_secs_f64(),
        max = pct(&r.latencies, 1.0).as_secs_f64(),
        failed = r.failed,
        lo = r.listen_overflows,
        sr = r.syn_retrans,
    );
    if !cpu.is_empty() {
        let parts: Vec<String> = cpu.iter().map(|(n, s)| format!("{n} {s:.2} s")).collect();
        println!(
            "{:<10}          busy threads (CPU): {}",
            "",
            parts.join(", ")
        );
    }
}

fn cpu_delta(
    before: &HashMap<u32, (String, u64)>,
    after: &HashMap<u32, (String, u64)>,
) -> Vec<(String, f64)> {
    // Linux USER_HZ is 100 on every platform this runs on.
    let mut v: Vec<(String, f64)> = after
        .iter()
        .map(|(tid, (name, t))| {
            let prev = before.get(tid).map_or(0, |(_, p)| *p);
            (name.clone(), (t - prev.min(*t)) as f64 / 100.0)
        })
        .filter(|(_, s)| *s >= 0.05)
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let clients = env_usize("BENCH_CLIENTS", 4000);
    let rounds = env_usize("BENCH_ROUNDS", 3);
    let target = std::env::var("BENCH_TARGET").unwrap_or_else(|_| "all".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-client")
        .enable_all()
        .build()
        .unwrap();
    println!("connect storm: {clients} clients at once, {rounds} rounds");

    if target == "all" || target == "rumqttd" {
        for round in 0..rounds {
            let addr = start_rumqttd(clients, None);
            let before = thread_cpu();
            let r = rt.block_on(storm(addr, clients, round));
            let cpu = cpu_delta(&before, &thread_cpu());
            report("rumqttd", round, clients, &r, &cpu);
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    if target == "all" || target == "admission" {
        let cfg = admission::AdmissionConfig {
            max_connections: clients,
            connect_rate_per_sec: 1_000_000,
            connect_burst: u32::try_from(clients).unwrap(),
            max_waiting: clients,
            // Every simulated client comes from 127.0.0.1: the per-address limits (made for a
            // plant, where one host must not starve the others) get the global ones here.
            per_address_max_connections: clients,
            per_address_max_waiting: clients,
            per_address_connect_rate_per_sec: 1_000_000,
            per_address_connect_burst: u32::try_from(clients).unwrap(),
            ..Default::default()
        };
        for round in 0..rounds {
            let adm =
                admission::Admission::new(&cfg, &admission::AuthConfig::default(), None).unwrap();
            let addr = start_rumqttd(clients, Some(&adm));
            let before = thread_cpu();
            let r = rt.block_on(storm(addr, clients, round));
            let cpu = cpu_delta(&before, &thread_cpu());
            report("admission", round, clients, &r, &cpu);
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    if target == "all" || target == "mosquitto" {
        match breakwater_testkit::mosquitto::Mosquitto::start() {
            Some(m) => {
                let addr: SocketAddr = m.address().parse().unwrap();
                for round in 0..rounds {
                    let r = rt.block_on(storm(addr, clients, round));
                    report("mosquitto", round, clients, &r, &[]);
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
            None => println!("mosquitto: not installed, skipped"),
        }
    }
}

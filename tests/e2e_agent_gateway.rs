//! End to end with every real part: an application writes NDJSON lines to the agent's local
//! ingest socket; the agent (redb buffer, MQTT sender) sends to the gateway (embedded rumqttd,
//! sequencer, spool, Kafka producer), which lands them in the real Kafka-API broker. Every line
//! confirmed by the agent must arrive in Kafka exactly once, in order.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use breakwater_agent::config::AgentConfig;
use breakwater_agent::Agent;
use breakwater_protocol::{Reading, Value};
use breakwater_testkit::{kafka as tk, require_kafka};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

const LINES: u64 = 600;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_lines_arrive_in_kafka_in_order_exactly_once() {
    let bootstrap = require_kafka!();
    let gw = common::start_gateway(&bootstrap, "e2e", 2, r#"ack_mode = "kafka""#).await;
    let (dir, topic, mqtt_port) = (&gw.dir, gw.topic.clone(), gw.mqtt_port);

    let agent_toml = format!(
        r#"
device_id = "press-01"
[gateway]
address = "127.0.0.1:{mqtt_port}"
[buffer]
dir = "{buffer}"
[ingest]
listen = "127.0.0.1:0"
[sender]
batch_max_readings = 50
"#,
        buffer = dir.path().join("agent").display()
    );
    let agent = Agent::start(AgentConfig::from_toml(&agent_toml).unwrap())
        .await
        .unwrap();
    let ingest = agent.ingest_addr().expect("ingest enabled");

    // The application: one line per reading, one reply per line.
    let stream = TcpStream::connect(ingest).await.unwrap();
    let (rd, mut wr) = stream.into_split();
    let mut replies = BufReader::new(rd).lines();
    let mut seqs = Vec::new();
    for i in 0..LINES {
        let line = format!(
            "{{\"metric\":\"temp\",\"value\":{i},\"ts\":{}}}\n",
            1_764_115_200_000 + i
        );
        wr.write_all(line.as_bytes()).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(30), replies.next_line())
            .await
            .expect("reply within 30 s")
            .unwrap()
            .expect("a reply line");
        let v: serde_json::Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(v["ok"], true, "line {i} rejected: {reply}");
        seqs.push(v["seq"].as_u64().unwrap());
    }
    assert_eq!(
        seqs,
        (1..=LINES).collect::<Vec<_>>(),
        "consecutive seqs from 1"
    );

    // Everything confirmed reaches Kafka and is acked back to the agent.
    let acked = agent.flush(Duration::from_secs(60)).await.unwrap();
    assert_eq!(acked, LINES);
    let epoch = agent.stats().epoch;

    let (b, t) = (bootstrap.clone(), topic.clone());
    let records =
        tokio::task::spawn_blocking(move || tk::read_all(&b, &t, 2, 1, Duration::from_secs(60)))
            .await
            .unwrap();
    let mut got = Vec::new();
    for r in &records {
        let batch = r.batch();
        assert_eq!(batch.device.as_str(), "press-01");
        assert_eq!(batch.epoch, epoch);
        assert_eq!(r.key.as_deref(), Some(&b"press-01"[..]));
        for (seq, reading) in batch.iter_seq() {
            assert_eq!(reading.value, Value::I64(i64::try_from(seq - 1).unwrap()));
            got.push(seq);
        }
    }
    assert_eq!(
        got,
        (1..=LINES).collect::<Vec<_>>(),
        "every confirmed line exactly once, in order"
    );

    drop(wr);
    agent.shutdown().await;
    gw.gateway.shutdown().await;
}

/// A TCP forwarder between the agent and the gateway that the test can take down: existing
/// connections are cut and new ones closed at once, so the gateway is unreachable while it keeps
/// running (and keeps its sequencer state).
struct Proxy {
    addr: std::net::SocketAddr,
    up: Arc<AtomicBool>,
    cut: Arc<Mutex<CancellationToken>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let cut = Arc::new(Mutex::new(CancellationToken::new()));
        let (u, c) = (up.clone(), cut.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !u.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let token = c.lock().unwrap().clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        () = token.cancelled() => {}
                    }
                });
            }
        });
        Self {
            addr,
            up,
            cut,
            task,
        }
    }

    fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        let mut t = self.cut.lock().unwrap();
        t.cancel();
        *t = CancellationToken::new();
    }

    fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn http_metrics(addr: std::net::SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read_to_string(&mut s, &mut body),
    )
    .await
    .expect("metrics within 10 s")
    .unwrap();
    body
}

fn metric(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix(name))
        .filter_map(|rest| rest.trim().parse::<f64>().ok())
        .sum()
}

/// The drop-oldest gap, end to end: a device with a tiny `drop-oldest` budget keeps recording
/// while the gateway is unreachable, so its oldest unsent readings are dropped. After the link
/// comes back it declares its floor; the gateway (ack mode `kafka`) acks past the dropped range,
/// so the device drains instead of stalling. Everything not dropped lands in Kafka exactly once
/// and in order, and the gateway counted exactly the readings the agent dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_dropped_while_the_gateway_is_unreachable_are_declared_not_stalled_on() {
    let bootstrap = require_kafka!();
    let gw = common::start_gateway(&bootstrap, "e2e-drop", 1, r#"ack_mode = "kafka""#).await;
    let proxy = Proxy::start(gw.gateway.mqtt_addr).await;
    let agent_toml = format!(
        r#"
device_id = "drop-01"
[gateway]
address = "{proxy}"
[buffer]
dir = "{buffer}"
max_bytes = "64KiB"
when_full = "drop-oldest"
[ingest]
enabled = false
[sender]
batch_max_readings = 50
batch_max_delay = "20ms"
ack_timeout = "2s"
[sender.backoff]
initial = "50ms"
max = "200ms"
"#,
        proxy = proxy.addr,
        buffer = gw.dir.path().join("agent").display()
    );
    let agent = Agent::start(AgentConfig::from_toml(&agent_toml).unwrap())
        .await
        .unwrap();
    // ~250 bytes per reading: about 260 fit in the budget.
    let reading = |seq: u64| Reading::new("log", format!("{seq:0>200}"), 1_764_115_200_000 + seq);

    // 1. Connected: the gateway learns the device.
    agent
        .record_many((1..=100).map(reading).collect())
        .await
        .unwrap();
    assert_eq!(agent.flush(Duration::from_secs(60)).await.unwrap(), 100);

    // 2. Unreachable: 2,000 more readings overflow the budget; nothing of them was sent.
    proxy.down();
    let mut disconnected = agent.sender().watch_connected();
    tokio::time::timeout(Duration::from_secs(30), disconnected.wait_for(|c| !*c))
        .await
        .expect("the agent notices the cut")
        .unwrap();
    for seq in 101..=2_100 {
        agent.record(reading(seq)).await.unwrap();
    }
    let stats = agent.stats();
    let dropped = stats.dropped_total;
    assert!(dropped > 1_000, "{stats:?}");
    let first_kept = stats.first_seq;
    assert_eq!(
        first_kept,
        101 + dropped,
        "only unsent readings were dropped"
    );

    // 3. Back: floor, then the rest; the device reaches its last seq.
    proxy.up();
    let acked = agent.flush(Duration::from_secs(60)).await;
    assert_eq!(
        acked.unwrap(),
        2_100,
        "the device must not stall at the gap"
    );
    assert_eq!(agent.sender().acked_upto(), 2_100);
    let epoch = agent.stats().epoch;

    let expected: Vec<u64> = (1..=100).chain(first_kept..=2_100).collect();
    let (b, t) = (bootstrap.clone(), gw.topic.clone());
    let min_batches = expected.len().div_ceil(50);
    let records = tokio::task::spawn_blocking(move || {
        tk::read_all(&b, &t, 1, min_batches, Duration::from_secs(60))
    })
    .await
    .unwrap();
    let mut got = Vec::new();
    for r in &records {
        let batch = r.batch();
        assert_eq!(batch.epoch, epoch);
        for (seq, value) in batch.iter_seq() {
            assert_eq!(value, &reading(seq));
            got.push(seq);
        }
    }
    assert_eq!(
        got, expected,
        "everything not dropped, exactly once, in order"
    );

    let page = http_metrics(gw.gateway.metrics_addr).await;
    assert_eq!(
        metric(&page, "breakwater_gateway_device_dropped_readings_total"),
        dropped as f64,
        "the gateway counted exactly the readings the agent dropped"
    );
    assert!(metric(&page, "breakwater_gateway_received_floors_total") >= 1.0);

    agent.shutdown().await;
    gw.gateway.shutdown().await;
}

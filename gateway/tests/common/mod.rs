//! Shared helpers for the gateway's end-to-end tests: the real gateway binary as a child process,
//! simulated devices speaking MQTT with rumqttc (batches, acks, resend on a missing ack), Kafka
//! read-back and verification, a private tansu broker that can be paused.
#![allow(dead_code, clippy::unwrap_used, clippy::missing_panics_doc)]

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use breakwater_protocol::{envelope, Ack, Batch, DeviceId, Reading, Status, StatusKind, Topic};
use breakwater_testkit::kafka::Record;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};

pub const BIN: &str = env!("CARGO_BIN_EXE_breakwater-gateway");

/// The gateway binary running as a child process.
#[derive(Debug)]
pub struct GatewayProc {
    pub child: Option<Child>,
    pub mqtt_port: u16,
    pub metrics_port: u16,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
}

impl GatewayProc {
    /// Writes a config (`extra` is appended TOML) into `dir` and starts the gateway on fresh
    /// ports, waiting for `/readyz`.
    pub fn start(dir: &Path, extra: &str) -> Self {
        Self::start_with(dir, "", extra)
    }

    /// Like [`Self::start`]; `spool_extra` goes into the `[spool]` section.
    pub fn start_with(dir: &Path, spool_extra: &str, extra: &str) -> Self {
        Self::start_full(dir, "", spool_extra, extra)
    }

    /// Like [`Self::start_with`]; `mqtt_extra` goes into the `[mqtt]` section.
    pub fn start_full(dir: &Path, mqtt_extra: &str, spool_extra: &str, extra: &str) -> Self {
        let mqtt_port = breakwater_testkit::free_port();
        let metrics_port = breakwater_testkit::free_port();
        let config = dir.join("gateway.toml");
        std::fs::write(
            &config,
            format!(
                "[mqtt]\nlisten = \"127.0.0.1:{mqtt_port}\"\n{mqtt_extra}\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n[spool]\ndir = \"{}\"\n{spool_extra}\n{extra}\n",
                dir.join("spool").display()
            ),
        )
        .unwrap();
        let mut g = Self {
            child: None,
            mqtt_port,
            metrics_port,
            dir: dir.to_owned(),
            config,
            log: dir.join("gateway.log"),
        };
        g.spawn();
        g
    }

    /// (Re)starts the process with the same config and ports.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(BIN)
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .env("BREAKWATER_LOG", "info,rumqttd=error,librdkafka=error")
            .env_remove(breakwater_gateway::config::ENV_KAFKA_BROKERS)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some((200, _)) = http_get(self.metrics_port, "/readyz") {
                return;
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("gateway exited early ({st}); log:\n{}", self.log_text());
                }
            }
            assert!(
                Instant::now() < deadline,
                "gateway not ready in 60 s; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn mqtt_addr(&self) -> (String, u16) {
        ("127.0.0.1".to_owned(), self.mqtt_port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM and wait (bounded) for a clean exit; returns its success.
    pub fn terminate(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        let pid = c.id().to_string();
        Command::new("kill")
            .arg("-TERM")
            .arg(&pid)
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st.success();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The `/metrics` page.
    pub fn metrics(&self) -> String {
        http_get(self.metrics_port, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    /// Sum of every series of `name` whose labels contain `label` (e.g. `reason="gap"`; empty
    /// matches all).
    pub fn metric(&self, name: &str, label: &str) -> f64 {
        parse_metric(&self.metrics(), name, label)
    }
}

impl Drop for GatewayProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn parse_metric(page: &str, name: &str, label: &str) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest),
                None => (series, ""),
            };
            (n == name && labels.contains(label)).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// Minimal HTTP/1.0 GET on 127.0.0.1: (status, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// Waits (bounded) until `f` holds, polling.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

/// A simulated agent: sends `total` readings in batches of `batch` with at most `credit`
/// unacked batches, resends every unacked batch when no ack arrived for `resend_after`,
/// reconnects when the connection drops. Returns the acks' view when everything was acked,
/// or panics after `deadline`.
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    pub host: String,
    pub port: u16,
    pub device: String,
    pub epoch: u64,
    pub total: u64,
    pub batch: u64,
    pub credit: usize,
    pub resend_after: Duration,
    pub deadline: Duration,
    /// When set: return (instead of panicking at `deadline`) once no ack advanced for this long.
    pub stall_after: Option<Duration>,
}

#[derive(Debug, Default, Clone)]
pub struct DeviceReport {
    pub acked_upto: u64,
    pub acks: u64,
    pub resends: u64,
    pub max_retry_after: Option<u32>,
    pub min_credit: Option<u32>,
}

pub fn reading(seq: u64) -> Reading {
    #[allow(clippy::cast_precision_loss, clippy::cast_possible_wrap)]
    Reading::new("temp", seq as i64, 1_700_000_000_000 + seq)
}

pub fn make_batch(device: &str, epoch: u64, first: u64, n: u64) -> Batch {
    Batch {
        device: DeviceId::parse(device).unwrap(),
        epoch,
        first_seq: first,
        readings: (first..first + n).map(reading).collect(),
    }
}

fn options(id: &str, host: &str, port: u16) -> MqttOptions {
    let mut o = MqttOptions::new(id, host, port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(1 << 20, 1 << 20);
    o.set_inflight(200);
    o
}

/// Spawns the rumqttc event loop; acks are forwarded on the returned channel. Reconnects (and
/// resubscribes) after errors with a small pause.
fn spawn_loop(
    client: AsyncClient,
    mut el: EventLoop,
    ack_topic: String,
    tx: tokio::sync::mpsc::UnboundedSender<Ack>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.try_subscribe(ack_topic.clone(), QoS::AtLeastOnce);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Ok(a) = envelope::decode_ack(&p.payload) {
                        if tx.send(a).is_err() {
                            return;
                        }
                    }
                }
                Ok(_) => {}
                Err(_) => {
                    if tx.is_closed() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    })
}

pub async fn run_device(spec: DeviceSpec) -> DeviceReport {
    let device = DeviceId::parse(spec.device.clone()).unwrap();
    let (client, el) = AsyncClient::new(options(&spec.device, &spec.host, spec.port), 1000);
    let (tx, mut acks) = tokio::sync::mpsc::unbounded_channel();
    let task = spawn_loop(client.clone(), el, Topic::ack(&device), tx);
    let birth = Status {
        device: device.clone(),
        epoch: spec.epoch,
        kind: StatusKind::Birth,
        ts: 1,
    };
    client
        .publish(
            Topic::status(&device),
            QoS::AtLeastOnce,
            false,
            envelope::encode_status(&birth),
        )
        .await
        .unwrap();
    let topic = Topic::telemetry(&device);
    let mut report = DeviceReport::default();
    let mut next_seq = 1u64;
    // Unacked batches in order: (first, n).
    let mut unacked: std::collections::VecDeque<(u64, u64)> = std::collections::VecDeque::new();
    let mut last_progress = Instant::now();
    let mut credit = spec.credit;
    let deadline = Instant::now() + spec.deadline;
    let mut last_advance = Instant::now();
    while report.acked_upto < spec.total {
        if spec
            .stall_after
            .is_some_and(|s| last_advance.elapsed() >= s)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "device {} not fully acked within {:?}: acked {} of {}",
            spec.device,
            spec.deadline,
            report.acked_upto,
            spec.total
        );
        while unacked.len() < credit.max(1) && next_seq <= spec.total {
            let n = spec.batch.min(spec.total - next_seq + 1);
            let b = make_batch(&spec.device, spec.epoch, next_seq, n);
            client
                .publish(
                    topic.clone(),
                    QoS::AtLeastOnce,
                    false,
                    envelope::encode_batch(&b),
                )
                .await
                .unwrap();
            unacked.push_back((next_seq, n));
            next_seq += n;
        }
        match tokio::time::timeout(Duration::from_millis(50), acks.recv()).await {
            Ok(Some(a)) => {
                if a.epoch != spec.epoch {
                    continue;
                }
                report.acks += 1;
                report.max_retry_after = report.max_retry_after.max(a.retry_after_ms);
                report.min_credit = Some(report.min_credit.map_or(a.credit, |c| c.min(a.credit)));
                credit = usize::try_from(a.credit)
                    .unwrap_or(1)
                    .min(spec.credit.max(1) * 4);
                assert!(
                    a.upto_seq < next_seq,
                    "ack past what was sent: upto {} next {}",
                    a.upto_seq,
                    next_seq
                );
                if a.upto_seq > report.acked_upto {
                    report.acked_upto = a.upto_seq;
                    last_progress = Instant::now();
                    last_advance = last_progress;
                    while unacked
                        .front()
                        .is_some_and(|&(f, n)| f + n - 1 <= a.upto_seq)
                    {
                        unacked.pop_front();
                    }
                }
            }
            Ok(None) => panic!("event loop ended"),
            Err(_) => {}
        }
        if last_progress.elapsed() >= spec.resend_after && !unacked.is_empty() {
            for &(f, n) in &unacked {
                let b = make_batch(&spec.device, spec.epoch, f, n);
                let _ = client
                    .publish(
                        topic.clone(),
                        QoS::AtLeastOnce,
                        false,
                        envelope::encode_batch(&b),
                    )
                    .await;
                report.resends += 1;
            }
            last_progress = Instant::now();
        }
    }
    let _ = client.disconnect().await;
    task.abort();
    report
}

pub fn spec(port: u16, device: &str, total: u64) -> DeviceSpec {
    DeviceSpec {
        host: "127.0.0.1".into(),
        port,
        device: device.into(),
        epoch: 42,
        total,
        batch: 50,
        credit: 4,
        resend_after: Duration::from_secs(2),
        deadline: Duration::from_secs(120),
        stall_after: None,
    }
}

/// Decodes telemetry records: device -> readings' seqs in record order, checking headers.
pub fn seqs_by_device(records: &[Record]) -> BTreeMap<String, Vec<u64>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for r in records {
        let b = r.batch();
        assert_eq!(r.key.as_deref(), Some(b.device.as_str().as_bytes()));
        assert_eq!(r.header("bw-device"), Some(b.device.as_str()));
        assert_eq!(
            r.header("bw-first-seq"),
            Some(b.first_seq.to_string().as_str())
        );
        assert_eq!(
            r.header("bw-last-seq"),
            Some(b.last_seq().to_string().as_str())
        );
        for (seq, reading) in b.iter_seq() {
            assert_eq!(
                reading,
                &self::reading(seq),
                "reading content for seq {seq}"
            );
        }
        out.entry(b.device.as_str().to_owned())
            .or_default()
            .extend(b.first_seq..=b.last_seq());
    }
    out
}

/// Every device has exactly 1..=total, in order, no duplicates.
pub fn assert_exact(by_dev: &BTreeMap<String, Vec<u64>>, devices: &[String], total: u64) {
    for d in devices {
        let got = by_dev.get(d).cloned().unwrap_or_default();
        let want: Vec<u64> = (1..=total).collect();
        assert_eq!(
            got.len(),
            want.len(),
            "device {d}: {} readings, want {}",
            got.len(),
            total
        );
        assert_eq!(got, want, "device {d}: readings out of order or duplicated");
    }
}

/// Every device has every seq of 1..=total; duplicates allowed (crash recovery) but the first
/// appearance of each seq is in order.
pub fn assert_complete_in_order(
    by_dev: &BTreeMap<String, Vec<u64>>,
    devices: &[String],
    total: u64,
) {
    for d in devices {
        let got = by_dev.get(d).cloned().unwrap_or_default();
        let mut seen = std::collections::HashSet::new();
        let mut firsts = Vec::new();
        for s in got {
            if seen.insert(s) {
                firsts.push(s);
            }
        }
        let want: Vec<u64> = (1..=total).collect();
        assert_eq!(firsts, want, "device {d}: missing or out-of-order readings");
    }
}

/// Reads `topic` (blocking, in a blocking task).
pub async fn read_topic(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    expected: usize,
) -> Vec<Record> {
    let b = bootstrap.to_owned();
    let t = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        breakwater_testkit::kafka::read_all(&b, &t, partitions, expected, Duration::from_secs(60))
    })
    .await
    .unwrap()
}

/// Reads until the readings of every device add up to `total` each (at least), bounded.
pub async fn read_until_complete(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    devices: &[String],
    total: u64,
) -> BTreeMap<String, Vec<u64>> {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut expected = 1;
    loop {
        let recs = read_topic(bootstrap, topic, partitions, expected).await;
        let by = seqs_by_device(&recs);
        let done = devices.iter().all(|d| {
            let s: std::collections::HashSet<_> = by.get(d).into_iter().flatten().collect();
            s.len() as u64 >= total
        });
        if done || Instant::now() > deadline {
            return by;
        }
        expected = recs.len() + 1;
    }
}

/// A private tansu broker on a free port (memory engine), so a test can pause it.
#[derive(Debug)]
pub struct PrivateKafka {
    pub child: Child,
    pub host: String,
    pub port: u16,
}

impl PrivateKafka {
    pub fn start() -> Option<Self> {
        Self::start_on("127.0.0.1")
    }

    /// Like [`Self::start`], listening on (and advertising) `host`, an address of this
    /// machine: clients in other network namespaces reach it there (tests/keepalived.rs).
    pub fn start_on(host: &str) -> Option<Self> {
        let bin = which("tansu")?;
        let port = breakwater_testkit::free_port();
        let url = format!("tcp://{host}:{port}");
        let child = Command::new(bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let ok = wait_until(Duration::from_secs(20), || {
            TcpStream::connect((host, port)).is_ok()
        });
        assert!(ok, "private tansu did not listen");
        Some(Self {
            child,
            host: host.to_owned(),
            port,
        })
    }

    pub fn bootstrap(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    fn signal(&self, sig: &str) {
        Command::new("kill")
            .arg(sig)
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
    }

    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }
}

impl Drop for PrivateKafka {
    fn drop(&mut self) {
        self.resume();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

/// Names `prefix-0..n`.
pub fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// Runs devices concurrently, returning their reports by name.
pub async fn run_devices(specs: Vec<DeviceSpec>) -> HashMap<String, DeviceReport> {
    let mut set = tokio::task::JoinSet::new();
    for s in specs {
        set.spawn(async move { (s.device.clone(), run_device(s).await) });
    }
    let mut out = HashMap::new();
    while let Some(r) = set.join_next().await {
        let (d, rep) = r.unwrap();
        out.insert(d, rep);
    }
    out
}

/// Runs `breakwater-gateway spool export` on `spool_dir` (the gateway must have stopped) and
/// returns the seqs of every spooled reading, in export order. Each line must hold a valid batch.
pub fn spooled_seqs(spool_dir: &Path) -> Vec<u64> {
    let out = Command::new(BIN)
        .args(["spool", "export", "--dir"])
        .arg(spool_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut seqs = Vec::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let b = breakwater_protocol::json::decode_batch(
            v["batch"].to_string().as_bytes(),
            &breakwater_protocol::Limits::DEFAULT,
        )
        .unwrap();
        seqs.extend(b.first_seq..=b.last_seq());
    }
    seqs
}

/// A raw device: publishes exactly what the test says and collects acks.
pub struct RawDevice {
    pub client: AsyncClient,
    acks: tokio::sync::mpsc::UnboundedReceiver<breakwater_protocol::Ack>,
    task: tokio::task::JoinHandle<()>,
    device: String,
}

impl RawDevice {
    pub async fn connect(port: u16, device: &str) -> Self {
        let mut o = MqttOptions::new(device, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(30));
        let (client, mut el) = AsyncClient::new(o, 100);
        let (tx, acks) = tokio::sync::mpsc::unbounded_channel();
        let sub = client.clone();
        let ack_topic = Topic::ack(&DeviceId::parse(device).unwrap());
        let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
        let mut subscribed_tx = Some(subscribed_tx);
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        sub.try_subscribe(ack_topic.clone(), QoS::AtLeastOnce)
                            .unwrap();
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(t) = subscribed_tx.take() {
                            let _ = t.send(());
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
        tokio::time::timeout(Duration::from_secs(10), subscribed_rx)
            .await
            .unwrap()
            .unwrap();
        Self {
            client,
            acks,
            task,
            device: device.to_owned(),
        }
    }

    pub async fn send(&self, first: u64, n: u64) {
        let b = make_batch(&self.device, 7, first, n);
        let topic = Topic::telemetry(&b.device);
        self.client
            .publish(topic, QoS::AtLeastOnce, false, envelope::encode_batch(&b))
            .await
            .unwrap();
    }

    pub async fn floor(&self, first_seq: u64) {
        let f = breakwater_protocol::Floor {
            device: DeviceId::parse(&self.device).unwrap(),
            epoch: 7,
            first_seq,
        };
        self.client
            .publish(
                Topic::telemetry(&f.device),
                QoS::AtLeastOnce,
                false,
                envelope::encode_floor(&f),
            )
            .await
            .unwrap();
    }

    /// Waits for an ack with `upto_seq == upto` (bounded); returns every ack seen meanwhile.
    pub async fn expect_ack(&mut self, upto: u64) -> Vec<breakwater_protocol::Ack> {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let a = tokio::time::timeout_at(deadline, self.acks.recv())
                .await
                .unwrap_or_else(|_| panic!("no ack upto {upto}; saw {seen:?}"))
                .unwrap();
            let hit = a.upto_seq == upto;
            seen.push(a);
            if hit {
                return seen;
            }
        }
    }
}

impl Drop for RawDevice {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The bytes of an MQTT 3.1.1 CONNECT: clean session, no login, `keep_alive` seconds.
pub fn connect_packet(id: &str, keep_alive: u16) -> Vec<u8> {
    let mut var = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02];
    var.extend_from_slice(&keep_alive.to_be_bytes());
    var.extend_from_slice(&u16::try_from(id.len()).unwrap().to_be_bytes());
    var.extend_from_slice(id.as_bytes());
    let mut p = vec![0x10, u8::try_from(var.len()).unwrap()];
    p.extend(var);
    p
}

/// A real agent's configuration for the tests with several gateways: `gateway` is the body of
/// its `[gateway]` section (`address = ...` or `addresses = [...]`, `failover_after`), with a
/// 2 s connect timeout; batches of `batch` readings, `max_in_flight` in flight, backoff 100 to
/// 400 ms, no local ingest.
pub fn agent_config(
    device: &str,
    gateway: &str,
    buffer: &Path,
    batch: u64,
    max_in_flight: u64,
) -> breakwater_agent::config::AgentConfig {
    let toml = format!(
        r#"
device_id = "{device}"
[gateway]
{gateway}
connect_timeout = "2s"
[buffer]
dir = "{buffer}"
[ingest]
enabled = false
[sender]
batch_max_readings = {batch}
batch_max_delay = "10ms"
max_in_flight = {max_in_flight}
[sender.backoff]
initial = "100ms"
max = "400ms"
"#,
        buffer = buffer.display()
    );
    breakwater_agent::config::AgentConfig::from_toml(&toml).unwrap()
}

/// Whether `python3` can import `module` (with `PYTHONPATH` = `path` if given); panics under
/// `CI=true` if not (scripts/setup installs `what`), else says the test is skipped.
pub fn python_has(module: &str, path: Option<&Path>, what: &str) -> bool {
    let mut c = Command::new("python3");
    c.args(["-c", &format!("import {module}")]);
    if let Some(p) = path {
        c.env("PYTHONPATH", p);
    }
    let ok = c
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            !breakwater_testkit::in_ci(),
            "python3 with {what} is required under CI (scripts/setup installs it)"
        );
        eprintln!("skipped: python3 with {what} is not installed");
    }
    ok
}

/// A Python test client (a fixture script) as a child process: its stdout lines, its stdin for
/// commands; killed on drop.
pub struct PyProc {
    pub child: Child,
    stdin: Option<std::process::ChildStdin>,
    lines: std::sync::mpsc::Receiver<String>,
    /// Every line read so far.
    pub seen: Vec<String>,
}

impl PyProc {
    pub fn start(script: &str, args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Self {
        let mut child = Command::new("python3")
            .arg(script)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let stdin = child.stdin.take();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            stdin,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first line from now on that `want` accepts; panics after `timeout`.
    pub fn expect(&mut self, timeout: Duration, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Ok(line) = self.lines.recv_timeout(left) else {
                break;
            };
            self.seen.push(line.clone());
            if want(&line) {
                return line;
            }
        }
        panic!("no such line within {timeout:?}; got {:?}", self.seen);
    }

    /// Reads lines until one `stop` accepts (included), or `timeout`; returns the lines read
    /// by this call.
    pub fn read_until(
        &mut self,
        timeout: Duration,
        mut stop: impl FnMut(&str) -> bool,
    ) -> &[String] {
        let from = self.seen.len();
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Ok(line) = self.lines.recv_timeout(left) else {
                break;
            };
            let done = stop(&line);
            self.seen.push(line);
            if done {
                break;
            }
        }
        &self.seen[from..]
    }

    /// One command line on the script's stdin.
    pub fn send(&mut self, command: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{command}").unwrap();
        stdin.flush().unwrap();
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PyProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Every agent records readings `seqs` (see [`reading`]).
pub async fn record_all(agents: &[breakwater_agent::Agent], seqs: std::ops::RangeInclusive<u64>) {
    for agent in agents {
        agent
            .record_many(seqs.clone().map(reading).collect())
            .await
            .unwrap();
    }
}

/// Every agent has all of its `upto` readings acked within `within` (each); `context` is
/// printed on failure.
pub async fn flush_all(
    agents: &[breakwater_agent::Agent],
    devices: &[String],
    upto: u64,
    within: Duration,
    context: impl Fn() -> String,
) {
    for (d, agent) in devices.iter().zip(agents) {
        assert_eq!(
            agent.flush(within).await.unwrap(),
            upto,
            "{d} not fully acked:\n{}",
            context()
        );
    }
}

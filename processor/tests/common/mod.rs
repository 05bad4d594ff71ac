//! Helpers for the real-broker tests: produce records exactly as the gateway does (key, headers,
//! value), build configurations, read outputs back.
#![allow(clippy::unwrap_used, dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use breakwater_processor::config::Config;
use breakwater_processor::ids::IdHasher;
use breakwater_processor::state::{Partition, Stats};
use breakwater_protocol::kafka::{
    Encoding, FleetEvent, FleetEventKind, HEADER_CONTENT_TYPE, HEADER_DEVICE, HEADER_EPOCH,
    HEADER_FIRST_SEQ, HEADER_LAST_SEQ,
};
use breakwater_protocol::{Batch, DeviceId, Reading};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;

pub mod proc;

pub const PARTITIONS: i32 = 2;

/// The partition tests put a device in (both topics), like a key-hashing partitioner would.
pub fn partition_of(device: &str) -> i32 {
    partition_in(device, PARTITIONS)
}

/// [`partition_of`] for topics of `n` partitions.
pub fn partition_in(device: &str, n: i32) -> i32 {
    let h = IdHasher::new("p").str(device).finish();
    i32::try_from(u64::from_str_radix(&h, 16).unwrap() % u64::try_from(n).unwrap()).unwrap()
}

/// One input record, in production order.
#[derive(Debug, Clone)]
pub enum In {
    Batch(Batch),
    Event(FleetEvent),
}

pub fn batch(device: &str, epoch: u64, first_seq: u64, readings: Vec<Reading>) -> In {
    In::Batch(Batch {
        device: DeviceId::parse(device).unwrap(),
        epoch,
        first_seq,
        readings,
    })
}

pub fn event(device: &str, epoch: u64, kind: FleetEventKind, ts: u64) -> In {
    In::Event(FleetEvent {
        device: DeviceId::parse(device).unwrap(),
        epoch,
        kind,
        ts,
        gateway_ts: ts,
        reason: None,
    })
}

/// The readings-and-sessions workload the multi-process tests share: `devices` devices named
/// `{prefix}-NN`, each born at `t`, then `batches` batches of 10 `temp` readings 1 s apart
/// (reading `i` of every device is `spike_value` at `spike_at`, else `20 + value(i, d)`),
/// readings from batch `pause_from` on 30 s later (a session gap), deaths of every
/// `death_every`-th device at `death_ts`, and the far-future clocks (`clocks_in(.., partitions)`).
/// Split into what is produced before (`batches < split`) and after the test's disruption.
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    pub prefix: &'static str,
    pub devices: usize,
    pub epoch: u64,
    pub t: u64,
    pub batches: u64,
    pub split: u64,
    pub spike_at: u64,
    pub spike_value: f64,
    pub pause_from: Option<u64>,
    pub value: fn(u64, usize) -> f64,
    pub death_every: usize,
    pub death_ts: u64,
    pub partitions: i32,
}

impl Workload {
    #[must_use]
    pub fn phases(&self) -> (Vec<In>, Vec<In>) {
        let dev = |d: usize| format!("{}-{d:02}", self.prefix);
        let mut one: Vec<In> = (0..self.devices)
            .map(|d| event(&dev(d), self.epoch, FleetEventKind::Birth, self.t))
            .collect();
        let mut two = Vec::new();
        for b in 0..self.batches {
            let phase = if b < self.split { &mut one } else { &mut two };
            let pause = if self.pause_from.is_some_and(|p| b >= p) {
                30_000
            } else {
                0
            };
            for d in 0..self.devices {
                let rs: Vec<Reading> = (0..10u64)
                    .map(|j| {
                        let i = b * 10 + j;
                        let v = if i == self.spike_at {
                            self.spike_value
                        } else {
                            20.0 + (self.value)(i, d)
                        };
                        Reading::new("temp", v, self.t + i * 1_000 + pause)
                    })
                    .collect();
                phase.push(batch(&dev(d), self.epoch, b * 10 + 1, rs));
            }
        }
        for d in (0..self.devices).step_by(self.death_every) {
            two.push(event(
                &dev(d),
                self.epoch,
                FleetEventKind::Death,
                self.death_ts,
            ));
        }
        two.extend(clocks_in(self.t + 10_000_000, self.partitions));
        (one, two)
    }
}

/// Per partition, a far-future reading and a far-future fleet event (a refused connect, which
/// opens no session): both input topics' event times move to `ts`, so every device not seen
/// for `state.device_ttl` before it is evicted and what it held open is emitted.
pub fn clocks(ts: u64) -> Vec<In> {
    clocks_in(ts, PARTITIONS)
}

/// [`clocks`] for topics of `n` partitions.
pub fn clocks_in(ts: u64, n: i32) -> Vec<In> {
    let mut v = Vec::new();
    for p in 0..n {
        let name = (0..)
            .map(|i| format!("clock-{i}"))
            .find(|d| partition_in(d, n) == p)
            .unwrap();
        v.push(batch(&name, 1, 1, vec![Reading::new("tick", 0i64, ts)]));
        v.push(event(&name, 1, FleetEventKind::Refused, ts));
    }
    v
}

pub struct Topics {
    pub telemetry: String,
    pub events: String,
    pub sessions: String,
    pub anomalies: String,
    pub windows: String,
    pub late: String,
    pub changelog: String,
}

pub async fn topics(bootstrap: &str) -> Topics {
    topics_in(bootstrap, PARTITIONS).await
}

/// [`topics`] with `n` input (and changelog) partitions.
pub async fn topics_in(bootstrap: &str, n: i32) -> Topics {
    let k = breakwater_testkit::kafka::fresh_topic;
    Topics {
        telemetry: k(bootstrap, "proc-tel", n).await,
        events: k(bootstrap, "proc-ev", n).await,
        sessions: k(bootstrap, "proc-sess", 1).await,
        anomalies: k(bootstrap, "proc-anom", 1).await,
        windows: k(bootstrap, "proc-win", 1).await,
        late: k(bootstrap, "proc-late", 1).await,
        changelog: k(bootstrap, "proc-chg", n).await,
    }
}

/// Produces records in order, each to its device's partition, in the gateway's format. All are
/// enqueued first and then awaited: the idempotent producer keeps per-partition order.
pub async fn produce(p: &FutureProducer, t: &Topics, records: &[In]) {
    produce_in(p, t, records, PARTITIONS).await;
}

/// [`produce`] to topics of `n` partitions.
pub async fn produce_in(p: &FutureProducer, t: &Topics, records: &[In], n: i32) {
    let mut pending = Vec::with_capacity(records.len());
    for (i, r) in records.iter().enumerate() {
        let (topic, key, value, headers) = match r {
            In::Batch(b) => {
                // Alternate encodings: the processor must read both.
                let enc = if i % 3 == 0 {
                    Encoding::Json
                } else {
                    Encoding::Postcard
                };
                let h = OwnedHeaders::new()
                    .insert(Header {
                        key: HEADER_DEVICE,
                        value: Some(b.device.as_str()),
                    })
                    .insert(Header {
                        key: HEADER_EPOCH,
                        value: Some(&b.epoch.to_string()),
                    })
                    .insert(Header {
                        key: HEADER_FIRST_SEQ,
                        value: Some(&b.first_seq.to_string()),
                    })
                    .insert(Header {
                        key: HEADER_LAST_SEQ,
                        value: Some(&b.last_seq().to_string()),
                    })
                    .insert(Header {
                        key: HEADER_CONTENT_TYPE,
                        value: Some(enc.content_type()),
                    });
                (&t.telemetry, b.device.as_str(), enc.encode(b), Some(h))
            }
            In::Event(e) => (&t.events, e.device.as_str(), e.encode(), None),
        };
        let mut rec = FutureRecord::to(topic)
            .key(key)
            .payload(&value)
            .partition(partition_in(key, n));
        if let Some(h) = headers {
            rec = rec.headers(h);
        }
        loop {
            match p.send_result(rec) {
                Ok(f) => {
                    pending.push(f);
                    break;
                }
                Err((e, r)) => {
                    assert!(
                        e.rdkafka_error_code() == Some(rdkafka::error::RDKafkaErrorCode::QueueFull),
                        "{e}"
                    );
                    rec = r;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    }
    for f in pending {
        f.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
}

pub fn config_text(bootstrap: &str, t: &Topics, state: &Path, extra: &str) -> String {
    config_text_with(
        bootstrap,
        t,
        state,
        "checkpoint_interval = \"200ms\"",
        extra,
    )
}

pub fn config_text_with(
    bootstrap: &str,
    t: &Topics,
    state: &Path,
    checkpoint: &str,
    extra: &str,
) -> String {
    format!(
        r#"
[kafka]
brokers = "{bootstrap}"
telemetry_topic = "{}"
events_topic = "{}"
sessions_topic = "{}"
anomalies_topic = "{}"
windows_topic = "{}"
late_topic = "{}"
changelog_topic = "{}"
group_id = "{}"
assign = [0, 1]
create_topics = false
lag_interval = "1s"
[state]
path = "{}"
device_ttl = "60s"
{checkpoint}
{extra}
"#,
        t.telemetry,
        t.events,
        t.sessions,
        t.anomalies,
        t.windows,
        t.late,
        t.changelog,
        breakwater_testkit::kafka::unique_topic("proc-group"),
        state.display()
    )
}

pub fn config(text: &str) -> Config {
    Config::parse(text, &|_| None).unwrap()
}

/// Reads an output topic as JSON values.
pub async fn read_json(
    bootstrap: &str,
    topic: &str,
    expected: usize,
    timeout: Duration,
) -> Vec<Value> {
    let (b, t) = (bootstrap.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        breakwater_testkit::kafka::read_all(&b, &t, 1, expected, timeout)
    })
    .await
    .unwrap()
    .into_iter()
    .map(|r| serde_json::from_slice(&r.value.unwrap()).unwrap())
    .collect()
}

/// Deduplicates by `id`, asserting that repeats are identical.
pub fn by_id(records: &[Value]) -> BTreeMap<String, Value> {
    let mut m = BTreeMap::new();
    for r in records {
        let id = r["id"].as_str().unwrap().to_owned();
        if let Some(prev) = m.insert(id.clone(), r.clone()) {
            assert_eq!(prev, *r, "two different records share id {id}");
        }
    }
    m
}

/// The pure core over the same records, per partition in production order.
pub fn oracle(text: &str, records: &[In]) -> BTreeMap<&'static str, BTreeMap<String, Value>> {
    oracle_in(text, records, PARTITIONS)
}

/// [`oracle`] for topics of `n` partitions.
pub fn oracle_in(
    text: &str,
    records: &[In],
    n: i32,
) -> BTreeMap<&'static str, BTreeMap<String, Value>> {
    let p = config(text).params;
    let mut parts: BTreeMap<i32, Partition> = BTreeMap::new();
    let mut st = Stats::default();
    let mut out = Vec::new();
    for r in records {
        match r {
            In::Batch(b) => {
                let id = partition_in(b.device.as_str(), n);
                parts
                    .entry(id)
                    .or_insert_with(|| Partition::new(id))
                    .on_batch(b, &p, &mut st, &mut out);
            }
            In::Event(e) => {
                let id = partition_in(e.device.as_str(), n);
                parts
                    .entry(id)
                    .or_insert_with(|| Partition::new(id))
                    .on_event(e, &p, &mut st, &mut out);
            }
        }
    }
    let mut m: BTreeMap<&'static str, BTreeMap<String, Value>> = BTreeMap::new();
    for o in &out {
        let topic = match o {
            breakwater_processor::output::Output::Session(_) => "sessions",
            breakwater_processor::output::Output::Window(_) => "windows",
            breakwater_processor::output::Output::Anomaly(_) => "anomalies",
            breakwater_processor::output::Output::Late(_) => "late",
        };
        let v: Value = serde_json::from_slice(&o.to_json()).unwrap();
        m.entry(topic).or_default().insert(o.id().to_owned(), v);
    }
    m
}

/// Connectivity sessions' `readings` depends on how the two input topics interleave (see
/// `session.rs`); everything else must match exactly.
pub fn comparable(mut v: Value) -> Value {
    if v["kind"] == "connectivity" {
        v["readings"] = Value::Null;
    }
    v
}

pub fn assert_same(
    what: &str,
    got: &BTreeMap<&'static str, BTreeMap<String, Value>>,
    want: &BTreeMap<&'static str, BTreeMap<String, Value>>,
) {
    for topic in ["sessions", "windows", "anomalies"] {
        let g = got.get(topic).cloned().unwrap_or_default();
        let w = want.get(topic).cloned().unwrap_or_default();
        let missing: Vec<&Value> = w
            .iter()
            .filter(|(id, _)| !g.contains_key(*id))
            .map(|(_, v)| v)
            .collect();
        let extra: Vec<&Value> = g
            .iter()
            .filter(|(id, _)| !w.contains_key(*id))
            .map(|(_, v)| v)
            .collect();
        assert_eq!(
            g.keys().collect::<Vec<_>>(),
            w.keys().collect::<Vec<_>>(),
            "{what}: {topic} ids differ; missing {missing:#?}, unexpected {extra:#?}"
        );
        for (id, v) in &w {
            assert_eq!(
                comparable(g[id].clone()),
                comparable(v.clone()),
                "{what}: {topic} {id}"
            );
        }
    }
}

pub fn dedup(
    raw: &BTreeMap<&'static str, Vec<Value>>,
) -> BTreeMap<&'static str, BTreeMap<String, Value>> {
    raw.iter().map(|(k, v)| (*k, by_id(v))).collect()
}

/// The offsets committed to consumer group `group` for partitions `0..PARTITIONS` of `topics`.
pub fn committed(bootstrap: &str, group: &str, topics: &[&str]) -> BTreeMap<(String, i32), i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for t in topics {
        for p in 0..PARTITIONS {
            tpl.add_partition(t, p);
        }
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    got.elements()
        .iter()
        .filter_map(|e| match e.offset() {
            rdkafka::Offset::Offset(o) => Some(((e.topic().to_owned(), e.partition()), o)),
            _ => None,
        })
        .collect()
}

/// The next offsets in the checkpoint at `state`, as [`committed`] returns them.
pub fn checkpointed(state: &Path, telemetry: &str, events: &str) -> BTreeMap<(String, i32), i64> {
    let store = breakwater_processor::checkpoint::Store::open(state).unwrap();
    let mut m = BTreeMap::new();
    for p in 0..PARTITIONS {
        let l = store.load(p, telemetry, events).unwrap();
        if let Some(o) = l.partition.telemetry_next {
            m.insert((telemetry.to_owned(), p), o);
        }
        if let Some(o) = l.partition.events_next {
            m.insert((events.to_owned(), p), o);
        }
    }
    m
}

/// A log line without its terminal colour codes (`ESC [ ... m`), so tests can match `key=value`.
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Reads the sessions, windows and anomalies topics until each holds as many distinct ids as
/// `want` (or 90 s passed), all records included.
pub async fn outputs(
    bootstrap: &str,
    t: &Topics,
    want: &BTreeMap<&'static str, BTreeMap<String, Value>>,
) -> BTreeMap<&'static str, Vec<Value>> {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let mut got = BTreeMap::new();
    for (name, topic) in [
        ("sessions", &t.sessions),
        ("windows", &t.windows),
        ("anomalies", &t.anomalies),
    ] {
        let n = want.get(name).map_or(0, BTreeMap::len);
        loop {
            let v = read_json(bootstrap, topic, n, Duration::from_secs(10)).await;
            if by_id(&v).len() >= n || std::time::Instant::now() > deadline {
                got.insert(name, v);
                break;
            }
        }
    }
    got
}

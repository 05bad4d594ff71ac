//! A fake gateway for agent tests: a rumqttc client on a real Mosquitto broker that decodes
//! batches and answers with acks, with knobs for fault injection.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use breakwater_protocol::envelope::Message;
use breakwater_protocol::{
    envelope, Ack, Batch, DeviceId, Floor, Limits, Status, Topic, TopicKind,
};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};

/// Fault-injection knobs, changeable while running.
#[derive(Debug, Clone)]
pub struct Knobs {
    /// Drop this many of the next acks.
    pub drop_next_acks: u32,
    /// Drop every ack while true.
    pub withhold_acks: bool,
    /// Delay each ack by this much.
    pub ack_delay: Duration,
    /// Credit granted in each ack.
    pub credit: u32,
    /// `retry_after_ms` in each ack.
    pub retry_after_ms: Option<u32>,
    /// Ack with this epoch instead of the batch's.
    pub epoch_override: Option<u64>,
}

impl Default for Knobs {
    fn default() -> Self {
        Self {
            drop_next_acks: 0,
            withhold_acks: false,
            ack_delay: Duration::ZERO,
            credit: 4,
            retry_after_ms: None,
            epoch_override: None,
        }
    }
}

/// What the gateway saw.
#[derive(Debug, Default)]
pub struct Log {
    /// Every batch received, in arrival order (resends included).
    pub batches: Vec<Batch>,
    pub statuses: Vec<Status>,
    /// Per device: (epoch, highest contiguous seq received) — what an ack would say.
    pub durable: HashMap<DeviceId, (u64, u64)>,
    /// Per device: highest upto_seq actually published in an ack.
    pub published_upto: HashMap<DeviceId, u64>,
    /// Per device: last_seq of received batches not yet covered by a published ack.
    pub outstanding: HashMap<DeviceId, Vec<u64>>,
    /// Per device: the most batches outstanding at once, before and after the first ack.
    pub max_outstanding_before_first_ack: usize,
    pub max_outstanding_after_first_ack: usize,
    pub acks_published: usize,
    pub acks_dropped: usize,
    /// Every floor declaration received, in arrival order.
    pub floors: Vec<Floor>,
    /// Per device: ranges a floor let the ack pass without the readings (never received).
    pub declared_dropped: HashMap<DeviceId, Vec<(u64, u64)>>,
}

impl Log {
    /// Unique readings received for `device`, by seq (deduplicated), as (seq, metric, value).
    pub fn unique_seqs(&self, device: &DeviceId) -> Vec<u64> {
        let mut seqs: Vec<u64> = self
            .batches
            .iter()
            .filter(|b| &b.device == device)
            .flat_map(|b| b.first_seq..=b.last_seq())
            .collect();
        seqs.sort_unstable();
        seqs.dedup();
        seqs
    }

    pub fn times_sent(&self, device: &DeviceId, first_seq: u64) -> usize {
        self.batches
            .iter()
            .filter(|b| &b.device == device && b.first_seq == first_seq)
            .count()
    }
}

pub struct TestGateway {
    pub knobs: Arc<Mutex<Knobs>>,
    pub log: Arc<Mutex<Log>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestGateway {
    /// Connects to the broker on `port`, subscribes, and returns once subscribed.
    pub async fn start(port: u16) -> Self {
        let mut o = MqttOptions::new(format!("test-gateway-{port}"), "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut el) = AsyncClient::new(o, 10_000);
        client
            .subscribe(
                breakwater_protocol::topic::TELEMETRY_FILTER,
                QoS::AtLeastOnce,
            )
            .await
            .unwrap();
        client
            .subscribe(breakwater_protocol::topic::STATUS_FILTER, QoS::AtLeastOnce)
            .await
            .unwrap();
        let mut subacks = 0;
        tokio::time::timeout(Duration::from_secs(10), async {
            while subacks < 2 {
                if let Event::Incoming(Incoming::SubAck(_)) = el.poll().await.unwrap() {
                    subacks += 1;
                }
            }
        })
        .await
        .expect("test gateway did not subscribe in 10s");
        let knobs = Arc::new(Mutex::new(Knobs::default()));
        let log = Arc::new(Mutex::new(Log::default()));
        let (k, l) = (knobs.clone(), log.clone());
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        handle(&client, &k, &l, &p.topic, &p.payload);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("test gateway: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
        Self { knobs, log, task }
    }

    pub fn knobs(&self) -> std::sync::MutexGuard<'_, Knobs> {
        self.knobs.lock().unwrap()
    }

    pub fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap()
    }
}

fn handle(
    client: &AsyncClient,
    knobs: &Mutex<Knobs>,
    log: &Arc<Mutex<Log>>,
    topic: &str,
    payload: &[u8],
) {
    let Ok(t) = Topic::parse(topic) else { return };
    match t.kind {
        TopicKind::Status => {
            if let Ok(s) = envelope::decode_status(payload) {
                log.lock().unwrap().statuses.push(s);
            }
        }
        TopicKind::Telemetry => {
            let batch = match envelope::decode_with(payload, &Limits::DEFAULT).unwrap() {
                Message::Batch(b) => b,
                Message::Floor(f) => return floor(client, knobs, log, &t.device, &f),
                other => panic!("unexpected {:?} on the telemetry topic", other.kind()),
            };
            assert_eq!(batch.device, t.device, "batch device must match the topic");
            let k = knobs.lock().unwrap().clone();
            let mut l = log.lock().unwrap();
            let entry = l
                .durable
                .entry(batch.device.clone())
                .or_insert((batch.epoch, 0));
            if entry.0 != batch.epoch {
                *entry = (batch.epoch, 0);
            }
            if batch.first_seq <= entry.1 + 1 {
                entry.1 = entry.1.max(batch.last_seq());
            }
            let upto = entry.1;
            let published = l.published_upto.get(&batch.device).copied();
            let out = l.outstanding.entry(batch.device.clone()).or_default();
            if !out.contains(&batch.last_seq()) {
                out.push(batch.last_seq());
            }
            let n = out.len();
            if published.is_some() {
                l.max_outstanding_after_first_ack = l.max_outstanding_after_first_ack.max(n);
            } else {
                l.max_outstanding_before_first_ack = l.max_outstanding_before_first_ack.max(n);
            }
            let device = batch.device.clone();
            let epoch = k.epoch_override.unwrap_or(batch.epoch);
            l.batches.push(batch);
            if k.withhold_acks {
                l.acks_dropped += 1;
                return;
            }
            if k.drop_next_acks > 0 {
                knobs.lock().unwrap().drop_next_acks -= 1;
                l.acks_dropped += 1;
                return;
            }
            let ack = Ack {
                device: device.clone(),
                epoch,
                upto_seq: upto,
                credit: k.credit,
                retry_after_ms: k.retry_after_ms,
            };
            l.acks_published += 1;
            drop(l);
            let client = client.clone();
            let log = log.clone();
            // Mark the ack published right before it is, so the outstanding count never
            // undercounts what the agent has in flight.
            let publish = move |l: &mut Log| {
                let p = l.published_upto.entry(device.clone()).or_insert(0);
                *p = (*p).max(upto);
                let p = *p;
                if let Some(out) = l.outstanding.get_mut(&device) {
                    out.retain(|&last| last > p);
                }
                (Topic::ack(&device), envelope::encode_ack(&ack))
            };
            if k.ack_delay.is_zero() {
                let (topic, payload) = publish(&mut log.lock().unwrap());
                client
                    .try_publish(topic, QoS::AtLeastOnce, false, payload)
                    .unwrap();
            } else {
                tokio::spawn(async move {
                    tokio::time::sleep(k.ack_delay).await;
                    let (topic, payload) = publish(&mut log.lock().unwrap());
                    let _ = client
                        .publish(topic, QoS::AtLeastOnce, false, payload)
                        .await;
                });
            }
        }
        TopicKind::Ack => {}
    }
}

/// Like the real gateway's sequencer: a floor above the contiguous mark moves it (the range in
/// between is recorded as declared dropped) and is acked; one at or below it is re-acked.
fn floor(
    client: &AsyncClient,
    knobs: &Mutex<Knobs>,
    log: &Mutex<Log>,
    topic_device: &DeviceId,
    f: &Floor,
) {
    assert_eq!(&f.device, topic_device, "floor device must match the topic");
    let k = knobs.lock().unwrap().clone();
    let mut l = log.lock().unwrap();
    l.floors.push(f.clone());
    let Some(entry) = l.durable.get_mut(&f.device) else {
        return; // unknown device: ignored, as the real gateway does
    };
    if entry.0 != f.epoch {
        return;
    }
    let below = f.first_seq - 1;
    if below > entry.1 {
        let range = (entry.1 + 1, below);
        entry.1 = below;
        l.declared_dropped
            .entry(f.device.clone())
            .or_default()
            .push(range);
    }
    let upto = l.durable[&f.device].1;
    if k.withhold_acks {
        l.acks_dropped += 1;
        return;
    }
    let p = l.published_upto.entry(f.device.clone()).or_insert(0);
    *p = (*p).max(upto);
    let p = *p;
    if let Some(out) = l.outstanding.get_mut(&f.device) {
        out.retain(|&last| last > p);
    }
    l.acks_published += 1;
    let ack = Ack {
        device: f.device.clone(),
        epoch: k.epoch_override.unwrap_or(f.epoch),
        upto_seq: upto,
        credit: k.credit,
        retry_after_ms: k.retry_after_ms,
    };
    client
        .try_publish(
            Topic::ack(&f.device),
            QoS::AtLeastOnce,
            false,
            envelope::encode_ack(&ack),
        )
        .unwrap();
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub async fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

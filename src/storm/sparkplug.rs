//! The Sparkplug B device model (`--device-model sparkplug`): each simulated device is a
//! Sparkplug B edge node with one device, publishing to the gateway's host application
//! (`[sparkplug] enabled = true`). Payloads go through the gateway's own encoder
//! ([`breakwater_gateway::sparkplug::proto`]), so the simulator speaks exactly the protobuf the
//! gateway decodes.
//!
//! What each edge node does:
//! * MQTT client id = edge node id = the simulator's device id (`sim-00001`), group
//!   [`GROUP`], one device [`DEVICE`]; rumqttc with a persistent session (`clean_session =
//!   false`), in-flight window [`INFLIGHT`], QoS 1; a reading is done when its PUBACK arrives
//!   (from the gateway: once durable).
//! * Each connection carries the will NDEATH with the connection's `bdSeq` (incremented before
//!   every reconnect); after each CONNACK the node publishes NBIRTH (`bdSeq`, seq 0) and
//!   DBIRTH (seq 1: every metric with its name, alias and datatype) **before** anything else,
//!   then every DDATA not PUBACKed on the previous connection (DATA before BIRTH would be
//!   ignored by the host); a BIRTH of the previous connection is not resent (it would carry
//!   the old `bdSeq`, so the old connection's will, which the host may see late, would end the
//!   new session). For that order the node takes rumqttc's pending queue (what `clean`
//!   moved there: unacked publishes, requests not yet written) into its own hold when a
//!   connection fails, so rumqttc cannot drop it on a lost session, and after CONNACK puts it
//!   back behind the BIRTHs with packet ids cleared: rumqttc gives them fresh ids, so a BIRTH
//!   never collides with an old one. A resent DDATA is a new MQTT message to the gateway
//!   (`resends_total`); a copy that had reached Kafka before is a duplicate there, which
//!   downstream drops by the (device, epoch, seq) the message's metrics carry.
//! * DDATA: `--metrics-per-message` metrics by alias only (no names, no datatypes), `seq`
//!   0-255 wrapping. A Rebirth NCMD (`Node Control/Rebirth = true`) gets a new NBIRTH + DBIRTH
//!   (same `bdSeq`, seq restarting at 0).
//! * After a reconnect, DDATA that rumqttc republishes (or that were encoded before the new
//!   BIRTHs) carry seqs of the old count: the host sees one seq gap, still takes the data, and
//!   asks for a Rebirth (rate-limited), which the node answers.
//!
//! How the verifier finds the readings: the gateway turns a DDATA's metrics into one batch of
//! readings of device `spb.{group}.{edge node}.{device}` (gateway epoch and seqs, which the
//! simulator cannot know). So alias 0 is the metric `epoch` (the node's boot epoch, Int64) and
//! alias 1 the metric `seq` (Int64: the per-device number of the message's first reading, from
//! 1); the message's `n` metrics (epoch and seq included) are the readings `seq ..seq + n`.
//! The DBIRTH carries `epoch = 0`, so its readings are never taken for data.
//!
//! PUBACK bookkeeping: a FIFO of what is queued but not yet written (a message's first reading
//! seq, or 0 for a BIRTH), in write order, matched to `Outgoing::Publish(pkid)`; after CONNACK
//! its front is rebuilt in the order of the re-queued requests.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use breakwater_gateway::sparkplug::proto::{self, datatype, Metric, MetricValue, Payload};
use breakwater_gateway::sparkplug::{session::BDSEQ, topic, REBIRTH_METRIC};
use breakwater_protocol::DeviceId;
use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, Publish, QoS, Request,
    Subscribe,
};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::diy::DiyLink;
use super::fleet::FleetCounters;

/// The Sparkplug group of every simulated edge node.
pub const GROUP: &str = "storm";
/// The one device of each edge node.
pub const DEVICE: &str = "d1";
/// rumqttc's in-flight window (QoS 1 publishes awaiting PUBACK), as for the DIY devices.
pub const INFLIGHT: u16 = 100;
/// rumqttc's request channel: small, so `publish` blocks the application.
const REQUEST_CAP: usize = 10;
/// Aliases of the two identifying metrics (see the module doc).
const ALIAS_EPOCH: u64 = 0;
const ALIAS_SEQ: u64 = 1;

/// What the tasks of one edge node share.
#[derive(Debug)]
struct NodeState {
    connected: AtomicBool,
    /// Readings PUBACKed.
    acked: AtomicU64,
    /// The current connection's bdSeq.
    bd_seq: AtomicU64,
    /// The Sparkplug seq of the next message (low 8 bits count).
    next_seq: AtomicU64,
    /// Handed to `publish` but not yet written, oldest first: a DDATA's first reading seq, or
    /// 0 for a BIRTH.
    unsent: Mutex<VecDeque<u64>>,
    /// A Rebirth NCMD came.
    rebirth: Notify,
}

impl NodeState {
    fn seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::Relaxed) % 256
    }
}

/// One edge node.
#[derive(Debug)]
pub struct SpNode {
    /// Edge node id and MQTT client id.
    pub node: DeviceId,
    /// The device id its DDATA readings get in Kafka.
    pub kafka_id: DeviceId,
    pub epoch: u64,
    pub produced: u64,
    produced_tx: watch::Sender<u64>,
    cut_tx: Option<mpsc::Sender<Duration>>,
    state: Arc<NodeState>,
}

impl SpNode {
    #[must_use]
    pub fn acked(&self) -> u64 {
        self.state.acked.load(Ordering::Relaxed)
    }
}

/// The Sparkplug fleet.
#[derive(Debug)]
pub struct SparkplugFleet {
    pub nodes: Vec<SpNode>,
    pub counters: Arc<FleetCounters>,
    metrics_per_message: u64,
    link: DiyLink,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
}

impl SparkplugFleet {
    /// Builds (does not start) the edge nodes.
    ///
    /// # Errors
    /// `metrics_per_message` < 2 (the two identifying metrics), or a node's Kafka device id
    /// would be too long.
    pub fn new(
        ids: &[DeviceId],
        epoch: u64,
        metrics_per_message: u64,
        link: DiyLink,
        counters: Arc<FleetCounters>,
        cancel: CancellationToken,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            metrics_per_message >= 2,
            "--metrics-per-message must be at least 2 (epoch and seq identify the message)"
        );
        let nodes = ids
            .iter()
            .map(|id| {
                Ok(SpNode {
                    node: id.clone(),
                    kafka_id: topic::device_id(GROUP, id.as_str(), Some(DEVICE))?,
                    epoch,
                    produced: 0,
                    produced_tx: watch::channel(0).0,
                    cut_tx: None,
                    state: Arc::new(NodeState {
                        connected: AtomicBool::new(false),
                        acked: AtomicU64::new(0),
                        bd_seq: AtomicU64::new(0),
                        next_seq: AtomicU64::new(0),
                        unsent: Mutex::new(VecDeque::new()),
                        rebirth: Notify::new(),
                    }),
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            nodes,
            counters,
            metrics_per_message,
            link,
            cancel,
            tasks: JoinSet::new(),
        })
    }

    /// Starts nodes `range`.
    pub fn start(&mut self, range: std::ops::Range<usize>) {
        for i in range {
            let Some(d) = self.nodes.get_mut(i) else {
                continue;
            };
            if d.cut_tx.is_some() {
                continue;
            }
            let node = d.node.as_str().to_owned();
            let mut opts = MqttOptions::new(node.clone(), self.link.host.clone(), self.link.port);
            opts.set_clean_session(false);
            opts.set_keep_alive(Duration::from_secs(30));
            opts.set_inflight(INFLIGHT);
            opts.set_max_packet_size(1 << 20, 1 << 20);
            opts.set_last_will(ndeath_will(&node, 0));
            let (client, eventloop) = AsyncClient::new(opts, REQUEST_CAP);
            let (cut_tx, cut_rx) = mpsc::channel(1);
            d.cut_tx = Some(cut_tx);
            let cancel = self.cancel.child_token();
            self.tasks.spawn(publish_loop(
                client,
                node.clone(),
                d.epoch,
                self.metrics_per_message,
                d.produced_tx.subscribe(),
                Arc::clone(&d.state),
                cancel.clone(),
            ));
            self.tasks.spawn(
                Connection {
                    eventloop,
                    node,
                    mpm: self.metrics_per_message,
                    state: Arc::clone(&d.state),
                    counters: Arc::clone(&self.counters),
                    link: self.link.clone(),
                    cut_rx,
                    cancel,
                }
                .run(),
            );
        }
    }

    /// Generates `n` more readings on node `i` (published in messages of
    /// `--metrics-per-message`).
    pub fn produce(&mut self, i: usize, n: u64) {
        if let Some(d) = self.nodes.get_mut(i) {
            d.produced += n;
            d.produced_tx.send_replace(d.produced);
        }
    }

    pub fn cut_all(&self, outage: Duration) -> usize {
        self.nodes
            .iter()
            .filter_map(|d| d.cut_tx.as_ref())
            .filter(|tx| tx.try_send(outage).is_ok())
            .count()
    }

    #[must_use]
    pub fn connected(&self) -> usize {
        self.nodes
            .iter()
            .filter(|d| d.state.connected.load(Ordering::Relaxed))
            .count()
    }

    #[must_use]
    pub fn acked(&self) -> u64 {
        self.nodes.iter().map(SpNode::acked).sum()
    }

    #[must_use]
    pub fn all_acked_up_to(&self, upto: &[u64]) -> bool {
        self.nodes.iter().zip(upto).all(|(d, &u)| d.acked() >= u)
    }

    #[must_use]
    pub fn total_produced(&self) -> u64 {
        self.nodes.iter().map(|d| d.produced).sum()
    }

    pub async fn shutdown(&mut self, wait: Duration) {
        self.cancel.cancel();
        let _ = tokio::time::timeout(wait, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        self.tasks.abort_all();
    }
}

fn topic_of(kind: &str, node: &str, device: bool) -> String {
    if device {
        format!("spBv1.0/{GROUP}/{kind}/{node}/{DEVICE}")
    } else {
        format!("spBv1.0/{GROUP}/{kind}/{node}")
    }
}

fn long(name: Option<&str>, alias: Option<u64>, v: u64) -> Metric {
    Metric {
        name: name.map(str::to_owned),
        alias,
        timestamp: None,
        datatype: Some(datatype::INT64),
        is_null: None,
        value: Some(MetricValue::LongValue(v)),
    }
}

fn ndeath_will(node: &str, bd_seq: u64) -> LastWill {
    let p = Payload {
        timestamp: Some(breakwater_agent::now_ms()),
        metrics: vec![long(Some(BDSEQ), None, bd_seq)],
        seq: None,
    };
    LastWill::new(
        topic_of("NDEATH", node, false),
        proto::encode(&p),
        QoS::AtLeastOnce,
        false,
    )
}

/// NBIRTH (seq 0) and DBIRTH (seq 1), as QoS 1 publishes. Resets the node's seq.
fn births(node: &str, mpm: u64, state: &NodeState) -> [Publish; 2] {
    let now = breakwater_agent::now_ms();
    state.next_seq.store(0, Ordering::Relaxed);
    let nbirth = Payload {
        timestamp: Some(now),
        metrics: vec![
            long(Some(BDSEQ), None, state.bd_seq.load(Ordering::Relaxed)),
            Metric {
                name: Some(REBIRTH_METRIC.to_owned()),
                alias: None,
                timestamp: None,
                datatype: Some(datatype::BOOLEAN),
                is_null: None,
                value: Some(MetricValue::BooleanValue(false)),
            },
        ],
        seq: Some(state.seq()),
    };
    let mut metrics = vec![
        long(Some("epoch"), Some(ALIAS_EPOCH), 0),
        long(Some("seq"), Some(ALIAS_SEQ), 0),
    ];
    metrics.extend((2..mpm).map(|a| Metric {
        name: Some(format!("m{a}")),
        alias: Some(a),
        timestamp: None,
        datatype: Some(datatype::DOUBLE),
        is_null: None,
        value: Some(MetricValue::DoubleValue(0.0)),
    }));
    let dbirth = Payload {
        timestamp: Some(now),
        metrics,
        seq: Some(state.seq()),
    };
    [
        Publish::new(
            topic_of("NBIRTH", node, false),
            QoS::AtLeastOnce,
            proto::encode(&nbirth),
        ),
        Publish::new(
            topic_of("DBIRTH", node, true),
            QoS::AtLeastOnce,
            proto::encode(&dbirth),
        ),
    ]
}

/// A DDATA of readings `first..first + mpm`, by alias only.
fn ddata(epoch: u64, first: u64, mpm: u64, seq: u64) -> Vec<u8> {
    let by_alias = |alias, value| Metric {
        name: None,
        alias: Some(alias),
        timestamp: None,
        datatype: None,
        is_null: None,
        value: Some(value),
    };
    let mut metrics = Vec::with_capacity(usize::try_from(mpm).unwrap_or(0));
    metrics.push(by_alias(ALIAS_EPOCH, MetricValue::LongValue(epoch)));
    metrics.push(by_alias(ALIAS_SEQ, MetricValue::LongValue(first)));
    #[allow(clippy::cast_precision_loss)]
    metrics.extend((2..mpm).map(|a| {
        by_alias(
            a,
            MetricValue::DoubleValue(20.0 + ((first + a) % 100) as f64 * 0.1),
        )
    }));
    proto::encode(&Payload {
        timestamp: Some(breakwater_agent::now_ms()),
        metrics,
        seq: Some(seq),
    })
}

/// The node's application: publishes a DDATA once `mpm` more readings were generated, and
/// answers a Rebirth request with NBIRTH + DBIRTH.
async fn publish_loop(
    client: AsyncClient,
    node: String,
    epoch: u64,
    mpm: u64,
    mut produced: watch::Receiver<u64>,
    state: Arc<NodeState>,
    cancel: CancellationToken,
) {
    let data_topic = topic_of("DDATA", &node, true);
    let ncmd = topic::ncmd_topic(GROUP, &node);
    if client.subscribe(ncmd, QoS::AtLeastOnce).await.is_err() {
        return;
    }
    // No DDATA before the first CONNACK's BIRTHs reset the seq (it would be a seq gap).
    while !state.connected.load(Ordering::Relaxed) {
        if !sleep_unless_cancelled(&cancel, Duration::from_millis(20)).await {
            return;
        }
    }
    let mut first = 1u64;
    loop {
        let rebirth = tokio::select! {
            () = cancel.cancelled() => return,
            () = state.rebirth.notified() => true,
            r = produced.wait_for(|&p| p >= first + mpm - 1) => {
                if r.is_err() {
                    return;
                }
                false
            }
        };
        let publishes: Vec<(u64, String, Vec<u8>)> = if rebirth {
            births(&node, mpm, &state)
                .into_iter()
                .map(|p| (0, p.topic, p.payload.to_vec()))
                .collect()
        } else {
            let payload = ddata(epoch, first, mpm, state.seq());
            first += mpm;
            vec![(first - mpm, data_topic.clone(), payload)]
        };
        for (mark, t, payload) in publishes {
            if let Ok(mut q) = state.unsent.lock() {
                q.push_back(mark);
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                r = client.publish(t, QoS::AtLeastOnce, false, payload) => {
                    if r.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// The node's MQTT connection: rumqttc's event loop, the births after each CONNACK, the
/// reconnect policy.
struct Connection {
    eventloop: EventLoop,
    node: String,
    mpm: u64,
    state: Arc<NodeState>,
    counters: Arc<FleetCounters>,
    link: DiyLink,
    cut_rx: mpsc::Receiver<Duration>,
    cancel: CancellationToken,
}

impl Connection {
    async fn run(mut self) {
        // Packet id -> (first reading seq or 0 for a BIRTH, first written).
        let mut inflight: HashMap<u16, (u64, Instant)> = HashMap::new();
        // Requests of a failed connection, in rumqttc's order, until the next CONNACK.
        let mut held: VecDeque<Request> = VecDeque::new();
        let mut backoff = self.link.backoff_initial;
        let mut attempting = true;
        let ncmd = topic::ncmd_topic(GROUP, &self.node);
        loop {
            if attempting {
                self.counters
                    .connect_attempts_total
                    .fetch_add(1, Ordering::Relaxed);
                attempting = false;
            }
            // Cancelling `poll` only happens at shutdown or for a network cut, after which the
            // connection is dropped and `clean` moves every unacked publish to pending.
            let ev = tokio::select! {
                biased;
                () = self.cancel.cancelled() => return,
                Some(outage) = self.cut_rx.recv() => {
                    self.eventloop.clean();
                    self.settle(&mut inflight);
                    self.settle(&mut inflight);
                    hold(&mut self.eventloop, &mut held);
                    self.down();
                    if !sleep_unless_cancelled(&self.cancel, outage).await {
                        return;
                    }
                    attempting = true;
                    continue;
                }
                ev = self.eventloop.poll() => ev,
            };
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff = self.link.backoff_initial;
                    // BIRTHs first, then the NCMD subscription (again, in case the session was
                    // lost), then the held requests with fresh packet ids.
                    let [nbirth, dbirth] = births(&self.node, self.mpm, &self.state);
                    let mut pending = VecDeque::with_capacity(held.len() + 3);
                    pending.push_back(Request::Publish(nbirth));
                    pending.push_back(Request::Publish(dbirth));
                    pending.push_back(Request::Subscribe(Subscribe::new(
                        ncmd.clone(),
                        QoS::AtLeastOnce,
                    )));
                    // The marks of the unsent FIFO, rebuilt in the new write order: the BIRTHs,
                    // every held DDATA (its first reading seq, read back from the payload),
                    // then what is still in the request channel (the FIFO's entries past the
                    // held publishes that were never written).
                    let mut marks = vec![0, 0];
                    let mut unwritten_held = 0;
                    for mut r in held.drain(..) {
                        if let Request::Publish(p) = &mut r {
                            if p.pkid == 0 {
                                unwritten_held += 1;
                            }
                            // A BIRTH of the failed connection is superseded by the new ones
                            // (a real node never resends an old BIRTH). Resent, an NBIRTH
                            // would carry the old bdSeq: the host would then take the old
                            // connection's will NDEATH, forwarded late, for this session's
                            // death, and ignore this connection's DATA as before birth.
                            if is_birth(p) {
                                continue;
                            }
                            marks.push(first_seq(p));
                            if p.pkid != 0 {
                                self.counters.resends_total.fetch_add(1, Ordering::Relaxed);
                                p.pkid = 0;
                                p.dup = false;
                            }
                        }
                        pending.push_back(r);
                    }
                    // The ids in `inflight` belong to the dead connection; their publishes are
                    // all re-queued with fresh ids.
                    inflight.clear();
                    self.eventloop.pending = pending;
                    if let Ok(mut q) = self.state.unsent.lock() {
                        let n = unwritten_held.min(q.len());
                        let rest = q.split_off(n);
                        *q = marks.into_iter().chain(rest).collect();
                    }
                    self.state.connected.store(true, Ordering::Relaxed);
                    self.counters.connects_total.fetch_add(1, Ordering::Relaxed);
                }
                Ok(
                    ev @ (Event::Outgoing(Outgoing::Publish(_))
                    | Event::Incoming(Packet::PubAck(_))),
                ) => {
                    self.account(&ev, &mut inflight);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if p.topic == ncmd && is_rebirth(&p.payload) {
                        self.state.rebirth.notify_one();
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "connection failed");
                    // `poll` has moved everything unacked to `pending` (`clean`).
                    self.settle(&mut inflight);
                    hold(&mut self.eventloop, &mut held);
                    self.down();
                    if !sleep_unless_cancelled(&self.cancel, backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(self.link.backoff_max);
                    attempting = true;
                }
            }
            if attempting {
                // A new connection: a new bdSeq in its will (and in the NBIRTH after CONNACK).
                let bd = (self.state.bd_seq.fetch_add(1, Ordering::Relaxed) + 1) % 256;
                self.state.bd_seq.store(bd, Ordering::Relaxed);
                self.eventloop
                    .mqtt_options
                    .set_last_will(ndeath_will(&self.node, bd));
            }
        }
    }

    /// Maps a written publish to its mark, or counts a PUBACK.
    fn account(&self, ev: &Event, inflight: &mut HashMap<u16, (u64, Instant)>) {
        match ev {
            // A resend here would be rumqttc's own republish: not expected, every held
            // publish gets a fresh id (see the module doc).
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                self.counters
                    .on_written(*pkid, &self.state.unsent, inflight);
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some((first, sent)) = inflight.remove(&ack.pkid) {
                    if first > 0 {
                        self.state.acked.fetch_add(self.mpm, Ordering::Relaxed);
                        self.counters.record_latency(sent.elapsed());
                    }
                }
            }
            _ => {}
        }
    }

    /// After a failed connection: the events rumqttc had queued but not yet returned (writes
    /// and PUBACKs of that connection) are accounted now, before the held requests are
    /// re-queued, so that none of them is read as the next connection's.
    fn settle(&mut self, inflight: &mut HashMap<u16, (u64, Instant)>) {
        let stale: Vec<Event> = self.eventloop.state.events.drain(..).collect();
        for ev in &stale {
            self.account(ev, inflight);
        }
    }

    fn down(&self) {
        if self.state.connected.swap(false, Ordering::Relaxed) {
            self.counters
                .disconnects_total
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Takes what rumqttc holds of a failed connection into `held`: a publish parked in
/// rumqttc's collision slot first, then its pending queue. rumqttc's `clean` leaves the
/// collision slot alone, so a collided publish was never resent, and the slot, still set,
/// stopped rumqttc from taking new requests on the next connection: the node stalled with
/// its DDATA neither sent nor PUBACKed. (rumqttc takes `pending` even with a full inflight
/// window, so re-queuing more than `INFLIGHT` held publishes after a reconnect collides.)
/// The collided publish was never written (no `Outgoing::Publish`), so it goes back as
/// unwritten: packet id 0, its FIFO mark still at the front.
fn hold(eventloop: &mut EventLoop, held: &mut VecDeque<Request>) {
    if let Some(mut p) = eventloop.state.collision.take() {
        p.pkid = 0;
        held.push_back(Request::Publish(p));
    }
    held.extend(eventloop.pending.drain(..));
}

/// Whether `p` is an NBIRTH or a DBIRTH.
fn is_birth(p: &Publish) -> bool {
    p.topic.contains("/NBIRTH/") || p.topic.contains("/DBIRTH/")
}

/// The mark of a publish: a DDATA's first reading seq (its `seq` metric), else 0.
fn first_seq(p: &Publish) -> u64 {
    if !p.topic.contains("/DDATA/") {
        return 0;
    }
    proto::decode(&p.payload)
        .ok()
        .and_then(|d| {
            d.metrics.iter().find_map(|m| match m.value {
                Some(MetricValue::LongValue(v)) if m.alias == Some(ALIAS_SEQ) => Some(v),
                _ => None,
            })
        })
        .unwrap_or(0)
}

/// Whether an NCMD payload asks for a Rebirth.
fn is_rebirth(payload: &[u8]) -> bool {
    proto::decode(payload).is_ok_and(|p| {
        p.metrics.iter().any(|m| {
            m.name.as_deref() == Some(REBIRTH_METRIC)
                && m.value == Some(MetricValue::BooleanValue(true))
        })
    })
}

async fn sleep_unless_cancelled(cancel: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        () = cancel.cancelled() => false,
        () = tokio::time::sleep(d) => true,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ddata_carries_epoch_and_first_seq_by_alias() {
        let p = proto::decode(&ddata(7, 101, 50, 255)).unwrap();
        assert_eq!(p.seq, Some(255));
        assert_eq!(p.metrics.len(), 50);
        assert!(p.metrics.iter().all(|m| m.name.is_none()));
        assert_eq!(p.metrics[0].alias, Some(ALIAS_EPOCH));
        assert_eq!(p.metrics[0].value, Some(MetricValue::LongValue(7)));
        assert_eq!(p.metrics[1].value, Some(MetricValue::LongValue(101)));
    }

    #[test]
    fn a_collided_publish_of_a_failed_connection_is_held_first_as_unwritten() {
        let (_client, mut eventloop) =
            AsyncClient::new(MqttOptions::new("sim-00001", "127.0.0.1", 1), 10);
        let mut collided = Publish::new("spBv1.0/storm/DDATA/sim-00001/d1", QoS::AtLeastOnce, "a");
        collided.pkid = 7;
        eventloop.state.collision = Some(collided);
        let later = Publish::new("spBv1.0/storm/DDATA/sim-00001/d1", QoS::AtLeastOnce, "b");
        eventloop.pending.push_back(Request::Publish(later));
        let mut held = VecDeque::new();
        hold(&mut eventloop, &mut held);
        assert!(eventloop.state.collision.is_none());
        let got: Vec<(u16, Vec<u8>)> = held
            .iter()
            .map(|r| match r {
                Request::Publish(p) => (p.pkid, p.payload.to_vec()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got, [(0, b"a".to_vec()), (0, b"b".to_vec())]);
    }

    #[test]
    fn births_define_every_alias_and_reset_seq() {
        let state = NodeState {
            connected: AtomicBool::new(false),
            acked: AtomicU64::new(0),
            bd_seq: AtomicU64::new(3),
            next_seq: AtomicU64::new(77),
            unsent: Mutex::new(VecDeque::new()),
            rebirth: Notify::new(),
        };
        let [n, d] = births("sim-00001", 50, &state);
        let n = proto::decode(&n.payload).unwrap();
        let d = proto::decode(&d.payload).unwrap();
        assert_eq!((n.seq, d.seq), (Some(0), Some(1)));
        assert_eq!(n.metrics[0].value, Some(MetricValue::LongValue(3)));
        let aliases: Vec<_> = d.metrics.iter().map(|m| m.alias.unwrap()).collect();
        assert_eq!(aliases, (0..50).collect::<Vec<_>>());
        assert_eq!(state.seq(), 2);
        assert!(is_rebirth(&breakwater_gateway::sparkplug::rebirth_payload(
            1
        )));
        assert!(!is_rebirth(&proto::encode(&n)));
    }
}

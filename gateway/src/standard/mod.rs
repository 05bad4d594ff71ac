//! Standard MQTT clients: devices that do not run the Breakwater agent (plain JSON on a topic
//! of their own, `[[json_devices]]`; Sparkplug B, `crate::sparkplug`), and whose QoS 1 PUBACK
//! goes out only once their publish is durable under the ack mode.
//!
//! ```text
//! client ─PUBLISH QoS 1─> rumqttd (patch 22: no PUBACK yet) ─Deferred{token, client id}─>
//!   link consumer ─> Ingest::handle ─> json::decode ─> Ingest::submit ─> sequencer ─> spool
//!   writer / Kafka (as an agent batch) ─durable─> ack publisher ─> Tracks::durable ─>
//!   LinkTx::puback(token) ─> rumqttd ─PUBACK─> client
//! ```
//!
//! # Trust boundary
//!
//! What arrives here was published by a network client that rumqttd's connect hook
//! authenticated and whose topic the one policy (`crate::admission::authz`) allowed: a JSON
//! topic only where its `{device}` level is the client's own authenticated identity. The client
//! id in a `DeferredPublish` is the one the client connected with (its authenticated identity
//! in `file` and `mtls` auth modes). The payload is untrusted: [`json::decode`] turns every
//! problem into a counted, rate-limited-logged reason, never a panic.
//!
//! # Invariants
//!
//! * **QoS 0 gets the same backpressure.** rumqttd hands QoS 0 publishes over with a token too
//!   (patch 22), whose release sends no PUBACK but frees its slot among the connection's waiting
//!   publishes; the gateway releases it exactly like a QoS 1 token (on durability). A refusal
//!   closes a QoS 0 client as well; it does not resend, so that publish is lost, counted.
//! * **A PUBACK means durable.** A token is acked only by [`Tracks::durable`], from the
//!   sequencer's durable notification (spool fsync in ack mode `spool`, Kafka's delivery report
//!   in ack mode `kafka`), or at once for a publish that holds nothing to keep (a payload that
//!   does not decode: counted in `breakwater_gateway_invalid_payloads_total{reason}` and
//!   dropped, since resending it would not help; a publish with no readings).
//! * **Backpressure is a delayed PUBACK.** When the writer queue (`[pipeline] queue_capacity`)
//!   is full, a publish is *parked*, decoded but before the sequencer sees it, in its
//!   [`Ingest`]'s FIFO; while anything is parked every later publish of that ingest parks behind
//!   it (one FIFO, not one per device: simpler, and it keeps each device's publishes in order
//!   into the sequencer). The owning thread (the link consumer, the Sparkplug host) retries the
//!   parked ones oldest first before each read, every 2 ms while any is left
//!   ([`Ingest::retry_parked`]); a queue slot is reserved before the sequencer admits a batch,
//!   so a full queue changes nothing. The PUBACK waits meanwhile, so the client's inflight
//!   window, then rumqttd's read stop at `[standard] max_unacked_per_connection` waiting
//!   publishes, throttle it: parked publishes are bounded by that times the connections, and
//!   by `[standard] max_parked_publishes` over the process (gauge
//!   `breakwater_gateway_standard_parked_publishes`, counter
//!   `breakwater_gateway_standard_parked_total`). Nothing is dropped because the gateway is
//!   busy.
//! * **A refusal closes the client.** When the pipeline cannot take a batch (spool full,
//!   shutting down, the sequencer lost its state, the parked cap reached) the publisher's
//!   connection is closed without a PUBACK (`LinkTx::disconnect`, counted in
//!   `breakwater_gateway_standard_refused_total{reason}`, logged rate-limited): an MQTT 3.1.1
//!   client resends unacked publishes only after a reconnect. The device starts a new epoch,
//!   and the connections of its publishes still waiting for durability are closed too (they
//!   would hold every later PUBACK of their connection: rumqttd releases them in order). A
//!   batch the spool writer or the Kafka drain drops later (`Sequencer::reject`) is never
//!   acked; the next publish of that device meets the sequencer's gap and closes the client,
//!   or, if none comes, rumqttd closes it once no PUBACK was released for `[standard]
//!   puback_timeout_ms`. A parked publish whose connection was closed meanwhile is still
//!   taken (its token is then a no-op): its resend is a redelivery duplicate.
//! * **`(device, epoch, seq)` never names two different readings.** The gateway assigns them:
//!   a device's epoch is drawn at random (64 bits, `OsRng`) when this process first takes a
//!   batch of it, and again after every refusal; its seqs run from 1 with no reuse within an
//!   epoch. Another process (a restart, a second gateway) draws its own epoch, so it never
//!   continues one; two draws colliding is a 2^-64 event. The price: a resend after a lost
//!   PUBACK (e.g. a gateway crash between durability and the PUBACK) is new data to the gateway,
//!   with a new `(epoch, seq)` (see `breakwater_protocol::kafka` for what downstream sees).
//! * One device id is one device: an agent and a standard client must not send as the same
//!   device id (each would restart the other's epoch in the sequencer; nothing is lost, but
//!   both resend).
//!
//! # Entry point for other standard protocols (Sparkplug B)
//!
//! A module that decodes its own publishes calls, from the link consumer's thread or any other:
//!
//! ```ignore
//! ingest.submit(&link_tx, &device_id, readings, Some(token), &publisher)  // one batch
//! ingest.ack_now(&link_tx, token)          // a publish with nothing to keep (e.g. NDEATH)
//! ingest.refuse(&link_tx, token, reason)   // close the publisher (it resends)
//! ingest.retry_parked(&link_tx)            // in the thread's loop, before each read
//! ```
//!
//! `submit` takes care of epoch, seqs, spool, Kafka and the PUBACK (or parking, or the
//! refusal); `publisher` ([`Publisher`]) names the source (`"sparkplug"`), client id, pkid and DUP flag for the Kafka
//! headers. Several devices may share one publisher connection: rumqttd releases a connection's
//! PUBACKs in arrival order whatever order they become durable in.

pub mod config;
pub mod json;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use breakwater_protocol::{envelope, Batch, DeviceId, Limits, Reading};
use parking_lot::Mutex;
use rand::RngCore;
use rumqttd::local::LinkTx;
use rumqttd::{AckToken, DeferredPublish};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::admission::LogWindow;
use crate::sequencer::{Admit, Sequencer};
use crate::spool::writer::Accepted;
use crate::spool::{MqttOrigin, Spool, SpoolRecord};
use crate::stats as m;
use config::{JsonDeviceConfig, DEVICE_CAPTURE};

/// Who sent a publish, for the Kafka headers and the logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publisher {
    /// `json` or `sparkplug` (the `bw-source` header).
    pub source: &'static str,
    pub client_id: String,
    pub pkid: u16,
    pub dup: bool,
}

/// Why a standard client's publish was refused (its connection closed): the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    QueueFull,
    SpoolFull,
    ShuttingDown,
    /// The sequencer did not continue the device's epoch (a batch of it was dropped later).
    Sequencer,
    /// A publish on a deferred topic that no handler claims.
    UnknownTopic,
}

impl Refusal {
    #[must_use]
    pub fn reason(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::SpoolFull => "spool_full",
            Self::ShuttingDown => "shutting_down",
            Self::Sequencer => "sequencer",
            Self::UnknownTopic => "unknown_topic",
        }
    }
}

/// One device's gateway-assigned sequencing and the tokens waiting for its durability.
#[derive(Debug)]
struct Track {
    epoch: u64,
    next_seq: u64,
    /// (last seq of the batch, token), in seq order.
    waiting: VecDeque<(u64, AckToken)>,
}

impl Track {
    fn new() -> Self {
        Self {
            epoch: fresh_epoch(),
            next_seq: 1,
            waiting: VecDeque::new(),
        }
    }
}

fn fresh_epoch() -> u64 {
    // 0 is never drawn: nothing special, but it reads as "unset" in logs.
    rand::rngs::OsRng.next_u64().max(1)
}

/// The standard devices known to this process, shared by the ingest and the ack publisher.
#[derive(Debug, Default)]
pub struct Tracks {
    devices: Mutex<HashMap<DeviceId, Track>>,
    /// Publishes parked for room in the writer queue, over every [`Ingest`] of the process
    /// (their cap, `[standard] max_parked_publishes`, and the `/metrics` gauge).
    parked: AtomicUsize,
}

impl Tracks {
    /// Called by the ack publisher for each durable notification. `None`: not a standard
    /// device (publish the agent's ack). `Some(tokens)`: the PUBACKs to send now (none when the
    /// notification is of an epoch the device has left).
    #[must_use]
    pub fn durable(&self, device: &DeviceId, epoch: u64, upto: u64) -> Option<Vec<AckToken>> {
        let mut devices = self.devices.lock();
        let track = devices.get_mut(device)?;
        if track.epoch != epoch {
            return Some(Vec::new());
        }
        let mut out = Vec::new();
        while track.waiting.front().is_some_and(|(last, _)| *last <= upto) {
            if let Some((_, token)) = track.waiting.pop_front() {
                out.push(token);
            }
        }
        Some(out)
    }

    /// Publishes waiting for durability, over all devices (`/metrics` gauge).
    #[must_use]
    pub fn waiting(&self) -> usize {
        self.devices.lock().values().map(|t| t.waiting.len()).sum()
    }

    /// Publishes parked for room in the writer queue (`/metrics` gauge).
    #[must_use]
    pub fn parked(&self) -> usize {
        self.parked.load(Ordering::Relaxed)
    }
}

/// A publish waiting for room in the writer queue: decoded, not yet seen by the sequencer.
#[derive(Debug)]
struct Parked {
    device: DeviceId,
    readings: Vec<Reading>,
    token: Option<AckToken>,
    publisher: Publisher,
}

/// Why [`Ingest::take`] did not take a batch.
#[derive(Debug)]
enum NotTaken {
    /// The writer queue has no room; nothing was changed, the readings come back.
    Full(Vec<Reading>),
    Refused(Refusal),
}

/// A `[[json_devices]]` topic, matched level by level.
#[derive(Debug, Clone)]
struct JsonRoute {
    levels: Vec<String>,
    capture: usize,
    cfg: JsonDeviceConfig,
}

impl JsonRoute {
    fn new(cfg: &JsonDeviceConfig) -> Option<Self> {
        let levels: Vec<String> = cfg.topic.split('/').map(str::to_owned).collect();
        let capture = levels.iter().position(|l| l == DEVICE_CAPTURE)?;
        Some(Self {
            levels,
            capture,
            cfg: cfg.clone(),
        })
    }

    /// The `{device}` level of `topic`, if `topic` is this route's.
    fn device<'t>(&self, topic: &'t str) -> Option<&'t str> {
        let mut n = 0;
        let mut device = None;
        for (i, level) in topic.split('/').enumerate() {
            let want = self.levels.get(i)?;
            if i == self.capture {
                device = Some(level);
            } else if want != level {
                return None;
            }
            n += 1;
        }
        (n == self.levels.len()).then_some(device).flatten()
    }
}

/// The JSON topics, for the authorization policy: `Some(device)` if `topic` is a
/// `[[json_devices]]` topic, with its `{device}` level. Allocation-free.
#[derive(Debug, Clone, Default)]
pub struct JsonTopics {
    routes: Vec<JsonRoute>,
}

impl JsonTopics {
    #[must_use]
    pub fn new(cfg: &[JsonDeviceConfig]) -> Self {
        Self {
            routes: cfg.iter().filter_map(JsonRoute::new).collect(),
        }
    }

    #[must_use]
    pub fn device<'t>(&self, topic: &'t str) -> Option<&'t str> {
        self.routes.iter().find_map(|r| r.device(topic))
    }

    fn route<'t>(&self, topic: &'t str) -> Option<(&JsonRoute, &'t str)> {
        self.routes
            .iter()
            .find_map(|r| r.device(topic).map(|d| (r, d)))
    }

    /// The rumqttd filters whose PUBACKs the gateway owns.
    #[must_use]
    pub fn filters(&self) -> Vec<String> {
        self.routes.iter().map(|r| r.cfg.filter()).collect()
    }
}

/// The standard-client ingest (see the module doc).
pub struct Ingest {
    pub sequencer: Arc<Sequencer>,
    pub spool: Arc<Spool>,
    pub queue: mpsc::Sender<Accepted>,
    pub depth: Arc<AtomicUsize>,
    pub tracks: Arc<Tracks>,
    pub json: JsonTopics,
    pub limits: Limits,
    /// This ingest's parked publishes, oldest first; only its owning thread's loop adds and
    /// retries them ([`Ingest::retry_parked`]).
    parked: Mutex<VecDeque<Parked>>,
    /// `[standard] max_parked_publishes`, over the process ([`Tracks::parked`]).
    max_parked: usize,
    log: Mutex<LogWindow>,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest").finish_non_exhaustive()
    }
}

impl Ingest {
    #[must_use]
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        sequencer: Arc<Sequencer>,
        spool: Arc<Spool>,
        queue: mpsc::Sender<Accepted>,
        depth: Arc<AtomicUsize>,
        tracks: Arc<Tracks>,
        json: JsonTopics,
        limits: Limits,
        max_parked: usize,
    ) -> Self {
        Self {
            sequencer,
            spool,
            queue,
            depth,
            tracks,
            json,
            limits,
            parked: Mutex::new(VecDeque::new()),
            max_parked,
            // At most 10 lines a second.
            log: Mutex::new(LogWindow::new(10)),
        }
    }

    /// Takes one publish rumqttd handed over (patch 22). Never blocks on the pipeline.
    pub fn handle(&self, link: &LinkTx, d: DeferredPublish) {
        let topic = String::from_utf8_lossy(&d.publish.topic);
        let publisher = Publisher {
            source: "json",
            client_id: d.client_id,
            pkid: d.pkid,
            dup: d.dup,
        };
        let Some((route, device)) = self.json.route(&topic) else {
            return self.refuse(link, d.token, Refusal::UnknownTopic, &publisher);
        };
        metrics::counter!(m::STANDARD_PUBLISHES, "source" => "json").increment(1);
        let device = match DeviceId::parse(device) {
            Ok(dev) => dev,
            Err(e) => return self.invalid(link, Some(d.token), "bad_device_id", &topic, &e),
        };
        let readings = match json::decode(
            route.cfg.format,
            &route.cfg.timestamp_field,
            &d.publish.payload,
            crate::link::now_ms(),
            &self.limits,
        ) {
            Ok(r) => r,
            Err(e) => return self.invalid(link, Some(d.token), e.reason(), &topic, &e),
        };
        self.submit(link, &device, readings, Some(d.token), &publisher);
    }

    /// A payload that cannot be taken: counted, logged (rate-limited), acked and dropped.
    fn invalid(
        &self,
        link: &LinkTx,
        token: Option<AckToken>,
        reason: &'static str,
        topic: &str,
        detail: &dyn std::fmt::Display,
    ) {
        metrics::counter!(m::INVALID_PAYLOADS, "reason" => reason).increment(1);
        if let Some(unlogged) = self.log.lock().allow() {
            warn!(topic, reason, %detail, unlogged, "invalid payload of a standard client dropped (acknowledged: a resend would not help)");
        }
        if let Some(token) = token {
            self.ack_now(link, token);
        }
    }

    /// Hands `readings` of `device` to the pipeline as one batch; `token`'s PUBACK goes out
    /// when it is durable. When the writer queue is full the publish is parked (and behind it
    /// every later one of this ingest) until [`Ingest::retry_parked`] finds room; the publisher
    /// is closed only if it cannot be taken at all (spool full, shutting down, the parked cap
    /// reached). Never blocks.
    pub fn submit(
        &self,
        link: &LinkTx,
        device: &DeviceId,
        readings: Vec<Reading>,
        token: Option<AckToken>,
        publisher: &Publisher,
    ) {
        if readings.is_empty() {
            if let Some(token) = token {
                self.ack_now(link, token);
            }
            return;
        }
        let parked = Parked {
            device: device.clone(),
            readings,
            token,
            publisher: publisher.clone(),
        };
        // Behind what is parked already: a device's publishes enter the sequencer in order.
        if !self.parked.lock().is_empty() {
            return self.park(link, parked);
        }
        if let Some(rest) = self.submit_now(link, parked) {
            self.park(link, rest);
        }
    }

    /// Retries the parked publishes, oldest first, until one finds the writer queue full
    /// again. Returns whether some are still parked (the caller polls again soon). Called from
    /// the owning thread's loop.
    pub fn retry_parked(&self, link: &LinkTx) -> bool {
        loop {
            let Some(p) = self.parked.lock().pop_front() else {
                return false;
            };
            match self.submit_now(link, p) {
                None => {
                    self.tracks.parked.fetch_sub(1, Ordering::Relaxed);
                }
                Some(rest) => {
                    self.parked.lock().push_front(rest);
                    return true;
                }
            }
        }
    }

    /// Whether this ingest holds parked publishes.
    #[must_use]
    pub fn has_parked(&self) -> bool {
        !self.parked.lock().is_empty()
    }

    /// Parks `p` at the back, or refuses it (closing its publisher) past the cap.
    fn park(&self, link: &LinkTx, p: Parked) {
        if self.tracks.parked.fetch_add(1, Ordering::Relaxed) >= self.max_parked {
            self.tracks.parked.fetch_sub(1, Ordering::Relaxed);
            if let Some(token) = p.token {
                self.refuse(link, token, Refusal::QueueFull, &p.publisher);
            } else {
                // No token (a message taken from a subscription, not deferred): nothing to
                // close; the readings are dropped, counted and logged.
                metrics::counter!(m::STANDARD_REFUSED, "reason" => Refusal::QueueFull.reason())
                    .increment(1);
                if let Some(unlogged) = self.log.lock().allow() {
                    warn!(client_id = %p.publisher.client_id, unlogged, "standard client's publish without a token dropped: writer queue and parked publishes full");
                }
            }
            return;
        }
        metrics::counter!(m::STANDARD_PARKED).increment(1);
        self.parked.lock().push_back(p);
    }

    /// Takes `p`'s readings as one or more batches (a Sparkplug payload may exceed the
    /// protocol's batch limit; the token waits for the last). Returns what is left, with the
    /// token, if the writer queue filled up; refuses the publisher on any other problem.
    fn submit_now(&self, link: &LinkTx, p: Parked) -> Option<Parked> {
        let Parked {
            device,
            mut readings,
            token,
            publisher,
        } = p;
        let limit = self.limits.max_readings_per_batch;
        loop {
            let rest = if readings.len() > limit {
                readings.split_off(limit)
            } else {
                Vec::new()
            };
            let last = rest.is_empty();
            let result = self.take(
                link,
                &device,
                readings,
                if last { token } else { None },
                &publisher,
            );
            match result {
                Ok(()) if last => return None,
                Ok(()) => readings = rest,
                Err(NotTaken::Full(mut head)) => {
                    head.extend(rest);
                    return Some(Parked {
                        device,
                        readings: head,
                        token,
                        publisher,
                    });
                }
                Err(NotTaken::Refused(refusal)) => {
                    if let Some(token) = token {
                        self.refuse(link, token, refusal, &publisher);
                    }
                    return None;
                }
            }
        }
    }

    /// One batch into the pipeline. A full writer queue changes nothing; on a refusal the
    /// device starts a new epoch.
    fn take(
        &self,
        link: &LinkTx,
        device: &DeviceId,
        readings: Vec<Reading>,
        token: Option<AckToken>,
        publisher: &Publisher,
    ) -> Result<(), NotTaken> {
        // A queue slot first, before the sequencer sees the batch: a full queue then leaves
        // sequencer, spool and track as they were.
        let permit = match self.queue.try_reserve() {
            Ok(permit) => permit,
            Err(mpsc::error::TrySendError::Full(())) => return Err(NotTaken::Full(readings)),
            Err(mpsc::error::TrySendError::Closed(())) => {
                metrics::counter!(m::DROPPED_BATCHES, "reason" => Refusal::ShuttingDown.reason())
                    .increment(1);
                return Err(NotTaken::Refused(Refusal::ShuttingDown));
            }
        };
        let mut devices = self.tracks.devices.lock();
        let track = devices.entry(device.clone()).or_insert_with(Track::new);
        let batch = Batch {
            device: device.clone(),
            epoch: track.epoch,
            first_seq: track.next_seq,
            readings,
        };
        let n = batch.readings.len() as u64;
        match self.pipeline(batch, publisher, permit) {
            Ok(last) => {
                track.next_seq = last + 1;
                if let Some(token) = token {
                    track.waiting.push_back((last, token));
                }
                metrics::counter!(m::ACCEPTED_READINGS).increment(n);
                Ok(())
            }
            Err(refusal) => {
                // Whatever of the old epoch is still in flight becomes durable unacked; the new
                // epoch never meets it. Its waiting tokens would hold every later PUBACK of
                // their connection (rumqttd releases them in order) until the PUBACK timeout:
                // their publishers are closed now instead (usually the refused publish's own
                // connection, whose other tokens are then stale no-ops) and resend.
                let old = std::mem::replace(track, Track::new());
                drop(devices);
                for (_, t) in old.waiting {
                    link.disconnect(t).ok();
                }
                Err(NotTaken::Refused(refusal))
            }
        }
    }

    /// Sequencer, spool reservation, writer queue (its slot reserved already): the agent
    /// path's hand-off (`crate::link`).
    fn pipeline(
        &self,
        batch: Batch,
        publisher: &Publisher,
        permit: mpsc::Permit<'_, Accepted>,
    ) -> Result<u64, Refusal> {
        let device = batch.device.clone();
        let (epoch, first) = (batch.epoch, batch.first_seq);
        let b = match self.sequencer.admit(batch) {
            Admit::Accept(b) if b.first_seq == first => b,
            Admit::Accept(b) => {
                // Trimmed: the sequencer knew part of this epoch already, which it cannot.
                self.sequencer.reject(&device, epoch, b.first_seq);
                return Err(Refusal::Sequencer);
            }
            Admit::Duplicate { .. } | Admit::Gap { .. } => return Err(Refusal::Sequencer),
        };
        let last = b.last_seq();
        let mut record =
            SpoolRecord::from_batch(&b, envelope::encode_batch(&b), crate::link::now_ms());
        record.origin = Some(MqttOrigin {
            source: publisher.source.to_owned(),
            client_id: publisher.client_id.clone(),
            pkid: publisher.pkid,
            dup: publisher.dup,
        });
        let size = record.size();
        if !self.spool.reserve(size) {
            self.sequencer.reject(&device, epoch, first);
            metrics::counter!(m::DROPPED_BATCHES, "reason" => "spool_full").increment(1);
            return Err(Refusal::SpoolFull);
        }
        self.depth.fetch_add(1, Ordering::Relaxed);
        permit.send(Accepted {
            device: device.clone(),
            record,
            size,
        });
        Ok(last)
    }

    /// PUBACKs a publish that holds nothing to keep.
    pub fn ack_now(&self, link: &LinkTx, token: AckToken) {
        if let Err(e) = link.puback(token) {
            warn!(error = %e, "PUBACK: the broker link is gone");
        }
    }

    /// Closes the publisher of `token` without its PUBACK; it resends after reconnecting.
    pub fn refuse(&self, link: &LinkTx, token: AckToken, refusal: Refusal, publisher: &Publisher) {
        metrics::counter!(m::STANDARD_REFUSED, "reason" => refusal.reason()).increment(1);
        if let Some(unlogged) = self.log.lock().allow() {
            warn!(
                client_id = %publisher.client_id,
                source = publisher.source,
                reason = refusal.reason(),
                unlogged,
                "standard client's publish refused: closing its connection (it resends)"
            );
        } else {
            debug!(client_id = %publisher.client_id, reason = refusal.reason(), "refused");
        }
        if let Err(e) = link.disconnect(token) {
            warn!(error = %e, "disconnect: the broker link is gone");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use config::JsonFormat;

    fn topics(list: &[&str]) -> JsonTopics {
        let cfg: Vec<JsonDeviceConfig> = list
            .iter()
            .map(|t| JsonDeviceConfig {
                topic: (*t).to_owned(),
                format: JsonFormat::Reading,
                timestamp_field: "ts".into(),
            })
            .collect();
        JsonTopics::new(&cfg)
    }

    #[test]
    fn json_topics_capture_the_device_level_only_on_an_exact_shape() {
        let t = topics(&["plant/{device}/telemetry", "{device}/json"]);
        assert_eq!(t.device("plant/press-1/telemetry"), Some("press-1"));
        assert_eq!(t.device("x/json"), Some("x"));
        assert_eq!(t.device("plant/press-1/telemetry/more"), None);
        assert_eq!(t.device("plant/press-1"), None);
        assert_eq!(t.device("plant//telemetry"), Some(""));
        assert_eq!(t.device("other/press-1/telemetry"), None);
        assert_eq!(t.filters(), ["plant/+/telemetry", "+/json"]);
    }

    #[test]
    fn durable_releases_tokens_up_to_the_seq_and_only_of_the_current_epoch() {
        let tracks = Tracks::default();
        let dev = DeviceId::parse("d").unwrap();
        assert!(
            tracks.durable(&dev, 1, 10).is_none(),
            "unknown: an agent device"
        );
        let token = |serial| rumqttd::AckToken::unregistered(serial);
        let epoch = {
            let mut d = tracks.devices.lock();
            let t = d.entry(dev.clone()).or_insert_with(Track::new);
            t.waiting
                .extend([(2, token(1)), (5, token(2)), (9, token(3))]);
            t.epoch
        };
        assert_eq!(tracks.durable(&dev, epoch ^ 1, 100), Some(vec![]));
        assert_eq!(
            tracks.durable(&dev, epoch, 5),
            Some(vec![token(1), token(2)])
        );
        assert_eq!(tracks.waiting(), 1);
        assert_eq!(tracks.durable(&dev, epoch, 8), Some(vec![]));
        assert_eq!(tracks.durable(&dev, epoch, 9), Some(vec![token(3)]));
    }
}

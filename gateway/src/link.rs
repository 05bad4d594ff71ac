//! The link consumer: reads every telemetry and status publish from the embedded broker,
//! decodes and validates it, asks the sequencer, and hands new batches to the spool writer.
//! A device's floor declaration (telemetry topic, see `breakwater_protocol::Floor`) goes to the
//! sequencer only; it may let the device be acked past readings it dropped.
//!
//! It runs on its own thread and never blocks on anything downstream: every hand-off is a
//! `try_send` (or an atomic reservation). When the writer queue or the spool is full the batch
//! is dropped, counted and un-accepted in the sequencer; no ack comes, so the device resends it.
//! Falling behind here makes rumqttd skip the link ahead (a `CursorJump` alert, counted by
//! [`spawn_alerts`]); the devices' resends recover those batches too.
//!
//! On `Notification::Unschedule` it calls `ready()`, or the router would stop forwarding.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use breakwater_protocol::envelope::{self, Message};
use breakwater_protocol::{Limits, Topic, TopicKind};
use rumqttd::local::{LinkError, LinkRx, LinkTx};
use rumqttd::Notification;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::ack::Acker;
use crate::admission::Admission;
use crate::events::FleetInput;
use crate::sequencer::{Admit, Sequencer};
use crate::spool::writer::Accepted;
use crate::spool::{Spool, SpoolRecord};
use crate::stats as m;

#[must_use]
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub struct LinkConsumer {
    pub rx: LinkRx,
    /// Kept alive: dropping it would disconnect the link.
    pub tx: LinkTx,
    pub sequencer: Arc<Sequencer>,
    pub spool: Arc<Spool>,
    pub queue: mpsc::Sender<Accepted>,
    pub depth: Arc<AtomicUsize>,
    pub acker: Acker,
    pub events: mpsc::Sender<FleetInput>,
    /// Fed every device birth (burst detection).
    pub admission: Option<Arc<Admission>>,
    pub limits: Limits,
    pub stop: Arc<AtomicBool>,
    /// Standard MQTT clients' publishes (`Notification::Deferred`, see [`crate::standard`]).
    pub standard: Option<Arc<crate::standard::Ingest>>,
}

impl std::fmt::Debug for LinkConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkConsumer").finish_non_exhaustive()
    }
}

impl LinkConsumer {
    /// Runs on the calling thread until `stop` is set or the link is lost (the router went away
    /// or disconnected it); the caller tells the two apart by `stop`.
    pub fn run(mut self) {
        info!("link consumer started");
        let mut log_limit = LogLimiter::new();
        loop {
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            // Parked standard-client publishes (writer queue full) go first, and are retried
            // every few ms while any is left.
            let parked = self
                .standard
                .as_ref()
                .is_some_and(|ingest| ingest.retry_parked(&self.tx));
            let wait = Duration::from_millis(if parked { 2 } else { 200 });
            match self.rx.recv_deadline(Instant::now() + wait) {
                Ok(Some(Notification::Forward(f))) => {
                    self.handle(&f.publish.topic, &f.publish.payload, &mut log_limit);
                }
                Ok(Some(Notification::Deferred(d))) => match &self.standard {
                    Some(ingest) => ingest.handle(&self.tx, *d),
                    // Cannot happen (no deferred filter without the ingest); closing the
                    // publisher makes it resend rather than wait for a PUBACK.
                    None => {
                        self.tx.disconnect(d.token).ok();
                    }
                },
                Ok(Some(Notification::Unschedule)) => {
                    if let Err(e) = self.rx.ready() {
                        warn!(error = %e, "link: router gone");
                        break;
                    }
                }
                // The router disconnected this link (its session was taken over): nothing more
                // will arrive. Network clients cannot take the link's id (it is reserved,
                // `admission::RESERVED_PREFIX`); this is the last line of defence.
                Ok(Some(Notification::Disconnect(..))) => {
                    warn!("link: disconnected by the router");
                    break;
                }
                Ok(_) => {}
                Err(LinkError::RecvTimeout(_)) => {}
                Err(e) => {
                    warn!(error = %e, "link: router gone");
                    break;
                }
            }
        }
        info!("link consumer stopped");
    }

    fn invalid(
        &self,
        reason: &'static str,
        topic: &str,
        detail: &dyn std::fmt::Display,
        ll: &mut LogLimiter,
    ) {
        metrics::counter!(m::INVALID_PAYLOADS, "reason" => reason).increment(1);
        if ll.allow() {
            warn!(topic, reason, %detail, "invalid payload dropped");
        }
    }

    fn handle(&self, topic: &[u8], payload: &[u8], ll: &mut LogLimiter) {
        let topic = String::from_utf8_lossy(topic);
        let parsed = match Topic::parse(&topic) {
            Ok(t) => t,
            Err(e) => return self.invalid("bad_topic", &topic, &e, ll),
        };
        let msg = match envelope::decode_with(payload, &self.limits) {
            Ok(msg) => msg,
            Err(e) => return self.invalid(e.reason(), &topic, &e, ll),
        };
        match (parsed.kind, msg) {
            (TopicKind::Telemetry, Message::Batch(batch)) => {
                if batch.device != parsed.device {
                    return self.invalid("device_mismatch", &topic, &batch.device, ll);
                }
                metrics::counter!(m::RECEIVED_BATCHES).increment(1);
                metrics::counter!(m::RECEIVED_READINGS).increment(batch.readings.len() as u64);
                self.take_batch(batch, payload);
            }
            (TopicKind::Telemetry, Message::Floor(floor)) => {
                if floor.device != parsed.device {
                    return self.invalid("device_mismatch", &topic, &floor.device, ll);
                }
                metrics::counter!(m::RECEIVED_FLOORS).increment(1);
                // Ordered with the device's batches (same topic, QoS 1): everything it sent
                // before the floor was admitted already.
                if let Some(upto) = self.sequencer.floor(&floor) {
                    self.acker.ack(floor.device, floor.epoch, upto);
                }
            }
            (TopicKind::Status, Message::Status(status)) => {
                if status.device != parsed.device {
                    return self.invalid("device_mismatch", &topic, &status.device, ll);
                }
                if status.kind == breakwater_protocol::StatusKind::Birth {
                    if let Some(a) = &self.admission {
                        a.observe_connect();
                    }
                }
                if self
                    .events
                    .try_send(FleetInput::Status(status, now_ms()))
                    .is_err()
                {
                    metrics::counter!(m::EVENTS_DROPPED, "reason" => "queue_full").increment(1);
                }
            }
            (_, other) => {
                self.invalid("wrong_kind", &topic, &other.kind().as_str(), ll);
            }
        }
    }

    fn take_batch(&self, batch: breakwater_protocol::Batch, payload: &[u8]) {
        let device = batch.device.clone();
        let epoch = batch.epoch;
        let orig_first = batch.first_seq;
        match self.sequencer.admit(batch) {
            Admit::Accept(b) => {
                let bytes = if b.first_seq == orig_first {
                    payload.to_vec()
                } else {
                    envelope::encode_batch(&b)
                };
                let record = SpoolRecord::from_batch(&b, bytes, now_ms());
                let size = record.size();
                let readings = b.readings.len() as u64;
                if !self.spool.reserve(size) {
                    self.sequencer.reject(&device, epoch, b.first_seq);
                    metrics::counter!(m::DROPPED_BATCHES, "reason" => "spool_full").increment(1);
                    return;
                }
                self.depth.fetch_add(1, Ordering::Relaxed);
                let first = b.first_seq;
                if let Err(e) = self.queue.try_send(Accepted {
                    device: device.clone(),
                    record,
                    size,
                }) {
                    self.depth.fetch_sub(1, Ordering::Relaxed);
                    self.spool.release(size);
                    self.sequencer.reject(&device, epoch, first);
                    let reason = match e {
                        mpsc::error::TrySendError::Full(_) => "queue_full",
                        mpsc::error::TrySendError::Closed(_) => "shutting_down",
                    };
                    metrics::counter!(m::DROPPED_BATCHES, "reason" => reason).increment(1);
                    return;
                }
                metrics::counter!(m::ACCEPTED_READINGS).increment(readings);
            }
            Admit::Duplicate { durable } => {
                metrics::counter!(m::DROPPED_BATCHES, "reason" => "duplicate").increment(1);
                if let Some(upto) = durable {
                    self.acker.ack(device, epoch, upto);
                }
            }
            Admit::Gap { expected } => {
                debug!(%device, expected, got = orig_first, "gap: batch dropped");
                metrics::counter!(m::DROPPED_BATCHES, "reason" => "gap").increment(1);
            }
        }
    }
}

/// At most ~10 warnings a second from one thread, so a flood of bad payloads cannot flood logs
/// (the link consumer's and the Sparkplug host's).
#[derive(Debug)]
pub(crate) struct LogLimiter {
    window: Instant,
    n: u32,
}

impl LogLimiter {
    pub(crate) fn new() -> Self {
        Self {
            window: Instant::now(),
            n: 0,
        }
    }

    pub(crate) fn allow(&mut self) -> bool {
        if self.window.elapsed() >= Duration::from_secs(1) {
            self.window = Instant::now();
            self.n = 0;
        }
        self.n += 1;
        self.n <= 10
    }
}

/// Counts rumqttd alerts: `CursorJump` means the router skipped one of our links ahead.
///
/// rumqttd 0.20 keeps `AlertKind` private, so the alert is read through its `Serialize` form
/// (`{"kind":{"CursorJump":{"filter":..,"lost":..}}}`). Note that 0.20 always reports
/// `lost: 0`; the jump count is the reliable signal. Jumps of the acks link
/// ([`crate::broker::ACKS_LINK`]), which never reads its log, are only logged at debug.
pub fn spawn_alerts(
    alerts: rumqttd::alerts::AlertsLink,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("bw-alerts".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match alerts.router_rx.recv_timeout(Duration::from_millis(500)) {
                    Ok(list) => {
                        for a in list {
                            let v = serde_json::to_value(&a).unwrap_or_default();
                            let Some(jump) = v.pointer("/kind/CursorJump") else {
                                continue;
                            };
                            let lost = jump.get("lost").and_then(serde_json::Value::as_u64).unwrap_or(0);
                            let filter = jump.get("filter").and_then(serde_json::Value::as_str).unwrap_or("");
                            if a.client_id == crate::broker::ACKS_LINK {
                                // Never read on purpose (see `crate::broker`): nothing is lost.
                                debug!(filter, "rumqttd skipped the acks link ahead");
                                continue;
                            }
                            metrics::counter!(m::LINK_CURSOR_JUMPS).increment(1);
                            metrics::counter!(m::LINK_LOST_MESSAGES).increment(lost);
                            if a.client_id == crate::sparkplug::host::SPARKPLUG_LINK {
                                // Its telemetry is deferred (never in a log, never skipped);
                                // its logs hold NDEATHs and its own NCMD/STATE publishes.
                                if filter.contains("/NDEATH/") {
                                    warn!(filter, "the Sparkplug host fell behind on NDEATH: some edge node deaths were not seen (fleet events only; the next NBIRTH resets the node)");
                                } else {
                                    debug!(filter, "rumqttd skipped the Sparkplug host ahead on its own publishes");
                                }
                                continue;
                            }
                            warn!(client = %a.client_id, filter, lost, "rumqttd skipped a gateway link ahead: it fell behind (devices resend what was lost)");
                        }
                    }
                    Err(flume::RecvTimeoutError::Timeout) => {}
                    Err(flume::RecvTimeoutError::Disconnected) => break,
                }
            }
        })
}

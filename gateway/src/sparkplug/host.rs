//! The host application's thread: reads every Sparkplug publish from the gateway's `sparkplug`
//! link, runs it through the sessions, hands readings to the standard clients' [`Ingest`],
//! events to the fleet events queue, and publishes Rebirth NCMDs and the host STATE through the
//! same link.
//!
//! # How publishes arrive, and their PUBACK
//!
//! The link owns the PUBACKs of `spBv1.0/{group}/#` (vendor/PATCHES.md, patch 22): every edge
//! node publish there, QoS 0 or 1, reaches the host as a `Notification::Deferred` with the
//! publisher's client id and a token: a QoS 1 one's token stands for its PUBACK, a QoS 0 one's
//! for its slot among the connection's waiting publishes (released without a PUBACK). The token
//! goes with the message's readings into [`Ingest::submit`], which releases it once they are
//! durable (spool fsync or Kafka delivery report, by the ack mode), parks them while the writer
//! queue is full (the release is delayed; the loop retries parked ones every 2 ms), or closes
//! the publisher if the pipeline cannot take them (a QoS 1 publisher resends). A message with
//! nothing to keep (a death, a message
//! the session ignored, a payload that does not decode) is PUBACKed at once: resending it would
//! not help. DATA of a node that is not born is not one of those: it is taken with the restored
//! (or no) table ([`super::session`], "Restart" and "Unresolved aliases") and PUBACKed when
//! durable. The BIRTHs the sessions take go to the session store ([`super::store`]) through a
//! bounded queue; the host never waits for the disk. The link subscribes to NDEATH (a will reaches subscriptions only) and to its own
//! NCMD and STATE topics ([`Filters`]), so that its publishes always match a filter (rumqttd
//! disconnects a local link that publishes where none does). Those subscriptions are ordinary
//! filter logs: when the host falls behind on them (thousands of wills at once after a
//! gateway restart) rumqttd skips it ahead (`CursorJump`). On its own publishes that loses
//! nothing (logged at debug); on NDEATH some deaths go unseen (counted in
//! `breakwater_gateway_link_cursor_jumps_total`, logged: fleet events only, the node's next
//! NBIRTH starts its session over). Telemetry never takes that path.
//!
//! What rumqttd queues for the host is bounded: a connection stops being read once
//! `[standard] max_unacked_per_connection` of its publishes, QoS 0 and 1 alike, wait for their
//! token's release, so a node flooding QoS 0 faster than the pipeline makes it durable is
//! throttled by TCP instead of growing the host's queue. The host never waits on the pipeline
//! (every hand-off is a `try_send` or a park), so it drains that queue at decode speed.
//!
//! # Host STATE (Sparkplug 3.0)
//!
//! At start, before reading anything, `spBv1.0/STATE/{host_id}` `{"online":true,"timestamp":T}`
//! is published retained; on a graceful stop `{"online":false,"timestamp":T}` with the same `T`.
//! A local link has no MQTT will. On kill -9 nothing is published, but the broker is embedded:
//! it dies with the gateway, every edge node's connection drops with it, and its retained
//! messages are in memory only (rumqttd keeps no retained store on disk), so no stale `online`
//! survives. When the gateway is back, edge nodes reconnect and see the new `online` (with a new
//! timestamp) as soon as they subscribe.
//!
//! Runs on its own thread and never blocks on anything downstream; the fleet events queue is
//! `try_send` (full: counted in `breakwater_gateway_events_dropped_total`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use rumqttd::local::{LinkError, LinkRx, LinkTx};
use rumqttd::protocol::{Packet, Publish};
use rumqttd::{AckToken, DeferredPublish, Notification};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::session::{Clock, Outcome, Sessions};
use super::store::Store;
use super::topic::{self, MessageType, SpTopic, TopicError};
use super::{proto, rebirth_payload, state_payload};
use crate::events::FleetInput;
use crate::link::{now_ms, LogLimiter};
use crate::standard::{Ingest, Publisher};
use crate::stats as m;

/// Client id of the host application's link (reserved like the other gateway links).
pub const SPARKPLUG_LINK: &str = "breakwater-gateway-sparkplug";

/// The host link's filters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filters {
    /// Owned (patch 22), not subscribed: `spBv1.0/{group}/#` per served group, or `spBv1.0/+/#`.
    pub deferred: Vec<String>,
    /// Subscribed: NDEATH (rumqttd publishes a will to subscriptions only, not to the owner of a
    /// deferred filter, so NDEATHs are taken from here, and their deferred copy only acked);
    /// the host's own NCMD topics and its STATE topic, so that what it publishes always matches
    /// a filter (edge nodes may not publish NCMD: only the host's own come back, skipped).
    pub subscribed: Vec<String>,
}

impl Filters {
    #[must_use]
    pub fn new(groups: &[String], host_id: &str) -> Self {
        let ns = topic::NAMESPACE;
        let all = [String::from("+")];
        let groups = if groups.is_empty() { &all[..] } else { groups };
        let deferred = groups.iter().map(|g| format!("{ns}/{g}/#")).collect();
        let mut subscribed: Vec<String> = groups
            .iter()
            .flat_map(|g| [format!("{ns}/{g}/NCMD/+"), format!("{ns}/{g}/NDEATH/+")])
            .collect();
        subscribed.push(topic::state_topic(host_id));
        Self {
            deferred,
            subscribed,
        }
    }
}

pub struct Host {
    pub rx: LinkRx,
    pub tx: LinkTx,
    pub host_id: String,
    pub sessions: Sessions,
    /// Where BIRTHs are persisted for a restart ([`super::store`]).
    pub store: Store,
    pub ingest: Ingest,
    pub events: mpsc::Sender<FleetInput>,
    pub stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("host_id", &self.host_id)
            .finish_non_exhaustive()
    }
}

impl Host {
    /// Runs on the calling thread until `stop` is set or the link is lost; publishes STATE
    /// online first and offline last.
    pub fn run(mut self) {
        let state_ts = now_ms();
        let state = topic::state_topic(&self.host_id);
        self.publish(&state, state_payload(true, state_ts), true);
        info!(host_id = %self.host_id, "sparkplug host application online");
        let mut log = LogLimiter::new();
        loop {
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            // Parked publishes (writer queue full) go first, retried every few ms while any
            // is left (see `crate::standard`).
            let parked = self.ingest.retry_parked(&self.tx);
            let wait = Duration::from_millis(if parked { 2 } else { 200 });
            match self.rx.recv_deadline(Instant::now() + wait) {
                Ok(Some(Notification::Deferred(d))) => self.handle(*d, &mut log),
                // NDEATH (the will, see `Filters`), and the host's own NCMD and STATE.
                Ok(Some(Notification::Forward(f))) => {
                    self.forwarded(&f.publish.topic, &f.publish.payload, &mut log);
                }
                Ok(Some(Notification::Unschedule)) => {
                    if let Err(e) = self.rx.ready() {
                        warn!(error = %e, "sparkplug link: router gone");
                        break;
                    }
                }
                Ok(Some(Notification::Disconnect(..))) => {
                    warn!("sparkplug link: disconnected by the router");
                    break;
                }
                Ok(_) | Err(LinkError::RecvTimeout(_)) => {}
                Err(e) => {
                    warn!(error = %e, "sparkplug link: router gone");
                    break;
                }
            }
        }
        self.publish(&state, state_payload(false, state_ts), true);
        info!(host_id = %self.host_id, "sparkplug host application offline");
        self.store.close();
    }

    fn publish(&mut self, topic: &str, payload: Vec<u8>, retain: bool) {
        let p = Publish::new(topic.as_bytes().to_vec(), payload, retain);
        // `send` has no await point: it completes on the first poll.
        match self.tx.send(Packet::Publish(p, None)).now_or_never() {
            Some(Ok(_)) => {}
            Some(Err(e)) => warn!(topic, error = %e, "sparkplug publish failed: broker link gone"),
            None => warn!(topic, "sparkplug publish did not complete"),
        }
    }

    fn handle(&mut self, d: DeferredPublish, log: &mut LogLimiter) {
        let token = Some(d.token);
        let publisher = Publisher {
            source: "sparkplug",
            client_id: d.client_id,
            pkid: d.pkid,
            dup: d.dup,
        };
        let Ok(topic) = std::str::from_utf8(&d.publish.topic) else {
            invalid("bad_topic", "<not utf-8>", &"topic is not UTF-8", log);
            return self.ack_now(token);
        };
        match SpTopic::parse(topic) {
            // Taken from the subscription (`forwarded`), where the will arrives too.
            Ok(t) if t.kind == MessageType::NDeath => self.ack_now(token),
            Ok(t) => self.message(&t, topic, &d.publish.payload, token, &publisher, log),
            // Another host's STATE (ours is not deferred): not telemetry.
            Err(TopicError::State) => self.ack_now(token),
            Err(e) => {
                invalid("bad_topic", topic, &e, log);
                self.ack_now(token);
            }
        }
    }

    /// A publish from the host's subscriptions: NDEATHs (graceful or the will) are taken, the
    /// host's own NCMD and STATE skipped.
    fn forwarded(&mut self, topic: &[u8], payload: &[u8], log: &mut LogLimiter) {
        let Ok(topic) = std::str::from_utf8(topic) else {
            return;
        };
        let Ok(t) = SpTopic::parse(topic) else {
            return;
        };
        if t.kind != MessageType::NDeath {
            return;
        }
        // Nothing to PUBACK here (the deferred copy of a graceful NDEATH was acked; a will has
        // no publisher any more) and an NDEATH has no readings.
        let publisher = Publisher {
            source: "sparkplug",
            client_id: String::new(),
            pkid: 0,
            dup: false,
        };
        self.message(&t, topic, payload, None, &publisher, log);
    }

    fn message(
        &mut self,
        t: &SpTopic<'_>,
        topic: &str,
        payload: &[u8],
        token: Option<AckToken>,
        publisher: &Publisher,
        log: &mut LogLimiter,
    ) {
        metrics::counter!(m::SPARKPLUG_MESSAGES, "type" => t.kind.as_str()).increment(1);
        let p = match proto::decode(payload) {
            Ok(p) => p,
            Err(e) => {
                invalid("malformed", topic, &e, log);
                return self.ack_now(token);
            }
        };
        let clock = Clock {
            now: tokio::time::Instant::now(),
            now_ms: now_ms(),
        };
        let out = self.sessions.handle(t, &p, clock);
        self.apply(t, topic, out, clock.now_ms, token, publisher, log);
    }

    fn ack_now(&self, token: Option<AckToken>) {
        if let Some(token) = token {
            self.ingest.ack_now(&self.tx, token);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn apply(
        &mut self,
        t: &SpTopic<'_>,
        topic: &str,
        out: Outcome,
        now_ms: u64,
        token: Option<AckToken>,
        publisher: &Publisher,
        log: &mut LogLimiter,
    ) {
        for ty in &out.unsupported {
            metrics::counter!(m::SPARKPLUG_UNSUPPORTED_METRICS, "type" => *ty).increment(1);
        }
        for reason in &out.invalid {
            metrics::counter!(m::SPARKPLUG_INVALID_METRICS, "reason" => *reason).increment(1);
        }
        if !out.invalid.is_empty() && log.allow() {
            warn!(topic, reasons = ?out.invalid, "sparkplug metrics not taken");
        }
        if let Some(ignored) = out.ignored {
            metrics::counter!(m::SPARKPLUG_IGNORED, "reason" => ignored.as_str()).increment(1);
            if ignored != super::session::Ignored::Command && log.allow() {
                warn!(
                    topic,
                    reason = ignored.as_str(),
                    "sparkplug message ignored"
                );
            }
        }
        if let Some(table) = out.before_birth {
            metrics::counter!(m::SPARKPLUG_BEFORE_BIRTH, "table" => table.as_str()).increment(1);
        }
        if out.unresolved > 0 {
            metrics::counter!(m::SPARKPLUG_UNRESOLVED_METRICS).increment(out.unresolved as u64);
            if log.allow() {
                warn!(
                    topic,
                    metrics = out.unresolved,
                    "sparkplug metrics by an alias no BIRTH defined: stored as alias:{{n}} with their raw value"
                );
            }
        }
        for op in out.persist {
            self.store.record(op);
        }
        if let Some(reason) = out.rebirth_suppressed {
            metrics::counter!(m::SPARKPLUG_REBIRTHS_SUPPRESSED, "reason" => reason.as_str())
                .increment(1);
        }
        if let Some(r) = out.rebirth {
            metrics::counter!(m::SPARKPLUG_REBIRTHS, "reason" => r.reason.as_str()).increment(1);
            info!(group = %r.group, edge_node = %r.edge_node, reason = r.reason.as_str(), "sparkplug: Rebirth requested");
            let ncmd = topic::ncmd_topic(&r.group, &r.edge_node);
            self.publish(&ncmd, rebirth_payload(now_ms), false);
        }
        for ev in out.events {
            if self.events.try_send(FleetInput::Event(ev)).is_err() {
                metrics::counter!(m::EVENTS_DROPPED, "reason" => "queue_full").increment(1);
            }
        }
        match out.readings {
            Some((device, readings)) if !readings.is_empty() => {
                metrics::counter!(m::SPARKPLUG_READINGS).increment(readings.len() as u64);
                // PUBACK when durable, or the publisher is closed (counted there).
                self.ingest
                    .submit(&self.tx, &device, readings, token, publisher);
            }
            _ => self.ack_now(token),
        }
        metrics::gauge!(m::SPARKPLUG_EDGE_NODES_ONLINE).set(self.sessions.online() as f64);
        debug!(
            group = t.group,
            edge_node = t.edge_node,
            kind = t.kind.as_str(),
            "sparkplug message"
        );
    }
}

fn invalid(
    reason: &'static str,
    topic: &str,
    detail: &dyn std::fmt::Display,
    log: &mut LogLimiter,
) {
    metrics::counter!(m::SPARKPLUG_INVALID_PAYLOADS, "reason" => reason).increment(1);
    if log.allow() {
        warn!(topic, reason, %detail, "sparkplug payload dropped");
    }
}

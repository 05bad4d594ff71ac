//! One device's send loop: connect, send batches within credit, apply acks, reconnect.
//!
//! See the module docs of [`crate::sender`] for the policy; this file keeps the state.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use breakwater_protocol::{envelope, Batch, DeviceId, Floor, Limits, Status, StatusKind, Topic};
use rumqttc::{AsyncClient, QoS};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::failover::Gateways;
use super::link::{self, LinkEvent, LinkOptions};
use super::{Backoff, Control, DisconnectReason, EventSink, SenderEvent, SenderExit};
use crate::buffer::{AckOutcome, Buffer, ReadError};
use crate::config::SenderConfig;

/// Room left for the envelope header, device id and framing inside the payload limit.
const PAYLOAD_HEADROOM: usize = 4 * 1024;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    last_seq: u64,
    sent_at: Instant,
}

/// How one connection ended.
enum End {
    Lost {
        reason: String,
        connected_for: Option<Duration>,
    },
    Cut(Duration),
    Shutdown,
}

pub(crate) struct Session {
    device: DeviceId,
    buffer: Arc<dyn Buffer>,
    link: Arc<LinkOptions>,
    /// Which gateway to connect to ([`super::failover`]).
    gateways: Gateways,
    cfg: SenderConfig,
    events: Option<EventSink>,
    backoff: Backoff,
    ctl: mpsc::Receiver<Control>,
    acked_tx: watch::Sender<u64>,
    connected_tx: watch::Sender<bool>,
    cancel: CancellationToken,
    epoch: u64,
    telemetry_topic: String,
    status_topic: String,
    ack_topic: String,
    last_seq: watch::Receiver<u64>,
    // Flow state.
    acked_upto: u64,
    next_send: u64,
    in_flight: VecDeque<InFlight>,
    credit: u32,
    paused_until: Option<Instant>,
    retry_hint: Option<Duration>,
    pending_since: Option<Instant>,
    send_now: bool,
    rate_next: Instant,
    /// Ack timeouts since the last ack: each doubles the next timeout (up to 8x), so a
    /// saturated gateway that refuses batches is not hammered with resends.
    timeouts_in_row: u32,
    /// Highest seq ever published (to flag resends).
    max_sent: u64,
    /// Highest seq published on the current connection (a floor counts for the range it
    /// declares), or what was acked before it started. An ack never applies beyond it: any
    /// other client able to publish on our ack topic (a forged or retained ack) could
    /// otherwise delete readings the gateway never received.
    conn_sent_upto: u64,
    /// Rate limits of the warnings about hostile acks.
    beyond_log: LogLimiter,
    capped_log: LogLimiter,
    read_log: LogLimiter,
    /// Set by a graceful shutdown request: drain until this deadline.
    draining: Option<Instant>,
    /// The next batch must be preceded by a [`Floor`]: readings were dropped before they were
    /// sent, or this connection starts with a buffer that ever dropped (the gateway may not
    /// know the range: a new gateway process, or this process restarted with `acked_upto`
    /// derived from the buffer). Without it the gateway never acks past the gap.
    floor_due: bool,
}

impl Session {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        device: DeviceId,
        buffer: Arc<dyn Buffer>,
        link: Arc<LinkOptions>,
        cfg: SenderConfig,
        events: Option<EventSink>,
        backoff: Backoff,
        ctl: mpsc::Receiver<Control>,
        acked_tx: watch::Sender<u64>,
        connected_tx: watch::Sender<bool>,
        cancel: CancellationToken,
    ) -> Self {
        let epoch = buffer.epoch();
        let acked_upto = buffer.stats().first_seq.saturating_sub(1);
        let last_seq = buffer.watch_last_seq();
        Self {
            telemetry_topic: Topic::telemetry(&device),
            status_topic: Topic::status(&device),
            ack_topic: Topic::ack(&device),
            gateways: Gateways::new(
                link.addresses.clone(),
                link.tls.is_none(),
                link.failover_after,
                link.connect_timeout,
            ),
            device,
            buffer,
            link,
            cfg,
            events,
            backoff,
            ctl,
            acked_tx,
            connected_tx,
            cancel,
            epoch,
            last_seq,
            acked_upto,
            next_send: acked_upto + 1,
            in_flight: VecDeque::new(),
            credit: 1,
            paused_until: None,
            retry_hint: None,
            pending_since: None,
            send_now: false,
            rate_next: Instant::now(),
            max_sent: acked_upto,
            conn_sent_upto: acked_upto,
            beyond_log: LogLimiter::default(),
            capped_log: LogLimiter::default(),
            read_log: LogLimiter::default(),
            timeouts_in_row: 0,
            draining: None,
            floor_due: false,
        }
    }

    fn emit(&self, ev: &SenderEvent) {
        if let Some(sink) = &self.events {
            sink(&self.device, ev);
        }
    }

    fn exit(&self) -> SenderExit {
        let last_seq = *self.last_seq.borrow();
        SenderExit {
            acked_upto: self.acked_upto,
            last_seq,
            drained: self.acked_upto >= last_seq,
        }
    }

    /// True once a graceful shutdown's drain deadline has passed.
    fn drain_over(&self) -> bool {
        self.draining.is_some_and(|d| Instant::now() >= d)
    }

    /// A shutdown request: the first one starts the drain (its deadline holds for every
    /// connection and reconnect that follows), a second one ends it now.
    fn on_shutdown_request(&mut self, drain: Duration) {
        let now = Instant::now();
        self.send_now = true;
        self.draining = Some(match self.draining {
            None => now + drain,
            Some(_) => {
                tracing::info!(device = %self.device, "second shutdown request: skipping the drain");
                now
            }
        });
    }

    /// The device's whole life: connect, run a session, back off, repeat.
    ///
    /// Shutdown is one deadline (`draining`): once a drain started, a lost link may be
    /// re-established only within it; the backoff sleep and every connect attempt end at the
    /// deadline, so the sender returns by then (plus the bounded graceful close) whatever the
    /// gateway does.
    pub(crate) async fn run(mut self) -> SenderExit {
        let mut delay = Duration::ZERO;
        // Resolving is bounded (connect_timeout per name) and given up on cancel.
        tokio::select! {
            () = self.gateways.start(&self.device) => {}
            () = self.cancel.cancelled() => return self.exit(),
        }
        self.set_gateway_gauge();
        loop {
            if self.drain_over() {
                tracing::info!(device = %self.device, "drain deadline reached while disconnected; the rest stays buffered");
                return self.exit();
            }
            if !delay.is_zero() {
                self.emit(&SenderEvent::Backoff { delay });
                let mut until = Instant::now() + delay;
                if let Some(d) = self.draining {
                    until = until.min(d);
                }
                loop {
                    tokio::select! {
                        () = tokio::time::sleep_until(until) => break,
                        () = self.cancel.cancelled() => return self.exit(),
                        ctl = self.ctl.recv() => match ctl {
                            // Offline: nothing can drain; what is buffered stays on disk.
                            Some(Control::Shutdown(_)) | None => return self.exit(),
                            Some(Control::Cut(_) | Control::FlushNow) => {}
                        },
                    }
                }
                if self.drain_over() {
                    tracing::info!(device = %self.device, "drain deadline reached while reconnecting; the rest stays buffered");
                    return self.exit();
                }
            }
            let attempt = self.backoff.attempt();
            self.emit(&SenderEvent::Connecting { attempt });
            let end = self.connection().await;
            self.connected_tx.send_replace(false);
            match end {
                End::Shutdown => {
                    self.emit(&SenderEvent::Disconnected {
                        reason: DisconnectReason::Shutdown,
                    });
                    return self.exit();
                }
                End::Cut(outage) => {
                    metrics::counter!("breakwater_agent_disconnects_total", "reason" => "cut")
                        .increment(1);
                    self.emit(&SenderEvent::Disconnected {
                        reason: DisconnectReason::Cut,
                    });
                    delay = outage + self.backoff.next_delay(None);
                }
                End::Lost {
                    reason,
                    connected_for,
                } => {
                    if connected_for.is_some_and(|d| d >= self.cfg.backoff.reset_after) {
                        self.backoff.reset();
                    }
                    metrics::counter!("breakwater_agent_disconnects_total", "reason" => "error")
                        .increment(1);
                    let hint = self.retry_hint.take();
                    delay = self.backoff.next_delay(hint);
                    if connected_for.is_some() {
                        tracing::warn!(device = %self.device, %reason, retry_in = ?delay, "connection lost");
                    } else {
                        tracing::info!(device = %self.device, %reason, retry_in = ?delay, "connect failed");
                        let moved = tokio::select! {
                            m = self.gateways.connect_failed() => m,
                            () = self.cancel.cancelled() => return self.exit(),
                        };
                        if let Some(m) = moved {
                            metrics::counter!("breakwater_agent_gateway_failovers_total")
                                .increment(1);
                            self.set_gateway_gauge();
                            tracing::warn!(
                                device = %self.device,
                                from = %m.from,
                                to = %m.to,
                                failed_connects = self.link.failover_after.get(),
                                unacked = self.buffer.stats().readings,
                                "failing over to the next gateway; everything unacked is resent there"
                            );
                            self.emit(&SenderEvent::FailedOver {
                                from: m.from.to_string(),
                                to: m.to.to_string(),
                                to_index: m.to_index,
                            });
                        }
                    }
                    self.emit(&SenderEvent::Disconnected {
                        reason: DisconnectReason::Error(reason),
                    });
                }
            }
            metrics::counter!("breakwater_agent_reconnects_total").increment(1);
        }
    }

    fn set_gateway_gauge(&self) {
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!("breakwater_agent_gateway_index").set(self.gateways.position().0 as f64);
    }

    /// One connection, from CONNECT to its end.
    async fn connection(&mut self) -> End {
        let cap = usize::try_from(self.cfg.max_in_flight).unwrap_or(64) + 8;
        let Some(gateway) = self.gateways.current().cloned() else {
            return End::Lost {
                reason: "no gateway configured".into(),
                connected_for: None,
            };
        };
        let options = self.link.mqtt_options(
            &gateway,
            &self.device,
            self.epoch,
            now_ms(),
            u16::try_from(self.cfg.max_in_flight).unwrap_or(u16::MAX - 8),
        );
        let (client, mut events, poller) = link::connect(options, self.link.connect_timeout, cap);
        let _abort = AbortOnDrop(poller.abort_handle());

        // Phase 1: CONNECT -> CONNACK -> SUBSCRIBE -> SUBACK, bounded in time (and by the
        // drain deadline when shutting down).
        let connect_deadline = Instant::now() + self.link.connect_timeout + Duration::from_secs(1);
        let mut subscribed = false;
        while !subscribed {
            let deadline = self
                .draining
                .map_or(connect_deadline, |d| d.min(connect_deadline));
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {
                    if self.drain_over() {
                        return End::Shutdown;
                    }
                    return End::Lost { reason: "connect/subscribe timed out".into(), connected_for: None };
                }
                () = self.cancel.cancelled() => return End::Shutdown,
                ctl = self.ctl.recv() => match ctl {
                    Some(Control::Cut(d)) => return End::Cut(d),
                    // Connecting: finish the connect within the drain deadline, then drain.
                    Some(Control::Shutdown(drain)) => self.on_shutdown_request(drain),
                    None => return End::Shutdown,
                    Some(Control::FlushNow) => {}
                },
                ev = events.recv() => match ev {
                    Some(LinkEvent::ConnAck) => {
                        let birth = self.status(StatusKind::Birth);
                        if let Err(e) = client
                            .try_subscribe(self.ack_topic.clone(), QoS::AtLeastOnce)
                            .and_then(|()| client.try_publish(self.status_topic.clone(), QoS::AtLeastOnce, false, birth))
                        {
                            return End::Lost { reason: format!("request queue: {e}"), connected_for: None };
                        }
                    }
                    Some(LinkEvent::SubAck) => subscribed = true,
                    Some(LinkEvent::Publish(_)) => {}
                    Some(LinkEvent::Disconnected) | None => {
                        return End::Lost { reason: "disconnected while connecting".into(), connected_for: None };
                    }
                    Some(LinkEvent::Error(e)) => return End::Lost { reason: e, connected_for: None },
                },
            }
        }
        let connected_at = Instant::now();
        self.connected_tx.send_replace(true);
        metrics::counter!("breakwater_agent_connects_total").increment(1);
        self.gateways.connected();
        tracing::info!(device = %self.device, %gateway, "connected");
        self.emit(&SenderEvent::Connected);

        // Every connection restarts from the oldest unacked reading.
        self.in_flight.clear();
        self.next_send = self.acked_upto + 1;
        self.credit = self.cfg.initial_credit.min(self.cfg.max_in_flight).max(1);
        self.paused_until = None;
        self.send_now = true;
        self.pending_since = None;
        self.floor_due = self.buffer.stats().dropped_total > 0;
        self.conn_sent_upto = self.acked_upto;

        // Phase 2: steady state.
        loop {
            if let Err(reason) = self.send_ready(&client).await {
                return End::Lost {
                    reason,
                    connected_for: Some(connected_at.elapsed()),
                };
            }
            if let Some(deadline) = self.draining {
                let last = *self.last_seq.borrow();
                if self.acked_upto >= last || Instant::now() >= deadline {
                    self.graceful_close(&client, &mut events).await;
                    return End::Shutdown;
                }
            }
            let wake = self.next_wake();
            tokio::select! {
                () = self.cancel.cancelled() => {
                    self.graceful_close(&client, &mut events).await;
                    return End::Shutdown;
                }
                ctl = self.ctl.recv() => match ctl {
                    Some(Control::Cut(d)) => return End::Cut(d),
                    Some(Control::FlushNow) => self.send_now = true,
                    Some(Control::Shutdown(drain)) => self.on_shutdown_request(drain),
                    None => {
                        self.graceful_close(&client, &mut events).await;
                        return End::Shutdown;
                    }
                },
                ev = events.recv() => match ev {
                    Some(LinkEvent::Publish(p)) => self.on_publish(&p).await,
                    Some(LinkEvent::ConnAck | LinkEvent::SubAck) => {}
                    Some(LinkEvent::Disconnected) | None => {
                        return End::Lost { reason: "disconnected by the broker".into(), connected_for: Some(connected_at.elapsed()) };
                    }
                    Some(LinkEvent::Error(e)) => {
                        return End::Lost { reason: e, connected_for: Some(connected_at.elapsed()) };
                    }
                },
                res = self.last_seq.changed() => {
                    if res.is_err() {
                        // The buffer is gone: nothing more can be sent.
                        self.graceful_close(&client, &mut events).await;
                        return End::Shutdown;
                    }
                }
                () = sleep_until_opt(wake) => self.on_timer(),
            }
        }
    }

    fn status(&self, kind: StatusKind) -> Vec<u8> {
        envelope::encode_status(&Status {
            device: self.device.clone(),
            epoch: self.epoch,
            kind,
            ts: now_ms(),
        })
    }

    /// Publishes `Death`, sends DISCONNECT and waits (bounded) until the poller wrote it.
    async fn graceful_close(&self, client: &AsyncClient, events: &mut mpsc::Receiver<LinkEvent>) {
        let death = self.status(StatusKind::Death);
        let _ = client.try_publish(self.status_topic.clone(), QoS::AtLeastOnce, false, death);
        if client.try_disconnect().is_err() {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(ev) = events.recv().await {
                if matches!(ev, LinkEvent::Disconnected | LinkEvent::Error(_)) {
                    break;
                }
            }
        })
        .await;
        tracing::info!(device = %self.device, acked_upto = self.acked_upto, "disconnected gracefully");
    }

    fn ack_timeout(&self) -> Duration {
        self.cfg.ack_timeout * (1u32 << self.timeouts_in_row.min(3))
    }

    fn effective_credit(&self) -> usize {
        usize::try_from(self.credit.min(self.cfg.max_in_flight)).unwrap_or(1)
    }

    /// Sends as many batches as credit, linger, pause and rate allow.
    async fn send_ready(&mut self, client: &AsyncClient) -> Result<(), String> {
        loop {
            let now = Instant::now();
            if let Some(t) = self.paused_until {
                if now < t {
                    return Ok(());
                }
                self.paused_until = None;
                if self.credit == 0 {
                    self.credit = 1; // probe
                }
            }
            if self.in_flight.len() >= self.effective_credit() {
                return Ok(());
            }
            let last = *self.last_seq.borrow_and_update();
            if self.next_send > last {
                self.pending_since = None;
                self.send_now = self.draining.is_some();
                return Ok(());
            }
            let available = last - self.next_send + 1;
            let since = *self.pending_since.get_or_insert(now);
            let full = available >= self.cfg.batch_max_readings as u64;
            let due = now >= since + self.cfg.batch_max_delay;
            if !(full || due || self.send_now || self.draining.is_some()) {
                return Ok(());
            }
            if self.cfg.max_readings_per_sec > 0 && now < self.rate_next {
                return Ok(());
            }
            let rows = match self
                .buffer
                .read(
                    self.next_send,
                    self.cfg.batch_max_readings,
                    Limits::DEFAULT.max_payload_bytes - PAYLOAD_HEADROOM,
                )
                .await
            {
                Ok(rows) => rows,
                // The buffer is reopening its storage: keep the link (acks still count) and
                // try again shortly.
                Err(e @ (ReadError::Storage(_) | ReadError::Closed)) => {
                    if let Some(suppressed) = self.read_log.allow(now) {
                        tracing::warn!(device = %self.device, error = %e, suppressed, "buffer read failed; sending paused for 1s");
                    }
                    self.paused_until = Some(now + Duration::from_secs(1));
                    return Ok(());
                }
                Err(e) => return Err(format!("buffer read failed: {e}")),
            };
            let Some(&(first_seq, _)) = rows.first() else {
                // Everything from next_send was deleted meanwhile (acked or dropped).
                let first = self.buffer.stats().first_seq;
                if first > self.next_send {
                    self.next_send = first;
                    self.floor_due = true;
                    continue;
                }
                return Ok(());
            };
            if first_seq > self.next_send {
                tracing::warn!(
                    device = %self.device,
                    from = self.next_send,
                    to = first_seq - 1,
                    "readings were dropped before they were sent; declaring the new floor"
                );
                self.floor_due = true;
            }
            if self.floor_due && first_seq > 1 {
                // Same topic and QoS as the batches, so the gateway sees it before the batch.
                let floor = envelope::encode_floor(&Floor {
                    device: self.device.clone(),
                    epoch: self.epoch,
                    first_seq,
                });
                if let Err(e) =
                    client.try_publish(self.telemetry_topic.clone(), QoS::AtLeastOnce, false, floor)
                {
                    tracing::debug!(device = %self.device, error = %e, "publish queue full");
                    self.paused_until = Some(now + Duration::from_millis(10));
                    return Ok(());
                }
                self.conn_sent_upto = self.conn_sent_upto.max(first_seq - 1);
                metrics::counter!("breakwater_agent_sent_floors_total").increment(1);
                self.emit(&SenderEvent::FloorSent { first_seq });
            }
            self.floor_due = false;
            let n = rows.len() as u64;
            let batch = Batch {
                device: self.device.clone(),
                epoch: self.epoch,
                first_seq,
                readings: rows.into_iter().map(|(_, r)| r).collect(),
            };
            let last_seq = batch.last_seq();
            let payload = envelope::encode_batch(&batch);
            if let Err(e) = client.try_publish(
                self.telemetry_topic.clone(),
                QoS::AtLeastOnce,
                false,
                payload,
            ) {
                // The request queue is full: try again shortly.
                tracing::debug!(device = %self.device, error = %e, "publish queue full");
                self.paused_until = Some(now + Duration::from_millis(10));
                return Ok(());
            }
            let resend = first_seq <= self.max_sent;
            self.max_sent = self.max_sent.max(last_seq);
            self.conn_sent_upto = self.conn_sent_upto.max(last_seq);
            self.in_flight.push_back(InFlight {
                last_seq,
                sent_at: now,
            });
            self.next_send = last_seq + 1;
            if self.next_send <= last {
                // More is waiting: give the rest its own linger window unless sending at once.
                self.pending_since = Some(now);
            }
            if self.cfg.max_readings_per_sec > 0 {
                let cost =
                    Duration::from_secs_f64(n as f64 / f64::from(self.cfg.max_readings_per_sec));
                self.rate_next = self.rate_next.max(now) + cost;
            }
            metrics::counter!("breakwater_agent_sent_batches_total").increment(1);
            metrics::counter!("breakwater_agent_sent_readings_total").increment(n);
            self.emit(&SenderEvent::Sent {
                first_seq,
                last_seq,
                resend,
            });
        }
    }

    /// The next instant something may become due without an outside event.
    fn next_wake(&self) -> Option<Instant> {
        let mut wake: Option<Instant> = None;
        let mut add = |t: Instant| wake = Some(wake.map_or(t, |w| w.min(t)));
        if let Some(f) = self.in_flight.front() {
            add(f.sent_at + self.ack_timeout());
        }
        if let Some(t) = self.paused_until {
            add(t);
        }
        let has_data = self.next_send <= *self.last_seq.borrow();
        if has_data && self.in_flight.len() < self.effective_credit() {
            if let Some(since) = self.pending_since {
                add(since + self.cfg.batch_max_delay);
            }
            if self.cfg.max_readings_per_sec > 0 {
                add(self.rate_next);
            }
        }
        if let Some(d) = self.draining {
            add(d);
        }
        wake
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        if let Some(f) = self.in_flight.front() {
            if now >= f.sent_at + self.ack_timeout() {
                let from_seq = self.acked_upto + 1;
                tracing::warn!(
                    device = %self.device,
                    from_seq,
                    in_flight = self.in_flight.len(),
                    "no ack within {:?}, resending",
                    self.ack_timeout()
                );
                self.timeouts_in_row = self.timeouts_in_row.saturating_add(1);
                metrics::counter!("breakwater_agent_resends_total").increment(1);
                self.in_flight.clear();
                self.next_send = from_seq;
                self.send_now = true;
                self.emit(&SenderEvent::AckTimeout { from_seq });
            }
        }
    }

    async fn on_publish(&mut self, p: &rumqttc::Publish) {
        if p.topic != self.ack_topic {
            return;
        }
        let ack = match envelope::decode_ack(&p.payload) {
            Ok(a) => a,
            Err(e) => {
                metrics::counter!("breakwater_agent_acks_rejected_total", "reason" => e.reason())
                    .increment(1);
                tracing::warn!(device = %self.device, error = %e, "undecodable ack ignored");
                return;
            }
        };
        if ack.device != self.device {
            metrics::counter!("breakwater_agent_acks_rejected_total", "reason" => "wrong_device")
                .increment(1);
            return;
        }
        if ack.epoch != self.epoch {
            metrics::counter!("breakwater_agent_acks_rejected_total", "reason" => "wrong_epoch")
                .increment(1);
            tracing::warn!(device = %self.device, ours = self.epoch, theirs = ack.epoch, "ack for another epoch ignored");
            return;
        }
        metrics::counter!("breakwater_agent_acks_total").increment(1);
        self.timeouts_in_row = 0;
        let now = Instant::now();
        self.credit = ack.credit.min(self.cfg.max_in_flight);
        if let Some(ms) = ack.retry_after_ms {
            let mut d = Duration::from_millis(u64::from(ms));
            if d > self.cfg.max_retry_after {
                metrics::counter!("breakwater_agent_acks_retry_after_capped_total").increment(1);
                if let Some(suppressed) = self.capped_log.allow(now) {
                    tracing::warn!(
                        device = %self.device,
                        retry_after_ms = ms,
                        cap = ?self.cfg.max_retry_after,
                        suppressed,
                        "ack asks for a pause beyond sender.max_retry_after; capped"
                    );
                }
                d = self.cfg.max_retry_after;
            }
            self.paused_until = Some(now + d);
            self.retry_hint = Some(d);
        } else if ack.credit == 0 {
            self.paused_until = Some(now + self.cfg.ack_timeout);
        } else {
            self.retry_hint = None;
        }
        let last_stored = *self.last_seq.borrow();
        let mut upto = ack.upto_seq.min(last_stored);
        if ack.upto_seq > self.conn_sent_upto {
            // Beyond what this connection sent. Only the part this connection sent is applied:
            // readings sent on an earlier connection may have been lost with it, and are sent
            // again on this one before an ack can delete them.
            upto = upto.min(self.conn_sent_upto);
            if ack.upto_seq <= self.max_sent {
                // Plausibly the gateway's late ack of batches from the previous connection.
                metrics::counter!("breakwater_agent_acks_beyond_sent_total", "reason" => "earlier_connection")
                    .increment(1);
                tracing::debug!(
                    device = %self.device,
                    upto_seq = ack.upto_seq,
                    sent_upto = self.conn_sent_upto,
                    "ack covers batches of an earlier connection; applied up to this one's"
                );
            } else {
                // Never sent by this process: a forged or stale (retained) ack.
                metrics::counter!("breakwater_agent_acks_beyond_sent_total", "reason" => "never_sent")
                    .increment(1);
                if let Some(suppressed) = self.beyond_log.allow(now) {
                    tracing::warn!(
                        device = %self.device,
                        upto_seq = ack.upto_seq,
                        sent_upto = self.conn_sent_upto,
                        suppressed,
                        "ack beyond anything sent; applied only up to what this connection sent"
                    );
                }
            }
        }
        let mut latency = None;
        if upto > self.acked_upto {
            while let Some(f) = self.in_flight.front() {
                if f.last_seq > upto {
                    break;
                }
                latency = Some(now - f.sent_at);
                self.in_flight.pop_front();
            }
            self.acked_upto = upto;
            if self.next_send <= upto {
                self.next_send = upto + 1;
            }
            if let Some(l) = latency {
                metrics::histogram!("breakwater_agent_ack_latency_seconds").record(l.as_secs_f64());
            }
            self.acked_tx.send_replace(upto);
            match self.buffer.ack(self.epoch, upto).await {
                Ok(AckOutcome::Deleted { .. } | AckOutcome::WrongEpoch { .. }) => {}
                Err(e) => {
                    if let Some(suppressed) = self.read_log.allow(now) {
                        tracing::error!(device = %self.device, error = %e, suppressed, "deleting acked readings failed; they stay buffered until the storage recovers");
                    }
                }
            }
        }
        self.emit(&SenderEvent::Acked {
            upto_seq: ack.upto_seq,
            latency,
            credit: ack.credit,
        });
    }
}

/// At most one log line per [`LogLimiter::PERIOD`]; counts the lines it suppressed.
#[derive(Debug, Default)]
struct LogLimiter {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    const PERIOD: Duration = Duration::from_secs(10);

    /// `Some(suppressed since the last line)` when a line may be logged now.
    fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now < t + Self::PERIOD => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

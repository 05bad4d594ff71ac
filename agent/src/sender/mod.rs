//! Sending: buffered readings -> batches -> MQTT -> gateway acks -> buffer deletes.
//!
//! # Library API (also for the fleet simulator)
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use breakwater_agent::buffer::{Buffer, MemoryBuffer, FullPolicy};
//! # use breakwater_agent::sender::{DeviceSender, LinkOptions};
//! # use breakwater_agent::config::SenderConfig;
//! # async fn f() {
//! let buffer: Arc<dyn Buffer> = Arc::new(MemoryBuffer::new(1 << 20, FullPolicy::DropOldest));
//! let link = Arc::new(LinkOptions::plain("127.0.0.1", 1883));
//! let device = "sim-0001".parse().unwrap();
//! let handle = DeviceSender::new(device, buffer.clone(), link, SenderConfig::default())
//!     .with_seed(1)
//!     .with_events(Arc::new(|dev, ev| println!("{dev}: {ev:?}")))
//!     .spawn(tokio_util::sync::CancellationToken::new());
//! handle.cut(std::time::Duration::from_secs(5)); // network outage
//! let _exit = handle.shutdown(std::time::Duration::from_secs(2)).await;
//! # }
//! ```
//!
//! A device sender is two tokio tasks while connected (the session and the rumqttc poller, see
//! [`link`]) and one while disconnected; it runs on whatever runtime `spawn` is called on.
//! State per device is small while disconnected (a few hundred bytes plus the buffer); while
//! connected rumqttc's per-connection buffers (a 10 KiB read buffer, the in-flight table and
//! the request channel) dominate, in the tens of KiB.
//!
//! # Flow control
//!
//! * Batches hold up to `batch_max_readings` consecutive readings, oldest first. A batch is
//!   sent when it is full, when its oldest reading has waited `batch_max_delay`, on
//!   [`SenderHandle::flush_now`], or at once when a connection starts with a backlog.
//! * At most `credit` batches are in flight (sent, not acked). Credit starts at
//!   `initial_credit` on every connection and then follows each ack's `credit`, capped by
//!   `max_in_flight`. An ack with credit 0 pauses sending for `retry_after_ms` (or
//!   `ack_timeout`), after which one probe batch may go.
//! * An ack is cumulative (`upto_seq`) and only counts for the buffer's epoch; it deletes the
//!   acked readings from the buffer. `retry_after_ms` pauses sending for that long (at most
//!   `max_retry_after`, counted in `breakwater_agent_acks_retry_after_capped_total`) and is the
//!   floor of the next reconnect delay.
//! * Trust boundary: the ack topic carries no identity; whoever can publish on it (the gateway,
//!   or in an open broker any client, also with a retained message) is heard. So an ack is
//!   applied only up to the highest seq this connection actually sent (a floor counts for the
//!   range it declares); anything beyond is ignored and counted
//!   (`breakwater_agent_acks_beyond_sent_total{reason}`: `earlier_connection` for a late ack of
//!   batches sent before a reconnect, which are resent before they can be acked, debug log;
//!   `never_sent` for anything this process never sent, warned at most once per 10 s). What this
//!   cannot stop: a forged ack covering readings that were sent but not yet stored by the
//!   gateway; only the gateway's topic authorization (issue 11 item 3) stops that.
//! * No ack within `ack_timeout` of the oldest in-flight batch -> everything in flight is
//!   forgotten and sending restarts from the oldest unacked seq (counted as a resend). Each
//!   timeout in a row doubles the next one (up to 8x `ack_timeout`) until an ack arrives, so a
//!   gateway that refuses batches at its bound is not hammered. A new connection also restarts
//!   from the oldest unacked seq. The gateway deduplicates.
//! * Dropped readings (`drop-oldest`) are declared, never silently skipped: before the next
//!   batch after a gap (`first_seq > ` the next seq to send), and before the first batch of
//!   every connection once the buffer ever dropped, the sender publishes a
//!   [`breakwater_protocol::Floor`] with the batch's `first_seq` on the telemetry topic
//!   (QoS 1, so it reaches the gateway before the batch). The gateway acks past the declared
//!   range; without it the gateway would never ack past the gap.
//!
//! # Backlog and live data
//!
//! Acks are cumulative over consecutive seqs, so the link carries one ordered stream: live
//! readings queue behind an old backlog. What keeps a fleet's backlog from flooding the gateway
//! is (1) credit: at most `credit` batches per round trip, (2) `max_readings_per_sec`, a cap on
//! the drain rate (0 = none), and (3) the gateway's `retry_after_ms`. A reading recorded now
//! is delayed by at most (backlog ahead of it) / (drain rate). With `drop-oldest` a backlog
//! that outgrows the budget loses its oldest readings, never the newest.
//!
//! # Reconnects
//!
//! The session owns the reconnect loop ([`backoff`]): full-jitter exponential backoff capped at
//! `backoff.max`, reset after a connection stayed up `backoff.reset_after`; a gateway
//! `retry_after_ms` adds a floor. On connect: subscribe to `bw/v1/{device}/ack`, publish a
//! `Birth` status; the last will is a `Lost` status. A graceful shutdown publishes `Death` and
//! sends an MQTT DISCONNECT (so the will is not fired).
//!
//! With several gateways ([`failover`]) the device prefers its current one and moves to the
//! next after `failover_after` failed connects in a row (`breakwater_agent_gateway_failovers_total`,
//! a warning log line, gauge `breakwater_agent_gateway_index`); the backoff keeps running, and
//! the new connection, like every connection, starts from the oldest unacked reading.

pub mod backoff;
pub mod failover;
pub mod link;
mod session;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use breakwater_protocol::DeviceId;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::buffer::Buffer;
use crate::config::SenderConfig;

pub use self::backoff::Backoff;
pub use self::link::LinkOptions;

/// Something that happened to a device's link. Delivered to the [`EventSink`] in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderEvent {
    /// A connection attempt starts (`attempt` counts failures since the last stable link).
    Connecting { attempt: u32 },
    /// Connected, subscribed to acks, birth published.
    Connected,
    /// The connection ended.
    Disconnected { reason: DisconnectReason },
    /// Waiting before the next connection attempt.
    Backoff { delay: Duration },
    /// A batch was published.
    Sent {
        first_seq: u64,
        last_seq: u64,
        resend: bool,
    },
    /// The gateway acked everything up to `upto_seq`; `latency` is the time from the send of
    /// the newest batch this ack covers to the ack's arrival.
    Acked {
        upto_seq: u64,
        latency: Option<Duration>,
        credit: u32,
    },
    /// `failover_after` connects in a row failed: the next attempt goes to gateway `to`
    /// (`to_index` in the expanded list).
    FailedOver {
        from: String,
        to: String,
        to_index: usize,
    },
    /// No ack within `ack_timeout`: sending restarts from `from_seq`.
    AckTimeout { from_seq: u64 },
    /// A [`breakwater_protocol::Floor`] was published: nothing below `first_seq` will be sent
    /// again (readings below it were acked or dropped by `drop-oldest`).
    FloorSent { first_seq: u64 },
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectReason {
    /// Network or protocol error (the text says which).
    Error(String),
    /// [`SenderHandle::cut`] forced it down.
    Cut,
    /// Graceful shutdown (Death published, DISCONNECT sent).
    Shutdown,
}

/// Receives every [`SenderEvent`]. Called on the device's task: keep it cheap and non-blocking
/// (count, or `try_send` into a channel).
pub type EventSink = Arc<dyn Fn(&DeviceId, &SenderEvent) + Send + Sync>;

/// How a sender ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderExit {
    /// Highest acked seq.
    pub acked_upto: u64,
    /// Last seq stored in the buffer when the sender stopped.
    pub last_seq: u64,
    /// True if everything stored had been acked (a full drain).
    pub drained: bool,
}

#[derive(Debug)]
pub(crate) enum Control {
    Cut(Duration),
    FlushNow,
    Shutdown(Duration),
}

/// Builder of one device's sender.
pub struct DeviceSender {
    device: DeviceId,
    buffer: Arc<dyn Buffer>,
    link: Arc<LinkOptions>,
    cfg: SenderConfig,
    events: Option<EventSink>,
    seed: Option<u64>,
}

impl std::fmt::Debug for DeviceSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceSender")
            .field("device", &self.device)
            .field("link", &self.link)
            .finish_non_exhaustive()
    }
}

impl DeviceSender {
    #[must_use]
    pub fn new(
        device: DeviceId,
        buffer: Arc<dyn Buffer>,
        link: Arc<LinkOptions>,
        cfg: SenderConfig,
    ) -> Self {
        Self {
            device,
            buffer,
            link,
            cfg,
            events: None,
            seed: None,
        }
    }

    /// Observe events (connects, acks with latency, ...).
    #[must_use]
    pub fn with_events(mut self, sink: EventSink) -> Self {
        self.events = Some(sink);
        self
    }

    /// Seed the backoff jitter (deterministic tests and simulations).
    #[must_use]
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Starts the sender on the current tokio runtime. `cancel` stops it at once (no drain,
    /// best-effort `Death`); [`SenderHandle::shutdown`] stops it gracefully.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    #[must_use]
    // By value: the caller hands the sender its place in the cancellation tree (a public
    // signature the fleet simulator uses); the sender keeps a child of it.
    #[allow(clippy::needless_pass_by_value)]
    pub fn spawn(self, cancel: CancellationToken) -> SenderHandle {
        let cancel = cancel.child_token();
        let (ctl_tx, ctl_rx) = mpsc::channel(8);
        let first = self.buffer.stats().first_seq;
        let (acked_tx, acked_rx) = watch::channel(first.saturating_sub(1));
        let (conn_tx, conn_rx) = watch::channel(false);
        let backoff = match self.seed {
            Some(s) => Backoff::with_seed(self.cfg.backoff, s),
            None => Backoff::new(self.cfg.backoff),
        };
        let session = session::Session::new(
            self.device,
            self.buffer,
            self.link,
            self.cfg,
            self.events,
            backoff,
            ctl_rx,
            acked_tx,
            conn_tx,
            cancel.clone(),
        );
        let join = tokio::spawn(session.run());
        SenderHandle {
            ctl: ctl_tx,
            acked: acked_rx,
            connected: conn_rx,
            cancel,
            join,
        }
    }
}

/// Control and observation of a running sender.
#[derive(Debug)]
pub struct SenderHandle {
    ctl: mpsc::Sender<Control>,
    acked: watch::Receiver<u64>,
    connected: watch::Receiver<bool>,
    /// Stops this sender at once (no drain, best-effort `Death`).
    cancel: CancellationToken,
    join: tokio::task::JoinHandle<SenderExit>,
}

/// Time a sender gets after its drain deadline for the graceful close (`Death`, DISCONNECT,
/// bounded at 2 s in the session) before [`SenderHandle::shutdown`] stops waiting for it.
pub const CLOSE_GRACE: Duration = Duration::from_secs(4);

impl SenderHandle {
    /// Simulates a network cut: drops the connection at once without an MQTT DISCONNECT (the
    /// broker fires the last will), stays down for `outage`, then reconnects under its own
    /// backoff. Returns false if the sender has stopped or its control queue is full.
    pub fn cut(&self, outage: Duration) -> bool {
        self.ctl.try_send(Control::Cut(outage)).is_ok()
    }

    /// Sends what is buffered now instead of waiting for `batch_max_delay`.
    pub fn flush_now(&self) -> bool {
        self.ctl.try_send(Control::FlushNow).is_ok()
    }

    /// Highest seq acked by the gateway so far.
    #[must_use]
    pub fn acked_upto(&self) -> u64 {
        *self.acked.borrow()
    }

    /// A watch of the highest acked seq.
    #[must_use]
    pub fn watch_acked(&self) -> watch::Receiver<u64> {
        self.acked.clone()
    }

    /// True while connected (after the ack subscription was confirmed).
    #[must_use]
    pub fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// A watch of the connection state.
    #[must_use]
    pub fn watch_connected(&self) -> watch::Receiver<bool> {
        self.connected.clone()
    }

    /// A token that ends a running [`SenderHandle::shutdown`]'s drain at once (a second
    /// SIGTERM): the sender publishes `Death` best-effort and stops.
    #[must_use]
    pub fn skip_drain_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Graceful stop: keep sending until everything buffered is acked or `drain` elapsed,
    /// publish `Death`, disconnect. What is not acked stays in the buffer.
    ///
    /// Returns within `drain` + [`CLOSE_GRACE`] whatever the gateway does (a link lost during
    /// the drain is retried only until the deadline). The session keeps that deadline itself;
    /// this bound is the backstop should it not: the sender is then cancelled, and aborted if
    /// it still does not stop.
    pub async fn shutdown(mut self, drain: Duration) -> SenderExit {
        // A full control queue must not delay the request past the deadline either.
        let deadline = tokio::time::Instant::now() + drain + CLOSE_GRACE;
        let _ = tokio::time::timeout_at(deadline, self.ctl.send(Control::Shutdown(drain))).await;
        let res = match tokio::time::timeout_at(deadline, &mut self.join).await {
            Ok(r) => r,
            Err(_) => {
                tracing::error!(
                    ?drain,
                    "sender did not stop at its drain deadline; cancelling it"
                );
                self.cancel.cancel();
                match tokio::time::timeout(CLOSE_GRACE, &mut self.join).await {
                    Ok(r) => r,
                    Err(_) => {
                        self.join.abort();
                        return self.fallback_exit();
                    }
                }
            }
        };
        match res {
            Ok(exit) => exit,
            Err(e) => {
                tracing::error!(error = %e, "sender task failed");
                self.fallback_exit()
            }
        }
    }

    fn fallback_exit(&self) -> SenderExit {
        SenderExit {
            acked_upto: *self.acked.borrow(),
            last_seq: 0,
            drained: false,
        }
    }
}

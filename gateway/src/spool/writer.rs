//! The spool writer: the only task that writes the spool. Group commit: it takes every batch
//! waiting in the queue (up to `max_batches_per_commit`) plus the deletes the Kafka drain
//! reported, writes them in one fsync'd transaction, then (ack mode `spool`) acks them.
//!
//! # Past the spool ([`Bypass`], ack mode `kafka`)
//!
//! In ack mode `kafka` the device is acked on Kafka's delivery report, so while Kafka keeps up
//! the spool adds an fsync'd write, a read and a delete to every batch and protects nothing the
//! device does not still hold. The writer then hands the batches it takes from the queue to the
//! Kafka drain in memory instead of committing them, when both hold:
//!
//! * the drain has handed every committed spool record to the producer
//!   ([`Bypass::produced_upto`] `>=` the writer's next key), so no batch of a device overtakes
//!   an older one waiting in the spool (the producer keeps order per partition);
//! * fewer than `direct_max_in_flight_records` batches produced from memory are undelivered
//!   (the oldest batches of a group fill the window, the rest are committed), so when Kafka
//!   slows down or goes away the backlog lands on disk, not in the producer's queue.
//!
//! A batch produced from memory is not acked before its delivery report, so a crash loses only
//! batches the devices still hold and resend. The drain produces what it got from memory before
//! any spool record committed after it (see `kafka::sink`).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use breakwater_protocol::DeviceId;
use parking_lot::Mutex;
use tokio::sync::{mpsc, Notify};
use tracing::{error, info, warn};

use super::{Spool, SpoolRecord};
use crate::ack::Acker;
use crate::sequencer::Sequencer;
use crate::stats as m;

/// A batch the sequencer accepted, on its way to the spool. Its `size` is reserved in the spool.
#[derive(Debug)]
pub struct Accepted {
    pub device: DeviceId,
    pub record: SpoolRecord,
    pub size: u64,
}

/// What the writer and the Kafka drain tell each other so that batches can skip the spool
/// without overtaking older ones (see the module doc).
#[derive(Debug)]
pub struct Bypass {
    /// Every spool key below this is committed (the writer's next key); [`Bypass::UNKNOWN`]
    /// until the writer has read the spool's last key.
    pub committed_upto: AtomicU64,
    /// Every spool key below this has been handed to the producer (the drain's position).
    pub produced_upto: AtomicU64,
    /// Batches produced from memory whose delivery report has not been seen.
    pub in_flight: AtomicUsize,
}

impl Bypass {
    /// `committed_upto` before the writer has started.
    pub const UNKNOWN: u64 = u64::MAX;
}

impl Default for Bypass {
    fn default() -> Self {
        Self {
            committed_upto: AtomicU64::new(Self::UNKNOWN),
            produced_upto: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }
}

/// The writer's side of [`Bypass`].
#[derive(Debug)]
pub struct BypassTx {
    pub shared: Arc<Bypass>,
    pub tx: mpsc::UnboundedSender<Accepted>,
    pub max_in_flight: usize,
}

/// Keys the Kafka drain has delivered, waiting to be deleted by the next commit.
#[derive(Debug, Default)]
pub struct Deletes {
    keys: Mutex<Vec<u64>>,
    notify: Notify,
}

/// Longest a delivered record waits for its delete when no batch is committed.
const DELETE_FLUSH: Duration = Duration::from_millis(200);

impl Deletes {
    pub fn push(&self, keys: impl IntoIterator<Item = u64>) {
        let mut k = self.keys.lock();
        k.extend(keys);
        if k.len() >= 10_000 {
            self.notify.notify_one();
        }
    }

    /// Takes the pending keys (the caller commits them).
    pub fn take(&self) -> Vec<u64> {
        std::mem::take(&mut *self.keys.lock())
    }
}

#[derive(Debug)]
pub struct Writer {
    pub spool: Arc<Spool>,
    pub rx: mpsc::Receiver<Accepted>,
    /// Batches in `rx` (the link consumer increments, the writer decrements).
    pub depth: Arc<AtomicUsize>,
    pub deletes: Arc<Deletes>,
    pub sequencer: Arc<Sequencer>,
    /// `Some` in ack mode `spool`: ack right after the commit.
    pub acker: Option<Acker>,
    /// Woken after each commit with new records (the Kafka drain waits on it).
    pub committed: Arc<Notify>,
    pub max_batches_per_commit: usize,
    /// `Some` in ack mode `kafka` with Kafka configured and `direct_max_in_flight_records > 0`.
    pub bypass: Option<BypassTx>,
    /// `storage_failing` follows [`Spool::is_failing`] (for `/readyz`).
    pub health: Arc<crate::http::Health>,
}

/// Backoff between reopens of a failing spool (see "A failing disk" in [`super`]).
const REOPEN_BACKOFF_FIRST: Duration = Duration::from_millis(100);
const REOPEN_BACKOFF_MAX: Duration = Duration::from_secs(5);

impl Writer {
    /// Runs until the queue is closed (the link consumer stopped) and drained, and no deletes
    /// are left.
    pub async fn run(mut self) {
        let mut next_key = match self.spool.next_key() {
            Ok(k) => k,
            Err(e) => {
                error!(error = %e, "spool: cannot read the last key; the writer stops");
                return;
            }
        };
        if let Some(b) = &self.bypass {
            b.shared.committed_upto.store(next_key, Ordering::Release);
        }
        metrics::gauge!(m::SPOOL_FAILING).set(0.0);
        let mut buf = Vec::with_capacity(self.max_batches_per_commit);
        let mut open = true;
        let mut flush_at = Instant::now() + DELETE_FLUSH;
        let mut backoff = REOPEN_BACKOFF_FIRST;
        while open {
            buf.clear();
            // Deletes ride along with the next insert commit; alone they are committed at most
            // every 200 ms (or at 10k keys), so they do not double the fsyncs on the ack path.
            tokio::select! {
                n = self.rx.recv_many(&mut buf, self.max_batches_per_commit) => {
                    if n == 0 { open = false; }
                }
                () = tokio::time::sleep_until(flush_at.into()) => {}
                () = self.deletes.notify.notified() => {}
            }
            self.depth.fetch_sub(buf.len(), Ordering::Relaxed);
            self.drop_forgotten(&mut buf);
            if !buf.is_empty() && self.bypass(&mut buf, next_key) && Instant::now() < flush_at {
                continue;
            }
            let deletes = self.deletes.take();
            flush_at = Instant::now() + DELETE_FLUSH;
            if buf.is_empty() && deletes.is_empty() {
                continue;
            }
            next_key = self
                .commit(std::mem::take(&mut buf), &deletes, next_key)
                .await;
            if self.spool.is_failing() {
                next_key = self.reopen(&mut backoff, next_key).await;
            } else {
                backoff = REOPEN_BACKOFF_FIRST;
            }
        }
        let deletes = self.deletes.take();
        if !deletes.is_empty() {
            self.commit(Vec::new(), &deletes, next_key).await;
        }
        info!("spool writer stopped");
    }

    /// Drops the batches of `buf` the sequencer no longer holds as pending: a refusal of an
    /// earlier batch of the same device (a failed commit, a refused produce) forgot them after
    /// they were queued. Written, they would sit in the spool ahead of the device's resend of
    /// that earlier batch, and then again after it. Not acked; the device resends them.
    fn drop_forgotten(&self, buf: &mut Vec<Accepted>) {
        buf.retain(|a| {
            let r = &a.record;
            let keep = self
                .sequencer
                .is_pending(&a.device, r.epoch, r.first_seq, r.last_seq);
            if !keep {
                self.spool.release(a.size);
                metrics::counter!(m::DROPPED_BATCHES, "reason" => "after_refused").increment(1);
                tracing::debug!(device = %a.device, epoch = r.epoch, first_seq = r.first_seq,
                    "batch queued after a refused one of its device: not written, the device resends it");
            }
            keep
        });
    }

    /// Hands the oldest batches of `buf` to the Kafka drain past the spool, as many as the
    /// window has room for, when Kafka keeps up (see the module doc); the rest stay in `buf` for
    /// the spool (committed after them, so the drain produces them after). Returns `true` when
    /// `buf` is then empty.
    fn bypass(&self, buf: &mut Vec<Accepted>, next_key: u64) -> bool {
        let Some(b) = &self.bypass else {
            return false;
        };
        if b.tx.is_closed() || b.shared.produced_upto.load(Ordering::Acquire) < next_key {
            return false;
        }
        let room = b
            .max_in_flight
            .saturating_sub(b.shared.in_flight.load(Ordering::Acquire));
        let n = room.min(buf.len());
        if n == 0 {
            return false;
        }
        b.shared.in_flight.fetch_add(n, Ordering::AcqRel);
        for a in buf.drain(..n) {
            self.spool.release(a.size);
            if let Err(mpsc::error::SendError(a)) = b.tx.send(a) {
                // The drain stopped between the check and here (shutdown): not acked, the
                // device resends it.
                b.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
                warn!(device = %a.device, epoch = a.record.epoch, first_seq = a.record.first_seq,
                    "Kafka drain stopped: batch not taken (not acked, the device resends it)");
                metrics::counter!(m::DROPPED_BATCHES, "reason" => "drain_stopped").increment(1);
                self.sequencer
                    .reject(&a.device, a.record.epoch, a.record.first_seq);
            }
        }
        metrics::counter!(m::DIRECT_BATCHES).increment(n as u64);
        buf.is_empty()
    }

    /// After a failed commit: waits `backoff` (then doubles it, up to 5 s), closes and reopens
    /// the spool, and returns the next key read again (the failed commit may have become
    /// durable). The spool stays failing until a commit succeeds. Batches keep waiting in the
    /// bounded queue meanwhile (when it is full the link refuses and counts them).
    async fn reopen(&self, backoff: &mut Duration, next_key: u64) -> u64 {
        tokio::time::sleep(*backoff).await;
        *backoff = (*backoff * 2).min(REOPEN_BACKOFF_MAX);
        let spool = self.spool.clone();
        let res = tokio::task::spawn_blocking(move || {
            spool.reopen()?;
            let k = spool.next_key()?;
            if k > next_key {
                spool.adopt_from(next_key)?;
            }
            Ok::<_, super::SpoolError>(k)
        })
        .await;
        metrics::counter!(m::SPOOL_REOPENS).increment(1);
        match res {
            Ok(Ok(k)) => {
                info!(next_key = k, "spool reopened after an error; the next commit tells whether the disk works again");
                if k > next_key {
                    // A commit reported as failed became durable after all (the error came
                    // after its data reached the disk). Its batches were refused and the
                    // devices resend them: delete these copies with the next commit, so the
                    // spool holds each batch once and in order.
                    warn!(records = k - next_key, from_key = next_key,
                        "spool: a failed commit became durable after all; its records are deleted (the devices resend them)");
                    self.deletes.push(next_key..k);
                }
                k
            }
            Ok(Err(e)) => {
                warn!(error = %e, retry_in = ?*backoff, "spool: reopening failed");
                next_key
            }
            Err(e) => {
                error!(error = %e, "spool reopen task panicked");
                next_key
            }
        }
    }

    /// Marks the spool failing or healthy after a commit: gauge, `/readyz`, a log line when it
    /// changes.
    fn set_failing(&self, failing: bool) {
        if self.spool.is_failing() != failing {
            if failing {
                error!("spool: the disk fails; batches are refused (not acked, devices keep them) until a commit succeeds");
            } else {
                info!("spool: commits succeed again");
            }
        }
        self.spool.set_failing(failing);
        self.health
            .storage_failing
            .store(failing, Ordering::Relaxed);
        metrics::gauge!(m::SPOOL_FAILING).set(if failing { 1.0 } else { 0.0 });
    }

    async fn commit(&self, batch: Vec<Accepted>, deletes: &[u64], next_key: u64) -> u64 {
        let spool = self.spool.clone();
        let n = batch.len() as u64;
        let deletes_v = deletes.to_vec();
        let started = std::time::Instant::now();
        let res = tokio::task::spawn_blocking(move || {
            let pairs: Vec<(u64, &SpoolRecord)> = batch
                .iter()
                .enumerate()
                .map(|(i, a)| (next_key + i as u64, &a.record))
                .collect();
            let r = spool.commit(&pairs, &deletes_v);
            (batch, r)
        })
        .await;
        let (batch, res) = match res {
            Ok(v) => v,
            Err(e) => {
                error!(error = %e, "spool commit task panicked");
                return next_key;
            }
        };
        metrics::histogram!(m::SPOOL_COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
        match res {
            Ok(()) => {
                self.set_failing(false);
                metrics::counter!(m::SPOOL_WRITTEN_BATCHES).increment(n);
                metrics::counter!(m::SPOOL_DELETED_BATCHES).increment(deletes.len() as u64);
                if let Some(acker) = &self.acker {
                    for a in &batch {
                        let r = &a.record;
                        if let Some(upto) =
                            self.sequencer
                                .durable(&a.device, r.epoch, r.first_seq, r.last_seq)
                        {
                            acker.ack(a.device.clone(), r.epoch, upto);
                        }
                    }
                }
                if let Some(b) = &self.bypass {
                    b.shared
                        .committed_upto
                        .store(next_key + n, Ordering::Release);
                }
                if n > 0 {
                    self.committed.notify_one();
                }
                next_key + n
            }
            Err(e) => {
                // The first failure at ERROR (in `set_failing`), the retries' at debug: a full
                // disk must not flood the log.
                if self.spool.is_failing() {
                    tracing::debug!(error = %e, batches = n, "spool commit failed again; batches refused (devices resend)");
                } else {
                    error!(error = %e, batches = n, "spool commit failed; batches refused (devices resend)");
                }
                self.set_failing(true);
                metrics::counter!(m::DROPPED_BATCHES, "reason" => "spool_error").increment(n);
                for a in &batch {
                    self.spool.release(a.size);
                    self.sequencer
                        .reject(&a.device, a.record.epoch, a.record.first_seq);
                }
                // Deletes were not applied: hand them back.
                self.deletes.keys.lock().extend_from_slice(deletes);
                next_key
            }
        }
    }
}

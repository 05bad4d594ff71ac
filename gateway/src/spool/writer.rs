//! The spool writer: the only task that writes the spool. Group commit: it takes every batch
//! waiting in the queue (up to `max_batches_per_commit`) plus the deletes the Kafka drain
//! reported, writes them in one fsync'd transaction, then (ack mode `spool`) acks them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use breakwater_protocol::DeviceId;
use parking_lot::Mutex;
use tokio::sync::{mpsc, Notify};
use tracing::{error, info};

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

/// Keys the Kafka drain has delivered, waiting to be deleted by the next commit.
#[derive(Debug, Default)]
pub struct Deletes {
    keys: Mutex<Vec<u64>>,
    notify: Notify,
}

/// Longest a delivered record waits for its delete when no batch arrives.
const DELETE_FLUSH: std::time::Duration = std::time::Duration::from_millis(200);

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
}

impl Writer {
    /// Runs until the queue is closed (the link consumer stopped) and drained, and no deletes
    /// are left. Returns the spool for the drain's final deletes.
    pub async fn run(mut self) {
        let mut next_key = match self.spool.next_key() {
            Ok(k) => k,
            Err(e) => {
                error!(error = %e, "spool: cannot read the last key; the writer stops");
                return;
            }
        };
        let mut buf = Vec::with_capacity(self.max_batches_per_commit);
        let mut open = true;
        while open {
            buf.clear();
            // Deletes ride along with the next insert commit; alone they are committed at most
            // every 200 ms (or at 10k keys), so they do not double the fsyncs on the ack path.
            tokio::select! {
                n = self.rx.recv_many(&mut buf, self.max_batches_per_commit) => {
                    if n == 0 { open = false; }
                }
                () = tokio::time::sleep(DELETE_FLUSH) => {}
                () = self.deletes.notify.notified() => {}
            }
            self.depth.fetch_sub(buf.len(), Ordering::Relaxed);
            let deletes = self.deletes.take();
            if buf.is_empty() && deletes.is_empty() {
                continue;
            }
            next_key = self
                .commit(std::mem::take(&mut buf), &deletes, next_key)
                .await;
        }
        let deletes = self.deletes.take();
        if !deletes.is_empty() {
            self.commit(Vec::new(), &deletes, next_key).await;
        }
        info!("spool writer stopped");
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
                if n > 0 {
                    self.committed.notify_one();
                }
                next_key + n
            }
            Err(e) => {
                error!(error = %e, batches = n, "spool commit failed; batches refused (devices resend)");
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

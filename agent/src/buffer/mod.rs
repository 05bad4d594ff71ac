//! The device's durable buffer: every accepted reading lives here until the gateway acks it.
//!
//! # Invariants
//!
//! * **Sequence numbers.** Each buffer has an `epoch` (a random non-zero `u64` chosen when the
//!   buffer is created) and hands out `seq` numbers 1, 2, 3, ... in append order, without gaps.
//!   The next `seq` persists, so a restart continues the sequence: `(device, epoch, seq)` names
//!   a reading forever.
//! * **Contiguity.** Readings leave the buffer only from the front (an ack deletes a prefix,
//!   `drop-oldest` deletes a prefix), so the stored readings are always exactly
//!   `first_seq .. next_seq`.
//! * **Deletion only on ack.** A reading is deleted when the gateway acks it (cumulative
//!   `upto_seq`) *for the current epoch*, or when the `drop-oldest` policy makes room for new
//!   readings (counted in `breakwater_agent_buffer_dropped_readings_total` and logged). An ack
//!   for another epoch is ignored.
//! * **Budget.** `max_bytes` bounds the sum of record sizes (see each implementation for how a
//!   record is sized). When full: [`FullPolicy::Block`] makes `append` wait for acks to free
//!   room; [`FullPolicy::DropOldest`] deletes the oldest readings.
//!
//! # What is durable when (the redb implementation)
//!
//! * `append` resolves `Ok` only after the write transaction holding the readings committed
//!   with `Durability::Immediate` (fsync). A crash (kill -9, power loss) at any moment loses
//!   none of the readings whose `append` resolved `Ok`.
//! * A crash may lose appends whose future had not resolved yet (their caller was never told
//!   they were stored), and deletes (acks, drops) that had not committed: those readings are
//!   sent again after restart, and the gateway deduplicates by `(device, epoch, seq)`.
//! * The epoch, the next `seq`, the stored byte count and the drop count are written in the
//!   same transaction as the readings, so they can never disagree with the stored readings.
//!
//! Implementations: [`redb::RedbBuffer`] (on disk, group commit) and [`memory::MemoryBuffer`]
//! (in memory, same semantics minus durability, for tests and the fleet simulator).

pub mod memory;
pub mod redb;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};

use breakwater_protocol::Reading;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::{watch, Notify};

pub use self::memory::MemoryBuffer;
pub use self::redb::{OpenError, RedbBuffer, RedbOptions};

/// A boxed future, so [`Buffer`] can be used as `Arc<dyn Buffer>`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What to do when the buffer's byte budget is exhausted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FullPolicy {
    /// `append` waits until acks free enough room (the ingest endpoint stops reading).
    #[default]
    Block,
    /// The oldest readings are deleted to make room; every drop is counted and logged.
    DropOldest,
}

impl FullPolicy {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Block => "block",
            Self::DropOldest => "drop-oldest",
        }
    }
}

/// The sequence numbers given to one appended group of readings (inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub first_seq: u64,
    pub last_seq: u64,
}

/// A snapshot of the buffer's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BufferStats {
    pub epoch: u64,
    /// Oldest stored seq; equal to `next_seq` when the buffer is empty.
    pub first_seq: u64,
    /// The seq the next appended reading gets.
    pub next_seq: u64,
    /// Stored readings (`next_seq - first_seq`).
    pub readings: u64,
    /// Stored bytes as counted against `max_bytes`.
    pub bytes: u64,
    /// Readings deleted by `drop-oldest` since the buffer was created.
    pub dropped_total: u64,
    /// Timestamp (`ts`, ms since the Unix epoch) of the oldest stored reading, if any.
    pub oldest_ts: Option<u64>,
}

/// What an ack did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// `deleted` readings were removed; everything up to `upto_seq` is gone.
    Deleted { deleted: u64, upto_seq: u64 },
    /// The ack named another epoch and was ignored.
    WrongEpoch { ours: u64, theirs: u64 },
}

/// Why an append failed. Nothing of a failed append was stored.
#[derive(Debug, Error)]
pub enum AppendError {
    #[error("nothing to append")]
    Empty,
    #[error("{bytes} bytes of readings exceed the whole buffer budget of {max_bytes} bytes")]
    TooLarge { bytes: u64, max_bytes: u64 },
    #[error("the buffer is closed")]
    Closed,
    #[error("buffer storage failed, the readings were not stored: {0}")]
    Storage(String),
}

/// Why reading from the buffer failed.
#[derive(Debug, Error)]
pub enum ReadError {
    #[error("the buffer is closed")]
    Closed,
    #[error("buffer storage failed while reading: {0}")]
    Storage(String),
    #[error("stored reading seq {seq} cannot be decoded (corrupt buffer?): {detail}")]
    Corrupt { seq: u64, detail: String },
}

/// Why an ack could not be applied. The readings stay stored and will be sent again.
#[derive(Debug, Error)]
pub enum AckError {
    #[error("the buffer is closed")]
    Closed,
    #[error("buffer storage failed while deleting acked readings: {0}")]
    Storage(String),
}

/// The buffer's storage is failing: appends and acks are refused (nothing is half-stored)
/// until it recovers; the redb buffer closes and reopens its file with backoff meanwhile.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "buffer storage failing for {}s ({reopen_attempts} reopen attempts so far): {error}",
    since.elapsed().as_secs()
)]
pub struct StorageFailing {
    /// The last storage error (the commit's, or the last reopen attempt's).
    pub error: String,
    /// When the storage started failing.
    pub since: std::time::Instant,
    pub reopen_attempts: u32,
}

/// The store behind the sender. Object safe: the sender holds an `Arc<dyn Buffer>`.
///
/// All methods are cancel-safe in the sense that dropping a returned future never corrupts the
/// buffer; a dropped `append` may or may not have stored its readings.
pub trait Buffer: Send + Sync + fmt::Debug {
    /// The epoch of this buffer (never 0).
    fn epoch(&self) -> u64;

    /// Appends `readings` with consecutive seqs and resolves once they are stored (durably, for
    /// a durable implementation). Under [`FullPolicy::Block`] it waits for room first.
    fn append(&self, readings: Vec<Reading>) -> BoxFuture<'_, Result<Appended, AppendError>>;

    /// Returns up to `max_readings` stored readings with `seq >= from_seq`, oldest first,
    /// stopping early once their record sizes add up to `max_bytes` (always at least one).
    fn read(
        &self,
        from_seq: u64,
        max_readings: usize,
        max_bytes: usize,
    ) -> BoxFuture<'_, Result<Vec<(u64, Reading)>, ReadError>>;

    /// Deletes every reading with `seq <= upto_seq` if `epoch` is this buffer's epoch.
    fn ack(&self, epoch: u64, upto_seq: u64) -> BoxFuture<'_, Result<AckOutcome, AckError>>;

    /// Current counters.
    fn stats(&self) -> BufferStats;

    /// A watch of the last stored seq (`next_seq - 1`), updated after every append commits.
    fn watch_last_seq(&self) -> watch::Receiver<u64>;

    /// `Err` while the storage is failing (writes refused until it recovers by itself).
    /// An in-memory buffer never fails.
    ///
    /// # Errors
    /// [`StorageFailing`] with the last error and since when.
    fn health(&self) -> Result<(), StorageFailing> {
        Ok(())
    }
}

/// The byte budget shared by both implementations: reservation with `block`, accounting only
/// with `drop-oldest` (the store then deletes the oldest readings itself).
#[derive(Debug)]
pub(crate) struct Budget {
    max_bytes: u64,
    policy: FullPolicy,
    /// Stored bytes plus bytes reserved by appends in progress.
    used: AtomicU64,
    freed: Notify,
}

impl Budget {
    pub(crate) fn new(max_bytes: u64, policy: FullPolicy, stored: u64) -> Self {
        Self {
            max_bytes,
            policy,
            used: AtomicU64::new(stored),
            freed: Notify::new(),
        }
    }

    pub(crate) fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    pub(crate) fn policy(&self) -> FullPolicy {
        self.policy
    }

    /// Reserves `bytes`. With `block`, waits until they fit. Cancel-safe: nothing is reserved
    /// until it returns `Ok`.
    pub(crate) async fn reserve(&self, bytes: u64) -> Result<(), AppendError> {
        if bytes > self.max_bytes {
            return Err(AppendError::TooLarge {
                bytes,
                max_bytes: self.max_bytes,
            });
        }
        if self.policy == FullPolicy::DropOldest {
            self.used.fetch_add(bytes, Ordering::AcqRel);
            return Ok(());
        }
        let mut logged = false;
        loop {
            let notified = self.freed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let cur = self.used.load(Ordering::Acquire);
            if cur + bytes <= self.max_bytes {
                if self
                    .used
                    .compare_exchange(cur, cur + bytes, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return Ok(());
                }
                continue;
            }
            if !logged {
                logged = true;
                metrics::counter!("breakwater_agent_buffer_full_waits_total").increment(1);
                tracing::debug!(
                    used = cur,
                    max_bytes = self.max_bytes,
                    "buffer full, append waits for acks"
                );
            }
            notified.await;
        }
    }

    /// Counts `bytes` more as used (stored data found on disk after a reopen).
    pub(crate) fn add(&self, bytes: u64) {
        self.used.fetch_add(bytes, Ordering::AcqRel);
    }

    /// Returns `bytes` to the budget (deleted, or a failed append's reservation).
    pub(crate) fn release(&self, bytes: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(bytes))
            });
        self.freed.notify_waiters();
    }
}

#[cfg(test)]
pub(crate) mod contract {
    //! Tests every implementation must pass.
    use super::*;
    use breakwater_protocol::Value;

    pub fn reading(i: u64) -> Reading {
        Reading::new(
            format!("m{}", i % 7),
            Value::I64(i as i64),
            1_700_000_000_000 + i,
        )
    }

    pub async fn appends_are_consecutive(b: &dyn Buffer) {
        let a = b.append(vec![reading(1), reading(2)]).await.unwrap();
        assert_eq!((a.first_seq, a.last_seq), (1, 2));
        let a = b.append(vec![reading(3)]).await.unwrap();
        assert_eq!((a.first_seq, a.last_seq), (3, 3));
        assert_eq!(*b.watch_last_seq().borrow(), 3);
        let got = b.read(2, 10, usize::MAX).await.unwrap();
        assert_eq!(got, vec![(2, reading(2)), (3, reading(3))]);
        let got = b.read(1, 2, usize::MAX).await.unwrap();
        assert_eq!(got.len(), 2);
        // max_bytes stops early but returns at least one.
        let got = b.read(1, 10, 1).await.unwrap();
        assert_eq!(got, vec![(1, reading(1))]);
        assert!(matches!(b.append(vec![]).await, Err(AppendError::Empty)));
    }

    pub async fn ack_deletes_prefix_of_current_epoch_only(b: &dyn Buffer) {
        b.append((1..=10).map(reading).collect()).await.unwrap();
        let s = b.stats();
        assert_eq!((s.first_seq, s.next_seq, s.readings), (1, 11, 10));
        let out = b.ack(b.epoch().wrapping_add(1), 10).await.unwrap();
        assert!(matches!(out, AckOutcome::WrongEpoch { .. }));
        assert_eq!(
            b.stats().readings,
            10,
            "a foreign-epoch ack must delete nothing"
        );
        let out = b.ack(b.epoch(), 4).await.unwrap();
        assert_eq!(
            out,
            AckOutcome::Deleted {
                deleted: 4,
                upto_seq: 4
            }
        );
        let s = b.stats();
        assert_eq!((s.first_seq, s.next_seq, s.readings), (5, 11, 6));
        assert_eq!(s.oldest_ts, Some(reading(5).ts));
        assert_eq!(b.read(1, 100, usize::MAX).await.unwrap()[0].0, 5);
        // Old (duplicate) ack: nothing more to delete.
        let out = b.ack(b.epoch(), 3).await.unwrap();
        assert!(matches!(out, AckOutcome::Deleted { deleted: 0, .. }));
        // An ack beyond what was stored is clamped.
        b.ack(b.epoch(), 1_000).await.unwrap();
        let s = b.stats();
        assert_eq!(
            (s.first_seq, s.next_seq, s.readings, s.bytes),
            (11, 11, 0, 0)
        );
        assert_eq!(s.oldest_ts, None);
        // Seqs continue after the buffer emptied.
        assert_eq!(b.append(vec![reading(11)]).await.unwrap().first_seq, 11);
    }

    /// `b` must have `max_bytes` room for about 10 readings and the `block` policy.
    pub async fn block_policy_waits_for_ack(b: std::sync::Arc<dyn Buffer>) {
        let mut n = 0u64;
        // Fill until an append would block (2 s without completing; a commit is ~ms).
        loop {
            n += 1;
            let fut = b.append(vec![reading(n)]);
            match tokio::time::timeout(std::time::Duration::from_secs(2), fut).await {
                Ok(r) => {
                    r.unwrap();
                }
                Err(_) => break,
            }
            assert!(n < 1000, "the budget never filled up");
        }
        let stored = b.stats().readings;
        assert_eq!(
            stored,
            n - 1,
            "the timed-out append must not have stored anything"
        );
        let b2 = b.clone();
        let pending = tokio::spawn(async move { b2.append(vec![reading(1_000)]).await });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(
            !pending.is_finished(),
            "append must wait while the buffer is full"
        );
        assert_eq!(b.stats().dropped_total, 0);
        b.ack(b.epoch(), 2).await.unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), pending)
            .await
            .expect("append must proceed once an ack freed room")
            .unwrap()
            .unwrap();
        assert_eq!(got.first_seq, n, "seq continues after the blocked append");
        // Nothing was dropped: every stored reading from 3 on is still there.
        let all = b.read(1, 10_000, usize::MAX).await.unwrap();
        assert_eq!(all.first().map(|r| r.0), Some(3));
        assert_eq!(all.last().map(|r| r.0), Some(n));
    }

    /// `b` must have `max_bytes` room for about 10 readings and the `drop-oldest` policy.
    pub async fn drop_oldest_policy_drops_and_counts(b: &dyn Buffer) {
        for i in 1..=100 {
            b.append(vec![reading(i)]).await.unwrap();
        }
        let s = b.stats();
        assert!(s.readings < 100 && s.readings > 0, "{s:?}");
        assert_eq!(s.next_seq, 101);
        assert_eq!(s.dropped_total, 100 - s.readings);
        assert_eq!(
            s.first_seq,
            101 - s.readings,
            "the newest readings are kept"
        );
        let all = b.read(0, 1_000, usize::MAX).await.unwrap();
        assert_eq!(all.len() as u64, s.readings);
        assert_eq!(all.last().unwrap(), &(100, reading(100)));
        assert!(matches!(
            b.append(vec![reading(1); 1_000]).await,
            Err(AppendError::TooLarge { .. })
        ));
    }
}

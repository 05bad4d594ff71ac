//! An in-memory [`Buffer`] with the same semantics as the redb one, minus durability.
//!
//! For tests and the fleet simulator (thousands of virtual devices in one process). A record's
//! size is estimated as `RECORD_OVERHEAD + metric length + value size`, close to the redb
//! implementation's encoded size.

use std::collections::VecDeque;
use std::sync::Mutex;

use breakwater_protocol::{Reading, Value};
use tokio::sync::watch;

use super::{
    AckError, AckOutcome, AppendError, Appended, BoxFuture, Budget, Buffer, BufferStats,
    FullPolicy, ReadError,
};

/// Per-record overhead counted against the budget (key, length prefixes, bookkeeping).
pub const RECORD_OVERHEAD: u64 = 16;

/// Estimated size of one stored reading, in bytes.
#[must_use]
pub fn record_size(r: &Reading) -> u64 {
    let value = match &r.value {
        Value::I64(_) | Value::F64(_) => 9,
        Value::Bool(_) => 2,
        Value::Str(s) => 2 + s.len() as u64,
    };
    RECORD_OVERHEAD + 10 + r.metric.len() as u64 + value
}

#[derive(Debug)]
struct State {
    records: VecDeque<(u64, Reading, u64)>,
    next_seq: u64,
    bytes: u64,
    dropped_total: u64,
}

/// An in-memory buffer. Cheap: an empty one is a few hundred bytes.
#[derive(Debug)]
pub struct MemoryBuffer {
    epoch: u64,
    state: Mutex<State>,
    budget: Budget,
    last_seq: watch::Sender<u64>,
}

impl MemoryBuffer {
    /// A new empty buffer with a random epoch.
    #[must_use]
    pub fn new(max_bytes: u64, policy: FullPolicy) -> Self {
        Self::with_epoch(super::redb::new_epoch(), max_bytes, policy)
    }

    /// A new empty buffer with the given epoch (0 is replaced by 1).
    #[must_use]
    pub fn with_epoch(epoch: u64, max_bytes: u64, policy: FullPolicy) -> Self {
        Self {
            epoch: epoch.max(1),
            state: Mutex::new(State {
                records: VecDeque::new(),
                next_seq: 1,
                bytes: 0,
                dropped_total: 0,
            }),
            budget: Budget::new(max_bytes, policy, 0),
            last_seq: watch::channel(0).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state half-updated in a way that
        // matters more than losing the process; keep serving.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn append_inner(&self, readings: Vec<Reading>) -> Result<Appended, AppendError> {
        if readings.is_empty() {
            return Err(AppendError::Empty);
        }
        let sizes: Vec<u64> = readings.iter().map(record_size).collect();
        let total: u64 = sizes.iter().sum();
        self.budget.reserve(total).await?;
        let (appended, freed, dropped) = {
            let mut st = self.lock();
            let first_seq = st.next_seq;
            for (r, size) in readings.into_iter().zip(sizes) {
                let seq = st.next_seq;
                st.records.push_back((seq, r, size));
                st.next_seq += 1;
            }
            st.bytes += total;
            let mut freed = 0;
            let mut dropped = 0;
            if self.budget.policy() == FullPolicy::DropOldest {
                while st.bytes > self.budget.max_bytes() {
                    let Some((_, _, size)) = st.records.pop_front() else {
                        break;
                    };
                    st.bytes -= size;
                    freed += size;
                    dropped += 1;
                }
                st.dropped_total += dropped;
            }
            let last_seq = st.next_seq - 1;
            (
                Appended {
                    first_seq,
                    last_seq,
                },
                freed,
                dropped,
            )
        };
        if dropped > 0 {
            metrics::counter!("breakwater_agent_buffer_dropped_readings_total").increment(dropped);
            tracing::warn!(dropped, "buffer full: dropped the oldest readings");
            self.budget.release(freed);
        }
        metrics::counter!("breakwater_agent_buffer_appended_readings_total")
            .increment(appended.last_seq - appended.first_seq + 1);
        self.last_seq.send_replace(appended.last_seq);
        Ok(appended)
    }
}

impl Buffer for MemoryBuffer {
    fn epoch(&self) -> u64 {
        self.epoch
    }

    fn append(&self, readings: Vec<Reading>) -> BoxFuture<'_, Result<Appended, AppendError>> {
        Box::pin(self.append_inner(readings))
    }

    fn read(
        &self,
        from_seq: u64,
        max_readings: usize,
        max_bytes: usize,
    ) -> BoxFuture<'_, Result<Vec<(u64, Reading)>, ReadError>> {
        let out = {
            let st = self.lock();
            let start = st
                .records
                .front()
                .map_or(0, |(first, _, _)| from_seq.saturating_sub(*first));
            let mut out = Vec::new();
            let mut bytes = 0u64;
            for (seq, r, size) in st
                .records
                .iter()
                .skip(usize::try_from(start).unwrap_or(usize::MAX))
            {
                if out.len() >= max_readings || (!out.is_empty() && bytes + size > max_bytes as u64)
                {
                    break;
                }
                bytes += size;
                out.push((*seq, r.clone()));
            }
            out
        };
        Box::pin(std::future::ready(Ok(out)))
    }

    fn ack(&self, epoch: u64, upto_seq: u64) -> BoxFuture<'_, Result<AckOutcome, AckError>> {
        if epoch != self.epoch {
            return Box::pin(std::future::ready(Ok(AckOutcome::WrongEpoch {
                ours: self.epoch,
                theirs: epoch,
            })));
        }
        let (deleted, freed) = {
            let mut st = self.lock();
            let mut deleted = 0;
            let mut freed = 0;
            while st
                .records
                .front()
                .is_some_and(|(seq, _, _)| *seq <= upto_seq)
            {
                if let Some((_, _, size)) = st.records.pop_front() {
                    st.bytes -= size;
                    freed += size;
                    deleted += 1;
                }
            }
            (deleted, freed)
        };
        if freed > 0 {
            self.budget.release(freed);
        }
        Box::pin(std::future::ready(Ok(AckOutcome::Deleted {
            deleted,
            upto_seq,
        })))
    }

    fn stats(&self) -> BufferStats {
        let st = self.lock();
        let first_seq = st.records.front().map_or(st.next_seq, |r| r.0);
        BufferStats {
            epoch: self.epoch,
            first_seq,
            next_seq: st.next_seq,
            readings: st.records.len() as u64,
            bytes: st.bytes,
            dropped_total: st.dropped_total,
            oldest_ts: st.records.front().map(|r| r.1.ts),
        }
    }

    fn watch_last_seq(&self) -> watch::Receiver<u64> {
        self.last_seq.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::contract;
    use super::*;

    #[tokio::test]
    async fn contract_appends() {
        contract::appends_are_consecutive(&MemoryBuffer::new(1 << 20, FullPolicy::Block)).await;
    }

    #[tokio::test]
    async fn contract_ack() {
        contract::ack_deletes_prefix_of_current_epoch_only(&MemoryBuffer::new(
            1 << 20,
            FullPolicy::Block,
        ))
        .await;
    }

    #[tokio::test]
    async fn contract_block() {
        let size = record_size(&contract::reading(1));
        contract::block_policy_waits_for_ack(Arc::new(MemoryBuffer::new(
            size * 10,
            FullPolicy::Block,
        )))
        .await;
    }

    #[tokio::test]
    async fn contract_drop_oldest() {
        let size = record_size(&contract::reading(1));
        contract::drop_oldest_policy_drops_and_counts(&MemoryBuffer::new(
            size * 10,
            FullPolicy::DropOldest,
        ))
        .await;
    }
}

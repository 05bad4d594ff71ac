//! Per-(device, epoch) sequencing: what is accepted, what is durable, what may be acked.
//!
//! # Invariants
//!
//! * For each device the sequencer knows one epoch. A batch with another epoch resets the
//!   device's state (a new agent buffer restarts `seq`).
//! * `accepted` is the highest seq handed to the pipeline (in flight or durable), contiguous from
//!   the first batch seen; `durable` is the highest seq such that every seq `<= durable` is
//!   durable. `durable <= accepted` always.
//! * A batch entirely `<= accepted` is a duplicate: dropped (if it is `<= durable`, the caller
//!   re-acks so a lost ack heals). A batch starting after `accepted + 1` is a gap: dropped, never
//!   acked, so an ack can never claim a reading the gateway did not get. A batch overlapping
//!   `accepted` is trimmed to its new readings.
//! * The first batch of an unknown device sets the baseline (`first_seq - 1`): the gateway holds
//!   no memory of earlier seqs (the spool seeds it on restart, see [`Sequencer::seed`]).
//! * `durable` only advances over a contiguous prefix of the pending batches, whatever the order
//!   in which they become durable.
//! * When a batch cannot be taken after all ([`Sequencer::reject`]), `accepted` rewinds to just
//!   before it and the batches pending after it are forgotten: the device resends from there.
//!
//! # Device-declared drops ([`Floor`])
//!
//! A device whose `drop-oldest` buffer dropped readings declares "nothing below `first_seq` will
//! be sent again" ([`Sequencer::floor`]). It arrives on the telemetry topic, so it is ordered
//! with the device's batches. If `first_seq - 1 > accepted`, the range `accepted + 1 ..
//! first_seq - 1` was never accepted and never will be: it is appended to the pending queue as a
//! *dropped* entry that is already done, and `accepted` moves to `first_seq - 1`. So:
//!
//! * `durable` passes a dropped range only together with everything accepted before it (the
//!   batches still in the spool writer or the Kafka drain); it never passes a pending batch.
//! * Neither `accepted` nor `durable` ever moves backwards because of a floor; a floor at or
//!   below `accepted` changes nothing (when it is also `<= durable` the caller re-acks).
//! * The dropped readings are counted ([`stats::DEVICE_DROPPED_READINGS`]) and logged when
//!   `durable` passes them, so a range forgotten by a [`Sequencer::reject`] before that is not
//!   counted twice when the device declares it again.
//! * A floor for an unknown device or another epoch is ignored: the gateway cannot tell which
//!   of those seqs were acked by someone before, and the device's next batch sets the baseline
//!   anyway.
//! * Floors are not persisted. After a restart the spool seeds the sequencer with what was
//!   spooled; the device sends its floor again on the new connection, so the same range may be
//!   counted again by the new process (the counter restarts at 0 with it).
//!
//! # Restart after direct delivery
//!
//! In ack mode `kafka` the gateway produces batches from memory while Kafka keeps up and only
//! spools the rest, so the spool's cursors can be behind what the previous process acked. Such
//! devices are seeded with `behind` set ([`Sequencer::seed`]): the first batch that starts after
//! `accepted + 1` is taken, and the range in between is recorded as done ("acked before the
//! restart": a device only skips readings it got an ack for, and an ack only ever covered
//! durable readings). It still waits behind the seeded pending batches. The flag clears with
//! the device's first accepted batch; after that a gap is a gap again.
//!
//! An ack therefore means "every seq `<= upto` is durable or was declared dropped by the device".

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;

use breakwater_protocol::{Batch, DeviceId, Floor};
use parking_lot::Mutex;
use tracing::{debug, warn};

use crate::stats;

const SHARDS: usize = 16;

/// What to do with an incoming batch.
#[derive(Debug, PartialEq)]
pub enum Admit {
    /// New readings: hand this (possibly trimmed) batch to the pipeline.
    Accept(Batch),
    /// Every reading was seen already. `durable` is the device's current durable seq when the
    /// whole batch is durable (re-ack it), `None` while part of it is still in flight.
    Duplicate { durable: Option<u64> },
    /// The batch starts after a missing seq (`expected`): dropped, not acked.
    Gap { expected: u64 },
}

#[derive(Debug)]
struct Pending {
    first: u64,
    last: u64,
    done: bool,
    /// A range the device declared dropped (no batch; `done` from the start).
    dropped: bool,
    /// Wall clock (ms) when it was accepted: the age of data the device still waits an ack for.
    at_ms: u64,
}

#[derive(Debug)]
struct DeviceState {
    epoch: u64,
    accepted: u64,
    durable: u64,
    pending: VecDeque<Pending>,
    /// Seeded from a spool that may lag what was acked (see the module doc).
    behind: bool,
    /// Wall clock (ms) of the last batch from the device (0: none since this process started).
    last_seen_ms: u64,
    /// Wall clock (ms) when `durable` last advanced (0: not since this process started).
    durable_ms: u64,
}

impl DeviceState {
    fn new(epoch: u64, baseline: u64) -> Self {
        Self {
            epoch,
            accepted: baseline,
            durable: baseline,
            pending: VecDeque::new(),
            behind: false,
            last_seen_ms: 0,
            durable_ms: 0,
        }
    }

    /// Moves `durable` over the done prefix of the pending queue; counts and logs the
    /// device-declared drops it passes.
    fn advance(&mut self, device: &DeviceId) {
        while self.pending.front().is_some_and(|p| p.done) {
            let Some(p) = self.pending.pop_front() else {
                break;
            };
            if p.dropped {
                let readings = p.last - p.first + 1;
                metrics::counter!(stats::DEVICE_DROPPED_READINGS).increment(readings);
                warn!(
                    %device,
                    epoch = self.epoch,
                    from_seq = p.first,
                    to_seq = p.last,
                    readings,
                    "device dropped readings before the gateway got them (drop-oldest); acking past them"
                );
            }
            self.durable = p.last;
            self.durable_ms = wall_ms();
        }
    }
}

/// The sequencer, shared by the link consumer (admission of batches) and the durability path
/// (spool commits, Kafka deliveries). Sharded by device to keep lock hold times short.
#[derive(Debug)]
pub struct Sequencer {
    shards: Vec<Mutex<HashMap<DeviceId, DeviceState>>>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for Sequencer {
    fn default() -> Self {
        Self::new()
    }
}

impl Sequencer {
    #[must_use]
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    fn shard(&self, device: &DeviceId) -> &Mutex<HashMap<DeviceId, DeviceState>> {
        // The modulo keeps the value below SHARDS, so the cast cannot truncate.
        #[allow(clippy::cast_possible_truncation)]
        let i = (self.hasher.hash_one(device) % SHARDS as u64) as usize;
        &self.shards[i]
    }

    /// Number of devices known.
    #[must_use]
    pub fn devices(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// Decides what to do with `batch` and, on [`Admit::Accept`], records it as in flight.
    #[must_use]
    pub fn admit(&self, batch: Batch) -> Admit {
        let now = wall_ms();
        let mut shard = self.shard(&batch.device).lock();
        let state = match shard.get_mut(&batch.device) {
            Some(s) if s.epoch == batch.epoch => s,
            _ => {
                let baseline = batch.first_seq - 1;
                shard.insert(
                    batch.device.clone(),
                    DeviceState::new(batch.epoch, baseline),
                );
                match shard.get_mut(&batch.device) {
                    Some(s) => s,
                    None => unreachable!("just inserted"),
                }
            }
        };
        state.last_seen_ms = now;
        let last = batch.last_seq();
        if last <= state.accepted {
            return Admit::Duplicate {
                durable: (last <= state.durable).then_some(state.durable),
            };
        }
        if batch.first_seq > state.accepted + 1 && state.behind {
            debug!(
                device = %batch.device,
                epoch = batch.epoch,
                spooled_upto = state.accepted,
                first_seq = batch.first_seq,
                "device resumes past the spooled state (acked before the restart)"
            );
            state.pending.push_back(Pending {
                first: state.accepted + 1,
                last: batch.first_seq - 1,
                done: true,
                dropped: false,
                at_ms: now,
            });
            state.accepted = batch.first_seq - 1;
            state.advance(&batch.device);
        }
        if batch.first_seq > state.accepted + 1 {
            return Admit::Gap {
                expected: state.accepted + 1,
            };
        }
        let mut batch = batch;
        if batch.first_seq <= state.accepted {
            // Overlap: keep only the new readings. `skip < readings.len()` because
            // `last > accepted`.
            let skip = usize::try_from(state.accepted + 1 - batch.first_seq).unwrap_or(0);
            batch.readings.drain(..skip);
            batch.first_seq = state.accepted + 1;
        }
        state.pending.push_back(Pending {
            first: batch.first_seq,
            last,
            done: false,
            dropped: false,
            at_ms: now,
        });
        state.accepted = last;
        state.behind = false;
        Admit::Accept(batch)
    }

    /// The pipeline could not take an accepted batch (queue or spool full): forget it and
    /// everything accepted after it for this device, so the device's resend is taken again.
    pub fn reject(&self, device: &DeviceId, epoch: u64, first_seq: u64) {
        let mut shard = self.shard(device).lock();
        let Some(state) = shard.get_mut(device) else {
            return;
        };
        if state.epoch != epoch || first_seq <= state.durable {
            return;
        }
        state.pending.retain(|p| p.first < first_seq);
        state.accepted = state.accepted.min(first_seq - 1).max(state.durable);
    }

    /// Whether `first..=last` of `(device, epoch)` is still an accepted, not yet durable batch.
    /// `false` once a [`Sequencer::reject`] of it or of an earlier batch forgot it: such a batch
    /// must not be written anywhere (it would land ahead of the device's resend of the earlier
    /// one, and again after it).
    #[must_use]
    pub fn is_pending(&self, device: &DeviceId, epoch: u64, first: u64, last: u64) -> bool {
        let shard = self.shard(device).lock();
        shard.get(device).is_some_and(|s| {
            s.epoch == epoch
                && s.pending
                    .iter()
                    .any(|p| !p.dropped && !p.done && p.first == first && p.last == last)
        })
    }

    /// Marks `first..=last` of `(device, epoch)` durable. Returns the device's new durable seq
    /// when it advanced (the ack to send), `None` otherwise (stale epoch, unknown batch, or a
    /// hole before it still in flight).
    pub fn durable(&self, device: &DeviceId, epoch: u64, first: u64, last: u64) -> Option<u64> {
        let mut shard = self.shard(device).lock();
        let state = shard.get_mut(device)?;
        if state.epoch != epoch {
            return None;
        }
        let p = state
            .pending
            .iter_mut()
            .find(|p| !p.dropped && p.first == first && p.last == last)?;
        p.done = true;
        let before = state.durable;
        state.advance(device);
        (state.durable > before).then_some(state.durable)
    }

    /// Applies a device's floor declaration (see the module doc). Returns the durable seq to
    /// ack now: the new one when the declared range let `durable` advance, the current one when
    /// the floor is already covered by it (a re-ack, as for a duplicate batch). `None` while
    /// batches accepted before the range are still in flight (their durability acks past it),
    /// and for an unknown device or another epoch.
    #[must_use]
    pub fn floor(&self, floor: &Floor) -> Option<u64> {
        let now = wall_ms();
        let mut shard = self.shard(&floor.device).lock();
        let state = shard.get_mut(&floor.device)?;
        if state.epoch != floor.epoch {
            return None;
        }
        let below = floor.first_seq.saturating_sub(1);
        if below <= state.accepted {
            return (below <= state.durable && state.durable > 0).then_some(state.durable);
        }
        state.pending.push_back(Pending {
            first: state.accepted + 1,
            last: below,
            done: true,
            dropped: true,
            at_ms: now,
        });
        state.accepted = below;
        let before = state.durable;
        state.advance(&floor.device);
        (state.durable > before).then_some(state.durable)
    }

    /// Restores state found on disk at start-up: `durable` readings are durable, `pending`
    /// batches (first, last) are in flight (not durable yet). `behind`: the previous process
    /// may have acked past what the spool recorded (see the module doc).
    pub fn seed(
        &self,
        device: DeviceId,
        epoch: u64,
        durable: u64,
        pending: &[(u64, u64)],
        behind: bool,
    ) {
        let now = wall_ms();
        let mut shard = self.shard(&device).lock();
        let mut st = DeviceState::new(epoch, durable);
        st.behind = behind;
        for &(first, last) in pending {
            if first == st.accepted + 1 {
                st.pending.push_back(Pending {
                    first,
                    last,
                    done: false,
                    dropped: false,
                    at_ms: now,
                });
                st.accepted = last;
            }
        }
        shard.insert(device, st);
    }

    /// The device's (epoch, durable seq), if known.
    #[must_use]
    pub fn position(&self, device: &DeviceId) -> Option<(u64, u64)> {
        let shard = self.shard(device).lock();
        shard.get(device).map(|s| (s.epoch, s.durable))
    }

    /// One device's state for operators (`/api/v1/devices/{id}`).
    #[must_use]
    pub fn device(&self, device: &DeviceId) -> Option<DeviceView> {
        let shard = self.shard(device).lock();
        shard.get(device).map(|s| DeviceView::of(device, s))
    }

    /// Every device's state for operators, in no particular order. Takes each shard lock once,
    /// for as long as copying its entries takes (about 1,250 small copies per shard at 20,000
    /// devices); the link consumer waits at most that long for one shard.
    #[must_use]
    pub fn snapshot(&self) -> Vec<DeviceView> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let shard = shard.lock();
            out.reserve(shard.len());
            out.extend(shard.iter().map(|(d, s)| DeviceView::of(d, s)));
        }
        out
    }
}

/// A copy of one device's sequencing state (see [`Sequencer::snapshot`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceView {
    pub device: DeviceId,
    pub epoch: u64,
    /// Highest seq handed to the pipeline.
    pub accepted: u64,
    /// Highest seq durable (acked, or ackable) with everything before it.
    pub durable: u64,
    /// Accepted batches not yet durable, and device-declared dropped ranges not yet passed.
    pub pending: usize,
    /// Wall clock (ms) when the oldest not-yet-durable batch was accepted.
    pub oldest_pending_ms: Option<u64>,
    /// Wall clock (ms) of the device's last batch; 0 = none since this process started.
    pub last_seen_ms: u64,
    /// Wall clock (ms) when `durable` last advanced; 0 = not since this process started.
    pub durable_ms: u64,
}

impl DeviceView {
    fn of(device: &DeviceId, s: &DeviceState) -> Self {
        Self {
            device: device.clone(),
            epoch: s.epoch,
            accepted: s.accepted,
            durable: s.durable,
            pending: s.pending.len(),
            oldest_pending_ms: s.pending.iter().find(|p| !p.done).map(|p| p.at_ms),
            last_seen_ms: s.last_seen_ms,
            durable_ms: s.durable_ms,
        }
    }
}

/// Milliseconds since the Unix epoch (operators' timestamps only; sequencing never uses it).
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use breakwater_protocol::Reading;
    use proptest::prelude::*;

    fn batch(epoch: u64, first: u64, n: usize) -> Batch {
        Batch {
            device: DeviceId::parse("d").unwrap(),
            epoch,
            first_seq: first,
            readings: (0..n).map(|i| Reading::new("m", i as i64, 1)).collect(),
        }
    }

    fn dev() -> DeviceId {
        DeviceId::parse("d").unwrap()
    }

    #[test]
    fn duplicates_gaps_and_trims() {
        let s = Sequencer::new();
        assert!(matches!(s.admit(batch(1, 1, 5)), Admit::Accept(_)));
        // In flight, not durable: duplicate without re-ack.
        assert_eq!(s.admit(batch(1, 1, 5)), Admit::Duplicate { durable: None });
        assert_eq!(s.admit(batch(1, 7, 2)), Admit::Gap { expected: 6 });
        // Overlap 4..=8 -> 6..=8
        match s.admit(batch(1, 4, 5)) {
            Admit::Accept(b) => {
                assert_eq!(b.first_seq, 6);
                assert_eq!(b.readings.len(), 3);
                assert_eq!(b.readings[0].value, breakwater_protocol::Value::I64(2));
            }
            other => panic!("{other:?}"),
        }
        // Durable out of order: second batch first does not advance past the first.
        assert_eq!(s.durable(&dev(), 1, 6, 8), None);
        assert_eq!(s.durable(&dev(), 1, 1, 5), Some(8));
        assert_eq!(
            s.admit(batch(1, 1, 5)),
            Admit::Duplicate { durable: Some(8) }
        );
    }

    #[test]
    fn new_epoch_resets_and_stale_reports_are_ignored() {
        let s = Sequencer::new();
        assert!(matches!(s.admit(batch(1, 1, 5)), Admit::Accept(_)));
        assert!(matches!(s.admit(batch(2, 1, 3)), Admit::Accept(_)));
        assert_eq!(s.durable(&dev(), 1, 1, 5), None);
        assert_eq!(s.durable(&dev(), 2, 1, 3), Some(3));
    }

    #[test]
    fn reject_rewinds_so_the_resend_is_taken() {
        let s = Sequencer::new();
        assert!(matches!(s.admit(batch(1, 1, 5)), Admit::Accept(_)));
        assert!(matches!(s.admit(batch(1, 6, 5)), Admit::Accept(_)));
        assert!(matches!(s.admit(batch(1, 11, 5)), Admit::Accept(_)));
        s.reject(&dev(), 1, 6);
        // 11.. is now a gap, 6.. is taken again.
        assert_eq!(s.admit(batch(1, 11, 5)), Admit::Gap { expected: 6 });
        assert!(matches!(s.admit(batch(1, 6, 5)), Admit::Accept(_)));
        assert_eq!(s.durable(&dev(), 1, 1, 5), Some(5));
        assert_eq!(s.durable(&dev(), 1, 6, 10), Some(10));
    }

    #[test]
    fn a_reject_forgets_the_later_batches_still_queued() {
        let s = Sequencer::new();
        assert!(matches!(s.admit(batch(1, 1, 5)), Admit::Accept(_)));
        assert!(matches!(s.admit(batch(1, 6, 5)), Admit::Accept(_)));
        assert!(s.is_pending(&dev(), 1, 6, 10));
        s.reject(&dev(), 1, 1);
        assert!(!s.is_pending(&dev(), 1, 1, 5));
        assert!(!s.is_pending(&dev(), 1, 6, 10));
        assert!(matches!(s.admit(batch(1, 1, 5)), Admit::Accept(_)));
        assert!(s.is_pending(&dev(), 1, 1, 5));
        assert_eq!(s.durable(&dev(), 1, 1, 5), Some(5));
        assert!(
            !s.is_pending(&dev(), 1, 1, 5),
            "durable is no longer pending"
        );
        assert!(!s.is_pending(&dev(), 2, 1, 5), "another epoch");
    }

    #[test]
    fn first_batch_rejected_still_blocks_later_ones() {
        // An unknown device whose first batch is refused must not get a later batch acked
        // (the ack would claim the refused readings).
        let s = Sequencer::new();
        assert!(matches!(s.admit(batch(1, 500, 5)), Admit::Accept(_)));
        s.reject(&dev(), 1, 500);
        assert_eq!(s.admit(batch(1, 505, 5)), Admit::Gap { expected: 500 });
    }

    #[test]
    fn seed_restores_durable_and_pending() {
        let s = Sequencer::new();
        s.seed(dev(), 7, 10, &[(11, 20), (21, 30)], false);
        assert_eq!(
            s.admit(batch(7, 11, 10)),
            Admit::Duplicate { durable: None }
        );
        assert_eq!(
            s.admit(batch(7, 1, 10)),
            Admit::Duplicate { durable: Some(10) }
        );
        assert!(matches!(s.admit(batch(7, 31, 1)), Admit::Accept(_)));
        assert_eq!(s.durable(&dev(), 7, 11, 20), Some(20));
    }

    #[test]
    fn seeded_behind_takes_the_first_batch_past_the_spool_then_gaps_again() {
        let s = Sequencer::new();
        // The spool recorded up to 10 with 11..=20 undelivered; the device was acked to 40.
        s.seed(dev(), 7, 10, &[(11, 20)], true);
        assert!(matches!(s.admit(batch(7, 41, 5)), Admit::Accept(_)));
        // 41..=45 durable first: the ack still waits for the seeded batch.
        assert_eq!(s.durable(&dev(), 7, 41, 45), None);
        assert_eq!(s.durable(&dev(), 7, 11, 20), Some(45));
        // The flag is gone: a later gap is a gap.
        assert_eq!(s.admit(batch(7, 50, 5)), Admit::Gap { expected: 46 });

        // Not behind: the same batch is a gap.
        let s = Sequencer::new();
        s.seed(dev(), 7, 10, &[], false);
        assert_eq!(s.admit(batch(7, 41, 5)), Admit::Gap { expected: 11 });
        // Behind, nothing pending: acked as soon as it is durable.
        let s = Sequencer::new();
        s.seed(dev(), 7, 10, &[], true);
        assert!(matches!(s.admit(batch(7, 41, 5)), Admit::Accept(_)));
        assert_eq!(s.durable(&dev(), 7, 41, 45), Some(45));
        // A resend below the spooled state is still a duplicate.
        let s = Sequencer::new();
        s.seed(dev(), 7, 10, &[], true);
        assert_eq!(
            s.admit(batch(7, 6, 5)),
            Admit::Duplicate { durable: Some(10) }
        );
    }

    fn floor(epoch: u64, first_seq: u64) -> Floor {
        Floor {
            device: dev(),
            epoch,
            first_seq,
        }
    }

    #[test]
    fn floor_acks_past_a_device_drop_at_once_when_nothing_is_in_flight() {
        let s = Sequencer::new();
        assert!(matches!(s.admit(batch(1, 1, 5)), Admit::Accept(_)));
        assert_eq!(s.durable(&dev(), 1, 1, 5), Some(5));
        // The device dropped 6..=20 before sending them: without the floor, 21.. is a gap.
        assert_eq!(s.admit(batch(1, 21, 5)), Admit::Gap { expected: 6 });
        assert_eq!(s.floor(&floor(1, 21)), Some(20));
        assert_eq!(s.position(&dev()), Some((1, 20)));
        assert!(matches!(s.admit(batch(1, 21, 5)), Admit::Accept(_)));
        assert_eq!(s.durable(&dev(), 1, 21, 25), Some(25));
        // Declared again (a new connection): covered, re-acked, nothing moves.
        assert_eq!(s.floor(&floor(1, 21)), Some(25));
        assert_eq!(s.position(&dev()), Some((1, 25)));
    }

    #[test]
    fn floor_waits_for_the_batches_accepted_before_it() {
        let s = Sequencer::new();
        assert!(matches!(s.admit(batch(1, 1, 5)), Admit::Accept(_)));
        assert!(matches!(s.admit(batch(1, 6, 5)), Admit::Accept(_)));
        // 11..=30 dropped at the device while 1..=10 are still on their way to Kafka.
        assert_eq!(s.floor(&floor(1, 31)), None, "1..=10 are not durable yet");
        assert!(matches!(s.admit(batch(1, 31, 5)), Admit::Accept(_)));
        assert_eq!(s.position(&dev()), Some((1, 0)));
        // Out of order: 6..=10 first does not pass 1..=5.
        assert_eq!(s.durable(&dev(), 1, 6, 10), None);
        // 1..=5 durable: durable passes 6..=10 and the dropped 11..=30, stops before 31..=35.
        assert_eq!(s.durable(&dev(), 1, 1, 5), Some(30));
        assert_eq!(s.durable(&dev(), 1, 31, 35), Some(35));
        // A floor inside what was accepted moves nothing backwards or forwards.
        assert_eq!(s.floor(&floor(1, 3)), Some(35));
        assert_eq!(s.position(&dev()), Some((1, 35)));
    }

    #[test]
    fn floor_below_pending_batches_changes_nothing_and_does_not_re_ack() {
        let s = Sequencer::new();
        assert!(matches!(s.admit(batch(1, 1, 10)), Admit::Accept(_)));
        // Floor 6: 1..=5 were dropped after the batch was sent; the batch is in flight.
        assert_eq!(s.floor(&floor(1, 6)), None);
        assert_eq!(s.position(&dev()), Some((1, 0)));
        assert_eq!(s.durable(&dev(), 1, 1, 10), Some(10));
    }

    #[test]
    fn floor_for_unknown_device_or_other_epoch_is_ignored() {
        let s = Sequencer::new();
        assert_eq!(s.floor(&floor(1, 50)), None);
        assert_eq!(s.devices(), 0);
        assert!(matches!(s.admit(batch(1, 1, 5)), Admit::Accept(_)));
        assert_eq!(s.floor(&floor(2, 50)), None);
        assert_eq!(s.position(&dev()), Some((1, 0)));
        assert_eq!(s.admit(batch(1, 6, 1)), Admit::Accept(batch(1, 6, 1)));
    }

    #[test]
    fn rejected_batch_before_a_floor_forgets_the_range_until_declared_again() {
        let s = Sequencer::new();
        assert!(matches!(s.admit(batch(1, 1, 5)), Admit::Accept(_)));
        assert!(matches!(s.admit(batch(1, 6, 5)), Admit::Accept(_)));
        assert_eq!(s.floor(&floor(1, 21)), None);
        // The spool refuses 6..=10: the device resends from 6, but it dropped 6..=20 meanwhile
        // and declares its floor again before sending 21...
        s.reject(&dev(), 1, 6);
        assert_eq!(s.admit(batch(1, 21, 5)), Admit::Gap { expected: 6 });
        assert_eq!(s.floor(&floor(1, 21)), None, "1..=5 still in flight");
        assert!(matches!(s.admit(batch(1, 21, 5)), Admit::Accept(_)));
        assert_eq!(s.durable(&dev(), 1, 1, 5), Some(20));
        assert_eq!(s.durable(&dev(), 1, 21, 25), Some(25));
    }

    #[test]
    fn floor_after_restart_seed_passes_the_unspooled_range() {
        // Spool mode restart: 1..=10 spooled and durable; the device dropped 11..=40.
        let s = Sequencer::new();
        s.seed(dev(), 7, 10, &[], false);
        assert_eq!(s.floor(&floor(7, 41)), Some(40));
        // Kafka mode restart: 11..=20 still in the spool, not delivered.
        let s = Sequencer::new();
        s.seed(dev(), 7, 10, &[(11, 20)], false);
        assert_eq!(s.floor(&floor(7, 41)), None);
        assert_eq!(s.durable(&dev(), 7, 11, 20), Some(40));
    }

    proptest! {
        /// Against a model: whatever arrives (resends, overlaps, gaps, rejects, out-of-order
        /// durability), the durable seq never exceeds what was accepted contiguously and
        /// made durable, and acks never go backwards.
        #[test]
        fn never_acks_past_what_is_durable(ops in proptest::collection::vec((0u8..4, 1u64..40, 1usize..6), 1..200)) {
            let s = Sequencer::new();
            let mut accepted: Vec<(u64, u64)> = Vec::new();
            let mut durable_set = std::collections::BTreeSet::new();
            let mut last_ack = 0;
            for (op, a, n) in ops {
                match op {
                    0 | 1 => {
                        if let Admit::Accept(b) = s.admit(batch(1, a, n)) {
                            accepted.push((b.first_seq, b.last_seq()));
                        }
                    }
                    2 => {
                        if !accepted.is_empty() {
                            let i = (a as usize) % accepted.len();
                            let (f, l) = accepted.remove(i);
                            if let Some(d) = s.durable(&dev(), 1, f, l) {
                                prop_assert!(d >= last_ack);
                                last_ack = d;
                            }
                            durable_set.extend(f..=l);
                        }
                    }
                    _ => {
                        if !accepted.is_empty() {
                            let i = (a as usize) % accepted.len();
                            let (f, _) = accepted[i];
                            s.reject(&dev(), 1, f);
                            accepted.retain(|&(x, _)| x < f);
                        }
                    }
                }
                if last_ack > 0 {
                    let base = s.position(&dev()).map(|p| p.1).unwrap();
                    prop_assert_eq!(base, last_ack.max(base));
                }
            }
            // Everything acked was made durable (from the first batch's baseline on).
            if let Some(&min) = durable_set.iter().next() {
                for seq in min..=last_ack {
                    prop_assert!(durable_set.contains(&seq), "acked {} but {} not durable", last_ack, seq);
                }
            }
        }

        /// With floors in the mix (a device that never sends below its last floor): an ack
        /// never covers a batch still in flight, every acked seq was made durable or declared
        /// dropped while not in flight, and acks never go backwards.
        #[test]
        fn floors_never_ack_past_a_batch_in_flight(ops in proptest::collection::vec((0u8..5, 1u64..60, 1usize..6), 1..200)) {
            let s = Sequencer::new();
            let mut in_flight: Vec<(u64, u64)> = Vec::new();
            let mut durable_set = std::collections::BTreeSet::new();
            let mut declared = std::collections::BTreeSet::new();
            let mut base = None;
            let mut floor_max = 1;
            let mut last_ack = 0;
            for (op, a, n) in ops {
                match op {
                    0 | 1 => {
                        if let Admit::Accept(b) = s.admit(batch(1, a.max(floor_max), n)) {
                            base.get_or_insert(b.first_seq);
                            in_flight.push((b.first_seq, b.last_seq()));
                        }
                    }
                    2 => {
                        if !in_flight.is_empty() {
                            let i = (a as usize) % in_flight.len();
                            let (f, l) = in_flight.remove(i);
                            durable_set.extend(f..=l);
                            if let Some(d) = s.durable(&dev(), 1, f, l) {
                                prop_assert!(d >= last_ack);
                                last_ack = d;
                            }
                        }
                    }
                    3 => {
                        if !in_flight.is_empty() {
                            let i = (a as usize) % in_flight.len();
                            let (f, _) = in_flight[i];
                            s.reject(&dev(), 1, f);
                            in_flight.retain(|&(x, _)| x < f);
                        }
                    }
                    _ => {
                        floor_max = floor_max.max(a);
                        let pending = |x: u64| in_flight.iter().any(|&(f, l)| (f..=l).contains(&x));
                        declared.extend((1..floor_max).filter(|&x| !pending(x)));
                        if let Some(d) = s.floor(&floor(1, floor_max)) {
                            prop_assert!(d >= last_ack);
                            last_ack = d;
                        }
                    }
                }
                for &(f, _) in &in_flight {
                    prop_assert!(f > last_ack, "acked {} while {}.. is in flight", last_ack, f);
                }
            }
            if let Some(base) = base {
                for seq in base..=last_ack {
                    prop_assert!(
                        durable_set.contains(&seq) || declared.contains(&seq),
                        "acked {} but {} was neither durable nor declared dropped", last_ack, seq
                    );
                }
            }
        }
    }
}

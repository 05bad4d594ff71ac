//! Connectivity and activity sessions of one device.
//!
//! * Connectivity: opened by a `birth` fleet event, closed by `death` (graceful) or `lost`
//!   (last-will), or by the next `birth` when the end was never seen (`superseded`). Its
//!   `readings` counts the readings processed while it was open with a timestamp at or after its
//!   start. Telemetry and fleet events are different topics, so their relative processing order
//!   is not fixed: readings racing a birth or death can fall on either side of the boundary, and
//!   a replay may count them differently. Id, start, end and reason do not depend on it.
//! * Activity: a run of readings (event time) without a gap longer than `gap`. Closed when the
//!   device's watermark passes `last + gap`: every later reading is at or after the watermark
//!   and so would start a new session anyway, which makes a closed activity session final and
//!   its content independent of when the close is noticed.

use serde::{Deserialize, Serialize};

use crate::ids::IdHasher;
use crate::output::{EndReason, SessionKind, SessionRecord};

/// An open connectivity session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connectivity {
    pub epoch: u64,
    pub start: u64,
    pub readings: u64,
}

impl Connectivity {
    #[must_use]
    pub fn id(device: &str, epoch: u64, start: u64) -> String {
        IdHasher::new("session/connectivity")
            .str(device)
            .u64(epoch)
            .u64(start)
            .finish()
    }

    #[must_use]
    pub fn record(&self, device: &str, end: u64, reason: EndReason) -> SessionRecord {
        let end = end.max(self.start);
        SessionRecord {
            id: Self::id(device, self.epoch, self.start),
            device: device.to_owned(),
            kind: SessionKind::Connectivity,
            epoch: self.epoch,
            start: self.start,
            end,
            duration_ms: end - self.start,
            readings: self.readings,
            end_reason: reason,
        }
    }
}

/// What a fleet event did to the connectivity session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnChange {
    /// A repeat of the birth that opened the open session: ignored.
    Duplicate,
    /// An end with no open session (its birth came before our first offset, or a repeat).
    Unmatched,
    /// Opened a session (and possibly closed the one it superseded).
    Opened(Option<SessionRecord>),
    /// Closed a session.
    Closed(SessionRecord),
}

/// Applies a birth at `ts` in `epoch`.
pub fn birth(conn: &mut Option<Connectivity>, device: &str, epoch: u64, ts: u64) -> ConnChange {
    if let Some(c) = conn {
        if c.epoch == epoch && c.start == ts {
            return ConnChange::Duplicate;
        }
    }
    let superseded = conn
        .take()
        .map(|c| c.record(device, ts, EndReason::Superseded));
    *conn = Some(Connectivity {
        epoch,
        start: ts,
        readings: 0,
    });
    ConnChange::Opened(superseded)
}

/// Applies a death or last-will at `ts`.
pub fn end(
    conn: &mut Option<Connectivity>,
    device: &str,
    ts: u64,
    reason: EndReason,
) -> ConnChange {
    match conn.take() {
        Some(c) => ConnChange::Closed(c.record(device, ts, reason)),
        None => ConnChange::Unmatched,
    }
}

/// An activity session being built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveRun {
    pub epoch: u64,
    pub start: u64,
    pub last: u64,
    pub readings: u64,
}

impl ActiveRun {
    #[must_use]
    pub fn record(&self, device: &str) -> SessionRecord {
        SessionRecord {
            id: IdHasher::new("session/activity")
                .str(device)
                .u64(self.start)
                .finish(),
            device: device.to_owned(),
            kind: SessionKind::Activity,
            epoch: self.epoch,
            start: self.start,
            end: self.last,
            duration_ms: self.last - self.start,
            readings: self.readings,
            end_reason: EndReason::Inactivity,
        }
    }
}

/// The open activity runs of a device, sorted by start, pairwise more than `gap` apart.
/// Almost always zero or one; out-of-order readings within the allowed lateness can open an
/// earlier one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activity {
    runs: Vec<ActiveRun>,
}

impl Activity {
    /// Adds a reading at `ts` (not older than the watermark).
    #[inline]
    pub fn reading(&mut self, ts: u64, epoch: u64, gap: u64) {
        // Fast path: inside or just after the newest run.
        if let Some(r) = self.runs.last_mut() {
            if ts >= r.start && ts <= r.last.saturating_add(gap) {
                r.last = r.last.max(ts);
                r.readings += 1;
                return;
            }
        }
        self.reading_slow(ts, epoch, gap);
    }

    fn reading_slow(&mut self, ts: u64, epoch: u64, gap: u64) {
        // Runs this reading touches: ts within [start - gap, last + gap].
        let touches =
            |r: &ActiveRun| ts.saturating_add(gap) >= r.start && ts <= r.last.saturating_add(gap);
        let first = self.runs.iter().position(touches);
        match first {
            None => {
                let at = self.runs.partition_point(|r| r.start < ts);
                self.runs.insert(
                    at,
                    ActiveRun {
                        epoch,
                        start: ts,
                        last: ts,
                        readings: 1,
                    },
                );
            }
            Some(i) => {
                let r = &mut self.runs[i];
                if ts < r.start {
                    r.start = ts;
                    r.epoch = epoch;
                }
                r.last = r.last.max(ts);
                r.readings += 1;
                // The reading may bridge this run and the next ones.
                while i + 1 < self.runs.len()
                    && self.runs[i + 1].start <= self.runs[i].last.saturating_add(gap)
                {
                    let next = self.runs.remove(i + 1);
                    let r = &mut self.runs[i];
                    r.last = r.last.max(next.last);
                    r.readings += next.readings;
                }
            }
        }
    }

    /// Closes the runs with `last + gap < watermark`, oldest first.
    pub fn close(&mut self, watermark: u64, gap: u64, mut f: impl FnMut(&ActiveRun)) {
        let n = self
            .runs
            .iter()
            .take_while(|r| r.last.saturating_add(gap) < watermark)
            .count();
        for r in self.runs.drain(..n) {
            f(&r);
        }
    }

    /// Removes and returns every open run (the device is being evicted).
    pub fn take_all(&mut self) -> Vec<ActiveRun> {
        std::mem::take(&mut self.runs)
    }

    #[must_use]
    pub fn open_runs(&self) -> &[ActiveRun] {
        &self.runs
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn connectivity_lifecycle() {
        let mut c = None;
        assert_eq!(end(&mut c, "d", 5, EndReason::Death), ConnChange::Unmatched);
        assert_eq!(birth(&mut c, "d", 7, 100), ConnChange::Opened(None));
        assert_eq!(birth(&mut c, "d", 7, 100), ConnChange::Duplicate);
        if let Some(s) = &mut c {
            s.readings = 3;
        }
        let ConnChange::Opened(Some(sup)) = birth(&mut c, "d", 7, 300) else {
            panic!("expected a superseded session");
        };
        assert_eq!(
            (sup.start, sup.end, sup.readings, sup.end_reason),
            (100, 300, 3, EndReason::Superseded)
        );
        let ConnChange::Closed(s) = end(&mut c, "d", 450, EndReason::Lost) else {
            panic!("expected a closed session");
        };
        assert_eq!((s.start, s.end, s.duration_ms), (300, 450, 150));
        assert_eq!(s.id, Connectivity::id("d", 7, 300));
        assert_ne!(s.id, sup.id);
        assert!(c.is_none());
    }

    #[test]
    fn activity_splits_on_gap_and_merges_bridges() {
        let mut a = Activity::default();
        for ts in [0, 10, 20] {
            a.reading(ts, 1, 100);
        }
        a.reading(500, 1, 100); // > gap after 20: a new run
        assert_eq!(a.open_runs().len(), 2);
        a.reading(300, 1, 100); // out of order, 280 after the first run, 200 before the second: alone
        assert_eq!(a.open_runs().len(), 3);
        a.reading(110, 1, 100); // extends [0..20] to [0..110]
        assert_eq!(a.open_runs().len(), 3);
        a.reading(200, 1, 100); // bridges [0..110] and [300]
        assert_eq!(a.open_runs().len(), 2);
        a.reading(400, 1, 100); // bridges to [500]
        assert_eq!(a.open_runs().len(), 1);
        let r = a.open_runs()[0];
        assert_eq!((r.start, r.last, r.readings), (0, 500, 8));
        let mut closed = Vec::new();
        a.close(600, 100, |r| closed.push(*r));
        assert!(closed.is_empty(), "500 + 100 is not before 600");
        a.close(601, 100, |r| closed.push(*r));
        assert_eq!(closed.len(), 1);
    }

    proptest! {
        /// Any arrival order of the same timestamps gives the same runs as sorted arrival
        /// (the runs are the connected components of the timestamps under "within gap").
        #[test]
        fn activity_is_order_independent(mut ts in prop::collection::vec(0u64..5_000, 1..100), seed in any::<u64>()) {
            let gap = 150;
            let mut shuffled = ts.clone();
            // Deterministic shuffle from the seed.
            let mut s = seed | 1;
            for i in (1..shuffled.len()).rev() {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                shuffled.swap(i, (s % (i as u64 + 1)) as usize);
            }
            let mut a = Activity::default();
            for &t in &shuffled { a.reading(t, 1, gap); }
            ts.sort_unstable();
            let mut b = Activity::default();
            for &t in &ts { b.reading(t, 1, gap); }
            prop_assert_eq!(a.open_runs(), b.open_runs());
            let total: u64 = a.open_runs().iter().map(|r| r.readings).sum();
            prop_assert_eq!(total, ts.len() as u64);
            for w in a.open_runs().windows(2) {
                prop_assert!(w[1].start > w[0].last + gap);
            }
        }
    }
}

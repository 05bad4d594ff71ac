//! Tumbling event-time windows per (device, metric), with Welford statistics.
//!
//! # Invariants
//! * A window `[start, start + size)` is aligned to multiples of `size` (ms since the Unix
//!   epoch), so every (device, metric) of a partition shares boundaries.
//! * The device's watermark is its own `max event time seen - allowed_lateness` (see `state.rs`).
//!   A reading older than the watermark is late beyond the allowed lateness: it is counted and
//!   dropped before it reaches a window. A window closes once `end <= watermark`; since no later
//!   reading can be older than the watermark, a closed window is final and is emitted once.

use serde::{Deserialize, Serialize};

/// Running count, min, max, mean and variance (Welford's algorithm).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Welford {
    pub count: u64,
    pub mean: f64,
    m2: f64,
    pub min: f64,
    pub max: f64,
}

impl Default for Welford {
    fn default() -> Self {
        Self {
            count: 0,
            mean: 0.0,
            m2: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }
}

impl Welford {
    #[inline]
    pub fn push(&mut self, x: f64) {
        self.count += 1;
        #[allow(clippy::cast_precision_loss)]
        let n = self.count as f64;
        let d = x - self.mean;
        self.mean += d / n;
        self.m2 += d * (x - self.mean);
        if x < self.min {
            self.min = x;
        }
        if x > self.max {
            self.max = x;
        }
    }

    /// Population variance; 0 for fewer than two values.
    #[must_use]
    pub fn variance(&self) -> f64 {
        if self.count < 2 {
            0.0
        } else {
            #[allow(clippy::cast_precision_loss)]
            let n = self.count as f64;
            (self.m2 / n).max(0.0)
        }
    }

    #[must_use]
    pub fn stddev(&self) -> f64 {
        self.variance().sqrt()
    }
}

/// Start of the window that holds `ts`.
#[inline]
#[must_use]
pub fn window_start(ts: u64, size: u64) -> u64 {
    ts - ts % size
}

/// The open windows of one (device, metric), oldest first. Usually one or two.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricWindows {
    open: Vec<(u64, Welford)>,
}

impl MetricWindows {
    /// Adds a value to the window holding `ts`. The caller has already dropped late readings.
    #[inline]
    pub fn push(&mut self, ts: u64, x: f64, size: u64) {
        let start = window_start(ts, size);
        // Fast path: the newest window.
        if let Some((s, w)) = self.open.last_mut() {
            if *s == start {
                w.push(x);
                return;
            }
        }
        match self.open.binary_search_by_key(&start, |(s, _)| *s) {
            Ok(i) => self.open[i].1.push(x),
            Err(i) => {
                let mut w = Welford::default();
                w.push(x);
                self.open.insert(i, (start, w));
            }
        }
    }

    /// Removes and reports every window with `end <= watermark`, oldest first.
    pub fn close(&mut self, watermark: u64, size: u64, mut f: impl FnMut(u64, &Welford)) {
        let n = self
            .open
            .iter()
            .take_while(|(s, _)| s.saturating_add(size) <= watermark)
            .count();
        for (s, w) in self.open.drain(..n) {
            f(s, &w);
        }
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    #[must_use]
    pub fn open_windows(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn welford_matches_two_pass() {
        let xs = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0];
        let mut w = Welford::default();
        for x in xs {
            w.push(x);
        }
        assert_eq!(w.count, 8);
        assert!((w.mean - 5.0).abs() < 1e-12);
        assert!((w.stddev() - 2.0).abs() < 1e-12);
        assert_eq!((w.min, w.max), (2.0, 9.0));
        assert_eq!(Welford::default().stddev(), 0.0);
    }

    #[test]
    fn out_of_order_windows_close_in_order() {
        let mut m = MetricWindows::default();
        m.push(1_050, 1.0, 1_000);
        m.push(2_010, 3.0, 1_000);
        m.push(1_999, 2.0, 1_000); // out of order, still in the open window [1000, 2000)
        m.push(10, 9.0, 1_000); // an older window, opened behind the others
        assert_eq!(m.open_windows(), 3);
        let mut closed = Vec::new();
        m.close(1_999, 1_000, |s, w| closed.push((s, w.count, w.mean)));
        assert_eq!(closed, vec![(0, 1, 9.0)]);
        m.close(2_000, 1_000, |s, w| closed.push((s, w.count, w.mean)));
        assert_eq!(closed[1], (1_000, 2, 1.5));
        assert_eq!(m.open_windows(), 1);
    }

    proptest! {
        /// Whatever the arrival order, each value lands in exactly one window and the window
        /// statistics equal a direct computation.
        #[test]
        fn windows_partition_the_values(vals in prop::collection::vec((0u64..10_000, -1e6f64..1e6), 1..300)) {
            let size = 700;
            let mut m = MetricWindows::default();
            for &(ts, x) in &vals {
                m.push(ts, x, size);
            }
            let mut total = 0;
            m.close(u64::MAX, size, |s, w| {
                let inside: Vec<f64> = vals.iter().filter(|(t, _)| window_start(*t, size) == s).map(|(_, x)| *x).collect();
                assert_eq!(inside.len() as u64, w.count);
                let mean = inside.iter().sum::<f64>() / inside.len() as f64;
                assert!((mean - w.mean).abs() <= 1e-6 * (1.0 + mean.abs()));
                let min = inside.iter().copied().fold(f64::INFINITY, f64::min);
                assert_eq!(min, w.min);
                total += w.count;
            });
            prop_assert_eq!(total, vals.len() as u64);
            prop_assert!(m.is_empty());
        }
    }
}

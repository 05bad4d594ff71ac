//! Baselines and anomaly tests.
//!
//! * Per (device, metric): an exponentially weighted mean and variance of the readings. After
//!   `warmup` readings, a reading with `|x - mean| / stddev > k` is an anomaly. The score is taken
//!   against the baseline *before* the reading updates it.
//! * Per input partition: connects (births and refusals) per fleet window against an EWMA of
//!   earlier windows' counts; a window far above its baseline is a reconnect storm. A storm
//!   window does not update the baseline, so a long storm keeps being flagged.

use serde::{Deserialize, Serialize};

/// Exponentially weighted mean and variance.
///
/// While fewer than `1 / alpha` values were seen, the weight is `1 / n` (a plain running mean),
/// so the baseline does not start biased towards the first value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Ewma {
    pub n: u64,
    pub mean: f64,
    pub var: f64,
}

impl Ewma {
    #[inline]
    pub fn update(&mut self, x: f64, alpha: f64) {
        self.n += 1;
        #[allow(clippy::cast_precision_loss)]
        let a = alpha.max(1.0 / self.n as f64);
        let d = x - self.mean;
        let inc = a * d;
        self.mean += inc;
        self.var = (1.0 - a) * (self.var + d * inc);
    }

    #[must_use]
    pub fn stddev(&self) -> f64 {
        self.var.max(0.0).sqrt()
    }

    /// The z-score of `x` against this baseline, with `min_stddev` as a floor for the spread;
    /// `None` during warm-up.
    #[inline]
    #[must_use]
    pub fn z(&self, x: f64, warmup: u64, min_stddev: f64) -> Option<f64> {
        (self.n >= warmup).then(|| (x - self.mean) / self.stddev().max(min_stddev))
    }
}

/// Parameters of the per-metric test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricParams {
    pub alpha: f64,
    pub k: f64,
    pub warmup: u64,
    pub min_stddev: f64,
}

/// The verdict on one reading: `Some((z, mean, stddev))` when it is an anomaly.
#[inline]
pub fn score_and_learn(b: &mut Ewma, x: f64, p: &MetricParams) -> Option<(f64, f64, f64)> {
    let verdict = b
        .z(x, p.warmup, p.min_stddev)
        .filter(|z| z.abs() > p.k)
        .map(|z| (z, b.mean, b.stddev()));
    b.update(x, p.alpha);
    verdict
}

/// Parameters of the reconnect-storm test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FleetParams {
    /// Window size, ms.
    pub window: u64,
    pub alpha: f64,
    pub k: f64,
    pub warmup: u64,
    /// A window needs at least this many connects to be a storm (and 1 is the stddev floor).
    pub min_connects: u64,
}

/// A closed fleet window that is a storm.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Storm {
    pub start: u64,
    pub connects: u64,
    pub mean: f64,
    pub stddev: f64,
    pub z: f64,
}

/// Most empty windows filled in at once after a silence; older ones are skipped (the baseline
/// has long converged to ~0 by then).
const MAX_EMPTY_CATCH_UP: u64 = 10_000;

/// Connects per window in one input partition, in event time (gateway clock).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnectWindows {
    /// Open windows `(start, connects)`, oldest first.
    open: Vec<(u64, u64)>,
    /// Every window starting before this was closed (`None` before the first connect).
    closed_until: Option<u64>,
    pub baseline: Ewma,
}

impl ConnectWindows {
    /// Counts a connect at `ts` (the caller has dropped events older than the watermark).
    pub fn connect(&mut self, ts: u64, window: u64) {
        let start = crate::window::window_start(ts, window);
        match self.open.binary_search_by_key(&start, |(s, _)| *s) {
            Ok(i) => self.open[i].1 += 1,
            Err(i) => self.open.insert(i, (start, 1)),
        }
        if self.closed_until.is_none() {
            self.closed_until = Some(start);
        }
    }

    /// Closes every window with `end <= watermark` (empty ones included, so quiet windows
    /// teach the baseline too) and reports the storms.
    pub fn close(&mut self, watermark: u64, p: &FleetParams, mut storm: impl FnMut(Storm)) {
        let Some(mut start) = self.closed_until else {
            return;
        };
        let last_start = crate::window::window_start(watermark, p.window);
        // Windows [start, last_start) are complete.
        if last_start.saturating_sub(start) / p.window > MAX_EMPTY_CATCH_UP {
            let first_open = self.open.first().map_or(last_start, |(s, _)| *s);
            start = first_open.min(last_start);
        }
        while start + p.window <= watermark {
            let connects = match self.open.first() {
                Some(&(s, c)) if s == start => {
                    self.open.remove(0);
                    c
                }
                _ => 0,
            };
            #[allow(clippy::cast_precision_loss)]
            let x = connects as f64;
            let flagged = self
                .baseline
                .z(x, p.warmup, 1.0)
                .filter(|z| *z > p.k && connects >= p.min_connects);
            match flagged {
                Some(z) => storm(Storm {
                    start,
                    connects,
                    mean: self.baseline.mean,
                    stddev: self.baseline.stddev(),
                    z,
                }),
                None => self.baseline.update(x, p.alpha),
            }
            start += p.window;
        }
        self.closed_until = Some(start);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: MetricParams = MetricParams {
        alpha: 0.05,
        k: 4.0,
        warmup: 20,
        min_stddev: 1e-3,
    };

    /// Deterministic noise in [-1, 1].
    fn noise(i: u64) -> f64 {
        let x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11;
        #[allow(clippy::cast_precision_loss)]
        let u = x as f64 / (1u64 << 53) as f64;
        u * 2.0 - 1.0
    }

    #[test]
    fn steady_data_is_not_flagged_and_a_spike_is() {
        let mut b = Ewma::default();
        for i in 0..2_000 {
            assert!(
                score_and_learn(&mut b, 20.0 + noise(i), &P).is_none(),
                "steady reading {i} flagged"
            );
        }
        let (z, mean, _) = score_and_learn(&mut b, 60.0, &P).expect("spike flagged");
        assert!(z > 4.0 && (mean - 20.0).abs() < 0.5);
        // A spike down is flagged too.
        assert!(score_and_learn(&mut b, -30.0, &P).is_some());
    }

    #[test]
    fn nothing_is_flagged_during_warmup() {
        let mut b = Ewma::default();
        for i in 0..19 {
            let x = if i % 2 == 0 { 0.0 } else { 1e9 };
            assert!(score_and_learn(&mut b, x, &P).is_none());
        }
    }

    #[test]
    fn ewma_starts_as_running_mean() {
        let mut b = Ewma::default();
        b.update(10.0, 0.01);
        b.update(20.0, 0.01);
        assert!((b.mean - 15.0).abs() < 1e-12);
        assert!((b.var - 25.0).abs() < 1e-9);
    }

    const F: FleetParams = FleetParams {
        window: 1_000,
        alpha: 0.2,
        k: 5.0,
        warmup: 5,
        min_connects: 20,
    };

    #[test]
    fn reconnect_storm_is_flagged_and_steady_connects_are_not() {
        let mut c = ConnectWindows::default();
        let mut storms = Vec::new();
        // 30 windows with 2..4 connects each, one window with 200.
        for w in 0..30u64 {
            for j in 0..(2 + w % 3) {
                c.connect(w * 1_000 + j * 10, F.window);
            }
            c.close(w * 1_000 + 999, &F, |s| storms.push(s));
        }
        assert!(storms.is_empty(), "{storms:?}");
        for j in 0..200 {
            c.connect(30_000 + j, F.window);
        }
        c.close(31_000, &F, |s| storms.push(s));
        assert_eq!(storms.len(), 1);
        assert_eq!((storms[0].start, storms[0].connects), (30_000, 200));
        // Silence closes empty windows and does not flag them.
        c.close(60_000, &F, |s| storms.push(s));
        assert_eq!(storms.len(), 1);
        assert!(c.baseline.mean < 3.0);
    }
}

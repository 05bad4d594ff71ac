//! Reconnection-burst detection for operators.
//!
//! Connects/s is measured over a sliding window (`burst_window_ms`, in 100 ms buckets) and
//! compared with a baseline: an exponentially weighted moving average of that rate, with time
//! constant `burst_baseline_secs`, updated only outside bursts (a burst must not raise its own
//! bar). A burst starts when the rate exceeds `max(burst_min_rate, burst_factor * baseline)` and
//! ends when it falls below half of that threshold (hysteresis, so a burst hovering at the
//! threshold does not flap).
//!
//! The detector is pure: it takes explicit millisecond timestamps, so tests drive it with a
//! manual clock. [`super::Admission`] feeds it from a monotonic clock and ticks it every second.

use std::collections::VecDeque;

const BUCKET_MS: u64 = 100;

/// A burst state change, for the log line and counters.
#[derive(Debug, Clone, PartialEq)]
pub enum BurstEvent {
    Started {
        at_ms: u64,
        rate: f64,
        baseline: f64,
    },
    Ended {
        at_ms: u64,
        /// Highest windowed connects/s seen during the burst.
        peak_rate: f64,
        /// Connects during the burst, counting the window that set it off.
        connects: u64,
        duration_ms: u64,
    },
}

#[derive(Debug, Clone)]
struct Active {
    started_ms: u64,
    peak_rate: f64,
    connects: u64,
}

/// Sliding-window rate against an EWMA baseline.
#[derive(Debug, Clone)]
pub struct BurstDetector {
    window_ms: u64,
    baseline_ms: f64,
    factor: f64,
    min_rate: f64,
    /// (bucket start ms, connects in it), oldest first, covering at most `window_ms`.
    buckets: VecDeque<(u64, u64)>,
    baseline: f64,
    last_tick_ms: Option<u64>,
    active: Option<Active>,
}

impl BurstDetector {
    #[must_use]
    pub fn new(window_ms: u64, baseline_secs: u64, factor: f64, min_rate: f64) -> Self {
        Self {
            window_ms: window_ms.max(BUCKET_MS),
            #[allow(clippy::cast_precision_loss)]
            baseline_ms: (baseline_secs.saturating_mul(1000)).max(1) as f64,
            factor,
            min_rate,
            buckets: VecDeque::new(),
            baseline: 0.0,
            last_tick_ms: None,
            active: None,
        }
    }

    /// Records one connect at `now_ms`.
    pub fn record(&mut self, now_ms: u64) {
        let bucket = now_ms - now_ms % BUCKET_MS;
        match self.buckets.back_mut() {
            Some((start, n)) if *start == bucket => *n += 1,
            // A late timestamp (another thread's clock read) lands in the newest bucket.
            Some((start, n)) if *start > bucket => *n += 1,
            _ => self.buckets.push_back((bucket, 1)),
        }
        if let Some(a) = &mut self.active {
            a.connects += 1;
        }
        self.expire(now_ms);
    }

    fn expire(&mut self, now_ms: u64) {
        while let Some(&(start, _)) = self.buckets.front() {
            if start + self.window_ms <= now_ms {
                self.buckets.pop_front();
            } else {
                break;
            }
        }
    }

    /// Connects/s over the window ending at `now_ms`.
    #[must_use]
    pub fn rate(&self, now_ms: u64) -> f64 {
        let n: u64 = self
            .buckets
            .iter()
            .filter(|(start, _)| start + self.window_ms > now_ms)
            .map(|(_, n)| n)
            .sum();
        #[allow(clippy::cast_precision_loss)]
        let r = n as f64 * 1000.0 / self.window_ms as f64;
        r
    }

    /// The current baseline, connects/s.
    #[must_use]
    pub fn baseline(&self) -> f64 {
        self.baseline
    }

    /// True while a burst is on.
    #[must_use]
    pub fn active(&self) -> bool {
        self.active.is_some()
    }

    /// The burst going on, if any: (started at ms, peak connects/s so far, connects so far).
    #[must_use]
    pub fn current(&self) -> Option<(u64, f64, u64)> {
        self.active
            .as_ref()
            .map(|a| (a.started_ms, a.peak_rate, a.connects))
    }

    fn threshold(&self) -> f64 {
        (self.factor * self.baseline).max(self.min_rate)
    }

    /// Re-evaluates at `now_ms` (call about once a second): updates the baseline outside bursts
    /// and returns a start or end event.
    pub fn tick(&mut self, now_ms: u64) -> Option<BurstEvent> {
        self.expire(now_ms);
        let rate = self.rate(now_ms);
        let dt = self.last_tick_ms.map_or(0, |t| now_ms.saturating_sub(t));
        self.last_tick_ms = Some(now_ms);
        let threshold = self.threshold();
        match &mut self.active {
            None if rate > threshold => {
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let in_window = (rate * self.window_ms as f64 / 1000.0).round() as u64;
                self.active = Some(Active {
                    started_ms: now_ms,
                    peak_rate: rate,
                    connects: in_window,
                });
                Some(BurstEvent::Started {
                    at_ms: now_ms,
                    rate,
                    baseline: self.baseline,
                })
            }
            None => {
                #[allow(clippy::cast_precision_loss)]
                let alpha = (dt as f64 / self.baseline_ms).min(1.0);
                self.baseline += alpha * (rate - self.baseline);
                None
            }
            Some(a) => {
                a.peak_rate = a.peak_rate.max(rate);
                if rate < threshold / 2.0 {
                    let a = self.active.take()?;
                    Some(BurstEvent::Ended {
                        at_ms: now_ms,
                        peak_rate: a.peak_rate,
                        connects: a.connects,
                        duration_ms: now_ms - a.started_ms,
                    })
                } else {
                    None
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Manual clock: `n` connects spread evenly over `[from, from + ms)`, ticking every second.
    fn feed(
        d: &mut BurstDetector,
        events: &mut Vec<BurstEvent>,
        from: u64,
        ms: u64,
        n: u64,
    ) -> u64 {
        let mut next_tick = from - from % 1000 + 1000;
        for i in 0..n {
            let t = from + i * ms / n.max(1);
            while next_tick <= t {
                events.extend(d.tick(next_tick));
                next_tick += 1000;
            }
            d.record(t);
        }
        let end = from + ms;
        while next_tick <= end {
            events.extend(d.tick(next_tick));
            next_tick += 1000;
        }
        end
    }

    #[test]
    fn window_rate() {
        let mut d = BurstDetector::new(5_000, 60, 4.0, 10.0);
        for t in 0..100 {
            d.record(t * 10); // 100 connects in the first second
        }
        assert!((d.rate(1_000) - 20.0).abs() < 1e-9);
        assert!((d.rate(4_999) - 20.0).abs() < 1e-9);
        assert!(d.rate(6_000) < 1e-9, "all expired");
    }

    #[test]
    fn steady_trickle_is_no_burst_and_sets_the_baseline() {
        let mut d = BurstDetector::new(5_000, 60, 4.0, 10.0);
        let mut ev = Vec::new();
        // 5 connects/s for 10 minutes.
        feed(&mut d, &mut ev, 0, 600_000, 3_000);
        assert!(ev.is_empty(), "{ev:?}");
        assert!(
            (d.baseline() - 5.0).abs() < 0.5,
            "baseline {}",
            d.baseline()
        );
    }

    #[test]
    fn storm_starts_and_ends_a_burst_with_peak_size_duration() {
        let mut d = BurstDetector::new(5_000, 60, 4.0, 10.0);
        let mut ev = Vec::new();
        // Quiet minute at 2/s, then 3,000 devices reconnect over 3 s, then quiet again.
        let t = feed(&mut d, &mut ev, 0, 60_000, 120);
        assert!(ev.is_empty());
        let t = feed(&mut d, &mut ev, t, 3_000, 3_000);
        let t = feed(&mut d, &mut ev, t, 30_000, 60);
        assert_eq!(ev.len(), 2, "{ev:?}");
        let BurstEvent::Started { at_ms, .. } = ev[0] else {
            panic!("{ev:?}")
        };
        assert!((60_000..=61_000).contains(&at_ms), "{at_ms}");
        let BurstEvent::Ended {
            peak_rate,
            connects,
            duration_ms,
            ..
        } = ev[1]
        else {
            panic!("{ev:?}")
        };
        // 3,000 in a 5 s window: the peak is 600/s.
        assert!((550.0..=610.0).contains(&peak_rate), "{peak_rate}");
        // The storm's connects (plus the trickle around it), not the quiet minute.
        assert!((3_000..=3_100).contains(&connects), "{connects}");
        // It lasts while the window holds the storm: ~3 s of storm + part of the window.
        assert!((3_000..=9_000).contains(&duration_ms), "{duration_ms}");
        assert!(!d.active());
        // The burst did not drag the baseline up.
        assert!(d.baseline() < 5.0, "{}", d.baseline());
        let _ = t;
    }

    #[test]
    fn below_min_rate_is_never_a_burst() {
        let mut d = BurstDetector::new(5_000, 60, 4.0, 50.0);
        let mut ev = Vec::new();
        // From zero baseline to 40/s: more than 4x, but under the floor.
        feed(&mut d, &mut ev, 0, 20_000, 800);
        assert!(ev.is_empty(), "{ev:?}");
    }
}

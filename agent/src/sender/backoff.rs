//! Reconnect delays: exponential backoff with full jitter and a cap.
//!
//! Attempt `n` (0-based) waits a uniformly random delay in `[0, min(max, initial * 2^n)]`
//! ("full jitter"), so a fleet cut off at the same instant comes back spread over the whole
//! window instead of in one wave. A gateway hint (`retry_after_ms`) is a floor: the device waits
//! the hint plus the jittered delay, which keeps the spread.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::BackoffConfig;

/// Backoff state of one device.
#[derive(Debug, Clone)]
pub struct Backoff {
    cfg: BackoffConfig,
    attempt: u32,
    rng: StdRng,
}

impl Backoff {
    /// Deterministic for a given seed (tests, simulator).
    #[must_use]
    pub fn with_seed(cfg: BackoffConfig, seed: u64) -> Self {
        Self {
            cfg,
            attempt: 0,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Seeded from the OS.
    #[must_use]
    pub fn new(cfg: BackoffConfig) -> Self {
        Self::with_seed(cfg, rand::random())
    }

    /// The upper bound of the next delay.
    #[must_use]
    pub fn window(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.cfg
            .initial
            .checked_mul(factor)
            .unwrap_or(self.cfg.max)
            .min(self.cfg.max)
    }

    /// Failed attempts since the last reset.
    #[must_use]
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The next delay: uniform in `[0, window]`, plus `hint` when the gateway gave one.
    pub fn next_delay(&mut self, hint: Option<Duration>) -> Duration {
        let window = self.window();
        self.attempt = self.attempt.saturating_add(1);
        let nanos = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
        let jitter = Duration::from_nanos(self.rng.gen_range(0..=nanos));
        hint.unwrap_or_default() + jitter
    }

    /// After a connection proved stable.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BackoffConfig {
        BackoffConfig {
            initial: Duration::from_secs(2),
            max: Duration::from_secs(60),
            reset_after: Duration::from_secs(60),
        }
    }

    #[test]
    fn window_grows_then_caps() {
        let mut b = Backoff::with_seed(cfg(), 1);
        let mut windows = Vec::new();
        for _ in 0..10 {
            windows.push(b.window().as_secs());
            let d = b.next_delay(None);
            assert!(d <= Duration::from_secs(60));
        }
        assert_eq!(windows, vec![2, 4, 8, 16, 32, 60, 60, 60, 60, 60]);
        b.reset();
        assert_eq!(b.window(), Duration::from_secs(2));
        // Huge attempt counts do not overflow.
        for _ in 0..100 {
            b.next_delay(None);
        }
        assert_eq!(b.window(), Duration::from_secs(60));
    }

    #[test]
    fn hint_is_a_floor() {
        let mut b = Backoff::with_seed(cfg(), 7);
        for _ in 0..100 {
            b.reset();
            let d = b.next_delay(Some(Duration::from_secs(30)));
            assert!(
                d >= Duration::from_secs(30) && d <= Duration::from_secs(32),
                "{d:?}"
            );
        }
    }

    /// 10,000 devices cut off together: their first reconnects, slept on a paused clock, land
    /// spread evenly over the first backoff window.
    #[tokio::test(start_paused = true)]
    async fn ten_thousand_devices_reconnect_spread_out() {
        const DEVICES: u64 = 10_000;
        const BUCKETS: usize = 20;
        let start = tokio::time::Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for device in 0..DEVICES {
            set.spawn(async move {
                let mut b = Backoff::with_seed(cfg(), device);
                tokio::time::sleep(b.next_delay(None)).await;
                tokio::time::Instant::now() - start
            });
        }
        let mut hist = [0u32; BUCKETS];
        let window = cfg().initial;
        while let Some(r) = set.join_next().await {
            let at = r.unwrap();
            assert!(at <= window + Duration::from_millis(1), "{at:?}");
            let i = (at.as_secs_f64() / window.as_secs_f64() * BUCKETS as f64) as usize;
            hist[i.min(BUCKETS - 1)] += 1;
        }
        let expected = DEVICES as f64 / BUCKETS as f64;
        for (i, &n) in hist.iter().enumerate() {
            let dev = (f64::from(n) - expected).abs() / expected;
            assert!(
                dev < 0.15,
                "bucket {i} has {n} devices, expected ~{expected}: {hist:?}"
            );
        }
        // No single bucket (100 ms) holds more than 6% of the fleet.
        assert!(
            hist.iter().all(|&n| f64::from(n) < DEVICES as f64 * 0.06),
            "{hist:?}"
        );
    }
}

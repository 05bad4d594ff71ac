//! Connect pacing: a token bucket (`governor`, GCRA) that a CONNECT awaits inside rumqttd's
//! authentication hook, with a bounded number of waiters and a bounded wait.
//!
//! # Invariants
//!
//! * At most `connect_burst` CONNECTs pass at once and `connect_rate_per_sec` per second after
//!   that; the rest wait for their turn, in arrival order (a FIFO gate: only its head polls the
//!   bucket, so there is no thundering herd of waiters re-checking every token).
//! * At most `max_waiting` CONNECTs wait; the next one is refused at once (`queue_full`).
//! * No CONNECT waits longer than `max_wait_ms`: one whose predicted turn (waiters ahead of it /
//!   rate) is later than that is refused at once (`wait_exceeded`) instead of waiting in vain,
//!   and the wait itself is cut at the deadline. So a storm never piles up half-open
//!   connections: each one is admitted or refused within `max_wait_ms`.
//! * A CONNECT that arrives while others wait queues behind them (no overtaking).
//!
//! rumqttd applies its `connection_timeout_ms` only to reading the CONNECT packet, not to the
//! hook, so a paced client is not timed out by the broker; its own CONNACK timeout is the limit,
//! which is why `max_wait_ms` should stay well below it. A client that gives up anyway and closes
//! its socket leaves the waiting room at once: the patched rumqttd drops the hook's future when
//! the socket closes (`vendor/PATCHES.md`, patch 5), which releases its place without a token.
//!
//! Cancel safety: [`Pacer::admit`] holds its waiter permit and the gate only while polled;
//! dropping the future releases both and consumes no token.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{Mutex, Semaphore};
use tokio::time::Instant;

/// Why a CONNECT was not admitted by the pacer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaceRefusal {
    /// `max_waiting` CONNECTs are already waiting.
    QueueFull,
    /// Its turn would come (or did not come) within `max_wait_ms`.
    WaitExceeded,
}

impl PaceRefusal {
    #[must_use]
    pub fn reason(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::WaitExceeded => "wait_exceeded",
        }
    }
}

/// The connect pacer.
#[derive(Debug)]
pub struct Pacer {
    limiter: DefaultDirectRateLimiter,
    gate: Mutex<()>,
    waiters: Arc<Semaphore>,
    max_waiting: usize,
    max_wait: Duration,
    rate: f64,
}

impl Pacer {
    /// A pacer admitting `burst` at once and `rate` per second after.
    #[must_use]
    pub fn new(
        rate: NonZeroU32,
        burst: NonZeroU32,
        max_waiting: usize,
        max_wait: Duration,
    ) -> Self {
        let quota = Quota::per_second(rate).allow_burst(burst);
        Self {
            limiter: RateLimiter::direct(quota),
            gate: Mutex::new(()),
            waiters: Arc::new(Semaphore::new(max_waiting)),
            max_waiting,
            max_wait,
            rate: f64::from(rate.get()),
        }
    }

    /// CONNECTs waiting for their turn right now.
    #[must_use]
    pub fn waiting(&self) -> usize {
        self.max_waiting - self.waiters.available_permits()
    }

    /// Waits for this CONNECT's turn; returns how long it waited.
    ///
    /// # Errors
    /// [`PaceRefusal`] when the waiting room is full or the turn would come too late.
    pub async fn admit(&self) -> Result<Duration, PaceRefusal> {
        let start = Instant::now();
        // Fast path only when nobody is waiting, so new arrivals never overtake waiters.
        if self.waiting() == 0 && self.limiter.check().is_ok() {
            return Ok(Duration::ZERO);
        }
        let Ok(_permit) = self.waiters.try_acquire() else {
            return Err(PaceRefusal::QueueFull);
        };
        if self.max_wait.is_zero() {
            return Err(PaceRefusal::WaitExceeded);
        }
        // Those ahead of us each need one token: a lower bound on our wait.
        #[allow(clippy::cast_precision_loss)]
        let ahead = self.waiting().saturating_sub(1) as f64;
        if Duration::from_secs_f64(ahead / self.rate) > self.max_wait {
            return Err(PaceRefusal::WaitExceeded);
        }
        let deadline = start + self.max_wait;
        let Ok(_turn) = tokio::time::timeout_at(deadline, self.gate.lock()).await else {
            return Err(PaceRefusal::WaitExceeded);
        };
        loop {
            match self.limiter.check() {
                Ok(()) => return Ok(start.elapsed()),
                Err(not_until) => {
                    let wait = not_until.wait_time_from(self.limiter_now());
                    if Instant::now() + wait > deadline {
                        return Err(PaceRefusal::WaitExceeded);
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    fn limiter_now(&self) -> <DefaultClock as Clock>::Instant {
        self.limiter.clock().now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nz(v: u32) -> NonZeroU32 {
        NonZeroU32::new(v).unwrap()
    }

    #[tokio::test]
    async fn burst_passes_then_paced_in_order() {
        let p = Arc::new(Pacer::new(nz(50), nz(3), 100, Duration::from_secs(10)));
        let start = std::time::Instant::now();
        for _ in 0..3 {
            assert_eq!(p.admit().await, Ok(Duration::ZERO));
        }
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let p = p.clone();
            set.spawn(async move { p.admit().await });
        }
        while let Some(r) = set.join_next().await {
            assert!(r.unwrap().is_ok());
        }
        // 10 beyond the burst at 50/s: at least ~200 ms (one token per 20 ms).
        assert!(
            start.elapsed() >= Duration::from_millis(180),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(p.waiting(), 0);
    }

    #[tokio::test]
    async fn full_waiting_room_refuses_at_once() {
        let p = Arc::new(Pacer::new(nz(1), nz(1), 2, Duration::from_secs(30)));
        assert!(p.admit().await.is_ok());
        // Two waiters take the room (their turns are ~1 s and ~2 s away).
        let a = tokio::spawn({
            let p = p.clone();
            async move { p.admit().await }
        });
        let b = tokio::spawn({
            let p = p.clone();
            async move { p.admit().await }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while p.waiting() < 2 {
            assert!(std::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let t = std::time::Instant::now();
        assert_eq!(p.admit().await, Err(PaceRefusal::QueueFull));
        assert!(
            t.elapsed() < Duration::from_millis(900),
            "{:?}",
            t.elapsed()
        );
        a.abort();
        b.abort();
    }

    #[tokio::test]
    async fn turn_beyond_max_wait_is_refused_without_waiting() {
        let p = Pacer::new(nz(1), nz(1), 10, Duration::from_millis(900));
        assert!(p.admit().await.is_ok());
        let t = std::time::Instant::now();
        // Next token in ~1 s, more than the 900 ms allowed: refused now, not after 900 ms.
        assert_eq!(p.admit().await, Err(PaceRefusal::WaitExceeded));
        assert!(
            t.elapsed() < Duration::from_millis(600),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(p.waiting(), 0);
    }

    #[tokio::test]
    async fn zero_wait_or_zero_room_means_no_waiting() {
        let p = Pacer::new(nz(1), nz(1), 10, Duration::ZERO);
        assert!(p.admit().await.is_ok());
        assert_eq!(p.admit().await, Err(PaceRefusal::WaitExceeded));
        let p = Pacer::new(nz(1), nz(1), 0, Duration::from_secs(5));
        assert!(p.admit().await.is_ok());
        assert_eq!(p.admit().await, Err(PaceRefusal::QueueFull));
    }
}

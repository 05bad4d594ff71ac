//! Which devices are connected, from their own status messages.
//!
//! The agent publishes `Birth` once its connection is up, `Death` before a clean disconnect,
//! and registers a `Lost` last will that the broker publishes when the connection drops
//! uncleanly. [`crate::events::run`] applies each of them here, off the telemetry path.
//!
//! Status messages of consecutive connections can arrive out of order: on a reconnect rumqttd
//! publishes the will of the replaced connection when it notices it is gone, often after the
//! new connection's `Birth` (every device of a reconnection storm does this). The device's
//! own timestamps order them: a will carries the time its connection was set up, so the will
//! of connection *n* is stamped after the `Birth` of connection *n - 1* and no later than the
//! `Birth` of connection *n*. Hence, per device (same epoch; an older epoch is ignored, a newer
//! one starts over):
//!
//! * a `Birth` applies if it is not older than the last applied `Birth`;
//! * a `Death` (sent by the device before it disconnects) applies if it is not older than the
//!   last `Birth`;
//! * a `Lost` applies only if it is newer than the `Birth` *before* the last one: otherwise it
//!   is the will of a connection already replaced.
//!
//! What this does not know: devices connected before this process started and not reconnected
//! since, and a `Lost` the events queue dropped (counted in
//! `breakwater_gateway_events_dropped_total`). The gauge is operators' view, not an input to
//! anything that decides about data.

use std::collections::HashMap;
use std::hash::BuildHasher;

use breakwater_protocol::{DeviceId, Status, StatusKind};
use parking_lot::Mutex;

const SHARDS: usize = 16;

/// A device's last applied status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub connected: bool,
    pub epoch: u64,
    /// The device's clock (ms) on the status message applied.
    pub ts: u64,
    /// Gateway wall clock (ms) when it was applied: connected or disconnected since.
    pub since_ms: u64,
    /// Device clock (ms) of the last applied `Birth` and of the one before it (0: none).
    pub birth_ts: u64,
    pub prev_birth_ts: u64,
}

/// Connected devices, sharded like the sequencer.
#[derive(Debug)]
pub struct Presence {
    shards: Vec<Mutex<HashMap<DeviceId, Seen>>>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for Presence {
    fn default() -> Self {
        Self::new()
    }
}

impl Presence {
    #[must_use]
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    fn shard(&self, device: &DeviceId) -> &Mutex<HashMap<DeviceId, Seen>> {
        // The modulo keeps the value below SHARDS, so the cast cannot truncate.
        #[allow(clippy::cast_possible_truncation)]
        let i = (self.hasher.hash_one(device) % SHARDS as u64) as usize;
        &self.shards[i]
    }

    /// Applies a status message received at `now_ms` (gateway clock), unless it is stale
    /// (see the module doc). Returns whether it was applied.
    pub fn apply(&self, status: &Status, now_ms: u64) -> bool {
        let mut shard = self.shard(&status.device).lock();
        let prev = shard
            .get(&status.device)
            .copied()
            .filter(|p| p.epoch == status.epoch);
        if shard
            .get(&status.device)
            .is_some_and(|p| status.epoch < p.epoch)
        {
            return false;
        }
        let (birth_ts, prev_birth_ts) = prev.map_or((0, 0), |p| (p.birth_ts, p.prev_birth_ts));
        let next = match status.kind {
            StatusKind::Birth if status.ts >= birth_ts => Seen {
                connected: true,
                epoch: status.epoch,
                ts: status.ts,
                since_ms: now_ms,
                birth_ts: status.ts,
                prev_birth_ts: birth_ts,
            },
            StatusKind::Death if status.ts >= birth_ts => Seen {
                connected: false,
                epoch: status.epoch,
                ts: status.ts,
                since_ms: now_ms,
                birth_ts,
                prev_birth_ts,
            },
            StatusKind::Lost if prev.is_none() || status.ts > prev_birth_ts => Seen {
                connected: false,
                epoch: status.epoch,
                ts: status.ts,
                since_ms: now_ms,
                birth_ts,
                prev_birth_ts,
            },
            _ => return false,
        };
        // Connected or not, unchanged: keep the time it became so.
        let since_ms = match prev {
            Some(p) if p.connected == next.connected => p.since_ms,
            _ => next.since_ms,
        };
        shard.insert(status.device.clone(), Seen { since_ms, ..next });
        true
    }

    /// The device's last applied status.
    #[must_use]
    pub fn get(&self, device: &DeviceId) -> Option<Seen> {
        self.shard(device).lock().get(device).copied()
    }

    /// Devices connected now.
    #[must_use]
    pub fn connected(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().values().filter(|v| v.connected).count())
            .sum()
    }

    /// Every device's last status, in no particular order.
    #[must_use]
    pub fn snapshot(&self) -> Vec<(DeviceId, Seen)> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let shard = shard.lock();
            out.extend(shard.iter().map(|(d, s)| (d.clone(), *s)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(kind: StatusKind, epoch: u64, ts: u64) -> Status {
        Status {
            device: DeviceId::parse("dev-1").unwrap(),
            epoch,
            kind,
            ts,
        }
    }

    #[test]
    fn birth_death_lost() {
        let p = Presence::new();
        assert!(p.apply(&st(StatusKind::Birth, 1, 10), 100));
        assert_eq!(p.connected(), 1);
        assert!(p.apply(&st(StatusKind::Death, 1, 20), 200));
        assert_eq!(p.connected(), 0);
        // Next connection: its will is stamped when it was set up (25), before its birth (30).
        assert!(p.apply(&st(StatusKind::Birth, 1, 30), 300));
        assert!(p.apply(&st(StatusKind::Lost, 1, 25), 400));
        assert_eq!(p.connected(), 0);
        let d = DeviceId::parse("dev-1").unwrap();
        assert_eq!(p.get(&d).map(|s| s.since_ms), Some(400));
    }

    #[test]
    fn the_will_of_a_replaced_connection_arriving_after_the_new_birth_is_ignored() {
        let p = Presence::new();
        // Connection 1: will stamped 10, birth 12. Network cut; connection 2: will 50, birth 52.
        p.apply(&st(StatusKind::Birth, 1, 12), 100);
        p.apply(&st(StatusKind::Birth, 1, 52), 200);
        // rumqttd publishes connection 1's will only now.
        assert!(!p.apply(&st(StatusKind::Lost, 1, 10), 210));
        assert_eq!(p.connected(), 1);
        // Connection 2's own will still counts.
        assert!(p.apply(&st(StatusKind::Lost, 1, 50), 300));
        assert_eq!(p.connected(), 0);
        // A birth older than the last one (a late duplicate) does not resurrect it.
        assert!(!p.apply(&st(StatusKind::Birth, 1, 12), 310));
        assert_eq!(p.connected(), 0);
    }

    #[test]
    fn a_status_of_an_older_epoch_is_ignored() {
        let p = Presence::new();
        p.apply(&st(StatusKind::Birth, 2, 5), 600);
        assert!(!p.apply(&st(StatusKind::Death, 1, 99), 610));
        assert!(!p.apply(&st(StatusKind::Lost, 1, 99), 620));
        assert_eq!(p.connected(), 1);
        // A new epoch (a new agent buffer) starts over.
        assert!(p.apply(&st(StatusKind::Lost, 3, 1), 630));
        assert_eq!(p.connected(), 0);
    }
}

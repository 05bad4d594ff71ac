//! Which devices are connected, from their own status messages.
//!
//! The agent publishes `Birth` once its connection is up, `Death` before a clean disconnect,
//! and registers a `Lost` last will that the broker publishes when the connection drops
//! uncleanly. [`crate::events::run`] applies each of them here, off the telemetry path, in
//! the order they arrive. A status for an older epoch than the one applied is ignored (a will of
//! a previous agent buffer). Within one epoch the order of arrival decides: a will's `ts` is
//! the time its connection was set up, earlier than that connection's `Birth`, so timestamps
//! cannot tell a late will of a replaced connection from the will of the current one. Such a
//! late will shows the device disconnected until its next status; its `last_seen` (telemetry)
//! still moves.
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

    /// Applies a status message received at `now_ms` (gateway clock).
    pub fn apply(&self, status: &Status, now_ms: u64) {
        let connected = status.kind == StatusKind::Birth;
        let mut shard = self.shard(&status.device).lock();
        if shard
            .get(&status.device)
            .is_some_and(|prev| status.epoch < prev.epoch)
        {
            return;
        }
        shard.insert(
            status.device.clone(),
            Seen {
                connected,
                epoch: status.epoch,
                ts: status.ts,
                since_ms: now_ms,
            },
        );
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
        p.apply(&st(StatusKind::Birth, 1, 10), 100);
        assert_eq!(p.connected(), 1);
        p.apply(&st(StatusKind::Death, 1, 20), 200);
        assert_eq!(p.connected(), 0);
        p.apply(&st(StatusKind::Birth, 1, 30), 300);
        p.apply(&st(StatusKind::Lost, 1, 40), 400);
        assert_eq!(p.connected(), 0);
        let d = DeviceId::parse("dev-1").unwrap();
        assert_eq!(p.get(&d).map(|s| s.since_ms), Some(400));
    }

    #[test]
    fn a_status_of_an_older_epoch_is_ignored() {
        let p = Presence::new();
        p.apply(&st(StatusKind::Birth, 2, 5), 600);
        p.apply(&st(StatusKind::Death, 1, 99), 610);
        p.apply(&st(StatusKind::Lost, 1, 99), 620);
        assert_eq!(p.connected(), 1);
    }
}

//! Which gateway a device talks to: several gateways, a stable start, failover.
//!
//! * The configured list (`[gateway] address` or `addresses`) is expanded once at start and
//!   again at every failover: without TLS a host name that resolves to several IP addresses
//!   counts as that many gateways (sorted, so every device sees the same order whatever order
//!   the resolver returns). With TLS a name stays one gateway, because the certificate is
//!   checked against the name (rumqttc then tries the name's addresses in resolver order on
//!   each connect). A name that does not resolve stays in the list as it is: connecting to it
//!   fails and counts as a failed connect like any other.
//! * A device starts at index `fnv1a(device id) % n`, so a fleet spreads over the gateways
//!   and a device comes back to the same gateway after a restart.
//! * It prefers its current gateway: only `failover_after` failed connects **in a row** (a
//!   refused TCP connect, a TLS or CONNACK failure, a connect/subscribe timeout) move it to
//!   another one. A connection that reached SUBACK resets the count; a lost established
//!   connection does not count (the next connects decide).
//! * Where it moves: each device steps through the list by its own stride
//!   ([`stride`]: from a second hash of its id, coprime with `n`, so the walk still visits
//!   every gateway before it comes back). The devices of a dead gateway therefore spread over
//!   the survivors instead of all landing on the next one in the list (measured with 3
//!   gateways and 30,000 devices, `scripts/bench --only fleet`: in list order the successor
//!   carried 20,000 devices after a failover, next to the open-files limit of one process).
//! * The jittered reconnect backoff is the session's and keeps running across a failover, so
//!   a fleet moving off a dead gateway reaches the next one spread out, not in one wave.
//! * Nothing about acks is per gateway: the session restarts every connection, on any
//!   gateway, from the oldest unacked reading, so the new gateway gets everything unacked.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use breakwater_protocol::DeviceId;

use crate::config::GatewayAddress;

/// FNV-1a 64 of the device id: stable across Rust releases and platforms (std's hasher is not).
#[must_use]
pub fn device_hash(device: &DeviceId) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in device.as_str().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The gateway `device` starts at among `n` (0 when `n` is 0).
#[must_use]
pub fn start_index(device: &DeviceId, n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    let n64 = u64::try_from(n).unwrap_or(u64::MAX);
    usize::try_from(device_hash(device) % n64).unwrap_or(0)
}

/// How far `device` steps through a list of `n` gateways at each failover: in `1..n`, coprime
/// with `n` (so stepping visits every gateway), picked by a hash of the id independent of the
/// start index. 1 when `n < 3` (there is only one other gateway, or none).
#[must_use]
pub fn stride(device: &DeviceId, n: usize) -> usize {
    if n < 3 {
        return 1;
    }
    let coprime: Vec<usize> = (1..n).filter(|&k| gcd(k, n) == 1).collect();
    // SplitMix64's finalizer over the id's hash: its high half is independent of
    // `device_hash % n`, which picked the start.
    let mut h = device_hash(device);
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    let len = u64::try_from(coprime.len()).unwrap_or(1).max(1);
    let i = usize::try_from((h >> 32) % len).unwrap_or(0);
    coprime.get(i).copied().unwrap_or(1)
}

fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// A failover that happened: from which gateway to which.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Moved {
    pub from: GatewayAddress,
    pub to: GatewayAddress,
    pub to_index: usize,
}

/// The gateway choice of one device.
#[derive(Debug)]
pub(crate) struct Gateways {
    configured: Vec<GatewayAddress>,
    /// Expand host names into their addresses (off with TLS).
    expand: bool,
    failover_after: NonZeroU32,
    resolve_timeout: Duration,
    /// The expanded list; never empty once `configured` is not.
    targets: Vec<GatewayAddress>,
    current: usize,
    fails_in_row: u32,
    /// The device (set by [`Gateways::start`]): its [`stride`] is taken against the list's
    /// length at each failover (the list may change).
    device: Option<DeviceId>,
}

impl Gateways {
    pub(crate) fn new(
        configured: Vec<GatewayAddress>,
        expand: bool,
        failover_after: NonZeroU32,
        resolve_timeout: Duration,
    ) -> Self {
        Self {
            targets: configured.clone(),
            configured,
            expand,
            failover_after,
            resolve_timeout,
            current: 0,
            fails_in_row: 0,
            device: None,
        }
    }

    /// Resolves the list and picks the device's start gateway. Bounded by `resolve_timeout`
    /// per name. Cancel-safe (dropped, nothing changes).
    pub(crate) async fn start(&mut self, device: &DeviceId) {
        self.targets = expand(&self.configured, self.expand, self.resolve_timeout).await;
        self.current = start_index(device, self.targets.len());
        self.fails_in_row = 0;
        self.device = Some(device.clone());
    }

    /// Index of the current gateway in the expanded list, and the list's length.
    pub(crate) fn position(&self) -> (usize, usize) {
        (self.current, self.targets.len())
    }

    /// The gateway to connect to now.
    pub(crate) fn current(&self) -> Option<&GatewayAddress> {
        self.targets.get(self.current)
    }

    /// A connection reached SUBACK: this gateway works.
    pub(crate) fn connected(&mut self) {
        self.fails_in_row = 0;
    }

    /// A connect failed. After `failover_after` in a row (and with more than one gateway)
    /// the list is resolved again and the next gateway becomes current.
    ///
    /// Cancel-safe in the sense the session needs: dropped while resolving, the count of
    /// failures is reset and the current gateway is kept (the session then stops anyway).
    pub(crate) async fn connect_failed(&mut self) -> Option<Moved> {
        self.fails_in_row = self.fails_in_row.saturating_add(1);
        if self.fails_in_row < self.failover_after.get() {
            return None;
        }
        self.fails_in_row = 0;
        let from = self.current()?.clone();
        let targets = expand(&self.configured, self.expand, self.resolve_timeout).await;
        // Continue after the failed gateway in the new list (it may have changed).
        let at = targets
            .iter()
            .position(|t| *t == from)
            .unwrap_or(self.current);
        self.targets = targets;
        if self.targets.len() < 2 {
            self.current = 0;
            return None;
        }
        let n = self.targets.len();
        let step = self.device.as_ref().map_or(1, |d| stride(d, n));
        self.current = (at + step) % n;
        let to = self.targets.get(self.current)?.clone();
        Some(Moved {
            from,
            to,
            to_index: self.current,
        })
    }
}

/// The configured list with each host name replaced by its addresses (sorted, deduplicated),
/// unless `resolve` is off or the name does not resolve in time.
async fn expand(
    configured: &[GatewayAddress],
    resolve: bool,
    timeout: Duration,
) -> Vec<GatewayAddress> {
    let mut out: Vec<GatewayAddress> = Vec::with_capacity(configured.len());
    for g in configured {
        let mut found = Vec::new();
        if resolve && g.host.parse::<IpAddr>().is_err() {
            let lookup = tokio::net::lookup_host((g.host.as_str(), g.port));
            match tokio::time::timeout(timeout, lookup).await {
                Ok(Ok(addrs)) => found.extend(addrs),
                Ok(Err(e)) => {
                    tracing::warn!(gateway = %g, error = %e, "cannot resolve gateway; keeping the name");
                }
                Err(_) => {
                    tracing::warn!(gateway = %g, ?timeout, "resolving gateway timed out; keeping the name");
                }
            }
        }
        found.sort_unstable();
        found.dedup();
        if found.is_empty() {
            if !out.contains(g) {
                out.push(g.clone());
            }
            continue;
        }
        for a in found {
            let t = GatewayAddress::new(a.ip().to_string(), a.port());
            if !out.contains(&t) {
                out.push(t);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(n: u16) -> Vec<GatewayAddress> {
        (0..n)
            .map(|i| GatewayAddress::new("127.0.0.1", 10_000 + i))
            .collect()
    }

    fn three() -> NonZeroU32 {
        NonZeroU32::new(3).unwrap()
    }

    #[test]
    fn hash_is_stable_and_spreads_a_fleet() {
        // Pinned (FNV-1a 64, checked with an independent implementation): a change of the
        // hash would move every device of a deployed fleet.
        assert_eq!(
            device_hash(&"press-01".parse().unwrap()),
            0xbd40_1bf3_78c5_61c0
        );
        let mut per = [0u32; 3];
        for i in 0..3000 {
            let d: DeviceId = format!("sim-{i:05}").parse().unwrap();
            per[start_index(&d, 3)] += 1;
        }
        for n in per {
            assert!((850..=1150).contains(&n), "{per:?}");
        }
        assert_eq!(start_index(&"x".parse().unwrap(), 0), 0);
    }

    #[tokio::test]
    async fn fails_over_only_after_n_failures_in_a_row_and_wraps() {
        let device: DeviceId = "press-01".parse().unwrap();
        let mut g = Gateways::new(list(3), true, three(), Duration::from_secs(1));
        g.start(&device).await;
        let start = g.position().0;
        assert_eq!(start, start_index(&device, 3));
        // Two failures, a success, two failures: still the same gateway.
        assert!(g.connect_failed().await.is_none());
        assert!(g.connect_failed().await.is_none());
        g.connected();
        assert!(g.connect_failed().await.is_none());
        assert!(g.connect_failed().await.is_none());
        let m = g
            .connect_failed()
            .await
            .expect("third failure in a row moves");
        let step = stride(&device, 3);
        assert_eq!(m.from, list(3)[start]);
        assert_eq!(m.to_index, (start + step) % 3);
        assert_eq!(g.current(), Some(&list(3)[(start + step) % 3]));
        // Every gateway once, then back to the start.
        let mut seen = vec![start, m.to_index];
        for _ in 0..3 {
            g.connect_failed().await;
        }
        seen.push(g.position().0);
        seen.sort_unstable();
        assert_eq!(seen, vec![0, 1, 2]);
        for _ in 0..3 {
            g.connect_failed().await;
        }
        assert_eq!(g.position(), (start, 3));
    }

    #[test]
    fn a_dead_gateways_devices_spread_over_the_survivors() {
        // 3,000 devices that start at gateway 0 of 3 (or of 5): where their first failover
        // takes them.
        for n in [3usize, 5] {
            let mut moved_to = vec![0u32; n];
            let mut at_zero = 0;
            for i in 0..20_000 {
                let d: DeviceId = format!("sim-{i:05}").parse().unwrap();
                if start_index(&d, n) != 0 {
                    continue;
                }
                at_zero += 1;
                moved_to[stride(&d, n) % n] += 1;
            }
            assert_eq!(moved_to[0], 0, "never back to the dead one first");
            let even = at_zero / u32::try_from(n - 1).unwrap();
            for (k, &c) in moved_to.iter().enumerate().skip(1) {
                assert!(
                    c > even * 8 / 10 && c < even * 12 / 10,
                    "n={n}: {moved_to:?} (gateway {k})"
                );
            }
        }
        // Every stride visits every gateway.
        for n in 3..12usize {
            for i in 0..50 {
                let d: DeviceId = format!("d-{i}").parse().unwrap();
                let s = stride(&d, n);
                let mut at = 0;
                let mut seen = std::collections::HashSet::new();
                for _ in 0..n {
                    seen.insert(at);
                    at = (at + s) % n;
                }
                assert_eq!(seen.len(), n, "n={n} stride={s}");
            }
        }
        assert_eq!(stride(&"x".parse().unwrap(), 2), 1);
    }

    #[tokio::test]
    async fn one_gateway_never_moves_and_names_expand() {
        let mut g = Gateways::new(list(1), true, NonZeroU32::MIN, Duration::from_secs(1));
        g.start(&"d".parse().unwrap()).await;
        for _ in 0..5 {
            assert!(g.connect_failed().await.is_none());
        }
        assert_eq!(g.current(), Some(&list(1)[0]));

        // `localhost` resolves to loopback address(es); duplicates collapse; a name that
        // cannot resolve stays as it is; with TLS (no expansion) names stay names.
        let cfg = vec![
            GatewayAddress::new("localhost", 1883),
            GatewayAddress::new("127.0.0.1", 1883),
            GatewayAddress::new("no-such-host.invalid", 1883),
        ];
        let out = expand(&cfg, true, Duration::from_secs(5)).await;
        assert!(out.iter().all(|a| a.host != "localhost"), "{out:?}");
        assert_eq!(
            out.iter().filter(|a| a.host == "127.0.0.1").count(),
            1,
            "{out:?}"
        );
        assert_eq!(out.last().unwrap().host, "no-such-host.invalid");
        assert_eq!(expand(&cfg, false, Duration::from_secs(5)).await, cfg);
    }
}

//! Fair admission per source address: one host cannot starve the fleet.
//!
//! The global token bucket ([`super::rate`]) protects the gateway; these limits protect the
//! other devices from one host. Per source IP address:
//!
//! * **open connections** ([`Peers::open`]): counted from the TCP accept (before CONNECT, so a
//!   host holding idle sockets counts too) until the socket closes; beyond
//!   `per_address_max_connections` a new connection is closed at once.
//! * **CONNECTs waiting** for their turn in the global pacer, at most `per_address_max_waiting`.
//! * **connect rate**: a token bucket of `per_address_connect_burst` refilled at
//!   `per_address_connect_rate_per_sec`; a CONNECT without a token is refused before it takes a
//!   global token, so a flooding host spends its own budget, not the fleet's.
//!
//! The defaults let a NAT'd line of ~1,000 devices share one address and all reconnect at once.
//!
//! Memory: one small entry per address that has a connection open, a CONNECT waiting, or a
//! bucket still refilling; entries are dropped once none of that holds (swept every second by
//! [`Peers::sweep`]), so the table is bounded by the connections and the recent connect rate.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// Per-address limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeerLimits {
    pub max_connections: usize,
    pub max_waiting: usize,
    pub rate_per_sec: f64,
    pub burst: f64,
}

/// Why a CONNECT from an address was refused (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRefusal {
    /// The address has `per_address_max_waiting` CONNECTs waiting already.
    Waiting,
    /// The address used up its connect budget.
    Rate,
}

impl PeerRefusal {
    #[must_use]
    pub fn reason(self) -> &'static str {
        match self {
            Self::Waiting => "address_waiting",
            Self::Rate => "address_rate",
        }
    }
}

#[derive(Debug)]
struct Entry {
    connections: usize,
    waiting: usize,
    tokens: f64,
    refilled: Instant,
}

/// The per-address table.
#[derive(Debug)]
pub struct Peers {
    limits: PeerLimits,
    table: Mutex<HashMap<IpAddr, Entry>>,
}

impl Peers {
    #[must_use]
    pub fn new(limits: PeerLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            table: Mutex::new(HashMap::new()),
        })
    }

    fn table(&self) -> MutexGuard<'_, HashMap<IpAddr, Entry>> {
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn entry<'t>(&self, t: &'t mut HashMap<IpAddr, Entry>, ip: IpAddr) -> &'t mut Entry {
        let burst = self.limits.burst;
        t.entry(ip).or_insert_with(|| Entry {
            connections: 0,
            waiting: 0,
            tokens: burst,
            refilled: Instant::now(),
        })
    }

    /// A new TCP connection from `ip`: `None` (close it) when the address holds its cap.
    #[must_use]
    pub fn open(self: &Arc<Self>, ip: IpAddr) -> Option<ConnectionGuard> {
        let mut t = self.table();
        let e = self.entry(&mut t, ip);
        if e.connections >= self.limits.max_connections {
            return None;
        }
        e.connections += 1;
        Some(ConnectionGuard {
            peers: Arc::clone(self),
            ip,
        })
    }

    /// A CONNECT from `ip` asks to enter the global pacer: takes one of the address's tokens and
    /// one of its waiting slots (given back when the guard drops).
    ///
    /// # Errors
    /// The address has too many CONNECTs waiting, or no token left.
    pub fn begin_connect(self: &Arc<Self>, ip: IpAddr) -> Result<WaitingGuard, PeerRefusal> {
        let limits = self.limits;
        let mut t = self.table();
        let e = self.entry(&mut t, ip);
        if e.waiting >= limits.max_waiting {
            return Err(PeerRefusal::Waiting);
        }
        let now = Instant::now();
        let refill = now.duration_since(e.refilled).as_secs_f64() * limits.rate_per_sec;
        e.tokens = (e.tokens + refill).min(limits.burst);
        e.refilled = now;
        if e.tokens < 1.0 {
            return Err(PeerRefusal::Rate);
        }
        e.tokens -= 1.0;
        e.waiting += 1;
        Ok(WaitingGuard {
            peers: Arc::clone(self),
            ip,
        })
    }

    /// Open connections from `ip` (tests, status).
    #[must_use]
    pub fn connections(&self, ip: IpAddr) -> usize {
        self.table().get(&ip).map_or(0, |e| e.connections)
    }

    /// Addresses in the table.
    #[must_use]
    pub fn len(&self) -> usize {
        self.table().len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops entries with nothing open or waiting whose bucket has refilled.
    pub fn sweep(&self) {
        let limits = self.limits;
        let now = Instant::now();
        self.table().retain(|_, e| {
            let tokens =
                e.tokens + now.duration_since(e.refilled).as_secs_f64() * limits.rate_per_sec;
            e.connections > 0 || e.waiting > 0 || tokens < limits.burst
        });
    }
}

/// One open connection of an address; dropping it (the socket closed) gives the slot back.
#[derive(Debug)]
pub struct ConnectionGuard {
    peers: Arc<Peers>,
    ip: IpAddr,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if let Some(e) = self.peers.table().get_mut(&self.ip) {
            e.connections = e.connections.saturating_sub(1);
        }
    }
}

/// One CONNECT of an address waiting for (or past) the global pacer.
#[derive(Debug)]
pub struct WaitingGuard {
    peers: Arc<Peers>,
    ip: IpAddr,
}

impl Drop for WaitingGuard {
    fn drop(&mut self) {
        if let Some(e) = self.peers.table().get_mut(&self.ip) {
            e.waiting = e.waiting.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> PeerLimits {
        PeerLimits {
            max_connections: 3,
            max_waiting: 2,
            rate_per_sec: 0.001,
            burst: 4.0,
        }
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 3));

    #[test]
    fn connections_are_capped_per_address_and_given_back() {
        let p = Peers::new(limits());
        let held: Vec<_> = (0..3).map(|_| p.open(A).unwrap()).collect();
        assert!(p.open(A).is_none(), "A is at its cap");
        let b = p.open(B);
        assert!(b.is_some(), "B is not affected");
        drop(held);
        assert_eq!(p.connections(A), 0);
        assert!(p.open(A).is_some());
    }

    #[test]
    fn waiting_and_rate_are_per_address() {
        let p = Peers::new(limits());
        let w1 = p.begin_connect(A).unwrap();
        let w2 = p.begin_connect(A).unwrap();
        assert_eq!(p.begin_connect(A).unwrap_err(), PeerRefusal::Waiting);
        drop((w1, w2));
        // Two tokens left of four.
        drop(p.begin_connect(A).unwrap());
        drop(p.begin_connect(A).unwrap());
        assert_eq!(p.begin_connect(A).unwrap_err(), PeerRefusal::Rate);
        assert!(p.begin_connect(B).is_ok(), "B has its own bucket");
    }

    #[test]
    fn sweep_keeps_a_draining_bucket_and_drops_idle_full_ones() {
        let p = Peers::new(limits());
        drop(p.begin_connect(A).unwrap());
        drop(p.open(B).unwrap());
        p.sweep();
        // A's bucket is not full again (a host must not reset its budget by disconnecting);
        // B never spent a token.
        assert_eq!(p.len(), 1);
    }
}

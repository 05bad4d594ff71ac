//! Breakwater patch 22: the PUBACK of selected QoS 1 publishes (and the release of selected QoS
//! 0 ones) is handed to a local link.
//!
//! A local link names topic filters with [`LinkTx::defer_acks`](crate::local::LinkTx::defer_acks)
//! and becomes their *owner*. A QoS 1 publish from another connection on a topic matching such a
//! filter is not acknowledged on receipt: the router hands it to the owner as a
//! [`Notification::Deferred`](crate::Notification::Deferred) carrying a [`DeferredPublish`]: the
//! publish, the publisher's client id and an [`AckToken`]. The PUBACK goes out when the owner
//! calls [`LinkTx::puback`](crate::local::LinkTx::puback) with the token, and the owner can
//! close the publisher instead with [`LinkTx::disconnect`](crate::local::LinkTx::disconnect).
//! A QoS 0 publish on such a topic is handed over too, with a token that sends no PUBACK: it
//! holds one of the connection's waiting slots until the owner releases it with `puback`, so a
//! connection flooding QoS 0 is throttled like one flooding QoS 1 instead of growing the
//! owner's queue without bound. QoS 2 is not deferred.
//!
//! Invariants:
//! * A token names one publish of one connection *incarnation* (connection id, the
//!   connection's process-unique generation from patch 9, and a serial): a token of a closed
//!   connection never acks or closes a later connection given the same id. Such a token, or one
//!   used twice, is a no-op, counted in `rumqttd_deferred_tokens_stale_total`.
//! * PUBACKs leave in the order the publishes arrived (MQTT 3.1.1 4.6): a token acked before an
//!   earlier one of the same connection is held until the earlier one is acked. QoS 0 tokens
//!   take their place in that order (their release sends nothing).
//! * The publisher's connection task stops reading once `max_deferred_acks` of its publishes,
//!   QoS 0 and 1, wait for their release (its TCP window, then its own inflight window,
//!   throttle it), and
//!   ends the connection when none of its waiting PUBACKs was released for
//!   `deferred_ack_timeout_ms` (`rumqttd_connections_closed_total{reason="puback_timeout"}`),
//!   so a publish whose token was lost (the owner went away) is resent after a reconnect.
//! * A handed-over publish goes to the filter's log as well only if some subscription matches
//!   it (no subscriber is not an error for a deferred publish); the owner should not also
//!   subscribe to its deferred filters, or it reads those publishes twice.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::protocol::{Publish, PublishProperties};
use crate::ConnectionId;

/// Names one deferred publish of one connection incarnation. Opaque; `Copy` so the owner can
/// keep it with whatever it made of the publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AckToken {
    pub(crate) connection: ConnectionId,
    pub(crate) generation: u64,
    pub(crate) serial: u64,
}

impl AckToken {
    /// A token that never names a connection (generation 0 is never registered, patch 9): for
    /// tests of code that keeps tokens. Acking it is a no-op.
    #[doc(hidden)]
    pub fn unregistered(serial: u64) -> Self {
        Self {
            connection: ConnectionId::MAX,
            generation: 0,
            serial,
        }
    }
}

/// A publish handed to the owner of a deferred filter.
#[derive(Debug, Clone)]
pub struct DeferredPublish {
    /// Its PUBACK (QoS 1) or the release of its slot (QoS 0, no PUBACK) waits for
    /// [`LinkTx::puback`](crate::local::LinkTx::puback).
    pub token: AckToken,
    /// The client id the publisher connected with (tenant-prefixed if it has a tenant).
    pub client_id: String,
    /// The publish's packet id and DUP flag (`Publish` keeps them crate-private).
    pub pkid: u16,
    pub dup: bool,
    pub publish: Publish,
    pub properties: Option<PublishProperties>,
}

/// Shared between the router and the publisher's connection task.
#[derive(Debug, Default)]
pub struct DeferredShared {
    /// Publishes of this connection waiting for their release (PUBACK for QoS 1).
    pending: AtomicUsize,
    /// Deferred publishes released so far, QoS 0 and 1 (the connection task's progress clock).
    released: AtomicU64,
    /// The owner closed this connection ([`LinkTx::disconnect`](crate::local::LinkTx::disconnect)).
    refused: AtomicBool,
    /// Notified on every release: a QoS 0 release sends nothing to the connection, so its task,
    /// stopped reading at `max_deferred_acks`, would not wake up otherwise.
    wake: tokio::sync::Notify,
}

impl DeferredShared {
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    pub fn released(&self) -> u64 {
        self.released.load(Ordering::Acquire)
    }

    pub fn refused(&self) -> bool {
        self.refused.load(Ordering::Acquire)
    }

    pub(crate) fn refuse(&self) {
        self.refused.store(true, Ordering::Release);
    }

    /// Completes after a release since the last call returned (a release with no waiter is
    /// remembered, `Notify::notify_one`). Cancel-safe.
    pub async fn released_since(&self) {
        self.wake.notified().await;
    }
}

/// The router's per-connection queue of deferred publishes, in arrival order.
#[derive(Debug, Default)]
pub(crate) struct DeferredQueue {
    next_serial: u64,
    /// (serial, pkid to PUBACK or `None` for QoS 0, released by the owner); serials increase
    /// from front to back.
    entries: VecDeque<(u64, Option<u16>, bool)>,
}

impl DeferredQueue {
    /// Records a deferred publish (`pkid` `None` for QoS 0: nothing to PUBACK); returns its
    /// serial.
    pub(crate) fn push(&mut self, pkid: Option<u16>, shared: &DeferredShared) -> u64 {
        let serial = self.next_serial;
        self.next_serial += 1;
        self.entries.push_back((serial, pkid, false));
        shared.pending.fetch_add(1, Ordering::AcqRel);
        serial
    }

    /// Marks `serial` released and returns the pkids whose PUBACK can go out now, in order
    /// (empty while an earlier publish waits, and for QoS 0 ones, which only free their slot);
    /// `None` if `serial` is unknown or already released.
    pub(crate) fn complete(&mut self, serial: u64, shared: &DeferredShared) -> Option<Vec<u16>> {
        let i = self
            .entries
            .binary_search_by_key(&serial, |&(s, _, _)| s)
            .ok()?;
        if self.entries[i].2 {
            return None;
        }
        self.entries[i].2 = true;
        let mut pubacks = Vec::new();
        let mut released = 0;
        while let Some(&(_, pkid, true)) = self.entries.front() {
            self.entries.pop_front();
            released += 1;
            pubacks.extend(pkid);
        }
        if released > 0 {
            shared.pending.fetch_sub(released, Ordering::AcqRel);
            shared
                .released
                .fetch_add(released as u64, Ordering::AcqRel);
            shared.wake.notify_one();
        }
        Some(pubacks)
    }
}

/// Counts a token that acked or closed nothing (its connection is gone, or it was used).
pub(crate) fn stale_token_counted() {
    metrics::counter!("rumqttd_deferred_tokens_stale_total").increment(1);
}

#[cfg(test)]
mod tests {
    use super::{DeferredQueue, DeferredShared};

    #[test]
    fn pubacks_are_released_in_arrival_order_and_a_token_works_once() {
        let shared = DeferredShared::default();
        let mut q = DeferredQueue::default();
        let a = q.push(Some(10), &shared);
        let b = q.push(Some(11), &shared);
        let c = q.push(Some(12), &shared);
        assert_eq!(shared.pending(), 3);
        assert_eq!(q.complete(b, &shared), Some(vec![]));
        assert_eq!(q.complete(b, &shared), None);
        assert_eq!(shared.pending(), 3);
        assert_eq!(q.complete(a, &shared), Some(vec![10, 11]));
        assert_eq!((shared.pending(), shared.released()), (1, 2));
        assert_eq!(q.complete(a, &shared), None);
        assert_eq!(q.complete(c, &shared), Some(vec![12]));
        assert_eq!(q.complete(99, &shared), None);
        assert_eq!((shared.pending(), shared.released()), (0, 3));
    }

    #[test]
    fn a_qos0_publish_holds_its_slot_in_order_and_its_release_sends_no_puback() {
        let shared = DeferredShared::default();
        let mut q = DeferredQueue::default();
        let a = q.push(Some(10), &shared);
        let z = q.push(None, &shared);
        let b = q.push(Some(11), &shared);
        assert_eq!(shared.pending(), 3);
        // Released before the QoS 1 one ahead of it: held, like a PUBACK.
        assert_eq!(q.complete(z, &shared), Some(vec![]));
        assert_eq!(shared.pending(), 3);
        assert_eq!(q.complete(a, &shared), Some(vec![10]));
        assert_eq!((shared.pending(), shared.released()), (1, 2));
        assert_eq!(q.complete(z, &shared), None);
        assert_eq!(q.complete(b, &shared), Some(vec![11]));
        assert_eq!((shared.pending(), shared.released()), (0, 3));
    }
}

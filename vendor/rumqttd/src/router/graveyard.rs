use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use crate::protocol::QoS;
use crate::Filter;

use super::{
    scheduler::{PauseReason, Tracker},
    ConnectionEvents,
};

/// Saved state of persistent sessions whose clients have gone.
///
/// Breakwater patch 20: a clean session leaves nothing here (upstream kept its `metrics`, a few
/// event strings, for every client id ever seen: memory that grew with each new id for good).
///
/// Breakwater patch 21: at most `max_sessions` saved sessions, each kept at most `expiry`.
/// Saving one more than the cap drops the oldest; an expired one is dropped when the next
/// session is saved (or retrieved). Dropped sessions are returned to the router, which
/// releases what their subscriptions held.
///
/// Breakwater patch 23: sessions restored from a session store are saved here with the age
/// they had (`save_state_at`).
pub struct Graveyard {
    connections: HashMap<String, SavedState>,
    /// Breakwater patch 21: saved sessions by age: (saved at, sequence) -> client id.
    by_age: BTreeMap<(Instant, u64), String>,
    next_seq: u64,
    max_sessions: usize,
    expiry: Duration,
}

impl Graveyard {
    pub fn new(max_sessions: usize, expiry: Duration) -> Graveyard {

        Graveyard {
            connections: HashMap::new(),
            by_age: BTreeMap::new(),
            next_seq: 0,
            max_sessions,
            expiry,
        }
    }

    /// Add a new connection.
    /// Return tracker of previous connection if connection id already exists
    pub fn retrieve(&mut self, id: &str) -> Option<SavedState> {
        let saved = self.connections.remove(id)?;
        self.by_age.remove(&saved.age);
        Some(saved)
    }

    /// Save connection tracker. Returns the sessions dropped to make room or because they
    /// expired (Breakwater patch 21).
    pub fn save_state(
        &mut self,
        tracker: Tracker,
        subscriptions: HashSet<String>,
        stored_filters: BTreeMap<Filter, QoS>,
        metrics: ConnectionEvents,
        unacked_pubrels: VecDeque<u16>,
    ) -> Vec<SessionState> {
        let session_state = SessionState {
            tracker,
            subscriptions,
            stored_filters,
            unacked_pubrels,
        };
        self.save_state_at(session_state, metrics, Instant::now())
    }

    /// Breakwater patch 23: saves a session as if it had been saved at `saved_at` (a restored
    /// one keeps the age it had). Returns what `save_state` returns.
    pub fn save_state_at(
        &mut self,
        mut session_state: SessionState,
        metrics: ConnectionEvents,
        saved_at: Instant,
    ) -> Vec<SessionState> {
        session_state.tracker.pause(PauseReason::Busy);
        let id = session_state.tracker.id.clone();

        let age = (saved_at, self.next_seq);
        self.next_seq += 1;
        if let Some(previous) = self.connections.insert(
            id.clone(),
            SavedState {
                session_state: Some(session_state),
                metrics,
                age,
            },
        ) {
            self.by_age.remove(&previous.age);
        }
        self.by_age.insert(age, id);
        self.evict()
    }

    /// Breakwater patch 21: drops expired sessions and the oldest beyond the cap, and returns
    /// them. The router calls it before it looks for a client's saved session, so an expired
    /// one is never resumed.
    pub fn evict(&mut self) -> Vec<SessionState> {
        let mut dropped = Vec::new();
        while let Some((&age, _)) = self.by_age.first_key_value() {
            if self.by_age.len() <= self.max_sessions && age.0.elapsed() < self.expiry {
                break;
            }
            let Some((_, id)) = self.by_age.pop_first() else {
                break;
            };
            if let Some(saved) = self.connections.remove(&id) {
                dropped.extend(saved.session_state);
            }
        }
        dropped
    }

    /// Breakwater patch 21: sessions saved now.
    pub fn len(&self) -> usize {
        self.connections.len()
    }

    /// Breakwater patch 23: how long a session is kept.
    pub fn expiry(&self) -> Duration {
        self.expiry
    }
}

#[derive(Debug)]
pub struct SavedState {
    pub session_state: Option<SessionState>,
    pub metrics: ConnectionEvents,
    /// Breakwater patch 21: key in `Graveyard::by_age`.
    age: (Instant, u64),
}

#[derive(Debug)]
pub struct SessionState {
    pub tracker: Tracker,
    pub subscriptions: HashSet<String>,
    /// Breakwater patch 23: see `Connection::stored_filters`.
    pub stored_filters: BTreeMap<Filter, QoS>,
    // used for pubrel in qos2
    pub unacked_pubrels: VecDeque<u16>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn save(g: &mut Graveyard, id: &str) -> Vec<SessionState> {
        g.save_state(
            Tracker::new(id.to_owned()),
            HashSet::new(),
            BTreeMap::new(),
            ConnectionEvents::default(),
            VecDeque::new(),
        )
    }

    #[test]
    fn the_oldest_session_goes_beyond_the_cap() {
        let mut g = Graveyard::new(2, Duration::from_secs(3600));
        assert!(save(&mut g, "a").is_empty());
        assert!(save(&mut g, "b").is_empty());
        // Saved again: now the youngest.
        assert!(save(&mut g, "a").is_empty());
        let dropped = save(&mut g, "c");
        assert_eq!(dropped.len(), 1);
        assert_eq!(dropped[0].tracker.id, "b");
        assert_eq!(g.len(), 2);
        assert!(g.retrieve("b").is_none());
        assert!(g.retrieve("a").is_some());
        assert_eq!(g.len(), 1);
        assert_eq!(g.by_age.len(), 1);
    }

    #[test]
    fn an_expired_session_is_dropped_and_not_resumed() {
        let mut g = Graveyard::new(10, Duration::from_millis(50));
        save(&mut g, "a");
        save(&mut g, "b");
        std::thread::sleep(Duration::from_millis(60));
        let mut dropped: Vec<String> = g.evict().into_iter().map(|s| s.tracker.id).collect();
        dropped.sort();
        assert_eq!(dropped, ["a", "b"]);
        assert!(g.retrieve("a").is_none());
        assert_eq!(g.len(), 0);
        assert!(save(&mut g, "c").is_empty());
        assert_eq!(g.len(), 1);
    }
}

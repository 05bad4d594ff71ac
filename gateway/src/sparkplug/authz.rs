//! What a Sparkplug B edge node may publish and subscribe to: the Sparkplug part of the
//! gateway's one authorization policy ([`crate::admission::authz::Policy`] asks [`Acl::decide`]
//! about every topic in `spBv1.0/`, and counts and logs its denials).
//!
//! # Identity
//!
//! The identity is the client's authenticated principal (its MQTT client id, or the name its
//! credentials or certificate give it; see `admission::authz`). By default identity `E` is edge
//! node `E` in any served group (`[sparkplug] groups`, empty = all). `[[sparkplug.edge_nodes]]`
//! entries map an identity to explicit (group, edge node) pairs instead: an identity with
//! entries is only those edge nodes, and an edge node named by an entry can only be published by
//! the identities that name it. A plant with edge node `line1` in groups `A` and `B` gives them
//! two identities (`a-line1`, `b-line1`) and two entries.
//!
//! # Rules for identity `I`, being edge node `E` of group `G`
//!
//! | action | allowed |
//! |---|---|
//! | publish | `spBv1.0/G/{NBIRTH,NDATA,NDEATH}/E`, `spBv1.0/G/{DBIRTH,DDATA,DDEATH}/E/{device}`; QoS 0 or 1; never retained |
//! | will | `spBv1.0/G/NDEATH/E`, QoS 0 or 1, not retained |
//! | subscribe | `spBv1.0/G/NCMD/E` (also `/#`), `spBv1.0/G/DCMD/E/{device}`, `/+`, `/#`; `spBv1.0/STATE/{host}` or `spBv1.0/STATE/+` |
//!
//! Never: NCMD/DCMD (commands are the host's), the host's STATE, another edge node's topics,
//! a group the host does not serve, wildcards elsewhere.

use std::collections::{HashMap, HashSet};

use super::config::SparkplugConfig;
use super::topic::{MessageType, SpTopic, NAMESPACE};
use crate::admission::authz::{Action, Denied};

/// The Sparkplug rules, built once from `[sparkplug]`.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    groups: HashSet<String>,
    /// identity -> the (group, edge node) pairs it may be.
    explicit: HashMap<String, Vec<(String, String)>>,
    /// (group, edge node) pairs named by some entry.
    claimed: HashSet<(String, String)>,
}

impl Acl {
    #[must_use]
    pub fn new(cfg: &SparkplugConfig) -> Self {
        let mut acl = Self {
            groups: cfg.groups.iter().cloned().collect(),
            ..Self::default()
        };
        for e in &cfg.edge_nodes {
            let pair = (e.group.clone(), e.edge_node.clone());
            acl.explicit
                .entry(e.identity.clone())
                .or_default()
                .push(pair.clone());
            acl.claimed.insert(pair);
        }
        acl
    }

    /// Whether `identity` may act as edge node `edge_node` of `group`.
    #[must_use]
    pub fn is_edge_node(&self, identity: &str, group: &str, edge_node: &str) -> bool {
        if !self.groups.is_empty() && !self.groups.contains(group) {
            return false;
        }
        if let Some(pairs) = self.explicit.get(identity) {
            return pairs.iter().any(|(g, e)| g == group && e == edge_node);
        }
        identity == edge_node
            && !self
                .claimed
                .contains(&(group.to_owned(), edge_node.to_owned()))
    }

    /// The decision about `action`, or `None` when its topic is not in `spBv1.0/` (not
    /// Sparkplug's to decide).
    #[must_use]
    pub fn decide(&self, identity: &str, action: Action<'_>) -> Option<Result<(), Denied>> {
        match action {
            Action::Publish { topic, qos, retain } => {
                let topic = std::str::from_utf8(topic).ok()?;
                in_namespace(topic)?;
                Some(self.publish(identity, topic, qos, retain, false))
            }
            Action::Will { topic, qos, retain } => {
                in_namespace(topic)?;
                Some(self.publish(identity, topic, qos, retain, true))
            }
            Action::Subscribe { filter } => {
                in_namespace(filter)?;
                Some(self.subscribe(identity, filter))
            }
        }
    }

    fn publish(
        &self,
        identity: &str,
        topic: &str,
        qos: u8,
        retain: bool,
        will: bool,
    ) -> Result<(), Denied> {
        if retain {
            return Err(Denied::Retain);
        }
        if qos > 1 {
            return Err(Denied::Qos2);
        }
        let t = SpTopic::parse(topic).map_err(|_| Denied::ForeignTopic)?;
        let kind_ok = if will {
            t.kind == MessageType::NDeath
        } else {
            !matches!(t.kind, MessageType::NCmd | MessageType::DCmd)
        };
        if kind_ok && self.is_edge_node(identity, t.group, t.edge_node) {
            Ok(())
        } else {
            Err(Denied::ForeignTopic)
        }
    }

    fn subscribe(&self, identity: &str, filter: &str) -> Result<(), Denied> {
        let levels: Vec<&str> = filter.split('/').collect();
        let plain = |s: &str| !s.is_empty() && !s.contains(['+', '#']);
        match levels.as_slice() {
            [_, "STATE", host] if plain(host) || *host == "+" => Ok(()),
            [_, g, "NCMD", e] | [_, g, "NCMD", e, "#"] if plain(g) && plain(e) => {
                self.own(identity, g, e)
            }
            [_, g, "DCMD", e, d]
                if plain(g) && plain(e) && (plain(d) || *d == "+" || *d == "#") =>
            {
                self.own(identity, g, e)
            }
            _ if filter.contains(['+', '#']) => Err(Denied::Wildcard),
            _ => Err(Denied::ForeignTopic),
        }
    }

    fn own(&self, identity: &str, group: &str, edge_node: &str) -> Result<(), Denied> {
        if self.is_edge_node(identity, group, edge_node) {
            Ok(())
        } else {
            Err(Denied::ForeignTopic)
        }
    }
}

fn in_namespace(topic: &str) -> Option<()> {
    (topic.split('/').next() == Some(NAMESPACE)).then_some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sparkplug::config::EdgeNodeIdentity;

    fn acl(groups: &[&str], entries: &[(&str, &str, &str)]) -> Acl {
        Acl::new(&SparkplugConfig {
            enabled: true,
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            edge_nodes: entries
                .iter()
                .map(|(i, g, e)| EdgeNodeIdentity {
                    identity: (*i).into(),
                    group: (*g).into(),
                    edge_node: (*e).into(),
                })
                .collect(),
            ..SparkplugConfig::default()
        })
    }

    fn publish(topic: &str) -> Action<'_> {
        Action::Publish {
            topic: topic.as_bytes(),
            qos: 0,
            retain: false,
        }
    }

    fn sub(filter: &str) -> Action<'_> {
        Action::Subscribe { filter }
    }

    #[test]
    fn an_edge_node_publishes_in_its_own_namespace_only() {
        let a = acl(&[], &[]);
        for t in [
            "spBv1.0/G/NBIRTH/e1",
            "spBv1.0/G/NDATA/e1",
            "spBv1.0/G/NDEATH/e1",
            "spBv1.0/G/DBIRTH/e1/d",
            "spBv1.0/G/DDATA/e1/d",
            "spBv1.0/Other/DDEATH/e1/d",
        ] {
            assert_eq!(a.decide("e1", publish(t)), Some(Ok(())), "{t}");
        }
        for t in [
            // another edge node, in the same or another group
            "spBv1.0/G/NDATA/e2",
            "spBv1.0/G/DDATA/e2/d",
            // commands and the host's state
            "spBv1.0/G/NCMD/e1",
            "spBv1.0/G/DCMD/e1/d",
            "spBv1.0/STATE/breakwater",
            // malformed
            "spBv1.0/G/NDATA/e1/extra",
            "spBv1.0/G/DDATA/e1",
            "spBv1.0/G/NDATA",
            "spBv1.0/+/NDATA/e1",
        ] {
            assert_eq!(
                a.decide("e1", publish(t)),
                Some(Err(Denied::ForeignTopic)),
                "{t}"
            );
        }
        // Not Sparkplug's to decide.
        assert_eq!(a.decide("e1", publish("bw/v1/e1/telemetry")), None);
        let retained = Action::Publish {
            topic: b"spBv1.0/G/NDATA/e1",
            qos: 1,
            retain: true,
        };
        assert_eq!(a.decide("e1", retained), Some(Err(Denied::Retain)));
        let qos2 = Action::Publish {
            topic: b"spBv1.0/G/NDATA/e1",
            qos: 2,
            retain: false,
        };
        assert_eq!(a.decide("e1", qos2), Some(Err(Denied::Qos2)));
    }

    #[test]
    fn the_will_is_the_ndeath() {
        let a = acl(&[], &[]);
        let will = |topic| Action::Will {
            topic,
            qos: 1,
            retain: false,
        };
        assert_eq!(a.decide("e1", will("spBv1.0/G/NDEATH/e1")), Some(Ok(())));
        assert_eq!(
            a.decide("e1", will("spBv1.0/G/NDATA/e1")),
            Some(Err(Denied::ForeignTopic))
        );
        assert_eq!(
            a.decide("e1", will("spBv1.0/G/NDEATH/e2")),
            Some(Err(Denied::ForeignTopic))
        );
    }

    #[test]
    fn subscriptions() {
        let a = acl(&[], &[]);
        for f in [
            "spBv1.0/G/NCMD/e1",
            "spBv1.0/G/NCMD/e1/#",
            "spBv1.0/G/DCMD/e1/d",
            "spBv1.0/G/DCMD/e1/+",
            "spBv1.0/G/DCMD/e1/#",
            "spBv1.0/STATE/breakwater",
            "spBv1.0/STATE/+",
        ] {
            assert_eq!(a.decide("e1", sub(f)), Some(Ok(())), "{f}");
        }
        for (f, why) in [
            ("spBv1.0/#", Denied::Wildcard),
            ("spBv1.0/G/#", Denied::Wildcard),
            ("spBv1.0/+/NCMD/e1", Denied::Wildcard),
            ("spBv1.0/G/NCMD/+", Denied::Wildcard),
            ("spBv1.0/G/NDATA/+", Denied::Wildcard),
            ("spBv1.0/G/NCMD/e2", Denied::ForeignTopic),
            ("spBv1.0/G/DCMD/e2/d", Denied::ForeignTopic),
            ("spBv1.0/G/NDATA/e2", Denied::ForeignTopic),
        ] {
            assert_eq!(a.decide("e1", sub(f)), Some(Err(why)), "{f}");
        }
    }

    #[test]
    fn groups_and_explicit_identities() {
        // The same edge node id `line1` in two groups, each with its own identity.
        let a = acl(
            &["A", "B"],
            &[("a-line1", "A", "line1"), ("b-line1", "B", "line1")],
        );
        assert_eq!(
            a.decide("a-line1", publish("spBv1.0/A/NDATA/line1")),
            Some(Ok(()))
        );
        assert_eq!(
            a.decide("b-line1", publish("spBv1.0/B/NDATA/line1")),
            Some(Ok(()))
        );
        for (who, t) in [
            ("a-line1", "spBv1.0/B/NDATA/line1"),
            ("b-line1", "spBv1.0/A/NDATA/line1"),
            // The default identity of a claimed edge node no longer works.
            ("line1", "spBv1.0/A/NDATA/line1"),
            // An identity with entries is only those edge nodes.
            ("a-line1", "spBv1.0/A/NDATA/a-line1"),
            // Groups the host does not serve.
            ("e1", "spBv1.0/C/NDATA/e1"),
        ] {
            assert_eq!(
                a.decide(who, publish(t)),
                Some(Err(Denied::ForeignTopic)),
                "{who} {t}"
            );
        }
        // Unclaimed edge nodes keep the default identity.
        assert_eq!(a.decide("e1", publish("spBv1.0/A/NDATA/e1")), Some(Ok(())));
    }
}

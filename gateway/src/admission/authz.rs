//! Topic authorization: what a connected client may publish and subscribe to.
//!
//! # Trust boundary
//!
//! Every PUBLISH and SUBSCRIBE a network client sends, and the will of its CONNECT, is decided
//! here, once, with the client's *authenticated identity*: the principal rumqttd's connect hook
//! admitted it under (vendor/PATCHES.md, patch 14). [`crate::admission`] makes that principal
//! the client id only after checking it (credentials in `file` mode, the client certificate in
//! `mtls` mode); in `open` mode nothing was checked and the client id is only a claim.
//! rumqttd calls [`Policy::check`] on the connection's own task before the router sees the
//! packet; a denied PUBLISH closes the connection, a denied SUBSCRIBE gets SUBACK 0x80, a denied
//! will refuses the CONNECT with CONNACK 5 (not authorized).
//!
//! # Rules for a Breakwater agent device `X`
//!
//! | action | allowed |
//! |---|---|
//! | publish (and will) | `bw/v1/X/telemetry`, `bw/v1/X/status`; QoS 0 or 1; never retained |
//! | subscribe | exactly `bw/v1/X/ack` (no wildcards) |
//!
//! # Rules for a standard MQTT client `X` (a device without the agent, [`crate::standard`])
//!
//! | action | allowed |
//! |---|---|
//! | publish | a `[[json_devices]]` topic whose `{device}` level is `X`; QoS 0 or 1; never retained |
//!
//! (Wills and subscriptions stay the agent's rules.)
//!
//! Nothing else: no other device's topics, no wildcard subscriptions, no retained messages and
//! no QoS 2 (the protocol uses neither, and both make the broker hold state for the client).
//! Every deny is counted in `breakwater_gateway_authz_denied_total{action,reason}` and logged
//! with the client id, rate-limited.
//!
//! # Sparkplug B edge nodes
//!
//! With `[sparkplug] enabled`, every topic and filter in `spBv1.0/` is decided by
//! [`crate::sparkplug::authz::Acl`] (an edge node's own namespace only; see there), and an
//! identity starting with `spb.` (the prefix of the device ids Sparkplug sources get,
//! `crate::sparkplug::topic`) may not use the agent topics, so no agent can write under a
//! Sparkplug device's id.

use std::sync::{Mutex, OnceLock};

use breakwater_protocol::topic::PREFIX;
use tracing::warn;

use super::LogWindow;
use crate::standard::JsonTopics;
use crate::stats as m;

/// One thing a client wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    Publish {
        topic: &'a [u8],
        qos: u8,
        retain: bool,
    },
    Subscribe {
        filter: &'a str,
    },
    Will {
        topic: &'a str,
        qos: u8,
        retain: bool,
    },
}

impl Action<'_> {
    /// The `action` label.
    #[must_use]
    pub fn label(&self) -> &'static str {
        match self {
            Self::Publish { .. } => "publish",
            Self::Subscribe { .. } => "subscribe",
            Self::Will { .. } => "will",
        }
    }
}

/// Why an action was denied: the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// A topic or filter that is not the client's own.
    ForeignTopic,
    /// A filter with `+` or `#`.
    Wildcard,
    /// A retained publish or will.
    Retain,
    /// QoS 2.
    Qos2,
}

impl Denied {
    #[must_use]
    pub fn reason(self) -> &'static str {
        match self {
            Self::ForeignTopic => "foreign_topic",
            Self::Wildcard => "wildcard",
            Self::Retain => "retain",
            Self::Qos2 => "qos2",
        }
    }
}

/// The authorization policy: the one place topic access is decided.
#[derive(Debug, Default)]
pub struct Policy {
    log: Mutex<LogWindow>,
    /// Set once at start when `[sparkplug] enabled`.
    sparkplug: OnceLock<crate::sparkplug::authz::Acl>,
    /// The `[[json_devices]]` topics, set once before the listener starts.
    json: std::sync::OnceLock<JsonTopics>,
}

impl Policy {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Lets clients publish on their own `[[json_devices]]` topics. Once; later calls are
    /// ignored (the policy must not change under running connections).
    pub fn set_json_topics(&self, topics: JsonTopics) {
        self.json.set(topics).ok();
    }

    /// Decides about `action` by the client authenticated as `identity`, without counting or
    /// logging (see [`Policy::check`]).
    ///
    /// # Errors
    /// Why the action is denied.
    pub fn decide(identity: &str, action: Action<'_>) -> Result<(), Denied> {
        match action {
            Action::Publish { topic, qos, retain } => publish(identity, topic, qos, retain),
            Action::Will { topic, qos, retain } => publish(identity, topic.as_bytes(), qos, retain),
            Action::Subscribe { filter } => {
                if filter.contains(['+', '#']) {
                    Err(Denied::Wildcard)
                } else if own_topic(filter.as_bytes(), identity) == Some("ack") {
                    Ok(())
                } else {
                    Err(Denied::ForeignTopic)
                }
            }
        }
    }

    /// Turns on the Sparkplug rules (see the module doc). Only the first call counts.
    pub fn set_sparkplug(&self, acl: crate::sparkplug::authz::Acl) {
        let _ = self.sparkplug.set(acl);
    }

    /// [`Policy::decide`], with the Sparkplug rules when they are on.
    ///
    /// # Errors
    /// Why the action is denied.
    pub fn decide_all(&self, identity: &str, action: Action<'_>) -> Result<(), Denied> {
        if let Some(acl) = self.sparkplug.get() {
            if let Some(decision) = acl.decide(identity, action) {
                return decision;
            }
            if identity.starts_with(crate::sparkplug::topic::DEVICE_ID_PREFIX) {
                return Err(Denied::ForeignTopic);
            }
        }
        if let (Action::Publish { topic, qos, retain }, Some(json)) = (action, self.json.get()) {
            if let Some(decision) = json_publish(json, identity, topic, qos, retain) {
                return decision;
            }
        }
        Self::decide(identity, action)
    }

    /// Decides about `action` by `client_id`, authenticated as `identity`; a deny is counted and
    /// logged (at most a few lines a second, with how many were not logged).
    #[must_use]
    pub fn check(&self, client_id: &str, identity: &str, action: Action<'_>) -> bool {
        let Err(denied) = self.decide_all(identity, action) else {
            return true;
        };
        let (label, reason) = (action.label(), denied.reason());
        metrics::counter!(m::AUTHZ_DENIED, "action" => label, "reason" => reason).increment(1);
        let unlogged = self
            .log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .allow();
        if let Some(unlogged) = unlogged {
            let topic = match action {
                Action::Publish { topic, .. } => String::from_utf8_lossy(topic).into_owned(),
                Action::Subscribe { filter } => filter.to_owned(),
                Action::Will { topic, .. } => topic.to_owned(),
            };
            warn!(
                client_id,
                identity,
                action = label,
                reason,
                topic,
                unlogged_denials = unlogged,
                "not authorized"
            );
        }
        false
    }
}

/// `Some` decision if `topic` is a `[[json_devices]]` topic: allowed only where its `{device}`
/// level is `identity`.
fn json_publish(
    json: &JsonTopics,
    identity: &str,
    topic: &[u8],
    qos: u8,
    retain: bool,
) -> Option<Result<(), Denied>> {
    let device = json.device(std::str::from_utf8(topic).ok()?)?;
    Some(if retain {
        Err(Denied::Retain)
    } else if qos > 1 {
        Err(Denied::Qos2)
    } else if device == identity {
        Ok(())
    } else {
        Err(Denied::ForeignTopic)
    })
}

fn publish(identity: &str, topic: &[u8], qos: u8, retain: bool) -> Result<(), Denied> {
    if retain {
        return Err(Denied::Retain);
    }
    if qos > 1 {
        return Err(Denied::Qos2);
    }
    match own_topic(topic, identity) {
        Some("telemetry" | "status") => Ok(()),
        _ => Err(Denied::ForeignTopic),
    }
}

/// `Some(kind)` if `topic` is `bw/v1/{identity}/{kind}` (kind without a `/`), without
/// allocating: this runs for every publish.
fn own_topic<'t>(topic: &'t [u8], identity: &str) -> Option<&'t str> {
    let rest = topic.strip_prefix(PREFIX.as_bytes())?.strip_prefix(b"/")?;
    let rest = rest.strip_prefix(identity.as_bytes())?.strip_prefix(b"/")?;
    let kind = std::str::from_utf8(rest).ok()?;
    (!kind.contains('/')).then_some(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(topic: &str, qos: u8, retain: bool) -> Action<'_> {
        Action::Publish {
            topic: topic.as_bytes(),
            qos,
            retain,
        }
    }

    #[test]
    fn a_device_uses_its_own_topics_only() {
        assert_eq!(
            Policy::decide("a", publish("bw/v1/a/telemetry", 1, false)),
            Ok(())
        );
        assert_eq!(
            Policy::decide("a", publish("bw/v1/a/status", 0, false)),
            Ok(())
        );
        assert_eq!(
            Policy::decide(
                "a",
                Action::Subscribe {
                    filter: "bw/v1/a/ack"
                }
            ),
            Ok(())
        );
        for t in [
            "bw/v1/b/telemetry",
            "bw/v1/b/ack",
            "bw/v1/a/ack",
            "bw/v1/a/telemetry/x",
            "bw/v1/a",
            "other",
            "",
        ] {
            assert_eq!(
                Policy::decide("a", publish(t, 1, false)),
                Err(Denied::ForeignTopic),
                "{t}"
            );
        }
        assert_eq!(
            Policy::decide(
                "a",
                Action::Subscribe {
                    filter: "bw/v1/b/ack"
                }
            ),
            Err(Denied::ForeignTopic)
        );
        assert_eq!(
            Policy::decide(
                "a",
                Action::Subscribe {
                    filter: "bw/v1/a/telemetry"
                }
            ),
            Err(Denied::ForeignTopic)
        );
    }

    #[test]
    fn wildcards_retain_and_qos2_are_refused() {
        for f in ["#", "bw/v1/+/ack", "bw/v1/a/#", "bw/v1/a/+"] {
            assert_eq!(
                Policy::decide("a", Action::Subscribe { filter: f }),
                Err(Denied::Wildcard),
                "{f}"
            );
        }
        assert_eq!(
            Policy::decide("a", publish("bw/v1/a/telemetry", 1, true)),
            Err(Denied::Retain)
        );
        assert_eq!(
            Policy::decide("a", publish("bw/v1/a/telemetry", 2, false)),
            Err(Denied::Qos2)
        );
        let will = |topic, retain| Action::Will {
            topic,
            qos: 1,
            retain,
        };
        assert_eq!(Policy::decide("a", will("bw/v1/a/status", false)), Ok(()));
        assert_eq!(
            Policy::decide("a", will("bw/v1/a/status", true)),
            Err(Denied::Retain)
        );
        assert_eq!(
            Policy::decide("a", will("bw/v1/b/status", false)),
            Err(Denied::ForeignTopic)
        );
    }

    #[test]
    fn sparkplug_rules_only_when_on() {
        let p = Policy::new();
        let nd = publish("spBv1.0/G/NDATA/e1", 0, false);
        assert!(!p.check("e1", "e1", nd));
        assert!(p.check(
            "spb.G.e1",
            "spb.G.e1",
            publish("bw/v1/spb.G.e1/telemetry", 1, false)
        ));
        p.set_sparkplug(crate::sparkplug::authz::Acl::new(
            &crate::sparkplug::config::SparkplugConfig::default(),
        ));
        assert!(p.check("e1", "e1", nd));
        assert!(!p.check("e2", "e2", nd));
        // Agents keep their rules; the Sparkplug id prefix is not an agent's any more.
        assert!(p.check("a", "a", publish("bw/v1/a/telemetry", 1, false)));
        assert!(!p.check(
            "spb.G.e1",
            "spb.G.e1",
            publish("bw/v1/spb.G.e1/telemetry", 1, false)
        ));
    }

    #[test]
    fn check_is_decide() {
        let p = Policy::new();
        assert!(p.check("a", "a", publish("bw/v1/a/telemetry", 1, false)));
        assert!(!p.check("a", "a", publish("bw/v1/b/telemetry", 1, false)));
        assert!(!p.check("a", "b", publish("bw/v1/a/telemetry", 1, false)));
    }
    #[test]
    fn a_json_device_publishes_only_on_its_own_json_topic() {
        use crate::standard::config::{JsonDeviceConfig, JsonFormat};
        let policy = Policy::new();
        policy.set_json_topics(JsonTopics::new(&[JsonDeviceConfig {
            topic: "plant/{device}/telemetry".into(),
            format: JsonFormat::Reading,
            timestamp_field: "ts".into(),
        }]));
        let ok =
            |id: &str, topic: &str, qos, retain| policy.check(id, id, publish(topic, qos, retain));
        assert!(ok("press-1", "plant/press-1/telemetry", 1, false));
        assert!(ok("press-1", "plant/press-1/telemetry", 0, false));
        assert!(!ok("press-1", "plant/press-2/telemetry", 1, false));
        assert!(!ok("press-1", "plant/press-1/telemetry", 2, false));
        assert!(!ok("press-1", "plant/press-1/telemetry", 1, true));
        assert!(!ok("press-1", "plant/press-1/other", 1, false));
        // The agent's rules still hold beside them.
        assert!(ok("press-1", "bw/v1/press-1/telemetry", 1, false));
        assert!(!ok("press-1", "bw/v1/press-2/telemetry", 1, false));
    }
}

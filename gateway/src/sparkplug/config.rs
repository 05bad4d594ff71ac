//! `[sparkplug]`: the Sparkplug B host application.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::topic::DeviceIdTooLong;

/// `[sparkplug]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SparkplugConfig {
    /// Run the host application: subscribe to `spBv1.0/{group}/#`, publish the host STATE, and
    /// let edge nodes publish in their own namespace.
    pub enabled: bool,
    /// The host application id: STATE goes to `spBv1.0/STATE/{host_id}`. Edge nodes configured
    /// with this primary host id wait for it to be online before they publish.
    pub host_id: String,
    /// Sparkplug groups this host serves; empty = every group.
    pub groups: Vec<String>,
    /// Least time between two Rebirth requests (NCMD) to the same edge node.
    #[serde(with = "humantime_serde")]
    pub rebirth_interval: Duration,
    /// Edge node sessions kept (a full table evicts an offline node, else refuses new ones).
    pub max_edge_nodes: usize,
    /// Devices per edge node.
    pub max_devices_per_edge_node: usize,
    /// Explicit identities: the edge node(s) a client identity may be. Without an entry, an
    /// identity (its MQTT client id, or the name its credentials or certificate give it) is the
    /// edge node of the same id, in any group of `groups`. An edge node named in an entry can
    /// only be published by the identities its entries name.
    pub edge_nodes: Vec<EdgeNodeIdentity>,
}

/// `[[sparkplug.edge_nodes]]`: `identity` publishes as `edge_node` of `group`. This is how a
/// plant with the same edge node id in two groups configures it: two entries, two identities;
/// and how an edge node whose id is not a valid client id (the gateway admits only client ids
/// of 1-64 `[A-Za-z0-9._-]`, e.g. not `Line 1`) gets one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeNodeIdentity {
    pub identity: String,
    pub group: String,
    pub edge_node: String,
}

impl Default for SparkplugConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            host_id: "breakwater".to_owned(),
            groups: Vec::new(),
            rebirth_interval: Duration::from_secs(5),
            max_edge_nodes: 10_000,
            max_devices_per_edge_node: 1_000,
            edge_nodes: Vec::new(),
        }
    }
}

/// A Sparkplug id (group, edge node, device, host): 1-255 bytes, no `/`, `+`, `#`.
fn check_id(s: &str) -> Result<(), &'static str> {
    if s.is_empty() || s.len() > 255 {
        return Err("must be 1 to 255 bytes");
    }
    if s.contains(['/', '+', '#', '\0']) {
        return Err("must not contain /, +, # or NUL");
    }
    Ok(())
}

impl SparkplugConfig {
    /// Every problem with its key.
    pub fn validate(&self, bad: &mut impl FnMut(&str, String)) {
        if let Err(why) = check_id(&self.host_id) {
            bad("sparkplug.host_id", format!("{:?} {why}", self.host_id));
        }
        for (i, g) in self.groups.iter().enumerate() {
            if let Err(why) = check_id(g) {
                bad(&format!("sparkplug.groups[{i}]"), format!("{g:?} {why}"));
            } else if g == "STATE" {
                bad(
                    &format!("sparkplug.groups[{i}]"),
                    "\"STATE\" is the host state namespace".into(),
                );
            } else if self.groups[..i].contains(g) {
                bad(&format!("sparkplug.groups[{i}]"), format!("{g:?} twice"));
            }
        }
        if self.rebirth_interval.is_zero() {
            bad("sparkplug.rebirth_interval", "must be > 0".into());
        }
        if self.max_edge_nodes == 0 {
            bad("sparkplug.max_edge_nodes", "must be > 0".into());
        }
        if self.max_devices_per_edge_node == 0 {
            bad("sparkplug.max_devices_per_edge_node", "must be > 0".into());
        }
        for (i, e) in self.edge_nodes.iter().enumerate() {
            let key = |k: &str| format!("sparkplug.edge_nodes[{i}].{k}");
            // An identity is a client id, and the gateway admits only client ids that are
            // device ids (`crate::admission`).
            if let Err(why) = breakwater_protocol::DeviceId::parse(e.identity.as_str()) {
                bad(&key("identity"), format!("{:?}: {why}", e.identity));
            }
            for (k, v) in [("group", &e.group), ("edge_node", &e.edge_node)] {
                if let Err(why) = check_id(v) {
                    bad(&key(k), format!("{v:?} {why}"));
                }
            }
            if !self.groups.is_empty() && !self.groups.contains(&e.group) {
                bad(
                    &key("group"),
                    format!("{:?} is not in sparkplug.groups", e.group),
                );
            }
            if let Err(DeviceIdTooLong { len, limit }) =
                super::topic::device_id(&e.group, &e.edge_node, None)
            {
                bad(
                    &key("edge_node"),
                    format!("its device id would be {len} bytes, the limit is {limit}"),
                );
            }
            if self.edge_nodes[..i].iter().any(|o| {
                o.identity == e.identity && o.group == e.group && o.edge_node == e.edge_node
            }) {
                bad(&key("identity"), "the same entry twice".into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let cfg = SparkplugConfig {
            enabled: true,
            host_id: "a/b".into(),
            groups: vec!["g".into(), "g".into(), "STATE".into(), "x+".into()],
            rebirth_interval: Duration::ZERO,
            max_edge_nodes: 0,
            max_devices_per_edge_node: 0,
            edge_nodes: vec![
                EdgeNodeIdentity {
                    identity: String::new(),
                    group: "other".into(),
                    edge_node: "e#".into(),
                },
                EdgeNodeIdentity {
                    identity: "i".into(),
                    group: "g".into(),
                    edge_node: "e".repeat(70),
                },
                EdgeNodeIdentity {
                    identity: "Line 1".into(),
                    group: "g".into(),
                    edge_node: "Line 1".into(),
                },
            ],
        };
        let mut keys = Vec::new();
        cfg.validate(&mut |k, _| keys.push(k.to_owned()));
        assert_eq!(
            keys,
            [
                "sparkplug.host_id",
                "sparkplug.groups[1]",
                "sparkplug.groups[2]",
                "sparkplug.groups[3]",
                "sparkplug.rebirth_interval",
                "sparkplug.max_edge_nodes",
                "sparkplug.max_devices_per_edge_node",
                "sparkplug.edge_nodes[0].identity",
                "sparkplug.edge_nodes[0].edge_node",
                "sparkplug.edge_nodes[0].group",
                "sparkplug.edge_nodes[1].edge_node",
                "sparkplug.edge_nodes[2].identity",
            ]
        );
        let mut n = 0;
        SparkplugConfig::default().validate(&mut |_, _| n += 1);
        assert_eq!(n, 0);
    }
}

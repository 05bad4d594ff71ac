//! `[standard]` and `[[json_devices]]`: standard MQTT clients and the JSON topics they use.

use serde::{Deserialize, Serialize};

/// Placeholder for the device id in a `[[json_devices]] topic`.
pub const DEVICE_CAPTURE: &str = "{device}";

/// `[standard]`: how the gateway treats standard MQTT clients (devices without the agent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StandardConfig {
    /// QoS 1 publishes of one connection waiting for their PUBACK at which the gateway stops
    /// reading from it (its inflight window then throttles it).
    pub max_unacked_per_connection: usize,
    /// A connection with publishes waiting for their PUBACK is closed when none was acked for
    /// this long, ms (the client resends after reconnecting).
    pub puback_timeout_ms: u64,
    /// Publishes parked, over the process, while the writer queue is full (their PUBACK is
    /// delayed). Past it a publish is refused (its connection closed, it resends).
    pub max_parked_publishes: usize,
}

impl Default for StandardConfig {
    fn default() -> Self {
        Self {
            max_unacked_per_connection: 100,
            puback_timeout_ms: 60_000,
            max_parked_publishes: 50_000,
        }
    }
}

/// How a `[[json_devices]]` payload is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JsonFormat {
    /// `{"metric": "temp", "value": 21.5, "ts": 1764115200000}`; `ts` optional.
    #[default]
    Reading,
    /// A flat object of metric -> value, with an optional timestamp under `timestamp_field`.
    Object,
}

/// One `[[json_devices]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonDeviceConfig {
    /// MQTT topic with one whole level `{device}`, e.g. `"plant/{device}/telemetry"`. The
    /// captured level is the device id; an authenticated client may publish only where it is
    /// its own id.
    pub topic: String,
    #[serde(default)]
    pub format: JsonFormat,
    /// `format = "object"`: the key holding the timestamp (ms since the Unix epoch); it is not a
    /// metric. Absent from a payload: the gateway's receive time.
    #[serde(default = "JsonDeviceConfig::default_timestamp_field")]
    pub timestamp_field: String,
}

impl JsonDeviceConfig {
    fn default_timestamp_field() -> String {
        "ts".to_owned()
    }

    /// The rumqttd filter matching this topic (`{device}` as `+`).
    #[must_use]
    pub fn filter(&self) -> String {
        self.topic.replace(DEVICE_CAPTURE, "+")
    }
}

/// Problems of `[standard]` and `[[json_devices]]`, each with its key.
pub fn validate(
    standard: &StandardConfig,
    json: &[JsonDeviceConfig],
    bad: &mut impl FnMut(&str, String),
) {
    if standard.max_unacked_per_connection == 0 {
        bad("standard.max_unacked_per_connection", "must be > 0".into());
    }
    if standard.max_parked_publishes == 0 {
        bad("standard.max_parked_publishes", "must be > 0".into());
    }
    if standard.puback_timeout_ms < 1_000 {
        bad("standard.puback_timeout_ms", "must be at least 1000".into());
    }
    let mut filters: Vec<String> = Vec::new();
    for (i, d) in json.iter().enumerate() {
        let key = format!("json_devices[{i}].topic");
        if let Err(why) = check_topic(&d.topic) {
            bad(&key, format!("{:?}: {why}", d.topic));
        } else {
            let f = d.filter();
            if filters.contains(&f) {
                bad(
                    &key,
                    format!("{:?}: the same topic as an earlier entry", d.topic),
                );
            }
            filters.push(f);
        }
        if d.format == JsonFormat::Object && d.timestamp_field.is_empty() {
            bad(
                &format!("json_devices[{i}].timestamp_field"),
                "must not be empty".into(),
            );
        }
    }
}

/// A topic template: levels without wildcards, exactly one of them `{device}`, not in the
/// agent's (`bw/`) or Sparkplug's (`spBv1.0/`) namespace, not a `$` topic.
fn check_topic(topic: &str) -> Result<(), &'static str> {
    if topic.is_empty() || topic.len() > 1024 {
        return Err("must be 1 to 1024 bytes");
    }
    if topic.contains(['+', '#', '\0']) {
        return Err("must not contain wildcards (+, #)");
    }
    if topic.starts_with('$') {
        return Err("must not start with $");
    }
    let first = topic.split('/').next().unwrap_or("");
    if first == "bw" || first == "spBv1.0" {
        return Err("the bw/ and spBv1.0/ namespaces are the agent's and Sparkplug's");
    }
    let captures = topic.split('/').filter(|l| *l == DEVICE_CAPTURE).count();
    if captures != 1 {
        return Err("must have exactly one level that is exactly {device}");
    }
    if topic.replace(DEVICE_CAPTURE, "").contains(['{', '}']) {
        return Err("{device} must be a whole level");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(topic: &str) -> JsonDeviceConfig {
        JsonDeviceConfig {
            topic: topic.into(),
            format: JsonFormat::Reading,
            timestamp_field: "ts".into(),
        }
    }

    #[test]
    fn every_bad_topic_is_reported_with_its_key() {
        let json = [
            entry("plant/{device}/telemetry"),
            entry("plant/{device}/telemetry"),
            entry("plant/+/x"),
            entry("plant/x"),
            entry("bw/{device}/telemetry"),
            entry("a/dev-{device}"),
            entry("{device}/{device}"),
        ];
        let mut got = Vec::new();
        validate(&StandardConfig::default(), &json, &mut |k, m| {
            got.push(format!("{k}: {m}"));
        });
        let keys: Vec<&str> = got.iter().map(|g| g.split(':').next().unwrap()).collect();
        assert_eq!(
            keys,
            [
                "json_devices[1].topic",
                "json_devices[2].topic",
                "json_devices[3].topic",
                "json_devices[4].topic",
                "json_devices[5].topic",
                "json_devices[6].topic",
            ],
            "{got:#?}"
        );
        assert_eq!(
            entry("plant/{device}/telemetry").filter(),
            "plant/+/telemetry"
        );
    }
}

//! The MQTT topic scheme, in one place.
//!
//! ```text
//! bw/v1/{device}/telemetry   agent -> gateway   envelope(Batch) or envelope(Floor), QoS 1, in order
//! bw/v1/{device}/status      agent -> gateway   envelope(Status); the last-will is a Lost status
//! bw/v1/{device}/ack         gateway -> agent   envelope(Ack)
//! ```

use std::fmt;

use thiserror::Error;

use crate::limits::ValidationError;
use crate::types::DeviceId;

/// Topic prefix, including the scheme version.
pub const PREFIX: &str = "bw/v1";

/// The gateway's subscription filter for device telemetry.
pub const TELEMETRY_FILTER: &str = "bw/v1/+/telemetry";
/// The gateway's subscription filter for device status messages.
pub const STATUS_FILTER: &str = "bw/v1/+/status";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopicKind {
    Telemetry,
    Status,
    Ack,
}

impl TopicKind {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Telemetry => "telemetry",
            Self::Status => "status",
            Self::Ack => "ack",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "telemetry" => Some(Self::Telemetry),
            "status" => Some(Self::Status),
            "ack" => Some(Self::Ack),
            _ => None,
        }
    }
}

/// A parsed Breakwater topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Topic {
    pub device: DeviceId,
    pub kind: TopicKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TopicError {
    #[error("topic {0:?} contains an MQTT wildcard")]
    Wildcard(String),
    #[error("topic {0:?} does not match bw/v1/{{device}}/{{telemetry|status|ack}}")]
    Shape(String),
    #[error("topic {topic:?} has an invalid device id: {source}")]
    Device {
        topic: String,
        source: ValidationError,
    },
}

impl Topic {
    #[must_use]
    pub fn new(device: DeviceId, kind: TopicKind) -> Self {
        Self { device, kind }
    }

    #[must_use]
    pub fn telemetry(device: &DeviceId) -> String {
        Self::new(device.clone(), TopicKind::Telemetry).to_string()
    }

    #[must_use]
    pub fn status(device: &DeviceId) -> String {
        Self::new(device.clone(), TopicKind::Status).to_string()
    }

    #[must_use]
    pub fn ack(device: &DeviceId) -> String {
        Self::new(device.clone(), TopicKind::Ack).to_string()
    }

    /// Parses a concrete topic name.
    ///
    /// # Errors
    /// A wildcard, a shape other than `bw/v1/{device}/{kind}`, or an invalid device id.
    pub fn parse(topic: &str) -> Result<Self, TopicError> {
        if topic.contains(['+', '#']) {
            return Err(TopicError::Wildcard(topic.to_owned()));
        }
        let shape = || TopicError::Shape(topic.to_owned());
        let rest = topic
            .strip_prefix(PREFIX)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(shape)?;
        let (device, kind) = rest.rsplit_once('/').ok_or_else(shape)?;
        let kind = TopicKind::parse(kind).ok_or_else(shape)?;
        let device = DeviceId::parse(device).map_err(|source| TopicError::Device {
            topic: topic.to_owned(),
            source,
        })?;
        Ok(Self { device, kind })
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}/{}/{}", self.device, self.kind.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let d = DeviceId::parse("press-01").unwrap();
        for kind in [TopicKind::Telemetry, TopicKind::Status, TopicKind::Ack] {
            let t = Topic::new(d.clone(), kind);
            assert_eq!(Topic::parse(&t.to_string()).unwrap(), t);
        }
        assert_eq!(Topic::telemetry(&d), "bw/v1/press-01/telemetry");
    }

    #[test]
    fn rejects_bad_topics() {
        assert!(matches!(
            Topic::parse("bw/v1/+/telemetry"),
            Err(TopicError::Wildcard(_))
        ));
        assert!(matches!(
            Topic::parse("bw/v1/#"),
            Err(TopicError::Wildcard(_))
        ));
        assert!(matches!(
            Topic::parse("bw/v2/a/telemetry"),
            Err(TopicError::Shape(_))
        ));
        assert!(matches!(
            Topic::parse("bw/v1/a/b/telemetry"),
            Err(TopicError::Device { .. })
        ));
        assert!(matches!(
            Topic::parse("bw/v1/a/other"),
            Err(TopicError::Shape(_))
        ));
        assert!(matches!(
            Topic::parse("bw/v1//telemetry"),
            Err(TopicError::Device { .. })
        ));
        assert!(matches!(Topic::parse(""), Err(TopicError::Shape(_))));
    }
}

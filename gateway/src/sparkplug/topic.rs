//! Sparkplug B topics and the device ids the gateway gives edge nodes and their devices.
//!
//! Topics: `spBv1.0/{group}/{type}/{edge_node}[/{device}]` with `type` one of `NBIRTH`,
//! `NDATA`, `NDEATH`, `NCMD` (no device), `DBIRTH`, `DDATA`, `DDEATH`, `DCMD` (with a device);
//! and the host's `spBv1.0/STATE/{host_id}`.
//!
//! # Device ids (injective)
//!
//! An edge node gets the [`DeviceId`] `spb.{group}.{edge_node}` and each of its devices
//! `spb.{group}.{edge_node}.{device}`, every part escaped: `A-Z a-z 0-9 -` stay as they are,
//! every other byte of the part's UTF-8 (`.`, `_`, a space, non-ASCII) becomes `_` and two
//! lower-case hex digits (`.` -> `_2e`, `_` -> `_5f`, `é` -> `_c3_a9`). An escaped part has no
//! `.`, and `_` only starts an escape, so the parts come back uniquely ([`parse_device_id`]):
//! node ids have three dot-separated parts and device ids four, so a node and a device never
//! share an id, and two different (group, edge node, device) never do either.
//!
//! The prefix `spb.` is reserved for Sparkplug: an agent whose device id starts with it is
//! refused by authorization ([`crate::admission::authz`]), so agents cannot collide with
//! Sparkplug ids in Kafka keys. Ids longer than [`DeviceId::MAX_LEN`] (64) after escaping are
//! refused (counted as `device_id_too_long`), not truncated: truncating or hashing would give up
//! injectivity.

use breakwater_protocol::DeviceId;
use thiserror::Error;

/// First topic level of Sparkplug B.
pub const NAMESPACE: &str = "spBv1.0";
/// Prefix of every device id the gateway gives Sparkplug sources.
pub const DEVICE_ID_PREFIX: &str = "spb.";

/// The message type (third topic level).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    NBirth,
    NData,
    NDeath,
    NCmd,
    DBirth,
    DData,
    DDeath,
    DCmd,
}

impl MessageType {
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "NBIRTH" => Self::NBirth,
            "NDATA" => Self::NData,
            "NDEATH" => Self::NDeath,
            "NCMD" => Self::NCmd,
            "DBIRTH" => Self::DBirth,
            "DDATA" => Self::DData,
            "DDEATH" => Self::DDeath,
            "DCMD" => Self::DCmd,
            _ => return None,
        })
    }

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NBirth => "NBIRTH",
            Self::NData => "NDATA",
            Self::NDeath => "NDEATH",
            Self::NCmd => "NCMD",
            Self::DBirth => "DBIRTH",
            Self::DData => "DDATA",
            Self::DDeath => "DDEATH",
            Self::DCmd => "DCMD",
        }
    }

    /// Whether topics of this type name a device (fifth level).
    #[must_use]
    pub fn has_device(self) -> bool {
        matches!(self, Self::DBirth | Self::DData | Self::DDeath | Self::DCmd)
    }
}

/// A parsed edge-node or device topic (not STATE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpTopic<'a> {
    pub group: &'a str,
    pub kind: MessageType,
    pub edge_node: &'a str,
    /// Set exactly when `kind.has_device()`.
    pub device: Option<&'a str>,
}

/// Why a topic is not a Sparkplug edge-node or device topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum TopicError {
    #[error("not in the spBv1.0 namespace")]
    Namespace,
    #[error("the host STATE topic")]
    State,
    #[error("unknown message type")]
    UnknownType,
    #[error("wrong number of topic levels for the message type")]
    Levels,
    #[error("an empty group, edge node or device id, or one with a wildcard")]
    BadId,
}

impl<'a> SpTopic<'a> {
    /// Parses `spBv1.0/{group}/{type}/{edge_node}[/{device}]`.
    ///
    /// # Errors
    /// See [`TopicError`].
    pub fn parse(topic: &'a str) -> Result<Self, TopicError> {
        let mut it = topic.split('/');
        if it.next() != Some(NAMESPACE) {
            return Err(TopicError::Namespace);
        }
        let group = it.next().ok_or(TopicError::Levels)?;
        if group == "STATE" {
            return Err(TopicError::State);
        }
        let kind = it
            .next()
            .ok_or(TopicError::Levels)
            .and_then(|k| MessageType::parse(k).ok_or(TopicError::UnknownType))?;
        let edge_node = it.next().ok_or(TopicError::Levels)?;
        let device = it.next();
        if it.next().is_some() || device.is_some() != kind.has_device() {
            return Err(TopicError::Levels);
        }
        let bad = |s: &str| s.is_empty() || s.contains(['+', '#']);
        if bad(group) || bad(edge_node) || device.is_some_and(bad) {
            return Err(TopicError::BadId);
        }
        Ok(Self {
            group,
            kind,
            edge_node,
            device,
        })
    }
}

/// The topic of a node command to `edge_node` of `group`.
#[must_use]
pub fn ncmd_topic(group: &str, edge_node: &str) -> String {
    format!("{NAMESPACE}/{group}/NCMD/{edge_node}")
}

/// The host application's state topic.
#[must_use]
pub fn state_topic(host_id: &str) -> String {
    format!("{NAMESPACE}/STATE/{host_id}")
}

/// The escaped id is longer than a device id may be.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("the device id for this Sparkplug source would be {len} bytes, the limit is {limit}")]
pub struct DeviceIdTooLong {
    pub len: usize,
    pub limit: usize,
}

fn escape_into(out: &mut String, part: &str) {
    for b in part.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(char::from(b));
        } else {
            out.push('_');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The device id of an edge node (`device: None`) or of one of its devices.
///
/// # Errors
/// The escaped id would be longer than [`DeviceId::MAX_LEN`].
pub fn device_id(
    group: &str,
    edge_node: &str,
    device: Option<&str>,
) -> Result<DeviceId, DeviceIdTooLong> {
    let mut s = String::with_capacity(DeviceId::MAX_LEN);
    s.push_str(DEVICE_ID_PREFIX);
    escape_into(&mut s, group);
    s.push('.');
    escape_into(&mut s, edge_node);
    if let Some(d) = device {
        s.push('.');
        escape_into(&mut s, d);
    }
    let len = s.len();
    // Only `[A-Za-z0-9._-]` was written, so the only way to fail is the length (or an empty
    // part, which topics never have: then `parse` still accepts `spb..x`).
    DeviceId::parse(s).map_err(|_| DeviceIdTooLong {
        len,
        limit: DeviceId::MAX_LEN,
    })
}

/// The (group, edge node, device) a Sparkplug device id was made from, or `None` for an id
/// [`device_id`] never returns.
#[must_use]
pub fn parse_device_id(id: &str) -> Option<(String, String, Option<String>)> {
    let rest = id.strip_prefix(DEVICE_ID_PREFIX)?;
    let parts: Vec<&str> = rest.split('.').collect();
    let mut un = parts.iter().map(|p| unescape(p));
    match parts.len() {
        2 => Some((un.next()??, un.next()??, None)),
        3 => Some((un.next()??, un.next()??, Some(un.next()??))),
        _ => None,
    }
}

fn unescape(part: &str) -> Option<String> {
    let b = part.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'_' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            // Only lower-case escapes are ever written: anything else is not ours.
            if hex.bytes().any(|c| c.is_ascii_uppercase()) {
                return None;
            }
            let v = u8::from_str_radix(hex, 16).ok()?;
            if v.is_ascii_alphanumeric() || v == b'-' {
                return None;
            }
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn topics() {
        let t = SpTopic::parse("spBv1.0/Plant 1/DDATA/edge-7/press.a").unwrap();
        assert_eq!(
            t,
            SpTopic {
                group: "Plant 1",
                kind: MessageType::DData,
                edge_node: "edge-7",
                device: Some("press.a"),
            }
        );
        assert_eq!(
            SpTopic::parse("spBv1.0/g/NBIRTH/e").unwrap().kind,
            MessageType::NBirth
        );
        for (t, e) in [
            ("spBv1.0/STATE/host", TopicError::State),
            ("bw/v1/a/telemetry", TopicError::Namespace),
            ("spBv1.0/g/NDATA/e/d", TopicError::Levels),
            ("spBv1.0/g/DDATA/e", TopicError::Levels),
            ("spBv1.0/g/DDATA/e/d/x", TopicError::Levels),
            ("spBv1.0/g/XDATA/e", TopicError::UnknownType),
            ("spBv1.0/g/NDATA/", TopicError::BadId),
            ("spBv1.0//NDATA/e", TopicError::BadId),
            ("spBv1.0/g/NDATA", TopicError::Levels),
        ] {
            assert_eq!(SpTopic::parse(t), Err(e), "{t}");
        }
    }

    #[test]
    fn device_ids_are_escaped() {
        assert_eq!(
            device_id("Plant1", "edge-7", None).unwrap().as_str(),
            "spb.Plant1.edge-7"
        );
        assert_eq!(
            device_id("a.b", "c_d", Some("é x")).unwrap().as_str(),
            "spb.a_2eb.c_5fd._c3_a9_20x"
        );
        // The classic collisions of a naive join.
        assert_ne!(
            device_id("a.b", "c", None).unwrap(),
            device_id("a", "b.c", None).unwrap()
        );
        assert_ne!(
            device_id("a", "b", Some("c")).unwrap(),
            device_id("a", "b.c", None).unwrap()
        );
        let long = "x".repeat(61);
        assert_eq!(
            device_id(&long, "e", None),
            Err(DeviceIdTooLong { len: 67, limit: 64 })
        );
        assert_eq!(
            parse_device_id("spb.a_2eb.c"),
            Some(("a.b".into(), "c".into(), None))
        );
        for not_ours in [
            "press-01",
            "spb.a",
            "spb.a.b.c.d",
            "spb.a_2E.b",
            "spb.a_61.b",
            "spb.a_.b",
        ] {
            assert_eq!(parse_device_id(not_ours), None, "{not_ours}");
        }
    }

    fn part() -> impl Strategy<Value = String> {
        // Short, with the characters that matter: separators, escapes, non-ASCII.
        proptest::string::string_regex("[a-c._é -]{1,6}").unwrap()
    }

    proptest! {
        /// Injective: the id gives back exactly the parts it was made from.
        #[test]
        fn mapping_roundtrips(g in part(), e in part(), d in proptest::option::of(part())) {
            match device_id(&g, &e, d.as_deref()) {
                Ok(id) => prop_assert_eq!(parse_device_id(id.as_str()), Some((g, e, d))),
                // Refused, never truncated.
                Err(err) => prop_assert!(err.len > DeviceId::MAX_LEN),
            }
        }

        #[test]
        fn topic_parse_never_panics(t in "[a-zA-Z0-9/+#. ]{0,40}") {
            let _ = SpTopic::parse(&t);
            let _ = parse_device_id(&t);
        }
    }
}

//! The binary wire format: a 4-byte header followed by a postcard body.
//!
//! ```text
//! byte 0..2  magic  b"BW"
//! byte 2     format version (this crate writes and reads VERSION = 1)
//! byte 3     message kind: 1 = batch, 2 = ack, 3 = status, 4 = floor
//! byte 4..   postcard encoding of the message (a batch uses the layout in `wire`)
//! ```
//!
//! A floor body is `device: str, epoch: varint u64, first_seq: varint u64` (see
//! [`crate::Floor`]). Kind 4 was added without a version bump: it is additive, and a gateway
//! that predates it rejects it as [`DecodeError::UnknownKind`] (counted, no effect), so a
//! device sending floors to an older gateway behaves as before floors existed.
//!
//! A reader that meets a version it does not know fails with
//! [`DecodeError::UnsupportedVersion`], so a v2 agent talking to a v1 gateway gets a clear
//! error instead of garbage. The body must be consumed exactly: trailing bytes are an error.

use thiserror::Error;

use crate::limits::{Limits, ValidationError};
use crate::types::{Ack, Batch, Floor, Status};
use crate::wire::{WireBatch, WireBatchRef};

pub const MAGIC: [u8; 2] = *b"BW";
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 4;

/// The kind byte of the envelope header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageKind {
    Batch = 1,
    Ack = 2,
    Status = 3,
    /// A device's [`Floor`]: nothing below `first_seq` will be sent again.
    Floor = 4,
}

impl MessageKind {
    #[must_use]
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Batch),
            2 => Some(Self::Ack),
            3 => Some(Self::Status),
            4 => Some(Self::Floor),
            _ => None,
        }
    }

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Batch => "batch",
            Self::Ack => "ack",
            Self::Status => "status",
            Self::Floor => "floor",
        }
    }
}

/// Any message that can travel in an envelope.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Batch(Batch),
    Ack(Ack),
    Status(Status),
    Floor(Floor),
}

impl Message {
    #[must_use]
    pub fn kind(&self) -> MessageKind {
        match self {
            Self::Batch(_) => MessageKind::Batch,
            Self::Ack(_) => MessageKind::Ack,
            Self::Status(_) => MessageKind::Status,
            Self::Floor(_) => MessageKind::Floor,
        }
    }
}

/// Why a payload could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("payload is {len} bytes, the limit is {limit}")]
    TooLarge { len: usize, limit: usize },
    #[error("payload is {len} bytes, shorter than the {HEADER_LEN}-byte header")]
    Truncated { len: usize },
    #[error("payload does not start with the Breakwater magic \"BW\" (found {found:02x?})")]
    BadMagic { found: [u8; 2] },
    #[error("format version {found} is not supported (this build reads version {supported})")]
    UnsupportedVersion { found: u8, supported: u8 },
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    #[error("expected a {expected} message, found a {found} message")]
    WrongKind {
        expected: &'static str,
        found: &'static str,
    },
    #[error("malformed {kind} body: {detail}")]
    Malformed { kind: &'static str, detail: String },
    #[error("{count} trailing bytes after the {kind} body")]
    TrailingBytes { kind: &'static str, count: usize },
    #[error("malformed JSON: {0}")]
    Json(String),
    #[error("invalid message: {0}")]
    Invalid(#[from] ValidationError),
}

impl DecodeError {
    /// A short stable label for metrics (`reason="..."`).
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too_large",
            Self::Truncated { .. } => "truncated",
            Self::BadMagic { .. } => "bad_magic",
            Self::UnsupportedVersion { .. } => "unsupported_version",
            Self::UnknownKind(_) => "unknown_kind",
            Self::WrongKind { .. } => "wrong_kind",
            Self::Malformed { .. } | Self::TrailingBytes { .. } => "malformed",
            Self::Json(_) => "malformed_json",
            Self::Invalid(e) => e.reason(),
        }
    }
}

fn encode_with<T: serde::Serialize>(kind: MessageKind, body: &T, size_hint: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + size_hint);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(kind as u8);
    // Serializing these plain data types into a growable Vec cannot fail: postcard only errors
    // on unsupported serde features (none are used) or a full fixed-size buffer.
    match postcard::to_extend(body, out) {
        Ok(v) => v,
        Err(e) => unreachable!("postcard cannot fail on protocol types: {e}"),
    }
}

/// Encodes a batch into an envelope.
#[must_use]
pub fn encode_batch(batch: &Batch) -> Vec<u8> {
    // ~12 bytes per reading is typical (see `wire`); leave room for strings.
    encode_with(
        MessageKind::Batch,
        &WireBatchRef::new(batch),
        96 + 16 * batch.readings.len(),
    )
}

/// Encodes an ack into an envelope.
#[must_use]
pub fn encode_ack(ack: &Ack) -> Vec<u8> {
    encode_with(MessageKind::Ack, ack, 96)
}

/// Encodes a status message into an envelope.
#[must_use]
pub fn encode_status(status: &Status) -> Vec<u8> {
    encode_with(MessageKind::Status, status, 96)
}

/// Encodes a floor declaration into an envelope.
#[must_use]
pub fn encode_floor(floor: &Floor) -> Vec<u8> {
    encode_with(MessageKind::Floor, floor, 96)
}

/// Encodes any message into an envelope.
#[must_use]
pub fn encode(msg: &Message) -> Vec<u8> {
    match msg {
        Message::Batch(b) => encode_batch(b),
        Message::Ack(a) => encode_ack(a),
        Message::Status(s) => encode_status(s),
        Message::Floor(f) => encode_floor(f),
    }
}

/// Reads and checks the header; returns the kind and the body.
///
/// # Errors
/// `TooLarge`, `Truncated`, `BadMagic`, `UnsupportedVersion` or `UnknownKind`.
pub fn peek<'a>(bytes: &'a [u8], limits: &Limits) -> Result<(MessageKind, &'a [u8]), DecodeError> {
    if bytes.len() > limits.max_payload_bytes {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            limit: limits.max_payload_bytes,
        });
    }
    let Some((header, body)) = bytes.split_first_chunk::<HEADER_LEN>() else {
        return Err(DecodeError::Truncated { len: bytes.len() });
    };
    let [m0, m1, version, kind] = *header;
    if [m0, m1] != MAGIC {
        return Err(DecodeError::BadMagic { found: [m0, m1] });
    }
    if version != VERSION {
        return Err(DecodeError::UnsupportedVersion {
            found: version,
            supported: VERSION,
        });
    }
    let kind = MessageKind::from_byte(kind).ok_or(DecodeError::UnknownKind(kind))?;
    Ok((kind, body))
}

fn body<'a, T: serde::Deserialize<'a>>(
    kind: MessageKind,
    body: &'a [u8],
) -> Result<T, DecodeError> {
    let (value, rest) = postcard::take_from_bytes(body).map_err(|e| DecodeError::Malformed {
        kind: kind.as_str(),
        detail: e.to_string(),
    })?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes {
            kind: kind.as_str(),
            count: rest.len(),
        });
    }
    Ok(value)
}

/// Decodes and validates any message.
///
/// # Errors
/// A [`DecodeError`] naming the first problem found. Never panics, whatever `bytes` holds.
pub fn decode_with(bytes: &[u8], limits: &Limits) -> Result<Message, DecodeError> {
    let (kind, rest) = peek(bytes, limits)?;
    Ok(match kind {
        MessageKind::Batch => {
            let b = body::<WireBatch>(kind, rest)?.into_batch(limits)?;
            Message::Batch(b)
        }
        MessageKind::Ack => {
            let a: Ack = body(kind, rest)?;
            a.validate()?;
            Message::Ack(a)
        }
        MessageKind::Status => {
            let s: Status = body(kind, rest)?;
            s.validate()?;
            Message::Status(s)
        }
        MessageKind::Floor => {
            let f: Floor = body(kind, rest)?;
            f.validate()?;
            Message::Floor(f)
        }
    })
}

/// [`decode_with`] using [`Limits::DEFAULT`].
///
/// # Errors
/// See [`decode_with`].
pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
    decode_with(bytes, &Limits::DEFAULT)
}

fn wrong(expected: MessageKind, found: &Message) -> DecodeError {
    DecodeError::WrongKind {
        expected: expected.as_str(),
        found: found.kind().as_str(),
    }
}

/// Decodes a batch; any other message kind is an error.
///
/// # Errors
/// See [`decode_with`], plus [`DecodeError::WrongKind`].
pub fn decode_batch(bytes: &[u8], limits: &Limits) -> Result<Batch, DecodeError> {
    match decode_with(bytes, limits)? {
        Message::Batch(b) => Ok(b),
        other => Err(wrong(MessageKind::Batch, &other)),
    }
}

/// Decodes an ack; any other message kind is an error.
///
/// # Errors
/// See [`decode_with`], plus [`DecodeError::WrongKind`].
pub fn decode_ack(bytes: &[u8]) -> Result<Ack, DecodeError> {
    match decode(bytes)? {
        Message::Ack(a) => Ok(a),
        other => Err(wrong(MessageKind::Ack, &other)),
    }
}

/// Decodes a status message; any other message kind is an error.
///
/// # Errors
/// See [`decode_with`], plus [`DecodeError::WrongKind`].
pub fn decode_status(bytes: &[u8]) -> Result<Status, DecodeError> {
    match decode(bytes)? {
        Message::Status(s) => Ok(s),
        other => Err(wrong(MessageKind::Status, &other)),
    }
}

/// Decodes a floor declaration; any other message kind is an error.
///
/// # Errors
/// See [`decode_with`], plus [`DecodeError::WrongKind`].
pub fn decode_floor(bytes: &[u8]) -> Result<Floor, DecodeError> {
    match decode(bytes)? {
        Message::Floor(f) => Ok(f),
        other => Err(wrong(MessageKind::Floor, &other)),
    }
}

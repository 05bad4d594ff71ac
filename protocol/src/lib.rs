//! The contract between Breakwater agents, the gateway, and every Kafka consumer.
//!
//! Data flows through three representations, each in its own module:
//!
//! * [`types`] — the messages: [`Reading`], [`Batch`], [`Ack`], [`Status`], [`Floor`].
//! * [`topic`] — the MQTT topic scheme (`bw/v1/{device}/telemetry|ack|status`) and its parser.
//! * [`envelope`] — the binary wire format: a 4-byte header (magic `BW`, version, message kind)
//!   followed by a postcard body. This is what travels over MQTT and, by default, into Kafka.
//! * [`json`] — the JSON encoding of the same messages, for interop (`[kafka] encoding = "json"`).
//! * [`kafka`] — the Kafka record format (key, headers, value) and the fleet event records.
//! * [`limits`] — the bounds every decoder enforces on untrusted bytes.
//!
//! # Invariants
//!
//! * `(device, epoch, seq)` names a reading forever. `epoch` is a random `u64` chosen when a
//!   device's buffer is created; `seq` starts at 1 and increases by one per reading.
//! * A [`Batch`] holds readings with *consecutive* sequence numbers: it stores `first_seq` and
//!   the readings in order, so a gap inside a batch cannot be represented.
//! * A gap *between* batches is declared by the device with a [`Floor`] on the same telemetry
//!   topic: "nothing below `first_seq` will be sent again" (the readings were acked or dropped
//!   by the device's `drop-oldest` buffer). Without it the gateway never acks past a gap.
//! * Decoding never panics: every malformed input becomes a [`DecodeError`] that names the
//!   problem, and every decoded message has passed [`Limits`] validation.

pub mod envelope;
pub mod json;
pub mod kafka;
pub mod limits;
pub mod topic;
pub mod types;
mod wire;

pub use envelope::{DecodeError, Message, MessageKind, HEADER_LEN, MAGIC, VERSION};
pub use limits::{Limits, ValidationError};
pub use topic::{Topic, TopicError, TopicKind};
pub use types::{Ack, Batch, CompactString, DeviceId, Floor, Reading, Status, StatusKind, Value};

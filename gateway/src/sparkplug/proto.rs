//! The Sparkplug B payload: prost structs for Eclipse Tahu's `sparkplug_b.proto`.
//!
//! The schema is `sparkplug_b.proto` next to this file, copied unchanged from
//! eclipse-tahu/tahu (commit 5736e404889d4b95910613040a99ba79589ffb13, `sparkplug_b/`),
//! Copyright (c) 2015, 2018 Cirrus Link Solutions and others, licensed under the Eclipse Public
//! License 2.0 (SPDX `EPL-2.0`, <http://www.eclipse.org/legal/epl-2.0>). Only the schema is
//! taken; the structs below are written by hand against it.
//!
//! # Why hand-written prost structs (and not prost-build or a Sparkplug crate)
//!
//! * prost-build needs `protoc` at build time, which a fresh machine (Rust toolchain, python3,
//!   node) does not have; vendoring a protoc or pulling protox into the build for one
//!   40-line message is not worth it. The `#[derive(prost::Message)]` structs below are what
//!   prost-build generates for the fields the gateway reads, with the same tags and types, so
//!   the wire format is checked by prost itself, not by us.
//! * The fields the gateway never interprets are either left out (prost skips unknown fields:
//!   `is_historical`, `is_transient`, `metadata`, `properties`, `uuid`, `body`) or kept as
//!   opaque bytes: a `DataSet`, a `Template` and an extension value are length-delimited
//!   messages on the wire, exactly like `bytes`, so declaring them as `bytes` decodes the same
//!   payloads without walking their (recursive, untrusted) contents. They are counted as
//!   unsupported metrics (`breakwater_gateway_sparkplug_unsupported_metrics_total{type}`), so
//!   their contents are never needed.
//! * The Rust Sparkplug crates on crates.io are protobuf bindings only: `sparkplug-rs` (one
//!   owner) and `spb_rs` (0.1.0) both generate the whole schema with rust-protobuf's
//!   `protobuf-codegen` at build time (a second protobuf runtime next to prost, and a build
//!   script), and decode datasets and templates in full. Neither adds anything the gateway
//!   needs beyond these structs: no session rules (bdSeq, seq, aliases), which are the
//!   gateway's own ([`super::session`]).
//!
//! Encoding (used for the host's NCMD `Node Control/Rebirth`, and by tests) goes through the
//! same structs.

/// `DataType` of `sparkplug_b.proto` (the numbers are the wire values of `Metric.datatype`).
pub mod datatype {
    pub const UNKNOWN: u32 = 0;
    pub const INT8: u32 = 1;
    pub const INT16: u32 = 2;
    pub const INT32: u32 = 3;
    pub const INT64: u32 = 4;
    pub const UINT8: u32 = 5;
    pub const UINT16: u32 = 6;
    pub const UINT32: u32 = 7;
    pub const UINT64: u32 = 8;
    pub const FLOAT: u32 = 9;
    pub const DOUBLE: u32 = 10;
    pub const BOOLEAN: u32 = 11;
    pub const STRING: u32 = 12;
    pub const DATETIME: u32 = 13;
    pub const TEXT: u32 = 14;
    pub const UUID: u32 = 15;
    pub const DATASET: u32 = 16;
    pub const BYTES: u32 = 17;
    pub const FILE: u32 = 18;
    pub const TEMPLATE: u32 = 19;
    pub const PROPERTY_SET: u32 = 20;
    pub const PROPERTY_SET_LIST: u32 = 21;

    /// A stable label for a datatype (the `type` label of the unsupported-metrics counter):
    /// the proto's name in lower case, `array` for the array types (22-34), `other` beyond.
    #[must_use]
    pub fn label(t: u32) -> &'static str {
        match t {
            UNKNOWN => "unknown",
            INT8 => "int8",
            INT16 => "int16",
            INT32 => "int32",
            INT64 => "int64",
            UINT8 => "uint8",
            UINT16 => "uint16",
            UINT32 => "uint32",
            UINT64 => "uint64",
            FLOAT => "float",
            DOUBLE => "double",
            BOOLEAN => "boolean",
            STRING => "string",
            DATETIME => "datetime",
            TEXT => "text",
            UUID => "uuid",
            DATASET => "dataset",
            BYTES => "bytes",
            FILE => "file",
            TEMPLATE => "template",
            PROPERTY_SET => "propertyset",
            PROPERTY_SET_LIST => "propertysetlist",
            22..=34 => "array",
            _ => "other",
        }
    }
}

/// `Payload` (fields 1-3; `uuid`, `body` and extensions are skipped).
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Payload {
    /// Milliseconds since the Unix epoch, when the message was sent.
    #[prost(uint64, optional, tag = "1")]
    pub timestamp: Option<u64>,
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<Metric>,
    /// 0-255, wrapping; absent in NDEATH (and in STATE, which is JSON anyway).
    #[prost(uint64, optional, tag = "3")]
    pub seq: Option<u64>,
}

/// `Payload.Metric` (without `is_historical`, `is_transient`, `metadata`, `properties`).
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Metric {
    /// Present in BIRTH; in DATA only when the edge node does not use aliases.
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(uint64, optional, tag = "2")]
    pub alias: Option<u64>,
    /// Milliseconds since the Unix epoch, when the value was acquired.
    #[prost(uint64, optional, tag = "3")]
    pub timestamp: Option<u64>,
    #[prost(uint32, optional, tag = "4")]
    pub datatype: Option<u32>,
    #[prost(bool, optional, tag = "7")]
    pub is_null: Option<bool>,
    #[prost(oneof = "MetricValue", tags = "10, 11, 12, 13, 14, 15, 16, 17, 18, 19")]
    pub value: Option<MetricValue>,
}

/// The `value` oneof of `Payload.Metric`. `DataSet`, `Template` and the extension are kept as
/// their encoded bytes (see the module doc).
#[derive(Clone, PartialEq, ::prost::Oneof)]
pub enum MetricValue {
    #[prost(uint32, tag = "10")]
    IntValue(u32),
    #[prost(uint64, tag = "11")]
    LongValue(u64),
    #[prost(float, tag = "12")]
    FloatValue(f32),
    #[prost(double, tag = "13")]
    DoubleValue(f64),
    #[prost(bool, tag = "14")]
    BooleanValue(bool),
    #[prost(string, tag = "15")]
    StringValue(String),
    #[prost(bytes = "vec", tag = "16")]
    BytesValue(Vec<u8>),
    #[prost(bytes = "vec", tag = "17")]
    DatasetValue(Vec<u8>),
    #[prost(bytes = "vec", tag = "18")]
    TemplateValue(Vec<u8>),
    #[prost(bytes = "vec", tag = "19")]
    ExtensionValue(Vec<u8>),
}

/// Decodes a Sparkplug B payload.
///
/// # Errors
/// The bytes are not a valid protobuf encoding of `Payload` (prost's error says where).
pub fn decode(bytes: &[u8]) -> Result<Payload, prost::DecodeError> {
    prost::Message::decode(bytes)
}

/// Encodes a payload.
#[must_use]
pub fn encode(p: &Payload) -> Vec<u8> {
    prost::Message::encode_to_vec(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A Tahu payload as the Python reference (`sparkplug_b_pb2`) encodes it: timestamp 1000,
    /// seq 7, one metric `{name:"t", alias:3, datatype:Double, double_value:1.5}`, one metric
    /// with a dataset (`num_of_columns: 1`), and a metric with metadata and properties, which
    /// the structs skip.
    #[test]
    fn golden_bytes() {
        let mut b = vec![0x08, 0xe8, 0x07]; // timestamp = 1000
        b.extend([0x18, 0x07]); // seq = 7
                                // metric 1: name "t", alias 3, datatype 10, double 1.5
        let mut m1 = vec![0x0a, 0x01, b't', 0x10, 0x03, 0x20, 0x0a, 0x69];
        m1.extend(1.5f64.to_le_bytes());
        b.push(0x12);
        b.push(u8::try_from(m1.len()).unwrap());
        b.extend(&m1);
        // metric 2: datatype 16, dataset_value { num_of_columns: 1 }
        let m2 = [0x20, 0x10, 0x8a, 0x01, 0x02, 0x08, 0x01];
        b.push(0x12);
        b.push(u8::try_from(m2.len()).unwrap());
        b.extend(m2);
        // metric 3: metadata { content_type: "x" }, properties { keys: ["k"] }, int 5
        let m3 = [
            0x42, 0x03, 0x12, 0x01, b'x', 0x4a, 0x03, 0x0a, 0x01, b'k', 0x50, 0x05,
        ];
        b.push(0x12);
        b.push(u8::try_from(m3.len()).unwrap());
        b.extend(m3);
        let p = decode(&b).unwrap();
        assert_eq!(p.timestamp, Some(1000));
        assert_eq!(p.seq, Some(7));
        assert_eq!(p.metrics.len(), 3);
        assert_eq!(p.metrics[0].name.as_deref(), Some("t"));
        assert_eq!(p.metrics[0].alias, Some(3));
        assert_eq!(p.metrics[0].datatype, Some(datatype::DOUBLE));
        assert_eq!(p.metrics[0].value, Some(MetricValue::DoubleValue(1.5)));
        assert_eq!(p.metrics[1].datatype, Some(datatype::DATASET));
        assert_eq!(
            p.metrics[1].value,
            Some(MetricValue::DatasetValue(vec![0x08, 0x01]))
        );
        assert_eq!(p.metrics[2].value, Some(MetricValue::IntValue(5)));
        // Our own encoding decodes back to the same payload.
        assert_eq!(decode(&encode(&p)).unwrap(), p);
    }

    proptest! {
        /// Untrusted bytes: decoding never panics, whatever they are.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }

        /// Bytes that start like a payload (a metrics field) and go on arbitrarily.
        #[test]
        fn arbitrary_metric_bytes_never_panic(
            len in 0u8..127,
            body in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let mut b = vec![0x12, len];
            b.extend(body);
            let _ = decode(&b);
        }
    }
}

//! Property tests: any valid message survives both encodings unchanged.

#![allow(clippy::unwrap_used)]

use breakwater_protocol::{
    envelope, json, Ack, Batch, DeviceId, Floor, Limits, Message, Reading, Status, StatusKind,
    Value,
};
use proptest::prelude::*;

fn device() -> impl Strategy<Value = DeviceId> {
    "[A-Za-z0-9._-]{1,64}".prop_map(|s| DeviceId::parse(s).unwrap())
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::I64),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::F64),
        any::<bool>().prop_map(Value::Bool),
        ".{0,64}".prop_map(|s| Value::Str(s.into())),
    ]
}

fn reading() -> impl Strategy<Value = Reading> {
    ("[a-z][a-z0-9_.]{0,40}", value(), any::<u64>()).prop_map(|(metric, value, ts)| Reading {
        ts,
        metric: metric.into(),
        value,
    })
}

fn batch() -> impl Strategy<Value = Batch> {
    (
        device(),
        any::<u64>(),
        1u64..u64::MAX / 2,
        prop::collection::vec(reading(), 1..50),
    )
        .prop_map(|(device, epoch, first_seq, readings)| Batch {
            device,
            epoch,
            first_seq,
            readings,
        })
}

fn ack() -> impl Strategy<Value = Ack> {
    (
        device(),
        any::<u64>(),
        any::<u64>(),
        any::<u32>(),
        any::<Option<u32>>(),
    )
        .prop_map(|(device, epoch, upto_seq, credit, retry_after_ms)| Ack {
            device,
            epoch,
            upto_seq,
            credit,
            retry_after_ms,
        })
}

fn status() -> impl Strategy<Value = Status> {
    (
        device(),
        any::<u64>(),
        prop_oneof![
            Just(StatusKind::Birth),
            Just(StatusKind::Death),
            Just(StatusKind::Lost)
        ],
        any::<u64>(),
    )
        .prop_map(|(device, epoch, kind, ts)| Status {
            device,
            epoch,
            kind,
            ts,
        })
}

fn floor() -> impl Strategy<Value = Floor> {
    (device(), any::<u64>(), 1u64..=u64::MAX).prop_map(|(device, epoch, first_seq)| Floor {
        device,
        epoch,
        first_seq,
    })
}

proptest! {
    #[test]
    fn batch_postcard_round_trip(b in batch()) {
        let bytes = envelope::encode_batch(&b);
        prop_assert_eq!(envelope::decode(&bytes).unwrap(), Message::Batch(b));
    }

    #[test]
    fn batch_json_round_trip(b in batch()) {
        let text = json::encode_batch(&b);
        prop_assert_eq!(json::decode_batch(text.as_bytes(), &Limits::DEFAULT).unwrap(), b);
    }

    #[test]
    fn ack_round_trip(a in ack()) {
        prop_assert_eq!(envelope::decode_ack(&envelope::encode_ack(&a)).unwrap(), a.clone());
        prop_assert_eq!(json::decode_ack(json::encode_ack(&a).as_bytes()).unwrap(), a);
    }

    #[test]
    fn status_round_trip(s in status()) {
        prop_assert_eq!(envelope::decode_status(&envelope::encode_status(&s)).unwrap(), s.clone());
        prop_assert_eq!(json::decode_status(json::encode_status(&s).as_bytes()).unwrap(), s);
    }

    #[test]
    fn floor_round_trip(f in floor()) {
        let bytes = envelope::encode_floor(&f);
        prop_assert_eq!(envelope::decode(&bytes).unwrap(), Message::Floor(f.clone()));
        prop_assert_eq!(json::decode_floor(json::encode_floor(&f).as_bytes()).unwrap(), f);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = envelope::decode(&bytes);
        let _ = json::decode_batch(&bytes, &Limits::DEFAULT);
        let _ = json::decode_floor(&bytes);
    }

    #[test]
    fn mutated_valid_bytes_never_panic(b in batch(), pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = envelope::encode_batch(&b);
        let i = pos.index(bytes.len());
        bytes[i] = byte;
        let _ = envelope::decode(&bytes);
    }
}

//! Untrusted bytes: every malformed input gets a typed error that names the problem.

#![allow(clippy::unwrap_used)]

use breakwater_protocol::{
    envelope, json, Batch, DecodeError, DeviceId, Floor, Limits, Reading, ValidationError, Value,
};

fn batch(n: usize) -> Batch {
    Batch {
        device: DeviceId::parse("dev-1").unwrap(),
        epoch: 7,
        first_seq: 10,
        readings: (0..n)
            .map(|i| Reading::new("m", Value::I64(i as i64), 1))
            .collect(),
    }
}

#[test]
fn header_errors() {
    let good = envelope::encode_batch(&batch(3));
    assert_eq!(
        envelope::decode(&good[..2]),
        Err(DecodeError::Truncated { len: 2 })
    );
    let mut bad = good.clone();
    bad[0] = b'X';
    assert!(matches!(
        envelope::decode(&bad),
        Err(DecodeError::BadMagic { .. })
    ));
    let mut v2 = good.clone();
    v2[2] = 2;
    let err = envelope::decode(&v2).unwrap_err();
    assert_eq!(
        err,
        DecodeError::UnsupportedVersion {
            found: 2,
            supported: 1
        }
    );
    assert!(err.to_string().contains("version 2 is not supported"));
    let mut kind = good.clone();
    kind[3] = 9;
    assert_eq!(envelope::decode(&kind), Err(DecodeError::UnknownKind(9)));
}

#[test]
fn body_errors() {
    let good = envelope::encode_batch(&batch(3));
    assert!(matches!(
        envelope::decode(&good[..good.len() - 1]),
        Err(DecodeError::Malformed { kind: "batch", .. })
    ));
    let mut long = good.clone();
    long.push(0);
    assert_eq!(
        envelope::decode(&long),
        Err(DecodeError::TrailingBytes {
            kind: "batch",
            count: 1
        })
    );
    let ack_bytes = envelope::encode_batch(&batch(1));
    assert!(matches!(
        envelope::decode_ack(&ack_bytes),
        Err(DecodeError::WrongKind {
            expected: "ack",
            found: "batch"
        })
    ));
}

#[test]
fn limits_are_enforced() {
    let limits = Limits {
        max_readings_per_batch: 2,
        ..Limits::DEFAULT
    };
    let bytes = envelope::encode_batch(&batch(3));
    assert_eq!(
        envelope::decode_batch(&bytes, &limits),
        Err(DecodeError::Invalid(ValidationError::TooManyReadings {
            count: 3,
            limit: 2
        }))
    );
    let tiny = Limits {
        max_payload_bytes: 8,
        ..Limits::DEFAULT
    };
    assert!(matches!(
        envelope::decode_batch(&bytes, &tiny),
        Err(DecodeError::TooLarge { limit: 8, .. })
    ));

    let mut b = batch(1);
    b.readings[0].metric = "x".repeat(200).into();
    let err = envelope::decode(&envelope::encode_batch(&b)).unwrap_err();
    assert_eq!(err.reason(), "bad_metric");

    let mut b = batch(1);
    b.readings[0].value = Value::Str("y".repeat(300).into());
    assert!(matches!(
        envelope::decode(&envelope::encode_batch(&b)),
        Err(DecodeError::Invalid(ValidationError::StringTooLong {
            index: 0,
            len: 300,
            ..
        }))
    ));

    let mut b = batch(1);
    b.readings[0].value = Value::F64(f64::NAN);
    assert!(matches!(
        envelope::decode(&envelope::encode_batch(&b)),
        Err(DecodeError::Invalid(ValidationError::NonFiniteValue {
            index: 0
        }))
    ));

    let mut b = batch(1);
    b.first_seq = 0;
    assert_eq!(
        envelope::decode(&envelope::encode_batch(&b))
            .unwrap_err()
            .reason(),
        "bad_seq"
    );
    let b = batch(0);
    assert_eq!(
        envelope::decode(&envelope::encode_batch(&b)),
        Err(DecodeError::Invalid(ValidationError::EmptyBatch))
    );
}

#[test]
fn device_id_rules() {
    assert!(DeviceId::parse("A.b_c-9").is_ok());
    assert!(DeviceId::parse("x".repeat(64)).is_ok());
    assert_eq!(DeviceId::parse(""), Err(ValidationError::DeviceIdEmpty));
    assert_eq!(
        DeviceId::parse("x".repeat(65)),
        Err(ValidationError::DeviceIdTooLong { len: 65, limit: 64 })
    );
    assert_eq!(
        DeviceId::parse("a/b"),
        Err(ValidationError::DeviceIdInvalidChar { ch: '/', at: 1 })
    );
    assert!(DeviceId::parse("a+").is_err());
    assert!(DeviceId::parse("é").is_err());
}

#[test]
fn invalid_device_id_in_postcard_body_is_rejected() {
    // Build the bytes by hand: a device id with a slash cannot be constructed through the API.
    let good = envelope::encode_batch(&batch(1));
    let mut bad = good.clone();
    let pos = bad.windows(5).position(|w| w == b"dev-1").unwrap();
    bad[pos + 3] = b'/';
    assert!(matches!(
        envelope::decode(&bad),
        Err(DecodeError::Invalid(ValidationError::DeviceIdInvalidChar {
            ch: '/',
            ..
        }))
    ));
}

#[test]
fn json_errors() {
    let l = Limits::DEFAULT;
    assert!(matches!(
        json::decode_batch(b"{", &l),
        Err(DecodeError::Json(_))
    ));
    assert!(matches!(
        json::decode_batch(b"\xff\xfe", &l),
        Err(DecodeError::Json(_))
    ));
    let gap = br#"{"device":"d","epoch":1,"readings":[{"seq":1,"ts":0,"metric":"m","value":1},{"seq":3,"ts":0,"metric":"m","value":2}]}"#;
    assert_eq!(
        json::decode_batch(gap, &l),
        Err(DecodeError::Invalid(ValidationError::NonConsecutiveSeq {
            expected: 2,
            found: 3
        }))
    );
    let bad_dev =
        br#"{"device":"a b","epoch":1,"readings":[{"seq":1,"ts":0,"metric":"m","value":1}]}"#;
    assert_eq!(
        json::decode_batch(bad_dev, &l).unwrap_err().reason(),
        "invalid_device_id"
    );
    let extra = br#"{"device":"d","epoch":1,"readings":[],"x":1}"#;
    assert!(matches!(
        json::decode_batch(extra, &l),
        Err(DecodeError::Json(_))
    ));
    let empty = br#"{"device":"d","epoch":1,"readings":[]}"#;
    assert_eq!(
        json::decode_batch(empty, &l),
        Err(DecodeError::Invalid(ValidationError::EmptyBatch))
    );
}

#[test]
fn huge_length_prefix_does_not_allocate_or_panic() {
    // Header + device len 5 "dev-1" + epoch + first_seq + a readings count of u64::MAX-ish.
    let mut bytes = envelope::encode_batch(&batch(1));
    let body_start = 4 + 1 + 5 + 1 + 1; // magic/version/kind, device, epoch=7, first_seq=10
    bytes.truncate(body_start);
    bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
    assert!(matches!(
        envelope::decode(&bytes),
        Err(DecodeError::Malformed { .. })
    ));
}

#[test]
fn metric_index_past_the_dictionary_is_rejected() {
    let mut bytes = envelope::encode_batch(&batch(1));
    // The last reading is: metric index, ts delta, value tag, value; point the index past the
    // one-name dictionary.
    let at = bytes.len() - 4;
    assert_eq!(bytes[at], 0, "layout assumption: index of the only metric");
    bytes[at] = 5;
    assert_eq!(
        envelope::decode(&bytes),
        Err(DecodeError::Invalid(
            ValidationError::MetricIndexOutOfRange {
                index: 0,
                metric: 5,
                names: 1
            }
        ))
    );
}

#[test]
fn many_distinct_metrics_and_extreme_timestamps_round_trip() {
    let readings = (0..300u64)
        .map(|i| {
            let ts = match i % 3 {
                0 => u64::MAX - i,
                1 => i,
                _ => 1_764_115_200_000,
            };
            Reading::new(format!("metric-{}", i % 40), Value::I64(0), ts)
        })
        .collect();
    let b = Batch {
        device: DeviceId::parse("d").unwrap(),
        epoch: 1,
        first_seq: 1,
        readings,
    };
    let bytes = envelope::encode_batch(&b);
    assert_eq!(envelope::decode_batch(&bytes, &Limits::DEFAULT).unwrap(), b);
}

#[test]
fn floor_errors() {
    let f = Floor {
        device: DeviceId::parse("dev-1").unwrap(),
        epoch: 7,
        first_seq: 300,
    };
    let good = envelope::encode_floor(&f);
    // Body: device (len + 5 bytes), epoch 7, first_seq 300 (two varint bytes).
    assert_eq!(good.len(), 4 + 1 + 5 + 1 + 2);
    assert!(matches!(
        envelope::decode(&good[..good.len() - 1]),
        Err(DecodeError::Malformed { kind: "floor", .. })
    ));
    let mut long = good.clone();
    long.push(0);
    assert_eq!(
        envelope::decode(&long),
        Err(DecodeError::TrailingBytes {
            kind: "floor",
            count: 1
        })
    );
    assert!(matches!(
        envelope::decode_floor(&envelope::encode_batch(&batch(1))),
        Err(DecodeError::WrongKind {
            expected: "floor",
            found: "batch"
        })
    ));
    assert!(matches!(
        envelope::decode_batch(&good, &Limits::DEFAULT),
        Err(DecodeError::WrongKind {
            expected: "batch",
            found: "floor"
        })
    ));
    let zero = Floor {
        first_seq: 0,
        ..f.clone()
    };
    let err = envelope::decode(&envelope::encode_floor(&zero)).unwrap_err();
    assert_eq!(err, DecodeError::Invalid(ValidationError::ZeroSeq));
    assert_eq!(err.reason(), "bad_seq");
    let mut bad_dev = good.clone();
    bad_dev[4 + 1 + 3] = b'/';
    assert!(matches!(
        envelope::decode(&bad_dev),
        Err(DecodeError::Invalid(ValidationError::DeviceIdInvalidChar {
            ch: '/',
            ..
        }))
    ));
    let tiny = Limits {
        max_payload_bytes: 8,
        ..Limits::DEFAULT
    };
    assert!(matches!(
        envelope::decode_with(&good, &tiny),
        Err(DecodeError::TooLarge { limit: 8, .. })
    ));
    // JSON.
    assert_eq!(
        json::decode_floor(br#"{"device":"d","epoch":1,"first_seq":0}"#),
        Err(DecodeError::Invalid(ValidationError::ZeroSeq))
    );
    assert_eq!(
        json::decode_floor(br#"{"device":"a b","epoch":1,"first_seq":5}"#)
            .unwrap_err()
            .reason(),
        "invalid_device_id"
    );
    assert!(matches!(
        json::decode_floor(br#"{"device":"d","epoch":1,"first_seq":5,"x":1}"#),
        Err(DecodeError::Json(_))
    ));
    assert!(matches!(
        json::decode_floor(br#"{"device":"d","epoch":1}"#),
        Err(DecodeError::Json(_))
    ));
}

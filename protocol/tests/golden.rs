//! Golden fixtures: the committed bytes of one message of each kind, in both encodings.
//!
//! If one of these fails, the wire format changed. That breaks every deployed agent and every
//! Kafka consumer: bump `envelope::VERSION` instead of editing the fixture. To regenerate after
//! a deliberate change run `BREAKWATER_BLESS=1 cargo test -p breakwater-protocol --test golden`.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use breakwater_protocol::{
    envelope, json, Ack, Batch, DeviceId, Floor, Limits, Message, Reading, Status, StatusKind,
    Value,
};

fn device() -> DeviceId {
    DeviceId::parse("press-01").unwrap()
}

fn batch() -> Batch {
    Batch {
        device: device(),
        epoch: 123,
        first_seq: 1,
        readings: vec![
            Reading::new("temp", 21.5, 1_764_115_200_000),
            Reading::new("rpm", Value::I64(-1450), 1_764_115_200_100),
            Reading::new("door_open", true, 1_764_115_200_200),
            Reading::new("state", "running", 1_764_115_200_300),
        ],
    }
}

fn ack() -> Ack {
    Ack {
        device: device(),
        epoch: 123,
        upto_seq: 4,
        credit: 8,
        retry_after_ms: Some(250),
    }
}

fn status() -> Status {
    Status {
        device: device(),
        epoch: 123,
        kind: StatusKind::Lost,
        ts: 1_764_115_200_000,
    }
}

fn floor() -> Floor {
    Floor {
        device: device(),
        epoch: 123,
        first_seq: 1_000,
    }
}

fn check(name: &str, actual: &[u8]) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    if std::env::var_os("BREAKWATER_BLESS").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected =
        std::fs::read(&path).unwrap_or_else(|e| panic!("missing fixture {}: {e}", path.display()));
    assert_eq!(
        actual,
        expected.as_slice(),
        "{name} changed; the wire format is a contract (see the module doc)"
    );
}

#[test]
fn batch_postcard() {
    let bytes = envelope::encode_batch(&batch());
    check("batch.bin", &bytes);
    assert_eq!(
        envelope::decode(&bytes).unwrap(),
        Message::Batch(batch()),
        "fixture decodes to the same batch"
    );
}

#[test]
fn ack_postcard() {
    let bytes = envelope::encode_ack(&ack());
    check("ack.bin", &bytes);
    assert_eq!(envelope::decode_ack(&bytes).unwrap(), ack());
}

#[test]
fn status_postcard() {
    let bytes = envelope::encode_status(&status());
    check("status.bin", &bytes);
    assert_eq!(envelope::decode_status(&bytes).unwrap(), status());
}

#[test]
fn batch_json() {
    let text = json::encode_batch(&batch());
    check("batch.json", text.as_bytes());
    assert_eq!(
        json::decode_batch(text.as_bytes(), &Limits::DEFAULT).unwrap(),
        batch()
    );
}

#[test]
fn batch_json_matches_documented_shape() {
    let doc = r#"{"device":"press-01","epoch":123,"readings":[{"seq":1,"ts":1764115200000,"metric":"temp","value":21.5}]}"#;
    let b = Batch {
        device: device(),
        epoch: 123,
        first_seq: 1,
        readings: vec![Reading::new("temp", 21.5, 1_764_115_200_000)],
    };
    assert_eq!(json::encode_batch(&b), doc);
    assert_eq!(
        json::decode_batch(doc.as_bytes(), &Limits::DEFAULT).unwrap(),
        b
    );
}

#[test]
fn ack_json() {
    let text = json::encode_ack(&ack());
    check("ack.json", text.as_bytes());
    assert_eq!(json::decode_ack(text.as_bytes()).unwrap(), ack());
}

#[test]
fn status_json() {
    let text = json::encode_status(&status());
    check("status.json", text.as_bytes());
    assert_eq!(json::decode_status(text.as_bytes()).unwrap(), status());
}

#[test]
fn floor_postcard() {
    let bytes = envelope::encode_floor(&floor());
    check("floor.bin", &bytes);
    assert_eq!(bytes[3], 4, "kind byte of a floor");
    assert_eq!(envelope::decode_floor(&bytes).unwrap(), floor());
    assert_eq!(envelope::decode(&bytes).unwrap(), Message::Floor(floor()));
}

#[test]
fn floor_json() {
    let text = json::encode_floor(&floor());
    check("floor.json", text.as_bytes());
    assert_eq!(
        text, r#"{"device":"press-01","epoch":123,"first_seq":1000}"#,
        "documented shape"
    );
    assert_eq!(json::decode_floor(text.as_bytes()).unwrap(), floor());
}

//! The test harness itself, against the real Kafka-API broker: topics are created, batches in
//! the documented record format go in, and `read_all` returns them in order from offset 0.

use std::time::Duration;

use breakwater_protocol::kafka::{self, Encoding};
use breakwater_protocol::{Batch, DeviceId, Reading};
use breakwater_testkit::{kafka as tk, require_kafka};

fn batch(device: &DeviceId, first_seq: u64) -> Batch {
    Batch {
        device: device.clone(),
        epoch: 42,
        first_seq,
        readings: (0..10u32)
            .map(|i| {
                Reading::new(
                    "temp",
                    20.0 + f64::from(i),
                    1_764_115_200_000 + u64::from(i),
                )
            })
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_round_trip_through_the_real_broker() {
    let bootstrap = require_kafka!();
    let topic = tk::fresh_topic(&bootstrap, "harness", 2).await;
    let producer = tk::producer(&bootstrap);
    let devices: Vec<DeviceId> = ["press-01", "press-02", "lathe-7"]
        .into_iter()
        .map(|d| DeviceId::parse(d).expect("valid"))
        .collect();
    let mut sent = 0;
    for round in 0..5u64 {
        for (i, d) in devices.iter().enumerate() {
            let b = batch(d, 1 + round * 10);
            let enc = if i == 0 {
                Encoding::Json
            } else {
                Encoding::Postcard
            };
            let value = enc.encode(&b);
            let epoch = b.epoch.to_string();
            let first = b.first_seq.to_string();
            let last = b.last_seq().to_string();
            tk::produce(
                &producer,
                &topic,
                d.as_str().as_bytes(),
                &value,
                &[
                    (kafka::HEADER_DEVICE, d.as_str().as_bytes()),
                    (kafka::HEADER_EPOCH, epoch.as_bytes()),
                    (kafka::HEADER_FIRST_SEQ, first.as_bytes()),
                    (kafka::HEADER_LAST_SEQ, last.as_bytes()),
                    (kafka::HEADER_CONTENT_TYPE, enc.content_type().as_bytes()),
                ],
            )
            .await;
            sent += 1;
        }
    }

    let b2 = bootstrap.clone();
    let t2 = topic.clone();
    let records = tokio::task::spawn_blocking(move || {
        tk::read_all(&b2, &t2, 2, sent, Duration::from_secs(60))
    })
    .await
    .expect("reader");
    assert_eq!(
        records.len(),
        sent,
        "every produced record is read back once"
    );

    for d in &devices {
        let seqs: Vec<u64> = records
            .iter()
            .filter(|r| r.key.as_deref() == Some(d.as_str().as_bytes()))
            .map(|r| {
                let b = r.batch();
                assert_eq!(&b.device, d);
                assert_eq!(
                    r.header(kafka::HEADER_LAST_SEQ),
                    Some(b.last_seq().to_string().as_str())
                );
                b.first_seq
            })
            .collect();
        assert_eq!(
            seqs,
            vec![1, 11, 21, 31, 41],
            "per-device order kept for {d}"
        );
    }
}

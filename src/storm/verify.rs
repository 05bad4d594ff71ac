//! Reads the telemetry topic back from the real broker (`assign` from offset 0 on every
//! partition, no consumer group) and checks every `(device, epoch, seq)` the fleet produced.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use breakwater_protocol::kafka::{self, HEADER_CONTENT_TYPE};
use breakwater_protocol::{DeviceId, Limits};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

/// What one device was expected to deliver.
#[derive(Debug, Clone)]
pub struct Expected {
    pub device: DeviceId,
    pub epoch: u64,
    /// Seqs `1..=produced` must each arrive once.
    pub produced: u64,
}

/// The verdict.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verification {
    pub expected_readings: u64,
    /// Distinct expected `(device, epoch, seq)` found.
    pub delivered_readings: u64,
    /// Expected readings never found.
    pub lost: u64,
    /// Extra copies of readings already seen (before any consumer-side dedupe).
    pub duplicates: u64,
    /// New readings that arrived after a higher seq of the same device (order violations).
    pub out_of_order: u64,
    /// Records that did not decode or belonged to no expected device/epoch.
    pub foreign_or_bad_records: u64,
    pub records: u64,
    pub read_seconds: f64,
}

struct DeviceSeen {
    epoch: u64,
    seen: Vec<u8>,
    highest: u64,
}

/// Reads `topic` until every expected reading arrived (plus a short settle for duplicates) or
/// until `timeout`.
///
/// # Errors
/// The consumer cannot be created or assigned.
pub fn verify(
    bootstrap: &str,
    topic: &str,
    expected: &[Expected],
    timeout: Duration,
) -> anyhow::Result<Verification> {
    let started = Instant::now();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set(
            "group.id",
            format!("breakwater-storm-verify-{}", std::process::id()),
        )
        .set("enable.auto.commit", "false")
        .set("fetch.max.bytes", "52428800")
        .create()
        .context("creating the verification consumer")?;
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .context("topic metadata")?;
    let partitions = md.topics().first().map_or(0, |t| t.partitions().len());
    anyhow::ensure!(partitions > 0, "topic {topic} has no partitions");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, i32::try_from(p)?, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;

    let mut state: HashMap<DeviceId, DeviceSeen> = expected
        .iter()
        .map(|e| {
            (
                e.device.clone(),
                DeviceSeen {
                    epoch: e.epoch,
                    seen: vec![0; usize::try_from(e.produced).unwrap_or(0) + 1],
                    highest: 0,
                },
            )
        })
        .collect();
    let mut v = Verification {
        expected_readings: expected.iter().map(|e| e.produced).sum(),
        ..Verification::default()
    };
    let limits = Limits {
        max_payload_bytes: usize::MAX,
        ..Limits::DEFAULT
    };
    let deadline = started + timeout;
    let settle = Duration::from_secs(2);
    let mut last_new = Instant::now();
    while Instant::now() < deadline {
        if v.delivered_readings >= v.expected_readings && last_new.elapsed() >= settle {
            break;
        }
        let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let Ok(msg) = msg else {
            continue;
        };
        v.records += 1;
        last_new = Instant::now();
        let ct = msg.headers().and_then(|hs| {
            hs.iter()
                .find(|h| h.key == HEADER_CONTENT_TYPE)
                .and_then(|h| h.value)
                .and_then(|b| std::str::from_utf8(b).ok())
                .map(str::to_owned)
        });
        let Some(batch) = msg
            .payload()
            .and_then(|p| kafka::decode_record_value(p, ct.as_deref(), &limits).ok())
        else {
            v.foreign_or_bad_records += 1;
            continue;
        };
        let Some(dev) = state.get_mut(&batch.device) else {
            v.foreign_or_bad_records += 1;
            continue;
        };
        if dev.epoch != batch.epoch {
            v.foreign_or_bad_records += 1;
            continue;
        }
        for (seq, _) in batch.iter_seq() {
            let Some(slot) = usize::try_from(seq).ok().and_then(|i| dev.seen.get_mut(i)) else {
                v.foreign_or_bad_records += 1;
                break;
            };
            if *slot > 0 {
                v.duplicates += 1;
            } else {
                v.delivered_readings += 1;
                if seq < dev.highest {
                    v.out_of_order += 1;
                }
            }
            *slot = slot.saturating_add(1);
            dev.highest = dev.highest.max(seq);
        }
    }
    v.lost = v.expected_readings.saturating_sub(v.delivered_readings);
    v.read_seconds = started.elapsed().as_secs_f64();
    Ok(v)
}

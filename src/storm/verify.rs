//! Reads the telemetry topic back from the real broker (`assign` from offset 0 on every
//! partition, no consumer group) and checks every `(device, epoch, seq)` the fleet produced.
//!
//! Records are Breakwater batch records (envelope or JSON batch, by `content-type`) or, for the
//! DIY model, one plain JSON reading per record ([`super::diy::DiyReading`]); both go through
//! the same lost / duplicate / out-of-order counting.

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

use super::diy::DiyReading;

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
    /// Kafka timestamps (producer create time, ms since the Unix epoch) of the first and the
    /// last record that brought a new expected reading: when the data reached the producer
    /// that wrote it to Kafka.
    pub first_record_ms: Option<i64>,
    pub last_record_ms: Option<i64>,
    pub read_seconds: f64,
}

/// How the records on the topic encode readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordFormat {
    /// One Breakwater batch per record (`breakwater_protocol::kafka`).
    Batch,
    /// One DIY JSON reading per record.
    DiyJson,
    /// One Breakwater batch per DIY message, made by the gateway from a `[[json_devices]]`
    /// topic with `format = "object"`: the message's `epoch` and `seq` are readings.
    JsonMqtt,
    /// One Breakwater batch per Sparkplug DDATA, made by the gateway's host application: the
    /// message's `epoch` and `seq` metrics say which device readings `seq..seq + n` it holds
    /// ([`super::sparkplug`]).
    Sparkplug,
}

/// The record's `content-type` header, if any.
fn content_type<'a>(msg: &'a rdkafka::message::BorrowedMessage<'_>) -> Option<&'a str> {
    msg.headers().and_then(|hs| {
        hs.iter()
            .find(|h| h.key == HEADER_CONTENT_TYPE)
            .and_then(|h| h.value)
            .and_then(|b| std::str::from_utf8(b).ok())
    })
}

/// The non-negative integer value of the batch's reading named `name` (the `epoch` and `seq`
/// the simulated standard clients put in each message).
fn int_reading(batch: &breakwater_protocol::Batch, name: &str) -> Option<u64> {
    batch.readings.iter().find_map(|r| match r.value {
        breakwater_protocol::Value::I64(v) if r.metric == name => u64::try_from(v).ok(),
        _ => None,
    })
}

/// `(device, epoch, seqs)` of one record, or `None` if it does not decode.
fn decode(
    msg: &rdkafka::message::BorrowedMessage<'_>,
    format: RecordFormat,
    limits: &Limits,
) -> Option<(DeviceId, u64, Vec<u64>)> {
    let payload = msg.payload()?;
    match format {
        RecordFormat::Batch => {
            let batch = kafka::decode_record_value(payload, content_type(msg), limits).ok()?;
            let seqs = batch.iter_seq().map(|(seq, _)| seq).collect();
            Some((batch.device, batch.epoch, seqs))
        }
        RecordFormat::DiyJson => {
            let r: DiyReading = serde_json::from_slice(payload).ok()?;
            Some((DeviceId::parse(r.device).ok()?, r.epoch, vec![r.seq]))
        }
        RecordFormat::JsonMqtt => {
            let batch = kafka::decode_record_value(payload, content_type(msg), limits).ok()?;
            let field = |name: &str| int_reading(&batch, name);
            Some((batch.device.clone(), field("epoch")?, vec![field("seq")?]))
        }
        RecordFormat::Sparkplug => {
            let batch = kafka::decode_record_value(payload, content_type(msg), limits).ok()?;
            let field = |name: &str| int_reading(&batch, name);
            let (epoch, first) = (field("epoch")?, field("seq")?);
            let n = batch.readings.len() as u64;
            Some((batch.device.clone(), epoch, (first..first + n).collect()))
        }
    }
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
    format: RecordFormat,
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
        let Some((device, epoch, seqs)) = decode(&msg, format, &limits) else {
            v.foreign_or_bad_records += 1;
            continue;
        };
        let Some(dev) = state.get_mut(&device) else {
            v.foreign_or_bad_records += 1;
            continue;
        };
        if dev.epoch != epoch {
            v.foreign_or_bad_records += 1;
            continue;
        }
        let mut brought_new = false;
        for seq in seqs {
            let Some(slot) = usize::try_from(seq).ok().and_then(|i| dev.seen.get_mut(i)) else {
                v.foreign_or_bad_records += 1;
                break;
            };
            if *slot > 0 {
                v.duplicates += 1;
            } else {
                v.delivered_readings += 1;
                brought_new = true;
                if seq < dev.highest {
                    v.out_of_order += 1;
                }
            }
            *slot = slot.saturating_add(1);
            dev.highest = dev.highest.max(seq);
        }
        if brought_new {
            if let Some(ts) = msg.timestamp().to_millis() {
                v.first_record_ms = Some(v.first_record_ms.map_or(ts, |f| f.min(ts)));
                v.last_record_ms = Some(v.last_record_ms.map_or(ts, |l| l.max(ts)));
            }
        }
    }
    v.lost = v.expected_readings.saturating_sub(v.delivered_readings);
    v.read_seconds = started.elapsed().as_secs_f64();
    Ok(v)
}

//! `breakwater-gateway spool drain`: empties the spool directory of a gateway that is not
//! running into Kafka, from any host that can read the directory (a dead gateway's disk, its
//! volume mounted elsewhere, a copy).
//!
//! In ack mode `spool` a device is acked as soon as its batch is in the spool, so when that
//! gateway dies and stays down its devices fail over to another gateway and send only what
//! comes after; the acked batches exist nowhere but in the dead gateway's spool. This command is
//! how they still reach Kafka.
//!
//! # Invariants
//! * A record is deleted from the spool only after Kafka's delivery report for it (idempotent
//!   producer, `acks=all`, the gateway's own producer settings); an interrupted drain leaves the
//!   undelivered records in the spool and can simply be run again. A record not delivered within
//!   `[kafka] message_timeout_ms` (2 minutes when that is 0, "forever") stops the drain.
//! * Records are produced in key order, which is seq order per device, so each device's
//!   records keep their order in their partition.
//! * A record delivered and not yet deleted when the drain is interrupted is produced again by
//!   the next run: a duplicate with the same `bw-device`/`bw-epoch`/`bw-*-seq` headers, which
//!   downstream dedupes (as after a gateway crash). Nothing is lost either way.
//! * The spool's redb file is locked while a gateway runs on it: the drain refuses then
//!   ([`OfflineDrainError::Spool`]); it never shares a spool with a live gateway.
//! * A record that does not decode (JSON encoding) or that Kafka refuses stops the drain; the
//!   records delivered before it are deleted, it and everything after stay.

use std::path::Path;
use std::time::Duration;

use breakwater_protocol::kafka::Encoding;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use tracing::info;

use super::sink::{record_headers, record_value};
use crate::config::KafkaConfig;
use crate::spool::{Spool, SpoolError};

/// Records produced per round (their delivery reports are awaited, then they are deleted in
/// one commit).
const CHUNK: usize = 5_000;

#[derive(Debug, thiserror::Error)]
pub enum OfflineDrainError {
    #[error("no spool in {0} (no {file} there)", file = crate::spool::FILE_NAME)]
    NoSpool(std::path::PathBuf),
    #[error("spool: {0}")]
    Spool(#[from] SpoolError),
    #[error("Kafka producer: {0}")]
    Producer(KafkaError),
    #[error("spool record {key} does not decode: {error}; it and the records after it stay in the spool")]
    Corrupt { key: u64, error: String },
    #[error(
        "Kafka refused spool record {key}: {error}; it and the records after it stay in the spool"
    )]
    Delivery { key: u64, error: String },
}

/// What a drain did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Records delivered to Kafka and deleted from the spool.
    pub records: u64,
    /// Readings in those records.
    pub readings: u64,
}

/// Produces every record of the spool in `dir` to `cfg.topic` on `brokers` and deletes it once
/// delivered (see the module doc). Returns when the spool is empty.
///
/// # Errors
/// The spool cannot be opened (a gateway runs on it, a format it does not know), the producer
/// cannot be created, or a record cannot be delivered. Whatever was delivered before the error
/// is deleted; the rest stays.
pub async fn drain_dir(
    dir: &Path,
    cfg: &KafkaConfig,
    brokers: &str,
) -> Result<DrainReport, OfflineDrainError> {
    if !dir.join(crate::spool::FILE_NAME).is_file() {
        return Err(OfflineDrainError::NoSpool(dir.to_owned()));
    }
    let (spool, _) = Spool::open(dir, u64::MAX)?;
    let mut pc = super::config::producer_config(cfg, brokers);
    pc.set("client.id", "breakwater-gateway-spool-drain");
    if cfg.message_timeout_ms == 0 {
        // The gateway retries forever (its spool keeps the data); an operator's command must
        // end: a record not delivered in 2 minutes stops the drain (run it again).
        pc.set("message.timeout.ms", "120000");
    }
    let producer: FutureProducer = pc.create().map_err(OfflineDrainError::Producer)?;
    let mut report = DrainReport::default();
    let result = drain_records(&spool, &producer, &cfg.topic, cfg.encoding, &mut report).await;
    // Nothing is left in librdkafka's queue when the drain ends: every produced record's report
    // was awaited above.
    let _ = producer.flush(Duration::from_secs(5));
    result.map(|()| report)
}

async fn drain_records(
    spool: &Spool,
    producer: &FutureProducer,
    topic: &str,
    encoding: Encoding,
    report: &mut DrainReport,
) -> Result<(), OfflineDrainError> {
    let mut from = 0;
    loop {
        let chunk = spool.read_from(from, CHUNK)?;
        let Some(&(last, _)) = chunk.last() else {
            return Ok(());
        };
        let mut pending = Vec::with_capacity(chunk.len());
        let mut stop = None;
        for (key, rec) in &chunk {
            let value = match record_value(rec, encoding) {
                Ok(v) => v,
                Err(error) => {
                    stop = Some(OfflineDrainError::Corrupt { key: *key, error });
                    break;
                }
            };
            let record = FutureRecord::to(topic)
                .key(rec.device.as_str())
                .payload(&value)
                .headers(record_headers(rec, encoding));
            let fut = match send(producer, record).await {
                Ok(f) => f,
                Err(e) => {
                    stop = Some(OfflineDrainError::Producer(e));
                    break;
                }
            };
            pending.push((*key, rec.last_seq - rec.first_seq + 1, fut));
        }
        let mut delivered = Vec::with_capacity(pending.len());
        let mut readings = 0;
        for (key, n, fut) in pending {
            match fut.await {
                Ok(Ok(_)) => {
                    delivered.push(key);
                    readings += n;
                }
                Ok(Err((e, _))) => {
                    stop.get_or_insert(OfflineDrainError::Delivery {
                        key,
                        error: e.to_string(),
                    });
                    break;
                }
                Err(_canceled) => {
                    stop.get_or_insert(OfflineDrainError::Delivery {
                        key,
                        error: "delivery report canceled".to_owned(),
                    });
                    // Records after a refused one are not deleted even when delivered: the next
                    // run produces them again (duplicates, in order), never out of order.
                    break;
                }
            }
        }
        spool.commit(&[], &delivered)?;
        report.records += delivered.len() as u64;
        report.readings += readings;
        info!(
            records = report.records,
            readings = report.readings,
            "spool drain: delivered and deleted"
        );
        if let Some(e) = stop {
            return Err(e);
        }
        from = last + 1;
    }
}

/// Hands `record` to the producer, waiting while librdkafka's queue is full.
async fn send(
    producer: &FutureProducer,
    mut record: FutureRecord<'_, str, Vec<u8>>,
) -> Result<DeliveryFuture, KafkaError> {
    loop {
        match producer.send_result(record) {
            Ok(fut) => return Ok(fut),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

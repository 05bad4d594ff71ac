//! The drain: reads committed spool records in key order and produces them to Kafka, at most
//! `max_in_flight_records` at a time. A record is deleted from the spool only after its delivery
//! report; in ack mode `kafka` the report is also what acks the device.
//!
//! Order: records are produced in key order, which per device is seq order, and the idempotent
//! producer keeps that order per partition through retries. With `message_timeout_ms = 0`
//! (default) librdkafka retries forever, so a paused or unreachable Kafka only stalls the drain;
//! the spool keeps everything. A delivery *error* (for instance a record too large for the
//! broker, or a finite message timeout passing) rewinds the drain to the oldest failed record
//! once everything in flight has completed; records after it that were delivered meanwhile are
//! not resent, so in that case a device's records can reach Kafka out of order (never lost).
//!
//! Delivery reports are taken in produce order (`FuturesOrdered`). Taking them as they complete
//! (`FuturesUnordered`) was measured (issue #4): the in-gateway `kafka_delivery` stage fell by
//! 3-6 ms at p50, but every such run had ~0.9 s ack outliers at the devices (p99.9) that the
//! ordered drain did not show at the same load, so it is not used until that is understood.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use breakwater_protocol::kafka::{
    Encoding, HEADER_CONTENT_TYPE, HEADER_DEVICE, HEADER_EPOCH, HEADER_FIRST_SEQ, HEADER_LAST_SEQ,
};
use breakwater_protocol::{json, DeviceId};
use futures_util::stream::{FuturesOrdered, StreamExt};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::ack::Acker;
use crate::sequencer::Sequencer;
use crate::spool::writer::Deletes;
use crate::spool::{Spool, SpoolRecord};
use crate::stats as m;

/// Builds the Kafka record value for a spooled batch.
///
/// # Errors
/// With JSON encoding, the stored envelope does not decode (corrupt record).
pub fn record_value(rec: &SpoolRecord, encoding: Encoding) -> Result<Vec<u8>, String> {
    match encoding {
        Encoding::Postcard => Ok(rec.payload.clone()),
        Encoding::Json => rec
            .batch()
            .map(|b| json::encode_batch(&b).into_bytes())
            .map_err(|e| e.to_string()),
    }
}

/// The record headers of a spooled batch.
#[must_use]
pub fn record_headers(rec: &SpoolRecord, encoding: Encoding) -> OwnedHeaders {
    let epoch = rec.epoch.to_string();
    let first = rec.first_seq.to_string();
    let last = rec.last_seq.to_string();
    OwnedHeaders::new_with_capacity(5)
        .insert(Header {
            key: HEADER_DEVICE,
            value: Some(rec.device.as_str()),
        })
        .insert(Header {
            key: HEADER_EPOCH,
            value: Some(epoch.as_str()),
        })
        .insert(Header {
            key: HEADER_FIRST_SEQ,
            value: Some(first.as_str()),
        })
        .insert(Header {
            key: HEADER_LAST_SEQ,
            value: Some(last.as_str()),
        })
        .insert(Header {
            key: HEADER_CONTENT_TYPE,
            value: Some(encoding.content_type()),
        })
}

/// Records `breakwater_gateway_stage_seconds{stage}` from a receive time in wall-clock ms.
fn stage_since_ms(stage: &'static str, received_ms: u64) {
    #[allow(clippy::cast_precision_loss)]
    let secs = crate::link::now_ms().saturating_sub(received_ms) as f64 / 1000.0;
    metrics::histogram!(m::STAGE_SECONDS, "stage" => stage).record(secs);
}

struct Meta {
    key: u64,
    device: Option<DeviceId>,
    epoch: u64,
    first: u64,
    last: u64,
    /// Gateway clock when the batch was received, ms since the Unix epoch.
    received_ms: u64,
    /// When it was handed to the producer.
    enqueued: Instant,
}

pub struct Drain {
    pub spool: Arc<Spool>,
    pub producer: FutureProducer,
    pub topic: String,
    pub encoding: Encoding,
    pub deletes: Arc<Deletes>,
    pub committed: Arc<Notify>,
    pub sequencer: Arc<Sequencer>,
    /// `Some` in ack mode `kafka`: ack on the delivery report.
    pub acker: Option<Acker>,
    pub max_in_flight: usize,
    /// Set once the spool writer has stopped (no new records will appear).
    pub writer_done: Arc<AtomicBool>,
}

impl std::fmt::Debug for Drain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drain")
            .field("topic", &self.topic)
            .field("encoding", &self.encoding)
            .finish_non_exhaustive()
    }
}

impl Drain {
    /// Runs until `stop` is cancelled and everything spooled was delivered, or until `abort`
    /// is cancelled (shutdown deadline: undelivered records stay in the spool).
    pub async fn run(self, stop: CancellationToken, abort: CancellationToken) {
        let mut next_key = 0u64;
        let mut inflight = FuturesOrdered::new();
        let mut failed: Option<u64> = None;
        let mut delivered_keys = Vec::with_capacity(1024);
        loop {
            if abort.is_cancelled() {
                break;
            }
            // Fill the window from the spool.
            let mut read_any = false;
            let mut queue_full = false;
            if failed.is_none() && inflight.len() < self.max_in_flight {
                let want = (self.max_in_flight - inflight.len()).min(2_000);
                let spool = self.spool.clone();
                let from = next_key;
                let recs =
                    match tokio::task::spawn_blocking(move || spool.read_from(from, want)).await {
                        Ok(Ok(r)) => r,
                        Ok(Err(e)) => {
                            error!(error = %e, "spool read failed");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            continue;
                        }
                        Err(e) => {
                            error!(error = %e, "spool read task failed");
                            continue;
                        }
                    };
                for (key, rec) in recs {
                    read_any = true;
                    let value = match record_value(&rec, self.encoding) {
                        Ok(v) => v,
                        Err(e) => {
                            // Cannot happen for records the link consumer wrote; keep the
                            // record out of the way rather than stall the whole spool.
                            error!(key, error = %e, "corrupt spool record skipped (kept in the spool)");
                            metrics::counter!(m::KAFKA_ERRORS, "reason" => "corrupt_record")
                                .increment(1);
                            next_key = key + 1;
                            continue;
                        }
                    };
                    let record = FutureRecord::to(&self.topic)
                        .key(rec.device.as_str())
                        .payload(&value)
                        .headers(record_headers(&rec, self.encoding));
                    match self.producer.send_result(record) {
                        Ok(fut) => {
                            let received_ms = rec.received_ms;
                            stage_since_ms("spooled", received_ms);
                            let enqueued = Instant::now();
                            inflight.push_back(async move {
                                let meta = Meta {
                                    key,
                                    device: DeviceId::parse(rec.device.as_str()).ok(),
                                    epoch: rec.epoch,
                                    first: rec.first_seq,
                                    last: rec.last_seq,
                                    received_ms,
                                    enqueued,
                                };
                                (meta, fut.await)
                            });
                            next_key = key + 1;
                        }
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                            queue_full = true;
                            break;
                        }
                        Err((e, _)) => {
                            warn!(key, error = %e, "produce failed; will retry");
                            metrics::counter!(m::KAFKA_ERRORS, "reason" => "produce").increment(1);
                            failed = Some(failed.map_or(key, |f| f.min(key)));
                            break;
                        }
                    }
                }
            }
            #[allow(clippy::cast_precision_loss)]
            metrics::gauge!(m::KAFKA_IN_FLIGHT).set(inflight.len() as f64);

            if inflight.is_empty() {
                if let Some(f) = failed.take() {
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        () = abort.cancelled() => break,
                    }
                    next_key = f;
                    continue;
                }
                if read_any {
                    continue;
                }
                if queue_full {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                if stop.is_cancelled() && self.writer_done.load(Ordering::Acquire) {
                    // Re-check after the writer's last commit.
                    let spool = self.spool.clone();
                    let from = next_key;
                    let more = tokio::task::spawn_blocking(move || spool.read_from(from, 1))
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .is_some_and(|v| !v.is_empty());
                    if !more {
                        break;
                    }
                    continue;
                }
                tokio::select! {
                    () = self.committed.notified() => {}
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    () = abort.cancelled() => break,
                }
                continue;
            }

            let can_fill = failed.is_none() && !queue_full && inflight.len() < self.max_in_flight;
            tokio::select! {
                Some((meta, res)) = inflight.next() => {
                    self.delivered(meta, res, &mut failed, &mut delivered_keys);
                    // Take every other report that is already complete.
                    while let Some(Some((meta, res))) = futures_util::FutureExt::now_or_never(inflight.next()) {
                        self.delivered(meta, res, &mut failed, &mut delivered_keys);
                    }
                    if !delivered_keys.is_empty() {
                        self.deletes.push(delivered_keys.drain(..));
                    }
                }
                () = self.committed.notified(), if can_fill => {}
                () = abort.cancelled() => break,
            }
        }
        if !delivered_keys.is_empty() {
            self.deletes.push(delivered_keys.drain(..));
        }
        if !inflight.is_empty() {
            warn!(
                records = inflight.len(),
                "shutdown deadline: records still in flight to Kafka stay in the spool"
            );
        }
        info!("kafka drain stopped");
    }

    fn delivered<E>(
        &self,
        meta: Meta,
        res: Result<OwnedDeliveryResult, E>,
        failed: &mut Option<u64>,
        keys: &mut Vec<u64>,
    ) {
        match res {
            Ok(Ok(_)) => {
                metrics::counter!(m::KAFKA_DELIVERED_BATCHES).increment(1);
                metrics::histogram!(m::STAGE_SECONDS, "stage" => "kafka_delivery")
                    .record(meta.enqueued.elapsed().as_secs_f64());
                keys.push(meta.key);
                if let (Some(acker), Some(device)) = (&self.acker, meta.device) {
                    if let Some(upto) = self
                        .sequencer
                        .durable(&device, meta.epoch, meta.first, meta.last)
                    {
                        stage_since_ms("durable", meta.received_ms);
                        acker.ack(device, meta.epoch, upto);
                    }
                }
            }
            Ok(Err((e, _))) => {
                warn!(key = meta.key, error = %e, "delivery failed; will retry from the spool");
                metrics::counter!(m::KAFKA_ERRORS, "reason" => "delivery").increment(1);
                *failed = Some(failed.map_or(meta.key, |f| f.min(meta.key)));
            }
            Err(_) => {
                metrics::counter!(m::KAFKA_ERRORS, "reason" => "canceled").increment(1);
                *failed = Some(failed.map_or(meta.key, |f| f.min(meta.key)));
            }
        }
    }
}

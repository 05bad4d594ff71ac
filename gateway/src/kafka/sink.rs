//! The drain: reads committed spool records in key order and produces them to Kafka, at most
//! `max_in_flight_records` at a time. A record is deleted from the spool only after its delivery
//! report; in ack mode `kafka` the report is also what acks the device. In ack mode `kafka` it
//! also produces the batches the spool writer hands over from memory while Kafka keeps up
//! (`spool::writer`, "Past the spool"), ordered before any spool record committed after them.
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

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use breakwater_protocol::kafka::{
    Encoding, HEADER_CONTENT_TYPE, HEADER_DEVICE, HEADER_EPOCH, HEADER_FIRST_SEQ, HEADER_LAST_SEQ,
    HEADER_MQTT_CLIENT, HEADER_MQTT_DUP, HEADER_MQTT_PKID, HEADER_SOURCE,
};
use breakwater_protocol::{json, DeviceId};
use futures_util::stream::{FuturesOrdered, StreamExt};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::ack::Acker;
use crate::sequencer::Sequencer;
use crate::spool::writer::{Accepted, Bypass, Deletes};
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
    let headers = OwnedHeaders::new_with_capacity(9)
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
        });
    match &rec.origin {
        None => headers,
        Some(o) => {
            let pkid = o.pkid.to_string();
            headers
                .insert(Header {
                    key: HEADER_SOURCE,
                    value: Some(o.source.as_str()),
                })
                .insert(Header {
                    key: HEADER_MQTT_CLIENT,
                    value: Some(o.client_id.as_str()),
                })
                .insert(Header {
                    key: HEADER_MQTT_PKID,
                    value: Some(pkid.as_str()),
                })
                .insert(Header {
                    key: HEADER_MQTT_DUP,
                    value: Some(if o.dup { "1" } else { "0" }),
                })
        }
    }
}

/// Records `breakwater_gateway_stage_seconds{stage}` from a receive time in wall-clock ms.
fn stage_since_ms(stage: &'static str, received_ms: u64) {
    #[allow(clippy::cast_precision_loss)]
    let secs = crate::link::now_ms().saturating_sub(received_ms) as f64 / 1000.0;
    metrics::histogram!(m::STAGE_SECONDS, "stage" => stage).record(secs);
}

struct Meta {
    /// The spool key; `None` for a batch produced from memory (past the spool).
    key: Option<u64>,
    device: Option<DeviceId>,
    epoch: u64,
    first: u64,
    last: u64,
    /// Gateway clock when the batch was received, ms since the Unix epoch.
    received_ms: u64,
    /// When it was handed to the producer.
    enqueued: Instant,
}

/// Why a record was not handed to the producer.
enum SendError {
    /// librdkafka's queue is full: try again shortly.
    QueueFull,
    /// The stored envelope does not decode (JSON encoding only).
    Corrupt(String),
    Kafka(KafkaError),
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
    /// Batches the writer hands over past the spool (see `spool::writer`), with the state the
    /// two share. `None`: every batch comes through the spool.
    pub bypass: Option<(Arc<Bypass>, mpsc::UnboundedReceiver<Accepted>)>,
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
    /// Runs until `stop` is cancelled and everything spooled or handed over from memory was
    /// delivered, or until `abort` is cancelled (shutdown deadline: undelivered records stay in
    /// the spool; undelivered batches from memory were never acked, their devices resend them).
    ///
    /// Order: each round first reads the spool, then takes what the writer handed over from
    /// memory and produces that, then the spool records. The writer hands a batch over only
    /// when every committed record has been produced, and anything it handed over before it
    /// committed the records just read is in the channel by the time the read returns, so no
    /// batch overtakes an older one of the same device.
    pub async fn run(mut self, stop: CancellationToken, abort: CancellationToken) {
        let (shared, mut direct_rx) = match self.bypass.take() {
            Some((s, rx)) => (Some(s), Some(rx)),
            None => (None, None),
        };
        let mut next_key = 0u64;
        let mut inflight = FuturesOrdered::new();
        let mut failed: Option<u64> = None;
        let mut delivered_keys = Vec::with_capacity(1024);
        // Batches from memory not yet handed to the producer (its queue was full), oldest first.
        let mut memory: VecDeque<Accepted> = VecDeque::new();
        let mut direct_open = direct_rx.is_some();
        loop {
            if abort.is_cancelled() {
                break;
            }
            // 1. Spool records not yet produced, unless batches from memory wait (they go first).
            // While batches skip the spool, nothing new is committed: no read on the hot path.
            let committed = shared
                .as_ref()
                .map(|b| b.committed_upto.load(Ordering::Acquire))
                .filter(|&c| c != Bypass::UNKNOWN);
            let nothing_new = committed.is_some_and(|c| next_key >= c);
            let mut from_spool = Vec::new();
            let mut caught_up_to = None;
            if failed.is_none()
                && memory.is_empty()
                && !nothing_new
                && inflight.len() < self.max_in_flight
            {
                let want = (self.max_in_flight - inflight.len()).min(2_000);
                let spool = self.spool.clone();
                let from = next_key;
                match tokio::task::spawn_blocking(move || spool.read_from(from, want)).await {
                    Ok(Ok(r)) => {
                        // Fewer than asked: every key committed before the read was returned.
                        if r.len() < want {
                            caught_up_to = committed;
                        }
                        from_spool = r;
                    }
                    Ok(Err(e)) => {
                        error!(error = %e, "spool read failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                    Err(e) => {
                        error!(error = %e, "spool read task failed");
                        continue;
                    }
                }
            }
            // 2. Batches handed over from memory.
            if let Some(rx) = direct_rx.as_mut() {
                loop {
                    match rx.try_recv() {
                        Ok(a) => memory.push_back(a),
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => {
                            direct_open = false;
                            break;
                        }
                    }
                }
            }
            let mut queue_full = false;
            while let Some(a) = memory.pop_front() {
                match self.send(None, &a.record) {
                    Ok(fut) => {
                        stage_since_ms("direct", a.record.received_ms);
                        inflight.push_back(fut);
                    }
                    Err(SendError::QueueFull) => {
                        memory.push_front(a);
                        queue_full = true;
                        break;
                    }
                    Err(SendError::Corrupt(e)) => self.refuse_direct(&a, &e, shared.as_deref()),
                    Err(SendError::Kafka(e)) => {
                        self.refuse_direct(&a, &e.to_string(), shared.as_deref());
                    }
                }
            }
            // 3. The spool records.
            let mut read_any = false;
            if memory.is_empty() {
                for (key, rec) in from_spool {
                    read_any = true;
                    match self.send(Some(key), &rec) {
                        Ok(fut) => {
                            stage_since_ms("spooled", rec.received_ms);
                            inflight.push_back(fut);
                            next_key = key + 1;
                        }
                        Err(SendError::QueueFull) => {
                            queue_full = true;
                            caught_up_to = None;
                            break;
                        }
                        Err(SendError::Corrupt(e)) => {
                            // Cannot happen for records the link consumer wrote; keep the
                            // record out of the way rather than stall the whole spool.
                            error!(key, error = %e, "corrupt spool record skipped (kept in the spool)");
                            metrics::counter!(m::KAFKA_ERRORS, "reason" => "corrupt_record")
                                .increment(1);
                            next_key = key + 1;
                        }
                        Err(SendError::Kafka(e)) => {
                            warn!(key, error = %e, "produce failed; will retry");
                            metrics::counter!(m::KAFKA_ERRORS, "reason" => "produce").increment(1);
                            failed = Some(failed.map_or(key, |f| f.min(key)));
                            caught_up_to = None;
                            break;
                        }
                    }
                }
                if let Some(c) = caught_up_to {
                    next_key = next_key.max(c);
                }
            }
            if let Some(b) = &shared {
                let upto = failed.map_or(next_key, |f| f.min(next_key));
                b.produced_upto.store(upto, Ordering::Release);
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
                if stop.is_cancelled()
                    && self.writer_done.load(Ordering::Acquire)
                    && !direct_open
                    && memory.is_empty()
                {
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
                    Some(a) = recv(&mut direct_rx), if direct_open => memory.push_back(a),
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    () = abort.cancelled() => break,
                }
                continue;
            }

            let can_fill = failed.is_none() && !queue_full && inflight.len() < self.max_in_flight;
            tokio::select! {
                Some((meta, res)) = inflight.next() => {
                    self.delivered(meta, res, &mut failed, &mut delivered_keys, shared.as_deref());
                    // Take every other report that is already complete.
                    while let Some(Some((meta, res))) = futures_util::FutureExt::now_or_never(inflight.next()) {
                        self.delivered(meta, res, &mut failed, &mut delivered_keys, shared.as_deref());
                    }
                    if !delivered_keys.is_empty() {
                        self.deletes.push(delivered_keys.drain(..));
                    }
                }
                () = self.committed.notified(), if can_fill => {}
                Some(a) = recv(&mut direct_rx), if direct_open && !queue_full => memory.push_back(a),
                () = abort.cancelled() => break,
            }
        }
        if !delivered_keys.is_empty() {
            self.deletes.push(delivered_keys.drain(..));
        }
        if !inflight.is_empty() || !memory.is_empty() {
            warn!(
                records = inflight.len(),
                from_memory_not_produced = memory.len(),
                "shutdown deadline: records still in flight to Kafka stay in the spool; batches \
                 from memory among them were never acked and their devices resend them"
            );
        }
        info!("kafka drain stopped");
    }

    /// Hands one record to the producer. `key`: its spool key, `None` for a batch from memory.
    fn send(
        &self,
        key: Option<u64>,
        rec: &SpoolRecord,
    ) -> Result<
        impl std::future::Future<Output = (Meta, <DeliveryFuture as std::future::Future>::Output)>,
        SendError,
    > {
        let value = record_value(rec, self.encoding).map_err(SendError::Corrupt)?;
        let record = FutureRecord::to(&self.topic)
            .key(rec.device.as_str())
            .payload(&value)
            .headers(record_headers(rec, self.encoding));
        let fut = match self.producer.send_result(record) {
            Ok(fut) => fut,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                return Err(SendError::QueueFull);
            }
            Err((e, _)) => return Err(SendError::Kafka(e)),
        };
        let meta = Meta {
            key,
            device: DeviceId::parse(rec.device.as_str()).ok(),
            epoch: rec.epoch,
            first: rec.first_seq,
            last: rec.last_seq,
            received_ms: rec.received_ms,
            enqueued: Instant::now(),
        };
        Ok(async move { (meta, fut.await) })
    }

    /// A batch from memory that cannot be produced: it is not acked, and the sequencer forgets
    /// it (and the device's later batches) so the device's resend is taken.
    fn refuse_direct(&self, a: &Accepted, error: &str, shared: Option<&Bypass>) {
        warn!(device = %a.device, epoch = a.record.epoch, first_seq = a.record.first_seq, %error,
            "produce failed for a batch from memory; not acked, the device resends it");
        metrics::counter!(m::KAFKA_ERRORS, "reason" => "produce").increment(1);
        metrics::counter!(m::DROPPED_BATCHES, "reason" => "kafka_rejected").increment(1);
        self.sequencer
            .reject(&a.device, a.record.epoch, a.record.first_seq);
        if let Some(b) = shared {
            b.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn delivered<E>(
        &self,
        meta: Meta,
        res: Result<OwnedDeliveryResult, E>,
        failed: &mut Option<u64>,
        keys: &mut Vec<u64>,
        shared: Option<&Bypass>,
    ) {
        if meta.key.is_none() {
            if let Some(b) = shared {
                b.in_flight.fetch_sub(1, Ordering::AcqRel);
            }
        }
        match res {
            Ok(Ok(_)) => {
                metrics::counter!(m::KAFKA_DELIVERED_BATCHES).increment(1);
                metrics::histogram!(m::STAGE_SECONDS, "stage" => "kafka_delivery")
                    .record(meta.enqueued.elapsed().as_secs_f64());
                if let Some(key) = meta.key {
                    keys.push(key);
                }
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
                metrics::counter!(m::KAFKA_ERRORS, "reason" => "delivery").increment(1);
                self.undelivered(&meta, &e.to_string(), failed, shared);
            }
            Err(_) => {
                metrics::counter!(m::KAFKA_ERRORS, "reason" => "canceled").increment(1);
                self.undelivered(&meta, "delivery report canceled", failed, shared);
            }
        }
    }

    /// A record Kafka did not take: a spool record is produced again from the spool (the drain
    /// rewinds to it); a batch from memory is not acked and the sequencer forgets it, so the
    /// device's resend is taken.
    fn undelivered(
        &self,
        meta: &Meta,
        error: &str,
        failed: &mut Option<u64>,
        shared: Option<&Bypass>,
    ) {
        match (meta.key, &meta.device) {
            (Some(key), _) => {
                warn!(key, %error, "delivery failed; will retry from the spool");
                *failed = Some(failed.map_or(key, |f| f.min(key)));
                if let Some(b) = shared {
                    b.produced_upto.fetch_min(key, Ordering::AcqRel);
                }
            }
            (None, Some(device)) => {
                warn!(%device, epoch = meta.epoch, first_seq = meta.first, %error,
                    "delivery failed for a batch from memory; not acked, the device resends it");
                metrics::counter!(m::DROPPED_BATCHES, "reason" => "kafka_rejected").increment(1);
                self.sequencer.reject(device, meta.epoch, meta.first);
            }
            // Cannot happen: the id comes from a batch the link consumer accepted.
            (None, None) => {}
        }
    }
}

/// The next batch handed over from memory; pending forever without a channel.
async fn recv(rx: &mut Option<mpsc::UnboundedReceiver<Accepted>>) -> Option<Accepted> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

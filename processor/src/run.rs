//! The processing loop: consume, apply to the core, produce outputs, checkpoint.
//!
//! # Exactly-once with respect to the input
//! * A checkpoint ([`crate::checkpoint`]) stores, in one redb transaction, every partition's
//!   state and the next offset of both input topics. On start (explicit assignment) or on
//!   assignment (consumer group), each partition's state is loaded and the consumer is
//!   positioned at the stored offsets (at the beginning when there is no checkpoint). A record
//!   at an offset below the stored one is never applied again. So each input record changes the
//!   state exactly once, whatever crashes happen.
//! * Before a checkpoint commits, the producer is flushed and every output produced so far must
//!   have been acknowledged by Kafka. If any was not, the processor stops **without**
//!   committing: the restart replays from the previous checkpoint and produces those outputs
//!   again. Outputs are therefore at-least-once, and a replayed output has the same `id` as the
//!   first copy (ids are derived from the input, never from time or randomness), so consumers
//!   drop repeats by `id`.
//!
//! # With Kafka transactions (`kafka.exactly_once`)
//! The output producer is transactional. Each checkpoint interval is one Kafka transaction:
//! the outputs, the changelog records, then `send_offsets_to_transaction` with the input
//! offsets and the consumer's group metadata (KIP-447 fencing), then commit; only then does
//! redb commit. A crash before the Kafka commit aborts everything of the interval (a restart
//! with the same `transactional.id` fences the old one); a crash between the Kafka commit and
//! redb leaves redb behind the changelog, and the restore takes the changelog's marker.
//! Consumers of the outputs read with `isolation.level=read_committed`. Tested end to end against
//! librdkafka's mock cluster, which does not isolate aborted records (README), hence off by
//! default.
//!
//! # Partitions moving between instances
//! See [`crate::changelog`]: each checkpoint also goes to a Kafka changelog, and a partition
//! assigned to an instance without a current local copy is restored from it, then resumes at
//! the checkpointed offsets. Static membership (`group_instance_id`) still saves a restart the
//! restore.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use breakwater_protocol::kafka::{
    decode_record_value, FleetEvent, HEADER_CONTENT_TYPE, HEADER_DEVICE, HEADER_EPOCH,
    HEADER_LAST_SEQ,
};
use breakwater_protocol::Limits;
use metrics::{counter, gauge, histogram};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::changelog;
use crate::checkpoint::Store;
use crate::config::{Config, ExactlyOnce};
use crate::kafka::{self, Deliveries, OutputProducer};
use crate::metrics as m;
use crate::output::Output;
use crate::state::{Partition, Stats};
use rdkafka::consumer::ConsumerGroupMetadata;

const LATE_LOG_EVERY: Duration = Duration::from_secs(10);

/// What a run did, returned when it stops.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub stats: Stats,
    pub telemetry_records: u64,
    pub event_records: u64,
    pub decode_errors: u64,
    pub outputs: u64,
    pub checkpoints: u64,
    /// Ran with Kafka transactions (`kafka.exactly_once`).
    pub transactional: bool,
}

/// Input records applied so far, readable while the processor runs (tests, diagnostics).
#[derive(Debug, Default)]
pub struct Progress {
    pub telemetry_records: AtomicU64,
    pub event_records: AtomicU64,
    /// Input partitions currently held (loaded and assigned).
    pub partitions: AtomicU64,
    /// Milliseconds since `Progress::epoch` of the processing loop's last iteration; 0 before
    /// the loop started.
    pub heartbeat_ms: AtomicU64,
    /// Partitions being restored right now (the loop does not run meanwhile).
    pub restoring: AtomicU64,
    /// Set once when the processing loop stops (error or shutdown).
    pub stopped: std::sync::atomic::AtomicBool,
    epoch: std::sync::OnceLock<Instant>,
}

/// What `/healthz` and `/readyz` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Serving: the loop runs and its heartbeat is fresh.
    Ready,
    /// Alive but not ready: starting up or restoring partitions.
    Starting,
    /// The loop stopped or its heartbeat is older than the limit.
    Unhealthy,
}

impl Progress {
    fn now_ms(&self) -> u64 {
        let e = self.epoch.get_or_init(Instant::now);
        u64::try_from(e.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Records one iteration of the processing loop.
    pub fn beat(&self) {
        self.heartbeat_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Liveness and readiness: a loop that has not iterated for `stale` is unhealthy, except
    /// while partitions are restored (a long restore is not a hang).
    #[must_use]
    pub fn health(&self, stale: Duration) -> Health {
        if self.stopped.load(Ordering::Relaxed) {
            return Health::Unhealthy;
        }
        if self.restoring.load(Ordering::Relaxed) > 0 {
            return Health::Starting;
        }
        let beat = self.heartbeat_ms.load(Ordering::Relaxed);
        if beat == 0 {
            return Health::Starting;
        }
        let age = self.now_ms().saturating_sub(beat);
        if u128::from(age) > stale.as_millis() {
            Health::Unhealthy
        } else {
            Health::Ready
        }
    }
}

/// Everything the loop and the rebalance callbacks share.
struct Worker {
    cfg: Arc<Config>,
    store: Store,
    parts: BTreeMap<i32, Partition>,
    stats: Stats,
    reported: Stats,
    out: Vec<Output>,
    producer: OutputProducer,
    deliveries: Arc<Deliveries>,
    since_checkpoint: u64,
    last_checkpoint: Instant,
    fatal: Option<anyhow::Error>,
    /// Set when a send failed synchronously: an output was lost from the producer's view, so no
    /// checkpoint may ever cover its input (see [`Worker::produce_outputs`]).
    send_failed: Option<String>,
    /// Late readings already logged, and when (rate limit).
    late_logged: u64,
    late_log_at: Option<Instant>,
    summary: Summary,
    limits: Limits,
    progress: Arc<Progress>,
    /// Reads the changelog and the input topics' log starts (no group membership).
    reader: BaseConsumer,
    /// Outputs, changelog and offsets of a checkpoint interval are one Kafka transaction.
    transactional: bool,
}

/// Hands one record to the producer, retrying while its queue is full until `timeout`.
fn send(
    producer: &OutputProducer,
    mut rec: BaseRecord<'_, str, [u8], usize>,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        match producer.send(rec) {
            Ok(()) => return Ok(()),
            Err((e, r))
                if e.rdkafka_error_code() == Some(rdkafka::error::RDKafkaErrorCode::QueueFull)
                    && Instant::now() < deadline =>
            {
                rec = r;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err((e, r)) => return Err(format!("producing to {}: {e}", r.topic)),
        }
    }
}

/// Records between a checkpointed next offset and the log start, when the log start is past it.
#[must_use]
pub fn records_below_log_start(next: Option<i64>, low: i64) -> Option<u64> {
    let n = next?;
    (n < low).then(|| u64::try_from(low - n).unwrap_or(0))
}

fn header<'a>(m: &'a BorrowedMessage<'_>, name: &str) -> Option<&'a str> {
    let hs = m.headers()?;
    hs.iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

impl Worker {
    /// Loads partitions `ids`: the local checkpoint if it is still the changelog's latest,
    /// else the state the changelog's last marker describes (then written to the local cache);
    /// then checks the checkpointed offsets against the input topics' log start.
    fn load_partitions(&mut self, ids: &[i32]) -> anyhow::Result<()> {
        self.progress
            .restoring
            .store(ids.len() as u64, Ordering::Relaxed);
        let r = self.load_partitions_inner(ids);
        self.progress.restoring.store(0, Ordering::Relaxed);
        // The loop was blocked while restoring: a fresh heartbeat, not a stale one.
        self.progress.beat();
        r
    }

    fn load_partitions_inner(&mut self, ids: &[i32]) -> anyhow::Result<()> {
        let t0 = Instant::now();
        let mut devices = 0;
        let k = &self.cfg.kafka;
        for &id in ids {
            if self.parts.contains_key(&id) {
                continue;
            }
            let l = self
                .store
                .load(id, &k.telemetry_topic, &k.events_topic)
                .with_context(|| format!("loading the local checkpoint of partition {id}"))?;
            let local = l
                .partition
                .changelog_offset
                .map(|off| (l.partition.changelog_seq, off));
            let local_seq = l.partition.changelog_seq;
            let base = local.map(|(seq, off)| (l.partition, seq, off));
            let r = changelog::restore(
                &self.reader,
                &k.changelog_topic,
                id,
                &changelog::Owner::of(k),
                base,
                k.restore_quiet,
                k.restore_timeout,
            )
            .with_context(|| {
                format!(
                    "restoring partition {id} from changelog topic {}",
                    k.changelog_topic
                )
            })?;
            let from_local =
                local.is_some_and(|(seq, _)| r.partition.changelog_seq == seq) && r.markers == 0;
            let mut part = r.partition;
            if !from_local {
                // The changelog is ahead of (or instead of) the local copy: refill the cache.
                self.store
                    .replace_partition(&part, &k.telemetry_topic, &k.events_topic)
                    .with_context(|| format!("writing partition {id}'s restored state locally"))?;
                counter!(m::CHANGELOG_RESTORES).increment(1);
            }
            if r.repaired > 0 {
                tracing::warn!(partition = id, devices = r.repaired, "changelog records after the last marker (an incomplete checkpoint) ignored; the next checkpoint rewrites them");
            }
            self.check_log_start(&mut part)?;
            tracing::info!(
                partition = id,
                source = if from_local {
                    "local"
                } else if part.changelog_offset.is_some() {
                    "changelog"
                } else {
                    "empty"
                },
                devices = part.devices.len(),
                changelog_records = r.records,
                marker_seq = part.changelog_seq,
                local_seq,
                ms = t0.elapsed().as_millis(),
                telemetry_offset = ?part.telemetry_next,
                events_offset = ?part.events_next,
                "recovered partition state"
            );
            devices += part.devices.len();
            self.parts.insert(id, part);
        }
        self.progress
            .partitions
            .store(self.parts.len() as u64, Ordering::Relaxed);
        let secs = t0.elapsed().as_secs_f64();
        gauge!(m::RECOVERY_DURATION).set(secs);
        counter!(m::RECOVERED_DEVICES).increment(devices as u64);
        gauge!(m::DEVICES).set(self.device_count() as f64);
        tracing::info!(partitions = ?ids, devices, secs, "recovery complete");
        Ok(())
    }

    /// A checkpointed offset below an input topic's log start means records were deleted
    /// (retention) before this group processed them: reported (counter with the number of
    /// records, error log), then processing resumes at the log start, never silently.
    fn check_log_start(&self, part: &mut Partition) -> anyhow::Result<()> {
        let k = &self.cfg.kafka;
        for (topic, next) in [
            (&k.telemetry_topic, &mut part.telemetry_next),
            (&k.events_topic, &mut part.events_next),
        ] {
            let (low, _) = self
                .reader
                .fetch_watermarks(topic, part.id, Duration::from_secs(10))
                .with_context(|| format!("log start of {topic} partition {}", part.id))?;
            if let Some(lost) = records_below_log_start(*next, low) {
                counter!(m::BELOW_LOG_START, "topic" => topic.clone()).increment(lost);
                tracing::error!(
                    topic = %topic,
                    partition = part.id,
                    checkpoint = ?next,
                    log_start = low,
                    records = lost,
                    "checkpointed offset is below the log start: these records were deleted before they were processed; resuming at the log start"
                );
                *next = Some(low);
            } else if next.is_none() && low > 0 {
                tracing::warn!(topic = %topic, partition = part.id, log_start = low, "no checkpoint for this partition and its log starts at {low}: processing from there");
            }
        }
        Ok(())
    }

    fn device_count(&self) -> usize {
        self.parts.values().map(|p| p.devices.len()).sum()
    }

    /// Partitions `ids` of the telemetry topic and of the events topic, each positioned at
    /// the checkpointed offset (the beginning if none).
    fn positions(&self, ids: &[i32]) -> anyhow::Result<(TopicPartitionList, TopicPartitionList)> {
        let mut tel = TopicPartitionList::new();
        let mut ev = TopicPartitionList::new();
        for &id in ids {
            let p = self.parts.get(&id);
            let off = |o: Option<i64>| o.map_or(Offset::Beginning, Offset::Offset);
            tel.add_partition_offset(
                &self.cfg.kafka.telemetry_topic,
                id,
                off(p.and_then(|p| p.telemetry_next)),
            )?;
            ev.add_partition_offset(
                &self.cfg.kafka.events_topic,
                id,
                off(p.and_then(|p| p.events_next)),
            )?;
        }
        Ok((tel, ev))
    }

    fn handle(&mut self, msg: &BorrowedMessage<'_>) {
        let id = msg.partition();
        let offset = msg.offset();
        let is_telemetry = msg.topic() == self.cfg.kafka.telemetry_topic;
        let Some(part) = self.parts.get_mut(&id) else {
            // Revoked (or not yet assigned): its owner consumes it from the checkpoint.
            tracing::debug!(
                partition = id,
                offset,
                "record of a partition not held, ignored"
            );
            return;
        };
        let next = if is_telemetry {
            &mut part.telemetry_next
        } else {
            &mut part.events_next
        };
        if next.is_some_and(|n| offset < n) {
            // Already applied before the checkpoint we started from.
            return;
        }
        *next = Some(offset + 1);
        self.since_checkpoint += 1;
        let p = &self.cfg.params;
        let payload = msg.payload().unwrap_or_default();
        if is_telemetry {
            self.summary.telemetry_records += 1;
            self.progress
                .telemetry_records
                .fetch_add(1, Ordering::Relaxed);
            counter!(m::RECORDS, "topic" => "telemetry").increment(1);
            // Skip a whole duplicate record from its headers, without decoding it.
            if let (Some(dev), Some(epoch), Some(last)) = (
                header(msg, HEADER_DEVICE),
                header(msg, HEADER_EPOCH).and_then(|v| v.parse::<u64>().ok()),
                header(msg, HEADER_LAST_SEQ).and_then(|v| v.parse::<u64>().ok()),
            ) {
                if part.is_duplicate(dev, epoch, last) {
                    self.stats.batches += 1;
                    self.stats.duplicate_batches += 1;
                    return;
                }
            }
            match decode_record_value(payload, header(msg, HEADER_CONTENT_TYPE), &self.limits) {
                Ok(batch) => {
                    let record_ts = msg
                        .timestamp()
                        .to_millis()
                        .and_then(|t| u64::try_from(t).ok());
                    part.on_batch_at(&batch, record_ts, p, &mut self.stats, &mut self.out);
                }
                Err(e) => {
                    self.summary.decode_errors += 1;
                    counter!(m::DECODE_ERRORS, "topic" => "telemetry").increment(1);
                    tracing::warn!(partition = id, offset, error = %e, "undecodable telemetry record skipped");
                }
            }
        } else {
            self.summary.event_records += 1;
            self.progress.event_records.fetch_add(1, Ordering::Relaxed);
            counter!(m::RECORDS, "topic" => "events").increment(1);
            match FleetEvent::decode(payload) {
                Ok(ev) => part.on_event(&ev, p, &mut self.stats, &mut self.out),
                Err(e) => {
                    self.summary.decode_errors += 1;
                    counter!(m::DECODE_ERRORS, "topic" => "events").increment(1);
                    tracing::warn!(partition = id, offset, error = %e, "undecodable fleet event skipped");
                }
            }
        }
        if let Err(e) = self.produce_outputs() {
            self.fatal = Some(e);
        }
    }

    /// Hands every pending output to the producer.
    ///
    /// # Errors
    /// A send librdkafka refused synchronously (after retrying a full queue until
    /// `kafka.flush_timeout`). The refused output and every one after it stay in `self.out`, and
    /// the worker is marked as having lost an output: no checkpoint (periodic, on revocation, or
    /// final) can commit after that, so a restart replays the input they came from.
    fn produce_outputs(&mut self) -> anyhow::Result<()> {
        if let Some(why) = &self.send_failed {
            bail!("an output could not be sent ({why}); not checkpointing past it");
        }
        let mut sent = 0;
        let mut failure = None;
        for o in &self.out {
            let topic = match o {
                Output::Session(_) => self.cfg.kafka.sessions_topic.as_str(),
                Output::Anomaly(_) => self.cfg.kafka.anomalies_topic.as_str(),
                Output::Late(_) => self.cfg.kafka.late_topic.as_str(),
                Output::Window(_) => match &self.cfg.kafka.windows_topic {
                    Some(t) => t.as_str(),
                    None => {
                        sent += 1;
                        continue;
                    }
                },
            };
            let value = o.to_json();
            let rec = BaseRecord::with_opaque_to(topic, 0)
                .key(o.key())
                .payload(value.as_slice());
            if let Err(e) = send(&self.producer, rec, self.cfg.kafka.flush_timeout) {
                failure = Some(e);
                break;
            }
            sent += 1;
            self.deliveries.sent.fetch_add(1, Ordering::Release);
            self.summary.outputs += 1;
            counter!(m::OUTPUTS, "topic" => topic.to_owned()).increment(1);
        }
        self.out.drain(..sent);
        if let Some(e) = failure {
            counter!(m::OUTPUT_ERRORS).increment(1);
            tracing::error!(error = %e, unsent = self.out.len(), "output not sent; stopping without a checkpoint so a restart replays it");
            self.send_failed = Some(e.clone());
            bail!(e);
        }
        Ok(())
    }

    /// Flushes outputs and commits state + offsets of every held partition.
    /// Writes every held partition's changed devices (tombstones for evicted ones) and a new
    /// marker to the changelog. Same poisoning rule as [`Self::produce_outputs`].
    fn produce_changelog(&mut self) -> anyhow::Result<()> {
        if let Some(why) = &self.send_failed {
            bail!("an output could not be sent ({why}); not checkpointing past it");
        }
        let topic = self.cfg.kafka.changelog_topic.as_str();
        let timeout = self.cfg.kafka.flush_timeout;
        let mut buf = Vec::with_capacity(1024);
        let mut n = 0u64;
        let mut result = Ok(());
        let owner = changelog::Owner::of(&self.cfg.kafka);
        'parts: for p in self.parts.values() {
            for device in p.dirty_devices() {
                let key = changelog::device_key(p.id, device);
                let rec = BaseRecord::<str, [u8], usize>::with_opaque_to(topic, 0)
                    .partition(p.id)
                    .key(key.as_str());
                let rec = match p.devices.get(device) {
                    Some(state) => {
                        buf.clear();
                        buf = postcard::to_extend(state, std::mem::take(&mut buf))
                            .with_context(|| format!("encoding device {device}"))?;
                        rec.payload(buf.as_slice())
                    }
                    None => rec,
                };
                if let Err(e) = send(&self.producer, rec, timeout) {
                    result = Err(e);
                    break 'parts;
                }
                n += 1;
            }
            let marker = changelog::Marker {
                seq: p.changelog_seq + 1,
                meta: p.meta.clone(),
                telemetry_next: p.telemetry_next,
                events_next: p.events_next,
                devices: p.devices.len() as u64,
                owner: owner.clone(),
            };
            let value = postcard::to_stdvec(&marker).context("encoding a changelog marker")?;
            let key = changelog::marker_key(p.id);
            let rec = BaseRecord::with_opaque_to(topic, kafka::marker_opaque(p.id))
                .partition(p.id)
                .key(key.as_str())
                .payload(value.as_slice());
            if let Err(e) = send(&self.producer, rec, timeout) {
                result = Err(e);
                break;
            }
            n += 1;
        }
        self.deliveries.sent.fetch_add(n, Ordering::Release);
        counter!(m::CHANGELOG_RECORDS).increment(n);
        if let Err(e) = result {
            tracing::error!(error = %e, "changelog record not sent; stopping without a checkpoint");
            self.send_failed = Some(e.clone());
            bail!(e);
        }
        Ok(())
    }

    /// A checkpoint: outputs and changelog acknowledged (in transactional mode: committed in one
    /// Kafka transaction with the input offsets, KIP-447 fencing by `group`), then redb.
    fn checkpoint(&mut self, group: Option<&ConsumerGroupMetadata>) -> anyhow::Result<()> {
        let t0 = Instant::now();
        self.produce_outputs()?;
        self.deliveries
            .markers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.produce_changelog()?;
        let deadline = Instant::now() + self.cfg.kafka.flush_timeout;
        let timeout = self.cfg.kafka.flush_timeout;
        if self.transactional {
            let offsets = self.checkpointed_offsets()?;
            let group =
                group.ok_or_else(|| anyhow!("no consumer group metadata for the transaction"))?;
            let committed = self
                .producer
                .send_offsets_to_transaction(&offsets, group, timeout)
                .and_then(|()| self.producer.commit_transaction(timeout));
            if let Err(e) = committed {
                let _ = self.producer.abort_transaction(timeout);
                self.send_failed = Some(format!("transaction not committed: {e}"));
                counter!(m::TRANSACTION_ABORTS).increment(1);
                bail!("committing the Kafka transaction: {e}; aborted, stopping without a checkpoint so a restart replays it");
            }
            counter!(m::TRANSACTIONS).increment(1);
        } else {
            self.producer.flush(timeout).context(
                "outputs not acknowledged within kafka.flush_timeout; not checkpointing",
            )?;
        }
        // flush() returns when librdkafka's queue is empty; the delivery callbacks run on the
        // producer's own thread and may not have run yet. Wait for every report.
        while self.deliveries.outstanding() > 0 {
            if Instant::now() >= deadline {
                bail!(
                    "{} outputs not acknowledged within kafka.flush_timeout; not checkpointing",
                    self.deliveries.outstanding()
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let failed = self.deliveries.failed.load(Ordering::Acquire);
        if failed > 0 {
            counter!(m::OUTPUT_ERRORS).increment(failed);
            bail!("{failed} output records were not acknowledged; stopping without a checkpoint so a restart replays them");
        }
        {
            let markers = self
                .deliveries
                .markers
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for p in self.parts.values_mut() {
                let Some(&off) = markers.get(&p.id) else {
                    bail!(
                        "no acknowledgement of partition {}'s changelog marker; not checkpointing",
                        p.id
                    );
                };
                p.changelog_seq += 1;
                p.changelog_offset = Some(off);
            }
        }
        let s = self
            .store
            .commit(
                self.parts.values_mut(),
                &self.cfg.kafka.telemetry_topic,
                &self.cfg.kafka.events_topic,
            )
            .context("committing the checkpoint")?;
        let secs = t0.elapsed().as_secs_f64();
        let size = self.store.size_bytes();
        histogram!(m::CHECKPOINT_DURATION).record(secs);
        gauge!(m::CHECKPOINT_SIZE).set(size as f64);
        counter!(m::CHECKPOINT_DEVICES).increment(s.devices_written as u64);
        let offsets: Vec<(i32, Option<i64>, Option<i64>)> = self
            .parts
            .values()
            .map(|p| (p.id, p.telemetry_next, p.events_next))
            .collect();
        tracing::info!(
            devices_written = s.devices_written,
            snapshots = s.snapshots,
            state_bytes = s.bytes,
            commit_ms = s.duration.as_millis(),
            total_ms = t0.elapsed().as_millis(),
            size_bytes = size,
            records = self.since_checkpoint,
            ?offsets,
            "checkpoint committed"
        );
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        self.summary.checkpoints += 1;
        if self.transactional {
            self.producer
                .begin_transaction()
                .context("beginning the next Kafka transaction")?;
        }
        Ok(())
    }

    /// Checkpoints if due; true if it did.
    fn maybe_checkpoint(&mut self, group: Option<&ConsumerGroupMetadata>) -> anyhow::Result<bool> {
        let st = &self.cfg.state;
        if self.since_checkpoint >= st.checkpoint_records
            || (self.since_checkpoint > 0
                && self.last_checkpoint.elapsed() >= st.checkpoint_interval)
        {
            self.checkpoint(group)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// The checkpointed next offsets of every held partition, both input topics.
    fn checkpointed_offsets(&self) -> anyhow::Result<TopicPartitionList> {
        let mut tpl = TopicPartitionList::new();
        for p in self.parts.values() {
            for (topic, next) in [
                (&self.cfg.kafka.telemetry_topic, p.telemetry_next),
                (&self.cfg.kafka.events_topic, p.events_next),
            ] {
                if let Some(o) = next {
                    tpl.add_partition_offset(topic, p.id, Offset::Offset(o))?;
                }
            }
        }
        Ok(tpl)
    }

    fn report(&mut self) {
        // Late readings: logged at most every 10 s, with how many since the last line.
        let late = self.stats.late_readings - self.late_logged;
        if late > 0
            && self
                .late_log_at
                .is_none_or(|t| t.elapsed() >= LATE_LOG_EVERY)
        {
            tracing::warn!(
                readings = late,
                total = self.stats.late_readings,
                topic = %self.cfg.kafka.late_topic,
                "readings older than their device's watermark (beyond windows.allowed_lateness) written to the late topic, not aggregated"
            );
            self.late_logged = self.stats.late_readings;
            self.late_log_at = Some(Instant::now());
        }
        m::report_stats(&self.stats, &self.reported);
        self.reported = self.stats;
        gauge!(m::DEVICES).set(self.device_count() as f64);
    }
}

/// Commits the offsets of the checkpoint just written to the consumer group, so lag tools
/// (kafka-consumer-groups, Burrow) see the processor. The checkpoint stays the source of truth
/// for where to resume; a failed commit is counted and logged, never fatal.
fn commit_to_group<C: ConsumerContext>(consumer: &BaseConsumer<C>, w: &Worker, mode: CommitMode) {
    let tpl = match w.checkpointed_offsets() {
        Ok(t) if t.count() > 0 => t,
        Ok(_) => return,
        Err(e) => {
            tracing::warn!(error = %e, "offsets not committed to the group");
            return;
        }
    };
    match consumer.commit(&tpl, mode) {
        Ok(()) => counter!(m::OFFSET_COMMITS).increment(1),
        Err(e) => {
            counter!(m::OFFSET_COMMIT_ERRORS).increment(1);
            tracing::warn!(error = %e, "committing checkpointed offsets to the consumer group failed (the checkpoint stands; lag tools lag behind)");
        }
    }
}

fn lock(w: &Mutex<Worker>) -> MutexGuard<'_, Worker> {
    w.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Consumer context: rebalances load and flush partition state.
///
/// Only the telemetry topic is subscribed; the group decides who owns input partition `p`,
/// and the owner assigns events partition `p` to its own assign-only `events` consumer. So a
/// device's batches and events always meet in one instance, whatever the assignor (here
/// cooperative-sticky: a rebalance only moves the partitions that change owner).
struct Ctx {
    worker: Arc<Mutex<Worker>>,
    events: Arc<BaseConsumer>,
}

impl ClientContext for Ctx {}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<i32> {
    let mut ids: Vec<i32> = tpl
        .elements()
        .iter()
        .map(rdkafka::topic_partition_list::TopicPartitionListElem::partition)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

impl ConsumerContext for Ctx {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let ids = partitions_of(tpl);
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        tracing::info!(kind = kafka::rebalance_kind(err), partitions = ?ids, cooperative, "rebalance");
        let mut w = lock(&self.worker);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let positioned = w.load_partitions(&ids).and_then(|()| w.positions(&ids));
                match positioned {
                    Ok((tel, ev)) => {
                        let r = if cooperative {
                            consumer.incremental_assign(&tel)
                        } else {
                            consumer.assign(&tel)
                        };
                        let r = r.and_then(|()| self.events.incremental_assign(&ev));
                        if let Err(e) = r {
                            w.fatal = Some(anyhow!("assigning {ids:?}: {e}"));
                        }
                    }
                    Err(e) => {
                        w.fatal = Some(e);
                        if cooperative {
                            let _ = consumer.incremental_unassign(tpl);
                        } else {
                            let _ = consumer.unassign();
                        }
                    }
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                // Flush outputs and checkpoint before another member may take these partitions.
                if let Err(e) = w.checkpoint(consumer.group_metadata().as_ref()) {
                    w.fatal = Some(e.context("checkpoint on revocation"));
                } else if !w.transactional {
                    commit_to_group(consumer, &w, CommitMode::Sync);
                }
                for id in &ids {
                    w.parts.remove(id);
                }
                let held = w.parts.len() as u64;
                w.progress.partitions.store(held, Ordering::Relaxed);
                let mut ev = TopicPartitionList::new();
                for &id in &ids {
                    ev.add_partition(&w.cfg.kafka.events_topic, id);
                }
                let _ = self.events.incremental_unassign(&ev);
                if cooperative {
                    let _ = consumer.incremental_unassign(tpl);
                } else {
                    let _ = consumer.unassign();
                }
            }
            _ => {
                tracing::error!(?err, "rebalance error");
                let _ = consumer.unassign();
            }
        }
    }
}

/// Runs the processor until `cancel`, then flushes and checkpoints.
///
/// # Errors
/// Configuration the clients reject, topic creation, an unreadable state database, an output
/// Kafka did not acknowledge, a failed checkpoint. On an error after start-up no final
/// checkpoint is written: the last good one stands and a restart replays from it.
pub async fn run(cfg: Config, cancel: CancellationToken) -> anyhow::Result<Summary> {
    run_observed(cfg, cancel, Arc::default()).await
}

/// [`run`], counting applied input records in `progress`.
///
/// # Errors
/// See [`run`].
pub async fn run_observed(
    cfg: Config,
    cancel: CancellationToken,
    progress: Arc<Progress>,
) -> anyhow::Result<Summary> {
    if cfg.kafka.create_topics {
        kafka::ensure_output_topics(&cfg.kafka)
            .await
            .context("creating output topics")?;
    }
    let cfg = Arc::new(cfg);
    tokio::task::spawn_blocking(move || run_blocking(&cfg, &cancel, progress))
        .await
        .context("processing thread panicked")?
}

/// The blocking body of [`run`] (output topics must exist).
///
/// # Errors
/// See [`run`].
pub fn run_blocking(
    cfg: &Arc<Config>,
    cancel: &CancellationToken,
    progress: Arc<Progress>,
) -> anyhow::Result<Summary> {
    let t0 = Instant::now();
    let store = Store::open(&cfg.state.path)?;
    let k = &cfg.kafka;
    let cache_of = format!(
        "{}; changelog {:?}",
        changelog::Owner::of(k),
        k.changelog_topic
    );
    match store
        .bind(&cache_of)
        .context("binding the local state to its changelog")?
    {
        crate::checkpoint::Bind::Discarded { was } => tracing::warn!(
            path = %cfg.state.path.display(),
            was = was.as_deref().unwrap_or("not recorded"),
            now = %cache_of,
            "the local state was a copy of another group, input or changelog topic: discarded (partitions are restored from this processor's changelog)"
        ),
        crate::checkpoint::Bind::Fresh | crate::checkpoint::Bind::Same => {}
    }
    // Assign-only: never joins the group (no static membership id either).
    let events: Arc<BaseConsumer> = Arc::new(
        kafka::consumer_config(&cfg.kafka)
            .remove("group.instance.id")
            .create()
            .context("creating the events consumer")?,
    );
    let partitions = check_co_partitioned(&events, cfg)?;
    // Before the producer: the transaction probe writes to the changelog.
    tokio::runtime::Handle::current()
        .block_on(kafka::ensure_changelog_topic(
            &cfg.kafka,
            partitions,
            cfg.kafka.create_topics,
        ))
        .context("changelog topic")?;
    let (producer, deliveries, transactional) = output_producer(cfg)?;
    gauge!(m::EXACTLY_ONCE).set(if transactional { 1.0 } else { 0.0 });
    let worker = Arc::new(Mutex::new(Worker {
        cfg: cfg.clone(),
        store,
        parts: BTreeMap::new(),
        stats: Stats::default(),
        reported: Stats::default(),
        out: Vec::new(),
        producer,
        deliveries,
        since_checkpoint: 0,
        last_checkpoint: Instant::now(),
        fatal: None,
        send_failed: None,
        late_logged: 0,
        late_log_at: None,
        summary: Summary::default(),
        limits: Limits::DEFAULT,
        progress,
        reader: kafka::reader(&cfg.kafka).context("creating the changelog reader")?,
        transactional,
    }));
    let consumer: BaseConsumer<Ctx> = kafka::consumer_config(&cfg.kafka)
        .create_with_context(Ctx {
            worker: worker.clone(),
            events: events.clone(),
        })
        .context("creating the consumer")?;
    match &cfg.kafka.assign {
        Some(ids) => {
            if let Some(bad) = ids.iter().find(|&&p| p >= partitions) {
                bail!(
                    "kafka.assign lists partition {bad}, but the input topics have {partitions} partitions"
                );
            }
            let mut w = lock(&worker);
            w.load_partitions(ids)?;
            // No group decides anything here: one consumer for both topics.
            let (mut tel, ev) = w.positions(ids)?;
            for e in ev.elements() {
                tel.add_partition_offset(e.topic(), e.partition(), e.offset())?;
            }
            consumer.assign(&tel).context("assigning partitions")?;
            tracing::info!(partitions = ?ids, startup_ms = t0.elapsed().as_millis(), "explicit assignment");
        }
        None => {
            consumer
                .subscribe(&[&cfg.kafka.telemetry_topic])
                .context("subscribing")?;
            tracing::info!(group = %cfg.kafka.group_id, "joined consumer group (assignment follows)");
        }
    }
    // Lag is measured on its own thread and client: a slow broker answer never stalls processing.
    let held: Arc<Mutex<Vec<Held>>> = Arc::default();
    let lag_stop = cancel.child_token();
    let lag = {
        let (cfg, held, stop) = (cfg.clone(), held.clone(), lag_stop.clone());
        std::thread::Builder::new()
            .name("processor-lag".to_owned())
            .spawn(move || lag_loop(&cfg, &held, &stop))
            .context("starting the lag thread")?
    };
    let result = consume(&consumer, &events, &worker, cancel, &held);
    lock(&worker)
        .progress
        .stopped
        .store(true, std::sync::atomic::Ordering::Relaxed);
    lag_stop.cancel();
    let _ = lag.join();
    let mut w = lock(&worker);
    // On error, no final checkpoint: the last good one stands.
    result?;
    w.checkpoint(consumer.group_metadata().as_ref())
        .context("final checkpoint")?;
    if !w.transactional {
        commit_to_group(&consumer, &w, CommitMode::Sync);
    }
    w.report();
    let summary = Summary {
        stats: w.stats,
        transactional: w.transactional,
        ..w.summary
    };
    // Revocation on close finds nothing dirty.
    drop(w);
    drop(consumer);
    drop(events);
    tracing::info!(?summary, "stopped after a final checkpoint");
    Ok(summary)
}

/// The output producer per `kafka.exactly_once`; true if transactional (a transaction is open).
fn output_producer(cfg: &Config) -> anyhow::Result<(OutputProducer, Arc<Deliveries>, bool)> {
    let k = &cfg.kafka;
    if k.exactly_once == ExactlyOnce::Off {
        let (p, d) = kafka::producer(k).context("creating the producer")?;
        return Ok((p, d, false));
    }
    // Stable across restarts where possible: a restarted instance with the same id fences its
    // previous incarnation and aborts its open transaction at once (otherwise that transaction
    // holds read_committed consumers back until it times out).
    let id = k.transactional_id.clone().unwrap_or_else(|| {
        let who = match (&k.group_instance_id, &k.assign) {
            (Some(i), _) => i.clone(),
            (None, Some(ids)) => {
                let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
                format!("assign-{}", ids.join("-"))
            }
            (None, None) => {
                let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "processor".to_owned());
                format!("{host}-{}", std::process::id())
            }
        };
        format!("{}-{who}", k.group_id)
    });
    // The transaction spans a checkpoint interval, plus the time to commit it.
    let tx_timeout = cfg
        .state
        .checkpoint_interval
        .saturating_add(k.flush_timeout.saturating_mul(2));
    let (p, d) = kafka::producer_with(k, Some((&id, tx_timeout)))
        .context("creating the transactional producer")?;
    // `auto` must not keep a broker that cannot do transactions waiting long at start.
    let timeout = match k.exactly_once {
        ExactlyOnce::On => k.flush_timeout,
        _ => k.flush_timeout.min(Duration::from_secs(10)),
    };
    match p
        .init_transactions(timeout)
        .map_err(|e| format!("init_transactions: {e}"))
        .and_then(|()| probe_transactions(&p, &d, cfg, timeout))
        .and_then(|()| {
            p.begin_transaction()
                .map_err(|e| format!("begin_transaction: {e}"))
        }) {
        Ok(()) => {
            tracing::info!(transactional_id = %id, "exactly-once: outputs, changelog and offsets commit in Kafka transactions (read outputs with isolation.level=read_committed)");
            Ok((p, d, true))
        }
        Err(e) if k.exactly_once == ExactlyOnce::Auto => {
            tracing::warn!(reason = %e, "exactly_once = \"auto\": the broker's transactions are not usable; outputs are at-least-once with deterministic ids (consumers drop repeats by id)");
            drop(p);
            let (p, d) = kafka::producer(k).context("creating the producer")?;
            Ok((p, d, false))
        }
        Err(e) => bail!("exactly_once = \"on\", but the broker's transactions are not usable: {e}"),
    }
}

/// The start-up probe of `kafka.exactly_once`: one real transaction that must commit, and whose
/// record a `read_committed` reader (the one a restore uses) must then see, within `timeout`
/// each. A broker that answers the transactional requests but never makes a committed record
/// visible (tansu 0.6: its restore reader then waits for records that never come) fails here,
/// at start, instead of at the first restore. The record goes to changelog partition 0 under
/// [`changelog::probe_key`], which a restore skips. Not checked: that aborted records are
/// hidden (librdkafka's mock cluster, which the transactional path is tested against, does not
/// hide them either).
///
/// # Errors
/// The failed step, as text for the log line or the start-up error.
fn probe_transactions(
    p: &OutputProducer,
    d: &Deliveries,
    cfg: &Config,
    timeout: Duration,
) -> Result<(), String> {
    let k = &cfg.kafka;
    let topic = k.changelog_topic.as_str();
    let key = changelog::probe_key(0);
    p.begin_transaction()
        .map_err(|e| format!("probe begin_transaction: {e}"))?;
    d.sent.fetch_add(1, Ordering::Release);
    let value = format!("transaction probe of {}", k.group_id);
    if let Err((e, _)) = p.send(
        BaseRecord::with_opaque_to(topic, kafka::PROBE_OPAQUE)
            .partition(0)
            .key(key.as_bytes())
            .payload(value.as_bytes()),
    ) {
        d.failed.fetch_add(1, Ordering::Release);
        let _ = p.abort_transaction(timeout);
        return Err(format!("probe record to {topic} not sent: {e}"));
    }
    if let Err(e) = p.commit_transaction(timeout) {
        let _ = p.abort_transaction(timeout);
        return Err(format!("probe commit_transaction: {e}"));
    }
    let deadline = Instant::now() + timeout;
    let offset = loop {
        if let Some(o) = *d.probe.lock().unwrap_or_else(PoisonError::into_inner) {
            break o;
        }
        if d.failed.load(Ordering::Acquire) > 0 || Instant::now() >= deadline {
            return Err(format!(
                "probe record to {topic} committed but not acknowledged"
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let reader = kafka::reader(k).map_err(|e| format!("probe reader: {e}"))?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(offset))
        .and_then(|()| reader.assign(&tpl))
        .map_err(|e| format!("probe reader: {e}"))?;
    while Instant::now() < deadline {
        match reader.poll(Duration::from_millis(50)) {
            Some(Ok(m)) if m.offset() >= offset => {
                if m.offset() == offset && m.key() == Some(key.as_bytes()) {
                    return Ok(());
                }
                return Err(format!(
                    "probe: {topic} partition 0 offset {} is not the probe record",
                    m.offset()
                ));
            }
            Some(Err(e)) if !kafka::is_benign(&e) => {
                return Err(format!("probe reader: {e}"));
            }
            _ => {}
        }
    }
    Err(format!(
        "the committed probe record ({topic} partition 0 offset {offset}) was not visible to a read_committed reader within {timeout:?}"
    ))
}

/// The input topics must exist and have the same partition count: a device's batches and
/// events are then in partitions with the same number, and one instance owns its state.
fn check_co_partitioned<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    cfg: &Config,
) -> anyhow::Result<i32> {
    let count = |topic: &str| -> anyhow::Result<i32> {
        let md = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(30))
            .with_context(|| format!("fetching metadata of {topic}"))?;
        let t = md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .ok_or_else(|| anyhow!("topic {topic} not in the broker's metadata"))?;
        if let Some(e) = t.error() {
            bail!(
                "input topic {topic}: {e:?} (the gateway creates it; tansu does not auto-create)"
            );
        }
        Ok(i32::try_from(t.partitions().len()).unwrap_or(i32::MAX))
    };
    let tel = count(&cfg.kafka.telemetry_topic)?;
    let ev = count(&cfg.kafka.events_topic)?;
    if tel != ev || tel == 0 {
        bail!(
            "{} has {tel} partitions and {} has {ev}: both input topics must have the same partition count, so a device's batches and events meet in one instance",
            cfg.kafka.telemetry_topic,
            cfg.kafka.events_topic
        );
    }
    Ok(tel)
}

#[derive(Clone, Copy)]
enum Which {
    Telemetry,
    Events,
}

/// A held partition and the next offsets of its two input topics.
type Held = (i32, Option<i64>, Option<i64>);

fn consume(
    consumer: &BaseConsumer<Ctx>,
    events: &BaseConsumer,
    worker: &Mutex<Worker>,
    cancel: &CancellationToken,
    held: &Mutex<Vec<Held>>,
) -> anyhow::Result<()> {
    let mut last_report = Instant::now();
    let mut last_records = 0u64;
    let mut last_error_log = Instant::now() - Duration::from_secs(60);
    let progress = lock(worker).progress.clone();
    while !cancel.is_cancelled() {
        progress.beat();
        // Drain what both consumers have ready, then wait briefly on the group consumer (its
        // poll also runs the rebalance callbacks).
        let mut got = 0;
        for c in [Which::Telemetry, Which::Events] {
            for _ in 0..256 {
                let r = match c {
                    Which::Telemetry => consumer.poll(Duration::ZERO),
                    Which::Events => events.poll(Duration::ZERO),
                };
                match r {
                    Some(Ok(msg)) => {
                        got += 1;
                        lock(worker).handle(&msg);
                    }
                    Some(Err(e)) => {
                        if !kafka::is_benign(&e)
                            && last_error_log.elapsed() > Duration::from_secs(10)
                        {
                            tracing::warn!(error = %e, "consumer error");
                            last_error_log = Instant::now();
                        }
                        break;
                    }
                    None => break,
                }
            }
        }
        if got == 0 {
            match consumer.poll(Duration::from_millis(20)) {
                Some(Ok(msg)) => lock(worker).handle(&msg),
                Some(Err(e))
                    if !kafka::is_benign(&e)
                        && last_error_log.elapsed() > Duration::from_secs(10) =>
                {
                    tracing::warn!(error = %e, "consumer error");
                    last_error_log = Instant::now();
                }
                Some(Err(_)) | None => {}
            }
        }
        let mut w = lock(worker);
        if let Some(e) = w.fatal.take() {
            return Err(e);
        }
        let failed = w.deliveries.failed.load(Ordering::Acquire);
        if failed > 0 {
            counter!(m::OUTPUT_ERRORS).increment(failed);
            bail!("{failed} output records were not acknowledged; stopping without a checkpoint so a restart replays them");
        }
        if w.maybe_checkpoint(consumer.group_metadata().as_ref())? && !w.transactional {
            commit_to_group(consumer, &w, CommitMode::Async);
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            let records = w.summary.telemetry_records + w.summary.event_records;
            let rate = (records - last_records) as f64 / last_report.elapsed().as_secs_f64();
            m::records_rate(rate);
            last_records = records;
            last_report = Instant::now();
            w.report();
            let now: Vec<Held> = w
                .parts
                .values()
                .map(|p| (p.id, p.telemetry_next, p.events_next))
                .collect();
            *held.lock().unwrap_or_else(PoisonError::into_inner) = now;
        }
    }
    Ok(())
}

fn lag_loop(cfg: &Config, held: &Mutex<Vec<Held>>, stop: &CancellationToken) {
    // Never subscribes: no group membership, only metadata and watermark requests.
    let client: Result<BaseConsumer, _> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &cfg.kafka.brokers)
        .set("group.id", format!("{}-lag", cfg.kafka.group_id))
        .create();
    let client = match client {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "no lag metrics: cannot create the watermark client");
            return;
        }
    };
    let mut next = Instant::now() + cfg.kafka.lag_interval;
    while !stop.is_cancelled() {
        if Instant::now() >= next {
            let snapshot = held.lock().unwrap_or_else(PoisonError::into_inner).clone();
            report_lag(&client, cfg, &snapshot);
            next = Instant::now() + cfg.kafka.lag_interval;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Consumer lag per partition: broker high watermark minus our next offset. Reported as is,
/// even when negative: tansu 0.6 returns wrong high watermarks, and this gauge shows that
/// rather than hiding it.
fn report_lag(consumer: &BaseConsumer, cfg: &Config, held: &[Held]) {
    for &(id, tel, ev) in held {
        for (topic, next) in [
            (&cfg.kafka.telemetry_topic, tel),
            (&cfg.kafka.events_topic, ev),
        ] {
            match consumer.fetch_watermarks(topic, id, Duration::from_secs(2)) {
                Ok((low, high)) => {
                    let lag = high - next.unwrap_or(low);
                    gauge!(m::LAG, "topic" => topic.clone(), "partition" => id.to_string())
                        .set(lag as f64);
                    tracing::debug!(topic = %topic, partition = id, low, high, lag, "consumer lag");
                }
                Err(e) => {
                    tracing::debug!(topic = %topic, partition = id, error = %e, "fetching watermarks");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::{EndReason, SessionKind, SessionRecord};

    fn session(i: u64) -> Output {
        Output::Session(SessionRecord {
            id: format!("{i:016x}"),
            device: "d".to_owned(),
            kind: SessionKind::Activity,
            epoch: 1,
            start: i,
            end: i,
            duration_ms: 0,
            readings: 1,
            end_reason: EndReason::Inactivity,
        })
    }

    #[test]
    fn an_offset_below_the_log_start_is_counted_in_records() {
        assert_eq!(records_below_log_start(Some(100), 250), Some(150));
        assert_eq!(records_below_log_start(Some(250), 250), None);
        assert_eq!(records_below_log_start(Some(300), 250), None);
        // No checkpoint: nothing to report as lost by this group (warned separately).
        assert_eq!(records_below_log_start(None, 250), None);
    }

    /// A send refused synchronously (here: a one-record queue to a broker that does not exist)
    /// keeps the unsent outputs and forbids every later checkpoint, so the input they came from
    /// is replayed rather than checkpointed past.
    #[test]
    fn a_refused_send_keeps_the_outputs_and_blocks_every_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("s.redb");
        let text = format!(
            "[kafka]\nbrokers = \"127.0.0.1:1\"\nflush_timeout = \"200ms\"\n[kafka.producer]\n\"queue.buffering.max.messages\" = \"1\"\n[state]\npath = \"{}\"\n",
            state.display()
        );
        let cfg = Arc::new(Config::parse(&text, &|_| None).unwrap());
        let (producer, deliveries) = kafka::producer(&cfg.kafka).unwrap();
        let mut w = Worker {
            cfg: cfg.clone(),
            store: Store::open(&state).unwrap(),
            parts: BTreeMap::new(),
            stats: Stats::default(),
            reported: Stats::default(),
            out: (0..3).map(session).collect(),
            producer,
            deliveries,
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            fatal: None,
            send_failed: None,
            late_logged: 0,
            late_log_at: None,
            summary: Summary::default(),
            limits: Limits::DEFAULT,
            progress: Arc::default(),
            reader: kafka::reader(&cfg.kafka).unwrap(),
            transactional: false,
        };
        let mut part = Partition::new(0);
        part.telemetry_next = Some(42);
        w.parts.insert(0, part);
        assert!(w.produce_outputs().is_err());
        // The first fit in the queue; the second and third were not sent and are kept.
        let kept: Vec<&str> = w.out.iter().map(Output::id).collect();
        assert_eq!(kept, ["0000000000000001", "0000000000000002"]);
        assert_eq!(w.summary.outputs, 1);
        // Neither a later send nor a checkpoint (periodic, revocation, final) goes through.
        w.out.push(session(9));
        assert!(w.produce_outputs().is_err());
        assert_eq!(w.out.len(), 3);
        assert!(w.checkpoint(None).is_err());
        let loaded = w
            .store
            .load(0, "breakwater.telemetry", "breakwater.events")
            .unwrap();
        assert_eq!(
            loaded.partition.telemetry_next, None,
            "checkpointed past a lost output"
        );
    }
}

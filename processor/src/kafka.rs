//! Kafka at the edges: client configuration, the output producer with delivery accounting, and
//! output-topic creation. The consumer's rebalance handling lives in `run.rs`, next to the state
//! it loads and flushes.
//!
//! # Co-partitioning
//! The telemetry and fleet-events topics are both keyed by device id and must have the same
//! partition count, so a device's batches and events land in partitions with the same number.
//! Only the telemetry topic is subscribed (cooperative-sticky); the owner of telemetry `p`
//! assigns events `p` to itself (`run.rs`), so one instance owns all of a device's state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaRespErr;

use crate::config::KafkaConfig;

/// Counts output deliveries and failures (written by librdkafka's delivery callbacks).
#[derive(Debug, Default)]
pub struct Deliveries {
    /// Records handed to the producer (incremented by the sender).
    pub sent: AtomicU64,
    /// Delivery reports received: acknowledged, failed.
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    /// Acknowledged changelog offsets of checkpoint markers, by partition (see
    /// [`marker_opaque`]).
    pub markers: Mutex<HashMap<i32, i64>>,
    /// Acknowledged offset of the start-up transaction probe's record ([`PROBE_OPAQUE`]).
    pub probe: Mutex<Option<i64>>,
}

/// The delivery opaque of the start-up transaction probe's record.
pub const PROBE_OPAQUE: usize = usize::MAX;

/// The delivery opaque of partition `p`'s checkpoint marker (outputs and device records: 0).
#[must_use]
pub fn marker_opaque(p: i32) -> usize {
    usize::try_from(p).unwrap_or(0) + 1
}

impl Deliveries {
    /// Sent records whose delivery report has not been handled yet.
    #[must_use]
    pub fn outstanding(&self) -> u64 {
        let done = self.delivered.load(Ordering::Acquire) + self.failed.load(Ordering::Acquire);
        self.sent.load(Ordering::Acquire).saturating_sub(done)
    }
}

/// Producer context: delivery accounting.
#[derive(Debug, Clone, Default)]
pub struct OutputContext(pub Arc<Deliveries>);

impl ClientContext for OutputContext {}

impl ProducerContext for OutputContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, r: &DeliveryResult<'_>, opaque: usize) {
        match r {
            Ok(m) => {
                if opaque == PROBE_OPAQUE {
                    *self.0.probe.lock().unwrap_or_else(PoisonError::into_inner) = Some(m.offset());
                } else if opaque > 0 {
                    let p = i32::try_from(opaque - 1).unwrap_or(i32::MAX);
                    self.0
                        .markers
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(p, m.offset());
                }
                self.0.delivered.fetch_add(1, Ordering::Release);
            }
            Err((e, _)) => {
                self.0.failed.fetch_add(1, Ordering::Release);
                tracing::error!(error = %e, "output record not acknowledged");
            }
        }
    }
}

pub type OutputProducer = ThreadedProducer<OutputContext>;

/// The output producer: idempotent, acks from all in-sync replicas.
///
/// # Errors
/// If librdkafka rejects the configuration.
pub fn producer(
    cfg: &KafkaConfig,
) -> rdkafka::error::KafkaResult<(OutputProducer, Arc<Deliveries>)> {
    producer_with(cfg, None)
}

/// [`producer`], transactional when `transactional` (id, transaction timeout) is set (then call
/// `init_transactions`). The timeout must cover a whole checkpoint interval: the transaction is
/// open from one checkpoint to the next.
///
/// # Errors
/// If librdkafka rejects the configuration.
pub fn producer_with(
    cfg: &KafkaConfig,
    transactional: Option<(&str, Duration)>,
) -> rdkafka::error::KafkaResult<(OutputProducer, Arc<Deliveries>)> {
    let ctx = OutputContext::default();
    let d = ctx.0.clone();
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set(
            "message.timeout.ms",
            cfg.flush_timeout.as_millis().to_string(),
        );
    if let Some((id, timeout)) = transactional {
        c.set("transactional.id", id)
            .set("transaction.timeout.ms", timeout.as_millis().to_string());
    }
    for (k, v) in &cfg.producer {
        c.set(k, v);
    }
    let p = c.create_with_context(ctx)?;
    Ok((p, d))
}

/// Base consumer configuration (the caller adds the context).
#[must_use]
pub fn consumer_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers)
        .set("group.id", &cfg.group_id)
        // Offsets live in the checkpoint; after each one they are committed to the group too,
        // for lag tools (never automatically, never ahead of the checkpoint).
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        // Incremental rebalancing: a new member takes partitions without everyone else giving
        // theirs back first. Only the telemetry topic is subscribed; each instance assigns the
        // events partitions with the same numbers itself (run.rs), so co-partitioning does not
        // depend on the assignor.
        .set("partition.assignment.strategy", "cooperative-sticky");
    if let Some(id) = &cfg.group_instance_id {
        c.set("group.instance.id", id);
    }
    for (k, v) in &cfg.consumer {
        c.set(k, v);
    }
    c
}

/// Errors creating output topics.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("admin client: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    #[error("creating topic {topic}: {code}")]
    Create {
        topic: String,
        code: RDKafkaErrorCode,
    },
}

/// Creates the output topics that do not exist yet.
///
/// # Errors
/// See [`TopicError`]; "already exists" is success.
pub async fn ensure_output_topics(cfg: &KafkaConfig) -> Result<(), TopicError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &cfg.brokers)
        .create()?;
    let mut names = vec![
        cfg.sessions_topic.as_str(),
        cfg.anomalies_topic.as_str(),
        cfg.late_topic.as_str(),
    ];
    if let Some(w) = &cfg.windows_topic {
        names.push(w);
    }
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|n| NewTopic::new(n, cfg.output_partitions, TopicReplication::Fixed(1)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in admin.create_topics(topics.iter(), &opts).await? {
        match r {
            Ok(t) => tracing::info!(topic = %t, "created output topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(TopicError::Create { topic, code }),
        }
    }
    Ok(())
}

/// Errors creating or checking the changelog topic.
#[derive(Debug, thiserror::Error)]
pub enum ChangelogTopicError {
    #[error("admin client: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    #[error("creating changelog topic {topic}: {code}")]
    Create {
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error("changelog topic {topic} has {found} partitions, the input topics {want}: one changelog partition per input partition")]
    Partitions {
        topic: String,
        found: usize,
        want: i32,
    },
}

/// Creates the changelog topic (compacted, one partition per input partition) if missing, and
/// checks its partition count.
///
/// # Errors
/// See [`ChangelogTopicError`].
pub async fn ensure_changelog_topic(
    cfg: &KafkaConfig,
    partitions: i32,
    create: bool,
) -> Result<(), ChangelogTopicError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &cfg.brokers)
        .create()?;
    let topic = cfg.changelog_topic.as_str();
    if create {
        let t = NewTopic::new(topic, partitions, TopicReplication::Fixed(1))
            .set("cleanup.policy", "compact")
            // Time for a new owner to repair an incomplete checkpoint (changelog.rs).
            .set("min.compaction.lag.ms", "3600000");
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        for r in admin.create_topics([&t], &opts).await? {
            match r {
                Ok(t) => tracing::info!(topic = %t, partitions, "created changelog topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => return Err(ChangelogTopicError::Create { topic, code }),
            }
        }
    }
    let md = admin
        .inner()
        .fetch_metadata(Some(topic), Duration::from_secs(30))?;
    let found = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len());
    if i32::try_from(found).ok() != Some(partitions) {
        return Err(ChangelogTopicError::Partitions {
            topic: topic.to_owned(),
            found,
            want: partitions,
        });
    }
    Ok(())
}

/// A consumer for reading the changelog and watermarks: no group membership, no commits.
///
/// # Errors
/// If librdkafka rejects the configuration.
pub fn reader(cfg: &KafkaConfig) -> rdkafka::error::KafkaResult<rdkafka::consumer::BaseConsumer> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers)
        .set("group.id", format!("{}-restore", cfg.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("isolation.level", "read_committed");
    for (k, v) in &cfg.consumer {
        c.set(k, v);
    }
    c.create()
}

/// True for consumer errors that only mean "nothing to do right now".
#[must_use]
pub fn is_benign(e: &rdkafka::error::KafkaError) -> bool {
    matches!(e.rdkafka_error_code(), Some(RDKafkaErrorCode::PartitionEOF))
        || matches!(e, rdkafka::error::KafkaError::PartitionEOF(_))
}

/// For the record: the raw codes of a rebalance.
#[must_use]
pub fn rebalance_kind(err: RDKafkaRespErr) -> &'static str {
    match err {
        RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => "assign",
        RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => "revoke",
        _ => "error",
    }
}

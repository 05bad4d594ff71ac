//! Kafka at the edges: client configuration, the output producer with delivery accounting, and
//! output-topic creation. The consumer's rebalance handling lives in `run.rs`, next to the state
//! it loads and flushes.
//!
//! # Co-partitioning
//! The telemetry and fleet-events topics are both keyed by device id and must have the same
//! partition count, so a device's batches and events land in partitions with the same number.
//! The consumer uses the `range` assignor, which gives partition `p` of both topics to the same
//! member, so one instance owns all of a device's state.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;
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
    type DeliveryOpaque = ();

    fn delivery(&self, r: &DeliveryResult<'_>, (): ()) {
        match r {
            Ok(_) => {
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
        .set("partition.assignment.strategy", "range");
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

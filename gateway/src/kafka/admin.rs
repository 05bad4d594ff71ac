//! Topic creation at start-up (`[kafka] create_topics`): creates the telemetry and events topics
//! when they are missing. "Already exists" is success; any other error is returned so `run`
//! can log it (the gateway keeps running on its spool and retries deliveries).

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use thiserror::Error;

use crate::config::KafkaConfig;

#[derive(Debug, Error)]
pub enum AdminError {
    #[error("creating the admin client: {0}")]
    Client(KafkaError),
    #[error("create_topics request: {0}")]
    Request(KafkaError),
    #[error("creating topic {topic}: {code}")]
    Topic {
        topic: String,
        code: RDKafkaErrorCode,
    },
}

/// Creates `[kafka] topic` and `events_topic` if missing.
///
/// # Errors
/// The brokers do not answer within `timeout`, or refuse to create a topic for a reason other
/// than that it exists.
pub async fn ensure_topics(
    cfg: &KafkaConfig,
    brokers: &str,
    timeout: Duration,
) -> Result<(), AdminError> {
    let admin: AdminClient<DefaultClientContext> = super::config::admin_config(cfg, brokers)
        .create()
        .map_err(AdminError::Client)?;
    let topics = [
        NewTopic::new(
            &cfg.topic,
            cfg.partitions,
            TopicReplication::Fixed(cfg.replication),
        ),
        NewTopic::new(
            &cfg.events_topic,
            cfg.partitions,
            TopicReplication::Fixed(cfg.replication),
        ),
    ];
    let opts = AdminOptions::new()
        .operation_timeout(Some(timeout))
        .request_timeout(Some(timeout));
    let res = admin
        .create_topics(&topics, &opts)
        .await
        .map_err(AdminError::Request)?;
    for r in res {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(AdminError::Topic { topic, code }),
        }
    }
    Ok(())
}

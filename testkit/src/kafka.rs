//! The real Kafka-API broker for tests.
//!
//! `scripts/test` starts tansu on a free loopback port and exports
//! `BREAKWATER_TEST_KAFKA=127.0.0.1:PORT`. Tests call [`bootstrap`] (or the [`require_kafka!`]
//! macro): without the variable a test is skipped with a message locally, and **fails** under
//! CI (`CI=true`), so a broken harness can never turn the suite green.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use breakwater_protocol::kafka::{decode_record_value, HEADER_CONTENT_TYPE};
use breakwater_protocol::{Batch, Limits};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

/// The environment variable that carries the broker address.
pub const ENV: &str = "BREAKWATER_TEST_KAFKA";

/// The test broker's bootstrap address, or `None` when it is not configured.
///
/// # Panics
/// Under CI without the variable: tests that need Kafka must fail there, not skip.
#[must_use]
pub fn bootstrap() -> Option<String> {
    match std::env::var(ENV) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            assert!(
                !crate::in_ci(),
                "{ENV} is not set under CI: run the suite through scripts/test, which starts the broker"
            );
            eprintln!("skipping: {ENV} is not set (run scripts/test to start a Kafka-API broker)");
            None
        }
    }
}

/// Returns the broker address, or returns early from the test when it is not configured
/// (failing under CI; see [`bootstrap`]).
#[macro_export]
macro_rules! require_kafka {
    () => {
        match $crate::kafka::bootstrap() {
            Some(b) => b,
            None => return,
        }
    };
}

/// A topic name no other test (or earlier run against the same broker) uses.
#[must_use]
pub fn unique_topic(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Creates a topic (tansu does not auto-create topics).
///
/// # Panics
/// If the broker refuses or does not answer within 30 s.
pub async fn create_topic(bootstrap: &str, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let res = admin
        .create_topics([&topic], &opts)
        .await
        .expect("create_topics request");
    for r in res {
        if let Err((t, e)) = r {
            panic!("creating topic {t}: {e}");
        }
    }
}

/// Creates a uniquely named topic and returns its name.
pub async fn fresh_topic(bootstrap: &str, prefix: &str, partitions: i32) -> String {
    let name = unique_topic(prefix);
    create_topic(bootstrap, &name, partitions).await;
    name
}

/// A producer with idempotence, as the gateway uses.
///
/// # Panics
/// If the client cannot be created.
pub fn producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("producer")
}

/// Produces one record and waits for its delivery report.
///
/// # Panics
/// If delivery fails.
pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    key: &[u8],
    value: &[u8],
    headers: &[(&str, &[u8])],
) {
    let mut h = OwnedHeaders::new();
    for &(k, v) in headers {
        h = h.insert(Header {
            key: k,
            value: Some(v),
        });
    }
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(value).headers(h),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("delivery");
}

/// One record read back from a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    /// The value of a header, as UTF-8.
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// The telemetry batch in this record, decoded by its content-type header.
    ///
    /// # Panics
    /// If the record has no value or the value does not decode: a test failure.
    #[must_use]
    pub fn batch(&self) -> Batch {
        let value = self
            .value
            .as_deref()
            .expect("telemetry record without a value");
        decode_record_value(value, self.header(HEADER_CONTENT_TYPE), &Limits::DEFAULT)
            .expect("telemetry record decodes")
    }
}

/// Reads `topic` from offset 0 of each of its `partitions` with `assign` (no consumer group),
/// until at least `expected` records arrived and nothing new came for `settle`, or until
/// `timeout`. Records are returned in per-partition offset order.
///
/// Blocking: call it from `spawn_blocking` in async tests.
///
/// # Panics
/// If the consumer cannot be created or assigned.
#[must_use]
pub fn read_all(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    expected: usize,
    timeout: Duration,
) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique_topic("testkit-reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition offset");
    }
    consumer.assign(&tpl).expect("assign");

    let settle = Duration::from_millis(500);
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut last_new = Instant::now();
    while Instant::now() < deadline {
        if out.len() >= expected && last_new.elapsed() >= settle {
            break;
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let headers = m
                    .headers()
                    .map(|hs| {
                        hs.iter()
                            .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Record {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec),
                    headers,
                });
                last_new = Instant::now();
            }
            Some(Err(e)) => eprintln!("testkit read_all: {e}"),
            None => {}
        }
    }
    out
}

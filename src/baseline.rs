//! The do-it-yourself baseline Breakwater is measured against: Mosquitto plus this small
//! forwarder, which subscribes to the devices' telemetry and hands each MQTT message to
//! librdkafka **on receipt** (before Kafka has it), as such bridges usually do. It does no
//! sequencing and no spooling: whatever sits in librdkafka's queue or in flight when it dies is
//! lost, and the device already considers it delivered. The storm benchmark measures that
//! rather than assuming it.
//!
//! It serves two device models at once (see `crate::storm`):
//! * DIY as usually built (`diy-json`): each reading is its own JSON message on
//!   [`DIY_TELEMETRY_FILTER`] (`devices/{device}/telemetry`), published at QoS 1; Mosquitto's
//!   PUBACK is the device's "done". The forwarder writes one Kafka record per MQTT message,
//!   key = the device from the topic, value = the payload as received, no headers; its own
//!   PUBACK to Mosquitto (rumqttc's automatic ack) is the ack on receipt.
//! * DIY with Breakwater's batching agent (`breakwater`): agent batches on
//!   `bw/v1/{device}/telemetry`, one record per batch (the envelope as received), and an
//!   application ack (`bw/v1/{device}/ack`) published on receipt.
//!
//! librdkafka settings are what a user would pick for throughput: `linger.ms=5`,
//! `compression.type=lz4`, defaults otherwise (acks=all, idempotence off). When librdkafka's
//! local queue is full the forwarder waits for it to drain rather than dropping the message.
//! The MQTT session is persistent (fixed client id, `clean_session=false`, QoS 1
//! subscription), so Mosquitto queues messages while the forwarder is down
//! (`max_queued_messages` in mosquitto.conf bounds that queue).

use std::time::Duration;

use anyhow::Context as _;
use breakwater_protocol::kafka::{CONTENT_TYPE_POSTCARD, HEADER_CONTENT_TYPE};
use breakwater_protocol::topic::{Topic, TopicKind, TELEMETRY_FILTER};
use breakwater_protocol::{envelope, Ack, Limits};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;

/// Options of `breakwater-baseline-forwarder`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "breakwater-baseline-forwarder",
    about = "DIY baseline: MQTT (Mosquitto) -> Kafka forwarder that acks on receipt"
)]
pub struct Options {
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub mqtt: String,
    #[arg(long)]
    pub kafka: String,
    #[arg(long, default_value = breakwater_protocol::kafka::DEFAULT_TOPIC)]
    pub topic: String,
    /// Create the topic with this many partitions at start (ignored if it exists).
    #[arg(long)]
    pub create_partitions: Option<i32>,
    /// Credit granted in every ack (batched model).
    #[arg(long, default_value_t = 16)]
    pub credit: u32,
    /// MQTT client id; fixed so that the persistent session survives a restart.
    #[arg(long, default_value = "breakwater-baseline-forwarder")]
    pub client_id: String,
    /// Use a clean MQTT session (Mosquitto then drops what arrives while the forwarder is down).
    #[arg(long)]
    pub clean_session: bool,
}

/// Topic filter of the DIY devices' per-reading JSON messages.
pub const DIY_TELEMETRY_FILTER: &str = "devices/+/telemetry";

/// The topic a DIY device publishes its readings on.
#[must_use]
pub fn diy_topic(device: &breakwater_protocol::DeviceId) -> String {
    format!("devices/{device}/telemetry")
}

/// The device of a DIY topic (`devices/{device}/telemetry`).
#[must_use]
pub fn diy_topic_device(topic: &str) -> Option<&str> {
    let rest = topic.strip_prefix("devices/")?;
    let device = rest.strip_suffix("/telemetry")?;
    (!device.is_empty() && !device.contains('/')).then_some(device)
}

/// Hands `record` to librdkafka, waiting while its local queue is full (a user would rather
/// slow down than drop). Other errors are logged and the message is dropped.
async fn send_record(producer: &FutureProducer, mut record: FutureRecord<'_, str, [u8]>) {
    loop {
        match producer.send_result(record) {
            Ok(_) => return,
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                ),
                r,
            )) => {
                record = r;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((e, r)) => {
                tracing::warn!(key = ?r.key, error = %e, "kafka refused a record; dropped");
                return;
            }
        }
    }
}

async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let t = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for r in admin.create_topics([&t], &AdminOptions::new()).await? {
        if let Err((name, e)) = r {
            if e != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists {
                anyhow::bail!("creating topic {name}: {e}");
            }
        }
    }
    Ok(())
}

/// Runs until `cancel` fires.
///
/// # Errors
/// The Kafka client cannot be created, or the MQTT address is malformed.
pub async fn run(opts: &Options, cancel: CancellationToken) -> anyhow::Result<()> {
    run_with_ready(opts, cancel, None).await
}

/// As [`run`], and sends on `ready` once Mosquitto has confirmed both subscriptions (tests
/// must not publish before: Mosquitto drops messages nobody subscribed to).
///
/// # Errors
/// As [`run`].
pub async fn run_with_ready(
    opts: &Options,
    cancel: CancellationToken,
    mut ready: Option<tokio::sync::oneshot::Sender<()>>,
) -> anyhow::Result<()> {
    let mut subacks = 0u32;
    if let Some(p) = opts.create_partitions {
        create_topic(&opts.kafka, &opts.topic, p).await?;
    }
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &opts.kafka)
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .create()
        .context("kafka producer")?;
    let (host, port) = opts.mqtt.rsplit_once(':').context("--mqtt HOST:PORT")?;
    let mut mqtt = MqttOptions::new(&opts.client_id, host, port.parse()?);
    mqtt.set_keep_alive(Duration::from_secs(30));
    mqtt.set_clean_session(opts.clean_session);
    mqtt.set_inflight(1_000);
    mqtt.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(mqtt, 100_000);
    let limits = Limits::DEFAULT;
    loop {
        let ev = tokio::select! {
            () = cancel.cancelled() => break,
            ev = eventloop.poll() => ev,
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                client.subscribe(TELEMETRY_FILTER, QoS::AtLeastOnce).await?;
                client
                    .subscribe(DIY_TELEMETRY_FILTER, QoS::AtLeastOnce)
                    .await?;
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if let Some(device) = diy_topic_device(&p.topic) {
                    // DIY as usually built: one record per message, as received. rumqttc has
                    // already PUBACKed it to Mosquitto.
                    let record = FutureRecord::to(&opts.topic)
                        .key(device)
                        .payload(p.payload.as_ref());
                    send_record(&producer, record).await;
                    continue;
                }
                let Ok(topic) = Topic::parse(&p.topic) else {
                    continue;
                };
                if topic.kind != TopicKind::Telemetry {
                    continue;
                }
                let Ok(batch) = envelope::decode_batch(&p.payload, &limits) else {
                    continue;
                };
                // Hand it to librdkafka without waiting for the delivery report...
                let headers = OwnedHeaders::new().insert(Header {
                    key: HEADER_CONTENT_TYPE,
                    value: Some(CONTENT_TYPE_POSTCARD),
                });
                let record = FutureRecord::to(&opts.topic)
                    .key(batch.device.as_str())
                    .payload(p.payload.as_ref())
                    .headers(headers);
                if let Err((e, _)) = producer.send_result(record) {
                    tracing::warn!(device = %batch.device, error = %e, "kafka queue refused a batch");
                    continue;
                }
                // ...and ack on receipt: the device deletes the batch now.
                let ack = Ack {
                    device: batch.device.clone(),
                    epoch: batch.epoch,
                    upto_seq: batch.last_seq(),
                    credit: opts.credit,
                    retry_after_ms: None,
                };
                let _ = client.try_publish(
                    Topic::ack(&batch.device),
                    QoS::AtLeastOnce,
                    false,
                    envelope::encode_ack(&ack),
                );
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                subacks += 1;
                if subacks >= 2 {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "mqtt connection error; retrying in 500 ms");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    let _ = producer.flush(Duration::from_secs(5));
    Ok(())
}

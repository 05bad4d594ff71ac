//! The do-it-yourself baseline Breakwater is measured against: Mosquitto plus this small
//! forwarder, which subscribes to every device's telemetry, hands each MQTT message to
//! librdkafka, and acks the device **on receipt** (before Kafka has it), as such bridges
//! usually do. It does no sequencing and no spooling: whatever sits in librdkafka's queue or in
//! flight when it dies is lost, and the device already deleted it. The storm benchmark measures
//! that rather than assuming it.

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
    /// Credit granted in every ack.
    #[arg(long, default_value_t = 16)]
    pub credit: u32,
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
    let mut mqtt = MqttOptions::new(
        format!("baseline-forwarder-{}", std::process::id()),
        host,
        port.parse()?,
    );
    mqtt.set_keep_alive(Duration::from_secs(30));
    mqtt.set_clean_session(true);
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
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
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

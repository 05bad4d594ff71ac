//! librdkafka settings derived from `[kafka]`.

use rdkafka::config::ClientConfig;

use crate::config::KafkaConfig;

/// Producer configuration: idempotent, `acks=all`, compression/linger/batch from config, then
/// the pass-through `[kafka.properties]` (which win).
///
/// `socket.nagle.disable`: in ack mode `kafka` every device waits for a delivery report, so a
/// produce request held back by Nagle's algorithm (until the previous one is acknowledged on
/// the wire) is ack latency. Measured against tansu at 8,340 records/s (`BENCH_MODE=produce`
/// in `benches/throughput.rs`, load average 11-12): send-to-report p99 24-26 ms with Nagle,
/// 13-14 ms without.
#[must_use]
pub fn producer_config(cfg: &KafkaConfig, brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", cfg.compression.as_str())
        .set("linger.ms", cfg.linger_ms.to_string())
        .set("batch.size", cfg.batch_bytes.to_string())
        .set("message.timeout.ms", cfg.message_timeout_ms.to_string())
        .set(
            "queue.buffering.max.messages",
            (cfg.max_in_flight_records * 2 + cfg.direct_max_in_flight_records + 20_000).to_string(),
        )
        .set("socket.nagle.disable", "true")
        .set("client.id", "breakwater-gateway");
    for (k, v) in &cfg.properties {
        c.set(k, v);
    }
    c
}

/// Admin client configuration (same brokers and pass-through security settings).
#[must_use]
pub fn admin_config(cfg: &KafkaConfig, brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    for (k, v) in &cfg.properties {
        c.set(k, v);
    }
    c
}

//! End to end with every real part: an application writes NDJSON lines to the agent's local
//! ingest socket; the agent (redb buffer, MQTT sender) sends to the gateway (embedded rumqttd,
//! sequencer, spool, Kafka producer), which lands them in the real Kafka-API broker. Every line
//! confirmed by the agent must arrive in Kafka exactly once, in order.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use breakwater_agent::config::AgentConfig;
use breakwater_agent::Agent;
use breakwater_protocol::kafka::{decode_record_value, HEADER_CONTENT_TYPE};
use breakwater_protocol::{Limits, Value};
use breakwater_testkit::{kafka as tk, require_kafka};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const LINES: u64 = 600;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_lines_arrive_in_kafka_in_order_exactly_once() {
    let bootstrap = require_kafka!();
    let gw = common::start_gateway(&bootstrap, "e2e", 2, r#"ack_mode = "kafka""#).await;
    let (dir, topic, mqtt_port) = (&gw.dir, gw.topic.clone(), gw.mqtt_port);

    let agent_toml = format!(
        r#"
device_id = "press-01"
[gateway]
address = "127.0.0.1:{mqtt_port}"
[buffer]
dir = "{buffer}"
[ingest]
listen = "127.0.0.1:0"
[sender]
batch_max_readings = 50
"#,
        buffer = dir.path().join("agent").display()
    );
    let agent = Agent::start(AgentConfig::from_toml(&agent_toml).unwrap())
        .await
        .unwrap();
    let ingest = agent.ingest_addr().expect("ingest enabled");

    // The application: one line per reading, one reply per line.
    let stream = TcpStream::connect(ingest).await.unwrap();
    let (rd, mut wr) = stream.into_split();
    let mut replies = BufReader::new(rd).lines();
    let mut seqs = Vec::new();
    for i in 0..LINES {
        let line = format!(
            "{{\"metric\":\"temp\",\"value\":{i},\"ts\":{}}}\n",
            1_764_115_200_000 + i
        );
        wr.write_all(line.as_bytes()).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(30), replies.next_line())
            .await
            .expect("reply within 30 s")
            .unwrap()
            .expect("a reply line");
        let v: serde_json::Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(v["ok"], true, "line {i} rejected: {reply}");
        seqs.push(v["seq"].as_u64().unwrap());
    }
    assert_eq!(
        seqs,
        (1..=LINES).collect::<Vec<_>>(),
        "consecutive seqs from 1"
    );

    // Everything confirmed reaches Kafka and is acked back to the agent.
    let acked = agent.flush(Duration::from_secs(60)).await.unwrap();
    assert_eq!(acked, LINES);
    let epoch = agent.stats().epoch;

    let (b, t) = (bootstrap.clone(), topic.clone());
    let records =
        tokio::task::spawn_blocking(move || tk::read_all(&b, &t, 2, 1, Duration::from_secs(60)))
            .await
            .unwrap();
    let mut got = Vec::new();
    for r in &records {
        let batch = decode_record_value(
            r.value.as_deref().unwrap(),
            r.header(HEADER_CONTENT_TYPE),
            &Limits::DEFAULT,
        )
        .unwrap();
        assert_eq!(batch.device.as_str(), "press-01");
        assert_eq!(batch.epoch, epoch);
        assert_eq!(r.key.as_deref(), Some(&b"press-01"[..]));
        for (seq, reading) in batch.iter_seq() {
            assert_eq!(reading.value, Value::I64(i64::try_from(seq - 1).unwrap()));
            got.push(seq);
        }
    }
    assert_eq!(
        got,
        (1..=LINES).collect::<Vec<_>>(),
        "every confirmed line exactly once, in order"
    );

    drop(wr);
    agent.shutdown().await;
    gw.gateway.shutdown().await;
}

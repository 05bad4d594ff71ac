//! The `Agent` library handle: record, flush, shutdown.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use breakwater_agent::buffer::{FullPolicy, MemoryBuffer};
use breakwater_agent::config::AgentConfig;
use breakwater_agent::{Agent, RecordError};
use breakwater_protocol::Reading;
use breakwater_testkit::mosquitto::Mosquitto;
use common::TestGateway;

#[tokio::test]
async fn record_flush_shutdown() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let gw = TestGateway::start(broker.port()).await;
    let mut cfg = AgentConfig::with_defaults("lib-agent".parse().unwrap());
    cfg.gateway.addresses = vec![breakwater_agent::config::GatewayAddress::new(
        "127.0.0.1",
        broker.port(),
    )];
    cfg.ingest.enabled = false;
    cfg.sender.batch_max_delay = Duration::from_secs(3600);
    let buffer = Arc::new(MemoryBuffer::new(1 << 20, FullPolicy::Block));
    let agent = Agent::start_with(cfg, buffer, None).await.unwrap();
    for i in 0..12u32 {
        let seq = agent
            .record(Reading::new("temp", 20.0 + f64::from(i), 1_764_115_200_000))
            .await
            .unwrap();
        assert_eq!(seq, u64::from(i) + 1);
    }
    let err = agent.record(Reading::new("", 1.0, 0)).await.unwrap_err();
    assert!(matches!(err, RecordError::Invalid(_)), "{err}");
    // batch_max_delay is an hour: only flush makes these go now.
    assert_eq!(agent.flush(Duration::from_secs(20)).await.unwrap(), 12);
    assert_eq!(agent.stats().readings, 0);
    let device = "lib-agent".parse().unwrap();
    assert_eq!(gw.log().unique_seqs(&device), (1..=12).collect::<Vec<_>>());
    let report = agent.shutdown().await;
    assert!(report.sender.drained);
    assert_eq!(report.left_buffered, 0);
}

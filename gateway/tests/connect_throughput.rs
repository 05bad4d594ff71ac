//! Connect throughput of the embedded (patched) rumqttd: a few hundred clients CONNECT at once
//! and every one must get a CONNACK. A correctness test: it prints connects/s but asserts no
//! timing (the measurement lives in `benches/connect_storm.rs`).
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use breakwater_gateway::admission::probe::{self, ProbeOutcome};

const CLIENTS: usize = 400;

/// rumqttd on its own threads (it has no stop method) on a free loopback port, accept loop
/// without a per-connection delay.
fn start_broker() -> SocketAddr {
    let port = breakwater_testkit::free_port();
    let listen: SocketAddr = ([127, 0, 0, 1], port).into();
    let server = rumqttd::ServerSettings {
        name: "v4".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections: rumqttd::ConnectionSettings {
            connection_timeout_ms: 30_000,
            max_payload_size: 64 * 1024,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: false,
            connect_handler: None,
            authz_handler: None,
            transport_handler: None,
            max_deferred_acks: None,
            deferred_ack_timeout_ms: None,
        },
    };
    let config = rumqttd::Config {
        router: rumqttd::RouterConfig {
            max_connections: CLIENTS + 10,
            max_outgoing_packet_count: 200,
            max_segment_size: 64 * 1024,
            max_segment_count: 2,
            ..Default::default()
        },
        v4: Some(HashMap::from([("1".to_string(), server)])),
        ..Default::default()
    };
    std::thread::spawn(move || {
        let mut broker = rumqttd::Broker::new(config);
        broker.start().unwrap();
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(listen).is_err() {
        assert!(
            Instant::now() < deadline,
            "rumqttd did not listen on {listen}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    listen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_concurrent_connects_all_get_connack() {
    let addr = start_broker();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..CLIENTS {
        tasks.spawn(async move {
            let id = format!("throughput-{i}");
            probe::connect(addr, &id, None, Duration::from_secs(60)).await
        });
    }
    let mut held = Vec::with_capacity(CLIENTS);
    let mut failures = Vec::new();
    while let Some(res) = tasks.join_next().await {
        match res.unwrap() {
            Ok(ProbeOutcome::Accepted(stream)) => held.push(stream),
            other => failures.push(format!("{other:?}")),
        }
    }
    let elapsed = started.elapsed();
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(held.len(), CLIENTS);
    #[allow(clippy::cast_precision_loss)]
    let rate = CLIENTS as f64 / elapsed.as_secs_f64();
    println!("{CLIENTS} concurrent CONNECTs -> CONNACK in {elapsed:?} ({rate:.0} connects/s)");
}

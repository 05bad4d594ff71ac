//! A small reconnection storm through the real gateway and the real Kafka-API broker: a few
//! hundred virtual devices (the agent's real sending logic), every connection cut at once, all
//! back under their own backoff. Exact assertions: nothing lost, nothing duplicated in Kafka,
//! per-device order kept, everything acked. The big runs are benchmarks (`scripts/bench`).

#![allow(clippy::unwrap_used)]

mod common;

use breakwater::storm::{self, Options, Scenario};
use breakwater_testkit::require_kafka;
use clap::Parser as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_storm_loses_and_duplicates_nothing() {
    let bootstrap = require_kafka!();
    let gw = common::start_gateway(&bootstrap, "storm", 4, "").await;
    let (topic, mqtt_port) = (gw.topic.clone(), gw.mqtt_port);

    let opts = Options::parse_from([
        "breakwater-storm",
        "--gateway",
        &format!("127.0.0.1:{mqtt_port}"),
        "--kafka",
        &bootstrap,
        "--topic",
        &topic,
        "--devices",
        "300",
        "--readings-per-device",
        "60",
        "--rate",
        "20",
        "--batch",
        "20",
        "--scenario",
        "storm",
        "--outage",
        "2",
        "--backoff-initial-ms",
        "1000",
        "--timeout",
        "180",
    ]);
    assert_eq!(opts.scenario, Scenario::Storm);
    let report = storm::run(&opts).await.unwrap();
    gw.gateway.shutdown().await;

    let v = report
        .verification
        .as_ref()
        .expect("verified against Kafka");
    assert_eq!(v.expected_readings, 300 * 60);
    assert_eq!(v.lost, 0, "{v:?}");
    assert_eq!(v.duplicates, 0, "the gateway dedupes resends: {v:?}");
    assert_eq!(v.out_of_order, 0, "{v:?}");
    assert!(report.all_acked);
    assert!(report.cut_at.is_some(), "the storm happened");
    assert!(
        report.reconnect_seconds.is_some() && report.drain_seconds.is_some(),
        "every device came back and the backlog drained"
    );
    assert!(
        report.connects_total >= 600,
        "each device connected at least twice (before and after the cut): {}",
        report.connects_total
    );
}

/// The same storm with authentication on: TLS, and every device logging in with its own
/// password (`[auth] mode = "file"`, credentials written by `--write-credentials`'s code).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_storm_over_tls_with_passwords_loses_nothing() {
    let bootstrap = require_kafka!();
    let certs = tempfile::tempdir().unwrap();
    let d = certs.path();
    let pki = breakwater_testkit::pki::Pki::new(d);

    let args = |extra: &[&str], gateway: &str, topic: &str| {
        let mut a = vec![
            "breakwater-storm".to_owned(),
            "--gateway".to_owned(),
            gateway.to_owned(),
            "--kafka".to_owned(),
            bootstrap.clone(),
            "--topic".to_owned(),
            topic.to_owned(),
            "--devices".to_owned(),
            "100".to_owned(),
            "--device-prefix".to_owned(),
            "tls".to_owned(),
            "--password-secret".to_owned(),
            "k3y".to_owned(),
        ];
        a.extend(extra.iter().map(|s| (*s).to_owned()));
        Options::parse_from(a)
    };
    let creds = d.join("credentials");
    args(&[], "127.0.0.1:1", "t")
        .write_credentials(&creds)
        .unwrap();
    let tls_port = breakwater_testkit::free_port();
    let extra = format!(
        "{}[auth]\nmode = \"file\"\ncredentials_file = \"{}\"\n",
        pki.gateway_tls_section(tls_port, false),
        creds.display()
    );
    let gw = common::start_gateway(&bootstrap, "storm-tls", 4, &extra).await;
    let ca_file = d.join("ca.pem");
    let opts = args(
        &[
            "--tls-ca",
            ca_file.to_str().unwrap(),
            "--readings-per-device",
            "40",
            "--rate",
            "20",
            "--batch",
            "20",
            "--scenario",
            "storm",
            "--outage",
            "2",
            "--backoff-initial-ms",
            "1000",
            "--timeout",
            "180",
        ],
        &format!("127.0.0.1:{tls_port}"),
        &gw.topic.clone(),
    );
    let report = storm::run(&opts).await.unwrap();
    let stats = gw.gateway.admission.stats();
    gw.gateway.shutdown().await;
    let v = report
        .verification
        .as_ref()
        .expect("verified against Kafka");
    assert_eq!(v.expected_readings, 100 * 40);
    assert_eq!((v.lost, v.duplicates, v.out_of_order), (0, 0, 0), "{v:?}");
    assert!(report.all_acked);
    assert_eq!(stats.auth_failures, 0, "every device logged in: {stats:?}");
    assert!(stats.admitted >= 200, "before and after the cut: {stats:?}");
}

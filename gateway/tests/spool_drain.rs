//! Issue 15, item 2: `breakwater-gateway spool drain --kafka BROKERS` empties the spool of a
//! gateway that died and stays down. A spool-only gateway (ack mode `spool`, no Kafka) acks
//! three devices' readings, is killed with SIGKILL; the drain, run as its own process with
//! another configuration (as on another host), delivers every spooled reading to Kafka (tansu)
//! exactly once and in order per device, and leaves the spool empty. It refuses a spool that a
//! running gateway holds, and a directory with no spool in it.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn drain(args: &[&str], config: &std::path::Path) -> (bool, String) {
    let out = Command::new(BIN)
        .args(["spool", "drain", "--config"])
        .arg(config)
        .args(args)
        .env_remove(breakwater_gateway::config::ENV_KAFKA_BROKERS)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_gateways_spool_is_drained_to_kafka_exactly_once() {
    let bootstrap = breakwater_testkit::require_kafka!();
    let topic = breakwater_testkit::kafka::fresh_topic(&bootstrap, "gw-drain", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let mut gw = GatewayProc::start_with(dir.path(), "ack_mode = \"spool\"", "");
    let spool_dir = dir.path().join("spool");

    let devices = names("drain", 3);
    let total = 3_000;
    let specs: Vec<_> = devices
        .iter()
        .map(|d| {
            let mut s = spec(gw.mqtt_port, d, total);
            s.batch = 100;
            s
        })
        .collect();
    let reports = run_devices(specs).await;
    for (d, r) in &reports {
        assert_eq!(r.acked_upto, total, "{d}");
    }

    // The operator's host: its own configuration names the topic; brokers on the command line.
    let other = dir.path().join("drain-host.toml");
    std::fs::write(&other, format!("[kafka]\ntopic = \"{topic}\"\n")).unwrap();

    // Never while a gateway runs on the spool.
    let (ok, err) = drain(
        &["--dir", spool_dir.to_str().unwrap(), "--kafka", &bootstrap],
        &other,
    );
    assert!(!ok, "drained a live gateway's spool: {err}");
    assert!(err.contains("in use by a running gateway"), "{err}");

    // Without Kafka there is nothing to drain to.
    gw.kill9();
    let (ok, err) = drain(&["--dir", spool_dir.to_str().unwrap()], &other);
    assert!(!ok);
    assert!(err.contains("--kafka"), "{err}");

    // A directory without a spool (a typo) is an error, not "0 drained".
    let (ok, err) = drain(
        &[
            "--dir",
            dir.path().join("nope").to_str().unwrap(),
            "--kafka",
            &bootstrap,
        ],
        &other,
    );
    assert!(!ok);
    assert!(err.contains("no spool in"), "{err}");

    let (ok, err) = drain(
        &["--dir", spool_dir.to_str().unwrap(), "--kafka", &bootstrap],
        &other,
    );
    assert!(ok, "{err}");
    assert!(
        err.contains(&format!("{} reading(s) delivered", 3 * total)),
        "{err}"
    );

    let by = read_until_complete(&bootstrap, &topic, 2, &devices, total).await;
    assert_exact(&by, &devices, total);
    assert!(spooled_seqs(&spool_dir).is_empty(), "spool not empty");

    // Again: nothing left, nothing produced twice.
    let (ok, err) = drain(
        &["--dir", spool_dir.to_str().unwrap(), "--kafka", &bootstrap],
        &other,
    );
    assert!(ok, "{err}");
    assert!(err.contains("0 batch(es)"), "{err}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let by = read_until_complete(&bootstrap, &topic, 2, &devices, total).await;
    assert_exact(&by, &devices, total);
}

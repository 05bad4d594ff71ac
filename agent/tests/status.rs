//! `breakwater-agent status` against a running agent binary: its local endpoint's `/status`,
//! while acks flow and while the gateway withholds them.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use breakwater_testkit::mosquitto::Mosquitto;
use common::{wait_until, TestGateway};

const BIN: &str = env!("CARGO_BIN_EXE_breakwater-agent");

fn status_json(config: &std::path::Path) -> serde_json::Value {
    let out = Command::new(BIN)
        .args(["status", "--json", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn status_shows_connection_last_ack_credit_and_unacked_backlog() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let gw = TestGateway::start(broker.port()).await;
    gw.knobs().credit = 5;
    let dir = tempfile::tempdir().unwrap();
    let ingest = breakwater_testkit::free_port();
    let metrics = breakwater_testkit::free_port();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "device_id = \"status-test\"\n\
             [gateway]\naddress = \"127.0.0.1:{}\"\n\
             [buffer]\ndir = \"{}\"\n\
             [ingest]\nlisten = \"127.0.0.1:{ingest}\"\n\
             [metrics]\nlisten = \"127.0.0.1:{metrics}\"\n\
             [sender]\nbatch_max_delay = \"20ms\"\n",
            broker.port(),
            dir.path().join("buf").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let s = loop {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", ingest)) {
            break s;
        }
        assert!(Instant::now() < deadline, "agent did not listen");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut send = |n: usize| {
        for i in 0..n {
            writeln!(w, "{{\"metric\":\"m\",\"value\":{i}}}").unwrap();
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            assert!(line.contains("\"ok\":true"), "{line}");
        }
    };
    send(7);
    assert!(
        wait_until(Duration::from_secs(20), || {
            let v = status_json(&config);
            v["link"]["last_ack_upto"] == 7 && v["buffer"]["readings"] == 0
        })
        .await,
        "{}",
        status_json(&config)
    );
    let v = status_json(&config);
    assert_eq!(v["device"], "status-test");
    assert_eq!(v["link"]["state"], "connected");
    assert_eq!(v["link"]["credit"], 5);
    assert!(v["buffer"]["oldest_unacked_age_s"].is_null(), "{v}");

    // The gateway stops acking: the backlog and its age show.
    gw.knobs().withhold_acks = true;
    send(3);
    assert!(
        wait_until(Duration::from_secs(20), || {
            let v = status_json(&config);
            v["buffer"]["readings"] == 3 && v["link"]["last_sent_seq"] == 10
        })
        .await,
        "{}",
        status_json(&config)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = Command::new(BIN)
        .args(["status", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("connection  connected"), "{text}");
    assert!(text.contains("buffer      3 readings"), "{text}");
    assert!(text.contains("up to seq 7"), "{text}");
    assert!(text.contains("credit      5"), "{text}");
    let v = status_json(&config);
    assert!(
        v["buffer"]["oldest_unacked_age_s"].as_f64().unwrap() > 0.0,
        "{v}"
    );

    child.kill().unwrap();
    child.wait().unwrap();
    // Not running: a clear error.
    let out = Command::new(BIN)
        .args(["status", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is it running"));
}

#[test]
fn status_without_a_local_endpoint_says_how_to_enable_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "device_id = \"d\"\n[gateway]\naddress = \"127.0.0.1:1\"\n[buffer]\ndir = \"{}\"\n",
            dir.path().join("buf").display()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["status", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("[metrics] listen"));
}

//! The `breakwater-agent` binary: check-config, and run + SIGTERM with a real broker.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use breakwater_protocol::StatusKind;
use breakwater_testkit::mosquitto::Mosquitto;
use common::{wait_until, TestGateway};

const BIN: &str = env!("CARGO_BIN_EXE_breakwater-agent");

#[test]
fn check_config_reports_every_error_with_its_key_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "device_id = \"no spaces\"\n[buffer]\nwhen_full = \"explode\"\n[sender]\nack_timeout = \"soon\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in ["device_id:", "buffer.when_full:", "sender.ack_timeout:"] {
        assert!(err.contains(key), "{key} missing in {err}");
    }

    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/agent.toml");
    let out = Command::new(BIN)
        .args(["check-config", "--config", shipped])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
}

#[test]
fn check_config_lists_several_gateways_and_refuses_both_forms() {
    let dir = tempfile::tempdir().unwrap();
    let run = |text: &str| {
        let f = dir.path().join("agent.toml");
        std::fs::write(&f, text).unwrap();
        Command::new(BIN)
            .args(["check-config", "--config"])
            .arg(&f)
            .output()
            .unwrap()
    };
    let out = run(
        "device_id = \"d\"\n[gateway]\naddresses = [\"gw-a:8883\", \"gw-b:8883\"]\nfailover_after = 4\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("gateway gw-a:8883, gw-b:8883 (failover after 4 failed connects)"),
        "{text}"
    );
    let out =
        run("device_id = \"d\"\n[gateway]\naddress = \"gw-a:8883\"\naddresses = [\"gw-b:8883\"]\n");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("gateway.addresses:"), "{err}");
}

#[tokio::test]
async fn sigterm_drains_publishes_death_and_exits_cleanly() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let gw = TestGateway::start(broker.port()).await;
    let dir = tempfile::tempdir().unwrap();
    let ingest = breakwater_testkit::free_port();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "device_id = \"sigterm-test\"\n\
             [gateway]\naddress = \"127.0.0.1:{}\"\n\
             [buffer]\ndir = \"{}\"\n\
             [ingest]\nlisten = \"127.0.0.1:{ingest}\"\n\
             [sender]\nbatch_max_delay = \"1h\"\n\
             [shutdown]\ndrain_timeout = \"10s\"\n",
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
    // Connected first (its Birth seen): readings buffered before the connection is up are sent
    // at once when it comes up, whatever batch_max_delay says.
    assert!(
        wait_until(Duration::from_secs(20), || gw
            .log()
            .statuses
            .iter()
            .any(|s| s.kind == StatusKind::Birth))
        .await
    );
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    for i in 0..7 {
        writeln!(w, "{{\"metric\":\"m\",\"value\":{i}}}").unwrap();
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(line.contains("\"ok\":true"), "{line}");
    }
    // batch_max_delay is 1h: only the shutdown drain sends these.
    assert!(gw.log().batches.is_empty());
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "agent did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");
    let device = "sigterm-test".parse().unwrap();
    assert_eq!(gw.log().unique_seqs(&device), (1..=7).collect::<Vec<_>>());
    assert!(
        wait_until(Duration::from_secs(10), || gw
            .log()
            .statuses
            .iter()
            .any(|s| s.kind == StatusKind::Death))
        .await
    );
}

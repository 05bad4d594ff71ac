//! The command line: `check-config` reports every problem with its key and fails,
//! `print-default-config` prints a valid configuration, the HTTP endpoints answer, SIGTERM stops
//! cleanly and the spool can be exported afterwards.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::*;

#[test]
fn check_config_reports_every_error_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[mqtt]\nmax_payload_bytes = 1\n[kafka]\nbrokers = \"nope\"\npartitions = 0\n[ack]\nmin_credit = 0\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "mqtt.max_payload_bytes",
        "kafka.brokers",
        "kafka.partitions",
        "ack.min_credit",
    ] {
        assert!(err.contains(key), "{key} not reported:\n{err}");
    }

    // An unknown key is a parse error naming it.
    std::fs::write(&path, "[spool]\ndirr = \"x\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("dirr"));
}

#[test]
fn print_default_config_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .arg("print-default-config")
        .output()
        .unwrap();
    assert!(out.status.success());
    let path = dir.path().join("default.toml");
    std::fs::write(&path, &out.stdout).unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .env_remove("BREAKWATER_KAFKA_BROKERS")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn env_override_is_validated() {
    let out = Command::new(BIN)
        .arg("check-config")
        .env("BREAKWATER_KAFKA_BROKERS", "not-a-host-port")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("kafka.brokers"));
}

/// `open` on a listener that is not loopback is refused unless allowed; `mtls` needs a client CA;
/// the gateway refuses to start with such a configuration too.
#[test]
fn check_config_refuses_open_mode_on_the_network_and_mtls_without_a_ca() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.toml");
    let check = |text: &str| {
        std::fs::write(&path, text).unwrap();
        let out = Command::new(BIN)
            .args(["check-config", "--config"])
            .arg(&path)
            .env_remove("BREAKWATER_KAFKA_BROKERS")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = check("[mqtt]\nlisten = \"0.0.0.0:1883\"\n");
    assert!(
        !ok && err.contains("auth.mode") && err.contains("not loopback"),
        "{err}"
    );
    let (ok, err) =
        check("[mqtt]\nlisten = \"0.0.0.0:1883\"\n[auth]\nallow_open_on_network = true\n");
    assert!(ok, "{err}");
    let (ok, err) = check("[auth]\nmode = \"mtls\"\n");
    assert!(!ok && err.contains("client_ca_file"), "{err}");
    let (ok, err) = check("[mqtt]\nplaintext = false\n");
    assert!(!ok && err.contains("mqtt.plaintext"), "{err}");
    let (ok, err) = check("[mqtt.tls]\nlisten = \"127.0.0.1:8883\"\ncert_file = \"/nonexistent/s.pem\"\nkey_file = \"/nonexistent/s.key\"\n");
    assert!(
        !ok && err.contains("mqtt.tls") && err.contains("/nonexistent/s.pem"),
        "{err}"
    );

    // `run` refuses the same configuration.
    std::fs::write(
        &path,
        format!(
            "[mqtt]\nlisten = \"0.0.0.0:{}\"\n[metrics]\nlisten = \"127.0.0.1:{}\"\n[spool]\ndir = \"{}\"\n",
            breakwater_testkit::free_port(),
            breakwater_testkit::free_port(),
            dir.path().join("spool").display()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&path)
        .env_remove("BREAKWATER_KAFKA_BROKERS")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("auth.mode"));
}

/// `hash-secret` takes the secret from stdin only: never from argv, where `ps` and the shell
/// history would show it.
#[test]
fn hash_secret_reads_stdin_not_argv() {
    use std::io::Write;
    let out = Command::new(BIN)
        .args(["hash-secret", "s3cret"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a secret in argv is refused");
    let mut child = Command::new(BIN)
        .arg("hash-secret")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "s3cret").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).unwrap();
    let creds = breakwater_gateway::admission::Credentials::parse(
        std::path::Path::new("c"),
        &format!("dev-1:{}", hash.trim()),
    )
    .unwrap();
    assert!(creds.verify("dev-1", "s3cret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_endpoints_and_graceful_stop() {
    let dir = tempfile::tempdir().unwrap();
    let mut gw = GatewayProc::start(dir.path(), "");
    assert_eq!(http_get(gw.metrics_port, "/healthz").unwrap().0, 200);
    assert_eq!(http_get(gw.metrics_port, "/readyz").unwrap().0, 200);
    let r = run_device(spec(gw.mqtt_port, "http-dev", 300)).await;
    assert_eq!(r.acked_upto, 300);
    let page = gw.metrics();
    assert!(
        page.contains("breakwater_gateway_acks_sent_total"),
        "{page}"
    );
    assert_eq!(
        parse_metric(&page, "breakwater_gateway_accepted_readings_total", ""),
        300.0
    );
    assert!(
        gw.terminate(),
        "SIGTERM did not stop cleanly:\n{}",
        gw.log_text()
    );
    assert!(gw.log_text().contains("gateway stopped"));
    let out = Command::new(BIN)
        .args(["spool", "export", "--dir"])
        .arg(dir.path().join("spool"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 6);
}

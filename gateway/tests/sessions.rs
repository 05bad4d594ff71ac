//! Persistent MQTT sessions survive a gateway kill -9 (`breakwater_gateway::sessions`,
//! vendor/PATCHES.md patch 23), with a real Eclipse Paho client (paho-mqtt, Python; installed
//! by `scripts/setup`) against the real gateway binary:
//!
//! * a client with `clean_session = False` gets `session present = 1` after the restart and
//!   receives a publish on its old subscription without subscribing again; with
//!   `persist_sessions = false` it gets `session present = 0` (what every client got before);
//! * a strict client, one that drops its unacknowledged QoS 1 publishes when a reconnect's
//!   CONNACK says `session present = 0`, loses nothing across the kill -9: every reading it
//!   published is in Kafka;
//! * a corrupt session file is counted and moved aside, and the gateway starts and serves.
//!
//! Skipped without python3 + paho-mqtt, failed without them under `CI=true`.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use breakwater_protocol::{envelope, Topic, Value};
use common::*;

const SESSION_CLIENT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/paho_session_client.py"
);
const JSON_DEVICE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/paho_json_device.py"
);

fn paho_available() -> bool {
    python_has("paho.mqtt.client", None, "paho-mqtt")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The client publishes one agent batch (seq `seq`) on its telemetry topic; the gateway's ack
/// comes back on `bw/v1/{device}/ack`, the subscription the client made before the restart.
fn publish_batch(py: &mut PyProc, device: &str, seq: u64) {
    let batch = make_batch(device, 7, seq, 1);
    let topic = Topic::telemetry(&batch.device);
    py.send(&format!(
        "PUB {} {}",
        topic,
        hex(&envelope::encode_batch(&batch))
    ));
}

fn session_present(line: &str) -> bool {
    line.ends_with("sp=1")
}

#[test]
fn a_paho_session_survives_kill9_with_its_subscription() {
    if !paho_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut gw = GatewayProc::start(dir.path(), "");
    let device = "press-7";
    let ack_filter = format!("bw/v1/{device}/ack");
    let port = gw.mqtt_port.to_string();
    let mut py = PyProc::start(
        SESSION_CLIENT,
        &[
            "--port",
            &port,
            "--client-id",
            device,
            "--subscribe",
            &ack_filter,
        ],
        &[],
    );
    let first = py.expect(Duration::from_secs(20), |l| l.starts_with("CONNECTED"));
    assert!(!session_present(&first), "{first}");
    let granted = py.expect(Duration::from_secs(20), |l| l.starts_with("SUBSCRIBED"));
    assert_eq!(granted, "SUBSCRIBED 1");
    publish_batch(&mut py, device, 1);
    py.expect(Duration::from_secs(20), |l| {
        l.starts_with(&format!("MSG {ack_filter}"))
    });
    // The session file is written within ~50 ms of the change; a write takes milliseconds.
    let file = gw.dir.join("spool").join("mqtt-sessions.jsonl");
    assert!(
        wait_until(Duration::from_secs(5), || std::fs::read_to_string(&file)
            .is_ok_and(|t| t.contains(&ack_filter))),
        "no session file with the subscription"
    );

    gw.kill9();
    py.expect(Duration::from_secs(20), |l| l.starts_with("DISCONNECTED"));
    gw.spawn();
    let again = py.expect(Duration::from_secs(30), |l| l.starts_with("CONNECTED"));
    assert!(session_present(&again), "{again}\n{}", gw.log_text());
    // No SUBSCRIBE this time: the ack arrives on the restored subscription.
    publish_batch(&mut py, device, 2);
    py.expect(Duration::from_secs(20), |l| {
        l.starts_with(&format!("MSG {ack_filter}"))
    });
    assert!(
        !py.seen
            .iter()
            .skip_while(|l| *l != &again)
            .any(|l| l.starts_with("SUBSCRIBED")),
        "{:?}",
        py.seen
    );
    assert_eq!(
        gw.metric("breakwater_gateway_sessions_load_errors_total", ""),
        0.0
    );

    // The same without persistence: what every client got before, session present = 0.
    let mut config = std::fs::read_to_string(&gw.config).unwrap();
    config = config.replacen("[mqtt]\n", "[mqtt]\npersist_sessions = false\n", 1);
    std::fs::write(&gw.config, config).unwrap();
    gw.kill9();
    py.expect(Duration::from_secs(20), |l| l.starts_with("DISCONNECTED"));
    gw.spawn();
    let lost = py.expect(Duration::from_secs(30), |l| l.starts_with("CONNECTED"));
    assert!(!session_present(&lost), "{lost}");
    py.send("QUIT");
}

/// Integer reading values of `device` in `records`.
fn values(records: &[breakwater_testkit::kafka::Record], device: &str) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    for r in records {
        let b = r.batch();
        if b.device.as_str() != device {
            continue;
        }
        for reading in &b.readings {
            let Value::I64(v) = reading.value else {
                panic!("unexpected value {:?}", reading.value)
            };
            out.insert(v as u64);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strict_client_loses_nothing_across_kill9() {
    let bootstrap = breakwater_testkit::require_kafka!();
    if !paho_available() {
        return;
    }
    let topic = breakwater_testkit::kafka::unique_topic("gw-sessions");
    let events = breakwater_testkit::kafka::unique_topic("gw-sessions-ev");
    let dir = tempfile::tempdir().unwrap();
    let mut gw = GatewayProc::start(
        dir.path(),
        &format!(
            "[kafka]\nbrokers = \"{bootstrap}\"\ntopic = \"{topic}\"\nevents_topic = \"{events}\"\npartitions = 1\n\
             [[json_devices]]\ntopic = \"plant/{{device}}/telemetry\"\nformat = \"reading\"\n"
        ),
    );
    let total: u64 = 3_000;
    let port = gw.mqtt_port.to_string();
    let count = total.to_string();
    let mut paho = PyProc::start(
        JSON_DEVICE,
        &[
            "--port",
            &port,
            "--client-id",
            "press-1",
            "--topic",
            "plant/press-1/telemetry",
            "--count",
            &count,
            "--persistent",
            "--strict",
            "--pace-ms",
            "1",
            "--timeout",
            "150",
        ],
        &[],
    );
    let mut acked = 0;
    paho.read_until(Duration::from_secs(60), |l| {
        acked += usize::from(l.starts_with("ACK "));
        acked >= 600
    });
    assert!(
        acked >= 600,
        "no progress: {:?}\n{}",
        paho.seen,
        gw.log_text()
    );
    gw.kill9();
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.spawn();
    paho.read_until(Duration::from_secs(160), |l| l.starts_with("DONE"));
    let lines = paho.seen.clone();
    let reconnects: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("CONNECTED"))
        .skip(1)
        .collect();
    assert!(!reconnects.is_empty(), "never reconnected: {lines:?}");
    assert!(
        reconnects.iter().all(|l| session_present(l)),
        "a reconnect without its session: {reconnects:?}"
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("DISCARDED")),
        "{lines:?}"
    );
    let done = lines.iter().find(|l| l.starts_with("DONE")).unwrap();
    assert_eq!(
        done,
        &format!("DONE acked={total} published={total}"),
        "{lines:?}"
    );

    // Kafka: every published reading.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut expected = 1;
    let have = loop {
        let recs = read_topic(&bootstrap, &topic, 1, expected).await;
        let have = values(&recs, "press-1");
        if have.len() as u64 >= total || Instant::now() > deadline {
            break have;
        }
        expected = recs.len() + 1;
    };
    let missing: Vec<u64> = (1..=total).filter(|v| !have.contains(v)).collect();
    assert!(missing.is_empty(), "published, not in Kafka: {missing:?}");
}

#[test]
fn a_corrupt_session_file_does_not_stop_the_gateway() {
    if !paho_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    std::fs::write(
        spool.join("mqtt-sessions.jsonl"),
        b"\xff\xfe not a session file\n",
    )
    .unwrap();
    let gw = GatewayProc::start(dir.path(), "");
    assert_eq!(
        gw.metric(
            "breakwater_gateway_sessions_load_errors_total",
            "reason=\"bad_header\""
        ),
        1.0
    );
    assert!(spool.join("mqtt-sessions.jsonl.corrupt").exists());
    // Clients are served, and their sessions are stored afresh.
    let port = gw.mqtt_port.to_string();
    let mut py = PyProc::start(
        SESSION_CLIENT,
        &[
            "--port",
            &port,
            "--client-id",
            "press-9",
            "--subscribe",
            "bw/v1/press-9/ack",
        ],
        &[],
    );
    let line = py.expect(Duration::from_secs(20), |l| l.starts_with("CONNECTED"));
    assert!(!session_present(&line), "{line}");
    py.expect(Duration::from_secs(20), |l| l == "SUBSCRIBED 1");
    let file = spool.join("mqtt-sessions.jsonl");
    assert!(
        wait_until(Duration::from_secs(5), || std::fs::read_to_string(&file)
            .is_ok_and(
                |t| t.starts_with("{\"format\":1}") && t.contains("press-9")
            )),
        "{}",
        gw.log_text()
    );
    py.send("QUIT");
}

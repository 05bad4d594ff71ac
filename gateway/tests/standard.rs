//! Standard MQTT clients (issue 13): a real Eclipse Paho client (paho-mqtt, Python; installed by
//! `scripts/setup`) as a plain JSON device against the real gateway binary.
//!
//! * kill -9 of the gateway while Paho streams QoS 1 with a persistent session, restart on the
//!   same spool and port: every reading Paho got a PUBACK for is in Kafka, and after Paho's
//!   resends every reading it published is (duplicates allowed, see `breakwater_protocol::kafka`).
//! * a client publishing on another device's JSON topic is refused (counted) and the victim
//!   loses nothing; a malformed payload is counted and the device's next readings still land.
//!
//! Skipped without python3 + paho-mqtt, failed without them under `CI=true`.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use breakwater_protocol::Value;
use common::*;

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/paho_json_device.py"
);

const JSON_DEVICES: &str =
    "[[json_devices]]\ntopic = \"plant/{device}/telemetry\"\nformat = \"reading\"\n";

/// Whether Paho can run here; panics under `CI=true` if not.
fn paho_available() -> bool {
    python_has("paho.mqtt.client", None, "paho-mqtt")
}

/// A running Paho device (`tests/fixtures/paho_json_device.py`) and its output lines.
struct Paho(PyProc);

impl Paho {
    fn start(port: u16, client_id: &str, topic: &str, args: &[&str]) -> Self {
        let port = port.to_string();
        let mut all = vec!["--port", &port, "--client-id", client_id, "--topic", topic];
        all.extend_from_slice(args);
        Self(PyProc::start(SCRIPT, &all, &[]))
    }

    /// Reads lines until `stop` says so or `timeout`; returns the lines this call read.
    fn read_until(&mut self, timeout: Duration, stop: impl FnMut(&str) -> bool) -> Vec<String> {
        self.0.read_until(timeout, stop).to_vec()
    }

    /// Everything until its `DONE` line (bounded): (acked values, published, lines).
    fn finish(mut self, timeout: Duration) -> (BTreeSet<u64>, u64, Vec<String>) {
        let lines = self.read_until(timeout, |l| l.starts_with("DONE"));
        self.0.kill();
        let acked = acks(&lines);
        let published = lines
            .iter()
            .find_map(|l| l.strip_prefix("DONE "))
            .and_then(|d| d.split("published=").nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no DONE line: {lines:?}"));
        (acked, published, lines)
    }
}

fn acks(lines: &[String]) -> BTreeSet<u64> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("ACK ")?.parse().ok())
        .collect()
}

/// Integer reading values per device in `records`, with how many records carried DUP.
fn values_by_device(
    records: &[breakwater_testkit::kafka::Record],
) -> (BTreeMap<String, Vec<u64>>, usize) {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut dups = 0;
    for r in records {
        let b = r.batch();
        assert_eq!(r.header("bw-source"), Some("json"), "{:?}", r.headers);
        assert_eq!(r.header("bw-mqtt-client"), Some(b.device.as_str()));
        assert!(r
            .header("bw-mqtt-pkid")
            .is_some_and(|p| p.parse::<u16>().is_ok()));
        if r.header("bw-mqtt-dup") == Some("1") {
            dups += 1;
        }
        for reading in &b.readings {
            let Value::I64(v) = reading.value else {
                panic!("unexpected value {:?}", reading.value)
            };
            assert_eq!(reading.ts, 1_700_000_000_000 + v as u64);
            out.entry(b.device.as_str().to_owned())
                .or_default()
                .push(v as u64);
        }
    }
    (out, dups)
}

async fn kill9_while_paho_streams(mode: &str) {
    let bootstrap = breakwater_testkit::require_kafka!();
    if !paho_available() {
        return;
    }
    let topic = breakwater_testkit::kafka::unique_topic("gw-standard");
    let events = breakwater_testkit::kafka::unique_topic("gw-standard-ev");
    let dir = tempfile::tempdir().unwrap();
    let mut gw = GatewayProc::start_with(
        dir.path(),
        &format!("ack_mode = \"{mode}\""),
        &format!(
            "[kafka]\nbrokers = \"{bootstrap}\"\ntopic = \"{topic}\"\nevents_topic = \"{events}\"\npartitions = 1\n{JSON_DEVICES}"
        ),
    );
    let total: u64 = 3_000;
    let mut paho = Paho::start(
        gw.mqtt_port,
        "press-1",
        "plant/press-1/telemetry",
        &[
            "--count",
            &total.to_string(),
            "--persistent",
            "--pace-ms",
            "1",
            "--timeout",
            "150",
        ],
    );
    // Let it stream, then crash mid-stream.
    let mut seen = 0;
    let before = paho.read_until(Duration::from_secs(60), |l| {
        seen += usize::from(l.starts_with("ACK "));
        seen >= 600
    });
    assert!(
        seen >= 600,
        "no progress before the crash: {before:?}\n{}",
        gw.log_text()
    );
    gw.kill9();
    let acked_before_kill = acks(&before);
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.spawn();
    let (acked_after, published, lines) = paho.finish(Duration::from_secs(160));
    assert!(
        lines.iter().filter(|l| l.starts_with("CONNECTED")).count() >= 1,
        "Paho never reconnected: {lines:?}"
    );
    let acked: BTreeSet<u64> = acked_before_kill.union(&acked_after).copied().collect();
    assert_eq!(published, total, "{lines:?}");
    assert_eq!(
        acked.len() as u64,
        total,
        "not every publish got its PUBACK"
    );

    // Kafka: every PUBACKed reading (and so every published one) is there.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut expected = 1;
    let (by, dups, recs) = loop {
        let recs = read_topic(&bootstrap, &topic, 1, expected).await;
        let (by, dups) = values_by_device(&recs);
        let have: BTreeSet<u64> = by.get("press-1").into_iter().flatten().copied().collect();
        if have.len() as u64 >= total || Instant::now() > deadline {
            break (by, dups, recs);
        }
        expected = recs.len() + 1;
    };
    let have: BTreeSet<u64> = by.get("press-1").into_iter().flatten().copied().collect();
    let lost_acked: Vec<u64> = acked_before_kill.difference(&have).copied().collect();
    assert!(
        lost_acked.is_empty(),
        "PUBACKed before the kill, not in Kafka: {lost_acked:?}"
    );
    let missing: Vec<u64> = (1..=total).filter(|v| !have.contains(v)).collect();
    assert!(missing.is_empty(), "published, not in Kafka: {missing:?}");
    let n = by.get("press-1").map_or(0, Vec::len);

    // The processor's core reads these records as they are (the same decode as its run loop):
    // every reading taken or dropped as a duplicate (a replayed spool record), none seen as a
    // gap.
    let params = breakwater_processor::state::Params::default();
    let mut part = breakwater_processor::state::Partition::new(0);
    let mut stats = breakwater_processor::state::Stats::default();
    let mut out = Vec::new();
    for r in &recs {
        part.on_batch_at(&r.batch(), None, &params, &mut stats, &mut out);
    }
    assert_eq!(stats.batches, recs.len() as u64, "{stats:?}");
    assert_eq!(
        stats.readings + stats.duplicate_readings,
        n as u64,
        "{stats:?}"
    );
    assert_eq!(stats.gap_readings, 0, "{stats:?}");
    eprintln!(
        "ack mode {mode}: {} PUBACKed before the kill, {total} readings, {} in Kafka ({} duplicates from resends, {dups} records with DUP)",
        acked_before_kill.len(),
        n,
        n as u64 - total
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_persistent_session_loses_nothing_across_kill9_ack_mode_spool() {
    kill9_while_paho_streams("spool").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_persistent_session_loses_nothing_across_kill9_ack_mode_kafka() {
    kill9_while_paho_streams("kafka").await;
}

#[test]
fn another_device_s_topic_is_refused_and_bad_payloads_are_counted() {
    if !paho_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let gw = GatewayProc::start(dir.path(), JSON_DEVICES);
    let run = |client: &str, topic: &str, args: &[&str]| {
        Paho::start(gw.mqtt_port, client, topic, args).finish(Duration::from_secs(40))
    };

    // The victim streams, with one malformed payload in the middle: it is acked (a resend would
    // not help), counted, and the readings after it land.
    let (acked, published, lines) = run(
        "press-2",
        "plant/press-2/telemetry",
        &["--count", "20", "--bad-at", "5", "--timeout", "30"],
    );
    assert_eq!((acked.len(), published), (20, 20), "{lines:?}");
    assert_eq!(
        gw.metric(
            "breakwater_gateway_invalid_payloads_total",
            "reason=\"json_syntax\""
        ),
        1.0
    );

    // press-1 publishes as press-2: refused, its connection closed, nothing acked.
    let (acked, _, lines) = run(
        "press-1",
        "plant/press-2/telemetry",
        &["--count", "3", "--once", "--timeout", "10"],
    );
    assert!(acked.is_empty(), "{lines:?}");
    assert!(
        lines.iter().any(|l| l.starts_with("DISCONNECTED")),
        "{lines:?}"
    );
    assert!(
        gw.metric(
            "breakwater_gateway_authz_denied_total",
            "action=\"publish\",reason=\"foreign_topic\""
        ) >= 1.0
    );

    // The victim goes on as before.
    let (acked, published, lines) = run(
        "press-2",
        "plant/press-2/telemetry",
        &["--count", "10", "--metric", "after", "--timeout", "30"],
    );
    assert_eq!((acked.len(), published), (10, 10), "{lines:?}");
    // 19 + 10 readings of press-2, none of press-1's.
    assert_eq!(
        gw.metric("breakwater_gateway_accepted_readings_total", ""),
        29.0
    );
    assert_eq!(
        gw.metric("breakwater_gateway_standard_pubacks_total", ""),
        29.0
    );
}

#[test]
fn check_config_names_every_bad_json_devices_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        "[standard]\npuback_timeout_ms = 10\nmax_parked_publishes = 0\n\n[[json_devices]]\ntopic = \"plant/+/x\"\n\n[[json_devices]]\ntopic = \"bw/{device}/telemetry\"\n\n[[json_devices]]\ntopic = \"ok/{device}\"\nformat = \"object\"\ntimestamp_field = \"\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    for key in [
        "standard.puback_timeout_ms",
        "standard.max_parked_publishes",
        "json_devices[0].topic",
        "json_devices[1].topic",
        "json_devices[2].timestamp_field",
    ] {
        assert!(text.contains(key), "{key} not reported:\n{text}");
    }
    // An unknown key in an entry is refused with its name.
    std::fs::write(
        &config,
        "[[json_devices]]\ntopic = \"a/{device}\"\nformt = \"object\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("formt"));
}

/// Kafka stops answering in ack mode `kafka`: PUBACKs stall (nothing is durable), rumqttd closes
/// the client once none was released for `[standard] puback_timeout_ms`
/// (`rumqttd_connections_closed_total{reason="puback_timeout"}`, patch 22), Paho reconnects and
/// resends; once Kafka is back every reading it published is there and every one is PUBACKed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_pubacks_close_the_client_and_nothing_is_lost_when_kafka_returns() {
    // Needs the tansu binary; skip like require_kafka! does when the harness is absent.
    if breakwater_testkit::kafka::bootstrap().is_none() || !paho_available() {
        return;
    }
    let kafka = PrivateKafka::start().expect("tansu binary on PATH (scripts/test installs it)");
    let dir = tempfile::tempdir().unwrap();
    let gw = GatewayProc::start_with(
        dir.path(),
        "ack_mode = \"kafka\"",
        &format!(
            "[kafka]\nbrokers = \"{}\"\ntopic = \"telemetry\"\nevents_topic = \"events\"\npartitions = 1\n[standard]\nmax_unacked_per_connection = 5\npuback_timeout_ms = 1500\n{JSON_DEVICES}",
            kafka.bootstrap()
        ),
    );
    let total: u64 = 400;
    let mut paho = Paho::start(
        gw.mqtt_port,
        "press-3",
        "plant/press-3/telemetry",
        &[
            "--count",
            &total.to_string(),
            "--persistent",
            "--pace-ms",
            "5",
            "--timeout",
            "150",
        ],
    );
    let mut seen = 0;
    let before = paho.read_until(Duration::from_secs(60), |l| {
        seen += usize::from(l.starts_with("ACK "));
        seen >= 100
    });
    assert!(seen >= 100, "no progress: {:?}", before.last());
    kafka.pause();
    let closed = |gw: &GatewayProc| {
        gw.metric(
            "rumqttd_connections_closed_total",
            "reason=\"puback_timeout\"",
        )
    };
    let timed_out = wait_until(Duration::from_secs(60), || closed(&gw) >= 1.0);
    kafka.resume();
    assert!(
        timed_out,
        "no puback_timeout while Kafka was paused:\n{}",
        gw.metrics()
    );
    let (acked_after, published, lines) = paho.finish(Duration::from_secs(150));
    let acked: BTreeSet<u64> = acks(&before).union(&acked_after).copied().collect();
    assert_eq!(published, total, "{lines:?}");
    assert_eq!(
        acked.len() as u64,
        total,
        "not every publish got its PUBACK: {lines:?}"
    );
    assert!(
        lines.iter().filter(|l| l.starts_with("CONNECTED")).count() >= 1,
        "Paho did not reconnect: {lines:?}"
    );

    let deadline = Instant::now() + Duration::from_secs(90);
    let mut expected = 1;
    let bootstrap = kafka.bootstrap();
    let have = loop {
        let recs = read_topic(&bootstrap, "telemetry", 1, expected).await;
        let (by, _) = values_by_device(&recs);
        let have: BTreeSet<u64> = by.get("press-3").into_iter().flatten().copied().collect();
        if have.len() as u64 >= total || Instant::now() > deadline {
            break have;
        }
        expected = recs.len() + 1;
    };
    let missing: Vec<u64> = (1..=total).filter(|v| !have.contains(v)).collect();
    assert!(missing.is_empty(), "published, not in Kafka: {missing:?}");
}

/// A writer queue of one batch and four Paho clients streaming at once: the queue is full most
/// of the time. Their publishes are parked and their PUBACKs delayed, never refused
/// (`standard_refused_total{reason="queue_full"}` stays 0; the old refusal closed the client
/// hundreds of thousands of times here and it made almost no progress), no client is
/// disconnected, and every reading is in Kafka exactly once and PUBACKed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_writer_queue_delays_pubacks_and_refuses_nothing() {
    let bootstrap = breakwater_testkit::require_kafka!();
    if !paho_available() {
        return;
    }
    let topic = breakwater_testkit::kafka::unique_topic("gw-standard-full");
    let events = breakwater_testkit::kafka::unique_topic("gw-standard-full-ev");
    let dir = tempfile::tempdir().unwrap();
    let gw = GatewayProc::start_with(
        dir.path(),
        "ack_mode = \"kafka\"",
        &format!(
            "[kafka]\nbrokers = \"{bootstrap}\"\ntopic = \"{topic}\"\nevents_topic = \"{events}\"\npartitions = 1\n[pipeline]\nqueue_capacity = 1\n{JSON_DEVICES}"
        ),
    );
    let total: u64 = 1_000;
    let clients: Vec<(String, Paho)> = (1..=4)
        .map(|i| {
            let id = format!("press-{i}");
            let paho = Paho::start(
                gw.mqtt_port,
                &id,
                &format!("plant/{id}/telemetry"),
                &[
                    "--count",
                    &total.to_string(),
                    "--persistent",
                    "--timeout",
                    "120",
                ],
            );
            (id, paho)
        })
        .collect();
    let mut acked_by = BTreeMap::new();
    for (id, paho) in clients {
        let (acked, published, lines) = paho.finish(Duration::from_secs(130));
        assert_eq!(published, total, "{id}: {lines:?}");
        assert_eq!(
            acked.len() as u64,
            total,
            "{id}: not every publish PUBACKed"
        );
        // One connection to the end (the script's own DISCONNECT comes after its last ACK).
        let events: Vec<&String> = lines.iter().filter(|l| !l.starts_with("ACK ")).collect();
        assert_eq!(
            lines.iter().filter(|l| l.starts_with("CONNECTED")).count(),
            1,
            "{id} was disconnected: {events:?}"
        );
        acked_by.insert(id, acked);
    }
    let refused = gw.metric(
        "breakwater_gateway_standard_refused_total",
        "reason=\"queue_full\"",
    );
    let parked = gw.metric("breakwater_gateway_standard_parked_total", "");
    assert_eq!(refused, 0.0, "refused under load:\n{}", gw.metrics());
    assert!(
        parked > 0.0,
        "the writer queue never filled:\n{}",
        gw.metrics()
    );

    let want = 4 * total as usize;
    let recs = read_topic(&bootstrap, &topic, 1, want).await;
    let (by, _) = values_by_device(&recs);
    for (id, acked) in &acked_by {
        let mut got = by.get(id).cloned().unwrap_or_default();
        got.sort_unstable();
        let expected: Vec<u64> = (1..=total).collect();
        assert_eq!(got, expected, "{id}: not exactly once in Kafka");
        assert!(acked.iter().all(|v| got.binary_search(v).is_ok()));
    }
    eprintln!("{parked} publishes parked, 0 refused, {want} readings exactly once");
}

/// Patch 22 gives QoS 0 publishes a token too: with Kafka paused in ack mode `kafka` nothing
/// becomes durable, so a client flooding QoS 0 stops being read once
/// `max_unacked_per_connection` of its publishes wait (the gateway takes a few hundred of
/// 20,000, not all of them into memory); once Kafka is back every one is in Kafka, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos0_flood_is_throttled_while_nothing_becomes_durable() {
    if breakwater_testkit::kafka::bootstrap().is_none() || !paho_available() {
        return;
    }
    let kafka = PrivateKafka::start().expect("tansu binary on PATH (scripts/test installs it)");
    let dir = tempfile::tempdir().unwrap();
    let gw = GatewayProc::start_with(
        dir.path(),
        "ack_mode = \"kafka\"",
        &format!(
            "[kafka]\nbrokers = \"{}\"\ntopic = \"telemetry\"\nevents_topic = \"events\"\npartitions = 1\n{JSON_DEVICES}",
            kafka.bootstrap()
        ),
    );
    let taken = |gw: &GatewayProc| {
        gw.metric(
            "breakwater_gateway_standard_publishes_total",
            "source=\"json\"",
        )
    };
    // Kafka answers first (the gateway's producer is up), then stops.
    let warm = Paho::start(
        gw.mqtt_port,
        "press-9",
        "plant/press-9/telemetry",
        &["--count", "10", "--timeout", "60"],
    );
    let (acked, _, _) = warm.finish(Duration::from_secs(60));
    assert_eq!(acked.len(), 10);
    kafka.pause();
    let total: u64 = 20_000;
    let paho = Paho::start(
        gw.mqtt_port,
        "press-4",
        "plant/press-4/telemetry",
        &[
            "--count",
            &total.to_string(),
            "--qos",
            "0",
            "--timeout",
            "120",
        ],
    );
    // Let it flood; the gateway's intake stops at its bound.
    wait_until(Duration::from_secs(20), || taken(&gw) >= 10.0 + 100.0);
    std::thread::sleep(Duration::from_secs(3));
    let while_paused = taken(&gw) - 10.0;
    kafka.resume();
    assert!(
        while_paused < (total / 4) as f64,
        "{while_paused} of {total} QoS 0 publishes taken while nothing became durable"
    );
    let (_, published, lines) = paho.finish(Duration::from_secs(130));
    assert_eq!(published, total, "{:?}", lines.last());

    let recs = read_topic(&kafka.bootstrap(), "telemetry", 1, 10 + total as usize).await;
    let (by, _) = values_by_device(&recs);
    let mut got = by.get("press-4").cloned().unwrap_or_default();
    got.sort_unstable();
    assert_eq!(got, (1..=total).collect::<Vec<u64>>(), "not exactly once");
    eprintln!("{while_paused} of {total} QoS 0 publishes taken while Kafka was paused");
}

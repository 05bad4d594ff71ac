//! The Sparkplug B host application against a real edge node: PyPI `pysparkplug` 0.6.1
//! (installed by scripts/setup into `~/.cache/breakwater/pysparkplug`, or the directory in
//! `BREAKWATER_PYSPARKPLUG`), driven by `fixtures/sparkplug_edge_node.py`, with Kafka (tansu).
//!
//! Asserts: the host STATE is retained `online`; NBIRTH + DBIRTH + DDATA/NDATA by alias only come out of Kafka under the mapped
//! device ids with the BIRTH's names and the right values and timestamps, in the agent's record
//! format; the unsupported Bytes metric is counted; a forced seq gap gets an NCMD
//! `Node Control/Rebirth` the edge node sees; the NDEATH will (bdSeq 0, the NBIRTH's) becomes a
//! `death` fleet event after the BIRTH events; a client publishing in another edge node's
//! namespace is refused, counted, and nothing of it reaches Kafka; the processor's core takes
//! the records unchanged.
//!
//! After a gateway kill -9 (`fixtures/sparkplug_persistent_node.py`: Paho with a persistent
//! session, pysparkplug payloads): the DDATA the node resends before its new NBIRTH come out of
//! Kafka with the BIRTH's names (from the session store), and every DDATA it published (so
//! every one it got a PUBACK for) is there. A corrupt session store does not stop the gateway.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use breakwater_gateway::sparkplug::proto::{self, datatype, Metric, MetricValue, Payload};
use breakwater_protocol::kafka::{FleetEvent, FleetEventKind};
use breakwater_protocol::{Reading, Value};
use common::*;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// Where pysparkplug is installed (a `pip install --target` directory), or `None` (then the
/// test is skipped, except under CI where it fails).
fn pysparkplug() -> Option<PathBuf> {
    let dir = std::env::var_os("BREAKWATER_PYSPARKPLUG").map_or_else(
        || {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/breakwater/pysparkplug")
        },
        PathBuf::from,
    );
    let what = format!("pysparkplug in {}", dir.display());
    python_has("pysparkplug", Some(&dir), &what).then_some(dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pysparkplug_edge_node_end_to_end() {
    let bootstrap = breakwater_testkit::require_kafka!();
    let Some(pypath) = pysparkplug() else { return };
    let topic = breakwater_testkit::kafka::unique_topic("gw-sp-t");
    let events = breakwater_testkit::kafka::unique_topic("gw-sp-ev");
    let dir = tempfile::tempdir().unwrap();
    let gw = GatewayProc::start(
        dir.path(),
        &format!(
            "[kafka]\nbrokers = \"{bootstrap}\"\ntopic = \"{topic}\"\nevents_topic = \"{events}\"\npartitions = 1\n[sparkplug]\nenabled = true\nhost_id = \"bw-test\"\ngroups = [\"G\"]\n"
        ),
    );

    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/sparkplug_edge_node.py"
    );
    let mut edge = Command::new("python3")
        .arg(script)
        .args([gw.mqtt_port.to_string().as_str(), "G", "e1"])
        .env("PYTHONPATH", &pypath)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(edge.stdout.take().unwrap()).lines();
    let mut said = Vec::new();
    // Bounded: the script gives up on its own waits after 20 s each and prints a line.
    for line in lines.by_ref() {
        let line = line.unwrap();
        let done = line == "DONE" || line == "NOT_CONNECTED";
        said.push(line);
        if done {
            break;
        }
    }
    assert_eq!(
        said,
        ["DATA_SENT", "REBIRTH", "DONE"],
        "edge node said {said:?}"
    );

    // The status page knows the edge node and its device.
    let connected = |id: &str| -> Option<bool> {
        let (code, body) = http_get(gw.metrics_port, &format!("/api/v1/devices/{id}"))?;
        assert_eq!(code, 200, "{id}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["connected"].as_bool()
    };
    assert!(wait_until(Duration::from_secs(10), || connected(
        "spb.G.e1"
    ) == Some(true)));
    assert_eq!(connected("spb.G.e1.press_2e1"), Some(true));

    // An intruder: client id e9 publishing as edge node e1.
    let mut o = MqttOptions::new("e9", "127.0.0.1", gw.mqtt_port);
    o.set_keep_alive(Duration::from_secs(30));
    let (c, mut el) = AsyncClient::new(o, 10);
    let forged = proto::encode(&Payload {
        timestamp: Some(1),
        seq: Some(4),
        metrics: vec![Metric {
            name: Some("temp".into()),
            alias: None,
            timestamp: Some(1),
            datatype: Some(datatype::DOUBLE),
            is_null: None,
            value: Some(MetricValue::DoubleValue(666.0)),
        }],
    });
    c.publish("spBv1.0/G/NDATA/e1", QoS::AtLeastOnce, false, forged)
        .await
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => return false,
                Ok(_) => {}
                Err(_) => return true,
            }
        }
    })
    .await
    .unwrap_or(false);
    assert!(
        closed,
        "a publish in another edge node's namespace was not refused"
    );
    drop(c);

    // The host STATE, retained: a client subscribing now still gets it.
    let mut o = MqttOptions::new("e5", "127.0.0.1", gw.mqtt_port);
    o.set_keep_alive(Duration::from_secs(30));
    let (c, mut el) = AsyncClient::new(o, 10);
    c.subscribe("spBv1.0/STATE/bw-test", QoS::AtLeastOnce)
        .await
        .unwrap();
    let state = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(Event::Incoming(Packet::Publish(p))) = el.poll().await {
                return p;
            }
        }
    })
    .await
    .expect("no retained STATE");
    assert!(state.retain, "STATE is not retained");
    let v: serde_json::Value = serde_json::from_slice(&state.payload).unwrap();
    assert_eq!(v["online"], serde_json::json!(true));
    assert!(v["timestamp"].as_u64().is_some_and(|t| t > 0));
    drop(c);

    // The edge node dies: the broker publishes its will (NDEATH, bdSeq 0).
    edge.kill().unwrap();
    edge.wait().unwrap();

    let (b, t, e) = (bootstrap.clone(), topic.clone(), events.clone());
    let (records, event_records) = tokio::task::spawn_blocking(move || {
        (
            breakwater_testkit::kafka::read_all(&b, &t, 1, 5, Duration::from_secs(60)),
            breakwater_testkit::kafka::read_all(&b, &e, 1, 3, Duration::from_secs(60)),
        )
    })
    .await
    .unwrap();

    // Telemetry: every record in the agent's format, keyed by the mapped device id.
    let mut node = Vec::new();
    let mut device = Vec::new();
    for r in &records {
        let batch = r.batch();
        assert_eq!(r.key.as_deref(), Some(batch.device.as_str().as_bytes()));
        assert_eq!(r.header("bw-source"), Some("sparkplug"));
        assert_eq!(r.header("bw-mqtt-client"), Some("e1"));
        match batch.device.as_str() {
            "spb.G.e1" => node.extend(batch.readings),
            "spb.G.e1.press_2e1" => device.extend(batch.readings),
            other => panic!("unexpected device {other}"),
        }
    }
    let values = |rs: &[Reading]| -> Vec<(String, Value)> {
        rs.iter()
            .map(|r| (r.metric.to_string(), r.value.clone()))
            .collect()
    };
    assert_eq!(
        values(&node),
        [
            ("bdSeq".to_owned(), Value::I64(0)),
            ("temp".to_owned(), Value::F64(21.5)),
            ("count".to_owned(), Value::I64(-7)),
            // by alias 1, then the gap message (taken: its data is valid)
            ("temp".to_owned(), Value::F64(22.25)),
            ("temp".to_owned(), Value::F64(23.0)),
        ],
        "node readings (the intruder's 666 must not be among them)"
    );
    assert_eq!(
        values(&device),
        [
            ("Inputs/A".to_owned(), Value::Bool(false)),
            ("Inputs/B".to_owned(), Value::I64(1000)),
            ("Inputs/A".to_owned(), Value::Bool(true)),
            ("Inputs/B".to_owned(), Value::I64(1001)),
        ]
    );
    // The metrics' own timestamps: DDATA one ms after the BIRTHs.
    assert_eq!(device[2].ts, device[0].ts + 1);
    assert_eq!(node[3].ts, node[1].ts + 2);

    // Fleet events: births, then the will's death with the NBIRTH's bdSeq.
    let evs: Vec<(String, FleetEventKind, u64)> = event_records
        .iter()
        .map(|r| FleetEvent::decode(r.value.as_deref().unwrap()).unwrap())
        .map(|e| (e.device.as_str().to_owned(), e.kind, e.epoch))
        .filter(|(d, _, _)| d.starts_with("spb."))
        .collect();
    assert_eq!(
        evs,
        [
            ("spb.G.e1".to_owned(), FleetEventKind::Birth, 0),
            ("spb.G.e1.press_2e1".to_owned(), FleetEventKind::Birth, 0),
            ("spb.G.e1.press_2e1".to_owned(), FleetEventKind::Death, 0),
            ("spb.G.e1".to_owned(), FleetEventKind::Death, 0),
        ]
    );

    // The processor's core reads these records as they are (the same decode as its run loop):
    // every batch taken, nothing duplicated or missing, and the events too.
    let params = breakwater_processor::state::Params::default();
    let mut part = breakwater_processor::state::Partition::new(0);
    let mut stats = breakwater_processor::state::Stats::default();
    let mut out = Vec::new();
    for r in &records {
        part.on_batch_at(&r.batch(), None, &params, &mut stats, &mut out);
    }
    for r in &event_records {
        let ev = FleetEvent::decode(r.value.as_deref().unwrap()).unwrap();
        part.on_event(&ev, &params, &mut stats, &mut out);
    }
    assert_eq!(stats.batches, records.len() as u64);
    assert_eq!(stats.readings, (node.len() + device.len()) as u64);
    assert_eq!(
        (
            stats.duplicate_batches,
            stats.duplicate_readings,
            stats.gap_readings
        ),
        (0, 0, 0)
    );
    assert_eq!(stats.events, event_records.len() as u64);

    // The status page saw the death.
    assert!(wait_until(Duration::from_secs(10), || connected(
        "spb.G.e1"
    ) == Some(false)));
    assert_eq!(connected("spb.G.e1.press_2e1"), Some(false));

    // Counted.
    let page = gw.metrics();
    let get = |name: &str, label: &str| parse_metric(&page, name, label);
    assert_eq!(
        get(
            "breakwater_gateway_sparkplug_rebirths_total",
            "reason=\"seq_gap\""
        ),
        1.0
    );
    assert_eq!(
        get(
            "breakwater_gateway_sparkplug_unsupported_metrics_total",
            "type=\"bytes\""
        ),
        1.0
    );
    assert!(
        get(
            "breakwater_gateway_authz_denied_total",
            "reason=\"foreign_topic\""
        ) >= 1.0
    );
    assert_eq!(
        get("breakwater_gateway_sparkplug_edge_nodes_online", ""),
        0.0
    );
}

/// `check-config` reports every `[sparkplug]` problem with its key, and an unknown key by name.
#[test]
fn check_config_validates_the_sparkplug_section() {
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
    let (ok, err) = check(
        "[sparkplug]\nenabled = true\nhost_id = \"a/b\"\ngroups = [\"A\", \"A\", \"STATE\"]\nrebirth_interval = \"0s\"\nmax_edge_nodes = 0\n[[sparkplug.edge_nodes]]\nidentity = \"\"\ngroup = \"B\"\nedge_node = \"x+\"\n",
    );
    assert!(!ok);
    for key in [
        "sparkplug.host_id",
        "sparkplug.groups[1]",
        "sparkplug.groups[2]",
        "sparkplug.rebirth_interval",
        "sparkplug.max_edge_nodes",
        "sparkplug.edge_nodes[0].identity",
        "sparkplug.edge_nodes[0].group",
        "sparkplug.edge_nodes[0].edge_node",
    ] {
        assert!(err.contains(key), "{key} not reported:\n{err}");
    }
    let (ok, err) = check("[sparkplug]\nhostid = \"x\"\n");
    assert!(!ok);
    assert!(err.contains("hostid"), "{err}");
    let (ok, err) = check(
        "[sparkplug]\nenabled = true\ngroups = [\"A\", \"B\"]\n[[sparkplug.edge_nodes]]\nidentity = \"a-line1\"\ngroup = \"A\"\nedge_node = \"line1\"\n[[sparkplug.edge_nodes]]\nidentity = \"b-line1\"\ngroup = \"B\"\nedge_node = \"line1\"\n",
    );
    assert!(ok, "{err}");
}

/// A burst of QoS 1 DDATA: nothing is skipped or lost on the way to the host, and every publish
/// gets its PUBACK (the host resolves every token it is handed, rumqttd patch 22) once its
/// readings are in the spool. No Kafka needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ddata_burst_is_not_skipped() {
    const MESSAGES: u64 = 2_000;
    const METRICS: u64 = 50;
    let dir = tempfile::tempdir().unwrap();
    let gw = GatewayProc::start(dir.path(), "[sparkplug]\nenabled = true\n");
    let mut o = MqttOptions::new("burst", "127.0.0.1", gw.mqtt_port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (c, mut el) = AsyncClient::new(o, 100);
    let pubacks = Arc::new(AtomicU64::new(0));
    let driver = {
        let pubacks = pubacks.clone();
        tokio::spawn(async move {
            // Aborted below; ends with the connection.
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        pubacks.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        })
    };
    let metric = |i: u64, named: bool| Metric {
        name: named.then(|| format!("m{i}")),
        alias: Some(i),
        timestamp: None,
        datatype: Some(datatype::DOUBLE),
        is_null: None,
        value: Some(MetricValue::DoubleValue(i as f64)),
    };
    let msg = |seq: u64, named: bool| {
        proto::encode(&Payload {
            timestamp: Some(1_000 + seq),
            seq: Some(seq % 256),
            metrics: (0..METRICS).map(|i| metric(i, named)).collect(),
        })
    };
    let births = [
        ("spBv1.0/G/NBIRTH/burst", msg(0, true)),
        ("spBv1.0/G/DBIRTH/burst/d", msg(1, true)),
    ];
    for (t, p) in births {
        c.publish(t, QoS::AtLeastOnce, false, p).await.unwrap();
    }
    for seq in 2..MESSAGES + 2 {
        c.publish(
            "spBv1.0/G/DDATA/burst/d",
            QoS::AtLeastOnce,
            false,
            msg(seq, false),
        )
        .await
        .unwrap();
    }
    let expected = (MESSAGES + 2) * METRICS;
    let readings = "breakwater_gateway_sparkplug_readings_total";
    wait_until(Duration::from_secs(120), || {
        pubacks.load(Ordering::Relaxed) >= MESSAGES + 2
            || gw.metric("breakwater_gateway_link_cursor_jumps_total", "") > 0.0
    });
    assert_eq!(
        pubacks.load(Ordering::Relaxed),
        MESSAGES + 2,
        "{}",
        gw.metrics()
            .lines()
            .filter(|l| !l.starts_with('#')
                && (l.contains("sparkplug")
                    || l.contains("standard")
                    || l.contains("accepted")
                    || l.contains("dropped")
                    || l.contains("acks")))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let page = gw.metrics();
    assert_eq!(
        parse_metric(&page, "breakwater_gateway_link_cursor_jumps_total", ""),
        0.0
    );
    assert_eq!(parse_metric(&page, readings, ""), expected as f64);
    assert_eq!(
        parse_metric(&page, "breakwater_gateway_sparkplug_rebirths_total", ""),
        0.0,
        "the burst had a seq gap"
    );
    drop(c);
    driver.abort();
}

/// A gateway kill -9 while an edge node with a persistent MQTT session streams DDATA by alias
/// at QoS 1 (Paho with `clean_session=False`, payloads encoded by pysparkplug; see
/// `fixtures/sparkplug_persistent_node.py` for why not pysparkplug's own client). After the
/// restart on the same spool dir the node resends its unacknowledged DDATA before its new
/// NBIRTH: they must be in Kafka with the BIRTH's metric names and datatypes (restored from the
/// session store), and every DDATA the node got a PUBACK for must be there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resent_ddata_after_a_kill9_is_decoded_with_the_restored_aliases() {
    let bootstrap = breakwater_testkit::require_kafka!();
    let Some(pypath) = pysparkplug() else { return };
    let topic = breakwater_testkit::kafka::unique_topic("gw-sp-restart");
    let events = breakwater_testkit::kafka::unique_topic("gw-sp-restart-ev");
    let dir = tempfile::tempdir().unwrap();
    let mut gw = GatewayProc::start(
        dir.path(),
        &format!(
            "[kafka]\nbrokers = \"{bootstrap}\"\ntopic = \"{topic}\"\nevents_topic = \"{events}\"\npartitions = 1\n[sparkplug]\nenabled = true\nhost_id = \"bw-test\"\ngroups = [\"G\"]\n"
        ),
    );
    const COUNT: u64 = 3_000;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/sparkplug_persistent_node.py"
    );
    let mut edge = Command::new("python3")
        .arg(script)
        .args([&gw.mqtt_port.to_string(), "G", "e7", &COUNT.to_string()])
        .env("PYTHONPATH", &pypath)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = edge.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let acked = |lines: &[String]| -> std::collections::BTreeSet<u64> {
        lines
            .iter()
            .filter_map(|l| l.strip_prefix("ACK ")?.parse().ok())
            .collect()
    };
    // Stream, then crash mid-stream.
    let mut before = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while acked(&before).len() < 500 && std::time::Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
            before.push(l);
        }
    }
    assert!(
        acked(&before).len() >= 500,
        "no progress before the kill: {before:?}\n{}",
        gw.log_text()
    );
    gw.kill9();
    let acked_before_kill = acked(&before);
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.spawn();
    let mut after = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(170);
    while !after.iter().any(|l: &String| l.starts_with("DONE")) {
        assert!(
            std::time::Instant::now() < deadline,
            "the edge node did not finish: {after:?}"
        );
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            after.push(l);
        }
    }
    let _ = edge.kill();
    let _ = edge.wait();
    let said: Vec<&str> = after
        .iter()
        .filter(|l| !l.starts_with("ACK "))
        .map(String::as_str)
        .collect();
    assert!(
        said.iter().any(|l| l.starts_with("CONNECTED"))
            && said.contains(&"RESENT_ACKED")
            && said.contains(&"REBORN"),
        "{said:?}"
    );
    assert_eq!(
        said.last().copied(),
        Some(format!("DONE acked={COUNT} published={COUNT}").as_str()),
        "{said:?}"
    );

    // Kafka: every DDATA, named by the BIRTH (Inputs/C is an Int32: -i only if the restored
    // datatype was used), the resent ones (DUP) among them.
    let device = "spb.G.e7.press_2e1";
    let mut expected = 1;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let (values, resent) = loop {
        let records = read_topic(&bootstrap, &topic, 1, expected).await;
        let mut values = std::collections::BTreeSet::new();
        let mut resent = 0;
        for r in &records {
            let b = r.batch();
            if b.device.as_str() != device {
                continue;
            }
            let dup = r.header("bw-mqtt-dup") == Some("1");
            let mut by_name = std::collections::BTreeMap::new();
            for reading in &b.readings {
                assert!(
                    !reading.metric.starts_with("alias:"),
                    "unresolved metric in Kafka: {reading:?}"
                );
                by_name.insert(reading.metric.to_string(), reading.value.clone());
            }
            let (Some(Value::I64(bv)), Some(Value::I64(cv))) =
                (by_name.get("Inputs/B"), by_name.get("Inputs/C"))
            else {
                panic!("unexpected readings {:?}", b.readings);
            };
            if *bv == 0 {
                // A DBIRTH (value 0).
                continue;
            }
            assert_eq!(*cv, -*bv, "{:?}", b.readings);
            assert_eq!(b.readings[0].ts, 1_700_000_000_000 + *bv as u64);
            values.insert(*bv as u64);
            resent += usize::from(dup);
        }
        if values.len() as u64 >= COUNT || std::time::Instant::now() > deadline {
            break (values, resent);
        }
        expected = records.len() + 1;
    };
    let lost: Vec<u64> = acked_before_kill.difference(&values).copied().collect();
    assert!(lost.is_empty(), "PUBACKed, not in Kafka: {lost:?}");
    let missing: Vec<u64> = (1..=COUNT).filter(|v| !values.contains(v)).collect();
    assert!(missing.is_empty(), "published, not in Kafka: {missing:?}");
    assert!(resent >= 1, "no DDATA was resent (DUP) after the restart");

    // The restarted gateway restored the node, and took DATA with the restored table.
    let page = gw.metrics();
    assert_eq!(
        parse_metric(
            &page,
            "breakwater_gateway_sparkplug_restored_edge_nodes",
            ""
        ),
        1.0
    );
    let restored = parse_metric(
        &page,
        "breakwater_gateway_sparkplug_before_birth_total",
        "table=\"restored\"",
    );
    assert!(restored >= 1.0, "no DATA was taken before the new NBIRTH");
    assert_eq!(
        parse_metric(
            &page,
            "breakwater_gateway_sparkplug_unresolved_metrics_total",
            ""
        ),
        0.0
    );
    eprintln!(
        "{} PUBACKed before the kill, {resent} resent DDATA records in Kafka, {restored} DATA taken with the restored table",
        acked_before_kill.len()
    );
}

/// A corrupt session store (here: a frame claiming 4 GiB) does not stop the gateway nor make it
/// allocate: it starts, counts and logs the problem, and rewrites the file with what it kept
/// (nothing).
#[test]
fn a_corrupt_session_store_is_counted_and_started_over() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let store = spool.join(breakwater_gateway::sparkplug::store::FILE_NAME);
    let mut bytes = b"BWSPS001".to_vec();
    bytes.extend(u32::MAX.to_le_bytes());
    bytes.extend([0u8; 64]);
    std::fs::write(&store, &bytes).unwrap();
    let gw = GatewayProc::start(dir.path(), "[sparkplug]\nenabled = true\n");
    assert!(wait_until(Duration::from_secs(10), || gw.metric(
        "breakwater_gateway_sparkplug_store_errors_total",
        "reason=\"bad_length\""
    ) == 1.0));
    assert_eq!(
        gw.metric("breakwater_gateway_sparkplug_restored_edge_nodes", ""),
        0.0
    );
    assert_eq!(std::fs::read(&store).unwrap(), b"BWSPS001");
    assert!(gw.log_text().contains("sparkplug session store"));
}

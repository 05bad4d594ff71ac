//! The operator surface of a running gateway binary: the JSON API under `/api/v1/`, the status
//! page's assets, `breakwater-gateway status`, and `spool export` while the gateway runs.
//! Devices are simulated over MQTT (births, batches, acks); no Kafka (ack mode spool).
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{http_get, names, run_devices, spec, wait_until, GatewayProc, BIN};
use serde_json::Value;

fn get_json(port: u16, path: &str) -> (u16, Value) {
    let (code, body) = http_get(port, path).unwrap();
    let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    (code, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_pages_devices_and_reports_a_burst() {
    let dir = tempfile::tempdir().unwrap();
    // A burst is anything above 2 connects/s over a 5 s window: 30 devices at once set it off.
    let g = GatewayProc::start(
        dir.path(),
        "[admission]\nburst_min_rate = 2.0\nburst_window_ms = 5000\n",
    );
    let port = g.metrics_port;

    // Before any device: empty but well-formed.
    let (code, s) = get_json(port, "/api/v1/status");
    assert_eq!(code, 200);
    assert_eq!(s["devices"]["connected"], 0);
    assert_eq!(s["kafka"]["configured"], false);
    assert_eq!(s["gateway"]["ack_mode"], "spool");

    let devices = names("stat", 30);
    let reports = run_devices(devices.iter().map(|d| spec(g.mqtt_port, d, 120)).collect()).await;
    assert!(reports.values().all(|r| r.acked_upto == 120));

    // Paging: 30 devices, 10 per page, sorted by id.
    let mut seen = Vec::new();
    for page in 0..3 {
        let (code, d) = get_json(
            port,
            &format!("/api/v1/devices?limit=10&offset={}", page * 10),
        );
        assert_eq!(code, 200);
        assert_eq!(d["total"], 30);
        assert_eq!(d["matched"], 30);
        let rows = d["devices"].as_array().unwrap();
        assert_eq!(rows.len(), 10);
        seen.extend(rows.iter().map(|r| r["id"].as_str().unwrap().to_owned()));
    }
    let mut sorted = devices.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "every device once, in id order");
    // Past the end: an empty page, not an error.
    let (_, d) = get_json(port, "/api/v1/devices?offset=30");
    assert_eq!(d["devices"].as_array().unwrap().len(), 0);

    // Search by id (case-insensitive substring) and state.
    let (_, d) = get_json(port, "/api/v1/devices?q=STAT-1");
    let ids: Vec<&str> = d["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(d["matched"], 11, "{ids:?}"); // stat-1, stat-10..19
    assert!(ids.iter().all(|i| i.contains("stat-1")));
    let (_, d) = get_json(port, "/api/v1/devices?state=connected&limit=500");
    assert_eq!(d["matched"], 30, "births seen: {d}");
    let (_, d) = get_json(port, "/api/v1/devices?state=unacked");
    assert_eq!(d["matched"], 0, "everything acked: {d}");

    // One device: its positions as the gateway knows them.
    let (code, one) = get_json(port, "/api/v1/devices/stat-7");
    assert_eq!(code, 200);
    assert_eq!(one["id"], "stat-7");
    assert_eq!(one["durable_seq"], 120);
    assert_eq!(one["accepted_seq"], 120);
    assert_eq!(one["epoch"], "42");
    assert_eq!(one["connected"], true);
    assert!(one["last_seen_ms"].as_u64().unwrap() > 0);
    assert!(one["credit"].as_u64().unwrap() >= 1);

    // Hostile or wrong input: clear errors, never a panic.
    assert_eq!(get_json(port, "/api/v1/devices/nobody").0, 404);
    assert_eq!(get_json(port, "/api/v1/devices/bad%20id%2Fx").0, 400);
    assert_eq!(get_json(port, "/api/v1/devices?state=sideways").0, 400);
    assert_eq!(get_json(port, "/api/v1/devices?limit=minus").0, 400);
    let long = "x".repeat(200);
    assert_eq!(get_json(port, &format!("/api/v1/devices?q={long}")).0, 400);
    let (_, d) = get_json(port, "/api/v1/devices?limit=100000");
    assert_eq!(d["limit"], 500, "page size is bounded");

    // The burst: seen by the detector (it ticks every second), then the status summary.
    assert!(
        wait_until(Duration::from_secs(15), || {
            let (_, b) = get_json(port, "/api/v1/bursts");
            b["total"].as_u64() >= Some(1)
        }),
        "no burst detected; log:\n{}",
        g.log_text()
    );
    let (_, b) = get_json(port, "/api/v1/bursts");
    let burst = if b["current"].is_object() {
        &b["current"]
    } else {
        &b["recent"][0]
    };
    assert!(burst["peak_rate"].as_f64().unwrap() > 2.0, "{b}");
    assert!(burst["connects"].as_u64().unwrap() >= 10, "{b}");

    // Status: devices, acks, the sampler's history.
    assert!(wait_until(Duration::from_secs(10), || {
        let (_, s) = get_json(port, "/api/v1/status");
        s["devices"]["connected"] == 30
            && s["history"]["t_ms"]
                .as_array()
                .is_some_and(|a| a.len() >= 2)
    }));
    let (_, s) = get_json(port, "/api/v1/status");
    assert_eq!(s["devices"]["known"], 30);
    assert!(s["acks"]["sent_total"].as_f64().unwrap() > 0.0, "{s}");
    assert!(s["connects"]["admitted_total"].as_u64().unwrap() >= 30);
    let adm: f64 = s["history"]["admitted_per_s"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .sum();
    assert!(adm > 0.0, "the chart saw the connects: {}", s["history"]);
    // The metrics the status figures come from are on /metrics too.
    let m = g.metrics();
    assert!(m.contains("breakwater_gateway_connected_devices 30"), "{m}");

    // The page and its assets, compiled in.
    let (code, html) = http_get(port, "/").unwrap();
    assert_eq!(code, 200);
    assert!(html.contains("<script src=\"app.js\">"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external assets"
    );
    let (code, js) = http_get(port, "/app.js").unwrap();
    assert_eq!(code, 200);
    assert!(js.contains("api/v1/status"));
    assert_eq!(http_get(port, "/style.css").unwrap().0, 200);

    // `status`: the summary and the JSON, against --url and against the config.
    let out = Command::new(BIN)
        .args(["status", "--url", &format!("http://127.0.0.1:{port}")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("30 connected"), "{text}");
    assert!(text.contains("kafka       not configured"), "{text}");
    let out = Command::new(BIN)
        .args(["status", "--json", "--config"])
        .arg(&g.config)
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["devices"]["known"], 30);

    // `spool export` while the gateway holds the spool: points at the status API.
    let out = Command::new(BIN)
        .args(["spool", "export", "--dir"])
        .arg(dir.path().join("spool"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("in use by a running gateway") && err.contains("breakwater-gateway status"),
        "{err}"
    );

    // The burst had its log lines, with peak and size.
    let log = g.log_text();
    let started = log
        .lines()
        .find(|l| l.contains("reconnect burst started"))
        .unwrap_or_default();
    assert!(
        started.contains("peak_rate") && started.contains("connects"),
        "{log}"
    );
}

#[test]
fn status_of_a_gateway_that_is_not_running_says_so() {
    let port = breakwater_testkit::free_port();
    let out = Command::new(BIN)
        .args(["status", "--url", &format!("http://127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is the gateway running"), "{err}");
}

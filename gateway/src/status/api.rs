//! The JSON API under `/api/v1/` and the status page at `/` (assets compiled in).
//!
//! | path | what |
//! |---|---|
//! | `GET /api/v1/status` | fleet summary and the last 5 minutes per second |
//! | `GET /api/v1/devices?q=&state=&offset=&limit=` | device table, sorted by id, paged |
//! | `GET /api/v1/devices/{id}` | one device (404 unknown, 400 not a device id) |
//! | `GET /api/v1/bursts` | burst detector: rate, baseline, current burst, last bursts |
//!
//! Untrusted input here is the query string and the path: a device id is validated with
//! [`DeviceId::parse`], numbers are clamped, the search string is bounded. Every answer is
//! bounded in size (see the module doc of [`super`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use breakwater_protocol::DeviceId;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::presence::Seen;
use super::prom::quantile;
use super::{Sample, Status};
use crate::sequencer::DeviceView;
use crate::stats as m;

/// Most devices one page returns.
pub const MAX_PAGE: usize = 500;
/// Default page size.
pub const DEFAULT_PAGE: usize = 50;
/// Seconds of history in `/api/v1/status`.
pub const STATUS_HISTORY_SECS: usize = 300;
/// Longest search string (device ids are at most 64 bytes).
const MAX_QUERY: usize = 64;

const INDEX_HTML: &str = include_str!("page/index.html");
const APP_JS: &str = include_str!("page/app.js");
const STYLE_CSS: &str = include_str!("page/style.css");

/// The routes, for [`crate::http::serve`].
pub fn router(status: Arc<Status>) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        )
        .route("/api/v1/status", get(status_handler))
        .route("/api/v1/devices", get(devices_handler))
        .route("/api/v1/devices/:id", get(device_handler))
        .route("/api/v1/bursts", get(bursts_handler))
        .with_state(status)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

fn json_response(code: StatusCode, v: &impl Serialize) -> Response {
    match serde_json::to_string(v) {
        Ok(body) => (
            code,
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding: {e}\n"),
        )
            .into_response(),
    }
}

fn error(code: StatusCode, msg: &str) -> Response {
    json_response(code, &json!({ "error": msg }))
}

#[allow(clippy::cast_precision_loss)]
fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

#[allow(clippy::cast_precision_loss)]
fn ratio(a: u64, b: u64) -> f64 {
    a as f64 / b.max(1) as f64
}

fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

/// Per-second rate of `f` between the newest sample and the one `window` samples before it.
fn rate(h: &[Sample], window: usize, f: impl Fn(&Sample) -> f64) -> f64 {
    let (Some(last), Some(first)) = (
        h.last(),
        h.len()
            .checked_sub(window + 1)
            .and_then(|i| h.get(i))
            .or(h.first()),
    ) else {
        return 0.0;
    };
    let dt = secs(last.t_ms.saturating_sub(first.t_ms));
    if dt <= 0.0 {
        return 0.0;
    }
    ((f(last) - f(first)) / dt).max(0.0)
}

/// Per-second differences of `f` over the history (counter resets read as 0).
fn per_second(h: &[Sample], f: impl Fn(&Sample) -> f64) -> Vec<f64> {
    h.windows(2)
        .map(|w| {
            let dt = secs(w[1].t_ms.saturating_sub(w[0].t_ms)).max(0.001);
            round(((f(&w[1]) - f(&w[0])) / dt).max(0.0), 1)
        })
        .collect()
}

/// The `/api/v1/status` document (also what `breakwater-gateway status` prints).
#[must_use]
pub fn status_json(st: &Status) -> Value {
    let src = &st.sources;
    let scrape = st.scrape();
    let history = st.history();
    let slow = st.slow();
    let now = crate::link::now_ms();
    let adm = src.admission.stats();
    let bursts = src.admission.bursts();
    let level = src.pressure.level();
    let (credit, retry_after_ms) = crate::ack::hints(&src.ack, level);
    let queue_depth = src
        .pressure
        .queue_depth
        .load(std::sync::atomic::Ordering::Relaxed);

    // Kafka delivery latency over the last minute (all of it if younger).
    let delivery_now = scrape.buckets(m::STAGE_SECONDS, "stage", "kafka_delivery");
    let minute_ago = history
        .len()
        .checked_sub(61)
        .and_then(|i| history.get(i))
        .map(|s| s.delivery.clone())
        .unwrap_or_default();
    let p = |q| quantile(q, &delivery_now, &minute_ago).map(|s| round(s * 1000.0, 1));
    let kafka = match (&src.kafka, st.kafka_probe()) {
        (None, _) => json!({ "configured": false }),
        (Some((_, topic)), probe) => json!({
            "configured": true,
            "topic": topic,
            "reachable": probe.as_ref().map(|p| p.reachable),
            "checked_ms": probe.as_ref().map(|p| p.at_ms),
            "brokers": probe.as_ref().map(|p| p.brokers),
            "error": probe.as_ref().and_then(|p| p.error.clone()),
            "delivery_p50_ms": p(0.5),
            "delivery_p99_ms": p(0.99),
            "in_flight_records": scrape.sum(m::KAFKA_IN_FLIGHT),
            "delivered_batches_per_s": round(rate(&history, 10, |s| s.delivered), 1),
            "errors_total": scrape.sum(m::KAFKA_ERRORS),
        }),
    };

    // Denials: every `breakwater_gateway_*auth*_total` / `*denied*` counter by reason, so a
    // new identity or authorization check shows up without a change here.
    let mut denials: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    for name in scrape.metrics.keys() {
        let short = name.trim_start_matches("breakwater_gateway_");
        if name.starts_with("breakwater_gateway_")
            && name.ends_with("_total")
            && (short.contains("auth") || short.contains("denied") || short.contains("denials"))
        {
            denials.insert(short.to_owned(), scrape.by_label(name, "reason"));
        }
    }

    let tail = &history[history.len().saturating_sub(STATUS_HISTORY_SECS + 1)..];
    json!({
        "now_ms": now,
        "gateway": {
            "version": env!("CARGO_PKG_VERSION"),
            "started_ms": st.started_ms,
            "uptime_s": st.started.elapsed().as_secs(),
            "ready": src.health.ready.load(std::sync::atomic::Ordering::Relaxed),
            "alive": src.health.alive.load(std::sync::atomic::Ordering::Relaxed),
            "ack_mode": format!("{:?}", src.ack_mode).to_lowercase(),
        },
        "devices": {
            "known": src.sequencer.devices(),
            "connected": src.presence.connected(),
            "unacked": slow.devices_unacked,
            "oldest_unacked_age_s": slow.oldest_unacked_ms.map(|t| round(secs(now.saturating_sub(t)), 1)),
        },
        "connects": {
            "admitted_total": adm.admitted,
            "admitted_per_s": round(rate(&history, 10, |s| s.admitted), 1),
            "refused_per_s": round(rate(&history, 10, |s| s.refused), 1),
            "waiting": adm.waiting,
            "abandoned_total": adm.abandoned,
            "refused": scrape.by_label("breakwater_gateway_connects_refused_total", "reason"),
            "address_refused_total": scrape.sum(m::ADDRESS_CONNECTIONS_REFUSED),
            "denials": denials,
        },
        "burst": {
            "active": bursts.current.is_some(),
            "rate": round(bursts.rate, 1),
            "baseline": round(bursts.baseline, 2),
            "total": bursts.total,
            "current": bursts.current,
            "last": bursts.recent.first(),
        },
        "spool": {
            "records": src.spool.records(),
            "bytes": src.spool.bytes(),
            "max_bytes": src.spool.max_bytes(),
            "fill_ratio": round(ratio(src.spool.bytes(), src.spool.max_bytes()), 4),
            "oldest_age_s": slow.spool_oldest_ms.map(|t| round(secs(now.saturating_sub(t)), 1)),
        },
        "kafka": kafka,
        "acks": {
            "per_s": round(rate(&history, 10, |s| s.acks), 1),
            "sent_total": scrape.sum(m::ACKS_SENT),
            "dropped": scrape.by_label(m::ACKS_DROPPED, "reason"),
        },
        "readings": {
            "accepted_per_s": round(rate(&history, 10, |s| s.accepted_readings), 1),
            "accepted_total": scrape.sum(m::ACCEPTED_READINGS),
            "dropped_batches": scrape.by_label(m::DROPPED_BATCHES, "reason"),
            "invalid_payloads": scrape.by_label(m::INVALID_PAYLOADS, "reason"),
            "link_cursor_jumps_total": scrape.sum(m::LINK_CURSOR_JUMPS),
        },
        "backpressure": {
            "pressure": round(level, 3),
            "credit": credit,
            "retry_after_ms": retry_after_ms,
            "queue_depth": queue_depth,
            "queue_capacity": src.pressure.queue_capacity,
        },
        "history": {
            "t_ms": tail.iter().skip(1).map(|s| s.t_ms).collect::<Vec<_>>(),
            "admitted_per_s": per_second(tail, |s| s.admitted),
            "refused_per_s": per_second(tail, |s| s.refused),
            "acks_per_s": per_second(tail, |s| s.acks),
            "connect_rate": tail.iter().skip(1).map(|s| round(s.connect_rate, 1)).collect::<Vec<_>>(),
            "connected": tail.iter().skip(1).map(|s| s.connected).collect::<Vec<_>>(),
        },
    })
}

async fn status_handler(State(st): State<Arc<Status>>) -> Response {
    json_response(StatusCode::OK, &status_json(&st))
}

/// One row of the device table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceRow {
    pub id: String,
    /// From the device's status messages; `null` when none was seen since start.
    pub connected: Option<bool>,
    /// Since when connected or disconnected (ms), from the last status message.
    pub since_ms: Option<u64>,
    /// Last batch received (ms); `null` when none since start.
    pub last_seen_ms: Option<u64>,
    /// Decimal string: agents pick random 64-bit epochs, beyond what JSON numbers carry
    /// exactly in JavaScript.
    pub epoch: Option<String>,
    pub accepted_seq: Option<u64>,
    pub durable_seq: Option<u64>,
    /// Accepted batches still waiting to be durable (and acked).
    pub unacked_batches: usize,
    pub oldest_unacked_ms: Option<u64>,
    pub last_durable_ms: Option<u64>,
    /// Credit the device's next ack carries: gateway-wide, from the current pressure
    /// (`null` while disconnected).
    pub credit: Option<u32>,
}

fn row(id: &DeviceId, seq: Option<&DeviceView>, seen: Option<&Seen>, credit: u32) -> DeviceRow {
    let connected = seen.map(|s| s.connected);
    DeviceRow {
        id: id.as_str().to_owned(),
        connected,
        since_ms: seen.map(|s| s.since_ms),
        last_seen_ms: seq.map(|s| s.last_seen_ms).filter(|&t| t > 0),
        epoch: seq
            .map(|s| s.epoch)
            .or(seen.map(|s| s.epoch))
            .map(|e| e.to_string()),
        accepted_seq: seq.map(|s| s.accepted),
        durable_seq: seq.map(|s| s.durable),
        unacked_batches: seq.map_or(0, |s| s.pending),
        oldest_unacked_ms: seq.and_then(|s| s.oldest_pending_ms),
        last_durable_ms: seq.map(|s| s.durable_ms).filter(|&t| t > 0),
        credit: (connected == Some(true)).then_some(credit),
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct DevicesQuery {
    /// Substring of the device id, case-insensitive.
    #[serde(default)]
    pub q: Option<String>,
    /// `connected`, `disconnected`, `unacked` (waiting for an ack) or empty for all.
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub offset: Option<usize>,
    #[serde(default)]
    pub limit: Option<usize>,
}

/// The `/api/v1/devices` document.
///
/// # Errors
/// A message for an unknown `state` or an over-long `q`.
pub fn devices_json(st: &Status, q: &DevicesQuery) -> Result<Value, String> {
    let needle = q.q.as_deref().unwrap_or("").trim().to_ascii_lowercase();
    if needle.len() > MAX_QUERY {
        return Err(format!("q: at most {MAX_QUERY} characters"));
    }
    let state = q.state.as_deref().unwrap_or("");
    if !matches!(state, "" | "all" | "connected" | "disconnected" | "unacked") {
        return Err("state: one of connected, disconnected, unacked".into());
    }
    let limit = q.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let offset = q.offset.unwrap_or(0);
    let (credit, _) = crate::ack::hints(&st.sources.ack, st.sources.pressure.level());

    let seqs = st.sources.sequencer.snapshot();
    let seen: HashMap<DeviceId, Seen> = st.sources.presence.snapshot().into_iter().collect();
    let by_id: HashMap<&DeviceId, &DeviceView> = seqs.iter().map(|s| (&s.device, s)).collect();
    let mut ids: Vec<&DeviceId> = seqs.iter().map(|s| &s.device).collect();
    ids.extend(seen.keys().filter(|d| !by_id.contains_key(d)));
    let total = ids.len();
    // Filter and sort the ids, then build rows for the page only.
    ids.retain(|d| needle.is_empty() || d.as_str().to_ascii_lowercase().contains(&needle));
    let keep = |d: &DeviceId| {
        let connected = seen.get(d).map(|s| s.connected);
        match state {
            "connected" => connected == Some(true),
            "disconnected" => connected != Some(true),
            "unacked" => by_id.get(d).is_some_and(|s| s.pending > 0),
            _ => true,
        }
    };
    ids.retain(|d| keep(d));
    ids.sort_unstable();
    let matched = ids.len();
    let page: Vec<DeviceRow> = ids
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|d| row(d, by_id.get(d).copied(), seen.get(d), credit))
        .collect();
    Ok(json!({
        "total": total,
        "matched": matched,
        "offset": offset,
        "limit": limit,
        "devices": page,
    }))
}

async fn devices_handler(
    State(st): State<Arc<Status>>,
    q: Option<Query<DevicesQuery>>,
) -> Response {
    let Some(Query(q)) = q else {
        return error(
            StatusCode::BAD_REQUEST,
            "query: q=, state=, offset=, limit= (numbers)",
        );
    };
    match tokio::task::spawn_blocking(move || devices_json(&st, &q)).await {
        Ok(Ok(v)) => json_response(StatusCode::OK, &v),
        Ok(Err(msg)) => error(StatusCode::BAD_REQUEST, &msg),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

async fn device_handler(State(st): State<Arc<Status>>, Path(id): Path<String>) -> Response {
    let Ok(device) = DeviceId::parse(id) else {
        return error(StatusCode::BAD_REQUEST, "not a valid device id");
    };
    let seq = st.sources.sequencer.device(&device);
    let seen = st.sources.presence.get(&device);
    if seq.is_none() && seen.is_none() {
        return error(
            StatusCode::NOT_FOUND,
            "device not seen since the gateway started",
        );
    }
    let (credit, _) = crate::ack::hints(&st.sources.ack, st.sources.pressure.level());
    json_response(
        StatusCode::OK,
        &row(&device, seq.as_ref(), seen.as_ref(), credit),
    )
}

async fn bursts_handler(State(st): State<Arc<Status>>) -> Response {
    json_response(StatusCode::OK, &st.sources.admission.bursts())
}

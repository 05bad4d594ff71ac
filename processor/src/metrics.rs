//! Metrics, all named `breakwater_processor_<what>_<unit>`, and a minimal `/metrics` endpoint.
//!
//! The core counts in [`crate::state::Stats`]; the runner reports deltas here once a second,
//! so the hot path never touches the metrics registry.

use std::net::SocketAddr;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use std::sync::Arc;

use crate::run::{Health, Progress};
use crate::state::Stats;

pub const RECORDS: &str = "breakwater_processor_records_total";
pub const RECORDS_RATE: &str = "breakwater_processor_records_per_second";
pub const DECODE_ERRORS: &str = "breakwater_processor_decode_errors_total";
pub const LAG: &str = "breakwater_processor_consumer_lag_records";
pub const CHECKPOINT_DURATION: &str = "breakwater_processor_checkpoint_duration_seconds";
pub const CHECKPOINT_SIZE: &str = "breakwater_processor_checkpoint_size_bytes";
pub const CHECKPOINT_DEVICES: &str = "breakwater_processor_checkpoint_devices_written_total";
pub const RECOVERY_DURATION: &str = "breakwater_processor_recovery_duration_seconds";
pub const RECOVERED_DEVICES: &str = "breakwater_processor_recovered_devices_total";
pub const OUTPUTS: &str = "breakwater_processor_outputs_total";
pub const OUTPUT_ERRORS: &str = "breakwater_processor_output_errors_total";
pub const DEVICES: &str = "breakwater_processor_devices";
pub const CHANGELOG_RESTORES: &str = "breakwater_processor_changelog_restores_total";
pub const BELOW_LOG_START: &str = "breakwater_processor_offsets_below_log_start_records_total";
pub const CHANGELOG_RECORDS: &str = "breakwater_processor_changelog_records_total";
pub const TRANSACTIONS: &str = "breakwater_processor_transactions_total";
pub const TRANSACTION_ABORTS: &str = "breakwater_processor_transaction_aborts_total";
pub const EXACTLY_ONCE: &str = "breakwater_processor_exactly_once";
pub const OFFSET_COMMITS: &str = "breakwater_processor_offset_commits_total";
pub const OFFSET_COMMIT_ERRORS: &str = "breakwater_processor_offset_commit_errors_total";

/// Registers descriptions (names, units, help).
pub fn describe() {
    describe_counter!(
        RECORDS,
        "Input records consumed, by topic (telemetry, events)."
    );
    describe_gauge!(
        RECORDS_RATE,
        "Input records per second over the last report interval."
    );
    describe_counter!(
        DECODE_ERRORS,
        "Input records that could not be decoded, by topic."
    );
    describe_gauge!(
        LAG,
        "High watermark minus next offset to consume, per topic and partition. tansu 0.6 reports wrong high watermarks: do not trust this against tansu."
    );
    describe_histogram!(
        CHECKPOINT_DURATION,
        Unit::Seconds,
        "Checkpoint: output flush plus redb commit."
    );
    describe_gauge!(
        CHECKPOINT_SIZE,
        Unit::Bytes,
        "Size of the state database file after the last checkpoint."
    );
    describe_counter!(CHECKPOINT_DEVICES, "Device states written by checkpoints.");
    describe_gauge!(
        RECOVERY_DURATION,
        Unit::Seconds,
        "Time to load the last assigned partitions' state."
    );
    describe_counter!(RECOVERED_DEVICES, "Device states loaded from checkpoints.");
    describe_counter!(OUTPUTS, "Output records produced, by topic.");
    describe_counter!(OUTPUT_ERRORS, "Output records Kafka failed to acknowledge.");
    describe_gauge!(DEVICES, "Devices held in memory.");
    describe_counter!(
        CHANGELOG_RESTORES,
        "Partitions restored from the changelog (the local copy was missing or stale)."
    );
    describe_counter!(
        BELOW_LOG_START,
        "Input records deleted before they were processed: a checkpointed offset below the log start, by topic."
    );
    describe_counter!(
        CHANGELOG_RECORDS,
        "Changelog records written (device states, tombstones, markers)."
    );
    describe_counter!(
        TRANSACTIONS,
        "Kafka transactions committed (exactly-once mode: one per checkpoint)."
    );
    describe_counter!(
        TRANSACTION_ABORTS,
        "Kafka transactions aborted (the processor then stops; a restart replays)."
    );
    describe_gauge!(
        EXACTLY_ONCE,
        "1 if outputs, changelog and offsets commit in Kafka transactions, 0 if at-least-once \
         (kafka.exactly_once = off, or auto on a broker whose transactions failed the probe)."
    );
    describe_counter!(
        OFFSET_COMMITS,
        "Checkpointed offsets committed to the consumer group (for lag tools)."
    );
    describe_counter!(
        OFFSET_COMMIT_ERRORS,
        "Consumer-group offset commits that failed (the checkpoint stands)."
    );
    for (name, help, _) in STAT_COUNTERS {
        describe_counter!(*name, *help);
    }
}

/// The core's counters: name, help, and the [`Stats`] field it reports. Name and value live in
/// one row, so a counter can never be reported under another's name.
type StatRow = (&'static str, &'static str, fn(&Stats) -> u64);

const STAT_COUNTERS: &[StatRow] = &[
    (
        "breakwater_processor_batches_total",
        "Telemetry batches processed (duplicates included).",
        |s| s.batches,
    ),
    (
        "breakwater_processor_duplicate_batches_total",
        "Batches whose readings were all seen before.",
        |s| s.duplicate_batches,
    ),
    (
        "breakwater_processor_readings_total",
        "Readings admitted by dedupe (late ones included).",
        |s| s.readings,
    ),
    (
        "breakwater_processor_duplicate_readings_total",
        "Readings dropped as already seen.",
        |s| s.duplicate_readings,
    ),
    (
        "breakwater_processor_gap_readings_total",
        "Sequence numbers skipped by devices (never seen).",
        |s| s.gap_readings,
    ),
    (
        "breakwater_processor_late_readings_total",
        "Readings older than their device's watermark: written to the late topic, not aggregated.",
        |s| s.late_readings,
    ),
    (
        "breakwater_processor_future_readings_total",
        "Readings more than max_future_skew after their Kafka record's timestamp, dropped.",
        |s| s.future_readings,
    ),
    (
        "breakwater_processor_non_numeric_readings_total",
        "Bool and string readings (sessions only).",
        |s| s.non_numeric_readings,
    ),
    (
        "breakwater_processor_untracked_metric_readings_total",
        "Readings of metrics beyond max_metrics_per_device.",
        |s| s.untracked_metric_readings,
    ),
    (
        "breakwater_processor_events_total",
        "Fleet events processed.",
        |s| s.events,
    ),
    (
        "breakwater_processor_late_events_total",
        "Connect events older than the fleet watermark.",
        |s| s.late_events,
    ),
    (
        "breakwater_processor_unmatched_ends_total",
        "Death or lost events with no open session.",
        |s| s.unmatched_ends,
    ),
    (
        "breakwater_processor_windows_closed_total",
        "Windows closed (emitted if a windows topic is set).",
        |s| s.windows_closed,
    ),
    (
        "breakwater_processor_sessions_closed_total",
        "Sessions emitted.",
        |s| s.sessions_closed,
    ),
    (
        "breakwater_processor_anomalies_total",
        "Anomalies emitted.",
        |s| s.anomalies,
    ),
    (
        "breakwater_processor_evicted_devices_total",
        "Devices not seen for state.device_ttl whose state was removed.",
        |s| s.evicted_devices,
    ),
];

/// Every core counter's name and value.
#[must_use]
pub fn stat_values(s: &Stats) -> Vec<(&'static str, u64)> {
    STAT_COUNTERS.iter().map(|(n, _, f)| (*n, f(s))).collect()
}

/// Reports `now - before` of every core counter.
pub fn report_stats(now: &Stats, before: &Stats) {
    for (name, _, f) in STAT_COUNTERS {
        let d = f(now).saturating_sub(f(before));
        if d > 0 {
            counter!(*name).increment(d);
        }
    }
}

/// Registers the counters at 0, so alert rules and dashboards (`deploy/`) see every series from
/// the first scrape: `increase()` over a series that appears with its first event misses that
/// event, and a missing series cannot be told from a typo in a rule.
fn zero() {
    for (name, _, _) in STAT_COUNTERS {
        counter!(*name).increment(0);
    }
    for topic in ["telemetry", "events"] {
        counter!(RECORDS, "topic" => topic).increment(0);
        counter!(DECODE_ERRORS, "topic" => topic).increment(0);
    }
    counter!(OUTPUT_ERRORS).increment(0);
    counter!(RECOVERED_DEVICES).increment(0);
    counter!(CHECKPOINT_DEVICES).increment(0);
}

/// Installs the Prometheus recorder.
///
/// # Errors
/// If a global recorder is already installed.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let h = PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(CHECKPOINT_DURATION.to_owned()),
            &[
                0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ],
        )?
        .install_recorder()?;
    describe();
    zero();
    Ok(h)
}

/// Serves `GET /metrics` (any path, really) until `cancel`. Cancel-safe: stops accepting on
/// cancellation; a response being written is abandoned.
///
/// # Errors
/// If `addr` cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    handle: PrometheusHandle,
    progress: Arc<Progress>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, "metrics endpoint listening");
    loop {
        let (mut sock, _) = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    continue;
                }
            },
        };
        let handle = handle.clone();
        let progress = progress.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            // Only the request line matters: GET /healthz, /readyz, anything else is /metrics.
            let n = tokio::time::timeout(std::time::Duration::from_secs(2), sock.read(&mut buf))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(0);
            let (status, body) = respond(&buf[..n], &handle, &progress);
            let head = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(body.as_bytes()).await;
        });
    }
}

/// How long the processing loop may go without an iteration before `/healthz` fails.
pub const HEARTBEAT_STALE: std::time::Duration = std::time::Duration::from_secs(60);

/// Status line and body for a request (its first bytes).
///
/// * `/healthz` (liveness): 200 unless the processing loop stopped or has not iterated for
///   [`HEARTBEAT_STALE`] (a restore in progress counts as alive).
/// * `/readyz` (readiness): 200 only when the loop runs with a fresh heartbeat and no
///   partition is being restored; 503 while starting or restoring.
/// * anything else: the Prometheus text.
#[must_use]
pub fn respond(
    request: &[u8],
    handle: &PrometheusHandle,
    progress: &Progress,
) -> (&'static str, String) {
    let line = request
        .split(|&b| b == b'\r' || b == b'\n')
        .next()
        .unwrap_or_default();
    let path = line.split(|&b| b == b' ').nth(1).unwrap_or_default();
    let health = progress.health(HEARTBEAT_STALE);
    match path {
        b"/healthz" => match health {
            Health::Unhealthy => ("503 Service Unavailable", "unhealthy\n".to_owned()),
            Health::Ready | Health::Starting => ("200 OK", "ok\n".to_owned()),
        },
        b"/readyz" => match health {
            Health::Ready => ("200 OK", "ready\n".to_owned()),
            Health::Starting => (
                "503 Service Unavailable",
                "starting or restoring\n".to_owned(),
            ),
            Health::Unhealthy => ("503 Service Unavailable", "unhealthy\n".to_owned()),
        },
        _ => ("200 OK", handle.render()),
    }
}

/// Sets the records-per-second gauge.
pub fn records_rate(per_second: f64) {
    gauge!(RECORDS_RATE).set(per_second);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_and_readiness_follow_the_loop() {
        let handle = PrometheusBuilder::new().build_recorder().handle();
        let p = Progress::default();
        let get = |path: &str, p: &Progress| {
            respond(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
                &handle,
                p,
            )
            .0
        };
        // Starting: alive, not ready.
        assert_eq!(get("/healthz", &p), "200 OK");
        assert_eq!(get("/readyz", &p), "503 Service Unavailable");
        p.beat();
        assert_eq!(get("/readyz", &p), "200 OK");
        assert_eq!(get("/metrics", &p), "200 OK");
        // Restoring: alive, not ready, whatever the heartbeat.
        p.restoring.store(1, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(get("/healthz", &p), "200 OK");
        assert_eq!(get("/readyz", &p), "503 Service Unavailable");
        assert_eq!(p.health(std::time::Duration::ZERO), Health::Starting);
        p.restoring.store(0, std::sync::atomic::Ordering::Relaxed);
        // A heartbeat older than the limit: unhealthy.
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert_eq!(
            p.health(std::time::Duration::from_millis(1)),
            Health::Unhealthy
        );
        assert_eq!(p.health(std::time::Duration::from_secs(60)), Health::Ready);
        // Stopped: neither.
        p.stopped.store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(get("/healthz", &p), "503 Service Unavailable");
        assert_eq!(get("/readyz", &p), "503 Service Unavailable");
    }

    /// Every counter reports its own field's value: a distinct value per field, read back from
    /// the rendered Prometheus text by name.
    #[test]
    fn each_core_counter_reports_its_own_value() {
        let s = Stats {
            batches: 101,
            duplicate_batches: 102,
            readings: 103,
            duplicate_readings: 104,
            gap_readings: 105,
            late_readings: 106,
            future_readings: 107,
            non_numeric_readings: 108,
            untracked_metric_readings: 109,
            events: 110,
            late_events: 111,
            unmatched_ends: 112,
            windows_closed: 113,
            sessions_closed: 114,
            anomalies: 115,
            evicted_devices: 116,
        };
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || report_stats(&s, &Stats::default()));
        let text = handle.render();
        let value = |name: &str| -> Option<u64> {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        };
        let want = [
            ("batches_total", 101),
            ("duplicate_batches_total", 102),
            ("readings_total", 103),
            ("duplicate_readings_total", 104),
            ("gap_readings_total", 105),
            ("late_readings_total", 106),
            ("future_readings_total", 107),
            ("non_numeric_readings_total", 108),
            ("untracked_metric_readings_total", 109),
            ("events_total", 110),
            ("late_events_total", 111),
            ("unmatched_ends_total", 112),
            ("windows_closed_total", 113),
            ("sessions_closed_total", 114),
            ("anomalies_total", 115),
            ("evicted_devices_total", 116),
        ];
        for (suffix, v) in want {
            let name = format!("breakwater_processor_{suffix}");
            assert_eq!(value(&name), Some(v), "{name} in\n{text}");
        }
        assert_eq!(
            stat_values(&s).len(),
            want.len(),
            "a Stats field without a counter"
        );
        // Deltas: only what changed since `before` is added.
        let mut later = s;
        later.future_readings += 5;
        metrics::with_local_recorder(&recorder, || report_stats(&later, &s));
        let text = handle.render();
        let v = text.lines().find_map(|l| {
            l.strip_prefix("breakwater_processor_future_readings_total ")?
                .parse::<u64>()
                .ok()
        });
        assert_eq!(v, Some(112));
    }
}

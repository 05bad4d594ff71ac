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
    for (name, help) in STAT_COUNTERS {
        describe_counter!(*name, *help);
    }
}

const STAT_COUNTERS: &[(&str, &str)] = &[
    (
        "breakwater_processor_batches_total",
        "Telemetry batches processed (duplicates included).",
    ),
    (
        "breakwater_processor_duplicate_batches_total",
        "Batches whose readings were all seen before.",
    ),
    (
        "breakwater_processor_readings_total",
        "Readings admitted by dedupe (late ones included).",
    ),
    (
        "breakwater_processor_duplicate_readings_total",
        "Readings dropped as already seen.",
    ),
    (
        "breakwater_processor_gap_readings_total",
        "Sequence numbers skipped by devices (never seen).",
    ),
    (
        "breakwater_processor_late_readings_total",
        "Readings older than the watermark, dropped.",
    ),
    (
        "breakwater_processor_non_numeric_readings_total",
        "Bool and string readings (sessions only).",
    ),
    (
        "breakwater_processor_untracked_metric_readings_total",
        "Readings of metrics beyond max_metrics_per_device.",
    ),
    (
        "breakwater_processor_events_total",
        "Fleet events processed.",
    ),
    (
        "breakwater_processor_late_events_total",
        "Connect events older than the fleet watermark.",
    ),
    (
        "breakwater_processor_unmatched_ends_total",
        "Death or lost events with no open session.",
    ),
    (
        "breakwater_processor_windows_closed_total",
        "Windows closed (emitted if a windows topic is set).",
    ),
    (
        "breakwater_processor_sessions_closed_total",
        "Sessions emitted.",
    ),
    ("breakwater_processor_anomalies_total", "Anomalies emitted."),
];

/// Reports `now - before` of every core counter.
pub fn report_stats(now: &Stats, before: &Stats) {
    let pairs = [
        now.batches - before.batches,
        now.duplicate_batches - before.duplicate_batches,
        now.readings - before.readings,
        now.duplicate_readings - before.duplicate_readings,
        now.gap_readings - before.gap_readings,
        now.late_readings - before.late_readings,
        now.future_readings - before.future_readings,
        now.non_numeric_readings - before.non_numeric_readings,
        now.untracked_metric_readings - before.untracked_metric_readings,
        now.events - before.events,
        now.late_events - before.late_events,
        now.unmatched_ends - before.unmatched_ends,
        now.windows_closed - before.windows_closed,
        now.sessions_closed - before.sessions_closed,
        now.anomalies - before.anomalies,
    ];
    for ((name, _), d) in STAT_COUNTERS.iter().zip(pairs) {
        if d > 0 {
            counter!(*name).increment(d);
        }
    }
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
        let body = handle.render();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            // Read (and ignore) the request head; a scrape is always GET /metrics.
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(2), sock.read(&mut buf)).await;
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(body.as_bytes()).await;
        });
    }
}

/// Sets the records-per-second gauge.
pub fn records_rate(per_second: f64) {
    gauge!(RECORDS_RATE).set(per_second);
}

//! Metrics: names, the buffer gauges, and the optional HTTP endpoint: `GET /metrics`
//! (Prometheus text) and `GET /status` (JSON for `breakwater-agent status`, see
//! [`crate::status`]). Counters rules and dashboards use start at 0 ([`zero`]).
//!
//! Everything goes through the `metrics` facade, so an embedding program (the fleet simulator)
//! can install its own recorder. Counters (no per-device labels, so a fleet in one process
//! aggregates): `breakwater_agent_buffer_appended_readings_total`,
//! `breakwater_agent_buffer_dropped_readings_total`, `breakwater_agent_buffer_commits_total`,
//! `breakwater_agent_buffer_full_waits_total`, `breakwater_agent_sent_batches_total`,
//! `breakwater_agent_sent_readings_total`, `breakwater_agent_sent_floors_total`,
//! `breakwater_agent_acks_total`, `breakwater_agent_acks_beyond_sent_total{reason}`,
//! `breakwater_agent_acks_retry_after_capped_total`,
//! `breakwater_agent_acks_rejected_total{reason}`, `breakwater_agent_resends_total`,
//! `breakwater_agent_connects_total`, `breakwater_agent_reconnects_total`,
//! `breakwater_agent_disconnects_total{reason}`, `breakwater_agent_gateway_failovers_total`
//! (with gauge `breakwater_agent_gateway_index`, the current gateway's index in the expanded
//! `[gateway]` list; meaningful for one device per process),
//! `breakwater_agent_ingest_accepted_lines_total`,
//! `breakwater_agent_ingest_rejected_lines_total{reason}`,
//! `breakwater_agent_ingest_rejected_clients_total`. Histograms:
//! `breakwater_agent_ack_latency_seconds`, `breakwater_agent_buffer_commit_seconds`. Gauges
//! (set by [`update_buffer_gauges`]): `breakwater_agent_buffer_depth_readings`,
//! `breakwater_agent_buffer_bytes`, `breakwater_agent_oldest_unacked_age_seconds`,
//! `breakwater_agent_buffer_storage_failing` (1 while the buffer refuses writes after a storage
//! error and reopens its file; also set by the buffer writer at each change). Storage healing
//! counters: `breakwater_agent_buffer_commit_errors_total`,
//! `breakwater_agent_buffer_reopens_total`, `breakwater_agent_buffer_reopen_failures_total`.

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::buffer::Buffer;

/// Sets the buffer gauges from the buffer's counters.
pub fn update_buffer_gauges(buffer: &dyn Buffer, now_ms: u64) {
    let s = buffer.stats();
    #[allow(clippy::cast_precision_loss)]
    {
        metrics::gauge!("breakwater_agent_buffer_depth_readings").set(s.readings as f64);
        metrics::gauge!("breakwater_agent_buffer_bytes").set(s.bytes as f64);
        let age = s.oldest_ts.map_or(0, |ts| now_ms.saturating_sub(ts));
        metrics::gauge!("breakwater_agent_oldest_unacked_age_seconds").set(age as f64 / 1000.0);
    }
    let failing = if buffer.health().is_err() { 1.0 } else { 0.0 };
    metrics::gauge!("breakwater_agent_buffer_storage_failing").set(failing);
}

/// Registers the counters alert rules and dashboards use at 0 (`deploy/prometheus`): a series
/// that appears only with its first increment hides that first event from `increase()`.
pub fn zero() {
    for name in [
        "breakwater_agent_buffer_appended_readings_total",
        "breakwater_agent_buffer_dropped_readings_total",
        "breakwater_agent_sent_batches_total",
        "breakwater_agent_sent_readings_total",
        "breakwater_agent_acks_total",
        "breakwater_agent_resends_total",
        "breakwater_agent_connects_total",
        "breakwater_agent_reconnects_total",
        "breakwater_agent_gateway_failovers_total",
    ] {
        metrics::counter!(name).increment(0);
    }
    for reason in ["cut", "error"] {
        metrics::counter!("breakwater_agent_disconnects_total", "reason" => reason).increment(0);
    }
}

/// What `GET /status` reports.
#[derive(Clone)]
pub struct StatusSource {
    pub device: String,
    pub buffer: Arc<dyn Buffer>,
    pub link: Arc<crate::status::LinkStatus>,
}

impl std::fmt::Debug for StatusSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusSource")
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

/// Installs the Prometheus recorder as the global `metrics` recorder.
///
/// # Errors
/// Another recorder is already installed.
pub fn install_prometheus() -> Result<PrometheusHandle, String> {
    PrometheusBuilder::new()
        .set_buckets(&[
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ])
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())
        .inspect(|_| zero())
}

/// Serves `GET /metrics` in Prometheus text format and `GET /status` on `listener` until
/// `cancel`.
pub fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    source: StatusSource,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) {
    let t = tracker.clone();
    tracker.spawn(async move {
        loop {
            let stream = tokio::select! {
                () = cancel.cancelled() => break,
                r = listener.accept() => match r {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let handle = handle.clone();
            let source = source.clone();
            t.spawn(async move {
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), answer(stream, &handle, &source))
                        .await;
            });
        }
    });
}

async fn answer(
    mut stream: tokio::net::TcpStream,
    handle: &PrometheusHandle,
    source: &StatusSource,
) -> std::io::Result<()> {
    let mut req = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        req.extend_from_slice(&chunk[..n]);
    }
    let is = |path: &[u8]| {
        req.strip_prefix(b"GET ".as_slice())
            .and_then(|r| r.strip_prefix(path))
            .is_some_and(|r| r.starts_with(b" ") || r.starts_with(b"?"))
    };
    let (status, content_type, body) = if is(b"/metrics") {
        update_buffer_gauges(&*source.buffer, crate::now_ms());
        ("200 OK", "text/plain; version=0.0.4", handle.render())
    } else if is(b"/status") {
        let doc = crate::status::document(
            &source.device,
            &source.buffer.stats(),
            source.buffer.health(),
            &source.link.get(),
            crate::now_ms(),
        );
        ("200 OK", "application/json", doc.to_string())
    } else {
        (
            "404 Not Found",
            "text/plain",
            "only GET /metrics and GET /status are served\n".to_owned(),
        )
    };
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

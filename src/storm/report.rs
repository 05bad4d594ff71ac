//! The run report (JSON) and the process RSS sampler.

use std::path::Path;

use serde::Serialize;

use super::verify::Verification;

/// One timeline sample.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the start of the run.
    pub t: f64,
    pub connected: u64,
    pub connects_total: u64,
    pub produced_total: u64,
    pub acked_total: u64,
    /// Gateway RSS in bytes, when a gateway pid was given.
    pub gateway_rss: Option<u64>,
    /// Each `--gateway-metrics` gateway's `breakwater_gateway_connected_devices` (the whole
    /// gateway, every simulator process); `None` when it did not answer (e.g. killed).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gateways_connected: Vec<Option<u64>>,
}

/// Percentiles of the ack latency, in milliseconds: from the first write of a batch (Breakwater
/// model) or of a QoS 1 PUBLISH (DIY model) to the ack (gateway ack / PUBACK).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    #[must_use]
    pub fn from_histogram(h: &hdrhistogram::Histogram<u64>) -> Self {
        #[allow(clippy::cast_precision_loss)]
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1_000.0;
        #[allow(clippy::cast_precision_loss)]
        Self {
            count: h.len(),
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: h.max() as f64 / 1_000.0,
        }
    }
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub target: String,
    pub device_model: super::DeviceModel,
    pub scenario: String,
    pub devices: usize,
    pub readings_per_device: u64,
    pub batch: usize,
    pub rate_per_device: f64,
    pub outage_seconds: f64,
    /// Seconds from the start until every device was connected the first time.
    pub initial_connect_seconds: Option<f64>,
    /// Readings acked per second over the sending phase (first reading to last ack). The ack
    /// is the device's "done": Breakwater's gateway ack (after Kafka, in ack mode `kafka`), the
    /// batched baseline's ack on receipt, the DIY model's PUBACK from Mosquitto.
    pub readings_per_second: f64,
    /// Readings that reached Kafka per second: distinct expected readings found by the
    /// verification, over the time from the first reading generated to the producer timestamp
    /// of the last record that brought a new one. Same clock (this machine's) on both ends.
    pub into_kafka_readings_per_second: Option<f64>,
    pub total_seconds: f64,
    /// Start and end of the network cut, seconds since the start.
    pub cut_at: Option<f64>,
    pub cut_end: Option<f64>,
    /// `--gateway`, in order.
    pub gateways: Vec<String>,
    /// Seconds since the start when `--kill-pid` was killed.
    pub gateway_killed_at: Option<f64>,
    /// From the network coming back until every device was connected again.
    pub reconnect_seconds: Option<f64>,
    /// From the network coming back until every device had its backlog (everything it produced
    /// before the network came back) acked.
    pub drain_seconds: Option<f64>,
    pub peak_connects_per_second: f64,
    pub connects_total: u64,
    pub connect_attempts_total: u64,
    pub resends_total: u64,
    pub ack_timeouts_total: u64,
    pub ack_latency: Latency,
    pub gateway_peak_rss_bytes: Option<u64>,
    pub simulator_peak_rss_bytes: Option<u64>,
    pub all_acked: bool,
    pub verification: Option<Verification>,
    pub timeline: Vec<Sample>,
}

impl Report {
    /// Writes the report as pretty JSON.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, serde_json::to_vec_pretty(self)?)?;
        Ok(())
    }
}

/// Resident set size of a process, from `/proc/PID/status` (`VmRSS`), in bytes.
#[must_use]
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Peak connects per second from cumulative samples (over windows of at least one second).
#[must_use]
pub fn peak_rate(samples: &[Sample], value: impl Fn(&Sample) -> u64) -> f64 {
    let mut peak = 0.0f64;
    let mut j = 0;
    for i in 0..samples.len() {
        while j < i && samples[i].t - samples[j].t > 1.0 {
            j += 1;
        }
        let j0 = j.saturating_sub(1);
        let dt = samples[i].t - samples[j0].t;
        if dt >= 0.999 {
            #[allow(clippy::cast_precision_loss)]
            let rate = (value(&samples[i]) - value(&samples[j0])) as f64 / dt;
            peak = peak.max(rate);
        }
    }
    peak
}

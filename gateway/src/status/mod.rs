//! What operators see: the status page at `/`, the JSON API under `/api/v1/`, and the
//! `breakwater-gateway status` command ([`cli`]).
//!
//! ```text
//! /metrics text ─render─> sampler (1 s) ─> History (10 min of per-second samples)
//! Sequencer / Presence / Admission / Spool ─snapshots─> api handlers ─> JSON, page
//! Kafka metadata probe (5 s) ─> kafka_up
//! ```
//!
//! # Invariants
//!
//! * Nothing here is on a reading's path. Per-device state comes from the snapshots the
//!   owning stages offer ([`Sequencer::snapshot`], [`Presence::snapshot`]): each takes a shard
//!   lock for as long as copying it takes, per API request or per sampler round, never per
//!   batch. Fleet numbers come from the gateway's own `/metrics` text ([`prom`]), so the page,
//!   the API and Prometheus can never disagree about a counter.
//! * Everything the API returns is bounded: the device list is paged (`limit` at most
//!   [`api::MAX_PAGE`]), the history keeps [`HISTORY_SECS`] samples, the burst list
//!   [`crate::admission::BURSTS_KEPT`] entries.
//! * The HTTP listener is the metrics listener: whoever can scrape `/metrics` can read device
//!   ids and positions here too. Bind it to a management network (`[metrics] listen`).

pub mod api;
pub mod cli;
pub mod presence;
pub mod prom;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusHandle;
use parking_lot::Mutex;
use rdkafka::producer::{FutureProducer, Producer};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::ack::Pressure;
use crate::admission::Admission;
use crate::config::{AckConfig, AckMode};
use crate::http::Health;
use crate::sequencer::Sequencer;
use crate::spool::Spool;
use crate::stats as m;
pub use presence::Presence;
use prom::Scrape;

/// Seconds of per-second samples kept for the charts and windowed figures.
pub const HISTORY_SECS: usize = 600;
/// How often Kafka's metadata is fetched to tell whether it is reachable.
pub const KAFKA_PROBE_EVERY: Duration = Duration::from_secs(5);

/// Everything the status API reads. Built once by [`crate::service`].
pub struct Sources {
    pub sequencer: Arc<Sequencer>,
    pub spool: Arc<Spool>,
    pub admission: Arc<Admission>,
    pub presence: Arc<Presence>,
    pub pressure: Arc<Pressure>,
    pub ack: AckConfig,
    pub ack_mode: AckMode,
    pub kafka: Option<(FutureProducer, String)>,
    pub health: Arc<Health>,
    pub prom: PrometheusHandle,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources").finish_non_exhaustive()
    }
}

/// One per-second sample of the fleet counters (cumulative values, as scraped).
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub t_ms: u64,
    pub admitted: f64,
    pub refused: f64,
    pub acks: f64,
    pub accepted_readings: f64,
    pub delivered: f64,
    pub connect_rate: f64,
    pub connected: usize,
    /// `breakwater_gateway_stage_seconds{stage="kafka_delivery"}` buckets.
    pub delivery: Vec<(f64, f64)>,
}

impl Sample {
    fn of(scrape: &Scrape, t_ms: u64, connected: usize) -> Self {
        Self {
            t_ms,
            admitted: scrape.sum("breakwater_gateway_connects_admitted_total"),
            refused: scrape.sum("breakwater_gateway_connects_refused_total"),
            acks: scrape.sum(m::ACKS_SENT),
            accepted_readings: scrape.sum(m::ACCEPTED_READINGS),
            delivered: scrape.sum(m::KAFKA_DELIVERED_BATCHES),
            connect_rate: scrape.sum("breakwater_gateway_connect_rate_per_second"),
            connected,
            delivery: scrape.buckets(m::STAGE_SECONDS, "stage", "kafka_delivery"),
        }
    }
}

/// Kafka reachability as last probed.
#[derive(Debug, Clone)]
pub struct KafkaProbe {
    pub reachable: bool,
    pub at_ms: u64,
    pub brokers: usize,
    pub error: Option<String>,
}

/// Slow-moving figures the sampler refreshes every few seconds.
#[derive(Debug, Clone, Default)]
pub struct Slow {
    /// Receive time (ms) of the oldest batch in the spool.
    pub spool_oldest_ms: Option<u64>,
    /// Acceptance time (ms) of the oldest batch some device still waits an ack for.
    pub oldest_unacked_ms: Option<u64>,
    pub devices_unacked: usize,
}

/// The status service: sources, history, probes.
#[derive(Debug)]
pub struct Status {
    pub sources: Sources,
    pub started: Instant,
    pub started_ms: u64,
    history: Mutex<VecDeque<Sample>>,
    kafka: Mutex<Option<KafkaProbe>>,
    slow: Mutex<Slow>,
}

impl Status {
    #[must_use]
    pub fn new(sources: Sources) -> Arc<Self> {
        Arc::new(Self {
            sources,
            started: Instant::now(),
            started_ms: crate::link::now_ms(),
            history: Mutex::new(VecDeque::with_capacity(HISTORY_SECS + 1)),
            kafka: Mutex::new(None),
            slow: Mutex::new(Slow::default()),
        })
    }

    /// The gateway's metrics as Prometheus would scrape them now.
    #[must_use]
    pub fn scrape(&self) -> Scrape {
        Scrape::parse(&self.sources.prom.render())
    }

    /// A copy of the per-second history, oldest first.
    #[must_use]
    pub fn history(&self) -> Vec<Sample> {
        self.history.lock().iter().cloned().collect()
    }

    #[must_use]
    pub fn kafka_probe(&self) -> Option<KafkaProbe> {
        self.kafka.lock().clone()
    }

    #[must_use]
    pub fn slow(&self) -> Slow {
        self.slow.lock().clone()
    }

    /// Takes one sample (the sampler calls this every second; tests call it directly).
    pub fn sample(&self) {
        let connected = self.sources.presence.connected();
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!(m::CONNECTED_DEVICES).set(connected as f64);
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!(m::SPOOL_MAX_BYTES).set(self.sources.spool.max_bytes() as f64);
        let s = Sample::of(&self.scrape(), crate::link::now_ms(), connected);
        let mut h = self.history.lock();
        if h.len() >= HISTORY_SECS {
            h.pop_front();
        }
        h.push_back(s);
    }

    /// Refreshes the figures that need a walk over every device or a spool read.
    pub fn refresh_slow(&self) {
        let now = crate::link::now_ms();
        let devices = self.sources.sequencer.snapshot();
        let mut oldest: Option<u64> = None;
        let mut unacked = 0usize;
        for d in &devices {
            if let Some(t) = d.oldest_pending_ms {
                unacked += 1;
                oldest = Some(oldest.map_or(t, |o| o.min(t)));
            }
        }
        let spool_oldest = match self.sources.spool.read_from(0, 1) {
            Ok(v) => v.first().map(|(_, r)| r.received_ms),
            Err(e) => {
                warn!(error = %e, "status: reading the spool's oldest record failed");
                None
            }
        };
        let age = |t: Option<u64>| t.map_or(0.0, |t| secs(now.saturating_sub(t)));
        metrics::gauge!(m::OLDEST_UNACKED_AGE).set(age(oldest));
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!(m::DEVICES_UNACKED).set(unacked as f64);
        metrics::gauge!(m::SPOOL_OLDEST_AGE).set(age(spool_oldest));
        *self.slow.lock() = Slow {
            spool_oldest_ms: spool_oldest,
            oldest_unacked_ms: oldest,
            devices_unacked: unacked,
        };
    }

    /// Fetches Kafka's metadata once (blocking, up to `timeout`).
    pub fn probe_kafka(&self, timeout: Duration) {
        let Some((producer, topic)) = &self.sources.kafka else {
            return;
        };
        let res = producer
            .client()
            .fetch_metadata(Some(topic.as_str()), timeout);
        let probe = match res {
            Ok(md) => KafkaProbe {
                reachable: true,
                at_ms: crate::link::now_ms(),
                brokers: md.brokers().len(),
                error: None,
            },
            Err(e) => KafkaProbe {
                reachable: false,
                at_ms: crate::link::now_ms(),
                brokers: 0,
                error: Some(e.to_string()),
            },
        };
        metrics::gauge!(m::KAFKA_UP).set(if probe.reachable { 1.0 } else { 0.0 });
        let mut k = self.kafka.lock();
        match (k.as_ref().map(|p| p.reachable), probe.reachable) {
            (Some(true) | None, false) => {
                warn!(
                    error = probe.error.as_deref().unwrap_or(""),
                    "Kafka unreachable (metadata request failed)"
                );
            }
            (Some(false), true) => info!(brokers = probe.brokers, "Kafka reachable again"),
            _ => {}
        }
        *k = Some(probe);
    }

    /// Starts the sampler (1 s) and, with Kafka, the probe (every [`KAFKA_PROBE_EVERY`]).
    pub fn spawn(self: &Arc<Self>, cancel: &CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        let this = Arc::clone(self);
        let c = cancel.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n: u64 = 0;
            loop {
                tokio::select! {
                    () = c.cancelled() => break,
                    _ = tick.tick() => {}
                }
                this.sample();
                if n.is_multiple_of(5) {
                    let t = Arc::clone(&this);
                    let _ = tokio::task::spawn_blocking(move || t.refresh_slow()).await;
                }
                n += 1;
            }
        }));
        if self.sources.kafka.is_some() {
            let this = Arc::clone(self);
            let c = cancel.clone();
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(KAFKA_PROBE_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        () = c.cancelled() => break,
                        _ = tick.tick() => {}
                    }
                    let t = Arc::clone(&this);
                    let _ = tokio::task::spawn_blocking(move || {
                        t.probe_kafka(Duration::from_secs(3));
                    })
                    .await;
                }
            }));
        }
        tasks
    }
}

#[allow(clippy::cast_precision_loss)]
fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

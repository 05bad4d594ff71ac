//! Breakwater device agent: accepts readings, stores them durably, forwards them to the gateway
//! over MQTT and deletes them only when the gateway acks them.
//!
//! The modules follow a reading's path:
//!
//! * [`config`] — the TOML file, validated (every error with its key).
//! * [`ingest`] — local NDJSON over TCP; the library API is [`Agent::record`].
//! * [`buffer`] — the [`buffer::Buffer`] trait, the durable redb store and the in-memory one.
//! * [`sender`] — batches, credit, acks, resends, reconnect backoff, the MQTT link and TLS.
//! * [`metrics`] — metric names, gauges and the optional Prometheus endpoint (`/metrics`, and
//!   `/status` for `breakwater-agent status`).
//! * [`status`] — the link's last reported state (connection, last ack, credit).
//!
//! [`Agent`] wires them together for one device; the fleet simulator uses
//! [`sender::DeviceSender`] with [`buffer::MemoryBuffer`] directly (see ARCHITECTURE.md).

pub mod buffer;
pub mod config;
pub mod ingest;
pub mod metrics;
pub mod sender;
pub mod status;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use breakwater_protocol::limits::check_reading;
use breakwater_protocol::{Limits, Reading, ValidationError};
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::buffer::{
    AppendError, Appended, Buffer, BufferStats, OpenError, RedbBuffer, RedbOptions,
};
use crate::config::AgentConfig;
use crate::sender::tls::TlsError;
use crate::sender::{DeviceSender, EventSink, LinkOptions, SenderExit, SenderHandle};

/// Milliseconds since the Unix epoch.
#[must_use]
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Why the agent could not start.
#[derive(Debug, Error)]
pub enum StartError {
    #[error(transparent)]
    Buffer(#[from] OpenError),
    #[error("TLS configuration ({key}): {source}", key = .0.key(), source = .0)]
    Tls(#[from] TlsError),
    #[error("cannot listen on {addr} for {what}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("metrics endpoint: {0}")]
    Metrics(String),
    #[error("buffer open task failed: {0}")]
    Join(String),
}

/// Why a reading was not recorded. Nothing was stored.
#[derive(Debug, Error)]
pub enum RecordError {
    #[error("invalid reading: {0}")]
    Invalid(#[from] ValidationError),
    #[error(transparent)]
    Buffer(#[from] AppendError),
}

/// `flush` did not see everything acked in time. The readings stay buffered.
#[derive(Debug, Error)]
#[error("flush timed out: acked up to seq {acked}, waiting for {target}")]
pub struct FlushError {
    pub acked: u64,
    pub target: u64,
}

/// How long [`Agent::shutdown`] waits for the ingest, metrics and gauge tasks after the sender.
pub const TASKS_STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// What `shutdown` achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    pub sender: SenderExit,
    /// Readings left in the buffer for the next start.
    pub left_buffered: u64,
}

/// A running agent for one device.
#[derive(Debug)]
pub struct Agent {
    config: AgentConfig,
    buffer: Arc<dyn Buffer>,
    sender: SenderHandle,
    cancel: CancellationToken,
    input_cancel: CancellationToken,
    tracker: TaskTracker,
    ingest_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
}

impl Agent {
    /// Opens the redb buffer in `[buffer] dir` and starts everything the config enables.
    ///
    /// # Errors
    /// See [`StartError`].
    pub async fn start(config: AgentConfig) -> Result<Self, StartError> {
        let opts = RedbOptions {
            max_bytes: config.buffer.max_bytes,
            policy: config.buffer.when_full,
            commit_max_readings: config.buffer.commit_max_readings,
        };
        let dir = config.buffer.dir.clone();
        let buffer = tokio::task::spawn_blocking(move || RedbBuffer::open(&dir, opts))
            .await
            .map_err(|e| StartError::Join(e.to_string()))??;
        Self::start_with(config, Arc::new(buffer), None).await
    }

    /// Starts with a given buffer (e.g. [`buffer::MemoryBuffer`]) and optional event sink.
    ///
    /// # Errors
    /// See [`StartError`].
    pub async fn start_with(
        config: AgentConfig,
        buffer: Arc<dyn Buffer>,
        events: Option<EventSink>,
    ) -> Result<Self, StartError> {
        let link = Arc::new(LinkOptions::from_config(&config.gateway)?);
        let cancel = CancellationToken::new();
        let input_cancel = cancel.child_token();
        let tracker = TaskTracker::new();
        let link_status = status::LinkStatus::new();
        let events = Some(link_status.sink(events));

        let mut metrics_addr = None;
        if let Some(addr) = config.metrics.listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind {
                    what: "metrics",
                    addr,
                    source,
                })?;
            metrics_addr = listener.local_addr().ok();
            let handle = metrics::install_prometheus().map_err(StartError::Metrics)?;
            metrics::serve(
                listener,
                handle,
                metrics::StatusSource {
                    device: config.device_id.to_string(),
                    buffer: buffer.clone(),
                    link: link_status.clone(),
                },
                cancel.child_token(),
                &tracker,
            );
        }

        let mut ingest_addr = None;
        if config.ingest.enabled {
            let addr = config.ingest.listen;
            let listener = ingest::bind(addr)
                .await
                .map_err(|source| StartError::Bind {
                    what: "ingest",
                    addr,
                    source,
                })?;
            ingest_addr = listener.local_addr().ok();
            ingest::spawn(
                listener,
                buffer.clone(),
                ingest::IngestSettings {
                    max_line_bytes: config.ingest.max_line_bytes,
                    max_clients: config.ingest.max_clients,
                },
                input_cancel.clone(),
                &tracker,
            );
            tracing::info!(addr = ?ingest_addr, "ingest endpoint listening");
        }

        // Buffer gauges for whatever recorder is installed.
        {
            let buffer = buffer.clone();
            let cancel = cancel.child_token();
            tracker.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        _ = tick.tick() => metrics::update_buffer_gauges(&*buffer, now_ms()),
                    }
                }
            });
        }

        let mut sender = DeviceSender::new(
            config.device_id.clone(),
            buffer.clone(),
            link,
            config.sender.clone(),
        );
        if let Some(sink) = events {
            sender = sender.with_events(sink);
        }
        let sender = sender.spawn(cancel.child_token());
        let s = buffer.stats();
        tracing::info!(
            device = %config.device_id,
            epoch = s.epoch,
            buffered = s.readings,
            gateways = %config.gateway.addresses.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
            "agent started"
        );
        Ok(Self {
            config,
            buffer,
            sender,
            cancel,
            input_cancel,
            tracker,
            ingest_addr,
            metrics_addr,
        })
    }

    /// Validates and durably stores one reading; returns its seq.
    ///
    /// # Errors
    /// An invalid reading, or the buffer could not store it (nothing was stored).
    pub async fn record(&self, reading: Reading) -> Result<u64, RecordError> {
        Ok(self.record_many(vec![reading]).await?.first_seq)
    }

    /// Validates and durably stores readings (consecutive seqs). All or nothing.
    ///
    /// # Errors
    /// The first invalid reading, or the buffer could not store them.
    pub async fn record_many(&self, readings: Vec<Reading>) -> Result<Appended, RecordError> {
        for (i, r) in readings.iter().enumerate() {
            check_reading(i, &r.metric, &r.value, &Limits::DEFAULT)?;
        }
        Ok(self.buffer.append(readings).await?)
    }

    /// Sends what is buffered now and waits until everything recorded so far is acked.
    ///
    /// # Errors
    /// [`FlushError`] if that did not happen within `timeout`.
    pub async fn flush(&self, timeout: Duration) -> Result<u64, FlushError> {
        let target = self.buffer.stats().next_seq - 1;
        self.sender.flush_now();
        let mut acked = self.sender.watch_acked();
        let res = tokio::time::timeout(timeout, acked.wait_for(|a| *a >= target)).await;
        match res {
            Ok(Ok(_)) => Ok(target),
            _ => Err(FlushError {
                acked: self.sender.acked_upto(),
                target,
            }),
        }
    }

    /// The buffer's counters.
    #[must_use]
    pub fn stats(&self) -> BufferStats {
        self.buffer.stats()
    }

    /// The buffer (shared with the sender).
    #[must_use]
    pub fn buffer(&self) -> &Arc<dyn Buffer> {
        &self.buffer
    }

    /// The sender's control handle (cut, connection state, acked seq).
    #[must_use]
    pub fn sender(&self) -> &SenderHandle {
        &self.sender
    }

    /// Where the ingest endpoint listens (resolves port 0).
    #[must_use]
    pub fn ingest_addr(&self) -> Option<SocketAddr> {
        self.ingest_addr
    }

    /// Where the metrics endpoint listens.
    #[must_use]
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// A token that, cancelled while [`Agent::shutdown`] runs, skips the rest of the drain
    /// (what `main` does on a second SIGTERM or SIGINT).
    #[must_use]
    pub fn skip_drain_token(&self) -> CancellationToken {
        self.sender.skip_drain_token()
    }

    /// Stops in stages, all within one deadline of `[shutdown] drain_timeout` plus
    /// [`sender::CLOSE_GRACE`] plus [`TASKS_STOP_TIMEOUT`], whatever the gateway does:
    /// (1) stop taking input (ingest stops reading; replies for lines already appended are
    /// still written), (2) send what can be sent until the drain deadline (a link lost
    /// meanwhile is retried only until then), publish `Death`, disconnect, (3) stop the rest
    /// and close the buffer. What is not acked stays on disk; `left_buffered` says how much.
    pub async fn shutdown(self) -> ShutdownReport {
        self.input_cancel.cancel();
        let drain = self.config.shutdown.drain_timeout;
        let sender = self.sender.shutdown(drain).await;
        self.cancel.cancel();
        self.tracker.close();
        if tokio::time::timeout(TASKS_STOP_TIMEOUT, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("some agent tasks did not stop within {TASKS_STOP_TIMEOUT:?}");
        }
        // The buffer's own counters, not the sender's view: an ack the buffer could not apply
        // (storage failing) leaves its readings stored, and they are what the next start sends.
        let left_buffered = self.buffer.stats().readings;
        tracing::info!(
            acked_upto = sender.acked_upto,
            left_buffered,
            drained = left_buffered == 0,
            "agent stopped"
        );
        ShutdownReport {
            sender: SenderExit {
                drained: left_buffered == 0,
                ..sender
            },
            left_buffered,
        }
    }
}

/// `CARGO_PKG_VERSION (commit <12 hex digits>)`, or `(commit unknown)` when built without git
/// and without `BREAKWATER_GIT_COMMIT`; what `--version` prints (`build/git_version.rs`).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("BREAKWATER_GIT_COMMIT"),
    ")"
);

//! Wires the stages together and shuts them down in order.
//!
//! ```text
//! rumqttd ──link──> link consumer ──queue──> spool writer ──(spool mode: ack)
//!                     │  sequencer                │ committed     │ kafka mode, Kafka keeping
//!                     └─ status ─> events ──> Kafka events topic  │ up: past the spool, from
//!                                                 v               v memory
//!                                   Kafka drain ──> telemetry topic ──(kafka mode: ack)
//! acks ──> ack publisher ──link──> rumqttd ──> bw/v1/{device}/ack
//! ```
//!
//! Shutdown stages (each bounded by `[shutdown] deadline` overall): stop the link consumer
//! (nothing new is accepted), let the spool writer commit what was accepted, let the drain
//! deliver what it can until the deadline (the rest stays in the spool), flush the producers.
//! The embedded broker has no stop method and ends with the process. Every wait is bounded
//! (by what is left of the deadline, at least `STAGE_MIN` for the few that must run after it),
//! so Kafka unreachable, the link gone or a stuck stage cannot hold the stop past about
//! deadline + 5 s (tested with Kafka SIGSTOPped during the stop: `tests/shutdown.rs`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use breakwater_protocol::Limits;
use rdkafka::producer::{FutureProducer, Producer};
use thiserror::Error;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::ack::{Acker, Pressure};
use crate::admission::Admission;
use crate::config::{AckMode, Config};
use crate::http::Health;
use crate::kafka::sink::Drain;
use crate::link::LinkConsumer;
use crate::sequencer::Sequencer;
use crate::spool::writer::{Bypass, BypassTx, Deletes, Writer};
use crate::spool::{self, Spool, SpoolError};
use crate::stats as m;

/// The least a shutdown stage gets once the deadline has passed (the link consumer's join,
/// the drain's answer to its abort, the last deletes): the whole stop takes at most
/// `[shutdown] deadline` plus a few of these.
const STAGE_MIN: Duration = Duration::from_secs(1);

#[derive(Debug, Error)]
pub enum StartError {
    #[error("opening the spool: {0}")]
    Spool(#[from] Box<SpoolError>),
    #[error("creating the Kafka producer: {0}")]
    Producer(rdkafka::error::KafkaError),
    #[error("admission control: {0}")]
    Admission(String),
    #[error(transparent)]
    Broker(#[from] Box<crate::broker::BrokerError>),
    #[error("binding the metrics listener {addr}: {source}")]
    Http {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("starting a thread: {0}")]
    Thread(std::io::Error),
    #[error("TLS: {0}")]
    Tls(crate::tls::TlsError),
}

/// A running gateway.
pub struct Gateway {
    pub mqtt_addr: SocketAddr,
    pub mqtt_tls_addr: Option<SocketAddr>,
    pub metrics_addr: SocketAddr,
    pub admission: Arc<Admission>,
    tls: Option<Arc<crate::tls::TlsAcceptor>>,
    pub health: Arc<Health>,
    pub sequencer: Arc<Sequencer>,
    pub spool: Arc<Spool>,
    deadline: Duration,
    link_stop: Arc<AtomicBool>,
    link_thread: Option<std::thread::JoinHandle<()>>,
    /// The Sparkplug host ([`crate::sparkplug::host`]); stops with `link_stop`.
    sparkplug_thread: Option<std::thread::JoinHandle<()>>,
    writer: tokio::task::JoinHandle<()>,
    writer_done: Arc<AtomicBool>,
    deletes: Arc<Deletes>,
    drain: Option<tokio::task::JoinHandle<()>>,
    drain_stop: CancellationToken,
    drain_abort: CancellationToken,
    /// Cancelled by a second stop signal: [`Gateway::shutdown`] stops waiting for Kafka.
    hurry: CancellationToken,
    /// Persistent MQTT sessions on disk ([`crate::sessions`]), flushed at the end of a stop.
    session_store: Option<Arc<crate::sessions::DiskSessionStore>>,
    events: tokio::task::JoinHandle<()>,
    refused: tokio::task::JoinHandle<()>,
    ack_thread: Option<std::thread::JoinHandle<()>>,
    producer: Option<FutureProducer>,
    http_cancel: CancellationToken,
    http: tokio::task::JoinHandle<()>,
    /// The status sampler and Kafka probe ([`crate::status`]); end with `http_cancel`.
    status_tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("mqtt_addr", &self.mqtt_addr)
            .field("metrics_addr", &self.metrics_addr)
            .finish_non_exhaustive()
    }
}

/// `behind`: batches may have skipped the spool (ack mode `kafka`), so the previous process may
/// have acked past the spool's cursors.
fn seed(sequencer: &Sequencer, rec: &spool::Recovery, mode: AckMode, behind: bool) {
    for (device, (epoch, upto)) in spool::parse_devices(&rec.cursors) {
        let pending: Vec<(u64, u64)> = rec
            .pending
            .get(device.as_str())
            .filter(|(e, _)| *e == epoch)
            .map(|(_, p)| p.clone())
            .unwrap_or_default();
        match (mode, pending.first()) {
            (AckMode::Kafka, Some(&(first, _))) => {
                sequencer.seed(device, epoch, first - 1, &pending, behind);
            }
            _ => sequencer.seed(device, epoch, upto, &[], behind),
        }
    }
}

impl Gateway {
    /// Starts every stage. Call from a multi-thread tokio runtime.
    ///
    /// # Errors
    /// See [`StartError`]. A Kafka cluster that is down is *not* an error: the gateway runs on
    /// its spool and the drain retries.
    pub async fn start(cfg: Config) -> Result<Self, StartError> {
        let prom = crate::http::recorder();
        drop(prom);
        let mode = cfg.effective_ack_mode();
        let health = Arc::new(Health::default());

        // Spool and sequencer state.
        let dir = cfg.spool.dir.clone();
        let max_bytes = cfg.spool.max_bytes;
        let (spool, recovery) = tokio::task::spawn_blocking(move || Spool::open(&dir, max_bytes))
            .await
            .map_err(|e| StartError::Thread(std::io::Error::other(e)))?
            .map_err(Box::new)?;
        let sequencer = Arc::new(Sequencer::new());
        // Batches skip the spool only in ack mode `kafka`; a previous process may have done so
        // even when this one is configured not to, so seed as `behind` in that mode regardless.
        seed(&sequencer, &recovery, mode, mode == AckMode::Kafka);
        info!(
            dir = %cfg.spool.dir.display(),
            records = recovery.records,
            bytes = spool.bytes(),
            devices = recovery.cursors.len(),
            ack_mode = ?mode,
            "spool opened"
        );

        // Kafka.
        let producer: Option<FutureProducer> = match cfg.kafka.brokers() {
            None => {
                info!("no [kafka] brokers: running on the spool alone");
                None
            }
            Some(brokers) => {
                if cfg.kafka.create_topics {
                    match crate::kafka::admin::ensure_topics(
                        &cfg.kafka,
                        brokers,
                        Duration::from_secs(10),
                    )
                    .await
                    {
                        Ok(()) => {
                            info!(topic = %cfg.kafka.topic, events_topic = %cfg.kafka.events_topic, "Kafka topics ready");
                        }
                        Err(e) => {
                            warn!(error = %e, "could not create Kafka topics; continuing on the spool");
                        }
                    }
                }
                Some(
                    crate::kafka::config::producer_config(&cfg.kafka, brokers)
                        .create()
                        .map_err(StartError::Producer)?,
                )
            }
        };

        // Admission control.
        let (refused_tx, refused_rx) = mpsc::channel(1024);
        let admission = Admission::new(&cfg.admission, &cfg.auth, Some(refused_tx))
            .map_err(|e| StartError::Admission(e.to_string()))?;

        // TLS.
        let tls = match &cfg.mqtt.tls {
            None => None,
            Some(files) => Some(crate::tls::TlsAcceptor::load(files).map_err(StartError::Tls)?),
        };

        // Broker and links.
        // Standard clients' JSON topics: the policy lets each client publish on its own, the
        // telemetry link owns their PUBACKs.
        let json_topics = crate::standard::JsonTopics::new(&cfg.json_devices);
        admission.set_json_topics(json_topics.clone());
        let deferred = json_topics.filters();
        let standard_on = !deferred.is_empty();
        let mut rcfg = crate::broker::rumqttd_config(
            &cfg.mqtt,
            &cfg.standard,
            admission.max_connections(),
            Some(&admission),
            tls.as_ref(),
        )
        .map_err(Box::new)?;
        let listens: Vec<SocketAddr> = cfg.mqtt.listeners().iter().map(|l| l.1).collect();
        let sparkplug_filters = cfg.sparkplug.enabled.then(|| {
            // Before the listener accepts anyone.
            admission.set_sparkplug(crate::sparkplug::authz::Acl::new(&cfg.sparkplug));
            crate::sparkplug::host::Filters::new(&cfg.sparkplug.groups, &cfg.sparkplug.host_id)
        });
        // Persistent sessions on disk (vendor/PATCHES.md patch 23). After the policy is
        // complete: each restored subscription is decided again by it.
        let session_store = if cfg.mqtt.persist_sessions {
            let adm = Arc::clone(&admission);
            let allow: crate::sessions::Allow = Arc::new(move |client_id, filter, qos| {
                adm.authorize(&rumqttd::hooks::AuthzRequest {
                    client_id,
                    principal: client_id,
                    action: rumqttd::hooks::AuthzAction::Subscribe { filter, qos },
                })
            });
            let limits = crate::sessions::Limits {
                max_records: cfg.mqtt.max_saved_sessions + admission.max_connections(),
            };
            let dir = cfg.spool.dir.clone();
            let (store, _) = tokio::task::spawn_blocking(move || {
                crate::sessions::DiskSessionStore::open(&dir, limits, &allow)
            })
            .await
            .map_err(|e| StartError::Thread(std::io::Error::other(e)))?
            .map_err(StartError::Thread)?;
            rcfg.router.session_store = Some(store.clone());
            Some(store)
        } else {
            None
        };
        let links = tokio::task::spawn_blocking(move || {
            crate::broker::start(rcfg, &listens, sparkplug_filters.as_ref(), &deferred)
        })
        .await
        .map_err(|e| StartError::Thread(std::io::Error::other(e)))?
        .map_err(Box::new)?;
        let crate::broker::Links {
            telemetry: (ttx, trx),
            acks: (atx, arx),
            alerts,
            sparkplug: sparkplug_link,
        } = links;

        // Channels.
        let (queue_tx, queue_rx) = mpsc::channel(cfg.pipeline.queue_capacity);
        let depth = Arc::new(AtomicUsize::new(0));
        let (events_tx, events_rx) = mpsc::channel(cfg.pipeline.events_queue_capacity);
        let (acker, ack_rx) = Acker::channel(cfg.ack.queue_capacity);
        let presence = Arc::new(crate::status::Presence::new());
        let pressure = Arc::new(Pressure {
            queue_depth: depth.clone(),
            queue_capacity: cfg.pipeline.queue_capacity,
            spool: spool.clone(),
        });
        // The ack link's receiver is deliberately never read (see broker.rs). It must outlive
        // the link, and the broker lives as long as the process: leak it (one small struct).
        std::mem::forget(arx);
        let tracks = Arc::new(crate::standard::Tracks::default());
        let ack_thread = crate::ack::spawn_publisher(
            atx,
            ack_rx,
            pressure.clone(),
            cfg.ack.clone(),
            health.clone(),
            tracks.clone(),
        )
        .map_err(StartError::Thread)?;

        // Batches past the spool (ack mode `kafka`, see spool::writer).
        let (bypass_tx, bypass_rx) = if mode == AckMode::Kafka
            && producer.is_some()
            && cfg.kafka.direct_max_in_flight_records > 0
        {
            let shared = Arc::new(Bypass::default());
            let (tx, rx) = mpsc::unbounded_channel();
            (
                Some(BypassTx {
                    shared: shared.clone(),
                    tx,
                    max_in_flight: cfg.kafka.direct_max_in_flight_records,
                }),
                Some((shared, rx)),
            )
        } else {
            (None, None)
        };

        // Spool writer.
        let deletes = Arc::new(Deletes::default());
        let committed = Arc::new(Notify::new());
        let writer_done = Arc::new(AtomicBool::new(false));
        let writer = {
            let w = Writer {
                spool: spool.clone(),
                rx: queue_rx,
                depth: depth.clone(),
                deletes: deletes.clone(),
                sequencer: sequencer.clone(),
                acker: (mode == AckMode::Spool).then(|| acker.clone()),
                committed: committed.clone(),
                max_batches_per_commit: cfg.spool.max_batches_per_commit,
                bypass: bypass_tx,
                health: health.clone(),
            };
            let done = writer_done.clone();
            let health = health.clone();
            tokio::spawn(async move {
                w.run().await;
                done.store(true, Ordering::Release);
                health.alive.store(false, Ordering::Relaxed);
            })
        };

        // Kafka drain.
        let drain_stop = CancellationToken::new();
        let drain_abort = CancellationToken::new();
        let drain = producer.as_ref().map(|p| {
            let d = Drain {
                spool: spool.clone(),
                producer: p.clone(),
                topic: cfg.kafka.topic.clone(),
                encoding: cfg.kafka.encoding,
                deletes: deletes.clone(),
                committed: committed.clone(),
                sequencer: sequencer.clone(),
                acker: (mode == AckMode::Kafka).then(|| acker.clone()),
                max_in_flight: cfg.kafka.max_in_flight_records,
                writer_done: writer_done.clone(),
                bypass: bypass_rx,
            };
            tokio::spawn(d.run(drain_stop.clone(), drain_abort.clone()))
        });

        // Events.
        let refused = tokio::spawn(crate::events::forward_refused(
            refused_rx,
            events_tx.clone(),
        ));
        let events = tokio::spawn(crate::events::run(
            events_rx,
            producer.clone(),
            cfg.kafka.events_topic.clone(),
            Duration::from_secs(2),
            Some(presence.clone()),
        ));

        // Link consumer, Sparkplug host and alerts.
        let link_stop = Arc::new(AtomicBool::new(false));
        let sparkplug_thread = match sparkplug_link {
            None => None,
            Some((stx, srx)) => {
                let sp = &cfg.sparkplug;
                let mut sessions = crate::sparkplug::session::Sessions::new(
                    crate::sparkplug::session::SessionConfig {
                        rebirth_interval: sp.rebirth_interval,
                        max_edge_nodes: sp.max_edge_nodes,
                        max_devices: sp.max_devices_per_edge_node,
                        ..Default::default()
                    },
                );
                // The last BIRTHs before a restart: restored, not online (sparkplug::store).
                let (store, state) = crate::sparkplug::store::Store::open(&cfg.spool.dir);
                let restored = sessions.restore(state);
                metrics::gauge!(crate::stats::SPARKPLUG_RESTORED).set(restored.edge_nodes as f64);
                if restored.skipped > 0 {
                    metrics::counter!(crate::stats::SPARKPLUG_STORE_ERRORS, "reason" => "over_bounds")
                        .increment(restored.skipped as u64);
                    tracing::warn!(skipped = restored.skipped, "sparkplug session store: edge nodes or devices beyond the session bounds not restored");
                }
                tracing::info!(
                    edge_nodes = restored.edge_nodes,
                    devices = restored.devices,
                    "sparkplug sessions restored"
                );
                let host = crate::sparkplug::host::Host {
                    rx: srx,
                    tx: stx,
                    host_id: sp.host_id.clone(),
                    sessions,
                    store,
                    // The standard clients' ingest (epoch, seqs, PUBACK when durable), with
                    // the same device tracks as the ack publisher.
                    ingest: crate::standard::Ingest::new(
                        sequencer.clone(),
                        spool.clone(),
                        queue_tx.clone(),
                        depth.clone(),
                        tracks.clone(),
                        crate::standard::JsonTopics::default(),
                        Limits::DEFAULT,
                        cfg.standard.max_parked_publishes,
                    ),
                    events: events_tx.clone(),
                    stop: link_stop.clone(),
                };
                Some(
                    std::thread::Builder::new()
                        .name("bw-sparkplug".into())
                        .spawn(move || host.run())
                        .map_err(StartError::Thread)?,
                )
            }
        };
        let standard = standard_on.then(|| {
            Arc::new(crate::standard::Ingest::new(
                sequencer.clone(),
                spool.clone(),
                queue_tx.clone(),
                depth.clone(),
                tracks.clone(),
                json_topics,
                Limits::DEFAULT,
                cfg.standard.max_parked_publishes,
            ))
        });
        let consumer = LinkConsumer {
            rx: trx,
            tx: ttx,
            sequencer: sequencer.clone(),
            spool: spool.clone(),
            queue: queue_tx,
            depth: depth.clone(),
            acker,
            events: events_tx,
            admission: Some(admission.clone()),
            limits: Limits::DEFAULT,
            stop: link_stop.clone(),
            standard,
        };
        let link_thread = {
            let health = health.clone();
            let stop = link_stop.clone();
            std::thread::Builder::new()
                .name("bw-link".into())
                .spawn(move || {
                    consumer.run();
                    // /healthz and the systemd watchdog notice a dead pipeline.
                    health.alive.store(false, Ordering::Relaxed);
                    if !stop.load(Ordering::Relaxed) {
                        health.fail("the telemetry link to the embedded broker is lost");
                    }
                })
                .map_err(StartError::Thread)?
        };
        crate::link::spawn_alerts(alerts, link_stop.clone()).map_err(StartError::Thread)?;

        // HTTP.
        let http_cancel = CancellationToken::new();
        let refresh: Arc<dyn Fn() + Send + Sync> = {
            let spool = spool.clone();
            let depth = depth.clone();
            let sequencer = sequencer.clone();
            let tracks = tracks.clone();
            Arc::new(move || {
                #[allow(clippy::cast_precision_loss)]
                {
                    metrics::gauge!(m::STANDARD_PARKED_NOW).set(tracks.parked() as f64);
                    metrics::gauge!(m::SPOOL_BYTES).set(spool.bytes() as f64);
                    metrics::gauge!(m::SPOOL_RECORDS).set(spool.records() as f64);
                    metrics::gauge!(m::QUEUE_DEPTH).set(depth.load(Ordering::Relaxed) as f64);
                    metrics::gauge!(m::DEVICES).set(sequencer.devices() as f64);
                }
            })
        };
        let status = crate::status::Status::new(crate::status::Sources {
            sequencer: sequencer.clone(),
            spool: spool.clone(),
            admission: admission.clone(),
            presence,
            pressure,
            ack: cfg.ack.clone(),
            ack_mode: mode,
            kafka: producer.clone().map(|p| (p, cfg.kafka.topic.clone())),
            health: health.clone(),
            prom: crate::http::recorder(),
        });
        let status_tasks = status.spawn(&http_cancel);
        let (metrics_addr, http) = crate::http::serve(
            cfg.metrics.listen,
            health.clone(),
            refresh,
            Some(crate::status::api::router(status)),
            http_cancel.clone(),
        )
        .await
        .map_err(|source| StartError::Http {
            addr: cfg.metrics.listen,
            source,
        })?;

        if !health.fatal.is_cancelled() {
            health.alive.store(true, Ordering::Relaxed);
            health.ready.store(true, Ordering::Relaxed);
        }
        if cfg.open_on_network() {
            warn!("[auth] mode = \"open\" on a listener that is not loopback (allow_open_on_network = true): any client on the network can claim any device id");
        }
        let tls_listen = cfg.mqtt.tls.as_ref().map(|t| t.listen);
        info!(mqtt = ?cfg.mqtt.plaintext.then_some(cfg.mqtt.listen), mqtt_tls = ?tls_listen, auth = ?cfg.auth.mode, metrics = %metrics_addr, ack_mode = ?mode, kafka = producer.is_some(), "gateway ready");
        Ok(Self {
            mqtt_addr: cfg.mqtt.listen,
            mqtt_tls_addr: tls_listen,
            metrics_addr,
            admission,
            tls,
            health,
            sequencer,
            spool,
            deadline: cfg.shutdown.deadline,
            link_stop,
            link_thread: Some(link_thread),
            sparkplug_thread,
            writer,
            writer_done,
            deletes,
            drain,
            drain_stop,
            drain_abort,
            hurry: CancellationToken::new(),
            session_store,
            events,
            refused,
            ack_thread: Some(ack_thread),
            producer,
            http_cancel,
            http,
            status_tasks,
        })
    }

    /// Reloads on SIGHUP: the TLS certificates and the credentials file. Connections stay up;
    /// new handshakes and CONNECTs use the new files. A file that fails keeps the old one.
    pub fn reload(&self) {
        if let Some(tls) = &self.tls {
            match tls.reload() {
                Ok(()) => {
                    metrics::counter!(m::RELOADS, "what" => "tls", "result" => "ok").increment(1);
                    info!("TLS certificates reloaded");
                }
                Err(e) => {
                    metrics::counter!(m::RELOADS, "what" => "tls", "result" => "error")
                        .increment(1);
                    warn!(error = %e, "TLS certificates not reloaded: keeping the previous ones");
                }
            }
        }
        match self.admission.reload_credentials() {
            Ok(0) => {}
            Ok(devices) => {
                metrics::counter!(m::RELOADS, "what" => "credentials", "result" => "ok")
                    .increment(1);
                info!(devices, "credentials file reloaded");
            }
            Err(e) => {
                metrics::counter!(m::RELOADS, "what" => "credentials", "result" => "error")
                    .increment(1);
                warn!(error = %e, "credentials file not reloaded: keeping the previous one");
            }
        }
    }

    /// A handle that makes a running [`Gateway::shutdown`] stop waiting for Kafka (the
    /// operator's second SIGTERM or Ctrl-C): the Kafka drain is aborted, events and the
    /// producer are not flushed. Nothing acknowledged is lost: in ack mode `spool` it is in the
    /// spool already, and the spool commit (stage 2) still runs; undelivered records stay in
    /// the spool for the next start. What is lost is only time (and Kafka delivery of fleet
    /// events still queued, which are not acknowledged to anyone).
    #[must_use]
    pub fn hurry_handle(&self) -> CancellationToken {
        self.hurry.clone()
    }

    /// True while the pipeline threads run.
    #[must_use]
    pub fn is_alive(&self) -> bool {
        self.link_thread.as_ref().is_some_and(|t| !t.is_finished())
            && self.ack_thread.as_ref().is_some_and(|t| !t.is_finished())
            && !self.writer.is_finished()
    }

    /// Graceful shutdown in stages within `[shutdown] deadline`.
    pub async fn shutdown(mut self) {
        let start = Instant::now();
        let left = |d: Duration| d.saturating_sub(start.elapsed());
        self.health.ready.store(false, Ordering::Relaxed);
        info!(deadline = ?self.deadline, "shutting down: no longer accepting batches");

        // 1. Stop accepting. The link consumer checks its stop flag every 200 ms and never
        // blocks on the queue (try_send), so this is quick; the bound is the backstop (a
        // thread still running then is left behind; the process exits anyway).
        self.link_stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.sparkplug_thread.take() {
            // It holds a writer queue sender: the writer ends only after it.
            let wait = left(self.deadline).max(STAGE_MIN);
            if tokio::time::timeout(wait, tokio::task::spawn_blocking(move || t.join()))
                .await
                .is_err()
            {
                warn!(
                    ?wait,
                    "sparkplug host did not stop in time; going on without it"
                );
            }
        }
        if let Some(t) = self.link_thread.take() {
            let wait = left(self.deadline).max(STAGE_MIN);
            if tokio::time::timeout(wait, tokio::task::spawn_blocking(move || t.join()))
                .await
                .is_err()
            {
                warn!(
                    ?wait,
                    "link consumer did not stop in time; going on without it"
                );
            }
        }
        // 2. Commit what was accepted.
        if tokio::time::timeout(left(self.deadline), &mut self.writer)
            .await
            .is_err()
        {
            warn!("shutdown deadline passed while committing the spool");
        }
        self.writer_done.store(true, Ordering::Release);
        // 3. Deliver to Kafka until the deadline; the rest stays in the spool. Kafka
        // unreachable (tests/shutdown.rs pauses it): the drain is aborted at the deadline; it
        // answers the abort at once unless it sits in a spool read, hence the short bound.
        self.drain_stop.cancel();
        if let Some(mut d) = self.drain.take() {
            let delivered = tokio::select! {
                r = tokio::time::timeout(left(self.deadline), &mut d) => r.is_ok(),
                () = self.hurry.cancelled() => false,
            };
            if !delivered {
                info!(
                    hurried = self.hurry.is_cancelled(),
                    "shutdown deadline reached or second stop signal: undelivered records stay in the spool"
                );
                self.drain_abort.cancel();
                if tokio::time::timeout(STAGE_MIN, &mut d).await.is_err() {
                    warn!("Kafka drain did not answer the abort; stopped it");
                    d.abort();
                }
            }
        }
        // Deletes the drain reported after the writer stopped. Bounded: a hanging disk must
        // not hold the stop (uncommitted deletes only mean resends, deduplicated downstream).
        let late = self.deletes.take();
        if !late.is_empty() {
            let spool = self.spool.clone();
            let n = late.len();
            let commit = tokio::task::spawn_blocking(move || spool.commit(&[], &late));
            match tokio::time::timeout(left(self.deadline).max(STAGE_MIN), commit).await {
                Ok(Ok(Ok(()))) => info!(records = n, "committed the last deletes"),
                _ => warn!(
                    records = n,
                    "last deletes not committed: those records will be sent again after restart"
                ),
            }
        }
        self.refused.abort();
        tokio::select! {
            _ = tokio::time::timeout(left(self.deadline), &mut self.events) => {}
            () = self.hurry.cancelled() => {
                warn!("second stop signal: fleet events still queued are not delivered");
                self.events.abort();
            }
        }
        if let Some(p) = &self.producer {
            if !self.hurry.is_cancelled() {
                let p = p.clone();
                let t = left(self.deadline).max(Duration::from_millis(100));
                let flush = tokio::task::spawn_blocking(move || p.flush(t));
                tokio::select! {
                    _ = flush => {}
                    // The blocking flush is left behind; the process exits anyway.
                    () = self.hurry.cancelled() => {}
                }
            }
        }
        if let Some(t) = self.ack_thread.take() {
            let _ = tokio::time::timeout(
                left(self.deadline).max(Duration::from_millis(100)),
                tokio::task::spawn_blocking(move || t.join()),
            )
            .await;
        }
        if let Some(store) = self.session_store.take() {
            // The last coalescing window of session changes; bounded (a failing disk).
            let flushed = tokio::task::spawn_blocking(move || store.flush(STAGE_MIN))
                .await
                .unwrap_or(false);
            if !flushed {
                warn!("persistent sessions: the last changes were not written before the stop");
            }
        }
        self.http_cancel.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), &mut self.http).await;
        for t in &self.status_tasks {
            t.abort();
        }
        info!(
            elapsed = ?start.elapsed(),
            deadline = ?self.deadline,
            spool_records = self.spool.records(),
            "gateway stopped"
        );
    }
}

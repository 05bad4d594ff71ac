//! HTTP endpoints: `/metrics` (Prometheus text), `/healthz` (the link consumer and the spool
//! writer are alive), `/readyz` (start-up finished: the MQTT listener accepts and the spool is
//! open; false again once shutdown begins, and while the spool's disk fails), and whatever routes the caller adds (the status page
//! and `/api/v1/`, see [`crate::status`]). Kafka health is not part of readiness: the gateway
//! keeps accepting on its spool while Kafka is away; watch `breakwater_gateway_kafka_*`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

/// Health flags the service maintains.
#[derive(Debug, Default)]
pub struct Health {
    pub ready: AtomicBool,
    pub alive: AtomicBool,
    /// The spool's disk fails (see `spool`, "A failing disk"): not ready meanwhile.
    pub storage_failing: AtomicBool,
    /// Cancelled when a stage the gateway cannot run without has failed for good (a broker
    /// link lost): `main` then shuts down and exits non-zero, so systemd restarts it.
    pub fatal: CancellationToken,
    fatal_reason: std::sync::Mutex<Option<String>>,
}

impl Health {
    /// A stage failed for good: `/healthz` and `/readyz` fail from now on, it is logged, and
    /// [`Health::fatal`] is cancelled. The first reason is kept.
    pub fn fail(&self, reason: &str) {
        self.alive.store(false, Ordering::Relaxed);
        self.ready.store(false, Ordering::Relaxed);
        let mut r = self
            .fatal_reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if r.is_none() {
            tracing::error!(reason, "gateway failed: exiting so that it is restarted");
            *r = Some(reason.to_owned());
        }
        self.fatal.cancel();
    }

    /// Why [`Health::fail`] was called, if it was.
    #[must_use]
    pub fn failure(&self) -> Option<String> {
        self.fatal_reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once and returns its handle.
#[must_use]
pub fn recorder() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0,
                ])
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Full(
                            crate::stats::STAGE_SECONDS.to_owned(),
                        ),
                        crate::stats::STAGE_BUCKETS,
                    )
                })
                .map(PrometheusBuilder::build_recorder)
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            // Fails only if another recorder is installed: then this handle renders nothing,
            // which /metrics shows plainly.
            let _ = metrics::set_global_recorder(recorder);
            crate::stats::describe();
            crate::stats::zero();
            handle
        })
        .clone()
}

#[derive(Clone)]
struct AppState {
    prom: PrometheusHandle,
    health: Arc<Health>,
    refresh: Arc<dyn Fn() + Send + Sync>,
}

async fn metrics_page(State(s): State<AppState>) -> String {
    (s.refresh)();
    s.prom.render()
}

async fn healthz(State(s): State<AppState>) -> (StatusCode, &'static str) {
    if s.health.alive.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "pipeline stopped\n")
    }
}

async fn readyz(State(s): State<AppState>) -> (StatusCode, &'static str) {
    if s.health.storage_failing.load(Ordering::Relaxed) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: spool storage failing\n",
        )
    } else if s.health.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// Binds `addr` and serves until `cancel`. Returns the bound address (port 0 resolved).
///
/// # Errors
/// The address cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
    refresh: Arc<dyn Fn() + Send + Sync>,
    extra: Option<Router>,
    cancel: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let state = AppState {
        prom: recorder(),
        health,
        refresh,
    };
    let mut app = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state);
    if let Some(extra) = extra {
        app = app.merge(extra);
    }
    let task = tokio::spawn(async move {
        let res = axum::serve(listener, app)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await;
        if let Err(e) = res {
            tracing::error!(error = %e, "http server failed");
        }
    });
    Ok((local, task))
}

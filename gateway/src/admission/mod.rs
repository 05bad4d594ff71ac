//! Admission control at the MQTT front door: who may connect ([`auth`]), how fast ([`rate`]),
//! and telling operators when the fleet storms back ([`burst`]).
//!
//! Everything runs inside rumqttd's asynchronous authentication hook, which rumqttd awaits
//! between reading a CONNECT and registering the connection with its router (see
//! [`Admission::install`]). Per CONNECT, in this order:
//!
//! 1. identity ([`auth::Authenticator::check`]): the client id must be a valid device id; in
//!    `file` mode the user name must equal it and the password must match the stored salted
//!    SHA-256. Cheap, so it comes first: failed logins never take a rate token.
//! 2. pacing ([`rate::Pacer::admit`]): token bucket with burst, bounded waiting room, bounded
//!    wait. Admitted CONNECTs get their CONNACK once the hook returns.
//! 3. refusals are logged, counted (`breakwater_gateway_connects_refused_total{reason}`) and
//!    reported as [`Refused`] on the optional channel (`try_send`; a full channel is counted in
//!    `breakwater_gateway_refused_events_dropped_total`, never waited on).
//!
//! # What a refused device sees
//!
//! rumqttd 0.20 answers a "no" from the hook by closing the TCP connection **without a CONNACK**
//! (its `mqtt_connect` returns `InvalidAuth` and the connection task ends). MQTT 3.1.1 clients
//! report that as a connection closed by the broker / end of stream while waiting for CONNACK
//! (rumqttc: an I/O error from its event loop), not as CONNACK return code 4 or 5. There is no
//! retry hint on the wire in MQTT 3.1.1; the hint is the behaviour itself: the Breakwater agent
//! treats any failed connect as a reason to back off exponentially with jitter before the next
//! attempt, which spreads a refused storm out. Refusals for identity (`invalid_client_id`,
//! `username_mismatch`, `bad_credentials`) are permanent until the device is fixed; refusals
//! for load (`queue_full`, `wait_exceeded`) clear by themselves.
//!
//! # Metrics
//!
//! | name | kind | meaning |
//! |---|---|---|
//! | `breakwater_gateway_connects_admitted_total` | counter | CONNECTs the hook let through |
//! | `breakwater_gateway_connects_refused_total{reason}` | counter | by [`Refused::reason`] |
//! | `breakwater_gateway_auth_failures_total{reason}` | counter | identity refusals only |
//! | `breakwater_gateway_connect_wait_seconds` | histogram | time admitted CONNECTs were paced |
//! | `breakwater_gateway_connects_waiting` | gauge | CONNECTs waiting for their turn |
//! | `breakwater_gateway_connects_abandoned_total` | counter | waiting CONNECTs whose client closed the socket |
//! | `breakwater_gateway_refused_events_dropped_total` | counter | `Refused` not sent: channel full |
//! | `breakwater_gateway_connect_rate_per_second` | gauge | connects/s over the burst window |
//! | `breakwater_gateway_reconnect_burst_active` | gauge | 1 during a burst |
//! | `breakwater_gateway_reconnect_bursts_total` | counter | bursts started |

pub mod auth;
pub mod burst;
mod config;
pub mod probe;
pub mod rate;

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use metrics::{counter, gauge, histogram};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

pub use auth::{hash_secret, AuthFailure, Credentials, CredentialsError};
pub use burst::{BurstDetector, BurstEvent};
pub use config::{AdmissionConfig, AuthConfig, AuthMode};
pub use rate::PaceRefusal;

/// Ended bursts kept for the status page (`/api/v1/bursts`), newest first.
pub const BURSTS_KEPT: usize = 20;

/// One reconnect burst, for operators. Times are wall clock, ms since the Unix epoch.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BurstRecord {
    pub started_ms: u64,
    /// `None` while it goes on.
    pub ended_ms: Option<u64>,
    /// Highest windowed connects/s (so far).
    pub peak_rate: f64,
    /// Connects during the burst (so far), counting the window that set it off.
    pub connects: u64,
    pub duration_ms: u64,
}

/// Burst detection as operators see it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BurstsView {
    /// Connects/s over the burst window, now.
    pub rate: f64,
    /// The baseline connects/s a burst is measured against.
    pub baseline: f64,
    /// Bursts started since this process started.
    pub total: u64,
    pub current: Option<BurstRecord>,
    /// The last [`BURSTS_KEPT`] ended bursts, newest first.
    pub recent: Vec<BurstRecord>,
}

/// A refused CONNECT, for the fleet events topic.
#[derive(Debug, Clone)]
pub struct Refused {
    pub client_id: String,
    /// `invalid_client_id`, `username_mismatch`, `bad_credentials`, `queue_full` or
    /// `wait_exceeded`.
    pub reason: &'static str,
    /// Wall clock, ms since the Unix epoch.
    pub at_ms: u64,
}

/// Admission control could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    /// The configuration is invalid (what `validate` reports).
    #[error("invalid admission configuration: {}", join(.problems))]
    Config { problems: Vec<(String, String)> },
    /// `mode = "file"` and the credentials file cannot be read or has bad lines.
    #[error("credentials file: {}", .errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Credentials { errors: Vec<CredentialsError> },
}

fn join(problems: &[(String, String)]) -> String {
    problems
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Counters, also readable without a metrics recorder (tests, `/readyz` details).
#[derive(Debug, Default)]
struct Counters {
    admitted: AtomicU64,
    invalid_client_id: AtomicU64,
    username_mismatch: AtomicU64,
    bad_credentials: AtomicU64,
    queue_full: AtomicU64,
    wait_exceeded: AtomicU64,
    abandoned: AtomicU64,
    refused_events_dropped: AtomicU64,
    bursts: AtomicU64,
}

/// A snapshot of admission's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdmissionStats {
    pub admitted: u64,
    pub invalid_client_id: u64,
    pub username_mismatch: u64,
    pub bad_credentials: u64,
    pub queue_full: u64,
    pub wait_exceeded: u64,
    /// CONNECTs whose client closed the connection while they waited for their turn.
    pub abandoned: u64,
    /// Identity refusals (the first three).
    pub auth_failures: u64,
    pub refused_events_dropped: u64,
    pub bursts: u64,
    pub waiting: u64,
}

/// Admission control, shared by rumqttd's hook (one per CONNECT) and the link consumer.
#[derive(Debug)]
pub struct Admission {
    auth: auth::Authenticator,
    pacer: rate::Pacer,
    refused: Option<mpsc::Sender<Refused>>,
    burst: Mutex<BurstDetector>,
    /// Ended bursts, newest first, at most [`BURSTS_KEPT`].
    burst_log: Mutex<std::collections::VecDeque<BurstRecord>>,
    epoch: Instant,
    /// Wall clock (ms) at `epoch`: turns detector times into timestamps.
    epoch_wall_ms: u64,
    max_connections: usize,
    counters: Counters,
}

impl Admission {
    /// Builds admission control; in `file` mode reads the credentials file. Starts a small
    /// thread that ticks burst detection every second (it ends when the last `Arc` is dropped).
    ///
    /// # Errors
    /// [`AdmissionError::Config`] if `adm` or `auth` does not validate,
    /// [`AdmissionError::Credentials`] if the credentials file is unreadable or invalid.
    pub fn new(
        adm: &AdmissionConfig,
        auth: &AuthConfig,
        refused: Option<mpsc::Sender<Refused>>,
    ) -> Result<Arc<Self>, AdmissionError> {
        let this = Arc::new(Self::build(adm, auth, refused)?);
        let weak = Arc::downgrade(&this);
        // Burst detection needs a tick when connects stop (to see a burst end); a thread keeps
        // this independent of which runtime, if any, the caller is on.
        let spawned = std::thread::Builder::new()
            .name("bw-burst-tick".into())
            .spawn(move || burst_ticker(&weak));
        if let Err(e) = spawned {
            warn!(error = %e, "cannot start the burst detection ticker; bursts are only evaluated on connects");
        }
        Ok(this)
    }

    fn build(
        adm: &AdmissionConfig,
        auth: &AuthConfig,
        refused: Option<mpsc::Sender<Refused>>,
    ) -> Result<Self, AdmissionError> {
        let problems = adm.validate();
        if !problems.is_empty() {
            return Err(AdmissionError::Config { problems });
        }
        let authenticator = match (auth.mode, &auth.credentials_file) {
            (AuthMode::Open, None) => auth::Authenticator::Open,
            (AuthMode::File, Some(path)) => {
                let creds = Credentials::load(path)
                    .map_err(|errors| AdmissionError::Credentials { errors })?;
                if creds.is_empty() {
                    warn!(path = %path.display(), "credentials file lists no device: every CONNECT will be refused");
                }
                info!(path = %path.display(), devices = creds.len(), "device authentication from credentials file");
                auth::Authenticator::File(creds)
            }
            _ => {
                return Err(AdmissionError::Config {
                    problems: auth.validate(),
                })
            }
        };
        let (Some(rate), Some(burst)) = (
            NonZeroU32::new(adm.connect_rate_per_sec),
            NonZeroU32::new(adm.connect_burst),
        ) else {
            return Err(AdmissionError::Config {
                problems: adm.validate(),
            });
        };
        Ok(Self {
            auth: authenticator,
            pacer: rate::Pacer::new(
                rate,
                burst,
                adm.max_waiting,
                Duration::from_millis(adm.max_wait_ms),
            ),
            refused,
            burst: Mutex::new(BurstDetector::new(
                adm.burst_window_ms,
                adm.burst_baseline_secs,
                adm.burst_factor,
                adm.burst_min_rate,
            )),
            burst_log: Mutex::new(std::collections::VecDeque::with_capacity(BURSTS_KEPT)),
            epoch: Instant::now(),
            epoch_wall_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            max_connections: adm.max_connections,
            counters: Counters::default(),
        })
    }

    /// Installs the async external-auth hook on rumqttd's `ConnectionSettings` (paces and
    /// authenticates every CONNECT on that listener). rumqttd awaits it on the listener's own
    /// runtime after reading CONNECT; its `connection_timeout_ms` does not run meanwhile.
    pub fn install(self: &Arc<Self>, settings: &mut rumqttd::ConnectionSettings) {
        let this = Arc::clone(self);
        settings.set_auth_handler(
            move |client_id: String, username: String, password: String| {
                let this = Arc::clone(&this);
                async move { this.check(&client_id, &username, &password).await }
            },
        );
    }

    /// The rumqttd router `max_connections` value to use.
    #[must_use]
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// Called by the link consumer for each device connect/birth observed (feeds burst
    /// detection).
    pub fn observe_connect(&self) {
        let now = self.now_ms();
        self.burst
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .record(now);
    }

    /// Decides about one CONNECT: identity, then pacing. True admits it.
    ///
    /// Cancel safety: dropping the future before it completes admits nothing, leaves no waiter
    /// behind (see [`rate::Pacer::admit`]) and counts the CONNECT as abandoned if it was waiting
    /// for its turn.
    pub async fn check(&self, client_id: &str, username: &str, password: &str) -> bool {
        if let Err(failure) = self.auth.check(client_id, username, password) {
            let reason = failure.reason();
            match failure {
                AuthFailure::InvalidClientId => &self.counters.invalid_client_id,
                AuthFailure::UsernameMismatch => &self.counters.username_mismatch,
                AuthFailure::BadCredentials => &self.counters.bad_credentials,
            }
            .fetch_add(1, Ordering::Relaxed);
            counter!("breakwater_gateway_auth_failures_total", "reason" => reason).increment(1);
            warn!(client_id, reason, "CONNECT refused: authentication failed");
            self.refuse(client_id, reason);
            return false;
        }
        let waiting = Waiting::new(self);
        let paced = self.pacer.admit().await;
        waiting.done();
        match paced {
            Ok(waited) => {
                self.counters.admitted.fetch_add(1, Ordering::Relaxed);
                counter!("breakwater_gateway_connects_admitted_total").increment(1);
                histogram!("breakwater_gateway_connect_wait_seconds").record(waited.as_secs_f64());
                debug!(
                    client_id,
                    waited_ms = waited.as_millis(),
                    "CONNECT admitted"
                );
                true
            }
            Err(refusal) => {
                match refusal {
                    PaceRefusal::QueueFull => &self.counters.queue_full,
                    PaceRefusal::WaitExceeded => &self.counters.wait_exceeded,
                }
                .fetch_add(1, Ordering::Relaxed);
                let reason = refusal.reason();
                // Under a storm this can fire thousands of times a second: debug per client, the
                // counters and the burst log line carry the picture.
                debug!(client_id, reason, "CONNECT refused: connect rate limit");
                self.refuse(client_id, reason);
                false
            }
        }
    }

    fn refuse(&self, client_id: &str, reason: &'static str) {
        counter!("breakwater_gateway_connects_refused_total", "reason" => reason).increment(1);
        let Some(tx) = &self.refused else {
            return;
        };
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let ev = Refused {
            client_id: client_id.to_string(),
            reason,
            at_ms,
        };
        if tx.try_send(ev).is_err() {
            self.counters
                .refused_events_dropped
                .fetch_add(1, Ordering::Relaxed);
            counter!("breakwater_gateway_refused_events_dropped_total").increment(1);
        }
    }

    /// Counters so far.
    #[must_use]
    pub fn stats(&self) -> AdmissionStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        AdmissionStats {
            admitted: get(&c.admitted),
            invalid_client_id: get(&c.invalid_client_id),
            username_mismatch: get(&c.username_mismatch),
            bad_credentials: get(&c.bad_credentials),
            queue_full: get(&c.queue_full),
            wait_exceeded: get(&c.wait_exceeded),
            abandoned: get(&c.abandoned),
            auth_failures: get(&c.invalid_client_id)
                + get(&c.username_mismatch)
                + get(&c.bad_credentials),
            refused_events_dropped: get(&c.refused_events_dropped),
            bursts: get(&c.bursts),
            waiting: self.pacer.waiting() as u64,
        }
    }

    /// Burst detection now: rate, baseline, the current burst and the last ended ones.
    #[must_use]
    pub fn bursts(&self) -> BurstsView {
        let now = self.now_ms();
        let (rate, baseline, current) = {
            let d = self
                .burst
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            (d.rate(now), d.baseline(), d.current())
        };
        let current = current.map(|(started, peak_rate, connects)| BurstRecord {
            started_ms: self.epoch_wall_ms + started,
            ended_ms: None,
            peak_rate,
            connects,
            duration_ms: now.saturating_sub(started),
        });
        let recent = self
            .burst_log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .cloned()
            .collect();
        BurstsView {
            rate,
            baseline,
            total: self.counters.bursts.load(Ordering::Relaxed),
            current,
            recent,
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Evaluates burst detection now: gauges, and the start/end log lines.
    pub fn tick_burst(&self) {
        let now = self.now_ms();
        let (event, rate, active, current) = {
            let mut d = self
                .burst
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let ev = d.tick(now);
            (ev, d.rate(now), d.active(), d.current())
        };
        gauge!("breakwater_gateway_connect_rate_per_second").set(rate);
        gauge!("breakwater_gateway_reconnect_burst_active").set(if active { 1.0 } else { 0.0 });
        match event {
            Some(BurstEvent::Started { rate, baseline, .. }) => {
                self.counters.bursts.fetch_add(1, Ordering::Relaxed);
                counter!("breakwater_gateway_reconnect_bursts_total").increment(1);
                let connects = current.map_or(0, |c| c.2);
                warn!(
                    rate = format_args!("{rate:.0}"),
                    peak_rate = format_args!("{rate:.0}"),
                    connects,
                    baseline = format_args!("{baseline:.1}"),
                    "reconnect burst started: connects/s far above baseline"
                );
            }
            Some(BurstEvent::Ended {
                at_ms,
                peak_rate,
                connects,
                duration_ms,
            }) => {
                let mut log = self
                    .burst_log
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if log.len() >= BURSTS_KEPT {
                    log.pop_back();
                }
                log.push_front(BurstRecord {
                    started_ms: self.epoch_wall_ms + at_ms.saturating_sub(duration_ms),
                    ended_ms: Some(self.epoch_wall_ms + at_ms),
                    peak_rate,
                    connects,
                    duration_ms,
                });
                drop(log);
                let stats = self.stats();
                info!(
                    peak_rate = format_args!("{peak_rate:.0}"),
                    connects,
                    duration_s =
                        format_args!("{:.1}", Duration::from_millis(duration_ms).as_secs_f64()),
                    refused_queue_full = stats.queue_full,
                    refused_wait_exceeded = stats.wait_exceeded,
                    "reconnect burst ended"
                );
            }
            None => {}
        }
    }
}

/// One CONNECT in the pacer: keeps the `connects_waiting` gauge right and counts a CONNECT whose
/// check was dropped before it finished (rumqttd drops the hook when the client closes its socket
/// while waiting, `vendor/PATCHES.md` patch 5) as abandoned.
struct Waiting<'a> {
    admission: &'a Admission,
    done: bool,
}

impl<'a> Waiting<'a> {
    fn new(admission: &'a Admission) -> Self {
        gauge!("breakwater_gateway_connects_waiting").increment(1.0);
        Self {
            admission,
            done: false,
        }
    }

    fn done(mut self) {
        self.done = true;
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        gauge!("breakwater_gateway_connects_waiting").decrement(1.0);
        if !self.done {
            self.admission
                .counters
                .abandoned
                .fetch_add(1, Ordering::Relaxed);
            counter!("breakwater_gateway_connects_abandoned_total").increment(1);
        }
    }
}

fn burst_ticker(weak: &Weak<Admission>) {
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let Some(adm) = weak.upgrade() else {
            return;
        };
        adm.tick_burst();
    }
}

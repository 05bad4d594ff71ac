//! Admission control at the MQTT front door: who may connect ([`auth`]), how fast ([`rate`]),
//! and telling operators when the fleet storms back ([`burst`]).
//!
//! Everything runs inside the hooks the vendored rumqttd offers (vendor/PATCHES.md, patch 14),
//! installed on each listener by [`Admission::install`]:
//!
//! * **transport**, per accepted socket, on its own task: on a connection from a trusted load
//!   balancer the PROXY header naming the real client ([`proxy`]), then the per-address
//!   connection cap ([`peer`]), then the TLS handshake on the TLS listener ([`crate::tls`]),
//!   whose verified client certificate names the peer.
//! * **connect**, per CONNECT, awaited between reading it and registering the connection with
//!   the router, in this order:
//!   1. identity ([`auth::Authenticator::check`]): not a reserved id (the gateway's own links),
//!      a valid device id; in `file` mode user name = client id and the password matches the
//!      stored salted SHA-256; with a client certificate its CN = client id (`mtls` mode requires
//!      one). Cheap, so it comes first: failed logins never take a rate token.
//!   2. the will ([`authz::Policy`]): only on the device's own status topic, not retained.
//!   3. the source address's own budget ([`peer::Peers::begin_connect`]): waiting slots and a
//!      token bucket, so one host spends its own budget and not the fleet's.
//!   4. global pacing ([`rate::Pacer::admit`]): token bucket with burst, bounded waiting room,
//!      bounded wait. Admitted CONNECTs get their CONNACK once the hook returns.
//! * **authorize**, per PUBLISH and SUBSCRIBE filter ([`authz::Policy::check`]).
//!
//! Refusals are logged (rate-limited), counted (`breakwater_gateway_connects_refused_total{reason}`)
//! and reported as [`Refused`] on the optional channel (`try_send`; a full channel is counted in
//! `breakwater_gateway_refused_events_dropped_total`, never waited on).
//!
//! # What a refused device sees
//!
//! A CONNACK with a return code, then the connection closes (vendor/PATCHES.md, patch 17):
//!
//! | reasons | CONNACK code |
//! |---|---|
//! | `invalid_client_id`, `reserved_client_id` | 2, identifier rejected |
//! | `username_mismatch`, `bad_credentials` | 4, bad user name or password |
//! | `certificate_required`, `certificate_mismatch`, `will_denied` | 5, not authorized |
//! | `queue_full`, `wait_exceeded`, `address_waiting`, `address_rate` | 3, server unavailable |
//!
//! A connection over its address's cap (`address_connections`) is closed before CONNECT, with
//! no CONNACK (the client has not asked anything yet). MQTT 3.1.1 has no retry hint; the
//! Breakwater agent backs off exponentially with jitter after any failed connect, which spreads
//! a refused storm out. Identity refusals are permanent until the device is fixed; load
//! refusals clear by themselves.
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
pub mod authz;
pub mod burst;
mod config;
pub mod peer;
pub mod probe;
pub mod proxy;
pub mod rate;
mod transport;

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use metrics::{counter, gauge, histogram};
use rumqttd::hooks::{AuthzAction, AuthzRequest, ConnectRefusal, ConnectRequest, Principal};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::stats as m;
use crate::tls::TlsAcceptor;

pub use auth::{hash_secret, AuthFailure, Credentials, CredentialsError, RESERVED_PREFIX};
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
    /// An [`AuthFailure::reason`], `will_denied`, `queue_full`, `wait_exceeded`,
    /// `address_waiting` or `address_rate`.
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
    reserved_client_id: AtomicU64,
    username_mismatch: AtomicU64,
    bad_credentials: AtomicU64,
    certificate_required: AtomicU64,
    certificate_mismatch: AtomicU64,
    will_denied: AtomicU64,
    queue_full: AtomicU64,
    wait_exceeded: AtomicU64,
    address_waiting: AtomicU64,
    address_rate: AtomicU64,
    address_connections: AtomicU64,
    abandoned: AtomicU64,
    refused_events_dropped: AtomicU64,
    bursts: AtomicU64,
}

/// A snapshot of admission's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdmissionStats {
    pub admitted: u64,
    pub invalid_client_id: u64,
    pub reserved_client_id: u64,
    pub username_mismatch: u64,
    pub bad_credentials: u64,
    pub certificate_required: u64,
    pub certificate_mismatch: u64,
    /// CONNECTs whose will the topic policy refused.
    pub will_denied: u64,
    pub queue_full: u64,
    pub wait_exceeded: u64,
    /// CONNECTs refused because their address had too many waiting.
    pub address_waiting: u64,
    /// CONNECTs refused because their address used up its connect budget.
    pub address_rate: u64,
    /// Connections closed before CONNECT: their address held its connection cap.
    pub address_connections: u64,
    /// CONNECTs whose client closed the connection while they waited for their turn.
    pub abandoned: u64,
    /// Identity refusals (every [`AuthFailure`]).
    pub auth_failures: u64,
    pub refused_events_dropped: u64,
    pub bursts: u64,
    pub waiting: u64,
}

/// Admission control, shared by rumqttd's hook (one per CONNECT) and the link consumer.
#[derive(Debug)]
pub struct Admission {
    /// Replaced on SIGHUP ([`Admission::reload_credentials`]).
    auth: RwLock<Arc<auth::Authenticator>>,
    auth_config: AuthConfig,
    policy: authz::Policy,
    peers: Arc<peer::Peers>,
    /// `[admission] proxy_protocol_from`: balancers whose connections start with a PROXY
    /// header ([`proxy`]).
    proxies: std::collections::HashSet<IpAddr>,
    log: Mutex<LogWindow>,
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
        let authenticator = authenticator(auth)?;
        let (Some(rate), Some(burst)) = (
            NonZeroU32::new(adm.connect_rate_per_sec),
            NonZeroU32::new(adm.connect_burst),
        ) else {
            return Err(AdmissionError::Config {
                problems: adm.validate(),
            });
        };
        Ok(Self {
            auth: RwLock::new(Arc::new(authenticator)),
            auth_config: auth.clone(),
            policy: authz::Policy::new(),
            peers: peer::Peers::new(peer::PeerLimits {
                max_connections: adm.per_address_max_connections,
                max_waiting: adm.per_address_max_waiting,
                rate_per_sec: f64::from(adm.per_address_connect_rate_per_sec),
                burst: f64::from(adm.per_address_connect_burst),
            }),
            proxies: adm.proxy_protocol_from.iter().copied().collect(),
            log: Mutex::new(LogWindow::default()),
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

    /// Lets clients publish on their own `[[json_devices]]` topics ([`authz::Policy`]); call
    /// before the listener starts.
    pub fn set_json_topics(&self, topics: crate::standard::JsonTopics) {
        self.policy.set_json_topics(topics);
    }

    /// Installs the transport, connect and authorization hooks on one listener's rumqttd
    /// `ConnectionSettings` (vendor/PATCHES.md, patch 14); `tls` makes it the TLS listener.
    /// rumqttd awaits the connect hook on the listener's own runtime after reading CONNECT.
    pub fn install(
        self: &Arc<Self>,
        settings: &mut rumqttd::ConnectionSettings,
        tls: Option<Arc<TlsAcceptor>>,
    ) {
        let this = Arc::clone(self);
        settings.set_transport_handler(move |tcp, addr| {
            let this = Arc::clone(&this);
            let tls = tls.clone();
            async move { this.transport(tcp, addr, tls.as_deref()).await }
        });
        let this = Arc::clone(self);
        settings.set_connect_handler(move |request: ConnectRequest| {
            let this = Arc::clone(&this);
            async move { this.connect(&request).await }
        });
        let this = Arc::clone(self);
        settings.set_authz_handler(move |request: &AuthzRequest<'_>| this.authorize(request));
    }

    /// Reads the credentials file again (`file` mode; SIGHUP). New CONNECTs are checked against
    /// it; connected devices are not touched. On an error the previous file stays in force.
    ///
    /// # Errors
    /// The file is unreadable or has bad lines.
    pub fn reload_credentials(&self) -> Result<usize, AdmissionError> {
        if self.auth_config.mode != AuthMode::File {
            return Ok(0);
        }
        let fresh = authenticator(&self.auth_config)?;
        let n = match &fresh {
            auth::Authenticator::File(c) => c.len(),
            _ => 0,
        };
        *self
            .auth
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(fresh);
        Ok(n)
    }

    fn authenticator(&self) -> Arc<auth::Authenticator> {
        self.auth
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Turns on the Sparkplug B rules of the topic policy (`[sparkplug] enabled`); call before the
    /// listeners accept clients.
    pub fn set_sparkplug(&self, acl: crate::sparkplug::authz::Acl) {
        self.policy.set_sparkplug(acl);
    }

    /// The topic policy's decision about one action of a connected client (counted and logged
    /// when denied).
    #[must_use]
    pub fn authorize(&self, request: &AuthzRequest<'_>) -> bool {
        let action = match request.action {
            AuthzAction::Publish { topic, qos, retain } => {
                authz::Action::Publish { topic, qos, retain }
            }
            AuthzAction::Subscribe { filter, .. } => authz::Action::Subscribe { filter },
        };
        self.policy
            .check(request.client_id, request.principal, action)
    }

    /// The per-address table (tests, status).
    #[must_use]
    pub fn peers(&self) -> &peer::Peers {
        &self.peers
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

    /// Decides about one CONNECT with a user name and password and nothing else known (no
    /// peer address, no certificate, no will). True admits it.
    pub async fn check(&self, client_id: &str, username: &str, password: &str) -> bool {
        let request = ConnectRequest {
            client_id: client_id.to_owned(),
            username: Some(username.to_owned()),
            password: Some(password.to_owned()),
            clean_session: true,
            keep_alive: 30,
            will: None,
            peer: None,
            transport_identity: None,
        };
        self.connect(&request).await.is_ok()
    }

    /// Decides about one CONNECT: identity, will, the address's budget, then pacing. `Ok`
    /// admits it (under its client id).
    ///
    /// # Errors
    /// The refusal, which rumqttd answers with its CONNACK code.
    ///
    /// Cancel safety: dropping the future before it completes admits nothing, leaves no waiter
    /// behind (see [`rate::Pacer::admit`]) and counts the CONNECT as abandoned if it was waiting
    /// for its turn.
    pub async fn connect(
        &self,
        request: &ConnectRequest,
    ) -> Result<Option<Principal>, ConnectRefusal> {
        let client_id = request.client_id.as_str();
        let checked = self.authenticator().check(
            client_id,
            request.username.as_deref().unwrap_or(""),
            request.password.as_deref().unwrap_or(""),
            request.transport_identity.as_deref(),
        );
        if let Err(failure) = checked {
            let c = &self.counters;
            let (counter, code) = match failure {
                AuthFailure::InvalidClientId => {
                    (&c.invalid_client_id, ConnectRefusal::IdentifierRejected)
                }
                AuthFailure::ReservedClientId => {
                    (&c.reserved_client_id, ConnectRefusal::IdentifierRejected)
                }
                AuthFailure::UsernameMismatch => {
                    (&c.username_mismatch, ConnectRefusal::BadUserNamePassword)
                }
                AuthFailure::BadCredentials => {
                    (&c.bad_credentials, ConnectRefusal::BadUserNamePassword)
                }
                AuthFailure::CertificateRequired => {
                    (&c.certificate_required, ConnectRefusal::NotAuthorized)
                }
                AuthFailure::CertificateMismatch => {
                    (&c.certificate_mismatch, ConnectRefusal::NotAuthorized)
                }
            };
            counter.fetch_add(1, Ordering::Relaxed);
            let reason = failure.reason();
            counter!("breakwater_gateway_auth_failures_total", "reason" => reason).increment(1);
            self.log_refusal(request, reason, "CONNECT refused: authentication failed");
            self.refuse(client_id, reason);
            return Err(code);
        }
        if let Some(will) = &request.will {
            let action = authz::Action::Will {
                topic: &will.topic,
                qos: will.qos,
                retain: will.retain,
            };
            if !self.policy.check(client_id, client_id, action) {
                self.counters.will_denied.fetch_add(1, Ordering::Relaxed);
                self.refuse(client_id, "will_denied");
                return Err(ConnectRefusal::NotAuthorized);
            }
        }
        let _address_slot = match request.peer.map(|p| self.peers.begin_connect(p.ip())) {
            Some(Err(refusal)) => {
                match refusal {
                    peer::PeerRefusal::Waiting => &self.counters.address_waiting,
                    peer::PeerRefusal::Rate => &self.counters.address_rate,
                }
                .fetch_add(1, Ordering::Relaxed);
                let reason = refusal.reason();
                self.log_refusal(
                    request,
                    reason,
                    "CONNECT refused: its address is over its budget",
                );
                self.refuse(client_id, reason);
                return Err(ConnectRefusal::ServerUnavailable);
            }
            Some(Ok(slot)) => Some(slot),
            None => None,
        };
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
                Ok(None)
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
                Err(ConnectRefusal::ServerUnavailable)
            }
        }
    }

    /// The transport hook: the address's connection cap, then TLS on the TLS listener.
    async fn transport(
        &self,
        tcp: tokio::net::TcpStream,
        addr: SocketAddr,
        tls: Option<&TlsAcceptor>,
    ) -> std::io::Result<rumqttd::hooks::Transport> {
        let mut tcp = tcp;
        let tcp_peer = addr;
        let addr = if self.proxies.contains(&addr.ip()) {
            match proxy::read_header(&mut tcp).await {
                Ok(client) => client.unwrap_or(addr),
                Err(e) => {
                    counter!(m::PROXY_PROTOCOL_REFUSED, "reason" => e.reason()).increment(1);
                    if let Some(unlogged) = self.log_window() {
                        warn!(peer = %addr, error = %e, unlogged_refusals = unlogged,
                            "connection from a PROXY protocol balancer ([admission] proxy_protocol_from) closed: no valid PROXY header");
                    }
                    return Err(std::io::Error::other(e));
                }
            }
        } else {
            addr
        };
        let proxied = (addr != tcp_peer).then_some(addr);
        let Some(guard) = self.peers.open(addr.ip()) else {
            self.counters
                .address_connections
                .fetch_add(1, Ordering::Relaxed);
            counter!(m::ADDRESS_CONNECTIONS_REFUSED).increment(1);
            counter!("breakwater_gateway_connects_refused_total", "reason" => "address_connections")
                .increment(1);
            if let Some(unlogged) = self.log_window() {
                warn!(peer = %addr, unlogged_refusals = unlogged, "connection closed: its address holds its connection cap ([admission] per_address_max_connections)");
            }
            return Err(std::io::Error::other("address holds its connection cap"));
        };
        let Some(tls) = tls else {
            return Ok(transport::tracked(tcp, guard, None, proxied));
        };
        match tls.accept(tcp).await {
            Ok((stream, cn)) => Ok(transport::tracked(stream, guard, cn, proxied)),
            Err(e) => {
                let reason = if e.kind() == std::io::ErrorKind::TimedOut {
                    "timeout"
                } else {
                    "handshake"
                };
                counter!(m::TLS_HANDSHAKE_FAILURES, "reason" => reason).increment(1);
                debug!(peer = %addr, error = %e, "TLS handshake failed");
                Err(e)
            }
        }
    }

    /// `Some(refusals not logged since the last line)` if a refusal may be logged now.
    fn log_window(&self) -> Option<u64> {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .allow()
    }

    fn log_refusal(&self, request: &ConnectRequest, reason: &'static str, what: &'static str) {
        if let Some(unlogged) = self.log_window() {
            let peer = request.peer.map(|p| p.to_string()).unwrap_or_default();
            warn!(
                client_id = request.client_id,
                peer,
                reason,
                unlogged_refusals = unlogged,
                "{what}"
            );
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
            reserved_client_id: get(&c.reserved_client_id),
            username_mismatch: get(&c.username_mismatch),
            bad_credentials: get(&c.bad_credentials),
            certificate_required: get(&c.certificate_required),
            certificate_mismatch: get(&c.certificate_mismatch),
            will_denied: get(&c.will_denied),
            queue_full: get(&c.queue_full),
            wait_exceeded: get(&c.wait_exceeded),
            address_waiting: get(&c.address_waiting),
            address_rate: get(&c.address_rate),
            address_connections: get(&c.address_connections),
            abandoned: get(&c.abandoned),
            auth_failures: get(&c.invalid_client_id)
                + get(&c.reserved_client_id)
                + get(&c.username_mismatch)
                + get(&c.bad_credentials)
                + get(&c.certificate_required)
                + get(&c.certificate_mismatch),
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
        adm.peers.sweep();
    }
}

/// The authenticator `auth` configures; reads the credentials file in `file` mode.
fn authenticator(auth: &AuthConfig) -> Result<auth::Authenticator, AdmissionError> {
    match (auth.mode, &auth.credentials_file) {
        (AuthMode::Open, None) => Ok(auth::Authenticator::Open),
        (AuthMode::Mtls, None) => Ok(auth::Authenticator::Mtls),
        (AuthMode::File, Some(path)) => {
            let creds =
                Credentials::load(path).map_err(|errors| AdmissionError::Credentials { errors })?;
            if creds.is_empty() {
                warn!(path = %path.display(), "credentials file lists no device: every CONNECT will be refused");
            }
            info!(path = %path.display(), devices = creds.len(), "device authentication from credentials file");
            Ok(auth::Authenticator::File(creds))
        }
        _ => Err(AdmissionError::Config {
            problems: auth.validate(),
        }),
    }
}

/// At most `per_second` lines a second ([`LogWindow::PER_SECOND`] by default) for something a
/// client can repeat at will; the next line says how many were not logged in between.
#[derive(Debug)]
pub(crate) struct LogWindow {
    start: Instant,
    per_second: u32,
    logged: u32,
    suppressed: u64,
}

impl Default for LogWindow {
    fn default() -> Self {
        Self::new(Self::PER_SECOND)
    }
}

impl LogWindow {
    const PER_SECOND: u32 = 5;

    pub(crate) fn new(per_second: u32) -> Self {
        Self {
            start: Instant::now(),
            per_second,
            logged: 0,
            suppressed: 0,
        }
    }

    /// `Some(suppressed so far)` if this one may be logged.
    pub(crate) fn allow(&mut self) -> Option<u64> {
        if self.start.elapsed() >= Duration::from_secs(1) {
            self.start = Instant::now();
            self.logged = 0;
        }
        if self.logged < self.per_second {
            self.logged += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_window_lets_a_few_lines_through_and_counts_the_rest() {
        let mut w = LogWindow::default();
        let allowed: Vec<_> = (0..8).map(|_| w.allow()).collect();
        assert_eq!(allowed.iter().filter(|a| a.is_some()).count(), 5);
        w.start -= Duration::from_secs(2);
        assert_eq!(w.allow(), Some(3), "the next line reports the 3 not logged");
    }
}

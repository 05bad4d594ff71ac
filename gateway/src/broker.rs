//! The embedded MQTT broker (rumqttd 0.20) and the gateway's local links into it.
//!
//! Threads: rumqttd runs one router thread, one thread (a current-thread tokio runtime) per
//! listener, and a timer thread that pushes alerts every second; `Broker::start` blocks, so it
//! gets its own thread too. rumqttd has no stop method: the broker lives until the process
//! exits, and the gateway talks to it only through links.
//!
//! Links:
//! * `telemetry` subscribes to `bw/v1/+/telemetry` and `bw/v1/+/status` (read by
//!   [`crate::link`]), and owns the PUBACKs of standard clients' topics (`[[json_devices]]`,
//!   vendor/PATCHES.md patch 22): those publishes reach it as `Notification::Deferred`, and
//!   [`crate::standard`] sends their PUBACK once they are durable.
//! * `acks` publishes acks. It also subscribes to [`ACK_FILTER`] (`bw/v1/+/ack`) and never reads
//!   it: rumqttd disconnects a link that publishes to a topic no filter matches (a device not
//!   subscribed to its ack topic yet), and this filter always matches. Because the link never
//!   calls `ready()`, the router stops forwarding to it after one buffer (~200 messages); that
//!   filter's in-memory log is bounded by the small default segment settings below, and the
//!   router skips the link ahead when it rotates (`CursorJump` alerts for [`ACKS_LINK`], which
//!   [`crate::link::spawn_alerts`] does not count as lost data).
//! * an alerts link receives `CursorJump` alerts (see [`crate::link::spawn_alerts`]).
//!
//! Memory: rumqttd keeps one in-memory log per subscribed filter, and every device subscribes
//! to its own ack topic, so the per-device ack log size is multiplied by the fleet; it is the
//! smallest rumqttd allows (the default segment settings below). The vendored rumqttd allocates
//! per-connection queues on demand (`vendor/PATCHES.md`, patch 6) and releases a log's entries
//! once every reader has read them (patch 11): a delivered ack, a telemetry batch the
//! telemetry link has read, and the log of a device that has gone take no memory.
//!
//! For a 10k-device reconnection storm the per-listener accept thread and the single router
//! thread are the serial parts; admission control (`crate::admission`) paces CONNECTs in the
//! auth hook so neither is flooded. The vendored rumqttd matches per-device filters by lookup
//! (patch 7) and registers connections without blocking the listener (patch 8).

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use breakwater_protocol::topic::{STATUS_FILTER, TELEMETRY_FILTER};
use rumqttd::alerts::AlertsLink;
use rumqttd::local::{LinkRx, LinkTx};
use serde_json::json;
use thiserror::Error;

use crate::admission::Admission;
use crate::config::MqttConfig;
use crate::standard::config::StandardConfig;
use crate::tls::TlsAcceptor;

/// Filter matching every device's ack topic.
pub const ACK_FILTER: &str = "bw/v1/+/ack";

/// Client id of the link that reads telemetry and status. Reserved: network clients can never
/// use it ([`crate::admission::RESERVED_PREFIX`]).
pub const TELEMETRY_LINK: &str = "breakwater-gateway-telemetry";

/// Client id of the link that publishes acks. rumqttd skips it ahead now and then (it never
/// reads its [`ACK_FILTER`] log), so its `CursorJump` alerts lose nothing.
pub const ACKS_LINK: &str = "breakwater-gateway-acks";

#[derive(Debug, Error)]
pub enum BrokerError {
    #[error("MQTT listener {addr} is not available: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("building the rumqttd configuration: {0}")]
    Config(serde_json::Error),
    #[error("creating the {name} link: {source}")]
    Link {
        name: &'static str,
        source: Box<rumqttd::local::LinkError>,
    },
    #[error("creating the alerts link: {0}")]
    Alerts(Box<rumqttd::alerts::LinkError>),
    #[error("starting the broker thread: {0}")]
    Thread(std::io::Error),
    #[error("MQTT listener {0} did not come up within 10 s")]
    NotListening(SocketAddr),
    #[error("the TLS listener {0} needs admission control and a TLS acceptor")]
    TlsWithoutAdmission(SocketAddr),
}

/// The links the gateway uses.
pub struct Links {
    pub telemetry: (LinkTx, LinkRx),
    pub acks: (LinkTx, LinkRx),
    pub alerts: AlertsLink,
    /// The Sparkplug host's link ([`crate::sparkplug::host`]), when it has filters.
    pub sparkplug: Option<(LinkTx, LinkRx)>,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links").finish_non_exhaustive()
    }
}

/// Builds the rumqttd configuration.
///
/// # Errors
/// Only if the JSON shape no longer matches rumqttd's `Config` (a rumqttd upgrade).
pub fn rumqttd_config(
    cfg: &MqttConfig,
    standard: &StandardConfig,
    max_connections: usize,
    admission: Option<&Arc<Admission>>,
    tls: Option<&Arc<TlsAcceptor>>,
) -> Result<rumqttd::Config, BrokerError> {
    // Built through serde because some rumqttd settings types have private fields.
    let v = json!({
        "id": 0,
        "router": {
            // + the gateway's own three links
            "max_connections": max_connections + 8,
            "max_outgoing_packet_count": 200,
            // Device ack topics and the gateway's ack filter: the smallest logs rumqttd allows
            // (1 KiB segments, ~45 acks). Every device subscribes to its own ack topic, so this
            // log exists once per device; delivered acks are released (vendor/PATCHES.md, patch
            // 11), but a lagging device's log fills up to this size, multiplied by the fleet:
            // 2 x 64 KiB of acks (~900 KiB with rumqttd's per-entry overhead) per device would
            // be gigabytes at 10,000 devices. A device has at most its credit
            // (`ack.max_credit`) of batches unacked and acks are cumulative, so an ack the
            // router skips (a device far behind) is covered by the next one. The
            // gateway's own ack filter, never read, is skipped ahead now and then (a
            // `CursorJump` alert for the acks link, harmless: nothing reads that log).
            "max_segment_size": 1024,
            "max_segment_count": 2,
            "max_saved_sessions": cfg.max_saved_sessions,
            "saved_session_expiry_secs": cfg.saved_session_expiry_secs,
            "custom_segment": {
                TELEMETRY_FILTER: {
                    "max_segment_size": cfg.segment_bytes,
                    "max_segment_count": cfg.segment_count,
                },
                STATUS_FILTER: {
                    "max_segment_size": 1024 * 1024,
                    "max_segment_count": 4,
                },
            },
        },
        "v4": {},
        // Both entries are needed: rumqttd 0.20's timer thread unwraps the meters interval even
        // when only alerts are configured, and dies (then no alert ever arrives).
        "metrics": {
            "alerts": { "push_interval": 1 },
            "meters": { "push_interval": 3600 },
        },
    });
    let mut config: rumqttd::Config = serde_json::from_value(v).map_err(BrokerError::Config)?;
    let mut servers = std::collections::HashMap::new();
    for (name, listen, tls_files) in cfg.listeners() {
        let server = json!({
            "name": name,
            "listen": listen.to_string(),
            "next_connection_delay_ms": 0,
            "connections": {
                "connection_timeout_ms": cfg.connection_timeout_ms,
                "max_payload_size": cfg.max_payload_bytes,
                "max_inflight_count": cfg.max_inflight_count,
                "dynamic_filters": false,
                // vendor/PATCHES.md, patch 22: standard clients' deferred PUBACKs.
                "max_deferred_acks": standard.max_unacked_per_connection,
                "deferred_ack_timeout_ms": standard.puback_timeout_ms,
            },
        });
        let mut server: rumqttd::ServerSettings =
            serde_json::from_value(server).map_err(BrokerError::Config)?;
        // The TLS handshake is the transport hook's (crate::tls): without admission, or without
        // its acceptor, there would be a plaintext listener on the TLS address.
        let acceptor = match tls_files {
            None => None,
            Some(_) => match (admission, tls) {
                (Some(_), Some(acceptor)) => Some(Arc::clone(acceptor)),
                _ => return Err(BrokerError::TlsWithoutAdmission(listen)),
            },
        };
        if let Some(adm) = admission {
            adm.install(&mut server.connections, acceptor);
        }
        servers.insert(name.to_owned(), server);
    }
    config.v4 = Some(servers);
    Ok(config)
}

/// Starts rumqttd, creates the gateway's links (before the listener accepts anyone, so no
/// publish can find no subscriber), then starts the listener and waits until it accepts TCP.
/// The telemetry link owns the PUBACKs of QoS 1 publishes on `deferred` filters (standard
/// clients, vendor/PATCHES.md patch 22): it receives them as `Notification::Deferred`.
///
/// `sparkplug`: the Sparkplug host's filters (`None` = no Sparkplug link): it owns the PUBACKs
/// of the edge nodes' topics and subscribes to its own NCMD and STATE topics (see
/// [`crate::sparkplug::host::Filters`]).
///
/// # Errors
/// The listen address is taken, a link cannot be created, or the listener does not come up.
pub fn start(
    config: rumqttd::Config,
    listens: &[SocketAddr],
    sparkplug: Option<&crate::sparkplug::host::Filters>,
    deferred: &[String],
) -> Result<Links, BrokerError> {
    // rumqttd only logs a bind failure on its own thread; check first for a clear error.
    for &listen in listens {
        drop(
            std::net::TcpListener::bind(listen).map_err(|source| BrokerError::Bind {
                addr: listen,
                source,
            })?,
        );
    }
    let mut broker = rumqttd::Broker::new(config);
    let (mut ttx, trx) = broker
        .link(TELEMETRY_LINK)
        .map_err(|source| BrokerError::Link {
            name: "telemetry",
            source: Box::new(source),
        })?;
    for f in [TELEMETRY_FILTER, STATUS_FILTER] {
        ttx.subscribe(f).map_err(|source| BrokerError::Link {
            name: "telemetry",
            source: Box::new(source),
        })?;
    }
    for f in deferred {
        ttx.defer_acks(f.as_str())
            .map_err(|source| BrokerError::Link {
                name: "telemetry",
                source: Box::new(source),
            })?;
    }
    let (mut atx, arx) = broker.link(ACKS_LINK).map_err(|source| BrokerError::Link {
        name: "acks",
        source: Box::new(source),
    })?;
    atx.subscribe(ACK_FILTER)
        .map_err(|source| BrokerError::Link {
            name: "acks",
            source: Box::new(source),
        })?;
    let sparkplug = match sparkplug {
        None => None,
        Some(filters) => {
            let link_err = |source| BrokerError::Link {
                name: "sparkplug",
                source: Box::new(source),
            };
            let (mut stx, srx) = broker
                .link(crate::sparkplug::host::SPARKPLUG_LINK)
                .map_err(link_err)?;
            for f in &filters.deferred {
                stx.defer_acks(f.as_str()).map_err(link_err)?;
            }
            for f in &filters.subscribed {
                stx.subscribe(f.as_str()).map_err(link_err)?;
            }
            Some((stx, srx))
        }
    };
    let alerts = broker
        .alerts()
        .map_err(|e| BrokerError::Alerts(Box::new(e)))?;
    std::thread::Builder::new()
        .name("bw-rumqttd".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded MQTT broker stopped");
            }
        })
        .map_err(BrokerError::Thread)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    for listen in listens {
        while TcpStream::connect_timeout(listen, Duration::from_millis(200)).is_err() {
            if Instant::now() > deadline {
                return Err(BrokerError::NotListening(*listen));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(Links {
        telemetry: (ttx, trx),
        acks: (atx, arx),
        alerts,
        sparkplug,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persistent_session_limits_reach_the_router() {
        let cfg = MqttConfig {
            max_saved_sessions: 12,
            saved_session_expiry_secs: 34,
            ..MqttConfig::default()
        };
        let c = rumqttd_config(&cfg, &StandardConfig::default(), 100, None, None).unwrap();
        assert_eq!(c.router.max_saved_sessions, Some(12));
        assert_eq!(c.router.saved_session_expiry_secs, Some(34));
    }
}

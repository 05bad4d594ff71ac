//! The MQTT link: connection options and the task that drives rumqttc's event loop.
//!
//! rumqttc's `EventLoop::poll` is not cancel-safe (a request taken from the channel can be lost
//! if the future is dropped mid-write), so it is never used inside `select!`. Each connection
//! gets one small poller task that owns the `EventLoop`, forwards the events the session cares
//! about over a bounded channel, and ends at the first error: rumqttc would reconnect at once,
//! but the session owns the reconnect policy (backoff with jitter). Aborting the poller drops
//! the socket without an MQTT DISCONNECT, which is exactly an ungraceful cut: the broker then
//! publishes the device's last will.

use std::sync::Arc;
use std::time::Duration;

use breakwater_protocol::{envelope, DeviceId, Limits, Status, StatusKind, Topic};
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Incoming, LastWill, MqttOptions, Outgoing, QoS,
    TlsConfiguration, Transport,
};
use tokio::sync::mpsc;

use std::num::NonZeroU32;

use crate::config::{GatewayAddress, GatewayConfig};
use crate::sender::tls::{self, TlsError};

/// How to reach the gateways' MQTT brokers. Cheap to clone; share one `Arc` across a fleet.
#[derive(Clone)]
pub struct LinkOptions {
    /// The gateways, in order; a sender with an empty list never connects.
    /// See [`crate::sender::failover`] for how one is chosen.
    pub addresses: Vec<GatewayAddress>,
    /// Failed connects in a row before moving to the next gateway.
    pub failover_after: NonZeroU32,
    pub keep_alive: Duration,
    pub connect_timeout: Duration,
    pub credentials: Option<(String, String)>,
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for LinkOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkOptions")
            .field("addresses", &self.addresses)
            .field("failover_after", &self.failover_after)
            .field("keep_alive", &self.keep_alive)
            .field("connect_timeout", &self.connect_timeout)
            .field("username", &self.credentials.as_ref().map(|c| &c.0))
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl LinkOptions {
    /// Plain TCP to `host:port`, anonymous.
    #[must_use]
    pub fn plain(host: impl Into<String>, port: u16) -> Self {
        Self::plain_many(vec![GatewayAddress::new(host, port)])
    }

    /// Plain TCP to several gateways, anonymous, default `failover_after`.
    #[must_use]
    pub fn plain_many(addresses: Vec<GatewayAddress>) -> Self {
        let d = GatewayConfig::default();
        Self {
            addresses,
            failover_after: d.failover_after,
            keep_alive: d.keep_alive,
            connect_timeout: d.connect_timeout,
            credentials: None,
            tls: None,
        }
    }

    /// From `[gateway]`, loading the TLS files.
    ///
    /// # Errors
    /// The TLS files cannot be loaded.
    pub fn from_config(g: &GatewayConfig) -> Result<Self, TlsError> {
        let tls = g.tls.as_ref().map(tls::client_config).transpose()?;
        Ok(Self {
            addresses: g.addresses.clone(),
            failover_after: g.failover_after,
            keep_alive: g.keep_alive,
            connect_timeout: g.connect_timeout,
            credentials: g
                .username
                .clone()
                .map(|u| (u, g.password.clone().unwrap_or_default())),
            tls,
        })
    }

    /// rumqttc options for one connection of `device` to `gateway`: client id = device id,
    /// clean session, last will = a `Lost` status stamped `now_ms`.
    pub(crate) fn mqtt_options(
        &self,
        gateway: &GatewayAddress,
        device: &DeviceId,
        epoch: u64,
        now_ms: u64,
        max_in_flight: u16,
    ) -> MqttOptions {
        let mut o = MqttOptions::new(device.as_str(), gateway.host.clone(), gateway.port);
        o.set_keep_alive(self.keep_alive);
        o.set_clean_session(true);
        o.set_max_packet_size(64 * 1024, Limits::DEFAULT.max_payload_bytes + 1024);
        o.set_inflight(max_in_flight.saturating_add(4));
        let will = envelope::encode_status(&Status {
            device: device.clone(),
            epoch,
            kind: StatusKind::Lost,
            ts: now_ms,
        });
        o.set_last_will(LastWill::new(
            Topic::status(device),
            will,
            QoS::AtLeastOnce,
            false,
        ));
        if let Some((u, p)) = &self.credentials {
            o.set_credentials(u.clone(), p.clone());
        }
        if let Some(tls) = &self.tls {
            o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                tls.clone(),
            )));
        }
        o
    }
}

/// What the poller forwards to the session.
#[derive(Debug)]
pub(crate) enum LinkEvent {
    ConnAck,
    SubAck,
    Publish(rumqttc::Publish),
    /// The broker or we closed the connection gracefully.
    Disconnected,
    /// The connection failed; the poller has ended.
    Error(String),
}

/// Creates the client and starts the poller task for one connection.
pub(crate) fn connect(
    options: MqttOptions,
    connect_timeout: Duration,
    request_cap: usize,
) -> (
    AsyncClient,
    mpsc::Receiver<LinkEvent>,
    tokio::task::JoinHandle<()>,
) {
    let (client, mut eventloop) = AsyncClient::new(options, request_cap);
    let mut net = eventloop.network_options();
    net.set_connection_timeout(connect_timeout.as_secs().max(1));
    // Several small batches are in flight at once: with Nagle on, each waits for the gateway's
    // delayed ACK of the previous one (up to 40 ms), which caps a credit-limited sender
    // (vendor/PATCHES.md, patch 10, has the measurement).
    net.set_tcp_nodelay(true);
    eventloop.set_network_options(net);
    let (tx, rx) = mpsc::channel(64);
    let handle = tokio::spawn(poll_loop(eventloop, tx));
    (client, rx, handle)
}

async fn poll_loop(mut eventloop: EventLoop, tx: mpsc::Sender<LinkEvent>) {
    loop {
        let ev = match eventloop.poll().await {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => LinkEvent::ConnAck,
            Ok(Event::Incoming(Incoming::SubAck(_))) => LinkEvent::SubAck,
            Ok(Event::Incoming(Incoming::Publish(p))) => LinkEvent::Publish(p),
            Ok(Event::Incoming(Incoming::Disconnect) | Event::Outgoing(Outgoing::Disconnect)) => {
                let _ = tx.send(LinkEvent::Disconnected).await;
                return;
            }
            Ok(_) => continue,
            Err(e) => {
                let msg = match e {
                    ConnectionError::ConnectionRefused(code) => format!("refused: {code:?}"),
                    other => other.to_string(),
                };
                let _ = tx.send(LinkEvent::Error(msg)).await;
                return;
            }
        };
        if tx.send(ev).await.is_err() {
            return;
        }
    }
}

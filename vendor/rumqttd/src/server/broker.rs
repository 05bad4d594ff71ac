use crate::link::alerts::{self};
use crate::link::console::ConsoleLink;
use crate::link::network::{self, Network, N};
use crate::link::remote::{self, mqtt_connect, RemoteLink};
use crate::link::{bridge, timer};
use crate::local::LinkBuilder;
use crate::protocol::v4::V4;
use crate::protocol::v5::V5;
use crate::protocol::{Packet, Protocol};
#[cfg(any(feature = "use-rustls", feature = "use-native-tls"))]
use crate::server::tls::{self, TLSAcceptor};
use crate::{meters, ConnectionSettings, Meter};
use flume::{RecvError, SendError, Sender};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use tracing::{debug, error, field, info, warn, Instrument};
use uuid::Uuid;

#[cfg(feature = "websocket")]
use async_tungstenite::tokio::accept_hdr_async;
#[cfg(feature = "websocket")]
use async_tungstenite::tungstenite::handshake::server::{
    Callback, ErrorResponse, Request, Response,
};
#[cfg(feature = "websocket")]
use async_tungstenite::tungstenite::http::HeaderValue;
#[cfg(feature = "websocket")]
use ws_stream_tungstenite::WsStream;

use metrics::gauge;
use metrics_exporter_prometheus::PrometheusBuilder;
use std::time::Duration;
use std::{io, thread};

use crate::link::console;
use crate::link::local::{self, LinkRx, LinkTx};
use crate::router::{Event, Router};
use crate::{Config, ConnectionId, ServerSettings};

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::error::Elapsed;
use tokio::{task, time};

#[derive(Debug, thiserror::Error)]
#[error("Acceptor error")]
pub enum Error {
    #[error("I/O {0}")]
    Io(#[from] io::Error),
    #[error("Timeout")]
    Timeout(#[from] Elapsed),
    #[error("Channel recv error")]
    Recv(#[from] RecvError),
    #[error("Channel send error")]
    Send(#[from] SendError<(ConnectionId, Event)>),
    #[cfg(any(feature = "use-rustls", feature = "use-native-tls"))]
    #[error("Certs error = {0}")]
    Certs(#[from] tls::Error),
    #[error("Accept error = {0}")]
    Accept(String),
    #[error("Remote error = {0}")]
    Remote(#[from] remote::Error),
    #[error("Invalid configuration")]
    Config(String),
}

pub struct Broker {
    config: Arc<Config>,
    router_tx: Sender<(ConnectionId, Event)>,
}

impl Broker {
    pub fn new(config: Config) -> Broker {
        let config = Arc::new(config);
        let router_config = config.router.clone();
        let router: Router = Router::new(config.id, router_config);

        // Setup cluster if cluster settings are configured.
        match config.cluster.clone() {
            Some(_cluster_config) => {
                // let node_id = cluster_config.node_id;
                // let listen = cluster_config.listen;
                // let seniors = cluster_config.seniors;
                // let mut cluster = RemoteCluster::new(node_id, &listen, seniors);
                // Broker::setup_remote_cluster(&mut router, node_id, &mut cluster);

                // Start router first and then cluster in the background
                let router_tx = router.spawn();
                // cluster.spawn();
                Broker { config, router_tx }
            }
            None => {
                let router_tx = router.spawn();
                Broker { config, router_tx }
            }
        }
    }

    // pub fn new_local_cluster(
    //     config: Config,
    //     node_id: NodeId,
    //     seniors: Vec<(NodeId, Sender<ReplicationData>)>,
    // ) -> (Broker, Sender<ReplicationData>) {
    //     let config = Arc::new(config);
    //     let router_config = config.router.clone();

    //     let mut router = Router::new(config.id, router_config);
    //     let (mut cluster, tx) = LocalCluster::new(node_id, seniors);
    //     Broker::setup_local_cluster(&mut router, node_id, &mut cluster);

    //     // Start router first and then cluster in the background
    //     let router_tx = router.spawn();
    //     cluster.spawn();

    //     (Broker { config, router_tx }, tx)
    // }

    // fn setup_remote_cluster(router: &mut Router, node_id: NodeId, cluster: &mut RemoteCluster) {
    //     // Retrieve pre-configured list of router <-> replica link from router
    //     // and add the link to cluster
    //     let nodes: Vec<NodeId> = (0..MAX_NODES).filter(|v| *v != node_id).collect();
    //     for node_id in nodes {
    //         let link = router.get_replica_handle(node_id);
    //         cluster.add_replica_router_handle(node_id, link);
    //     }
    // }

    // fn setup_local_cluster(router: &mut Router, node_id: NodeId, cluster: &mut LocalCluster) {
    //     // Retrieve pre-configured list of router <-> replica link from router
    //     // and add the link to cluster
    //     let nodes: Vec<NodeId> = (0..MAX_NODES).filter(|v| *v != node_id).collect();
    //     for node_id in nodes {
    //         let link = router.get_replica_handle(node_id);
    //         cluster.add_replica_router_handle(node_id, link);
    //     }
    // }

    // Link to get meters
    pub fn meters(&self) -> Result<meters::MetersLink, meters::LinkError> {
        let link = meters::MetersLink::new(self.router_tx.clone())?;
        Ok(link)
    }

    // Link to get alerts
    pub fn alerts(&self) -> Result<alerts::AlertsLink, alerts::LinkError> {
        let link = alerts::AlertsLink::new(self.router_tx.clone())?;
        Ok(link)
    }

    pub fn link(&self, client_id: &str) -> Result<(LinkTx, LinkRx), local::LinkError> {
        // Register this connection with the router. Router replies with ack which if ok will
        // start the link. Router can sometimes reject the connection (ex. max connection limit).
        let (link_tx, link_rx, _ack) =
            LinkBuilder::new(client_id, self.router_tx.clone()).build()?;
        Ok((link_tx, link_rx))
    }

    #[tracing::instrument(skip(self))]
    pub fn start(&mut self) -> Result<(), Error> {
        if self.config.v4.is_none()
            && self.config.v5.is_none()
            && (cfg!(not(feature = "websocket")) || self.config.ws.is_none())
        {
            return Err(Error::Config(
                "Atleast one server config must be specified, \
                consider adding either of [v4.x]/[v5.x] or [ws.x] (if enabled) in config file."
                    .to_string(),
            ));
        }

        // we don't know which servers (v4/v5/ws) user will spawn
        // so we collect handles for all of the spawned servers
        let mut server_thread_handles = Vec::new();

        if let Some(metrics_config) = self.config.metrics.clone() {
            let timer_thread = thread::Builder::new().name("timer".to_owned());
            let router_tx = self.router_tx.clone();
            timer_thread.spawn(move || {
                let mut runtime = tokio::runtime::Builder::new_current_thread();
                let runtime = runtime.enable_all().build().unwrap();

                runtime.block_on(async move {
                    timer::start(metrics_config, router_tx).await;
                });
            })?;
        }

        // Spawn bridge in a separate thread.
        if let Some(bridge_config) = self.config.bridge.clone() {
            let bridge_thread = thread::Builder::new().name(bridge_config.name.clone());
            let router_tx = self.router_tx.clone();
            bridge_thread.spawn(move || {
                let mut runtime = tokio::runtime::Builder::new_current_thread();
                let runtime = runtime.enable_all().build().unwrap();

                runtime.block_on(async move {
                    if let Err(e) = bridge::start(bridge_config, router_tx, V4).await {
                        error!(error=?e, "Bridge Link error");
                    };
                });
            })?;
        }

        // Spawn servers in a separate thread.
        if let Some(v4_config) = &self.config.v4 {
            for (_, config) in v4_config.clone() {
                let server_thread = thread::Builder::new().name(config.name.clone());
                let mut server = Server::new(config, self.router_tx.clone(), V4);
                let handle = server_thread.spawn(move || {
                    let mut runtime = tokio::runtime::Builder::new_current_thread();
                    let runtime = runtime.enable_all().build().unwrap();

                    runtime.block_on(async {
                        if let Err(e) = server.start(LinkType::Remote).await {
                            error!(error=?e, "Server error - V4");
                        }
                    });
                })?;
                server_thread_handles.push(handle)
            }
        }

        if let Some(v5_config) = &self.config.v5 {
            for (_, config) in v5_config.clone() {
                let server_thread = thread::Builder::new().name(config.name.clone());
                let mut server = Server::new(config, self.router_tx.clone(), V5);
                let handle = server_thread.spawn(move || {
                    let mut runtime = tokio::runtime::Builder::new_current_thread();
                    let runtime = runtime.enable_all().build().unwrap();

                    runtime.block_on(async {
                        if let Err(e) = server.start(LinkType::Remote).await {
                            error!(error=?e, "Server error - V5");
                        }
                    });
                })?;
                server_thread_handles.push(handle)
            }
        }

        #[cfg(not(feature = "websocket"))]
        if self.config.ws.is_some() {
            warn!("websocket feature is disabled, [ws] config will be ignored.");
        }

        #[cfg(feature = "websocket")]
        if let Some(ws_config) = &self.config.ws {
            for (_, config) in ws_config.clone() {
                let server_thread = thread::Builder::new().name(config.name.clone());
                //TODO: Add support for V5 procotol with websockets. Registered in config or on ServerSettings
                let mut server = Server::new(config, self.router_tx.clone(), V4);
                let handle = server_thread.spawn(move || {
                    let mut runtime = tokio::runtime::Builder::new_current_thread();
                    let runtime = runtime.enable_all().build().unwrap();

                    runtime.block_on(async {
                        if let Err(e) = server.start(LinkType::Websocket).await {
                            error!(error=?e, "Server error - WS");
                        }
                    });
                })?;
                server_thread_handles.push(handle)
            }
        }

        if let Some(prometheus_setting) = &self.config.prometheus {
            let timeout = prometheus_setting.interval;
            // If port is specified use it instead of listen.
            // NOTE: This means listen is ignored when `port` is specified.
            // `port` will be removed in future release in favour of `listen`
            let addr = {
                #[allow(deprecated)]
                match prometheus_setting.port {
                    Some(port) => SocketAddr::new("127.0.0.1".parse().unwrap(), port),
                    None => prometheus_setting.listen.unwrap_or(SocketAddr::new(
                        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
                        9042,
                    )),
                }
            };
            let metrics_thread = thread::Builder::new().name("Metrics".to_owned());
            let meter_link = self.meters().unwrap();
            metrics_thread.spawn(move || {
                let builder = PrometheusBuilder::new().with_http_listener(addr);
                builder.install().unwrap();

                let total_publishes = gauge!("metrics.router.total_publishes");
                let total_connections = gauge!("metrics.router.total_connections");
                let failed_publishes = gauge!("metrics.router.failed_publishes");
                loop {
                    if let Ok(metrics) = meter_link.recv() {
                        for m in metrics {
                            match m {
                                Meter::Router(_, ref r) => {
                                    total_connections.set(r.total_connections as f64);
                                    total_publishes.set(r.total_publishes as f64);
                                    failed_publishes.set(r.failed_publishes as f64);
                                }
                                _ => continue,
                            }
                        }
                    }

                    std::thread::sleep(Duration::from_secs(timeout));
                }
            })?;
        }

        if let Some(console) = self.config.console.clone() {
            let console_link = ConsoleLink::new(console, self.router_tx.clone());

            let console_link = Arc::new(console_link);
            let console_thread = thread::Builder::new().name("Console".to_string());
            console_thread.spawn(move || {
                let mut runtime = tokio::runtime::Builder::new_current_thread();
                let runtime = runtime.enable_all().build().unwrap();
                runtime.block_on(console::start(console_link));
            })?;
        }

        // in ideal case, where server doesn't crash, join() will never resolve
        // we still try to join threads so that we don't return from function
        // unless everything crashes.
        server_thread_handles.into_iter().for_each(|handle| {
            // join() might panic in case the thread panics
            // we just ignore it
            let _ = handle.join();
        });

        Ok(())
    }
}

#[derive(Copy, Clone)]
pub enum LinkType {
    #[cfg(feature = "websocket")]
    Websocket,
    Remote,
}

#[derive(PartialEq)]
enum AwaitingWill {
    Cancel,
    Fire,
}

pub struct Server<P> {
    config: ServerSettings,
    router_tx: Sender<(ConnectionId, Event)>,
    protocol: P,
    awaiting_will_handler: Arc<Mutex<HashMap<String, Sender<AwaitingWill>>>>,
}

impl<P: Protocol + Clone + Send + 'static> Server<P> {
    pub fn new(
        config: ServerSettings,
        router_tx: Sender<(ConnectionId, Event)>,
        protocol: P,
    ) -> Server<P> {
        Server {
            config,
            router_tx,
            protocol,
            awaiting_will_handler: Arc::new(Mutex::new(HashMap::default())),
        }
    }

    // Depending on TLS or not create a new Network
    async fn tls_accept(&self, stream: TcpStream) -> Result<(Box<dyn N>, Option<String>), Error> {
        #[cfg(any(feature = "use-rustls", feature = "use-native-tls"))]
        match &self.config.tls {
            Some(c) => {
                let (tenant_id, network) = TLSAcceptor::new(c)?.accept(stream).await?;
                Ok((network, tenant_id))
            }
            None => Ok((Box::new(stream), None)),
        }
        #[cfg(not(any(feature = "use-rustls", feature = "use-native-tls")))]
        Ok((Box::new(stream), None))
    }

    pub async fn start(&mut self, link_type: LinkType) -> Result<(), Error> {
        // Breakwater patch: listen with a deep accept queue (see `listen_deep`).
        let listener = listen_deep(self.config.listen)?;
        let delay = Duration::from_millis(self.config.next_connection_delay_ms);
        let mut count: usize = 0;

        let config = Arc::new(self.config.connections.clone());
        info!(
            config = self.config.name,
            listen_addr = self.config.listen.to_string(),
            "Listening for remote connections",
        );
        loop {
            // Await new network connection.
            let (stream, addr) = match listener.accept().await {
                Ok((s, r)) => (s, r),
                Err(e) => {
                    error!(error=?e, "Unable to accept socket.");
                    // Breakwater patch 4: back off instead of spinning. An accept error such as
                    // EMFILE (too many open files) repeats immediately while the condition
                    // lasts; retrying at once turns the listener thread into a busy loop that
                    // starves the connections it serves.
                    time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };

            // Breakwater patch 10: no Nagle delay on MQTT connections (see vendor/PATCHES.md).
            if let Err(e) = stream.set_nodelay(true) {
                warn!(error=?e, "set_nodelay failed");
            }

            // Breakwater patch 14: with a transport hook (e.g. TLS in the embedding
            // application) the handshake runs on the connection's own task, bounded by
            // `connection_timeout_ms`, so a client that stalls it delays nobody else.
            if let (LinkType::Remote, Some(transport)) =
                (&link_type, config.transport_handler.clone())
            {
                let config = config.clone();
                let router_tx = self.router_tx.clone();
                let protocol = self.protocol.clone();
                let will_handlers = self.awaiting_will_handler.clone();
                count += 1;
                task::spawn(
                    async move {
                        let limit = Duration::from_millis(config.connection_timeout_ms.into());
                        let transport = match time::timeout(limit, transport(stream, addr)).await {
                            Ok(Ok(t)) => t,
                            Ok(Err(e)) => {
                                debug!(?addr, error = %e, "transport refused the connection");
                                disconnect_counted("transport_refused");
                                return;
                            }
                            Err(_) => {
                                debug!(?addr, "transport handshake timed out");
                                disconnect_counted("transport_timeout");
                                return;
                            }
                        };
                        remote(
                            config,
                            None,
                            router_tx,
                            transport.stream,
                            protocol,
                            will_handlers,
                            Some(transport.peer.unwrap_or(addr)),
                            transport.identity,
                        )
                        .await;
                    }
                    .instrument(tracing::error_span!(
                        "remote_link",
                        client_id = field::Empty,
                        connection_id = field::Empty,
                    )),
                );
                if !delay.is_zero() {
                    time::sleep(delay).await;
                }
                continue;
            }

            let (network, tenant_id) = match self.tls_accept(stream).await {
                Ok(o) => o,
                Err(e) => {
                    error!(error=?e, "Tls accept error");
                    continue;
                }
            };

            info!(
                name=?self.config.name, ?addr, count, tenant=?tenant_id, "accept"
            );

            let config = config.clone();
            let router_tx = self.router_tx.clone();
            count += 1;

            let protocol = self.protocol.clone();
            match link_type {
                #[cfg(feature = "websocket")]
                LinkType::Websocket => {
                    let stream = match accept_hdr_async(network, WSCallback).await {
                        Ok(s) => Box::new(WsStream::new(s)),
                        Err(e) => {
                            error!(error=?e, "Websocket failed handshake");
                            continue;
                        }
                    };
                    task::spawn(
                        remote(
                            config,
                            tenant_id.clone(),
                            router_tx,
                            stream,
                            protocol,
                            self.awaiting_will_handler.clone(),
                            Some(addr),
                            None,
                        )
                        .instrument(tracing::info_span!(
                            "websocket_link",
                            client_id = field::Empty,
                            connection_id = field::Empty
                        )),
                    )
                }
                LinkType::Remote => task::spawn(
                    remote(
                        config,
                        tenant_id.clone(),
                        router_tx,
                        network,
                        protocol,
                        self.awaiting_will_handler.clone(),
                        Some(addr),
                        None,
                    )
                    .instrument(tracing::error_span!(
                        "remote_link",
                        ?tenant_id,
                        client_id = field::Empty,
                        connection_id = field::Empty,
                    )),
                ),
            };

            // Breakwater patch: a zero delay must not cost a timer tick per accept.
            if !delay.is_zero() {
                time::sleep(delay).await;
            }
        }
    }
}

/// Breakwater patch 9: registers the will handler of a new connection of `client_id` and tells
/// the previous connection's handler, if any, whether to publish that connection's will.
///
/// The previous connection's task may have gone already: one whose registration failed
/// (`RemoteLink::new` returned an error, e.g. the router dropped it before its CONNACK) returns
/// without removing its entry. Upstream unwrapped the `try_send` to it while holding the map's
/// lock, so the send to the dropped receiver panicked and poisoned the lock; from then on every
/// CONNECT on the listener panicked at `lock().unwrap()`, and no client could connect any more.
fn replace_will_handler(
    will_handlers: &Mutex<HashMap<String, Sender<AwaitingWill>>>,
    client_id: &str,
    clean_session: bool,
) -> flume::Receiver<AwaitingWill> {
    let (will_tx, will_rx) = flume::bounded::<AwaitingWill>(1);
    let previous = will_handlers
        .lock()
        .unwrap()
        .insert(client_id.to_owned(), will_tx);
    if let Some(sender) = previous {
        let awaiting_will = if clean_session {
            AwaitingWill::Fire
        } else {
            AwaitingWill::Cancel
        };
        // Fails only when that connection's task has gone: nobody waits for its will then.
        sender.try_send(awaiting_will).ok();
    }
    will_rx
}

/// Breakwater patch: binds like `TcpListener::bind`, but with an accept queue of up to
/// `net.core.somaxconn` (the kernel caps the request) instead of tokio's fixed 1024. When
/// thousands of clients reconnect at once their SYNs arrive faster than one thread accepts; once
/// a 1024-deep queue overflows, the kernel drops handshakes that clients only retry after 1 s,
/// 3 s, 7 s, ... (or that end in a reset), turning a sub-second storm into minutes.
fn listen_deep(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(65_535)
}

/// Breakwater patch 17: counts a connection that ended, by reason, in
/// `rumqttd_connections_closed_total{reason}` (through the `metrics` facade: the embedding
/// application's recorder, if any, exports it).
fn disconnect_counted(reason: &'static str) {
    metrics::counter!("rumqttd_connections_closed_total", "reason" => reason).increment(1);
}

/// Breakwater patch 17: the reason label of a CONNECT that did not lead to a connection.
fn connect_error_reason(e: &remote::Error) -> &'static str {
    match e {
        remote::Error::Refused(_) | remote::Error::InvalidAuth => "connect_refused",
        remote::Error::ClosedDuringAuth(_) => "closed_during_connect",
        remote::Error::Timeout(_) => "connect_timeout",
        remote::Error::NotConnectPacket(_) => "not_connect",
        remote::Error::InvalidClientId => "invalid_client_id",
        remote::Error::Network(network::Error::Protocol(_)) => "protocol_error",
        remote::Error::Network(network::Error::KeepAlive(_)) => "connect_timeout",
        _ => "connect_io",
    }
}

/// Breakwater patch 17: the reason label of an established connection that ended with an error.
fn link_error_reason(e: &remote::Error) -> &'static str {
    match e {
        remote::Error::PublishDenied { .. } => "publish_denied",
        remote::Error::SecondConnect => "second_connect",
        // Breakwater patch 22.
        remote::Error::DeferredAckTimeout { .. } => "puback_timeout",
        remote::Error::Network(network::Error::KeepAlive(_)) => "keepalive_timeout",
        // Breakwater patch 19: the client stopped reading what it is sent.
        remote::Error::Network(network::Error::WriteTimeout(_)) => "write_timeout",
        remote::Error::Network(network::Error::Protocol(_)) => "protocol_error",
        remote::Error::Network(network::Error::Io(err)) | remote::Error::Io(err)
            if err.kind() == io::ErrorKind::InvalidData =>
        {
            "protocol_error"
        }
        _ => "io",
    }
}

/// Configures the Websocket connection to indicate the correct protocol
/// by adding the "sec-websocket-protocol" with value of "mqtt" to the response header
#[cfg(feature = "websocket")]
struct WSCallback;
#[cfg(feature = "websocket")]
impl Callback for WSCallback {
    fn on_request(
        self,
        _request: &Request,
        mut response: Response,
    ) -> Result<Response, ErrorResponse> {
        response
            .headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_static("mqtt"));
        Ok(response)
    }
}

/// A new network connection should wait for a mqtt connect packet. This should be handled
/// asynchronously to avoid blocking other new connections while this connection is
/// waiting for mqtt connect packet. Also this honours connection wait time as per config to prevent
/// denial of service attacks (rogue clients which only establish network connections without
/// sending a mqtt connection packet to make the server reach its concurrent connection limit).
async fn remote<P: Protocol>(
    config: Arc<ConnectionSettings>,
    tenant_id: Option<String>,
    router_tx: Sender<(ConnectionId, Event)>,
    stream: Box<dyn N>,
    protocol: P,
    will_handlers: Arc<Mutex<HashMap<String, Sender<AwaitingWill>>>>,
    // Breakwater patch 14: for the connect hook.
    peer: Option<SocketAddr>,
    transport_identity: Option<String>,
) {
    let mut network = Network::new(
        stream,
        config.max_payload_size,
        config.max_inflight_count,
        protocol,
    );

    let dynamic_filters = config.dynamic_filters;
    let authz = config.authz_handler.clone();
    // Breakwater patch 22.
    let max_deferred_acks = config
        .max_deferred_acks
        .unwrap_or(remote::DEFAULT_MAX_DEFERRED_ACKS);
    let deferred_ack_timeout = config
        .deferred_ack_timeout_ms
        .map_or(remote::DEFAULT_DEFERRED_ACK_TIMEOUT, Duration::from_millis);

    let (connect_packet, principal) =
        match mqtt_connect(config, &mut network, peer, transport_identity).await {
            Ok(p) => p,
            Err(e) => {
                // Breakwater patch 17: a client alone can cause this (a refused or malformed
                // CONNECT, a timeout): debug, and counted, not an ERROR line per connection.
                debug!(error=?e, "Error while handling MQTT connect packet");
                disconnect_counted(connect_error_reason(&e));
                return;
            }
        };

    let (mut client_id, clean_session) = match &connect_packet {
        Packet::Connect(ref connect, _, _, _, _) => {
            (connect.client_id.clone(), connect.clean_session)
        }
        _ => unreachable!(),
    };

    let mut assigned_client_id = None;
    if client_id.is_empty() {
        let uuid = Uuid::new_v4().simple();
        client_id = format!("rumqtt-{uuid}");
        assigned_client_id = Some(client_id.clone());
    }

    if let Some(tenant_id) = &tenant_id {
        // client_id is set to "tenant_id.client_id"
        // this is to make sure we are consistent,
        // as Connection uses this format of client_id
        client_id = format!("{tenant_id}.{client_id}");
    }

    // Breakwater patch 9: see `replace_will_handler`.
    let will_rx = replace_will_handler(&will_handlers, &client_id, clean_session);

    // Start the link
    let mut link = match RemoteLink::new(
        router_tx.clone(),
        tenant_id.clone(),
        network,
        connect_packet,
        dynamic_filters,
        assigned_client_id,
        authz,
        principal,
    )
    .await
    {
        Ok(l) => l,
        Err(e) => {
            // Breakwater patch 17: e.g. the router refused it (max connections).
            warn!(error=?e, "Remote link error");
            disconnect_counted("registration_failed");
            return;
        }
    };

    link.max_deferred_acks = max_deferred_acks;
    link.deferred_ack_timeout = deferred_ack_timeout;
    let connection_id = link.connection_id;
    let generation = link.generation;
    let will_delay_interval = link.will_delay_interval;
    let mut send_disconnect = true;

    // Breakwater patch 17: every way a connection ends is something a client alone can cause
    // (or a takeover of its session): debug, and counted by reason, never an ERROR line.
    match link.start().await {
        // Connection got closed. This shouldn't usually happen.
        Ok(_) => {
            debug!("connection-stop");
            disconnect_counted("stopped");
        }
        // No need to send a disconnect message when disconnection
        // originated internally in the router.
        // Breakwater patch 22: the owner of a deferred filter closed it (`LinkTx::disconnect`).
        Err(remote::Error::Link(e)) if link.deferred_refused() => {
            debug!(error=?e, "closed by the owner of a deferred publish");
            disconnect_counted("deferred_refused");
            send_disconnect = false;
        }
        Err(remote::Error::Link(e)) => {
            debug!(error=?e, "router-drop");
            disconnect_counted("router");
            send_disconnect = false;
        }
        // Connection was closed by peer
        Err(remote::Error::Network(network::Error::Io(err)) | remote::Error::Io(err))
            if err.kind() == io::ErrorKind::ConnectionAborted =>
        {
            debug!(error=?err, "disconnected");
            disconnect_counted("client_closed");
        }
        // Any other error
        Err(e) => {
            debug!(error=?e, "disconnected");
            disconnect_counted(link_error_reason(&e));
        }
    };

    if send_disconnect {
        // Breakwater patch 9: `connection_id` alone may name a newer connection by now.
        let disconnect = Event::Disconnect { generation };
        let message = (connection_id, disconnect);
        router_tx.send(message).ok();
    }

    // this is important to stop the connection
    drop(link);

    let publish_will = match tokio::time::timeout(
        Duration::from_secs(will_delay_interval as u64),
        will_rx.recv_async(),
    )
    .await
    {
        Ok(w) => w.is_ok_and(|k| k == AwaitingWill::Fire),
        Err(_) => {
            // no need to keep the sender after timeout
            will_handlers.lock().unwrap().remove(&client_id);
            // as will delay interval has passed, publish the will message
            true
        }
    };

    if publish_will {
        let message = Event::PublishWill((client_id, tenant_id));
        // is this connection_id really correct at this point?
        // as we have disconnected already, some other connection
        // might be using this connection ID!
        // It won't matter in this case as we don't use it
        // but might affect logs?
        router_tx.send((connection_id, message)).ok();
    }
}

// Breakwater patch 9.
#[cfg(test)]
mod will_handler_tests {
    use super::{replace_will_handler, AwaitingWill};
    use std::collections::HashMap;
    use std::sync::Mutex;

    #[test]
    fn a_connection_that_left_its_will_handler_does_not_block_the_next() {
        let handlers = Mutex::new(HashMap::new());
        // A connection whose registration failed: its task returned, dropping its receiver, and
        // left its entry behind.
        drop(replace_will_handler(&handlers, "device", true));
        // The client connects again, and again.
        let second = replace_will_handler(&handlers, "device", true);
        assert!(!handlers.is_poisoned());
        let _third = replace_will_handler(&handlers, "device", false);
        // The third connection told the second not to publish its will (not a clean session).
        assert!(matches!(second.try_recv(), Ok(AwaitingWill::Cancel)));
        assert_eq!(handlers.lock().unwrap().len(), 1);
    }
}

//! Breakwater patch 14: hooks through which an embedding application decides about connections.
//!
//! Three hooks, each optional, set on [`ConnectionSettings`](crate::ConnectionSettings):
//!
//! * **transport** ([`TransportHandler`]): turns an accepted TCP stream into the byte stream MQTT
//!   runs on (e.g. a TLS handshake), and may name the peer (a verified client certificate's
//!   name). It runs on the connection's own task, after the accept loop has moved on, bounded by
//!   `connection_timeout_ms`: a client that stalls its handshake delays nobody else.
//! * **connect** ([`ConnectHandler`]): decides about a CONNECT with everything known about it
//!   ([`ConnectRequest`]: client id, login, will, peer address, transport identity). A refusal
//!   ([`ConnectRefusal`]) is answered with the matching CONNACK return code before the
//!   connection is closed. An admitted connection gets a *principal*, the name the authorization
//!   hook sees (by default the client id).
//! * **authorize** ([`AuthzHandler`]): decides about every PUBLISH and every SUBSCRIBE filter a
//!   client sends ([`AuthzRequest`]), synchronously on the connection's task, before the packet
//!   reaches the router. A denied SUBSCRIBE is answered with SUBACK failure (0x80) for each of
//!   its filters and never reaches the router; a denied PUBLISH closes the connection (MQTT 3.1.1
//!   has no negative PUBACK), after the packets the client sent before it were handed on.
//!
//! The will is part of the CONNECT: the connect hook sees it ([`ConnectRequest::will`]) and
//! decides about it there.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use tokio::net::TcpStream;

pub use crate::link::network::N as Stream;

/// What the transport hook produces: the stream MQTT is read from, and the peer's identity if
/// the transport established one (e.g. a verified TLS client certificate's name).
pub struct Transport {
    pub stream: Box<dyn Stream>,
    pub identity: Option<String>,
    /// The client's address when the transport learned a better one than the TCP peer (e.g.
    /// from a PROXY protocol header sent by a load balancer); `None`: the TCP peer. The connect
    /// hook sees it as [`ConnectRequest::peer`].
    pub peer: Option<SocketAddr>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("identity", &self.identity)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

pub type TransportFuture = Pin<Box<dyn Future<Output = io::Result<Transport>> + Send>>;

/// Turns an accepted TCP stream into the stream MQTT runs on. An error closes the connection.
pub type TransportHandler = Arc<dyn Fn(TcpStream, SocketAddr) -> TransportFuture + Send + Sync>;

/// The will of a CONNECT, as the connect hook sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WillInfo {
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
}

/// Everything known about a CONNECT when the connect hook decides about it.
#[derive(Debug, Clone)]
pub struct ConnectRequest {
    pub client_id: String,
    /// `None` when the CONNECT carries no login.
    pub username: Option<String>,
    pub password: Option<String>,
    pub clean_session: bool,
    pub keep_alive: u16,
    pub will: Option<WillInfo>,
    /// The TCP peer; `None` for connections that did not come through a listener.
    pub peer: Option<SocketAddr>,
    /// What the transport hook said about the peer ([`Transport::identity`]).
    pub transport_identity: Option<String>,
}

/// Why a CONNECT is refused; each is answered with its MQTT 3.1.1 CONNACK return code (and the
/// matching MQTT 5 reason code) before the connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectRefusal {
    /// 0x02 "identifier rejected".
    IdentifierRejected,
    /// 0x03 "server unavailable" (overload: try again later).
    ServerUnavailable,
    /// 0x04 "bad user name or password".
    BadUserNamePassword,
    /// 0x05 "not authorized".
    NotAuthorized,
}

/// What an admitted connection is known as to the authorization hook.
pub type Principal = Arc<str>;

pub type ConnectFuture =
    Pin<Box<dyn Future<Output = Result<Option<Principal>, ConnectRefusal>> + Send>>;

/// Decides about a CONNECT. `Ok(Some(principal))` admits it under that name, `Ok(None)` under its
/// client id. Awaited on the connection's task; the wait ends early if the client closes its
/// socket meanwhile.
pub type ConnectHandler = Arc<dyn Fn(ConnectRequest) -> ConnectFuture + Send + Sync>;

/// One action of a connected client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthzAction<'a> {
    Publish {
        topic: &'a [u8],
        qos: u8,
        retain: bool,
    },
    Subscribe {
        filter: &'a str,
        qos: u8,
    },
}

/// A connected client's action, with who it is.
#[derive(Debug, Clone, Copy)]
pub struct AuthzRequest<'a> {
    pub client_id: &'a str,
    /// The connect hook's principal, or the client id.
    pub principal: &'a str,
    pub action: AuthzAction<'a>,
}

/// Decides about one action; `true` allows it. Called on the connection's task for every
/// PUBLISH and SUBSCRIBE filter: keep it cheap and never block.
pub type AuthzHandler = Arc<dyn Fn(&AuthzRequest<'_>) -> bool + Send + Sync>;

/// Breakwater patch 23: a persistent session as a [`SessionStore`] keeps it: what the router
/// needs to rebuild it after a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    pub client_id: String,
    /// The session's subscriptions with their QoS. Shared subscriptions (`$share/...`) are not
    /// included: the router does not restore them.
    pub subscriptions: Vec<(String, crate::protocol::QoS)>,
    /// When its client went, if it had; `None` while it is connected. The router counts a
    /// restored session's expiry (`RouterConfig::saved_session_expiry_secs`) from here, or from
    /// the restart when `None` (the client was connected when the broker stopped).
    pub disconnected_at: Option<std::time::SystemTime>,
}

/// Breakwater patch 23: where persistent sessions (`clean_session = false`) outlive the
/// process. Set on [`RouterConfig::session_store`](crate::RouterConfig::session_store).
///
/// The router calls [`load`](SessionStore::load) once, on its own thread, before it takes any
/// connection, and puts what it returns in its saved sessions (they count against
/// `max_saved_sessions` and expire per `saved_session_expiry_secs`). A client that then connects
/// with `clean_session = false` and a restored client id gets `session present = 1` and its
/// subscriptions back. Then it reports every change: [`save`](SessionStore::save) when a
/// persistent session connects, subscribes, unsubscribes or is saved on disconnect (the whole
/// record each time), [`forget`](SessionStore::forget) when one is discarded (a clean session
/// with its client id, the cap, the expiry).
///
/// Only subscriptions are kept: not the messages queued to the client, not QoS 2 state.
///
/// `save` and `forget` are called on the router thread, for every connect of a persistent
/// session: they must not block (hand the change to another thread; see the implementation's
/// documentation for what it does when that thread falls behind).
pub trait SessionStore: Send + Sync {
    /// The sessions saved by an earlier process.
    fn load(&self) -> Vec<StoredSession>;
    /// The session's record is now `session` (replacing any earlier one).
    fn save(&self, session: StoredSession);
    /// The session of `client_id` is gone.
    fn forget(&self, client_id: &str);
}

impl std::fmt::Debug for dyn SessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionStore")
    }
}

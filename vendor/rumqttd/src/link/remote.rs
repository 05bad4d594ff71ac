use crate::hooks::{
    AuthzAction, AuthzHandler, AuthzRequest, ConnectRefusal, ConnectRequest, Principal, WillInfo,
};
use crate::link::local::{LinkError, LinkRx, LinkTx};
use crate::link::network;
use crate::link::network::Network;
use crate::local::LinkBuilder;
use crate::protocol::{
    ConnAck, Connect, ConnectReturnCode, Login, Packet, Protocol, SubAck, SubscribeReasonCode,
};
use crate::router::{Event, Notification};
use crate::{ConnectionId, ConnectionSettings};

use flume::{RecvError, SendError, Sender, TrySendError};
use std::cmp::min;
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::time::error::Elapsed;
use tokio::{select, time};
use tracing::{trace, Span};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O")]
    Io(#[from] io::Error),
    #[error("Zero keep alive")]
    ZeroKeepAlive,
    #[error("Not connect packet")]
    NotConnectPacket(Packet),
    #[error("Network {0}")]
    Network(#[from] network::Error),
    #[error("Timeout")]
    Timeout(#[from] Elapsed),
    #[error("Channel send error")]
    Send(#[from] SendError<(ConnectionId, Event)>),
    #[error("Channel recv error")]
    Recv(#[from] RecvError),
    #[error("Got new session, disconnecting old one")]
    SessionEnd,
    #[error("Persistent session requires valid client id")]
    InvalidClientId,
    #[error("Unexpected router message")]
    NotConnectionAck,
    #[error("ConnAck error {0}")]
    ConnectionAck(String),
    #[error("Authentication error")]
    InvalidAuth,
    /// Breakwater patch 5.
    #[error("Client closed the connection during authentication: {0}")]
    ClosedDuringAuth(io::Error),
    #[error("Channel try send error")]
    TrySend(#[from] TrySendError<(ConnectionId, Event)>),
    #[error("Link error = {0}")]
    Link(#[from] LinkError),
    /// Breakwater patch 14: the connect hook refused the CONNECT (answered with a CONNACK code).
    #[error("CONNECT refused: {0:?}")]
    Refused(ConnectRefusal),
    /// Breakwater patch 14: the authorization hook denied a PUBLISH.
    #[error("PUBLISH to {topic:?} (QoS {qos}, retain {retain}) not authorized")]
    PublishDenied {
        topic: String,
        qos: u8,
        retain: bool,
    },
    /// Breakwater patch 17: a second CONNECT on a connection is a protocol violation (MQTT 3.1.1
    /// 3.1.0-2: the server must close the connection).
    #[error("second CONNECT on the connection")]
    SecondConnect,
    /// Breakwater patch 22: publishes waited for their deferred PUBACK and none was released
    /// within the deferred-ack timeout.
    #[error("{pending} publishes waited too long for their deferred PUBACK")]
    DeferredAckTimeout { pending: usize },
}

/// Orchestrates between Router and Network.
pub struct RemoteLink<P> {
    connect: Connect,
    pub(crate) connection_id: ConnectionId,
    /// Breakwater patch 9: sent with `Event::Disconnect` (see `LinkRx::generation`).
    pub(crate) generation: u64,
    network: Network<P>,
    link_tx: LinkTx,
    link_rx: LinkRx,
    notifications: VecDeque<Notification>,
    pub(crate) will_delay_interval: u32,
    /// Breakwater patch 14: decides about every PUBLISH and SUBSCRIBE before the router sees it.
    authz: Option<AuthzHandler>,
    /// Breakwater patch 14: what `authz` knows this client as.
    principal: Principal,
    /// Breakwater patch 22: stop reading at this many publishes waiting for a deferred PUBACK.
    pub(crate) max_deferred_acks: usize,
    /// Breakwater patch 22: close when none of those was released for this long.
    pub(crate) deferred_ack_timeout: Duration,
}

impl<P: Protocol> RemoteLink<P> {
    pub async fn new(
        router_tx: Sender<(ConnectionId, Event)>,
        tenant_id: Option<String>,
        mut network: Network<P>,
        connect_packet: Packet,
        dynamic_filters: bool,
        assigned_client_id: Option<String>,
        authz: Option<AuthzHandler>,
        principal: Option<Principal>,
    ) -> Result<RemoteLink<P>, Error> {
        let Packet::Connect(connect, props, lastwill, lastwill_props, _) = connect_packet else {
            return Err(Error::NotConnectPacket(connect_packet));
        };

        // Register this connection with the router. Router replys with ack which if ok will
        // start the link. Router can sometimes reject the connection (ex max connection limit)
        let client_id = assigned_client_id.as_ref().unwrap_or(&connect.client_id);
        let clean_session = connect.clean_session;
        let principal = principal.unwrap_or_else(|| Principal::from(client_id.as_str()));

        let topic_alias_max = props.as_ref().and_then(|p| p.topic_alias_max);
        let session_expiry = props
            .as_ref()
            .and_then(|p| p.session_expiry_interval)
            .unwrap_or(0);

        let delay_interval = lastwill_props
            .as_ref()
            .and_then(|f| f.delay_interval)
            .unwrap_or(0);

        // The Server delays publishing the Client’s Will Message until
        // the Will Delay Interval has passed or the Session ends, whichever happens first
        let will_delay_interval = min(session_expiry, delay_interval);

        let (link_tx, link_rx, notification) = LinkBuilder::new(client_id, router_tx)
            .tenant_id(tenant_id)
            .clean_session(clean_session)
            .last_will(lastwill)
            .last_will_properties(lastwill_props)
            .dynamic_filters(dynamic_filters)
            .topic_alias_max(topic_alias_max.unwrap_or(0))
            // Breakwater patch 8: do not block the listener's thread (see `build_async`).
            .build_async()
            .await?;

        let id = link_rx.id();
        Span::current().record("connection_id", id);

        if let Some(mut packet) = notification.into() {
            if let Packet::ConnAck(_ack, props) = &mut packet {
                let mut new_props = props.clone().unwrap_or_default();
                new_props.assigned_client_identifier = assigned_client_id;
                *props = Some(new_props);
                network.write(packet).await?;
            }
        }

        Ok(RemoteLink {
            connect,
            connection_id: id,
            generation: link_rx.generation(),
            network,
            link_tx,
            link_rx,
            // Breakwater patch 6: grows on demand (see `Outgoing::new`).
            notifications: VecDeque::new(),
            will_delay_interval,
            authz,
            principal,
            max_deferred_acks: DEFAULT_MAX_DEFERRED_ACKS,
            deferred_ack_timeout: DEFAULT_DEFERRED_ACK_TIMEOUT,
        })
    }

    /// Breakwater patch 22: the owner of a deferred filter closed this connection.
    pub(crate) fn deferred_refused(&self) -> bool {
        self.link_tx.deferred.refused()
    }

    pub async fn start(&mut self) -> Result<(), Error> {
        self.network.set_keepalive(self.connect.keep_alive);

        // Breakwater patch 22: the deferred-PUBACK bound and progress clock (see
        // `crate::router::deferred`).
        let deferred = self.link_tx.deferred.clone();
        let mut seen_released = deferred.released();
        let mut stalled_since = time::Instant::now();

        // Note:
        // Shouldn't result in bounded queue deadlocks because of blocking n/w send
        loop {
            let pending = deferred.pending();
            let released = deferred.released();
            if pending == 0 || released != seen_released {
                seen_released = released;
                stalled_since = time::Instant::now();
            }
            let reading = pending < self.max_deferred_acks;
            select! {
                _ = time::sleep_until(stalled_since + self.deferred_ack_timeout), if pending > 0 => {
                    return Err(Error::DeferredAckTimeout { pending });
                }
                // Breakwater patch 22: a release (a QoS 0 one sends nothing that would wake
                // this task) restarts the progress clock and may let reading resume.
                _ = deferred.released_since(), if pending > 0 => {}
                o = self.network.read(), if reading => {
                    let packet = o?;
                    let (len, screened) = {
                        let mut buffer = self.link_tx.buffer();
                        let first_new = buffer.len();
                        buffer.push_back(packet);
                        self.network.readv(&mut buffer)?;
                        // Breakwater patches 14 and 17.
                        let screened = screen(
                            &mut buffer,
                            first_new,
                            self.authz.as_ref(),
                            &self.connect.client_id,
                            &self.principal,
                        );
                        (buffer.len(), screened)
                    };

                    trace!("Packets read from network, count = {}", len);
                    self.link_tx.notify().await?;
                    if !screened.replies.is_empty() {
                        self.network.writev(screened.replies).await?;
                    }
                    if let Some(violation) = screened.violation {
                        return Err(violation);
                    }
                }
                // Receive from router when previous when state isn't in collision
                // due to previously received data request
                o = self.link_rx.exchange(&mut self.notifications) => {
                    o?;
                    let mut packets = VecDeque::new();
                    let mut unscheduled = false;

                    for notif in self.notifications.drain(..) {
                        if let Some(packet) = notif.into() {
                            packets.push_back(packet);
                        } else {
                            unscheduled = true;
                        }

                    }
                    self.network.writev(packets).await?;
                    if unscheduled {
                        self.link_rx.wake().await?;
                    }
                }
            }
        }
    }
}

/// Breakwater patch 22: defaults of `ConnectionSettings::max_deferred_acks` and
/// `ConnectionSettings::deferred_ack_timeout_ms`.
pub const DEFAULT_MAX_DEFERRED_ACKS: usize = 100;
pub const DEFAULT_DEFERRED_ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// Breakwater patches 14 and 17: what [`screen`] decided about the packets a read brought.
struct Screened {
    /// Answers the router will not give (SUBACK failures for denied subscriptions).
    replies: VecDeque<Packet>,
    /// A violation that closes the connection, once the packets before it are handed on.
    violation: Option<Error>,
}

/// Breakwater patches 14 and 17: checks the packets `buffer[first_new..]` that were just read,
/// before the router sees them. A second CONNECT (patch 17) or a PUBLISH the authorization hook
/// denies removes that packet and every later one and reports the violation; a SUBSCRIBE with a
/// denied filter is removed and answered with SUBACK failure for each of its filters.
fn screen(
    buffer: &mut VecDeque<Packet>,
    first_new: usize,
    authz: Option<&AuthzHandler>,
    client_id: &str,
    principal: &str,
) -> Screened {
    let mut replies = VecDeque::new();
    let mut i = first_new;
    while i < buffer.len() {
        let allowed = |action| {
            authz.is_none_or(|authz| {
                authz(&AuthzRequest {
                    client_id,
                    principal,
                    action,
                })
            })
        };
        match &buffer[i] {
            Packet::Connect(..) => {
                buffer.truncate(i);
                return Screened {
                    replies,
                    violation: Some(Error::SecondConnect),
                };
            }
            Packet::Publish(publish, _) => {
                let qos = publish.qos as u8;
                let action = AuthzAction::Publish {
                    topic: &publish.topic,
                    qos,
                    retain: publish.retain,
                };
                if !allowed(action) {
                    let violation = Error::PublishDenied {
                        topic: String::from_utf8_lossy(&publish.topic).into_owned(),
                        qos,
                        retain: publish.retain,
                    };
                    buffer.truncate(i);
                    return Screened {
                        replies,
                        violation: Some(violation),
                    };
                }
            }
            Packet::Subscribe(subscribe, _) => {
                let denied = subscribe.filters.iter().any(|f| {
                    !allowed(AuthzAction::Subscribe {
                        filter: &f.path,
                        qos: f.qos as u8,
                    })
                });
                if denied {
                    let ack = SubAck {
                        pkid: subscribe.pkid,
                        return_codes: vec![SubscribeReasonCode::Failure; subscribe.filters.len()],
                    };
                    replies.push_back(Packet::SubAck(ack, None));
                    buffer.remove(i);
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    Screened {
        replies,
        violation: None,
    }
}

/// Read MQTT connect packet from network and verify it.
/// authentication and checks are done here.
///
/// Breakwater patch 14: `peer` and `transport_identity` are handed to the connect hook, whose
/// principal (if any) is returned with the packet. A refused CONNECT is answered with its
/// CONNACK return code before the error is returned (patches 14 and 17).
pub async fn mqtt_connect<P>(
    config: Arc<ConnectionSettings>,
    network: &mut Network<P>,
    peer: Option<SocketAddr>,
    transport_identity: Option<String>,
) -> Result<(Packet, Option<Principal>), Error>
where
    P: Protocol,
{
    // Wait for MQTT connect packet and error out if it's not received in time to prevent
    // DOS attacks by filling total connections that the server can handle with idle open
    // connections which results in server rejecting new connections
    let connection_timeout_ms = config.connection_timeout_ms.into();
    let packet = time::timeout(Duration::from_millis(connection_timeout_ms), async {
        let packet = network.read().await?;
        Ok::<_, network::Error>(packet)
    })
    .await??;

    let (connect, lastwill, login) = match packet {
        Packet::Connect(ref connect, _, ref lastwill, _, ref login) => (connect, lastwill, login),
        packet => return Err(Error::NotConnectPacket(packet)),
    };

    Span::current().record("client_id", &connect.client_id);

    // Breakwater patch 17: keep alive 0 is allowed by MQTT 3.1.1 (3.1.2.10: the server does not
    // disconnect an idle client); `Network::set_keepalive` then sets no read timeout. Upstream
    // refused such a client without a CONNACK.

    let empty_client_id = connect.client_id.is_empty();
    let clean_session = connect.clean_session;

    if empty_client_id && !clean_session {
        let ack = ConnAck {
            session_present: false,
            code: ConnectReturnCode::ClientIdentifierNotValid,
        };

        let packet = Packet::ConnAck(ack, None);
        network.write(packet).await?;

        return Err(Error::InvalidClientId);
    }

    // Breakwater patch 5: stop authenticating when the client has gone. An external hook can
    // take long (it may pace CONNECTs); a client that gave up meanwhile (its own CONNACK timeout)
    // and closed the socket would otherwise still be authenticated and registered, only to be
    // replaced by its next attempt, and keep a socket open until then.
    let decided = if let Some(hook) = &config.connect_handler {
        // Breakwater patch 14.
        let request = ConnectRequest {
            client_id: connect.client_id.clone(),
            username: login.as_ref().map(|l| l.username.clone()),
            password: login.as_ref().map(|l| l.password.clone()),
            clean_session,
            keep_alive: connect.keep_alive,
            will: lastwill.as_ref().map(|w| WillInfo {
                topic: String::from_utf8_lossy(&w.topic).into_owned(),
                qos: w.qos as u8,
                retain: w.retain,
            }),
            peer,
            transport_identity,
        };
        tokio::select! {
            decided = hook(request) => decided,
            gone = network.closed() => return Err(Error::ClosedDuringAuth(gone)),
        }
    } else {
        tokio::select! {
            auth = handle_auth(config.clone(), login.as_ref(), &connect.client_id) => {
                auth.map(|()| None).map_err(|_| ConnectRefusal::BadUserNamePassword)
            }
            gone = network.closed() => return Err(Error::ClosedDuringAuth(gone)),
        }
    };

    match decided {
        Ok(principal) => Ok((packet, principal)),
        Err(refusal) => {
            // Breakwater patch 17: a standard client learns why (upstream closed the socket
            // without a CONNACK). Best effort: the client may be gone already.
            let code = match refusal {
                ConnectRefusal::IdentifierRejected => ConnectReturnCode::ClientIdentifierNotValid,
                ConnectRefusal::ServerUnavailable => ConnectReturnCode::ServiceUnavailable,
                ConnectRefusal::BadUserNamePassword => ConnectReturnCode::BadUserNamePassword,
                ConnectRefusal::NotAuthorized => ConnectReturnCode::NotAuthorized,
            };
            let ack = ConnAck {
                session_present: false,
                code,
            };
            network.write(Packet::ConnAck(ack, None)).await.ok();
            Err(Error::Refused(refusal))
        }
    }
}

async fn handle_auth(
    config: Arc<ConnectionSettings>,
    login: Option<&Login>,
    client_id: &str,
) -> Result<(), Error> {
    if config.auth.is_none() && config.external_auth.is_none() {
        return Ok(());
    }

    // if authentication is configured and connect packet doesn't have login details
    // return an error
    let Some(login) = login else {
        // Breakwater patch: an external hook also decides about a CONNECT without login
        // details (it gets an empty user name and password), so it can admit anonymous clients.
        if let Some(auth) = &config.external_auth {
            if auth(client_id.to_owned(), String::new(), String::new()).await {
                return Ok(());
            }
        }
        return Err(Error::InvalidAuth);
    };

    let username = &login.username;
    let password = &login.password;

    if let Some(auth) = &config.external_auth {
        if !auth(
            client_id.to_owned(),
            username.to_owned(),
            password.to_owned(),
        )
        .await
        {
            return Err(Error::InvalidAuth);
        }

        return Ok(());
    }

    if let Some(pairs) = &config.auth {
        if let Some(stored_password) = pairs.get(username) {
            if stored_password.as_bytes().ct_eq(password.as_bytes()).into() {
                return Ok(());
            }
        }

        return Err(Error::InvalidAuth);
    }

    Err(Error::InvalidAuth)
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, sync::Arc};

    use crate::{protocol::Login, ConnectionSettings};

    use super::handle_auth;

    fn config() -> ConnectionSettings {
        ConnectionSettings {
            connection_timeout_ms: 0,
            max_payload_size: 0,
            max_inflight_count: 0,
            auth: None,
            external_auth: None,
            dynamic_filters: false,
            connect_handler: None,
            authz_handler: None,
            transport_handler: None,
            max_deferred_acks: None,
            deferred_ack_timeout_ms: None,
        }
    }

    fn login() -> Login {
        Login {
            username: "u".to_owned(),
            password: "p".to_owned(),
        }
    }

    #[tokio::test]
    async fn no_login_no_auth() {
        let cfg = Arc::new(config());
        let r = handle_auth(cfg, None, "").await;
        assert!(r.is_ok());
    }

    #[tokio::test]
    async fn some_login_no_auth() {
        let cfg = Arc::new(config());
        let login = login();
        let r = handle_auth(cfg, Some(&login), "").await;
        assert!(r.is_ok());
    }

    #[tokio::test]
    async fn login_matches_static_auth() {
        let login = login();
        let mut map = HashMap::<String, String>::new();
        map.insert(login.username.clone(), login.password.clone());

        let mut cfg = config();
        cfg.auth = Some(map);

        let r = handle_auth(Arc::new(cfg), Some(&login), "").await;
        assert!(r.is_ok());
    }

    #[tokio::test]
    async fn login_fails_static_no_external() {
        let login = login();
        let mut map = HashMap::<String, String>::new();
        map.insert("wrong".to_owned(), "wrong".to_owned());

        let mut cfg = config();
        cfg.auth = Some(map);

        let r = handle_auth(Arc::new(cfg), Some(&login), "").await;
        assert!(r.is_err());
    }

    #[tokio::test]
    async fn login_fails_static_matches_external() {
        let login = login();

        let mut map = HashMap::<String, String>::new();
        map.insert("wrong".to_owned(), "wrong".to_owned());

        let dynamic = |_: String, _: String, _: String| async { true };

        let mut cfg = config();
        cfg.auth = Some(map);
        cfg.set_auth_handler(dynamic);

        let r = handle_auth(Arc::new(cfg), Some(&login), "").await;
        assert!(r.is_ok());
    }

    #[tokio::test]
    async fn login_fails_static_fails_external() {
        let login = login();

        let mut map = HashMap::<String, String>::new();
        map.insert("wrong".to_owned(), "wrong".to_owned());

        let dynamic = |_: String, _: String, _: String| async { false };

        let mut cfg = config();
        cfg.auth = Some(map);
        cfg.set_auth_handler(dynamic);

        let r = handle_auth(Arc::new(cfg), Some(&login), "").await;
        assert!(r.is_err());
    }

    #[tokio::test]
    async fn external_auth_clousre_or_fnptr_type_check_or_fail_compile() {
        let closure = |_: String, _: String, _: String| async { false };
        async fn fnptr(_: String, _: String, _: String) -> bool {
            true
        }

        let mut cfg = config();
        cfg.set_auth_handler(closure);
        cfg.set_auth_handler(fnptr);
    }

    // Breakwater patch: the external hook decides about CONNECTs without login details.
    #[tokio::test]
    async fn no_login_external_auth_decides() {
        let mut allow = config();
        allow.set_auth_handler(|id: String, user: String, pass: String| async move {
            id == "dev" && user.is_empty() && pass.is_empty()
        });
        let allow = Arc::new(allow);
        assert!(handle_auth(allow.clone(), None, "dev").await.is_ok());
        assert!(handle_auth(allow, None, "other").await.is_err());

        let mut deny = config();
        deny.set_auth_handler(|_: String, _: String, _: String| async { false });
        assert!(handle_auth(Arc::new(deny), None, "dev").await.is_err());
    }

    // Breakwater patches 14 and 17: `screen`.
    mod screen {
        use std::collections::VecDeque;
        use std::sync::Arc;

        use bytes::Bytes;

        use super::super::{screen, Error};
        use crate::hooks::{AuthzAction, AuthzHandler, AuthzRequest};
        use crate::protocol::{
            Connect, Filter, Packet, PingReq, Publish, QoS, RetainForwardRule, Subscribe,
            SubscribeReasonCode,
        };

        fn publish(topic: &str, qos: QoS, retain: bool) -> Packet {
            let mut p = Publish::new(Bytes::copy_from_slice(topic.as_bytes()), Bytes::from_static(b"x"), retain);
            p.qos = qos;
            Packet::Publish(p, None)
        }

        fn subscribe(pkid: u16, filters: &[&str]) -> Packet {
            let filters = filters
                .iter()
                .map(|f| Filter {
                    path: (*f).to_owned(),
                    qos: QoS::AtLeastOnce,
                    nolocal: false,
                    preserve_retain: false,
                    retain_forward_rule: RetainForwardRule::OnEverySubscribe,
                })
                .collect();
            Packet::Subscribe(Subscribe { pkid, filters }, None)
        }

        /// Only `own/*`, QoS <= 1, never retained; the principal must be "p".
        fn policy() -> AuthzHandler {
            Arc::new(|r: &AuthzRequest<'_>| {
                r.principal == "p"
                    && match r.action {
                        AuthzAction::Publish { topic, qos, retain } => {
                            topic.starts_with(b"own/") && qos <= 1 && !retain
                        }
                        AuthzAction::Subscribe { filter, .. } => filter == "own/ack",
                    }
            })
        }

        #[test]
        fn allowed_packets_pass_untouched() {
            let mut buf = VecDeque::from([
                publish("own/t", QoS::AtLeastOnce, false),
                subscribe(1, &["own/ack"]),
                Packet::PingReq(PingReq),
            ]);
            let s = screen(&mut buf, 0, Some(&policy()), "c", "p");
            assert!(s.violation.is_none());
            assert!(s.replies.is_empty());
            assert_eq!(buf.len(), 3);
        }

        #[test]
        fn a_denied_publish_ends_the_batch_after_what_came_before() {
            let mut buf = VecDeque::from([
                publish("own/t", QoS::AtLeastOnce, false),
                publish("other/t", QoS::AtLeastOnce, false),
                publish("own/t", QoS::AtLeastOnce, false),
            ]);
            let s = screen(&mut buf, 0, Some(&policy()), "c", "p");
            assert!(matches!(s.violation, Some(Error::PublishDenied { .. })));
            assert_eq!(buf.len(), 1, "only the packet before the denied one goes on");
        }

        #[test]
        fn retained_and_qos2_publishes_are_the_policy_s_to_refuse() {
            for p in [
                publish("own/t", QoS::AtLeastOnce, true),
                publish("own/t", QoS::ExactlyOnce, false),
            ] {
                let mut buf = VecDeque::from([p]);
                let s = screen(&mut buf, 0, Some(&policy()), "c", "p");
                assert!(s.violation.is_some());
                assert!(buf.is_empty());
            }
        }

        #[test]
        fn a_denied_subscription_is_answered_with_failure_and_removed() {
            let mut buf = VecDeque::from([subscribe(7, &["own/ack", "#"]), subscribe(8, &["own/ack"])]);
            let s = screen(&mut buf, 0, Some(&policy()), "c", "p");
            assert!(s.violation.is_none());
            assert_eq!(buf.len(), 1);
            assert!(matches!(&buf[0], Packet::Subscribe(sub, _) if sub.pkid == 8));
            let Some(Packet::SubAck(ack, _)) = s.replies.front() else {
                panic!("no SUBACK: {:?}", s.replies.len())
            };
            assert_eq!(ack.pkid, 7);
            assert_eq!(ack.return_codes, vec![SubscribeReasonCode::Failure; 2]);
        }

        #[test]
        fn only_new_packets_are_screened_and_a_second_connect_is_a_violation() {
            let connect = Packet::Connect(
                Connect {
                    keep_alive: 10,
                    client_id: "c".into(),
                    clean_session: true,
                },
                None,
                None,
                None,
                None,
            );
            // Index 0 was screened by an earlier read (the router has not taken it yet).
            let mut buf = VecDeque::from([publish("other/t", QoS::AtLeastOnce, false), connect]);
            let s = screen(&mut buf, 1, None, "c", "c");
            assert!(matches!(s.violation, Some(Error::SecondConnect)));
            assert_eq!(buf.len(), 1);
        }
    }
}

use crate::protocol::{
    ConnAck, ConnAckProperties, ConnectReturnCode, Disconnect, DisconnectReasonCode, LastWill,
    LastWillProperties, Packet, PingResp, PubAck, PubAckReason, PubComp, PubCompReason, PubRec,
    PubRecReason, PubRel, PubRelReason, Publish, PublishProperties, QoS, SubAck,
    SubscribeReasonCode, UnsubAck, UnsubAckReason,
};
use crate::router::alertlog::alert;
use crate::router::scheduler::{PauseReason, Tracker};
use crate::router::{ConnectionEvents, Forward};
use crate::segments::Position;
use crate::*;
use flume::{bounded, Receiver, RecvError, Sender, TryRecvError};
use slab::Slab;
use std::collections::{HashMap, HashSet, VecDeque};
use std::str::Utf8Error;
use std::thread;
use std::time::{Duration, SystemTime};
use thiserror::Error;
use tracing::{debug, error, info, trace, warn};

use super::alertlog::{Alert, AlertLog};
use super::deferred;
use super::graveyard::Graveyard;
use super::iobufs::{Incoming, Outgoing};
use super::logs::{AckLog, DataLog};
use super::scheduler::{ScheduleReason, Scheduler};
use super::shared_subs::SharedGroup;
use super::{
    packetid, Connection, DataRequest, Event, FilterIdx, Meter, Notification, Print, RouterMeter,
    ShadowRequest, MAX_CHANNEL_CAPACITY, MAX_SCHEDULE_ITERATIONS,
};

/// Breakwater patch 23: a persistent session's record for the session store.
fn stored_session(
    client_id: &str,
    filters: &std::collections::BTreeMap<Filter, QoS>,
    disconnected_at: Option<SystemTime>,
) -> crate::hooks::StoredSession {
    crate::hooks::StoredSession {
        client_id: client_id.to_owned(),
        subscriptions: filters.iter().map(|(f, q)| (f.clone(), *q)).collect(),
        disconnected_at,
    }
}

#[derive(Error, Debug)]
pub enum RouterError {
    #[error("Receive error = {0}")]
    Recv(#[from] RecvError),
    #[error("Try Receive error = {0}")]
    TryRecv(#[from] TryRecvError),
    #[error("Disconnection")]
    Disconnected,
    #[error("Topic not utf-8")]
    NonUtf8Topic(#[from] Utf8Error),
    #[cfg(feature = "validate-tenant-prefix")]
    #[error("Bad Tenant")]
    BadTenant(String, String),
    #[error("No matching filters to topic {0}")]
    NoMatchingFilters(String),
    #[error("Invalid filter prefix {0}")]
    InvalidFilterPrefix(Filter),
    #[error("Invalid client_id {0}")]
    InvalidClientId(String),
    #[error("Disconnection (Reason: {0:?})")]
    Disconnect(DisconnectReasonCode),
}

// TODO: set this to some appropriate value
const TOPIC_ALIAS_MAX: u16 = 4096;

/// Breakwater patch 12: the capacity (packets, ~200 bytes each) the router's exchange buffer
/// keeps between two connections' batches; see `handle_device_payload`.
const CACHE_CAPACITY_KEPT: usize = 8;

/// Breakwater patch 21: defaults of `RouterConfig::max_saved_sessions` and
/// `RouterConfig::saved_session_expiry_secs`.
pub const DEFAULT_MAX_SAVED_SESSIONS: usize = 10_000;
pub const DEFAULT_SAVED_SESSION_EXPIRY_SECS: u64 = 3_600;

pub struct Router {
    id: RouterId,
    /// Id of this router. Used to index native commitlog to store data from
    /// local connections
    config: RouterConfig,
    /// Saved state of dead persistent connections
    graveyard: Graveyard,
    /// List of MetersLink's senders
    meters: Slab<Sender<Vec<Meter>>>,
    /// List of AlertsLink's senders with their respective subscription Filter
    alerts: Slab<Sender<Vec<Alert>>>,
    /// List of connections
    connections: Slab<Connection>,
    /// Connection map from device id to connection id
    connection_map: HashMap<String, ConnectionId>,
    /// Subscription map to interested connection ids
    subscription_map: HashMap<Filter, HashSet<ConnectionId>>,
    /// Incoming data grouped by connection
    ibufs: Slab<Incoming>,
    /// Outgoing data grouped by connection
    obufs: Slab<Outgoing>,
    /// Data log of all the subscriptions
    datalog: DataLog,
    /// Data log of all the alert subscriptions
    alertlog: AlertLog,
    /// Acks log per connection
    ackslog: Slab<AckLog>,
    /// Scheduler to schedule connections
    scheduler: Scheduler,
    /// Parked requests that are ready because of new data on the subscription
    notifications: VecDeque<(ConnectionId, DataRequest)>,
    /// Channel receiver to receive data from all the active connections and
    /// replicators. Each connection will have a tx handle which they use
    /// to send data and requests to router
    router_rx: Receiver<(ConnectionId, Event)>,
    /// Channel sender to send data to this router. This is given to active
    /// network connections, local connections and replicators to communicate
    /// with this router
    router_tx: Sender<(ConnectionId, Event)>,
    /// Router metrics
    router_meters: RouterMeter,
    /// Buffer for cache exchange of incoming packets
    cache: Option<VecDeque<Packet>>,
    /// Shared subscriptions map <group-name, group>
    shared_subscriptions: HashMap<String, SharedGroup>,
    /// Will messages per client_id
    last_wills: HashMap<String, (LastWill, Option<LastWillProperties>)>,
    /// Breakwater patch 22: filters whose QoS 1 PUBACKs a local link owns, with that link.
    deferred_filters: Vec<(String, ConnectionId)>,
    /// Breakwater patch 23: where persistent sessions outlive the process, if anywhere.
    session_store: Option<std::sync::Arc<dyn crate::hooks::SessionStore>>,
}

impl Router {
    pub fn new(router_id: RouterId, config: RouterConfig) -> Router {
        let (router_tx, router_rx) = bounded(1000);

        let meters = Slab::with_capacity(10);
        let alerts = Slab::with_capacity(10);
        let connections = Slab::with_capacity(config.max_connections);
        let ibufs = Slab::with_capacity(config.max_connections);
        let obufs = Slab::with_capacity(config.max_connections);
        let ackslog = Slab::with_capacity(config.max_connections);

        let router_metrics = RouterMeter {
            router_id,
            ..RouterMeter::default()
        };

        let max_connections = config.max_connections;
        let session_store = config.session_store.clone();
        Router {
            id: router_id,
            config: config.clone(),
            // Breakwater patch 21: a cap and an expiry on saved persistent sessions.
            graveyard: Graveyard::new(
                config
                    .max_saved_sessions
                    .unwrap_or(DEFAULT_MAX_SAVED_SESSIONS),
                Duration::from_secs(
                    config
                        .saved_session_expiry_secs
                        .unwrap_or(DEFAULT_SAVED_SESSION_EXPIRY_SECS),
                ),
            ),
            meters,
            alerts,
            connections,
            connection_map: Default::default(),
            subscription_map: Default::default(),
            ibufs,
            obufs,
            datalog: DataLog::new(config.clone()).unwrap(),
            alertlog: AlertLog::new(config),
            ackslog,
            scheduler: Scheduler::with_capacity(max_connections),
            notifications: VecDeque::with_capacity(1024),
            router_rx,
            router_tx,
            router_meters: router_metrics,
            cache: Some(VecDeque::with_capacity(MAX_CHANNEL_CAPACITY)),
            shared_subscriptions: HashMap::new(),
            last_wills: HashMap::new(),
            deferred_filters: Vec::new(),
            session_store,
        }
    }

    /// Gets handle to the router. This is not a public method to ensure that link
    /// is created only after the router starts
    fn link(&self) -> Sender<(ConnectionId, Event)> {
        self.router_tx.clone()
    }

    // pub(crate) fn get_replica_handle(&mut self, _replica_id: NodeId) -> (LinkTx, LinkRx) {
    //     unimplemented!()
    // }

    /// Starts the router in a background thread and returns link to it. Link
    /// to communicate with router should only be returned only after it starts.
    /// For that reason, all the public methods should start the router in the
    /// background
    #[tracing::instrument(skip_all)]
    pub fn spawn(mut self) -> Sender<(ConnectionId, Event)> {
        let router = thread::Builder::new().name(format!("router-{}", self.id));
        let link = self.link();
        router
            .spawn(move || {
                // Breakwater patch 23: before any connection.
                self.restore_sessions();
                let e = self.run(0);
                error!(reason=?e, "Router done!");
            })
            .unwrap();
        link
    }

    /// Waits on incoming events when ready queue is empty.
    /// After pulling 1 event, tries to pull 500 more events
    /// before polling ready queue 100 times (connections)
    #[tracing::instrument(skip_all)]
    fn run(&mut self, count: usize) -> Result<(), RouterError> {
        match count {
            0 => loop {
                self.run_inner()?;
            },
            n => {
                for _ in 0..n {
                    self.run_inner()?;
                }
            }
        };

        Ok(())
    }

    fn run_inner(&mut self) -> Result<(), RouterError> {
        // Block on incoming events if there are no ready connections for consumption
        if self.consume().is_none() {
            // trace!("{}:: {:20} {:20} {:?}", self.id, "", "done-await", self.readyqueue);
            let (id, data) = self.router_rx.recv()?;
            self.events(id, data);
        }

        // Try reading more from connections in a non-blocking
        // fashion to accumulate data and handle subscriptions.
        // Accumulating more data lets requests retrieve bigger
        // bulks which in turn increases efficiency
        for _ in 0..500 {
            // All these methods will handle state and errors
            match self.router_rx.try_recv() {
                Ok((id, data)) => self.events(id, data),
                Err(TryRecvError::Disconnected) => return Err(RouterError::Disconnected),
                Err(TryRecvError::Empty) => break,
            }
        }

        // A connection should not be scheduled multiple times
        #[cfg(debug_assertions)]
        if let Some(readyqueue) = self.scheduler.check_readyqueue_duplicates() {
            warn!(
                "Connection was scheduled multiple times in readyqueue: {:?}",
                readyqueue
            );
        }

        // Poll 100 connections which are ready in ready queue
        for _ in 0..100 {
            self.consume();
        }

        // self.send_all_alerts();
        Ok(())
    }

    fn events(&mut self, id: ConnectionId, data: Event) {
        let span = tracing::error_span!("[>] incoming", connection_id = id);
        let _guard = span.enter();

        match data {
            Event::Connect {
                connection,
                incoming,
                outgoing,
            } => self.handle_new_connection(connection, incoming, outgoing),
            Event::NewMeter(tx) => self.handle_new_meter(tx),
            Event::NewAlert(tx) => self.handle_new_alert(tx),
            Event::DeviceData => self.handle_device_payload(id),
            Event::Disconnect { generation } => self.handle_link_disconnection(id, generation),
            Event::Ready => self.scheduler.reschedule(id, ScheduleReason::Ready),
            Event::Shadow(request) => {
                retrieve_shadow(&mut self.datalog, &mut self.obufs[id], request)
            }
            Event::SendAlerts => {
                self.send_alerts();
            }
            Event::SendMeters => {
                self.send_meters();
            }
            Event::PrintStatus(metrics) => print_status(self, metrics),
            Event::PublishWill((client_id, _tenant_id)) => self.handle_last_will(
                client_id,
                #[cfg(feature = "validate-tenant-prefix")]
                _tenant_id,
            ),
            Event::DeferAcks { filter } => self.handle_defer_acks(id, filter),
            Event::DeferredAck(token) => self.handle_deferred_ack(token),
            Event::DeferredRefuse(token) => self.handle_deferred_refuse(token),
        }
    }

    /// Breakwater patch 22: `owner` owns the PUBACKs of QoS 1 publishes matching `filter` (and
    /// the release of QoS 0 ones).
    fn handle_defer_acks(&mut self, owner: ConnectionId, filter: String) {
        if self.connections.get(owner).is_none() {
            return;
        }
        if self.deferred_filters.iter().any(|(f, _)| *f == filter) {
            warn!(filter, "deferred-ack filter already has an owner: ignored");
            return;
        }
        info!(filter, owner, "PUBACKs of QoS 1 publishes deferred to a local link");
        self.deferred_filters.push((filter, owner));
    }

    /// Breakwater patch 22: the live connection a token names, if any.
    fn deferred_target(&self, token: deferred::AckToken) -> Option<ConnectionId> {
        match self.connections.get(token.connection) {
            Some(c) if c.generation == token.generation => Some(token.connection),
            _ => None,
        }
    }

    /// Breakwater patch 22: the owner acks a deferred publish; its PUBACK, and those of later
    /// ones acked before it, go out in arrival order.
    fn handle_deferred_ack(&mut self, token: deferred::AckToken) {
        let Some(id) = self.deferred_target(token) else {
            deferred::stale_token_counted();
            return;
        };
        let connection = &mut self.connections[id];
        let Some(released) = connection
            .deferred
            .complete(token.serial, &connection.deferred_shared)
        else {
            deferred::stale_token_counted();
            return;
        };
        if released.is_empty() {
            return;
        }
        let ackslog = &mut self.ackslog[id];
        for pkid in released {
            ackslog.puback(PubAck {
                pkid,
                reason: PubAckReason::Success,
            });
        }
        self.scheduler.reschedule(id, ScheduleReason::PendingAcks);
    }

    /// Breakwater patch 22: the owner closes the connection that sent a deferred publish.
    fn handle_deferred_refuse(&mut self, token: deferred::AckToken) {
        let Some(id) = self.deferred_target(token) else {
            deferred::stale_token_counted();
            return;
        };
        self.connections[id].deferred_shared.refuse();
        self.handle_disconnection(id, None);
    }

    fn handle_new_connection(
        &mut self,
        mut connection: Connection,
        incoming: Incoming,
        mut outgoing: Outgoing,
    ) {
        let client_id = outgoing.client_id.clone();
        if let Err(err) = validate_clientid(&client_id) {
            // Breakwater patch 17: a client alone causes this; debug, not ERROR.
            debug!("Invalid client_id: {}", err);
            return;
        };

        let span = tracing::info_span!("incoming_connect", client_id);
        let _guard = span.enter();

        if cfg!(not(feature = "allow-duplicate-clientid")) {
            // Check if same client_id already exists and if so, replace it with this new connection
            // ref: https://docs.oasis-open.org/mqtt/mqtt/v3.1.1/os/mqtt-v3.1.1-os.html#_Toc398718032

            let connection_id = self.connection_map.get(&client_id);
            if let Some(connection_id) = connection_id {
                // Breakwater patch 17: a reconnecting device does this routinely.
                debug!(
                    "Duplicate client_id, dropping previous connection with connection_id: {}",
                    connection_id
                );
                self.handle_disconnection(*connection_id, None);
            }
        }

        if self.connections.len() >= self.config.max_connections {
            error!("no space for new connection");
            // let ack = ConnectionAck::Failure("No space for new connection".to_owned());
            // let message = Notification::ConnectionAck(ack);
            return;
        }

        // Breakwater patch 21: expired saved sessions go first, so none is resumed.
        for session in self.graveyard.evict() {
            self.release_saved_session(session);
        }
        // Retrieve previous connection state from graveyard
        let saved = self.graveyard.retrieve(&client_id);
        let clean_session = connection.clean;
        let previous_session = saved.as_ref().is_some_and(|s| s.session_state.is_some());
        // for qos2 pending pubrels
        let mut pending_acks = VecDeque::new();

        let tracker = if !clean_session {
            // if there was some saved state, restore the metrics
            // and get the session's state if present
            let saved_state = saved.and_then(|saved| {
                connection.events = saved.metrics;
                saved.session_state
            });

            // if session's state is present, restore that session
            // otherwise, just start new one
            let tracker = saved_state.map_or_else(
                || Tracker::new(client_id.clone()),
                |session_state| {
                    connection.subscriptions = session_state.subscriptions;
                    connection.stored_filters = session_state.stored_filters;
                    // for using in acklog
                    pending_acks.clone_from(&session_state.unacked_pubrels);
                    outgoing.unacked_pubrels = session_state.unacked_pubrels;
                    session_state.tracker
                },
            );
            // Breakwater patch 23: a persistent session exists from its CONNECT on.
            self.store_session(&client_id, &connection.stored_filters, None);
            tracker
        } else {
            // Only retrieve metrics in clean session
            // Breakwater patch 21: a saved persistent session the clean one discards releases
            // what its subscriptions held.
            connection.events = saved.map_or_else(ConnectionEvents::default, |s| {
                if let Some(session) = s.session_state {
                    self.release_saved_session(session);
                }
                s.metrics
            });
            Tracker::new(client_id.clone())
        };

        let ackslog = AckLog::new();

        let time = match SystemTime::now().duration_since(SystemTime::UNIX_EPOCH) {
            Ok(v) => v.as_millis().to_string(),
            Err(e) => format!("Time error = {e:?}"),
        };

        let event = "connection at ".to_owned() + &time + ", clean = " + &clean_session.to_string();
        connection.events.events.push_back(event);

        if connection.events.events.len() > 10 {
            connection.events.events.pop_front();
        }

        if let Some(will) = connection.last_will.take() {
            self.last_wills.insert(
                client_id.clone(),
                (will, connection.last_will_properties.take()),
            );
        }

        let connection_id = self.connections.insert(connection);
        assert_eq!(self.ibufs.insert(incoming), connection_id);
        assert_eq!(self.obufs.insert(outgoing), connection_id);

        self.connection_map.insert(client_id.clone(), connection_id);
        info!(connection_id, "Client connection registered");

        assert_eq!(self.ackslog.insert(ackslog), connection_id);
        assert_eq!(self.scheduler.add(tracker), connection_id);

        // Check if there are multiple data requests on same filter.
        debug_assert!(self
            .scheduler
            .check_tracker_duplicates(connection_id)
            .is_none());

        let ack = ConnAck {
            session_present: !clean_session && previous_session,
            code: ConnectReturnCode::Success,
        };

        let properties = ConnAckProperties {
            topic_alias_max: Some(TOPIC_ALIAS_MAX),
            ..Default::default()
        };

        let ackslog = self.ackslog.get_mut(connection_id).unwrap();
        ackslog.connack(connection_id, ack, Some(properties));

        pending_acks.into_iter().for_each(|pkid| {
            // NOTE: will it be better if we store the whole PubRel
            // instead of pkid in pending acks
            let pubrel = PubRel {
                pkid,
                reason: PubRelReason::Success,
            };
            ackslog.pubrel(pubrel)
        });

        self.scheduler
            .reschedule(connection_id, ScheduleReason::Init);

        self.router_meters.total_connections += 1;
    }

    fn handle_new_meter(&mut self, tx: Sender<Vec<Meter>>) {
        let _meter_id = self.meters.insert(tx);
    }

    fn handle_new_alert(&mut self, tx: Sender<Vec<Alert>>) {
        let _alert_id = self.alerts.insert(tx);
    }

    /// Breakwater patch 9: a link reports that its connection ended. Acts only if `id` still
    /// holds the connection that link registered (`generation`). Otherwise the connection is
    /// already gone, and `id` may hold a newer one: typically the same client reconnected, its
    /// CONNECT replaced the old connection (duplicate client id) and got the freed id while the
    /// old link's disconnect was still queued. Applying it would drop the new connection, often
    /// before its CONNACK.
    fn handle_link_disconnection(&mut self, id: ConnectionId, generation: u64) {
        match self.connections.get(id) {
            Some(connection) if connection.generation == generation => {
                self.handle_disconnection(id, None)
            }
            Some(connection) => info!(
                connection_id = id,
                generation,
                current_generation = connection.generation,
                "stale disconnect of a replaced connection, id reused: ignored"
            ),
            None => debug!(
                connection_id = id,
                "disconnect of a connection already gone"
            ),
        }
    }

    fn handle_disconnection(&mut self, id: ConnectionId, reason: Option<DisconnectReasonCode>) {
        // Some clients can choose to send Disconnect packet before network disconnection.
        // This will lead to double Disconnect packets in router `events`
        let client_id = match &self.obufs.get(id) {
            Some(v) => v.client_id.clone(),
            None => {
                debug!("no-connection id {} is already gone", id); // Breakwater patch 17
                return;
            }
        };

        let span = tracing::info_span!("incoming_disconnect", client_id);
        let _guard = span.enter();

        // must handle last will before sending disconnect packet
        // as the disconnecting client might have subscribed to will topic.
        // if execute_last_will {
        //     self.handle_last_will(id);
        // }

        info!("Disconnecting connection");

        if let Some(reason_code) = reason {
            let outgoing = match self.obufs.get_mut(id) {
                Some(v) => v,
                None => {
                    debug!("no-connection id {} is already gone", id); // Breakwater patch 17
                    return;
                }
            };

            let disconnect = Disconnect { reason_code };

            let disconnect_notification = Notification::Disconnect(disconnect, None);

            outgoing
                .data_buffer
                .lock()
                .push_back(disconnect_notification);

            outgoing.handle.try_send(()).ok();
        }

        // Remove connection from router
        let mut connection = self.connections.remove(id);
        let _incoming = self.ibufs.remove(id);
        let outgoing = self.obufs.remove(id);
        let mut tracker = self.scheduler.remove(id);
        self.connection_map.remove(&client_id);
        self.ackslog.remove(id);
        // Breakwater patch 22: a local link's deferred filters go with it; tokens of publishes
        // handed to it are lost, and their publishers' connections time out (`deferred`).
        self.deferred_filters.retain(|(_, owner)| *owner != id);

        // Don't remove connection id from readyqueue with index. This will
        // remove wrong connection from readyqueue. Instead just leave disconnected
        // connection in readyqueue and allow 'consume()' method to deal with this
        // self.readyqueue.remove(id);

        let inflight_data_requests = self.datalog.clean(id);
        let retransmissions = outgoing.retransmission_map();

        // Remove connections from all groups and
        // discard empty group ( group with no client )
        // note: can we do this in better way?
        self.shared_subscriptions.retain(|_, group| {
            group.remove_client(&client_id);
            !group.is_empty()
        });

        // Remove this connection from subscriptions
        for filter in connection.subscriptions.iter() {
            if let Some(connections) = self.subscription_map.get_mut(filter) {
                connections.remove(&id);
                // Breakwater patch 20: no empty entry per filter ever subscribed.
                if connections.is_empty() {
                    self.subscription_map.remove(filter);
                }
            }
        }

        // Add disconnection event to metrics
        let time = match SystemTime::now().duration_since(SystemTime::UNIX_EPOCH) {
            Ok(v) => v.as_millis().to_string(),
            Err(e) => format!("Time error = {e:?}"),
        };

        let event = "disconnection at ".to_owned() + &time;
        connection.events.events.push_back(event);

        if connection.events.events.len() > 10 {
            connection.events.events.pop_front();
        }

        // Save state for persistent sessions
        if !connection.clean {
            // Add inflight data requests back to tracker
            inflight_data_requests
                .into_iter()
                .for_each(|r| tracker.register_data_request(r));

            for request in tracker.data_requests.iter_mut() {
                if let Some(cursor) = retransmissions.get(&request.filter_idx) {
                    request.cursor = *cursor;
                    // reset the group cursor
                    if let Some(group_name) = &request.group {
                        // TODO: Test this more
                        self.shared_subscriptions
                            .get_mut(group_name)
                            .expect("group must exists")
                            .cursor = *cursor;
                    }
                }
            }

            // Breakwater patch 23: its expiry runs from now, also after a restart.
            self.store_session(
                &client_id,
                &connection.stored_filters,
                Some(SystemTime::now()),
            );
            let dropped = self.graveyard.save_state(
                tracker,
                connection.subscriptions,
                connection.stored_filters,
                connection.events,
                outgoing.unacked_pubrels,
            );
            // Breakwater patch 21: sessions dropped beyond the cap or expired.
            for session in dropped {
                self.release_saved_session(session);
            }
        } else {
            // Breakwater patch 11: this session's data requests are gone (parked ones were
            // removed from the waiters by `clean` above, the others are in its tracker).
            // Breakwater patch 20: a filter nobody reads any more is forgotten, and nothing is
            // saved for a clean session (upstream saved its metrics for good).
            for request in inflight_data_requests
                .iter()
                .chain(tracker.data_requests.iter())
            {
                self.datalog
                    .remove_reader(request.filter_idx, request.group.is_some());
                self.datalog.forget_if_unused(request.filter_idx);
            }
        }
        self.router_meters.total_connections -= 1;
    }

    /// Breakwater patch 21: a saved persistent session is dropped (cap, expiry, or a clean
    /// session with its client id): its data requests stop pinning their logs, and filters
    /// nobody reads any more are forgotten.
    fn release_saved_session(&mut self, session: super::graveyard::SessionState) {
        // Breakwater patch 23: and it is gone from the store.
        if let Some(store) = &self.session_store {
            store.forget(&session.tracker.id);
        }
        self.release_saved_session_readers(session);
    }

    fn release_saved_session_readers(&mut self, session: super::graveyard::SessionState) {
        for request in session.tracker.data_requests.iter() {
            self.datalog.remove_reader(request.filter_idx, true);
            self.datalog.forget_if_unused(request.filter_idx);
        }
    }

    /// Breakwater patch 23: reports a persistent session's record to the store, if any.
    fn store_session(
        &self,
        client_id: &str,
        filters: &std::collections::BTreeMap<Filter, QoS>,
        disconnected_at: Option<SystemTime>,
    ) {
        if let Some(store) = &self.session_store {
            store.save(stored_session(client_id, filters, disconnected_at));
        }
    }

    /// Breakwater patch 23: puts the sessions of the session store, if any, in the graveyard,
    /// as saved when their clients went (or now, if they were connected when the broker
    /// stopped): a session older than the expiry, or beyond the cap, is dropped (and forgotten
    /// by the store) right away. Each subscription gets a data request at the end of its
    /// (new, empty) log, as a new subscription would, retained messages included. Shared
    /// subscriptions and invalid client ids or filters are skipped.
    pub(crate) fn restore_sessions(&mut self) {
        let Some(store) = self.session_store.clone() else {
            return;
        };
        let sessions = store.load();
        let count = sessions.len();
        let now = SystemTime::now();
        let start = std::time::Instant::now();
        for stored in sessions {
            if validate_clientid(&stored.client_id).is_err() {
                warn!(
                    client_id = stored.client_id,
                    "stored session: invalid client id, skipped"
                );
                store.forget(&stored.client_id);
                continue;
            }
            // Restored before: a store that repeats a client id has the last word.
            if let Some(previous) = self.graveyard.retrieve(&stored.client_id) {
                if let Some(session) = previous.session_state {
                    self.release_saved_session_readers(session);
                }
            }
            let mut tracker = Tracker::new(stored.client_id.clone());
            let mut subscriptions = HashSet::new();
            let mut stored_filters = std::collections::BTreeMap::new();
            for (filter, qos) in stored.subscriptions {
                if extract_group(&filter).is_some() || filter.is_empty() {
                    debug!(filter, "stored session: filter not restored");
                    continue;
                }
                if !subscriptions.insert(filter.clone()) {
                    continue;
                }
                let (filter_idx, cursor) = self.datalog.next_native_offset(&filter);
                self.datalog.add_reader(filter_idx, true);
                tracker.register_data_request(DataRequest {
                    filter: filter.clone(),
                    filter_idx,
                    qos: qos as u8,
                    cursor,
                    read_count: 0,
                    max_count: 100,
                    forward_retained: true,
                    group: None,
                });
                stored_filters.insert(filter, qos);
            }
            let age = stored
                .disconnected_at
                .and_then(|at| now.duration_since(at).ok())
                .unwrap_or_default();
            if age >= self.graveyard.expiry() {
                store.forget(&stored.client_id);
                continue;
            }
            // (An age beyond the monotonic clock's start, after a reboot: from now, so at most
            // one expiry more.)
            let saved_at = start.checked_sub(age).unwrap_or(start);
            let session = super::graveyard::SessionState {
                tracker,
                subscriptions,
                stored_filters,
                unacked_pubrels: VecDeque::new(),
            };
            let dropped =
                self.graveyard
                    .save_state_at(session, ConnectionEvents::default(), saved_at);
            for session in dropped {
                self.release_saved_session(session);
            }
        }
        for session in self.graveyard.evict() {
            self.release_saved_session(session);
        }
        info!(
            stored = count,
            restored = self.graveyard.len(),
            "persistent sessions restored"
        );
    }

    /// Handles new incoming data on a topic
    fn handle_device_payload(&mut self, id: ConnectionId) {
        // TODO: Retun errors and move error handling to the caller
        let incoming = match self.ibufs.get_mut(id) {
            Some(v) => v,
            None => {
                debug!("no-connection id {} is already gone", id); // Breakwater patch 17
                return;
            }
        };

        let client_id = incoming.client_id.clone();
        let span = tracing::error_span!("incoming_payload", client_id);
        let _guard = span.enter();

        // Instead of exchanging, we should just append new incoming packets inside cache
        let mut packets = incoming.exchange(self.cache.take().unwrap());

        let mut force_ack = false;
        let mut new_data = false;
        let mut disconnect = false;
        let mut disconnect_reason: Option<DisconnectReasonCode> = None;

        // info!("{:15.15}[I] {:20} count = {}", client_id, "packets", packets.len());

        for packet in packets.drain(0..) {
            match packet {
                Packet::Publish(publish, properties) => {
                    let span = tracing::error_span!("publish", topic = ?publish.topic, pkid = publish.pkid);
                    let _guard = span.enter();

                    let qos = publish.qos;
                    let pkid = publish.pkid;

                    // Breakwater patch 22: a publish on a deferred filter goes to its owner with
                    // a token: QoS 1 instead of its PUBACK, QoS 0 for its slot among the
                    // connection's waiting publishes (released without a PUBACK). (A topic
                    // alias, MQTT 5, is resolved only later: such a publish takes the usual
                    // path.)
                    let owner = match qos {
                        QoS::ExactlyOnce => None,
                        _ => deferred_owner(&self.deferred_filters, &publish.topic, id),
                    };
                    if let Some(owner) = owner {
                        let connection = &mut self.connections[id];
                        let puback = (qos == QoS::AtLeastOnce).then_some(pkid);
                        let token = deferred::AckToken {
                            connection: id,
                            generation: connection.generation,
                            serial: connection
                                .deferred
                                .push(puback, &connection.deferred_shared),
                        };
                        let handed = deferred::DeferredPublish {
                            token,
                            client_id: client_id.clone(),
                            pkid,
                            dup: publish.dup,
                            publish: publish.clone(),
                            properties: properties.clone(),
                        };
                        if let Some(outgoing) = self.obufs.get_mut(owner) {
                            outgoing
                                .data_buffer
                                .lock()
                                .push_back(Notification::Deferred(Box::new(handed)));
                            outgoing.handle.try_send(()).ok();
                        }
                        self.router_meters.total_publishes += 1;
                        // Also to the logs, for any subscriber; none is no error here.
                        match append_to_commitlog(
                            id,
                            publish,
                            properties,
                            &mut self.datalog,
                            &mut self.notifications,
                            &mut self.connections,
                        ) {
                            Ok(_) => new_data = true,
                            Err(RouterError::NoMatchingFilters(_)) => {}
                            Err(e) => {
                                error!(reason = ?e, "Failed to append to commitlog");
                                self.router_meters.failed_publishes += 1;
                                disconnect = true;
                                if let RouterError::Disconnect(code) = e {
                                    disconnect_reason = Some(code)
                                }
                                break;
                            }
                        }
                        continue;
                    }

                    // Prepare acks for the above publish
                    // If any of the publish in the batch results in force flush,
                    // set global force flush flag. Force flush is triggered when the
                    // router is in instant ack more or connection data is from a replica
                    //
                    // TODO: handle multiple offsets
                    //
                    // The problem with multiple offsets is that when using replication with the current
                    // architecture, a single publish might get appended to multiple commit logs, resulting in
                    // multiple offsets (see `append_to_commitlog` function), meaning replicas will need to
                    // coordinate using multiple offsets, and we don't have any idea how to do so right now.
                    // Currently as we don't have replication, we just use a single offset, even when appending to
                    // multiple commit logs.

                    match qos {
                        QoS::AtLeastOnce => {
                            let puback = PubAck {
                                pkid,
                                reason: PubAckReason::Success,
                            };

                            let ackslog = self.ackslog.get_mut(id).unwrap();
                            ackslog.puback(puback);
                            force_ack = true;
                        }
                        QoS::ExactlyOnce => {
                            let pubrec = PubRec {
                                pkid,
                                reason: PubRecReason::Success,
                            };

                            let ackslog = self.ackslog.get_mut(id).unwrap();
                            ackslog.pubrec(publish, properties, pubrec);
                            force_ack = true;
                            continue;
                        }
                        QoS::AtMostOnce => {
                            // Do nothing
                        }
                    };

                    self.router_meters.total_publishes += 1;

                    // Try to append publish to commitlog
                    match append_to_commitlog(
                        id,
                        publish.clone(),
                        properties,
                        &mut self.datalog,
                        &mut self.notifications,
                        &mut self.connections,
                    ) {
                        Ok(_offset) => {
                            // Even if one of the data in the batch is appended to commitlog,
                            // set new data. This triggers notifications to wake waiters.
                            // Don't overwrite this flag to false if it is already true.
                            new_data = true;
                        }
                        Err(e) => {
                            // Disconnect on bad publishes
                            // Breakwater patch 17: one client's bad publish; it is disconnected.
                            debug!(
                                reason = ?e, "Failed to append to commitlog"
                            );
                            self.router_meters.failed_publishes += 1;
                            disconnect = true;

                            if let RouterError::Disconnect(code) = e {
                                disconnect_reason = Some(code)
                            }

                            break;
                        }
                    };

                    let meter = &mut self.ibufs.get_mut(id).unwrap().meter;
                    if let Err(e) = meter.register_publish(&publish) {
                        error!(
                            reason = ?e, "Failed to write to incoming meter"
                        );
                    };
                }
                Packet::Subscribe(mut subscribe, props) => {
                    let mut return_codes = Vec::new();
                    let pkid = subscribe.pkid;
                    // let len = s.len();

                    for f in &mut subscribe.filters {
                        let span =
                            tracing::info_span!("subscribe", topic = f.path, pkid = subscribe.pkid);
                        let _guard = span.enter();

                        info!("Adding subscription on topic {}", f.path);
                        let connection = self.connections.get_mut(id).unwrap();

                        if let Err(e) = validate_subscription(connection, f) {
                            warn!(reason = ?e,"Subscription cannot be validated: {}", e);

                            disconnect = true;
                            break;
                        }

                        let mut filter = f.path.clone();
                        let mut group = None;

                        if let Some((grp, filter_path)) = extract_group(&f.path) {
                            group = Some(grp);
                            filter = filter_path;
                        };

                        let subscription_id = props.as_ref().and_then(|p| p.id);

                        if subscription_id == Some(0) {
                            debug!("Subscription identifier can't be 0"); // Breakwater patch 17
                            disconnect = true;
                            disconnect_reason = Some(DisconnectReasonCode::ProtocolError);
                            break;
                        }

                        let (idx, cursor) = self.datalog.next_native_offset(&filter);

                        // in case of shared sub original_filter will be $share/group/topic
                        // this is because we do want to treat is as diffrent subscription
                        // and create DataRequest, while using the same datalog of "topic"
                        // NOTE: topic & $share/group/topic will have same filteridx!
                        self.prepare_filter(id, cursor, idx, f, group, subscription_id);

                        let code = match f.qos {
                            QoS::AtMostOnce => SubscribeReasonCode::QoS0,
                            QoS::AtLeastOnce => SubscribeReasonCode::QoS1,
                            QoS::ExactlyOnce => SubscribeReasonCode::QoS2,
                        };

                        return_codes.push(code);
                    }

                    // let meter = &mut self.ibufs.get_mut(id).unwrap().meter;
                    // meter.total_size += len;

                    let suback = SubAck { pkid, return_codes };
                    let ackslog = self.ackslog.get_mut(id).unwrap();
                    ackslog.suback(suback);
                    force_ack = true;
                    // Breakwater patch 23: before the SUBACK leaves (with this batch's acks).
                    if let Some(connection) = self.connections.get(id) {
                        if !connection.clean {
                            self.store_session(&client_id, &connection.stored_filters, None);
                        }
                    }
                }
                Packet::Unsubscribe(unsubscribe, _) => {
                    let connection = self.connections.get_mut(id).unwrap();
                    let pkid = unsubscribe.pkid;
                    let stored_before = connection.stored_filters.len();
                    for filter in &unsubscribe.filters {
                        let span = tracing::info_span!("unsubscribe", topic = filter, pkid);
                        let _guard = span.enter();

                        debug!("Removing subscription on filter {}", filter);
                        if let Some(connection_ids) = self.subscription_map.get_mut(filter) {
                            let removed = connection_ids.remove(&id);
                            if !removed {
                                continue;
                            }

                            let meter = &mut self.ibufs.get_mut(id).unwrap().meter;
                            meter.unregister_subscription(filter);

                            if !connection.subscriptions.remove(filter) {
                                warn!(
                                    pkid = unsubscribe.pkid,
                                    "Unsubscribe failed as filter was not subscribed previously"
                                );
                                continue;
                            }
                            connection.stored_filters.remove(filter);

                            // Remove connections from all groups
                            // discard empty group ( group with no client )
                            // note: can we do this in better way?
                            self.shared_subscriptions.retain(|_, group| {
                                group.remove_client(&client_id);
                                !group.is_empty()
                            });

                            if let Some(broker_aliases) = connection.broker_topic_aliases.as_mut() {
                                broker_aliases.remove_alias(filter);
                            }

                            // remove the subscription id
                            connection.subscription_ids.remove(filter);

                            let unsuback = UnsubAck {
                                pkid,
                                // reasons are used in MQTTv5
                                reasons: vec![UnsubAckReason::Success],
                            };
                            let ackslog = self.ackslog.get_mut(id).unwrap();
                            ackslog.unsuback(unsuback);
                            let untracked = self.scheduler.untrack(id, filter);
                            let parked = self.datalog.remove_waiters_for_id(id, filter);
                            // Breakwater patch 11: the request is gone. Patch 21: a persistent
                            // session's too (it pinned the log; see `add_reader`). Patch 20: a
                            // filter nobody reads any more is forgotten.
                            if let Some(filter_idx) =
                                untracked.or(parked.map(|request| request.filter_idx))
                            {
                                let rereads =
                                    !connection.clean || extract_group(filter).is_some();
                                self.datalog.remove_reader(filter_idx, rereads);
                                self.datalog.forget_if_unused(filter_idx);
                            }
                            if connection_ids.is_empty() {
                                self.subscription_map.remove(filter);
                            }
                            force_ack = true;
                        }
                    }
                    // Breakwater patch 23.
                    if connection.stored_filters.len() != stored_before {
                        if let Some(store) = &self.session_store {
                            store.save(stored_session(
                                &client_id,
                                &connection.stored_filters,
                                None,
                            ));
                        }
                    }
                }
                Packet::PubAck(puback, _) => {
                    let span = tracing::info_span!("puback", pkid = puback.pkid);
                    let _guard = span.enter();

                    let outgoing = self.obufs.get_mut(id).unwrap();
                    let pkid = puback.pkid;
                    if outgoing.register_ack(pkid).is_none() {
                        debug!(pkid, "Unsolicited/ooo ack received for pkid {}", pkid); // Breakwater patch 17
                        disconnect = true;
                        break;
                    }

                    self.scheduler.reschedule(id, ScheduleReason::IncomingAck);
                }
                Packet::PubRec(pubrec, _) => {
                    let span = tracing::info_span!("pubrec", pkid = pubrec.pkid);
                    let _guard = span.enter();

                    let outgoing = self.obufs.get_mut(id).unwrap();
                    let pkid = pubrec.pkid;
                    if outgoing.register_ack(pkid).is_none() {
                        debug!(pkid, "Unsolicited/ooo ack received for pkid {}", pkid); // Breakwater patch 17
                        disconnect = true;
                        break;
                    }

                    let ackslog = self.ackslog.get_mut(id).unwrap();
                    let pubrel = PubRel {
                        pkid: pubrec.pkid,
                        reason: PubRelReason::Success,
                    };

                    outgoing.register_pubrec(pubrel.pkid);
                    ackslog.pubrel(pubrel);
                    self.scheduler.reschedule(id, ScheduleReason::IncomingAck);
                }
                Packet::PubRel(pubrel, None) => {
                    let span = tracing::info_span!("pubrel", pkid = pubrel.pkid);
                    let _guard = span.enter();

                    let ackslog = self.ackslog.get_mut(id).unwrap();
                    let pubcomp = PubComp {
                        pkid: pubrel.pkid,
                        reason: PubCompReason::Success,
                    };

                    // NOTE: client can try to resend previously unacked pubrels
                    // on reconnection ( with clean session false )
                    // we try to retrive publish assuming broker saved the previous state
                    // successfully in graveyard.
                    let (publish, props) = match ackslog.pubcomp(pubcomp) {
                        Some(v) => v,
                        None => {
                            disconnect = true;
                            break;
                        }
                    };

                    // Try to append publish to commitlog
                    match append_to_commitlog(
                        id,
                        publish,
                        props,
                        &mut self.datalog,
                        &mut self.notifications,
                        &mut self.connections,
                    ) {
                        Ok(_offset) => {
                            // Even if one of the data in the batch is appended to commitlog,
                            // set new data. This triggers notifications to wake waiters.
                            // Don't overwrite this flag to false if it is already true.
                            new_data = true;
                        }
                        Err(e) => {
                            // Disconnect on bad publishes
                            // Breakwater patch 17: one client's bad publish; it is disconnected.
                            debug!(
                                reason = ?e, "Failed to append to commitlog"
                            );
                            self.router_meters.failed_publishes += 1;
                            disconnect = true;
                            break;
                        }
                    };
                    self.scheduler.reschedule(id, ScheduleReason::IncomingAck);
                }
                Packet::PubComp(pubcomp, _) => {
                    let span = tracing::info_span!("pubcomp", pkid = pubcomp.pkid);
                    let _guard = span.enter();

                    let outgoing = self.obufs.get_mut(id).unwrap();
                    let pkid = pubcomp.pkid;
                    if outgoing.register_pubcomp(pkid).is_none() {
                        // Breakwater patch 17: a client alone causes this (it is disconnected).
                        debug!(
                            pkid,
                            "ack received for pkid {}, but the pkid didn't exists!", pkid
                        );
                        disconnect = true;
                        break;
                    }
                }
                Packet::PingReq(_) => {
                    let ackslog = self.ackslog.get_mut(id).unwrap();
                    ackslog.pingresp(PingResp);

                    force_ack = true;
                }
                Packet::Disconnect(_, _) => {
                    let span = tracing::info_span!("disconnect");
                    let _guard = span.enter();
                    disconnect = true;
                    // delete the last will message
                    self.last_wills.remove(&client_id);
                    break;
                }
                incoming => {
                    warn!(packet=?incoming, "Unexpected packet received, ignoring the packet." );
                }
            }
        }

        // Breakwater patch 12: `exchange` hands this buffer to the next connection that sends
        // something, which keeps it until then. Its capacity is that of the busiest connection
        // it went through (the gateway's ack link publishes up to 1,024 packets of ~200 bytes
        // at a time): without a cap, such buffers spread to idle connections and stay there.
        packets.shrink_to(CACHE_CAPACITY_KEPT);
        self.cache = Some(packets);

        // Prepare AcksRequest in tracker if router is operating in a
        // single node mode or force ack request for subscriptions
        //
        // Breakwater patch 18: `PendingAcks`, not `FreshData`, which woke only a caught-up
        // connection. One whose forwards wait for a full inflight window (a client that does
        // not ack what it is sent) never got the acks of what it published: they piled up in
        // its ack log, without bound, and nothing was written to it, so its link never blocked
        // and kept reading.
        if force_ack {
            self.scheduler.reschedule(id, ScheduleReason::PendingAcks);
        }

        // Notify waiting consumers only if there is publish data. During
        // subscription, data request is added to data waiter. With out this
        // if condition, connection will be woken up even during subscription
        if new_data {
            // Prepare all the consumers which are waiting for new data
            while let Some((id, request)) = self.notifications.pop_front() {
                self.scheduler.track(id, request);
                self.scheduler.reschedule(id, ScheduleReason::FreshData);
            }
        }

        // Incase BytesMut represents 10 packets, publish error/diconnect event
        // on say 5th packet should not block new data notifications for packets
        // 1 - 4. Hence we use a flag instead of diconnecting immediately
        if disconnect {
            self.handle_disconnection(id, disconnect_reason);
        }
    }

    /// Apply filter and prepare this connection to receive subscription data
    /// Handle retained messages as per subscription options!
    fn prepare_filter(
        &mut self,
        id: ConnectionId,
        cursor: Offset,
        filter_idx: FilterIdx,
        filter: &protocol::Filter,
        group: Option<String>,
        subscription_id: Option<usize>,
    ) {
        let filter_path = &filter.path;

        // Add connection id to subscription list
        match self.subscription_map.get_mut(filter_path) {
            Some(connections) => {
                connections.insert(id);
            }
            None => {
                let mut connections = HashSet::new();
                connections.insert(id);
                self.subscription_map
                    .insert(filter_path.clone(), connections);
            }
        }

        // Prepare consumer to pull data in case of subscription
        let connection = self.connections.get_mut(id).unwrap();

        // Add/Create shared group
        if let Some(group_name) = &group {
            let client_id = connection.client_id.clone();

            let shared_group = self
                .shared_subscriptions
                .entry(group_name.to_string())
                .or_insert(SharedGroup::new(
                    cursor,
                    self.config.shared_subscriptions_strategy.clone(),
                ));

            shared_group.add_client(client_id);
        };

        if let Some(subscription_id) = subscription_id {
            connection
                .subscription_ids
                .insert(filter_path.clone(), subscription_id);
        }

        // check is group is None because retained messages aren't sent
        // for shared subscriptions
        // TODO: use retain forward rules
        let forward_retained = group.is_none();

        // call to `insert(_)` returns `true` if it didn't contain the filter_path already
        // i.e. its a new subscription
        if connection.subscriptions.insert(filter_path.clone()) {
            // Breakwater patch 23: what the session store keeps (the handler reports it).
            if !connection.clean && group.is_none() {
                connection
                    .stored_filters
                    .insert(filter_path.clone(), filter.qos);
            }
            // Breakwater patch 11: a reader of this filter's log; one that may read it again
            // (persistent session, shared subscription) keeps the log from being released.
            self.datalog
                .add_reader(filter_idx, group.is_some() || !connection.clean);
            let request = DataRequest {
                filter: filter_path.clone(),
                filter_idx,
                qos: filter.qos as u8,
                cursor,
                read_count: 0,
                max_count: 100,
                // set true for new subscriptions
                forward_retained,
                group,
            };

            self.scheduler.track(id, request);
            self.scheduler.reschedule(id, ScheduleReason::NewFilter);
            debug_assert!(self.scheduler.check_tracker_duplicates(id).is_none())
        }

        // TODO: figure out how we can update existing DataRequest
        // helpful in re-subscriptions and forwarding retained messages on
        // every subscribe

        let meter = &mut self.ibufs.get_mut(id).unwrap().meter;
        meter.register_subscription(filter_path.clone());
    }

    /// When a connection is ready, it should sweep native data from 'datalog',
    /// send data and notifications to consumer.
    /// To activate a connection, first connection's tracker is fetched and
    /// all the requests are handled.
    fn consume(&mut self) -> Option<()> {
        let (id, mut requests) = self.scheduler.poll()?;

        let span = tracing::info_span!("[<] outgoing", connection_id = id);
        let _guard = span.enter();

        let outgoing = match self.obufs.get_mut(id) {
            Some(v) => v,
            None => {
                debug!("Connection is already disconnected"); // Breakwater patch 17
                return Some(());
            }
        };

        let ackslog = self.ackslog.get_mut(id).unwrap();
        let datalog = &mut self.datalog;
        let alertlog = &mut self.alertlog;

        trace!("Consuming requests");

        // We always try to ack when ever a connection is scheduled
        ack_device_data(ackslog, outgoing);

        let connection = &mut self.connections[id];

        // Keep track of temporarily skipped DataRequest
        // NOTE: VecDeque::new() doesn't allocate memory until elements are pushed
        let mut skipped_requests: VecDeque<DataRequest> = VecDeque::new();

        // A new connection's tracker is always initialized with acks request.
        // A subscribe will register data request.
        // So a new connection is always scheduled with at least one request
        for _ in 0..MAX_SCHEDULE_ITERATIONS {
            let mut request = match requests.pop_front() {
                // Handle next data or acks request
                Some(request) => request,
                // No requests in the queue. This implies that consumer data and
                // acks are completely caught up. Pending requests are registered
                // in waiters and awaiting new notifications (device or replica data)
                None => {
                    if skipped_requests.is_empty() {
                        // if no requests is in skip list, that means
                        // we have nothing left to process, i.e. we caughtup
                        self.scheduler.pause(id, PauseReason::Caughtup);
                    }
                    // add back the skipped requests!
                    self.scheduler.trackv(id, skipped_requests);
                    return Some(());
                }
            };

            let shared_group = request
                .group
                .as_ref()
                .and_then(|name| self.shared_subscriptions.get_mut(name));

            match forward_device_data(
                &mut request,
                datalog,
                outgoing,
                alertlog,
                connection,
                shared_group,
            ) {
                ConsumeStatus::BufferFull => {
                    requests.push_back(request);
                    self.scheduler.pause(id, PauseReason::Busy);
                    break;
                }
                ConsumeStatus::InflightFull => {
                    requests.push_back(request);
                    self.scheduler.pause(id, PauseReason::InflightFull);
                    break;
                }
                ConsumeStatus::FilterCaughtup => {
                    let filter = &request.filter;
                    trace!(filter, "Filter caughtup {filter}, parking connection");

                    // When all the data in the log is caught up, current request is
                    // registered in waiters and not added back to the tracker. This
                    // ensures that tracker.next() stops when all the requests are done
                    let filter_idx = request.filter_idx;
                    datalog.park(id, request);
                    // Breakwater patch 11: the last reader to catch up releases the log.
                    datalog.release_consumed(filter_idx);
                }
                ConsumeStatus::PartialRead => {
                    requests.push_back(request);
                }
                ConsumeStatus::SkipRequest => {
                    skipped_requests.push_back(request);
                }
            }
        }

        // Add requests back to the tracker if there are any
        requests.extend(skipped_requests);
        self.scheduler.trackv(id, requests);
        Some(())
    }

    pub fn handle_last_will(
        &mut self,
        client_id: String,
        #[cfg(feature = "validate-tenant-prefix")] tenant_id: Option<String>,
    ) {
        #[cfg(feature = "validate-tenant-prefix")]
        let tenant_prefix = tenant_id.map(|id| format!("/tenants/{id}/"));

        let Some((will, will_props)) = self.last_wills.remove(&client_id) else {
            return;
        };

        let publish = Publish {
            dup: false,
            qos: will.qos,
            retain: will.retain,
            topic: will.topic,
            pkid: 0,
            payload: will.message,
        };

        let properties = will_props.map(|props| PublishProperties {
            payload_format_indicator: props.payload_format_indicator,
            message_expiry_interval: props.message_expiry_interval,
            response_topic: props.response_topic,
            correlation_data: props.correlation_data,
            user_properties: props.user_properties,
            content_type: props.content_type,
            ..Default::default()
        });

        match append_will_message(
            publish,
            properties,
            &mut self.datalog,
            &mut self.notifications,
            #[cfg(feature = "validate-tenant-prefix")]
            tenant_prefix,
        ) {
            Ok(_offset) => {
                // Prepare all the consumers which are waiting for new data
                while let Some((id, request)) = self.notifications.pop_front() {
                    self.scheduler.track(id, request);
                    self.scheduler.reschedule(id, ScheduleReason::FreshData);
                }
            }
            Err(e) => {
                // Disconnect on bad publishes
                // Breakwater patch 17: one client's bad publish.
                debug!(
                    reason = ?e, "Failed to append to commitlog"
                );
                self.router_meters.failed_publishes += 1;
                // Removed disconnect = true from here because we disconnect anyways
            }
        };
    }

    fn send_meters(&mut self) {
        let mut meters = Vec::with_capacity(10);
        if let Some(router_meter) = self.router_meters.get() {
            meters.push(Meter::Router(self.id, router_meter));
        }
        for f in self.subscription_map.keys() {
            let filter = f.to_owned();
            if let Some(subscription_meter) = self.datalog.meter(f).and_then(|meter| meter.get()) {
                meters.push(Meter::Subscription(filter, subscription_meter));
            }
        }

        if !meters.is_empty() {
            for (meter_id, link) in self.meters.iter() {
                if let Err(e) = link.try_send(meters.clone()) {
                    error!(meter_id, "Failed to send meter. Error = {:?}", e);
                }
            }
        }
    }

    fn send_alerts(&mut self) {
        let alerts = self.alertlog.take();

        if !alerts.is_empty() {
            let alerts: Vec<Alert> = alerts.into();
            for (meter_id, link) in self.alerts.iter() {
                if let Err(e) = link.try_send(alerts.clone()) {
                    error!(meter_id, "Failed to send alert. Error = {:?}", e);
                }
            }
        }
    }
}

/// Breakwater patch 22: the local link owning the PUBACKs of a publish on `topic` by
/// `publisher`, if any (never the publisher itself).
fn deferred_owner(
    filters: &[(String, ConnectionId)],
    topic: &[u8],
    publisher: ConnectionId,
) -> Option<ConnectionId> {
    if filters.is_empty() || topic.is_empty() {
        return None;
    }
    let topic = std::str::from_utf8(topic).ok()?;
    filters
        .iter()
        .find(|(filter, owner)| *owner != publisher && crate::protocol::matches(topic, filter))
        .map(|&(_, owner)| owner)
}

fn append_to_commitlog(
    id: ConnectionId,
    mut publish: Publish,
    mut properties: Option<PublishProperties>,
    datalog: &mut DataLog,
    notifications: &mut VecDeque<(ConnectionId, DataRequest)>,
    connections: &mut Slab<Connection>,
) -> Result<Offset, RouterError> {
    let connection = connections.get_mut(id).unwrap();

    let topic_alias = properties.as_mut().and_then(|p| {
        // clear the received value as it is irrelevant while forwarding publishes
        p.topic_alias.take()
    });

    // TODO: broker should properly send the disconnect packet!
    if properties
        .as_ref()
        .is_some_and(|p| !p.subscription_identifiers.is_empty())
    {
        debug!("A PUBLISH packet sent from a Client to a Server MUST NOT contain a Subscription Identifier"); // Breakwater patch 17
        return Err(RouterError::Disconnect(
            DisconnectReasonCode::MalformedPacket,
        ));
    }

    if let Some(alias) = topic_alias {
        validate_and_set_topic_alias(&mut publish, connection, alias)?;
    };

    let topic = std::str::from_utf8(&publish.topic)?;

    // Ensure that only clients associated with a tenant can publish to tenant's topic
    #[cfg(feature = "validate-tenant-prefix")]
    if let Some(tenant_prefix) = &connection.tenant_prefix {
        if !topic.starts_with(tenant_prefix) {
            return Err(RouterError::BadTenant(
                tenant_prefix.to_owned(),
                topic.to_owned(),
            ));
        }
    }

    if publish.payload.is_empty() {
        datalog.remove_from_retained_publishes(topic.to_owned());
    } else if publish.retain {
        datalog.insert_to_retained_publishes(publish.clone(), properties.clone(), topic.to_owned());
    }

    // after recording retained message, we also send that message to existing subscribers
    // as normal publish message. Therefore we are setting retain to false
    publish.retain = false;
    let pkid = publish.pkid;

    let filter_idxs = datalog.matches(topic);

    // Create a dynamic filter if dynamic_filters are enabled for this connection
    let filter_idxs = match filter_idxs {
        Some(v) => v,
        None if connection.dynamic_filters => {
            let (idx, _cursor) = datalog.next_native_offset(topic);
            vec![idx]
        }
        None => return Err(RouterError::NoMatchingFilters(topic.to_owned())),
    };

    let mut o = (0, 0);
    for filter_idx in filter_idxs {
        let datalog = datalog.native.get_mut(filter_idx).unwrap();
        let publish_data = (publish.clone(), properties.clone());
        let (offset, filter) = datalog.append(publish_data.into(), notifications);
        debug!(
            pkid,
            "Appended to commitlog: {}[{}, {})", filter, offset.0, offset.1,
        );

        o = offset;
    }

    // error!("{:15.15}[E] {:20} topic = {}", connections[id].client_id, "no-filter", topic);
    Ok(o)
}

fn append_will_message(
    mut publish: Publish,
    properties: Option<PublishProperties>,
    datalog: &mut DataLog,
    notifications: &mut VecDeque<(ConnectionId, DataRequest)>,
    #[cfg(feature = "validate-tenant-prefix")] tenant_prefix: Option<String>,
) -> Result<Offset, RouterError> {
    // TODO: broker should properly send the disconnect packet!
    if properties
        .as_ref()
        .is_some_and(|p| !p.subscription_identifiers.is_empty())
    {
        debug!("A PUBLISH packet sent from a Client to a Server MUST NOT contain a Subscription Identifier"); // Breakwater patch 17
        return Err(RouterError::Disconnect(
            DisconnectReasonCode::MalformedPacket,
        ));
    }

    let topic = std::str::from_utf8(&publish.topic)?;

    // Ensure that only clients associated with a tenant can publish to tenant's topic
    #[cfg(feature = "validate-tenant-prefix")]
    if let Some(tenant_prefix) = tenant_prefix {
        if !topic.starts_with(&tenant_prefix) {
            return Err(RouterError::BadTenant(
                tenant_prefix.to_owned(),
                topic.to_owned(),
            ));
        }
    }

    if publish.payload.is_empty() {
        datalog.remove_from_retained_publishes(topic.to_owned());
    } else if publish.retain {
        datalog.insert_to_retained_publishes(publish.clone(), properties.clone(), topic.to_owned());
    }

    // after recording retained message, we also send that message to existing subscribers
    // as normal publish message. Therefore we are setting retain to false
    publish.retain = false;
    let pkid = publish.pkid;

    let filter_idxs = datalog.matches(topic);

    let filter_idxs = match filter_idxs {
        Some(v) => v,
        None => return Err(RouterError::NoMatchingFilters(topic.to_owned())),
    };

    let mut o = (0, 0);
    for filter_idx in filter_idxs {
        let datalog = datalog.native.get_mut(filter_idx).unwrap();
        let publish_data = (publish.clone(), properties.clone());
        let (offset, filter) = datalog.append(publish_data.into(), notifications);
        debug!(
            pkid,
            "Appended to commitlog: {}[{}, {})", filter, offset.0, offset.1,
        );

        o = offset;
    }

    Ok(o)
}

fn validate_and_set_topic_alias(
    publish: &mut Publish,
    connection: &mut Connection,
    alias: u16,
) -> Result<(), RouterError> {
    if alias == 0 || alias > TOPIC_ALIAS_MAX {
        debug!("Alias must be greater than 0 and <={TOPIC_ALIAS_MAX}"); // Breakwater patch 17
        return Err(RouterError::Disconnect(
            DisconnectReasonCode::TopicAliasInvalid,
        ));
    }

    if publish.topic.is_empty() {
        // if publish topic is empty, publisher must have set a valid alias
        let Some(alias_topic) = connection.topic_aliases.get(&alias) else {
            debug!("Empty topic name with invalid alias"); // Breakwater patch 17
            return Err(RouterError::Disconnect(DisconnectReasonCode::ProtocolError));
        };
        // set the publish topic before further processing
        publish.topic = alias_topic.to_owned().into();
    } else {
        // if publish topic isn't empty, that means
        // publisher wants to establish new mapping for topic & alias
        let topic = std::str::from_utf8(&publish.topic)?;
        connection.topic_aliases.insert(alias, topic.to_owned());
        trace!("set alias {alias} for topic {topic}");
    };

    Ok(())
}

/// Sweep ackslog for all the pending acks.
/// We write everything to outgoing buf with out worrying about buffer size
/// because acks most certainly won't cause memory bloat
fn ack_device_data(ackslog: &mut AckLog, outgoing: &mut Outgoing) -> bool {
    let span = tracing::info_span!("outgoing_ack", client_id = outgoing.client_id);
    let _guard = span.enter();

    let acks = ackslog.readv();
    if acks.is_empty() {
        debug!("No acks pending");
        return false;
    }

    let mut count = 0;
    let mut buffer = outgoing.data_buffer.lock();

    // Unlike forwards, we are reading all the pending acks for a given connection.
    // At any given point of time, there can be a max of connection's buffer size
    for ack in acks.drain(..) {
        let pkid = packetid(&ack);
        trace!(pkid, "Ack added for pkid {}", pkid);
        let message = Notification::DeviceAck(ack);
        buffer.push_back(message);
        count += 1;
    }

    debug!(acks_count = count, "Acks sent to device");
    outgoing.handle.try_send(()).ok();
    true
}

enum ConsumeStatus {
    /// Limit for publishes on outgoing channel reached
    BufferFull,
    /// Limit for inflight publishes on outgoing channel reached
    InflightFull,
    /// All publishes on topic forwarded
    FilterCaughtup,
    /// Some publishes on topic have been forwarded
    PartialRead,
    /// Use to indicate we want to skip the datareqest
    /// for shared subscriptions
    SkipRequest,
}

/// Sweep datalog from offset in DataRequest and updates DataRequest
/// for next sweep. Returns (busy, caughtup) status
/// Returned arguments:
/// 1. `busy`: whether the data request was completed or not.
/// 2. `done`: whether the connection was busy or not.
/// 3. `inflight_full`: whether the inflight requests were completely filled
fn forward_device_data(
    request: &mut DataRequest,
    datalog: &mut DataLog,
    outgoing: &mut Outgoing,
    alertlog: &mut AlertLog,
    connection: &mut Connection,
    shared_group: Option<&mut SharedGroup>,
) -> ConsumeStatus {
    let span = tracing::info_span!("outgoing_publish", client_id = outgoing.client_id);
    let _guard = span.enter();

    if let Some(ref shared_group) = shared_group {
        // update the request cursor to use shared cursor
        request.cursor = shared_group.cursor;
    }

    trace!(
        "Reading from datalog: {}[{}, {}]",
        request.filter,
        request.cursor.0,
        request.cursor.1
    );

    let mut inflight_slots = if request.qos != 0 {
        // for qos 1 & 2
        let len = outgoing.free_slots();
        if len == 0 {
            trace!("Aborting read from datalog: inflight capacity reached");
            return ConsumeStatus::InflightFull;
        }

        len as u64
    } else {
        datalog.config.max_outgoing_packet_count
    };

    if shared_group
        .as_ref()
        .is_some_and(|g| g.strategy == Strategy::RoundRobin)
    {
        // only read one message in case of round robin
        // so that messages get equally distributed!
        inflight_slots = 1;
    }

    let mut publishes = Vec::new();

    if request.forward_retained {
        // NOTE: ideally we want to limit the number of read messages
        // and skip the messages previously read while reading next time.
        // but for now, we just try to read all messages and drop the excess ones
        let mut retained_publishes = datalog.read_retained_messages(&request.filter);
        retained_publishes.truncate(inflight_slots as usize);

        publishes.extend(retained_publishes.into_iter().map(|p| (p, None)));
        inflight_slots -= publishes.len() as u64;

        // we only want to forward retained messages once
        request.forward_retained = false;
    }

    let (next, publishes_from_datalog) =
        match datalog.native_readv(request.filter_idx, request.cursor, inflight_slots) {
            Ok(v) => v,
            Err(e) => {
                error!(error = ?e, "Failed to read from commitlog {}", e);
                return ConsumeStatus::FilterCaughtup;
            }
        };

    publishes.extend(
        publishes_from_datalog
            .into_iter()
            .map(|(p, offset)| (p, Some(offset))),
    );

    let (start, next, caughtup) = match next {
        Position::Next { start, end } => (start, end, false),
        Position::Done { start, end } => (start, end, true),
    };

    if let Some(ref shared_group) = shared_group {
        let skip_current_client = Some(&outgoing.client_id) != shared_group.current_client();

        if skip_current_client {
            return if caughtup {
                ConsumeStatus::FilterCaughtup
            } else {
                ConsumeStatus::SkipRequest
            };
        }
    }

    if start != request.cursor {
        let error = format!(
            "Read cursor start jumped from {:?} to {:?} on {}",
            request.cursor, start, request.filter
        );

        warn!(
            request_cursor = ?request.cursor,
            start_cursor = ?start,
            error
        );

        let alert = alert::cursorjump(&outgoing.client_id, &request.filter, 0);
        alertlog.log(alert);
    }

    trace!(
        "Read from commitlog, cursor = {}[{}, {}), read count = {}",
        request.filter,
        next.0,
        next.1,
        publishes.len()
    );

    let qos = request.qos;
    let filter_idx = request.filter_idx;
    request.read_count += publishes.len();
    request.cursor = next;
    // println!("{:?} {:?} {}", start, next, request.read_count);

    if publishes.is_empty() {
        return ConsumeStatus::FilterCaughtup;
    }

    let broker_topic_aliases = &mut connection.broker_topic_aliases;
    let mut topic_alias = broker_topic_aliases
        .as_ref()
        .and_then(|aliases| aliases.get_alias(&request.filter));

    let topic_alias_already_exists = topic_alias.is_some();

    // if topic alias doesn't exists, try creating new one!
    if !topic_alias_already_exists {
        topic_alias = broker_topic_aliases
            .as_mut()
            .and_then(|broker_aliases| broker_aliases.set_new_alias(&request.filter))
    }

    let subscription_id = connection.subscription_ids.get(&request.filter);

    // Fill and notify device data
    let forwards = publishes
        .into_iter()
        .map(|((mut publish, mut properties), offset)| {
            publish.qos = protocol::qos(qos).unwrap();

            // if there is some topic alias to use, set it in publish properties
            if topic_alias.is_some() {
                let mut props = properties.unwrap_or_default();
                props.topic_alias = topic_alias;
                properties = Some(props);
            }

            // We want to clear topic if we are using an existing alias
            if topic_alias_already_exists {
                publish.topic.clear()
            }

            if let Some(&subscription_id) = subscription_id {
                // create new props if not already exists
                let mut props = properties.unwrap_or_default();
                props.subscription_identifiers.push(subscription_id);
                properties = Some(props);
            }

            Forward {
                cursor: offset,
                size: 0,
                publish,
                properties,
            }
        });

    let (len, inflight) = outgoing.push_forwards(forwards, qos, filter_idx);

    debug!(
        inflight_count = inflight,
        forward_count = len,
        "Forwarding publishes, cursor = {}[{}, {}) forward count = {}",
        request.filter,
        request.cursor.0,
        request.cursor.1,
        len
    );

    if len >= MAX_CHANNEL_CAPACITY - 1 {
        debug!("Outgoing channel reached its capacity");
        outgoing.push_notification(Notification::Unschedule);
        outgoing.handle.try_send(()).ok();
        return ConsumeStatus::BufferFull;
    }

    outgoing.handle.try_send(()).ok();

    // update the state of shared subscription
    if let Some(share) = shared_group {
        share.update_next_client();
        // update the shared cursor
        share.cursor = request.cursor;
    }

    if caughtup {
        ConsumeStatus::FilterCaughtup
    } else {
        ConsumeStatus::PartialRead
    }
}

fn retrieve_shadow(datalog: &mut DataLog, outgoing: &mut Outgoing, shadow: ShadowRequest) {
    if let Some(reply) = datalog.shadow(&shadow.filter) {
        let publish = reply.0;
        let shadow_reply = router::ShadowReply {
            topic: publish.topic,
            payload: publish.payload,
        };

        // Fill notify shadow
        let message = Notification::Shadow(shadow_reply);
        let len = outgoing.push_notification(message);
        if len >= MAX_CHANNEL_CAPACITY - 1 {
            outgoing.push_notification(Notification::Unschedule);
        }
        outgoing.handle.try_send(()).ok();
    }
}

fn print_status(router: &mut Router, metrics: Print) {
    match metrics {
        Print::Config => {
            let config = router.config.clone();
            println!("{config:#?}");
        }
        Print::Router => {
            let metrics = router.router_meters.clone();
            println!("{metrics:#?}");
        }
        Print::Connection(id) => {
            let metrics = router.connection_map.get(&id).map(|v| {
                let c = router
                    .connections
                    .get(*v)
                    .map(|v| v.events.clone())
                    .unwrap();
                let t = router.scheduler.trackers.get(*v).cloned().unwrap();
                (c, t)
            });

            let metrics = match metrics {
                Some(v) => Some(v),
                None => router.graveyard.retrieve(&id).map(|v| {
                    (
                        v.metrics,
                        v.session_state
                            .map(|s| s.tracker)
                            .unwrap_or(Tracker::new(id)),
                    )
                }),
            };

            println!("{metrics:#?}");
        }
        Print::Subscriptions => {
            let metrics: HashMap<Filter, Vec<String>> = router
                .subscription_map
                .iter()
                .map(|(filter, connections)| {
                    let connections = connections
                        .iter()
                        .map(|id| router.obufs[*id].client_id.clone())
                        .collect();

                    (filter.to_owned(), connections)
                })
                .collect();

            println!("{metrics:#?}");
        }
        Print::Subscription(filter) => {
            let metrics = router.datalog.meter(&filter);
            println!("{metrics:#?}");
        }
        Print::Waiters(filter) => {
            if let Some(waiters) = router.datalog.waiters(&filter) {
                let v: Vec<(String, DataRequest)> = waiters
                    .waiters()
                    .iter()
                    .map(|(id, request)| (router.obufs[*id].client_id.clone(), request.clone()))
                    .collect();

                println!("{v:#?}");
            }
        }
        Print::ReadyQueue => {
            let metrics = router.scheduler.readyqueue.clone();
            println!("{metrics:#?}");
        }
    };
}

fn validate_subscription(
    connection: &mut Connection,
    filter: &protocol::Filter,
) -> Result<(), RouterError> {
    trace!(
        "validate subscription = {}, tenant = {:?}",
        filter.path,
        connection.tenant_prefix
    );
    // Ensure that only client devices of the tenant can
    #[cfg(feature = "validate-tenant-prefix")]
    if let Some(tenant_prefix) = &connection.tenant_prefix {
        if !filter.path.starts_with(tenant_prefix) {
            return Err(RouterError::InvalidFilterPrefix(filter.path.to_owned()));
        }
    }

    if filter.path.starts_with('$') && !filter.path.starts_with("$share") {
        return Err(RouterError::InvalidFilterPrefix(filter.path.to_owned()));
    }

    Ok(())
}

fn validate_clientid(client_id: &str) -> Result<(), RouterError> {
    trace!("Validating Client ID = {}", client_id,);
    // Ensure that only client devices of the tenant can
    if "+$#/".chars().any(|c| client_id.contains(c)) {
        return Err(RouterError::InvalidClientId(client_id.to_string()));
    }

    Ok(())
}

fn extract_group(filter: &str) -> Option<(String, String)> {
    filter.strip_prefix("$share/").and_then(|s| {
        s.split_once('/')
            .map(|(group, path)| (group.to_string(), path.to_string()))
    })
}
// #[cfg(test)]
// #[allow(non_snake_case)]
// mod test {
//     use std::{
//         thread,
//         time::{Duration, Instant},
//     };

//     use bytes::BytesMut;

//     use super::*;
//     use crate::{
//         link::local::*,
//         protocol::v4::{self, subscribe::SubscribeFilter, QoS},
//         router::ConnectionMeter,
//     };

//     /// Create a router and n connections
//     fn new_router(count: usize, clean: bool) -> (Router, VecDeque<(LinkTx, LinkRx)>) {
//         let config = RouterConfig {
//             instant_ack: true,
//             max_segment_size: 1024 * 10, // 10 KB
//             max_mem_segments: 10,
//             max_disk_segments: 0,
//             max_read_len: 128,
//             log_dir: None,
//             max_connections: 128,
//             dynamic_log: false,
//         };

//         let mut router = Router::new(0, config);
//         let link = router.link();
//         let handle = thread::spawn(move || {
//             (0..count)
//                 .map(|i| Link::new(&format!("link-{}", i), link.clone(), clean))
//                 .collect::<VecDeque<Result<_, _>>>()
//         });

//         router.run_exact(count).unwrap();
//         let links = handle
//             .join()
//             .unwrap()
//             .into_iter()
//             .map(|x| x.unwrap())
//             .collect();
//         (router, links)
//     }

//     fn reconnect(router: &mut Router, link_id: usize, clean: bool) -> (LinkTx, LinkRx) {
//         let link = router.link();
//         let handle =
//             thread::spawn(move || Link::new(&format!("link-{}", link_id), link, clean).unwrap());
//         router.run(1).unwrap();
//         handle.join().unwrap()
//     }

//     #[test]
//     fn test_graveyard_retreive_metrics_always() {
//         let (mut router, mut links) = new_router(1, false);
//         let (tx, _) = links.pop_front().unwrap();
//         let id = tx.connection_id;
//         let conn = router.connections.get_mut(id).unwrap();
//         conn.meter = ConnectionMeter {
//             publish_size: 1000,
//             publish_count: 1000,
//             subscriptions: HashSet::new(),
//             events: conn.meter.events.clone(),
//         };
//         conn.meter.push_event("graveyard-testing".to_string());
//         router.handle_disconnection(id);

//         let (tx, _) = reconnect(&mut router, 0, false);
//         let id = tx.connection_id;
//         let conn = router.connections.get_mut(id).unwrap();
//         assert_eq!(conn.meter.publish_size, 1000);
//         assert_eq!(conn.meter.publish_count, 1000);
//         assert_eq!(conn.meter.events.len(), 4);

//         let (mut router, mut links) = new_router(1, true);
//         let (tx, _) = links.pop_front().unwrap();
//         let id = tx.connection_id;
//         let conn = router.connections.get_mut(id).unwrap();
//         conn.meter = ConnectionMeter {
//             publish_size: 1000,
//             publish_count: 1000,
//             subscriptions: HashSet::new(),
//             events: conn.meter.events.clone(),
//         };
//         conn.meter.push_event("graveyard-testing".to_string());
//         router.handle_disconnection(id);

//         let (tx, _) = reconnect(&mut router, 0, true);
//         let id = tx.connection_id;
//         let conn = router.connections.get_mut(id).unwrap();
//         assert_eq!(conn.meter.publish_size, 1000);
//         assert_eq!(conn.meter.publish_count, 1000);
//         assert_eq!(conn.meter.events.len(), 4);
//     }

//     #[test]
//     #[should_panic]
//     fn test_blocking_too_many_connections() {
//         new_router(512, true);
//     }

//     #[test]
//     fn test_not_clean_sessions() {
//         // called once per data push (subscribe to 2 topics in our case)
//         // called once per each sub topic
//         // if prepare_data_request called, then Tracker::register_data_request is also called so
//         // no need to check separately for that

//         let (mut router, mut links) = new_router(2, false);
//         let (tx1, mut rx1) = links.pop_front().unwrap();
//         let id1 = tx1.connection_id;
//         let (tx2, mut rx2) = links.pop_front().unwrap();
//         let id2 = tx2.connection_id;

//         // manually subscribing to avoid calling Router::run(), so that we can see and test changes
//         // in Router::readyqueue.
//         let mut buf = BytesMut::new();
//         v4::subscribe::write(
//             vec![
//                 SubscribeFilter::new("hello/1/world".to_string(), QoS::AtMostOnce),
//                 SubscribeFilter::new("hello/2/world".to_string(), QoS::AtMostOnce),
//             ],
//             0,
//             &mut buf,
//         )
//         .unwrap();
//         let buf = buf.freeze();
//         {
//             let incoming = router.ibufs.get_mut(id1).unwrap();
//             let mut recv_buf = incoming.buffer.lock();
//             recv_buf.push_back(buf.clone());
//             assert_eq!(router.subscription_map.len(), 0);
//         }
//         {
//             let incoming = router.ibufs.get_mut(id2).unwrap();
//             let mut recv_buf = incoming.buffer.lock();
//             recv_buf.push_back(buf.clone());
//             assert_eq!(router.subscription_map.len(), 0);
//         }

//         router.handle_device_payload(id1);
//         assert_eq!(router.subscription_map.len(), 2);
//         assert_eq!(router.readyqueue.len(), 1);
//         router.consume(id1);
//         assert_eq!(
//             router
//                 .datalog
//                 .waiters(&"hello/1/world".to_string())
//                 .unwrap()
//                 .waiters()
//                 .len(),
//             1
//         );
//         assert_eq!(
//             router
//                 .datalog
//                 .waiters(&"hello/2/world".to_string())
//                 .unwrap()
//                 .waiters()
//                 .len(),
//             1
//         );

//         router.handle_device_payload(id2);
//         assert_eq!(router.subscription_map.len(), 2);
//         assert_eq!(router.readyqueue.len(), 2);
//         router.consume(id2);
//         assert_eq!(
//             router
//                 .datalog
//                 .waiters(&"hello/1/world".to_string())
//                 .unwrap()
//                 .waiters()
//                 .len(),
//             2
//         );
//         assert_eq!(
//             router
//                 .datalog
//                 .waiters(&"hello/2/world".to_string())
//                 .unwrap()
//                 .waiters()
//                 .len(),
//             2
//         );

//         assert!(matches!(rx1.recv().unwrap(), Some(Notification::DeviceAck(_))));
//         assert!(matches!(rx2.recv().unwrap(), Some(Notification::DeviceAck(_))));

//         router.handle_disconnection(id1);
//         router.handle_disconnection(id2);
//         router.run(1).unwrap();

//         let (_, _) = reconnect(&mut router, 0, false);
//         assert_eq!(
//             router
//                 .datalog
//                 .waiters(&"hello/1/world".to_string())
//                 .unwrap()
//                 .waiters()
//                 .len(),
//             1
//         );
//         assert_eq!(
//             router
//                 .datalog
//                 .waiters(&"hello/2/world".to_string())
//                 .unwrap()
//                 .waiters()
//                 .len(),
//             1
//         );

//         let (_, _) = reconnect(&mut router, 1, false);
//         assert_eq!(
//             router
//                 .datalog
//                 .waiters(&"hello/1/world".to_string())
//                 .unwrap()
//                 .waiters()
//                 .len(),
//             2
//         );
//         assert_eq!(
//             router
//                 .datalog
//                 .waiters(&"hello/2/world".to_string())
//                 .unwrap()
//                 .waiters()
//                 .len(),
//             2
//         );
//     }

//     #[test]
//     fn test_publish_appended_to_commitlog() {
//         let (mut router, mut links) = new_router(2, true);
//         let (mut sub_tx, _) = links.pop_front().unwrap();
//         let (mut pub_tx, _) = links.pop_front().unwrap();

//         sub_tx.subscribe("hello/1/world").unwrap();
//         router.run(1).unwrap();

//         // Each LinkTx::publish creates a single new event
//         for _ in 0..10 {
//             pub_tx.publish("hello/1/world", b"hello".to_vec()).unwrap();
//         }
//         router.run(1).unwrap();
//         assert_eq!(router.datalog.next_native_offset("hello/1/world").1, (0, 10));
//     }

//     #[test]
//     fn test_adding_caughtups_to_waiters() {
//         // number of times forward_device_data hit
//         //     = router.run times * topics * subscribers per topic
//         //     = 2 * 2 * 2 = 8
//         //
//         // we also call consume 2 times per subsriber, and one time it will call
//         // forward_device_data again, but no data will actually be forwarded.
//         // as 256 publishes at once, and router's config only reads 128 at a time, data needs to be
//         // read from same log twice, and thus half of the times the data reading is not done

//         let (mut router, mut links) = new_router(4, true);
//         let (mut sub1_tx, _) = links.pop_front().unwrap();
//         let (mut pub1_tx, _) = links.pop_front().unwrap();
//         let (mut sub2_tx, _) = links.pop_front().unwrap();
//         let (mut pub2_tx, _) = links.pop_front().unwrap();
//         sub1_tx.subscribe("hello/1/world").unwrap();
//         sub1_tx.subscribe("hello/2/world").unwrap();
//         sub2_tx.subscribe("hello/1/world").unwrap();
//         sub2_tx.subscribe("hello/2/world").unwrap();
//         router.run(1).unwrap();

//         assert_eq!(
//             router
//                 .datalog
//                 .waiters(&"hello/1/world".to_string())
//                 .unwrap()
//                 .waiters()
//                 .len(),
//             2
//         );
//         assert_eq!(
//             router
//                 .datalog
//                 .waiters(&"hello/2/world".to_string())
//                 .unwrap()
//                 .waiters()
//                 .len(),
//             2
//         );

//         for _ in 0..256 {
//             pub1_tx.publish("hello/1/world", b"hello".to_vec()).unwrap();
//             pub2_tx.publish("hello/2/world", b"hello".to_vec()).unwrap();
//         }
//         router.run(1).unwrap();

//         let tracker = router.trackers.get(sub1_tx.connection_id).unwrap();
//         assert_eq!(tracker.get_data_requests().len(), 2);
//         let tracker = router.trackers.get(sub2_tx.connection_id).unwrap();
//         assert_eq!(tracker.get_data_requests().len(), 2);

//         router.run(1).unwrap();

//         let tracker = router.trackers.get(sub1_tx.connection_id).unwrap();
//         assert_eq!(tracker.get_data_requests().len(), 2);
//         let tracker = router.trackers.get(sub2_tx.connection_id).unwrap();
//         assert_eq!(tracker.get_data_requests().len(), 2);

//         router.consume(sub1_tx.connection_id);
//         router.consume(sub2_tx.connection_id);

//         let tracker = router.trackers.get(sub1_tx.connection_id).unwrap();
//         assert_eq!(tracker.get_data_requests().len(), 1);
//         let tracker = router.trackers.get(sub2_tx.connection_id).unwrap();
//         assert_eq!(tracker.get_data_requests().len(), 1);

//         router.consume(sub1_tx.connection_id);
//         router.consume(sub2_tx.connection_id);

//         let tracker = router.trackers.get(sub1_tx.connection_id).unwrap();
//         assert_eq!(tracker.get_data_requests().len(), 0);
//         let tracker = router.trackers.get(sub2_tx.connection_id).unwrap();
//         assert_eq!(tracker.get_data_requests().len(), 0);

//         assert_eq!(
//             router
//                 .datalog
//                 .waiters(&"hello/1/world".to_string())
//                 .unwrap()
//                 .waiters()
//                 .len(),
//             2
//         );
//         assert_eq!(
//             router
//                 .datalog
//                 .waiters(&"hello/2/world".to_string())
//                 .unwrap()
//                 .waiters()
//                 .len(),
//             2
//         );
//     }

//     #[test]
//     fn test_disconnect_invalid_sub() {
//         let (mut router, mut links) = new_router(3, true);

//         let (mut tx, mut rx) = links.pop_front().unwrap();
//         tx.subscribe("$hello/world").unwrap();
//         router.run(1).unwrap();
//         assert!(matches!(rx.recv(), Err(LinkError::Recv(flume::RecvError::Disconnected))));

//         let (mut tx, mut rx) = links.pop_front().unwrap();
//         tx.subscribe("test/hello").unwrap();
//         router.run(1).unwrap();
//         assert!(matches!(rx.recv(), Err(LinkError::Recv(flume::RecvError::Disconnected))));
//     }

//     #[test]
//     fn test_disconnect_invalid_pub() {
//         let (mut router, mut links) = new_router(1, true);
//         let (mut tx, mut rx) = links.pop_front().unwrap();
//         tx.publish("invalid/topic", b"hello".to_vec()).unwrap();
//         router.run(1).unwrap();
//         assert!(matches!(rx.recv(), Err(LinkError::Recv(flume::RecvError::Disconnected))));
//     }

//     #[test]
//     fn test_pingreq() {
//         let (mut router, mut links) = new_router(1, true);
//         let (mut tx, mut rx) = links.pop_front().unwrap();
//         let mut buf = BytesMut::new();
//         mqttbytes::v4::PingReq.write(&mut buf).unwrap();
//         let buf = buf.freeze();
//         for _ in 0..10 {
//             tx.push(buf.clone()).unwrap();
//         }
//         router.run(1).unwrap();
//         for _ in 0..10 {
//             let ret = rx.recv().unwrap().unwrap();
//             assert!(matches!(ret, Notification::DeviceAck(Ack::PingResp)));
//         }
//     }

//     #[test]
//     fn test_disconnect() {
//         let (mut router, mut links) = new_router(1, true);
//         let (mut tx, mut rx) = links.pop_front().unwrap();
//         let mut buf = BytesMut::new();
//         mqttbytes::v4::Disconnect.write(&mut buf).unwrap();
//         let buf = buf.freeze();
//         tx.push(buf).unwrap();
//         router.run(1).unwrap();
//         assert!(matches!(rx.recv(), Err(LinkError::Recv(flume::RecvError::Disconnected))));
//     }

//     #[test]
//     fn test_connection_in_qos1() {
//         // connection as in crate::connection::Connection struct should get filled for all unacked,
//         // and refuse to add more packets than unacked.

//         let config = RouterConfig {
//             instant_ack: true,
//             max_segment_size: 1024 * 10, // 10 KB
//             max_mem_segments: 10,
//             max_disk_segments: 0,
//             max_read_len: 256,
//             log_dir: None,
//             max_connections: 128,
//             dynamic_log: false,
//         };

//         let mut router = Router::new(0, config);
//         let link = router.link();
//         let handle = thread::spawn(move || {
//             (0..2)
//                 .map(|i| Link::new(&format!("link-{}", i), link.clone(), true))
//                 .collect::<VecDeque<Result<_, _>>>()
//         });

//         router.run(2).unwrap();
//         let mut links: VecDeque<(LinkTx, LinkRx)> = handle
//             .join()
//             .unwrap()
//             .into_iter()
//             .map(|x| x.unwrap())
//             .collect();

//         let (mut sub_tx, _sub_rx) = links.pop_front().unwrap();
//         let (mut pub_tx, _) = links.pop_front().unwrap();

//         let mut buf = BytesMut::new();
//         mqttbytes::v4::Subscribe::new("hello/1/world", mqttbytes::QoS::AtLeastOnce)
//             .write(&mut buf)
//             .unwrap();
//         let buf = buf.freeze();
//         sub_tx.push(buf).unwrap();
//         router.run(1).unwrap();

//         for _ in 0..202 {
//             pub_tx.publish("hello/1/world", b"hello".to_vec()).unwrap();
//         }
//         router.run(1).unwrap();

//         let id = sub_tx.connection_id;
//         let tracker = router.trackers.get(id).unwrap();
//         assert_eq!(tracker.get_data_requests().front().unwrap().cursor, (0, 200));
//     }

//     #[test]
//     #[ignore]
//     fn test_resend_in_qos1() {
//         unimplemented!("we don't resend QoS1 packets yet")
//     }

//     #[test]
//     fn test_wildcard_subs() {
//         let (mut router, mut links) = new_router(3, true);

//         let (mut sub1_tx, mut sub1_rx) = links.pop_front().unwrap();
//         sub1_tx.subscribe("#").unwrap();

//         let (mut sub2_tx, mut sub2_rx) = links.pop_front().unwrap();
//         sub2_tx.subscribe("hello/+/world").unwrap();

//         let (mut pub_tx, mut _pub_rx) = links.pop_front().unwrap();
//         for _ in 0..10 {
//             for i in 0..10 {
//                 pub_tx
//                     .publish(format!("hello/{}/world", i), b"hello".to_vec())
//                     .unwrap();
//             }
//         }

//         for _ in 0..10 {
//             pub_tx.publish("hello/world", b"hello".to_vec()).unwrap();
//         }

//         router.run(1).unwrap();

//         let mut count = 0;
//         while let Ok(Some(notification)) =
//             sub1_rx.recv_deadline(Instant::now() + Duration::from_millis(1))
//         {
//             match notification {
//                 Notification::Forward { .. } => count += 1,
//                 _ => {}
//             }
//         }
//         assert_eq!(count, 110);

//         count = 0;
//         while let Ok(Some(notification)) =
//             sub2_rx.recv_deadline(Instant::now() + Duration::from_millis(1))
//         {
//             match notification {
//                 Notification::Forward { .. } => count += 1,
//                 _ => {}
//             }
//         }
//         assert_eq!(count, 100);
//     }
// }

// // #[cfg(test)]
// // mod test {
// //     use crate::connection::Connection;
// //     use crate::link::local::{Link, LinkRx, LinkTx};
// //     use crate::tracker::Tracker;
// //     use crate::{ConnectionId, Notification, Router, RouterConfig};
// //     use bytes::BytesMut;
// //     use flume::Receiver;
// //     use mqttbytes::v4::{Publish, Subscribe};
// //     use mqttbytes::QoS;
// //     use std::collections::VecDeque;
// //     use std::sync::atomic::AtomicBool;
// //     use std::sync::Arc;
// //     use std::thread;

// //     /// Create a router and n connections
// //     fn router(count: usize) -> (Router, VecDeque<(LinkTx, LinkRx)>) {
// //         let config = RouterConfig {
// //             data_filter: "hello/world".to_owned(),
// //             wildcard_filters: vec![],
// //             instant_ack: true,
// //             max_segment_size: 10 * 1024,
// //             max_segment_count: 10 * 1024,
// //             max_connections: 10,
// //         };

// //         let mut router = Router::new(0, config);
// //         let link = router.link();
// //         let handle = thread::spawn(move || {
// //             (0..count)
// //                 .map(|i| Link::new(&format!("link-{}", i), link.clone()).unwrap())
// //                 .collect()
// //         });

// //         router.run(count).unwrap();
// //         let links = handle.join().unwrap();
// //         (router, links)
// //     }

// //     /// Creates a connection
// //     fn connection(client_id: &str, clean: bool) -> (Connection, Receiver<Notification>) {
// //         let (tx, rx) = flume::bounded(10);
// //         let connection = Connection::new(client_id, clean, tx, Arc::new(AtomicBool::new(false)));
// //         (connection, rx)
// //     }

// //     /// Raw publish message
// //     fn publish(topic: &str) -> BytesMut {
// //         let mut publish = Publish::new(topic, QoS::AtLeastOnce, vec![1, 2, 3]);
// //         publish.pkid = 1;

// //         let mut o = BytesMut::new();
// //         publish.write(&mut o).unwrap();
// //         o
// //     }

// //     /// Raw publish message
// //     fn subscribe(topic: &str) -> BytesMut {
// //         let mut subscribe = Subscribe::new(topic, QoS::AtLeastOnce);
// //         subscribe.pkid = 1;

// //         let mut o = BytesMut::new();
// //         subscribe.write(&mut o).unwrap();
// //         o
// //     }

// //     /// When there is new data on a subscription's commitlog, it's
// //     /// consumer should start triggering data requests to pull data
// //     /// from commitlog
// //     #[test]
// //     fn new_connection_data_triggers_acks_of_self_and_data_of_consumer() {
// //         let (mut router, mut links) = router(2);
// //         let (mut l1tx, _l1rx) = links.pop_front().unwrap();
// //         let (mut l2tx, l2rx) = links.pop_front().unwrap();

// //         l2tx.subscribe("hello/world").unwrap();
// //         l1tx.publish("hello/world", vec![1, 2, 3]).unwrap();
// //         let _ = router.run(1);

// //         // Suback
// //         match l2rx.recv().unwrap() {
// //             Notification::DeviceAcks(_) => {}
// //             v => panic!("{:?}", v),
// //         }

// //         // Consumer data
// //         match l2rx.recv().unwrap() {
// //             Notification::DeviceData { cursor, .. } => assert_eq!(cursor, (0, 1)),
// //             v => panic!("{:?}", v),
// //         }

// //         // No acks for qos0 publish
// //     }

// //     #[test]
// //     fn half_open_connections_are_handled_correctly() {
// //         let config = RouterConfig {
// //             data_filter: "hello/world".to_owned(),
// //             wildcard_filters: vec![],
// //             instant_ack: true,
// //             max_segment_size: 10 * 1024,
// //             max_segment_count: 10 * 1024,
// //             max_connections: 10,
// //         };

// //         let mut router = Router::new(0, config);
// //         let (c, rx) = connection("test", true);
// //         router.handle_new_connection(c);

// //         let id = *router.connection_map.get("test").unwrap();
// //         router.handle_device_payload(id, subscribe("hello/data"));
// //         router.handle_device_payload(id, publish("hello/data"));

// //         let trackers = router.trackers.get(id).unwrap();
// //         assert!(trackers.get_data_requests().len() > 0);
// //         dbg!(trackers);

// //         // A new connection with same client id
// //         let (c, rx) = connection("test", true);
// //         router.handle_new_connection(c);

// //         let id = *router.connection_map.get("test").unwrap();
// //         let trackers = router.trackers.get(id).unwrap();
// //         dbg!(trackers);
// //     }
// // }

// Breakwater patch 9: a disconnect queued by a replaced connection must not drop the connection
// that took over its id.
#[cfg(test)]
mod stale_disconnect_tests {
    use super::{Event, Router};
    use crate::local::{LinkBuilder, LinkError, LinkRx};
    use crate::router::shared_subs::Strategy;
    use crate::router::Notification;
    use crate::RouterConfig;
    use flume::RecvTimeoutError;
    use std::time::{Duration, Instant};

    fn router() -> flume::Sender<(crate::ConnectionId, Event)> {
        let config = RouterConfig {
            max_connections: 10,
            max_outgoing_packet_count: 200,
            max_segment_size: 1024,
            max_segment_count: 10,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Strategy::RoundRobin,
            max_saved_sessions: None,
            saved_session_expiry_secs: None,
            session_store: None,
        };
        Router::new(0, config).spawn()
    }

    /// The next forwarded publish, or the error that ended the link.
    fn next_forward(rx: &mut LinkRx) -> Result<Notification, LinkError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match rx.recv_deadline(deadline)? {
                Some(forward @ Notification::Forward(_)) => return Ok(forward),
                Some(_) | None => {}
            }
        }
    }

    #[test]
    fn stale_disconnect_does_not_drop_the_connection_that_reused_the_id() {
        let router_tx = router();
        let (_old_tx, old_rx, _) = LinkBuilder::new("device", router_tx.clone())
            .build()
            .unwrap();
        // The same client connects again: the router drops the old connection (duplicate client
        // id) and gives the new one the id it freed.
        let (mut new_tx, mut new_rx, _) = LinkBuilder::new("device", router_tx.clone())
            .build()
            .unwrap();
        assert_eq!(new_rx.id(), old_rx.id());
        assert_ne!(new_rx.generation(), old_rx.generation());

        // The old connection's disconnect, sent before its link saw that it was dropped.
        let stale = Event::Disconnect {
            generation: old_rx.generation(),
        };
        router_tx.send((old_rx.id(), stale)).unwrap();

        // The router handles events in order: the new connection is still there afterwards.
        new_tx.subscribe("t").unwrap();
        new_tx.publish("t", "still connected").unwrap();
        match next_forward(&mut new_rx) {
            Ok(Notification::Forward(forward)) => {
                assert_eq!(forward.publish.payload, "still connected")
            }
            other => panic!("the new connection was dropped: {other:?}"),
        }

        // Its own disconnect still ends it.
        let current = Event::Disconnect {
            generation: new_rx.generation(),
        };
        router_tx.send((new_rx.id(), current)).unwrap();
        new_tx.publish("t", "after disconnect").unwrap();
        match next_forward(&mut new_rx) {
            Err(LinkError::RecvTimeout(RecvTimeoutError::Disconnected)) => {}
            other => panic!("expected the router to drop the connection, got {other:?}"),
        }
    }
}

/// Breakwater patch 11: the router releases a filter's log once its readers have read it, and
/// only then. Drives the router on the test thread, step by step, to look at its logs.
#[cfg(test)]
mod release_tests {
    use super::Router;
    use crate::local::{LinkBuilder, LinkError, LinkRx, LinkTx};
    use crate::router::shared_subs::Strategy;
    use crate::router::Notification;
    use crate::RouterConfig;
    use std::time::Instant;

    fn router() -> Router {
        Router::new(
            0,
            RouterConfig {
                max_connections: 10,
                max_outgoing_packet_count: 200,
                max_segment_size: 1024,
                max_segment_count: 100,
                custom_segment: None,
                initialized_filters: None,
                shared_subscriptions_strategy: Strategy::RoundRobin,
                max_saved_sessions: None,
                saved_session_expiry_secs: None,
                session_store: None,
            },
        )
    }

    /// Runs the router until it has nothing left to do.
    fn settle(router: &mut Router) {
        while !router.router_rx.is_empty() || !router.scheduler.readyqueue.is_empty() {
            router.run_inner().unwrap();
        }
    }

    fn connect(router: &mut Router, client_id: &'static str, clean: bool) -> (LinkTx, LinkRx) {
        let tx = router.link();
        let builder = std::thread::spawn(move || {
            LinkBuilder::new(client_id, tx)
                .clean_session(clean)
                .build()
                .unwrap()
        });
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        while !builder.is_finished() {
            assert!(Instant::now() < deadline, "no CONNACK for {client_id}");
            settle(router);
            std::thread::yield_now();
        }
        let (tx, rx, _) = builder.join().unwrap();
        (tx, rx)
    }

    /// Reads every forwarded payload the link has, calling `ready` like a well-behaved link.
    fn read(router: &mut Router, rx: &mut LinkRx) -> Vec<String> {
        let mut payloads = Vec::new();
        loop {
            settle(router);
            match rx.recv_deadline(Instant::now()) {
                Ok(Some(Notification::Forward(f))) => {
                    payloads.push(String::from_utf8(f.publish.payload.to_vec()).unwrap())
                }
                Ok(Some(Notification::Unschedule)) => rx.ready().unwrap(),
                Ok(_) => {}
                Err(LinkError::RecvTimeout(_)) => return payloads,
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn held(router: &mut Router, filter: &str) -> u64 {
        let idx = router.datalog.matches(filter).unwrap()[0];
        router.datalog.native[idx].log.size()
    }

    fn publish(router: &mut Router, tx: &mut LinkTx, n: usize) {
        for i in 0..n {
            tx.publish("d/1/ack", format!("ack {i:04} with some padding"))
                .unwrap();
        }
        settle(router);
    }

    #[test]
    fn a_log_is_released_when_its_readers_have_read_it_and_not_before() {
        let mut router = router();
        let (mut gw, _gw_rx) = connect(&mut router, "gateway", true);
        let (mut fast, mut fast_rx) = connect(&mut router, "fast", true);
        let (mut slow, mut slow_rx) = connect(&mut router, "slow", true);
        fast.subscribe("d/1/ack").unwrap();
        slow.subscribe("d/1/ack").unwrap();
        settle(&mut router);

        publish(&mut router, &mut gw, 300);
        let full = held(&mut router, "d/1/ack");
        assert!(full > 8 * 1024, "{full}");
        // One reader has read everything, the other nothing: the log stays.
        let got = read(&mut router, &mut fast_rx);
        assert_eq!(got.len(), 300);
        assert_eq!(held(&mut router, "d/1/ack"), full);
        // Both have: only the last entry stays.
        let got_slow = read(&mut router, &mut slow_rx);
        assert_eq!(got_slow, got);
        assert!(held(&mut router, "d/1/ack") < 64);

        // More data: both get exactly it, and the log is released again.
        publish(&mut router, &mut gw, 5);
        assert_eq!(read(&mut router, &mut fast_rx).len(), 5);
        assert_eq!(read(&mut router, &mut slow_rx).len(), 5);
        assert!(held(&mut router, "d/1/ack") < 64);

        // The slow reader lags again, then its session ends: nobody is behind any more.
        publish(&mut router, &mut gw, 300);
        assert_eq!(read(&mut router, &mut fast_rx).len(), 300);
        assert!(held(&mut router, "d/1/ack") > 8 * 1024);
        drop(slow);
        drop(slow_rx);
        let slow_id = router.connection_map["slow"];
        router.handle_disconnection(slow_id, None);
        assert!(held(&mut router, "d/1/ack") < 64);

        // No subscriber left: patch 20 forgets the filter, log and all.
        fast.unsubscribe("d/1/ack").unwrap();
        settle(&mut router);
        assert_eq!(router.datalog.matches("d/1/ack"), Some(vec![]));
    }

    #[test]
    fn a_persistent_session_keeps_the_log() {
        let mut router = router();
        let (mut gw, _gw_rx) = connect(&mut router, "gateway", true);
        let (mut device, mut device_rx) = connect(&mut router, "device", false);
        device.subscribe("d/1/ack").unwrap();
        settle(&mut router);
        publish(&mut router, &mut gw, 300);
        assert_eq!(read(&mut router, &mut device_rx).len(), 300);
        assert!(held(&mut router, "d/1/ack") > 8 * 1024);
    }
}

/// Breakwater patch 18: a connection whose inflight window is full still gets the acks of what
/// it publishes. Drives the router on the test thread, like `release_tests`.
#[cfg(test)]
mod pending_ack_tests {
    use super::{Event, Router};
    use crate::local::{LinkBuilder, LinkError, LinkRx, LinkTx};
    use crate::protocol::{Filter, Packet, Publish, QoS, RetainForwardRule, Subscribe};
    use crate::router::shared_subs::Strategy;
    use crate::router::{Ack, Notification};
    use crate::RouterConfig;
    use std::time::Instant;

    fn router() -> Router {
        Router::new(
            0,
            RouterConfig {
                max_connections: 10,
                max_outgoing_packet_count: 200,
                max_segment_size: 64 * 1024,
                max_segment_count: 10,
                custom_segment: None,
                initialized_filters: None,
                shared_subscriptions_strategy: Strategy::RoundRobin,
                max_saved_sessions: None,
                saved_session_expiry_secs: None,
                session_store: None,
            },
        )
    }

    fn settle(router: &mut Router) {
        while !router.router_rx.is_empty() || !router.scheduler.readyqueue.is_empty() {
            router.run_inner().unwrap();
        }
    }

    fn connect(router: &mut Router, client_id: &'static str) -> (LinkTx, LinkRx) {
        let tx = router.link();
        let builder = std::thread::spawn(move || LinkBuilder::new(client_id, tx).build().unwrap());
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        while !builder.is_finished() {
            assert!(Instant::now() < deadline, "no CONNACK for {client_id}");
            settle(router);
            std::thread::yield_now();
        }
        let (tx, rx, _) = builder.join().unwrap();
        (tx, rx)
    }

    /// Hands `packet` to the router as if a remote link had read it from the network.
    fn send(router: &mut Router, tx: &mut LinkTx, packet: Packet) {
        tx.buffer().push_back(packet);
        router
            .router_tx
            .send((tx.connection_id, Event::DeviceData))
            .unwrap();
        settle(router);
    }

    /// Everything the link has been sent, calling `ready` like a well-behaved link (but never
    /// acking a forward).
    fn read(router: &mut Router, rx: &mut LinkRx) -> Vec<Notification> {
        let mut got = Vec::new();
        loop {
            settle(router);
            match rx.recv_deadline(Instant::now()) {
                Ok(Some(Notification::Unschedule)) => rx.ready().unwrap(),
                Ok(Some(n)) => got.push(n),
                Ok(None) => {}
                Err(LinkError::RecvTimeout(_)) => return got,
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn a_full_inflight_window_does_not_hold_back_pubacks() {
        let mut router = router();
        let (mut gw, _gw_rx) = connect(&mut router, "gateway");
        gw.subscribe("d/1/telemetry").unwrap();
        let (mut device, mut device_rx) = connect(&mut router, "device");
        let filter = Filter {
            path: "d/1/ack".to_owned(),
            qos: QoS::AtLeastOnce,
            nolocal: false,
            preserve_retain: false,
            retain_forward_rule: RetainForwardRule::Never,
        };
        let subscribe = Subscribe {
            pkid: 1,
            filters: vec![filter],
        };
        send(&mut router, &mut device, Packet::Subscribe(subscribe, None));
        read(&mut router, &mut device_rx);

        // 150 acks for the device, which takes them and never PUBACKs any: its inflight
        // window (100) fills up.
        for i in 0..150 {
            gw.publish("d/1/ack", format!("ack {i}")).unwrap();
        }
        settle(&mut router);
        let forwards = read(&mut router, &mut device_rx)
            .into_iter()
            .filter(|n| matches!(n, Notification::Forward(_)))
            .count();
        assert_eq!(forwards, 100);

        // The device publishes at QoS 1: it gets its PUBACK all the same.
        let publish = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "d/1/telemetry".into(),
            pkid: 7,
            payload: "batch".into(),
        };
        send(&mut router, &mut device, Packet::Publish(publish, None));
        let got = read(&mut router, &mut device_rx);
        assert!(
            got.iter().any(|n| matches!(
                n,
                Notification::DeviceAck(Ack::PubAck(ack)) if ack.pkid == 7
            )),
            "no PUBACK for pkid 7: {got:?}"
        );
        // The router holds no ack back for it either.
        let id = device_rx.id();
        assert!(router.ackslog[id].readv().is_empty());
    }
}

/// Breakwater patch 22: the PUBACK of a publish on a deferred filter waits for its owner's
/// `puback`, leaves in arrival order, and a token of a closed connection acks nothing.
#[cfg(test)]
mod deferred_ack_tests {
    use super::{Event, Router};
    use crate::local::{LinkBuilder, LinkError, LinkRx, LinkTx};
    use crate::protocol::{Packet, Publish, QoS};
    use crate::router::shared_subs::Strategy;
    use crate::router::{Ack, Notification};
    use crate::{AckToken, RouterConfig};
    use flume::RecvTimeoutError;
    use std::time::Instant;

    fn router() -> Router {
        Router::new(
            0,
            RouterConfig {
                max_connections: 10,
                max_outgoing_packet_count: 200,
                max_segment_size: 64 * 1024,
                max_segment_count: 10,
                custom_segment: None,
                initialized_filters: None,
                shared_subscriptions_strategy: Strategy::RoundRobin,
                max_saved_sessions: None,
                saved_session_expiry_secs: None,
                session_store: None,
            },
        )
    }

    fn settle(router: &mut Router) {
        while !router.router_rx.is_empty() || !router.scheduler.readyqueue.is_empty() {
            router.run_inner().unwrap();
        }
    }

    fn connect(router: &mut Router, client_id: &'static str) -> (LinkTx, LinkRx) {
        let tx = router.link();
        let builder = std::thread::spawn(move || LinkBuilder::new(client_id, tx).build().unwrap());
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        while !builder.is_finished() {
            assert!(Instant::now() < deadline, "no CONNACK for {client_id}");
            settle(router);
            std::thread::yield_now();
        }
        let (tx, rx, _) = builder.join().unwrap();
        (tx, rx)
    }

    fn publish(router: &mut Router, tx: &mut LinkTx, topic: &str, pkid: u16, qos: QoS) {
        let publish = Publish {
            dup: false,
            qos,
            retain: false,
            topic: topic.to_owned().into(),
            pkid,
            payload: format!("payload {pkid}").into(),
        };
        tx.buffer().push_back(Packet::Publish(publish, None));
        router
            .router_tx
            .send((tx.connection_id, Event::DeviceData))
            .unwrap();
        settle(router);
    }

    /// Everything the link has been sent (`Err` once the router dropped it).
    fn read(router: &mut Router, rx: &mut LinkRx) -> Result<Vec<Notification>, LinkError> {
        let mut got = Vec::new();
        loop {
            settle(router);
            match rx.recv_deadline(Instant::now()) {
                Ok(Some(Notification::Unschedule)) => rx.ready().unwrap(),
                Ok(Some(n)) => got.push(n),
                Ok(None) => {}
                Err(LinkError::RecvTimeout(RecvTimeoutError::Timeout)) => return Ok(got),
                Err(e) => return Err(e),
            }
        }
    }

    fn pubacks(got: &[Notification]) -> Vec<u16> {
        got.iter()
            .filter_map(|n| match n {
                Notification::DeviceAck(Ack::PubAck(ack)) => Some(ack.pkid),
                _ => None,
            })
            .collect()
    }

    /// (token, publisher, pkid, payload) of each publish handed to the owner.
    fn handed(got: &[Notification]) -> Vec<(AckToken, String, u16, String)> {
        got.iter()
            .filter_map(|n| match n {
                Notification::Deferred(d) => Some((
                    d.token,
                    d.client_id.clone(),
                    d.publish.pkid,
                    String::from_utf8_lossy(&d.publish.payload).into_owned(),
                )),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_deferred_puback_waits_for_its_owner_and_leaves_in_order() {
        let mut router = router();
        let (mut gw, mut gw_rx) = connect(&mut router, "gateway");
        gw.defer_acks("plant/+/telemetry").unwrap();
        settle(&mut router);
        let (mut device, mut device_rx) = connect(&mut router, "device-1");
        read(&mut router, &mut device_rx).unwrap();

        // Another topic is acked on receipt, as before (it has a subscriber).
        gw.subscribe("other/topic").unwrap();
        settle(&mut router);
        publish(&mut router, &mut device, "other/topic", 1, QoS::AtLeastOnce);
        assert_eq!(pubacks(&read(&mut router, &mut device_rx).unwrap()), [1]);

        // Three publishes on a deferred topic: no PUBACK, each handed to the owner with the
        // publisher's client id and a token; a QoS 0 one too (see the QoS 0 test below).
        for pkid in [2, 3, 4] {
            publish(&mut router, &mut device, "plant/d1/telemetry", pkid, QoS::AtLeastOnce);
        }
        publish(&mut router, &mut device, "plant/d1/telemetry", 0, QoS::AtMostOnce);
        assert_eq!(pubacks(&read(&mut router, &mut device_rx).unwrap()), [] as [u16; 0]);
        let got = handed(&read(&mut router, &mut gw_rx).unwrap());
        assert_eq!(got.len(), 4, "{got:?}");
        assert!(got.iter().all(|(_, c, _, _)| c == "device-1"));
        assert_eq!(got[0].3, "payload 2");
        let tokens: Vec<AckToken> = got[..3].iter().map(|g| g.0).collect();
        assert_eq!(device.deferred.pending(), 4);
        gw.puback(got[3].0).unwrap();

        // Acked out of order: released in arrival order, each once.
        gw.puback(tokens[1]).unwrap();
        assert_eq!(pubacks(&read(&mut router, &mut device_rx).unwrap()), [] as [u16; 0]);
        gw.puback(tokens[0]).unwrap();
        gw.puback(tokens[0]).unwrap();
        assert_eq!(pubacks(&read(&mut router, &mut device_rx).unwrap()), [2, 3]);
        gw.puback(tokens[2]).unwrap();
        // The QoS 0 one behind it goes with it, without a PUBACK.
        assert_eq!(pubacks(&read(&mut router, &mut device_rx).unwrap()), [4]);
        assert_eq!(device.deferred.pending(), 0);
        assert_eq!(device.deferred.released(), 4);
    }

    /// QoS 0 publishes on a deferred topic hold waiting slots like QoS 1 ones: the connection's
    /// waiting count (at `max_deferred_acks` its task stops reading) grows with a QoS 0 flood
    /// until the owner releases them, in arrival order and without PUBACKs.
    #[test]
    fn a_qos0_flood_holds_waiting_slots_until_the_owner_releases_them_in_order() {
        let mut router = router();
        let (mut gw, mut gw_rx) = connect(&mut router, "gateway");
        gw.defer_acks("plant/+/telemetry").unwrap();
        settle(&mut router);
        let (mut device, mut device_rx) = connect(&mut router, "device-1");
        read(&mut router, &mut device_rx).unwrap();

        for _ in 0..50 {
            publish(&mut router, &mut device, "plant/d1/telemetry", 0, QoS::AtMostOnce);
        }
        publish(&mut router, &mut device, "plant/d1/telemetry", 7, QoS::AtLeastOnce);
        let got = handed(&read(&mut router, &mut gw_rx).unwrap());
        assert_eq!(got.len(), 51);
        assert_eq!(device.deferred.pending(), 51, "QoS 0 publishes hold no slot");

        // The QoS 1 one first: its PUBACK waits for the 50 QoS 0 ones ahead of it.
        gw.puback(got[50].0).unwrap();
        for g in &got[..49] {
            gw.puback(g.0).unwrap();
        }
        assert_eq!(pubacks(&read(&mut router, &mut device_rx).unwrap()), [] as [u16; 0]);
        assert_eq!(device.deferred.pending(), 2);
        assert_eq!(device.deferred.released(), 49);
        gw.puback(got[49].0).unwrap();
        // Released: no PUBACK for the QoS 0 ones, the QoS 1 one's goes out.
        assert_eq!(pubacks(&read(&mut router, &mut device_rx).unwrap()), [7]);
        assert_eq!(device.deferred.pending(), 0);
        assert_eq!(device.deferred.released(), 51);
    }

    #[test]
    fn a_token_of_a_closed_connection_never_acks_or_closes_its_successor() {
        let mut router = router();
        let (mut gw, mut gw_rx) = connect(&mut router, "gateway");
        gw.defer_acks("plant/+/telemetry").unwrap();
        settle(&mut router);
        let (mut device, mut device_rx) = connect(&mut router, "device-1");
        publish(&mut router, &mut device, "plant/d1/telemetry", 9, QoS::AtLeastOnce);
        let old = handed(&read(&mut router, &mut gw_rx).unwrap())[0].0;

        // The owner refuses it: the connection is closed, without a PUBACK.
        gw.disconnect(old).unwrap();
        assert!(read(&mut router, &mut device_rx).is_err());

        // The client reconnects (likely the same connection id) and resends with the same pkid.
        let (mut device, mut device_rx) = connect(&mut router, "device-1");
        publish(&mut router, &mut device, "plant/d1/telemetry", 9, QoS::AtLeastOnce);
        let new = handed(&read(&mut router, &mut gw_rx).unwrap())[0].0;
        assert_ne!(old, new);
        // The old token neither acks nor closes the new connection.
        gw.puback(old).unwrap();
        gw.disconnect(old).unwrap();
        assert_eq!(pubacks(&read(&mut router, &mut device_rx).unwrap()), [] as [u16; 0]);
        gw.puback(new).unwrap();
        assert_eq!(pubacks(&read(&mut router, &mut device_rx).unwrap()), [9]);
    }
}

/// Breakwater patches 20 and 21: client ids that come and go leave nothing in the router's
/// tables (clean sessions), or at most the cap's worth of saved sessions (persistent ones).
#[cfg(test)]
mod per_id_tests {
    use super::Router;
    use crate::local::{LinkBuilder, LinkTx};
    use crate::router::shared_subs::Strategy;
    use crate::RouterConfig;
    use std::time::Instant;

    fn router(max_saved_sessions: Option<usize>) -> Router {
        Router::new(
            0,
            RouterConfig {
                max_connections: 100,
                max_outgoing_packet_count: 200,
                max_segment_size: 1024,
                max_segment_count: 10,
                custom_segment: None,
                initialized_filters: None,
                shared_subscriptions_strategy: Strategy::RoundRobin,
                max_saved_sessions,
                saved_session_expiry_secs: None,
                session_store: None,
            },
        )
    }

    fn settle(router: &mut Router) {
        while !router.router_rx.is_empty() || !router.scheduler.readyqueue.is_empty() {
            router.run_inner().unwrap();
        }
    }

    fn connect(router: &mut Router, client_id: String, clean: bool) -> LinkTx {
        let tx = router.link();
        let builder = std::thread::spawn(move || {
            LinkBuilder::new(&client_id, tx)
                .clean_session(clean)
                .build()
                .unwrap()
        });
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        while !builder.is_finished() {
            assert!(Instant::now() < deadline, "no CONNACK");
            settle(router);
            std::thread::yield_now();
        }
        builder.join().unwrap().0
    }

    /// What the router holds per client id, filter or topic.
    fn tables(router: &Router) -> [usize; 7] {
        let (filters, indexes, topics) = router.datalog.table_sizes();
        [
            router.graveyard.len(),
            filters,
            indexes,
            topics,
            router.subscription_map.len(),
            router.connection_map.len(),
            router.last_wills.len(),
        ]
    }

    /// A device's life: connects, subscribes to its own ack topic, gets an ack, publishes
    /// telemetry (matched by the gateway's wildcard filter), leaves.
    fn device_lifetime(router: &mut Router, gateway: &mut LinkTx, i: usize, clean: bool) {
        let mut device = connect(router, format!("device-{i}"), clean);
        device.subscribe(format!("d/{i}/ack")).unwrap();
        settle(router);
        gateway.publish(format!("d/{i}/ack"), "ack").unwrap();
        device.publish(format!("d/{i}/telemetry"), "batch").unwrap();
        settle(router);
        let id = router.connection_map[&format!("device-{i}")];
        router.handle_disconnection(id, None);
        drop(device);
        // An ack published after the device has gone.
        gateway.publish(format!("d/{i}/ack"), "late ack").unwrap();
        settle(router);
    }

    #[test]
    fn clean_sessions_leave_nothing_per_client_id() {
        let mut router = router(None);
        let mut gateway = connect(&mut router, "gateway".to_owned(), true);
        gateway.subscribe("d/+/telemetry").unwrap();
        gateway.subscribe("d/+/ack").unwrap();
        settle(&mut router);
        // The first device's life allocates what any would (the topic cache's entries).
        device_lifetime(&mut router, &mut gateway, 0, true);
        let before = tables(&router);
        for i in 1..=300 {
            device_lifetime(&mut router, &mut gateway, i, true);
        }
        let after = tables(&router);
        // Only the cache of topic matches may hold entries, up to its bound; the rest is
        // exactly as before.
        assert_eq!(after[0], 0, "graveyard: {after:?}");
        assert_eq!(after[1..3], before[1..3], "filters: {before:?} -> {after:?}");
        assert!(after[3] <= 1024, "topic cache: {after:?}");
        assert_eq!(after[4..], before[4..], "{before:?} -> {after:?}");

        // Past its bound the topic cache starts over instead of growing.
        for i in 301..=1400 {
            device_lifetime(&mut router, &mut gateway, i, true);
        }
        assert!(tables(&router)[3] <= 1024, "{:?}", tables(&router));
        assert_eq!(tables(&router)[..3], [0, before[1], before[2]]);
    }

    #[test]
    fn persistent_sessions_are_capped_and_a_dropped_one_leaves_nothing() {
        let mut router = router(Some(5));
        let mut gateway = connect(&mut router, "gateway".to_owned(), true);
        gateway.subscribe("d/+/telemetry").unwrap();
        gateway.subscribe("d/+/ack").unwrap();
        settle(&mut router);
        let (filters_before, _, _) = router.datalog.table_sizes();
        for i in 0..50 {
            device_lifetime(&mut router, &mut gateway, i, false);
        }
        assert_eq!(router.graveyard.len(), 5);
        // The five saved sessions keep their own filters, nothing else does.
        let (filters, indexes, _) = router.datalog.table_sizes();
        assert_eq!(filters, filters_before + 5);
        assert_eq!(indexes, filters_before + 5);

        // A saved session resumes; a clean session with a saved one's id discards it.
        let _resumed = connect(&mut router, "device-49".to_owned(), false);
        assert_eq!(router.graveyard.len(), 4);
        let _clean = connect(&mut router, "device-48".to_owned(), true);
        assert_eq!(router.graveyard.len(), 3);
        let (filters, _, _) = router.datalog.table_sizes();
        // device-49's filter is in use again, device-48's is gone.
        assert_eq!(filters, filters_before + 4);
    }
}

/// Breakwater patch 23: persistent sessions through a session store, across a restart.
#[cfg(test)]
mod session_store_tests {
    use super::Router;
    use crate::hooks::{SessionStore, StoredSession};
    use crate::local::{LinkBuilder, LinkRx, LinkTx};
    use crate::protocol::QoS;
    use crate::router::{Ack, Notification};
    use crate::RouterConfig;
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant, SystemTime};

    /// What a store on disk would keep, in memory.
    #[derive(Default)]
    struct MemStore {
        sessions: Mutex<BTreeMap<String, StoredSession>>,
        forgotten: Mutex<Vec<String>>,
    }

    impl SessionStore for MemStore {
        fn load(&self) -> Vec<StoredSession> {
            self.sessions.lock().unwrap().values().cloned().collect()
        }
        fn save(&self, session: StoredSession) {
            self.sessions
                .lock()
                .unwrap()
                .insert(session.client_id.clone(), session);
        }
        fn forget(&self, client_id: &str) {
            self.sessions.lock().unwrap().remove(client_id);
            self.forgotten.lock().unwrap().push(client_id.to_owned());
        }
    }

    impl MemStore {
        fn get(&self, client_id: &str) -> Option<StoredSession> {
            self.sessions.lock().unwrap().get(client_id).cloned()
        }
    }

    fn router(
        store: &Arc<MemStore>,
        max_saved_sessions: Option<usize>,
        expiry_secs: Option<u64>,
    ) -> Router {
        let store: Arc<dyn SessionStore> = store.clone();
        let mut router = Router::new(
            0,
            RouterConfig {
                max_connections: 100,
                max_outgoing_packet_count: 200,
                max_segment_size: 1024,
                max_segment_count: 10,
                max_saved_sessions,
                saved_session_expiry_secs: expiry_secs,
                session_store: Some(store),
                ..Default::default()
            },
        );
        router.restore_sessions();
        router
    }

    fn settle(router: &mut Router) {
        while !router.router_rx.is_empty() || !router.scheduler.readyqueue.is_empty() {
            router.run_inner().unwrap();
        }
    }

    /// Connects; returns the links and the CONNACK's session present flag.
    fn connect(router: &mut Router, client_id: &str, clean: bool) -> (LinkTx, LinkRx, bool) {
        let tx = router.link();
        let client_id = client_id.to_owned();
        let builder = std::thread::spawn(move || {
            LinkBuilder::new(&client_id, tx)
                .clean_session(clean)
                .build()
                .unwrap()
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while !builder.is_finished() {
            assert!(Instant::now() < deadline, "no CONNACK");
            settle(router);
            std::thread::yield_now();
        }
        let (tx, rx, connack) = builder.join().unwrap();
        let Notification::DeviceAck(Ack::ConnAck(_, ack, _)) = connack else {
            panic!("not a CONNACK: {connack:?}");
        };
        (tx, rx, ack.session_present)
    }

    fn disconnect(router: &mut Router, client_id: &str) {
        let id = router.connection_map[client_id];
        router.handle_disconnection(id, None);
        settle(router);
    }

    /// The topics of the publishes `rx` has been sent.
    fn received(router: &mut Router, rx: &mut LinkRx) -> Vec<String> {
        settle(router);
        let mut topics = Vec::new();
        while let Ok(Some(n)) = rx.recv_deadline(Instant::now() + Duration::from_millis(100)) {
            if let Notification::Forward(f) = n {
                topics.push(String::from_utf8(f.publish.topic.to_vec()).unwrap());
            }
        }
        topics
    }

    fn stored(client_id: &str, filters: &[&str], gone_for: Option<Duration>) -> StoredSession {
        StoredSession {
            client_id: client_id.to_owned(),
            subscriptions: filters
                .iter()
                .map(|f| ((*f).to_owned(), QoS::AtLeastOnce))
                .collect(),
            disconnected_at: gone_for.map(|d| SystemTime::now() - d),
        }
    }

    #[test]
    fn a_session_outlives_the_router_with_its_subscriptions() {
        let store = Arc::new(MemStore::default());
        let mut first = router(&store, None, None);
        let (mut device, _rx, present) = connect(&mut first, "device-1", false);
        assert!(!present);
        // On the store from the CONNECT on, then with its subscriptions.
        assert_eq!(store.get("device-1"), Some(stored("device-1", &[], None)));
        device.subscribe("d/1/cmd").unwrap();
        device.subscribe("d/1/other").unwrap();
        settle(&mut first);
        device.unsubscribe("d/1/other").unwrap();
        settle(&mut first);
        let record = store.get("device-1").unwrap();
        assert_eq!(
            record.subscriptions,
            [("d/1/cmd".to_owned(), QoS::AtMostOnce)]
        );
        assert_eq!(record.disconnected_at, None);
        // A clean session is never stored.
        let _clean = connect(&mut first, "clean-1", true);
        assert!(store.get("clean-1").is_none());

        // The broker dies with the device connected; a new one starts on the same store.
        drop(first);
        let mut second = router(&store, None, None);
        assert_eq!(second.graveyard.len(), 1);
        let (mut gateway, _grx, _) = connect(&mut second, "gateway", true);
        let (_device, mut rx, present) = connect(&mut second, "device-1", false);
        assert!(present, "a restored session is present");
        gateway.publish("d/1/cmd", "hello").unwrap();
        gateway.publish("d/1/other", "not subscribed").unwrap();
        assert_eq!(received(&mut second, &mut rx), ["d/1/cmd"]);
        // An id the store never had starts afresh.
        let (_other, _orx, present) = connect(&mut second, "device-2", false);
        assert!(!present);

        // Saved on disconnect with its time; restored again after another restart.
        disconnect(&mut second, "device-1");
        assert!(store.get("device-1").unwrap().disconnected_at.is_some());
        drop(second);
        let mut third = router(&store, None, None);
        let (_device, _rx, present) = connect(&mut third, "device-1", false);
        assert!(present);
    }

    #[test]
    fn restored_sessions_count_against_the_cap_and_expire() {
        let store = Arc::new(MemStore::default());
        for (i, minutes) in [50u64, 10, 40, 20, 30].into_iter().enumerate() {
            store.save(stored(
                &format!("device-{i}"),
                &["d/x/cmd"],
                Some(Duration::from_secs(minutes * 60)),
            ));
        }
        // Gone for longer than the expiry: not restored.
        store.save(stored("old", &[], Some(Duration::from_secs(7200))));
        // Connected when the broker stopped: its expiry runs from the restart.
        store.save(stored("connected", &[], None));
        let mut router = router(&store, Some(4), Some(3600));
        assert_eq!(router.graveyard.len(), 4);
        let mut forgotten = store.forgotten.lock().unwrap().clone();
        forgotten.sort();
        // The cap drops the oldest: device-0 (50 min) and device-2 (40 min).
        assert_eq!(forgotten, ["device-0", "device-2", "old"]);
        for (id, present) in [
            ("device-0", false),
            ("device-1", true),
            ("device-2", false),
            ("old", false),
            ("connected", true),
        ] {
            assert_eq!(connect(&mut router, id, false).2, present, "{id}");
        }
    }

    #[test]
    fn a_restored_session_expires_with_the_age_it_had() {
        let store = Arc::new(MemStore::default());
        store.save(stored(
            "device-1",
            &["d/1/cmd"],
            Some(Duration::from_secs(1)),
        ));
        let mut router = router(&store, None, Some(2));
        assert_eq!(router.graveyard.len(), 1);
        std::thread::sleep(Duration::from_millis(1500));
        let (_device, _rx, present) = connect(&mut router, "device-1", false);
        assert!(!present, "expired");
        assert_eq!(store.forgotten.lock().unwrap()[..], ["device-1"]);
        // Its client's new session is stored afresh, without the old subscriptions.
        assert_eq!(store.get("device-1"), Some(stored("device-1", &[], None)));
    }

    #[test]
    fn a_clean_connect_forgets_a_stored_session() {
        let store = Arc::new(MemStore::default());
        store.save(stored("device-1", &["d/1/cmd"], None));
        store.save(stored("device-2", &["d/2/cmd"], None));
        let mut router = router(&store, None, None);
        let (_device, _rx, present) = connect(&mut router, "device-1", true);
        assert!(!present);
        assert!(store.get("device-1").is_none());
        assert_eq!(router.graveyard.len(), 1);
        // A live persistent session replaced by a clean one with its id is forgotten too.
        let (_device, _rx, present) = connect(&mut router, "device-2", false);
        assert!(present);
        let (_device, _rx, present) = connect(&mut router, "device-2", true);
        assert!(!present);
        assert!(store.get("device-2").is_none());
        assert_eq!(router.graveyard.len(), 0);
    }
}

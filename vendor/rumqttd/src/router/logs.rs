use super::Ack;
use slab::Slab;
use tracing::{info, trace};

use crate::protocol::{
    matches, ConnAck, ConnAckProperties, PingResp, PubAck, PubComp, PubRec, PubRel, Publish,
    PublishProperties, SubAck, UnsubAck,
};
use crate::router::{DataRequest, FilterIdx, SubscriptionMeter, Waiters};
use crate::{ConnectionId, Filter, Offset, RouterConfig, Topic};

use crate::segments::{CommitLog, Position};
use crate::Storage;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::time::Instant;

type PubWithProp = (Publish, Option<PublishProperties>);

#[derive(Clone)]
pub struct PublishData {
    pub publish: Publish,
    pub properties: Option<PublishProperties>,
    pub timestamp: Instant,
}

impl From<PubWithProp> for PublishData {
    fn from((publish, properties): PubWithProp) -> Self {
        PublishData {
            publish,
            properties,
            timestamp: Instant::now(),
        }
    }
}

// TODO: remove this from here
impl Storage for PublishData {
    // TODO: calculate size of publish properties as well!
    fn size(&self) -> usize {
        let publish = &self.publish;
        4 + publish.topic.len() + publish.payload.len()
    }
}

/// Stores 'device' data and 'actions' data in native commitlog
/// organized by subscription filter. Device data is replicated
/// while actions data is not
pub struct DataLog {
    pub config: RouterConfig,
    /// Native commitlog data organized by subscription. Contains
    /// device data and actions data logs.
    ///
    /// Device data is replicated while actions data is not.
    /// Also has waiters used to wake connections/replicator tracker
    /// which are caught up with all the data on 'Filter' and waiting
    /// for new data
    pub native: Slab<Data<PublishData>>,
    /// Map of subscription filter name to filter index
    filter_indexes: HashMap<Filter, FilterIdx>,
    retained_publishes: HashMap<Topic, PublishData>,
    /// List of filters associated with a topic
    publish_filters: HashMap<Topic, Vec<FilterIdx>>,
    /// Breakwater patch 7: the filters with a `+` or `#` level (see `is_wildcard`). Every other
    /// filter matches exactly one topic, itself, and is found in `filter_indexes` directly.
    wildcard_filters: Vec<(Filter, FilterIdx)>,
}

/// Breakwater patch 7: whether `filter` has a wildcard level. A filter without one matches only
/// the topic equal to it (and, like `matches`, never a topic starting with `$`), so matching it
/// needs a map lookup, not a scan. The scans made the first publish on every new topic cost
/// O(filters) and every new filter O(topics): with one filter per device (its own ack topic) a
/// fleet's first connect was quadratic in the number of devices.
fn is_wildcard(filter: &str) -> bool {
    filter.split('/').any(|level| level == "+" || level == "#")
}

impl DataLog {
    pub fn new(config: RouterConfig) -> io::Result<DataLog> {
        let mut native = Slab::new();
        let mut filter_indexes = HashMap::new();
        let retained_publishes = HashMap::new();
        let publish_filters = HashMap::new();
        let mut wildcard_filters = Vec::new();

        if let Some(warmup_filters) = config.initialized_filters.clone() {
            for filter in warmup_filters {
                let data = Data::new(&filter, &config);

                // Add commitlog to datalog and add datalog index to filter to
                // datalog index map
                let idx = native.insert(data);
                if is_wildcard(&filter) {
                    wildcard_filters.push((filter.clone(), idx));
                }
                filter_indexes.insert(filter, idx);
            }
        }

        Ok(DataLog {
            config,
            native,
            publish_filters,
            filter_indexes,
            retained_publishes,
            wildcard_filters,
        })
    }

    pub fn meter(&mut self, filter: &str) -> Option<&mut SubscriptionMeter> {
        let data = self.native.get_mut(*self.filter_indexes.get(filter)?)?;
        Some(&mut data.meter)
    }

    pub fn waiters(&self, filter: &Filter) -> Option<&Waiters<DataRequest>> {
        self.native
            .get(*self.filter_indexes.get(filter)?)
            .map(|data| &data.waiters)
    }

    pub fn remove_waiters_for_id(
        &mut self,
        id: ConnectionId,
        filter: &Filter,
    ) -> Option<DataRequest> {
        let data = self
            .native
            .get_mut(*self.filter_indexes.get(filter)?)
            .unwrap();
        let waiters = data.waiters.get_mut();

        waiters
            .iter()
            .position(|&(conn_id, _)| conn_id == id)
            .and_then(|index| {
                waiters
                    .swap_remove_back(index)
                    .map(|(_, data_req)| data_req)
            })
    }

    // TODO: Currently returning a Option<Vec> instead of Option<&Vec> due to Rust borrow checker
    // limitation
    pub fn matches(&mut self, topic: &str) -> Option<Vec<usize>> {
        match &self.publish_filters.get(topic) {
            Some(v) => Some(v.to_vec()),
            None => {
                // Breakwater patch 7: the exact filter by lookup, only wildcards by scan.
                let exact = if topic.starts_with('$') {
                    None
                } else {
                    self.filter_indexes.get(topic).copied()
                };
                let v: Vec<usize> = exact
                    .into_iter()
                    .chain(
                        self.wildcard_filters
                            .iter()
                            .filter(|(filter, _)| matches(topic, filter))
                            .map(|(_, filter_idx)| *filter_idx),
                    )
                    .collect();

                if !v.is_empty() {
                    // Breakwater patch 20: a cache, bounded. Every topic ever published to had
                    // an entry for good (a device's telemetry topic, matched by a wildcard
                    // filter, is never forgotten by `forget_if_unused`): memory per client id.
                    // Past the bound it starts over; entries are cheap to compute again.
                    if self.publish_filters.len() >= self.publish_filters_cap() {
                        self.publish_filters.clear();
                    }
                    self.publish_filters.insert(topic.to_owned(), v.clone());
                }

                Some(v)
            }
        }
    }

    /// Breakwater patch 20: most topics in the `publish_filters` cache.
    fn publish_filters_cap(&self) -> usize {
        (2 * self.config.max_connections).max(1024)
    }

    /// Breakwater patch 20: sizes of the tables that hold something per filter or per topic
    /// (filters, filter index, cached topic matches).
    #[cfg(test)]
    pub fn table_sizes(&self) -> (usize, usize, usize) {
        (
            self.native.len(),
            self.filter_indexes.len(),
            self.publish_filters.len(),
        )
    }

    pub fn next_native_offset(&mut self, filter: &str) -> (FilterIdx, Offset) {
        let publish_filters = &mut self.publish_filters;
        let filter_indexes = &mut self.filter_indexes;

        let (filter_idx, data) = match filter_indexes.get(filter) {
            Some(idx) => (*idx, self.native.get(*idx).unwrap()),
            None => {
                let data = Data::new(filter, &self.config);

                // Add commitlog to datalog and add datalog index to filter to
                // datalog index map
                let idx = self.native.insert(data);
                self.filter_indexes.insert(filter.to_owned(), idx);

                // Match new filter to existing topics and add to publish_filters if it matches
                if is_wildcard(filter) {
                    self.wildcard_filters.push((filter.to_owned(), idx));
                    for (topic, filters) in publish_filters.iter_mut() {
                        if matches(topic, filter) {
                            filters.push(idx);
                        }
                    }
                } else if !filter.starts_with('$') {
                    // Breakwater patch 7: an exact filter matches only its own topic.
                    if let Some(filters) = publish_filters.get_mut(filter) {
                        filters.push(idx);
                    }
                }

                (idx, self.native.get(idx).unwrap())
            }
        };

        (filter_idx, data.log.next_offset())
    }

    pub fn native_readv(
        &self,
        filter_idx: FilterIdx,
        offset: Offset,
        len: u64,
    ) -> io::Result<(Position, Vec<(PubWithProp, Offset)>)> {
        // unwrap to get index of `self.native` is fine here, because when a new subscribe packet
        // arrives in `Router::handle_device_payload`, it first calls the function
        // `next_native_offset` which creates a new commitlog if one doesn't exist. So any new
        // reads will definitely happen on a valid filter.
        let data = self.native.get(filter_idx).unwrap();
        let mut o = Vec::new();
        // TODO: `readv` is infallible but its current return type does not
        // reflect that. Consequently, this method is also infallible.
        // Encoding this information is important so that calling function
        // has more information on how this method behaves.
        let next = data.log.readv(offset, len, &mut o)?;

        let now = Instant::now();
        o.retain_mut(|(pubdata, _)| {
            // Keep data if no properties exists, which implies no message expiry!
            let Some(properties) = pubdata.properties.as_mut() else {
                return true;
            };

            // Keep data if there is no message_expiry_interval
            let Some(message_expiry_interval) = properties.message_expiry_interval.as_mut() else {
                return true;
            };

            let time_spent = (now - pubdata.timestamp).as_secs() as u32;

            let is_valid = time_spent < *message_expiry_interval;

            // ignore expired messages
            if is_valid {
                // set message_expiry_interval to (original value - time spent waiting in server)
                // ref: https://docs.oasis-open.org/mqtt/mqtt/v5.0/os/mqtt-v5.0-os.html#_Toc3901112
                *message_expiry_interval -= time_spent;
            }

            is_valid
        });

        // no need to include timestamp when returning
        let o = o
            .into_iter()
            .map(|(pubdata, offset)| ((pubdata.publish, pubdata.properties), offset))
            .collect();

        Ok((next, o))
    }

    pub fn shadow(&mut self, filter: &str) -> Option<PubWithProp> {
        let data = self.native.get_mut(*self.filter_indexes.get(filter)?)?;
        data.log.last().map(|p| (p.publish, p.properties))
    }

    /// This method is called when the subscriber has caught up with the commit log. In which case,
    /// instead of actively checking for commits in each `Router::run_inner` iteration, we instead
    /// wait and only try reading again when new messages have been added to the commit log. This
    /// methods converts a `DataRequest` (which actively reads the commit log in `Router::consume`)
    /// to a `Waiter` (which only reads when notified).
    pub fn park(&mut self, id: ConnectionId, request: DataRequest) {
        // calling unwrap on index here is fine, because only place this function is called is in
        // `Router::consume` method, when the status after reading from commit log of the same
        // filter as `request` is "done", that is, the subscriber has caught up. In other words,
        // there has been atleast 1 call to `native_readv` for the same filter, which means if
        // `native_readv` hasn't paniced, so this won't panic either.
        let data = self.native.get_mut(request.filter_idx).unwrap();
        data.waiters.register(id, request);
    }

    /// Breakwater patch 11: see [`Data::add_reader`].
    pub fn add_reader(&mut self, filter_idx: FilterIdx, rereads: bool) {
        if let Some(data) = self.native.get_mut(filter_idx) {
            data.add_reader(rereads);
        }
    }

    /// Breakwater patch 11: see [`Data::remove_reader`].
    pub fn remove_reader(&mut self, filter_idx: FilterIdx, rereads: bool) {
        if let Some(data) = self.native.get_mut(filter_idx) {
            data.remove_reader(rereads);
        }
    }

    /// Breakwater patch 20: forgets a filter nobody reads any more, so that a client id that
    /// subscribed to a topic of its own (a device's command or ack topic) leaves nothing behind
    /// when its clean session ends: its log, waiters, meter, index entry and cached topic
    /// match. Only a filter without readers, parked or not, not pinned, without wildcards
    /// (those are shared by many topics; see `publish_filters`) and not configured in
    /// `initialized_filters`. A later subscription creates it again, starting at offset 0:
    /// nobody can hold a cursor into the forgotten log. Loses the filter's `shadow` (its last
    /// entry). Returns whether it was forgotten.
    pub fn forget_if_unused(&mut self, filter_idx: FilterIdx) -> bool {
        let Some(data) = self.native.get(filter_idx) else {
            return false;
        };
        let initialized = self
            .config
            .initialized_filters
            .as_ref()
            .is_some_and(|filters| filters.contains(&data.filter));
        if data.readers > 0
            || data.pinned > 0
            || !data.waiters.waiters().is_empty()
            || is_wildcard(&data.filter)
            || initialized
        {
            return false;
        }
        let data = self.native.remove(filter_idx);
        self.filter_indexes.remove(&data.filter);
        // An exact filter is in the cached matches of one topic only: itself (patch 7).
        self.publish_filters.remove(&data.filter);
        true
    }

    /// Breakwater patch 11: see [`Data::release_consumed`].
    pub fn release_consumed(&mut self, filter_idx: FilterIdx) -> bool {
        self.native
            .get_mut(filter_idx)
            .is_some_and(Data::release_consumed)
    }

    /// Cleanup a connection from all the waiters
    pub fn clean(&mut self, id: ConnectionId) -> Vec<DataRequest> {
        let mut inflight = Vec::new();
        for (_, data) in self.native.iter_mut() {
            inflight.append(&mut data.waiters.remove(id));
        }

        inflight
    }

    pub fn insert_to_retained_publishes(
        &mut self,
        publish: Publish,
        publish_properties: Option<PublishProperties>,
        topic: Topic,
    ) {
        let pub_with_props = (publish, publish_properties);
        self.retained_publishes.insert(topic, pub_with_props.into());
    }

    pub fn remove_from_retained_publishes(&mut self, topic: Topic) {
        self.retained_publishes.remove(&topic);
    }

    pub fn read_retained_messages(&mut self, filter: &str) -> Vec<PubWithProp> {
        trace!(info = "reading retain msg", filter = &filter);
        let now = Instant::now();

        // discard expired retained messages
        self.retained_publishes.retain(|_, pubdata| {
            // Keep data if no properties exists, which implies no message expiry!
            let Some(properties) = pubdata.properties.as_mut() else {
                return true;
            };

            // Keep data if there is no message_expiry_interval
            let Some(message_expiry_interval) = properties.message_expiry_interval.as_mut() else {
                return true;
            };

            let time_spent = (now - pubdata.timestamp).as_secs() as u32;

            let is_valid = time_spent < *message_expiry_interval;

            // ignore expired messages
            if is_valid {
                // set message_expiry_interval to (original value - time spent waiting in server)
                // ref: https://docs.oasis-open.org/mqtt/mqtt/v5.0/os/mqtt-v5.0-os.html#_Toc3901112
                *message_expiry_interval -= time_spent;
            }

            is_valid
        });

        // no need to include timestamp when returning
        self.retained_publishes
            .iter()
            .filter(|(topic, _)| matches(topic, filter))
            .map(|(_, p)| (p.publish.clone(), p.properties.clone()))
            .collect()
    }
}

pub struct Data<T> {
    filter: Filter,
    pub log: CommitLog<T>,
    pub waiters: Waiters<DataRequest>,
    meter: SubscriptionMeter,
    /// Breakwater patch 11: the data requests reading this log (one per subscription, shared
    /// ones included), counted when they are created and when a clean session's request goes.
    readers: usize,
    /// Breakwater patch 11: a reader may come back for entries it has already read (a
    /// persistent session, whose unacked QoS 1/2 messages are read again from its saved
    /// cursor) or shares a cursor (a shared subscription): this log is never released.
    /// Breakwater patch 21: how many such readers there are (a count, not a flag: a persistent
    /// session that expires stops pinning the log).
    pinned: usize,
}

impl<T> Data<T>
where
    T: Storage + Clone,
{
    pub fn new(filter: &str, router_config: &RouterConfig) -> Data<T> {
        let mut max_segment_size = router_config.max_segment_size;
        let mut max_mem_segments = router_config.max_segment_count;

        // Override segment config for selected filter
        if let Some(config) = &router_config.custom_segment {
            for (f, segment_config) in config {
                if matches(filter, f) {
                    info!("Overriding segment config for filter: {}", filter);
                    max_segment_size = segment_config.max_segment_size;
                    max_mem_segments = segment_config.max_segment_count;
                }
            }
        }

        // max_segment_size: usize, max_mem_segments: usize
        let log = CommitLog::new(max_segment_size, max_mem_segments).unwrap();

        let waiters = Waiters::with_capacity(10);
        let metrics = SubscriptionMeter::default();
        Data {
            filter: filter.to_owned(),
            log,
            waiters,
            meter: metrics,
            readers: 0,
            pinned: 0,
        }
    }

    /// Breakwater patch 11: a data request for this log was created. `rereads` when its reader
    /// may read entries again after reading them (persistent session, shared subscription).
    pub fn add_reader(&mut self, rereads: bool) {
        self.readers += 1;
        self.pinned += usize::from(rereads);
    }

    /// Breakwater patch 11: a data request went (a clean session's on disconnect or
    /// unsubscribe; patch 21: also a persistent session's on unsubscribe, or when its saved
    /// session is dropped). `rereads` as it was given to `add_reader`.
    pub fn remove_reader(&mut self, rereads: bool) {
        self.readers = self.readers.saturating_sub(1);
        if rereads {
            self.pinned = self.pinned.saturating_sub(1);
        }
        self.release_consumed();
    }

    /// Breakwater patch 11: once every reader has read the log to its end (all of them are
    /// parked in `waiters`, or there are none), nobody will read its entries again: a new
    /// subscription starts at the end of the log. Drops them all but the last
    /// ([`CommitLog::keep_last_only`], for `shadow`). Without this a log keeps every entry until
    /// its segments rotate, also after its subscribers have gone: with one filter per device
    /// (its own ack topic) that is memory per device ever connected, and a wildcard telemetry
    /// filter held every publish of the last `max_segment_size * max_segment_count` bytes, and
    /// through their payloads the connections' 10 KiB read buffers. Returns whether anything
    /// was dropped.
    pub fn release_consumed(&mut self) -> bool {
        if self.pinned > 0 || self.waiters.waiters().len() != self.readers {
            return false;
        }
        self.log.keep_last_only()
    }

    /// Writes to all the filters that are mapped to this publish topic
    /// and wakes up consumers that are matching this topic (if they exist)
    pub fn append(
        &mut self,
        item: T,
        notifications: &mut VecDeque<(ConnectionId, DataRequest)>,
    ) -> (Offset, &Filter) {
        let size = item.size();
        let offset = self.log.append(item);
        if let Some(mut parked) = self.waiters.take() {
            notifications.append(&mut parked);
        }

        self.meter.count += 1;
        self.meter.total_size += size;

        // Breakwater patch 11: with no reader nobody will read it (a new subscription starts at
        // the end); e.g. an ack published for a device that has just disconnected.
        if self.readers == 0 {
            self.release_consumed();
        }

        (offset, &self.filter)
    }
}

/// Acks log for a subscription
#[derive(Debug)]
pub struct AckLog {
    // Committed acks per connection. First pkid, last pkid, data
    committed: VecDeque<Ack>,
    // Recorded qos 2 publishes
    recorded: VecDeque<(Publish, Option<PublishProperties>)>,
}

impl AckLog {
    /// New log
    pub fn new() -> AckLog {
        AckLog {
            // Breakwater patch 6: grow on demand (see `Outgoing::new`).
            committed: VecDeque::new(),
            recorded: VecDeque::new(),
        }
    }

    pub fn connack(&mut self, id: ConnectionId, ack: ConnAck, props: Option<ConnAckProperties>) {
        let ack = Ack::ConnAck(id, ack, props);
        self.committed.push_back(ack);
    }

    pub fn suback(&mut self, ack: SubAck) {
        let ack = Ack::SubAck(ack);
        self.committed.push_back(ack);
    }

    pub fn puback(&mut self, ack: PubAck) {
        let ack = Ack::PubAck(ack);
        self.committed.push_back(ack);
    }

    pub fn pubrec(&mut self, publish: Publish, props: Option<PublishProperties>, ack: PubRec) {
        let ack = Ack::PubRec(ack);
        self.recorded.push_back((publish, props));
        self.committed.push_back(ack);
    }

    pub fn pubrel(&mut self, ack: PubRel) {
        let ack = Ack::PubRel(ack);
        self.committed.push_back(ack);
    }

    pub fn pubcomp(&mut self, ack: PubComp) -> Option<(Publish, Option<PublishProperties>)> {
        let ack = Ack::PubComp(ack);
        self.committed.push_back(ack);
        self.recorded.pop_front()
    }

    pub fn pingresp(&mut self, ack: PingResp) {
        let ack = Ack::PingResp(ack);
        self.committed.push_back(ack);
    }

    pub fn unsuback(&mut self, ack: UnsubAck) {
        let ack = Ack::UnsubAck(ack);
        self.committed.push_back(ack);
    }

    pub fn readv(&mut self) -> &mut VecDeque<Ack> {
        &mut self.committed
    }
}

#[cfg(test)]
mod test {
    use super::DataLog;
    use crate::router::shared_subs::Strategy;
    use crate::RouterConfig;

    #[test]
    fn publish_filters_updating_correctly_on_new_topic_subscription() {
        let config = RouterConfig {
            max_segment_size: 1024,
            max_connections: 10,
            max_segment_count: 10,
            max_outgoing_packet_count: 1024,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Strategy::RoundRobin,
            max_saved_sessions: None,
            saved_session_expiry_secs: None,
            session_store: None,
        };
        let mut data = DataLog::new(config).unwrap();
        data.next_native_offset("topic/a");
        data.matches("topic/a");

        data.next_native_offset("topic/+");

        assert_eq!(data.publish_filters.get("topic/a").unwrap().len(), 2);
    }

    #[test]
    fn publish_filters_updating_correctly_on_new_publish() {
        let config = RouterConfig {
            max_segment_size: 1024,
            max_connections: 10,
            max_segment_count: 10,
            max_outgoing_packet_count: 1024,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Strategy::RoundRobin,
            max_saved_sessions: None,
            saved_session_expiry_secs: None,
            session_store: None,
        };
        let mut data = DataLog::new(config).unwrap();
        data.next_native_offset("+/+");

        data.matches("topic/a");

        assert_eq!(data.publish_filters.get("topic/a").unwrap().len(), 1);
    }

    // Breakwater patch 7: exact filters by lookup, wildcard filters by scan, same result as
    // matching every filter against every topic, whichever of subscribe and publish comes first.
    #[test]
    fn indexed_matching_agrees_with_a_full_scan() {
        let config = RouterConfig {
            max_segment_size: 1024,
            max_connections: 10,
            max_segment_count: 10,
            max_outgoing_packet_count: 1024,
            custom_segment: None,
            initialized_filters: Some(vec!["a/+/c".to_owned(), "x/y".to_owned()]),
            shared_subscriptions_strategy: Strategy::RoundRobin,
            max_saved_sessions: None,
            saved_session_expiry_secs: None,
            session_store: None,
        };
        let filters = ["a/b/c", "a/#", "#", "+/b/+", "$SYS/up", "d/e", "a/b", ""];
        let topics = ["a/b/c", "a/b", "a/x/c", "d/e", "$SYS/up", "x/y", "q", "", "a/b/c/d"];
        let mut data = DataLog::new(config).unwrap();
        // Some topics are seen before the filters are subscribed, the rest after.
        for topic in &topics[..4] {
            data.matches(topic);
        }
        for filter in filters {
            data.next_native_offset(filter);
        }
        for topic in topics {
            let mut got = data.matches(topic).unwrap();
            got.sort_unstable();
            let mut want: Vec<usize> = data
                .filter_indexes
                .iter()
                .filter(|(filter, _)| crate::protocol::matches(topic, filter))
                .map(|(_, idx)| *idx)
                .collect();
            want.sort_unstable();
            assert_eq!(got, want, "topic {topic:?}");
        }
    }

    // Breakwater patch 11: a log is released once every reader has read it to the end (all
    // parked), and never while one is behind or may read it again.
    mod release {
        use super::super::{DataLog, PublishData};
        use crate::protocol::Publish;
        use crate::router::shared_subs::Strategy;
        use crate::router::DataRequest;
        use crate::RouterConfig;
        use std::collections::VecDeque;

        fn datalog() -> DataLog {
            DataLog::new(RouterConfig {
                max_segment_size: 1024,
                max_connections: 10,
                max_segment_count: 10,
                max_outgoing_packet_count: 1024,
                custom_segment: None,
                initialized_filters: None,
                shared_subscriptions_strategy: Strategy::RoundRobin,
                max_saved_sessions: None,
                saved_session_expiry_secs: None,
                session_store: None,
            })
            .unwrap()
        }

        fn append(log: &mut DataLog, idx: usize, n: usize) -> VecDeque<(usize, DataRequest)> {
            let mut woken = VecDeque::new();
            for i in 0..n {
                let payload = format!("ack {i:03} with some padding");
                let publish = Publish::new("d/ack".to_owned(), payload, false);
                let data: PublishData = (publish, None).into();
                log.native[idx].append(data, &mut woken);
            }
            woken
        }

        fn request(idx: usize, cursor: (u64, u64)) -> DataRequest {
            DataRequest {
                filter: "d/ack".to_owned(),
                filter_idx: idx,
                qos: 0,
                cursor,
                read_count: 0,
                max_count: 100,
                forward_retained: false,
                group: None,
            }
        }

        /// Reads everything from `cursor` like the router does; returns the payloads and the end.
        fn read_all(log: &DataLog, idx: usize, cursor: (u64, u64)) -> (Vec<String>, (u64, u64)) {
            let (position, read) = log.native_readv(idx, cursor, 1000).unwrap();
            let crate::segments::Position::Done { start, end } = position else {
                panic!("read to the end");
            };
            assert_eq!(start, cursor, "cursor jumped");
            let payloads = read
                .into_iter()
                .map(|((p, _), _)| String::from_utf8(p.payload.to_vec()).unwrap())
                .collect();
            (payloads, end)
        }

        fn held(log: &DataLog, idx: usize) -> u64 {
            log.native[idx].log.size()
        }

        #[test]
        fn released_when_every_reader_has_caught_up() {
            let mut log = datalog();
            let (idx, start) = log.next_native_offset("d/ack");
            log.add_reader(idx, false);
            log.add_reader(idx, false);
            append(&mut log, idx, 100);
            let full = held(&log, idx);
            assert!(full > 2048, "several segments: {full}");

            // The first reader catches up and parks: the second has read nothing yet.
            let (read, end) = read_all(&log, idx, start);
            assert_eq!(read.len(), 100);
            log.park(1, request(idx, end));
            assert!(!log.release_consumed(idx));
            assert_eq!(held(&log, idx), full);

            // The second reads everything too, and parks: the log keeps only its last entry.
            let (read2, end2) = read_all(&log, idx, start);
            assert_eq!(read2, read);
            assert_eq!(end2, end);
            log.park(2, request(idx, end2));
            assert!(log.release_consumed(idx));
            assert!(held(&log, idx) < 64, "{}", held(&log, idx));
            assert_eq!(
                log.shadow("d/ack").unwrap().0.payload,
                "ack 099 with some padding"
            );

            // New data wakes both; they read exactly it, from where they were, without a jump.
            let woken = append(&mut log, idx, 3);
            assert_eq!(woken.len(), 2);
            for (_, request) in woken {
                let (read, _) = read_all(&log, idx, request.cursor);
                assert_eq!(read.len(), 3);
                assert_eq!(read[0], "ack 000 with some padding");
            }
        }

        #[test]
        fn released_when_the_last_reader_goes_and_on_appends_without_readers() {
            let mut log = datalog();
            let (idx, _) = log.next_native_offset("d/ack");
            log.add_reader(idx, false);
            append(&mut log, idx, 100);
            // The reader goes (a clean session disconnects) without having read it all.
            let full = held(&log, idx);
            log.remove_reader(idx, false);
            assert!(held(&log, idx) < full / 10);
            // Appends with nobody subscribed are not kept (only the last, for `shadow`).
            append(&mut log, idx, 100);
            assert!(held(&log, idx) < 64);
        }

        #[test]
        fn never_released_when_a_reader_may_read_again() {
            // A persistent session (or a shared subscription) pins the log.
            let mut log = datalog();
            let (idx, start) = log.next_native_offset("d/ack");
            log.add_reader(idx, true);
            append(&mut log, idx, 100);
            let full = held(&log, idx);
            let (_, end) = read_all(&log, idx, start);
            log.park(1, request(idx, end));
            assert!(!log.release_consumed(idx));
            append(&mut log, idx, 1);
            assert!(held(&log, idx) > full);
        }
    }

    //     #[test]
    //     fn appends_are_written_to_correct_commitlog() {
    //         pretty_env_logger::init();
    //         let config = RouterConfig {
    //             instant_ack: true,
    //             max_segment_size: 1024,
    //             max_connections: 10,
    //             max_mem_segments: 10,
    //             max_disk_segments: 0,
    //             max_read_len: 1024,
    //             log_dir: None,
    //             dynamic_log: true,
    //         };

    //         let mut data = DataLog::new(config).unwrap();
    //         data.next_native_offset("/devices/2321/actions");
    //         for i in 0..2 {
    //             let publish = Publish::new("/devices/2321/events/imu/jsonarray", QoS::AtLeastOnce, vec![1, 2, 3]);
    //             let v = data.native_append(publish);
    //             dbg!(v);
    //         }

    //         for i in 0..2 {
    //             let publish = Publish::new("/devices/2321/actions", QoS::AtLeastOnce, vec![1, 2, 3]);
    //             let v = data.native_append(publish);
    //             dbg!(v);
    //         }
    //     }
}

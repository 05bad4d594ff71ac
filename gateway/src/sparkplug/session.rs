//! Per-edge-node Sparkplug B session state: what the host application remembers about each
//! edge node between its messages, and what it makes of each message.
//!
//! Pure: [`Sessions::handle`] takes a parsed topic, a decoded payload and the clocks, and returns
//! an [`Outcome`] (readings, fleet events, a Rebirth request, what was not taken and why). The
//! caller ([`super::host`]) counts, logs, publishes and hands readings on; nothing here does I/O.
//!
//! # Rules (Sparkplug B 3.0, as a host application applies them)
//!
//! * NBIRTH starts a session: any `seq` is accepted and the next message must carry `seq + 1`
//!   (mod 256). Its metrics define the node's aliases (alias -> name, datatype); its `bdSeq`
//!   metric is remembered. Every device of the node must be born again (DBIRTH).
//! * DBIRTH defines the device's aliases; DDEATH ends the device.
//! * NDATA, DBIRTH, DDATA and DDEATH continue the node's `seq` (0-255, wrapping). A message
//!   whose `seq` is not the expected one is still taken (its data is valid) and a Rebirth is
//!   requested: a gap means the host may have missed messages, possibly BIRTHs.
//! * DATA (or a DBIRTH) before the node's NBIRTH, or DDATA before the device's DBIRTH, is taken
//!   with the table the host has for it (see "Restart" below) and a Rebirth is requested
//!   (`breakwater_gateway_sparkplug_before_birth_total{table}`); a DDEATH before birth has
//!   nothing to take and is ignored. An alias no table defines is kept raw ("Unresolved
//!   aliases") and requests a Rebirth.
//! * NDEATH ends the session only if its `bdSeq` equals the NBIRTH's: an NDEATH with another
//!   `bdSeq` is the will of an older connection delivered late (the node reconnected before the
//!   broker noticed the old one was gone) and is ignored.
//! * Rebirth requests are rate-limited per edge node (`rebirth_interval`): a node that keeps
//!   sending gaps gets one NCMD per interval, the others are counted as suppressed.
//!
//! # Metrics -> readings
//!
//! Scalar values become `breakwater_protocol::Reading`s, named by the metric name (a BIRTH's
//! name, or DATA's alias resolved through it), timestamped by the metric's timestamp, else the
//! payload's, else the gateway clock:
//!
//! | Sparkplug datatype | value |
//! |---|---|
//! | Int8, Int16, Int32 (`int_value`, low bits, sign-extended), Int64, UInt8-32, DateTime (ms) | `I64` |
//! | UInt64 | `I64` up to `i64::MAX`, above as `F64` (rounded; counted as `uint64_rounded`) |
//! | Float, Double | `F64` |
//! | Boolean | `Bool` |
//! | String, Text, UUID | `Str` |
//!
//! Everything else (DataSet, Bytes, File, Template, PropertySet(List), arrays, Unknown) and null
//! values are [`Outcome::unsupported`], by type label; a value that does not fit its datatype or
//! breaks the protocol's reading rules (metric name 1-128 bytes without control characters,
//! strings up to 256 bytes, finite floats; `breakwater_protocol::limits`) is
//! [`Outcome::invalid`], by reason. Nothing is dropped without one of the two.
//!
//! # Restart
//!
//! The tables of every node's last NBIRTH and DBIRTHs are persisted ([`Outcome::persist`] ->
//! [`super::store`]) and loaded at start by [`Sessions::restore`] as *restored* sessions: not
//! online (no `seq` to continue, NDEATH has no session to end, a Rebirth is requested at the
//! first message), but their DATA is decoded with the restored aliases and datatypes
//! (`table="restored"`). This is for the DATA an edge node with a persistent MQTT session
//! resends after a gateway kill -9, before its new NBIRTH. The node's next NBIRTH replaces the
//! restored table as any NBIRTH does. Restored sessions count against `max_edge_nodes` and are
//! evicted first-come like any offline node; their devices and aliases are cut at
//! `max_devices` and `max_aliases`.
//!
//! # Unresolved aliases
//!
//! A metric by an alias that no table resolves (a node never seen, a BIRTH lost, a table
//! that lacks the alias) is neither dropped nor PUBACKed empty: it becomes a reading named
//! `alias:{n}`, its value read by the metric's own datatype if it carries one, else as the
//! wire field is (`int_value` zero-extended, `long_value` bit-cast to `i64`, floats, booleans,
//! strings as they are), counted in `breakwater_gateway_sparkplug_unresolved_metrics_total`
//! (and logged, rate-limited, by the host). Downstream can rename it with the node's BIRTH
//! (whose readings are in Kafka too). A real metric named `alias:{n}` is indistinguishable from
//! it. Metrics that carry their name need no table (DATA with names and datatypes is taken
//! whole without a BIRTH).
//!
//! # Bounds
//!
//! At most `max_edge_nodes` sessions (a full table evicts an offline node, else refuses the new
//! one), `max_devices` devices per node and `max_aliases` aliases per node or device; a BIRTH
//! beyond them keeps the first ones and reports the rest as invalid (`too_many_*`).

use std::collections::HashMap;
use std::time::Duration;

use breakwater_protocol::kafka::{FleetEvent, FleetEventKind};
use breakwater_protocol::{limits, CompactString, DeviceId, Limits, Reading, Value};
use tokio::time::Instant;

use super::proto::{datatype as dt, Metric, MetricValue, Payload};
use super::store::{State, StoreOp, StoredMetric};
use super::topic::{self, MessageType, SpTopic};

/// Name of the birth/death sequence metric of NBIRTH and NDEATH.
pub const BDSEQ: &str = "bdSeq";

/// Session bounds and the Rebirth rate limit.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Least time between two Rebirth requests to the same edge node.
    pub rebirth_interval: Duration,
    pub max_edge_nodes: usize,
    pub max_devices: usize,
    pub max_aliases: usize,
    pub limits: Limits,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            rebirth_interval: Duration::from_secs(5),
            max_edge_nodes: 10_000,
            max_devices: 1_000,
            max_aliases: 10_000,
            limits: Limits::DEFAULT,
        }
    }
}

/// Why the host asks an edge node for a Rebirth: the `reason` label of
/// `breakwater_gateway_sparkplug_rebirths_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebirthReason {
    SeqGap,
    MissingSeq,
    UnknownAlias,
    BeforeBirth,
}

impl RebirthReason {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SeqGap => "seq_gap",
            Self::MissingSeq => "missing_seq",
            Self::UnknownAlias => "unknown_alias",
            Self::BeforeBirth => "before_birth",
        }
    }
}

/// A message the session did not take as a whole: the `reason` label of
/// `breakwater_gateway_sparkplug_ignored_messages_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// DATA, DBIRTH or DDEATH of a node (or device) that is not born (a Rebirth is requested).
    BeforeBirth,
    /// NDEATH whose `bdSeq` is not the NBIRTH's (a late will of an older connection).
    StaleDeath,
    /// NDEATH or DDEATH of a node or device that is not online.
    DeathWithoutBirth,
    /// NCMD or DCMD: commands are for edge nodes, not for the host.
    Command,
    /// The session table is full of online nodes (`max_edge_nodes`).
    TooManyNodes,
    /// The node already has `max_devices` devices.
    TooManyDevices,
    /// The id the mapping gives this node or device is longer than a device id may be.
    DeviceIdTooLong,
}

impl Ignored {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BeforeBirth => "before_birth",
            Self::StaleDeath => "stale_death",
            Self::DeathWithoutBirth => "death_without_birth",
            Self::Command => "command",
            Self::TooManyNodes => "too_many_edge_nodes",
            Self::TooManyDevices => "too_many_devices",
            Self::DeviceIdTooLong => "device_id_too_long",
        }
    }
}

/// A Rebirth request the caller must publish (NCMD `Node Control/Rebirth`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebirth {
    pub group: String,
    pub edge_node: String,
    pub reason: RebirthReason,
}

/// What one message amounts to.
#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    /// The node or device the readings belong to, with its readings (possibly none).
    pub readings: Option<(DeviceId, Vec<Reading>)>,
    pub events: Vec<FleetEvent>,
    /// A Rebirth to send now.
    pub rebirth: Option<Rebirth>,
    /// A Rebirth that was due but held back by the rate limit.
    pub rebirth_suppressed: Option<RebirthReason>,
    /// The message was not taken (none of its metrics became readings).
    pub ignored: Option<Ignored>,
    /// Metrics not taken because of their type: one datatype label each.
    pub unsupported: Vec<&'static str>,
    /// Metrics not taken because they are malformed: one reason each.
    pub invalid: Vec<&'static str>,
    /// Metrics by an alias no table resolves, stored as `alias:{n}` (see "Unresolved aliases").
    pub unresolved: usize,
    /// DATA (or a DBIRTH) of a node that is not online, taken with the table it has: the
    /// restored one ([`Sessions::restore`]) or none.
    pub before_birth: Option<BeforeBirth>,
    /// What the session store must keep ([`super::store`]): the BIRTH just taken, or the
    /// node just evicted.
    pub persist: Vec<StoreOp>,
}

/// The table DATA of a node that is not online was decoded with: the `table` label of
/// `breakwater_gateway_sparkplug_before_birth_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BeforeBirth {
    /// The restored table of the node's last BIRTH before a restart.
    Restored,
    /// A device of a live node that is not born (DDEATH, or no DBIRTH since the NBIRTH): the
    /// table of its last DBIRTH.
    LastBirth,
    /// No table (a node never seen, or dead): named metrics only, aliases unresolved.
    None,
}

impl BeforeBirth {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Restored => "restored",
            Self::LastBirth => "last_birth",
            Self::None => "none",
        }
    }
}

#[derive(Debug, Clone)]
struct MetricDef {
    name: CompactString,
    datatype: u32,
}

#[derive(Debug, Default)]
struct Aliases {
    by_alias: HashMap<u64, MetricDef>,
    /// Datatypes by name, for DATA that names its metrics instead of using aliases.
    by_name: HashMap<CompactString, u32>,
}

impl Aliases {
    fn learn(&mut self, metrics: &[Metric], max: usize, out: &mut Outcome) {
        self.by_alias.clear();
        self.by_name.clear();
        for m in metrics {
            let (Some(name), Some(datatype)) = (&m.name, m.datatype) else {
                continue;
            };
            if self.by_name.len() >= max {
                out.invalid.push("too_many_aliases");
                continue;
            }
            let name = CompactString::from(name.as_str());
            self.by_name.insert(name.clone(), datatype);
            if let Some(alias) = m.alias {
                if self.by_alias.contains_key(&alias) {
                    out.invalid.push("duplicate_alias");
                    continue;
                }
                self.by_alias.insert(alias, MetricDef { name, datatype });
            }
        }
    }

    /// A table from the session store, within the same bound.
    fn restore(metrics: &[StoredMetric], max: usize) -> Self {
        let mut a = Self::default();
        for m in metrics.iter().take(max) {
            let name = CompactString::from(m.name.as_str());
            a.by_name.insert(name.clone(), m.datatype);
            if let Some(alias) = m.alias {
                a.by_alias.entry(alias).or_insert(MetricDef {
                    name,
                    datatype: m.datatype,
                });
            }
        }
        a
    }

    /// The table as the session store keeps it.
    fn stored(&self) -> Vec<StoredMetric> {
        let mut out: Vec<StoredMetric> = self
            .by_alias
            .iter()
            .map(|(alias, d)| StoredMetric {
                name: d.name.to_string(),
                datatype: d.datatype,
                alias: Some(*alias),
            })
            .collect();
        let aliased: std::collections::HashSet<&str> =
            self.by_alias.values().map(|d| d.name.as_str()).collect();
        out.extend(
            self.by_name
                .iter()
                .filter(|(n, _)| !aliased.contains(n.as_str()))
                .map(|(n, t)| StoredMetric {
                    name: n.to_string(),
                    datatype: *t,
                    alias: None,
                }),
        );
        out
    }
}

#[derive(Debug)]
struct Device {
    id: DeviceId,
    online: bool,
    aliases: Aliases,
}

#[derive(Debug)]
struct Node {
    id: DeviceId,
    online: bool,
    bd_seq: Option<u64>,
    /// The `seq` the next message must carry.
    next_seq: u8,
    aliases: Aliases,
    devices: HashMap<String, Device>,
    last_rebirth: Option<Instant>,
    /// Its tables come from the session store (the last BIRTHs before a restart) and no
    /// NBIRTH has come since.
    restored: bool,
}

impl Node {
    fn new(id: DeviceId) -> Self {
        Self {
            id,
            online: false,
            bd_seq: None,
            next_seq: 0,
            aliases: Aliases::default(),
            devices: HashMap::new(),
            last_rebirth: None,
            restored: false,
        }
    }
}

/// What [`Sessions::restore`] took.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    pub edge_nodes: usize,
    pub devices: usize,
    /// Nodes or devices beyond the table's bounds, or whose id is too long.
    pub skipped: usize,
}

/// Every edge node's session. Not thread-safe by itself: one host task owns it.
#[derive(Debug, Default)]
pub struct Sessions {
    cfg: SessionConfig,
    nodes: HashMap<(String, String), Node>,
}

/// The clocks a message is handled at.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// For the Rebirth rate limit.
    pub now: Instant,
    /// Gateway wall clock, ms since the Unix epoch (timestamps the payload does not give).
    pub now_ms: u64,
}

impl Sessions {
    #[must_use]
    pub fn new(cfg: SessionConfig) -> Self {
        Self {
            cfg,
            nodes: HashMap::new(),
        }
    }

    /// Edge nodes with a session (online or not).
    #[must_use]
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Edge nodes currently online.
    #[must_use]
    pub fn online(&self) -> usize {
        self.nodes.values().filter(|n| n.online).count()
    }

    /// Loads the session store's state as restored sessions: not online, with the tables of
    /// their last BIRTHs, within `max_edge_nodes`, `max_devices` and `max_aliases` (what does
    /// not fit is skipped and counted in [`Restored::skipped`]).
    pub fn restore(&mut self, state: State) -> Restored {
        let mut r = Restored::default();
        for ((group, edge_node), stored) in state.nodes {
            let key = (group, edge_node);
            if self.nodes.contains_key(&key) {
                continue;
            }
            if self.nodes.len() >= self.cfg.max_edge_nodes {
                r.skipped += 1 + stored.devices.len();
                continue;
            }
            let Ok(id) = topic::device_id(&key.0, &key.1, None) else {
                r.skipped += 1 + stored.devices.len();
                continue;
            };
            let mut node = Node::new(id);
            node.restored = true;
            node.bd_seq = stored.bd_seq;
            node.aliases = Aliases::restore(&stored.metrics, self.cfg.max_aliases);
            for (dev, metrics) in stored.devices {
                if node.devices.len() >= self.cfg.max_devices {
                    r.skipped += 1;
                    continue;
                }
                let Ok(id) = topic::device_id(&key.0, &key.1, Some(&dev)) else {
                    r.skipped += 1;
                    continue;
                };
                node.devices.insert(
                    dev,
                    Device {
                        id,
                        online: false,
                        aliases: Aliases::restore(&metrics, self.cfg.max_aliases),
                    },
                );
                r.devices += 1;
            }
            self.nodes.insert(key, node);
            r.edge_nodes += 1;
        }
        r
    }

    /// Handles one message of `t.group`/`t.edge_node`.
    pub fn handle(&mut self, t: &SpTopic<'_>, p: &Payload, clock: Clock) -> Outcome {
        let mut out = Outcome::default();
        match t.kind {
            MessageType::NCmd | MessageType::DCmd => out.ignored = Some(Ignored::Command),
            MessageType::NBirth => self.nbirth(t, p, clock, &mut out),
            MessageType::NDeath => self.ndeath(t, p, clock, &mut out),
            MessageType::NData | MessageType::DBirth | MessageType::DData | MessageType::DDeath => {
                self.in_session(t, p, clock, &mut out);
            }
        }
        out
    }

    fn nbirth(&mut self, t: &SpTopic<'_>, p: &Payload, clock: Clock, out: &mut Outcome) {
        let key = (t.group.to_owned(), t.edge_node.to_owned());
        if !self.nodes.contains_key(&key) {
            let Ok(id) = topic::device_id(t.group, t.edge_node, None) else {
                out.ignored = Some(Ignored::DeviceIdTooLong);
                return;
            };
            if self.nodes.len() >= self.cfg.max_edge_nodes && !self.evict_offline(out) {
                out.ignored = Some(Ignored::TooManyNodes);
                return;
            }
            self.nodes.insert(key.clone(), Node::new(id));
        }
        let Some(node) = self.nodes.get_mut(&key) else {
            return;
        };
        node.online = true;
        node.restored = false;
        node.bd_seq = bd_seq(p);
        node.next_seq = next(p.seq.unwrap_or(0));
        node.devices.clear();
        node.aliases.learn(&p.metrics, self.cfg.max_aliases, out);
        out.persist.push(StoreOp::NodeBirth {
            group: key.0.clone(),
            edge_node: key.1.clone(),
            bd_seq: node.bd_seq,
            metrics: node.aliases.stored(),
        });
        let readings = readings(p, &node.aliases, &self.cfg.limits, clock.now_ms, out);
        out.events.push(event(
            &node.id,
            node.bd_seq,
            FleetEventKind::Birth,
            p,
            clock,
        ));
        out.readings = Some((node.id.clone(), readings));
    }

    fn ndeath(&mut self, t: &SpTopic<'_>, p: &Payload, clock: Clock, out: &mut Outcome) {
        let key = (t.group.to_owned(), t.edge_node.to_owned());
        let Some(node) = self.nodes.get_mut(&key).filter(|n| n.online) else {
            out.ignored = Some(Ignored::DeathWithoutBirth);
            return;
        };
        if bd_seq(p) != node.bd_seq {
            out.ignored = Some(Ignored::StaleDeath);
            return;
        }
        node.online = false;
        for d in node.devices.values().filter(|d| d.online) {
            out.events
                .push(event(&d.id, node.bd_seq, FleetEventKind::Death, p, clock));
        }
        node.devices.clear();
        node.aliases = Aliases::default();
        out.events.push(event(
            &node.id,
            node.bd_seq,
            FleetEventKind::Death,
            p,
            clock,
        ));
    }

    /// NDATA, DBIRTH, DDATA, DDEATH: messages that continue the node's `seq`.
    fn in_session(&mut self, t: &SpTopic<'_>, p: &Payload, clock: Clock, out: &mut Outcome) {
        let key = (t.group.to_owned(), t.edge_node.to_owned());
        if !self.nodes.contains_key(&key) && self.nodes.len() < self.cfg.max_edge_nodes {
            // A rate-limit entry for the Rebirth, only if the table has room, so a flood of
            // unknown nodes cannot grow it past its bound.
            if let Ok(id) = topic::device_id(t.group, t.edge_node, None) {
                self.nodes.insert(key.clone(), Node::new(id));
            }
        }
        let cfg = &self.cfg;
        let node = match self.nodes.get_mut(&key) {
            Some(node) if node.online => node,
            other => return not_born(other, t, p, cfg, clock, out),
        };
        match p.seq {
            None => {
                rebirth(
                    node,
                    t,
                    RebirthReason::MissingSeq,
                    clock,
                    cfg.rebirth_interval,
                    out,
                );
            }
            Some(seq) => {
                if seq != u64::from(node.next_seq) {
                    rebirth(
                        node,
                        t,
                        RebirthReason::SeqGap,
                        clock,
                        cfg.rebirth_interval,
                        out,
                    );
                }
                node.next_seq = next(seq);
            }
        }
        let Some(dev_name) = t.device else {
            // NDATA
            let before = out.unresolved;
            let r = readings(p, &node.aliases, &cfg.limits, clock.now_ms, out);
            if out.unresolved > before {
                rebirth(
                    node,
                    t,
                    RebirthReason::UnknownAlias,
                    clock,
                    cfg.rebirth_interval,
                    out,
                );
            }
            out.readings = Some((node.id.clone(), r));
            return;
        };
        match t.kind {
            MessageType::DBirth => {
                if !node.devices.contains_key(dev_name) {
                    if node.devices.len() >= cfg.max_devices {
                        out.ignored = Some(Ignored::TooManyDevices);
                        return;
                    }
                    let Ok(id) = topic::device_id(t.group, t.edge_node, Some(dev_name)) else {
                        out.ignored = Some(Ignored::DeviceIdTooLong);
                        return;
                    };
                    node.devices.insert(
                        dev_name.to_owned(),
                        Device {
                            id,
                            online: false,
                            aliases: Aliases::default(),
                        },
                    );
                }
                let Some(dev) = node.devices.get_mut(dev_name) else {
                    return;
                };
                dev.online = true;
                dev.aliases.learn(&p.metrics, cfg.max_aliases, out);
                out.persist.push(StoreOp::DeviceBirth {
                    group: key.0.clone(),
                    edge_node: key.1.clone(),
                    device: dev_name.to_owned(),
                    metrics: dev.aliases.stored(),
                });
                let r = readings(p, &dev.aliases, &cfg.limits, clock.now_ms, out);
                out.events
                    .push(event(&dev.id, node.bd_seq, FleetEventKind::Birth, p, clock));
                out.readings = Some((dev.id.clone(), r));
            }
            MessageType::DDeath => {
                let Some(dev) = node.devices.get_mut(dev_name).filter(|d| d.online) else {
                    out.ignored = Some(Ignored::DeathWithoutBirth);
                    return;
                };
                dev.online = false;
                out.events
                    .push(event(&dev.id, node.bd_seq, FleetEventKind::Death, p, clock));
            }
            _ => {
                // DDATA
                let Some(dev) = node.devices.get(dev_name).filter(|d| d.online) else {
                    // A device not born (or dead) on a live node: decoded with the table of
                    // its last DBIRTH, if any; a Rebirth is requested.
                    let table = node
                        .devices
                        .get(dev_name)
                        .map(|d| (d.id.clone(), &d.aliases));
                    let (id, aliases, label) = match table {
                        Some((id, aliases)) => (id, aliases, BeforeBirth::LastBirth),
                        None => match topic::device_id(t.group, t.edge_node, Some(dev_name)) {
                            Ok(id) => (id, &*EMPTY, BeforeBirth::None),
                            Err(_) => {
                                out.ignored = Some(Ignored::DeviceIdTooLong);
                                return;
                            }
                        },
                    };
                    out.before_birth = Some(label);
                    let r = readings(p, aliases, &cfg.limits, clock.now_ms, out);
                    out.readings = Some((id, r));
                    rebirth(
                        node,
                        t,
                        RebirthReason::BeforeBirth,
                        clock,
                        cfg.rebirth_interval,
                        out,
                    );
                    return;
                };
                let before = out.unresolved;
                let r = readings(p, &dev.aliases, &cfg.limits, clock.now_ms, out);
                let id = dev.id.clone();
                if out.unresolved > before {
                    rebirth(
                        node,
                        t,
                        RebirthReason::UnknownAlias,
                        clock,
                        cfg.rebirth_interval,
                        out,
                    );
                }
                out.readings = Some((id, r));
            }
        }
    }

    /// Removes one offline node (and tells the store to forget it); `false` if every node is
    /// online.
    fn evict_offline(&mut self, out: &mut Outcome) -> bool {
        let Some(key) = self
            .nodes
            .iter()
            .find(|(_, n)| !n.online)
            .map(|(k, _)| k.clone())
        else {
            return false;
        };
        self.nodes.remove(&key);
        out.persist.push(StoreOp::Forget {
            group: key.0,
            edge_node: key.1,
        });
        true
    }
}

static EMPTY: std::sync::LazyLock<Aliases> = std::sync::LazyLock::new(Aliases::default);

/// DATA (or DBIRTH, DDEATH) of a node that is not online: a restored node (its tables from the
/// session store), a dead one, one never seen (`node` is its rate-limit entry, or `None` if the
/// table was full). Its metrics are taken with the table it has (see "Restart" in the module
/// doc); a Rebirth is requested.
fn not_born(
    node: Option<&mut Node>,
    t: &SpTopic<'_>,
    p: &Payload,
    cfg: &SessionConfig,
    clock: Clock,
    out: &mut Outcome,
) {
    if t.kind == MessageType::DDeath {
        out.ignored = Some(Ignored::BeforeBirth);
    } else {
        let dev = t.device.and_then(|d| node.as_ref()?.devices.get(d));
        let aliases = match (t.device, &node, dev) {
            (Some(_), _, Some(dev)) => Some((dev.id.clone(), &dev.aliases)),
            (None, Some(n), _) => Some((n.id.clone(), &n.aliases)),
            _ => None,
        };
        let restored = node.as_ref().is_some_and(|n| n.restored);
        let (id, aliases) = match aliases {
            Some(a) => a,
            None => match topic::device_id(t.group, t.edge_node, t.device) {
                Ok(id) => (id, &*EMPTY),
                Err(_) => {
                    out.ignored = Some(Ignored::DeviceIdTooLong);
                    return;
                }
            },
        };
        // The restored table, or (a dead node's tables are cleared) none.
        let has_table = restored && !(aliases.by_alias.is_empty() && aliases.by_name.is_empty());
        out.before_birth = Some(if has_table {
            BeforeBirth::Restored
        } else {
            BeforeBirth::None
        });
        let r = readings(p, aliases, &cfg.limits, clock.now_ms, out);
        out.readings = Some((id, r));
    }
    if let Some(node) = node {
        rebirth(
            node,
            t,
            RebirthReason::BeforeBirth,
            clock,
            cfg.rebirth_interval,
            out,
        );
    }
}

fn next(seq: u64) -> u8 {
    // Only the low 8 bits count: seq is 0-255 and wraps.
    u8::try_from((seq + 1) % 256).unwrap_or(0)
}

/// Asks for a Rebirth unless one was sent to this node less than `interval` ago. At most one
/// request per message (the first reason wins).
fn rebirth(
    node: &mut Node,
    t: &SpTopic<'_>,
    reason: RebirthReason,
    clock: Clock,
    interval: Duration,
    out: &mut Outcome,
) {
    if out.rebirth.is_some() || out.rebirth_suppressed.is_some() {
        return;
    }
    if node
        .last_rebirth
        .is_some_and(|last| clock.now.duration_since(last) < interval)
    {
        out.rebirth_suppressed = Some(reason);
        return;
    }
    node.last_rebirth = Some(clock.now);
    out.rebirth = Some(Rebirth {
        group: t.group.to_owned(),
        edge_node: t.edge_node.to_owned(),
        reason,
    });
}

fn bd_seq(p: &Payload) -> Option<u64> {
    p.metrics
        .iter()
        .find(|m| m.name.as_deref() == Some(BDSEQ))
        .and_then(|m| match m.value {
            Some(MetricValue::LongValue(v)) => Some(v),
            Some(MetricValue::IntValue(v)) => Some(u64::from(v)),
            _ => None,
        })
}

fn event(
    id: &DeviceId,
    bd_seq: Option<u64>,
    kind: FleetEventKind,
    p: &Payload,
    c: Clock,
) -> FleetEvent {
    FleetEvent {
        device: id.clone(),
        epoch: bd_seq.unwrap_or(0),
        kind,
        ts: p.timestamp.unwrap_or(c.now_ms),
        gateway_ts: c.now_ms,
        reason: None,
    }
}

/// The readings of a payload's metrics; what is not taken goes to `out`.
fn readings(
    p: &Payload,
    aliases: &Aliases,
    lim: &Limits,
    now_ms: u64,
    out: &mut Outcome,
) -> Vec<Reading> {
    let mut rs = Vec::with_capacity(p.metrics.len());
    for m in &p.metrics {
        let (name, datatype) = match (&m.name, m.alias) {
            (Some(name), _) => {
                let name = CompactString::from(name.as_str());
                let t = m.datatype.or_else(|| aliases.by_name.get(&name).copied());
                (name, t)
            }
            (None, Some(alias)) => match aliases.by_alias.get(&alias) {
                Some(def) => (def.name.clone(), m.datatype.or(Some(def.datatype))),
                None => {
                    out.unresolved += 1;
                    (unresolved_name(alias), m.datatype.or(Some(RAW)))
                }
            },
            (None, None) => {
                out.invalid.push("no_name");
                continue;
            }
        };
        let Some(datatype) = datatype else {
            out.invalid.push("no_datatype");
            continue;
        };
        if m.is_null == Some(true) || m.value.is_none() {
            out.unsupported.push("null");
            continue;
        }
        let converted = if datatype == RAW {
            raw_value(m.value.as_ref())
        } else {
            value_of(datatype, m.value.as_ref())
        };
        let value = match converted {
            Ok((v, rounded)) => {
                if rounded {
                    out.invalid.push("uint64_rounded");
                }
                v
            }
            Err(Problem::Unsupported) => {
                out.unsupported.push(if datatype == RAW {
                    raw_label(m.value.as_ref())
                } else {
                    dt::label(datatype)
                });
                continue;
            }
            Err(Problem::Mismatch) => {
                out.invalid.push("type_mismatch");
                continue;
            }
        };
        if let Err(e) = limits::check_reading(rs.len(), &name, &value, lim) {
            out.invalid.push(e.reason());
            continue;
        }
        rs.push(Reading {
            ts: m.timestamp.or(p.timestamp).unwrap_or(now_ms),
            metric: name,
            value,
        });
    }
    rs
}

enum Problem {
    Unsupported,
    Mismatch,
}

/// Not a Sparkplug datatype (those are u32 wire values below 35): "no datatype, no table",
/// the value is taken as it is on the wire ([`raw_value`]).
const RAW: u32 = u32::MAX;

/// The metric name of a value whose alias no table resolves: `alias:{n}`.
#[must_use]
pub fn unresolved_name(alias: u64) -> CompactString {
    CompactString::from(format!("alias:{alias}"))
}

/// A value with no datatype to read it by: the wire field as it is (`int_value` zero-extended,
/// `long_value` bit-cast to `i64`, floats, booleans and strings as they are), so that
/// downstream can reinterpret it with the BIRTH (the raw bits are kept).
#[allow(clippy::cast_possible_wrap)]
fn raw_value(v: Option<&MetricValue>) -> Result<(Value, bool), Problem> {
    use MetricValue as V;
    let value = match v.ok_or(Problem::Mismatch)? {
        V::IntValue(x) => Value::I64(i64::from(*x)),
        V::LongValue(x) => Value::I64(*x as i64),
        V::FloatValue(x) => Value::F64(f64::from(*x)),
        V::DoubleValue(x) => Value::F64(*x),
        V::BooleanValue(b) => Value::Bool(*b),
        V::StringValue(s) => Value::Str(s.as_str().into()),
        _ => return Err(Problem::Unsupported),
    };
    Ok((value, false))
}

fn raw_label(v: Option<&MetricValue>) -> &'static str {
    match v {
        Some(MetricValue::DatasetValue(_)) => "dataset",
        Some(MetricValue::TemplateValue(_)) => "template",
        Some(MetricValue::ExtensionValue(_)) => "extension",
        _ => "bytes",
    }
}

/// The reading value of a scalar metric, and whether it was rounded (a UInt64 above
/// `i64::MAX`).
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_precision_loss
)]
fn value_of(datatype: u32, v: Option<&MetricValue>) -> Result<(Value, bool), Problem> {
    use MetricValue as V;
    let v = v.ok_or(Problem::Mismatch)?;
    let value = match (datatype, v) {
        // Signed types in `int_value` (uint32): the low bits, sign-extended. Tahu's encoders
        // write either the 32-bit two's complement or the type-width one; both decode alike.
        (dt::INT8, V::IntValue(x)) => Value::I64(i64::from(*x as u8 as i8)),
        (dt::INT16, V::IntValue(x)) => Value::I64(i64::from(*x as u16 as i16)),
        (dt::INT32, V::IntValue(x)) => Value::I64(i64::from(*x as i32)),
        (dt::UINT8, V::IntValue(x)) => Value::I64(i64::from(*x as u8)),
        (dt::UINT16, V::IntValue(x)) => Value::I64(i64::from(*x as u16)),
        (dt::UINT32, V::IntValue(x)) => Value::I64(i64::from(*x)),
        // Some encoders put 32-bit types in `long_value`.
        (dt::INT8 | dt::INT16 | dt::INT32 | dt::INT64 | dt::DATETIME, V::LongValue(x)) => {
            Value::I64(*x as i64)
        }
        (dt::UINT8 | dt::UINT16 | dt::UINT32, V::LongValue(x)) => {
            Value::I64(i64::try_from(*x).map_err(|_| Problem::Mismatch)?)
        }
        (dt::UINT64, V::LongValue(x)) => match i64::try_from(*x) {
            Ok(i) => Value::I64(i),
            Err(_) => return Ok((Value::F64(*x as f64), true)),
        },
        (dt::INT64 | dt::UINT64 | dt::DATETIME, V::IntValue(x)) => Value::I64(i64::from(*x)),
        (dt::FLOAT, V::FloatValue(x)) => Value::F64(f64::from(*x)),
        (dt::DOUBLE, V::DoubleValue(x)) => Value::F64(*x),
        (dt::DOUBLE, V::FloatValue(x)) => Value::F64(f64::from(*x)),
        (dt::BOOLEAN, V::BooleanValue(b)) => Value::Bool(*b),
        (dt::STRING | dt::TEXT | dt::UUID, V::StringValue(s)) => Value::Str(s.as_str().into()),
        (
            dt::INT8..=dt::INT64
            | dt::UINT8..=dt::UINT64
            | dt::FLOAT
            | dt::DOUBLE
            | dt::BOOLEAN
            | dt::STRING
            | dt::DATETIME
            | dt::TEXT
            | dt::UUID,
            _,
        ) => return Err(Problem::Mismatch),
        _ => return Err(Problem::Unsupported),
    };
    Ok((value, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(name: Option<&str>, alias: Option<u64>, t: u32, v: MetricValue) -> Metric {
        Metric {
            name: name.map(str::to_owned),
            alias,
            timestamp: None,
            datatype: Some(t),
            is_null: None,
            value: Some(v),
        }
    }

    fn by_alias(alias: u64, v: MetricValue) -> Metric {
        Metric {
            name: None,
            alias: Some(alias),
            timestamp: None,
            datatype: None,
            is_null: None,
            value: Some(v),
        }
    }

    fn payload(seq: Option<u64>, metrics: Vec<Metric>) -> Payload {
        Payload {
            timestamp: Some(1_000),
            metrics,
            seq,
        }
    }

    fn nbirth(bd: u64, seq: u64) -> Payload {
        payload(
            Some(seq),
            vec![
                metric(Some(BDSEQ), None, dt::INT64, MetricValue::LongValue(bd)),
                metric(
                    Some("temp"),
                    Some(1),
                    dt::DOUBLE,
                    MetricValue::DoubleValue(21.5),
                ),
                metric(Some("count"), Some(2), dt::INT32, MetricValue::IntValue(7)),
            ],
        )
    }

    fn ndeath(bd: u64) -> Payload {
        payload(
            None,
            vec![metric(
                Some(BDSEQ),
                None,
                dt::INT64,
                MetricValue::LongValue(bd),
            )],
        )
    }

    fn t(s: &str) -> SpTopic<'_> {
        SpTopic::parse(s).unwrap()
    }

    fn clock() -> Clock {
        Clock {
            now: Instant::now(),
            now_ms: 5_000,
        }
    }

    fn sessions() -> Sessions {
        Sessions::new(SessionConfig::default())
    }

    const NB: &str = "spBv1.0/g/NBIRTH/e";
    const ND: &str = "spBv1.0/g/NDATA/e";
    const NX: &str = "spBv1.0/g/NDEATH/e";
    const DB: &str = "spBv1.0/g/DBIRTH/e/d";
    const DD: &str = "spBv1.0/g/DDATA/e/d";
    const DX: &str = "spBv1.0/g/DDEATH/e/d";

    #[test]
    fn birth_then_data_by_alias() {
        let mut s = sessions();
        let o = s.handle(&t(NB), &nbirth(3, 0), clock());
        let (id, rs) = o.readings.unwrap();
        assert_eq!(id.as_str(), "spb.g.e");
        assert_eq!(
            rs,
            vec![
                Reading::new(BDSEQ, 3i64, 1_000),
                Reading::new("temp", 21.5, 1_000),
                Reading::new("count", 7i64, 1_000),
            ]
        );
        assert_eq!(o.events.len(), 1);
        assert_eq!(o.events[0].kind, FleetEventKind::Birth);
        assert_eq!(o.events[0].epoch, 3);
        assert_eq!(o.rebirth, None);

        let mut m = by_alias(1, MetricValue::DoubleValue(22.0));
        m.timestamp = Some(1_234);
        let o = s.handle(
            &t(ND),
            &payload(
                Some(1),
                vec![m, by_alias(2, MetricValue::IntValue(u32::MAX))],
            ),
            clock(),
        );
        assert_eq!(
            o.readings.unwrap().1,
            vec![
                Reading::new("temp", 22.0, 1_234),
                Reading::new("count", -1i64, 1_000)
            ]
        );
        assert_eq!(o.rebirth, None);
        assert!(o.invalid.is_empty() && o.unsupported.is_empty());
    }

    #[test]
    fn device_birth_data_death() {
        let mut s = sessions();
        s.handle(&t(NB), &nbirth(0, 0), clock());
        let o = s.handle(
            &t(DB),
            &payload(
                Some(1),
                vec![metric(
                    Some("Inputs/A"),
                    Some(10),
                    dt::BOOLEAN,
                    MetricValue::BooleanValue(false),
                )],
            ),
            clock(),
        );
        assert_eq!(o.readings.as_ref().unwrap().0.as_str(), "spb.g.e.d");
        assert_eq!(o.events[0].kind, FleetEventKind::Birth);
        let o = s.handle(
            &t(DD),
            &payload(Some(2), vec![by_alias(10, MetricValue::BooleanValue(true))]),
            clock(),
        );
        assert_eq!(
            o.readings.unwrap(),
            (
                DeviceId::parse("spb.g.e.d").unwrap(),
                vec![Reading::new("Inputs/A", true, 1_000)]
            )
        );
        // The node's aliases are not the device's: kept under the alias, raw.
        let o = s.handle(
            &t(DD),
            &payload(Some(3), vec![by_alias(1, MetricValue::DoubleValue(1.0))]),
            clock(),
        );
        assert_eq!(o.unresolved, 1);
        assert!(o.invalid.is_empty());
        assert_eq!(
            o.readings.unwrap().1,
            vec![Reading::new("alias:1", 1.0, 1_000)]
        );
        assert_eq!(o.rebirth.unwrap().reason, RebirthReason::UnknownAlias);
        let o = s.handle(&t(DX), &payload(Some(4), vec![]), clock());
        assert_eq!(o.events[0].kind, FleetEventKind::Death);
        assert_eq!(o.events[0].device.as_str(), "spb.g.e.d");
        // DDATA after DDEATH: before birth, decoded with the device's last DBIRTH.
        let o = s.handle(
            &t(DD),
            &payload(Some(5), vec![by_alias(10, MetricValue::BooleanValue(true))]),
            clock(),
        );
        assert_eq!(o.ignored, None);
        assert_eq!(o.before_birth, Some(BeforeBirth::LastBirth));
        assert_eq!(
            o.readings.unwrap().1,
            vec![Reading::new("Inputs/A", true, 1_000)]
        );
    }

    #[test]
    fn seq_wraps_and_gaps_ask_for_rebirth() {
        let mut s = sessions();
        s.handle(&t(NB), &nbirth(0, 250), clock());
        for seq in (251..=255).chain(0..=3) {
            let o = s.handle(&t(ND), &payload(Some(seq), vec![]), clock());
            assert_eq!(o.rebirth, None, "seq {seq}");
        }
        let o = s.handle(&t(ND), &payload(Some(5), vec![]), clock());
        assert_eq!(
            o.rebirth,
            Some(Rebirth {
                group: "g".into(),
                edge_node: "e".into(),
                reason: RebirthReason::SeqGap
            })
        );
        // The message itself is taken.
        assert!(o.readings.is_some());
        assert_eq!(o.ignored, None);
        // Counting goes on from the new seq.
        let o = s.handle(&t(ND), &payload(Some(6), vec![]), clock());
        assert_eq!((o.rebirth, o.rebirth_suppressed), (None, None));
        let o = s.handle(&t(ND), &payload(None, vec![]), clock());
        assert_eq!(o.rebirth_suppressed, Some(RebirthReason::MissingSeq));
    }

    /// The clock is an argument, so time is whatever the test says (no sleeping, no tokio
    /// test-util needed).
    #[test]
    fn rebirths_are_rate_limited_per_edge_node() {
        let mut s = sessions();
        let other = "spBv1.0/g/NDATA/f";
        let start = Instant::now();
        let at = |ms: u64| Clock {
            now: start + Duration::from_millis(ms),
            now_ms: ms,
        };
        let o = s.handle(&t(ND), &payload(Some(0), vec![]), at(0));
        assert_eq!(o.before_birth, Some(BeforeBirth::None));
        assert_eq!(o.rebirth.unwrap().reason, RebirthReason::BeforeBirth);
        // Within the interval: suppressed, for this node only.
        let o = s.handle(&t(ND), &payload(Some(1), vec![]), at(4_000));
        assert_eq!(o.rebirth, None);
        assert_eq!(o.rebirth_suppressed, Some(RebirthReason::BeforeBirth));
        let o = s.handle(&t(other), &payload(Some(1), vec![]), at(4_000));
        assert!(o.rebirth.is_some());
        // A birth in between does not reset the limit.
        s.handle(&t(NB), &nbirth(1, 0), at(4_999));
        let o = s.handle(&t(ND), &payload(Some(9), vec![]), at(4_999));
        assert_eq!(o.rebirth_suppressed, Some(RebirthReason::SeqGap));
        // After it: sent again.
        let o = s.handle(&t(ND), &payload(Some(20), vec![]), at(5_000));
        assert_eq!(o.rebirth.unwrap().reason, RebirthReason::SeqGap);
    }

    #[test]
    fn ndeath_must_carry_the_births_bdseq() {
        let mut s = sessions();
        s.handle(&t(NB), &nbirth(4, 0), clock());
        s.handle(&t(DB), &payload(Some(1), vec![]), clock());
        // A late will of the previous connection.
        let o = s.handle(&t(NX), &ndeath(3), clock());
        assert_eq!(o.ignored, Some(Ignored::StaleDeath));
        assert!(o.events.is_empty());
        assert_eq!(s.online(), 1);
        let o = s.handle(&t(NX), &ndeath(4), clock());
        assert_eq!(o.ignored, None);
        let kinds: Vec<_> = o
            .events
            .iter()
            .map(|e| (e.device.as_str().to_owned(), e.kind, e.epoch))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("spb.g.e.d".to_owned(), FleetEventKind::Death, 4),
                ("spb.g.e".to_owned(), FleetEventKind::Death, 4)
            ]
        );
        assert_eq!(s.online(), 0);
        // Twice: the second has no session to end.
        let o = s.handle(&t(NX), &ndeath(4), clock());
        assert_eq!(o.ignored, Some(Ignored::DeathWithoutBirth));
        // Data after death: before birth (no table: the death forgot it), rebirth requested.
        let o = s.handle(
            &t(ND),
            &payload(Some(2), vec![by_alias(1, MetricValue::DoubleValue(3.0))]),
            clock(),
        );
        assert_eq!(o.before_birth, Some(BeforeBirth::None));
        assert_eq!(
            o.readings.unwrap().1,
            vec![Reading::new("alias:1", 3.0, 1_000)]
        );
        assert_eq!(o.rebirth.unwrap().reason, RebirthReason::BeforeBirth);
    }

    #[test]
    fn a_new_birth_forgets_devices_and_aliases() {
        let mut s = sessions();
        s.handle(&t(NB), &nbirth(0, 0), clock());
        s.handle(&t(DB), &payload(Some(1), vec![]), clock());
        s.handle(&t(NB), &nbirth(1, 0), clock());
        let o = s.handle(
            &t(DD),
            &payload(Some(1), vec![by_alias(1, MetricValue::DoubleValue(3.0))]),
            clock(),
        );
        assert_eq!(o.before_birth, Some(BeforeBirth::None));
        assert_eq!(o.unresolved, 1);
        assert_eq!(o.rebirth.unwrap().reason, RebirthReason::BeforeBirth);
    }

    #[test]
    fn unsupported_and_invalid_metrics_are_reported_not_dropped() {
        let mut s = sessions();
        let mut null = metric(Some("n"), None, dt::DOUBLE, MetricValue::DoubleValue(0.0));
        null.is_null = Some(true);
        let p = payload(
            Some(0),
            vec![
                metric(
                    Some("ds"),
                    Some(1),
                    dt::DATASET,
                    MetricValue::DatasetValue(vec![8, 1]),
                ),
                metric(
                    Some("tpl"),
                    Some(2),
                    dt::TEMPLATE,
                    MetricValue::TemplateValue(vec![]),
                ),
                metric(
                    Some("raw"),
                    Some(3),
                    dt::BYTES,
                    MetricValue::BytesValue(vec![1]),
                ),
                metric(Some("arr"), Some(4), 22, MetricValue::BytesValue(vec![1])),
                null,
                metric(
                    Some("wrong"),
                    Some(5),
                    dt::BOOLEAN,
                    MetricValue::IntValue(1),
                ),
                metric(
                    Some("nan"),
                    Some(6),
                    dt::DOUBLE,
                    MetricValue::DoubleValue(f64::NAN),
                ),
                metric(Some(""), Some(7), dt::DOUBLE, MetricValue::DoubleValue(1.0)),
                metric(
                    Some("s"),
                    Some(8),
                    dt::STRING,
                    MetricValue::StringValue("x".repeat(300)),
                ),
                metric(
                    Some("big"),
                    Some(9),
                    dt::UINT64,
                    MetricValue::LongValue(u64::MAX),
                ),
                metric(Some("i8"), Some(10), dt::INT8, MetricValue::IntValue(0x80)),
                metric(
                    Some("i16"),
                    Some(11),
                    dt::INT16,
                    MetricValue::IntValue(0xffff_fffe),
                ),
                metric(Some("f"), Some(12), dt::FLOAT, MetricValue::FloatValue(0.5)),
                metric(
                    Some("dt"),
                    Some(13),
                    dt::DATETIME,
                    MetricValue::LongValue(77),
                ),
                metric(
                    Some("txt"),
                    Some(14),
                    dt::TEXT,
                    MetricValue::StringValue("hi".into()),
                ),
            ],
        );
        let o = s.handle(&t(NB), &p, clock());
        assert_eq!(
            o.unsupported,
            vec!["dataset", "template", "bytes", "array", "null"]
        );
        assert_eq!(
            o.invalid,
            vec![
                "type_mismatch",
                "non_finite_value",
                "bad_metric",
                "string_too_long",
                "uint64_rounded"
            ]
        );
        let rs = o.readings.unwrap().1;
        assert_eq!(
            rs,
            vec![
                #[allow(clippy::cast_precision_loss)]
                Reading::new("big", u64::MAX as f64, 1_000),
                Reading::new("i8", -128i64, 1_000),
                Reading::new("i16", -2i64, 1_000),
                Reading::new("f", 0.5, 1_000),
                Reading::new("dt", 77i64, 1_000),
                Reading::new("txt", "hi", 1_000),
            ]
        );
        // Aliases of unsupported metrics resolve to them again in DATA, and count again.
        let o = s.handle(
            &t(ND),
            &payload(
                Some(1),
                vec![by_alias(1, MetricValue::DatasetValue(vec![]))],
            ),
            clock(),
        );
        assert_eq!(o.unsupported, vec!["dataset"]);
        assert_eq!(o.rebirth, None);
    }

    #[test]
    fn the_session_table_is_bounded() {
        let mut s = Sessions::new(SessionConfig {
            max_edge_nodes: 2,
            max_devices: 1,
            ..SessionConfig::default()
        });
        s.handle(&t("spBv1.0/g/NBIRTH/a"), &nbirth(0, 0), clock());
        s.handle(&t("spBv1.0/g/NBIRTH/b"), &nbirth(0, 0), clock());
        let o = s.handle(&t("spBv1.0/g/NBIRTH/c"), &nbirth(0, 0), clock());
        assert_eq!(o.ignored, Some(Ignored::TooManyNodes));
        // Unknown nodes sending data do not grow it either (their data is taken, with no
        // table, and no Rebirth entry is made for them).
        let o = s.handle(&t("spBv1.0/g/NDATA/z"), &payload(Some(0), vec![]), clock());
        assert_eq!(o.before_birth, Some(BeforeBirth::None));
        assert_eq!(o.rebirth, None);
        assert_eq!(s.len(), 2);
        // An offline node makes room.
        s.handle(&t("spBv1.0/g/NDEATH/a"), &ndeath(0), clock());
        let o = s.handle(&t("spBv1.0/g/NBIRTH/c"), &nbirth(0, 0), clock());
        assert_eq!(o.ignored, None);
        assert_eq!(s.len(), 2);
        s.handle(
            &t("spBv1.0/g/DBIRTH/c/d1"),
            &payload(Some(1), vec![]),
            clock(),
        );
        let o = s.handle(
            &t("spBv1.0/g/DBIRTH/c/d2"),
            &payload(Some(2), vec![]),
            clock(),
        );
        assert_eq!(o.ignored, Some(Ignored::TooManyDevices));
        let long = format!("spBv1.0/g/NBIRTH/{}", "x".repeat(70));
        s.handle(&t("spBv1.0/g/NDEATH/b"), &ndeath(0), clock());
        let o = s.handle(&t(&long), &nbirth(0, 0), clock());
        assert_eq!(o.ignored, Some(Ignored::DeviceIdTooLong));
    }

    /// The store's state after `ops`, through the file format (frames encoded and decoded).
    fn stored(ops: &[StoreOp]) -> State {
        let mut file = b"BWSPS001".to_vec();
        for op in ops {
            super::super::store::encode_frame(op, &mut file);
        }
        let l = super::super::store::decode(&file);
        assert_eq!((l.records, l.corrupt), (ops.len(), None));
        l.state
    }

    /// A gateway that took NBIRTH (`temp` Double alias 1, `count` Int32 alias 2) and the
    /// DBIRTH of `d` (`Inputs/A` Boolean alias 10), then died: its persisted ops.
    fn before_the_crash() -> Vec<StoreOp> {
        let mut s = sessions();
        let mut ops = s.handle(&t(NB), &nbirth(7, 0), clock()).persist;
        let db = payload(
            Some(1),
            vec![metric(
                Some("Inputs/A"),
                Some(10),
                dt::BOOLEAN,
                MetricValue::BooleanValue(false),
            )],
        );
        ops.extend(s.handle(&t(DB), &db, clock()).persist);
        assert_eq!(ops.len(), 2);
        ops
    }

    #[test]
    fn data_after_a_restore_is_decoded_with_the_restored_names() {
        let mut s = sessions();
        let r = s.restore(stored(&before_the_crash()));
        assert_eq!(
            r,
            Restored {
                edge_nodes: 1,
                devices: 1,
                skipped: 0
            }
        );
        assert_eq!((s.len(), s.online()), (1, 0));
        // The resent DDATA (any seq: a restored node has no seq to continue), by alias only.
        let o = s.handle(
            &t(DD),
            &payload(
                Some(40),
                vec![by_alias(10, MetricValue::BooleanValue(true))],
            ),
            clock(),
        );
        assert_eq!(o.before_birth, Some(BeforeBirth::Restored));
        assert_eq!(o.ignored, None);
        assert_eq!(
            o.readings.unwrap(),
            (
                DeviceId::parse("spb.g.e.d").unwrap(),
                vec![Reading::new("Inputs/A", true, 1_000)]
            )
        );
        // A Rebirth is still requested (counted as before_birth), then rate-limited.
        assert_eq!(o.rebirth.unwrap().reason, RebirthReason::BeforeBirth);
        // NDATA: the datatype is restored too (Int32 in int_value is sign-extended).
        let o = s.handle(
            &t(ND),
            &payload(
                Some(41),
                vec![
                    by_alias(2, MetricValue::IntValue(u32::MAX)),
                    by_alias(9, MetricValue::IntValue(5)),
                ],
            ),
            clock(),
        );
        assert_eq!(o.before_birth, Some(BeforeBirth::Restored));
        assert_eq!(o.rebirth_suppressed, Some(RebirthReason::BeforeBirth));
        // An alias the restored table lacks: kept raw under its alias.
        assert_eq!(o.unresolved, 1);
        assert_eq!(
            o.readings.unwrap().1,
            vec![
                Reading::new("count", -1i64, 1_000),
                Reading::new("alias:9", 5i64, 1_000)
            ]
        );
        assert!(o.persist.is_empty());
        // A device the restored node never had: no table.
        let o = s.handle(
            &t("spBv1.0/g/DDATA/e/other"),
            &payload(
                Some(42),
                vec![by_alias(10, MetricValue::BooleanValue(true))],
            ),
            clock(),
        );
        assert_eq!(o.before_birth, Some(BeforeBirth::None));
        assert_eq!(
            o.readings.unwrap(),
            (
                DeviceId::parse("spb.g.e.other").unwrap(),
                vec![Reading::new("alias:10", true, 1_000)]
            )
        );
        // Without the store (the gateway before it), the same DDATA has no names.
        let mut fresh = sessions();
        let o = fresh.handle(
            &t(DD),
            &payload(
                Some(40),
                vec![by_alias(10, MetricValue::BooleanValue(true))],
            ),
            clock(),
        );
        assert_eq!(o.before_birth, Some(BeforeBirth::None));
        assert_eq!(
            o.readings.unwrap().1,
            vec![Reading::new("alias:10", true, 1_000)]
        );
    }

    #[test]
    fn a_new_nbirth_replaces_the_restored_table() {
        let mut s = sessions();
        s.restore(stored(&before_the_crash()));
        let p = payload(
            Some(0),
            vec![
                metric(Some(BDSEQ), None, dt::INT64, MetricValue::LongValue(8)),
                metric(
                    Some("other"),
                    Some(1),
                    dt::FLOAT,
                    MetricValue::FloatValue(1.0),
                ),
            ],
        );
        let o = s.handle(&t(NB), &p, clock());
        assert_eq!(o.before_birth, None);
        assert_eq!(s.online(), 1);
        assert_eq!(
            o.persist,
            vec![StoreOp::NodeBirth {
                group: "g".into(),
                edge_node: "e".into(),
                bd_seq: Some(8),
                metrics: vec![
                    StoredMetric {
                        name: "other".into(),
                        datatype: dt::FLOAT,
                        alias: Some(1)
                    },
                    StoredMetric {
                        name: BDSEQ.into(),
                        datatype: dt::INT64,
                        alias: None
                    }
                ]
            }]
        );
        let o = s.handle(
            &t(ND),
            &payload(
                Some(1),
                vec![
                    by_alias(1, MetricValue::FloatValue(2.5)),
                    by_alias(2, MetricValue::IntValue(1)),
                ],
            ),
            clock(),
        );
        assert_eq!(o.before_birth, None);
        assert_eq!(
            o.readings.unwrap().1,
            vec![
                Reading::new("other", 2.5, 1_000),
                Reading::new("alias:2", 1i64, 1_000)
            ]
        );
        assert_eq!(o.rebirth.unwrap().reason, RebirthReason::UnknownAlias);
        // The restored device is gone with the new NBIRTH: its DDATA has no table.
        let o = s.handle(
            &t(DD),
            &payload(Some(2), vec![by_alias(10, MetricValue::BooleanValue(true))]),
            clock(),
        );
        assert_eq!(o.before_birth, Some(BeforeBirth::None));
        assert_eq!(o.unresolved, 1);
        // The node is live now: an NDEATH with the new bdSeq ends it.
        let o = s.handle(&t(NX), &ndeath(8), clock());
        assert_eq!(o.ignored, None);
        assert_eq!(s.online(), 0);
    }

    #[test]
    fn restored_sessions_are_bounded_and_evictable() {
        let big = |n: &str| StoreOp::NodeBirth {
            group: "g".into(),
            edge_node: n.into(),
            bd_seq: None,
            metrics: (0..5)
                .map(|i| StoredMetric {
                    name: format!("m{i}"),
                    datatype: dt::INT64,
                    alias: Some(i),
                })
                .collect(),
        };
        let dev = |n: &str, d: &str| StoreOp::DeviceBirth {
            group: "g".into(),
            edge_node: n.into(),
            device: d.into(),
            metrics: vec![],
        };
        let state = stored(&[
            big("a"),
            dev("a", "d1"),
            dev("a", "d2"),
            big("b"),
            big("c"),
            big(&"x".repeat(70)),
        ]);
        let mut s = Sessions::new(SessionConfig {
            max_edge_nodes: 2,
            max_devices: 1,
            max_aliases: 2,
            ..SessionConfig::default()
        });
        let r = s.restore(state);
        assert_eq!(r.edge_nodes, 2);
        assert_eq!(s.len(), 2);
        // 4 nodes and 2 devices: 2 nodes restored; the rest skipped (a too-long id, a node
        // beyond the table, a device beyond max_devices, or a's devices with a).
        assert_eq!(r.edge_nodes + r.skipped, 4 + 2 - r.devices);
        assert!(r.devices <= 1);
        // Aliases beyond max_aliases are not restored.
        let (g, n) = s.nodes.keys().next().cloned().unwrap();
        let topic = format!("spBv1.0/{g}/NDATA/{n}");
        let o = s.handle(
            &t(&topic),
            &payload(
                Some(0),
                vec![
                    by_alias(0, MetricValue::LongValue(1)),
                    by_alias(1, MetricValue::LongValue(2)),
                    by_alias(4, MetricValue::LongValue(3)),
                ],
            ),
            clock(),
        );
        assert_eq!(o.before_birth, Some(BeforeBirth::Restored));
        assert_eq!(o.unresolved, 1);
        // Restored nodes are not online: a new node's NBIRTH evicts one, and the store is told.
        let o = s.handle(&t("spBv1.0/g/NBIRTH/new"), &nbirth(0, 0), clock());
        assert_eq!(o.ignored, None);
        assert_eq!(s.len(), 2);
        assert!(matches!(o.persist[0], StoreOp::Forget { .. }));
        assert!(matches!(o.persist[1], StoreOp::NodeBirth { .. }));
    }

    proptest::proptest! {
        /// Any store content (arbitrary ops, as a hostile or stale file could hold) restores
        /// within the bounds, and the sessions then take any message without panicking.
        #[test]
        fn restored_sessions_stay_within_bounds(
            ops in proptest::collection::vec(
                (0u8..3, 0usize..6, 0usize..4, 0usize..6, 0u64..8),
                0..40,
            ),
            alias in 0u64..8,
        ) {
            let ops: Vec<StoreOp> = ops
                .into_iter()
                .map(|(k, n, d, metrics, a)| {
                    let metrics: Vec<StoredMetric> = (0..metrics)
                        .map(|i| StoredMetric {
                            name: format!("m{i}"),
                            datatype: u32::try_from(i).unwrap_or(0) * 3,
                            alias: Some(a + i as u64),
                        })
                        .collect();
                    match k {
                        0 => StoreOp::NodeBirth { group: "g".into(), edge_node: format!("n{n}"), bd_seq: Some(a), metrics },
                        1 => StoreOp::DeviceBirth { group: "g".into(), edge_node: format!("n{n}"), device: format!("d{d}"), metrics },
                        _ => StoreOp::Forget { group: "g".into(), edge_node: format!("n{n}") },
                    }
                })
                .collect();
            let mut s = Sessions::new(SessionConfig { max_edge_nodes: 3, max_devices: 2, max_aliases: 3, ..SessionConfig::default() });
            s.restore(stored(&ops));
            proptest::prop_assert!(s.len() <= 3);
            for node in s.nodes.values() {
                proptest::prop_assert!(node.devices.len() <= 2);
                proptest::prop_assert!(node.aliases.by_name.len() <= 3);
                proptest::prop_assert!(!node.online && node.restored);
            }
            for n in 0..6 {
                for topic in [format!("spBv1.0/g/NDATA/n{n}"), format!("spBv1.0/g/DDATA/n{n}/d1")] {
                    let o = s.handle(&t(&topic), &payload(Some(0), vec![by_alias(alias, MetricValue::LongValue(1))]), clock());
                    proptest::prop_assert!(o.before_birth.is_some());
                    // Taken, or counted as unsupported or invalid: never lost silently.
                    let taken = o.readings.map_or(0, |r| r.1.len());
                    proptest::prop_assert_eq!(taken + o.unsupported.len() + o.invalid.len(), 1);
                }
            }
            proptest::prop_assert!(s.len() <= 3);
        }
    }

    proptest::proptest! {
        /// Hostile edge nodes: any sequence of messages (topics of every type for a few nodes
        /// and devices, payloads from arbitrary bytes that decode, or arbitrary metrics) never
        /// panics, and the table stays within its bound.
        #[test]
        fn arbitrary_message_sequences_never_panic(
            msgs in proptest::collection::vec(
                (0usize..8, 0usize..3, 0usize..2, proptest::collection::vec(proptest::num::u8::ANY, 0..64), 0u64..300, 0u64..5, 0u32..40, proptest::bool::ANY),
                0..60,
            )
        ) {
            let mut s = Sessions::new(SessionConfig { max_edge_nodes: 2, max_devices: 1, max_aliases: 3, ..SessionConfig::default() });
            let kinds = ["NBIRTH", "NDATA", "NDEATH", "NCMD", "DBIRTH", "DDATA", "DDEATH", "DCMD"];
            for (k, node, dev, bytes, seq, alias, datatype, named) in msgs {
                let kind = kinds[k];
                let topic = if MessageType::parse(kind).is_some_and(MessageType::has_device) {
                    format!("spBv1.0/g/{kind}/n{node}/d{dev}")
                } else {
                    format!("spBv1.0/g/{kind}/n{node}")
                };
                let t = SpTopic::parse(&topic).unwrap();
                let p = super::super::proto::decode(&bytes).unwrap_or_else(|_| {
                    payload(
                        Some(seq),
                        vec![Metric {
                            name: named.then(|| format!("m{alias}")),
                            alias: Some(alias),
                            timestamp: None,
                            datatype: Some(datatype),
                            is_null: None,
                            value: Some(MetricValue::LongValue(seq)),
                        }],
                    )
                });
                let _ = s.handle(&t, &p, clock());
                proptest::prop_assert!(s.len() <= 2);
            }
        }
    }

    #[test]
    fn commands_are_not_for_the_host() {
        let mut s = sessions();
        let o = s.handle(&t("spBv1.0/g/NCMD/e"), &payload(None, vec![]), clock());
        assert_eq!(o.ignored, Some(Ignored::Command));
        assert_eq!(o.rebirth, None);
    }
}

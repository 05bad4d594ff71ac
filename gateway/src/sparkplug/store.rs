//! The Sparkplug session store: each edge node's BIRTH essentials (its NBIRTH's and DBIRTHs'
//! alias tables, alias -> metric name + datatype, its device list and `bdSeq`) kept on disk so
//! that a restarted gateway can still decode the DATA an edge node resends before its new
//! NBIRTH.
//!
//! # Why
//!
//! After a gateway kill -9 an edge node with a persistent MQTT session (paho
//! `clean_session=False`) reconnects and first resends its unacknowledged QoS 1 DDATA/NDATA,
//! by alias, and only then publishes its new NBIRTH. Without the aliases those DATA cannot be
//! named. [`Store::open`] loads the last tables as *restored* sessions
//! ([`super::session::Sessions::restore`]): not online (no `seq` is checked and a Rebirth is
//! still requested), but their DATA is decoded with the restored aliases and stored like any
//! DATA (PUBACK once durable).
//!
//! # Layout (`{spool dir}/sparkplug-sessions.log`)
//!
//! An 8-byte magic (`BWSPS001`), then frames: `len: u32 LE`, `crc32(body): u32 LE`, `body`
//! (postcard [`StoreOp`], at most [`MAX_RECORD_BYTES`]). Ops apply in order ([`State::apply`]):
//! an NBIRTH replaces the node (and forgets its devices), a DBIRTH replaces one device, a
//! forget removes a node the session table evicted. At open the file is read (at most
//! [`MAX_FILE_BYTES`]), then rewritten compacted (one NBIRTH + its DBIRTHs per node, into a
//! temporary file, fsynced, renamed, directory fsynced); the writer compacts again whenever the
//! log passes twice its compacted size plus 16 MiB.
//!
//! # What is durable when
//!
//! The host thread never writes or waits: it hands each op to the writer thread over a bounded
//! queue ([`QUEUE`] ops and [`MAX_PENDING_BYTES`]; `try_send`, a full queue is counted in
//! `breakwater_gateway_sparkplug_store_errors_total{reason="queue_full"}` and logged, and that
//! BIRTH is not persisted). The writer takes everything that arrived within [`COALESCE`] of the
//! first op, appends it with one `write` and one `fdatasync`: at most one fsync per 10 ms
//! window plus the fsync's own time, whatever the BIRTH rate (test `a_birth_storm_is_coalesced`:
//! 10,000 NBIRTHs recorded back to back were written with 2 fsyncs).
//!
//! So a BIRTH's record becomes durable some milliseconds after the host took the BIRTH, and
//! nothing waits for it. That is enough, and holding PUBACKs back for it would not help:
//!
//! * a DATA that was PUBACKed is durable already (its readings are in the spool or in Kafka);
//!   it is never needed again, whatever happens to the store;
//! * what needs the record is a DATA *not* PUBACKed at the crash, which the node resends after
//!   the restart. Delaying any PUBACK only makes more DATA "not PUBACKed"; it cannot make the
//!   record durable earlier;
//! * a crash inside the window (the BIRTH taken, its record not yet fsynced, DATA of it in
//!   flight) leaves the resent DATA with no table, or an older one. Those are not lost either:
//!   a metric with an alias no restored table knows is stored under the name `alias:{n}` with
//!   its raw value ([`super::session`], "Unresolved aliases"), counted, and PUBACKed when
//!   durable like any other. An older table (the node re-born with *different* aliases within
//!   the window) would name them wrongly; Sparkplug edge nodes in practice keep their aliases
//!   across rebirths, and the window is one coalescing interval plus an fsync.
//!
//! # A corrupt or hostile file
//!
//! Never stops the gateway and never makes it allocate without bound: the read is limited to
//! [`MAX_FILE_BYTES`], a frame to [`MAX_RECORD_BYTES`]; the first bad frame (length, checksum,
//! postcard) ends the read, what came before it is kept, the reason is counted
//! (`breakwater_gateway_sparkplug_store_errors_total{reason}`) and logged, and the file is
//! rewritten compacted from what was kept. A torn last frame (a crash during an append) is the
//! normal end of a log and only logged at info. What is restored goes through the session
//! table's caps (`max_edge_nodes`, `max_devices_per_edge_node`, aliases per table). If the
//! store cannot be written at all (a read-only directory), the gateway runs without it (counted,
//! logged) and behaves as before it existed.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::link::LogLimiter;
use crate::stats as m;

/// File name inside `[spool] dir`.
pub const FILE_NAME: &str = "sparkplug-sessions.log";
const MAGIC: &[u8; 8] = b"BWSPS001";
/// Bytes of the file read at open, at most (the rest is ignored, counted as `too_large`).
pub const MAX_FILE_BYTES: u64 = 256 * 1024 * 1024;
/// One frame's body, at most (a table of 10,000 aliases with 128-byte names is ~1.5 MB).
pub const MAX_RECORD_BYTES: u32 = 16 * 1024 * 1024;
/// Ops waiting for the writer, at most.
pub const QUEUE: usize = 16_384;
/// Bytes of ops waiting for the writer, at most (roughly: names + 16 bytes per metric), so a
/// node flooding NBIRTHs of 10,000 aliases cannot fill [`QUEUE`] with 1.5 MB each.
pub const MAX_PENDING_BYTES: usize = 64 * 1024 * 1024;
/// How long the writer gathers ops after the first before one write + fsync.
pub const COALESCE: Duration = Duration::from_millis(10);
const COMPACT_SLACK: u64 = 16 * 1024 * 1024;

/// One metric of a BIRTH as the session keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMetric {
    pub name: String,
    pub datatype: u32,
    pub alias: Option<u64>,
}

/// One change to the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreOp {
    /// An NBIRTH: the node's table and `bdSeq`; its devices are forgotten.
    NodeBirth {
        group: String,
        edge_node: String,
        bd_seq: Option<u64>,
        metrics: Vec<StoredMetric>,
    },
    /// A DBIRTH of an online node.
    DeviceBirth {
        group: String,
        edge_node: String,
        device: String,
        metrics: Vec<StoredMetric>,
    },
    /// The session table evicted the node.
    Forget { group: String, edge_node: String },
}

impl StoreOp {
    /// About what the op holds in memory, for [`MAX_PENDING_BYTES`].
    #[must_use]
    pub fn weight(&self) -> usize {
        let metrics = match self {
            Self::NodeBirth { metrics, .. } | Self::DeviceBirth { metrics, .. } => metrics,
            Self::Forget { .. } => return 64,
        };
        64 + metrics.iter().map(|m| m.name.len() + 16).sum::<usize>()
    }
}

/// A node as restored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredNode {
    pub bd_seq: Option<u64>,
    pub metrics: Vec<StoredMetric>,
    pub devices: BTreeMap<String, Vec<StoredMetric>>,
}

/// What the store holds: the last BIRTHs of every node, by (group, edge node).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub nodes: HashMap<(String, String), StoredNode>,
}

impl State {
    pub fn apply(&mut self, op: StoreOp) {
        match op {
            StoreOp::NodeBirth {
                group,
                edge_node,
                bd_seq,
                metrics,
            } => {
                self.nodes.insert(
                    (group, edge_node),
                    StoredNode {
                        bd_seq,
                        metrics,
                        devices: BTreeMap::new(),
                    },
                );
            }
            StoreOp::DeviceBirth {
                group,
                edge_node,
                device,
                metrics,
            } => {
                // A DBIRTH is only recorded for an online node, whose NBIRTH came first; one
                // without it (a hostile file) is dropped.
                if let Some(node) = self.nodes.get_mut(&(group, edge_node)) {
                    node.devices.insert(device, metrics);
                }
            }
            StoreOp::Forget { group, edge_node } => {
                self.nodes.remove(&(group, edge_node));
            }
        }
    }

    /// The ops that rebuild this state (for compaction).
    fn ops(&self) -> impl Iterator<Item = StoreOp> + '_ {
        self.nodes.iter().flat_map(|((g, n), node)| {
            std::iter::once(StoreOp::NodeBirth {
                group: g.clone(),
                edge_node: n.clone(),
                bd_seq: node.bd_seq,
                metrics: node.metrics.clone(),
            })
            .chain(node.devices.iter().map(|(d, ms)| StoreOp::DeviceBirth {
                group: g.clone(),
                edge_node: n.clone(),
                device: d.clone(),
                metrics: ms.clone(),
            }))
        })
    }
}

/// Why a read stopped before the end of the file: the `reason` label of
/// `breakwater_gateway_sparkplug_store_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corrupt {
    BadMagic,
    BadLength,
    BadChecksum,
    BadRecord,
    /// The file is larger than [`MAX_FILE_BYTES`].
    TooLarge,
}

impl Corrupt {
    #[must_use]
    pub fn reason(self) -> &'static str {
        match self {
            Self::BadMagic => "bad_magic",
            Self::BadLength => "bad_length",
            Self::BadChecksum => "bad_checksum",
            Self::BadRecord => "bad_record",
            Self::TooLarge => "too_large",
        }
    }
}

/// What [`decode`] made of a file.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Loaded {
    pub state: State,
    /// Frames applied.
    pub records: usize,
    /// The last frame was cut short (a crash during an append): normal.
    pub torn_tail: bool,
    pub corrupt: Option<Corrupt>,
}

/// Appends one frame for `op` to `out`.
pub fn encode_frame(op: &StoreOp, out: &mut Vec<u8>) {
    let body = postcard::to_allocvec(op).unwrap_or_default();
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
}

/// Decodes a whole file (magic + frames). Never panics; allocates at most what it is given
/// plus the state it decodes (property test below, fuzz target `decode_sparkplug_store`).
#[must_use]
pub fn decode(bytes: &[u8]) -> Loaded {
    let mut out = Loaded::default();
    if bytes.is_empty() {
        return out;
    }
    let Some(mut rest) = bytes.strip_prefix(MAGIC.as_slice()) else {
        out.corrupt = Some(Corrupt::BadMagic);
        return out;
    };
    while !rest.is_empty() {
        let Some((head, tail)) = rest.split_first_chunk::<8>() else {
            out.torn_tail = true;
            break;
        };
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if len > MAX_RECORD_BYTES {
            out.corrupt = Some(Corrupt::BadLength);
            break;
        }
        let len = len as usize;
        if tail.len() < len {
            out.torn_tail = true;
            break;
        }
        let (body, tail) = tail.split_at(len);
        if crc32fast::hash(body) != crc {
            out.corrupt = Some(Corrupt::BadChecksum);
            break;
        }
        match postcard::from_bytes::<StoreOp>(body) {
            Ok(op) => out.state.apply(op),
            Err(_) => {
                out.corrupt = Some(Corrupt::BadRecord);
                break;
            }
        }
        out.records += 1;
        rest = tail;
    }
    out
}

fn error(reason: &'static str, log: &mut LogLimiter, detail: &dyn std::fmt::Display) {
    metrics::counter!(m::SPARKPLUG_STORE_ERRORS, "reason" => reason).increment(1);
    if log.allow() {
        warn!(reason, %detail, "sparkplug session store");
    }
}

/// Reads at most [`MAX_FILE_BYTES`] of `path`; a missing file is empty.
fn read_bounded(path: &Path) -> std::io::Result<(Vec<u8>, bool)> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), false)),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    let too_large = bytes.len() as u64 > MAX_FILE_BYTES;
    if too_large {
        // Cut at the bound: the frame across it reads as a torn tail.
        bytes.truncate(usize::try_from(MAX_FILE_BYTES).unwrap_or(usize::MAX));
    }
    Ok((bytes, too_large))
}

/// Writes `state` compacted to `path` (temporary file, fsync, rename, directory fsync); the
/// file's length.
fn write_compacted(path: &Path, state: &State) -> std::io::Result<u64> {
    let mut buf = MAGIC.to_vec();
    for op in state.ops() {
        encode_frame(&op, &mut buf);
    }
    let tmp = path.with_extension("log.tmp");
    {
        let mut f = owner_only_create(&tmp)?;
        f.write_all(&buf)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(buf.len() as u64)
}

fn owner_only_create(path: &Path) -> std::io::Result<File> {
    let mut o = OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path)
}

/// The handle the host thread keeps: sends ops to the writer thread.
#[derive(Debug)]
pub struct Store {
    tx: Option<SyncSender<StoreOp>>,
    thread: Option<JoinHandle<()>>,
    log: LogLimiter,
    /// [`StoreOp::weight`] of the ops the writer has not written yet.
    pending: Arc<AtomicUsize>,
    /// Appends made durable (one `fdatasync` each).
    syncs: Arc<AtomicU64>,
}

impl Store {
    /// A store that keeps nothing (the host without persistence, and tests).
    #[must_use]
    pub fn disabled() -> Self {
        Self {
            tx: None,
            thread: None,
            log: LogLimiter::new(),
            pending: Arc::default(),
            syncs: Arc::default(),
        }
    }

    /// Loads `{dir}/sparkplug-sessions.log`, rewrites it compacted and starts the writer.
    /// Never fails: any problem is counted and logged, and the gateway starts with what could
    /// be read (possibly nothing) and, if the file cannot be written, without a store.
    #[must_use]
    pub fn open(dir: &Path) -> (Self, State) {
        let mut log = LogLimiter::new();
        let path = dir.join(FILE_NAME);
        let loaded = match read_bounded(&path) {
            Ok((bytes, too_large)) => {
                let mut l = decode(&bytes);
                if too_large {
                    l.corrupt = Some(Corrupt::TooLarge);
                }
                l
            }
            Err(e) => {
                error("read", &mut log, &e);
                Loaded::default()
            }
        };
        if let Some(c) = loaded.corrupt {
            error(
                c.reason(),
                &mut log,
                &format!(
                    "{}: kept the {} records before it",
                    path.display(),
                    loaded.records
                ),
            );
        } else if loaded.torn_tail {
            info!(path = %path.display(), records = loaded.records, "sparkplug session store: torn last record (a crash during an append) ignored");
        }
        let state = loaded.state;
        info!(path = %path.display(), edge_nodes = state.nodes.len(), "sparkplug session store loaded");
        // Compacted, then reopened for appends.
        let opened = write_compacted(&path, &state)
            .and_then(|n| Ok((n, OpenOptions::new().append(true).open(&path)?)));
        let (compacted, file) = match opened {
            Ok(v) => v,
            Err(e) => {
                error(
                    "write",
                    &mut log,
                    &format!("{}: {e}; running without a session store", path.display()),
                );
                return (Self::disabled(), state);
            }
        };
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let pending = Arc::new(AtomicUsize::new(0));
        let syncs = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            path,
            file,
            len: compacted,
            compacted,
            mirror: state.clone(),
            log: LogLimiter::new(),
            pending: pending.clone(),
            syncs: syncs.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("bw-sparkplug-store".into())
            .spawn(move || writer.run(&rx));
        match thread {
            Ok(t) => (
                Self {
                    tx: Some(tx),
                    thread: Some(t),
                    log,
                    pending,
                    syncs,
                },
                state,
            ),
            Err(e) => {
                error("write", &mut log, &e);
                (Self::disabled(), state)
            }
        }
    }

    /// Hands `op` to the writer; never blocks. A full queue ([`QUEUE`] ops or
    /// [`MAX_PENDING_BYTES`]) drops it, counted (`queue_full`) and logged.
    pub fn record(&mut self, op: StoreOp) {
        let Some(tx) = &self.tx else { return };
        let w = op.weight();
        if self.pending.fetch_add(w, Ordering::AcqRel) + w > MAX_PENDING_BYTES {
            self.pending.fetch_sub(w, Ordering::AcqRel);
            error("queue_full", &mut self.log, &"BIRTH not persisted");
            return;
        }
        match tx.try_send(op) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.pending.fetch_sub(w, Ordering::AcqRel);
                error("queue_full", &mut self.log, &"BIRTH not persisted");
            }
            Err(TrySendError::Disconnected(_)) => {
                error("writer_gone", &mut self.log, &"BIRTH not persisted");
                self.tx = None;
            }
        }
    }

    /// Appends made durable so far (each one `fdatasync`).
    #[must_use]
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// Lets the writer write what it holds and waits for it.
    pub fn close(mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Writer {
    path: PathBuf,
    file: File,
    len: u64,
    compacted: u64,
    mirror: State,
    log: LogLimiter,
    pending: Arc<AtomicUsize>,
    syncs: Arc<AtomicU64>,
}

impl Writer {
    fn run(mut self, rx: &Receiver<StoreOp>) {
        let mut buf = Vec::new();
        while let Ok(first) = rx.recv() {
            let mut ops = vec![first];
            let until = Instant::now() + COALESCE;
            while let Ok(op) = rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                ops.push(op);
            }
            buf.clear();
            let mut weight = 0;
            for op in ops {
                weight += op.weight();
                encode_frame(&op, &mut buf);
                self.mirror.apply(op);
            }
            self.append(&buf);
            self.pending.fetch_sub(weight, Ordering::AcqRel);
        }
    }

    fn append(&mut self, buf: &[u8]) {
        if let Err(e) = self
            .file
            .write_all(buf)
            .and_then(|()| self.file.sync_data())
        {
            error(
                "write",
                &mut self.log,
                &format!("{}: {e}", self.path.display()),
            );
            // A partial append may have left a torn frame: compacting rewrites the file whole.
            self.compact();
            return;
        }
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.len += buf.len() as u64;
        if self.len > 2 * self.compacted + COMPACT_SLACK {
            self.compact();
        }
    }

    fn compact(&mut self) {
        let reopened = write_compacted(&self.path, &self.mirror).and_then(|n| {
            OpenOptions::new()
                .append(true)
                .open(&self.path)
                .map(|f| (n, f))
        });
        match reopened {
            Ok((n, f)) => {
                self.file = f;
                self.len = n;
                self.compacted = n;
            }
            Err(e) => error(
                "write",
                &mut self.log,
                &format!("{}: {e}", self.path.display()),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sm(name: &str, datatype: u32, alias: Option<u64>) -> StoredMetric {
        StoredMetric {
            name: name.into(),
            datatype,
            alias,
        }
    }

    fn nb(n: &str, bd: u64) -> StoreOp {
        StoreOp::NodeBirth {
            group: "g".into(),
            edge_node: n.into(),
            bd_seq: Some(bd),
            metrics: vec![sm("temp", 10, Some(1))],
        }
    }

    fn db(n: &str, d: &str) -> StoreOp {
        StoreOp::DeviceBirth {
            group: "g".into(),
            edge_node: n.into(),
            device: d.into(),
            metrics: vec![sm("A", 11, Some(10))],
        }
    }

    fn file(ops: &[StoreOp]) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        for op in ops {
            encode_frame(op, &mut b);
        }
        b
    }

    #[test]
    fn ops_apply_in_order() {
        let l = decode(&file(&[
            nb("a", 0),
            db("a", "d1"),
            nb("b", 0),
            db("b", "d"),
            nb("b", 1),
            db("x", "orphan"),
            nb("c", 0),
            StoreOp::Forget {
                group: "g".into(),
                edge_node: "c".into(),
            },
        ]));
        assert_eq!((l.records, l.torn_tail, l.corrupt), (8, false, None));
        let a = &l.state.nodes[&("g".to_owned(), "a".to_owned())];
        assert_eq!(a.devices.keys().collect::<Vec<_>>(), vec!["d1"]);
        // b's second NBIRTH forgot its device.
        let b = &l.state.nodes[&("g".to_owned(), "b".to_owned())];
        assert_eq!((b.bd_seq, b.devices.len()), (Some(1), 0));
        assert_eq!(l.state.nodes.len(), 2);
    }

    #[test]
    fn a_torn_tail_and_corruption_keep_what_came_before() {
        let good = file(&[nb("a", 0), nb("b", 0)]);
        let one = file(&[nb("a", 0)]).len();
        let torn = &good[..good.len() - 3];
        let l = decode(torn);
        assert_eq!((l.records, l.torn_tail, l.corrupt), (1, true, None));
        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        let l = decode(&flipped);
        assert_eq!((l.records, l.corrupt), (1, Some(Corrupt::BadChecksum)));
        let mut long = good[..one].to_vec();
        long.extend(u32::MAX.to_le_bytes());
        long.extend([0; 12]);
        assert_eq!(decode(&long).corrupt, Some(Corrupt::BadLength));
        let mut junk = good[..one].to_vec();
        let body = [0xff; 5];
        junk.extend(5u32.to_le_bytes());
        junk.extend(crc32fast::hash(&body).to_le_bytes());
        junk.extend(body);
        assert_eq!(decode(&junk).corrupt, Some(Corrupt::BadRecord));
        assert_eq!(decode(b"not a store").corrupt, Some(Corrupt::BadMagic));
        assert_eq!(decode(b""), Loaded::default());
    }

    #[test]
    fn open_writes_batches_and_reopens_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, st) = Store::open(dir.path());
        assert!(st.nodes.is_empty());
        for i in 0..100 {
            s.record(nb(&format!("n{i}"), i));
        }
        s.record(db("n1", "d"));
        s.record(StoreOp::Forget {
            group: "g".into(),
            edge_node: "n2".into(),
        });
        s.close();
        let (s, st) = Store::open(dir.path());
        assert_eq!(st.nodes.len(), 99);
        assert_eq!(
            st.nodes[&("g".to_owned(), "n1".to_owned())].devices.len(),
            1
        );
        s.close();
        // Compacted at open: one frame per node and device.
        let l = decode(&std::fs::read(dir.path().join(FILE_NAME)).unwrap());
        assert_eq!((l.records, l.corrupt), (100, None));
    }

    /// A reconnect storm: 10,000 NBIRTHs recorded as fast as the host could take them are
    /// written in far fewer fsyncs, and all of them are there after a reopen.
    #[test]
    fn a_birth_storm_is_coalesced() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Store::open(dir.path());
        for i in 0..10_000 {
            s.record(nb(&format!("n{i}"), i));
        }
        let syncs = {
            let t = std::time::Instant::now();
            while s.pending.load(Ordering::Acquire) > 0 && t.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(5));
            }
            s.syncs()
        };
        s.close();
        eprintln!("10000 NBIRTHs: {syncs} fsyncs");
        assert!((1..=200).contains(&syncs), "{syncs} fsyncs");
        let (s, st) = Store::open(dir.path());
        assert_eq!(st.nodes.len(), 10_000);
        s.close();
    }

    #[test]
    fn the_queue_is_bounded_by_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Store::open(dir.path());
        // A writer that is behind: hold what is pending at the bound.
        s.pending.store(MAX_PENDING_BYTES, Ordering::Release);
        s.record(nb("late", 0));
        s.pending.store(0, Ordering::Release);
        s.record(nb("next", 0));
        s.close();
        let (s, st) = Store::open(dir.path());
        assert!(st.nodes.contains_key(&("g".to_owned(), "next".to_owned())));
        assert!(!st.nodes.contains_key(&("g".to_owned(), "late".to_owned())));
        s.close();
    }

    #[test]
    fn a_corrupt_file_starts_empty_and_is_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), b"garbage that is no store").unwrap();
        let (s, st) = Store::open(dir.path());
        assert!(st.nodes.is_empty());
        s.close();
        let bytes = std::fs::read(dir.path().join(FILE_NAME)).unwrap();
        assert_eq!(bytes, MAGIC.to_vec());
    }

    proptest::proptest! {
        /// Arbitrary bytes (raw, or after the magic) never panic, and a decoded state is
        /// never more than its frames could describe.
        #[test]
        fn the_decoder_never_panics(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2048),
            magic in proptest::bool::ANY,
        ) {
            let input = if magic { [MAGIC.as_slice(), &bytes].concat() } else { bytes };
            let l = decode(&input);
            proptest::prop_assert!(l.state.nodes.len() <= l.records);
        }

        /// Every prefix of a valid file decodes to the ops of its whole frames.
        #[test]
        fn every_prefix_keeps_its_whole_frames(n in 1usize..6, cut in 0usize..400) {
            let ops: Vec<StoreOp> = (0..n).map(|i| nb(&format!("n{i}"), i as u64)).collect();
            let f = file(&ops);
            let cut = cut.min(f.len());
            let l = decode(&f[..cut]);
            proptest::prop_assert!(l.corrupt.is_none() || cut < MAGIC.len());
            proptest::prop_assert!(l.records <= n);
        }
    }
}

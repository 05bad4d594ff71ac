//! Persistent MQTT sessions on disk: the embedded broker's session store (vendor/PATCHES.md,
//! patch 23), so that a client with `clean_session = false` finds its session after a gateway
//! restart, kill -9 included (`session present = 1`, its subscriptions back).
//!
//! Why: a spec-strict MQTT client discards its session state, unacknowledged QoS 1 publishes
//! included, when the CONNACK says `session present = 0`. Without this store every standard
//! client got that after a gateway restart, and such a client never resent what it had
//! published and not yet got a PUBACK for.
//!
//! # What is kept, and what is not
//!
//! Per persistent session: its client id, its subscriptions with their QoS, and when its client
//! went (if it had). Not kept: QoS 1 messages queued *to* the client (outbound) when the gateway
//! died, and QoS 2 state. So a resumed session after a restart has its subscriptions, not its
//! undelivered outbound messages. For the gateway's own outbound messages this is harmless:
//! agents' acks are re-sent when they reconnect, a Sparkplug edge node's Rebirth request is
//! sent again on the next gap, and `spBv1.0/STATE/{host_id}` is published (retained) at start.
//! Shared subscriptions (`$share/...`) are not restored (the gateway's policy refuses them
//! anyway).
//!
//! # Layout (`{dir}/mqtt-sessions.jsonl`)
//!
//! JSON lines: a header `{"format":1}`, then one session per line,
//! `{"c":"<client id>","s":[["<filter>",<qos>],...],"d":<unix ms when its client went>|null}`.
//! Rewritten whole, atomically: `mqtt-sessions.jsonl.tmp` is written and fsynced, renamed over the
//! file, and the directory is fsynced. Mode 0600.
//!
//! # When a record is durable
//!
//! The router reports each change ([`rumqttd::hooks::SessionStore`]) on its own thread and does
//! not wait: the change goes into a map keyed by client id (later changes of one id replace
//! earlier ones), and a writer thread rewrites the file [`COALESCE`] after the first change it
//! has not written. A session's record is therefore durable up to ~`COALESCE` + one write
//! *after* its CONNACK. A gateway crash within that window after a client's first persistent
//! CONNECT forgets that session: after the restart the client gets `session present = 0`, and
//! a strict client drops the QoS 1 publishes it had not got a PUBACK for. Those were never
//! acknowledged (a PUBACK waits for durability of the message itself, patch 22, which is slower
//! than this window only when nothing else is), so no promise is broken, but they are lost
//! unless the client resends anyway (paho does). A subscription made within the window is lost
//! the same way (the client has its SUBACK; after the restart it gets session present = 1
//! without that subscription).
//!
//! # Bounds
//!
//! * Pending changes: one entry per client id changed since the last write. If the writer
//!   falls behind (a stalled disk), a change of a client id not yet pending is dropped when
//!   [`Limits::max_records`] ids are pending, counted in
//!   `breakwater_gateway_sessions_dropped_changes_total` and logged: that session's record
//!   stays as it was written last.
//! * The file: at most `max_records` sessions (the router's saved-session cap plus its
//!   connections) of at most [`MAX_FILTERS`] subscriptions; a session with more is not stored
//!   (counted `too_many_filters`; after a restart its client starts afresh).
//! * Loading reads at most [`MAX_FILE_BYTES`], [`MAX_LINE_BYTES`] per line and `max_records`
//!   sessions; beyond that, and for any line that does not parse, it counts
//!   `breakwater_gateway_sessions_load_errors_total{reason}` and goes on. A file that cannot be
//!   read or has no valid header is moved aside to `mqtt-sessions.jsonl.corrupt` and the gateway
//!   starts with no sessions. Nothing in the file can stop the gateway.
//!
//! # Trust boundary
//!
//! A session belongs to a client id. Whoever may connect with that client id may resume it,
//! as with a live session before this store: [`crate::admission`] authenticates the id in
//! `file` and `mtls` modes; in `open` mode the id is only a claim, as ever. A restored
//! subscription did not pass the authorization hook in this process, so each one is decided
//! again at load by the current policy, as a SUBSCRIBE by its client id would be (the
//! identity the live hook uses is the client id too: admission admits a client only under its
//! own id, a username or certificate name must equal it; `[[sparkplug.edge_nodes]]` maps that
//! id). A session with a denied one (the policy changed, or the file was edited) is not
//! restored at all, and counted (`reason="denied"`): its client gets `session present = 0`
//! and subscribes again through the live hook, instead of resuming without a subscription it
//! believes it has.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, UNIX_EPOCH};

use rumqttd::hooks::{SessionStore, StoredSession};
use rumqttd::protocol::QoS;
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use crate::admission::LogWindow;
use crate::stats as m;

/// The file in the data directory.
pub const FILE_NAME: &str = "mqtt-sessions.jsonl";
/// The layout version in the header.
pub const FORMAT: u32 = 1;
/// How long the writer waits after the first unwritten change, gathering more.
pub const COALESCE: Duration = Duration::from_millis(50);
/// Most subscriptions of a stored session.
pub const MAX_FILTERS: usize = 64;
/// Longest line read at load.
pub const MAX_LINE_BYTES: usize = 16 * 1024;
/// Most bytes read at load.
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// Bounds of a store.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most sessions loaded, and most client ids pending.
    pub max_records: usize,
}

/// Decides whether a restored subscription (client id, filter, QoS) is still allowed.
pub type Allow = Arc<dyn Fn(&str, &str, u8) -> bool + Send + Sync>;

#[derive(Serialize, Deserialize)]
struct Header {
    format: u32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
struct Record {
    c: String,
    s: Vec<(String, u8)>,
    d: Option<u64>,
}

impl Record {
    fn from_session(s: &StoredSession) -> Self {
        Self {
            c: s.client_id.clone(),
            s: s.subscriptions
                .iter()
                .map(|(f, q)| (f.clone(), *q as u8))
                .collect(),
            d: s.disconnected_at.and_then(|t| {
                t.duration_since(UNIX_EPOCH)
                    .ok()
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            }),
        }
    }

    fn into_session(self) -> Option<StoredSession> {
        let mut subscriptions = Vec::with_capacity(self.s.len());
        for (f, q) in self.s {
            let qos = match q {
                0 => QoS::AtMostOnce,
                1 => QoS::AtLeastOnce,
                2 => QoS::ExactlyOnce,
                _ => return None,
            };
            subscriptions.push((f, qos));
        }
        Some(StoredSession {
            client_id: self.c,
            subscriptions,
            disconnected_at: self.d.map(|ms| UNIX_EPOCH + Duration::from_millis(ms)),
        })
    }
}

fn load_error(reason: &'static str) {
    metrics::counter!(m::SESSIONS_LOAD_ERRORS, "reason" => reason).increment(1);
}

/// What [`DiskSessionStore::open`] found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Loaded {
    pub sessions: usize,
    /// Lines or subscriptions not restored (each counted by reason).
    pub errors: usize,
    /// The file was unreadable and was moved aside.
    pub moved_aside: bool,
}

/// Reads `path`. Never fails: what it cannot use is counted, logged, and left out.
fn read_file(path: &Path, limits: Limits, allow: &Allow) -> (Vec<StoredSession>, Loaded) {
    let mut loaded = Loaded::default();
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return (Vec::new(), loaded),
        Err(e) => {
            error!(path = %path.display(), error = %e, "persistent sessions: cannot open the file; starting with none");
            load_error("unreadable");
            loaded.errors += 1;
            return (Vec::new(), loaded);
        }
    };
    let mut reader = BufReader::new(file.take(MAX_FILE_BYTES));
    let mut line = Vec::new();
    let next_line = |reader: &mut BufReader<io::Take<File>>, line: &mut Vec<u8>| {
        line.clear();
        let mut bounded = reader.by_ref().take(MAX_LINE_BYTES as u64 + 1);
        bounded.read_until(b'\n', line).map(|n| n > 0)
    };
    let header_ok = match next_line(&mut reader, &mut line) {
        Ok(true) => serde_json::from_slice::<Header>(&line).is_ok_and(|h| h.format == FORMAT),
        Ok(false) => return (Vec::new(), loaded),
        Err(_) => false,
    };
    if !header_ok {
        let aside = path.with_extension("jsonl.corrupt");
        error!(path = %path.display(), aside = %aside.display(), "persistent sessions: the file has no valid header; moved aside, starting with none");
        load_error("bad_header");
        loaded.errors += 1;
        loaded.moved_aside = fs::rename(path, &aside).is_ok();
        return (Vec::new(), loaded);
    }
    let mut sessions: HashMap<String, StoredSession> = HashMap::new();
    let mut first_error: Option<String> = None;
    let mut note = |loaded: &mut Loaded, reason: &'static str, what: String| {
        load_error(reason);
        loaded.errors += 1;
        first_error.get_or_insert(what);
    };
    loop {
        match next_line(&mut reader, &mut line) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                note(&mut loaded, "unreadable", e.to_string());
                break;
            }
        }
        if line.len() > MAX_LINE_BYTES {
            note(
                &mut loaded,
                "line_too_long",
                format!("a line over {MAX_LINE_BYTES} bytes"),
            );
            // Skip the rest of the long line.
            loop {
                line.clear();
                match reader
                    .by_ref()
                    .take(MAX_LINE_BYTES as u64)
                    .read_until(b'\n', &mut line)
                {
                    Ok(0) => break,
                    Ok(_) if line.last() == Some(&b'\n') => break,
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            continue;
        }
        if !line.ends_with(b"\n") {
            // The file was cut off (a write the rename never published cannot cause this, but
            // a truncated copy or the size limit can).
            note(
                &mut loaded,
                "truncated",
                "a last line without its end".into(),
            );
            break;
        }
        let Some(session) = serde_json::from_slice::<Record>(&line)
            .ok()
            .and_then(Record::into_session)
        else {
            note(
                &mut loaded,
                "bad_record",
                String::from_utf8_lossy(&line).chars().take(80).collect(),
            );
            continue;
        };
        if !sessions.contains_key(&session.client_id) && sessions.len() >= limits.max_records {
            note(
                &mut loaded,
                "too_many",
                format!("more than {} sessions", limits.max_records),
            );
            break;
        }
        // All or nothing: a session resumed without one of its subscriptions would tell the
        // client (`session present = 1`) that it still has it, and it would not subscribe
        // again. Not restored, it gets `session present = 0` and subscribes anew, through the
        // live authorization hook with its real identity.
        let denied = session
            .subscriptions
            .iter()
            .filter(|(f, q)| !allow(&session.client_id, f, *q as u8))
            .count();
        if denied > 0 {
            note(
                &mut loaded,
                "denied",
                format!(
                    "{denied} subscription(s) of {} the policy refuses: session not restored",
                    session.client_id
                ),
            );
            continue;
        }
        if session.subscriptions.len() > MAX_FILTERS {
            note(&mut loaded, "too_many_filters", session.client_id.clone());
            continue;
        }
        sessions.insert(session.client_id.clone(), session);
    }
    if let Some(first) = first_error {
        warn!(path = %path.display(), errors = loaded.errors, first = %first, "persistent sessions: some of the file was not restored");
    }
    loaded.sessions = sessions.len();
    (sessions.into_values().collect(), loaded)
}

/// Writes `records` to `path` atomically (tmp file, fsync, rename, fsync of the directory).
fn write_file(path: &Path, records: &HashMap<String, Record>) -> io::Result<()> {
    let tmp = path.with_extension("jsonl.tmp");
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(&tmp)?;
    let mut w = io::BufWriter::new(file);
    serde_json::to_writer(&mut w, &Header { format: FORMAT })?;
    w.write_all(b"\n")?;
    for record in records.values() {
        serde_json::to_writer(&mut w, record)?;
        w.write_all(b"\n")?;
    }
    let file = w.into_inner().map_err(io::IntoInnerError::into_error)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[derive(Default)]
struct Pending {
    /// Client id -> its record now (`None`: forgotten).
    changes: HashMap<String, Option<Record>>,
    dropped_log: LogWindow,
    /// Batches of changes the writer took, and of those the last one written (for `flush`).
    taken: u64,
    written: u64,
}

struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    /// Notified after each write.
    wrote: Condvar,
    limits: Limits,
}

/// The gateway's [`SessionStore`]: a file in the data directory, rewritten by its own thread.
pub struct DiskSessionStore {
    shared: Arc<Shared>,
    loaded: Mutex<Option<Vec<StoredSession>>>,
}

impl std::fmt::Debug for DiskSessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskSessionStore").finish_non_exhaustive()
    }
}

impl DiskSessionStore {
    /// Reads `{dir}/mqtt-sessions.jsonl` (see the module doc for what it does with a bad one) and
    /// starts the writer thread. `allow` decides each restored subscription again.
    ///
    /// # Errors
    /// Only if the directory cannot be created or the writer thread cannot start; a bad file is
    /// no error.
    pub fn open(dir: &Path, limits: Limits, allow: &Allow) -> io::Result<(Arc<Self>, Loaded)> {
        fs::create_dir_all(dir)?;
        let path = dir.join(FILE_NAME);
        let (sessions, loaded) = read_file(&path, limits, allow);
        let records: HashMap<String, Record> = sessions
            .iter()
            .map(|s| (s.client_id.clone(), Record::from_session(s)))
            .collect();
        metrics::gauge!(m::SESSIONS_STORED).set(records.len() as f64);
        info!(path = %path.display(), sessions = loaded.sessions, errors = loaded.errors, "persistent sessions loaded");
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            wrote: Condvar::new(),
            limits,
        });
        let writer = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("session-store".into())
            .spawn(move || write_loop(&writer, &path, records))?;
        Ok((
            Arc::new(Self {
                shared,
                loaded: Mutex::new(Some(sessions)),
            }),
            loaded,
        ))
    }

    /// Waits (at most `within`) until every change made so far is in the file: the clean
    /// stop's last step, so the last [`COALESCE`] window is not lost. False on timeout (a
    /// failing disk); the file then holds an older state, as after a crash.
    pub fn flush(&self, within: Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        let mut p = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Changes not taken yet go into the writer's next batch, `taken + 1`.
        let want = if p.changes.is_empty() {
            p.taken
        } else {
            p.taken + 1
        };
        while p.written < want {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            p = self
                .shared
                .wrote
                .wait_timeout(p, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }

    fn change(&self, client_id: &str, record: Option<Record>) {
        let mut p = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let len = p.changes.len();
        if let Some(slot) = p.changes.get_mut(client_id) {
            *slot = record;
        } else if len >= self.shared.limits.max_records {
            metrics::counter!(m::SESSIONS_DROPPED_CHANGES).increment(1);
            if let Some(unlogged) = p.dropped_log.allow() {
                warn!(
                    client_id,
                    pending = len,
                    unlogged,
                    "persistent sessions: the writer is behind; this session's change is not stored"
                );
            }
            return;
        } else {
            p.changes.insert(client_id.to_owned(), record);
        }
        drop(p);
        self.shared.wake.notify_one();
    }
}

impl SessionStore for DiskSessionStore {
    fn load(&self) -> Vec<StoredSession> {
        self.loaded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .unwrap_or_default()
    }

    fn save(&self, session: StoredSession) {
        if session.subscriptions.len() > MAX_FILTERS {
            metrics::counter!(m::SESSIONS_NOT_STORED, "reason" => "too_many_filters").increment(1);
            self.change(&session.client_id, None);
            return;
        }
        self.change(&session.client_id, Some(Record::from_session(&session)));
    }

    fn forget(&self, client_id: &str) {
        self.change(client_id, None);
    }
}

/// The writer thread: waits for changes, gathers them for [`COALESCE`], rewrites the file. A
/// failed write is counted and logged and retried (with the changes since) after a second.
fn write_loop(shared: &Shared, path: &Path, mut records: HashMap<String, Record>) {
    let mut log = LogWindow::default();
    let mut failing = false;
    loop {
        {
            let mut p = shared
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            while p.changes.is_empty() && !failing {
                p = shared.wake.wait(p).unwrap_or_else(PoisonError::into_inner);
            }
        }
        std::thread::sleep(COALESCE);
        let (changes, batch) = {
            let mut p = shared
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if !p.changes.is_empty() {
                p.taken += 1;
            }
            (std::mem::take(&mut p.changes), p.taken)
        };
        for (id, record) in changes {
            match record {
                Some(r) => records.insert(id, r),
                None => records.remove(&id),
            };
        }
        let started = std::time::Instant::now();
        match write_file(path, &records) {
            Ok(()) => {
                if failing {
                    info!(path = %path.display(), "persistent sessions: writing works again");
                }
                failing = false;
                shared
                    .pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .written = batch;
                shared.wrote.notify_all();
                metrics::gauge!(m::SESSIONS_STORED).set(records.len() as f64);
                metrics::histogram!(m::SESSIONS_WRITE_SECONDS)
                    .record(started.elapsed().as_secs_f64());
            }
            Err(e) => {
                failing = true;
                metrics::counter!(m::SESSIONS_WRITE_ERRORS).increment(1);
                if let Some(unlogged) = log.allow() {
                    error!(path = %path.display(), error = %e, unlogged, "persistent sessions: cannot write the file; retrying");
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// The file's path in `dir`.
#[must_use]
pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow_all() -> Allow {
        Arc::new(|_, _, _| true)
    }

    fn session(id: &str, filters: &[&str], gone: Option<u64>) -> StoredSession {
        StoredSession {
            client_id: id.into(),
            subscriptions: filters
                .iter()
                .map(|f| ((*f).to_owned(), QoS::AtLeastOnce))
                .collect(),
            disconnected_at: gone.map(|ms| UNIX_EPOCH + Duration::from_millis(ms)),
        }
    }

    fn wait_for(path: &Path, pred: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let text = fs::read_to_string(path).unwrap_or_default();
            if pred(&text) {
                return text;
            }
            assert!(std::time::Instant::now() < deadline, "file: {text}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn sorted(mut v: Vec<StoredSession>) -> Vec<StoredSession> {
        v.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        v
    }

    #[test]
    fn saves_and_forgets_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits { max_records: 100 };
        let (store, loaded) = DiskSessionStore::open(dir.path(), limits, &allow_all()).unwrap();
        assert_eq!(loaded, Loaded::default());
        assert!(store.load().is_empty());
        store.save(session("a", &["bw/v1/a/ack"], None));
        store.save(session("b", &[], Some(1_700_000_000_123)));
        store.save(session("c", &[], None));
        store.forget("c");
        let p = path(dir.path());
        wait_for(&p, |t| t.lines().count() == 3);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        // A second process (the writer thread of the first keeps running; it has nothing to do).
        let (again, loaded) = DiskSessionStore::open(dir.path(), limits, &allow_all()).unwrap();
        assert_eq!(loaded.sessions, 2);
        assert_eq!(
            sorted(again.load()),
            [
                session("a", &["bw/v1/a/ack"], None),
                session("b", &[], Some(1_700_000_000_123))
            ]
        );
    }

    #[test]
    fn a_corrupt_file_is_moved_aside_and_bad_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(dir.path());
        let limits = Limits { max_records: 100 };
        fs::write(&p, b"\x00\x01garbage\n").unwrap();
        let (store, loaded) = DiskSessionStore::open(dir.path(), limits, &allow_all()).unwrap();
        assert!(loaded.moved_aside && loaded.errors == 1, "{loaded:?}");
        assert!(store.load().is_empty());
        assert!(dir.path().join("mqtt-sessions.jsonl.corrupt").exists());

        let long = "x".repeat(MAX_LINE_BYTES * 3);
        let text = format!(
            "{{\"format\":1}}\n{{\"c\":\"a\",\"s\":[[\"t\",1]],\"d\":null}}\nnot json\n\
             {{\"c\":\"q\",\"s\":[[\"t\",7]],\"d\":null}}\n{{\"c\":\"{long}\",\"s\":[],\"d\":null}}\n\
             {{\"c\":\"b\",\"s\":[],\"d\":5}}\n{{\"c\":\"cut"
        );
        fs::write(&p, text).unwrap();
        let (store, loaded) = DiskSessionStore::open(dir.path(), limits, &allow_all()).unwrap();
        // not json, qos 7, the long line, the cut-off last line.
        assert_eq!(loaded.errors, 4, "{loaded:?}");
        assert_eq!(
            sorted(store.load()),
            [session("a", &["t"], None), session("b", &[], Some(5))]
        );
    }

    #[test]
    fn load_is_bounded_and_decided_by_the_policy() {
        let dir = tempfile::tempdir().unwrap();
        let mut text = String::from("{\"format\":1}\n");
        // Odd ones also hold another device's ack topic.
        for i in 0..10 {
            let other = if i % 2 == 1 {
                ",[\"bw/v1/other/ack\",1]"
            } else {
                ""
            };
            text.push_str(&format!(
                "{{\"c\":\"d{i}\",\"s\":[[\"bw/v1/d{i}/ack\",1]{other}],\"d\":null}}\n"
            ));
        }
        let many: Vec<String> = (0..=MAX_FILTERS)
            .map(|i| format!("[\"f/{i}\",0]"))
            .collect();
        text.push_str(&format!(
            "{{\"c\":\"greedy\",\"s\":[{}],\"d\":null}}\n",
            many.join(",")
        ));
        fs::write(path(dir.path()), text).unwrap();
        // Own ack topic only.
        let allow: Allow = Arc::new(|c, f, _| f == format!("bw/v1/{c}/ack") || f.starts_with("f/"));
        let (store, loaded) =
            DiskSessionStore::open(dir.path(), Limits { max_records: 4 }, &allow).unwrap();
        // d0, d2, d4, d6 restored whole; d1, d3, d5 not at all (one denied filter each); d7
        // is one too many.
        assert_eq!(loaded.sessions, 4);
        assert_eq!(loaded.errors, 4);
        let mut ids: Vec<String> = store.load().into_iter().map(|s| s.client_id).collect();
        ids.sort();
        assert_eq!(ids, ["d0", "d2", "d4", "d6"]);
        let (_, loaded) =
            DiskSessionStore::open(dir.path(), Limits { max_records: 100 }, &allow).unwrap();
        // Five denied, one with too many filters.
        assert_eq!((loaded.sessions, loaded.errors), (5, 6));
    }

    #[test]
    fn flush_waits_until_every_change_is_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) =
            DiskSessionStore::open(dir.path(), Limits { max_records: 10 }, &allow_all()).unwrap();
        assert!(store.flush(Duration::from_secs(5)), "nothing to write");
        store.save(session("late", &["t"], None));
        // Without the flush the change sits in the coalescing window.
        assert!(store.flush(Duration::from_secs(5)));
        let (again, _) =
            DiskSessionStore::open(dir.path(), Limits { max_records: 10 }, &allow_all()).unwrap();
        assert_eq!(again.load(), [session("late", &["t"], None)]);
    }

    #[test]
    fn pending_changes_are_bounded_by_client_ids() {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wrote: Condvar::new(),
            wake: Condvar::new(),
            limits: Limits { max_records: 3 },
        });
        // No writer thread: nothing drains.
        let store = DiskSessionStore {
            shared: Arc::clone(&shared),
            loaded: Mutex::new(None),
        };
        for round in 0..5 {
            for id in ["a", "b", "c", "d"] {
                store.save(session(id, &[], Some(round)));
            }
        }
        store.forget("a");
        let p = shared.pending.lock().unwrap();
        assert_eq!(p.changes.len(), 3);
        assert_eq!(p.changes["a"], None);
        assert_eq!(p.changes["b"].as_ref().unwrap().d, Some(4));
        assert!(!p.changes.contains_key("d"));
    }
}

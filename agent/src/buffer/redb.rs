//! The on-disk [`Buffer`]: one redb file, `{dir}/buffer.redb`.
//!
//! # Layout
//!
//! ```text
//! table "readings": u64 first_seq -> chunk        one row per commit group
//!     chunk = count: u32 LE | accounted_bytes: u64 LE | count x (len: u32 LE | postcard(Reading))
//!     the chunk holds seqs first_seq ..= first_seq + count - 1
//! table "meta":     &str -> u64
//!     "format"         file layout version (FORMAT = 2)
//!     "epoch"          random non-zero u64 chosen when the file was created
//!     "first_seq"      oldest seq not yet acked or dropped (a chunk may start before it)
//!     "next_seq"       the seq the next appended reading gets
//!     "bytes"          sum of accounted bytes of stored chunks (encoded length +
//!                      RECORD_OVERHEAD per reading), what `max_bytes` limits
//!     "dropped_total"  readings deleted by drop-oldest, ever
//! ```
//!
//! Storing one row per commit group instead of one per reading keeps redb's per-row cost out
//! of the hot path. An ack deletes every chunk it fully covers and moves `first_seq`; a
//! partially acked chunk stays (and keeps its bytes) until a later ack covers it. `drop-oldest`
//! drops whole chunks, oldest first.
//!
//! # Group commit
//!
//! One writer thread owns every write. Appends and acks queue on a bounded channel; the writer
//! takes everything queued (up to `commit_max_readings` readings), applies it in one write
//! transaction with `Durability::Immediate` (fsync), commits, and only then answers each
//! caller. Many concurrent `append` calls therefore share one fsync.
//!
//! # Failures
//!
//! A file that cannot be opened (corrupt, locked by another process, wrong format) is reported
//! with its path through [`OpenError`] and left exactly as it is: never deleted, truncated or
//! recreated. A failed commit answers every caller in that transaction with an error; redb
//! guarantees the transaction's changes are either all durable or none.
//!
//! # Healing after storage errors (ENOSPC, EIO)
//!
//! After an I/O error redb refuses every later operation ("Previous I/O error occurred. Please
//! close and re-open the database"). So a failed commit puts the writer into *failing*: the
//! database handle is closed (readers lose it too; they get [`ReadError::Storage`]), every
//! append and ack is answered at once with a "storage failing" error (nothing is stored, the
//! ingest endpoint says so per line), [`Buffer::health`] reports it, and the writer reopens
//! the file with backoff (0.5 s doubling to 5 s) until the open and its metadata check commit
//! again. Then the buffer adopts the state found on disk, which is the last committed one (a
//! failed commit "may already have become durable": then the readings of an append that was
//! answered with an error are kept and sent — a possible duplicate, never a loss), and applies
//! the highest ack refused meanwhile. Confirmed readings are never touched. The reopen never
//! creates a file: a vanished buffer file stays an error. Counters:
//! `breakwater_agent_buffer_commit_errors_total`, `breakwater_agent_buffer_reopens_total`,
//! `breakwater_agent_buffer_reopen_failures_total`; gauge
//! `breakwater_agent_buffer_storage_failing` (0/1).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use breakwater_protocol::Reading;
use rand::Rng;
use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, watch};

use super::{
    AckError, AckOutcome, AppendError, Appended, BoxFuture, Budget, Buffer, BufferStats,
    FullPolicy, ReadError, StorageFailing,
};

const READINGS: TableDefinition<u64, &[u8]> = TableDefinition::new("readings");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Version of the layout above.
pub const FORMAT: u64 = 2;
/// The buffer file's name inside `[buffer] dir`.
pub const FILE_NAME: &str = "buffer.redb";
/// Per-reading overhead counted against the budget (length prefix, chunk and redb bookkeeping).
pub const RECORD_OVERHEAD: u64 = 16;
const CHUNK_HEADER: usize = 12;

/// Appends the chunk header placeholder.
fn chunk_start(buf: &mut Vec<u8>) {
    buf.extend_from_slice(&[0u8; CHUNK_HEADER]);
}

fn chunk_finish(buf: &mut [u8], count: u32, accounted: u64) {
    buf[..4].copy_from_slice(&count.to_le_bytes());
    buf[4..CHUNK_HEADER].copy_from_slice(&accounted.to_le_bytes());
}

/// (count, accounted bytes) of a chunk.
fn chunk_header(v: &[u8]) -> Result<(u64, u64), String> {
    let Some((h, _)) = v.split_first_chunk::<CHUNK_HEADER>() else {
        return Err(format!(
            "chunk of {} bytes is shorter than its header",
            v.len()
        ));
    };
    let mut c = [0u8; 4];
    c.copy_from_slice(&h[..4]);
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[4..]);
    Ok((u64::from(u32::from_le_bytes(c)), u64::from_le_bytes(b)))
}

/// The encoded readings of a chunk, in seq order.
fn chunk_records(v: &[u8]) -> impl Iterator<Item = Result<&[u8], String>> {
    let mut rest = v.get(CHUNK_HEADER..).unwrap_or_default();
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            rest = &[];
            return Some(Err("truncated record length".to_owned()));
        };
        let len = u32::from_le_bytes(*len) as usize;
        if tail.len() < len {
            rest = &[];
            return Some(Err("truncated record".to_owned()));
        }
        let (rec, tail) = tail.split_at(len);
        rest = tail;
        Some(Ok(rec))
    })
}

/// Decodes the reading with `seq` from the chunk starting at `first`.
fn chunk_reading(first: u64, v: &[u8], seq: u64) -> Option<Reading> {
    let idx = usize::try_from(seq.checked_sub(first)?).ok()?;
    let raw = chunk_records(v).nth(idx)?.ok()?;
    postcard::from_bytes(raw).ok()
}

/// A fresh random epoch (never 0).
#[must_use]
pub fn new_epoch() -> u64 {
    rand::thread_rng().gen_range(1..=u64::MAX)
}

/// Options of a [`RedbBuffer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedbOptions {
    /// Budget for stored record bytes. The file itself can be larger (pages, free space).
    pub max_bytes: u64,
    pub policy: FullPolicy,
    /// Most readings committed in one write transaction.
    pub commit_max_readings: usize,
}

impl Default for RedbOptions {
    fn default() -> Self {
        Self {
            max_bytes: 256 * 1024 * 1024,
            policy: FullPolicy::Block,
            commit_max_readings: 10_000,
        }
    }
}

/// Why the buffer file could not be opened. The file is left untouched in every case.
#[derive(Debug, Error)]
pub enum OpenError {
    #[error("cannot create buffer directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("buffer file {path} is locked by another process (is another agent running?)")]
    Locked { path: PathBuf },
    #[error(
        "buffer file {path} is corrupt ({detail}); it was left untouched. Move it aside to \
         start a new epoch (its unsent readings stay in the moved file)"
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error("buffer file {path} is not a breakwater agent buffer of format {FORMAT}: {detail}")]
    WrongFormat { path: PathBuf, detail: String },
    #[error(
        "buffer file {path} has format {found}, written by a newer breakwater-agent; this one \
         reads format {FORMAT} and left the file untouched. Install the newer version again, or \
         stop the agent and move the file aside to start a new epoch (its unsent readings stay \
         in the moved file, readable by the newer version)"
    )]
    NewerFormat { path: PathBuf, found: u64 },
    #[error(
        "buffer file {path} has format {found}, from a development build before release 0.1.0, \
         which this version does not read; it was left untouched. Stop the agent and move the \
         file aside to start a new epoch (readings still in it are not sent)"
    )]
    OlderFormat { path: PathBuf, found: u64 },
    #[error("cannot open buffer file {path}: {detail}")]
    Storage { path: PathBuf, detail: String },
    #[error("cannot start the buffer writer thread: {0}")]
    Thread(std::io::Error),
}

enum Cmd {
    Append {
        records: Vec<(Vec<u8>, u64)>,
        bytes: u64,
        reply: oneshot::Sender<Result<Appended, AppendError>>,
    },
    Ack {
        upto_seq: u64,
        reply: oneshot::Sender<Result<AckOutcome, AckError>>,
    },
}

#[derive(Debug, Clone, Copy)]
struct Shared {
    first_seq: u64,
    next_seq: u64,
    bytes: u64,
    dropped_total: u64,
    oldest_ts: Option<u64>,
}

/// The open database, shared by the writer and readers; `None` while the writer reopens it
/// after a storage error (see "Healing" above).
type DbSlot = RwLock<Option<Arc<Database>>>;

fn slot_get(slot: &DbSlot) -> Option<Arc<Database>> {
    slot.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

fn slot_set(slot: &DbSlot, db: Option<Arc<Database>>) {
    *slot
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = db;
}

/// First and longest wait between reopen attempts after a storage error.
const REOPEN_BACKOFF_MIN: Duration = Duration::from_millis(500);
const REOPEN_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// A storage error within this time after a reopen continues the previous failure.
const RELAPSE_WINDOW: Duration = Duration::from_secs(30);

/// The wait after `attempts` failed reopens: 0.5 s doubling, at most 5 s.
fn reopen_backoff(attempts: u32) -> Duration {
    (REOPEN_BACKOFF_MIN * (1u32 << attempts.min(4))).min(REOPEN_BACKOFF_MAX)
}

/// The durable buffer. Dropping it finishes queued writes and closes the file.
#[derive(Debug)]
pub struct RedbBuffer {
    path: PathBuf,
    epoch: u64,
    db: Arc<DbSlot>,
    health: Arc<Mutex<Option<StorageFailing>>>,
    tx: Option<mpsc::Sender<Cmd>>,
    writer: Option<JoinHandle<()>>,
    shared: Arc<Mutex<Shared>>,
    budget: Arc<Budget>,
    last_seq: watch::Sender<u64>,
}

fn lock(m: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn storage_err(path: &Path, e: impl std::fmt::Display) -> OpenError {
    let detail = e.to_string();
    if detail.to_ascii_lowercase().contains("corrupt") {
        OpenError::Corrupt {
            path: path.to_owned(),
            detail,
        }
    } else {
        OpenError::Storage {
            path: path.to_owned(),
            detail,
        }
    }
}

fn map_db_error(path: &Path, e: redb::DatabaseError) -> OpenError {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => OpenError::Locked {
            path: path.to_owned(),
        },
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(detail)) => OpenError::Corrupt {
            path: path.to_owned(),
            detail,
        },
        redb::DatabaseError::Storage(redb::StorageError::Io(io))
            if io.kind() == std::io::ErrorKind::UnexpectedEof
                || io.kind() == std::io::ErrorKind::InvalidData =>
        {
            OpenError::Corrupt {
                path: path.to_owned(),
                detail: io.to_string(),
            }
        }
        redb::DatabaseError::UpgradeRequired(v) => OpenError::WrongFormat {
            path: path.to_owned(),
            detail: format!("redb file format {v} needs an upgrade"),
        },
        other => storage_err(path, other),
    }
}

/// Opens the buffer file read-write; a new file is created owner-only (0600) whatever the
/// umask, and an existing one readable by others is narrowed to 0600 (readings are the
/// device's data). `create = false` refuses a missing file (a reopen must never start an
/// empty buffer in place of a vanished one).
fn open_owner_only(path: &Path, create: bool) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    let mode = file.metadata()?.permissions().mode();
    if mode & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(mode & 0o700))?;
        tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "buffer file was readable by others; narrowed to owner-only");
    }
    Ok(file)
}

fn oldest_ts(
    table: &impl ReadableTable<u64, &'static [u8]>,
    first_seq: u64,
) -> Result<Option<u64>, redb::StorageError> {
    let mut it = table.range(..=first_seq)?;
    Ok(match it.next_back() {
        Some(item) => {
            let (k, v) = item?;
            chunk_reading(k.value(), v.value(), first_seq).map(|r| r.ts)
        }
        None => None,
    })
}

impl RedbBuffer {
    /// Opens `{dir}/buffer.redb`, creating the directory and a new file (new epoch) if needed.
    ///
    /// Blocking (file I/O); call it at startup or from `spawn_blocking`.
    ///
    /// # Errors
    /// See [`OpenError`]. The file is never modified when opening fails, except that redb may
    /// complete its own crash recovery of an intact file.
    pub fn open(dir: &Path, opts: RedbOptions) -> Result<Self, OpenError> {
        std::fs::create_dir_all(dir).map_err(|source| OpenError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        let file = open_owner_only(&path, true).map_err(|e| OpenError::Storage {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        let db = Database::builder()
            .create_file(file)
            .map_err(|e| map_db_error(&path, e))?;
        let (epoch, shared) = Self::init(&db, &path)?;
        let budget = Arc::new(Budget::new(opts.max_bytes, opts.policy, shared.bytes));
        let last_seq = watch::channel(shared.next_seq - 1).0;
        let shared = Arc::new(Mutex::new(shared));
        let db = Arc::new(db);
        let slot: Arc<DbSlot> = Arc::new(RwLock::new(Some(db.clone())));
        let health = Arc::new(Mutex::new(None));
        let (tx, rx) = mpsc::channel(1024);
        let writer = Writer {
            db: Some(db),
            slot: slot.clone(),
            path: path.clone(),
            epoch,
            health: health.clone(),
            next_reopen: None,
            pending_ack: None,
            recovered_from: None,
            rx,
            shared: shared.clone(),
            budget: budget.clone(),
            last_seq: last_seq.clone(),
            commit_max_readings: opts.commit_max_readings.max(1),
        };
        let handle = std::thread::Builder::new()
            .name("bw-buffer-writer".into())
            .spawn(move || writer.run())
            .map_err(OpenError::Thread)?;
        tracing::info!(path = %path.display(), epoch, next_seq = shared_next(&shared), "buffer open");
        Ok(Self {
            path,
            epoch,
            db: slot,
            health,
            tx: Some(tx),
            writer: Some(handle),
            shared,
            budget,
            last_seq,
        })
    }

    /// The buffer file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn init(db: &Database, path: &Path) -> Result<(u64, Shared), OpenError> {
        let se = |e: redb::Error| storage_err(path, e);
        let txn = db.begin_write().map_err(|e| se(e.into()))?;
        let result = {
            let mut meta = txn.open_table(META).map_err(|e| se(e.into()))?;
            let get = |k: &str| -> Result<Option<u64>, OpenError> {
                Ok(meta.get(k).map_err(|e| se(e.into()))?.map(|v| v.value()))
            };
            let format = get("format")?;
            // Checked before any other table is opened (a newer layout may have changed their
            // types); returning drops the transaction uncommitted, so the file stays as it was.
            // A future FORMAT migrates older formats here, in this transaction;
            // tests/buffer_format.rs opens a buffer written by release 0.1.0.
            match format {
                Some(found) if found > FORMAT => {
                    return Err(OpenError::NewerFormat {
                        path: path.to_owned(),
                        found,
                    })
                }
                Some(found) if found < FORMAT => {
                    return Err(OpenError::OlderFormat {
                        path: path.to_owned(),
                        found,
                    })
                }
                _ => {}
            }
            let readings = txn.open_table(READINGS).map_err(|e| se(e.into()))?;
            match format {
                None => {
                    if readings.len().map_err(|e| se(e.into()))? > 0 {
                        return Err(OpenError::Corrupt {
                            path: path.to_owned(),
                            detail: "readings present but no metadata".into(),
                        });
                    }
                    let epoch = new_epoch();
                    for (k, v) in [
                        ("format", FORMAT),
                        ("epoch", epoch),
                        ("first_seq", 1),
                        ("next_seq", 1),
                        ("bytes", 0),
                        ("dropped_total", 0),
                    ] {
                        meta.insert(k, v).map_err(|e| se(e.into()))?;
                    }
                    (
                        epoch,
                        Shared {
                            first_seq: 1,
                            next_seq: 1,
                            bytes: 0,
                            dropped_total: 0,
                            oldest_ts: None,
                        },
                    )
                }
                // FORMAT: every other format was refused above.
                Some(_) => {
                    let missing = |k: &str| OpenError::Corrupt {
                        path: path.to_owned(),
                        detail: format!("metadata key {k:?} is missing"),
                    };
                    let epoch = get("epoch")?.ok_or_else(|| missing("epoch"))?;
                    let next_seq = get("next_seq")?.ok_or_else(|| missing("next_seq"))?;
                    let bytes = get("bytes")?.ok_or_else(|| missing("bytes"))?;
                    let dropped_total = get("dropped_total")?.unwrap_or(0);
                    let first_seq = get("first_seq")?.ok_or_else(|| missing("first_seq"))?;
                    if epoch == 0 || next_seq == 0 || first_seq > next_seq {
                        return Err(OpenError::Corrupt {
                            path: path.to_owned(),
                            detail: format!(
                                "inconsistent metadata: epoch {epoch}, first_seq {first_seq}, \
                                 next_seq {next_seq}"
                            ),
                        });
                    }
                    // The chunks must cover first_seq..next_seq without a gap.
                    let mut expect: Option<u64> = None;
                    let mut last_end = first_seq;
                    for item in readings.iter().map_err(|e| se(e.into()))? {
                        let (k, v) = item.map_err(|e| se(e.into()))?;
                        let (count, _) =
                            chunk_header(v.value()).map_err(|detail| OpenError::Corrupt {
                                path: path.to_owned(),
                                detail: format!("chunk at seq {}: {detail}", k.value()),
                            })?;
                        let start = k.value();
                        let gap = match expect {
                            None => start > first_seq,
                            Some(e) => start != e,
                        };
                        if gap || count == 0 {
                            return Err(OpenError::Corrupt {
                                path: path.to_owned(),
                                detail: format!(
                                    "chunk at seq {start} (count {count}) leaves a gap \
                                     (expected {})",
                                    expect.unwrap_or(first_seq)
                                ),
                            });
                        }
                        expect = Some(start + count);
                        last_end = start + count;
                    }
                    if first_seq < next_seq && last_end != next_seq {
                        return Err(OpenError::Corrupt {
                            path: path.to_owned(),
                            detail: format!(
                                "stored readings end at seq {} but next_seq is {next_seq}",
                                last_end.saturating_sub(1)
                            ),
                        });
                    }
                    let oldest_ts = if first_seq < next_seq {
                        oldest_ts(&readings, first_seq).map_err(|e| se(e.into()))?
                    } else {
                        None
                    };
                    (
                        epoch,
                        Shared {
                            first_seq,
                            next_seq,
                            bytes,
                            dropped_total,
                            oldest_ts,
                        },
                    )
                }
            }
        };
        txn.commit().map_err(|e| se(e.into()))?;
        Ok(result)
    }

    async fn append_inner(&self, readings: Vec<Reading>) -> Result<Appended, AppendError> {
        if readings.is_empty() {
            return Err(AppendError::Empty);
        }
        let tx = self.tx.as_ref().ok_or(AppendError::Closed)?;
        let mut bytes = 0;
        let records: Vec<(Vec<u8>, u64)> = readings
            .iter()
            .map(|r| {
                let enc = postcard::to_allocvec(r).unwrap_or_default();
                let size = enc.len() as u64 + RECORD_OVERHEAD;
                bytes += size;
                (enc, r.ts)
            })
            .collect();
        self.budget.reserve(bytes).await?;
        let (reply, rx) = oneshot::channel();
        let cmd = Cmd::Append {
            records,
            bytes,
            reply,
        };
        if tx.send(cmd).await.is_err() {
            self.budget.release(bytes);
            return Err(AppendError::Closed);
        }
        // If this future is dropped here the append still completes in the writer.
        rx.await.unwrap_or(Err(AppendError::Closed))
    }

    async fn ack_inner(&self, epoch: u64, upto_seq: u64) -> Result<AckOutcome, AckError> {
        if epoch != self.epoch {
            return Ok(AckOutcome::WrongEpoch {
                ours: self.epoch,
                theirs: epoch,
            });
        }
        if lock(&self.shared).first_seq > upto_seq {
            return Ok(AckOutcome::Deleted {
                deleted: 0,
                upto_seq,
            });
        }
        let tx = self.tx.as_ref().ok_or(AckError::Closed)?;
        let (reply, rx) = oneshot::channel();
        tx.send(Cmd::Ack { upto_seq, reply })
            .await
            .map_err(|_| AckError::Closed)?;
        rx.await.unwrap_or(Err(AckError::Closed))
    }
}

fn shared_next(s: &Mutex<Shared>) -> u64 {
    lock(s).next_seq
}

impl Drop for RedbBuffer {
    fn drop(&mut self) {
        // Closing the channel ends the writer after it committed what was queued.
        self.tx = None;
        if let Some(h) = self.writer.take() {
            let _ = h.join();
        }
    }
}

impl Buffer for RedbBuffer {
    fn epoch(&self) -> u64 {
        self.epoch
    }

    fn append(&self, readings: Vec<Reading>) -> BoxFuture<'_, Result<Appended, AppendError>> {
        Box::pin(self.append_inner(readings))
    }

    fn read(
        &self,
        from_seq: u64,
        max_readings: usize,
        max_bytes: usize,
    ) -> BoxFuture<'_, Result<Vec<(u64, Reading)>, ReadError>> {
        let db = slot_get(&self.db);
        let first_seq = lock(&self.shared).first_seq;
        let failing = self.health();
        Box::pin(async move {
            let Some(db) = db else {
                let why = failing.err().map_or_else(
                    || "the database is being reopened".to_owned(),
                    |f| f.to_string(),
                );
                return Err(ReadError::Storage(why));
            };
            tokio::task::spawn_blocking(move || {
                read_blocking(&db, first_seq, from_seq, max_readings, max_bytes)
            })
            .await
            .map_err(|e| ReadError::Storage(e.to_string()))?
        })
    }

    fn ack(&self, epoch: u64, upto_seq: u64) -> BoxFuture<'_, Result<AckOutcome, AckError>> {
        Box::pin(self.ack_inner(epoch, upto_seq))
    }

    fn stats(&self) -> BufferStats {
        let s = *lock(&self.shared);
        BufferStats {
            epoch: self.epoch,
            first_seq: s.first_seq,
            next_seq: s.next_seq,
            readings: s.next_seq - s.first_seq,
            bytes: s.bytes,
            dropped_total: s.dropped_total,
            oldest_ts: s.oldest_ts,
        }
    }

    fn watch_last_seq(&self) -> watch::Receiver<u64> {
        self.last_seq.subscribe()
    }

    fn health(&self) -> Result<(), StorageFailing> {
        match &*self
            .health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
        {
            None => Ok(()),
            Some(f) => Err(f.clone()),
        }
    }
}

fn read_blocking(
    db: &Database,
    first_seq: u64,
    from_seq: u64,
    max_readings: usize,
    max_bytes: usize,
) -> Result<Vec<(u64, Reading)>, ReadError> {
    let se = |e: redb::Error| ReadError::Storage(e.to_string());
    let txn = db.begin_read().map_err(|e| se(e.into()))?;
    let table = txn.open_table(READINGS).map_err(|e| se(e.into()))?;
    let from = from_seq.max(first_seq);
    // Start at the chunk holding `from` (the last chunk starting at or before it).
    let start = match table.range(..=from).map_err(|e| se(e.into()))?.next_back() {
        Some(item) => item.map_err(|e| se(e.into()))?.0.value(),
        None => from,
    };
    let mut out = Vec::new();
    let mut bytes = 0u64;
    'chunks: for item in table.range(start..).map_err(|e| se(e.into()))? {
        let (k, v) = item.map_err(|e| se(e.into()))?;
        let chunk_first = k.value();
        for (seq, raw) in (chunk_first..).zip(chunk_records(v.value())) {
            let raw = raw.map_err(|detail| ReadError::Corrupt { seq, detail })?;
            if seq < from {
                continue;
            }
            let size = raw.len() as u64 + RECORD_OVERHEAD;
            if out.len() >= max_readings || (!out.is_empty() && bytes + size > max_bytes as u64) {
                break 'chunks;
            }
            bytes += size;
            let r: Reading = postcard::from_bytes(raw).map_err(|e| ReadError::Corrupt {
                seq,
                detail: e.to_string(),
            })?;
            out.push((seq, r));
        }
    }
    Ok(out)
}

struct Writer {
    /// `None` while failing (closed, waiting for the next reopen attempt).
    db: Option<Arc<Database>>,
    slot: Arc<DbSlot>,
    path: PathBuf,
    epoch: u64,
    health: Arc<Mutex<Option<StorageFailing>>>,
    /// Set while failing: when to try the next reopen.
    next_reopen: Option<Instant>,
    /// The highest ack refused while failing, applied once the storage recovers.
    pending_ack: Option<u64>,
    /// The failure that the last reopen ended, and when: a new failure soon after (a disk
    /// that is still nearly full accepts the reopen but not the next append) continues it
    /// (same `since`, growing backoff, no new ERROR line) instead of starting over.
    recovered_from: Option<(StorageFailing, Instant)>,
    rx: mpsc::Receiver<Cmd>,
    shared: Arc<Mutex<Shared>>,
    budget: Arc<Budget>,
    last_seq: watch::Sender<u64>,
    commit_max_readings: usize,
}

/// The result of applying one group of commands to a write transaction.
struct Applied {
    shared: Shared,
    appended: Vec<Appended>,
    acked: Vec<(u64, u64)>,
    freed: u64,
    dropped: u64,
}

impl Writer {
    fn run(mut self) {
        loop {
            let first = if self.next_reopen.is_some() {
                // Failing: poll, so reopen attempts happen also when no command arrives.
                match self.rx.try_recv() {
                    Ok(c) => c,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        self.heal_if_due();
                        if self.next_reopen.is_some() {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        continue;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                }
            } else {
                match self.rx.blocking_recv() {
                    Some(c) => c,
                    None => break,
                }
            };
            let mut cmds = vec![first];
            let mut readings = cmd_len(&cmds[0]);
            while readings < self.commit_max_readings {
                match self.rx.try_recv() {
                    Ok(c) => {
                        readings += cmd_len(&c);
                        cmds.push(c);
                    }
                    Err(_) => break,
                }
            }
            self.heal_if_due();
            if self.next_reopen.is_some() {
                self.refuse(cmds);
            } else {
                self.commit(cmds);
            }
        }
        tracing::debug!("buffer writer stopped");
    }

    fn set_health(&self, h: Option<StorageFailing>) {
        *self
            .health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = h;
    }

    fn failing(&self) -> Option<StorageFailing> {
        self.health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Answers every command at once while the storage is failing; remembers the highest ack.
    fn refuse(&mut self, cmds: Vec<Cmd>) {
        let why = self
            .failing()
            .map_or_else(|| "buffer storage failing".to_owned(), |f| f.to_string());
        let why = format!("{why}; reopening, retry later");
        for cmd in cmds {
            match cmd {
                Cmd::Append { reply, bytes, .. } => {
                    self.budget.release(bytes);
                    let _ = reply.send(Err(AppendError::Storage(why.clone())));
                }
                Cmd::Ack { reply, upto_seq } => {
                    self.pending_ack = Some(self.pending_ack.map_or(upto_seq, |p| p.max(upto_seq)));
                    let _ = reply.send(Err(AckError::Storage(why.clone())));
                }
            }
        }
    }

    /// A commit failed: report it and schedule the reopen (the caller closes the database).
    fn start_failing(&mut self, error: &str) {
        let relapse = self
            .recovered_from
            .take()
            .filter(|(_, at)| at.elapsed() < RELAPSE_WINDOW);
        let wait = if let Some((mut failing, _)) = relapse {
            if failing.reopen_attempts.is_power_of_two() {
                tracing::warn!(
                    path = %self.path.display(),
                    %error,
                    attempts = failing.reopen_attempts,
                    "buffer storage failing again right after a reopen; still retrying"
                );
            }
            failing.error = error.to_owned();
            let wait = reopen_backoff(failing.reopen_attempts);
            self.set_health(Some(failing));
            wait
        } else {
            tracing::error!(
                path = %self.path.display(),
                %error,
                "buffer storage failing: writes are refused until it is reopened (retrying with backoff)"
            );
            self.set_health(Some(StorageFailing {
                error: error.to_owned(),
                since: Instant::now(),
                reopen_attempts: 0,
            }));
            REOPEN_BACKOFF_MIN
        };
        metrics::gauge!("breakwater_agent_buffer_storage_failing").set(1.0);
        self.next_reopen = Some(Instant::now() + wait);
    }

    /// Drops the database handle, waiting (bounded) for readers to let go of theirs, so the
    /// file lock is released for the reopen.
    fn close_db(&mut self) {
        slot_set(&self.slot, None);
        if let Some(db) = self.db.take() {
            let deadline = Instant::now() + Duration::from_secs(2);
            while Arc::strong_count(&db) > 1 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            drop(db);
        }
    }

    /// Tries to reopen when the backoff says so; on success the buffer takes the state found
    /// on disk and applies the ack refused meanwhile.
    fn heal_if_due(&mut self) {
        let Some(at) = self.next_reopen else { return };
        if Instant::now() < at {
            return;
        }
        let Some(mut failing) = self.failing() else {
            self.next_reopen = None;
            return;
        };
        failing.reopen_attempts += 1;
        match self.reopen() {
            Ok(db) => {
                let db = Arc::new(db);
                slot_set(&self.slot, Some(db.clone()));
                self.db = Some(db);
                self.next_reopen = None;
                self.set_health(None);
                self.recovered_from = Some((failing.clone(), Instant::now()));
                metrics::gauge!("breakwater_agent_buffer_storage_failing").set(0.0);
                metrics::counter!("breakwater_agent_buffer_reopens_total").increment(1);
                let s = *lock(&self.shared);
                tracing::warn!(
                    path = %self.path.display(),
                    failed_for = ?failing.since.elapsed(),
                    attempts = failing.reopen_attempts,
                    buffered = s.next_seq - s.first_seq,
                    "buffer storage recovered: reopened, writes accepted again"
                );
                if let Some(upto_seq) = self.pending_ack.take() {
                    // The ack the sender could not apply while failing (cumulative).
                    let (reply, _rx) = oneshot::channel();
                    self.commit(vec![Cmd::Ack { upto_seq, reply }]);
                }
            }
            Err(error) => {
                metrics::counter!("breakwater_agent_buffer_reopen_failures_total").increment(1);
                let wait = reopen_backoff(failing.reopen_attempts);
                if failing.reopen_attempts.is_power_of_two() {
                    tracing::warn!(
                        path = %self.path.display(),
                        %error,
                        attempts = failing.reopen_attempts,
                        "buffer reopen failed; retrying"
                    );
                }
                failing.error = error;
                self.set_health(Some(failing));
                self.next_reopen = Some(Instant::now() + wait);
            }
        }
    }

    /// Opens the file again (never creating it), checks it is the same buffer and adopts the
    /// counters found on disk.
    fn reopen(&mut self) -> Result<Database, String> {
        let file = open_owner_only(&self.path, false).map_err(|e| e.to_string())?;
        let db = Database::builder()
            .create_file(file)
            .map_err(|e| map_db_error(&self.path, e).to_string())?;
        let (epoch, disk) = RedbBuffer::init(&db, &self.path).map_err(|e| e.to_string())?;
        if epoch != self.epoch {
            return Err(format!(
                "{} now holds epoch {epoch}, not {} (was the file replaced?)",
                self.path.display(),
                self.epoch
            ));
        }
        let before = *lock(&self.shared);
        if disk.first_seq != before.first_seq || disk.next_seq != before.next_seq {
            tracing::warn!(
                before_first = before.first_seq,
                before_next = before.next_seq,
                disk_first = disk.first_seq,
                disk_next = disk.next_seq,
                "a failed commit had become durable; the buffer continues from what is on disk"
            );
        }
        *lock(&self.shared) = disk;
        if disk.bytes > before.bytes {
            self.budget.add(disk.bytes - before.bytes);
        } else if disk.bytes < before.bytes {
            self.budget.release(before.bytes - disk.bytes);
        }
        if disk.next_seq != before.next_seq {
            self.last_seq.send_replace(disk.next_seq - 1);
        }
        Ok(db)
    }

    fn commit(&mut self, cmds: Vec<Cmd>) {
        let started = Instant::now();
        let before = *lock(&self.shared);
        match self.apply(&cmds, before) {
            Ok(applied) => {
                *lock(&self.shared) = applied.shared;
                if applied.freed > 0 {
                    self.budget.release(applied.freed);
                }
                if applied.dropped > 0 {
                    metrics::counter!("breakwater_agent_buffer_dropped_readings_total")
                        .increment(applied.dropped);
                    tracing::warn!(
                        dropped = applied.dropped,
                        dropped_total = applied.shared.dropped_total,
                        "buffer full: dropped the oldest readings"
                    );
                }
                let n_appended: u64 = applied
                    .appended
                    .iter()
                    .map(|a| a.last_seq - a.first_seq + 1)
                    .sum();
                metrics::counter!("breakwater_agent_buffer_appended_readings_total")
                    .increment(n_appended);
                metrics::counter!("breakwater_agent_buffer_commits_total").increment(1);
                metrics::histogram!("breakwater_agent_buffer_commit_seconds")
                    .record(started.elapsed().as_secs_f64());
                if n_appended > 0 {
                    self.last_seq.send_replace(applied.shared.next_seq - 1);
                }
                let mut appended = applied.appended.into_iter();
                let mut acked = applied.acked.into_iter();
                for cmd in cmds {
                    match cmd {
                        Cmd::Append { reply, .. } => {
                            if let Some(a) = appended.next() {
                                let _ = reply.send(Ok(a));
                            }
                        }
                        Cmd::Ack { reply, .. } => {
                            if let Some((deleted, upto_seq)) = acked.next() {
                                let _ = reply.send(Ok(AckOutcome::Deleted { deleted, upto_seq }));
                            }
                        }
                    }
                }
            }
            Err(detail) => {
                tracing::error!(error = %detail, "buffer commit failed; callers get an error");
                metrics::counter!("breakwater_agent_buffer_commit_errors_total").increment(1);
                // Health says "failing" before any caller hears of the error.
                self.start_failing(&detail);
                for cmd in cmds {
                    match cmd {
                        Cmd::Append { reply, bytes, .. } => {
                            self.budget.release(bytes);
                            let _ = reply.send(Err(AppendError::Storage(detail.clone())));
                        }
                        Cmd::Ack { reply, upto_seq } => {
                            self.pending_ack =
                                Some(self.pending_ack.map_or(upto_seq, |p| p.max(upto_seq)));
                            let _ = reply.send(Err(AckError::Storage(detail.clone())));
                        }
                    }
                }
                self.close_db();
            }
        }
    }

    fn apply(&self, cmds: &[Cmd], mut s: Shared) -> Result<Applied, String> {
        let e = |e: redb::Error| e.to_string();
        let db = self.db.as_ref().ok_or("buffer database is closed")?;
        let mut txn = db.begin_write().map_err(|x| e(x.into()))?;
        txn.set_durability(Durability::Immediate);
        let mut appended = Vec::new();
        let mut acked = Vec::new();
        let mut freed = 0u64;
        let mut dropped = 0u64;
        {
            let mut table = txn.open_table(READINGS).map_err(|x| e(x.into()))?;
            // Acks first (they refer to what was stored before this group), then one chunk
            // for every append of the group.
            for cmd in cmds {
                if let Cmd::Ack { upto_seq, .. } = cmd {
                    let upto = (*upto_seq).min(s.next_seq - 1);
                    let mut deleted = 0u64;
                    if upto >= s.first_seq {
                        deleted = upto + 1 - s.first_seq;
                        s.first_seq = upto + 1;
                        freed += delete_chunks_before(&mut table, s.first_seq)?;
                    }
                    acked.push((deleted, *upto_seq));
                }
            }
            let group_first = s.next_seq;
            let mut chunk = Vec::new();
            let mut count = 0u32;
            let mut accounted = 0u64;
            for cmd in cmds {
                if let Cmd::Append { records, bytes, .. } = cmd {
                    if chunk.is_empty() {
                        chunk_start(&mut chunk);
                    }
                    let first_seq = s.next_seq;
                    for (enc, _) in records {
                        let len = u32::try_from(enc.len()).map_err(|_| "record too large")?;
                        chunk.extend_from_slice(&len.to_le_bytes());
                        chunk.extend_from_slice(enc);
                        count += 1;
                        s.next_seq += 1;
                    }
                    accounted += bytes;
                    appended.push(Appended {
                        first_seq,
                        last_seq: s.next_seq - 1,
                    });
                }
            }
            if count > 0 {
                chunk_finish(&mut chunk, count, accounted);
                table
                    .insert(group_first, chunk.as_slice())
                    .map_err(|x| e(x.into()))?;
                s.bytes += accounted;
            }
            s.bytes = s.bytes.saturating_sub(freed);
            if self.budget.policy() == FullPolicy::DropOldest {
                while s.bytes > self.budget.max_bytes() {
                    let Some((k, v)) = table.pop_first().map_err(|x| e(x.into()))? else {
                        break;
                    };
                    let (n, size) = chunk_header(v.value())?;
                    let end = k.value() + n;
                    dropped += end.saturating_sub(s.first_seq);
                    s.first_seq = s.first_seq.max(end);
                    s.bytes = s.bytes.saturating_sub(size);
                    freed += size;
                }
                s.dropped_total += dropped;
            }
            if s.first_seq < s.next_seq {
                s.oldest_ts = oldest_ts(&table, s.first_seq).map_err(|x| e(x.into()))?;
            } else {
                s.first_seq = s.next_seq;
                s.oldest_ts = None;
            }
            let mut meta = txn.open_table(META).map_err(|x| e(x.into()))?;
            for (k, v) in [
                ("first_seq", s.first_seq),
                ("next_seq", s.next_seq),
                ("bytes", s.bytes),
                ("dropped_total", s.dropped_total),
            ] {
                meta.insert(k, v).map_err(|x| e(x.into()))?;
            }
        }
        txn.commit().map_err(|x| e(x.into()))?;
        Ok(Applied {
            shared: s,
            appended,
            acked,
            freed,
            dropped,
        })
    }
}

/// Deletes every chunk that ends before `first_seq`; returns their accounted bytes.
fn delete_chunks_before(
    table: &mut redb::Table<'_, u64, &'static [u8]>,
    first_seq: u64,
) -> Result<u64, String> {
    let mut freed = 0u64;
    loop {
        let end_and_size = match table.first().map_err(|x| x.to_string())? {
            Some((k, v)) => {
                let (n, size) = chunk_header(v.value())?;
                (k.value() + n, size)
            }
            None => break,
        };
        if end_and_size.0 > first_seq {
            break;
        }
        table.pop_first().map_err(|x| x.to_string())?;
        freed += end_and_size.1;
    }
    Ok(freed)
}

fn cmd_len(c: &Cmd) -> usize {
    match c {
        Cmd::Append { records, .. } => records.len(),
        Cmd::Ack { .. } => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::super::contract;
    use super::*;

    fn open(dir: &Path, max_bytes: u64, policy: FullPolicy) -> RedbBuffer {
        RedbBuffer::open(
            dir,
            RedbOptions {
                max_bytes,
                policy,
                commit_max_readings: 10_000,
            },
        )
        .unwrap()
    }

    fn one_size() -> u64 {
        postcard::to_allocvec(&contract::reading(1)).unwrap().len() as u64 + RECORD_OVERHEAD
    }

    #[tokio::test]
    async fn contract_appends() {
        let d = tempfile::tempdir().unwrap();
        contract::appends_are_consecutive(&open(d.path(), 1 << 20, FullPolicy::Block)).await;
    }

    #[tokio::test]
    async fn contract_ack() {
        let d = tempfile::tempdir().unwrap();
        contract::ack_deletes_prefix_of_current_epoch_only(&open(
            d.path(),
            1 << 20,
            FullPolicy::Block,
        ))
        .await;
    }

    #[tokio::test]
    async fn contract_block() {
        let d = tempfile::tempdir().unwrap();
        contract::block_policy_waits_for_ack(Arc::new(open(
            d.path(),
            one_size() * 10,
            FullPolicy::Block,
        )))
        .await;
    }

    #[tokio::test]
    async fn contract_drop_oldest() {
        let d = tempfile::tempdir().unwrap();
        let b = open(d.path(), one_size() * 10, FullPolicy::DropOldest);
        contract::drop_oldest_policy_drops_and_counts(&b).await;
        let s = b.stats();
        drop(b);
        // The drop count and the surviving range persist.
        let b = open(d.path(), one_size() * 10, FullPolicy::DropOldest);
        let s2 = b.stats();
        assert_eq!(s, s2);
    }

    #[tokio::test]
    async fn epoch_seq_and_data_persist_across_reopen() {
        let d = tempfile::tempdir().unwrap();
        let b = open(d.path(), 1 << 20, FullPolicy::Block);
        let epoch = b.epoch();
        b.append((1..=5).map(contract::reading).collect())
            .await
            .unwrap();
        b.ack(epoch, 2).await.unwrap();
        let before = b.stats();
        drop(b);
        let b = open(d.path(), 1 << 20, FullPolicy::Block);
        assert_eq!(b.epoch(), epoch);
        assert_eq!(b.stats(), before);
        assert_eq!(*b.watch_last_seq().borrow(), 5);
        let got = b.read(0, 100, usize::MAX).await.unwrap();
        assert_eq!(
            got,
            (3..=5)
                .map(|i| (i, contract::reading(i)))
                .collect::<Vec<_>>()
        );
        assert_eq!(
            b.append(vec![contract::reading(6)])
                .await
                .unwrap()
                .first_seq,
            6
        );
        // A different directory is a different epoch.
        let d2 = tempfile::tempdir().unwrap();
        assert_ne!(open(d2.path(), 1 << 20, FullPolicy::Block).epoch(), epoch);
    }

    #[tokio::test]
    async fn concurrent_appends_share_commits_and_get_distinct_seqs() {
        let d = tempfile::tempdir().unwrap();
        let b = Arc::new(open(d.path(), 1 << 30, FullPolicy::Block));
        let mut tasks = Vec::new();
        for t in 0..16u64 {
            let b = b.clone();
            tasks.push(tokio::spawn(async move {
                let mut seqs = Vec::new();
                for i in 0..50u64 {
                    let a = b
                        .append(vec![contract::reading(t * 1000 + i)])
                        .await
                        .unwrap();
                    seqs.push(a.first_seq);
                }
                seqs
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all.sort_unstable();
        assert_eq!(all, (1..=800).collect::<Vec<_>>());
        assert_eq!(b.stats().readings, 800);
    }

    #[test]
    fn corrupt_file_is_reported_and_left_untouched() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join(FILE_NAME);
        let garbage: Vec<u8> = (0..64 * 1024u32).map(|i| (i * 7 + 3) as u8).collect();
        std::fs::write(&path, &garbage).unwrap();
        let err = RedbBuffer::open(d.path(), RedbOptions::default()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(
            matches!(
                err,
                OpenError::Corrupt { .. }
                    | OpenError::WrongFormat { .. }
                    | OpenError::Storage { .. }
            ),
            "{err:?}"
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            garbage,
            "file must be untouched"
        );
    }

    #[tokio::test]
    async fn second_open_reports_lock() {
        let d = tempfile::tempdir().unwrap();
        let _b = open(d.path(), 1 << 20, FullPolicy::Block);
        let err = RedbBuffer::open(d.path(), RedbOptions::default()).unwrap_err();
        assert!(matches!(err, OpenError::Locked { .. }), "{err:?}");
    }
}

#[cfg(test)]
mod model {
    //! The redb buffer against a trivial model, under random appends, acks and reopens.
    use std::collections::VecDeque;

    use breakwater_protocol::Value;
    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Append(u8),
        Concurrent(u8, u8),
        Ack(u8),
        Read(u8, u8),
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (1u8..20).prop_map(Op::Append),
            2 => (1u8..8, 1u8..8).prop_map(|(a, b)| Op::Concurrent(a, b)),
            3 => any::<u8>().prop_map(Op::Ack),
            2 => (any::<u8>(), 1u8..30).prop_map(|(a, b)| Op::Read(a, b)),
            1 => Just(Op::Reopen),
        ]
    }

    fn r(i: u64) -> Reading {
        Reading::new(format!("m{}", i % 3), Value::I64(i as i64), i)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]
        #[test]
        fn behaves_like_a_queue(ops in proptest::collection::vec(op(), 1..25)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let dir = tempfile::tempdir().unwrap();
                let opts = RedbOptions { max_bytes: 1 << 30, ..RedbOptions::default() };
                let mut b = Arc::new(RedbBuffer::open(dir.path(), opts).unwrap());
                let epoch = b.epoch();
                let mut model: VecDeque<(u64, Reading)> = VecDeque::new();
                let mut next = 1u64;
                let mut counter = 0u64;
                for op in ops {
                    match op {
                        Op::Append(n) => {
                            let rs: Vec<Reading> = (0..u64::from(n)).map(|k| r(counter + k)).collect();
                            counter += u64::from(n);
                            let a = b.append(rs.clone()).await.unwrap();
                            assert_eq!(a.first_seq, next);
                            for x in rs { model.push_back((next, x)); next += 1; }
                        }
                        Op::Concurrent(x, y) => {
                            let (b1, b2) = (b.clone(), b.clone());
                            let r1: Vec<Reading> = (0..u64::from(x)).map(|k| r(counter + k)).collect();
                            counter += u64::from(x);
                            let r2: Vec<Reading> = (0..u64::from(y)).map(|k| r(counter + k)).collect();
                            counter += u64::from(y);
                            let (a1, a2) = tokio::join!(b1.append(r1.clone()), b2.append(r2.clone()));
                            let (a1, a2) = (a1.unwrap(), a2.unwrap());
                            let mut both = vec![(a1.first_seq, r1), (a2.first_seq, r2)];
                            both.sort_by_key(|p| p.0);
                            for (first, rs) in both {
                                assert_eq!(first, next);
                                for x in rs { model.push_back((next, x)); next += 1; }
                            }
                        }
                        Op::Ack(k) => {
                            let upto = (next * u64::from(k)) / 255;
                            b.ack(epoch, upto).await.unwrap();
                            while model.front().is_some_and(|(s, _)| *s <= upto) { model.pop_front(); }
                        }
                        Op::Read(from, max) => {
                            let from = (next * u64::from(from)) / 255;
                            let got = b.read(from, usize::from(max), usize::MAX).await.unwrap();
                            let want: Vec<_> = model.iter().filter(|(s, _)| *s >= from)
                                .take(usize::from(max)).cloned().collect();
                            assert_eq!(got, want);
                        }
                        Op::Reopen => {
                            drop(b);
                            b = Arc::new(RedbBuffer::open(dir.path(), opts).unwrap());
                            assert_eq!(b.epoch(), epoch);
                        }
                    }
                    let s = b.stats();
                    assert_eq!(s.next_seq, next);
                    assert_eq!(s.readings, model.len() as u64);
                    assert_eq!(s.first_seq, model.front().map_or(next, |m| m.0));
                    assert_eq!(s.oldest_ts, model.front().map(|m| m.1.ts));
                }
                let all = b.read(0, usize::MAX, usize::MAX).await.unwrap();
                assert_eq!(all, model.into_iter().collect::<Vec<_>>());
            });
        }
    }
}

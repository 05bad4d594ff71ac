//! The redb spool: where an accepted batch is made durable before its ack (ack mode `spool`),
//! or kept while Kafka does not keep up (ack mode `kafka`; batches Kafka keeps up with skip it,
//! see [`writer`]).
//!
//! # Layout (`{dir}/spool.redb`)
//!
//! * table `batches`: `u64` key -> postcard [`SpoolRecord`]. Keys are assigned by the single
//!   writer in acceptance order, strictly increasing across restarts (the next key is the last
//!   key + 1), so key order is acceptance order and, for each device, seq order.
//! * table `cursors`: device id -> `(epoch, upto)`: the highest seq of that device's epoch that
//!   was ever spooled. Written in the same transaction as the batches. In ack mode `kafka` it
//!   can be behind what was acked (batches that skipped the spool); the sequencer is seeded
//!   accordingly (`sequencer`, "Restart after direct delivery").
//! * table `meta`: `&str` -> `u64`; `"format"` is the layout version ([`FORMAT`]).
//!
//! # Format versions
//!
//! [`Spool::open`] reads `"format"` before it touches anything else. A spool of an older format
//! is migrated in the same transaction (none exists yet: 1 is the first); a spool without the
//! key was written before versions were recorded, has the layout of format 1, and is stamped
//! with it. A spool of a newer format (written by a newer gateway, then downgraded) is refused
//! with [`SpoolError::NewerFormat`] and left untouched. A layout change bumps [`FORMAT`] and
//! adds its migration here; `tests/spool_format.rs` opens a spool written by release 0.1.0
//! (`tests/fixtures/spool-0.1.0/`) to hold every later version to that.
//!
//! # Durability
//!
//! * A batch is durable when the transaction that inserted it has committed with
//!   `Durability::Immediate` (fsync). Only then is it acked (ack mode `spool`) or read by the
//!   Kafka drain, which only sees committed data.
//! * A record is deleted only after Kafka's delivery report for it. Deletes are committed with
//!   the next write transaction.
//! * A crash (kill -9, power loss) loses nothing that was acked: acks follow the fsync (`spool`
//!   mode) or the delivery report (`kafka` mode). It may lose batches accepted but not yet
//!   committed (never acked: the device resends them) and deletes not yet committed (those
//!   records are sent to Kafka again after restart: duplicates, which consumers drop by
//!   `(device, epoch, seq)`).
//!
//! # A failing disk
//!
//! After an I/O error (ENOSPC, EIO) redb refuses every later operation until the database is
//! closed and opened again. The writer then marks the spool failing (`is_failing`: the
//! `breakwater_gateway_spool_failing` gauge, `/readyz` answers 503, an ERROR log line), refuses
//! the batches of the failed commit (not acked: the devices keep and resend them), and
//! [`Spool::reopen`]s it with backoff (100 ms doubling to 5 s) until a commit succeeds again.
//! A failed commit may still have become durable (redb: "may already have become durable"), so
//! the writer reads the next key again after a reopen, and the device's resend is a duplicate
//! at worst. Nothing is acked that is not committed.
//!
//! # Bounds
//!
//! `max_bytes` bounds the sum of the stored record sizes (not the file, which redb grows and
//! reuses). The gateway refuses batches that would pass it; they are not acked, so the devices
//! keep them.

pub mod writer;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use breakwater_protocol::{envelope, Batch, DeviceId, Limits};
use parking_lot::RwLock;
use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use thiserror::Error;

const BATCHES: TableDefinition<u64, &[u8]> = TableDefinition::new("batches");
const CURSORS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("cursors");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Layout version of the spool file (see "Format versions" above).
pub const FORMAT: u64 = 1;

/// redb page cache size.
const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// File name of the spool database inside `[spool] dir`.
pub const FILE_NAME: &str = "spool.redb";

/// One spooled batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoolRecord {
    pub device: String,
    pub epoch: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    /// Gateway clock when the batch was accepted, ms since the Unix epoch.
    pub received_ms: u64,
    /// The batch as a protocol envelope.
    pub payload: Vec<u8>,
    /// The MQTT publish a standard client's batch came from (`None` for an agent's batch).
    /// Last field: records written before it existed decode without it ([`SpoolRecord::decode`]).
    pub origin: Option<MqttOrigin>,
}

/// Where a standard client's batch came from ([`crate::standard`]); the Kafka record carries it
/// in the `bw-source` and `bw-mqtt-*` headers (`breakwater_protocol::kafka`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MqttOrigin {
    /// `json` or `sparkplug`.
    pub source: String,
    /// The publisher's MQTT client id.
    pub client_id: String,
    /// The publish's packet id (not an identity: clients reuse them).
    pub pkid: u16,
    /// The publish's DUP flag (a resend on the same session).
    pub dup: bool,
}

/// The record layout before [`SpoolRecord::origin`] (release 0.1.0).
#[derive(Deserialize)]
struct SpoolRecordV1 {
    device: String,
    epoch: u64,
    first_seq: u64,
    last_seq: u64,
    received_ms: u64,
    payload: Vec<u8>,
}

impl SpoolRecord {
    #[must_use]
    pub fn from_batch(batch: &Batch, payload: Vec<u8>, received_ms: u64) -> Self {
        Self {
            device: batch.device.as_str().to_owned(),
            epoch: batch.epoch,
            first_seq: batch.first_seq,
            last_seq: batch.last_seq(),
            received_ms,
            payload,
            origin: None,
        }
    }

    /// Bytes this record counts against `max_bytes`.
    #[must_use]
    pub fn size(&self) -> u64 {
        let origin = self.origin.as_ref().map_or(0, |o| o.client_id.len() + 16);
        (self.payload.len() + self.device.len() + 40 + origin) as u64
    }

    fn encode(&self) -> Vec<u8> {
        match postcard::to_allocvec(self) {
            Ok(v) => v,
            Err(e) => unreachable!("postcard cannot fail on SpoolRecord: {e}"),
        }
    }

    /// A record of this layout, or of the layout before `origin` (which ends where `origin`
    /// would begin, so it never decodes as this one).
    fn decode(bytes: &[u8]) -> Result<Self, SpoolError> {
        postcard::from_bytes(bytes).or_else(|e| {
            let v1: SpoolRecordV1 =
                postcard::from_bytes(bytes).map_err(|_| SpoolError::Corrupt(e.to_string()))?;
            Ok(Self {
                device: v1.device,
                epoch: v1.epoch,
                first_seq: v1.first_seq,
                last_seq: v1.last_seq,
                received_ms: v1.received_ms,
                payload: v1.payload,
                origin: None,
            })
        })
    }

    /// Decodes the batch.
    ///
    /// # Errors
    /// The stored envelope does not decode (corruption).
    pub fn batch(&self) -> Result<Batch, SpoolError> {
        envelope::decode_batch(&self.payload, &Limits::DEFAULT)
            .map_err(|e| SpoolError::Corrupt(e.to_string()))
    }
}

#[derive(Debug, Error)]
pub enum SpoolError {
    #[error("creating spool directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("spool database: {0}")]
    Db(Box<redb::Error>),
    #[error("corrupt spool record: {0}")]
    Corrupt(String),
    #[error("writing export: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "spool {path} has format {found}, written by a newer breakwater-gateway; this one \
         reads format {FORMAT} and left the file untouched. Install the newer version again, \
         or stop the gateway and move the file aside to start an empty spool (its batches are \
         not lost: the newer version's `spool export` reads them)"
    )]
    NewerFormat { path: PathBuf, found: u64 },
    /// Between closing and reopening the database after an error ([`Spool::reopen`]).
    #[error("spool database is closed, being reopened after an error")]
    Closed,
}

macro_rules! db_err {
    ($e:expr) => {
        $e.map_err(|e| SpoolError::Db(Box::new(e.into())))
    };
}

/// Opens (or creates) the database, checks its format, makes sure both tables exist.
fn open_db(path: &Path) -> Result<Database, SpoolError> {
    // redb's default cache is 1 GiB; the spool is written once and read once, so a small
    // cache keeps the gateway's RSS bounded.
    let db = db_err!(Database::builder().set_cache_size(CACHE_BYTES).create(path))?;
    Spool::check_format(&db, path)?;
    Ok(db)
}

/// What the spool held at start-up, to seed the sequencer.
#[derive(Debug, Default)]
pub struct Recovery {
    /// device -> (epoch, highest spooled seq).
    pub cursors: HashMap<String, (u64, u64)>,
    /// device -> (epoch, [(first, last)]) of the records still in the spool, in key order.
    pub pending: HashMap<String, (u64, Vec<(u64, u64)>)>,
    pub records: u64,
}

/// The open spool, shared by the writer (the only one writing) and the readers.
#[derive(Debug)]
pub struct Spool {
    /// `None` only while [`Spool::reopen`] replaces it.
    db: RwLock<Option<Database>>,
    /// The last commit failed and no commit has succeeded since (see "A failing disk").
    failing: AtomicBool,
    path: PathBuf,
    bytes: AtomicU64,
    records: AtomicU64,
    max_bytes: u64,
}

#[cfg(unix)]
fn owner_only(dir: &Path, file: &Path, dir_created: bool) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if dir_created {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    drop(
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(file)?,
    );
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))
}

#[cfg(not(unix))]
fn owner_only(_: &Path, _: &Path, _: bool) -> std::io::Result<()> {
    Ok(())
}

impl Spool {
    /// Opens (or creates) the spool in `dir` and scans it.
    ///
    /// # Errors
    /// The directory cannot be created, the database cannot be opened (another process holds
    /// it, or it is not a redb file), or a record is corrupt.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<(Arc<Self>, Recovery), SpoolError> {
        let dir_err = |source| SpoolError::Dir {
            path: dir.to_owned(),
            source,
        };
        let created = !dir.exists();
        std::fs::create_dir_all(dir).map_err(dir_err)?;
        let path = dir.join(FILE_NAME);
        // Device data: owner-only whatever the umask (a directory we create is 0700; the file
        // is created 0600 before redb opens it, and an existing one is tightened to 0600).
        owner_only(dir, &path, created).map_err(dir_err)?;
        let db = open_db(&path)?;
        let spool = Self {
            db: RwLock::new(Some(db)),
            failing: AtomicBool::new(false),
            path,
            bytes: AtomicU64::new(0),
            records: AtomicU64::new(0),
            max_bytes,
        };
        let rec = spool.scan()?;
        Ok((Arc::new(spool), rec))
    }

    /// Checks (or stamps, or migrates) the format, and makes sure both data tables exist so
    /// readers never see "table does not exist". Nothing is written unless the format is one
    /// this gateway reads.
    fn check_format(db: &Database, path: &Path) -> Result<(), SpoolError> {
        let txn = db_err!(db.begin_write())?;
        {
            let mut meta = db_err!(txn.open_table(META))?;
            let format = db_err!(meta.get("format"))?.map(|v| v.value());
            match format {
                // New, or written before the format was recorded (the layout of format 1).
                None => {
                    db_err!(meta.insert("format", FORMAT))?;
                }
                Some(FORMAT) => {}
                Some(found) if found > FORMAT => {
                    // Dropping the transaction uncommitted leaves the file as it was.
                    return Err(SpoolError::NewerFormat {
                        path: path.to_owned(),
                        found,
                    });
                }
                // Format 1 is the first; migrations from older formats go here.
                Some(found) => {
                    return Err(SpoolError::Corrupt(format!(
                        "{}: unknown spool format {found}",
                        path.display()
                    )))
                }
            }
            db_err!(txn.open_table(BATCHES))?;
            db_err!(txn.open_table(CURSORS))?;
        }
        db_err!(txn.commit())
    }

    /// Closes the database and opens it again (redb's recovery runs if the last commit broke
    /// off). Readers meanwhile get [`SpoolError::Closed`].
    ///
    /// # Errors
    /// The database cannot be opened again (the disk still fails); it stays closed, call again.
    pub fn reopen(&self) -> Result<(), SpoolError> {
        let mut db = self.db.write();
        // redb holds a lock on the file: the old handle must be gone before the new one opens.
        drop(db.take());
        *db = Some(open_db(&self.path)?);
        Ok(())
    }

    /// Whether the last commit failed (and none succeeded since).
    #[must_use]
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    /// Set by the writer after each commit.
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::Relaxed);
    }

    fn scan(&self) -> Result<Recovery, SpoolError> {
        let mut rec = Recovery::default();
        let db = self.db.read();
        let db = db.as_ref().ok_or(SpoolError::Closed)?;
        let txn = db_err!(db.begin_read())?;
        let cursors = db_err!(txn.open_table(CURSORS))?;
        for item in db_err!(cursors.iter())? {
            let (k, v) = db_err!(item)?;
            rec.cursors.insert(k.value().to_owned(), v.value());
        }
        let batches = db_err!(txn.open_table(BATCHES))?;
        let mut bytes = 0;
        for item in db_err!(batches.iter())? {
            let (_, v) = db_err!(item)?;
            let r = SpoolRecord::decode(v.value())?;
            bytes += r.size();
            rec.records += 1;
            let entry = rec
                .pending
                .entry(r.device.clone())
                .or_insert_with(|| (r.epoch, Vec::new()));
            if entry.0 != r.epoch {
                *entry = (r.epoch, Vec::new());
            }
            entry.1.push((r.first_seq, r.last_seq));
        }
        self.bytes.store(bytes, Ordering::Relaxed);
        self.records.store(rec.records, Ordering::Relaxed);
        Ok(rec)
    }

    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes of records currently stored (including those being written).
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    #[must_use]
    pub fn records(&self) -> u64 {
        self.records.load(Ordering::Relaxed)
    }

    #[must_use]
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Reserves room for `size` bytes; `false` when the spool is full.
    #[must_use]
    pub fn reserve(&self, size: u64) -> bool {
        let mut cur = self.bytes.load(Ordering::Relaxed);
        loop {
            if cur + size > self.max_bytes {
                return false;
            }
            match self.bytes.compare_exchange_weak(
                cur,
                cur + size,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(v) => cur = v,
            }
        }
    }

    /// Returns a reservation that will not be written.
    pub fn release(&self, size: u64) {
        self.bytes.fetch_sub(size, Ordering::Relaxed);
    }

    /// The key the next inserted record must use.
    ///
    /// # Errors
    /// Database errors.
    pub fn next_key(&self) -> Result<u64, SpoolError> {
        let db = self.db.read();
        let db = db.as_ref().ok_or(SpoolError::Closed)?;
        let txn = db_err!(db.begin_read())?;
        let t = db_err!(txn.open_table(BATCHES))?;
        let last = db_err!(t.last())?.map(|(k, _)| k.value());
        Ok(last.map_or(0, |k| k + 1))
    }

    /// One fsync'd transaction: inserts `(key, record)` pairs, advances cursors, deletes `delete`
    /// keys. The record bytes of inserted records must have been [`Self::reserve`]d.
    ///
    /// # Errors
    /// Database errors. On error nothing of this call is durable; the records stay reserved
    /// (the caller releases them).
    pub fn commit(&self, insert: &[(u64, &SpoolRecord)], delete: &[u64]) -> Result<(), SpoolError> {
        let db = self.db.read();
        let db = db.as_ref().ok_or(SpoolError::Closed)?;
        let mut txn = db_err!(db.begin_write())?;
        txn.set_durability(Durability::Immediate);
        let mut freed = 0;
        let mut removed = 0;
        {
            let mut batches = db_err!(txn.open_table(BATCHES))?;
            let mut cursors = db_err!(txn.open_table(CURSORS))?;
            let mut newest: HashMap<&str, (u64, u64)> = HashMap::new();
            for &(key, r) in insert {
                db_err!(batches.insert(key, r.encode().as_slice()))?;
                newest.insert(r.device.as_str(), (r.epoch, r.last_seq));
            }
            for (dev, v) in newest {
                db_err!(cursors.insert(dev, v))?;
            }
            for &key in delete {
                if let Some(old) = db_err!(batches.remove(key))? {
                    freed += SpoolRecord::decode(old.value()).map_or(0, |r| r.size());
                    removed += 1;
                }
            }
        }
        db_err!(txn.commit())?;
        self.bytes.fetch_sub(freed, Ordering::Relaxed);
        self.records
            .fetch_add(insert.len() as u64, Ordering::Relaxed);
        self.records.fetch_sub(removed, Ordering::Relaxed);
        Ok(())
    }

    /// Up to `max` records with key `>= from`, in key order.
    ///
    /// # Errors
    /// Database errors or a corrupt record.
    pub fn read_from(&self, from: u64, max: usize) -> Result<Vec<(u64, SpoolRecord)>, SpoolError> {
        let db = self.db.read();
        let db = db.as_ref().ok_or(SpoolError::Closed)?;
        let txn = db_err!(db.begin_read())?;
        let t = db_err!(txn.open_table(BATCHES))?;
        let mut out = Vec::new();
        for item in db_err!(t.range(from..))? {
            if out.len() >= max {
                break;
            }
            let (k, v) = db_err!(item)?;
            out.push((k.value(), SpoolRecord::decode(v.value())?));
        }
        Ok(out)
    }

    /// Counts the records with key `>= from` into [`Self::bytes`] and [`Self::records`]: the
    /// records of a commit that was reported as failed (its reservations were released) but
    /// became durable, found after a [`Self::reopen`]. Their deletion later subtracts them again.
    ///
    /// # Errors
    /// Database errors or a corrupt record.
    pub fn adopt_from(&self, from: u64) -> Result<u64, SpoolError> {
        let found = self.read_from(from, usize::MAX)?;
        let bytes: u64 = found.iter().map(|(_, r)| r.size()).sum();
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.records
            .fetch_add(found.len() as u64, Ordering::Relaxed);
        Ok(found.len() as u64)
    }

    /// Number of stored records, read from the database.
    ///
    /// # Errors
    /// Database errors.
    pub fn count(&self) -> Result<u64, SpoolError> {
        let db = self.db.read();
        let db = db.as_ref().ok_or(SpoolError::Closed)?;
        let txn = db_err!(db.begin_read())?;
        let t = db_err!(txn.open_table(BATCHES))?;
        db_err!(t.len())
    }
}

/// One line of `spool export`.
#[derive(Debug, Serialize)]
struct ExportLine<'a> {
    key: u64,
    received_ms: u64,
    batch: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

/// Writes every spooled batch to `out` as JSON lines (the protocol's JSON batch shape plus the
/// spool key and receive time). Returns the number of batches written.
///
/// # Errors
/// The spool cannot be opened (for instance while a gateway holds it) or `out` fails.
pub fn export(dir: &Path, out: &mut impl Write) -> Result<u64, SpoolError> {
    let (spool, _) = Spool::open(dir, u64::MAX)?;
    let mut from = 0;
    let mut n = 0;
    loop {
        let chunk = spool.read_from(from, 1024)?;
        let Some(&(last, _)) = chunk.last() else {
            break;
        };
        for (key, r) in chunk {
            let (batch, err) = match r.batch() {
                Ok(b) => (
                    serde_json::from_str(&breakwater_protocol::json::encode_batch(&b))
                        .unwrap_or(serde_json::Value::Null),
                    None,
                ),
                Err(_) => (serde_json::Value::Null, Some("undecodable record")),
            };
            let line = ExportLine {
                key,
                received_ms: r.received_ms,
                batch,
                error: err,
            };
            serde_json::to_writer(&mut *out, &line).map_err(std::io::Error::from)?;
            out.write_all(b"\n")?;
            n += 1;
        }
        from = last + 1;
    }
    out.flush()?;
    Ok(n)
}

/// Cursor positions as device ids, skipping ids that no longer parse.
#[must_use]
pub fn parse_devices<T: Clone>(m: &HashMap<String, T>) -> Vec<(DeviceId, T)> {
    m.iter()
        .filter_map(|(k, v)| DeviceId::parse(k.as_str()).ok().map(|d| (d, v.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use breakwater_protocol::Reading;

    /// A record written before `origin` existed decodes with `origin: None`; one with an
    /// origin round-trips.
    #[test]
    fn records_decode_with_and_without_an_origin() {
        #[derive(Serialize)]
        struct V1<'a> {
            device: &'a str,
            epoch: u64,
            first_seq: u64,
            last_seq: u64,
            received_ms: u64,
            payload: &'a [u8],
        }
        let old = postcard::to_allocvec(&V1 {
            device: "d",
            epoch: 3,
            first_seq: 1,
            last_seq: 2,
            received_ms: 9,
            payload: b"xy",
        })
        .unwrap();
        let r = SpoolRecord::decode(&old).unwrap();
        assert_eq!((r.device.as_str(), r.epoch, r.last_seq), ("d", 3, 2));
        assert_eq!((r.payload.as_slice(), r.origin), (&b"xy"[..], None));
        let mut new = rec("d", 1, 2);
        new.origin = Some(MqttOrigin {
            source: "json".into(),
            client_id: "press-1".into(),
            pkid: 7,
            dup: true,
        });
        assert_eq!(SpoolRecord::decode(&new.encode()).unwrap(), new);
    }

    fn rec(dev: &str, first: u64, n: usize) -> SpoolRecord {
        let b = Batch {
            device: DeviceId::parse(dev).unwrap(),
            epoch: 9,
            first_seq: first,
            readings: (0..n).map(|i| Reading::new("t", i as f64, 5)).collect(),
        };
        SpoolRecord::from_batch(&b, envelope::encode_batch(&b), 77)
    }

    #[cfg(unix)]
    #[test]
    fn spool_is_owner_only_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let base = tempfile::tempdir().unwrap();
        // A world-readable existing file is tightened too.
        let dir = base.path().join("spool");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join(FILE_NAME), b"").unwrap();
        std::fs::set_permissions(dir.join(FILE_NAME), std::fs::Permissions::from_mode(0o666))
            .unwrap();
        drop(Spool::open(&dir, 1 << 30).unwrap());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.join(FILE_NAME)), 0o600);
        let fresh = base.path().join("new/spool");
        drop(Spool::open(&fresh, 1 << 30).unwrap());
        assert_eq!(mode(&fresh), 0o700);
        assert_eq!(mode(&fresh.join(FILE_NAME)), 0o600);
    }

    #[test]
    fn commit_read_delete_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (s, rec0) = Spool::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(rec0.records, 0);
        let a = rec("a", 1, 3);
        let b = rec("b", 1, 2);
        let c = rec("a", 4, 2);
        for r in [&a, &b, &c] {
            assert!(s.reserve(r.size()));
        }
        s.commit(&[(0, &a), (1, &b), (2, &c)], &[]).unwrap();
        let all = s.read_from(0, 10).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[2].1, c);
        s.commit(&[], &[0]).unwrap();
        assert_eq!(s.bytes(), b.size() + c.size());
        assert_eq!(s.next_key().unwrap(), 3);
        drop(s);
        let (s, rec1) = Spool::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(rec1.records, 2);
        assert_eq!(rec1.cursors["a"], (9, 5));
        assert_eq!(rec1.pending["a"], (9, vec![(4, 5)]));
        assert_eq!(s.bytes(), b.size() + c.size());
        let mut out = Vec::new();
        drop(s);
        assert_eq!(export(dir.path(), &mut out).unwrap(), 2);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.lines().next().unwrap().contains(r#""device":"b""#),
            "{text}"
        );
    }

    #[test]
    fn reserve_respects_max_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = Spool::open(dir.path(), 1000).unwrap();
        assert!(s.reserve(600));
        assert!(!s.reserve(600));
        s.release(600);
        assert!(s.reserve(600));
    }
}

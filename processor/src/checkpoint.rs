//! Checkpoints: the processor state and the consumed offsets in one redb write transaction.
//!
//! # Layout (format 3)
//! The device states of a partition are a **snapshot** plus the **deltas** of the checkpoints
//! after it (a log, like an LSM tree's, but the fold is free: the whole state is in memory, so a
//! new snapshot is written from memory, never merged from disk):
//! * `snapshots`: `(partition: i32, chunk: u32)` → postcard `Vec<(device, DeviceState)>`, up to
//!   [`SNAPSHOT_CHUNK`] devices a chunk: the partition's devices as of the snapshot.
//! * `deltas`: `(partition: i32, seq: u64)` → postcard `Vec<(device, Option<DeviceState>)>`: the
//!   devices one checkpoint changed (`None`: evicted), applied in `seq` order over the snapshot.
//! * `layout`: `partition: i32` → `(snapshot bytes, delta bytes, next delta seq, snapshot
//!   devices)`. A checkpoint writes a delta, or a new snapshot (deleting the old one and every
//!   delta) once the deltas would outgrow the snapshot, at most one partition per checkpoint.
//!   So a checkpoint costs what changed (one sequential value per partition), the file holds at
//!   most about twice the state, and loading reads a few large values. (Format 2 kept one B-tree
//!   row per device: a checkpoint of 10,000 scattered devices among 1,000,000 rewrote ~10,000
//!   B-tree pages, 0.2–1.4 s; see the README.)
//! * `partitions`: `partition: i32` → postcard [`PartitionMeta`] (watermarks, fleet baseline).
//! * `offsets`: `(topic: &str, partition: i32)` → next offset to consume (`i64`).
//! * `changelog`: `partition: i32` → `(seq, offset)` of the checkpoint's marker in the Kafka
//!   changelog ([`crate::changelog`]): this copy is current while that marker is the last one.
//! * `info`: `"format"` → `"3"`; `"cache_of"` → whose state this is: group, input topics and
//!   changelog topic ([`Store::bind`]). A copy made for another of them is discarded at
//!   start-up (it is a cache; the changelog it came from still holds it): devices are keyed by
//!   partition number only, so a copy of other input topics would otherwise be mixed in.
//!
//! # What is durable when
//! [`Store::commit`] writes the devices changed since the last commit (tombstones for the ones
//! evicted since), or a whole new snapshot, the partition metadata
//! and the offsets in **one** transaction with `Durability::Immediate` (fsync before `commit`
//! returns). A crash before that leaves the previous checkpoint intact; redb never exposes a
//! half-written transaction. So state and offsets always describe the same point of the input:
//! on restart the processor seeks to the stored offsets and replays what followed, and every
//! record is applied to the state exactly once (exactly-once with respect to the input).
//!
//! The runner commits only after every output produced so far was acknowledged by Kafka (see
//! `run.rs`). Outputs derived from records after the checkpoint may have been written before the
//! crash; the replay writes them again with the same ids (at-least-once output, deduplicated by
//! id downstream). How Kafka transactions would make outputs exactly-once on a real cluster
//! (tansu 0.6 has none) is described in `run.rs`.
//!
//! # Errors
//! A failed commit leaves the previous checkpoint in place (redb: the changes "may already have
//! become durable" only if `commit` returned an error after the fsync, in which case the new
//! checkpoint is whole). The runner treats a failed commit as fatal: it stops without a final
//! checkpoint, and the restart replays from the last good one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use thiserror::Error;

use crate::state::{DeviceState, Partition, PartitionMeta};

const SNAPSHOTS: TableDefinition<(i32, u32), &[u8]> = TableDefinition::new("snapshots");
const DELTAS: TableDefinition<(i32, u64), &[u8]> = TableDefinition::new("deltas");
/// `partition` → (snapshot bytes, delta bytes, next delta seq, snapshot devices).
const LAYOUT: TableDefinition<i32, (u64, u64, u64, u64)> = TableDefinition::new("layout");
const PARTITIONS: TableDefinition<i32, &[u8]> = TableDefinition::new("partitions");
const OFFSETS: TableDefinition<(&str, i32), i64> = TableDefinition::new("offsets");
const INFO: TableDefinition<&str, &str> = TableDefinition::new("info");
/// `partition` → (marker sequence, changelog offset of the marker) of the last checkpoint.
const CHANGELOG: TableDefinition<i32, (u64, i64)> = TableDefinition::new("changelog");
/// 2: device state has `last_seen` instead of the idle `floor` (per-device event time, TTL).
/// 3: snapshot + deltas instead of one row per device.
const FORMAT: &str = "3";
/// Devices per snapshot value.
pub const SNAPSHOT_CHUNK: usize = 16_384;

#[derive(Debug, Error)]
pub enum OpenError {
    #[error("creating state directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("opening state database {path}: {source}")]
    Database {
        path: PathBuf,
        source: redb::DatabaseError,
    },
    #[error("state database {path} has format {found}, this build reads {FORMAT}")]
    Format { path: PathBuf, found: String },
    #[error("initialising state database {path}: {source}")]
    Init {
        path: PathBuf,
        source: Box<redb::Error>,
    },
}

#[derive(Debug, Error)]
pub enum LoadError {
    #[error("reading checkpoint of partition {partition}: {source}")]
    Storage {
        partition: i32,
        source: Box<redb::Error>,
    },
    #[error("decoding checkpointed state of partition {partition} ({what}): {source}")]
    Decode {
        partition: i32,
        what: String,
        source: postcard::Error,
    },
}

#[derive(Debug, Error)]
pub enum CommitError {
    #[error("writing checkpoint: {0}")]
    Storage(#[from] Box<redb::Error>),
    #[error("encoding state of device {device} in partition {partition}: {source}")]
    Encode {
        partition: i32,
        device: String,
        source: postcard::Error,
    },
}

fn storage<E: Into<redb::Error>>(e: E) -> Box<redb::Error> {
    Box::new(e.into())
}

/// True if `tx` sees no partition state at all.
fn is_empty(tx: &redb::WriteTransaction) -> Result<bool, Box<redb::Error>> {
    Ok(tx
        .open_table(SNAPSHOTS)
        .map_err(storage)?
        .is_empty()
        .map_err(storage)?
        && tx
            .open_table(DELTAS)
            .map_err(storage)?
            .is_empty()
            .map_err(storage)?
        && tx
            .open_table(PARTITIONS)
            .map_err(storage)?
            .is_empty()
            .map_err(storage)?
        && tx
            .open_table(OFFSETS)
            .map_err(storage)?
            .is_empty()
            .map_err(storage)?
        && tx
            .open_table(CHANGELOG)
            .map_err(storage)?
            .is_empty()
            .map_err(storage)?)
}

/// Empties every table of partition state.
fn clear_all(tx: &redb::WriteTransaction) -> Result<(), Box<redb::Error>> {
    tx.delete_table(SNAPSHOTS).map_err(storage)?;
    tx.delete_table(DELTAS).map_err(storage)?;
    tx.delete_table(LAYOUT).map_err(storage)?;
    tx.delete_table(PARTITIONS).map_err(storage)?;
    tx.delete_table(OFFSETS).map_err(storage)?;
    tx.delete_table(CHANGELOG).map_err(storage)?;
    tx.open_table(SNAPSHOTS).map_err(storage)?;
    tx.open_table(DELTAS).map_err(storage)?;
    tx.open_table(LAYOUT).map_err(storage)?;
    tx.open_table(PARTITIONS).map_err(storage)?;
    tx.open_table(OFFSETS).map_err(storage)?;
    tx.open_table(CHANGELOG).map_err(storage)?;
    Ok(())
}

/// What [`Store::bind`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bind {
    /// An empty database, now bound.
    Fresh,
    /// Already the cache of this owner.
    Same,
    /// The cache of another owner (`None`: not recorded), now emptied and rebound.
    Discarded { was: Option<String> },
}

/// What a commit wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitStats {
    /// Changed devices (delta), or every device of a partition that got a new snapshot.
    pub devices_written: usize,
    /// Partitions written as a new snapshot rather than a delta.
    pub snapshots: usize,
    /// Encoded state bytes written.
    pub bytes: u64,
    pub duration: Duration,
}

/// One partition's entry in `layout`.
#[derive(Debug, Clone, Copy, Default)]
struct Layout {
    snapshot_bytes: u64,
    delta_bytes: u64,
    next_seq: u64,
    snapshot_devices: u64,
}

impl Layout {
    fn get(
        t: &impl ReadableTable<i32, (u64, u64, u64, u64)>,
        p: i32,
    ) -> Result<Self, Box<redb::Error>> {
        Ok(t.get(p).map_err(storage)?.map_or_else(Self::default, |v| {
            let (snapshot_bytes, delta_bytes, next_seq, snapshot_devices) = v.value();
            Self {
                snapshot_bytes,
                delta_bytes,
                next_seq,
                snapshot_devices,
            }
        }))
    }

    fn value(self) -> (u64, u64, u64, u64) {
        (
            self.snapshot_bytes,
            self.delta_bytes,
            self.next_seq,
            self.snapshot_devices,
        )
    }
}

fn encode_error(partition: i32, device: &str) -> impl FnOnce(postcard::Error) -> CommitError + '_ {
    move |source| CommitError::Encode {
        partition,
        device: device.to_owned(),
        source,
    }
}

/// Deletes partition `id`'s snapshot and deltas.
fn clear_devices(
    snapshots: &mut redb::Table<'_, (i32, u32), &[u8]>,
    deltas: &mut redb::Table<'_, (i32, u64), &[u8]>,
    id: i32,
) -> Result<(), Box<redb::Error>> {
    snapshots
        .retain_in((id, 0)..=(id, u32::MAX), |_, _| false)
        .map_err(storage)?;
    deltas
        .retain_in((id, 0)..=(id, u64::MAX), |_, _| false)
        .map_err(storage)?;
    Ok(())
}

/// Writes `p`'s devices as its new snapshot (the old snapshot and deltas must be gone); returns
/// the layout.
fn write_snapshot(
    snapshots: &mut redb::Table<'_, (i32, u32), &[u8]>,
    p: &Partition,
    next_seq: u64,
) -> Result<Layout, CommitError> {
    let mut bytes = 0u64;
    let mut n = 0u32;
    let mut buf = Vec::new();
    let mut chunk: Vec<(&str, &DeviceState)> =
        Vec::with_capacity(SNAPSHOT_CHUNK.min(p.devices.len()));
    let mut devices = p.devices.iter().peekable();
    while devices.peek().is_some() {
        chunk.clear();
        chunk.extend(
            devices
                .by_ref()
                .take(SNAPSHOT_CHUNK)
                .map(|(d, s)| (d.as_str(), s)),
        );
        buf.clear();
        buf = postcard::to_extend(&chunk, std::mem::take(&mut buf))
            .map_err(encode_error(p.id, chunk[0].0))?;
        snapshots
            .insert((p.id, n), buf.as_slice())
            .map_err(storage)?;
        bytes += buf.len() as u64;
        n += 1;
    }
    Ok(Layout {
        snapshot_bytes: bytes,
        delta_bytes: 0,
        next_seq,
        snapshot_devices: p.devices.len() as u64,
    })
}

/// What loading a partition found.
#[derive(Debug)]
pub struct Loaded {
    pub partition: Partition,
    pub devices: usize,
    pub duration: Duration,
}

/// The state database.
#[derive(Debug)]
pub struct Store {
    db: Database,
    path: PathBuf,
}

impl Store {
    /// Opens (or creates) the database at `path`, creating its directory.
    ///
    /// # Errors
    /// See [`OpenError`]; a database written by another format is refused, never rewritten.
    pub fn open(path: &Path) -> Result<Self, OpenError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| OpenError::Dir {
                path: dir.to_owned(),
                source,
            })?;
        }
        let db = Database::create(path).map_err(|source| OpenError::Database {
            path: path.to_owned(),
            source,
        })?;
        let init = |db: &Database| -> Result<Option<String>, Box<redb::Error>> {
            let tx = db.begin_write().map_err(storage)?;
            let found = {
                let mut info = tx.open_table(INFO).map_err(storage)?;
                let found = info
                    .get("format")
                    .map_err(storage)?
                    .map(|v| v.value().to_owned());
                if found.is_none() {
                    info.insert("format", FORMAT).map_err(storage)?;
                }
                tx.open_table(SNAPSHOTS).map_err(storage)?;
                tx.open_table(DELTAS).map_err(storage)?;
                tx.open_table(LAYOUT).map_err(storage)?;
                tx.open_table(PARTITIONS).map_err(storage)?;
                tx.open_table(OFFSETS).map_err(storage)?;
                tx.open_table(CHANGELOG).map_err(storage)?;
                found
            };
            tx.commit().map_err(storage)?;
            Ok(found)
        };
        match init(&db) {
            Ok(Some(found)) if found != FORMAT => Err(OpenError::Format {
                path: path.to_owned(),
                found,
            }),
            Ok(_) => Ok(Self {
                db,
                path: path.to_owned(),
            }),
            Err(source) => Err(OpenError::Init {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Makes this database the cache of `who` (see the module documentation): unchanged if it
    /// already is, emptied first if it holds anything of someone else.
    ///
    /// # Errors
    /// Storage errors; on error nothing changed.
    pub fn bind(&self, who: &str) -> Result<Bind, Box<redb::Error>> {
        let tx = self.db.begin_write().map_err(storage)?;
        let found = {
            let info = tx.open_table(INFO).map_err(storage)?;
            let v = info.get("cache_of").map_err(storage)?;
            v.map(|v| v.value().to_owned())
        };
        if found.as_deref() == Some(who) {
            tx.abort().map_err(storage)?;
            return Ok(Bind::Same);
        }
        let empty = is_empty(&tx)?;
        if !empty {
            clear_all(&tx)?;
        }
        tx.open_table(INFO)
            .map_err(storage)?
            .insert("cache_of", who)
            .map_err(storage)?;
        tx.commit().map_err(storage)?;
        Ok(if empty {
            Bind::Fresh
        } else {
            Bind::Discarded { was: found }
        })
    }

    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size of the database file, bytes.
    #[must_use]
    pub fn size_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }

    /// Loads partition `id`: its devices, metadata and the offsets of both input topics.
    /// A partition never checkpointed loads empty, with no offsets.
    ///
    /// # Errors
    /// See [`LoadError`].
    pub fn load(
        &self,
        id: i32,
        telemetry_topic: &str,
        events_topic: &str,
    ) -> Result<Loaded, LoadError> {
        let t0 = Instant::now();
        let st = |source: Box<redb::Error>| LoadError::Storage {
            partition: id,
            source,
        };
        let tx = self.db.begin_read().map_err(|e| st(storage(e)))?;
        let layout =
            Layout::get(&tx.open_table(LAYOUT).map_err(|e| st(storage(e)))?, id).map_err(st)?;
        let mut devices =
            HashMap::with_capacity(usize::try_from(layout.snapshot_devices).unwrap_or(0));
        for row in tx
            .open_table(SNAPSHOTS)
            .map_err(|e| st(storage(e)))?
            .range((id, 0)..=(id, u32::MAX))
            .map_err(|e| st(storage(e)))?
        {
            let (k, v) = row.map_err(|e| st(storage(e)))?;
            let chunk: Vec<(String, DeviceState)> =
                postcard::from_bytes(v.value()).map_err(|source| LoadError::Decode {
                    partition: id,
                    what: format!("snapshot chunk {}", k.value().1),
                    source,
                })?;
            devices.extend(chunk);
        }
        for row in tx
            .open_table(DELTAS)
            .map_err(|e| st(storage(e)))?
            .range((id, 0)..=(id, u64::MAX))
            .map_err(|e| st(storage(e)))?
        {
            let (k, v) = row.map_err(|e| st(storage(e)))?;
            let delta: Vec<(String, Option<DeviceState>)> = postcard::from_bytes(v.value())
                .map_err(|source| LoadError::Decode {
                    partition: id,
                    what: format!("delta {}", k.value().1),
                    source,
                })?;
            for (device, state) in delta {
                match state {
                    Some(s) => {
                        devices.insert(device, s);
                    }
                    None => {
                        devices.remove(&device);
                    }
                }
            }
        }
        let meta = match tx
            .open_table(PARTITIONS)
            .map_err(|e| st(storage(e)))?
            .get(id)
            .map_err(|e| st(storage(e)))?
        {
            Some(v) => postcard::from_bytes(v.value()).map_err(|source| LoadError::Decode {
                partition: id,
                what: "partition metadata".to_owned(),
                source,
            })?,
            None => PartitionMeta::default(),
        };
        let offsets = tx.open_table(OFFSETS).map_err(|e| st(storage(e)))?;
        let off = |topic: &str| -> Result<Option<i64>, LoadError> {
            Ok(offsets
                .get((topic, id))
                .map_err(|e| st(storage(e)))?
                .map(|v| v.value()))
        };
        let telemetry_next = off(telemetry_topic)?;
        let events_next = off(events_topic)?;
        let marker = tx
            .open_table(CHANGELOG)
            .map_err(|e| st(storage(e)))?
            .get(id)
            .map_err(|e| st(storage(e)))?
            .map(|v| v.value());
        let n = devices.len();
        let mut partition = Partition::restore(id, meta, devices, telemetry_next, events_next);
        if let Some((seq, off)) = marker {
            partition.changelog_seq = seq;
            partition.changelog_offset = Some(off);
        }
        Ok(Loaded {
            partition,
            devices: n,
            duration: t0.elapsed(),
        })
    }

    /// Commits the changed devices, the metadata and the offsets of `partitions` in one
    /// transaction, then marks them clean.
    ///
    /// # Errors
    /// See [`CommitError`] and the module documentation: on error the previous checkpoint
    /// stands and the partitions stay dirty.
    pub fn commit<'a>(
        &self,
        partitions: impl IntoIterator<Item = &'a mut Partition>,
        telemetry_topic: &str,
        events_topic: &str,
    ) -> Result<CommitStats, CommitError> {
        let t0 = Instant::now();
        let tx = self.db.begin_write().map_err(storage)?;
        let (mut written, mut snapshots_written, mut bytes) = (0, 0, 0u64);
        let mut parts: Vec<&'a mut Partition> = partitions.into_iter().collect();
        {
            let mut snapshots = tx.open_table(SNAPSHOTS).map_err(storage)?;
            let mut deltas = tx.open_table(DELTAS).map_err(storage)?;
            let mut layouts = tx.open_table(LAYOUT).map_err(storage)?;
            let mut metas = tx.open_table(PARTITIONS).map_err(storage)?;
            let mut offsets = tx.open_table(OFFSETS).map_err(storage)?;
            let mut markers = tx.open_table(CHANGELOG).map_err(storage)?;
            let mut buf = Vec::with_capacity(1024);
            for p in &parts {
                if let Some(off) = p.changelog_offset {
                    markers
                        .insert(p.id, (p.changelog_seq, off))
                        .map_err(storage)?;
                }
                let dirty = p.dirty_devices();
                if !dirty.is_empty() {
                    let mut layout = Layout::get(&layouts, p.id)?;
                    let delta: Vec<(&str, Option<&DeviceState>)> = dirty
                        .iter()
                        .map(|d| (d.as_str(), p.devices.get(d)))
                        .collect();
                    buf.clear();
                    buf = postcard::to_extend(&delta, std::mem::take(&mut buf))
                        .map_err(encode_error(p.id, dirty[0].as_str()))?;
                    // A new snapshot once the deltas would outgrow the last one (one partition
                    // per checkpoint, so partitions that grow alike take turns).
                    let snapshot = snapshots_written == 0
                        && layout.delta_bytes + buf.len() as u64 > layout.snapshot_bytes;
                    if snapshot {
                        clear_devices(&mut snapshots, &mut deltas, p.id)?;
                        layout = write_snapshot(&mut snapshots, p, layout.next_seq)?;
                        snapshots_written += 1;
                        written += p.devices.len();
                        bytes += layout.snapshot_bytes;
                    } else {
                        deltas
                            .insert((p.id, layout.next_seq), buf.as_slice())
                            .map_err(storage)?;
                        layout.next_seq += 1;
                        layout.delta_bytes += buf.len() as u64;
                        written += dirty.len();
                        bytes += buf.len() as u64;
                    }
                    layouts.insert(p.id, layout.value()).map_err(storage)?;
                }
                buf.clear();
                buf = postcard::to_extend(&p.meta, std::mem::take(&mut buf))
                    .map_err(encode_error(p.id, ""))?;
                metas.insert(p.id, buf.as_slice()).map_err(storage)?;
                if let Some(o) = p.telemetry_next {
                    offsets
                        .insert((telemetry_topic, p.id), o)
                        .map_err(storage)?;
                }
                if let Some(o) = p.events_next {
                    offsets.insert((events_topic, p.id), o).map_err(storage)?;
                }
            }
        }
        tx.commit().map_err(storage)?;
        for p in &mut parts {
            p.clear_dirty();
        }
        Ok(CommitStats {
            devices_written: written,
            snapshots: snapshots_written,
            bytes,
            duration: t0.elapsed(),
        })
    }

    /// Replaces everything stored for partition `p` by `p` (after a restore from the changelog:
    /// the local copy becomes a cache of it again), in one transaction.
    ///
    /// # Errors
    /// See [`CommitError`]; on error the previous local copy stands.
    pub fn replace_partition(
        &self,
        p: &Partition,
        telemetry_topic: &str,
        events_topic: &str,
    ) -> Result<usize, CommitError> {
        let tx = self.db.begin_write().map_err(storage)?;
        {
            let mut snapshots = tx.open_table(SNAPSHOTS).map_err(storage)?;
            let mut deltas = tx.open_table(DELTAS).map_err(storage)?;
            let mut layouts = tx.open_table(LAYOUT).map_err(storage)?;
            let next_seq = Layout::get(&layouts, p.id)?.next_seq;
            clear_devices(&mut snapshots, &mut deltas, p.id)?;
            let layout = write_snapshot(&mut snapshots, p, next_seq)?;
            layouts.insert(p.id, layout.value()).map_err(storage)?;
            let meta = postcard::to_stdvec(&p.meta).map_err(|source| CommitError::Encode {
                partition: p.id,
                device: String::new(),
                source,
            })?;
            tx.open_table(PARTITIONS)
                .map_err(storage)?
                .insert(p.id, meta.as_slice())
                .map_err(storage)?;
            let mut offsets = tx.open_table(OFFSETS).map_err(storage)?;
            for (topic, next) in [
                (telemetry_topic, p.telemetry_next),
                (events_topic, p.events_next),
            ] {
                match next {
                    Some(o) => offsets.insert((topic, p.id), o).map(|_| ()),
                    None => offsets.remove((topic, p.id)).map(|_| ()),
                }
                .map_err(storage)?;
            }
            let mut markers = tx.open_table(CHANGELOG).map_err(storage)?;
            match p.changelog_offset {
                Some(off) => markers.insert(p.id, (p.changelog_seq, off)).map(|_| ()),
                None => markers.remove(p.id).map(|_| ()),
            }
            .map_err(storage)?;
        }
        tx.commit().map_err(storage)?;
        Ok(p.devices.len())
    }

    /// Devices stored for partition `id` (for tests and diagnostics).
    ///
    /// # Errors
    /// Storage errors.
    pub fn device_count(&self, id: i32) -> Result<u64, LoadError> {
        Ok(self.load(id, "", "")?.devices as u64)
    }
}

#[cfg(test)]
mod tests {
    use breakwater_protocol::{Batch, DeviceId, Reading};

    use super::*;
    use crate::state::{Params, Stats};

    fn batch(dev: &str, first: u64, ts: u64) -> Batch {
        Batch {
            device: DeviceId::parse(dev).unwrap(),
            epoch: 3,
            first_seq: first,
            readings: vec![Reading::new("m", 1.0, ts), Reading::new("n", 2i64, ts)],
        }
    }

    #[test]
    fn commit_and_load_round_trip_only_dirty_devices() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.redb");
        let p = Params::default();
        let mut st = Stats::default();
        let mut out = Vec::new();
        let mut a = Partition::new(2);
        let mut b = Partition::new(3);
        for i in 0..50 {
            a.on_batch(&batch(&format!("a{i}"), 1, 1_000), &p, &mut st, &mut out);
        }
        b.on_batch(&batch("b", 1, 1_000), &p, &mut st, &mut out);
        a.telemetry_next = Some(50);
        a.events_next = Some(7);
        {
            let store = Store::open(&path).unwrap();
            let s = store.commit([&mut a, &mut b], "tel", "ev").unwrap();
            assert_eq!(s.devices_written, 51);
            // Nothing changed: nothing rewritten but the metadata and offsets.
            a.on_batch(&batch("a1", 3, 1_001), &p, &mut st, &mut out);
            a.telemetry_next = Some(51);
            let s = store.commit([&mut a], "tel", "ev").unwrap();
            assert_eq!(s.devices_written, 1);
            assert_eq!(store.device_count(2).unwrap(), 50);
            assert_eq!(store.device_count(3).unwrap(), 1);
        }
        let store = Store::open(&path).unwrap();
        let l = store.load(2, "tel", "ev").unwrap();
        assert_eq!(l.devices, 50);
        assert_eq!(l.partition.telemetry_next, Some(51));
        assert_eq!(l.partition.events_next, Some(7));
        assert_eq!(l.partition.meta, a.meta);
        assert_eq!(l.partition.devices, a.devices);
        assert!(l.partition.dirty_devices().is_empty());
        let empty = store.load(9, "tel", "ev").unwrap();
        assert_eq!((empty.devices, empty.partition.telemetry_next), (0, None));
        // Offsets are per topic name.
        assert_eq!(
            store
                .load(2, "other", "ev")
                .unwrap()
                .partition
                .telemetry_next,
            None
        );
    }

    /// Devices are keyed by partition number only: a copy made for other input topics (or
    /// another changelog) must not be loaded as this one's.
    #[test]
    fn a_copy_of_another_owner_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let (p, mut st, mut out) = (Params::default(), Stats::default(), Vec::new());
        let mut a = Partition::new(0);
        a.on_batch(&batch("a", 1, 1_000), &p, &mut st, &mut out);
        a.telemetry_next = Some(10);
        a.changelog_offset = Some(4);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.bind("one").unwrap(), Bind::Fresh);
        store.commit([&mut a], "tel", "ev").unwrap();
        assert_eq!(store.bind("one").unwrap(), Bind::Same);
        assert_eq!(store.load(0, "tel", "ev").unwrap().devices, 1);
        assert_eq!(
            store.bind("two").unwrap(),
            Bind::Discarded {
                was: Some("one".to_owned())
            }
        );
        let l = store.load(0, "tel", "ev").unwrap();
        assert_eq!(
            (
                l.devices,
                l.partition.telemetry_next,
                l.partition.changelog_offset
            ),
            (0, None, None)
        );
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.bind("two").unwrap(), Bind::Same);
    }

    /// Snapshot + deltas against the in-memory state they must reproduce: after every commit of
    /// random changes and evictions, a reopened store loads exactly the in-memory partitions;
    /// the deltas are folded into new snapshots as they grow (one partition per commit).
    #[test]
    fn snapshots_and_deltas_load_what_was_committed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let (p, mut st, mut out) = (Params::default(), Stats::default(), Vec::new());
        let mut parts = [Partition::new(0), Partition::new(1)];
        let mut seq = [1u64; 200];
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let (mut snapshots, mut deltas) = (0, 0);
        for round in 0..40u64 {
            for _ in 0..rnd(40) + 1 {
                let d = usize::try_from(rnd(200)).unwrap();
                let name = format!("d{d}");
                let part = &mut parts[d % 2];
                if rnd(10) == 0 && part.devices.remove(&name).is_some() {
                    part.mark_changed(&name);
                    continue;
                }
                part.on_batch(&batch(&name, seq[d], 1_000 + round), &p, &mut st, &mut out);
                seq[d] += 2;
            }
            for part in &mut parts {
                part.telemetry_next = Some(i64::try_from(round).unwrap());
            }
            let store = Store::open(&path).unwrap();
            let c = store.commit(parts.iter_mut(), "tel", "ev").unwrap();
            assert!(c.snapshots <= 1, "{c:?}");
            snapshots += c.snapshots;
            deltas += usize::from(c.snapshots == 0 && c.devices_written > 0);
            drop(store);
            let store = Store::open(&path).unwrap();
            for part in &parts {
                let l = store.load(part.id, "tel", "ev").unwrap();
                assert_eq!(l.partition.devices, part.devices, "round {round}");
                assert_eq!(l.partition.telemetry_next, part.telemetry_next);
            }
        }
        assert!(
            snapshots > 4 && deltas > 10,
            "{snapshots} snapshots, {deltas} deltas"
        );
        // Deltas never outgrow the snapshot for long: the file stays small.
        let store = Store::open(&path).unwrap();
        let tx = store.db.begin_read().unwrap();
        for id in 0..2 {
            let l = Layout::get(&tx.open_table(LAYOUT).unwrap(), id).unwrap();
            assert!(l.delta_bytes <= l.snapshot_bytes * 2 + 4096, "{l:?}");
        }
    }

    #[test]
    fn refuses_a_foreign_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(INFO).unwrap().insert("format", "99").unwrap();
            tx.commit().unwrap();
        }
        assert!(matches!(Store::open(&path), Err(OpenError::Format { .. })));
    }
}

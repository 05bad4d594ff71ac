//! Checkpoints: the processor state and the consumed offsets in one redb write transaction.
//!
//! # Layout (format 2)
//! * `devices`: `(partition: i32, device: &str)` → postcard [`DeviceState`].
//! * `partitions`: `partition: i32` → postcard [`PartitionMeta`] (watermarks, fleet baseline).
//! * `offsets`: `(topic: &str, partition: i32)` → next offset to consume (`i64`).
//! * `changelog`: `partition: i32` → `(seq, offset)` of the checkpoint's marker in the Kafka
//!   changelog ([`crate::changelog`]): this copy is current while that marker is the last one.
//! * `info`: `"format"` → `"2"`; `"cache_of"` → whose state this is: group, input topics and
//!   changelog topic ([`Store::bind`]). A copy made for another of them is discarded at
//!   start-up (it is a cache; the changelog it came from still holds it): devices are keyed by
//!   partition number only, so a copy of other input topics would otherwise be mixed in.
//!
//! # What is durable when
//! [`Store::commit`] writes the devices changed since the last commit (and deletes the ones
//! evicted since), the partition metadata
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

const DEVICES: TableDefinition<(i32, &str), &[u8]> = TableDefinition::new("devices");
const PARTITIONS: TableDefinition<i32, &[u8]> = TableDefinition::new("partitions");
const OFFSETS: TableDefinition<(&str, i32), i64> = TableDefinition::new("offsets");
const INFO: TableDefinition<&str, &str> = TableDefinition::new("info");
/// `partition` → (marker sequence, changelog offset of the marker) of the last checkpoint.
const CHANGELOG: TableDefinition<i32, (u64, i64)> = TableDefinition::new("changelog");
/// 2: device state has `last_seen` instead of the idle `floor` (per-device event time, TTL).
const FORMAT: &str = "2";

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
    pub devices_written: usize,
    pub duration: Duration,
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
                tx.open_table(DEVICES).map_err(storage)?;
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
        let empty = tx
            .open_table(DEVICES)
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
                .map_err(storage)?;
        if !empty {
            tx.delete_table(DEVICES).map_err(storage)?;
            tx.delete_table(PARTITIONS).map_err(storage)?;
            tx.delete_table(OFFSETS).map_err(storage)?;
            tx.delete_table(CHANGELOG).map_err(storage)?;
            tx.open_table(DEVICES).map_err(storage)?;
            tx.open_table(PARTITIONS).map_err(storage)?;
            tx.open_table(OFFSETS).map_err(storage)?;
            tx.open_table(CHANGELOG).map_err(storage)?;
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
        let devices_t = tx.open_table(DEVICES).map_err(|e| st(storage(e)))?;
        let mut devices = HashMap::new();
        for row in devices_t
            .range((id, "")..(id.saturating_add(1), ""))
            .map_err(|e| st(storage(e)))?
        {
            let (k, v) = row.map_err(|e| st(storage(e)))?;
            let (_, device) = k.value();
            let state: DeviceState =
                postcard::from_bytes(v.value()).map_err(|source| LoadError::Decode {
                    partition: id,
                    what: format!("device {device}"),
                    source,
                })?;
            devices.insert(device.to_owned(), state);
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
        let mut written = 0;
        let mut parts: Vec<&'a mut Partition> = partitions.into_iter().collect();
        {
            let mut devices = tx.open_table(DEVICES).map_err(storage)?;
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
                for device in p.dirty_devices() {
                    let Some(state) = p.devices.get(device) else {
                        // Evicted since the last checkpoint.
                        devices.remove((p.id, device.as_str())).map_err(storage)?;
                        written += 1;
                        continue;
                    };
                    buf.clear();
                    buf =
                        postcard::to_extend(state, std::mem::take(&mut buf)).map_err(|source| {
                            CommitError::Encode {
                                partition: p.id,
                                device: device.clone(),
                                source,
                            }
                        })?;
                    devices
                        .insert((p.id, device.as_str()), buf.as_slice())
                        .map_err(storage)?;
                    written += 1;
                }
                buf.clear();
                buf = postcard::to_extend(&p.meta, std::mem::take(&mut buf)).map_err(|source| {
                    CommitError::Encode {
                        partition: p.id,
                        device: String::new(),
                        source,
                    }
                })?;
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
            let mut devices = tx.open_table(DEVICES).map_err(storage)?;
            let stale: Vec<String> = devices
                .range((p.id, "")..(p.id.saturating_add(1), ""))
                .map_err(storage)?
                .map(|r| r.map(|(k, _)| k.value().1.to_owned()))
                .collect::<Result<_, _>>()
                .map_err(storage)?;
            for d in stale {
                devices.remove((p.id, d.as_str())).map_err(storage)?;
            }
            let mut buf = Vec::with_capacity(1024);
            for (device, state) in &p.devices {
                buf.clear();
                buf = postcard::to_extend(state, std::mem::take(&mut buf)).map_err(|source| {
                    CommitError::Encode {
                        partition: p.id,
                        device: device.clone(),
                        source,
                    }
                })?;
                devices
                    .insert((p.id, device.as_str()), buf.as_slice())
                    .map_err(storage)?;
            }
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
    pub fn device_count(&self, id: i32) -> Result<u64, Box<redb::Error>> {
        let tx = self.db.begin_read().map_err(storage)?;
        let t = tx.open_table(DEVICES).map_err(storage)?;
        let mut n = 0;
        for row in t
            .range((id, "")..(id.saturating_add(1), ""))
            .map_err(storage)?
        {
            row.map_err(storage)?;
            n += 1;
        }
        Ok(n)
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

//! The state changelog: every checkpoint also writes what changed to a Kafka topic, so any
//! instance can restore a partition it never held. The local redb is a cache of it.
//!
//! # Layout
//! Topic `kafka.changelog_topic`, compacted, with as many partitions as the input topics;
//! changelog partition `p` holds input partition `p`'s state. Keys (UTF-8):
//! * `"{p}/d/{device}"` → postcard [`DeviceState`]; no value (tombstone): evicted.
//! * `"{p}/probe"` → anything: the start-up transaction probe of `kafka.exactly_once`
//!   (`run.rs`); a restore skips it.
//! * `"{p}/m"` → postcard [`Marker`]: a checkpoint is complete. It carries the partition
//!   metadata, the next offsets of both input topics, the number of devices the state holds, a
//!   sequence number (one more than the last owner's) and the [`Owner`]: the consumer group and
//!   the input topics those offsets belong to.
//!
//! # Invariants
//! * A checkpoint produces the changed devices of a partition, then its marker, and commits the
//!   local redb only after Kafka acknowledged all of them (and every output before them). So
//!   the state as of the **last marker** in the changelog is exactly the last checkpoint of
//!   whoever owned the partition, content and offsets together.
//! * Device records after the last marker belong to a checkpoint that did not complete. A
//!   restore ignores them and marks those devices changed, so the new owner's first checkpoint
//!   rewrites them (or their tombstones) before its own marker. Compaction keeps the newest
//!   record per key; if it ran between the incomplete checkpoint and that repair, the committed
//!   value of such a device is gone: the topic is created with `min.compaction.lag.ms` (1 h) so
//!   a repair has that long (a restarted owner repairs from its local redb immediately).
//! * A changelog belongs to one [`Owner`]. A restore that meets a marker of another owner stops
//!   with [`RestoreError::Foreign`]: the same changelog given to another group, or to the same
//!   group pointed at new input topics, would otherwise hand out offsets of other topics, and a
//!   processor seeking to them consumes nothing (or skips what is below them), silently. The
//!   default topic name is per group and input (`config::default_changelog_topic`).
//! * Restore: from the local redb if its marker (sequence and changelog offset) is still in the
//!   changelog, plus whatever markers follow it; otherwise from the changelog alone. A marker's
//!   device count is checked against the restored state.
//! * Without Kafka transactions nothing fences a zombie owner: a revocation that fails to
//!   checkpoint stops the process, but an instance that lost its group membership without
//!   noticing could still write. With `kafka.exactly_once` the changelog records go into the
//!   same transaction as the outputs and offsets (and the reader uses `read_committed`), so an
//!   aborted checkpoint's records are never restored.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::KafkaConfig;
use crate::state::{DeviceState, Partition, PartitionMeta};

/// Whose state a changelog holds: the consumer group and the input topics whose offsets its
/// markers carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub group_id: String,
    pub telemetry_topic: String,
    pub events_topic: String,
}

impl Owner {
    #[must_use]
    pub fn of(cfg: &KafkaConfig) -> Self {
        Self {
            group_id: cfg.group_id.clone(),
            telemetry_topic: cfg.telemetry_topic.clone(),
            events_topic: cfg.events_topic.clone(),
        }
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "group {:?} reading {:?} and {:?}",
            self.group_id, self.telemetry_topic, self.events_topic
        )
    }
}

/// A complete checkpoint of one partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Marker {
    pub seq: u64,
    pub meta: PartitionMeta,
    pub telemetry_next: Option<i64>,
    pub events_next: Option<i64>,
    pub devices: u64,
    pub owner: Owner,
}

#[must_use]
pub fn device_key(partition: i32, device: &str) -> String {
    format!("{partition}/d/{device}")
}

#[must_use]
pub fn marker_key(partition: i32) -> String {
    format!("{partition}/m")
}

/// The key of the start-up transaction probe's record in changelog partition `partition`.
#[must_use]
pub fn probe_key(partition: i32) -> String {
    format!("{partition}/probe")
}

#[derive(Debug, Error)]
pub enum RestoreError {
    #[error("changelog {topic} partition {partition}: {source}")]
    Kafka {
        topic: String,
        partition: i32,
        source: rdkafka::error::KafkaError,
    },
    #[error("changelog partition {partition} offset {offset}: undecodable {what}: {source}")]
    Decode {
        partition: i32,
        offset: i64,
        what: String,
        source: postcard::Error,
    },
    #[error(
        "changelog partition {partition} offset {offset}: key {key:?} is not this partition's"
    )]
    ForeignKey {
        partition: i32,
        offset: i64,
        key: String,
    },
    #[error("changelog partition {partition}: marker {seq} says {want} devices, the restored state has {got}")]
    Count {
        partition: i32,
        seq: u64,
        want: u64,
        got: usize,
    },
    #[error("changelog partition {partition} offset {offset} holds the state of {found}, not of this processor ({want}): a changelog belongs to one group and one pair of input topics (its offsets are theirs); give this processor its own kafka.changelog_topic (by default \"<group_id>-<telemetry_topic>-changelog\")")]
    Foreign {
        partition: i32,
        offset: i64,
        found: Box<Owner>,
        want: Box<Owner>,
    },
    #[error("changelog partition {partition}: not read to its end within {timeout:?}")]
    Timeout { partition: i32, timeout: Duration },
}

/// Rebuilds one partition's state from changelog records, in offset order.
#[derive(Debug)]
pub struct Rebuild {
    partition: i32,
    owner: Owner,
    /// `"{partition}/"`, the prefix of every key.
    prefix: String,
    devices: HashMap<String, DeviceState>,
    /// Device records since the last marker, decoded: `None` = tombstone. A marker commits them.
    pending: HashMap<String, Option<DeviceState>>,
    marker: Option<Marker>,
    marker_offset: Option<i64>,
    /// Records read, markers applied.
    pub records: u64,
    pub markers: u64,
}

/// What a restore produced.
#[derive(Debug)]
pub struct Restored {
    pub partition: Partition,
    /// Devices whose records after the last marker were ignored (an incomplete checkpoint);
    /// they are marked changed in `partition`.
    pub repaired: usize,
    pub records: u64,
    pub markers: u64,
}

impl Rebuild {
    /// Starts from nothing.
    #[must_use]
    pub fn empty(partition: i32, owner: Owner) -> Self {
        Self {
            partition,
            owner,
            prefix: format!("{partition}/"),
            devices: HashMap::new(),
            pending: HashMap::new(),
            marker: None,
            marker_offset: None,
            records: 0,
            markers: 0,
        }
    }

    /// Starts from a local checkpoint whose marker is `seq` at changelog `offset`.
    #[must_use]
    pub fn from_local(p: Partition, seq: u64, offset: i64, owner: Owner) -> Self {
        let marker = Marker {
            seq,
            devices: p.devices.len() as u64,
            meta: p.meta,
            telemetry_next: p.telemetry_next,
            events_next: p.events_next,
            owner: owner.clone(),
        };
        Self {
            partition: p.id,
            owner,
            prefix: format!("{}/", p.id),
            devices: p.devices,
            pending: HashMap::new(),
            marker: Some(marker),
            marker_offset: Some(offset),
            records: 0,
            markers: 0,
        }
    }

    /// Applies one record.
    ///
    /// # Errors
    /// A key of another partition, an undecodable value, a marker of another [`Owner`], a
    /// marker whose device count does not match the state it completes.
    pub fn apply(
        &mut self,
        offset: i64,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), RestoreError> {
        self.records += 1;
        let key = String::from_utf8_lossy(key);
        let foreign = || RestoreError::ForeignKey {
            partition: self.partition,
            offset,
            key: key.to_string(),
        };
        let rest = key.strip_prefix(self.prefix.as_str()).ok_or_else(foreign)?;
        if let Some(device) = rest.strip_prefix("d/") {
            let state = match value {
                None => None,
                Some(bytes) => Some(postcard::from_bytes::<DeviceState>(bytes).map_err(
                    |source| RestoreError::Decode {
                        partition: self.partition,
                        offset,
                        what: format!("device {device}"),
                        source,
                    },
                )?),
            };
            self.pending.insert(device.to_owned(), state);
            return Ok(());
        }
        if rest == "probe" {
            return Ok(());
        }
        if rest != "m" {
            return Err(foreign());
        }
        let Some(value) = value else {
            return Ok(());
        };
        let marker: Marker =
            postcard::from_bytes(value).map_err(|source| RestoreError::Decode {
                partition: self.partition,
                offset,
                what: "marker".to_owned(),
                source,
            })?;
        if marker.owner != self.owner {
            return Err(RestoreError::Foreign {
                partition: self.partition,
                offset,
                found: Box::new(marker.owner),
                want: Box::new(self.owner.clone()),
            });
        }
        if self.devices.is_empty() {
            // The common first marker of a fresh restore: move, do not rehash twice.
            let pending = std::mem::take(&mut self.pending);
            self.devices = pending
                .into_iter()
                .filter_map(|(d, s)| s.map(|s| (d, s)))
                .collect();
        } else {
            self.devices.reserve(self.pending.len());
            for (device, v) in self.pending.drain() {
                match v {
                    None => {
                        self.devices.remove(&device);
                    }
                    Some(state) => {
                        self.devices.insert(device, state);
                    }
                }
            }
        }
        if marker.devices != self.devices.len() as u64 {
            return Err(RestoreError::Count {
                partition: self.partition,
                seq: marker.seq,
                want: marker.devices,
                got: self.devices.len(),
            });
        }
        self.marker = Some(marker);
        self.marker_offset = Some(offset);
        self.markers += 1;
        Ok(())
    }

    /// The state as of the last marker.
    #[must_use]
    pub fn finish(self) -> Restored {
        let (meta, tel, ev, seq) = match self.marker {
            Some(m) => (m.meta, m.telemetry_next, m.events_next, m.seq),
            None => (PartitionMeta::default(), None, None, 0),
        };
        let mut p = Partition::restore(self.partition, meta, self.devices, tel, ev);
        p.changelog_seq = seq;
        p.changelog_offset = self.marker_offset;
        let repaired = self.pending.len();
        for device in self.pending.into_keys() {
            p.mark_changed(&device);
        }
        Restored {
            partition: p,
            repaired,
            records: self.records,
            markers: self.markers,
        }
    }
}

/// Reads changelog partition `p` of `topic` into a state, starting from `local` (the local
/// redb's copy and its marker) when that marker is still in the changelog.
///
/// The end of the log is its high watermark, then a quiet period (`quiet`) with no further
/// record: tansu 0.6 reports high watermarks below the real end, Apache Kafka does not.
///
/// # Errors
/// See [`RestoreError`]; on error nothing is restored and the partition must not be processed.
pub fn restore(
    consumer: &BaseConsumer,
    topic: &str,
    p: i32,
    owner: &Owner,
    local: Option<(Partition, u64, i64)>,
    quiet: Duration,
    timeout: Duration,
) -> Result<Restored, RestoreError> {
    let err = |e: ReadError| e.into_restore(topic, p, timeout);
    let (low, high) = consumer
        .fetch_watermarks(topic, p, Duration::from_secs(10))
        .map_err(|e| err(ReadError::Kafka(e)))?;
    // Try the local copy first: valid if the record at its marker's offset is that marker.
    if let Some((local, seq, off)) = local {
        if off >= low {
            let mut probe = Rebuild::empty(p, owner.clone());
            let mut check = |o: i64, k: &[u8], v: Option<&[u8]>| probe.apply_probe(o, k, v, seq);
            let n = read(
                consumer,
                topic,
                p,
                off,
                high,
                quiet,
                timeout,
                Some(1),
                &mut check,
            )
            .map_err(err)?;
            if n == 1 && probe.marker.as_ref().is_some_and(|m| m.seq == seq) {
                let mut rb = Rebuild::from_local(local, seq, off, owner.clone());
                let mut apply = |o: i64, k: &[u8], v: Option<&[u8]>| rb.apply(o, k, v);
                read(
                    consumer,
                    topic,
                    p,
                    off + 1,
                    high,
                    quiet,
                    timeout,
                    None,
                    &mut apply,
                )
                .map_err(err)?;
                return Ok(rb.finish());
            }
        }
    }
    let mut rb = Rebuild::empty(p, owner.clone());
    let mut apply = |o: i64, k: &[u8], v: Option<&[u8]>| rb.apply(o, k, v);
    read(
        consumer, topic, p, low, high, quiet, timeout, None, &mut apply,
    )
    .map_err(err)?;
    Ok(rb.finish())
}

impl Rebuild {
    /// Only checks that the record is the marker `seq` (the local copy's) of this owner.
    fn apply_probe(
        &mut self,
        offset: i64,
        key: &[u8],
        value: Option<&[u8]>,
        seq: u64,
    ) -> Result<(), RestoreError> {
        if key != marker_key(self.partition).as_bytes() {
            return Ok(());
        }
        if let Some(v) = value {
            if let Ok(m) = postcard::from_bytes::<Marker>(v) {
                if m.seq == seq && m.owner == self.owner {
                    self.marker = Some(m);
                    self.marker_offset = Some(offset);
                }
            }
        }
        Ok(())
    }
}

/// Called with each record's offset, key and value (`None`: tombstone).
type Apply<'a> = dyn FnMut(i64, &[u8], Option<&[u8]>) -> Result<(), RestoreError> + 'a;

enum ReadError {
    Kafka(rdkafka::error::KafkaError),
    Restore(RestoreError),
    Timeout,
}

impl ReadError {
    fn into_restore(self, topic: &str, partition: i32, timeout: Duration) -> RestoreError {
        match self {
            Self::Kafka(source) => RestoreError::Kafka {
                topic: topic.to_owned(),
                partition,
                source,
            },
            Self::Restore(e) => e,
            Self::Timeout => RestoreError::Timeout { partition, timeout },
        }
    }
}

/// Reads `topic`/`p` from `from` until the end (see [`restore`]) or `limit` records; returns
/// how many it read.
#[allow(clippy::too_many_arguments)]
fn read(
    consumer: &BaseConsumer,
    topic: &str,
    p: i32,
    from: i64,
    high: i64,
    quiet: Duration,
    timeout: Duration,
    limit: Option<u64>,
    f: &mut Apply<'_>,
) -> Result<u64, ReadError> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, p, Offset::Offset(from))
        .map_err(ReadError::Kafka)?;
    consumer.assign(&tpl).map_err(ReadError::Kafka)?;
    let deadline = Instant::now() + timeout;
    let mut next = from;
    let mut n = 0;
    let mut last_record = Instant::now();
    loop {
        if limit.is_some_and(|l| n >= l) {
            break;
        }
        if next >= high && last_record.elapsed() >= quiet {
            break;
        }
        if Instant::now() >= deadline {
            return Err(ReadError::Timeout);
        }
        match consumer.poll(Duration::from_millis(50)) {
            Some(Ok(m)) => {
                if m.offset() < next {
                    continue;
                }
                next = m.offset() + 1;
                n += 1;
                last_record = Instant::now();
                f(m.offset(), m.key().unwrap_or_default(), m.payload())
                    .map_err(ReadError::Restore)?;
            }
            Some(Err(e)) if crate::kafka::is_benign(&e) => {}
            Some(Err(e)) => return Err(ReadError::Kafka(e)),
            None => {
                // A transaction's commit marker takes an offset (often the last one) but is
                // never returned; librdkafka moves the position past it. Without this, a
                // changelog written in transactions never reaches `high` and the read waits
                // for `timeout`.
                next = next.max(position(consumer, topic, p).unwrap_or(next));
            }
        }
    }
    let _ = consumer.unassign();
    Ok(n)
}

/// The consumer's position in `topic` partition `p` (the next offset it returns), if known.
fn position(consumer: &BaseConsumer, topic: &str, p: i32) -> Option<i64> {
    let tpl = consumer.position().ok()?;
    match tpl.find_partition(topic, p)?.offset() {
        Offset::Offset(o) => Some(o),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use breakwater_protocol::{Batch, DeviceId, Reading};

    use super::*;
    use crate::state::{Params, Stats};

    fn state_with(devices: &[&str]) -> Partition {
        let p = Params::default();
        let mut part = Partition::new(3);
        let (mut st, mut out) = (Stats::default(), Vec::new());
        for (i, d) in devices.iter().enumerate() {
            let b = Batch {
                device: DeviceId::parse(*d).unwrap(),
                epoch: 1,
                first_seq: 1,
                readings: vec![Reading::new("m", i as f64, 1_000 + i as u64)],
            };
            part.on_batch(&b, &p, &mut st, &mut out);
        }
        part
    }

    fn marker(p: &Partition, seq: u64) -> Vec<u8> {
        postcard::to_stdvec(&Marker {
            seq,
            meta: p.meta.clone(),
            telemetry_next: Some(10 * seq as i64),
            events_next: Some(seq as i64),
            devices: p.devices.len() as u64,
            owner: owner(),
        })
        .unwrap()
    }

    fn owner() -> Owner {
        Owner {
            group_id: "g".to_owned(),
            telemetry_topic: "tel".to_owned(),
            events_topic: "ev".to_owned(),
        }
    }

    fn dev(p: &Partition, d: &str) -> Vec<u8> {
        postcard::to_stdvec(&p.devices[d]).unwrap()
    }

    #[test]
    fn the_state_as_of_the_last_marker_and_repairs_after_it() {
        let s1 = state_with(&["a", "b"]);
        let s2 = state_with(&["a", "b", "c"]);
        let mut rb = Rebuild::empty(3, owner());
        let k = |d: &str| device_key(3, d).into_bytes();
        let m = marker_key(3).into_bytes();
        rb.apply(0, &k("a"), Some(&dev(&s1, "a"))).unwrap();
        rb.apply(1, &k("b"), Some(&dev(&s1, "b"))).unwrap();
        rb.apply(2, &m, Some(&marker(&s1, 1))).unwrap();
        rb.apply(3, &k("c"), Some(&dev(&s2, "c"))).unwrap();
        rb.apply(4, &k("b"), None).unwrap();
        // Marker 2 is a state of a, c: b was evicted.
        let mut s3 = state_with(&["a", "c"]);
        s3.devices.insert("c".to_owned(), s2.devices["c"].clone());
        rb.apply(5, &m, Some(&marker(&s3, 2))).unwrap();
        // An incomplete checkpoint: a changed, d added, no marker.
        rb.apply(6, &k("a"), Some(&dev(&s2, "c"))).unwrap();
        rb.apply(7, &k("d"), Some(&dev(&s2, "c"))).unwrap();
        let r = rb.finish();
        assert_eq!((r.records, r.markers, r.repaired), (8, 2, 2));
        let p = r.partition;
        assert_eq!(p.telemetry_next, Some(20));
        assert_eq!(p.events_next, Some(2));
        assert_eq!(p.changelog_seq, 2);
        assert_eq!(p.changelog_offset, Some(5));
        let mut keys: Vec<&String> = p.devices.keys().collect();
        keys.sort();
        assert_eq!(keys, ["a", "c"]);
        assert_eq!(
            dev(&p, "a"),
            dev(&s1, "a"),
            "the committed a, not the unmarked one"
        );
        assert_eq!(dev(&p, "c"), dev(&s2, "c"));
        let mut changed = p.dirty_devices().to_vec();
        changed.sort();
        assert_eq!(
            changed,
            ["a", "d"],
            "rewritten (a) or deleted (d) by the next checkpoint"
        );
    }

    /// The start-up transaction probe's record (`run.rs`) sits between checkpoints of
    /// partition 0 and changes nothing; another partition's probe key is still foreign.
    #[test]
    fn a_probe_record_is_skipped_and_only_in_its_partition() {
        let s1 = state_with(&["a", "b"]);
        let mut rb = Rebuild::empty(3, owner());
        let m = marker_key(3).into_bytes();
        rb.apply(0, probe_key(3).as_bytes(), Some(b"transaction probe"))
            .unwrap();
        rb.apply(1, device_key(3, "a").as_bytes(), Some(&dev(&s1, "a")))
            .unwrap();
        rb.apply(2, probe_key(3).as_bytes(), Some(b"transaction probe"))
            .unwrap();
        rb.apply(3, device_key(3, "b").as_bytes(), Some(&dev(&s1, "b")))
            .unwrap();
        rb.apply(4, &m, Some(&marker(&s1, 1))).unwrap();
        let r = rb.finish();
        assert_eq!((r.records, r.markers, r.repaired), (5, 1, 0));
        assert_eq!(r.partition.devices.len(), 2);
        let mut rb = Rebuild::empty(3, owner());
        assert!(matches!(
            rb.apply(0, probe_key(4).as_bytes(), Some(b"x")),
            Err(RestoreError::ForeignKey { .. })
        ));
    }

    /// A local copy that lost its last commits (redb commits without fsync) is brought forward
    /// by the changelog's later markers.
    #[test]
    fn a_stale_local_copy_is_brought_forward_by_later_markers() {
        let mut s1 = state_with(&["a", "b"]);
        s1.clear_dirty();
        let s2 = state_with(&["a", "b", "c"]);
        let k = |d: &str| device_key(3, d).into_bytes();
        let m = marker_key(3).into_bytes();
        let mut rb = Rebuild::from_local(s1, 1, 2, owner());
        rb.apply(3, &k("c"), Some(&dev(&s2, "c"))).unwrap();
        rb.apply(4, &k("b"), None).unwrap();
        let mut s3 = state_with(&["a", "c"]);
        s3.devices.insert("c".to_owned(), s2.devices["c"].clone());
        rb.apply(5, &m, Some(&marker(&s3, 2))).unwrap();
        let r = rb.finish();
        assert_eq!((r.markers, r.repaired), (1, 0));
        let mut keys: Vec<&String> = r.partition.devices.keys().collect();
        keys.sort();
        assert_eq!(keys, ["a", "c"]);
        assert_eq!(dev(&r.partition, "c"), dev(&s2, "c"));
        assert_eq!(
            (
                r.partition.changelog_seq,
                r.partition.changelog_offset,
                r.partition.telemetry_next
            ),
            (2, Some(5), Some(20))
        );
    }

    #[test]
    fn a_marker_that_disagrees_with_the_state_and_foreign_keys_are_errors() {
        let s1 = state_with(&["a", "b"]);
        let mut rb = Rebuild::empty(3, owner());
        rb.apply(0, device_key(3, "a").as_bytes(), Some(&dev(&s1, "a")))
            .unwrap();
        assert!(matches!(
            rb.apply(1, marker_key(3).as_bytes(), Some(&marker(&s1, 1))),
            Err(RestoreError::Count {
                want: 2,
                got: 1,
                ..
            })
        ));
        assert!(matches!(
            rb.apply(2, device_key(4, "a").as_bytes(), None),
            Err(RestoreError::ForeignKey { .. })
        ));
        assert!(matches!(
            rb.apply(3, marker_key(3).as_bytes(), Some(b"\xff\xff")),
            Err(RestoreError::Decode { .. })
        ));
    }

    /// The same changelog topic given to a processor of other input topics (or another group):
    /// refused at the first marker, never restored (its offsets are another topic's).
    #[test]
    fn a_marker_of_another_owner_is_refused() {
        let s1 = state_with(&["a"]);
        for other in [
            Owner {
                telemetry_topic: "tel2".to_owned(),
                ..owner()
            },
            Owner {
                events_topic: "ev2".to_owned(),
                ..owner()
            },
            Owner {
                group_id: "g2".to_owned(),
                ..owner()
            },
        ] {
            let mut rb = Rebuild::empty(3, other.clone());
            rb.apply(0, device_key(3, "a").as_bytes(), Some(&dev(&s1, "a")))
                .unwrap();
            let e = rb
                .apply(1, marker_key(3).as_bytes(), Some(&marker(&s1, 1)))
                .unwrap_err();
            assert!(
                matches!(&e, RestoreError::Foreign { found, want, offset: 1, .. } if **found == owner() && **want == other),
                "{e}"
            );
            assert!(e.to_string().contains("kafka.changelog_topic"), "{e}");
        }
        // A local copy's marker probe does not accept another owner's marker either.
        let mut probe = Rebuild::empty(
            3,
            Owner {
                telemetry_topic: "tel2".to_owned(),
                ..owner()
            },
        );
        probe
            .apply_probe(5, marker_key(3).as_bytes(), Some(&marker(&s1, 1)), 1)
            .unwrap();
        assert!(probe.marker.is_none());
    }
}

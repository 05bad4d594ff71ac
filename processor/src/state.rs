//! The pure core: per-partition state and what one batch or fleet event does to it.
//!
//! A [`Partition`] holds the state of the devices whose records land in one input partition
//! (telemetry partition `p` and events partition `p`: both topics are keyed by device and have
//! the same partition count, so a device's batches and events share `p`). Nothing here touches
//! Kafka or the disk; `run.rs` feeds records in and writes [`Output`]s out, `checkpoint.rs`
//! persists the state.
//!
//! # Order of work for one batch
//! 1. Dedupe by `(device, epoch, seq)` ([`crate::dedupe`]); repeats are counted and skipped.
//! 2. For each new reading, the late test: `ts < watermark`. Watermarks are **per device**:
//!    `max(device's newest event time - allowed_lateness, idle floor)`. Per device, because
//!    agents store and forward: a device back from an hour offline sends an hour of backlog,
//!    which a partition-wide watermark would drop wholesale. The idle floor is the partition's
//!    newest event time minus `allowed_lateness + idle_timeout`: it closes the windows and
//!    sessions of devices that went quiet, and bounds how far behind the partition a device's
//!    data may arrive. Late readings are counted and dropped (from sessions, windows and the
//!    baseline alike).
//! 3. Activity session ([`crate::session`]), connectivity session reading count.
//! 4. Numeric readings (`i64`, `f64`): the (device, metric) window ([`crate::window`]) and the
//!    anomaly test against the baseline ([`crate::anomaly`]). `bool` and string readings count in
//!    sessions only.
//! 5. After the batch, the device's windows and activity sessions that its watermark closed are
//!    emitted. When the partition's idle floor has advanced by `scan_interval` since the last
//!    scan, every device's floor is raised to it and what that closes is emitted. Scans are
//!    triggered by event time in the stream, never by the wall clock, so a replay scans at the
//!    same points.
//!
//! Given the same state and the same sequence of records of one topic-partition, the outputs
//! derived from it are the same records with the same ids. (The one exception is the
//! `readings` count of connectivity sessions; see `session.rs`.)

use std::collections::HashMap;

use breakwater_protocol::kafka::{FleetEvent, FleetEventKind};
use breakwater_protocol::{Batch, CompactString, Value};
use serde::{Deserialize, Serialize};

use crate::anomaly::{self, ConnectWindows, Ewma, FleetParams, MetricParams};
use crate::dedupe::{Admit, Dedupe};
use crate::ids::IdHasher;
use crate::output::{AnomalyRecord, EndReason, Output, WindowRecord};
use crate::session::{self, Activity, ConnChange, Connectivity};
use crate::window::MetricWindows;

/// Everything the core needs to know from the configuration. Times in ms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    pub window: u64,
    pub allowed_lateness: u64,
    /// How far behind its partition's newest event time a device may fall before its windows
    /// and sessions are closed anyway (and its older data counts as late).
    pub idle_timeout: u64,
    pub inactivity_gap: u64,
    pub metric: MetricParams,
    pub fleet: FleetParams,
    /// Emit window aggregates (they are computed either way).
    pub emit_windows: bool,
    /// Readings more than this after their Kafka record's timestamp are dropped (device clock
    /// in the future).
    pub max_future_skew: u64,
    /// Metrics tracked per device; readings of further metrics count in sessions only.
    pub max_metrics_per_device: usize,
}

impl Params {
    /// Event time between two scans for closed windows and idle sessions.
    #[must_use]
    pub fn scan_interval(&self) -> u64 {
        (self.window.min(self.inactivity_gap) / 4).max(1)
    }
}

impl Default for Params {
    fn default() -> Self {
        Self {
            window: 60_000,
            allowed_lateness: 30_000,
            idle_timeout: 600_000,
            inactivity_gap: 300_000,
            metric: MetricParams {
                alpha: 0.05,
                k: 4.0,
                warmup: 30,
                min_stddev: 1e-3,
            },
            fleet: FleetParams {
                window: 10_000,
                alpha: 0.1,
                k: 6.0,
                warmup: 6,
                min_connects: 20,
            },
            emit_windows: true,
            max_future_skew: 300_000,
            max_metrics_per_device: 64,
        }
    }
}

/// Counters of what the core did. Monotonic; the runner turns them into metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub batches: u64,
    pub duplicate_batches: u64,
    pub readings: u64,
    pub duplicate_readings: u64,
    pub gap_readings: u64,
    pub late_readings: u64,
    pub future_readings: u64,
    pub non_numeric_readings: u64,
    pub untracked_metric_readings: u64,
    pub events: u64,
    pub late_events: u64,
    pub unmatched_ends: u64,
    pub windows_closed: u64,
    pub sessions_closed: u64,
    pub anomalies: u64,
}

/// Window and baseline of one (device, metric).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricState {
    pub name: CompactString,
    pub windows: MetricWindows,
    pub baseline: Ewma,
}

/// Everything the processor remembers about one device.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceState {
    pub dedupe: Dedupe,
    pub conn: Option<Connectivity>,
    pub activity: Activity,
    pub metrics: Vec<MetricState>,
    /// Newest reading timestamp admitted.
    pub max_ts: u64,
    /// Idle floor: readings older than this are late (raised by partition scans).
    pub floor: u64,
    /// Changed since the last checkpoint.
    #[serde(skip)]
    dirty: bool,
}

/// Per-partition state that is not per device.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PartitionMeta {
    /// Newest reading timestamp admitted in the partition.
    pub max_ts: u64,
    /// Scan (raise every device's floor) once the idle floor reaches this.
    pub next_scan: u64,
    /// Highest fleet-event gateway timestamp seen.
    pub events_max_ts: u64,
    pub connects: ConnectWindows,
}

/// The state of one input partition.
#[derive(Debug, Default)]
pub struct Partition {
    pub id: i32,
    pub devices: HashMap<String, DeviceState>,
    pub meta: PartitionMeta,
    /// Next offsets to consume, `None` when nothing was consumed or checkpointed yet.
    pub telemetry_next: Option<i64>,
    pub events_next: Option<i64>,
    dirty: Vec<String>,
}

fn device_mut<'a>(
    devices: &'a mut HashMap<String, DeviceState>,
    dirty: &mut Vec<String>,
    device: &str,
) -> &'a mut DeviceState {
    // Look up first: the common case must not allocate a key.
    if !devices.contains_key(device) {
        devices.insert(device.to_owned(), DeviceState::default());
    }
    let d = devices
        .get_mut(device)
        .unwrap_or_else(|| unreachable!("inserted above"));
    if !d.dirty {
        d.dirty = true;
        dirty.push(device.to_owned());
    }
    d
}

#[inline]
fn numeric(v: &Value) -> Option<f64> {
    match v {
        #[allow(clippy::cast_precision_loss)]
        Value::I64(i) => Some(*i as f64),
        Value::F64(f) if f.is_finite() => Some(*f),
        _ => None,
    }
}

impl DeviceState {
    /// Readings older than this are late.
    #[inline]
    #[must_use]
    pub fn watermark(&self, p: &Params) -> u64 {
        self.max_ts
            .saturating_sub(p.allowed_lateness)
            .max(self.floor)
    }
}

/// Emits the windows and activity sessions of one device that watermark `wm` closed.
fn close_device(
    device: &str,
    d: &mut DeviceState,
    wm: u64,
    p: &Params,
    st: &mut Stats,
    out: &mut Vec<Output>,
) {
    for m in &mut d.metrics {
        m.windows.close(wm, p.window, |start, w| {
            st.windows_closed += 1;
            if p.emit_windows {
                out.push(Output::Window(WindowRecord {
                    id: IdHasher::new("window")
                        .str(device)
                        .str(&m.name)
                        .u64(start)
                        .finish(),
                    device: device.to_owned(),
                    metric: m.name.to_string(),
                    start,
                    end: start + p.window,
                    count: w.count,
                    min: w.min,
                    max: w.max,
                    mean: w.mean,
                    stddev: w.stddev(),
                }));
            }
        });
    }
    d.activity.close(wm, p.inactivity_gap, |r| {
        st.sessions_closed += 1;
        out.push(Output::Session(r.record(device)));
    });
}

impl Partition {
    #[must_use]
    pub fn new(id: i32) -> Self {
        Self {
            id,
            ..Self::default()
        }
    }

    /// Restores a partition from checkpointed parts (all devices clean).
    #[must_use]
    pub fn restore(
        id: i32,
        meta: PartitionMeta,
        devices: HashMap<String, DeviceState>,
        telemetry_next: Option<i64>,
        events_next: Option<i64>,
    ) -> Self {
        Self {
            id,
            devices,
            meta,
            telemetry_next,
            events_next,
            dirty: Vec::new(),
        }
    }

    /// The partition's idle floor: no device's watermark is below it.
    #[must_use]
    pub fn idle_floor(&self, p: &Params) -> u64 {
        self.meta
            .max_ts
            .saturating_sub(p.allowed_lateness.saturating_add(p.idle_timeout))
    }

    /// True if every reading of `epoch`, `first..=last` of `device` was admitted before: the
    /// runner skips such a record without decoding its value (headers suffice).
    #[must_use]
    pub fn is_duplicate(&self, device: &str, epoch: u64, last: u64) -> bool {
        self.devices
            .get(device)
            .is_some_and(|d| d.dedupe.clone().admit(epoch, last, last) == Admit::Duplicate)
    }

    /// Processes one telemetry batch with no bound on its event times (see [`Self::on_batch_at`]).
    pub fn on_batch(&mut self, batch: &Batch, p: &Params, st: &mut Stats, out: &mut Vec<Output>) {
        self.on_batch_at(batch, None, p, st, out);
    }

    /// Processes one telemetry batch. `record_ts` is the Kafka record's timestamp (the gateway's
    /// clock when it produced the batch): a reading more than `max_future_skew` after it comes
    /// from a device clock in the future and is counted and dropped, so one bad clock cannot
    /// drag its partition's idle floor forward and make everyone else's data late. The record
    /// timestamp is stored in the log, so a replay applies the same bound.
    pub fn on_batch_at(
        &mut self,
        batch: &Batch,
        record_ts: Option<u64>,
        p: &Params,
        st: &mut Stats,
        out: &mut Vec<Output>,
    ) {
        st.batches += 1;
        let future_limit = record_ts.map_or(u64::MAX, |t| t.saturating_add(p.max_future_skew));
        let n = batch.readings.len() as u64;
        if n == 0 {
            return;
        }
        let device = batch.device.as_str();
        let d = device_mut(&mut self.devices, &mut self.dirty, device);
        let skip = match d
            .dedupe
            .admit(batch.epoch, batch.first_seq, batch.last_seq())
        {
            Admit::Duplicate => {
                st.duplicate_batches += 1;
                st.duplicate_readings += n;
                return;
            }
            Admit::Fresh { skip, gap } => {
                st.gap_readings += gap;
                st.duplicate_readings += skip as u64;
                skip
            }
        };
        let idle_floor = self
            .meta
            .max_ts
            .saturating_sub(p.allowed_lateness.saturating_add(p.idle_timeout));
        if d.floor < idle_floor {
            // A device new to (or idle in) this partition starts at the idle floor.
            d.floor = idle_floor;
        }
        let meta = &mut self.meta;
        for (seq, r) in batch.iter_seq().skip(skip) {
            st.readings += 1;
            let ts = r.ts;
            if ts > future_limit {
                st.future_readings += 1;
                continue;
            }
            if ts < d.watermark(p) {
                st.late_readings += 1;
                continue;
            }
            if ts > d.max_ts {
                d.max_ts = ts;
                if ts > meta.max_ts {
                    meta.max_ts = ts;
                }
            }
            d.activity.reading(ts, batch.epoch, p.inactivity_gap);
            if let Some(c) = &mut d.conn {
                if ts >= c.start {
                    c.readings += 1;
                }
            }
            let Some(x) = numeric(&r.value) else {
                st.non_numeric_readings += 1;
                continue;
            };
            let m = match d.metrics.iter().position(|m| m.name == r.metric) {
                Some(i) => &mut d.metrics[i],
                None if d.metrics.len() < p.max_metrics_per_device => {
                    d.metrics.push(MetricState {
                        name: r.metric.clone(),
                        windows: MetricWindows::default(),
                        baseline: Ewma::default(),
                    });
                    let last = d.metrics.len() - 1;
                    &mut d.metrics[last]
                }
                None => {
                    st.untracked_metric_readings += 1;
                    continue;
                }
            };
            m.windows.push(ts, x, p.window);
            if let Some((z, mean, sd)) = anomaly::score_and_learn(&mut m.baseline, x, &p.metric) {
                st.anomalies += 1;
                out.push(Output::Anomaly(AnomalyRecord::Metric {
                    id: IdHasher::new("anomaly/metric")
                        .str(device)
                        .u64(batch.epoch)
                        .u64(seq)
                        .finish(),
                    device: device.to_owned(),
                    metric: r.metric.to_string(),
                    epoch: batch.epoch,
                    seq,
                    ts,
                    value: x,
                    baseline_mean: mean,
                    baseline_stddev: sd,
                    z,
                    threshold: p.metric.k,
                }));
            }
        }
        let wm = d.watermark(p);
        close_device(device, d, wm, p, st, out);
        if self.idle_floor(p) >= self.meta.next_scan {
            self.scan(p, st, out);
        }
    }

    /// Raises every device's floor to the partition's idle floor and emits what that closes.
    pub fn scan(&mut self, p: &Params, st: &mut Stats, out: &mut Vec<Output>) {
        let floor = self.idle_floor(p);
        for (device, d) in &mut self.devices {
            if d.floor >= floor {
                continue;
            }
            d.floor = floor;
            let wm = d.watermark(p);
            close_device(device, d, wm, p, st, out);
            if !d.dirty {
                d.dirty = true;
                self.dirty.push(device.clone());
            }
        }
        self.meta.next_scan = floor.saturating_add(p.scan_interval());
    }

    /// Processes one fleet event.
    pub fn on_event(&mut self, ev: &FleetEvent, p: &Params, st: &mut Stats, out: &mut Vec<Output>) {
        st.events += 1;
        let fwm = self.meta.events_max_ts.saturating_sub(p.allowed_lateness);
        if matches!(ev.kind, FleetEventKind::Birth | FleetEventKind::Refused) {
            if ev.gateway_ts < fwm {
                st.late_events += 1;
            } else {
                self.meta.connects.connect(ev.gateway_ts, p.fleet.window);
            }
        }
        if ev.gateway_ts > self.meta.events_max_ts {
            self.meta.events_max_ts = ev.gateway_ts;
            let part = self.id;
            let fwm = self.meta.events_max_ts.saturating_sub(p.allowed_lateness);
            self.meta.connects.close(fwm, &p.fleet, |s| {
                st.anomalies += 1;
                out.push(Output::Anomaly(AnomalyRecord::ReconnectStorm {
                    id: IdHasher::new("anomaly/storm")
                        .i64(i64::from(part))
                        .u64(s.start)
                        .finish(),
                    partition: part,
                    start: s.start,
                    end: s.start + p.fleet.window,
                    connects: s.connects,
                    baseline_mean: s.mean,
                    baseline_stddev: s.stddev,
                    z: s.z,
                    threshold: p.fleet.k,
                }));
            });
        }
        let device = ev.device.as_str();
        let change = match ev.kind {
            FleetEventKind::Refused => return,
            FleetEventKind::Birth => {
                let d = device_mut(&mut self.devices, &mut self.dirty, device);
                session::birth(&mut d.conn, device, ev.epoch, ev.ts)
            }
            // The device clock's death time; a last-will carries the time the connection was
            // made, so its end is the gateway's time of seeing it.
            FleetEventKind::Death => {
                let d = device_mut(&mut self.devices, &mut self.dirty, device);
                session::end(&mut d.conn, device, ev.ts, EndReason::Death)
            }
            FleetEventKind::Lost => {
                let d = device_mut(&mut self.devices, &mut self.dirty, device);
                session::end(&mut d.conn, device, ev.gateway_ts, EndReason::Lost)
            }
        };
        match change {
            ConnChange::Duplicate => {}
            ConnChange::Unmatched => st.unmatched_ends += 1,
            ConnChange::Opened(sup) => {
                if let Some(s) = sup {
                    st.sessions_closed += 1;
                    out.push(Output::Session(s));
                }
            }
            ConnChange::Closed(s) => {
                st.sessions_closed += 1;
                out.push(Output::Session(s));
            }
        }
    }

    /// Devices changed since the last [`Partition::clear_dirty`].
    #[must_use]
    pub fn dirty_devices(&self) -> &[String] {
        &self.dirty
    }

    /// Marks every device clean (after a committed checkpoint).
    pub fn clear_dirty(&mut self) {
        for k in self.dirty.drain(..) {
            if let Some(d) = self.devices.get_mut(&k) {
                d.dirty = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use breakwater_protocol::{DeviceId, Reading};

    use super::*;
    use crate::output::{SessionKind, SessionRecord};

    fn params() -> Params {
        Params {
            window: 1_000,
            allowed_lateness: 500,
            idle_timeout: 5_000,
            inactivity_gap: 2_000,
            ..Params::default()
        }
    }

    fn batch(dev: &str, epoch: u64, first: u64, readings: &[(u64, f64)]) -> Batch {
        Batch {
            device: DeviceId::parse(dev).unwrap(),
            epoch,
            first_seq: first,
            readings: readings
                .iter()
                .map(|&(ts, v)| Reading::new("t", v, ts))
                .collect(),
        }
    }

    fn ev(dev: &str, kind: FleetEventKind, ts: u64) -> FleetEvent {
        FleetEvent {
            device: DeviceId::parse(dev).unwrap(),
            epoch: 1,
            kind,
            ts,
            gateway_ts: ts,
            reason: None,
        }
    }

    fn sessions(out: &[Output]) -> Vec<&SessionRecord> {
        out.iter()
            .filter_map(|o| match o {
                Output::Session(s) => Some(s),
                _ => None,
            })
            .collect()
    }

    fn windows(out: &[Output]) -> Vec<&WindowRecord> {
        out.iter()
            .filter_map(|o| match o {
                Output::Window(w) => Some(w),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn duplicates_never_count_twice() {
        let p = params();
        let mut part = Partition::new(0);
        let mut st = Stats::default();
        let mut out = Vec::new();
        let b = batch("d", 1, 1, &[(100, 1.0), (200, 2.0), (300, 3.0)]);
        part.on_batch(&b, &p, &mut st, &mut out);
        assert!(part.is_duplicate("d", 1, 3));
        part.on_batch(&b, &p, &mut st, &mut out);
        part.on_batch(
            &batch("d", 1, 3, &[(300, 3.0), (400, 4.0)]),
            &p,
            &mut st,
            &mut out,
        );
        assert_eq!(st.readings, 4);
        assert_eq!(st.duplicate_readings, 4);
        // Close everything with a far-future reading of another device.
        part.on_batch(&batch("z", 1, 1, &[(100_000, 0.0)]), &p, &mut st, &mut out);
        let w = windows(&out);
        assert_eq!(w.len(), 1);
        assert_eq!((w[0].count, w[0].min, w[0].max), (4, 1.0, 4.0));
        let s = sessions(&out);
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].start, s[0].end, s[0].readings), (100, 400, 4));
    }

    #[test]
    fn late_within_and_beyond_lateness() {
        let p = params();
        let mut part = Partition::new(0);
        let mut st = Stats::default();
        let mut out = Vec::new();
        part.on_batch(
            &batch("d", 1, 1, &[(1_100, 1.0), (1_900, 1.0)]),
            &p,
            &mut st,
            &mut out,
        );
        // Watermark 1_400: 1_450 is out of order but within the lateness; 1_399 is beyond it.
        part.on_batch(
            &batch("d", 1, 3, &[(1_450, 5.0), (1_399, 9.0)]),
            &p,
            &mut st,
            &mut out,
        );
        assert_eq!(st.late_readings, 1);
        part.on_batch(&batch("d", 1, 5, &[(9_000, 0.0)]), &p, &mut st, &mut out);
        let w = windows(&out);
        assert_eq!(w.len(), 1);
        assert_eq!((w[0].start, w[0].count, w[0].max), (1_000, 3, 5.0));
    }

    #[test]
    fn watermarks_are_per_device_with_an_idle_floor() {
        let p = params(); // lateness 500, idle timeout 5_000
        let mut part = Partition::new(0);
        let mut st = Stats::default();
        let mut out = Vec::new();
        part.on_batch(&batch("a", 1, 1, &[(10_000, 1.0)]), &p, &mut st, &mut out);
        // b's backlog is 4 s behind a: not late (a partition-wide watermark would drop it).
        part.on_batch(&batch("b", 1, 1, &[(6_000, 2.0)]), &p, &mut st, &mut out);
        assert_eq!(st.late_readings, 0);
        // c is more than lateness + idle timeout behind the partition: late.
        part.on_batch(&batch("c", 1, 1, &[(4_000, 3.0)]), &p, &mut st, &mut out);
        assert_eq!(st.late_readings, 1);
        assert!(windows(&out).is_empty());
        // a moves on; the idle floor (20_000 - 5_500) closes b's window.
        part.on_batch(&batch("a", 1, 2, &[(20_000, 1.0)]), &p, &mut st, &mut out);
        let w = windows(&out);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w
            .iter()
            .any(|w| w.device == "b" && w.start == 6_000 && w.count == 1));
        assert!(w.iter().any(|w| w.device == "a" && w.start == 10_000));
        // b's late data below the floor is dropped now.
        part.on_batch(&batch("b", 1, 2, &[(6_500, 2.0)]), &p, &mut st, &mut out);
        assert_eq!(st.late_readings, 2);
    }

    #[test]
    fn a_device_clock_in_the_future_is_dropped_and_moves_nothing() {
        let p = params();
        let mut part = Partition::new(0);
        let mut st = Stats::default();
        let mut out = Vec::new();
        let now = 1_000_000;
        part.on_batch_at(
            &batch("a", 1, 1, &[(now - 10, 1.0)]),
            Some(now),
            &p,
            &mut st,
            &mut out,
        );
        let year = 365 * 24 * 3_600_000;
        part.on_batch_at(
            &batch("bad", 1, 1, &[(now + year, 1.0)]),
            Some(now),
            &p,
            &mut st,
            &mut out,
        );
        assert_eq!(st.future_readings, 1);
        assert_eq!(part.meta.max_ts, now - 10);
        // Within the skew is fine.
        part.on_batch_at(
            &batch("b", 1, 1, &[(now + 1_000, 1.0)]),
            Some(now),
            &p,
            &mut st,
            &mut out,
        );
        assert_eq!(st.future_readings, 1);
        assert_eq!(part.meta.max_ts, now + 1_000);
    }

    #[test]
    fn connectivity_from_events() {
        let p = params();
        let mut part = Partition::new(0);
        let mut st = Stats::default();
        let mut out = Vec::new();
        part.on_event(
            &ev("d", FleetEventKind::Birth, 1_000),
            &p,
            &mut st,
            &mut out,
        );
        part.on_batch(
            &batch("d", 1, 1, &[(1_500, 1.0), (1_600, 1.0)]),
            &p,
            &mut st,
            &mut out,
        );
        part.on_event(
            &ev("d", FleetEventKind::Death, 2_000),
            &p,
            &mut st,
            &mut out,
        );
        part.on_event(&ev("d", FleetEventKind::Lost, 2_100), &p, &mut st, &mut out);
        assert_eq!(st.unmatched_ends, 1);
        let s = sessions(&out);
        assert_eq!(s.len(), 1);
        assert_eq!(
            (
                s[0].kind,
                s[0].start,
                s[0].end,
                s[0].readings,
                s[0].end_reason
            ),
            (SessionKind::Connectivity, 1_000, 2_000, 2, EndReason::Death)
        );
    }

    #[test]
    fn replay_from_a_state_copy_gives_the_same_outputs() {
        // The checkpoint contract in miniature: state after k batches + the remaining batches
        // gives the same outputs as the uninterrupted run after batch k.
        let mut p = params();
        p.metric.warmup = 10;
        let batches: Vec<Batch> = (0..200u64)
            .map(|i| {
                let dev = format!("d{}", i % 7);
                let v = if i == 150 {
                    500.0
                } else {
                    10.0 + (i % 5) as f64
                };
                batch(&dev, 1, i / 7 + 1, &[(i * 97, v)])
            })
            .collect();
        let run = |part: &mut Partition, bs: &[Batch]| {
            let mut st = Stats::default();
            let mut out = Vec::new();
            for b in bs {
                part.on_batch(b, &p, &mut st, &mut out);
            }
            out
        };
        let mut a = Partition::new(0);
        let full = run(&mut a, &batches);
        let mut b = Partition::new(0);
        let head = run(&mut b, &batches[..90]);
        let bytes = postcard::to_stdvec(&b.devices).unwrap();
        let meta = postcard::to_stdvec(&b.meta).unwrap();
        let mut c = Partition::restore(
            0,
            postcard::from_bytes(&meta).unwrap(),
            postcard::from_bytes(&bytes).unwrap(),
            None,
            None,
        );
        // Redeliver some already-processed batches too: dedupe drops them.
        let mut tail = run(&mut c, &batches[80..]);
        let mut joined = head;
        joined.append(&mut tail);
        let ids = |o: &[Output]| {
            let mut v: Vec<String> = o.iter().map(|x| x.id().to_owned()).collect();
            v.sort();
            v
        };
        assert_eq!(ids(&joined), ids(&full));
        assert!(full
            .iter()
            .any(|o| matches!(o, Output::Anomaly(AnomalyRecord::Metric { seq, .. }) if *seq == 150 / 7 + 1)));
    }

    /// One input record for the property test.
    #[derive(Debug, Clone)]
    enum Rec {
        Batch(Batch),
        Event(FleetEvent),
    }

    fn arb_records() -> impl proptest::strategy::Strategy<Value = Vec<Rec>> {
        use proptest::prelude::*;
        // (device, kind, time step, jitter, value, repeat-previous)
        prop::collection::vec(
            (
                0usize..4,
                0u8..10,
                0u64..900,
                0u64..1_500,
                -50i64..50,
                any::<bool>(),
            ),
            1..150,
        )
        .prop_map(|steps| {
            let mut now = 1_000_000u64;
            let mut seq = [1u64; 4];
            let mut out: Vec<Rec> = Vec::new();
            for (d, kind, step, jitter, v, repeat) in steps {
                now += step;
                let dev = format!("dev-{d}");
                if repeat && !out.is_empty() {
                    let prev = out[out.len() / 2].clone();
                    out.push(prev);
                    continue;
                }
                match kind {
                    0 => out.push(Rec::Event(ev(&dev, FleetEventKind::Birth, now))),
                    1 => out.push(Rec::Event(ev(&dev, FleetEventKind::Death, now))),
                    _ => {
                        let n = 1 + (u64::from(kind) % 3);
                        let readings = (0..n)
                            .map(|i| {
                                Reading::new(
                                    "m",
                                    (v + i as i64) as f64,
                                    (now + i * 10).saturating_sub(jitter),
                                )
                            })
                            .collect();
                        let b = Batch {
                            device: DeviceId::parse(&dev).unwrap(),
                            epoch: 1,
                            first_seq: seq[d],
                            readings,
                        };
                        seq[d] += n;
                        out.push(Rec::Batch(b));
                    }
                }
            }
            out
        })
    }

    fn apply(part: &mut Partition, recs: &[Rec], p: &Params) -> Vec<Output> {
        let mut st = Stats::default();
        let mut out = Vec::new();
        for r in recs {
            match r {
                Rec::Batch(b) => part.on_batch(b, p, &mut st, &mut out),
                Rec::Event(e) => part.on_event(e, p, &mut st, &mut out),
            }
        }
        out
    }

    fn sorted_json(o: &[Output]) -> Vec<String> {
        let mut v: Vec<String> = o
            .iter()
            .map(|x| String::from_utf8(x.to_json()).unwrap())
            .collect();
        v.sort();
        v
    }

    proptest::proptest! {
        /// The checkpoint contract for any input: state after record k (through a postcard
        /// round trip, as redb stores it) plus records k.. gives exactly the outputs of the
        /// uninterrupted run after record k.
        #[test]
        fn restart_from_any_point_gives_the_same_outputs(recs in arb_records(), cut in 0.0f64..1.0) {
            let mut p = params();
            p.metric.warmup = 3;
            p.metric.k = 1.5;
            p.fleet.window = 700;
            p.fleet.warmup = 2;
            p.fleet.min_connects = 1;
            let k = ((recs.len() as f64) * cut) as usize;
            let mut full = Partition::new(0);
            let all = apply(&mut full, &recs, &p);
            let mut head = Partition::new(0);
            let mut joined = apply(&mut head, &recs[..k], &p);
            let devices: HashMap<String, DeviceState> =
                postcard::from_bytes(&postcard::to_stdvec(&head.devices).unwrap()).unwrap();
            let meta: PartitionMeta =
                postcard::from_bytes(&postcard::to_stdvec(&head.meta).unwrap()).unwrap();
            let mut restored = Partition::restore(0, meta, devices, None, None);
            joined.extend(apply(&mut restored, &recs[k..], &p));
            proptest::prop_assert_eq!(sorted_json(&joined), sorted_json(&all));
            restored.clear_dirty();
            full.clear_dirty();
            proptest::prop_assert_eq!(&restored.devices, &full.devices);
            proptest::prop_assert_eq!(&restored.meta, &full.meta);
        }
    }
}

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
//! 2. For each new reading, the late test: `ts < watermark`. Watermarks are **per device and
//!    nothing else**: the device's own newest event time minus `allowed_lateness`. Nothing the
//!    rest of the partition does moves it, because agents store and forward: a device back from
//!    two hours offline sends two hours of backlog, in its own order, and it is processed in its
//!    own event time however far behind the fleet it is. A late reading (really older than the
//!    device's own lateness allows) is counted and written to the `late` output; it is in no
//!    session, window or baseline.
//! 3. Activity session ([`crate::session`]), connectivity session reading count.
//! 4. Numeric readings (`i64`, `f64`): the (device, metric) window ([`crate::window`]) and the
//!    anomaly test against the baseline ([`crate::anomaly`]). `bool` and string readings count in
//!    sessions only.
//! 5. After the batch, the device's windows and activity sessions that its watermark closed are
//!    emitted. A device that goes quiet keeps its last window and session open (its backlog may
//!    still arrive) until it sends again or is evicted.
//! 6. Eviction (bounded state): when the partition's eviction clock ([`Partition::now`], the
//!    older of the two input topics' event times) has advanced by [`Params::scan_interval`] since the last scan, every device not seen for
//!    `device_ttl` of partition event time is evicted: its open windows are emitted, its open
//!    sessions closed with `end_reason = "expired"`, its state removed (the next checkpoint
//!    deletes it). Scans are triggered by event time in the stream, never by the wall clock, so
//!    a replay evicts at the same points. A scan changes (and marks for the checkpoint) only
//!    the devices it evicts.
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
use crate::output::{AnomalyRecord, EndReason, LateRecord, Output, WindowRecord};
use crate::session::{self, Activity, ConnChange, Connectivity};
use crate::window::MetricWindows;

/// Everything the core needs to know from the configuration. Times in ms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    pub window: u64,
    pub allowed_lateness: u64,
    /// A device not seen for this long (partition event time) is evicted; `0`: never.
    pub device_ttl: u64,
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
    /// Partition event time between two eviction scans: a device is evicted at most this long
    /// after its TTL ran out.
    #[must_use]
    pub fn scan_interval(&self) -> u64 {
        (self.device_ttl / 64).max(1)
    }
}

impl Default for Params {
    fn default() -> Self {
        Self {
            window: 60_000,
            allowed_lateness: 30_000,
            device_ttl: 7 * 24 * 3_600_000,
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
    pub evicted_devices: u64,
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
    /// Newest event time the device was seen at (reading or fleet event): eviction clock.
    pub last_seen: u64,
    /// Changed since the last checkpoint.
    #[serde(skip)]
    dirty: bool,
}

/// Per-partition state that is not per device.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PartitionMeta {
    /// Newest reading timestamp admitted in the partition.
    pub max_ts: u64,
    /// Eviction scan once the partition's event time ([`Partition::now`]) reaches this.
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
    /// Devices changed (or evicted: no longer in `devices`) since the last checkpoint.
    dirty: Vec<String>,
    /// Sequence number and changelog offset of the last checkpoint's marker
    /// ([`crate::changelog`]); 0 and `None` before the first.
    pub changelog_seq: u64,
    pub changelog_offset: Option<i64>,
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
        self.max_ts.saturating_sub(p.allowed_lateness)
    }

    fn seen(&mut self, ts: u64) {
        if ts > self.last_seen {
            self.last_seen = ts;
        }
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
    close_windows(device, d, wm, p, st, out);
    d.activity.close(wm, p.inactivity_gap, |r| {
        st.sessions_closed += 1;
        out.push(Output::Session(r.record(device)));
    });
}

/// Emits the windows of one device that end at or before `wm`.
fn close_windows(
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
}

/// Emits everything a device being evicted still holds open: every window, every activity
/// session and the connectivity session (`expired`, ending when the device was last seen).
fn expire_device(
    device: &str,
    d: &mut DeviceState,
    p: &Params,
    st: &mut Stats,
    out: &mut Vec<Output>,
) {
    close_windows(device, d, u64::MAX, p, st, out);
    for r in d.activity.take_all() {
        st.sessions_closed += 1;
        let mut rec = r.record(device);
        rec.end_reason = EndReason::Expired;
        out.push(Output::Session(rec));
    }
    if let Some(c) = d.conn.take() {
        st.sessions_closed += 1;
        out.push(Output::Session(c.record(
            device,
            d.last_seen,
            EndReason::Expired,
        )));
    }
}

fn json_value(v: &Value) -> serde_json::Value {
    match v {
        Value::I64(i) => (*i).into(),
        Value::F64(f) => {
            serde_json::Number::from_f64(*f).map_or(serde_json::Value::Null, Into::into)
        }
        Value::Bool(b) => (*b).into(),
        Value::Str(s) => s.as_str().into(),
    }
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
            changelog_seq: 0,
            changelog_offset: None,
        }
    }

    /// Marks `device` for the next checkpoint (rewritten if held, deleted if not).
    pub fn mark_changed(&mut self, device: &str) {
        match self.devices.get_mut(device) {
            Some(d) if d.dirty => {}
            Some(d) => {
                d.dirty = true;
                self.dirty.push(device.to_owned());
            }
            None => {
                if !self.dirty.iter().any(|k| k == device) {
                    self.dirty.push(device.to_owned());
                }
            }
        }
    }

    /// The partition's eviction clock: the **older** of its two input topics' event times
    /// (newest admitted reading; newest fleet event, gateway clock); 0 until both were seen.
    /// Telemetry and events are consumed independently, and either may run far ahead of the
    /// other (a backlog, a restart); taking the older one means a device is not evicted while
    /// records about it may still be unread in the other topic, so eviction does not depend on
    /// how the two topics interleave. A partition that never gets a fleet event never evicts
    /// (the gateway writes a birth for every connection).
    #[must_use]
    pub fn now(&self) -> u64 {
        self.meta.max_ts.min(self.meta.events_max_ts)
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
    /// make its own later data late or drag the partition's eviction clock forward. The record
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
        let meta = &mut self.meta;
        for (seq, r) in batch.iter_seq().skip(skip) {
            st.readings += 1;
            let ts = r.ts;
            if ts > future_limit {
                st.future_readings += 1;
                continue;
            }
            let wm = d.watermark(p);
            if ts < wm {
                st.late_readings += 1;
                out.push(Output::Late(LateRecord {
                    id: IdHasher::new("late")
                        .str(device)
                        .u64(batch.epoch)
                        .u64(seq)
                        .finish(),
                    device: device.to_owned(),
                    epoch: batch.epoch,
                    seq,
                    metric: r.metric.to_string(),
                    ts,
                    value: json_value(&r.value),
                    watermark: wm,
                }));
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
        d.seen(d.max_ts);
        let wm = d.watermark(p);
        close_device(device, d, wm, p, st, out);
        self.maybe_scan(p, st, out);
    }

    fn maybe_scan(&mut self, p: &Params, st: &mut Stats, out: &mut Vec<Output>) {
        if p.device_ttl > 0 && self.now() >= self.meta.next_scan {
            self.scan(p, st, out);
        }
    }

    /// Evicts every device not seen for `device_ttl` of partition event time: emits its open
    /// windows, closes its open sessions with [`EndReason::Expired`], removes its state. Only
    /// evicted devices are marked for the next checkpoint (which deletes them).
    pub fn scan(&mut self, p: &Params, st: &mut Stats, out: &mut Vec<Output>) {
        let now = self.now();
        let cutoff = now.saturating_sub(p.device_ttl);
        let mut expired: Vec<String> = self
            .devices
            .iter()
            .filter(|(_, d)| d.last_seen < cutoff)
            .map(|(k, _)| k.clone())
            .collect();
        // Deterministic output order, whatever the hash map's.
        expired.sort_unstable();
        for device in expired {
            let Some(mut d) = self.devices.remove(&device) else {
                continue;
            };
            expire_device(&device, &mut d, p, st, out);
            st.evicted_devices += 1;
            if !d.dirty {
                self.dirty.push(device);
            }
        }
        self.meta.next_scan = now.saturating_add(p.scan_interval());
    }

    /// Processes one fleet event.
    pub fn on_event(&mut self, ev: &FleetEvent, p: &Params, st: &mut Stats, out: &mut Vec<Output>) {
        self.apply_event(ev, p, st, out);
        self.maybe_scan(p, st, out);
    }

    fn apply_event(&mut self, ev: &FleetEvent, p: &Params, st: &mut Stats, out: &mut Vec<Output>) {
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
                d.seen(ev.gateway_ts);
                session::birth(&mut d.conn, device, ev.epoch, ev.ts)
            }
            // The device clock's death time; a last-will carries the time the connection was
            // made, so its end is the gateway's time of seeing it.
            FleetEventKind::Death => {
                let d = device_mut(&mut self.devices, &mut self.dirty, device);
                d.seen(ev.gateway_ts);
                session::end(&mut d.conn, device, ev.ts, EndReason::Death)
            }
            FleetEventKind::Lost => {
                let d = device_mut(&mut self.devices, &mut self.dirty, device);
                d.seen(ev.gateway_ts);
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
            device_ttl: 5_000,
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
        // Close everything: both input topics move far past the TTL, d is evicted.
        part.on_batch(&batch("z", 1, 1, &[(100_000, 0.0)]), &p, &mut st, &mut out);
        part.on_event(
            &ev("z", FleetEventKind::Refused, 100_000),
            &p,
            &mut st,
            &mut out,
        );
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
    fn watermarks_are_per_device_only() {
        let p = Params {
            device_ttl: 0,
            ..params()
        };
        let mut part = Partition::new(0);
        let mut st = Stats::default();
        let mut out = Vec::new();
        part.on_batch(&batch("a", 1, 1, &[(10_000, 1.0)]), &p, &mut st, &mut out);
        // b and c are far behind a: neither is late, whatever a does.
        part.on_batch(&batch("b", 1, 1, &[(6_000, 2.0)]), &p, &mut st, &mut out);
        part.on_batch(&batch("a", 1, 2, &[(900_000, 1.0)]), &p, &mut st, &mut out);
        part.on_batch(&batch("c", 1, 1, &[(4_000, 3.0)]), &p, &mut st, &mut out);
        part.on_batch(&batch("b", 1, 2, &[(6_500, 2.0)]), &p, &mut st, &mut out);
        assert_eq!(st.late_readings, 0);
        // Only a's own time closed a's window; b's stays open until b moves on.
        let w = windows(&out);
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!((w[0].device.as_str(), w[0].start), ("a", 10_000));
        part.on_batch(&batch("b", 1, 3, &[(8_000, 2.0)]), &p, &mut st, &mut out);
        let w = windows(&out);
        assert_eq!(w.len(), 2, "{w:?}");
        assert_eq!(
            (w[1].device.as_str(), w[1].start, w[1].count),
            ("b", 6_000, 2)
        );
        // b's own lateness still applies to b.
        part.on_batch(&batch("b", 1, 4, &[(7_400, 2.0)]), &p, &mut st, &mut out);
        assert_eq!(st.late_readings, 1);
    }

    /// The measurement as a test: a device offline for two hours of event time while
    /// another keeps sending, then its backlog arrives. Every one-minute window and its
    /// activity session come out whole; nothing is late.
    #[test]
    fn a_two_hour_backlog_is_processed_in_its_own_event_time() {
        let p = Params::default(); // 1 min windows, 30 s lateness, 5 min gap, 7 d TTL
        let t = 1_700_000_040_000; // a window boundary
        let mut part = Partition::new(0);
        let mut st = Stats::default();
        let mut out = Vec::new();
        let second = 1_000;
        let hour = 3_600 * second;
        // One reading a second, ten per batch; seq = 1 + seconds since t.
        let ten = |dev: &str, s0: u64| {
            let rs: Vec<(u64, f64)> = (0..10).map(|i| (t + (s0 + i) * second, 20.0)).collect();
            batch(dev, 1, s0 + 1, &rs)
        };
        let mut a_next = 0;
        let mut b_next = 0;
        // Hour one: both live.
        while a_next < 3_600 {
            part.on_batch(&ten("a", a_next), &p, &mut st, &mut out);
            part.on_batch(&ten("b", b_next), &p, &mut st, &mut out);
            a_next += 10;
            b_next += 10;
        }
        // Hours two and three: b is offline (its agent buffers), a sends.
        while a_next < 3 * 3_600 {
            part.on_batch(&ten("a", a_next), &p, &mut st, &mut out);
            a_next += 10;
        }
        // b is back: its backlog drains, five batches for every live one of a.
        while b_next < 3 * 3_600 {
            for _ in 0..5 {
                if b_next < 3 * 3_600 {
                    part.on_batch(&ten("b", b_next), &p, &mut st, &mut out);
                    b_next += 10;
                }
            }
            part.on_batch(&ten("a", a_next), &p, &mut st, &mut out);
            a_next += 10;
        }
        // b goes quiet for longer than the gap, then one more reading closes what it had open.
        part.on_batch(
            &batch(
                "b",
                1,
                b_next + 1,
                &[(t + 3 * hour + 10 * 60 * second, 1.0)],
            ),
            &p,
            &mut st,
            &mut out,
        );
        assert_eq!(st.late_readings, 0);
        let bw: Vec<&WindowRecord> = windows(&out)
            .into_iter()
            .filter(|w| w.device == "b")
            .collect();
        assert_eq!(bw.len(), 180, "one window per minute of three hours");
        for (i, w) in bw.iter().enumerate() {
            assert_eq!(
                (w.start, w.count),
                (t + i as u64 * 60 * second, 60),
                "{w:?}"
            );
        }
        let bs: Vec<&SessionRecord> = sessions(&out)
            .into_iter()
            .filter(|s| s.device == "b")
            .collect();
        assert_eq!(bs.len(), 1, "{bs:?}");
        assert_eq!(
            (bs[0].start, bs[0].end, bs[0].readings, bs[0].end_reason),
            (t, t + 3 * hour - second, 3 * 3_600, EndReason::Inactivity)
        );
        assert!(!out.iter().any(|o| matches!(o, Output::Late(_))));
    }

    #[test]
    fn a_reading_beyond_the_lateness_goes_to_the_late_output() {
        let p = params();
        let mut part = Partition::new(0);
        let mut st = Stats::default();
        let mut out = Vec::new();
        part.on_batch(&batch("d", 4, 1, &[(10_000, 1.0)]), &p, &mut st, &mut out);
        part.on_batch(&batch("d", 4, 2, &[(9_400, 7.5)]), &p, &mut st, &mut out);
        assert_eq!(st.late_readings, 1);
        let late: Vec<&LateRecord> = out
            .iter()
            .filter_map(|o| match o {
                Output::Late(l) => Some(l),
                _ => None,
            })
            .collect();
        assert_eq!(late.len(), 1);
        let l = late[0];
        assert_eq!(
            (l.device.as_str(), l.epoch, l.seq, l.ts, l.watermark),
            ("d", 4, 2, 9_400, 9_500)
        );
        assert_eq!(l.value, serde_json::json!(7.5));
        assert_eq!(l.id, IdHasher::new("late").str("d").u64(4).u64(2).finish());
        // It is in no window: d's first window holds the one timely reading only.
        part.on_batch(&batch("d", 4, 3, &[(20_000, 1.0)]), &p, &mut st, &mut out);
        let w = windows(&out);
        assert_eq!((w[0].start, w[0].count, w[0].max), (10_000, 1, 1.0));
    }

    #[test]
    fn devices_not_seen_for_the_ttl_are_evicted_with_expired_sessions() {
        let p = params(); // TTL 5_000, scans every 78 ms of partition event time
        let mut part = Partition::new(0);
        let mut st = Stats::default();
        let mut out = Vec::new();
        part.on_event(
            &ev("old", FleetEventKind::Birth, 1_000),
            &p,
            &mut st,
            &mut out,
        );
        part.on_batch(
            &batch("old", 1, 1, &[(1_100, 1.0), (1_200, 3.0)]),
            &p,
            &mut st,
            &mut out,
        );
        part.on_batch(&batch("live", 1, 1, &[(5_000, 1.0)]), &p, &mut st, &mut out);
        part.clear_dirty();
        assert!(out.is_empty(), "{out:?}");
        // Telemetry time reaches 6_300, but the events topic is still at 1_000: nothing is
        // evicted while the other topic may hold unread records about the device.
        part.on_batch(&batch("live", 1, 2, &[(6_300, 1.0)]), &p, &mut st, &mut out);
        assert!(part.devices.contains_key("old"));
        assert!(out.is_empty(), "{out:?}");
        // Both topics at 6_300: "old" (last seen 1_200) is past the TTL, "live" is not.
        part.on_event(
            &ev("gw", FleetEventKind::Refused, 6_300),
            &p,
            &mut st,
            &mut out,
        );
        assert!(!part.devices.contains_key("old"));
        assert!(part.devices.contains_key("live"));
        assert_eq!(st.evicted_devices, 1);
        let w = windows(&out);
        assert_eq!(w.len(), 1, "{w:?}"); // live's [5000, 6000) waits for live's own watermark
        assert!(w
            .iter()
            .any(|w| w.device == "old" && w.start == 1_000 && w.count == 2));
        let s = sessions(&out);
        let old: Vec<_> = s.iter().filter(|s| s.device == "old").collect();
        assert_eq!(old.len(), 2, "{s:?}");
        assert!(old.iter().all(|s| s.end_reason == EndReason::Expired));
        assert!(old.iter().any(|s| s.kind == SessionKind::Activity
            && (s.start, s.end, s.readings) == (1_100, 1_200, 2)));
        assert!(old
            .iter()
            .any(|s| s.kind == SessionKind::Connectivity && (s.start, s.end) == (1_000, 1_200)));
        // The checkpoint sees only what changed: the evicted device and the one that sent.
        let mut dirty = part.dirty_devices().to_vec();
        dirty.sort();
        assert_eq!(dirty, ["live", "old"]);
        // A device back after eviction starts afresh, its data not late.
        part.on_batch(&batch("old", 1, 3, &[(6_200, 1.0)]), &p, &mut st, &mut out);
        assert_eq!(st.late_readings, 0);
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

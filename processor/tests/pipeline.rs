//! The processor against the real Kafka-API broker, in process, with explicit assignment:
//! scripted sessions, anomalies (metric spike and reconnect storm), late and out-of-order data.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use breakwater_processor::run::{self, Summary};
use breakwater_protocol::kafka::FleetEventKind::{Birth, Death, Lost};
use breakwater_protocol::Reading;
use common::{batch, event, partition_of, In};
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const T: u64 = 1_700_000_000_000;

fn start(text: &str) -> (CancellationToken, JoinHandle<anyhow::Result<Summary>>) {
    let (c, h, _) = start_observed(text);
    (c, h)
}

fn start_observed(
    text: &str,
) -> (
    CancellationToken,
    JoinHandle<anyhow::Result<Summary>>,
    Arc<run::Progress>,
) {
    let cfg = common::config(text);
    let cancel = CancellationToken::new();
    let progress = Arc::new(run::Progress::default());
    let h = tokio::spawn(run::run_observed(cfg, cancel.clone(), progress.clone()));
    (cancel, h, progress)
}

/// Waits until the processor has applied `n` event records and `m` telemetry records.
async fn applied(p: &run::Progress, events: u64, telemetry: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while p.event_records.load(Ordering::Relaxed) < events
        || p.telemetry_records.load(Ordering::Relaxed) < telemetry
    {
        assert!(
            std::time::Instant::now() < deadline,
            "processor did not apply the input"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn stop(c: CancellationToken, h: JoinHandle<anyhow::Result<Summary>>) -> Summary {
    c.cancel();
    h.await.unwrap().unwrap()
}

/// A device name in partition `p`.
fn name_in(prefix: &str, p: i32, skip: usize) -> String {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .filter(|n| partition_of(n) == p)
        .nth(skip)
        .unwrap()
}

/// One far-future reading per partition: moves every watermark past everything before it.
fn readings(metric: &str, from: u64, to: u64, step: u64, f: impl Fn(u64) -> f64) -> Vec<Reading> {
    (from..=to)
        .step_by(usize::try_from(step).unwrap())
        .map(|ts| Reading::new(metric, f(ts), ts))
        .collect()
}

/// Splits readings into batches of `n` with consecutive sequence numbers from `first`.
fn batches(device: &str, epoch: u64, first: u64, rs: &[Reading], n: usize) -> Vec<In> {
    rs.chunks(n)
        .enumerate()
        .map(|(i, c)| batch(device, epoch, first + (i * n) as u64, c.to_vec()))
        .collect()
}

fn session_view(s: &Value) -> Value {
    json!([
        s["device"],
        s["kind"],
        s["start"],
        s["end"],
        s["duration_ms"],
        s["readings"],
        s["end_reason"]
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_from_scripted_births_readings_and_deaths() {
    let bootstrap = breakwater_testkit::require_kafka!();
    let t = common::topics(&bootstrap).await;
    let dir = tempfile::tempdir().unwrap();
    let text = common::config_text(
        &bootstrap,
        &t,
        &dir.path().join("s.redb"),
        "[sessions]\ninactivity_gap = \"5s\"\n[windows]\nsize = \"10s\"\nallowed_lateness = \"1s\"\n",
    );
    let producer = breakwater_testkit::kafka::producer(&bootstrap);
    let (cancel, h, progress) = start_observed(&text);

    // Births first, applied before the readings arrive: telemetry and events are separate
    // topics, and a connectivity session counts the readings processed while it is open.
    common::produce(
        &producer,
        &t,
        &[
            event("alpha", 1, Birth, T),
            event("bravo", 4, Birth, T + 500),
            event("charlie", 9, Birth, T),
            event("charlie", 9, Birth, T + 3_000),
            // A repeated birth (gateway redelivery) changes nothing.
            event("charlie", 9, Birth, T + 3_000),
        ],
    )
    .await;
    applied(&progress, 5, 0).await;
    let mut tel = batches(
        "alpha",
        1,
        1,
        &readings("temp", T + 100, T + 4_000, 100, |_| 1.0),
        10,
    );
    tel.extend(batches(
        "bravo",
        4,
        1,
        &readings("temp", T + 600, T + 2_500, 100, |_| 2.0),
        7,
    ));
    // Redelivered batch: must not count twice anywhere.
    tel.push(tel[1].clone());
    common::produce(&producer, &t, &tel).await;
    let n_tel = tel.len() as u64;
    applied(&progress, 5, n_tel).await;
    common::produce(
        &producer,
        &t,
        &[
            event("alpha", 1, Death, T + 6_000),
            event("bravo", 4, Lost, T + 3_000),
            event("charlie", 9, Death, T + 9_000),
        ],
    )
    .await;
    applied(&progress, 8, n_tel).await;
    let mut tail = batches(
        "alpha",
        1,
        41,
        &readings("temp", T + 20_000, T + 21_000, 100, |_| 1.0),
        4,
    );
    tail.extend(common::clocks(T + 100_000));
    common::produce(&producer, &t, &tail).await;

    let got = common::read_json(&bootstrap, &t.sessions, 7, Duration::from_secs(30)).await;
    let summary = stop(cancel, h).await;
    let mut views: Vec<Value> = got.iter().map(session_view).collect();
    views.sort_by_key(ToString::to_string);
    let mut want = vec![
        json!([
            "charlie",
            "connectivity",
            T,
            T + 3_000,
            3_000,
            0,
            "superseded"
        ]),
        json!([
            "charlie",
            "connectivity",
            T + 3_000,
            T + 9_000,
            6_000,
            0,
            "death"
        ]),
        json!(["alpha", "connectivity", T, T + 6_000, 6_000, 40, "death"]),
        json!([
            "bravo",
            "connectivity",
            T + 500,
            T + 3_000,
            2_500,
            20,
            "lost"
        ]),
        json!([
            "alpha",
            "activity",
            T + 100,
            T + 4_000,
            3_900,
            40,
            "inactivity"
        ]),
        // Still open when the clocks moved partition time past device_ttl (60 s).
        json!([
            "alpha",
            "activity",
            T + 20_000,
            T + 21_000,
            1_000,
            11,
            "expired"
        ]),
        json!([
            "bravo",
            "activity",
            T + 600,
            T + 2_500,
            1_900,
            20,
            "expired"
        ]),
    ];
    want.sort_by_key(ToString::to_string);
    assert_eq!(views, want, "sessions: {got:#?}");
    // Ids are unique and deterministic.
    assert_eq!(common::by_id(&got).len(), 7);
    assert_eq!(summary.stats.duplicate_batches, 1);
    assert_eq!(summary.decode_errors, 0);
}

/// Deterministic noise in [-1, 1].
fn noise(i: u64) -> f64 {
    let x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11;
    x as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spike_and_a_reconnect_storm_are_flagged_and_steady_data_is_not() {
    let bootstrap = breakwater_testkit::require_kafka!();
    let t = common::topics(&bootstrap).await;
    let dir = tempfile::tempdir().unwrap();
    let text = common::config_text(
        &bootstrap,
        &t,
        &dir.path().join("s.redb"),
        "[anomaly]\nwarmup = 30\nz_threshold = 4.0\n[fleet]\nwindow = \"1s\"\nwarmup = 6\nz_threshold = 6.0\nmin_connects = 20\n[windows]\nallowed_lateness = \"1s\"\n",
    );
    let producer = breakwater_testkit::kafka::producer(&bootstrap);
    let mut input = Vec::new();
    let per_device: Vec<Vec<In>> = ["steady", "spiky", "steady-2"]
        .iter()
        .map(|dev| {
            let rs: Vec<Reading> = (0..400u64)
                .map(|i| {
                    let v = if *dev == "spiky" && i == 300 {
                        60.0
                    } else {
                        20.0 + noise(i)
                    };
                    Reading::new("temp", v, T + i * 1_000)
                })
                .collect();
            batches(dev, 5, 1, &rs, 20)
        })
        .collect();
    // Devices send side by side, as a live fleet does.
    for i in 0..per_device[0].len() {
        for d in &per_device {
            input.push(d[i].clone());
        }
    }
    // Fleet: three connects per 1 s window for 20 windows, then 60 in one window, then quiet;
    // all in partition 0 so one partition's baseline sees them.
    let mut k = 0;
    for w in 0..20u64 {
        for j in 0..3 {
            input.push(event(
                &name_in("car", 0, k),
                1,
                Birth,
                T + w * 1_000 + j * 10,
            ));
            k += 1;
        }
    }
    for j in 0..60 {
        input.push(event(&name_in("car", 0, k), 1, Birth, T + 20_000 + j * 10));
        k += 1;
    }
    input.push(event(&name_in("car", 0, k), 1, Birth, T + 25_000));
    common::produce(&producer, &t, &input).await;
    let (cancel, h) = start(&text);
    let got = common::read_json(&bootstrap, &t.anomalies, 2, Duration::from_secs(30)).await;
    let summary = stop(cancel, h).await;
    assert_eq!(got.len(), 2, "anomalies: {got:#?} {summary:?}");
    let metric: Vec<&Value> = got.iter().filter(|a| a["kind"] == "metric").collect();
    assert_eq!(metric.len(), 1, "{got:#?}");
    let a = metric[0];
    assert_eq!(
        (a["device"].as_str(), a["seq"].as_u64(), a["value"].as_f64()),
        (Some("spiky"), Some(301), Some(60.0))
    );
    assert!(a["z"].as_f64().unwrap() > 4.0);
    let storm: Vec<&Value> = got
        .iter()
        .filter(|a| a["kind"] == "reconnect_storm")
        .collect();
    assert_eq!(storm.len(), 1, "{got:#?}");
    assert_eq!(
        (
            storm[0]["partition"].as_i64(),
            storm[0]["start"].as_u64(),
            storm[0]["connects"].as_u64()
        ),
        (Some(0), Some(T + 20_000), Some(60))
    );
    assert_eq!(summary.stats.anomalies, 2);
    assert_eq!(summary.stats.readings, 1_200);
    assert_eq!(summary.stats.late_readings, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_and_out_of_order_readings_within_and_beyond_the_allowed_lateness() {
    let bootstrap = breakwater_testkit::require_kafka!();
    let t = common::topics(&bootstrap).await;
    let dir = tempfile::tempdir().unwrap();
    let text = common::config_text(
        &bootstrap,
        &t,
        &dir.path().join("s.redb"),
        "[windows]\nsize = \"10s\"\nallowed_lateness = \"2s\"\n",
    );
    let b = T - T % 10_000; // window-aligned
    let r = |off: u64| Reading::new("temp", off as f64 / 1_000.0, b + off);
    let input = vec![
        batch("late", 1, 1, vec![r(1_000), r(5_000), r(9_000)]),
        // 8 s is out of order but within the lateness (watermark 7 s).
        batch("late", 1, 4, vec![r(8_000), r(12_000)]),
        // Watermark now 10 s: 9.5 s and 6 s are late beyond the lateness; 10.5 s is on time.
        batch("late", 1, 6, vec![r(9_500), r(6_000), r(10_500)]),
        // A device whose clock is ten years ahead, in the same partition: dropped by the
        // record-timestamp bound, so it cannot make the next batch late.
        batch(
            &name_in("skewed", partition_of("late"), 0),
            1,
            1,
            vec![Reading::new("temp", 0.0, b + 10 * 365 * 24 * 3_600_000)],
        ),
        // Closes the second window.
        batch("late", 1, 9, vec![r(30_000)]),
    ];
    let producer = breakwater_testkit::kafka::producer(&bootstrap);
    common::produce(&producer, &t, &input).await;
    let (cancel, h) = start(&text);
    let got = common::read_json(&bootstrap, &t.windows, 2, Duration::from_secs(30)).await;
    let summary = stop(cancel, h).await;
    let mut w: Vec<Value> = got
        .iter()
        .map(|w| json!([w["start"], w["end"], w["count"], w["min"], w["max"], w["mean"]]))
        .collect();
    w.sort_by_key(ToString::to_string);
    assert_eq!(
        w,
        vec![
            json!([b, b + 10_000, 4, 1.0, 9.0, 5.75]),
            json!([b + 10_000, b + 20_000, 2, 10.5, 12.0, 11.25]),
        ],
        "{got:#?}"
    );
    assert_eq!(summary.stats.late_readings, 2);
    // Nothing disappears silently: both are in the late topic, with the watermark they missed.
    let late = common::read_json(&bootstrap, &t.late, 2, Duration::from_secs(30)).await;
    let mut l: Vec<Value> = late
        .iter()
        .map(|l| json!([l["device"], l["seq"], l["ts"], l["watermark"]]))
        .collect();
    l.sort_by_key(ToString::to_string);
    assert_eq!(
        l,
        vec![
            json!(["late", 6, b + 9_500, b + 10_000]),
            json!(["late", 7, b + 6_000, b + 10_000]),
        ],
        "{late:#?}"
    );
    assert_eq!(summary.stats.future_readings, 1);
    assert_eq!(summary.stats.readings, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_input_topics_that_are_not_co_partitioned() {
    let bootstrap = breakwater_testkit::require_kafka!();
    let mut t = common::topics(&bootstrap).await;
    t.events = breakwater_testkit::kafka::fresh_topic(&bootstrap, "proc-ev3", 3).await;
    let dir = tempfile::tempdir().unwrap();
    let text = common::config_text(&bootstrap, &t, &dir.path().join("s.redb"), "");
    let (_cancel, h) = start(&text);
    let err = h.await.unwrap().unwrap_err();
    assert!(
        format!("{err:#}").contains("same partition count"),
        "{err:#}"
    );
    // And an assigned partition that does not exist.
    let t = common::topics(&bootstrap).await;
    let text = common::config_text(&bootstrap, &t, &dir.path().join("s2.redb"), "")
        .replace("assign = [0, 1]", "assign = [0, 5]");
    let (_cancel, h) = start(&text);
    let err = h.await.unwrap().unwrap_err();
    assert!(format!("{err:#}").contains("partition 5"), "{err:#}");
}

/// The store-and-forward case the agent exists for: one device offline for two hours of event
/// time while another in the same partition keeps sending, then its backlog arrives. Its
/// one-minute windows and its activity session over those hours come out whole, nothing of it
/// is late. (Before per-device event time, the partition's idle floor made it 9 of 119 windows.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_hour_backlog_is_counted_in_its_own_event_time() {
    let bootstrap = breakwater_testkit::require_kafka!();
    let t = common::topics(&bootstrap).await;
    let dir = tempfile::tempdir().unwrap();
    // Defaults: 1 min windows, 30 s lateness, 5 min inactivity gap. The TTL must outlast the
    // outage (a device gone longer than it is evicted and its backlog starts afresh); here it
    // only matters for the clocks at the end.
    let text = common::config_text(&bootstrap, &t, &dir.path().join("s.redb"), "")
        .replace("device_ttl = \"60s\"", "device_ttl = \"150m\"");
    let start = T - T % 60_000 + 60_000; // a window boundary
    let minute = 60_000;
    let live = name_in("live", 0, 0);
    let away = name_in("away", 0, 0);
    // One reading a second, one batch a minute; seq = 1 + seconds since start.
    let minute_of = |dev: &str, m: u64| {
        let rs: Vec<Reading> = (0..60)
            .map(|s| {
                Reading::new(
                    "temp",
                    20.0 + (s % 7) as f64,
                    start + m * minute + s * 1_000,
                )
            })
            .collect();
        batch(dev, 3, m * 60 + 1, rs)
    };
    let mut input = Vec::new();
    for m in 0..60 {
        input.push(minute_of(&live, m));
        input.push(minute_of(&away, m));
    }
    // Two hours: `away` is offline, its agent buffers; `live` sends.
    for m in 60..180 {
        input.push(minute_of(&live, m));
    }
    // `away` is back: its backlog drains, four minutes of it for every live minute.
    let mut live_m = 180;
    for m in 60..180 {
        input.push(minute_of(&away, m));
        if m % 4 == 3 {
            input.push(minute_of(&live, live_m));
            live_m += 1;
        }
    }
    // Hours later both topics move on: everything still open is emitted (expired).
    input.extend(common::clocks(start + 6 * 60 * minute));
    let producer = breakwater_testkit::kafka::producer(&bootstrap);
    common::produce(&producer, &t, &input).await;
    let (cancel, h) = self::start(&text);
    let windows =
        common::read_json(&bootstrap, &t.windows, 180 + 210, Duration::from_secs(60)).await;
    let sessions = common::read_json(&bootstrap, &t.sessions, 2, Duration::from_secs(30)).await;
    let summary = stop(cancel, h).await;
    assert_eq!(summary.stats.late_readings, 0, "{summary:?}");
    let mut aw: Vec<(u64, u64)> = windows
        .iter()
        .filter(|w| w["device"] == away.as_str())
        .map(|w| (w["start"].as_u64().unwrap(), w["count"].as_u64().unwrap()))
        .collect();
    aw.sort_unstable();
    let want: Vec<(u64, u64)> = (0..180).map(|m| (start + m * minute, 60)).collect();
    assert_eq!(aw, want, "every minute of the three hours, whole");
    let s: Vec<&Value> = sessions
        .iter()
        .filter(|s| s["device"] == away.as_str())
        .collect();
    assert_eq!(s.len(), 1, "{sessions:#?}");
    assert_eq!(
        (
            s[0]["kind"].as_str(),
            s[0]["start"].as_u64(),
            s[0]["end"].as_u64(),
            s[0]["readings"].as_u64()
        ),
        (
            Some("activity"),
            Some(start),
            Some(start + 180 * minute - 1_000),
            Some(180 * 60)
        )
    );
    let late = common::read_json(&bootstrap, &t.late, 0, Duration::from_secs(2)).await;
    assert!(late.is_empty(), "{late:#?}");
    // The checkpointed offsets are committed to the consumer group, for lag tools.
    let group = common::config(&text).kafka.group_id;
    let want = common::checkpointed(&dir.path().join("s.redb"), &t.telemetry, &t.events);
    assert_eq!(want.len(), 4, "{want:?}");
    let got = common::committed(&bootstrap, &group, &[&t.telemetry, &t.events]);
    assert_eq!(got, want);
}

/// The changelog topic is created compacted with one partition per input partition, and one
/// with another partition count is refused (its partition `p` would not be input `p`'s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_changelog_topic_is_created_and_checked() {
    let bootstrap = breakwater_testkit::require_kafka!();
    let t = common::topics(&bootstrap).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(&common::config_text(
        &bootstrap,
        &t,
        &dir.path().join("s.redb"),
        "",
    ));
    cfg.kafka.changelog_topic = breakwater_testkit::kafka::unique_topic("proc-chg-new");
    breakwater_processor::kafka::ensure_changelog_topic(&cfg.kafka, 2, true)
        .await
        .unwrap();
    // Again: it exists now, with the right count.
    breakwater_processor::kafka::ensure_changelog_topic(&cfg.kafka, 2, true)
        .await
        .unwrap();
    let err = breakwater_processor::kafka::ensure_changelog_topic(&cfg.kafka, 3, false)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("has 2 partitions"), "{err}");
}

/// Readings of one device per partition: `batches` batches of 5, one reading a second.
fn per_partition(prefix: &str, batches: u64) -> Vec<In> {
    let mut v = Vec::new();
    for p in 0..common::PARTITIONS {
        let d = name_in(prefix, p, 0);
        for b in 0..batches {
            let rs = (0..5)
                .map(|i| Reading::new("temp", 20.0, T + (b * 5 + i) * 1_000))
                .collect();
            v.push(batch(&d, 1, b * 5 + 1, rs));
        }
    }
    v
}

/// The bug: a processor given new input topics but the changelog topic of an earlier run (the
/// old default was one shared name) restored that run's offsets, sought past the end of its
/// own, shorter topics and consumed nothing, silently. Now the default changelog is per group
/// and input, so the same group on new topics consumes everything; a changelog that is
/// nevertheless shared is refused with a message; and a state directory left by the earlier
/// run is discarded rather than mixed in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_input_topics_never_restore_an_earlier_runs_offsets() {
    let bootstrap = breakwater_testkit::require_kafka!();
    let dir = tempfile::tempdir().unwrap();
    let producer = breakwater_testkit::kafka::producer(&bootstrap);
    let group = breakwater_testkit::kafka::unique_topic("proc-group");
    // Default changelog topic, created by the processor; one group for every run.
    let text = |t: &common::Topics, state: &str| {
        let raw = common::config_text(&bootstrap, t, &dir.path().join(state), "");
        let g = common::config(&raw).kafka.group_id;
        common::config(
            &raw.replace(&format!("changelog_topic = \"{}\"\n", t.changelog), "")
                .replace("create_topics = false", "create_topics = true")
                .replace(
                    &format!("group_id = \"{g}\""),
                    &format!("group_id = \"{group}\""),
                ),
        )
    };
    let run_until = |cfg: breakwater_processor::config::Config, tel: u64| async move {
        let cancel = CancellationToken::new();
        let progress = Arc::new(run::Progress::default());
        let h = tokio::spawn(run::run_observed(cfg, cancel.clone(), progress.clone()));
        applied(&progress, 0, tel).await;
        stop(cancel, h).await
    };

    // The earlier run: 30 batches per partition.
    let t1 = common::topics(&bootstrap).await;
    let cfg1 = text(&t1, "one.redb");
    let chg1 = cfg1.kafka.changelog_topic.clone();
    assert_eq!(
        chg1,
        format!("{group}-{}-changelog", t1.telemetry),
        "derived from group and input"
    );
    common::produce(&producer, &t1, &per_partition("old", 30)).await;
    let s1 = run_until(cfg1, 60).await;
    assert!(s1.checkpoints > 0);

    // The same group on new topics with 5 batches per partition, a fresh state directory: its
    // own changelog, so it consumes all of them (before: none).
    let t2 = common::topics(&bootstrap).await;
    common::produce(&producer, &t2, &per_partition("new", 5)).await;
    let cfg2 = text(&t2, "two.redb");
    assert_ne!(cfg2.kafka.changelog_topic, chg1);
    let s2 = run_until(cfg2, 10).await;
    assert_eq!((s2.telemetry_records, s2.stats.batches), (10, 10), "{s2:?}");

    // The earlier run's state directory: discarded (it held "old" devices at offsets 30).
    let cfg3 = text(&t2, "one.redb");
    let cfg3_path = cfg3.state.path.clone();
    let chg3 = cfg3.kafka.changelog_topic.clone();
    let cancel = CancellationToken::new();
    let progress = Arc::new(run::Progress::default());
    let h = tokio::spawn(run::run_observed(cfg3, cancel.clone(), progress.clone()));
    // It restores t2's changelog (5 batches applied) and has nothing more to do.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while progress.partitions.load(Ordering::Relaxed) < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "partitions not loaded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s3 = stop(cancel, h).await;
    assert_eq!(s3.telemetry_records, 0, "{s3:?}");
    let store = breakwater_processor::checkpoint::Store::open(&cfg3_path).unwrap();
    for p in 0..common::PARTITIONS {
        let l = store.load(p, &t2.telemetry, &t2.events).unwrap();
        let devices: Vec<&String> = l.partition.devices.keys().collect();
        assert_eq!(devices, [&name_in("new", p, 0)], "partition {p}");
        assert_eq!(l.partition.telemetry_next, Some(5));
    }
    drop(store);
    assert_eq!(chg3, format!("{group}-{}-changelog", t2.telemetry));

    // The earlier run's changelog given explicitly to the new topics: refused, loudly.
    let mut cfg4 = text(&t2, "four.redb");
    cfg4.kafka.changelog_topic.clone_from(&chg1);
    let cancel = CancellationToken::new();
    let h = tokio::spawn(run::run(cfg4, cancel.clone()));
    let err = tokio::time::timeout(Duration::from_secs(60), h)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains(&chg1), "{msg}");
    assert!(
        msg.contains(&t1.telemetry) && msg.contains(&t2.telemetry),
        "{msg}"
    );
    assert!(msg.contains("kafka.changelog_topic"), "{msg}");
}

//! The sender against a real Mosquitto broker and a fake gateway with fault injection.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use breakwater_agent::buffer::{Buffer, FullPolicy, MemoryBuffer, RedbBuffer, RedbOptions};
use breakwater_agent::config::SenderConfig;
use breakwater_agent::sender::{
    DeviceSender, DisconnectReason, LinkOptions, SenderEvent, SenderHandle,
};
use breakwater_protocol::{DeviceId, Reading, StatusKind, Value};
use breakwater_testkit::mosquitto::Mosquitto;
use common::{wait_until, TestGateway};
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(20);

fn reading(i: u64) -> Reading {
    Reading::new("temp", Value::I64(i as i64), 1_764_115_200_000 + i)
}

fn cfg() -> SenderConfig {
    let mut c = SenderConfig {
        batch_max_readings: 10,
        batch_max_delay: Duration::from_millis(20),
        ack_timeout: Duration::from_secs(30),
        ..SenderConfig::default()
    };
    c.backoff.initial = Duration::from_millis(200);
    c.backoff.max = Duration::from_secs(1);
    c
}

type Events = Arc<Mutex<Vec<SenderEvent>>>;

fn start(
    broker: &Mosquitto,
    device: &str,
    buffer: Arc<dyn Buffer>,
    cfg: SenderConfig,
) -> (SenderHandle, Events, DeviceId) {
    let device: DeviceId = device.parse().unwrap();
    let events: Events = Arc::default();
    let ev = events.clone();
    let handle = DeviceSender::new(
        device.clone(),
        buffer,
        Arc::new(LinkOptions::plain("127.0.0.1", broker.port())),
        cfg,
    )
    .with_seed(42)
    .with_events(Arc::new(move |_, e| ev.lock().unwrap().push(e.clone())))
    .spawn(CancellationToken::new());
    (handle, events, device)
}

fn count(events: &Events, f: impl Fn(&SenderEvent) -> bool) -> usize {
    events.lock().unwrap().iter().filter(|e| f(e)).count()
}

#[tokio::test]
async fn acked_readings_are_deleted_and_arrive_in_order_exactly_once() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let gw = TestGateway::start(broker.port()).await;
    let dir = tempfile::tempdir().unwrap();
    let buffer: Arc<dyn Buffer> =
        Arc::new(RedbBuffer::open(dir.path(), RedbOptions::default()).unwrap());
    // Half recorded before the sender starts (a backlog), half while it runs.
    buffer
        .append((1..=125).map(reading).collect())
        .await
        .unwrap();
    let (handle, events, device) = start(&broker, "ack-deletes", buffer.clone(), cfg());
    for i in 126..=250 {
        buffer.append(vec![reading(i)]).await.unwrap();
    }
    assert!(
        wait_until(T, || buffer.stats().readings == 0).await,
        "buffer not emptied by acks: {:?}",
        buffer.stats()
    );
    assert_eq!(handle.acked_upto(), 250);
    {
        let log = gw.log();
        assert_eq!(log.unique_seqs(&device), (1..=250).collect::<Vec<_>>());
        // Every batch carried the right readings for its seqs.
        for b in &log.batches {
            for (seq, r) in b.iter_seq() {
                assert_eq!(r, &reading(seq));
            }
        }
        assert!(log
            .statuses
            .iter()
            .any(|s| s.device == device && s.kind == StatusKind::Birth));
    }
    assert!(
        count(&events, |e| matches!(
            e,
            SenderEvent::Acked {
                latency: Some(_),
                ..
            }
        )) > 0
    );
    // Nothing left on disk either.
    assert!(buffer.read(0, 10, usize::MAX).await.unwrap().is_empty());
    let exit = handle.shutdown(Duration::from_secs(5)).await;
    assert!(exit.drained);
}

#[tokio::test]
async fn a_lost_ack_is_recovered_by_resending_from_the_oldest_unacked() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let gw = TestGateway::start(broker.port()).await;
    gw.knobs().drop_next_acks = 1;
    let buffer: Arc<dyn Buffer> = Arc::new(MemoryBuffer::new(1 << 20, FullPolicy::Block));
    let mut c = cfg();
    c.ack_timeout = Duration::from_millis(300);
    c.initial_credit = 1;
    buffer
        .append((1..=10).map(reading).collect())
        .await
        .unwrap();
    let (handle, events, device) = start(&broker, "lost-ack", buffer.clone(), c);
    assert!(wait_until(T, || buffer.stats().readings == 0).await);
    {
        let log = gw.log();
        assert_eq!(log.acks_dropped, 1);
        assert!(
            log.times_sent(&device, 1) >= 2,
            "batch 1 must have been sent again after its ack was lost: {:?}",
            log.batches.iter().map(|b| b.first_seq).collect::<Vec<_>>()
        );
    }
    assert!(count(&events, |e| *e == SenderEvent::AckTimeout { from_seq: 1 }) >= 1);
    assert!(
        count(&events, |e| matches!(
            e,
            SenderEvent::Sent {
                first_seq: 1,
                resend: true,
                ..
            }
        )) >= 1
    );
    handle.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn no_more_batches_in_flight_than_the_initial_credit_without_acks() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let gw = TestGateway::start(broker.port()).await;
    gw.knobs().withhold_acks = true;
    let buffer: Arc<dyn Buffer> = Arc::new(MemoryBuffer::new(1 << 20, FullPolicy::Block));
    buffer
        .append((1..=100).map(reading).collect())
        .await
        .unwrap();
    let mut c = cfg();
    c.initial_credit = 3;
    let (handle, _events, _) = start(&broker, "credit-initial", buffer.clone(), c);
    assert!(wait_until(T, || gw.log().batches.len() >= 3).await);
    // Give a broken sender ample chance to send more than its credit.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let firsts: Vec<u64> = gw.log().batches.iter().map(|b| b.first_seq).collect();
    assert_eq!(
        firsts,
        vec![1, 11, 21],
        "exactly 3 batches may be in flight"
    );
    assert_eq!(
        buffer.stats().readings,
        100,
        "nothing acked, nothing deleted"
    );
    handle.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn the_gateways_credit_bounds_batches_in_flight() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let gw = TestGateway::start(broker.port()).await;
    {
        let mut k = gw.knobs();
        k.credit = 2;
        k.ack_delay = Duration::from_millis(30);
    }
    let buffer: Arc<dyn Buffer> = Arc::new(MemoryBuffer::new(1 << 20, FullPolicy::Block));
    buffer
        .append((1..=300).map(reading).collect())
        .await
        .unwrap();
    let mut c = cfg();
    c.initial_credit = 4;
    c.max_in_flight = 8;
    let (handle, _events, device) = start(&broker, "credit-acks", buffer.clone(), c);
    assert!(wait_until(T, || buffer.stats().readings == 0).await);
    {
        let log = gw.log();
        assert_eq!(log.unique_seqs(&device).len(), 300);
        assert!(log.batches.len() >= 30);
        assert!(
            log.max_outstanding_before_first_ack <= 4,
            "{}",
            log.max_outstanding_before_first_ack
        );
        assert!(
            log.max_outstanding_after_first_ack <= 2,
            "credit 2 exceeded: {} batches outstanding",
            log.max_outstanding_after_first_ack
        );
        // With acks delayed, the sender did fill its credit (the bound was reached, not idle).
        assert_eq!(log.max_outstanding_after_first_ack, 2);
    }
    handle.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn acks_for_another_epoch_delete_nothing() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let gw = TestGateway::start(broker.port()).await;
    let buffer: Arc<dyn Buffer> = Arc::new(MemoryBuffer::with_epoch(7, 1 << 20, FullPolicy::Block));
    gw.knobs().epoch_override = Some(8);
    buffer
        .append((1..=20).map(reading).collect())
        .await
        .unwrap();
    let (handle, _events, _) = start(&broker, "wrong-epoch", buffer.clone(), cfg());
    assert!(wait_until(T, || gw.log().acks_published >= 2).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(buffer.stats().readings, 20);
    assert_eq!(handle.acked_upto(), 0);
    handle.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn a_cut_fires_the_last_will_then_the_sender_reconnects_and_delivers() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let gw = TestGateway::start(broker.port()).await;
    let buffer: Arc<dyn Buffer> = Arc::new(MemoryBuffer::new(1 << 20, FullPolicy::Block));
    let (handle, events, device) = start(&broker, "cut-me", buffer.clone(), cfg());
    assert!(wait_until(T, || handle.is_connected()).await);
    buffer.append((1..=5).map(reading).collect()).await.unwrap();
    assert!(wait_until(T, || handle.acked_upto() == 5).await);

    assert!(handle.cut(Duration::from_millis(300)));
    assert!(
        wait_until(T, || gw
            .log()
            .statuses
            .iter()
            .any(|s| s.device == device && s.kind == StatusKind::Lost))
        .await,
        "the broker must publish the Lost will after a cut"
    );
    // Recorded during the outage, delivered after the reconnect.
    buffer
        .append((6..=15).map(reading).collect())
        .await
        .unwrap();
    assert!(wait_until(T, || handle.acked_upto() == 15).await);
    assert_eq!(gw.log().unique_seqs(&device), (1..=15).collect::<Vec<_>>());
    assert_eq!(count(&events, |e| *e == SenderEvent::Connected), 2);
    assert!(
        count(&events, |e| *e
            == SenderEvent::Disconnected {
                reason: DisconnectReason::Cut
            })
            == 1
    );
    // The reconnect waited the outage plus a backoff delay.
    assert!(
        count(
            &events,
            |e| matches!(e, SenderEvent::Backoff { delay } if *delay >= Duration::from_millis(300))
        ) >= 1
    );
    let births = gw
        .log()
        .statuses
        .iter()
        .filter(|s| s.device == device && s.kind == StatusKind::Birth)
        .count();
    assert_eq!(births, 2);
    handle.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn graceful_shutdown_drains_and_publishes_death_not_lost() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let gw = TestGateway::start(broker.port()).await;
    let buffer: Arc<dyn Buffer> = Arc::new(MemoryBuffer::new(1 << 20, FullPolicy::Block));
    let mut c = cfg();
    c.batch_max_delay = Duration::from_secs(60); // only the shutdown drain sends the tail
    let (handle, _events, device) = start(&broker, "bye", buffer.clone(), c);
    assert!(wait_until(T, || handle.is_connected()).await);
    buffer
        .append((1..=25).map(reading).collect())
        .await
        .unwrap();
    let exit = handle.shutdown(Duration::from_secs(10)).await;
    assert!(exit.drained, "{exit:?}");
    assert_eq!(exit.acked_upto, 25);
    assert_eq!(buffer.stats().readings, 0);
    assert!(
        wait_until(T, || gw
            .log()
            .statuses
            .iter()
            .any(|s| s.device == device && s.kind == StatusKind::Death))
        .await
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !gw.log().statuses.iter().any(|s| s.kind == StatusKind::Lost),
        "a graceful disconnect must not fire the will"
    );
}

#[tokio::test]
async fn unreachable_gateway_backs_off_and_keeps_everything() {
    let port = breakwater_testkit::free_port(); // nothing listens here
    let buffer: Arc<dyn Buffer> = Arc::new(MemoryBuffer::new(1 << 20, FullPolicy::Block));
    buffer.append((1..=5).map(reading).collect()).await.unwrap();
    let events: Events = Arc::default();
    let ev = events.clone();
    let mut c = cfg();
    c.backoff.initial = Duration::from_millis(20);
    c.backoff.max = Duration::from_millis(80);
    let handle = DeviceSender::new(
        "offline".parse().unwrap(),
        buffer.clone(),
        Arc::new(LinkOptions::plain("127.0.0.1", port)),
        c,
    )
    .with_seed(1)
    .with_events(Arc::new(move |_, e| ev.lock().unwrap().push(e.clone())))
    .spawn(CancellationToken::new());
    assert!(
        wait_until(T, || count(&events, |e| matches!(
            e,
            SenderEvent::Connecting { .. }
        )) >= 5)
        .await
    );
    // Attempts escalate: the reported attempt numbers grow.
    let attempts: Vec<u32> = events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            SenderEvent::Connecting { attempt } => Some(*attempt),
            _ => None,
        })
        .collect();
    assert_eq!(&attempts[..5], &[0, 1, 2, 3, 4]);
    assert_eq!(buffer.stats().readings, 5);
    let exit = handle.shutdown(Duration::from_secs(1)).await;
    assert!(!exit.drained);
}

#[tokio::test]
async fn retry_after_in_an_ack_pauses_sending() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let gw = TestGateway::start(broker.port()).await;
    gw.knobs().retry_after_ms = Some(60_000);
    let buffer: Arc<dyn Buffer> = Arc::new(MemoryBuffer::new(1 << 20, FullPolicy::Block));
    buffer
        .append((1..=100).map(reading).collect())
        .await
        .unwrap();
    let mut c = cfg();
    c.initial_credit = 1;
    let (handle, _events, _) = start(&broker, "retry-after", buffer.clone(), c);
    assert!(wait_until(T, || handle.acked_upto() == 10).await);
    // Credit 4 and 90 readings waiting, but the gateway said "wait 60 s".
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(gw.log().batches.len(), 1, "sent while asked to wait");
    assert_eq!(buffer.stats().readings, 90);
    handle.shutdown(Duration::ZERO).await;
}

/// `drop-oldest` while the device is offline, then a new sender on the same buffer (as after an
/// agent restart: `acked_upto` is derived from the buffer, so only the floor tells the gateway
/// about the gap). The gateway, which never acks past a gap, acks past the declared range and
/// the device drains instead of resending the same batch forever.
#[tokio::test]
async fn readings_dropped_while_offline_are_declared_and_the_device_drains() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let gw = TestGateway::start(broker.port()).await;
    // About 100 readings fit.
    let buffer: Arc<dyn Buffer> = Arc::new(MemoryBuffer::new(4096, FullPolicy::DropOldest));
    buffer.append((1..=5).map(reading).collect()).await.unwrap();
    let (handle, _, device) = start(&broker, "drop-offline", buffer.clone(), cfg());
    assert!(wait_until(T, || handle.acked_upto() == 5).await);
    handle.shutdown(Duration::from_secs(1)).await;

    for i in 6..=500 {
        buffer.append(vec![reading(i)]).await.unwrap();
    }
    let s = buffer.stats();
    assert!(
        s.dropped_total > 0,
        "the budget must have overflowed: {s:?}"
    );
    assert_eq!(
        s.first_seq,
        6 + s.dropped_total,
        "only unsent readings were dropped"
    );
    let first_kept = s.first_seq;

    let mut c = cfg();
    c.ack_timeout = Duration::from_millis(500);
    let (handle, events, _) = start(&broker, "drop-offline", buffer.clone(), c);
    assert!(
        wait_until(T, || handle.acked_upto() == 500).await,
        "the device stalled at {}: {:?}",
        handle.acked_upto(),
        gw.log().floors
    );
    assert_eq!(buffer.stats().readings, 0);
    {
        let log = gw.log();
        assert_eq!(
            log.declared_dropped[&device],
            vec![(6, first_kept - 1)],
            "exactly the dropped readings were declared"
        );
        let expected: Vec<u64> = (1..=5).chain(first_kept..=500).collect();
        assert_eq!(log.unique_seqs(&device), expected);
        assert!(log.floors.iter().all(|f| f.first_seq == first_kept));
    }
    assert_eq!(
        count(&events, |e| *e
            == SenderEvent::FloorSent {
                first_seq: first_kept
            }),
        1,
        "one floor, before the first batch of the connection"
    );
    assert_eq!(
        count(&events, |e| matches!(e, SenderEvent::AckTimeout { .. })),
        0,
        "no resend round was needed"
    );
    handle.shutdown(Duration::from_secs(1)).await;
}

/// Readings dropped while their batches are in flight and unacked: the resend round finds the
/// oldest unacked seq gone, declares the new floor before its first batch, and the gateway acks
/// past the readings it never got.
#[tokio::test]
async fn readings_dropped_mid_connection_are_declared_before_the_next_batch() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let gw = TestGateway::start(broker.port()).await;
    gw.knobs().withhold_acks = true;
    let buffer: Arc<dyn Buffer> = Arc::new(MemoryBuffer::new(4096, FullPolicy::DropOldest));
    let mut c = cfg();
    c.initial_credit = 2;
    c.ack_timeout = Duration::from_millis(300);
    let (handle, events, device) = start(&broker, "drop-live", buffer.clone(), c);
    assert!(wait_until(T, || handle.is_connected()).await);
    buffer
        .append((1..=20).map(reading).collect())
        .await
        .unwrap();
    assert!(wait_until(T, || gw.log().batches.len() >= 2).await);
    // 1..=20 reached the gateway but are unacked; the credit is used up.
    for i in 21..=400 {
        buffer.append(vec![reading(i)]).await.unwrap();
    }
    let dropped = buffer.stats().dropped_total;
    assert!(dropped > 20, "{:?}", buffer.stats());
    gw.knobs().withhold_acks = false;
    assert!(
        wait_until(T, || handle.acked_upto() == 400).await,
        "the device stalled at {}",
        handle.acked_upto()
    );
    {
        let log = gw.log();
        let received = log.unique_seqs(&device);
        let declared: Vec<u64> = log.declared_dropped[&device]
            .iter()
            .flat_map(|&(a, b)| a..=b)
            .collect();
        assert!(!declared.is_empty());
        let mut all: Vec<u64> = received.iter().chain(&declared).copied().collect();
        all.sort_unstable();
        assert_eq!(
            all,
            (1..=400).collect::<Vec<_>>(),
            "every seq was received or declared dropped, none both"
        );
        // Declared = dropped minus the dropped readings the gateway had received before the drop.
        assert_eq!(declared.len() as u64 + 20, dropped);
    }
    assert!(count(&events, |e| matches!(e, SenderEvent::FloorSent { .. })) >= 1);
    handle.shutdown(Duration::from_secs(1)).await;
}

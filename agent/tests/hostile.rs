//! Issue 11 item 7, defence in depth: another client that can publish on a device's ack topic
//! (a forged or retained ack) can neither make it delete readings it never sent nor silence it
//! for long. The attacker here is a plain MQTT client on the same (open) Mosquitto broker that
//! knows the device's epoch (it reads it from the device's acks in the real attack).
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use breakwater_agent::buffer::{Buffer, FullPolicy, MemoryBuffer};
use breakwater_agent::config::SenderConfig;
use breakwater_agent::sender::{DeviceSender, LinkOptions, SenderEvent, SenderHandle};
use breakwater_protocol::{envelope, Ack, DeviceId, Reading, Topic, Value};
use breakwater_testkit::mosquitto::Mosquitto;
use common::{wait_until, TestGateway};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(20);

fn reading(i: u64) -> Reading {
    Reading::new("temp", Value::I64(i as i64), 1_764_115_200_000 + i)
}

fn cfg() -> SenderConfig {
    let mut c = SenderConfig {
        batch_max_readings: 10,
        batch_max_delay: Duration::from_millis(20),
        initial_credit: 2,
        ack_timeout: Duration::from_secs(60),
        max_retry_after: Duration::from_secs(1),
        ..SenderConfig::default()
    };
    c.backoff.initial = Duration::from_millis(200);
    c.backoff.max = Duration::from_secs(1);
    c
}

type Events = Arc<Mutex<Vec<SenderEvent>>>;

fn start(broker: &Mosquitto, device: &DeviceId, buffer: Arc<dyn Buffer>) -> (SenderHandle, Events) {
    let events: Events = Arc::default();
    let ev = events.clone();
    let handle = DeviceSender::new(
        device.clone(),
        buffer,
        Arc::new(LinkOptions::plain("127.0.0.1", broker.port())),
        cfg(),
    )
    .with_seed(7)
    .with_events(Arc::new(move |_, e| ev.lock().unwrap().push(e.clone())))
    .spawn(CancellationToken::new());
    (handle, events)
}

/// Publishes one ack on `device`'s ack topic as another client would, and waits for the PUBACK.
async fn forge(port: u16, ack: &Ack, retain: bool) {
    let mut o = MqttOptions::new(format!("attacker-{port}"), "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut el) = AsyncClient::new(o, 10);
    client
        .publish(
            Topic::ack(&ack.device),
            QoS::AtLeastOnce,
            retain,
            envelope::encode_ack(ack),
        )
        .await
        .unwrap();
    tokio::time::timeout(T, async {
        loop {
            if let Event::Incoming(Incoming::PubAck(_)) = el.poll().await.unwrap() {
                break;
            }
        }
    })
    .await
    .expect("forged ack not published");
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), el.poll()).await;
}

fn acked_events(events: &Events) -> usize {
    events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, SenderEvent::Acked { .. }))
        .count()
}

#[tokio::test]
async fn a_forged_ack_with_a_huge_upto_seq_deletes_nothing_unsent() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let gw = TestGateway::start(broker.port()).await;
    gw.knobs().withhold_acks = true;
    let device: DeviceId = "victim-b".parse().unwrap();
    let buffer: Arc<dyn Buffer> = Arc::new(MemoryBuffer::new(1 << 20, FullPolicy::Block));
    buffer
        .append((1..=100).map(reading).collect())
        .await
        .unwrap();
    let (handle, events) = start(&broker, &device, buffer.clone());
    // Credit 2, no acks: exactly seqs 1..=20 went out.
    assert!(wait_until(T, || gw.log().batches.len() == 2).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(gw.log().unique_seqs(&device), (1..=20).collect::<Vec<_>>());

    forge(
        broker.port(),
        &Ack {
            device: device.clone(),
            epoch: buffer.epoch(),
            upto_seq: 1 << 62,
            credit: 0,
            retry_after_ms: None,
        },
        false,
    )
    .await;
    assert!(wait_until(T, || acked_events(&events) == 1).await);
    // Applied at most up to what this connection sent: 21..=100 never reached the gateway
    // and must all still be buffered.
    let s = buffer.stats();
    assert!(s.first_seq <= 21, "deleted unsent readings: {s:?}");
    assert_eq!(s.next_seq, 101);
    assert!(
        handle.acked_upto() <= 20,
        "acked_upto {}",
        handle.acked_upto()
    );
    let kept = buffer.read(21, 1000, usize::MAX).await.unwrap();
    assert_eq!(kept.first().map(|r| r.0), Some(21));
    assert_eq!(kept.len(), 80);

    // The real gateway acks again (a reconnect resends what it withheld acks for):
    // everything arrives, nothing was lost.
    gw.knobs().withhold_acks = false;
    handle.cut(Duration::from_millis(100));
    assert!(
        wait_until(T, || gw.log().unique_seqs(&device).len() == 100).await,
        "device stalled after the forged ack: gateway has {:?}",
        gw.log().unique_seqs(&device).last()
    );
    assert!(wait_until(T, || buffer.stats().readings == 0).await);
    handle.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_retained_forged_ack_on_every_reconnect_deletes_nothing() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let gw = TestGateway::start(broker.port()).await;
    gw.knobs().withhold_acks = true;
    let device: DeviceId = "victim-r".parse().unwrap();
    let buffer: Arc<dyn Buffer> = Arc::new(MemoryBuffer::new(1 << 20, FullPolicy::Block));
    buffer
        .append((1..=50).map(reading).collect())
        .await
        .unwrap();
    // Retained before the device connects: the broker hands it over right after SUBACK, before
    // anything was sent on the connection.
    forge(
        broker.port(),
        &Ack {
            device: device.clone(),
            epoch: buffer.epoch(),
            upto_seq: u64::MAX,
            credit: 16,
            retry_after_ms: None,
        },
        true,
    )
    .await;
    let (handle, events) = start(&broker, &device, buffer.clone());
    assert!(wait_until(T, || acked_events(&events) >= 1).await);
    assert!(wait_until(T, || !gw.log().batches.is_empty()).await);
    let cut_at = acked_events(&events);
    // A reconnect gets the retained ack again.
    handle.cut(Duration::from_millis(100));
    assert!(wait_until(T, || acked_events(&events) > cut_at).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let unique = gw.log().unique_seqs(&device);
    let s = buffer.stats();
    let sent_max = unique.last().copied().unwrap_or(0);
    assert!(
        s.first_seq <= sent_max + 1,
        "deleted readings never sent: {s:?}, gateway has up to {sent_max}"
    );
    // Nothing the gateway never received is gone from the buffer.
    let kept: Vec<u64> = buffer
        .read(0, 1000, usize::MAX)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.0)
        .collect();
    for seq in 1..=50 {
        assert!(
            unique.contains(&seq) || kept.contains(&seq),
            "seq {seq} neither at the gateway nor buffered"
        );
    }
    handle.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn a_forged_retry_after_of_49_days_pauses_at_most_the_cap() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let gw = TestGateway::start(broker.port()).await;
    gw.knobs().withhold_acks = true;
    let device: DeviceId = "victim-p".parse().unwrap();
    let buffer: Arc<dyn Buffer> = Arc::new(MemoryBuffer::new(1 << 20, FullPolicy::Block));
    buffer
        .append((1..=100).map(reading).collect())
        .await
        .unwrap();
    let (handle, events) = start(&broker, &device, buffer.clone());
    assert!(wait_until(T, || gw.log().batches.len() == 2).await);
    // u32::MAX ms = 49.7 days; the cap (sender.max_retry_after) is 1 s here.
    forge(
        broker.port(),
        &Ack {
            device: device.clone(),
            epoch: buffer.epoch(),
            upto_seq: 0,
            credit: 4,
            retry_after_ms: Some(u32::MAX),
        },
        false,
    )
    .await;
    assert!(wait_until(T, || acked_events(&events) == 1).await);
    // Credit 4, 2 in flight: two more batches go once the (capped) pause ends.
    assert!(
        wait_until(Duration::from_secs(10), || gw.log().batches.len() >= 4).await,
        "the forged retry_after silenced the device: {} batches",
        gw.log().batches.len()
    );
    assert_eq!(
        buffer.stats().readings,
        100,
        "the forged ack deleted readings"
    );
    handle.shutdown(Duration::ZERO).await;
}

/// Issue 11 item 8: the buffer file is created owner-only whatever the umask (the agent runs
/// here under `umask 000`), and an existing file readable by others is narrowed on start.
#[test]
fn the_buffer_file_is_owner_only_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let ingest = breakwater_testkit::free_port();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "device_id = \"perm-test\"\n\
             [gateway]\naddress = \"127.0.0.1:{}\"\n\
             [buffer]\ndir = \"{}\"\n\
             [ingest]\nlisten = \"127.0.0.1:{ingest}\"\n",
            breakwater_testkit::free_port(),
            dir.path().join("buf").display()
        ),
    )
    .unwrap();
    let file = dir.path().join("buf").join("buffer.redb");
    let run = || {
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "umask 000 && exec {} run --config {}",
                env!("CARGO_BIN_EXE_breakwater-agent"),
                config.display()
            ))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        // Listening means the buffer was opened (it is opened first).
        while std::net::TcpStream::connect(("127.0.0.1", ingest)).is_err() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("agent did not start");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(run(), 0o600, "a new buffer file must be owner-only");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(
        run(),
        0o600,
        "an existing file must be narrowed to owner-only"
    );
}

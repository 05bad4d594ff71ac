//! Fleet events on the events topic: birth and graceful death from status messages, `lost` from
//! the last-will rumqttd publishes when a connection dies, and `refused` for a CONNECT that
//! admission control turns down (credentials file made with `hash-secret`).
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use breakwater_protocol::kafka::{FleetEvent, FleetEventKind};
use breakwater_protocol::{envelope, DeviceId, Status, StatusKind, Topic};
use common::*;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};

/// `breakwater-gateway hash-secret`, the secret on stdin.
fn hash(secret: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .arg("hash-secret")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{secret}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn opts(port: u16, id: &str, secret: &str) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_credentials(id, secret);
    o.set_keep_alive(Duration::from_secs(30));
    o
}

/// Connects and returns the first ConnAck-or-error outcome: true when accepted.
async fn try_connect(o: MqttOptions) -> (bool, AsyncClient, rumqttc::EventLoop) {
    let (c, mut el) = AsyncClient::new(o, 10);
    let ok = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(a))) => {
                    return a.code == rumqttc::ConnectReturnCode::Success;
                }
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    })
    .await
    .unwrap_or(false);
    (ok, c, el)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_and_refusals_become_fleet_events() {
    let bootstrap = breakwater_testkit::require_kafka!();
    let topic = breakwater_testkit::kafka::unique_topic("gw-ev-t");
    let events = breakwater_testkit::kafka::unique_topic("gw-ev");
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("credentials");
    std::fs::write(
        &creds,
        format!("ev-ok:{}\nev-lost:{}\n", hash("s3cret"), hash("other")),
    )
    .unwrap();
    let gw = GatewayProc::start(
        dir.path(),
        &format!(
            "[kafka]\nbrokers = \"{bootstrap}\"\ntopic = \"{topic}\"\nevents_topic = \"{events}\"\npartitions = 1\n[auth]\nmode = \"file\"\ncredentials_file = \"{}\"\n",
            creds.display()
        ),
    );

    // Refused: wrong secret.
    let (ok, _, _) = try_connect(opts(gw.mqtt_port, "ev-bad", "nope")).await;
    assert!(!ok, "a device with a wrong secret was admitted");

    // Birth then graceful death.
    let (ok, c, mut el) = try_connect(opts(gw.mqtt_port, "ev-ok", "s3cret")).await;
    assert!(ok);
    let dev = DeviceId::parse("ev-ok").unwrap();
    let pump = tokio::spawn(async move { while el.poll().await.is_ok() {} });
    for kind in [StatusKind::Birth, StatusKind::Death] {
        let s = Status {
            device: dev.clone(),
            epoch: 5,
            kind,
            ts: 10,
        };
        c.publish(
            Topic::status(&dev),
            QoS::AtLeastOnce,
            false,
            envelope::encode_status(&s),
        )
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = c.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), pump).await;

    // Lost: the will fires when the connection dies without DISCONNECT.
    let lost_dev = DeviceId::parse("ev-lost").unwrap();
    let will = Status {
        device: lost_dev.clone(),
        epoch: 6,
        kind: StatusKind::Lost,
        ts: 11,
    };
    let mut o = opts(gw.mqtt_port, "ev-lost", "other");
    o.set_last_will(LastWill::new(
        Topic::status(&lost_dev),
        envelope::encode_status(&will),
        QoS::AtLeastOnce,
        false,
    ));
    let (ok, c2, el2) = try_connect(o).await;
    assert!(ok);
    drop(c2);
    drop(el2); // closes the socket, no DISCONNECT

    fn want(k: FleetEventKind, d: &'static str) -> impl Fn(&FleetEvent) -> bool {
        move |e: &FleetEvent| e.kind == k && e.device.as_str() == d
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let evs: Vec<FleetEvent> = loop {
        let recs = read_topic(&bootstrap, &events, 1, 4).await;
        let evs: Vec<FleetEvent> = recs
            .iter()
            .map(|r| {
                let e = FleetEvent::decode(r.value.as_deref().unwrap()).unwrap();
                assert_eq!(r.key.as_deref(), Some(e.device.as_str().as_bytes()));
                e
            })
            .collect();
        let all = evs.iter().any(want(FleetEventKind::Refused, "ev-bad"))
            && evs.iter().any(want(FleetEventKind::Birth, "ev-ok"))
            && evs.iter().any(want(FleetEventKind::Death, "ev-ok"))
            && evs.iter().any(want(FleetEventKind::Lost, "ev-lost"));
        if all || std::time::Instant::now() > deadline {
            break evs;
        }
    };
    let refused = evs
        .iter()
        .find(|e| want(FleetEventKind::Refused, "ev-bad")(e));
    assert!(refused.is_some(), "no refused event: {evs:?}");
    assert!(refused
        .unwrap()
        .reason
        .as_deref()
        .is_some_and(|r| !r.is_empty()));
    assert!(
        evs.iter()
            .any(|e| want(FleetEventKind::Birth, "ev-ok")(e) && e.epoch == 5),
        "{evs:?}"
    );
    assert!(
        evs.iter().any(want(FleetEventKind::Death, "ev-ok")),
        "{evs:?}"
    );
    assert!(
        evs.iter()
            .any(|e| want(FleetEventKind::Lost, "ev-lost")(e) && e.epoch == 6),
        "{evs:?}"
    );
    assert!(gw.metric("breakwater_gateway_events_total", "kind=\"refused\"") >= 1.0);
}

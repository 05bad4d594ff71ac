//! Security, tested by attacking it: the real gateway binary, a victim device that must lose
//! nothing, and a hostile client on the same network (rumqttc, raw MQTT bytes, mosquitto_pub).
//!
//! Every attack of issue 11: forged acks and floors, cross-device telemetry, wildcard and
//! foreign subscriptions, retained and QoS 2 publishes, foreign wills, the gateway's reserved
//! link ids, taking over another device's id, TLS and mTLS, a stalled TLS handshake, one host
//! flooding the front door, and the CONNACK codes a standard client sees.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use breakwater_protocol::{envelope, Ack, DeviceId, Floor, Topic};
use common::{connect_packet, make_batch, parse_metric, wait_until, GatewayProc};
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS,
    SubscribeReasonCode, TlsConfiguration, Transport,
};

// --- test PKI ---------------------------------------------------------------------------------

use breakwater_testkit::pki::Pki;

/// A rumqttc TLS transport trusting `pki`'s CA, with an optional client certificate.
fn client_tls(pki: &Pki, cert: Option<(String, String)>) -> Transport {
    let ca = std::fs::read(pki.dir.join("ca.pem")).unwrap();
    Transport::Tls(TlsConfiguration::Simple {
        ca,
        alpn: None,
        client_auth: cert.map(|(c, k)| (c.into_bytes(), k.into_bytes())),
    })
}

fn crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

// --- clients ------------------------------------------------------------------------------------

struct Client {
    client: AsyncClient,
    el: EventLoop,
}

#[derive(Debug)]
enum Connected {
    Ok,
    Refused(ConnectReturnCode),
    /// Closed or failed without a CONNACK (e.g. a TLS handshake refused).
    Failed(#[allow(dead_code)] String), // read through Debug, in assertion messages
}

async fn connect(
    port: u16,
    id: &str,
    login: Option<(&str, &str)>,
    transport: Option<Transport>,
    will: Option<rumqttc::LastWill>,
) -> (Client, Connected) {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    if let Some((u, p)) = login {
        o.set_credentials(u, p);
    }
    if let Some(t) = transport {
        o.set_transport(t);
    }
    if let Some(w) = will {
        o.set_last_will(w);
    }
    let (client, mut el) = AsyncClient::new(o, 100);
    let res = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Connected::Ok,
                Ok(_) => {}
                Err(ConnectionError::ConnectionRefused(code)) => return Connected::Refused(code),
                Err(e) => return Connected::Failed(e.to_string()),
            }
        }
    })
    .await
    .unwrap_or(Connected::Failed("no answer in 15 s".into()));
    (Client { client, el }, res)
}

impl Client {
    /// Polls until `f` returns `Some`, the connection ends (`None`), or 10 s pass (`None`).
    async fn until<T>(&mut self, mut f: impl FnMut(&Packet) -> Option<T>) -> Option<T> {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match self.el.poll().await {
                    Ok(Event::Incoming(p)) => {
                        if let Some(t) = f(&p) {
                            return Some(t);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return None,
                }
            }
        })
        .await
        .ok()
        .flatten()
    }

    /// Polls until the broker closes the connection; true if it did within 10 s.
    async fn closed(&mut self) -> bool {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if self.el.poll().await.is_err() {
                    return;
                }
            }
        })
        .await
        .is_ok()
    }

    async fn suback(&mut self, filter: &str) -> Vec<SubscribeReasonCode> {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .unwrap();
        self.until(|p| match p {
            Packet::SubAck(s) => Some(s.return_codes.clone()),
            _ => None,
        })
        .await
        .unwrap_or_else(|| panic!("no SUBACK for {filter}"))
    }
}

/// The victim: subscribes to its ack topic, sends `n` batches of 10 readings and returns the
/// highest ack it saw (it must be exactly what it sent) and every ack.
async fn victim_sends(c: &mut Client, device: &str, first_batch: u64, n: u64) -> Vec<Ack> {
    let id = DeviceId::parse(device).unwrap();
    for b in 0..n {
        let batch = make_batch(device, 7, 1 + (first_batch + b) * 10, 10);
        c.client
            .publish(
                Topic::telemetry(&id),
                QoS::AtLeastOnce,
                false,
                envelope::encode_batch(&batch),
            )
            .await
            .unwrap();
    }
    let want = (first_batch + n) * 10;
    let mut acks = Vec::new();
    let got = c
        .until(|p| {
            if let Packet::Publish(p) = p {
                if let Ok(a) = envelope::decode_ack(&p.payload) {
                    acks.push(a.clone());
                    return (a.upto_seq >= want).then_some(a.upto_seq);
                }
            }
            None
        })
        .await;
    assert_eq!(got, Some(want), "victim {device} not acked; acks {acks:?}");
    acks
}

fn credentials(dir: &Path, devices: &[(&str, &str)]) -> PathBuf {
    let path = dir.join("credentials");
    let text: String = devices
        .iter()
        .map(|(d, s)| format!("{d}:{}\n", breakwater_gateway::admission::hash_secret(s)))
        .collect();
    std::fs::write(&path, text).unwrap();
    path
}

fn file_auth(dir: &Path, devices: &[(&str, &str)]) -> String {
    format!(
        "[auth]\nmode = \"file\"\ncredentials_file = \"{}\"\n",
        credentials(dir, devices).display()
    )
}

// --- the attacks --------------------------------------------------------------------------------

/// Device A, with its own valid credentials, attacks device B every way issue 11 found; B keeps
/// every reading: all acked, all spooled, nothing of A's in B's data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_with_valid_credentials_cannot_touch_another_device() {
    let dir = tempfile::tempdir().unwrap();
    let auth = file_auth(dir.path(), &[("dev-a", "secret-a"), ("dev-b", "secret-b")]);
    let mut g = GatewayProc::start(dir.path(), &auth);
    let port = g.mqtt_port;

    let (mut b, ok) = connect(port, "dev-b", Some(("dev-b", "secret-b")), None, None).await;
    assert!(matches!(ok, Connected::Ok), "{ok:?}");
    assert_eq!(
        b.suback("bw/v1/dev-b/ack").await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    victim_sends(&mut b, "dev-b", 0, 5).await;

    let login = Some(("dev-a", "secret-a"));
    // Read everything: every wildcard and foreign filter is refused with SUBACK 0x80.
    let (mut a, ok) = connect(port, "dev-a", login, None, None).await;
    assert!(matches!(ok, Connected::Ok), "{ok:?}");
    for f in [
        "#",
        "bw/v1/+/telemetry",
        "bw/v1/+/ack",
        "bw/v1/dev-b/ack",
        "bw/v1/dev-b/telemetry",
    ] {
        assert_eq!(
            a.suback(f).await,
            vec![SubscribeReasonCode::Failure],
            "subscription to {f} must be refused"
        );
    }
    // Its own ack topic still works on the same connection.
    assert_eq!(
        a.suback("bw/v1/dev-a/ack").await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );

    let b_id = DeviceId::parse("dev-b").unwrap();
    let a_id = DeviceId::parse("dev-a").unwrap();
    let forged_ack = envelope::encode_ack(&Ack {
        device: b_id.clone(),
        epoch: 7,
        upto_seq: u64::MAX / 2,
        credit: 16,
        retry_after_ms: Some(u32::MAX),
    });
    let forged_floor = envelope::encode_floor(&Floor {
        device: b_id.clone(),
        epoch: 7,
        first_seq: 1 << 62,
    });
    let foreign_batch = envelope::encode_batch(&make_batch("dev-b", 7, 51, 10));
    let own_batch = envelope::encode_batch(&make_batch("dev-a", 1, 1, 10));
    let attacks: Vec<(&str, String, QoS, bool, Vec<u8>)> = vec![
        (
            "forged ack",
            Topic::ack(&b_id),
            QoS::AtLeastOnce,
            false,
            forged_ack.clone(),
        ),
        (
            "retained forged ack",
            Topic::ack(&b_id),
            QoS::AtLeastOnce,
            true,
            forged_ack,
        ),
        (
            "forged floor",
            Topic::telemetry(&b_id),
            QoS::AtLeastOnce,
            false,
            forged_floor,
        ),
        (
            "foreign telemetry",
            Topic::telemetry(&b_id),
            QoS::AtLeastOnce,
            false,
            foreign_batch,
        ),
        (
            "retained own telemetry",
            Topic::telemetry(&a_id),
            QoS::AtLeastOnce,
            true,
            own_batch.clone(),
        ),
        (
            "QoS 2 own telemetry",
            Topic::telemetry(&a_id),
            QoS::ExactlyOnce,
            false,
            own_batch,
        ),
    ];
    for (what, topic, qos, retain, payload) in attacks {
        let (mut a, ok) = connect(port, "dev-a", login, None, None).await;
        assert!(matches!(ok, Connected::Ok), "{what}: {ok:?}");
        a.client.publish(topic, qos, retain, payload).await.unwrap();
        assert!(
            a.closed().await,
            "{what}: the attacker must be disconnected"
        );
    }

    // A will on another device's status topic: CONNACK 5.
    let will = rumqttc::LastWill::new("bw/v1/dev-b/status", vec![1u8], QoS::AtLeastOnce, false);
    let (_, refused) = connect(port, "dev-a", login, None, Some(will)).await;
    assert!(
        matches!(
            refused,
            Connected::Refused(ConnectReturnCode::NotAuthorized)
        ),
        "{refused:?}"
    );

    // B saw no ack it did not earn, and keeps going where it was.
    let acks = victim_sends(&mut b, "dev-b", 5, 5).await;
    assert!(acks
        .iter()
        .all(|a| a.upto_seq <= 100 && a.retry_after_ms.is_none_or(|r| r <= 5_000)));

    let m = g.metrics();
    assert_eq!(
        parse_metric(
            &m,
            "breakwater_gateway_authz_denied_total",
            "action=\"subscribe\""
        ),
        5.0
    );
    assert_eq!(
        parse_metric(
            &m,
            "breakwater_gateway_authz_denied_total",
            "action=\"publish\""
        ),
        6.0
    );
    assert_eq!(
        parse_metric(
            &m,
            "breakwater_gateway_authz_denied_total",
            "action=\"will\""
        ),
        1.0
    );
    assert_eq!(
        parse_metric(
            &m,
            "breakwater_gateway_authz_denied_total",
            "reason=\"retain\""
        ),
        2.0
    );
    assert_eq!(
        parse_metric(
            &m,
            "breakwater_gateway_authz_denied_total",
            "reason=\"qos2\""
        ),
        1.0
    );
    assert_eq!(
        parse_metric(
            &m,
            "rumqttd_connections_closed_total",
            "reason=\"publish_denied\""
        ),
        6.0
    );
    assert!(
        g.log_text().contains("not authorized"),
        "denials are logged"
    );

    drop((a, b));
    assert!(g.terminate());
    let spooled = common::spooled_seqs(&dir.path().join("spool"));
    assert_eq!(
        spooled,
        (1..=100).collect::<Vec<_>>(),
        "B's readings, exactly, and nothing else"
    );
}

/// The gateway's own link ids cannot be used, in open mode either: ingestion keeps going.
/// Identity takeover (A's login with B's id) is refused with CONNACK 4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_ids_and_takeover_are_refused_and_ingestion_keeps_going() {
    let dir = tempfile::tempdir().unwrap();
    let g = GatewayProc::start(dir.path(), "");
    let (mut v, ok) = connect(g.mqtt_port, "victim-1", None, None, None).await;
    assert!(matches!(ok, Connected::Ok), "{ok:?}");
    v.suback("bw/v1/victim-1/ack").await;
    victim_sends(&mut v, "victim-1", 0, 3).await;
    for id in [
        "breakwater-gateway-telemetry",
        "breakwater-gateway-acks",
        "breakwater-gateway-x",
    ] {
        let (_, r) = connect(g.mqtt_port, id, None, None, None).await;
        assert!(
            matches!(r, Connected::Refused(ConnectReturnCode::BadClientId)),
            "{id}: {r:?}"
        );
    }
    victim_sends(&mut v, "victim-1", 3, 3).await;
    let (code, body) = common::http_get(g.metrics_port, "/healthz").unwrap();
    assert_eq!((code, body.trim()), (200, "ok"));
    assert_eq!(
        g.metric(
            "breakwater_gateway_auth_failures_total",
            "reason=\"reserved_client_id\""
        ),
        3.0
    );

    let dir2 = tempfile::tempdir().unwrap();
    let auth = file_auth(dir2.path(), &[("dev-a", "secret-a"), ("dev-b", "secret-b")]);
    let g2 = GatewayProc::start(dir2.path(), &auth);
    for (id, login) in [
        ("dev-b", ("dev-a", "secret-a")),
        ("dev-b", ("dev-b", "secret-a")),
        ("dev-c", ("dev-c", "whatever")),
    ] {
        let (_, r) = connect(g2.mqtt_port, id, Some(login), None, None).await;
        assert!(
            matches!(
                r,
                Connected::Refused(ConnectReturnCode::BadUserNamePassword)
            ),
            "{id} as {login:?}: {r:?}"
        );
    }
}

/// TLS required when set; mTLS ties the client id to the certificate's CN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_identity_is_the_certificate() {
    crypto();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let tls_port = breakwater_testkit::free_port();
    let extra = format!(
        "{}\n[auth]\nmode = \"mtls\"\n",
        pki.gateway_tls_section(tls_port, true)
    );
    let g = GatewayProc::start_full(dir.path(), "plaintext = false", "", &extra);

    // The plaintext port is not served.
    assert!(TcpStream::connect(("127.0.0.1", g.mqtt_port)).is_err());
    // Plain MQTT on the TLS port gets no CONNACK.
    let (_, r) = connect(tls_port, "dev-a", None, None, None).await;
    assert!(matches!(r, Connected::Failed(_)), "{r:?}");
    // TLS without a client certificate: the handshake is refused.
    let (_, r) = connect(tls_port, "dev-a", None, Some(client_tls(&pki, None)), None).await;
    assert!(matches!(r, Connected::Failed(_)), "{r:?}");
    // A certificate for dev-a used with the id dev-b: not authorized.
    let cert_a = pki.issue("dev-a", true);
    let (_, r) = connect(
        tls_port,
        "dev-b",
        None,
        Some(client_tls(&pki, Some(cert_a.clone()))),
        None,
    )
    .await;
    assert!(
        matches!(r, Connected::Refused(ConnectReturnCode::NotAuthorized)),
        "{r:?}"
    );
    // dev-a with its own certificate works end to end.
    let (mut a, r) = connect(
        tls_port,
        "dev-a",
        None,
        Some(client_tls(&pki, Some(cert_a))),
        None,
    )
    .await;
    assert!(matches!(r, Connected::Ok), "{r:?}");
    a.suback("bw/v1/dev-a/ack").await;
    victim_sends(&mut a, "dev-a", 0, 3).await;
    assert_eq!(
        g.metric(
            "breakwater_gateway_auth_failures_total",
            "reason=\"certificate_mismatch\""
        ),
        1.0
    );
}

/// Clients that open TLS connections and never finish the handshake do not delay anyone else's
/// connect (the handshake runs on each connection's own task).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_tls_handshake_does_not_block_other_connects() {
    crypto();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let tls_port = breakwater_testkit::free_port();
    let extra = format!(
        "{}handshake_timeout_ms = 60000\n[admission]\nper_address_max_connections = 100\n",
        pki.gateway_tls_section(tls_port, false)
    );
    let g = GatewayProc::start_full(dir.path(), "connection_timeout_ms = 60000", "", &extra);
    // 20 stalled handshakes: a partial ClientHello each, then silence.
    let stalled: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", tls_port)).unwrap();
            s.write_all(&[0x16, 0x03, 0x01, 0x00, 0x40]).unwrap();
            s
        })
        .collect();
    // Each would hold the accept loop for 60 s if handshakes ran there; a real client gets in
    // well within the 15 s `connect` allows.
    for i in 0..3 {
        let id = format!("dev-{i}");
        let (_, r) = connect(tls_port, &id, None, Some(client_tls(&pki, None)), None).await;
        assert!(matches!(r, Connected::Ok), "{id}: {r:?}");
    }
    drop(stalled);
    drop(g);
}

/// One host flooding the front door spends its own budget: its connections over the cap are
/// closed and its CONNECTs over its rate get CONNACK 3, while devices on another address
/// connect and are acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_starve_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let extra = "[admission]\nper_address_max_connections = 20\nper_address_connect_burst = 10\nper_address_connect_rate_per_sec = 1\n";
    let g = GatewayProc::start(dir.path(), extra);
    let target: SocketAddr = ([127, 0, 0, 1], g.mqtt_port).into();
    let attacker: std::net::IpAddr = [127, 0, 0, 2].into();
    let from_attacker = || {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind((attacker, 0).into()).unwrap();
        s
    };
    // 20 idle sockets hold the attacker's cap; the 21st is closed without a word.
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(from_attacker().connect(target).await.unwrap());
    }
    // The accept loop hands sockets to their tasks in order; give those tasks a moment to
    // count the 20 before the 21st arrives.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut extra_sock = from_attacker().connect(target).await.unwrap();
    let mut buf = [0u8; 4];
    let n = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read(&mut extra_sock, &mut buf),
    )
    .await
    .unwrap();
    assert!(matches!(n, Ok(0) | Err(_)), "closed at once: {n:?}");
    // Meanwhile another address connects fine.
    let (mut v, ok) = connect(g.mqtt_port, "victim-1", None, None, None).await;
    assert!(matches!(ok, Connected::Ok), "{ok:?}");
    drop(held);
    // A CONNECT flood from the attacker: at most its burst gets in, the rest gets CONNACK 3.
    let mut codes = Vec::new();
    for i in 0..30 {
        let mut s = from_attacker().connect(target).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut s, &connect_packet(&format!("flood-{i}"), 30))
            .await
            .unwrap();
        let mut ack = [0u8; 4];
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::io::AsyncReadExt::read_exact(&mut s, &mut ack),
        )
        .await;
        codes.push(r.ok().and_then(Result::ok).map(|_| ack[3]));
    }
    let admitted = codes.iter().filter(|c| **c == Some(0)).count();
    let unavailable = codes.iter().filter(|c| **c == Some(3)).count();
    assert!(admitted <= 11, "{codes:?}");
    assert!(unavailable >= 19, "{codes:?}");
    v.suback("bw/v1/victim-1/ack").await;
    victim_sends(&mut v, "victim-1", 0, 3).await;
    assert!(
        g.metric(
            "breakwater_gateway_connects_refused_total",
            "reason=\"address_rate\""
        ) >= 19.0
    );
    assert!(
        g.metric(
            "breakwater_gateway_connects_refused_total",
            "reason=\"address_connections\""
        ) >= 1.0
    );
}

/// Keep alive 0 is accepted (MQTT 3.1.1 allows it); a second CONNECT closes the connection.
#[test]
fn keepalive_zero_is_accepted_and_a_second_connect_closes() {
    let dir = tempfile::tempdir().unwrap();
    let g = GatewayProc::start(dir.path(), "");
    let mut s = TcpStream::connect(("127.0.0.1", g.mqtt_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&connect_packet("zero-ka", 0)).unwrap();
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).unwrap();
    assert_eq!(ack, [0x20, 0x02, 0x00, 0x00], "CONNACK accepted");
    s.write_all(&connect_packet("zero-ka", 0)).unwrap();
    let mut rest = Vec::new();
    let n = s.read_to_end(&mut rest);
    assert!(matches!(n, Ok(0)) || n.is_err(), "closed: {n:?} {rest:?}");
    assert!(wait_until(Duration::from_secs(5), || {
        g.metric(
            "rumqttd_connections_closed_total",
            "reason=\"second_connect\"",
        ) == 1.0
    }));
}

/// A standard client (mosquitto_pub) sees the CONNACK codes: identifier rejected, bad user name
/// or password.
#[test]
fn mosquitto_pub_sees_connack_codes() {
    let Some(pubbin) = common::which("mosquitto_pub") else {
        assert!(
            std::env::var("CI").is_err(),
            "mosquitto_pub missing under CI"
        );
        eprintln!("skipped: no mosquitto_pub");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let auth = file_auth(dir.path(), &[("dev-a", "secret-a")]);
    let g = GatewayProc::start(dir.path(), &auth);
    let run = |id: &str, user: &str, pass: &str| {
        let out = std::process::Command::new(&pubbin)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &g.mqtt_port.to_string(),
                "-V",
                "mqttv311",
            ])
            .args(["-i", id, "-u", user, "-P", pass, "-q", "1"])
            .args(["-t", &format!("bw/v1/{id}/status"), "-m", "x"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stderr).to_lowercase()
    };
    let reserved = run("breakwater-gateway-acks", "breakwater-gateway-acks", "x");
    assert!(reserved.contains("identifier rejected"), "{reserved}");
    let bad = run("dev-a", "dev-a", "wrong");
    assert!(bad.contains("bad user name or password"), "{bad}");
}

/// SIGHUP reloads the credentials file and the TLS certificates: a device added to the file can
/// connect, a device removed from it cannot, a client trusting only the new CA gets in, and the
/// connected device stays connected and acked throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_credentials_and_certificates_without_dropping_connections() {
    crypto();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = Pki::new(d);
    let tls_port = breakwater_testkit::free_port();
    let creds = credentials(d, &[("dev-a", "secret-a"), ("dev-old", "s-old")]);
    let extra = format!(
        "{}[auth]\nmode = \"file\"\ncredentials_file = \"{}\"\n",
        pki.gateway_tls_section(tls_port, false),
        creds.display()
    );
    let g = GatewayProc::start(d, &extra);
    let tls = |p: &Pki| Some(client_tls(p, None));
    let (mut a, r) = connect(
        tls_port,
        "dev-a",
        Some(("dev-a", "secret-a")),
        tls(&pki),
        None,
    )
    .await;
    assert!(matches!(r, Connected::Ok), "{r:?}");
    a.suback("bw/v1/dev-a/ack").await;
    victim_sends(&mut a, "dev-a", 0, 2).await;
    let (_, r) = connect(
        tls_port,
        "dev-new",
        Some(("dev-new", "s-new")),
        tls(&pki),
        None,
    )
    .await;
    assert!(
        matches!(
            r,
            Connected::Refused(ConnectReturnCode::BadUserNamePassword)
        ),
        "{r:?}"
    );

    // New credentials (dev-old out, dev-new in) and a server certificate from a new CA.
    credentials(d, &[("dev-a", "secret-a"), ("dev-new", "s-new")]);
    let fresh = tempfile::tempdir().unwrap();
    let new_pki = Pki::new(fresh.path());
    for f in ["server.pem", "server.key"] {
        std::fs::copy(fresh.path().join(f), d.join(f)).unwrap();
    }
    let pid = g.child.as_ref().unwrap().id().to_string();
    let hup = || {
        assert!(std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success());
    };
    hup();
    assert!(wait_until(Duration::from_secs(10), || {
        g.metric("breakwater_gateway_reloads_total", "result=\"ok\"") >= 2.0
    }));

    let (_, r) = connect(
        tls_port,
        "dev-new",
        Some(("dev-new", "s-new")),
        tls(&new_pki),
        None,
    )
    .await;
    assert!(matches!(r, Connected::Ok), "added device, new CA: {r:?}");
    let (_, r) = connect(
        tls_port,
        "dev-old",
        Some(("dev-old", "s-old")),
        tls(&new_pki),
        None,
    )
    .await;
    assert!(
        matches!(
            r,
            Connected::Refused(ConnectReturnCode::BadUserNamePassword)
        ),
        "{r:?}"
    );
    let (_, r) = connect(
        tls_port,
        "dev-new",
        Some(("dev-new", "s-new")),
        tls(&pki),
        None,
    )
    .await;
    assert!(
        matches!(r, Connected::Failed(_)),
        "the old CA no longer verifies: {r:?}"
    );
    // The connection made before the reload is still up and acked.
    victim_sends(&mut a, "dev-a", 2, 2).await;

    // A reload that fails keeps what was loaded.
    std::fs::write(&creds, "not a credentials line\n").unwrap();
    hup();
    assert!(wait_until(Duration::from_secs(10), || {
        g.metric("breakwater_gateway_reloads_total", "result=\"error\"") >= 1.0
    }));
    let (_, r) = connect(
        tls_port,
        "dev-new",
        Some(("dev-new", "s-new")),
        tls(&new_pki),
        None,
    )
    .await;
    assert!(
        matches!(r, Connected::Ok),
        "the last good file stays in force: {r:?}"
    );
}

//! Admission control against an embedded (patched) rumqttd on loopback: pacing without drops,
//! refusals with their reasons beyond the waiting room or the wait bound, authentication, and
//! configuration validation.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use breakwater_gateway::admission::probe::{self, ProbeOutcome};
use breakwater_gateway::admission::{
    self, Admission, AdmissionConfig, AdmissionError, AuthConfig, AuthMode, Refused,
};
use tokio::sync::mpsc;

/// rumqttd (no stop method: its threads outlive the test) on a free loopback port with the
/// admission hook installed.
fn start_broker(adm: &Arc<Admission>) -> SocketAddr {
    let port = breakwater_testkit::free_port();
    let listen: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut server = rumqttd::ServerSettings {
        name: "v4".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections: rumqttd::ConnectionSettings {
            connection_timeout_ms: 5_000,
            max_payload_size: 64 * 1024,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: false,
            connect_handler: None,
            authz_handler: None,
            transport_handler: None,
            max_deferred_acks: None,
            deferred_ack_timeout_ms: None,
        },
    };
    adm.install(&mut server.connections, None);
    let config = rumqttd::Config {
        router: rumqttd::RouterConfig {
            max_connections: adm.max_connections() + 10,
            max_outgoing_packet_count: 200,
            max_segment_size: 64 * 1024,
            max_segment_count: 2,
            ..Default::default()
        },
        v4: Some(HashMap::from([("1".to_string(), server)])),
        ..Default::default()
    };
    std::thread::spawn(move || {
        let mut broker = rumqttd::Broker::new(config);
        broker.start().unwrap();
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    // A bare TCP connect that sends nothing: rumqttd drops it after connection_timeout_ms,
    // without calling the hook.
    while std::net::TcpStream::connect(listen).is_err() {
        assert!(
            Instant::now() < deadline,
            "rumqttd did not listen on {listen}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    listen
}

struct Storm {
    accepted: Vec<tokio::net::TcpStream>,
    /// Refused with CONNACK 3, server unavailable (vendor/PATCHES.md, patch 17).
    unavailable: usize,
    other: Vec<String>,
    elapsed: Duration,
    slowest: Duration,
}

/// `n` anonymous CONNECTs at once (open mode), each with a 60 s bound.
async fn storm(addr: SocketAddr, prefix: &str, n: usize) -> Storm {
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let id = format!("{prefix}-{i}");
        set.spawn(async move {
            let t = Instant::now();
            (
                probe::connect(addr, &id, None, Duration::from_secs(60)).await,
                t.elapsed(),
            )
        });
    }
    let mut s = Storm {
        accepted: Vec::new(),
        unavailable: 0,
        other: Vec::new(),
        elapsed: Duration::ZERO,
        slowest: Duration::ZERO,
    };
    while let Some(r) = set.join_next().await {
        let (r, took) = r.unwrap();
        s.slowest = s.slowest.max(took);
        match r {
            Ok(ProbeOutcome::Accepted(c)) => s.accepted.push(c),
            Ok(ProbeOutcome::Refused(3)) => s.unavailable += 1,
            other => s.other.push(format!("{other:?}")),
        }
    }
    s.elapsed = start.elapsed();
    s
}

fn drain(rx: &mut mpsc::Receiver<Refused>) -> Vec<Refused> {
    let mut v = Vec::new();
    while let Ok(r) = rx.try_recv() {
        v.push(r);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_beyond_the_rate_are_paced_not_dropped() {
    let cfg = AdmissionConfig {
        connect_rate_per_sec: 100,
        connect_burst: 20,
        max_waiting: 1_000,
        max_wait_ms: 20_000,
        ..Default::default()
    };
    let adm = Admission::new(&cfg, &AuthConfig::default(), None).unwrap();
    let addr = start_broker(&adm);
    let n = 150;
    let s = storm(addr, "paced", n).await;
    assert!(s.other.is_empty(), "{:?}", s.other);
    assert_eq!(s.unavailable, 0, "nobody refused");
    assert_eq!(s.accepted.len(), n, "all eventually connect");
    // Lower bound from the configuration: beyond the burst, one per 1/rate seconds.
    let floor = Duration::from_secs_f64(
        (n - cfg.connect_burst as usize) as f64 / f64::from(cfg.connect_rate_per_sec),
    );
    assert!(
        s.elapsed >= floor.mul_f64(0.95),
        "{n} connects in {:?}, pacing floor {floor:?}",
        s.elapsed
    );
    let st = adm.stats();
    assert_eq!(st.admitted, n as u64);
    assert_eq!(st.queue_full + st.wait_exceeded + st.auth_failures, 0);
    assert_eq!(st.waiting, 0);
    println!("{n} paced connects in {:?} (floor {floor:?})", s.elapsed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_waiting_refused_as_queue_full() {
    let cfg = AdmissionConfig {
        connect_rate_per_sec: 1,
        connect_burst: 1,
        max_waiting: 3,
        max_wait_ms: 30_000,
        ..Default::default()
    };
    let (tx, mut rx) = mpsc::channel(100);
    let adm = Admission::new(&cfg, &AuthConfig::default(), Some(tx)).unwrap();
    let addr = start_broker(&adm);
    let n = 12;
    let s = storm(addr, "room", n).await;
    assert!(s.other.is_empty(), "{:?}", s.other);
    assert_eq!(s.accepted.len() + s.unavailable, n);
    let st = adm.stats();
    // The burst token plus the 3 waiters get in; the others found the room full (a token that
    // refills while they still arrive, one per second, can let one or two more in).
    assert!(st.queue_full >= 6, "{st:?}");
    assert_eq!(st.queue_full as usize, s.unavailable, "{st:?}");
    assert_eq!(st.admitted as usize, s.accepted.len());
    assert_eq!(st.wait_exceeded, 0);
    let refused = drain(&mut rx);
    assert_eq!(refused.len(), s.unavailable);
    assert!(refused
        .iter()
        .all(|r| r.reason == "queue_full" && r.client_id.starts_with("room-")));
    assert!(
        refused.iter().all(|r| r.at_ms > 1_600_000_000_000),
        "wall-clock ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_wait_refused_as_wait_exceeded_and_never_later() {
    let cfg = AdmissionConfig {
        connect_rate_per_sec: 2,
        connect_burst: 1,
        max_waiting: 100,
        max_wait_ms: 700,
        ..Default::default()
    };
    let (tx, mut rx) = mpsc::channel(100);
    let adm = Admission::new(&cfg, &AuthConfig::default(), Some(tx)).unwrap();
    let addr = start_broker(&adm);
    let n = 12;
    let s = storm(addr, "late", n).await;
    assert!(s.other.is_empty(), "{:?}", s.other);
    assert_eq!(s.accepted.len() + s.unavailable, n);
    let st = adm.stats();
    // The burst token, then one every 500 ms, each needing a turn within 700 ms of arrival:
    // at most 2 plus one per 500 ms that arrivals were spread over (a loaded machine).
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let most = 2 + (s.elapsed.as_secs_f64() * 2.0).ceil() as usize;
    assert!(
        s.accepted.len() <= most,
        "{} admitted in {:?}",
        s.accepted.len(),
        s.elapsed
    );
    assert!(st.wait_exceeded >= 1, "{st:?}");
    assert_eq!(st.wait_exceeded as usize, s.unavailable);
    assert_eq!(st.queue_full, 0);
    // Each CONNECT was answered (admitted or refused) within the wait bound, plus slack for
    // a loaded machine: no half-open pile-up.
    assert!(
        s.slowest < Duration::from_millis(700) + Duration::from_secs(3),
        "{:?}",
        s.slowest
    );
    let refused = drain(&mut rx);
    assert_eq!(refused.len(), s.unavailable);
    assert!(refused.iter().all(|r| r.reason == "wait_exceeded"));
}

/// rumqttd stops authenticating a CONNECT whose client closed its socket (vendor/PATCHES.md,
/// patch 5): the waiter leaves the waiting room at once, is counted as abandoned, and is neither
/// admitted nor refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_leaves_while_waiting_frees_its_place() {
    use tokio::io::AsyncWriteExt;
    let cfg = AdmissionConfig {
        connect_rate_per_sec: 1,
        connect_burst: 1,
        max_waiting: 10,
        max_wait_ms: 60_000,
        ..Default::default()
    };
    let adm = Admission::new(&cfg, &AuthConfig::default(), None).unwrap();
    let addr = start_broker(&adm);
    let first = probe::connect(addr, "stay-0", None, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(matches!(first, ProbeOutcome::Accepted(_)), "{first:?}");
    // Three CONNECTs that wait for their turn (one token per second), then give up.
    let mut waiting = Vec::new();
    for i in 0..3 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(&probe::encode_connect(&format!("leave-{i}"), None, 60))
            .await
            .unwrap();
        waiting.push(s);
    }
    let until = |what: &'static str, cond: &dyn Fn(&admission::AdmissionStats) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let st = adm.stats();
            if cond(&st) {
                return st;
            }
            assert!(Instant::now() < deadline, "{what}: {st:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    // On a slow machine a token (one per second) may admit one of them before they all wait.
    until("three waiting or admitted", &|st| {
        st.waiting + st.admitted == 4
    });
    drop(waiting);
    let st = until("none waiting", &|st| {
        st.waiting == 0 && st.admitted + st.abandoned == 4
    });
    assert!(st.abandoned >= 1, "{st:?}");
    assert_eq!(st.queue_full + st.wait_exceeded, 0, "{st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_are_refused_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("credentials");
    std::fs::write(
        &path,
        format!(
            "# test devices\npress-1:{}\npress-2:{}\n",
            admission::hash_secret("tok-press-1-9f8e7d"),
            admission::hash_secret("tok-press-2-1a2b3c"),
        ),
    )
    .unwrap();
    let auth = AuthConfig {
        mode: AuthMode::File,
        credentials_file: Some(path),
        ..Default::default()
    };
    assert!(auth.validate().is_empty(), "{:?}", auth.validate());
    let (tx, mut rx) = mpsc::channel(100);
    let adm = Admission::new(&AdmissionConfig::default(), &auth, Some(tx)).unwrap();
    let addr = start_broker(&adm);
    let t = Duration::from_secs(10);

    let good = probe::connect(addr, "press-1", Some(("press-1", "tok-press-1-9f8e7d")), t).await;
    assert!(matches!(good, Ok(ProbeOutcome::Accepted(_))), "{good:?}");
    // (client id, login, expected refusal reason, CONNACK code)
    type Case<'a> = (&'a str, Option<(&'a str, &'a str)>, &'a str, u8);
    let cases: [Case; 5] = [
        (
            "press-1",
            Some(("press-1", "tok-press-2-1a2b3c")),
            "bad_credentials",
            4,
        ),
        (
            "press-9",
            Some(("press-9", "tok-press-1-9f8e7d")),
            "bad_credentials",
            4,
        ),
        (
            "press-2",
            Some(("press-1", "tok-press-2-1a2b3c")),
            "username_mismatch",
            4,
        ),
        ("press-2", None, "username_mismatch", 4),
        ("bad id!", Some(("bad id!", "x")), "invalid_client_id", 2),
    ];
    for (id, login, _, code) in &cases {
        let r = probe::connect(addr, id, *login, t).await;
        // The refusal's CONNACK code (vendor/PATCHES.md, patch 17), then the close.
        assert!(
            matches!(r, Ok(ProbeOutcome::Refused(c)) if c == *code),
            "{id}: {r:?}"
        );
    }
    let good2 = probe::connect(addr, "press-2", Some(("press-2", "tok-press-2-1a2b3c")), t).await;
    assert!(matches!(good2, Ok(ProbeOutcome::Accepted(_))), "{good2:?}");

    let st = adm.stats();
    assert_eq!(st.admitted, 2);
    assert_eq!(st.bad_credentials, 2);
    assert_eq!(st.username_mismatch, 2);
    assert_eq!(st.invalid_client_id, 1);
    assert_eq!(st.auth_failures, 5);
    let refused = drain(&mut rx);
    let got: Vec<(&str, &str)> = refused
        .iter()
        .map(|r| (r.client_id.as_str(), r.reason))
        .collect();
    let want: Vec<(&str, &str)> = cases
        .iter()
        .map(|(id, _, reason, _)| (*id, *reason))
        .collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn full_refused_channel_is_counted_not_awaited() {
    let (tx, mut rx) = mpsc::channel(1);
    let adm = Admission::new(
        &AdmissionConfig::default(),
        &AuthConfig::default(),
        Some(tx),
    )
    .unwrap();
    assert!(!adm.check("bad id", "", "").await);
    assert!(!adm.check("also bad", "", "").await);
    assert!(adm.check("fine-1", "", "").await);
    let st = adm.stats();
    assert_eq!(st.refused_events_dropped, 1);
    assert_eq!(st.invalid_client_id, 2);
    assert_eq!(st.admitted, 1);
    assert_eq!(rx.recv().await.unwrap().client_id, "bad id");
}

#[test]
fn config_validation_reports_every_error_with_its_key() {
    assert!(AdmissionConfig::default().validate().is_empty());
    assert!(AuthConfig::default().validate().is_empty());
    let bad = AdmissionConfig {
        max_connections: 0,
        connect_rate_per_sec: 0,
        connect_burst: 0,
        max_wait_ms: 3_600_000,
        max_waiting: 10,
        burst_window_ms: 10,
        burst_baseline_secs: 0,
        burst_factor: 0.5,
        burst_min_rate: f64::NAN,
        per_address_max_connections: 0,
        per_address_max_waiting: 0,
        per_address_connect_rate_per_sec: 0,
        per_address_connect_burst: 0,
        proxy_protocol_from: Vec::new(),
    };
    let keys: Vec<String> = bad.validate().into_iter().map(|(k, _)| k).collect();
    for key in [
        "admission.max_connections",
        "admission.connect_rate_per_sec",
        "admission.connect_burst",
        "admission.max_wait_ms",
        "admission.burst_window_ms",
        "admission.burst_baseline_secs",
        "admission.burst_factor",
        "admission.burst_min_rate",
        "admission.per_address_max_connections",
        "admission.per_address_max_waiting",
        "admission.per_address_connect_rate_per_sec",
        "admission.per_address_connect_burst",
    ] {
        assert!(keys.iter().any(|k| k == key), "{key} missing from {keys:?}");
    }
    let waiting = AdmissionConfig {
        max_connections: 100,
        max_waiting: 200,
        ..Default::default()
    };
    assert_eq!(waiting.validate()[0].0, "admission.max_waiting");

    let no_file = AuthConfig {
        mode: AuthMode::File,
        credentials_file: None,
        ..Default::default()
    };
    assert_eq!(no_file.validate()[0].0, "auth.credentials_file");
    let open_with_file = AuthConfig {
        mode: AuthMode::Open,
        credentials_file: Some("/etc/creds".into()),
        ..Default::default()
    };
    assert_eq!(open_with_file.validate()[0].0, "auth.credentials_file");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("creds");
    std::fs::write(&path, "dev-1\ndev 2:sha256$00$00\n").unwrap();
    let broken = AuthConfig {
        mode: AuthMode::File,
        credentials_file: Some(path.clone()),
        ..Default::default()
    };
    let problems = broken.validate();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].1.contains(&format!("{}:1", path.display())),
        "{problems:?}"
    );
    assert!(
        problems[1].1.contains(&format!("{}:2", path.display())),
        "{problems:?}"
    );
    match Admission::new(&AdmissionConfig::default(), &broken, None) {
        Err(AdmissionError::Credentials { errors }) => assert_eq!(errors.len(), 2),
        other => panic!("{other:?}"),
    }
    match Admission::new(&bad, &AuthConfig::default(), None) {
        Err(AdmissionError::Config { problems }) => assert!(problems.len() >= 8),
        other => panic!("{other:?}"),
    }
}

#[test]
fn config_toml_defaults_and_unknown_keys() {
    let adm: AdmissionConfig = toml::from_str("connect_rate_per_sec = 50").unwrap();
    assert_eq!(adm.connect_rate_per_sec, 50);
    assert_eq!(adm.connect_burst, AdmissionConfig::default().connect_burst);
    assert!(toml::from_str::<AdmissionConfig>("connect_rate = 50").is_err());
    let auth: AuthConfig =
        toml::from_str("mode = \"file\"\ncredentials_file = \"/etc/breakwater/devices\"").unwrap();
    assert_eq!(auth.mode, AuthMode::File);
    assert!(toml::from_str::<AuthConfig>("mode = \"ldap\"").is_err());
    let text = toml::to_string(&AdmissionConfig::default()).unwrap();
    assert_eq!(
        toml::from_str::<AdmissionConfig>(&text).unwrap(),
        AdmissionConfig::default()
    );
}

#[test]
fn observed_connects_drive_the_burst_gauge_and_counter() {
    let cfg = AdmissionConfig {
        burst_window_ms: 1_000,
        burst_baseline_secs: 60,
        burst_min_rate: 50.0,
        ..Default::default()
    };
    let adm = Admission::new(&cfg, &AuthConfig::default(), None).unwrap();
    // A quiet start: nothing observed, no burst.
    adm.tick_burst();
    assert_eq!(adm.stats().bursts, 0);
    // 300 births within the 1 s window: 300/s, above the 50/s floor and a zero baseline.
    for _ in 0..300 {
        adm.observe_connect();
    }
    adm.tick_burst();
    assert_eq!(adm.stats().bursts, 1);
    // Still on: no second start.
    adm.tick_burst();
    assert_eq!(adm.stats().bursts, 1);
}

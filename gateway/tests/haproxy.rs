//! Issue 15: two gateways behind a real HAProxy (Debian package) in TCP mode, the deployment
//! the README's guide describes for an HA pair behind one address. Real agents know only the
//! balancer's address. Gateway A is killed with SIGKILL and stays down: HAProxy's health check
//! takes it out, the agents on it reconnect through the balancer to B and resend everything
//! unacked; Kafka (tansu, ack mode `kafka`) holds every reading each agent confirmed, first
//! appearances in order, duplicates bounded by what was in flight. Then A returns and nothing
//! breaks. And with `send-proxy-v2`: the gateway sees each device's own address through the
//! balancer (PROXY protocol), so the per-address limits still work behind it, and nobody but
//! the balancer can claim an address. Skipped without `haproxy` locally, failed without it
//! under `CI=true`.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use breakwater_agent::buffer::{Buffer, RedbBuffer, RedbOptions};
use breakwater_agent::Agent;
use common::*;

const AGENTS: usize = 6;
const BATCH: u64 = 20;
const MAX_IN_FLIGHT: u64 = 8;

/// HAProxy as a child process, killed on drop.
struct Haproxy {
    child: Child,
    port: u16,
}

impl Haproxy {
    /// TCP mode in front of `backends`, each checked by a TCP connect every 200 ms (down after
    /// 2 failures), as in `deploy/haproxy/haproxy.cfg`.
    fn start(dir: &std::path::Path, backends: &[u16]) -> Option<Self> {
        Self::start_with(dir, backends, "check inter 200ms fall 2 rise 2")
    }

    /// Like [`Self::start`]; `server_options` follow each `server` line.
    fn start_with(dir: &std::path::Path, backends: &[u16], server_options: &str) -> Option<Self> {
        let bin = which("haproxy")?;
        let port = breakwater_testkit::free_port();
        let mut servers = String::new();
        for (i, p) in backends.iter().enumerate() {
            servers.push_str(&format!(
                "    server gw{i} 127.0.0.1:{p} {server_options}\n"
            ));
        }
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(
            &cfg,
            format!(
                "global\n    maxconn 2000\n\
                 defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 5m\n    timeout server 5m\n\
                 frontend mqtt\n    bind 127.0.0.1:{port}\n    default_backend gateways\n\
                 backend gateways\n    balance roundrobin\n    option redispatch\n    retries 2\n\
                 {servers}"
            ),
        )
        .unwrap();
        let check = Command::new(&bin)
            .arg("-c")
            .arg("-f")
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "haproxy -c: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let child = Command::new(&bin)
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let up = wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "haproxy not listening");
        Some(Self { child, port })
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_agent(device: &str, port: u16, dir: &std::path::Path) -> Agent {
    let config = agent_config(
        device,
        &format!("address = \"127.0.0.1:{port}\""),
        dir,
        BATCH,
        MAX_IN_FLIGHT,
    );
    let buffer: Arc<dyn Buffer> = Arc::new(RedbBuffer::open(dir, RedbOptions::default()).unwrap());
    Agent::start_with(config, buffer, None).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_behind_haproxy_move_to_the_surviving_gateway_and_lose_nothing() {
    let bootstrap = breakwater_testkit::require_kafka!();
    let topic = breakwater_testkit::kafka::unique_topic("gw-haproxy");
    let events = breakwater_testkit::kafka::unique_topic("gw-haproxy-ev");
    let kafka = format!(
        "[kafka]\nbrokers = \"{bootstrap}\"\ntopic = \"{topic}\"\nevents_topic = \"{events}\"\npartitions = 2\n"
    );
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let mut a = GatewayProc::start_with(dir_a.path(), "ack_mode = \"kafka\"", &kafka);
    let b = GatewayProc::start_with(dir_b.path(), "ack_mode = \"kafka\"", &kafka);
    let lb_dir = tempfile::tempdir().unwrap();
    let Some(lb) = Haproxy::start(lb_dir.path(), &[a.mqtt_port, b.mqtt_port]) else {
        assert!(
            !breakwater_testkit::in_ci(),
            "haproxy is not installed (scripts/setup installs it); required under CI"
        );
        eprintln!("skipped: haproxy not installed");
        return;
    };

    let devices = names("haproxy", AGENTS);
    let agent_dirs: Vec<_> = (0..AGENTS).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut agents = Vec::new();
    for (d, dir) in devices.iter().zip(&agent_dirs) {
        agents.push(start_agent(d, lb.port, dir.path()).await);
    }

    // Phase 1: round robin spreads the agents over both gateways; everything acked.
    record_all(&agents, 1..=200).await;
    flush_all(&agents, &devices, 200, Duration::from_secs(60), String::new).await;
    // The gauge is refreshed by the status sampler (once a second).
    assert!(
        wait_until(Duration::from_secs(10), || a
            .metric("breakwater_gateway_connected_devices", "")
            >= 1.0),
        "no agent on A: {}",
        a.metrics()
    );

    // Phase 2: A dies with readings in flight and stays down; recording goes on.
    record_all(&agents, 201..=600).await;
    a.kill9();
    record_all(&agents, 601..=1_000).await;
    flush_all(&agents, &devices, 1_000, Duration::from_secs(90), || {
        "after A died".to_owned()
    })
    .await;
    assert!(
        wait_until(Duration::from_secs(10), || b
            .metric("breakwater_gateway_connected_devices", "")
            == AGENTS as f64),
        "every agent is on B: {}",
        b.metric("breakwater_gateway_connected_devices", "")
    );

    // Phase 3: A returns; the agents keep working (new connections may go to either).
    a.spawn();
    record_all(&agents, 1_001..=1_200).await;
    flush_all(
        &agents,
        &devices,
        1_200,
        Duration::from_secs(60),
        String::new,
    )
    .await;
    for agent in agents {
        let _ = agent.shutdown().await;
    }

    let total = 1_200;
    let by = read_until_complete(&bootstrap, &topic, 2, &devices, total).await;
    assert_complete_in_order(&by, &devices, total);
    for d in &devices {
        let dups = by[d].len() as u64 - total;
        assert!(dups <= MAX_IN_FLIGHT * BATCH, "{d}: {dups} duplicates");
    }
}

/// Connects from `source` to `target`, sends `preamble` and a CONNECT for `id`; returns the
/// socket and the CONNACK return code (`None`: closed without one).
async fn mqtt_connect(
    source: IpAddr,
    target: SocketAddr,
    preamble: &[u8],
    id: &str,
) -> (tokio::net::TcpStream, Option<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind((source, 0).into()).unwrap();
    let mut s = sock.connect(target).await.unwrap();
    let mut bytes = preamble.to_vec();
    bytes.extend(connect_packet(id, 30));
    // The gateway may close first (a refused connection); that shows in the read.
    let _ = s.write_all(&bytes).await;
    let mut ack = [0u8; 4];
    let code = match tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut ack)).await {
        Ok(Ok(_)) if ack[0] == 0x20 => Some(ack[3]),
        _ => None,
    };
    (s, code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_protocol_gives_each_device_its_own_address_behind_haproxy() {
    let dir = tempfile::tempdir().unwrap();
    // Only the balancer (127.0.0.1) may send a PROXY header; at most 3 connections per address.
    let g = GatewayProc::start(
        dir.path(),
        "[admission]\nproxy_protocol_from = [\"127.0.0.1\"]\nper_address_max_connections = 3\n",
    );
    let lb_dir = tempfile::tempdir().unwrap();
    let Some(lb) = Haproxy::start_with(lb_dir.path(), &[g.mqtt_port], "send-proxy-v2") else {
        assert!(
            !breakwater_testkit::in_ci(),
            "haproxy is not installed (scripts/setup installs it); required under CI"
        );
        eprintln!("skipped: haproxy not installed");
        return;
    };
    let via_lb: SocketAddr = ([127, 0, 0, 1], lb.port).into();
    let direct: SocketAddr = ([127, 0, 0, 1], g.mqtt_port).into();
    let host_a: IpAddr = [127, 0, 0, 2].into();
    let host_b: IpAddr = [127, 0, 0, 3].into();
    let intruder: IpAddr = [127, 0, 0, 4].into();

    // Host A fills its own cap of 3 through the balancer; its 4th is closed.
    let mut held = Vec::new();
    for i in 0..3 {
        let (s, code) = mqtt_connect(host_a, via_lb, &[], &format!("a-{i}")).await;
        assert_eq!(code, Some(0), "host A connection {i}");
        held.push(s);
    }
    let (_s, code) = mqtt_connect(host_a, via_lb, &[], "a-3").await;
    assert_eq!(code, None, "host A over its cap is closed");
    // Host B, through the same balancer, is not lumped together with A.
    let (s, code) = mqtt_connect(host_b, via_lb, &[], "b-0").await;
    assert_eq!(code, Some(0), "host B has its own budget");
    held.push(s);
    assert!(
        g.metric("breakwater_gateway_address_connections_refused_total", "") >= 1.0,
        "{}",
        g.metrics()
    );

    // A device talking to the gateway directly cannot claim host B's address: its PROXY
    // header is not read (it is not the balancer), so its stream is broken MQTT.
    let forged = b"PROXY TCP4 127.0.0.3 127.0.0.1 40000 1883\r\n";
    let (_s, code) = mqtt_connect(intruder, direct, forged, "intruder").await;
    assert_eq!(code, None, "a forged header from a device is not honoured");
    // The balancer's own address without a header is refused and counted.
    let (_s, code) = mqtt_connect([127, 0, 0, 1].into(), direct, &[], "no-header").await;
    assert_eq!(code, None, "the balancer's address must send a header");
    assert!(
        wait_until(Duration::from_secs(5), || g.metric(
            "breakwater_gateway_proxy_protocol_refused_total",
            "reason=\"missing\""
        ) >= 1.0),
        "{}",
        g.metrics()
    );
    // Host B is still served: its budget was not spent by the forgery.
    let (_s, code) = mqtt_connect(host_b, via_lb, &[], "b-1").await;
    assert_eq!(code, Some(0));
    drop(held);
}

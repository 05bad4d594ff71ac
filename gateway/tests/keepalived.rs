//! The README's other HA pair: two gateways sharing one virtual IP with keepalived (VRRP), run
//! with the shipped `deploy/keepalived/keepalived.conf` (only the interface, the address and
//! the second node's state and priority changed, as its header says). Two network namespaces
//! stand in for the two nodes, joined by a bridge on this host where the agents and Kafka
//! (tansu) live; each node runs its gateway and its keepalived, whose health check is the
//! config's own `curl .../readyz` on the node's loopback. The agents know only the VIP.
//!
//! Gateway A (the MASTER) is killed with SIGKILL: its keepalived sees `/readyz` fail, the VIP
//! moves to B, the agents reconnect to the same address and resend everything unacked; Kafka
//! (ack mode `kafka`) holds every reading, first appearances in order, duplicates bounded by
//! what was in flight. Then A returns, takes the VIP back (preemption) and nothing breaks.
//!
//! Needs root (network namespaces), `ip`, `curl` and `keepalived` (scripts/setup installs
//! them). Skipped where namespaces cannot be made (not root, no CAP_NET_ADMIN); keepalived
//! missing fails under `CI=true`.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use breakwater_agent::buffer::{Buffer, RedbBuffer, RedbOptions};
use breakwater_agent::Agent;
use common::*;

const AGENTS: usize = 4;
const BATCH: u64 = 20;
const MAX_IN_FLIGHT: u64 = 8;
/// Where the gateways listen inside their namespace: the config's health check URL.
const METRICS: &str = "127.0.0.1:9464";

/// Runs `ip args`; true on success.
fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A bridge on this host (the "LAN") and two namespaces (the nodes) plugged into it. Names
/// and subnet carry the process id, so a leftover of a killed run does not collide.
struct Lan {
    bridge: String,
    ns: [String; 2],
    veth: [String; 2],
    net: String,
}

impl Lan {
    fn create() -> Option<Self> {
        let tag = std::process::id() % 10_000;
        let lan = Self {
            bridge: format!("bwbr{tag}"),
            ns: [format!("bwka{tag}"), format!("bwkb{tag}")],
            veth: [format!("bwva{tag}"), format!("bwvb{tag}")],
            net: format!("10.201.{}", tag % 250),
        };
        if !ip(&["netns", "add", &lan.ns[0]]) {
            return None;
        }
        let host = format!("{}.100/24", lan.net);
        let mut ok = ip(&["netns", "add", &lan.ns[1]])
            && ip(&["link", "add", &lan.bridge, "type", "bridge"])
            && ip(&["addr", "add", &host, "dev", &lan.bridge])
            && ip(&["link", "set", &lan.bridge, "up"]);
        for i in 0..2 {
            let peer = format!("{}p", lan.veth[i]);
            let addr = format!("{}.{}/24", lan.net, i + 1);
            ok =
                ok && ip(&[
                    "link",
                    "add",
                    &lan.veth[i],
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &peer,
                ]) && ip(&["link", "set", &peer, "master", &lan.bridge, "up"])
                    && ip(&["link", "set", &lan.veth[i], "netns", &lan.ns[i]])
                    && lan.exec_ok(i, &["ip", "addr", "add", &addr, "dev", &lan.veth[i]])
                    && lan.exec_ok(i, &["ip", "link", "set", &lan.veth[i], "up"])
                    && lan.exec_ok(i, &["ip", "link", "set", "lo", "up"]);
        }
        // Dropped (and cleaned up) if any step failed.
        ok.then_some(lan)
    }

    fn host(&self) -> String {
        format!("{}.100", self.net)
    }

    fn vip(&self) -> String {
        format!("{}.10", self.net)
    }

    fn cmd(&self, node: usize, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns[node]]).args(args);
        c
    }

    fn exec_ok(&self, node: usize, args: &[&str]) -> bool {
        self.cmd(node, args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn has_vip(&self, node: usize) -> bool {
        self.cmd(node, &["ip", "-o", "addr", "show", "dev", &self.veth[node]])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("{}/", self.vip())))
    }

    /// A metric of node `node`'s gateway (0 when it cannot be read).
    fn metric(&self, node: usize, name: &str) -> f64 {
        let url = format!("http://{METRICS}/metrics");
        self.cmd(node, &["curl", "-fsS", "--max-time", "2", &url])
            .output()
            .map(|o| parse_metric(&String::from_utf8_lossy(&o.stdout), name, ""))
            .unwrap_or(0.0)
    }

    fn ready(&self, node: usize) -> bool {
        let url = format!("http://{METRICS}/readyz");
        self.exec_ok(
            node,
            &["curl", "-fsS", "-o", "/dev/null", "--max-time", "1", &url],
        )
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in &self.ns {
            ip(&["netns", "del", ns]);
        }
        ip(&["link", "del", &self.bridge]);
    }
}

/// A process in a node's namespace, killed on drop.
struct NodeProc {
    child: Option<Child>,
    log: PathBuf,
}

impl NodeProc {
    fn spawn(lan: &Lan, node: usize, args: &[&str], log: PathBuf) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = lan
            .cmd(node, args)
            .env("BREAKWATER_LOG", "info,rumqttd=error,librdkafka=error")
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Self {
            child: Some(child),
            log,
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn start_gateway(lan: &Lan, node: usize, dir: &Path, kafka: &str) -> NodeProc {
    let config = dir.join("gateway.toml");
    if !config.exists() {
        let topic = "telemetry";
        std::fs::write(
            &config,
            format!(
                "[auth]\n# The test's private bridge; a plant uses file or mtls.\nallow_open_on_network = true\n\
                 [mqtt]\nlisten = \"0.0.0.0:1883\"\n[metrics]\nlisten = \"{METRICS}\"\n\
                 [spool]\ndir = \"{}\"\nack_mode = \"kafka\"\n\
                 [kafka]\nbrokers = \"{kafka}\"\ntopic = \"{topic}\"\nevents_topic = \"events\"\npartitions = 2\n",
                dir.join("spool").display()
            ),
        )
        .unwrap();
    }
    let mut g = NodeProc::spawn(
        lan,
        node,
        &[BIN, "run", "--config", config.to_str().unwrap()],
        dir.join("gateway.log"),
    );
    let ready = wait_until(Duration::from_secs(60), || {
        lan.ready(node)
            || g.child
                .as_mut()
                .is_some_and(|c| c.try_wait().unwrap().is_some())
    });
    assert!(
        ready && lan.ready(node),
        "gateway {node} not ready:\n{}",
        g.log_text()
    );
    g
}

/// The shipped config for `node` (0: MASTER as shipped, 1: the BACKUP the header describes).
fn keepalived_config(lan: &Lan, node: usize, dir: &Path) -> PathBuf {
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/keepalived/keepalived.conf"),
    )
    .unwrap();
    let replace = |s: String, from: &str, to: &str| {
        assert!(
            s.contains(from),
            "deploy/keepalived/keepalived.conf has no `{from}`"
        );
        s.replace(from, to)
    };
    let mut cfg = replace(
        shipped,
        "interface eth0",
        &format!("interface {}", lan.veth[node]),
    );
    cfg = replace(cfg, "10.0.0.10/24", &format!("{}/24", lan.vip()));
    if node == 1 {
        cfg = replace(cfg, "state MASTER", "state BACKUP");
        cfg = replace(cfg, "priority 150", "priority 100");
    }
    let path = dir.join("keepalived.conf");
    std::fs::write(&path, cfg).unwrap();
    path
}

fn start_keepalived(lan: &Lan, node: usize, dir: &Path) -> NodeProc {
    let cfg = keepalived_config(lan, node, dir);
    let pid = dir.join("keepalived.pid");
    let vrrp = dir.join("vrrp.pid");
    NodeProc::spawn(
        lan,
        node,
        &[
            "keepalived",
            "--dont-fork",
            "--log-console",
            "--vrrp",
            "--use-file",
            cfg.to_str().unwrap(),
            "--pid",
            pid.to_str().unwrap(),
            "--vrrp_pid",
            vrrp.to_str().unwrap(),
        ],
        dir.join("keepalived.log"),
    )
}

async fn start_agent(device: &str, vip: &str, dir: &Path) -> Agent {
    let config = agent_config(
        device,
        &format!("address = \"{vip}:1883\""),
        dir,
        BATCH,
        MAX_IN_FLIGHT,
    );
    let buffer: Arc<dyn Buffer> = Arc::new(RedbBuffer::open(dir, RedbOptions::default()).unwrap());
    Agent::start_with(config, buffer, None).await.unwrap()
}

fn wait_vip(lan: &Lan, on: usize, within: Duration, logs: &[&NodeProc]) {
    let start = Instant::now();
    let off = 1 - on;
    let moved = wait_until(within, || lan.has_vip(on) && !lan.has_vip(off));
    let logs: String = logs.iter().map(|p| p.log_text() + "\n----\n").collect();
    assert!(
        moved,
        "the VIP is not (only) on node {on} after {within:?}:\n{logs}"
    );
    eprintln!("VIP on node {on} after {:?}", start.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_on_a_keepalived_vip_move_to_the_surviving_gateway_and_lose_nothing() {
    if breakwater_testkit::kafka::bootstrap().is_none() {
        return;
    }
    if which("keepalived").is_none() {
        assert!(
            !breakwater_testkit::in_ci(),
            "keepalived is not installed (scripts/setup installs it); required under CI"
        );
        eprintln!("skipped: keepalived not installed");
        return;
    }
    let Some(lan) = Lan::create() else {
        eprintln!("skipped: cannot create network namespaces here (needs root / CAP_NET_ADMIN)");
        return;
    };
    let kafka = PrivateKafka::start_on(&lan.host()).expect("tansu binary on PATH");
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut gw_a = start_gateway(&lan, 0, dirs[0].path(), &kafka.bootstrap());
    let gw_b = start_gateway(&lan, 1, dirs[1].path(), &kafka.bootstrap());
    let ka_a = start_keepalived(&lan, 0, dirs[0].path());
    let ka_b = start_keepalived(&lan, 1, dirs[1].path());
    wait_vip(&lan, 0, Duration::from_secs(20), &[&ka_a, &ka_b]);

    let devices = names("vip", AGENTS);
    let agent_dirs: Vec<_> = (0..AGENTS).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut agents = Vec::new();
    for (d, dir) in devices.iter().zip(&agent_dirs) {
        agents.push(start_agent(d, &lan.vip(), dir.path()).await);
    }

    // Phase 1: through the VIP to A; everything acked.
    record_all(&agents, 1..=200).await;
    flush_all(&agents, &devices, 200, Duration::from_secs(60), String::new).await;

    // Phase 2: A's gateway dies with readings in flight; keepalived moves the VIP to B.
    record_all(&agents, 201..=600).await;
    gw_a.kill9();
    record_all(&agents, 601..=1_000).await;
    flush_all(&agents, &devices, 1_000, Duration::from_secs(90), || {
        format!(
            "after A's gateway died:\n{}\n----\n{}",
            ka_a.log_text(),
            ka_b.log_text()
        )
    })
    .await;
    wait_vip(&lan, 1, Duration::from_secs(10), &[&ka_a, &ka_b]);
    // The gauge is refreshed by the status sampler (once a second).
    assert!(
        wait_until(Duration::from_secs(10), || lan
            .metric(1, "breakwater_gateway_connected_devices")
            == AGENTS as f64),
        "every agent is on B: {}",
        lan.metric(1, "breakwater_gateway_connected_devices")
    );

    // Phase 3: A's gateway returns; A takes the VIP back and the agents follow it.
    gw_a = start_gateway(&lan, 0, dirs[0].path(), &kafka.bootstrap());
    wait_vip(&lan, 0, Duration::from_secs(30), &[&ka_a, &ka_b]);
    record_all(&agents, 1_001..=1_200).await;
    flush_all(
        &agents,
        &devices,
        1_200,
        Duration::from_secs(90),
        String::new,
    )
    .await;
    for agent in agents {
        let _ = agent.shutdown().await;
    }

    let total = 1_200;
    let by = read_until_complete(&kafka.bootstrap(), "telemetry", 2, &devices, total).await;
    assert_complete_in_order(&by, &devices, total);
    for d in &devices {
        let dups = by[d].len() as u64 - total;
        assert!(dups <= 2 * MAX_IN_FLIGHT * BATCH, "{d}: {dups} duplicates");
    }
    drop((gw_a, gw_b, ka_a, ka_b));
}

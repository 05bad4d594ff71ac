//! Issue 18: shutdown is one deadline for the whole agent, whatever the gateway does.
//!
//! The real binary against Mosquitto and a test gateway that stops acking; the gateway (the
//! broker) goes away right after SIGTERM, while the agent drains. Before the fix the agent
//! then reconnected with backoff for ever and ignored further SIGTERMs.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use breakwater_protocol::DeviceId;
use breakwater_testkit::mosquitto::Mosquitto;
use common::{wait_until, TestGateway};

const BIN: &str = env!("CARGO_BIN_EXE_breakwater-agent");
const DEVICE: &str = "drain-deadline";
const READINGS: u64 = 40;

/// The agent process; killed on drop so a failing assertion leaves nothing running.
struct AgentProc {
    child: Child,
    log: PathBuf,
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl AgentProc {
    fn start(dir: &Path, broker_port: u16, ingest: u16, extra: &str, run: u32) -> Self {
        let config = dir.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "device_id = \"{DEVICE}\"\n\
                 [gateway]\naddress = \"127.0.0.1:{broker_port}\"\nconnect_timeout = \"2s\"\n\
                 [buffer]\ndir = \"{}\"\n\
                 [ingest]\nlisten = \"127.0.0.1:{ingest}\"\n\
                 [sender]\nbatch_max_delay = \"20ms\"\nack_timeout = \"60s\"\n\
                 [sender.backoff]\ninitial = \"30s\"\nmax = \"2m\"\n\
                 {extra}",
                dir.join("buf").display()
            ),
        )
        .unwrap();
        let log = dir.join(format!("agent-{run}.log"));
        let child = Command::new(BIN)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env("BREAKWATER_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self { child, log }
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success());
    }

    /// Waits (bounded) for the exit; `None` if it is still running after `within`.
    async fn wait_exit(&mut self, within: Duration) -> Option<(ExitStatus, Duration)> {
        let started = Instant::now();
        while started.elapsed() < within {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some((st, started.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Writes `n` readings to the ingest endpoint and checks each was confirmed.
fn ingest(port: u16, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let s = loop {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", port)) {
            break s;
        }
        assert!(Instant::now() < deadline, "agent did not listen");
        std::thread::sleep(Duration::from_millis(20));
    };
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    for i in 0..n {
        writeln!(w, "{{\"metric\":\"m\",\"value\":{i}}}").unwrap();
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(line.contains("\"ok\":true"), "{line}");
    }
}

/// The value of `key=` in the last log line containing `message`.
fn logged(log: &str, message: &str, key: &str) -> Option<u64> {
    let line = log.lines().rev().find(|l| l.contains(message))?;
    let at = line.find(&format!("{key}="))? + key.len() + 1;
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_lost_during_the_drain_ends_at_the_deadline_and_a_restart_sends_the_rest() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let gw = TestGateway::start(broker.port()).await;
    gw.knobs().withhold_acks = true;
    let device: DeviceId = DEVICE.parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ingest_port = breakwater_testkit::free_port();
    let drain = Duration::from_secs(3);
    let mut agent = AgentProc::start(
        dir.path(),
        broker.port(),
        ingest_port,
        "[shutdown]\ndrain_timeout = \"3s\"\n",
        1,
    );
    ingest(ingest_port, READINGS);
    // Batches reached the gateway, none was acked: the agent waits for acks (credit spent).
    assert!(
        wait_until(Duration::from_secs(20), || !gw.log().batches.is_empty()).await,
        "the agent did not send"
    );

    agent.signal("-TERM");
    // The gateway goes away just after the agent received SIGTERM, during its drain.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(gw);
    drop(broker);

    // Drain deadline plus a margin for the graceful close and the process exit, far below the
    // 30 s backoff window a reconnect would otherwise wait through.
    let exit = agent.wait_exit(drain + Duration::from_secs(7)).await;
    let log = agent.log_text();
    let Some((status, took)) = exit else {
        panic!("agent still running {drain:?} + 7s after SIGTERM:\n{log}");
    };
    assert!(status.success(), "{status:?}\n{log}");
    eprintln!("agent exited {took:?} after SIGTERM");
    assert_eq!(
        logged(&log, "agent stopped", "left_buffered"),
        Some(READINGS),
        "the shutdown log must say what stayed buffered:\n{log}"
    );
    assert!(log.contains("drained=false"), "{log}");
    drop(agent);

    // A restart with a gateway that acks sends what stayed buffered.
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let gw = TestGateway::start(broker.port()).await;
    let mut agent = AgentProc::start(
        dir.path(),
        broker.port(),
        ingest_port,
        "[shutdown]\ndrain_timeout = \"3s\"\n",
        2,
    );
    assert!(
        wait_until(Duration::from_secs(30), || gw
            .log()
            .published_upto
            .get(&device)
            == Some(&READINGS))
        .await,
        "the restarted agent did not send the buffered readings:\n{}",
        agent.log_text()
    );
    assert_eq!(
        gw.log().unique_seqs(&device),
        (1..=READINGS).collect::<Vec<_>>()
    );
    agent.signal("-TERM");
    let (status, _) = agent
        .wait_exit(drain + Duration::from_secs(7))
        .await
        .expect("agent did not exit after SIGTERM");
    assert!(status.success());
    let log = agent.log_text();
    assert_eq!(
        logged(&log, "agent stopped", "left_buffered"),
        Some(0),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_skips_the_drain() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let gw = TestGateway::start(broker.port()).await;
    gw.knobs().withhold_acks = true;
    let dir = tempfile::tempdir().unwrap();
    let ingest_port = breakwater_testkit::free_port();
    let mut agent = AgentProc::start(
        dir.path(),
        broker.port(),
        ingest_port,
        "[shutdown]\ndrain_timeout = \"5m\"\n",
        1,
    );
    ingest(ingest_port, READINGS);
    assert!(wait_until(Duration::from_secs(20), || !gw.log().batches.is_empty()).await);
    agent.signal("-TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "the first SIGTERM must drain (5 min) while acks are missing"
    );
    agent.signal("-TERM");
    let exit = agent.wait_exit(Duration::from_secs(10)).await;
    let log = agent.log_text();
    let Some((status, _)) = exit else {
        panic!("a second SIGTERM did not end the 5 min drain:\n{log}");
    };
    assert!(status.success(), "{status:?}\n{log}");
    assert!(log.contains("skipping the drain"), "{log}");
    assert_eq!(
        logged(&log, "agent stopped", "left_buffered"),
        Some(READINGS),
        "{log}"
    );
}

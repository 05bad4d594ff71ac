//! kill -9 recovery: a real agent process is SIGKILLed while clients stream readings into its
//! ingest endpoint; every reading it confirmed must be in the reopened buffer.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use breakwater_agent::buffer::{Buffer, RedbBuffer, RedbOptions};
use breakwater_protocol::Value;

const CLIENTS: usize = 4;
const KILL_AFTER_CONFIRMED: usize = 3_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_confirmed_reading_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let port = breakwater_testkit::free_port();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "device_id = \"crash-test\"\n\
             [gateway]\naddress = \"127.0.0.1:{}\"\n\
             [buffer]\ndir = \"{}\"\n\
             [ingest]\nlisten = \"127.0.0.1:{port}\"\n",
            breakwater_testkit::free_port(),
            dir.path().join("buf").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_breakwater-agent"))
        .arg("run")
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "agent did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }

    let confirmed_count = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let confirmed_count = confirmed_count.clone();
        let stop = stop.clone();
        clients.push(std::thread::spawn(move || {
            // (seq, client, i) confirmed by the agent.
            let mut confirmed = Vec::new();
            let Ok(s) = TcpStream::connect(("127.0.0.1", port)) else {
                return confirmed;
            };
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            let mut i = 0i64;
            // Bounded: at most 100k lines per client, and stops on kill.
            'outer: while !stop.load(Ordering::Relaxed) && i < 100_000 {
                // Pipeline 20 lines, then read their 20 replies.
                let mut batch = String::new();
                for k in 0..20 {
                    batch.push_str(&format!(
                        "{{\"metric\":\"c{c}\",\"value\":{},\"ts\":{}}}\n",
                        i + k,
                        1_700_000_000_000i64 + i + k
                    ));
                }
                if w.write_all(batch.as_bytes()).is_err() {
                    break;
                }
                for k in 0..20 {
                    let mut line = String::new();
                    match r.read_line(&mut line) {
                        Ok(n) if n > 0 => {}
                        _ => break 'outer,
                    }
                    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                    assert_eq!(v["ok"], true, "{line}");
                    confirmed.push((v["seq"].as_u64().unwrap(), i + k));
                    confirmed_count.fetch_add(1, Ordering::Relaxed);
                }
                i += 20;
            }
            confirmed
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while confirmed_count.load(Ordering::Relaxed) < KILL_AFTER_CONFIRMED {
        assert!(Instant::now() < deadline, "too slow to confirm readings");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL, mid-stream
    child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    let mut confirmed = Vec::new();
    for (c, t) in clients.into_iter().enumerate() {
        for (seq, i) in t.join().unwrap() {
            confirmed.push((seq, c, i));
        }
    }
    assert!(confirmed.len() >= KILL_AFTER_CONFIRMED);

    let buffer = RedbBuffer::open(&dir.path().join("buf"), RedbOptions::default()).unwrap();
    let stored = buffer.read(0, usize::MAX, usize::MAX).await.unwrap();
    let stats = buffer.stats();
    assert_eq!(stats.readings as usize, stored.len());
    // Seqs are contiguous from 1: nothing was acked (no gateway), nothing dropped.
    for (k, (seq, _)) in stored.iter().enumerate() {
        assert_eq!(*seq, k as u64 + 1);
    }
    for (seq, c, i) in &confirmed {
        let (_, r) = stored
            .get(usize::try_from(*seq).unwrap() - 1)
            .unwrap_or_else(|| panic!("confirmed seq {seq} is missing after kill -9"));
        assert_eq!(r.metric.as_str(), format!("c{c}"), "seq {seq}");
        assert_eq!(r.value, Value::I64(*i), "seq {seq}");
    }
    eprintln!(
        "confirmed {} readings before kill -9; {} stored after reopen",
        confirmed.len(),
        stored.len()
    );
}

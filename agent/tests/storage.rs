//! Issue 17 item 3: the agent heals after storage errors. The buffer lives on a 2 MiB tmpfs
//! (mounted here, as root) that a filler file runs out of space; once the filler is deleted the
//! buffer must accept writes again without a restart and without losing a confirmed reading.
//! Before the fix redb answered every operation after the first ENOSPC with "Previous I/O
//! error occurred. Please close and re-open the database" until the process restarted.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use breakwater_agent::buffer::{AppendError, Buffer, RedbBuffer, RedbOptions};
use breakwater_protocol::{Reading, Value};

/// A small tmpfs, unmounted on drop (also when the test fails).
struct Tmpfs {
    dir: PathBuf,
    _parent: tempfile::TempDir,
}

impl Tmpfs {
    /// `None` (after saying why) when mounting is not possible (not root, no CAP_SYS_ADMIN).
    fn mount(size: &str) -> Option<Self> {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("mnt");
        std::fs::create_dir(&dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // With CAP_SYS_ADMIN the mount must work: a broken setup must not pass as a skip.
            assert!(
                !can_mount(),
                "cannot mount a tmpfs although the process has CAP_SYS_ADMIN"
            );
            eprintln!("skipping: cannot mount a tmpfs (needs root with CAP_SYS_ADMIN)");
            return None;
        }
        Some(Self {
            dir,
            _parent: parent,
        })
    }
}

/// True if the effective capabilities include CAP_SYS_ADMIN (bit 21), which `mount` needs.
fn can_mount() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .is_some_and(|caps| caps & (1 << 21) != 0)
    })
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Writes zeros to `path` until the filesystem is full; returns the bytes written.
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 16 * 1024];
    let mut n = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k as u64,
        }
        assert!(n < 64 << 20, "the tmpfs never filled up");
    }
    let _ = f.sync_all();
    n
}

fn reading(i: u64) -> Reading {
    // ~200 bytes each so the buffer needs new pages quickly.
    Reading::new(
        format!("m{}-{}", i % 5, "x".repeat(150)),
        Value::I64(i as i64),
        1_764_115_200_000 + i,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_buffer_heals_after_the_disk_was_full_and_loses_no_confirmed_reading() {
    let Some(fs) = Tmpfs::mount("2m") else {
        return;
    };
    let buf_dir = fs.dir.join("buf");
    let opts = RedbOptions {
        max_bytes: 64 << 20,
        ..RedbOptions::default()
    };
    let b = Arc::new(RedbBuffer::open(&buf_dir, opts).unwrap());
    let mut confirmed: Vec<(u64, u64)> = Vec::new(); // (seq, i)
    let mut i = 0u64;
    for _ in 0..10 {
        let a = b.append((i..i + 20).map(reading).collect()).await.unwrap();
        for (k, seq) in (a.first_seq..=a.last_seq).enumerate() {
            confirmed.push((seq, i + k as u64));
        }
        i += 20;
    }
    assert!(b.health().is_ok());

    // Fill the filesystem, then append until the buffer cannot grow any more.
    let filler = fs.dir.join("filler");
    let filled = fill(&filler);
    let mut first_error = None;
    for _ in 0..2_000 {
        match b.append((i..i + 20).map(reading).collect()).await {
            Ok(a) => {
                for (k, seq) in (a.first_seq..=a.last_seq).enumerate() {
                    confirmed.push((seq, i + k as u64));
                }
            }
            Err(e) => {
                first_error = Some(e);
                i += 20;
                break;
            }
        }
        i += 20;
    }
    let err = first_error.expect("appends never failed on a full filesystem");
    assert!(matches!(err, AppendError::Storage(_)), "{err:?}");
    eprintln!(
        "filled {filled} bytes; {} readings confirmed; first error: {err}",
        confirmed.len()
    );
    // Health says so before the caller hears of the error.
    assert!(
        b.health().is_err(),
        "health must report the failing storage"
    );
    // While the disk stays full (3 s: several reopen attempts, some of which may succeed
    // and fail again at the next append), every append either stores or clearly fails.
    let full_until = Instant::now() + Duration::from_secs(3);
    let mut refused = 0;
    while Instant::now() < full_until {
        match b.append((i..i + 20).map(reading).collect()).await {
            Ok(a) => {
                for (k, seq) in (a.first_seq..=a.last_seq).enumerate() {
                    confirmed.push((seq, i + k as u64));
                }
            }
            Err(e) => {
                assert!(matches!(e, AppendError::Storage(_)), "{e:?}");
                refused += 1;
            }
        }
        i += 20;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused > 0, "a full disk must refuse appends");
    // An ack refused meanwhile is applied by the buffer itself once it recovers (the sender
    // has moved on; acks are cumulative).
    let epoch = b.epoch();
    let ack = b.ack(epoch, 20).await;
    eprintln!("ack while full: {ack:?}");
    assert!(b.stats().readings as usize >= confirmed.len());

    // Space comes back: the buffer recovers by itself.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let healed = loop {
        if b.health().is_ok() {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        healed,
        "the buffer did not recover after space was freed: {:?}",
        b.health()
    );
    let a = b.append((i..i + 20).map(reading).collect()).await.unwrap();
    for (k, seq) in (a.first_seq..=a.last_seq).enumerate() {
        confirmed.push((seq, i + k as u64));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.stats().first_seq != 21 {
        assert!(
            Instant::now() < deadline,
            "the refused ack was not applied after recovery: {:?}",
            b.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Acks work again.
    b.ack(epoch, 30).await.unwrap();
    assert_eq!(b.stats().first_seq, 31);

    let check = |stored: &[(u64, Reading)], confirmed: &[(u64, u64)]| {
        for (seq, i) in confirmed.iter().filter(|(s, _)| *s > 30) {
            let got = stored.iter().find(|(s, _)| s == seq);
            assert_eq!(
                got.map(|(_, r)| r),
                Some(&reading(*i)),
                "confirmed seq {seq} lost or changed"
            );
        }
    };
    check(
        &b.read(0, usize::MAX, usize::MAX).await.unwrap(),
        &confirmed,
    );
    // And all of it is on disk: a fresh open sees the same.
    drop(b);
    let b = RedbBuffer::open(&buf_dir, opts).unwrap();
    assert_eq!(b.epoch(), epoch);
    check(
        &b.read(0, usize::MAX, usize::MAX).await.unwrap(),
        &confirmed,
    );
    drop(b);
    drop(fs);
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// One NDJSON line to the ingest endpoint; returns the reply line.
fn send_line(
    w: &mut std::net::TcpStream,
    r: &mut std::io::BufReader<std::net::TcpStream>,
    i: u64,
) -> serde_json::Value {
    use std::io::BufRead;
    writeln!(
        w,
        "{{\"metric\":\"m-{}\",\"value\":{i},\"ts\":{}}}",
        "x".repeat(100),
        1_764_115_200_000 + i
    )
    .unwrap();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

/// The real binary on a full disk: the ingest endpoint answers each line clearly, the metrics
/// say "storage failing", the agent recovers by itself once space is freed, and the shutdown
/// log says what is really left (every confirmed reading, on disk).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_binary_answers_clearly_while_the_disk_is_full_and_recovers() {
    let Some(fs) = Tmpfs::mount("2m") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let ingest = breakwater_testkit::free_port();
    let metrics = breakwater_testkit::free_port();
    let config = work.path().join("agent.toml");
    let buf_dir = fs.dir.join("buf");
    std::fs::write(
        &config,
        format!(
            "device_id = \"full-disk\"\n\
             [gateway]\naddress = \"127.0.0.1:{}\"\n\
             [buffer]\ndir = \"{}\"\n\
             [ingest]\nlisten = \"127.0.0.1:{ingest}\"\n\
             [metrics]\nlisten = \"127.0.0.1:{metrics}\"\n\
             [shutdown]\ndrain_timeout = \"1s\"\n",
            breakwater_testkit::free_port(),
            buf_dir.display()
        ),
    )
    .unwrap();
    let log = work.path().join("agent.log");
    // systemd's side of sd_notify: a datagram socket collecting what the agent reports, with
    // the watchdog on (WATCHDOG_PID must be the agent's pid: the shell execs it).
    let notify_path = work.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let notified = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop_notify = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (notified, stop) = (notified.clone(), stop_notify.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(n) = notify.recv(&mut buf) {
                    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                    notified.lock().unwrap().push(msg);
                }
            }
        })
    };
    let saw = |what: &str| notified.lock().unwrap().iter().any(|m| m.contains(what));
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "WATCHDOG_PID=$$ exec {} run --config {}",
            env!("CARGO_BIN_EXE_breakwater-agent"),
            config.display()
        ))
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "1000000")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let guard = Kill(&mut child);
    let deadline = Instant::now() + Duration::from_secs(20);
    let s = loop {
        if let Ok(s) = std::net::TcpStream::connect(("127.0.0.1", ingest)) {
            break s;
        }
        assert!(Instant::now() < deadline, "agent did not listen");
        std::thread::sleep(Duration::from_millis(20));
    };
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = std::io::BufReader::new(s);
    let mut confirmed: Vec<(u64, u64)> = Vec::new();
    let mut i = 0u64;
    for _ in 0..100 {
        let v = send_line(&mut w, &mut r, i);
        assert_eq!(v["ok"], true, "{v}");
        confirmed.push((v["seq"].as_u64().unwrap(), i));
        i += 1;
    }

    let filler = fs.dir.join("filler");
    fill(&filler);
    let mut refusal = None;
    for _ in 0..20_000 {
        let v = send_line(&mut w, &mut r, i);
        i += 1;
        if v["ok"] == true {
            confirmed.push((v["seq"].as_u64().unwrap(), i - 1));
        } else {
            refusal = Some(v);
            break;
        }
    }
    let refusal = refusal.expect("the full disk never refused a line");
    let msg = refusal["error"].as_str().unwrap_or_default().to_owned();
    assert!(msg.contains("not stored"), "{msg}");
    // Later lines are refused at once with a clear reason while the storage is failing.
    let v = send_line(&mut w, &mut r, i);
    i += 1;
    let msg = v["error"].as_str().unwrap_or_default().to_owned();
    assert_eq!(v["ok"], false, "{v}");
    assert!(
        msg.contains("not stored") && (msg.contains("failing") || msg.contains("space")),
        "{msg}"
    );
    // systemd sees it: the unit's status line says so (the watchdog keeps being fed for
    // WATCHDOG_STORAGE_GRACE while the agent heals itself).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !saw("STATUS=storage failing") {
        assert!(
            Instant::now() < deadline,
            "no STATUS=storage failing sent to systemd: {:?}",
            notified.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(saw("READY=1") && saw("WATCHDOG=1"));
    // So does `breakwater-agent status` (GET /status).
    let st = http_get(metrics, "/status");
    assert!(st.contains("\"storage\":\"failing\""), "{st}");
    let m = http_get(metrics, "/metrics");
    assert!(
        m.contains("breakwater_agent_buffer_storage_failing 1"),
        "metrics must show the failing storage:\n{m}"
    );

    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = send_line(&mut w, &mut r, i);
        i += 1;
        if v["ok"] == true {
            confirmed.push((v["seq"].as_u64().unwrap(), i - 1));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not recover after space was freed: {v}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let m = http_get(metrics, "/metrics");
    assert!(
        m.contains("breakwater_agent_buffer_storage_failing 0"),
        "metrics must show the recovery:\n{m}"
    );
    let st = http_get(metrics, "/status");
    assert!(st.contains("\"storage\":\"ok\""), "{st}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !saw("STATUS=running") {
        assert!(
            Instant::now() < deadline,
            "no STATUS=running after the recovery: {:?}",
            notified.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop((w, r));

    let pid = guard.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(st) = guard.0.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "agent did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(guard);
    stop_notify.store(true, std::sync::atomic::Ordering::Relaxed);
    reader.join().unwrap();
    assert!(saw("STOPPING=1"));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{status:?}\n{text}");
    let b = RedbBuffer::open(&buf_dir, RedbOptions::default()).unwrap();
    let stored = b.read(0, usize::MAX, usize::MAX).await.unwrap();
    // No gateway: nothing was acked. The log reports what is really on disk (a failed commit
    // may have become durable, so that can exceed what was confirmed, never fall short).
    assert!(stored.len() >= confirmed.len());
    assert!(
        text.contains(&format!("left_buffered={} drained=false", stored.len())),
        "the shutdown log must report the {} stored readings ({} confirmed):\n{text}",
        stored.len(),
        confirmed.len()
    );
    for (seq, i) in &confirmed {
        let got = stored.iter().find(|(s, _)| s == seq).map(|(_, r)| &r.value);
        assert_eq!(got, Some(&Value::I64(*i as i64)), "confirmed seq {seq}");
    }
    drop(b);
    drop(fs);
}

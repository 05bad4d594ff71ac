//! The real processor binary as a child process: its log captured line by line (colour codes
//! stripped), waits on log lines, SIGKILL and SIGTERM.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Proc {
    pub child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    pub fn start(config: &Path) -> Self {
        Self::start_with(config, &[])
    }

    /// With extra environment variables.
    pub fn start_with(config: &Path, env: &[(&str, String)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_breakwater-processor"))
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let l = log.clone();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                l.lock().unwrap().push(super::strip_ansi(&line));
            }
        });
        Self { child, log }
    }

    /// Log lines containing `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    pub fn dump(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits until `needle` was logged `n` times; fails with the log after `secs`.
    pub async fn wait_for(&self, needle: &str, n: usize, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while self.count(needle) < n {
            assert!(
                Instant::now() < deadline,
                "no {n}× {needle:?}:\n{}",
                self.dump()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM and wait: a graceful stop must exit 0 after a final checkpoint.
    pub fn terminate(mut self) -> String {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(200));
                let log = self.dump();
                assert!(s.success(), "exit {s:?}\n{log}");
                assert!(log.contains("stopped after a final checkpoint"), "{log}");
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "no exit after SIGTERM\n{}",
                self.dump()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! A real Mosquitto broker on a free loopback port, stopped on drop.

use std::io::Write;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `mosquitto` process.
#[derive(Debug)]
pub struct Mosquitto {
    child: Child,
    port: u16,
    _dir: PathBuf,
}

impl Mosquitto {
    /// Starts Mosquitto on 127.0.0.1 with anonymous access.
    ///
    /// Returns `None` (after printing why) when `mosquitto` is not installed, unless under CI,
    /// where that is a failure: `scripts/test` installs it.
    ///
    /// # Panics
    /// Under CI without `mosquitto`, or if it does not start listening within 10 s.
    #[must_use]
    pub fn start() -> Option<Self> {
        let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        let Some(bin) = bin else {
            assert!(!crate::in_ci(), "mosquitto is not installed under CI");
            eprintln!("skipping: mosquitto is not installed (apt-get install mosquitto)");
            return None;
        };
        let port = crate::free_port();
        let dir = std::env::temp_dir().join(format!("bw-mosquitto-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mosquitto dir");
        let conf = dir.join("mosquitto.conf");
        let mut f = std::fs::File::create(&conf).expect("mosquitto.conf");
        writeln!(
            f,
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 100000\nlog_dest stderr\nlog_type error"
        )
        .expect("write conf");
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn mosquitto");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Self {
            child,
            port,
            _dir: dir,
        })
    }

    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`
    #[must_use]
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

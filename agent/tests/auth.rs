//! Username/password login against a Mosquitto that requires it.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use breakwater_agent::buffer::{Buffer, FullPolicy, MemoryBuffer};
use breakwater_agent::config::{GatewayAddress, GatewayConfig, SenderConfig};
use breakwater_agent::sender::{DeviceSender, DisconnectReason, LinkOptions, SenderEvent};
use common::wait_until;
use tokio_util::sync::CancellationToken;

struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn login_with_the_right_password_only() {
    let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let passwd = ["/usr/bin/mosquitto_passwd", "/usr/sbin/mosquitto_passwd"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let (Some(bin), Some(passwd)) = (bin, passwd) else {
        assert!(!breakwater_testkit::in_ci(), "mosquitto missing under CI");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let pw = dir.path().join("passwd");
    let st = Command::new(passwd)
        .arg("-c")
        .arg("-b")
        .arg(&pw)
        .args(["press-01", "s3cret"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
    let port = breakwater_testkit::free_port();
    let conf = dir.path().join("m.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\n\
             persistence false\nlog_dest stderr\nlog_type error\n",
            pw.display()
        ),
    )
    .unwrap();
    let _broker = Broker(
        Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "mosquitto did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }

    let run = |password: &str| {
        let g = GatewayConfig {
            addresses: vec![GatewayAddress::new("127.0.0.1", port)],
            username: Some("press-01".into()),
            password: Some(password.into()),
            ..GatewayConfig::default()
        };
        let events: Arc<Mutex<Vec<SenderEvent>>> = Arc::default();
        let ev = events.clone();
        let buffer: Arc<dyn Buffer> = Arc::new(MemoryBuffer::new(1 << 20, FullPolicy::Block));
        let handle = DeviceSender::new(
            "press-01".parse().unwrap(),
            buffer,
            Arc::new(LinkOptions::from_config(&g).unwrap()),
            SenderConfig::default(),
        )
        .with_seed(5)
        .with_events(Arc::new(move |_, e| ev.lock().unwrap().push(e.clone())))
        .spawn(CancellationToken::new());
        (handle, events)
    };

    let (ok, _) = run("s3cret");
    assert!(wait_until(Duration::from_secs(20), || ok.is_connected()).await);
    ok.shutdown(Duration::ZERO).await;

    let (bad, events) = run("wrong");
    assert!(
        wait_until(Duration::from_secs(20), || events.lock().unwrap().iter().any(|e| matches!(
            e,
            SenderEvent::Disconnected { reason: DisconnectReason::Error(m) } if m.contains("refused")
        )))
        .await,
        "{:?}",
        events.lock().unwrap()
    );
    assert!(!events.lock().unwrap().contains(&SenderEvent::Connected));
    bad.shutdown(Duration::ZERO).await;
}

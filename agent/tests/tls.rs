//! The sender over TLS with a client certificate, against a real Mosquitto TLS listener that
//! requires one; and a refused handshake when the CA does not match.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use breakwater_agent::buffer::{Buffer, FullPolicy, MemoryBuffer};
use breakwater_agent::config::{GatewayAddress, GatewayConfig, SenderConfig, TlsConfig};
use breakwater_agent::sender::{DeviceSender, LinkOptions, SenderEvent};
use common::wait_until;
use tokio_util::sync::CancellationToken;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name)
}

struct TlsBroker {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_tls_broker() -> Option<TlsBroker> {
    let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let Some(bin) = bin else {
        assert!(!breakwater_testkit::in_ci(), "mosquitto missing under CI");
        return None;
    };
    let port = breakwater_testkit::free_port();
    let dir = tempfile::tempdir().unwrap();
    // Mosquitto started as root drops to its own user: give it readable copies.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = |name: &str| {
        let to = dir.path().join(name);
        std::fs::copy(fixture(name), &to).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o644)).unwrap();
        to
    };
    let (ca, cert, key) = (copy("ca.pem"), copy("server.pem"), copy("server.key"));
    let conf = dir.path().join("m.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
             cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n\
             log_dest stderr\nlog_type error\n",
            ca.display(),
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    let child = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "mosquitto TLS did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(TlsBroker {
        child,
        port,
        _dir: dir,
    })
}

#[tokio::test]
async fn mutual_tls_connects_and_a_wrong_ca_is_refused() {
    let Some(broker) = start_tls_broker() else {
        return;
    };
    let gateway = |ca: PathBuf| GatewayConfig {
        addresses: vec![GatewayAddress::new("127.0.0.1", broker.port)],
        tls: Some(TlsConfig {
            ca_file: ca,
            client_cert_file: Some(fixture("client.pem")),
            client_key_file: Some(fixture("client.key")),
        }),
        ..GatewayConfig::default()
    };
    let run = |g: GatewayConfig| {
        let events = Arc::new(std::sync::Mutex::new(Vec::<SenderEvent>::new()));
        let ev = events.clone();
        let buffer: Arc<dyn Buffer> = Arc::new(MemoryBuffer::new(1 << 20, FullPolicy::Block));
        let handle = DeviceSender::new(
            "tls-device".parse().unwrap(),
            buffer,
            Arc::new(LinkOptions::from_config(&g).unwrap()),
            SenderConfig::default(),
        )
        .with_seed(3)
        .with_events(Arc::new(move |_, e| ev.lock().unwrap().push(e.clone())))
        .spawn(CancellationToken::new());
        (handle, events)
    };

    let (ok, _) = run(gateway(fixture("ca.pem")));
    assert!(
        wait_until(Duration::from_secs(20), || ok.is_connected()).await,
        "TLS connection with client certificate failed"
    );
    ok.shutdown(Duration::ZERO).await;

    // The server certificate is not signed by this "CA" (the client certificate is not a CA).
    let (bad, events) = run(gateway(fixture("client.pem")));
    assert!(
        wait_until(Duration::from_secs(20), || events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, SenderEvent::Disconnected { .. })))
        .await
    );
    assert!(!bad.is_connected());
    assert!(!events.lock().unwrap().contains(&SenderEvent::Connected));
    bad.shutdown(Duration::ZERO).await;
}

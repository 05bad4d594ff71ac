//! Issue 17, item 4: nothing a client alone can do writes an ERROR line. A client id taken over
//! again and again (as every reconnecting device does in a storm), connections dropped mid-way,
//! unsolicited acks: each is logged at debug by rumqttd (patch 17) and counted; the gateway's
//! log (rumqttd at `error`, the gateway at `info`, as the tests run it) holds no ERROR.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

fn connected(port: u16, id: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&connect_packet(id, 30)).unwrap();
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).unwrap();
    assert_eq!(ack, [0x20, 0x02, 0x00, 0x00], "CONNACK accepted for {id}");
    s
}

#[test]
fn what_one_client_does_is_never_an_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let g = GatewayProc::start(dir.path(), "");

    // The same client id 30 times without closing: each CONNECT takes the id over.
    let mut held = Vec::new();
    for _ in 0..30 {
        held.push(connected(g.mqtt_port, "takeover-1"));
    }
    // Unsolicited PUBACK and PUBREC: the client is disconnected.
    for (i, packet) in [[0x40u8, 0x02, 0x00, 0x07], [0x50, 0x02, 0x00, 0x08]]
        .iter()
        .enumerate()
    {
        let mut s = connected(g.mqtt_port, &format!("bogus-ack-{i}"));
        s.write_all(packet).unwrap();
        let mut rest = Vec::new();
        let n = s.read_to_end(&mut rest);
        assert!(matches!(n, Ok(0)) || n.is_err(), "closed: {n:?} {rest:?}");
    }
    // Connections that vanish right after CONNECT, and a replaced one closing late.
    for i in 0..30 {
        drop(connected(g.mqtt_port, &format!("vanish-{}", i % 3)));
    }
    drop(held);
    // A device still works afterwards.
    let mut s = connected(g.mqtt_port, "after-1");
    s.write_all(&[0xe0, 0x00]).unwrap();

    assert!(
        wait_until(Duration::from_secs(10), || g
            .metric("rumqttd_connections_closed_total", "")
            >= 60.0),
        "{}",
        g.metrics()
    );
    std::thread::sleep(Duration::from_millis(500));
    let log = g.log_text();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(
        errors.is_empty(),
        "ERROR lines a client caused:\n{}",
        errors.join("\n")
    );
}

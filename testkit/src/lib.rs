//! Dev-only helpers shared by every crate's tests.
//!
//! * [`kafka`] — the real Kafka-API broker started by `scripts/test` (address in
//!   `BREAKWATER_TEST_KAFKA`), uniquely named topics, producing, and reading a topic back with
//!   `assign` from offset 0 (tansu's consumer-group join is slow and its high watermarks are
//!   wrong, so read-back never relies on either).
//! * [`mosquitto`] — a real Mosquitto broker on a free loopback port, for tests that need a
//!   plain MQTT broker.
//! * [`free_port`] — a free loopback TCP port.

pub mod kafka;
pub mod mosquitto;
pub mod pki;

use std::net::TcpListener;

/// A TCP port on 127.0.0.1 that was free a moment ago.
///
/// # Panics
/// If no port can be bound (the test cannot run anyway).
#[must_use]
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// True when running under CI (`CI=true`), where a missing test dependency is a failure.
#[must_use]
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

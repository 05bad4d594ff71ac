//! A minimal MQTT 3.1.1 CONNECT probe: open TCP, send CONNECT, read CONNACK.
//!
//! What a device sees at the front door, without a full client: the connect-storm benchmark, the
//! admission tests and operators' checks use it. It speaks just enough MQTT for a CONNECT and its
//! answer; the connection is returned open so a caller can hold it (a connected device) or drop
//! it.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How a CONNECT attempt ended.
#[derive(Debug)]
pub enum ProbeOutcome {
    /// CONNACK with return code 0; the connection is open.
    Accepted(TcpStream),
    /// CONNACK with a non-zero return code (MQTT 3.1.1: 4 bad user name or password,
    /// 5 not authorized, ...).
    Refused(u8),
    /// The broker closed the connection without a CONNACK (the gateway does this only to a
    /// connection over its address's cap; refused CONNECTs get a code, `vendor/PATCHES.md`
    /// patch 17).
    Closed,
}

/// Why a probe could not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("connect to {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("i/o with {addr}: {source}")]
    Io { addr: SocketAddr, source: io::Error },
    #[error("no CONNACK from {addr} within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("unexpected reply from {addr}: {bytes:02x?}")]
    Protocol { addr: SocketAddr, bytes: Vec<u8> },
}

/// Encodes an MQTT 3.1.1 CONNECT packet (clean session, given keep-alive).
#[must_use]
pub fn encode_connect(client_id: &str, login: Option<(&str, &str)>, keep_alive_s: u16) -> Vec<u8> {
    fn put_str(out: &mut Vec<u8>, s: &str) {
        let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&s.as_bytes()[..usize::from(len)]);
    }
    let mut body = Vec::with_capacity(16 + client_id.len());
    put_str(&mut body, "MQTT");
    body.push(4); // protocol level 3.1.1
    let mut flags = 0x02; // clean session
    if login.is_some() {
        flags |= 0x80 | 0x40; // user name + password
    }
    body.push(flags);
    body.extend_from_slice(&keep_alive_s.to_be_bytes());
    put_str(&mut body, client_id);
    if let Some((user, pass)) = login {
        put_str(&mut body, user);
        put_str(&mut body, pass);
    }
    let mut packet = vec![0x10];
    let mut len = body.len();
    loop {
        #[allow(clippy::cast_possible_truncation)] // masked to 7 bits
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        packet.push(byte);
        if len == 0 {
            break;
        }
    }
    packet.extend_from_slice(&body);
    packet
}

/// Connects to `addr`, sends CONNECT and waits up to `timeout` (overall) for the answer.
///
/// # Errors
/// TCP connect or i/o failure, no answer within `timeout`, or a reply that is not a CONNACK.
pub async fn connect(
    addr: SocketAddr,
    client_id: &str,
    login: Option<(&str, &str)>,
    timeout: Duration,
) -> Result<ProbeOutcome, ProbeError> {
    let packet = encode_connect(client_id, login, 60);
    let attempt = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|source| ProbeError::Connect { addr, source })?;
        stream.set_nodelay(true).ok();
        stream
            .write_all(&packet)
            .await
            .map_err(|source| ProbeError::Io { addr, source })?;
        let mut ack = [0u8; 4];
        let mut got = 0;
        while got < ack.len() {
            match stream.read(&mut ack[got..]).await {
                Ok(0) => {
                    return if got == 0 {
                        Ok(ProbeOutcome::Closed)
                    } else {
                        Err(ProbeError::Protocol {
                            addr,
                            bytes: ack[..got].to_vec(),
                        })
                    }
                }
                Ok(n) => got += n,
                // A reset instead of an orderly close is still "closed without CONNACK".
                Err(e) if got == 0 && e.kind() == io::ErrorKind::ConnectionReset => {
                    return Ok(ProbeOutcome::Closed)
                }
                Err(source) => return Err(ProbeError::Io { addr, source }),
            }
        }
        if ack[0] != 0x20 || ack[1] != 0x02 {
            return Err(ProbeError::Protocol {
                addr,
                bytes: ack.to_vec(),
            });
        }
        Ok(match ack[3] {
            0 => ProbeOutcome::Accepted(stream),
            code => ProbeOutcome::Refused(code),
        })
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| ProbeError::Timeout { addr, timeout })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_packet_layout() {
        let p = encode_connect("dev-1", Some(("dev-1", "s3cret")), 30);
        // fixed header, remaining length
        assert_eq!(p[0], 0x10);
        assert_eq!(usize::from(p[1]), p.len() - 2);
        assert_eq!(&p[2..8], b"\x00\x04MQTT");
        assert_eq!(p[8], 4);
        assert_eq!(p[9], 0xC2);
        assert_eq!(&p[10..12], &30u16.to_be_bytes());
        assert_eq!(&p[12..19], b"\x00\x05dev-1");
        assert!(p.ends_with(b"\x00\x06s3cret"));
        let anon = encode_connect("x", None, 60);
        assert_eq!(anon[9], 0x02);
    }

    #[test]
    fn long_packets_use_multi_byte_length() {
        let id = "d".repeat(200);
        let p = encode_connect(&id, None, 60);
        let body = p.len() - 3;
        assert_eq!(p[1] & 0x80, 0x80);
        assert_eq!(usize::from(p[1] & 0x7f) + 128 * usize::from(p[2]), body);
    }
}

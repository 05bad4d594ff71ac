//! The PROXY protocol (HAProxy's, versions 1 and 2), on connections from trusted balancers.
//!
//! Behind an L4 load balancer every device reaches the gateway from the balancer's address,
//! so the per-address limits ([`super::peer`]) would lump the whole fleet together and logs
//! would name the balancer. A balancer configured with `send-proxy` / `send-proxy-v2` starts
//! each connection with a header naming the client's real address.
//!
//! # Trust boundary
//! The header is untrusted input from the network, and whoever can send it chooses the address
//! the gateway believes. So it is read **only** on connections whose TCP peer is listed in
//! `[admission] proxy_protocol_from`, and there it is **required** (a connection from a listed
//! balancer without a valid header is closed, counted). A device connecting directly is never
//! asked for a header: a forged one is just bytes of a broken MQTT stream.
//!
//! The header is read before TLS, on the connection's own task, within the transport hook's
//! `connection_timeout_ms`; at most 107 bytes (v1) or 16 + 216 bytes (v2, the longest address
//! block we accept) are read, exactly the header's length, so nothing of the stream after it is
//! consumed. A v2 `LOCAL` command (the balancer's own health check) and v1 `UNKNOWN` keep the
//! balancer's address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

/// The v2 signature.
const V2_SIG: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 header, CRLF included (the spec's bound).
const V1_MAX: usize = 107;
/// Longest v2 address block accepted (the spec's UNIX family; TLVs beyond it are refused).
const V2_MAX_LEN: usize = 216;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
    #[error("no PROXY protocol header")]
    Missing,
    #[error("malformed PROXY v1 header: {0}")]
    BadV1(&'static str),
    #[error("malformed PROXY v2 header: {0}")]
    BadV2(&'static str),
}

impl ProxyError {
    /// Label of `breakwater_gateway_proxy_protocol_refused_total{reason}`.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Io(_) => "io",
            Self::Missing => "missing",
            Self::BadV1(_) => "bad_v1",
            Self::BadV2(_) => "bad_v2",
        }
    }
}

/// Reads one PROXY header (v1 or v2) from `stream`. `Ok(Some(addr))`: the client's source
/// address; `Ok(None)`: a header that names no client (v1 `UNKNOWN`, v2 `LOCAL`, or an address
/// family other than TCP over IPv4/IPv6).
///
/// # Errors
/// No header, a malformed one, or the stream failing or ending inside it.
///
/// Not cancel-safe (it consumes the stream); the caller bounds it with a timeout and drops the
/// stream on one.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Option<SocketAddr>, ProxyError> {
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await?;
    if head == V2_SIG {
        return read_v2(stream).await;
    }
    if head.starts_with(b"PROXY ") {
        return read_v1(stream, &head).await;
    }
    Err(ProxyError::Missing)
}

async fn read_v1<S: AsyncRead + Unpin>(
    stream: &mut S,
    head: &[u8; 12],
) -> Result<Option<SocketAddr>, ProxyError> {
    let mut line = head.to_vec();
    // Byte by byte: nothing after the CRLF may be consumed (it is the client's stream).
    while !line.ends_with(b"\r\n") {
        if line.len() >= V1_MAX {
            return Err(ProxyError::BadV1("longer than 107 bytes"));
        }
        line.push(stream.read_u8().await?);
    }
    parse_v1(&line[..line.len() - 2])
}

/// `PROXY TCP4 src dst sport dport` (without CRLF).
fn parse_v1(line: &[u8]) -> Result<Option<SocketAddr>, ProxyError> {
    let line = std::str::from_utf8(line).map_err(|_| ProxyError::BadV1("not ASCII"))?;
    let mut parts = line.split(' ');
    if parts.next() != Some("PROXY") {
        return Err(ProxyError::BadV1("no PROXY keyword"));
    }
    let family = parts.next().ok_or(ProxyError::BadV1("no protocol"))?;
    if family == "UNKNOWN" {
        return Ok(None);
    }
    if family != "TCP4" && family != "TCP6" {
        return Err(ProxyError::BadV1("protocol is not TCP4, TCP6 or UNKNOWN"));
    }
    let fields: Vec<&str> = parts.collect();
    let [src, _dst, sport, _dport] = fields.as_slice() else {
        return Err(ProxyError::BadV1("want source, destination and both ports"));
    };
    let ip: IpAddr = src
        .parse()
        .map_err(|_| ProxyError::BadV1("bad source address"))?;
    if ip.is_ipv4() != (family == "TCP4") {
        return Err(ProxyError::BadV1(
            "source address does not match the protocol",
        ));
    }
    let port: u16 = sport
        .parse()
        .map_err(|_| ProxyError::BadV1("bad source port"))?;
    Ok(Some(SocketAddr::new(ip, port)))
}

async fn read_v2<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Option<SocketAddr>, ProxyError> {
    let mut fixed = [0u8; 4];
    stream.read_exact(&mut fixed).await?;
    let [ver_cmd, fam, len_hi, len_lo] = fixed;
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::BadV2("version is not 2"));
    }
    let len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
    if len > V2_MAX_LEN {
        return Err(ProxyError::BadV2("address block longer than 216 bytes"));
    }
    let mut block = vec![0u8; len];
    stream.read_exact(&mut block).await?;
    match ver_cmd & 0x0f {
        // LOCAL: the balancer speaking for itself (health checks).
        0 => Ok(None),
        1 => parse_v2_addresses(fam, &block),
        _ => Err(ProxyError::BadV2("unknown command")),
    }
}

/// The source address of a v2 PROXY command's address block.
fn parse_v2_addresses(fam: u8, block: &[u8]) -> Result<Option<SocketAddr>, ProxyError> {
    match fam {
        // TCP over IPv4: src(4) dst(4) sport(2) dport(2).
        0x11 => {
            let b = block
                .get(..12)
                .ok_or(ProxyError::BadV2("IPv4 address block too short"))?;
            let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            let port = u16::from_be_bytes([b[8], b[9]]);
            Ok(Some(SocketAddr::new(IpAddr::V4(ip), port)))
        }
        // TCP over IPv6: src(16) dst(16) sport(2) dport(2).
        0x21 => {
            let b = block
                .get(..36)
                .ok_or(ProxyError::BadV2("IPv6 address block too short"))?;
            let mut src = [0u8; 16];
            src.copy_from_slice(&b[..16]);
            let port = u16::from_be_bytes([b[32], b[33]]);
            Ok(Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(src)), port)))
        }
        // UNSPEC, UDP, UNIX: no TCP client address to use.
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(bytes: &[u8]) -> (Result<Option<SocketAddr>, ProxyError>, Vec<u8>) {
        let mut cur = std::io::Cursor::new(bytes.to_vec());
        let r = read_header(&mut cur).await;
        let pos = usize::try_from(cur.position()).unwrap();
        (r, bytes[pos..].to_vec())
    }

    fn v2(cmd: u8, fam: u8, block: &[u8]) -> Vec<u8> {
        let mut v = V2_SIG.to_vec();
        v.push(0x20 | cmd);
        v.push(fam);
        v.extend_from_slice(&u16::try_from(block.len()).unwrap().to_be_bytes());
        v.extend_from_slice(block);
        v
    }

    #[tokio::test]
    async fn v1_tcp4_names_the_client_and_leaves_the_stream_after_it() {
        let (r, rest) = read(b"PROXY TCP4 192.0.2.7 10.0.0.1 40001 1883\r\n\x10\x0cMQTT").await;
        assert_eq!(r.unwrap(), Some("192.0.2.7:40001".parse().unwrap()));
        assert_eq!(rest, b"\x10\x0cMQTT");
    }

    #[tokio::test]
    async fn v1_tcp6_and_unknown() {
        let (r, _) = read(b"PROXY TCP6 2001:db8::7 2001:db8::1 40001 8883\r\n").await;
        assert_eq!(r.unwrap(), Some("[2001:db8::7]:40001".parse().unwrap()));
        let (r, rest) = read(b"PROXY UNKNOWN\r\nX").await;
        assert_eq!(r.unwrap(), None);
        assert_eq!(rest, b"X");
    }

    #[tokio::test]
    async fn v1_malformed_is_refused() {
        for bad in [
            &b"PROXY TCP4 192.0.2.7 10.0.0.1 40001\r\n"[..],
            b"PROXY TCP4 2001:db8::7 10.0.0.1 1 2\r\n",
            b"PROXY TCP4 999.0.2.7 10.0.0.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 70000 2\r\n",
            b"PROXY UDP4 192.0.2.7 10.0.0.1 1 2\r\n",
        ] {
            let (r, _) = read(bad).await;
            assert!(matches!(r, Err(ProxyError::BadV1(_))), "{bad:?}: {r:?}");
        }
        // No CRLF within 107 bytes.
        let mut long = b"PROXY TCP4 ".to_vec();
        long.extend(std::iter::repeat_n(b'1', 200));
        let (r, _) = read(&long).await;
        assert!(matches!(r, Err(ProxyError::BadV1(_))), "{r:?}");
    }

    #[tokio::test]
    async fn v2_proxy_ipv4_ipv6_and_local() {
        let mut b4 = vec![192, 0, 2, 7, 10, 0, 0, 1];
        b4.extend_from_slice(&40001u16.to_be_bytes());
        b4.extend_from_slice(&1883u16.to_be_bytes());
        let mut bytes = v2(1, 0x11, &b4);
        bytes.extend_from_slice(b"\x10rest");
        let (r, rest) = read(&bytes).await;
        assert_eq!(r.unwrap(), Some("192.0.2.7:40001".parse().unwrap()));
        assert_eq!(rest, b"\x10rest");

        let src: Ipv6Addr = "2001:db8::7".parse().unwrap();
        let mut b6 = src.octets().to_vec();
        b6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        b6.extend_from_slice(&5u16.to_be_bytes());
        b6.extend_from_slice(&6u16.to_be_bytes());
        // With a TLV after the addresses (HAProxy sends some): skipped with the block.
        b6.extend_from_slice(&[0x04, 0x00, 0x01, 0xaa]);
        let (r, rest) = read(&v2(1, 0x21, &b6)).await;
        assert_eq!(r.unwrap(), Some(SocketAddr::new(IpAddr::V6(src), 5)));
        assert!(rest.is_empty());

        let (r, _) = read(&v2(0, 0x00, &[])).await;
        assert_eq!(r.unwrap(), None, "LOCAL keeps the balancer's address");
    }

    #[tokio::test]
    async fn v2_malformed_and_missing_are_refused() {
        let (r, _) = read(&v2(1, 0x11, &[1, 2, 3])).await;
        assert!(matches!(r, Err(ProxyError::BadV2(_))), "{r:?}");
        let (r, _) = read(&v2(7, 0x11, &[0; 12])).await;
        assert!(matches!(r, Err(ProxyError::BadV2(_))), "{r:?}");
        let mut too_long = V2_SIG.to_vec();
        too_long.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        let (r, _) = read(&too_long).await;
        assert!(matches!(r, Err(ProxyError::BadV2(_))), "{r:?}");
        // A plain MQTT CONNECT: no header.
        let (r, _) = read(b"\x10\x1a\x00\x04MQTT\x04\x02\x00\x3c").await;
        assert!(matches!(r, Err(ProxyError::Missing)), "{r:?}");
        // Truncated.
        let (r, _) = read(b"PROXY TCP4 1").await;
        assert!(matches!(r, Err(ProxyError::Io(_))), "{r:?}");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let _ = rt.block_on(read(&bytes));
        }
    }
}

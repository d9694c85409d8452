//! The PROXY protocol (v1 text and v2 binary) on the public listener, for load
//! balancers that pass the client's address in front of the stream instead of in a
//! header (`server.proxy_protocol = true`).
//!
//! Only peers inside `client_ip.trusted_proxies` may speak it; any other connection,
//! and any connection whose first bytes are not a well-formed header, is closed
//! before a byte of HTTP is read. Exactly the header is consumed: what follows is the
//! client's own stream (TLS or HTTP).

use ppp::{v1, v2, HeaderResult};
use std::net::IpAddr;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// A v2 header with TLVs larger than this is refused rather than buffered.
const MAX_V2_PAYLOAD: usize = 512;
/// "PROXY TCP6 " + two full IPv6 addresses + two ports + CRLF.
const MAX_V1_LINE: usize = 107;
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("connection closed before its PROXY header was complete")]
    Io(#[from] std::io::Error),
    #[error("the connection does not start with a PROXY protocol header")]
    Missing,
    #[error("malformed PROXY protocol header")]
    Malformed,
    #[error("PROXY protocol v2 header longer than {MAX_V2_PAYLOAD} bytes")]
    TooLong,
}

/// Reads the header and returns the client address it names, or `None` when it names
/// none (v1 `UNKNOWN`, v2 `LOCAL`: the proxy's own health checks), in which case the
/// TCP peer is the client.
pub async fn read_header(stream: &mut TcpStream) -> Result<Option<IpAddr>, ProxyHeaderError> {
    // Both versions are at least 12 bytes long (v1's shortest line is 15).
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await?;
    if head == V2_SIGNATURE {
        let mut fixed = [0u8; 4];
        stream.read_exact(&mut fixed).await?;
        let len = usize::from(u16::from_be_bytes([fixed[2], fixed[3]]));
        if len > MAX_V2_PAYLOAD {
            return Err(ProxyHeaderError::TooLong);
        }
        let mut whole = Vec::with_capacity(16 + len);
        whole.extend_from_slice(&head);
        whole.extend_from_slice(&fixed);
        whole.resize(16 + len, 0);
        stream.read_exact(&mut whole[16..]).await?;
        return match HeaderResult::parse(&whole) {
            HeaderResult::V2(Ok(h)) => Ok(v2_source(&h)),
            _ => Err(ProxyHeaderError::Malformed),
        };
    }
    if !head.starts_with(b"PROXY ") {
        return Err(ProxyHeaderError::Missing);
    }
    let line = read_v1_line(stream, &head).await?;
    match HeaderResult::parse(&line) {
        HeaderResult::V1(Ok(h)) => Ok(match h.addresses {
            v1::Addresses::Tcp4(a) => Some(IpAddr::V4(a.source_address)),
            v1::Addresses::Tcp6(a) => Some(IpAddr::V6(a.source_address)),
            v1::Addresses::Unknown => None,
        }),
        _ => Err(ProxyHeaderError::Malformed),
    }
}

fn v2_source(h: &v2::Header<'_>) -> Option<IpAddr> {
    if h.command == v2::Command::Local {
        return None;
    }
    match h.addresses {
        v2::Addresses::IPv4(a) => Some(IpAddr::V4(a.source_address)),
        v2::Addresses::IPv6(a) => Some(IpAddr::V6(a.source_address)),
        v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
    }
}

/// The rest of a v1 line, up to and including CRLF, without reading past it. The line
/// nearly always arrived whole, so one peek finds its end; otherwise it is read a
/// byte at a time.
async fn read_v1_line(stream: &mut TcpStream, head: &[u8]) -> Result<Vec<u8>, ProxyHeaderError> {
    let mut line = head.to_vec();
    let mut peeked = [0u8; MAX_V1_LINE];
    let n = stream.peek(&mut peeked[..MAX_V1_LINE - head.len()]).await?;
    let window = [&head[head.len() - 1..], &peeked[..n]].concat();
    if let Some(end) = window.windows(2).position(|w| w == b"\r\n") {
        // `end` counts from the last byte of `head`; the line ends `end + 1` bytes into
        // what was peeked.
        let take = end + 1;
        let start = line.len();
        line.resize(start + take, 0);
        stream.read_exact(&mut line[start..]).await?;
        return Ok(line);
    }
    while !line.ends_with(b"\r\n") {
        if line.len() >= MAX_V1_LINE {
            return Err(ProxyHeaderError::Malformed);
        }
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await?;
        line.push(byte[0]);
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// `read_header` over `bytes` sent on a loopback connection, and what it left unread.
    fn read(bytes: &[u8]) -> (Result<Option<IpAddr>, ProxyHeaderError>, Vec<u8>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            let (mut server, _) = listener.accept().await.unwrap();
            client.write_all(bytes).await.unwrap();
            client.shutdown().await.unwrap();
            let result = read_header(&mut server).await;
            let mut rest = Vec::new();
            server.read_to_end(&mut rest).await.unwrap();
            (result, rest)
        })
    }

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[0x20 | command, family]);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    /// A well-formed header of either version and the client it names.
    fn header() -> impl Strategy<Value = (Vec<u8>, Option<IpAddr>)> {
        let v4 = (
            any::<[u8; 4]>(),
            any::<[u8; 4]>(),
            any::<u16>(),
            any::<u16>(),
        );
        let v6 = (
            any::<[u8; 16]>(),
            any::<[u8; 16]>(),
            any::<u16>(),
            any::<u16>(),
        );
        let tlvs = prop::collection::vec(any::<u8>(), 0..64).prop_map(|v| {
            // One NOOP TLV carrying the bytes.
            let mut t = vec![0x04];
            t.extend_from_slice(&(v.len() as u16).to_be_bytes());
            t.extend_from_slice(&v);
            t
        });
        prop_oneof![
            v4.prop_map(|(s, d, sp, dp)| {
                let (s, d) = (Ipv4Addr::from(s), Ipv4Addr::from(d));
                let line = format!("PROXY TCP4 {s} {d} {sp} {dp}\r\n");
                (line.into_bytes(), Some(IpAddr::V4(s)))
            }),
            v6.prop_map(|(s, d, sp, dp)| {
                let (s, d) = (Ipv6Addr::from(s), Ipv6Addr::from(d));
                let line = format!("PROXY TCP6 {s} {d} {sp} {dp}\r\n");
                (line.into_bytes(), Some(IpAddr::V6(s)))
            }),
            Just((b"PROXY UNKNOWN\r\n".to_vec(), None)),
            (v4, tlvs.clone()).prop_map(|((s, d, sp, dp), t)| {
                let mut body = [s, d].concat();
                body.extend_from_slice(&sp.to_be_bytes());
                body.extend_from_slice(&dp.to_be_bytes());
                body.extend_from_slice(&t);
                (v2(1, 0x11, &body), Some(IpAddr::from(s)))
            }),
            (v6, tlvs).prop_map(|((s, d, sp, dp), t)| {
                let mut body = [s, d].concat();
                body.extend_from_slice(&sp.to_be_bytes());
                body.extend_from_slice(&dp.to_be_bytes());
                body.extend_from_slice(&t);
                (v2(1, 0x21, &body), Some(IpAddr::from(s)))
            }),
            Just((v2(0, 0, &[]), None)),
        ]
    }

    /// Bytes that look like the start of a header more often than chance would.
    fn noise() -> impl Strategy<Value = Vec<u8>> {
        let start = prop::sample::select(vec![&b""[..], b"PROXY ", b"PROXY TCP4 ", &V2_SIGNATURE]);
        (start, prop::collection::vec(any::<u8>(), 0..700))
            .prop_map(|(s, tail)| [s, &tail].concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn a_header_is_read_exactly(
            (head, client) in header(),
            tail in prop::collection::vec(any::<u8>(), 0..200),
        ) {
            let (result, rest) = read(&[&head[..], &tail].concat());
            prop_assert_eq!(result.unwrap(), client);
            prop_assert_eq!(rest, tail, "bytes after the header must stay for HTTP");
        }

        #[test]
        fn anything_else_is_read_boundedly(bytes in noise()) {
            let (_, rest) = read(&bytes);
            let consumed = bytes.len() - rest.len();
            prop_assert_eq!(&bytes[consumed..], &rest[..]);
            prop_assert!(consumed <= 16 + MAX_V2_PAYLOAD);
            if !bytes.starts_with(&V2_SIGNATURE) {
                prop_assert!(consumed <= MAX_V1_LINE);
            }
        }
    }
}

//! `proxy::proxy_protocol::read_header` over arbitrary bytes on a real loopback TCP
//! connection (it reads a `TcpStream` and peeks at it, so an in-memory stream cannot
//! stand in).
//!
//! Input: the first byte picks where the stream is cut in two (0, or past the end: not
//! cut); the second part is written only after the reader has run on the first, so both
//! the "line arrived whole" and the "byte at a time" paths are reached. The rest of the
//! input is what the client sends.
//!
//! Properties checked on every input:
//! - never panics;
//! - whatever the outcome, it never reads more than one header can be (107 bytes for
//!   v1, 16 + 512 for v2), and every byte it did not read is still there, in order;
//! - an accepted header is exactly one header: v2 is its 16 bytes plus its stated
//!   length, v1 ends at its first CRLF, and `ppp` parses those bytes to the same
//!   address; the bytes after it are left for HTTP or TLS;
//! - a well-formed header at the start of the stream (per `ppp`, within our limits) is
//!   accepted, with the address it names.
#![no_main]

use ipgate::proxy::proxy_protocol::read_header;
use libfuzzer_sys::fuzz_target;
use ppp::{v1, v2, HeaderResult};
use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

const V1_MAX: usize = 107;
const V2_MAX: usize = 16 + 512;
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

struct Loopback {
    rt: Runtime,
    listener: TcpListener,
    addr: SocketAddr,
}

fn loopback() -> &'static Loopback {
    static ONCE: OnceLock<Loopback> = OnceLock::new();
    ONCE.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        Loopback { rt, listener, addr }
    })
}

/// What `ppp` makes of the start of `stream`, within our limits: the header's length
/// and the client it names (`None`: the proxy itself). `None` when no header is there.
fn reference(stream: &[u8]) -> Option<(usize, Option<IpAddr>)> {
    if stream.len() >= 16 && stream.starts_with(V2_SIGNATURE) {
        let len = 16 + usize::from(u16::from_be_bytes([stream[14], stream[15]]));
        if len > V2_MAX || len > stream.len() {
            return None;
        }
        return match HeaderResult::parse(&stream[..len]) {
            HeaderResult::V2(Ok(h)) => Some((len, v2_client(&h))),
            _ => None,
        };
    }
    let end = stream.windows(2).position(|w| w == b"\r\n")? + 2;
    if end > V1_MAX || !stream.starts_with(b"PROXY ") {
        return None;
    }
    match HeaderResult::parse(&stream[..end]) {
        HeaderResult::V1(Ok(h)) => Some((end, v1_client(&h))),
        _ => None,
    }
}

fn v1_client(h: &v1::Header<'_>) -> Option<IpAddr> {
    match h.addresses {
        v1::Addresses::Tcp4(a) => Some(IpAddr::V4(a.source_address)),
        v1::Addresses::Tcp6(a) => Some(IpAddr::V6(a.source_address)),
        v1::Addresses::Unknown => None,
    }
}

fn v2_client(h: &v2::Header<'_>) -> Option<IpAddr> {
    if h.command == v2::Command::Local {
        return None;
    }
    match h.addresses {
        v2::Addresses::IPv4(a) => Some(IpAddr::V4(a.source_address)),
        v2::Addresses::IPv6(a) => Some(IpAddr::V6(a.source_address)),
        v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let cut = usize::from(cut);
    let (first, second) = if cut == 0 || cut >= stream.len() {
        (stream, &[][..])
    } else {
        stream.split_at(cut)
    };
    let lo = loopback();

    let (result, rest) = lo.rt.block_on(async {
        let mut client = TcpStream::connect(lo.addr).await.unwrap();
        let (mut server, _) = lo.listener.accept().await.unwrap();
        let reader = async {
            let result = read_header(&mut server).await;
            let mut rest = Vec::new();
            server.read_to_end(&mut rest).await.unwrap();
            (result, rest)
        };
        let writer = async {
            client.write_all(first).await.unwrap();
            if !second.is_empty() {
                // Let the reader run on the first part alone.
                for _ in 0..8 {
                    tokio::task::yield_now().await;
                }
                client.write_all(second).await.unwrap();
            }
            client.shutdown().await.unwrap();
        };
        let ((result, rest), ()) = tokio::join!(reader, writer);
        // A reset instead of a FIN: no TIME_WAIT, so millions of runs do not run out of
        // ephemeral ports.
        client.set_zero_linger().unwrap();
        drop(client);
        drop(server);
        (result, rest)
    });

    let consumed = stream.len() - rest.len();
    assert_eq!(
        &stream[consumed..],
        &rest[..],
        "unread bytes were lost or reordered"
    );
    let limit = if stream.starts_with(V2_SIGNATURE) {
        V2_MAX
    } else {
        V1_MAX
    };
    assert!(
        consumed <= limit,
        "read {consumed} bytes, more than a header"
    );

    let expected = reference(stream);
    match result {
        Ok(client) => {
            let header = &stream[..consumed];
            let Some((len, named)) = expected else {
                panic!("accepted {header:?}, which ppp does not parse as a header");
            };
            assert_eq!(
                consumed, len,
                "the accepted header is not exactly one header"
            );
            assert_eq!(client, named, "a different client than the header names");
        }
        Err(e) => {
            if let Some((len, named)) = expected {
                panic!("refused ({e}) a well-formed {len}-byte header naming {named:?}");
            }
        }
    }
});

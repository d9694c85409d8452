//! `proxy::client_ip::resolve`: which address a request is from, given its TCP peer,
//! the trusted-proxy networks and its X-Forwarded-For or RFC 7239 Forwarded lines.
//!
//! Properties checked on every input:
//! - an untrusted peer is the client, whatever its headers say;
//! - a trusted peer without the configured header is the client;
//! - a result is normalised (never `::ffff:a.b.c.d`) and is the peer or an address
//!   written in the configured header's lines;
//! - lines of the other forwarding header change nothing;
//! - reading from the right: one more line naming an untrusted address X makes X the
//!   client, unless the chain is then too long or holds an unreadable line (`None`).
#![no_main]

use arbitrary::Arbitrary;
use http::{HeaderMap, HeaderName, HeaderValue};
use ipgate::acl::normalize;
use ipgate::config::{ClientIpConfig, ForwardedHeader};
use ipgate::proxy::client_ip::{is_trusted, resolve, MAX_HOPS};
use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Addresses the fuzzer can name with one byte, so that hops and trusted networks meet
/// often; the mapped forms test normalisation.
const POOL: [&str; 14] = [
    "10.0.0.1",
    "10.1.2.3",
    "192.0.2.7",
    "203.0.113.5",
    "127.0.0.1",
    "0.0.0.0",
    "255.255.255.255",
    "::1",
    "::",
    "2001:db8::1",
    "2001:db8:cafe::17",
    "fe80::1",
    "::ffff:10.0.0.1",
    "::ffff:192.0.2.7",
];

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Addr {
    Pool(u8),
    V4([u8; 4]),
    V6([u8; 16]),
}

impl Addr {
    /// Not normalised: a mapped address stays mapped, as a client may write it.
    fn ip(self) -> IpAddr {
        match self {
            Addr::Pool(i) => POOL[usize::from(i) % POOL.len()].parse().unwrap(),
            Addr::V4(b) => IpAddr::V4(Ipv4Addr::from(b)),
            Addr::V6(b) => IpAddr::V6(Ipv6Addr::from(b)),
        }
    }
}

/// How one address is spelled in a hop.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Form {
    Plain,
    Port(u16),
    Bracketed,
    /// IPv4 as `::ffff:a.b.c.d`; IPv6 in upper case.
    Mapped,
    Padded,
}

fn spell(ip: IpAddr, form: Form) -> String {
    match (form, ip) {
        (Form::Plain, _) => ip.to_string(),
        (Form::Port(p), IpAddr::V4(v4)) => format!("{v4}:{p}"),
        (Form::Port(p), IpAddr::V6(v6)) => format!("[{v6}]:{p}"),
        (Form::Bracketed, _) => format!("[{ip}]"),
        (Form::Mapped, IpAddr::V4(v4)) => format!("::ffff:{v4}"),
        (Form::Mapped, IpAddr::V6(v6)) => v6.to_string().to_uppercase(),
        (Form::Padded, _) => format!(" \t{ip} "),
    }
}

/// One list element of a Forwarded line around a node.
#[derive(Arbitrary, Debug, Clone, Copy)]
struct Element {
    quoted: bool,
    upper_key: bool,
    proto_before: bool,
    by_after: bool,
}

fn element(node: &str, e: Element) -> String {
    let key = if e.upper_key { "For" } else { "for" };
    let mut s = String::new();
    if e.proto_before {
        s.push_str("proto=https;");
    }
    if e.quoted {
        s.push_str(&format!("{key}=\"{}\"", node.trim()));
    } else {
        s.push_str(&format!("{key}={node}"));
    }
    if e.by_after {
        s.push_str(";by=_gw");
    }
    s
}

#[derive(Arbitrary, Debug)]
enum Hop {
    Addr(Addr, Form, Element),
    Text(String),
}

#[derive(Arbitrary, Debug)]
enum Line {
    Hops(Vec<Hop>, bool),
    Bytes(Vec<u8>),
}

impl Line {
    fn render(&self, forwarded: bool) -> Vec<u8> {
        match self {
            Line::Bytes(b) => b.clone(),
            Line::Hops(hops, spaced) => {
                let parts: Vec<String> = hops
                    .iter()
                    .map(|h| match h {
                        Hop::Addr(a, f, e) => {
                            let node = spell(a.ip(), *f);
                            if forwarded {
                                element(&node, *e)
                            } else {
                                node
                            }
                        }
                        Hop::Text(t) => t.clone(),
                    })
                    .collect();
                parts.join(if *spaced { ", " } else { "," }).into_bytes()
            }
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    peer: Addr,
    forwarded: bool,
    trusted: Vec<(Addr, u8)>,
    lines: Vec<Line>,
    other_lines: Vec<Line>,
    appended: Addr,
    appended_port: Option<u16>,
    appended_element: Element,
}

fn net(a: Addr, prefix: u8) -> IpNet {
    let ip = normalize(a.ip());
    let max = if ip.is_ipv4() { 32 } else { 128 };
    IpNet::new(ip, prefix % (max + 1)).unwrap().trunc()
}

/// Whether some run of address characters in `lines` spells `ip` (after normalising).
fn written_in(ip: IpAddr, lines: &[Vec<u8>]) -> bool {
    let addr_char = |b: &u8| b.is_ascii_hexdigit() || *b == b':' || *b == b'.';
    lines.iter().any(|line| {
        line.split(|b| !addr_char(b)).any(|run| {
            // Every address fits in 45 characters.
            (0..run.len()).any(|start| {
                (start + 2..=run.len().min(start + 45)).any(|end| {
                    std::str::from_utf8(&run[start..end])
                        .ok()
                        .and_then(|s| s.parse::<IpAddr>().ok())
                        .is_some_and(|found| normalize(found) == ip)
                })
            })
        })
    })
}

fn append_all(headers: &mut HeaderMap, name: &HeaderName, lines: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut kept = Vec::new();
    for line in lines {
        if let Ok(value) = HeaderValue::from_bytes(line) {
            headers.append(name.clone(), value);
            kept.push(line.clone());
        }
    }
    kept
}

fuzz_target!(|input: Input| {
    let peer = normalize(input.peer.ip());
    let (header, name, other) = if input.forwarded {
        (
            ForwardedHeader::Forwarded,
            http::header::FORWARDED,
            HeaderName::from_static("x-forwarded-for"),
        )
    } else {
        (
            ForwardedHeader::XForwardedFor,
            HeaderName::from_static("x-forwarded-for"),
            http::header::FORWARDED,
        )
    };
    let config = ClientIpConfig {
        trusted_proxies: input.trusted.iter().map(|&(a, p)| net(a, p)).collect(),
        header,
    };
    let peer_trusted = is_trusted(peer, &config.trusted_proxies);

    let rendered: Vec<Vec<u8>> = input
        .lines
        .iter()
        .map(|l| l.render(input.forwarded))
        .collect();
    let mut headers = HeaderMap::new();
    let lines = append_all(&mut headers, &name, &rendered);
    let got = resolve(peer, peer_trusted, &headers, &config);

    if !peer_trusted {
        assert_eq!(got, Some(peer), "an untrusted peer's headers were believed");
    }
    if lines.is_empty() {
        assert_eq!(got, Some(peer), "no header, yet not the peer");
    }
    if let Some(ip) = got {
        assert_eq!(ip, normalize(ip), "result not normalised");
        assert!(
            ip == peer || written_in(ip, &lines),
            "{ip} is neither the peer nor written in the header"
        );
    }

    // The other forwarding header is never read.
    let others: Vec<Vec<u8>> = input
        .other_lines
        .iter()
        .map(|l| l.render(!input.forwarded))
        .collect();
    let mut with_others = headers.clone();
    append_all(&mut with_others, &other, &others);
    assert_eq!(
        resolve(peer, peer_trusted, &with_others, &config),
        got,
        "the other forwarding header changed the result"
    );

    // Read from the right: a last hop naming an untrusted address decides alone.
    let x = normalize(input.appended.ip());
    if peer_trusted && !is_trusted(x, &config.trusted_proxies) {
        let node = match (input.appended_port, input.appended.ip()) {
            (None, ip) => ip.to_string(),
            (Some(p), IpAddr::V4(v4)) => format!("{v4}:{p}"),
            (Some(p), IpAddr::V6(v6)) => format!("[{v6}]:{p}"),
        };
        let last = if input.forwarded {
            element(&node, input.appended_element)
        } else {
            node
        };
        let mut longer = headers.clone();
        longer.append(name.clone(), HeaderValue::from_str(&last).unwrap());
        let readable = headers.get_all(&name).iter().all(|v| v.to_str().is_ok());
        let hops: usize = lines
            .iter()
            .map(|l| l.iter().filter(|&&b| b == b',').count() + 1)
            .sum::<usize>()
            + 1;
        let expected = (readable && hops <= MAX_HOPS).then_some(x);
        assert_eq!(
            resolve(peer, peer_trusted, &longer, &config),
            expected,
            "a last hop {last:?} naming an untrusted address did not decide"
        );
    }
});

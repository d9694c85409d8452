//! Who the client is: the TCP peer, or, only when the peer is a trusted proxy, the
//! address its forwarding header names, read from the right.
//!
//! Reading from the right means each trusted hop vouches for the one before it; the
//! first address that is not a trusted proxy is the client. Anything that does not
//! parse fails closed (`None`): the request is refused rather than guessed.

use crate::acl::normalize;
use crate::config::{ClientIpConfig, ForwardedHeader};
use http::header::{HeaderMap, FORWARDED};
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};

/// More hops than this in one chain is refused rather than walked.
#[doc(hidden)] // public for the fuzz targets only
pub const MAX_HOPS: usize = 32;

pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|n| n.contains(&ip))
}

/// The client address for a request that arrived from `peer` (already normalised);
/// `peer_trusted` is [`is_trusted`] of it, worked out once per connection.
pub fn resolve(
    peer: IpAddr,
    peer_trusted: bool,
    headers: &HeaderMap,
    config: &ClientIpConfig,
) -> Option<IpAddr> {
    if !peer_trusted {
        return Some(peer);
    }
    walk(peer, headers, config, |_| {})
}

/// What a trusted peer's forwarding header says that the gateway can vouch for: the
/// client and then every trusted proxy after it, in order, left to right (the peer
/// itself not included). Anything the header holds to the left of the client was
/// written by the client and is left out. `None` when [`resolve`] fails closed.
pub fn verified_chain(
    peer: IpAddr,
    headers: &HeaderMap,
    config: &ClientIpConfig,
) -> Option<Vec<IpAddr>> {
    let mut chain = Vec::new();
    walk(peer, headers, config, |hop| chain.push(hop))?;
    chain.reverse();
    Some(chain)
}

/// Reads a trusted peer's forwarding header from the right, showing `visit` every hop
/// it believes (normalised), the client last; returns the client.
fn walk(
    peer: IpAddr,
    headers: &HeaderMap,
    config: &ClientIpConfig,
    mut visit: impl FnMut(IpAddr),
) -> Option<IpAddr> {
    let name = match config.header {
        ForwardedHeader::XForwardedFor => http::HeaderName::from_static("x-forwarded-for"),
        ForwardedHeader::Forwarded => FORWARDED,
    };
    // Several header lines form one list, in order.
    let mut hops: Vec<&str> = Vec::new();
    for value in headers.get_all(&name) {
        let text = value.to_str().ok()?;
        hops.extend(text.split(','));
        if hops.len() > MAX_HOPS {
            return None;
        }
    }
    let mut client = peer;
    for hop in hops.iter().rev() {
        let ip = match config.header {
            ForwardedHeader::XForwardedFor => parse_node(hop.trim())?,
            ForwardedHeader::Forwarded => forwarded_for(hop)?,
        };
        client = normalize(ip);
        visit(client);
        if !is_trusted(client, &config.trusted_proxies) {
            break;
        }
    }
    Some(client)
}

/// The `for=` node of one RFC 7239 element; `None` when absent, obfuscated or unknown.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    let value = element.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        k.trim().eq_ignore_ascii_case("for").then_some(v.trim())
    })?;
    let value = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    parse_node(value)
}

/// `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:80`.
fn parse_node(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (inner, _) = rest.split_once(']')?;
        return inner.parse().ok();
    }
    s.parse::<SocketAddr>().ok().map(|a| a.ip())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_net;

    fn config(header: ForwardedHeader, nets: &[&str]) -> ClientIpConfig {
        ClientIpConfig {
            trusted_proxies: nets.iter().map(|n| parse_net(n).unwrap()).collect(),
            header,
        }
    }

    fn headers(name: &str, values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn resolve_from_peer(peer: IpAddr, h: &HeaderMap, c: &ClientIpConfig) -> Option<IpAddr> {
        resolve(peer, is_trusted(peer, &c.trusted_proxies), h, c)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let c = config(ForwardedHeader::XForwardedFor, &["10.0.0.0/8"]);
        let h = headers("x-forwarded-for", &["1.1.1.1"]);
        assert_eq!(
            resolve_from_peer(ip("192.0.2.7"), &h, &c),
            Some(ip("192.0.2.7"))
        );
        let none = config(ForwardedHeader::XForwardedFor, &[]);
        assert_eq!(
            resolve_from_peer(ip("10.0.0.1"), &h, &none),
            Some(ip("10.0.0.1"))
        );
    }

    #[test]
    fn xff_is_read_from_the_right_past_trusted_hops() {
        let c = config(ForwardedHeader::XForwardedFor, &["10.0.0.0/8"]);
        let h = headers("x-forwarded-for", &["6.6.6.6, 203.0.113.5", "10.1.1.1"]);
        // 6.6.6.6 was written by the client itself; 203.0.113.5 is who reached our proxy.
        assert_eq!(
            resolve_from_peer(ip("10.0.0.1"), &h, &c),
            Some(ip("203.0.113.5"))
        );
    }

    #[test]
    fn the_verified_chain_leaves_out_what_the_client_wrote() {
        let c = config(ForwardedHeader::XForwardedFor, &["10.0.0.0/8"]);
        let h = headers("x-forwarded-for", &["6.6.6.6, 203.0.113.5", "10.1.1.1"]);
        assert_eq!(
            verified_chain(ip("10.0.0.1"), &h, &c),
            Some(vec![ip("203.0.113.5"), ip("10.1.1.1")])
        );
        assert_eq!(
            verified_chain(ip("10.0.0.1"), &HeaderMap::new(), &c),
            Some(vec![])
        );
        let h = headers("x-forwarded-for", &["1.2.3.4, nonsense"]);
        assert_eq!(verified_chain(ip("10.0.0.1"), &h, &c), None);
    }

    #[test]
    fn trusted_peer_without_header_is_itself() {
        let c = config(ForwardedHeader::XForwardedFor, &["10.0.0.0/8"]);
        assert_eq!(
            resolve_from_peer(ip("10.0.0.1"), &HeaderMap::new(), &c),
            Some(ip("10.0.0.1"))
        );
    }

    #[test]
    fn garbage_from_a_trusted_proxy_fails_closed() {
        let c = config(ForwardedHeader::XForwardedFor, &["10.0.0.0/8"]);
        let h = headers("x-forwarded-for", &["1.2.3.4, nonsense"]);
        assert_eq!(resolve_from_peer(ip("10.0.0.1"), &h, &c), None);
        let long = vec!["1.1.1.1"; MAX_HOPS + 1].join(",");
        let h = headers("x-forwarded-for", &[&long]);
        assert_eq!(resolve_from_peer(ip("10.0.0.1"), &h, &c), None);
    }

    #[test]
    fn mapped_addresses_are_normalised() {
        let c = config(ForwardedHeader::XForwardedFor, &["10.0.0.0/8"]);
        let h = headers("x-forwarded-for", &["::ffff:198.51.100.1"]);
        assert_eq!(
            resolve_from_peer(ip("10.0.0.1"), &h, &c),
            Some(ip("198.51.100.1"))
        );
    }

    #[test]
    fn forwarded_rfc7239() {
        let c = config(ForwardedHeader::Forwarded, &["10.0.0.0/8", "2001:db8::/32"]);
        let h = headers(
            "forwarded",
            &[
                "for=192.0.2.60;proto=http, for=\"[2001:db8:cafe::17]:4711\"",
                "For=\"198.51.100.9:80\";by=x",
            ],
        );
        assert_eq!(
            resolve_from_peer(ip("10.0.0.1"), &h, &c),
            Some(ip("198.51.100.9"))
        );
        let h = headers(
            "forwarded",
            &["for=192.0.2.60, for=\"[2001:db8:cafe::17]:4711\""],
        );
        assert_eq!(
            resolve_from_peer(ip("10.0.0.1"), &h, &c),
            Some(ip("192.0.2.60"))
        );
        let h = headers("forwarded", &["for=unknown"]);
        assert_eq!(resolve_from_peer(ip("10.0.0.1"), &h, &c), None);
        let h = headers("forwarded", &["for=_hidden"]);
        assert_eq!(resolve_from_peer(ip("10.0.0.1"), &h, &c), None);
        // The other header is ignored when this one is configured.
        let h = headers("x-forwarded-for", &["1.1.1.1"]);
        assert_eq!(
            resolve_from_peer(ip("10.0.0.1"), &h, &c),
            Some(ip("10.0.0.1"))
        );
    }

    // The fuzz target's properties (fuzz/fuzz_targets/client_ip.rs), as cheap
    // always-on property tests.
    mod props {
        use super::*;
        use proptest::prelude::*;
        use std::net::Ipv4Addr;

        fn any_ip() -> impl Strategy<Value = IpAddr> {
            prop_oneof![
                any::<[u8; 4]>().prop_map(IpAddr::from),
                any::<[u8; 16]>().prop_map(IpAddr::from),
                any::<[u8; 4]>().prop_map(|b| IpAddr::V6(Ipv4Addr::from(b).to_ipv6_mapped())),
                // A few addresses often, so that hops and trusted networks meet.
                prop::sample::select(vec![
                    "10.0.0.1",
                    "10.9.9.9",
                    "192.0.2.7",
                    "::1",
                    "2001:db8::1"
                ])
                .prop_map(ip),
            ]
        }

        fn spell(ip: IpAddr, port: Option<u16>, forwarded: bool) -> String {
            let node = match (ip, port) {
                (ip, None) => ip.to_string(),
                (IpAddr::V4(v4), Some(p)) => format!("{v4}:{p}"),
                (IpAddr::V6(v6), Some(p)) => format!("[{v6}]:{p}"),
            };
            if forwarded {
                format!("for=\"{node}\"")
            } else {
                node
            }
        }

        fn hop(forwarded: bool) -> impl Strategy<Value = String> {
            prop_oneof![
                3 => (any_ip(), any::<Option<u16>>()).prop_map(move |(ip, port)| spell(ip, port, forwarded)),
                1 => "[ -~]{0,12}",
            ]
        }

        fn nets() -> impl Strategy<Value = Vec<IpNet>> {
            prop::collection::vec((any_ip(), 0u8..=128), 0..4).prop_map(|v| {
                v.into_iter()
                    .map(|(a, p)| {
                        let a = normalize(a);
                        let max = if a.is_ipv4() { 32 } else { 128 };
                        IpNet::new(a, p.min(max)).unwrap().trunc()
                    })
                    .collect()
            })
        }

        fn setup() -> impl Strategy<Value = (bool, IpAddr, Vec<IpNet>, Vec<String>)> {
            any::<bool>().prop_flat_map(|forwarded| {
                let line = prop::collection::vec(hop(forwarded), 1..5).prop_map(|h| h.join(","));
                (
                    Just(forwarded),
                    any_ip(),
                    nets(),
                    prop::collection::vec(line, 0..4),
                )
            })
        }

        fn header_of(forwarded: bool) -> (ForwardedHeader, &'static str) {
            if forwarded {
                (ForwardedHeader::Forwarded, "forwarded")
            } else {
                (ForwardedHeader::XForwardedFor, "x-forwarded-for")
            }
        }

        /// Whether `ip` is spelled somewhere in `lines` (the only other place a client
        /// address may come from than the peer).
        fn written_in(ip: IpAddr, lines: &[String]) -> bool {
            lines.iter().any(|l| {
                l.split(|c: char| !(c.is_ascii_hexdigit() || c == ':' || c == '.'))
                    .any(|run| {
                        (0..run.len()).any(|i| {
                            (i + 2..=run.len().min(i + 45)).any(|j| {
                                run[i..j]
                                    .parse::<IpAddr>()
                                    .is_ok_and(|f| normalize(f) == ip)
                            })
                        })
                    })
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn only_the_peer_or_a_written_address((forwarded, peer, nets, lines) in setup()) {
                let peer = normalize(peer);
                let (kind, name) = header_of(forwarded);
                let c = ClientIpConfig { trusted_proxies: nets, header: kind };
                let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
                let trusted = is_trusted(peer, &c.trusted_proxies);
                let got = resolve(peer, trusted, &headers(name, &refs), &c);
                if !trusted || lines.is_empty() {
                    prop_assert_eq!(got, Some(peer));
                }
                if let Some(found) = got {
                    prop_assert_eq!(found, normalize(found));
                    prop_assert!(found == peer || written_in(found, &lines));
                }
            }

            #[test]
            fn the_rightmost_untrusted_hop_decides(
                (forwarded, peer, nets, lines) in setup(),
                last in any_ip(),
                port in any::<Option<u16>>(),
            ) {
                let peer = normalize(peer);
                let (kind, name) = header_of(forwarded);
                let mut nets = nets;
                nets.push(IpNet::from(peer));
                let c = ClientIpConfig { trusted_proxies: nets, header: kind };
                let x = normalize(last);
                prop_assume!(!is_trusted(x, &c.trusted_proxies));
                let mut all = lines.clone();
                all.push(spell(last, port, forwarded));
                let hops: usize = all.iter().map(|l| l.matches(',').count() + 1).sum();
                let refs: Vec<&str> = all.iter().map(String::as_str).collect();
                let got = resolve(peer, true, &headers(name, &refs), &c);
                prop_assert_eq!(got, (hops <= MAX_HOPS).then_some(x));
            }
        }
    }
}

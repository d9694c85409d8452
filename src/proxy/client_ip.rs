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
}

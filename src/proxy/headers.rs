//! The headers an allowed request goes upstream with, and those an answer comes back
//! without.
//!
//! Up, the forwarding policy: the service behind believes only what the gateway
//! vouches for. Hop-by-hop headers go, the key goes (unless `auth.forward_key`), and
//! every header in which a client could claim an address, an identity, a host or a
//! scheme goes ([`spoofable`]: `Forwarded`, `X-Forwarded-*`, `X-Real-IP`,
//! `True-Client-IP`, …, every `X-Ipgate-*`, and every name with `_`, which some
//! servers read as `-`). Then the gateway writes its own: `X-Forwarded-For` (the
//! address it decided with, and behind trusted proxies only the part of their chain it
//! verified), `X-Forwarded-Proto`, the identity, `X-Request-Id`, and when configured
//! `Forwarded` (RFC 7239) and `X-Real-IP`. Down: hop-by-hop headers go.

use crate::acl::Identity;
use crate::config::UpstreamConfig;
use crate::metrics::UpstreamError;
use crate::request_id::X_REQUEST_ID;
use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use std::net::IpAddr;
use std::sync::Mutex;

pub const CREDENTIAL_ID: HeaderName = HeaderName::from_static("x-ipgate-credential-id");
pub const USER_ID: HeaderName = HeaderName::from_static("x-ipgate-user-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
/// Present (`shadow`) on a request whose address the credential's list does not hold.
pub const ENFORCEMENT: HeaderName = HeaderName::from_static("x-ipgate-enforcement");
const OWN_PREFIX: &[u8] = b"x-ipgate-";

/// What the forwarder needs to know about the request beyond the request itself.
pub struct Forwarding<'a> {
    /// Who it was allowed as, as the values of the identity headers.
    pub identity: IdentityValues,
    pub client_ip: IpAddr,
    /// When the peer is a trusted proxy: what its forwarding header says that the
    /// gateway verified, the client first (`client_ip::verified_chain`). `None`: the
    /// peer is the client.
    pub verified: Option<Vec<IpAddr>>,
    /// The TCP peer's address as a header value, made once per connection.
    pub peer: &'a HeaderValue,
    pub tls: bool,
    /// The credential header, removed unless it is to be forwarded.
    pub strip: Option<&'a HeaderName>,
    /// The request's id, passed on as `X-Request-Id`.
    pub request_id: &'a HeaderValue,
    /// Let through only because the credential is in shadow mode: the upstream is told
    /// with `X-Ipgate-Enforcement: shadow`.
    pub shadow: bool,
}

/// The identity headers' values for one credential.
#[derive(Clone, Debug)]
pub struct IdentityValues {
    who: Identity,
    pub credential_id: HeaderValue,
    pub user_id: HeaderValue,
}

/// The identity headers' values of the last credential forwarded on a connection: a
/// connection nearly always carries one key, so they are formatted (and allocated)
/// once per connection, and each request takes a shared copy.
#[derive(Default)]
pub struct IdentityCache(Mutex<Option<IdentityValues>>);

impl IdentityCache {
    pub fn values(&self, who: Identity) -> IdentityValues {
        let mut last = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match &*last {
            Some(values) if values.who == who => values.clone(),
            _ => {
                let values = IdentityValues {
                    who,
                    credential_id: HeaderValue::from(who.credential_id),
                    user_id: HeaderValue::from(who.user_id),
                };
                *last = Some(values.clone());
                values
            }
        }
    }
}

/// Rewrites the headers of a request on its way up.
pub fn set_forwarding(
    headers: &mut HeaderMap,
    how: Forwarding<'_>,
    policy: &UpstreamConfig,
) -> Result<(), UpstreamError> {
    // A trusted proxy's scheme is kept when it is one; anything else is the gateway's.
    let proto = match &how.verified {
        Some(_) => kept_proto(headers),
        None => None,
    }
    .unwrap_or(if how.tls { "https" } else { "http" });
    strip_headers(headers, true);
    if let Some(name) = how.strip {
        headers.remove(name);
    }

    let chain = match &how.verified {
        Some(hops) if !hops.is_empty() => chain_value(hops, how.peer)?,
        _ => how.peer.clone(),
    };
    headers.insert(X_FORWARDED_FOR, chain);
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    headers.insert(CREDENTIAL_ID, how.identity.credential_id);
    headers.insert(USER_ID, how.identity.user_id);
    // The resolved client address: set by us, never taken from the client.
    let client_ip = if how.verified.is_some() {
        ip_value(how.client_ip)
    } else {
        how.peer.clone()
    };
    if policy.send_real_ip {
        headers.insert(X_REAL_IP, client_ip.clone());
    }
    headers.insert(CLIENT_IP, client_ip);
    if policy.send_forwarded {
        let hops = how.verified.as_deref().unwrap_or_default();
        headers.insert(header::FORWARDED, forwarded_value(hops, how.peer, proto)?);
    }
    headers.insert(X_REQUEST_ID, how.request_id.clone());
    if how.shadow {
        headers.insert(ENFORCEMENT, HeaderValue::from_static("shadow"));
    }
    Ok(())
}

/// A trusted proxy's `X-Forwarded-Proto`, when it sent exactly one that is a scheme.
fn kept_proto(headers: &HeaderMap) -> Option<&'static str> {
    let mut lines = headers.get_all(&X_FORWARDED_PROTO).iter();
    match (lines.next(), lines.next()) {
        (Some(v), None) if v.as_bytes().eq_ignore_ascii_case(b"https") => Some("https"),
        (Some(v), None) if v.as_bytes().eq_ignore_ascii_case(b"http") => Some("http"),
        _ => None,
    }
}

/// `X-Forwarded-For` behind trusted proxies: the verified hops, then the peer.
fn chain_value(hops: &[IpAddr], peer: &HeaderValue) -> Result<HeaderValue, UpstreamError> {
    let mut chain = String::with_capacity(16 * (hops.len() + 1));
    for hop in hops {
        chain.push_str(&hop.to_string());
        chain.push_str(", ");
    }
    chain.push_str(peer.to_str().map_err(|_| UpstreamError::Protocol)?);
    HeaderValue::try_from(chain).map_err(|_| UpstreamError::Protocol)
}

/// RFC 7239: one element per hop the gateway verified and one for its own peer, with
/// the scheme the request arrived with on the gateway's own element.
fn forwarded_value(
    hops: &[IpAddr],
    peer: &HeaderValue,
    proto: &str,
) -> Result<HeaderValue, UpstreamError> {
    let node = |ip: &str| {
        if ip.contains(':') {
            format!("for=\"[{ip}]\"")
        } else {
            format!("for={ip}")
        }
    };
    let mut elements: Vec<String> = hops.iter().map(|h| node(&h.to_string())).collect();
    let peer = peer.to_str().map_err(|_| UpstreamError::Protocol)?;
    elements.push(format!("{};proto={proto}", node(peer)));
    HeaderValue::try_from(elements.join(", ")).map_err(|_| UpstreamError::Protocol)
}

/// The address the gateway judged the request by.
pub const CLIENT_IP: HeaderName = HeaderName::from_static("x-ipgate-client-ip");

/// Headers in which a client could claim an address, an identity, a host or a
/// scheme. No client may send them upstream: the gateway writes its own (or none).
/// A name with `_` goes too: servers that fold `_` into `-` (gunicorn before 22, Puma
/// before 6.4.3) would read `X_Ipgate_User_Id` as the gateway's own header.
pub fn spoofable(name: &str) -> bool {
    matches!(
        name,
        "forwarded"
            | "x-forwarded-for"
            | "x-forwarded-proto"
            | "x-forwarded-host"
            | "x-forwarded-port"
            | "x-forwarded-prefix"
            | "x-forwarded-scheme"
            | "x-forwarded-ssl"
            | "x-forwarded-server"
            | "x-original-forwarded-for"
            | "x-original-host"
            | "x-real-ip"
            | "x-client-ip"
            | "x-cluster-client-ip"
            | "true-client-ip"
            | "cf-connecting-ip"
            | "fastly-client-ip"
    ) || name.as_bytes().starts_with(OWN_PREFIX)
        || name.as_bytes().contains(&b'_')
}

/// Removes hop-by-hop headers, every header the `Connection` header names (never
/// `Host`: the upstream must get one), and with `own` every [`spoofable`] one (only
/// the gateway may set those). One pass over the names finds out what there is to
/// remove; for most requests there is nothing, and hashing each candidate name for a
/// `remove` cost more than the check. Most answers carry only `Connection:
/// keep-alive` (nginx and others): its lines are taken out whole, and a name they
/// list is looked for among the names present before anything is parsed or hashed,
/// so that common case allocates nothing and removes nothing else.
pub fn strip_headers(headers: &mut HeaderMap, own: bool) {
    let mut connection = false;
    let mut others = false;
    for name in headers.keys() {
        if *name == header::CONNECTION {
            connection = true;
        } else if hop_by_hop(name.as_str()) || (own && spoofable(name.as_str())) {
            others = true;
        }
    }
    if connection {
        if let Entry::Occupied(lines) = headers.entry(header::CONNECTION) {
            let mut lines = lines.remove_entry_mult().1;
            // Usually one line; a second and later ones are rare enough to be collected.
            let first = lines.next();
            let rest: Vec<HeaderValue> = lines.collect();
            for line in first.iter().chain(&rest) {
                for token in line.to_str().unwrap_or_default().split(',') {
                    let token = token.trim();
                    // `Connection: host` must not leave the upstream without a Host. A
                    // hop-by-hop name goes below anyway (`keep-alive`, most often).
                    if token.eq_ignore_ascii_case("host") || hop_by_hop_token(token) {
                        continue;
                    }
                    // `close`, most often: a name no header has.
                    if headers
                        .keys()
                        .any(|n| n.as_str().eq_ignore_ascii_case(token))
                    {
                        headers.remove(token);
                    }
                }
            }
        }
    }
    if !others {
        return;
    }
    let doomed = |name: &HeaderName| {
        let name = name.as_str();
        hop_by_hop(name) || (own && spoofable(name))
    };
    while let Some(name) = headers.keys().find(|n| doomed(n)).cloned() {
        headers.remove(&name);
    }
}

/// Hop-by-hop headers other than `Connection`: RFC 9110 section 7.6.1, plus the
/// common non-standard ones. A match on the text compiles to a length switch and one
/// compare; comparing `HeaderName`s against a list cost several times more.
fn hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "upgrade"
    )
}

/// [`hop_by_hop`] for a token of `Connection`, in any case.
fn hop_by_hop_token(token: &str) -> bool {
    [
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "upgrade",
        "connection",
    ]
    .iter()
    .any(|name| token.eq_ignore_ascii_case(name))
}

/// An address as a header value. `String` becomes the value's buffer without a copy.
pub fn ip_value(ip: IpAddr) -> HeaderValue {
    HeaderValue::try_from(ip.to_string()).expect("an address is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            "keep-alive, x-secret-hop".parse().unwrap(),
        );
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert(header::TE, "trailers".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_headers(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn every_connection_line_counts_and_odd_tokens_name_nothing() {
        let mut h = HeaderMap::new();
        h.append(
            header::CONNECTION,
            "Keep-Alive, ,  X-Hop-One ".parse().unwrap(),
        );
        h.append(header::CONNECTION, "x-hop-two, not a name".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-hop-one", "1".parse().unwrap());
        h.insert("x-hop-two", "1".parse().unwrap());
        h.insert("proxy-connection", "close".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_headers(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn the_chain_is_what_was_verified_and_the_peer() {
        let peer = HeaderValue::from_static("10.0.0.5");
        let hops: Vec<IpAddr> = vec![
            "203.0.113.5".parse().unwrap(),
            "2001:db8::1".parse().unwrap(),
        ];
        assert_eq!(
            chain_value(&hops, &peer).unwrap(),
            "203.0.113.5, 2001:db8::1, 10.0.0.5"
        );
        assert_eq!(
            forwarded_value(&hops, &peer, "https").unwrap(),
            "for=203.0.113.5, for=\"[2001:db8::1]\", for=10.0.0.5;proto=https"
        );
        let v6 = HeaderValue::from_static("::1");
        assert_eq!(
            forwarded_value(&[], &v6, "http").unwrap(),
            "for=\"[::1]\";proto=http"
        );
    }

    #[test]
    fn connection_cannot_remove_host() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "host, x-a".parse().unwrap());
        h.insert(header::HOST, "a.example".parse().unwrap());
        h.insert("x-a", "1".parse().unwrap());
        strip_headers(&mut h, true);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h[header::HOST], "a.example");
    }

    #[test]
    fn every_spoofable_header_goes_up_never() {
        let mut h = HeaderMap::new();
        for name in [
            "forwarded",
            "x-real-ip",
            "true-client-ip",
            "x-client-ip",
            "cf-connecting-ip",
            "x-forwarded-host",
            "x-forwarded-port",
            "x-forwarded-proto",
            "x-forwarded-for",
            "x_ipgate_user_id",
            "x_forwarded_for",
            "x-ipgate-client-ip",
        ] {
            h.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                "10.0.0.1".parse().unwrap(),
            );
        }
        h.insert("x-kept", "1".parse().unwrap());
        let mut answer = h.clone();
        strip_headers(&mut h, true);
        assert_eq!(h.len(), 1, "{h:?}");
        // An answer keeps them: they are the upstream's business.
        strip_headers(&mut answer, false);
        assert_eq!(answer.len(), 13);
    }

    #[test]
    fn a_connection_that_changes_keys_gets_each_keys_identity() {
        let cache = IdentityCache::default();
        let a = Identity {
            credential_id: 7,
            user_id: 1,
        };
        let b = Identity {
            credential_id: 8,
            user_id: 1,
        };
        for who in [a, a, b, a] {
            let values = cache.values(who);
            assert_eq!(values.credential_id, who.credential_id.to_string().as_str());
            assert_eq!(values.user_id, who.user_id.to_string().as_str());
        }
    }

    #[test]
    fn client_cannot_smuggle_identity_headers() {
        let mut h = HeaderMap::new();
        h.insert("x-ipgate-user-id", "1".parse().unwrap());
        h.append("X-Ipgate-Credential-Id", "1".parse().unwrap());
        h.insert("x-ipgate-anything", "1".parse().unwrap());
        h.insert("x-other", "1".parse().unwrap());
        strip_headers(&mut h, false);
        assert_eq!(h.len(), 4, "only the gateway's own pass strips them");
        strip_headers(&mut h, true);
        assert_eq!(h.len(), 1);
    }
}

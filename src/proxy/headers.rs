//! The headers an allowed request goes upstream with, and those an answer comes back
//! without.
//!
//! Up: hop-by-hop headers go, the key goes (unless `auth.forward_key`), every
//! `X-Ipgate-*` the client sent goes; then the gateway's own identity, `X-Forwarded-*`
//! and `X-Request-Id` are set. Down: hop-by-hop headers go.

use crate::acl::Identity;
use crate::metrics::UpstreamError;
use crate::request_id::X_REQUEST_ID;
use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use std::net::IpAddr;

pub const CREDENTIAL_ID: HeaderName = HeaderName::from_static("x-ipgate-credential-id");
pub const USER_ID: HeaderName = HeaderName::from_static("x-ipgate-user-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// Present (`shadow`) on a request whose address the credential's list does not hold.
pub const ENFORCEMENT: HeaderName = HeaderName::from_static("x-ipgate-enforcement");
const OWN_PREFIX: &[u8] = b"x-ipgate-";

/// What the forwarder needs to know about the request beyond the request itself.
pub struct Forwarding<'a> {
    pub identity: Identity,
    pub client_ip: IpAddr,
    /// The peer is a trusted proxy: its `X-Forwarded-*` are kept and extended.
    pub via_trusted_proxy: bool,
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

/// Rewrites the headers of a request on its way up.
pub fn set_forwarding(headers: &mut HeaderMap, how: &Forwarding<'_>) -> Result<(), UpstreamError> {
    strip_headers(headers, true);
    if let Some(name) = how.strip {
        headers.remove(name);
    }

    let chain = if how.via_trusted_proxy {
        forwarded_chain(headers, how.peer)?
    } else {
        how.peer.clone()
    };
    headers.insert(X_FORWARDED_FOR, chain);
    if !(how.via_trusted_proxy && headers.contains_key(&X_FORWARDED_PROTO)) {
        let proto = if how.tls { "https" } else { "http" };
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    headers.insert(CREDENTIAL_ID, HeaderValue::from(how.identity.credential_id));
    headers.insert(USER_ID, HeaderValue::from(how.identity.user_id));
    // The resolved client address: set by us, never taken from the client.
    let client_ip = if how.via_trusted_proxy {
        ip_value(how.client_ip)
    } else {
        how.peer.clone()
    };
    headers.insert(CLIENT_IP, client_ip);
    headers.insert(X_REQUEST_ID, how.request_id.clone());
    if how.shadow {
        headers.insert(ENFORCEMENT, HeaderValue::from_static("shadow"));
    }
    Ok(())
}

/// The `X-Forwarded-For` a trusted proxy's request goes on with: every line it came
/// with, in order, joined into one list (as `client_ip::resolve` read them), and the
/// proxy itself appended.
fn forwarded_chain(headers: &HeaderMap, peer: &HeaderValue) -> Result<HeaderValue, UpstreamError> {
    let mut lines = headers.get_all(&X_FORWARDED_FOR).iter().peekable();
    if lines.peek().is_none() {
        return Ok(peer.clone());
    }
    let mut chain = Vec::with_capacity(64);
    for line in lines {
        chain.extend_from_slice(line.as_bytes());
        chain.extend_from_slice(b", ");
    }
    chain.extend_from_slice(peer.as_bytes());
    HeaderValue::from_bytes(&chain).map_err(|_| UpstreamError::Protocol)
}

/// The address the gateway judged the request by.
pub const CLIENT_IP: HeaderName = HeaderName::from_static("x-ipgate-client-ip");

/// Removes hop-by-hop headers, every header the `Connection` header names, and with
/// `own` every `X-Ipgate-*` (only the gateway may set those). One pass over the names
/// finds out whether there is anything to remove at all; for most requests there is
/// not, and hashing each candidate name for a `remove` cost more than the check.
/// Most answers do carry one (`Connection: keep-alive` from nginx and others): the
/// `Connection` lines are taken out whole and the names they list removed by their
/// text, so that common case allocates nothing (no list of names, no new
/// `HeaderName` for each listed one).
pub fn strip_headers(headers: &mut HeaderMap, own: bool) {
    // Hop-by-hop headers: RFC 9110 section 7.6.1, plus the common non-standard ones.
    // A match on the text compiles to a length switch and one compare; comparing
    // `HeaderName`s against a list cost several times more for every header.
    let doomed = |name: &HeaderName| {
        let name = name.as_str();
        matches!(
            name,
            "connection"
                | "keep-alive"
                | "proxy-connection"
                | "proxy-authenticate"
                | "proxy-authorization"
                | "te"
                | "trailer"
                | "upgrade"
        ) || (own && name.as_bytes().starts_with(OWN_PREFIX))
    };
    if !headers.keys().any(doomed) {
        return;
    }
    if let Entry::Occupied(lines) = headers.entry(header::CONNECTION) {
        let mut lines = lines.remove_entry_mult().1;
        // Usually one line; a second and later ones are rare enough to be collected.
        let first = lines.next();
        let rest: Vec<HeaderValue> = lines.collect();
        for line in first.iter().chain(&rest) {
            for token in line.to_str().unwrap_or_default().split(',') {
                // A token that is no valid header name names nothing here.
                headers.remove(token.trim());
            }
        }
    }
    while let Some(name) = headers.keys().find(|n| doomed(n)).cloned() {
        headers.remove(&name);
    }
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
    fn every_forwarded_for_line_joins_the_chain() {
        let peer = HeaderValue::from_static("10.0.0.5");
        let mut h = HeaderMap::new();
        assert_eq!(forwarded_chain(&h, &peer).unwrap(), "10.0.0.5");
        h.append(X_FORWARDED_FOR, "1.1.1.1, 2.2.2.2".parse().unwrap());
        h.append(X_FORWARDED_FOR, "3.3.3.3".parse().unwrap());
        assert_eq!(
            forwarded_chain(&h, &peer).unwrap(),
            "1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.5"
        );
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

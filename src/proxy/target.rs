//! What a request must look like before the gateway routes it anywhere: a target it
//! can forward (no tunnel) and one unambiguous `Host`.
//!
//! A gateway in front of one upstream never opens tunnels, so `CONNECT` and the
//! authority-form target (`host:port`, only meaningful for `CONNECT`) are refused
//! before authentication, and nothing reaches the upstream. RFC 9112 section 3.2: a
//! request with more than one `Host` line, an invalid one, or (HTTP/1.1) none at all is
//! answered 400. Every check here is a few comparisons on what hyper already parsed.

use http::header::HOST;
use http::uri::Authority;
use http::{Method, Request, Version};

/// Why a request is refused before routing. The message is what the client is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    Tunnel,
    NoHost,
    ManyHosts,
    BadHost,
}

impl Malformed {
    pub fn message(self) -> &'static str {
        match self {
            Malformed::Tunnel => {
                "This gateway does not open tunnels: CONNECT and host:port targets are refused."
            }
            Malformed::NoHost => "An HTTP/1.1 request needs a Host header.",
            Malformed::ManyHosts => "A request may carry only one Host header.",
            Malformed::BadHost => "The Host header is not a valid host[:port].",
        }
    }

    /// Log field.
    pub fn label(self) -> &'static str {
        match self {
            Malformed::Tunnel => "tunnel",
            Malformed::NoHost => "no_host",
            Malformed::ManyHosts => "many_hosts",
            Malformed::BadHost => "bad_host",
        }
    }
}

/// `None` when the request may be routed.
pub fn check<B>(req: &Request<B>) -> Option<Malformed> {
    let uri = req.uri();
    // Authority-form: an authority and neither scheme nor path (hyper keeps HTTP/2's
    // `:scheme` and `:path` in the URI, so only a CONNECT looks like this there too).
    if req.method() == Method::CONNECT || (uri.scheme().is_none() && uri.authority().is_some()) {
        return Some(Malformed::Tunnel);
    }
    let mut hosts = req.headers().get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) if req.version() == Version::HTTP_11 => Some(Malformed::NoHost),
        (None, _) => None,
        (Some(_), Some(_)) => Some(Malformed::ManyHosts),
        // An authority with userinfo (`user@host`), or a port that is no number, is no
        // Host value. `@` is looked for in the bytes first (a memchr, not a char
        // search), and the host split off once: this runs for every request.
        (Some(host), None) if host.as_bytes().contains(&b'@') => Some(Malformed::BadHost),
        (Some(host), None) => match Authority::try_from(host.as_bytes()) {
            Ok(a) => {
                let host = a.host();
                let port = &a.as_str()[host.len()..];
                match port.strip_prefix(':') {
                    _ if host.is_empty() => Some(Malformed::BadHost),
                    None if port.is_empty() => None,
                    Some(p) if p.parse::<u16>().is_ok() => None,
                    _ => Some(Malformed::BadHost),
                }
            }
            Err(_) => Some(Malformed::BadHost),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, target: &str, version: Version, hosts: &[&str]) -> Request<()> {
        let mut b = Request::builder()
            .method(method)
            .uri(target)
            .version(version);
        for h in hosts {
            b = b.header(HOST, *h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn tunnels_are_refused() {
        let h11 = Version::HTTP_11;
        let connect = req("CONNECT", "example.com:443", h11, &["example.com:443"]);
        assert_eq!(check(&connect), Some(Malformed::Tunnel));
        let authority_form = req("GET", "example.com:443", h11, &["example.com:443"]);
        assert_eq!(check(&authority_form), Some(Malformed::Tunnel));
        let h2_connect = req("CONNECT", "https://example.com/", Version::HTTP_2, &[]);
        assert_eq!(check(&h2_connect), Some(Malformed::Tunnel));
        assert_eq!(check(&req("GET", "/x", h11, &["a.example"])), None);
        assert_eq!(check(&req("GET", "http://b.example/x", h11, &["a"])), None);
        assert_eq!(check(&req("OPTIONS", "*", h11, &["a.example"])), None);
    }

    #[test]
    fn exactly_one_valid_host() {
        let h11 = Version::HTTP_11;
        assert_eq!(check(&req("GET", "/", h11, &[])), Some(Malformed::NoHost));
        assert_eq!(check(&req("GET", "/", Version::HTTP_10, &[])), None);
        assert_eq!(check(&req("GET", "/", Version::HTTP_2, &[])), None);
        assert_eq!(
            check(&req("GET", "/", h11, &["a", "b"])),
            Some(Malformed::ManyHosts)
        );
        assert_eq!(
            check(&req("GET", "/", h11, &["a", "a"])),
            Some(Malformed::ManyHosts)
        );
        for bad in ["a b", "", "u@a.example", "a.example/x", "a.example:x"] {
            assert_eq!(
                check(&req("GET", "/", h11, &[bad])),
                Some(Malformed::BadHost),
                "{bad:?}"
            );
        }
        for good in ["a.example", "a.example:8080", "127.0.0.1", "[::1]:80"] {
            assert_eq!(check(&req("GET", "/", h11, &[good])), None, "{good:?}");
        }
    }
}

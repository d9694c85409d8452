//! What a request must look like before the gateway routes it anywhere: a target it
//! can forward (no tunnel) and one unambiguous authority.
//!
//! A gateway in front of one upstream never opens tunnels, so `CONNECT` and the
//! authority-form target (`host:port`, only meaningful for `CONNECT`) are refused
//! before authentication, and nothing reaches the upstream. RFC 9112 section 3.2: a
//! request with more than one `Host` line, an invalid one, or (HTTP/1.1) none at all is
//! answered 400.
//!
//! One rule for every version: the request's authority (the `Host` header, an
//! absolute-form target's authority, or HTTP/2's `:authority`) is a host with an
//! optional numeric port and nothing else: no userinfo, no path, no empty host. An
//! HTTP/2 request whose `Host` names another authority than its `:authority` is
//! refused (RFC 9113 section 8.3.1). Every check here is a few comparisons on what
//! hyper already parsed.

use http::header::HOST;
use http::{Method, Request, Version};

/// Why a request is refused before routing. The message is what the client is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    Tunnel,
    NoHost,
    ManyHosts,
    BadHost,
    /// HTTP/2: `Host` and `:authority` disagree.
    TwoHosts,
}

impl Malformed {
    pub fn message(self) -> &'static str {
        match self {
            Malformed::Tunnel => {
                "This gateway does not open tunnels: CONNECT and host:port targets are refused."
            }
            Malformed::NoHost => "An HTTP/1.1 request needs a Host header.",
            Malformed::ManyHosts => "A request may carry only one Host header.",
            Malformed::BadHost => "The request's host is not a valid host[:port].",
            Malformed::TwoHosts => "The Host header and the :authority name different hosts.",
        }
    }

    /// Log field.
    pub fn label(self) -> &'static str {
        match self {
            Malformed::Tunnel => "tunnel",
            Malformed::NoHost => "no_host",
            Malformed::ManyHosts => "many_hosts",
            Malformed::BadHost => "bad_host",
            Malformed::TwoHosts => "two_hosts",
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
    let host = match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => return Some(Malformed::ManyHosts),
        (host, _) => host,
    };
    // An absolute-form target (HTTP/1) or `:authority` (HTTP/2): RFC 9112 section 3.2.2
    // says it wins over `Host`, so it is the one that is forwarded and must be valid.
    if let Some(authority) = uri.authority() {
        if !valid_authority(authority.as_str().as_bytes()) {
            return Some(Malformed::BadHost);
        }
        if req.version() == Version::HTTP_2 {
            if let Some(host) = host {
                if !host
                    .as_bytes()
                    .eq_ignore_ascii_case(authority.as_str().as_bytes())
                {
                    return Some(Malformed::TwoHosts);
                }
            }
        }
    }
    match host {
        None if req.version() == Version::HTTP_11 => Some(Malformed::NoHost),
        None => None,
        Some(host) if valid_authority(host.as_bytes()) => None,
        Some(_) => Some(Malformed::BadHost),
    }
}

/// The bytes of a host name or an IPv4 address, as a table: one load a byte instead of
/// a chain of range tests (the Host check runs for every request).
const NAME_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~');
        b += 1;
    }
    table
};

/// Whether `text` is `host` or `host:port`: a name (letters, digits, `-`, `.`, `_`,
/// `~`), an IPv4 address, or an IPv6 one in brackets, and a port of at most 65535; no
/// userinfo, no path, nothing empty. Written out rather than parsed with
/// `http::uri::Authority`: this runs for every request, and a copy and a full URI
/// parse cost more than the rest of the check (instruction counts in BENCHMARKS.md).
pub fn valid_authority(text: &[u8]) -> bool {
    let (host_ok, rest) = match text.first() {
        Some(b'[') => match text.iter().position(|&b| b == b']') {
            Some(end) => (
                end > 1
                    && text[1..end]
                        .iter()
                        .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.')),
                &text[end + 1..],
            ),
            None => return false,
        },
        Some(_) => {
            // One pass: name bytes up to the first `:` (or the end), anything else fails.
            let mut end = text.len();
            for (i, &b) in text.iter().enumerate() {
                if !NAME_BYTE[usize::from(b)] {
                    if b != b':' {
                        return false;
                    }
                    end = i;
                    break;
                }
            }
            (end > 0, &text[end..])
        }
        None => return false,
    };
    host_ok
        && match rest {
            [] => true,
            [b':', digits @ ..] => {
                (1..=5).contains(&digits.len())
                    && digits.iter().all(u8::is_ascii_digit)
                    && digits
                        .iter()
                        .fold(0u32, |n, d| n * 10 + u32::from(d - b'0'))
                        <= u32::from(u16::MAX)
            }
            _ => false,
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
    fn an_authority_is_a_host_and_at_most_a_port() {
        for good in [
            "a",
            "a.example",
            "x_y~z-1.example:8080",
            "127.0.0.1:65535",
            "[::1]",
            "[2001:db8::1]:443",
        ] {
            assert!(valid_authority(good.as_bytes()), "{good}");
        }
        for bad in [
            "",
            ":80",
            "a:",
            "a:65536",
            "a:123456",
            "a:1:2",
            "a:8x",
            "a b",
            "user@a",
            "a/b",
            "a?b",
            "[]",
            "[::1",
            "[::1]x",
            "[g::1]",
            "\u{e4}.example",
        ] {
            assert!(!valid_authority(bad.as_bytes()), "{bad}");
        }
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
        for bad in [
            "[::1",
            "[]:80",
            "a.example:",
            "a.example:65536",
            "a.example:123456",
            ":80",
            "a:b:c",
        ] {
            assert_eq!(
                check(&req("GET", "/", h11, &[bad])),
                Some(Malformed::BadHost),
                "{bad:?}"
            );
        }
        for good in [
            "a.example",
            "a.example:8080",
            "127.0.0.1",
            "[::1]:80",
            "A-b_c.example:65535",
            "[2001:db8::1]",
        ] {
            assert_eq!(check(&req("GET", "/", h11, &[good])), None, "{good:?}");
        }
    }

    #[test]
    fn one_host_rule_for_every_version() {
        let bad = "http://evil@api.internal:xyz/y";
        for version in [Version::HTTP_10, Version::HTTP_11, Version::HTTP_2] {
            assert_eq!(
                check(&req("GET", bad, version, &[])),
                Some(Malformed::BadHost),
                "{version:?}"
            );
            for target in ["http://u@a.example/", "http://a.example:x/"] {
                assert_eq!(
                    check(&req("GET", target, version, &["a.example"])),
                    Some(Malformed::BadHost),
                    "{version:?} {target}"
                );
            }
            assert_eq!(
                check(&req("GET", "http://a.example:81/", version, &[])).is_none(),
                version != Version::HTTP_11
            );
        }
        // HTTP/1.1 absolute-form: the target's authority wins over Host (RFC 9112).
        let h11 = Version::HTTP_11;
        assert_eq!(check(&req("GET", "http://b.example/x", h11, &["a"])), None);
        // HTTP/2: Host must agree with :authority.
        let h2 = Version::HTTP_2;
        assert_eq!(
            check(&req("GET", "https://a.example/", h2, &["A.example"])),
            None
        );
        assert_eq!(
            check(&req("GET", "https://a.example/", h2, &["b.example"])),
            Some(Malformed::TwoHosts)
        );
        assert_eq!(
            check(&req("GET", "/", Version::HTTP_10, &["u@a.example"])),
            Some(Malformed::BadHost)
        );
    }
}

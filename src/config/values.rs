//! The form of single values: durations, addresses, networks, URLs, log filters.
//!
//! Each parser answers `Err` with a message that says what to write instead; the
//! section readers in [`super::validate`] attach the key and line.

use http::Uri;
use ipnet::IpNet;
use std::net::SocketAddr;
use std::time::Duration;

/// `"500ms"`, `"10s"`, `"5m"`, `"4h"`, `"1h 30m"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.starts_with('-') {
        return Err(format!(
            "{text:?} is negative; a duration is 0 or more, such as \"10s\""
        ));
    }
    let d = humantime::parse_duration(t).map_err(|_| {
        format!(
            "{text:?} is not a duration; write a number and a unit, such as \"500ms\", \
             \"10s\", \"5m\" or \"4h\""
        )
    })?;
    if d > MAX_DURATION {
        return Err(format!("{text:?} is longer than 100 years"));
    }
    Ok(d)
}

/// No duration may be longer: past it some cannot be added to the clock (hyper's
/// request-head deadline, the poller's backoff, a new key's expiry time) and panic.
/// Found by fuzzing (`fuzz/fuzz_targets/config_keys.rs`).
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// Two listeners that could not both bind: the same port, and the same address or one
/// of them every address.
pub(super) fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.port() != 0
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// `http://host[:port]` or `https://host[:port]`, nothing after the authority.
pub(super) fn upstream_url(text: &str) -> Result<Uri, String> {
    let expected = "expected http://HOST[:PORT] or https://HOST[:PORT]";
    match text.split_once("://") {
        Some(("http" | "https", _)) => {}
        Some((scheme, _)) => {
            return Err(format!(
                "the scheme {scheme:?} is not supported; {expected}"
            ))
        }
        None => return Err(format!("{text:?} has no scheme; {expected}")),
    }
    let uri: Uri = text
        .parse()
        .map_err(|e| format!("{text:?} is not a URL ({e}); {expected}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => return Err(format!("the scheme {other:?} is not supported; {expected}")),
        None => return Err(format!("{text:?} has no scheme; {expected}")),
    }
    let Some(authority) = uri.authority().filter(|a| !a.host().is_empty()) else {
        return Err(format!("{text:?} names no host; {expected}"));
    };
    if authority.as_str().contains('@') {
        // Never echo it: what stands before the @ is a password.
        return Err(format!("must not hold a user or password; {expected}"));
    }
    if uri.path() != "/" && !uri.path().is_empty() || uri.query().is_some() {
        return Err("must not have a path or query (requests keep their own)".into());
    }
    Ok(uri)
}

/// The levels a filter directive may end in.
const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// A tracing filter whose every directive is a level (`info`) or `TARGET=LEVEL`. tracing
/// itself reads a bare word as a target, so `inf` would be "everything from the target
/// `inf`", and the gateway would log nothing at all: refused here instead.
pub fn check_log_filter(text: &str) -> Result<(), String> {
    let help = "expected a level (trace, debug, info, warn, error, off) or TARGET=LEVEL, \
                comma-separated, such as \"info,ipgate::access=warn\"";
    let mut any = false;
    for directive in text.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        any = true;
        let (target, level) = match directive.rsplit_once('=') {
            Some((target, level)) => (Some(target.trim()), level.trim()),
            None => (None, directive),
        };
        if target.is_some_and(str::is_empty) {
            return Err(format!("{directive:?} names no target; {help}"));
        }
        if !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level)) {
            return Err(format!("{level:?} is not a level; {help}"));
        }
    }
    if !any {
        return Err(format!("empty; {help}"));
    }
    tracing_subscriber::EnvFilter::try_new(text)
        .map(drop)
        .map_err(|e| format!("{text:?} is not a tracing filter ({e}); {help}"))
}

/// An address or a CIDR; a bare address is a network of one.
pub fn parse_net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(IpNet::from))
        .map(|n| n.trunc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuzz_regression_durations_too_long_for_a_deadline() {
        for text in ["18446744073709551615s", "200y", "101years"] {
            let e = parse_duration(text).unwrap_err();
            assert!(e.contains("longer than 100 years"), "{text}: {e}");
        }
        assert!(parse_duration("99y").is_ok());
    }

    #[test]
    fn durations_say_what_to_write() {
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("-5s").unwrap_err().contains("negative"));
        for bad in ["abc", "10", ""] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains("\"10s\""), "{e}");
            assert!(!e.contains("expected number at"), "{e}");
        }
    }

    #[test]
    fn log_filters_must_name_levels() {
        for ok in [
            "info",
            "WARN",
            "warn,ipgate::access=info",
            "ipgate=debug,hyper=off",
        ] {
            assert_eq!(check_log_filter(ok), Ok(()), "{ok}");
        }
        for bad in [
            "inf",
            "",
            "ipgate",
            "info,=debug",
            "ipgate=loud",
            "info, hyper=off",
        ] {
            assert!(check_log_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn listeners_that_cannot_both_bind() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(overlaps(a("127.0.0.1:8080"), a("127.0.0.1:8080")));
        assert!(overlaps(a("0.0.0.0:8080"), a("127.0.0.1:8080")));
        assert!(!overlaps(a("127.0.0.1:8080"), a("127.0.0.2:8080")));
        assert!(!overlaps(a("127.0.0.1:0"), a("127.0.0.1:0")));
    }

    #[test]
    fn upstream_urls() {
        assert!(upstream_url("http://127.0.0.1:3000").is_ok());
        assert!(upstream_url("https://api.internal").is_ok());
        for bad in [
            "ftp://x",
            "unix:///run/app.sock",
            "127.0.0.1:3000",
            "http://h/path",
            "http://h?q",
            "http://user:pw@h:1",
        ] {
            assert!(upstream_url(bad).is_err(), "{bad}");
        }
    }
}

//! The access log: one line per request on the public listener, target `ipgate::access`:
//! proxied requests, management API calls, requests refused before routing, and
//! requests cut off (by the client leaving, or at the end of `server.shutdown_grace`).
//! The one exception is a refusal answered 429 past `limits.refusals_per_second`: a
//! flood must not become a log flood, so those are only counted.
//!
//! Written by hand into the same background writer as every other log line, in the
//! same shape (plain or JSON) and under the same filter (`RUST_LOG`, `[log] level`).
//! tracing's general-purpose formatter cost about 12,000 instructions a line, more than
//! the whole refusal it described. Each thread formats into its own buffer, so a line
//! costs no allocation of its own. The only text a client controls (method, path) is
//! bounded and percent-encoded; the request id is only ever a sane one
//! ([`crate::request_id`]); no key is ever written.

use crate::config::LogFormat;
use std::cell::RefCell;
use std::io::Write;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};
use tracing_appender::non_blocking::NonBlocking;

/// Longest path written (the query is never written: it may carry anything).
const MAX_PATH: usize = 256;
/// Longest method written.
const MAX_METHOD: usize = 16;

/// What one access line says.
pub struct Entry<'a> {
    /// 0: no answer was sent (the request was cut off; see `cut`).
    pub status: u16,
    /// The request got what it asked for: forwarded, or the API call succeeded.
    pub allowed: bool,
    /// Forwarded only because the credential is in shadow mode (`reason` says what
    /// enforcement would have refused it for).
    pub shadow: bool,
    /// Why not (`ok` when allowed): the decision's reason, or the API's.
    pub reason: &'a str,
    /// `proxy`, the management API's operation (`list_ips`, …), or `none` (refused
    /// before routing).
    pub route: &'a str,
    pub method: &'a str,
    /// Without the query.
    pub path: &'a str,
    pub request_id: &'a [u8],
    pub credential_id: Option<u64>,
    /// The address the request was judged by, when it could be established.
    pub client_ip: Option<IpAddr>,
    /// The TCP peer (or PROXY-protocol source); written only when it differs.
    pub peer: IpAddr,
    /// The request body's declared length, when it has one.
    pub bytes_in: Option<u64>,
    /// The answer body's length, when known before it is sent.
    pub bytes_out: Option<u64>,
    pub latency_us: u64,
    /// Why the request never got an answer: `client_closed`, `shutdown`.
    pub cut: Option<&'a str>,
}

#[derive(Clone)]
pub struct AccessLog {
    format: LogFormat,
    writer: Option<NonBlocking>,
}

thread_local! {
    /// The line being formatted on this thread; it keeps its capacity between lines.
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
}

impl AccessLog {
    /// Writes nothing (no log writer, as in tests that embed the gateway).
    pub fn disabled() -> Self {
        Self {
            format: LogFormat::Plain,
            writer: None,
        }
    }

    pub fn new(format: LogFormat, writer: NonBlocking) -> Self {
        Self {
            format,
            writer: Some(writer),
        }
    }

    pub fn record(&self, e: &Entry<'_>) {
        let Some(writer) = &self.writer else {
            return;
        };
        // One cached check per call site: the filter decides as for any tracing event.
        if !tracing::enabled!(target: "ipgate::access", tracing::Level::INFO) {
            return;
        }
        LINE.with(|line| {
            let mut line = line.borrow_mut();
            line.clear();
            format_line(&mut line, self.format == LogFormat::Json, e);
            // The writer queues the line for the log thread; it does not block on output.
            if let Err(error) = writer.clone().write_all(&line) {
                tracing::debug!(%error, "access log line not queued");
            }
        });
    }
}

fn format_line(line: &mut Vec<u8>, json: bool, e: &Entry<'_>) {
    if json {
        line.extend_from_slice(b"{\"timestamp\":\"");
        timestamp(line);
        line.extend_from_slice(b"\",\"level\":\"INFO\"");
    } else {
        timestamp(line);
        line.extend_from_slice(b"  INFO ipgate::access:");
    }
    field(line, json, "status", |l| number(l, u64::from(e.status)));
    field(line, json, "method", |l| quoted(l, e.method, MAX_METHOD));
    // A path is percent-encoded already (hyper refuses anything else in it): its `%`
    // is its own encoding and stays, so `/a%20b` is logged as `/a%20b`.
    field(line, json, "path", |l| encoded(l, e.path, MAX_PATH, b""));
    field(line, json, "route", |l| quoted(l, e.route, MAX_PATH));
    field(line, json, "decision", |l| {
        let decision = match (e.shadow, e.allowed) {
            (true, _) => "shadow",
            (false, true) => "allow",
            (false, false) => "deny",
        };
        quoted(l, decision, 8)
    });
    field(line, json, "reason", |l| quoted(l, e.reason, MAX_PATH));
    if let Some(id) = e.credential_id {
        field(line, json, "credential_id", |l| number(l, id));
    }
    if let Some(ip) = e.client_ip {
        field(line, json, "client_ip", |l| address(l, ip, json));
    }
    if e.client_ip != Some(e.peer) {
        field(line, json, "peer", |l| address(l, e.peer, json));
    }
    if let Some(n) = e.bytes_in {
        field(line, json, "bytes_in", |l| number(l, n));
    }
    if let Some(n) = e.bytes_out {
        field(line, json, "bytes_out", |l| number(l, n));
    }
    field(line, json, "latency_us", |l| number(l, e.latency_us));
    field(line, json, "request_id", |l| {
        l.push(b'"');
        l.extend_from_slice(e.request_id);
        l.push(b'"');
    });
    if let Some(cut) = e.cut {
        field(line, json, "cut", |l| quoted(l, cut, 32));
    }
    if json {
        line.extend_from_slice(b",\"target\":\"ipgate::access\"}");
    }
    line.push(b'\n');
}

fn field(line: &mut Vec<u8>, json: bool, name: &str, value: impl FnOnce(&mut Vec<u8>)) {
    if json {
        line.extend_from_slice(b",\"");
        line.extend_from_slice(name.as_bytes());
        line.extend_from_slice(b"\":");
    } else {
        line.push(b' ');
        line.extend_from_slice(name.as_bytes());
        line.push(b'=');
    }
    value(line);
}

/// `text` in quotes, at most `max` bytes of it (then `...`), every byte that is not
/// plain visible ASCII, and `"`, `\` and `%`, percent-encoded: the same bytes are valid
/// in a JSON string and unambiguous in a plain line, whatever a client sent.
fn quoted(line: &mut Vec<u8>, text: &str, max: usize) {
    encoded(line, text, max, b"%")
}

/// As [`quoted`], with `also` the bytes besides `"` and `\` that are encoded.
fn encoded(line: &mut Vec<u8>, text: &str, max: usize, also: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    line.push(b'"');
    let bytes = text.as_bytes();
    for &b in &bytes[..bytes.len().min(max)] {
        if (0x21..=0x7E).contains(&b) && !matches!(b, b'"' | b'\\') && !also.contains(&b) {
            line.push(b);
        } else {
            line.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xF)]]);
        }
    }
    if bytes.len() > max {
        line.extend_from_slice(b"...");
    }
    line.push(b'"');
}

fn number(line: &mut Vec<u8>, n: u64) {
    line.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn address(line: &mut Vec<u8>, ip: IpAddr, json: bool) {
    if json {
        line.push(b'"');
    }
    match ip {
        IpAddr::V4(v4) => {
            let mut digits = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    line.push(b'.');
                }
                line.extend_from_slice(digits.format(octet).as_bytes());
            }
        }
        IpAddr::V6(v6) => write!(line, "{v6}").expect("writing to a Vec cannot fail"),
    }
    if json {
        line.push(b'"');
    }
}

thread_local! {
    /// `YYYY-MM-DDThh:mm:ss` of the last second this thread formatted.
    static SECOND: RefCell<(u64, [u8; 19])> = const { RefCell::new((u64::MAX, [0; 19])) };
}

/// RFC 3339 UTC with microseconds, as tracing writes it; the date and time of day are
/// formatted once a second per thread.
fn timestamp(line: &mut Vec<u8>) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    SECOND.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.0 != secs {
            let format =
                time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
            let text = time::OffsetDateTime::from_unix_timestamp(secs as i64)
                .ok()
                .and_then(|t| t.format(&format).ok())
                .unwrap_or_default();
            if text.len() == 19 {
                cache.1.copy_from_slice(text.as_bytes());
                cache.0 = secs;
            }
        }
        line.extend_from_slice(&cache.1);
    });
    let micros = now.subsec_micros();
    line.push(b'.');
    let mut digits = [b'0'; 6];
    let mut m = micros;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (m % 10) as u8;
        m /= 10;
    }
    line.extend_from_slice(&digits);
    line.push(b'Z');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(path: &'a str, method: &'a str) -> Entry<'a> {
        Entry {
            status: 403,
            allowed: false,
            shadow: false,
            reason: "ip_not_active",
            route: "proxy",
            method,
            path,
            request_id: b"abc-1",
            credential_id: Some(7),
            client_ip: Some("10.200.3.0".parse().unwrap()),
            peer: "10.0.0.1".parse().unwrap(),
            bytes_in: Some(12),
            bytes_out: None,
            latency_us: 42,
            cut: None,
        }
    }

    #[test]
    fn plain_and_json_lines_say_the_same() {
        let mut plain = Vec::new();
        format_line(&mut plain, false, &entry("/v1/x", "GET"));
        let plain = String::from_utf8(plain).unwrap();
        let tail = plain.split_once("ipgate::access:").unwrap().1;
        assert_eq!(
            tail,
            " status=403 method=\"GET\" path=\"/v1/x\" route=\"proxy\" decision=\"deny\" \
             reason=\"ip_not_active\" credential_id=7 client_ip=10.200.3.0 peer=10.0.0.1 \
             bytes_in=12 latency_us=42 request_id=\"abc-1\"\n"
        );
        let mut json = Vec::new();
        format_line(&mut json, true, &entry("/v1/x", "GET"));
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["status"], 403);
        assert_eq!(v["path"], "/v1/x");
        assert_eq!(v["client_ip"], "10.200.3.0");
        assert_eq!(v["request_id"], "abc-1");
        assert_eq!(v["target"], "ipgate::access");
        assert!(v.get("bytes_out").is_none());
    }

    #[test]
    fn what_a_client_controls_is_bounded_and_encoded() {
        let hostile = format!("/a\"b\\c%d\u{e9}\n{}", "x".repeat(1000));
        let mut json = Vec::new();
        format_line(
            &mut json,
            true,
            &entry(&hostile, "G\"ET-VERY-LONG-METHOD-NAME"),
        );
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        let path = v["path"].as_str().unwrap();
        assert!(path.starts_with("/a%22b%5Cc%d%C3%A9%0A"), "{path}");
        assert!(
            path.ends_with("...") && path.len() < MAX_PATH + 40,
            "{path}"
        );
        assert_eq!(
            v["method"], "G%22ET-VERY-LONG-M...",
            "16 bytes, then the mark"
        );
        let mut plain = Vec::new();
        format_line(&mut plain, false, &entry(&hostile, "GET"));
        assert_eq!(plain.iter().filter(|b| **b == b'\n').count(), 1);
    }

    #[test]
    fn numbers_and_addresses() {
        let mut v = Vec::new();
        number(&mut v, 0);
        v.push(b' ');
        number(&mut v, u64::MAX);
        v.push(b' ');
        address(&mut v, "10.200.3.0".parse().unwrap(), false);
        v.push(b' ');
        address(&mut v, "2001:db8::1".parse().unwrap(), true);
        assert_eq!(
            String::from_utf8(v).unwrap(),
            "0 18446744073709551615 10.200.3.0 \"2001:db8::1\""
        );
    }

    #[test]
    fn timestamps_look_like_tracings() {
        let mut v = Vec::new();
        timestamp(&mut v);
        let t = String::from_utf8(v).unwrap();
        assert_eq!(t.len(), "2026-11-29T02:06:20.056576Z".len(), "{t}");
        assert_eq!(&t[10..11], "T");
        assert!(t.ends_with('Z'));
    }
}

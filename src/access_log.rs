//! The access log: one line per request on the public listener, target `ipgate::access`.
//!
//! Written by hand into the same background writer as every other log line, in the
//! same shape (plain or JSON) and under the same filter (`RUST_LOG`, `[log] level`).
//! tracing's general-purpose formatter cost about 12,000 instructions a line, more than
//! the whole refusal it described; this one costs a tenth of that. Only ids, addresses,
//! numbers and fixed labels are ever written: nothing here needs escaping, and no key.

use crate::config::LogFormat;
use std::cell::RefCell;
use std::io::Write;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};
use tracing_appender::non_blocking::NonBlocking;

/// What one access line says.
pub struct Entry<'a> {
    pub status: u16,
    pub allowed: bool,
    /// The decision's reason label (`ok` when allowed).
    pub reason: &'a str,
    pub credential_id: Option<u64>,
    /// The address the request was judged by, when it could be established.
    pub client_ip: Option<IpAddr>,
    /// The TCP peer (or PROXY-protocol source); written only when it differs.
    pub peer: IpAddr,
    pub latency_us: u64,
}

pub struct AccessLog {
    format: LogFormat,
    writer: Option<NonBlocking>,
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
        let mut line = Vec::with_capacity(192);
        let json = self.format == LogFormat::Json;
        if json {
            line.extend_from_slice(b"{\"timestamp\":\"");
            timestamp(&mut line);
            line.extend_from_slice(b"\",\"level\":\"INFO\"");
        } else {
            timestamp(&mut line);
            line.extend_from_slice(b"  INFO ipgate::access:");
        }
        field(&mut line, json, "status", |l| {
            number(l, u64::from(e.status))
        });
        field(&mut line, json, "decision", |l| {
            quoted(l, if e.allowed { "allow" } else { "deny" })
        });
        field(&mut line, json, "reason", |l| quoted(l, e.reason));
        if let Some(id) = e.credential_id {
            field(&mut line, json, "credential_id", |l| number(l, id));
        }
        if let Some(ip) = e.client_ip {
            field(&mut line, json, "client_ip", |l| address(l, ip, json));
        }
        if e.client_ip != Some(e.peer) {
            field(&mut line, json, "peer", |l| address(l, e.peer, json));
        }
        field(&mut line, json, "latency_us", |l| number(l, e.latency_us));
        if json {
            line.extend_from_slice(b",\"target\":\"ipgate::access\"}");
        }
        line.push(b'\n');
        // The writer queues the line for the log thread; it does not block on output.
        if let Err(error) = writer.clone().write_all(&line) {
            tracing::debug!(%error, "access log line not queued");
        }
    }
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

fn quoted(line: &mut Vec<u8>, text: &str) {
    line.push(b'"');
    line.extend_from_slice(text.as_bytes());
    line.push(b'"');
}

fn number(line: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    line.extend_from_slice(&digits[i..]);
}

fn address(line: &mut Vec<u8>, ip: IpAddr, json: bool) {
    if json {
        line.push(b'"');
    }
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    line.push(b'.');
                }
                number(line, u64::from(octet));
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

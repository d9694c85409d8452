//! What the fuzz targets share.

use ipgate::config::Config;
use ipgate::store::Timestamp;
use std::path::Path;
use std::time::{Duration, Instant};

/// Relative paths in a fuzzed config resolve under a folder that does not exist, so
/// that no input names a real file by accident.
pub const CONFIG_BASE: &str = "/nonexistent/ipgate-fuzz";

/// The sections every validation message starts with.
const SECTIONS: [&str; 10] = [
    "server.",
    "upstream.",
    "auth.",
    "client_ip.",
    "store.",
    "refresh.",
    "limits.",
    "log.",
    "insight.",
    "console.",
];

/// `Config::parse` over `text`, with its properties: it never panics; a refusal is a
/// non-empty list of non-empty messages; a file that reads but does not validate is
/// refused with every message naming its key; an accepted config holds the invariants
/// the rest of the program relies on, among them that every duration can be used: as a
/// deadline from now (hyper adds `header_read_timeout` to `Instant::now()`), as the
/// poller's longest backoff (12 intervals) and, for the registration window, as a
/// shown expiry time.
pub fn check_config(text: &str) {
    match Config::parse(text, Path::new(CONFIG_BASE)) {
        Ok(c) => {
            assert!(!c.refresh.interval.is_zero());
            assert!(
                c.refresh.max_staleness.is_zero() || c.refresh.max_staleness > c.refresh.interval
            );
            assert!(!c.server.header_read_timeout.is_zero());
            assert!(c.limits.max_ips_per_credential >= 1);
            assert!(c.limits.max_body_bytes >= 1024);
            assert!(!c.server.proxy_protocol || !c.client_ip.trusted_proxies.is_empty());
            for (key, d) in [
                ("server.shutdown_grace", c.server.shutdown_grace),
                ("server.header_read_timeout", c.server.header_read_timeout),
                ("upstream.connect_timeout", c.upstream.connect_timeout),
                ("upstream.timeout", c.upstream.timeout),
                ("auth.registration_window", c.auth.registration_window),
                ("refresh.interval", c.refresh.interval),
                ("refresh.max_staleness", c.refresh.max_staleness),
                ("insight.flush_interval", c.insight.flush_interval),
            ] {
                assert!(
                    Instant::now().checked_add(d).is_some(),
                    "{key} = {d:?} cannot be a deadline"
                );
            }
            assert!(
                Duration::try_from_secs_f64(c.refresh.interval.as_secs_f64() * 12.0).is_ok(),
                "refresh.interval too long to back off from"
            );
            // Display fails (and `to_string` panics) for a time it cannot show.
            let expiry = Timestamp::now()
                .plus(c.auth.registration_window)
                .to_string();
            assert!(!expiry.is_empty());
        }
        Err(e) => {
            assert!(!e.0.is_empty(), "refused without a reason");
            assert!(e.0.iter().all(|p| !p.message.trim().is_empty()), "{e:?}");
            if text.parse::<toml::Table>().is_ok() {
                // The file reads: every problem names its key, in a known section or
                // as the unknown one it is.
                for p in &e.0 {
                    assert!(!p.key.is_empty(), "{p:?} does not name its key");
                    let known = SECTIONS.iter().any(|s| p.key.starts_with(s));
                    assert!(known || p.message.contains("unknown"), "{p:?}");
                }
            }
        }
    }
}

//! What a reload (SIGHUP) may change, and what it may not.
//!
//! Applied to new requests: `[upstream]`, `[auth]`, `[client_ip]`, `[limits]`,
//! `log.level`, the TLS certificate and key files, `refresh.max_staleness`. Bound at
//! start and kept: the listeners and what they were built with, the worker threads,
//! the store, the poller's schedule, the log format, `[insight]`. A file that changes those is not
//! refused: the rest applies, and the keys kept are named.

use super::Config;

impl Config {
    /// The keys whose new value in `next` a running gateway cannot take (it keeps its
    /// own), in file order.
    pub fn fixed_differences(&self, next: &Config) -> Vec<&'static str> {
        let (a, b) = (self, next);
        let mut kept = Vec::new();
        let mut check = |key: &'static str, same: bool| {
            if !same {
                kept.push(key);
            }
        };
        check("server.listen", a.server.listen == b.server.listen);
        check(
            "server.admin_listen",
            a.server.admin_listen == b.server.admin_listen,
        );
        check("server.workers", a.server.workers == b.server.workers);
        check(
            "server.shutdown_grace",
            a.server.shutdown_grace == b.server.shutdown_grace,
        );
        check(
            "server.header_read_timeout",
            a.server.header_read_timeout == b.server.header_read_timeout,
        );
        check(
            "server.max_connections",
            a.server.max_connections == b.server.max_connections,
        );
        // The listener is built with these; a new value needs a restart.
        check(
            "server.body_timeout",
            a.server.body_timeout == b.server.body_timeout,
        );
        check(
            "server.body_min_rate",
            a.server.body_min_rate == b.server.body_min_rate,
        );
        check(
            "server.response_timeout",
            a.server.response_timeout == b.server.response_timeout,
        );
        check(
            "server.response_min_rate",
            a.server.response_min_rate == b.server.response_min_rate,
        );
        check(
            "server.client_share_percent",
            a.server.client_share_percent == b.server.client_share_percent,
        );
        check(
            "server.proxy_protocol",
            a.server.proxy_protocol == b.server.proxy_protocol,
        );
        check(
            "server.tls",
            a.server.tls.is_some() == b.server.tls.is_some(),
        );
        check("store", a.store == b.store);
        check("refresh.interval", a.refresh.interval == b.refresh.interval);
        check("refresh.notify", a.refresh.notify == b.refresh.notify);
        check("log.format", a.log.format == b.log.format);
        check("insight", a.insight == b.insight);
        kept
    }

    /// This configuration with everything a reload may change taken from `next`.
    pub fn reloaded(&self, next: &Config) -> Config {
        let mut out = self.clone();
        out.upstream = next.upstream.clone();
        out.auth = next.auth.clone();
        out.client_ip = next.client_ip.clone();
        out.limits = next.limits.clone();
        out.log.level = next.log.level.clone();
        out.refresh.max_staleness = next.refresh.max_staleness;
        if out.server.tls.is_some() {
            out.server.tls = next.server.tls.clone();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(text: &str) -> Config {
        Config::parse(text, Path::new(".")).unwrap()
    }

    #[test]
    fn what_may_change_changes_and_the_rest_is_named() {
        let running = parse("[server]\nlisten = \"127.0.0.1:8080\"\n");
        let next = parse(
            "[server]\nlisten = \"127.0.0.1:8081\"\nworkers = 2\n\
             [upstream]\nurl = \"http://127.0.0.1:4000\"\n\
             [limits]\nmax_ips_per_credential = 5\n\
             [log]\nformat = \"json\"\nlevel = \"debug\"\n",
        );
        assert_eq!(
            running.fixed_differences(&next),
            ["server.listen", "server.workers", "log.format"]
        );
        let applied = running.reloaded(&next);
        assert_eq!(applied.server.listen, running.server.listen);
        assert_eq!(applied.server.workers, running.server.workers);
        assert_eq!(applied.log.format, running.log.format);
        assert_eq!(applied.upstream, next.upstream);
        assert_eq!(applied.limits.max_ips_per_credential, 5);
        assert_eq!(applied.log.level.as_deref(), Some("debug"));
        assert!(applied.fixed_differences(&running).is_empty());
        assert!(running.fixed_differences(&running.clone()).is_empty());
    }
}

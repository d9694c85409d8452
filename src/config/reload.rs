//! What a reload (SIGHUP) may change, and what it may not.
//!
//! Applied to new requests: `[upstream]`, `[auth]` (but its signing key), `[client_ip]`,
//! `[limits]`, `log.level`, the TLS certificate and key files, `refresh.max_staleness`.
//! Bound at start and kept: the listeners and what they were built with (TLS on or off
//! included), the worker threads, the store, the poller's schedule, the log format,
//! `[insight]`, and `auth.response_signing_key` (key holders pin its public key, so a
//! new one goes with a planned restart). A file that changes those is not refused: the
//! rest applies, and the keys kept are named. But the configuration that would run, the
//! kept keys with the new ones, is checked as a whole ([`Config::merged_problems`]): a
//! file that is valid on its own but not beside what is kept is refused whole.

use super::{AuthConfig, Config};

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
            "server.proxy_protocol_local",
            a.server.proxy_protocol_local == b.server.proxy_protocol_local,
        );
        check(
            "server.tls",
            a.server.tls.is_some() == b.server.tls.is_some(),
        );
        check(
            "auth.response_signing_key",
            a.auth.response_signing_key == b.auth.response_signing_key,
        );
        check("store", a.store == b.store);
        check("refresh.interval", a.refresh.interval == b.refresh.interval);
        check("refresh.notify", a.refresh.notify == b.refresh.notify);
        check("log.format", a.log.format == b.log.format);
        check("insight", a.insight == b.insight);
        check("console", a.console == b.console);
        kept
    }

    /// This configuration with everything a reload may change taken from `next`.
    pub fn reloaded(&self, next: &Config) -> Config {
        let mut out = self.clone();
        out.upstream = next.upstream.clone();
        out.auth = AuthConfig {
            // Key holders pin the public key: a new one is a planned restart.
            response_signing_key: self.auth.response_signing_key.clone(),
            ..next.auth.clone()
        };
        out.client_ip = next.client_ip.clone();
        out.limits = next.limits.clone();
        out.log.level = next.log.level.clone();
        out.refresh.max_staleness = next.refresh.max_staleness;
        // TLS on or off is the listener's; only new files for a TLS listener apply. A
        // file without `[server.tls]` keeps the running files (named as kept), so that
        // the next reload still re-reads them.
        if let (Some(_), Some(files)) = (&out.server.tls, &next.server.tls) {
            out.server.tls = Some(files.clone());
        }
        out
    }

    /// What is wrong with this configuration as a whole, for the rules that tie a key a
    /// reload may change to one it may not; empty when it can run. A file is checked
    /// on its own when it is read; a reload checks the merge with this.
    pub fn merged_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.server.proxy_protocol && self.client_ip.trusted_proxies.is_empty() {
            problems.push(
                "client_ip.trusted_proxies is empty while server.proxy_protocol = true (kept \
                 from start): every connection would be refused"
                    .to_string(),
            );
        }
        let (interval, staleness) = (self.refresh.interval, self.refresh.max_staleness);
        if !staleness.is_zero() && staleness <= interval {
            problems.push(format!(
                "refresh.max_staleness ({}) must be longer than refresh.interval ({}, kept \
                 from start), or 0s",
                humantime::format_duration(staleness),
                humantime::format_duration(interval)
            ));
        }
        problems
    }

    /// The trust settings `next` widens, each as (key, running value, new value): a
    /// trusted network the running ones do not cover, another forwarding header. A
    /// reload applies them, and says so at warn.
    pub fn widened_trust(&self, next: &Config) -> Vec<(&'static str, String, String)> {
        let (a, b) = (&self.client_ip, &next.client_ip);
        let mut widened = Vec::new();
        let covered = |net: &ipnet::IpNet| a.trusted_proxies.iter().any(|old| old.contains(net));
        if !b.trusted_proxies.iter().all(covered) {
            let list = |nets: &[ipnet::IpNet]| {
                format!(
                    "{:?}",
                    nets.iter().map(|n| n.to_string()).collect::<Vec<_>>()
                )
            };
            widened.push((
                "client_ip.trusted_proxies",
                list(&a.trusted_proxies),
                list(&b.trusted_proxies),
            ));
        }
        if a.header != b.header {
            widened.push((
                "client_ip.header",
                format!("{:?}", a.header),
                format!("{:?}", b.header),
            ));
        }
        widened
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

    #[test]
    fn a_merge_that_cannot_run_is_found() {
        let running = parse(
            "[server]\nproxy_protocol = true\n[client_ip]\ntrusted_proxies = [\"10.0.0.0/8\"]\n\
             [refresh]\ninterval = \"5s\"\n",
        );
        assert!(running.merged_problems().is_empty());
        // Valid on its own: no PROXY protocol, so no trusted proxy is needed; a
        // staleness longer than its own (default) interval.
        let next = parse("[refresh]\nmax_staleness = \"2s\"\n");
        let merged = running.reloaded(&next);
        let problems = merged.merged_problems();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("client_ip.trusted_proxies"));
        assert!(problems[1].contains("refresh.max_staleness (2s)"));
    }

    #[test]
    fn tls_stays_on_when_a_file_leaves_it_out() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["a.pem", "a.key", "b.pem", "b.key"] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        let parse_in = |text: &str| Config::parse(text, dir.path()).unwrap();
        let running = parse_in("[server.tls]\ncert = \"a.pem\"\nkey = \"a.key\"\n");
        let without = parse_in("");
        assert_eq!(running.fixed_differences(&without), ["server.tls"]);
        let applied = running.reloaded(&without);
        assert_eq!(applied.server.tls, running.server.tls);
        // So the next file's certificate still applies.
        let next = parse_in("[server.tls]\ncert = \"b.pem\"\nkey = \"b.key\"\n");
        let tls = applied.reloaded(&next).server.tls.unwrap();
        assert_eq!(tls.cert, dir.path().join("b.pem"));
        // And a plain listener stays plain.
        assert_eq!(without.reloaded(&next).server.tls, None);
    }

    #[test]
    fn widened_trust_is_named() {
        let running = parse("[client_ip]\ntrusted_proxies = [\"10.0.0.0/8\"]\n");
        let narrower = parse("[client_ip]\ntrusted_proxies = [\"10.1.0.0/16\"]\n");
        assert!(running.widened_trust(&narrower).is_empty());
        let wider =
            parse("[client_ip]\ntrusted_proxies = [\"0.0.0.0/0\"]\nheader = \"forwarded\"\n");
        let widened = running.widened_trust(&wider);
        let keys: Vec<_> = widened.iter().map(|w| w.0).collect();
        assert_eq!(keys, ["client_ip.trusted_proxies", "client_ip.header"]);
        assert_eq!(widened[0].2, "[\"0.0.0.0/0\"]");
    }
}

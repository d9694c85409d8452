//! Configuration: the file as written ([`document`]: TOML read leniently, every value
//! with its line), its validation ([`validate`]) and the model the program runs on
//! ([`model`]).
//!
//! Every problem in a file is reported in one go, each with its key path and line, as
//! `nginx -t` does; `ipgate check-config` and `ipgate serve` run the same code. Defaults
//! are the named constants in [`model`].

mod document;
mod model;
mod reload;
mod signing_key;
mod store_url;
mod validate;
mod values;

pub use model::*;
pub use signing_key::ResponseSigningKey;
pub use values::{check_log_filter, parse_duration, parse_net};

use std::fmt;
use std::path::Path;

/// One thing wrong with a configuration file.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// 1-based; `None` for a key that is not in the file (its default is the problem)
    /// or for the file as a whole.
    pub line: Option<usize>,
    /// `server.listen`, `client_ip.trusted_proxies[1]`; empty for a syntax error.
    pub key: String,
    /// What is wrong and what to write instead. A syntax error's spans several lines
    /// (the line quoted, a caret under the spot).
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in a configuration.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors(pub Vec<Problem>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl ConfigErrors {
    fn file(message: String) -> Self {
        ConfigErrors(vec![Problem {
            line: None,
            key: String::new(),
            message,
        }])
    }

    /// The problems as an operator reads them: one per line, `FILE:LINE: key: message`
    /// (as compilers and `nginx -t` write them, so an editor can jump there), a
    /// multi-line message indented under its first line.
    pub fn render(&self, file: &Path) -> String {
        let mut out = String::new();
        for p in &self.0 {
            out.push_str(&file.display().to_string());
            if let Some(line) = p.line {
                out.push_str(&format!(":{line}"));
            }
            out.push_str(": ");
            if !p.key.is_empty() {
                out.push_str(&p.key);
                out.push_str(": ");
            }
            let mut lines = p.message.lines();
            out.push_str(lines.next().unwrap_or_default());
            out.push('\n');
            for more in lines {
                out.push_str("    ");
                out.push_str(more);
                out.push('\n');
            }
        }
        out
    }
}

impl Config {
    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors::file(format!("cannot read {}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base)
    }

    /// Parses and validates text; relative paths are taken from `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Config, ConfigErrors> {
        let (doc, mut reader) = document::parse(text);
        let config = validate::config(&doc, &mut reader, base);
        let problems = reader.into_problems();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(problems))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn empty_file_is_all_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config::parse("", dir.path()).unwrap();
        assert_eq!(c.server.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.auth.header.as_str(), "x-bunq-client-authentication");
        assert_eq!(c.refresh.interval, Duration::from_secs(1));
        assert!(c.refresh.max_staleness.is_zero());
        let StoreConfig::Sqlite(sqlite) = c.store else {
            panic!("the default store is SQLite");
        };
        assert_eq!(sqlite.path, dir.path().join("ipgate.db"));
    }

    #[test]
    fn the_shipped_config_is_valid() {
        let text = include_str!("../../config.toml");
        Config::parse(text, Path::new(".")).unwrap();
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let e = Config::parse("[server]\nlisten_addr = \"x\"\n", Path::new(".")).unwrap_err();
        assert!(e.to_string().contains("listen_addr"), "{e}");
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let text = r#"
            [server]
            listen = "nowhere"
            [upstream]
            url = "ftp://x"
            [client_ip]
            trusted_proxies = ["10.0.0.0/8", "bogus"]
            [refresh]
            interval = "0s"
            [log]
            format = "xml"
        "#;
        let e = Config::parse(text, Path::new(".")).unwrap_err();
        let all = e.to_string();
        for key in [
            "server.listen",
            "upstream.url",
            "client_ip.trusted_proxies[1]",
            "refresh.interval",
            "log.format",
        ] {
            assert!(all.contains(key), "{key} missing from:\n{all}");
        }
        assert_eq!(e.0.len(), 5, "{all}");
        assert!(e.0.iter().all(|p| p.line.is_some()), "{all}");
    }

    #[test]
    fn one_run_lists_every_kind_of_problem_with_its_line() {
        let text = "[server]\n\
                    listen_on = \"127.0.0.1:1\"\n\
                    workers = \"two\"\n\
                    shutdown_grace = \"-5s\"\n\
                    [client_ip]\n\
                    trusted_proxies = [\"10.0.0.0/33\", 7]\n\
                    [refresh]\n\
                    interval = \"abc\"\n\
                    [nonsense]\n";
        let e = Config::parse(text, Path::new(".")).unwrap_err();
        let found: Vec<(Option<usize>, &str)> =
            e.0.iter().map(|p| (p.line, p.key.as_str())).collect();
        assert_eq!(
            found,
            [
                (Some(2), "server.listen_on"),
                (Some(3), "server.workers"),
                (Some(4), "server.shutdown_grace"),
                (Some(6), "client_ip.trusted_proxies[0]"),
                (Some(6), "client_ip.trusted_proxies[1]"),
                (Some(8), "refresh.interval"),
                (Some(9), "nonsense"),
            ],
            "{e}"
        );
        let rendered = e.render(Path::new("ipgate.toml"));
        assert!(
            rendered.starts_with("ipgate.toml:2: server.listen_on: unknown key"),
            "{rendered}"
        );
        assert!(
            rendered.contains("expected a whole number, found a string"),
            "{rendered}"
        );
        assert!(!rendered.contains("expected number at"), "{rendered}");
    }

    #[test]
    fn a_syntax_error_keeps_its_context_and_the_rest_is_still_checked() {
        let text = "[server]\nlisten = nowhere\n[log]\nformat = \"xml\"\n";
        let e = Config::parse(text, Path::new(".")).unwrap_err();
        let syntax = &e.0[0];
        assert_eq!(syntax.line, Some(2), "{e}");
        assert!(syntax.message.lines().count() > 2, "{}", syntax.message);
        assert!(e.0.iter().any(|p| p.key == "log.format"), "{e}");
        let rendered = e.render(Path::new("c.toml"));
        assert!(
            rendered.contains("\n    2 | listen = nowhere\n"),
            "{rendered}"
        );
    }

    #[test]
    fn a_syntax_error_never_shows_a_password() {
        let text = "[store]\nurl = postgres://gw:s3cret@db/ipgate\n";
        let e = Config::parse(text, Path::new(".")).unwrap_err();
        assert!(!e.render(Path::new("c.toml")).contains("s3cret"), "{e}");
    }

    #[test]
    fn what_serve_could_not_use_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let text = "[server]\n\
                    listen = \"127.0.0.1:8080\"\n\
                    admin_listen = \"127.0.0.1:8080\"\n\
                    tls = { cert = \"missing.pem\", key = \"missing-key.pem\" }\n\
                    [upstream]\n\
                    url = \"unix:///run/app.sock\"\n\
                    [store]\n\
                    url = \"sqlite://no/such/folder/ipgate.db\"\n\
                    [log]\n\
                    level = \"inf\"\n";
        let e = Config::parse(text, dir.path()).unwrap_err();
        let keys: Vec<&str> = e.0.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "server.admin_listen",
                "server.tls.cert",
                "server.tls.key",
                "upstream.url",
                "store.url",
                "log.level"
            ],
            "{e}"
        );
    }

    #[test]
    fn proxy_protocol_needs_trusted_proxies() {
        let e = Config::parse("[server]\nproxy_protocol = true\n", Path::new(".")).unwrap_err();
        assert!(e.to_string().contains("server.proxy_protocol"), "{e}");
        let ok =
            "[server]\nproxy_protocol = true\n[client_ip]\ntrusted_proxies = [\"10.0.0.0/8\"]\n";
        assert!(
            Config::parse(ok, Path::new("."))
                .unwrap()
                .server
                .proxy_protocol
        );
    }

    #[test]
    fn the_upstream_protocol_fits_the_url() {
        let c = Config::parse("", Path::new(".")).unwrap();
        assert_eq!(c.upstream.protocol, UpstreamProtocol::Http1);
        assert_eq!(c.upstream.tunnel_idle_timeout, Duration::from_secs(300));
        let parse = |url: &str, protocol: &str| {
            let text = format!("[upstream]\nurl = \"{url}\"\nprotocol = \"{protocol}\"\n");
            Config::parse(&text, Path::new("."))
        };
        let h2c = parse("http://127.0.0.1:50051", "h2c").unwrap();
        assert_eq!(h2c.upstream.protocol, UpstreamProtocol::H2c);
        let h2 = parse("https://grpc.internal", "h2").unwrap();
        assert_eq!(h2.upstream.protocol, UpstreamProtocol::H2);
        for (url, protocol) in [
            ("https://grpc.internal", "h2c"),
            ("http://127.0.0.1:50051", "h2"),
            ("http://127.0.0.1:50051", "http2"),
        ] {
            let e = parse(url, protocol).unwrap_err();
            assert!(e.to_string().contains("upstream.protocol"), "{e}");
        }
        let e = Config::parse("[upstream]\ntunnel_idle_timeout = \"0s\"\n", Path::new("."))
            .unwrap_err();
        assert!(
            e.to_string().contains("upstream.tunnel_idle_timeout"),
            "{e}"
        );
    }

    #[test]
    fn connection_and_refusal_limits() {
        let c = Config::parse("", Path::new(".")).unwrap();
        assert_eq!(c.server.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(c.limits.refusals_per_second, DEFAULT_REFUSALS_PER_SECOND);
        let c = Config::parse(
            "[server]\nmax_connections = 50\n[limits]\nrefusals_per_second = 0\n",
            Path::new("."),
        )
        .unwrap();
        assert_eq!(c.server.max_connections, 50);
        assert_eq!(c.limits.refusals_per_second, 0);
        let e = Config::parse("[server]\nmax_connections = 0\n", Path::new(".")).unwrap_err();
        assert!(e.to_string().contains("server.max_connections"), "{e}");
    }

    #[test]
    fn the_console_is_on_by_default_under_its_own_path() {
        let c = Config::parse("", Path::new(".")).unwrap();
        assert!(c.console.enabled);
        assert_eq!(c.console.path, "/ipgate/console/");
        let c = Config::parse(
            "[console]\nenabled = false\npath = \"/my-console/\"\n",
            Path::new("."),
        )
        .unwrap();
        assert!(!c.console.enabled);
        assert_eq!(c.console.path, "/my-console/");
        for bad in [
            "/",
            "console/",
            "/console",
            "/a//b/",
            "/a b/",
            "/a\"/",
            "/v1/console/",
        ] {
            let text = format!("[console]\npath = {bad:?}\n");
            let e = Config::parse(&text, Path::new(".")).unwrap_err();
            assert!(e.to_string().contains("console.path"), "{bad}: {e}");
        }
    }

    #[test]
    fn slow_client_limits() {
        let c = Config::parse("", Path::new(".")).unwrap();
        assert_eq!(c.server.body_timeout, Duration::from_secs(20));
        assert_eq!(c.server.body_min_rate, DEFAULT_BODY_MIN_RATE);
        assert_eq!(c.server.response_timeout, Duration::from_secs(20));
        assert_eq!(c.server.response_min_rate, DEFAULT_RESPONSE_MIN_RATE);
        assert_eq!(c.server.client_share_percent, DEFAULT_CLIENT_SHARE_PERCENT);
        let c = Config::parse(
            "[server]\nbody_timeout = \"5s\"\nbody_min_rate = 0\n\
             response_timeout = \"7s\"\nresponse_min_rate = 100\nclient_share_percent = 100\n",
            Path::new("."),
        )
        .unwrap();
        assert_eq!(c.server.body_timeout, Duration::from_secs(5));
        assert_eq!(c.server.body_min_rate, 0);
        assert_eq!(c.server.response_timeout, Duration::from_secs(7));
        assert_eq!(c.server.response_min_rate, 100);
        assert_eq!(c.server.client_share_percent, 100);
        let e = Config::parse(
            "[server]\nbody_timeout = \"0s\"\nresponse_timeout = \"x\"\n\
             client_share_percent = 0\nresponse_min_rate = -1\n",
            Path::new("."),
        )
        .unwrap_err()
        .to_string();
        for key in [
            "server.body_timeout",
            "server.response_timeout",
            "server.client_share_percent",
            "server.response_min_rate",
        ] {
            assert!(e.contains(key), "{key} not named in {e}");
        }
    }

    #[test]
    fn authorization_header_means_bearer() {
        let c = Config::parse("[auth]\nheader = \"Authorization\"\n", Path::new(".")).unwrap();
        assert!(c.auth.bearer);
    }

    fn postgres(text: &str) -> Result<PostgresConfig, ConfigErrors> {
        Config::parse(text, Path::new("/etc/ipgate")).map(|c| match c.store {
            StoreConfig::Postgres(p) => *p,
            StoreConfig::Sqlite(_) => panic!("expected a postgres store"),
        })
    }

    #[test]
    fn postgres_urls_as_libpq_reads_them() {
        let c = postgres(
            "[store]\nurl = \"postgresql://gw:s3cret@db.internal:6432/ipgate?sslmode=verify-full\"\n",
        )
        .unwrap();
        assert_eq!(c.ssl_mode, SslMode::VerifyFull);
        assert_eq!(c.connect.get_user(), Some("gw"));
        assert_eq!(c.connect.get_password(), Some(&b"s3cret"[..]));
        assert_eq!(c.connect.get_dbname(), Some("ipgate"));
        assert_eq!(c.connect.get_ports(), [6432]);
        assert_eq!(c.display, "postgresql://gw@db.internal:6432/ipgate");
        assert!(
            !format!("{c:?}").contains("s3cret"),
            "Debug hides the password"
        );
        let c = postgres("[store]\nurl = \"postgres://gw@db/ipgate\"\n").unwrap();
        assert_eq!(c.ssl_mode, SslMode::Prefer, "libpq's default");
    }

    #[test]
    fn a_read_replica_shares_the_primary_s_user_password_and_limits() {
        let c = postgres(
            "[store]\nurl = \"postgres://gw:s3cret@primary/ipgate\"\n\
             read_url = \"postgres://gw@replica:6432/ipgate?sslmode=require\"\ntimeout = \"2s\"\n",
        )
        .unwrap();
        let read = c.read.as_ref().expect("a replica");
        assert_eq!(read.connect.get_password(), Some(&b"s3cret"[..]));
        assert_eq!(read.connect.get_ports(), [6432]);
        assert_eq!(read.ssl_mode, SslMode::Require);
        assert_eq!(read.timeout, Duration::from_secs(2));
        assert_eq!(read.display, "postgres://gw@replica:6432/ipgate");
        for bad in [
            "[store]\nurl = \"sqlite://x.db\"\nread_url = \"postgres://gw@r/ipgate\"\n",
            "[store]\nurl = \"postgres://gw@p/ipgate\"\nread_url = \"sqlite://x.db\"\n",
        ] {
            let e = Config::parse(bad, Path::new("/tmp")).unwrap_err();
            assert!(e.to_string().contains("store.read_url"), "{e}");
        }
    }

    #[test]
    fn a_postgres_password_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pg"), "from-file\n").unwrap();
        let text = "[store]\nurl = \"postgres://gw@db/ipgate\"\npassword_file = \"pg\"\n";
        let c = Config::parse(text, dir.path()).unwrap();
        let StoreConfig::Postgres(c) = c.store else {
            panic!("postgres");
        };
        assert_eq!(c.connect.get_password(), Some(&b"from-file"[..]));
        let missing = Config::parse(text, Path::new("/nonexistent")).unwrap_err();
        assert!(
            missing.to_string().contains("store.password_file"),
            "{missing}"
        );
    }

    #[test]
    fn server_side_timeouts_default_to_the_store_timeout() {
        let c = postgres("[store]\nurl = \"postgres://gw@db/ipgate\"\ntimeout = \"2s\"\n").unwrap();
        let two = Duration::from_secs(2);
        assert_eq!(
            c.server_timeouts,
            ServerTimeouts {
                statement: two,
                lock: two,
                idle_in_transaction: two,
            }
        );
        let c = postgres(
            "[store]\nurl = \"postgres://gw@db/ipgate\"\nstatement_timeout = \"30s\"\n\
             lock_timeout = \"500ms\"\nidle_in_transaction_timeout = \"10s\"\n",
        )
        .unwrap();
        assert_eq!(c.server_timeouts.statement, Duration::from_secs(30));
        assert_eq!(c.server_timeouts.lock, Duration::from_millis(500));
        assert_eq!(
            c.server_timeouts.idle_in_transaction,
            Duration::from_secs(10)
        );
        let e = postgres(
            "[store]\nurl = \"postgres://gw@db/ipgate\"\nlock_timeout = \"0s\"\n\
             idle_in_transaction_timeout = \"soon\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("store.lock_timeout"), "{e}");
        assert!(e.contains("store.idle_in_transaction_timeout"), "{e}");
        let e = Config::parse(
            "[store]\nurl = \"sqlite://x.db\"\nstatement_timeout = \"1s\"\n",
            Path::new("."),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("store.statement_timeout"), "{e}");
    }

    #[test]
    fn bad_store_urls_never_echo_a_password() {
        for url in [
            "mysql://gw:s3cret@db/ipgate",
            "postgres://gw:s3cret@db/ipgate?sslmode=sometimes",
            "postgres://gw:s3cret@/ipgate",
        ] {
            let e = Config::parse(&format!("[store]\nurl = \"{url}\"\n"), Path::new("."))
                .unwrap_err()
                .to_string();
            assert!(e.contains("store.url"), "{e}");
            assert!(!e.contains("s3cret"), "{e}");
        }
    }

    // The fuzz targets' properties (fuzz/src/lib.rs `check_config`), always on.
    mod props {
        use super::*;
        use proptest::prelude::*;
        use std::time::Instant;

        const KEYS: [(&str, &[&str]); 10] = [
            (
                "server",
                &[
                    "listen",
                    "admin_listen",
                    "workers",
                    "shutdown_grace",
                    "header_read_timeout",
                    "body_timeout",
                    "response_min_rate",
                    "client_share_percent",
                    "proxy_protocol",
                    "proxy_protocol_local",
                ],
            ),
            (
                "upstream",
                &[
                    "url",
                    "connect_timeout",
                    "timeout",
                    "host",
                    "send_forwarded",
                    "send_real_ip",
                ],
            ),
            (
                "auth",
                &[
                    "header",
                    "registration_window",
                    "forward_key",
                    "response_signing_key",
                ],
            ),
            ("client_ip", &["trusted_proxies", "header"]),
            (
                "store",
                &["url", "read_url", "pool_size", "timeout", "keep_changes"],
            ),
            (
                "refresh",
                &["interval", "max_staleness", "notify", "hint_spacing"],
            ),
            ("limits", &["max_ips_per_credential", "max_body_bytes"]),
            ("log", &["format", "level"]),
            ("insight", &["record_usage", "flush_interval"]),
            ("console", &["enabled", "path"]),
        ];

        fn value() -> impl Strategy<Value = String> {
            let text = prop_oneof![
                prop::sample::select(vec![
                    "0s",
                    "1s",
                    "4h",
                    "1y",
                    "101y",
                    "18446744073709551615s",
                    "127.0.0.1:0",
                    "[::1]:80",
                    "http://h:1",
                    "ftp://x",
                    "sqlite://x.db",
                    "postgres://u:pw@h/db",
                    "10.0.0.0/8",
                    "::/0",
                    "Authorization",
                    "forwarded",
                    "health",
                    "u@h:x",
                    "json",
                    "info",
                    "bad header",
                    "",
                ])
                .prop_map(String::from),
                "[ -~]{0,12}",
            ];
            prop_oneof![
                text.clone().prop_map(|t| format!("{t:?}")),
                any::<i64>().prop_map(|i| i.to_string()),
                any::<bool>().prop_map(|b| b.to_string()),
                prop::collection::vec(text, 0..3).prop_map(|v| format!("{v:?}")),
            ]
        }

        fn file() -> impl Strategy<Value = String> {
            let setting = (0..KEYS.len(), any::<prop::sample::Index>(), value());
            prop::collection::vec(setting, 0..8).prop_map(|settings| {
                settings
                    .into_iter()
                    .map(|(s, k, v)| {
                        let (section, keys) = KEYS[s];
                        format!("[{section}]\n{} = {v}\n", k.get(keys))
                    })
                    .collect()
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn accepted_values_are_usable_and_refusals_name_their_key(
                text in prop_oneof![file(), "[ -~\n]{0,80}"]
            ) {
                match Config::parse(&text, Path::new("/nonexistent")) {
                    Ok(c) => {
                        prop_assert!(!c.refresh.interval.is_zero());
                        prop_assert!(!c.insight.flush_interval.is_zero());
                        prop_assert!(c.limits.max_ips_per_credential >= 1);
                        prop_assert!(!c.server.proxy_protocol || !c.client_ip.trusted_proxies.is_empty());
                        for d in [
                            c.server.shutdown_grace,
                            c.server.header_read_timeout,
                            c.server.body_timeout,
                            c.server.response_timeout,
                            c.upstream.timeout,
                            c.auth.registration_window,
                            c.refresh.interval,
                            c.insight.flush_interval,
                        ] {
                            prop_assert!(Instant::now().checked_add(d).is_some(), "{:?}", d);
                        }
                    }
                    Err(e) => {
                        prop_assert!(!e.0.is_empty());
                        prop_assert!(e.0.iter().all(|p| !p.message.trim().is_empty()));
                        if toml::de::DeTable::parse(&text).is_ok() {
                            for p in &e.0 {
                                prop_assert!(!p.key.is_empty(), "{:?}", p);
                            }
                        }
                    }
                }
            }
        }
    }
}

//! Configuration: the file as written ([`RawConfig`], serde, unknown keys rejected) and
//! the validated model the program runs on ([`Config`]).
//!
//! Validation reports every problem with its key path in one go; `ipgate check-config`
//! and `ipgate serve` run the same code. Defaults are the named constants below.

use http::header::HeaderName;
use http::Uri;
use ipnet::IpNet;
use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
pub const DEFAULT_SHUTDOWN_GRACE: &str = "10s";
pub const DEFAULT_UPSTREAM: &str = "http://127.0.0.1:3000";
pub const DEFAULT_UPSTREAM_CONNECT_TIMEOUT: &str = "5s";
pub const DEFAULT_UPSTREAM_TIMEOUT: &str = "30s";
pub const DEFAULT_AUTH_HEADER: &str = "X-Bunq-Client-Authentication";
pub const DEFAULT_REGISTRATION_WINDOW: &str = "4h";
pub const DEFAULT_STORE_URL: &str = "sqlite://ipgate.db";
pub const DEFAULT_REFRESH_INTERVAL: &str = "1s";
pub const DEFAULT_MAX_STALENESS: &str = "0s";
pub const DEFAULT_MAX_IPS_PER_CREDENTIAL: usize = 100;
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
pub const DEFAULT_HEADER_READ_TIMEOUT: &str = "10s";
/// No duration may be longer: past it some cannot be added to the clock (hyper's
/// request-head deadline, the poller's backoff, a new key's expiry time) and panic.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// The file exactly as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub server: RawServer,
    pub upstream: RawUpstream,
    pub auth: RawAuth,
    pub client_ip: RawClientIp,
    pub store: RawStore,
    pub refresh: RawRefresh,
    pub limits: RawLimits,
    pub log: RawLog,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    pub listen: String,
    pub admin_listen: String,
    pub workers: usize,
    pub shutdown_grace: String,
    pub header_read_timeout: String,
    pub proxy_protocol: bool,
    pub tls: Option<RawTls>,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.into(),
            admin_listen: DEFAULT_ADMIN_LISTEN.into(),
            workers: 0,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE.into(),
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT.into(),
            proxy_protocol: false,
            tls: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawUpstream {
    pub url: String,
    pub connect_timeout: String,
    pub timeout: String,
    pub ca_file: Option<String>,
}

impl Default for RawUpstream {
    fn default() -> Self {
        Self {
            url: DEFAULT_UPSTREAM.into(),
            connect_timeout: DEFAULT_UPSTREAM_CONNECT_TIMEOUT.into(),
            timeout: DEFAULT_UPSTREAM_TIMEOUT.into(),
            ca_file: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuth {
    pub header: String,
    pub registration_window: String,
    pub forward_key: bool,
}

impl Default for RawAuth {
    fn default() -> Self {
        Self {
            header: DEFAULT_AUTH_HEADER.into(),
            registration_window: DEFAULT_REGISTRATION_WINDOW.into(),
            forward_key: false,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawClientIp {
    pub trusted_proxies: Vec<String>,
    pub header: String,
}

impl Default for RawClientIp {
    fn default() -> Self {
        Self {
            trusted_proxies: Vec::new(),
            header: "x-forwarded-for".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStore {
    pub url: String,
}

impl Default for RawStore {
    fn default() -> Self {
        Self {
            url: DEFAULT_STORE_URL.into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRefresh {
    pub interval: String,
    pub max_staleness: String,
}

impl Default for RawRefresh {
    fn default() -> Self {
        Self {
            interval: DEFAULT_REFRESH_INTERVAL.into(),
            max_staleness: DEFAULT_MAX_STALENESS.into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    pub max_ips_per_credential: usize,
    pub max_body_bytes: usize,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            max_ips_per_credential: DEFAULT_MAX_IPS_PER_CREDENTIAL,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    pub format: String,
    pub level: Option<String>,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            format: "plain".into(),
            level: None,
        }
    }
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub auth: AuthConfig,
    pub client_ip: ClientIpConfig,
    pub store: StoreConfig,
    pub refresh: RefreshConfig,
    pub limits: LimitsConfig,
    pub log: LogConfig,
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// Tokio worker threads; 0 = one per core.
    pub workers: usize,
    pub shutdown_grace: Duration,
    pub header_read_timeout: Duration,
    /// Every connection starts with a PROXY protocol (v1 or v2) header from a
    /// trusted proxy, naming the client.
    pub proxy_protocol: bool,
    pub tls: Option<TlsConfig>,
}

#[derive(Clone, Debug)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    /// Scheme and authority; the request's path and query are appended.
    pub url: Uri,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    /// PEM roots for an `https` upstream; the system's roots when absent.
    pub ca_file: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct AuthConfig {
    pub header: HeaderName,
    /// True when `header` is `Authorization`: the key is read as `Bearer <key>`.
    pub bearer: bool,
    pub registration_window: Duration,
    pub forward_key: bool,
}

/// Which forwarding header a trusted proxy sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardedHeader {
    XForwardedFor,
    Forwarded,
}

#[derive(Clone, Debug)]
pub struct ClientIpConfig {
    pub trusted_proxies: Vec<IpNet>,
    pub header: ForwardedHeader,
}

#[derive(Clone, Debug)]
pub enum StoreConfig {
    Sqlite { path: PathBuf },
}

#[derive(Clone, Debug)]
pub struct RefreshConfig {
    pub interval: Duration,
    /// Zero: never refuse for staleness.
    pub max_staleness: Duration,
}

#[derive(Clone, Debug)]
pub struct LimitsConfig {
    pub max_ips_per_credential: usize,
    pub max_body_bytes: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Plain,
    Json,
}

#[derive(Clone, Debug)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter; `RUST_LOG` wins when set.
    pub level: Option<String>,
}

/// Every problem found in a configuration, each with its key path.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("; "))
    }
}

impl Config {
    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors(vec![format!("{}: {e}", path.display())]))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base)
    }

    /// Parses and validates text; relative paths are taken from `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Config, ConfigErrors> {
        let raw: RawConfig = toml::from_str(text)
            .map_err(|e| ConfigErrors(vec![e.to_string().trim_end().replace('\n', " ")]))?;
        Self::validate(raw, base)
    }

    pub fn validate(raw: RawConfig, base: &Path) -> Result<Config, ConfigErrors> {
        let mut errs = Vec::new();
        let mut check = Checker { errs: &mut errs };

        let server = ServerConfig {
            listen: check.addr("server.listen", &raw.server.listen),
            admin_listen: check.addr("server.admin_listen", &raw.server.admin_listen),
            workers: raw.server.workers,
            shutdown_grace: check.duration("server.shutdown_grace", &raw.server.shutdown_grace),
            header_read_timeout: check.positive_duration(
                "server.header_read_timeout",
                &raw.server.header_read_timeout,
            ),
            proxy_protocol: raw.server.proxy_protocol,
            tls: raw.server.tls.map(|t| TlsConfig {
                cert: base.join(t.cert),
                key: base.join(t.key),
            }),
        };
        if let Some(tls) = &server.tls {
            for (key, path) in [("server.tls.cert", &tls.cert), ("server.tls.key", &tls.key)] {
                if !path.is_file() {
                    check.err(key, &format!("{} is not a readable file", path.display()));
                }
            }
        }

        let url = match raw.upstream.url.parse::<Uri>() {
            Ok(u)
                if matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some() =>
            {
                if u.path() != "/" && !u.path().is_empty() {
                    check.err(
                        "upstream.url",
                        "must not have a path (requests keep their own)",
                    );
                }
                u
            }
            Ok(_) => {
                check.err(
                    "upstream.url",
                    "must be http://host:port or https://host:port",
                );
                Uri::from_static("http://invalid")
            }
            Err(e) => {
                check.err("upstream.url", &e.to_string());
                Uri::from_static("http://invalid")
            }
        };
        let upstream = UpstreamConfig {
            url,
            connect_timeout: check
                .positive_duration("upstream.connect_timeout", &raw.upstream.connect_timeout),
            timeout: check.positive_duration("upstream.timeout", &raw.upstream.timeout),
            ca_file: raw.upstream.ca_file.map(|f| base.join(f)),
        };
        if let Some(ca) = &upstream.ca_file {
            if !ca.is_file() {
                check.err(
                    "upstream.ca_file",
                    &format!("{} is not a readable file", ca.display()),
                );
            }
        }

        let header = match HeaderName::try_from(raw.auth.header.as_str()) {
            Ok(h) => h,
            Err(_) => {
                check.err("auth.header", "not a valid header name");
                HeaderName::from_static("x-bunq-client-authentication")
            }
        };
        let auth = AuthConfig {
            bearer: header == http::header::AUTHORIZATION,
            header,
            registration_window: check
                .positive_duration("auth.registration_window", &raw.auth.registration_window),
            forward_key: raw.auth.forward_key,
        };

        let mut trusted_proxies = Vec::new();
        for (i, s) in raw.client_ip.trusted_proxies.iter().enumerate() {
            match parse_net(s) {
                Some(n) => trusted_proxies.push(n),
                None => check.err(
                    &format!("client_ip.trusted_proxies[{i}]"),
                    &format!("{s:?} is not an address or CIDR"),
                ),
            }
        }
        let fwd = match raw.client_ip.header.to_ascii_lowercase().as_str() {
            "x-forwarded-for" => ForwardedHeader::XForwardedFor,
            "forwarded" => ForwardedHeader::Forwarded,
            other => {
                check.err(
                    "client_ip.header",
                    &format!("{other:?}: expected \"x-forwarded-for\" or \"forwarded\""),
                );
                ForwardedHeader::XForwardedFor
            }
        };
        if raw.server.proxy_protocol && trusted_proxies.is_empty() {
            check.err(
                "server.proxy_protocol",
                "needs client_ip.trusted_proxies: only those peers may name the client",
            );
        }
        let client_ip = ClientIpConfig {
            trusted_proxies,
            header: fwd,
        };

        let store = match raw.store.url.split_once("://") {
            Some(("sqlite", p)) if !p.is_empty() => StoreConfig::Sqlite { path: base.join(p) },
            _ => {
                check.err(
                    "store.url",
                    &format!("{:?}: expected sqlite://PATH", raw.store.url),
                );
                StoreConfig::Sqlite {
                    path: PathBuf::new(),
                }
            }
        };

        let refresh = RefreshConfig {
            interval: check.positive_duration("refresh.interval", &raw.refresh.interval),
            max_staleness: check.duration("refresh.max_staleness", &raw.refresh.max_staleness),
        };
        if !refresh.max_staleness.is_zero() && refresh.max_staleness <= refresh.interval {
            check.err(
                "refresh.max_staleness",
                "must be longer than refresh.interval (or 0s to disable)",
            );
        }

        if raw.limits.max_ips_per_credential == 0 {
            check.err("limits.max_ips_per_credential", "must be at least 1");
        }
        if raw.limits.max_body_bytes < 1024 {
            check.err("limits.max_body_bytes", "must be at least 1024");
        }
        let limits = LimitsConfig {
            max_ips_per_credential: raw.limits.max_ips_per_credential,
            max_body_bytes: raw.limits.max_body_bytes,
        };

        let format = match raw.log.format.as_str() {
            "plain" => LogFormat::Plain,
            "json" => LogFormat::Json,
            other => {
                check.err(
                    "log.format",
                    &format!("{other:?}: expected \"plain\" or \"json\""),
                );
                LogFormat::Plain
            }
        };
        if let Some(level) = &raw.log.level {
            if tracing_subscriber::EnvFilter::try_new(level).is_err() {
                check.err("log.level", &format!("{level:?} is not a tracing filter"));
            }
        }
        let log = LogConfig {
            format,
            level: raw.log.level,
        };

        if errs.is_empty() {
            Ok(Config {
                server,
                upstream,
                auth,
                client_ip,
                store,
                refresh,
                limits,
                log,
            })
        } else {
            Err(ConfigErrors(errs))
        }
    }
}

/// An address or a CIDR; a bare address is a network of one.
pub fn parse_net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(IpNet::from))
        .map(|n| n.trunc())
}

struct Checker<'a> {
    errs: &'a mut Vec<String>,
}

impl Checker<'_> {
    fn err(&mut self, key: &str, msg: &str) {
        self.errs.push(format!("{key}: {msg}"));
    }

    fn addr(&mut self, key: &str, s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|_| {
            self.err(key, &format!("{s:?} is not an address:port"));
            SocketAddr::from(([127, 0, 0, 1], 0))
        })
    }

    fn duration(&mut self, key: &str, s: &str) -> Duration {
        match humantime::parse_duration(s) {
            Ok(d) if d > MAX_DURATION => {
                self.err(key, &format!("{s:?} is longer than 100 years"));
                Duration::ZERO
            }
            Ok(d) => d,
            Err(e) => {
                self.err(key, &format!("{s:?}: {e}"));
                Duration::ZERO
            }
        }
    }

    fn positive_duration(&mut self, key: &str, s: &str) -> Duration {
        let d = self.duration(key, s);
        if d.is_zero() && humantime::parse_duration(s).is_ok_and(|p| p.is_zero()) {
            self.err(key, "must be greater than zero");
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_all_defaults() {
        let c = Config::parse("", Path::new("/etc/ipgate")).unwrap();
        assert_eq!(c.server.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.auth.header.as_str(), "x-bunq-client-authentication");
        assert_eq!(c.refresh.interval, Duration::from_secs(1));
        assert!(c.refresh.max_staleness.is_zero());
        let StoreConfig::Sqlite { path } = c.store;
        assert_eq!(path, Path::new("/etc/ipgate/ipgate.db"));
    }

    #[test]
    fn the_shipped_config_is_valid() {
        let text = include_str!("../config.toml");
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
        let all = e.0.join("\n");
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
    fn authorization_header_means_bearer() {
        let c = Config::parse("[auth]\nheader = \"Authorization\"\n", Path::new(".")).unwrap();
        assert!(c.auth.bearer);
    }

    // The fuzz targets' properties (fuzz/src/lib.rs `check_config`), always on.
    mod props {
        use super::*;
        use proptest::prelude::*;

        const KEYS: [(&str, &[&str]); 8] = [
            (
                "server",
                &[
                    "listen",
                    "admin_listen",
                    "workers",
                    "shutdown_grace",
                    "header_read_timeout",
                    "proxy_protocol",
                ],
            ),
            ("upstream", &["url", "connect_timeout", "timeout"]),
            ("auth", &["header", "registration_window", "forward_key"]),
            ("client_ip", &["trusted_proxies", "header"]),
            ("store", &["url"]),
            ("refresh", &["interval", "max_staleness"]),
            ("limits", &["max_ips_per_credential", "max_body_bytes"]),
            ("log", &["format", "level"]),
        ];

        fn value() -> impl Strategy<Value = String> {
            let text = prop_oneof![
                prop::sample::select(vec![
                    "0s",
                    "1s",
                    "4h",
                    "1y",
                    "18446744073709551615s",
                    "127.0.0.1:0",
                    "[::1]:80",
                    "http://h:1",
                    "ftp://x",
                    "sqlite://x.db",
                    "sqlite://",
                    "10.0.0.0/8",
                    "::/0",
                    "Authorization",
                    "forwarded",
                    "json",
                    "plain",
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
            fn refusals_say_why_and_name_their_key(text in prop_oneof![file(), "[ -~\n]{0,80}"]) {
                match Config::parse(&text, Path::new("/nonexistent")) {
                    Ok(c) => {
                        prop_assert!(!c.refresh.interval.is_zero());
                        prop_assert!(c.server.header_read_timeout <= MAX_DURATION);
                        prop_assert!(c.refresh.interval <= MAX_DURATION);
                        prop_assert!(c.auth.registration_window <= MAX_DURATION);
                        prop_assert!(c.limits.max_ips_per_credential >= 1);
                        prop_assert!(!c.server.proxy_protocol || !c.client_ip.trusted_proxies.is_empty());
                    }
                    Err(e) => {
                        prop_assert!(!e.0.is_empty());
                        prop_assert!(e.0.iter().all(|m| !m.trim().is_empty()));
                        if toml::from_str::<RawConfig>(&text).is_ok() {
                            for m in &e.0 {
                                let key = m.split(':').next().unwrap_or("");
                                prop_assert!(KEYS.iter().any(|(s, _)| key.starts_with(&format!("{s}."))), "{}", m);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Found by fuzzing (`fuzz/fuzz_targets/config_keys.rs`): durations too long to add
    /// to the clock were accepted, and then hyper panicked on every connection
    /// (`server.header_read_timeout`), the poller on its first backoff
    /// (`refresh.interval`) and key creation on showing the expiry time
    /// (`auth.registration_window`).
    #[test]
    fn fuzz_regression_durations_too_long_for_a_deadline() {
        let text = "[server]\nshutdown_grace = \"18446744073709551615s\"\n";
        let e = Config::parse(text, Path::new(".")).unwrap_err();
        assert_eq!(e.0.len(), 1, "{e}");
        assert!(e.0[0].starts_with("server.shutdown_grace"), "{e}");
        for (section, key) in [
            ("server", "header_read_timeout"),
            ("refresh", "interval"),
            ("auth", "registration_window"),
            ("upstream", "timeout"),
        ] {
            let text = format!("[{section}]\n{key} = \"101y\"\n");
            let e = Config::parse(&text, Path::new(".")).unwrap_err();
            assert_eq!(
                e.0,
                [format!(
                    "{section}.{key}: \"101y\" is longer than 100 years"
                )]
            );
        }
        let ok = "[auth]\nregistration_window = \"99y\"\n";
        Config::parse(ok, Path::new(".")).unwrap();
    }
}

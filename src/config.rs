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
pub const DEFAULT_STORE_POOL_SIZE: usize = 4;
pub const DEFAULT_STORE_TIMEOUT: &str = "5s";
pub const DEFAULT_KEEP_CHANGES: u64 = 100_000;
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Beyond this a table entry per connection would cost more memory than it is worth.
pub const MAX_MAX_CONNECTIONS: usize = 1_000_000;
pub const DEFAULT_REFUSALS_PER_SECOND: u32 = 100;
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
    pub max_connections: usize,
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
            max_connections: DEFAULT_MAX_CONNECTIONS,
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
    pub password_file: Option<String>,
    pub pool_size: usize,
    pub timeout: String,
    pub keep_changes: u64,
}

impl Default for RawStore {
    fn default() -> Self {
        Self {
            url: DEFAULT_STORE_URL.into(),
            password_file: None,
            pool_size: DEFAULT_STORE_POOL_SIZE,
            timeout: DEFAULT_STORE_TIMEOUT.into(),
            keep_changes: DEFAULT_KEEP_CHANGES,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRefresh {
    pub interval: String,
    pub max_staleness: String,
    pub notify: bool,
}

impl Default for RawRefresh {
    fn default() -> Self {
        Self {
            interval: DEFAULT_REFRESH_INTERVAL.into(),
            max_staleness: DEFAULT_MAX_STALENESS.into(),
            notify: true,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    pub max_ips_per_credential: usize,
    pub max_body_bytes: usize,
    pub refusals_per_second: u32,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            max_ips_per_credential: DEFAULT_MAX_IPS_PER_CREDENTIAL,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            refusals_per_second: DEFAULT_REFUSALS_PER_SECOND,
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
    /// For a PROXY header, a TLS handshake, and each request head (also the longest a
    /// kept-alive connection may wait for its next request).
    pub header_read_timeout: Duration,
    /// Client connections open at once; at the cap an idle one makes room, and with
    /// none idle a new one is closed at accept.
    pub max_connections: usize,
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
    Sqlite(SqliteConfig),
    Postgres(Box<PostgresConfig>),
}

impl StoreConfig {
    /// Where the store is, for logs: never a password.
    pub fn describe(&self) -> String {
        match self {
            StoreConfig::Sqlite(c) => format!("sqlite {}", c.path.display()),
            StoreConfig::Postgres(c) => format!("postgres {}", c.display),
        }
    }
}

/// How much change history a store keeps for gateways that catch up; one further
/// behind loads everything again.
#[derive(Clone, Debug)]
pub struct SqliteConfig {
    pub path: PathBuf,
    pub keep_changes: u64,
}

/// How TLS to PostgreSQL is used, as libpq's `sslmode` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    /// TLS when the server offers it, unverified (libpq's default).
    Prefer,
    /// TLS or nothing; the certificate is verified only when `sslrootcert` is given.
    Require,
    /// TLS with a certificate from a trusted CA, for any host name.
    VerifyCa,
    /// TLS with a certificate from a trusted CA for this host name.
    VerifyFull,
}

#[derive(Clone, Debug)]
pub struct PostgresConfig {
    /// Host, port, user, database and password. Its `Debug` hides the password.
    pub connect: tokio_postgres::Config,
    pub ssl_mode: SslMode,
    /// PEM roots to verify the server against; the system's roots when absent.
    pub ssl_root_cert: Option<PathBuf>,
    pub pool_size: usize,
    /// Longest a single store call may take, connecting included.
    pub timeout: Duration,
    pub keep_changes: u64,
    /// `postgres://user@host:port/db`, for logs.
    pub display: String,
}

#[derive(Clone, Debug)]
pub struct RefreshConfig {
    pub interval: Duration,
    /// Zero: never refuse for staleness.
    pub max_staleness: Duration,
    /// Let PostgreSQL's LISTEN/NOTIFY wake the poller as soon as a change commits.
    pub notify: bool,
}

#[derive(Clone, Debug)]
pub struct LimitsConfig {
    pub max_ips_per_credential: usize,
    pub max_body_bytes: usize,
    /// Refusals per client address and second before the rest are answered 429; 0 = off.
    pub refusals_per_second: u32,
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
            max_connections: raw.server.max_connections,
            proxy_protocol: raw.server.proxy_protocol,
            tls: raw.server.tls.map(|t| TlsConfig {
                cert: base.join(t.cert),
                key: base.join(t.key),
            }),
        };
        if !(1..=MAX_MAX_CONNECTIONS).contains(&server.max_connections) {
            check.err(
                "server.max_connections",
                &format!("must be between 1 and {MAX_MAX_CONNECTIONS}"),
            );
        }
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

        let store = store_config(&mut check, &raw.store, base);

        let refresh = RefreshConfig {
            interval: check.positive_duration("refresh.interval", &raw.refresh.interval),
            max_staleness: check.duration("refresh.max_staleness", &raw.refresh.max_staleness),
            notify: raw.refresh.notify,
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
            refusals_per_second: raw.limits.refusals_per_second,
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

/// `store.*`: an SQLite file or a PostgreSQL database.
fn store_config(check: &mut Checker<'_>, raw: &RawStore, base: &Path) -> StoreConfig {
    if raw.keep_changes < 100 {
        check.err("store.keep_changes", "must be at least 100");
    }
    let timeout = check.positive_duration("store.timeout", &raw.timeout);
    match raw.url.split_once("://") {
        Some(("sqlite", p)) if !p.is_empty() => {
            if raw.password_file.is_some() {
                check.err("store.password_file", "only for a postgres:// store");
            }
            StoreConfig::Sqlite(SqliteConfig {
                path: base.join(p),
                keep_changes: raw.keep_changes,
            })
        }
        Some(("postgres" | "postgresql", _)) => {
            if raw.pool_size == 0 {
                check.err("store.pool_size", "must be at least 1");
            }
            match postgres_config(raw, base, timeout) {
                Ok(c) => StoreConfig::Postgres(Box::new(c)),
                Err((key, msg)) => {
                    check.err(key, &msg);
                    StoreConfig::Sqlite(SqliteConfig {
                        path: PathBuf::new(),
                        keep_changes: raw.keep_changes,
                    })
                }
            }
        }
        _ => {
            // Never echo the URL: it may hold a password.
            check.err(
                "store.url",
                "expected sqlite://PATH or postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?sslmode=…]",
            );
            StoreConfig::Sqlite(SqliteConfig {
                path: PathBuf::new(),
                keep_changes: raw.keep_changes,
            })
        }
    }
}

/// A `postgres://` URL as libpq reads it, with `sslmode` (`disable`, `prefer`,
/// `require`, `verify-ca`, `verify-full`) and `sslrootcert` taken out for rustls. The
/// password comes from the URL, else `store.password_file`, else `PGPASSWORD`.
fn postgres_config(
    raw: &RawStore,
    base: &Path,
    timeout: Duration,
) -> Result<PostgresConfig, (&'static str, String)> {
    let url = raw.url.as_str();
    let (head, query) = url.split_once('?').unwrap_or((url, ""));
    let mut ssl_mode = SslMode::Prefer;
    let mut ssl_root_cert = None;
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=').unwrap_or((pair, "")) {
            ("sslmode", v) => {
                ssl_mode = match v {
                    "disable" => SslMode::Disable,
                    "prefer" | "allow" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    "verify-ca" => SslMode::VerifyCa,
                    "verify-full" => SslMode::VerifyFull,
                    other => {
                        return Err((
                            "store.url",
                            format!(
                                "sslmode={other:?}: expected disable, prefer, require, \
                                 verify-ca or verify-full"
                            ),
                        ))
                    }
                }
            }
            ("sslrootcert", v) => ssl_root_cert = Some(base.join(v)),
            _ => rest.push(pair),
        }
    }
    let plain = if rest.is_empty() {
        head.to_owned()
    } else {
        format!("{head}?{}", rest.join("&"))
    };
    let mut connect: tokio_postgres::Config = plain.parse().map_err(|e| {
        (
            "store.url",
            format!(
                "not a PostgreSQL URL ({e}); expected postgres://USER[:PASSWORD]@HOST[:PORT]/DB"
            ),
        )
    })?;
    if connect.get_hosts().is_empty() {
        return Err(("store.url", "names no host".into()));
    }
    if connect.get_user().is_none() {
        return Err(("store.url", "names no user".into()));
    }
    if connect.get_password().is_none() {
        if let Some(file) = &raw.password_file {
            let path = base.join(file);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                (
                    "store.password_file",
                    format!("{} cannot be read: {e}", path.display()),
                )
            })?;
            connect.password(text.trim_end_matches(['\r', '\n']));
        } else if let Ok(password) = std::env::var("PGPASSWORD") {
            connect.password(password);
        }
    }
    if let Some(path) = &ssl_root_cert {
        if !path.is_file() {
            return Err((
                "store.url",
                format!("sslrootcert {} is not a readable file", path.display()),
            ));
        }
    }
    connect
        .connect_timeout(timeout)
        .application_name("ipgate")
        .ssl_mode(match ssl_mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
    let display = match head.rsplit_once('@') {
        Some((scheme_user, host)) => {
            let (scheme, user) = scheme_user.split_once("://").unwrap_or(("postgres", ""));
            let user = user.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}@{host}")
        }
        None => head.to_owned(),
    };
    Ok(PostgresConfig {
        connect,
        ssl_mode,
        ssl_root_cert,
        pool_size: raw.pool_size,
        timeout,
        keep_changes: raw.keep_changes,
        display,
    })
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
        let StoreConfig::Sqlite(sqlite) = c.store else {
            panic!("the default store is SQLite");
        };
        assert_eq!(sqlite.path, Path::new("/etc/ipgate/ipgate.db"));
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

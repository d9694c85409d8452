//! The validated model the program runs on, and the defaults of every key.
//!
//! Nothing here reads a file: [`super::validate`] builds these from the document. Each
//! value is typed and already checked, so the rest of the program never parses text.

use http::header::HeaderName;
use http::Uri;
use ipnet::IpNet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
pub const DEFAULT_SHUTDOWN_GRACE: &str = "10s";
pub const DEFAULT_UPSTREAM: &str = "http://127.0.0.1:3000";
pub const DEFAULT_UPSTREAM_CONNECT_TIMEOUT: &str = "5s";
pub const DEFAULT_UPSTREAM_TIMEOUT: &str = "30s";
/// How long an upgraded connection (a WebSocket) may carry no byte either way.
pub const DEFAULT_TUNNEL_IDLE_TIMEOUT: &str = "5m";
pub const DEFAULT_AUTH_HEADER: &str = "X-Bunq-Client-Authentication";
pub const DEFAULT_REGISTRATION_WINDOW: &str = "4h";
pub const DEFAULT_STORE_URL: &str = "sqlite://ipgate.db";
pub const DEFAULT_REFRESH_INTERVAL: &str = "1s";
/// Hinted polls of one gateway start at least this far apart (BENCHMARKS.md, "Fleet":
/// propagation p99 against PostgreSQL CPU under a stream of writes).
pub const DEFAULT_HINT_SPACING: &str = "100ms";
pub const DEFAULT_FLUSH_INTERVAL: &str = "60s";
pub const DEFAULT_MAX_STALENESS: &str = "0s";
pub const DEFAULT_MAX_IPS_PER_CREDENTIAL: usize = 100;
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
pub const DEFAULT_HEADER_READ_TIMEOUT: &str = "10s";
pub const DEFAULT_STORE_POOL_SIZE: usize = 4;
pub const DEFAULT_STORE_TIMEOUT: &str = "5s";
pub const DEFAULT_KEEP_CHANGES: u64 = 100_000;
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// A request body waiting on its client, before the bytes it sent earn more time.
pub const DEFAULT_BODY_TIMEOUT: &str = "20s";
/// Bytes a second that earn a body (or a response) one more second: Apache
/// mod_reqtimeout's `MinRate`.
pub const DEFAULT_BODY_MIN_RATE: u64 = 500;
/// An answer waiting on its client to read it, before the bytes it read earn more time.
pub const DEFAULT_RESPONSE_TIMEOUT: &str = "20s";
pub const DEFAULT_RESPONSE_MIN_RATE: u64 = 500;
/// A minimum rate above this is a typo (1 GiB a second).
pub const MAX_MIN_RATE: u64 = 1 << 30;
/// The share of `max_connections` one client address (one /64 for IPv6) may hold.
pub const DEFAULT_CLIENT_SHARE_PERCENT: u64 = 10;
/// Beyond this a table entry per connection would cost more memory than it is worth.
pub const MAX_MAX_CONNECTIONS: usize = 1_000_000;
pub const DEFAULT_REFUSALS_PER_SECOND: u32 = 100;

/// The validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub auth: AuthConfig,
    pub client_ip: ClientIpConfig,
    pub store: StoreConfig,
    pub refresh: RefreshConfig,
    pub limits: LimitsConfig,
    pub log: LogConfig,
    pub insight: InsightConfig,
    pub console: ConsoleConfig,
}

#[derive(Clone, Debug, PartialEq)]
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
    /// How long a request body may wait on its client; every `body_min_rate` bytes
    /// that arrive earn it one more second (0: none do).
    pub body_timeout: Duration,
    pub body_min_rate: u64,
    /// The same for an answer its client does not read (HTTP/1 socket not drained,
    /// HTTP/2 flow-control window at 0).
    pub response_timeout: Duration,
    pub response_min_rate: u64,
    /// Percent of `max_connections` one client address (one /64 for IPv6) may hold
    /// at once; trusted proxies are not held to it.
    pub client_share_percent: u64,
    /// Every connection starts with a PROXY protocol (v1 or v2) header from a
    /// trusted proxy, naming the client.
    pub proxy_protocol: bool,
    /// What a PROXY header that names no client (v1 `UNKNOWN`, v2 `LOCAL`, no address
    /// family) gets.
    pub proxy_protocol_local: ProxyLocal,
    pub tls: Option<TlsConfig>,
}

/// A PROXY header that names no client: the balancer speaking for itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyLocal {
    /// Closed at once (the default): the gateway never guesses who the client is.
    Refuse,
    /// Served as a health check: every request on it is answered by the gateway
    /// (200 when ready, 503 otherwise) and none reaches the upstream.
    Health,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Clone, Debug, PartialEq)]
pub struct UpstreamConfig {
    /// Scheme and authority; the request's path and query are appended.
    pub url: Uri,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    /// PEM roots for an `https` upstream; the system's roots when absent.
    pub ca_file: Option<PathBuf>,
    /// The `Host` every forwarded request carries, whatever the client sent
    /// (`host[:port]`); when absent, the client's own, once checked.
    pub host: Option<http::HeaderValue>,
    /// Also write an RFC 7239 `Forwarded` header (the verified chain and the scheme).
    pub send_forwarded: bool,
    /// Also write `X-Real-IP` (the client address the gateway decided with).
    pub send_real_ip: bool,
    /// What the upstream speaks (`upstream.protocol`).
    pub protocol: UpstreamProtocol,
    /// An upgraded connection (a WebSocket) that carries no byte either way this long
    /// is closed.
    pub tunnel_idle_timeout: Duration,
}

/// What the gateway speaks to the upstream (`upstream.protocol`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (the default): one upstream connection per client connection.
    Http1,
    /// HTTP/2 without TLS (prior knowledge, an `http://` url): one multiplexed
    /// connection. gRPC servers speak it.
    H2c,
    /// HTTP/2 over TLS with ALPN `h2` (an `https://` url): one multiplexed connection.
    H2,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AuthConfig {
    pub header: HeaderName,
    /// True when `header` is `Authorization`: the key is read as `Bearer <key>`.
    pub bearer: bool,
    pub registration_window: Duration,
    pub forward_key: bool,
    /// Signs the management API's successful answers (`X-Bunq-Server-Signature`), so
    /// bunq's SDKs can verify them; `None`: answers are not signed.
    pub response_signing_key: Option<super::ResponseSigningKey>,
}

/// Which forwarding header a trusted proxy sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardedHeader {
    XForwardedFor,
    Forwarded,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ClientIpConfig {
    pub trusted_proxies: Vec<IpNet>,
    pub header: ForwardedHeader,
}

#[derive(Clone, Debug, PartialEq)]
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
#[derive(Clone, Debug, PartialEq)]
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

#[derive(Clone, Debug, PartialEq)]
pub struct PostgresConfig {
    /// Host, port, user, database and password. Its `Debug` hides the password.
    pub connect: tokio_postgres::Config,
    pub ssl_mode: SslMode,
    /// PEM roots to verify the server against; the system's roots when absent.
    pub ssl_root_cert: Option<PathBuf>,
    pub pool_size: usize,
    /// Longest a single store call may take, connecting included.
    pub timeout: Duration,
    /// Limits the server itself enforces on every connection of this gateway.
    pub server_timeouts: ServerTimeouts,
    pub keep_changes: u64,
    /// `postgres://user@host:port/db`, for logs.
    pub display: String,
    /// `store.read_url`: a streaming replica of this database that the poller reads
    /// (change feed and full loads); writes, rule checks and usage stay here.
    pub read: Option<Box<PostgresConfig>>,
}

/// What PostgreSQL enforces on each of a gateway's sessions, so that a gateway that
/// stalls (a partition, a paused process, a slow client) cannot hold locks that the
/// rest of the fleet waits on. Each defaults to `store.timeout`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerTimeouts {
    /// `statement_timeout`: longest one statement may run.
    pub statement: Duration,
    /// `lock_timeout`: longest one statement may wait for a lock.
    pub lock: Duration,
    /// `idle_in_transaction_session_timeout`: a session that opened a transaction and
    /// then went quiet this long is ended by the server, and its locks released.
    pub idle_in_transaction: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RefreshConfig {
    pub interval: Duration,
    /// Zero: never refuse for staleness.
    pub max_staleness: Duration,
    /// Let PostgreSQL's LISTEN/NOTIFY wake the poller as soon as a change commits.
    pub notify: bool,
    /// Least time between two polls woken by notices: under a stream of writes a
    /// gateway reads at most once per spacing, however many commits it hears of.
    pub hint_spacing: Duration,
}

/// Usage counting (SPEC section 9).
#[derive(Clone, Debug, PartialEq)]
pub struct InsightConfig {
    /// Count requests per credential and address. Off only to measure what it costs:
    /// `report` and `last_seen` then go blind.
    pub record_usage: bool,
    /// How often the counts are written to the store: at most one row per address per
    /// this interval per gateway.
    pub flush_interval: Duration,
}

/// Where the key holder's console is served (SPEC section 10).
pub const DEFAULT_CONSOLE_PATH: &str = "/ipgate/console/";

/// The key holder's web page on the public listener.
#[derive(Clone, Debug, PartialEq)]
pub struct ConsoleConfig {
    pub enabled: bool,
    /// Starts and ends with `/`; letters, digits, `-`, `_` and `/` only; never under
    /// the management API's `/v1/`.
    pub path: String,
}

#[derive(Clone, Debug, PartialEq)]
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

#[derive(Clone, Debug, PartialEq)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter; `RUST_LOG` wins when set.
    pub level: Option<String>,
}

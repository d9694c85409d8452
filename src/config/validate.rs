//! From the document to the model: every key read, typed and checked, every problem
//! noted with its key and line, none of them stopping the others.
//!
//! Besides the form of each value, this checks what `serve` would trip over later:
//! both listeners on one address, an SQLite folder that does not exist, TLS files that
//! cannot be read, a log filter that would silence everything. `ipgate check-config`
//! and `ipgate serve` run exactly this.

use super::document::{Document, Field, Reader, Section};
use super::model::*;
use super::signing_key::ResponseSigningKey;
use super::store_url::store_config;
use super::values::{check_log_filter, overlaps, parse_duration, parse_net, upstream_url};
use http::header::HeaderName;
use http::Uri;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

const SECTIONS: &[&str] = &[
    "server",
    "upstream",
    "auth",
    "client_ip",
    "store",
    "refresh",
    "limits",
    "log",
    "insight",
    "console",
];

/// Builds the model from `doc`, noting problems in `r`; `None` when there were any.
pub(super) fn config(doc: &Document<'_>, r: &mut Reader<'_>, base: &Path) -> Config {
    let root = doc.root(r, SECTIONS);
    let (server, proxy_protocol) = server(r, &root, base);
    let upstream = upstream(r, &root, base);
    let auth = auth(r, &root, base);
    let client_ip = client_ip(r, &root, &proxy_protocol);
    let store = {
        let s = r.section(
            &root,
            "store",
            &[
                "url",
                "read_url",
                "password_file",
                "pool_size",
                "timeout",
                "keep_changes",
                "statement_timeout",
                "lock_timeout",
                "idle_in_transaction_timeout",
            ],
        );
        store_config(r, &s, base)
    };
    let refresh = refresh(r, &root);
    let limits = limits(r, &root);
    let log = log(r, &root);
    let insight = insight(r, &root);
    let console = console(r, &root);
    Config {
        server,
        upstream,
        auth,
        client_ip,
        store,
        refresh,
        limits,
        log,
        insight,
        console,
    }
}

/// The server section, and `proxy_protocol` as read (client_ip's check names its line).
fn server(r: &mut Reader<'_>, root: &Section<'_, '_>, base: &Path) -> (ServerConfig, Field<bool>) {
    let s = r.section(
        root,
        "server",
        &[
            "listen",
            "admin_listen",
            "workers",
            "shutdown_grace",
            "header_read_timeout",
            "max_connections",
            "body_timeout",
            "body_min_rate",
            "response_timeout",
            "response_min_rate",
            "client_share_percent",
            "proxy_protocol",
            "proxy_protocol_local",
            "tls",
        ],
    );
    let listen_field = r.string(&s, "listen", DEFAULT_LISTEN);
    let listen = addr(r, &listen_field);
    let admin_field = r.string(&s, "admin_listen", DEFAULT_ADMIN_LISTEN);
    let admin_listen = addr(r, &admin_field);
    if let (Some(public), Some(admin)) = (listen, admin_listen) {
        if overlaps(public, admin) {
            r.problem(
                &admin_field,
                format!(
                    "{admin} is also server.listen ({public}); the admin listener needs an \
                     address of its own"
                ),
            );
        }
    }
    let workers = r.number(&s, "workers", 0, 1024).value as usize;
    let shutdown_grace = read_duration(
        r,
        &s,
        "shutdown_grace",
        DEFAULT_SHUTDOWN_GRACE,
        Zero::Allowed,
    );
    let header_read_timeout = read_duration(
        r,
        &s,
        "header_read_timeout",
        DEFAULT_HEADER_READ_TIMEOUT,
        Zero::Refused,
    );
    let max_connections = r.number(
        &s,
        "max_connections",
        DEFAULT_MAX_CONNECTIONS as u64,
        MAX_MAX_CONNECTIONS as u64,
    );
    if max_connections.value == 0 {
        r.problem(
            &max_connections,
            format!("must be between 1 and {MAX_MAX_CONNECTIONS}"),
        );
    }
    let body_timeout = read_duration(r, &s, "body_timeout", DEFAULT_BODY_TIMEOUT, Zero::Refused);
    let body_min_rate = r
        .number(&s, "body_min_rate", DEFAULT_BODY_MIN_RATE, MAX_MIN_RATE)
        .value;
    let response_timeout = read_duration(
        r,
        &s,
        "response_timeout",
        DEFAULT_RESPONSE_TIMEOUT,
        Zero::Refused,
    );
    let response_min_rate = r
        .number(
            &s,
            "response_min_rate",
            DEFAULT_RESPONSE_MIN_RATE,
            MAX_MIN_RATE,
        )
        .value;
    let client_share = r.number(
        &s,
        "client_share_percent",
        DEFAULT_CLIENT_SHARE_PERCENT,
        100,
    );
    if client_share.value == 0 {
        r.problem(
            &client_share,
            "must be between 1 and 100 (percent of max_connections)",
        );
    }
    let tls = s.has("tls").then(|| {
        let t = r.section(&s, "tls", &["cert", "key"]);
        let mut file = |key: &str| {
            let f = r.optional_string(&t, key);
            match &f.value {
                Some(name) => readable_file(r, &f, base.join(name)),
                None => {
                    r.problem(&f, "missing: server.tls needs both cert and key");
                    base.to_path_buf()
                }
            }
        };
        TlsConfig {
            cert: file("cert"),
            key: file("key"),
        }
    });
    let proxy_protocol = r.boolean(&s, "proxy_protocol", false);
    let local_field = r.string(&s, "proxy_protocol_local", "refuse");
    let proxy_protocol_local = match local_field.value.as_str() {
        "refuse" => ProxyLocal::Refuse,
        "health" => ProxyLocal::Health,
        other => {
            r.problem(
                &local_field,
                format!("{other:?}: expected \"refuse\" or \"health\""),
            );
            ProxyLocal::Refuse
        }
    };
    let server = ServerConfig {
        listen: listen.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0))),
        admin_listen: admin_listen.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0))),
        workers,
        shutdown_grace,
        header_read_timeout,
        max_connections: max_connections.value as usize,
        body_timeout,
        body_min_rate,
        response_timeout,
        response_min_rate,
        client_share_percent: client_share.value.max(1),
        proxy_protocol: proxy_protocol.value,
        proxy_protocol_local,
        tls,
    };
    (server, proxy_protocol)
}

fn upstream(r: &mut Reader<'_>, root: &Section<'_, '_>, base: &Path) -> UpstreamConfig {
    let s = r.section(
        root,
        "upstream",
        &[
            "url",
            "connect_timeout",
            "timeout",
            "ca_file",
            "host",
            "send_forwarded",
            "send_real_ip",
            "protocol",
            "tunnel_idle_timeout",
        ],
    );
    let url_field = r.string(&s, "url", DEFAULT_UPSTREAM);
    let url = match upstream_url(&url_field.value) {
        Ok(u) => u,
        Err(msg) => {
            r.problem(&url_field, msg);
            Uri::from_static("http://invalid")
        }
    };
    let connect_timeout = read_duration(
        r,
        &s,
        "connect_timeout",
        DEFAULT_UPSTREAM_CONNECT_TIMEOUT,
        Zero::Refused,
    );
    let timeout = read_duration(r, &s, "timeout", DEFAULT_UPSTREAM_TIMEOUT, Zero::Refused);
    let ca = r.optional_string(&s, "ca_file");
    let ca_file = ca
        .value
        .clone()
        .map(|name| readable_file(r, &ca, base.join(name)));
    let host_field = r.optional_string(&s, "host");
    let host = host_field.value.as_deref().and_then(|text| {
        let value = http::HeaderValue::from_str(text)
            .ok()
            .filter(|v| crate::proxy::target::valid_authority(v.as_bytes()));
        if value.is_none() {
            r.problem(
                &host_field,
                format!("{text:?} is not a host[:port] such as \"api.internal\" or \"api.internal:8443\""),
            );
        }
        value
    });
    let protocol = upstream_protocol(r, &s, &url);
    let tunnel_idle_timeout = read_duration(
        r,
        &s,
        "tunnel_idle_timeout",
        DEFAULT_TUNNEL_IDLE_TIMEOUT,
        Zero::Refused,
    );
    UpstreamConfig {
        url,
        connect_timeout,
        timeout,
        ca_file,
        host,
        send_forwarded: r.boolean(&s, "send_forwarded", false).value,
        send_real_ip: r.boolean(&s, "send_real_ip", false).value,
        protocol,
        tunnel_idle_timeout,
    }
}

/// `upstream.protocol`, which must fit the url's scheme: `h2c` is HTTP/2 without TLS,
/// `h2` HTTP/2 over TLS.
fn upstream_protocol(r: &mut Reader<'_>, s: &Section<'_, '_>, url: &Uri) -> UpstreamProtocol {
    let field = r.string(s, "protocol", "http1");
    let (protocol, scheme) = match field.value.as_str() {
        "http1" => return UpstreamProtocol::Http1,
        "h2c" => (UpstreamProtocol::H2c, "http"),
        "h2" => (UpstreamProtocol::H2, "https"),
        other => {
            r.problem(
                &field,
                format!("{other:?}: expected \"http1\", \"h2c\" or \"h2\""),
            );
            return UpstreamProtocol::Http1;
        }
    };
    if url.scheme_str().is_some_and(|s| s != scheme) {
        r.problem(
            &field,
            format!("{:?} needs an {scheme}:// upstream.url", field.value),
        );
    }
    protocol
}

fn auth(r: &mut Reader<'_>, root: &Section<'_, '_>, base: &Path) -> AuthConfig {
    let s = r.section(
        root,
        "auth",
        &[
            "header",
            "registration_window",
            "forward_key",
            "response_signing_key",
        ],
    );
    let header_field = r.string(&s, "header", DEFAULT_AUTH_HEADER);
    let header = HeaderName::try_from(header_field.value.as_str()).unwrap_or_else(|_| {
        r.problem(&header_field, "not a valid header name");
        HeaderName::from_static("x-bunq-client-authentication")
    });
    AuthConfig {
        bearer: header == http::header::AUTHORIZATION,
        header,
        registration_window: read_duration(
            r,
            &s,
            "registration_window",
            DEFAULT_REGISTRATION_WINDOW,
            Zero::Refused,
        ),
        forward_key: r.boolean(&s, "forward_key", false).value,
        response_signing_key: signing_key(r, &s, base),
    }
}

/// `auth.response_signing_key`: read now, so a key that cannot sign is listed here.
fn signing_key(r: &mut Reader<'_>, s: &Section<'_, '_>, base: &Path) -> Option<ResponseSigningKey> {
    let f = r.optional_string(s, "response_signing_key");
    let name = f.value.as_deref()?;
    match ResponseSigningKey::load(&base.join(name)) {
        Ok(key) => Some(key),
        Err(message) => {
            r.problem(&f, message);
            None
        }
    }
}

fn client_ip(
    r: &mut Reader<'_>,
    root: &Section<'_, '_>,
    proxy_protocol: &Field<bool>,
) -> ClientIpConfig {
    let s = r.section(root, "client_ip", &["trusted_proxies", "header"]);
    let mut trusted_proxies = Vec::new();
    for entry in r.strings(&s, "trusted_proxies").value {
        match parse_net(&entry.value) {
            Some(n) => trusted_proxies.push(n),
            None => r.problem(
                &entry,
                format!("{:?} is not an address or CIDR", entry.value),
            ),
        }
    }
    let header_field = r.string(&s, "header", "x-forwarded-for");
    let header = match header_field.value.to_ascii_lowercase().as_str() {
        "x-forwarded-for" => ForwardedHeader::XForwardedFor,
        "forwarded" => ForwardedHeader::Forwarded,
        other => {
            r.problem(
                &header_field,
                format!("{other:?}: expected \"x-forwarded-for\" or \"forwarded\""),
            );
            ForwardedHeader::XForwardedFor
        }
    };
    if proxy_protocol.value && trusted_proxies.is_empty() {
        r.problem(
            proxy_protocol,
            "needs client_ip.trusted_proxies: only those peers may name the client",
        );
    }
    ClientIpConfig {
        trusted_proxies,
        header,
    }
}

fn refresh(r: &mut Reader<'_>, root: &Section<'_, '_>) -> RefreshConfig {
    let s = r.section(
        root,
        "refresh",
        &["interval", "max_staleness", "notify", "hint_spacing"],
    );
    let interval = read_duration(r, &s, "interval", DEFAULT_REFRESH_INTERVAL, Zero::Refused);
    let staleness_field = r.string(&s, "max_staleness", DEFAULT_MAX_STALENESS);
    let max_staleness = duration(r, &staleness_field, Zero::Allowed);
    if !max_staleness.is_zero() && max_staleness <= interval {
        r.problem(
            &staleness_field,
            "must be longer than refresh.interval (or 0s to disable)",
        );
    }
    RefreshConfig {
        interval,
        max_staleness,
        notify: r.boolean(&s, "notify", true).value,
        hint_spacing: read_duration(r, &s, "hint_spacing", DEFAULT_HINT_SPACING, Zero::Allowed),
    }
}

fn insight(r: &mut Reader<'_>, root: &Section<'_, '_>) -> InsightConfig {
    let s = r.section(root, "insight", &["record_usage", "flush_interval"]);
    InsightConfig {
        record_usage: r.boolean(&s, "record_usage", true).value,
        flush_interval: read_duration(
            r,
            &s,
            "flush_interval",
            DEFAULT_FLUSH_INTERVAL,
            Zero::Refused,
        ),
    }
}

fn console(r: &mut Reader<'_>, root: &Section<'_, '_>) -> ConsoleConfig {
    let s = r.section(root, "console", &["enabled", "path"]);
    let enabled = r.boolean(&s, "enabled", true).value;
    let path = r.string(&s, "path", DEFAULT_CONSOLE_PATH);
    let plain = path
        .value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_'));
    let shaped = path.value.len() > 2
        && path.value.starts_with('/')
        && path.value.ends_with('/')
        && !path.value.contains("//");
    if !(shaped && plain) {
        r.problem(
            &path,
            "expected a path such as \"/ipgate/console/\": starting and ending with /, \
             letters, digits, -, _ and / only",
        );
    } else if path.value.starts_with("/v1/") {
        r.problem(
            &path,
            "the console cannot live under the management API's /v1/",
        );
    }
    ConsoleConfig {
        enabled,
        path: path.value,
    }
}

fn limits(r: &mut Reader<'_>, root: &Section<'_, '_>) -> LimitsConfig {
    let s = r.section(
        root,
        "limits",
        &[
            "max_ips_per_credential",
            "max_body_bytes",
            "refusals_per_second",
        ],
    );
    let max_ips = r.number(
        &s,
        "max_ips_per_credential",
        DEFAULT_MAX_IPS_PER_CREDENTIAL as u64,
        1_000_000,
    );
    if max_ips.value == 0 {
        r.problem(&max_ips, "must be at least 1");
    }
    let max_body = r.number(&s, "max_body_bytes", DEFAULT_MAX_BODY_BYTES as u64, 1 << 30);
    if max_body.value < 1024 {
        r.problem(&max_body, "must be at least 1024");
    }
    LimitsConfig {
        max_ips_per_credential: max_ips.value as usize,
        max_body_bytes: max_body.value as usize,
        refusals_per_second: r
            .number(
                &s,
                "refusals_per_second",
                u64::from(DEFAULT_REFUSALS_PER_SECOND),
                u64::from(u32::MAX),
            )
            .value as u32,
    }
}

fn log(r: &mut Reader<'_>, root: &Section<'_, '_>) -> LogConfig {
    let s = r.section(root, "log", &["format", "level"]);
    let format_field = r.string(&s, "format", "plain");
    let format = match format_field.value.as_str() {
        "plain" => LogFormat::Plain,
        "json" => LogFormat::Json,
        other => {
            r.problem(
                &format_field,
                format!("{other:?}: expected \"plain\" or \"json\""),
            );
            LogFormat::Plain
        }
    };
    let level = r.optional_string(&s, "level");
    if let Some(text) = &level.value {
        if let Err(msg) = check_log_filter(text) {
            r.problem(&level, msg);
        }
    }
    LogConfig {
        format,
        level: level.value,
    }
}

fn addr(r: &mut Reader<'_>, f: &Field<String>) -> Option<SocketAddr> {
    let parsed = f.value.parse().ok();
    if parsed.is_none() {
        r.problem(
            f,
            format!(
                "{:?} is not an address:port such as \"127.0.0.1:8080\" or \"[::]:8080\"",
                f.value
            ),
        );
    }
    parsed
}

/// Whether a duration may be zero.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Zero {
    Allowed,
    Refused,
}

fn read_duration(
    r: &mut Reader<'_>,
    s: &Section<'_, '_>,
    key: &str,
    default: &str,
    zero: Zero,
) -> Duration {
    let f = r.string(s, key, default);
    duration(r, &f, zero)
}

fn duration(r: &mut Reader<'_>, f: &Field<String>, zero: Zero) -> Duration {
    match parse_duration(&f.value) {
        Ok(d) if d.is_zero() && zero == Zero::Refused => {
            r.problem(f, "must be greater than zero");
            d
        }
        Ok(d) => d,
        Err(msg) => {
            r.problem(f, msg);
            Duration::ZERO
        }
    }
}

/// A file named by the configuration: it must exist and open for reading now, not at
/// the first handshake.
pub(super) fn readable_file<T>(
    r: &mut Reader<'_>,
    f: &Field<T>,
    path: std::path::PathBuf,
) -> std::path::PathBuf {
    match std::fs::File::open(&path).and_then(|file| file.metadata()) {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => r.problem(f, format!("{} is not a file", path.display())),
        Err(e) => r.problem(f, format!("{} cannot be read: {e}", path.display())),
    }
    path
}

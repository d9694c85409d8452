//! `[store]`: an SQLite file or a PostgreSQL database, from its URL.
//!
//! A `postgres://` URL is read as libpq reads it; `sslmode` and `sslrootcert` are taken
//! out for rustls. No message ever echoes the URL: it may hold a password.

use super::document::{Field, Reader, Section};
use super::model::*;
use super::values::parse_duration;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What `[store]` says, as written.
#[derive(Clone)]
struct RawStore {
    url: String,
    password_file: Option<String>,
    pool_size: usize,
    keep_changes: u64,
    server_timeouts: ServerTimeouts,
}

/// `store.*`: an SQLite file or a PostgreSQL database.
pub(super) fn store_config(r: &mut Reader<'_>, s: &Section<'_, '_>, base: &Path) -> StoreConfig {
    let url = r.string(s, "url", DEFAULT_STORE_URL);
    let password_file = r.optional_string(s, "password_file");
    let read_url = r.optional_string(s, "read_url");
    let pool_size = r.number(s, "pool_size", DEFAULT_STORE_POOL_SIZE as u64, 1024);
    let keep_changes = r.number(s, "keep_changes", DEFAULT_KEEP_CHANGES, i64::MAX as u64);
    if keep_changes.value < 100 {
        r.problem(&keep_changes, "must be at least 100");
    }
    let timeout_field = r.string(s, "timeout", DEFAULT_STORE_TIMEOUT);
    let timeout = match parse_duration(&timeout_field.value) {
        Ok(d) if !d.is_zero() => d,
        Ok(_) => {
            r.problem(&timeout_field, "must be greater than zero");
            Duration::ZERO
        }
        Err(msg) => {
            r.problem(&timeout_field, msg);
            Duration::ZERO
        }
    };
    let server_fields = [
        "statement_timeout",
        "lock_timeout",
        "idle_in_transaction_timeout",
    ]
    .map(|key| server_timeout(r, s, key, timeout));
    let [statement, lock, idle_in_transaction] = server_fields.each_ref().map(|(_, d)| *d);
    let raw = RawStore {
        url: url.value.clone(),
        password_file: password_file.value.clone(),
        pool_size: pool_size.value as usize,
        keep_changes: keep_changes.value,
        server_timeouts: ServerTimeouts {
            statement,
            lock,
            idle_in_transaction,
        },
    };
    let nothing = || {
        StoreConfig::Sqlite(SqliteConfig {
            path: PathBuf::new(),
            keep_changes: raw.keep_changes,
        })
    };
    match raw.url.split_once("://") {
        Some(("sqlite", p)) if !p.is_empty() => {
            if raw.password_file.is_some() {
                r.problem(&password_file, "only for a postgres:// store");
            }
            if read_url.value.is_some() {
                r.problem(&read_url, "only for a postgres:// store");
            }
            for (field, _) in &server_fields {
                if field.value.is_some() {
                    r.problem(field, "only for a postgres:// store");
                }
            }
            let path = base.join(p);
            // The file is created on first start, but its folder must be there: without
            // it the gateway would never load a snapshot and answer 503 forever.
            match path.parent() {
                Some(folder) if !folder.as_os_str().is_empty() && !folder.is_dir() => {
                    r.problem(
                        &url,
                        format!(
                            "the folder {} does not exist (the database file is created in it)",
                            folder.display()
                        ),
                    );
                }
                _ => {}
            }
            if path.is_dir() {
                r.problem(&url, format!("{} is a folder, not a file", path.display()));
            }
            StoreConfig::Sqlite(SqliteConfig {
                path,
                keep_changes: raw.keep_changes,
            })
        }
        Some(("postgres" | "postgresql", _)) => {
            if raw.pool_size == 0 {
                r.problem(&pool_size, "must be at least 1");
            }
            // A streaming replica for the poller's reads: the same user, password and
            // limits, another address.
            let read = read_url.value.as_ref().and_then(|u| {
                let replica = RawStore {
                    url: u.clone(),
                    ..raw.clone()
                };
                let scheme = u.split_once("://").map(|(s, _)| s);
                let parsed = match scheme {
                    Some("postgres" | "postgresql") => postgres_config(&replica, base, timeout),
                    _ => Err((
                        "store.read_url",
                        "expected postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?sslmode=…] \
                         (a streaming replica of store.url)"
                            .into(),
                    )),
                };
                match parsed {
                    Ok(c) => Some(Box::new(c)),
                    Err((_, msg)) => {
                        r.problem(&read_url, msg);
                        None
                    }
                }
            });
            match postgres_config(&raw, base, timeout) {
                Ok(mut c) => {
                    c.read = read.map(|mut replica| {
                        // The same user's password, however the primary's was given.
                        if replica.connect.get_password().is_none() {
                            if let Some(password) = c.connect.get_password() {
                                replica.connect.password(password);
                            }
                        }
                        replica
                    });
                    StoreConfig::Postgres(Box::new(c))
                }
                Err((key, msg)) => {
                    let field = if key == "store.password_file" {
                        Field {
                            value: (),
                            key: password_file.key.clone(),
                            line: password_file.line,
                        }
                    } else {
                        Field {
                            value: (),
                            key: url.key.clone(),
                            line: url.line,
                        }
                    };
                    r.problem(&field, msg);
                    nothing()
                }
            }
        }
        _ => {
            r.problem(
                &url,
                "expected sqlite://PATH or postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?sslmode=…]",
            );
            nothing()
        }
    }
}

/// `store.<key>`: a server-side limit, `store.timeout` when absent. PostgreSQL counts
/// in milliseconds and reads 0 as "no limit", so both are refused.
fn server_timeout(
    r: &mut Reader<'_>,
    s: &Section<'_, '_>,
    key: &str,
    timeout: Duration,
) -> (Field<Option<String>>, Duration) {
    let field = r.optional_string(s, key);
    let value = match field.value.as_deref().map(parse_duration) {
        None => timeout,
        Some(Ok(d)) if d >= Duration::from_millis(1) && d.as_millis() <= i32::MAX as u128 => d,
        Some(Ok(_)) => {
            r.problem(&field, "must be between 1ms and 24 days");
            timeout
        }
        Some(Err(msg)) => {
            r.problem(&field, msg);
            timeout
        }
    };
    (field, value)
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
        server_timeouts: raw.server_timeouts,
        keep_changes: raw.keep_changes,
        display,
        read: None,
    })
}

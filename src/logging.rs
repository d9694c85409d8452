//! Structured logs: plain or JSON lines on stderr, filtered by `RUST_LOG` or `[log] level`
//! (which a reload may change; `RUST_LOG`, when set, wins).
//!
//! Lines are formatted where they happen and written by one background thread in
//! batches, so a request never waits on a write to stderr (one line per request would
//! otherwise cost a system call each). Nothing is dropped: a writer that falls behind
//! slows the loggers down instead. Nothing secret is ever passed to a log call: keys
//! only exist as `ApiKey`, whose `Debug` is redacted, and the hot path logs credential
//! ids, never headers.

use crate::access_log::AccessLog;
use crate::config::{LogConfig, LogFormat};
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

const DEFAULT_FILTER: &str = "info";
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// The log filter of the running process, which a reload may change.
pub struct LogLevel {
    handle: reload::Handle<EnvFilter, Registry>,
    /// `RUST_LOG` was set at start: it wins over `[log] level`, on reload too.
    from_env: bool,
}

impl LogLevel {
    /// Filters by `level` (`[log] level`; `None`: the default) from now on. `Ok(false)`
    /// when `RUST_LOG` rules instead.
    pub fn set(&self, level: Option<&str>) -> Result<bool, String> {
        if self.from_env {
            return Ok(false);
        }
        let filter =
            EnvFilter::try_new(level.unwrap_or(DEFAULT_FILTER)).map_err(|e| e.to_string())?;
        self.handle.reload(filter).map_err(|e| e.to_string())?;
        Ok(true)
    }
}

/// Installs the subscriber and returns the access log that writes beside it and the
/// handle that changes the filter. Keep the guard until exit: dropping it flushes what
/// is still queued.
pub fn init(config: &LogConfig) -> (WorkerGuard, AccessLog, LogLevel) {
    let from_env = EnvFilter::try_from_default_env().ok();
    let env_set = from_env.is_some();
    let filter = from_env
        .or_else(|| EnvFilter::try_new(config.level.as_deref().unwrap_or(DEFAULT_FILTER)).ok())
        .unwrap_or_else(|| EnvFilter::new(DEFAULT_FILTER));
    let (filter, handle) = reload::Layer::new(filter);
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("ipgate-log")
        .finish(std::io::BufWriter::with_capacity(
            WRITE_BUFFER_BYTES,
            std::io::stderr(),
        ));
    let access = AccessLog::new(config.format, writer.clone());
    let registry = tracing_subscriber::registry().with(filter);
    // A second init (tests embedding the server) keeps the first subscriber.
    let installed = match config.format {
        LogFormat::Plain => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(writer),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(writer),
            )
            .try_init(),
    };
    if installed.is_err() {
        tracing::debug!("a log subscriber was already installed");
    }
    let level = LogLevel {
        handle,
        from_env: env_set,
    };
    (guard, access, level)
}

/// `error` and its whole chain of causes as one line: "outer: inner: innermost".
pub fn error_chain_with(error: &dyn std::error::Error) -> String {
    let chain = error_chain(error);
    if chain.is_empty() {
        error.to_string()
    } else {
        format!("{error}: {chain}")
    }
}

/// The `source()` chain of an error, without the error itself: `cause: its cause: …`,
/// for a log line (or the last words of `main`) that says why.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = String::new();
    let mut next = error.source();
    while let Some(e) = next {
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&e.to_string());
        next = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn the_chain_names_every_cause() {
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(error_chain(&e), "inner");
        assert_eq!(error_chain(&std::io::Error::other("alone")), "");
    }
}

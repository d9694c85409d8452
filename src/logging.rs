//! Structured logs: plain or JSON lines on stderr, filtered by `RUST_LOG` or `[log] level`.
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
use tracing_subscriber::EnvFilter;

const DEFAULT_FILTER: &str = "info";
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// Installs the subscriber and returns the access log that writes beside it. Keep the
/// guard until exit: dropping it flushes what is still queued.
pub fn init(config: &LogConfig) -> (WorkerGuard, AccessLog) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(config.level.as_deref().unwrap_or(DEFAULT_FILTER)))
        .unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("ipgate-log")
        .finish(std::io::BufWriter::with_capacity(
            WRITE_BUFFER_BYTES,
            std::io::stderr(),
        ));
    let access = AccessLog::new(config.format, writer.clone());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    // A second init (tests embedding the server) keeps the first subscriber.
    let installed = match config.format {
        LogFormat::Plain => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    if installed.is_err() {
        tracing::debug!("a log subscriber was already installed");
    }
    (guard, access)
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

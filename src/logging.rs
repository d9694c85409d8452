//! Structured logs: plain or JSON lines on stderr, filtered by `RUST_LOG` or `[log] level`.
//!
//! Nothing secret is ever passed to a log call: keys only exist as `ApiKey`, whose
//! `Debug` is redacted, and the hot path logs credential ids, never headers.

use crate::config::{LogConfig, LogFormat};
use tracing_subscriber::EnvFilter;

const DEFAULT_FILTER: &str = "info";

pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(config.level.as_deref().unwrap_or(DEFAULT_FILTER)))
        .unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
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
}

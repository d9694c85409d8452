//! SIGHUP: read the configuration file again and apply what may change to new
//! requests, as NGINX and HAProxy operators expect.
//!
//! Applied: `[upstream]`, `[auth]`, `[client_ip]`, `[limits]`, `log.level`,
//! `refresh.max_staleness` and the TLS certificate and key (re-read even when their
//! paths did not change, so a rolled certificate is picked up). Keys bound at start
//! (`config::Config::fixed_differences`) are named in a warning and keep their running
//! values. Everything that can fail (the file, the upstream's CA file, the TLS pair) is
//! set up before anything changes: a reload is applied whole or not at all, and a bad
//! one is logged and counted while the running configuration goes on.

use crate::acl::SnapshotCell;
use crate::config::Config;
use crate::front::{Front, Live};
use crate::logging::{error_chain, LogLevel};
use crate::metrics::{ConfigReload, Metrics};
use crate::proxy::tls::TlsCertificates;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// What a reload reads and what it changes.
pub struct Reloader {
    /// The file `serve` was started with.
    pub path: PathBuf,
    /// The configuration in force (fixed keys as at start, the rest as last applied).
    pub running: Config,
    pub front: Arc<Front>,
    pub cell: Arc<SnapshotCell>,
    pub certificates: Option<Arc<TlsCertificates>>,
    pub log_level: LogLevel,
    pub metrics: Arc<Metrics>,
}

impl Reloader {
    /// Reloads on every SIGHUP until `stop`. Always listening: an unhandled SIGHUP would
    /// kill the process (`systemctl reload`).
    pub async fn run(mut self, stop: CancellationToken) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGHUP; the configuration will not reload");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                received = hup.recv() => if received.is_none() { return },
            }
            tracing::info!(signal = "SIGHUP", file = %self.path.display(), "reloading the configuration");
            let result = self.reload();
            self.metrics.record_config_reload(result);
        }
    }

    /// One reload, applied whole or not at all.
    pub fn reload(&mut self) -> ConfigReload {
        let next = match Config::load(&self.path) {
            Ok(next) => next,
            Err(errors) => {
                tracing::error!(
                    file = %self.path.display(),
                    problems = errors.0.len(),
                    // One record, one line, also in the plain format: line-based log
                    // shippers must not split it.
                    details = %one_line(&errors.render(&self.path)),
                    "configuration reload refused; the running configuration stays"
                );
                return ConfigReload::Error;
            }
        };
        let kept = self.running.fixed_differences(&next);
        let applied = self.running.reloaded(&next);
        let problems = applied.merged_problems();
        if !problems.is_empty() {
            tracing::error!(
                file = %self.path.display(),
                kept = %kept.join(", "),
                problems = %problems.join("; "),
                "configuration reload refused: with the keys that cannot change while \
                 running, it could not run; the running configuration stays"
            );
            return ConfigReload::Error;
        }
        let current = self.front.live();
        let live = match Live::build(&applied, &self.cell, Some(&current)) {
            Ok(live) => live,
            Err(error) => {
                tracing::error!(
                    %error,
                    cause = error_chain(&error),
                    "configuration reload refused: the upstream cannot be set up; the \
                     running configuration stays"
                );
                return ConfigReload::Error;
            }
        };
        if let (Some(certificates), Some(files)) = (&self.certificates, &applied.server.tls) {
            match certificates.reload(files) {
                Ok(()) => {
                    self.metrics.tls_reloads.with_label_values(&["ok"]).inc();
                    tracing::info!(cert = %files.cert.display(), "TLS certificate reloaded");
                }
                Err(error) => {
                    self.metrics.tls_reloads.with_label_values(&["error"]).inc();
                    tracing::error!(
                        %error,
                        cause = error_chain(&error),
                        "TLS reload failed; still serving the previous certificate, and the \
                         running configuration stays"
                    );
                    return ConfigReload::Error;
                }
            }
        }
        let generation = live.generation;
        self.front.swap(live);
        for (key, was, now) in self.running.widened_trust(&applied) {
            tracing::warn!(key, was, now, "a reload widened whom the gateway trusts");
        }
        match self.log_level.set(applied.log.level.as_deref()) {
            Ok(true) => {}
            Ok(false) if applied.log.level != self.running.log.level => {
                tracing::warn!("log.level changed, but RUST_LOG is set and rules the log filter");
            }
            Ok(false) => {}
            // Validation accepted the filter, so this cannot happen; say so if it does.
            Err(error) => tracing::error!(%error, "the new log.level could not be set"),
        }
        if !kept.is_empty() {
            tracing::warn!(
                kept = %kept.join(", "),
                "these keys cannot change while running; they keep their values until a restart"
            );
        }
        tracing::info!(generation, "configuration reloaded");
        self.running = applied;
        ConfigReload::Ok
    }
}

/// A multi-line text as one line: its lines, trimmed, joined with "; ".
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

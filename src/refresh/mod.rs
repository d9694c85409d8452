//! The poller: store -> new [`Snapshot`] -> [`SnapshotCell::publish`].
//!
//! Asks the store for its change version every `refresh.interval`, rebuilds the whole
//! snapshot off the hot path when it moved, and swaps it in. When the store fails the
//! last good snapshot keeps serving; every failure is logged and counted, and polls
//! back off with jitter. Writes made through this gateway call [`Refresher::refresh`]
//! so they are enforced before their answer is sent.

use crate::acl::{Snapshot, SnapshotCell};
use crate::metrics::{Metrics, RefreshResult};
use crate::store::{Store, StoreError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Credentials changed through the API that ride beside the last full build before the
/// next write folds them into a new one.
const MAX_OVERLAY: usize = 256;

/// Backoff after failures grows to this many intervals at most.
const MAX_BACKOFF_INTERVALS: u32 = 10;

pub struct Refresher {
    store: Arc<dyn Store>,
    cell: Arc<SnapshotCell>,
    metrics: Arc<Metrics>,
    /// Serialises rebuilds so an older snapshot can never be published after a newer.
    rebuilding: tokio::sync::Mutex<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("store task failed")]
    Task(#[from] tokio::task::JoinError),
}

impl Refresher {
    pub fn new(store: Arc<dyn Store>, cell: Arc<SnapshotCell>, metrics: Arc<Metrics>) -> Self {
        Self {
            store,
            cell,
            metrics,
            rebuilding: tokio::sync::Mutex::new(()),
        }
    }

    /// Polls once: confirms the current snapshot or builds and publishes a new one.
    pub async fn refresh(&self) -> Result<RefreshResult, RefreshError> {
        let _one_at_a_time = self.rebuilding.lock().await;
        let started = Instant::now();
        let result = self.refresh_locked().await;
        self.metrics
            .refresh_duration
            .observe(started.elapsed().as_secs_f64());
        match &result {
            Ok(r) => self.metrics.record_refresh(*r),
            Err(_) => self.metrics.record_refresh(RefreshResult::Error),
        }
        result
    }

    /// Makes one credential's stored state the enforced one, now: after a write through
    /// this gateway. Only that credential is read; the new snapshot shares everything
    /// else with the current one. It takes the store's version only when that write
    /// was the store's one change since the current snapshot; otherwise the next poll
    /// still sees a difference and rebuilds the whole, as it must.
    pub async fn enforce_credential(&self, id: u64) -> Result<(), RefreshError> {
        let _one_at_a_time = self.rebuilding.lock().await;
        let current = match self.cell.load_full() {
            Some(c) if c.overlay_len() < MAX_OVERLAY => c,
            // Nothing to build on, or enough small changes to fold into a full build.
            _ => return self.refresh_locked().await.map(drop),
        };
        let store = Arc::clone(&self.store);
        let (version, key, credential) =
            tokio::task::spawn_blocking(move || store.load_credential(id)).await??;
        let next_version = if version == current.version() + 1 {
            version
        } else {
            current.version()
        };
        let next = current.with_credential(next_version, key, credential);
        let previous = current.version();
        drop(current);
        self.publish(next, Some(previous));
        Ok(())
    }

    async fn refresh_locked(&self) -> Result<RefreshResult, RefreshError> {
        let store = Arc::clone(&self.store);
        let version = tokio::task::spawn_blocking(move || store.change_version()).await??;
        let current = self.cell.load_full();
        if current.as_ref().is_some_and(|s| s.version() == version) {
            self.cell.confirm();
            return Ok(RefreshResult::Unchanged);
        }
        let store = Arc::clone(&self.store);
        let next = tokio::task::spawn_blocking(move || store.load_snapshot()).await??;
        self.publish(next, current.map(|s| s.version()));
        Ok(RefreshResult::Updated)
    }

    fn publish(&self, next: Snapshot, previous: Option<u64>) {
        tracing::info!(
            version = next.version(),
            previous,
            credentials = next.credential_count(),
            active_ips = next.active_ip_count(),
            "snapshot loaded"
        );
        self.metrics.snapshot_version.set(next.version() as i64);
        self.metrics
            .snapshot_credentials
            .set(next.credential_count() as i64);
        self.metrics
            .snapshot_active_ips
            .set(next.active_ip_count() as i64);
        if let Some(previous) = self.cell.publish(Arc::new(next)) {
            // Freeing a million credentials takes over 100 ms: never on a request thread.
            tokio::task::spawn_blocking(move || retire(previous));
        }
    }

    /// Polls every `interval` until `cancel` fires. The first poll is immediate.
    pub async fn run(self: Arc<Self>, interval: Duration, cancel: CancellationToken) {
        let mut failures: u32 = 0;
        loop {
            let delay = match self.refresh().await {
                Ok(_) => {
                    if failures > 0 {
                        tracing::info!(after_failures = failures, "store reachable again");
                    }
                    failures = 0;
                    interval
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let delay = backoff(interval, failures, jitter());
                    tracing::warn!(
                        error = %error,
                        cause = error_chain(&error),
                        failures,
                        retry_in_ms = delay.as_millis() as u64,
                        serving_version = self.cell.load().as_ref().map(|s| s.version()),
                        "store poll failed; keeping the last good snapshot"
                    );
                    delay
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}

/// How long a replaced snapshot may still be held by requests before it is freed
/// wherever its last holder drops it. Requests hold it for microseconds.
const RETIRE_PATIENCE: Duration = Duration::from_secs(5);

/// Frees a replaced snapshot on this (blocking-pool) thread. Requests that loaded it
/// just before the swap still hold it for a moment; whoever drops the last reference
/// frees it, so wait until that is us.
fn retire(old: Arc<Snapshot>) {
    let deadline = Instant::now() + RETIRE_PATIENCE;
    while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(old);
}

/// The full `source()` chain of an error, for a log line that says why.
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

/// Doubles per failure up to [`MAX_BACKOFF_INTERVALS`] intervals; `jitter` in [0, 1)
/// spreads gateways that failed together by up to a fifth either way.
fn backoff(interval: Duration, failures: u32, jitter: f64) -> Duration {
    let factor = 2u32
        .saturating_pow(failures.saturating_sub(1))
        .min(MAX_BACKOFF_INTERVALS);
    interval.mul_f64(f64::from(factor) * (0.8 + 0.4 * jitter))
}

fn jitter() -> f64 {
    let mut b = [0u8; 2];
    // Jitter only spreads retries; without OS randomness the midpoint does no harm.
    match getrandom::fill(&mut b) {
        Ok(()) => f64::from(u16::from_le_bytes(b)) / 65536.0,
        Err(_) => 0.5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let i = Duration::from_secs(1);
        assert_eq!(backoff(i, 1, 0.5), i);
        assert_eq!(backoff(i, 2, 0.5), 2 * i);
        assert_eq!(backoff(i, 3, 0.5), 4 * i);
        assert_eq!(backoff(i, 30, 0.5), 10 * i);
        assert!(backoff(i, 1, 0.0) >= Duration::from_millis(800));
        assert!(backoff(i, 1, 0.999) < Duration::from_millis(1200));
    }
}

//! The poller: the store's change feed -> the next [`Snapshot`] -> [`SnapshotCell::publish`].
//!
//! The published snapshot stands at a [`Position`] in the store's history, and moves
//! from version V only by applying exactly the changes V+1 … W, read in one consistent
//! view: never by adopting a version whose changes it did not read. Polls every
//! `refresh.interval` (sooner when the store hints at a commit), and writes made
//! through this gateway call [`Refresher::catch_up`] with their version, through the
//! same path, before their answer is sent. A full load happens at start and when the
//! position cannot be continued (counted as a resync). When the store fails the last
//! good snapshot keeps serving; every failure is logged and counted, and polls back
//! off with jitter.

use crate::acl::{Snapshot, SnapshotCell};
use crate::logging::error_chain;
use crate::metrics::{Metrics, RefreshResult};
use crate::store::{CredentialChange, Delta, Feed, Hints, Position, Store, StoreError, Timestamp};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Retries after a failure come at most this far apart, whatever the interval: a
/// change made right after an outage must be enforced within `interval` + 1 s of the
/// store's return. An attempt against a database that is down costs it nothing; one
/// that answers with errors gets one attempt a second from each gateway.
const RETRY_CEILING: Duration = Duration::from_secs(1);

/// Least time between two reads chasing a version a notice named and a read replica
/// did not have yet.
const MIN_CHASE_SPACING: Duration = Duration::from_millis(20);

pub struct Refresher {
    store: Arc<dyn Store>,
    cell: Arc<SnapshotCell>,
    metrics: Arc<Metrics>,
    /// Where the published snapshot stands (`None` before the first load). Held for a
    /// whole step, so steps never interleave and changes apply once, in order.
    position: tokio::sync::Mutex<Option<Position>>,
    /// When the last step (poll, catch-up or load) began, and when the last one that
    /// succeeded did: only a step that read the store serves a caller who waits for
    /// one (a failed one must not pass for a fresh look).
    step_began: std::sync::Mutex<Steps>,
}

#[derive(Clone, Copy, Default)]
struct Steps {
    any: Option<Instant>,
    good: Option<Instant>,
}

impl Refresher {
    pub fn new(store: Arc<dyn Store>, cell: Arc<SnapshotCell>, metrics: Arc<Metrics>) -> Self {
        Self {
            store,
            cell,
            metrics,
            position: tokio::sync::Mutex::new(None),
            step_began: std::sync::Mutex::new(Steps::default()),
        }
    }

    /// Polls once: confirms the current snapshot, applies what changed, or loads all.
    pub async fn refresh(&self) -> Result<RefreshResult, StoreError> {
        let mut position = self.position.lock().await;
        self.step(&mut position, Read::Poll).await
    }

    /// Makes the snapshot include everything up to `version` (a write this gateway
    /// just committed), by the same ordered path as a poll.
    pub async fn catch_up(&self, version: u64) -> Result<(), StoreError> {
        let mut position = self.position.lock().await;
        if position.is_some_and(|p| p.version >= version) {
            return Ok(());
        }
        // From the primary: a read replica may not have the write yet.
        self.step(&mut position, Read::Primary).await?;
        match *position {
            Some(p) if p.version >= version => Ok(()),
            _ => Err(StoreError::Unavailable(
                format!("the store is behind version {version}, which was just written").into(),
            )),
        }
    }

    /// Makes sure a poll has started since `arrived` (a caller asking about something
    /// newer than the snapshot, such as a key created a moment ago). Callers that crowd
    /// in share polls: each waits until `spacing` after the last one began, and a poll
    /// that began after it arrived serves it. A storm of such callers costs the store
    /// at most one extra read per `spacing`.
    pub async fn refresh_since(
        &self,
        arrived: Instant,
        spacing: Duration,
    ) -> Result<(), StoreError> {
        if let Some(last) = self.steps().any {
            tokio::time::sleep_until((last + spacing).into()).await;
        }
        let mut position = self.position.lock().await;
        if position.is_some() && self.steps().good.is_some_and(|t| t >= arrived) {
            return Ok(());
        }
        self.step(&mut position, Read::Poll).await.map(drop)
    }

    fn steps(&self) -> Steps {
        *self.step_began.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The position of the published snapshot.
    pub async fn position(&self) -> Option<Position> {
        *self.position.lock().await
    }

    async fn step(
        &self,
        position: &mut Option<Position>,
        read: Read,
    ) -> Result<RefreshResult, StoreError> {
        let started = Instant::now();
        self.step_began
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .any = Some(started);
        let result = self.step_inner(position, read).await;
        if result.is_ok() {
            self.step_began
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .good = Some(started);
        }
        self.metrics
            .refresh_duration
            .observe(started.elapsed().as_secs_f64());
        self.metrics.store_up.set(i64::from(result.is_ok()));
        match &result {
            Ok(r) => self.metrics.record_refresh(*r),
            Err(_) => self.metrics.record_refresh(RefreshResult::Error),
        }
        result
    }

    async fn step_inner(
        &self,
        position: &mut Option<Position>,
        read: Read,
    ) -> Result<RefreshResult, StoreError> {
        let Some(at) = *position else {
            return self.load_all(position, read).await;
        };
        let feed = match read {
            Read::Poll => self.store.changes_since(at).await?,
            Read::Primary => self.store.changes_since_primary(at).await?,
        };
        match feed {
            Feed::Unchanged => {
                self.cell.confirm();
                Ok(RefreshResult::Unchanged)
            }
            Feed::Changes(delta) => {
                self.apply(at, delta, position);
                Ok(RefreshResult::Updated)
            }
            Feed::Resync(reason) => {
                self.metrics.record_resync(reason);
                tracing::warn!(
                    reason = reason.label(),
                    version = at.version,
                    "cannot continue with a delta; loading everything"
                );
                self.load_all(position, read).await
            }
        }
    }

    async fn load_all(
        &self,
        position: &mut Option<Position>,
        read: Read,
    ) -> Result<RefreshResult, StoreError> {
        let loaded = match read {
            Read::Poll => self.store.load().await?,
            Read::Primary => self.store.load_primary().await?,
        };
        for broken in &loaded.damaged {
            report_damage(broken);
        }
        let previous = self.cell.load().as_ref().map(|s| s.version());
        tracing::info!(
            version = loaded.snapshot.version(),
            previous,
            credentials = loaded.snapshot.credential_count(),
            active_ips = loaded.snapshot.active_ip_count(),
            damaged = loaded.snapshot.damaged_count(),
            "snapshot loaded"
        );
        self.publish(loaded.snapshot);
        *position = Some(loaded.position);
        Ok(RefreshResult::Loaded)
    }

    /// Applies one delta: the changed credentials replace theirs, everything else is
    /// shared with the current snapshot.
    fn apply(&self, at: Position, delta: Delta, position: &mut Option<Position>) {
        let Some(current) = self.cell.load_full() else {
            // A position is only ever set together with a published snapshot.
            unreachable!("a position without a snapshot");
        };
        let entries: Vec<_> = delta
            .changed
            .iter()
            .filter_map(|change| {
                report_damage(change);
                change.entry(Some(&current))
            })
            .collect();
        let next = current.with_changes(delta.to.version, entries);
        drop(current);
        tracing::debug!(
            version = next.version(),
            previous = at.version,
            changed = delta.changed.len(),
            credentials = next.credential_count(),
            "changes applied"
        );
        self.publish(next);
        self.metrics
            .changes_applied
            .inc_by(delta.to.version - at.version);
        let now = Timestamp::now();
        for committed in &delta.committed {
            let micros = now.0.saturating_sub(committed.0).max(0);
            self.metrics
                .change_propagation
                .observe(micros as f64 / 1_000_000.0);
        }
        *position = Some(delta.to);
    }

    fn publish(&self, next: Snapshot) {
        self.metrics.snapshot_version.set(next.version() as i64);
        self.metrics
            .snapshot_credentials
            .set(next.credential_count() as i64);
        self.metrics
            .snapshot_active_ips
            .set(next.active_ip_count() as i64);
        self.metrics
            .damaged_credentials
            .set(next.damaged_count() as i64);
        if let Some(previous) = self.cell.publish(Arc::new(next)) {
            // Freeing a million credentials takes over 100 ms: never on a request thread.
            tokio::task::spawn_blocking(move || retire(previous));
        }
    }

    /// The version of the published snapshot (0 before the first load).
    fn version(&self) -> u64 {
        self.cell.load().as_ref().map_or(0, |s| s.version())
    }

    /// Polls every `pace.interval` until `cancel` fires; the first poll is immediate.
    /// `hints` (the store's) make a poll come sooner: a commit this gateway does not
    /// have yet (at most one read per `pace.hint_spacing`), or the store answering
    /// again after a failure (at once, instead of at the end of the backoff).
    pub async fn run(
        self: Arc<Self>,
        pace: Pace,
        hints: Option<Arc<Hints>>,
        cancel: CancellationToken,
    ) {
        self.run_observed(pace, hints, cancel, || {}).await
    }

    /// [`Refresher::run`], calling `observe` after each poll (benchmarks record when
    /// each version was published).
    pub async fn run_observed(
        self: Arc<Self>,
        pace: Pace,
        hints: Option<Arc<Hints>>,
        cancel: CancellationToken,
        mut observe: impl FnMut(),
    ) {
        let mut failures: u32 = 0;
        loop {
            let polled = Instant::now();
            let result = self.refresh().await;
            observe();
            let delay = match result {
                Ok(_) => {
                    if failures > 0 {
                        tracing::info!(after_failures = failures, "store reachable again");
                    }
                    failures = 0;
                    pace.interval
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let delay = backoff(pace.interval, failures, jitter());
                    let cause = error_chain(&error);
                    let retry_in_ms = delay.as_millis() as u64;
                    match self.cell.load().as_ref().map(|s| s.version()) {
                        Some(serving_version) => tracing::warn!(
                            error = %error,
                            cause,
                            failures,
                            retry_in_ms,
                            serving_version,
                            "store poll failed; keeping the last good snapshot"
                        ),
                        None => tracing::error!(
                            error = %error,
                            cause,
                            failures,
                            retry_in_ms,
                            "store poll failed; no snapshot yet, so not ready and letting nobody in"
                        ),
                    }
                    delay
                }
            };
            if let Some(hints) = &hints {
                hints.poller_failing(failures > 0);
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
                _ = self.hinted(hints.as_deref(), polled, pace, failures > 0) => {}
            }
        }
    }

    /// Returns when a hint calls for a poll earlier than the regular one.
    async fn hinted(&self, hints: Option<&Hints>, polled: Instant, pace: Pace, failing: bool) {
        let Some(hints) = hints else {
            return std::future::pending().await;
        };
        let spacing = pace.hint_spacing;
        if !failing && hints.unreached(self.version(), pace.interval) {
            // A notice named a version the last read did not find: a read replica
            // that lags the primary the notice came from. Read again after the
            // spacing (never a busy loop, even with a spacing of 0), for up to an
            // interval after the notice.
            let spacing = spacing.max(MIN_CHASE_SPACING);
            let not_before = polled + spacing.mul_f64(0.75 + 0.5 * jitter());
            tokio::time::sleep_until(not_before.into()).await;
            return;
        }
        loop {
            let heard = hints.next().await;
            if heard.back {
                // The store answers again: poll now rather than at the end of the
                // backoff. Still spaced, so a flapping store is not polled in a loop.
                tokio::time::sleep_until((polled + spacing).into()).await;
                return;
            }
            if failing {
                // Notices come over a connection of their own: the poller's failure
                // stands until the store answers one of its calls.
                continue;
            }
            if heard.announced <= self.version() {
                // Its own write, or an earlier poll, brought it already: no read.
                continue;
            }
            // Under a stream of writes every commit is a notice: one read per spacing
            // picks up many commits, so a fleet's reads grow with its size, not with
            // the write rate. The jitter keeps a fleet that heard the same notice from
            // reading in lockstep.
            let not_before = polled + spacing.mul_f64(0.75 + 0.5 * jitter());
            tokio::time::sleep_until(not_before.into()).await;
            return;
        }
    }
}

/// Where a step reads: the poller's source (a read replica when configured), or the
/// primary, for a write this gateway just made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Read {
    Poll,
    Primary,
}

/// How the poller paces itself.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    /// Between two regular polls.
    pub interval: Duration,
    /// Least time between two polls woken by commit notices.
    pub hint_spacing: Duration,
}

/// A credential whose stored record cannot be read is refused; say so loudly.
fn report_damage(change: &CredentialChange) {
    if let CredentialChange::Damaged {
        id, problem, key, ..
    } = change
    {
        tracing::error!(
            credential_id = id,
            problem = problem.as_str(),
            key_readable = key.is_some(),
            "a credential's stored record is damaged; it is refused until repaired"
        );
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

/// Doubles per failure from one interval up to [`RETRY_CEILING`]; `jitter` in [0, 1)
/// spreads gateways that failed together over the second half of that.
fn backoff(interval: Duration, failures: u32, jitter: f64) -> Duration {
    let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(16));
    interval
        .saturating_mul(factor)
        .min(RETRY_CEILING)
        .mul_f64(0.5 + 0.5 * jitter)
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
    fn backoff_grows_and_never_passes_a_second() {
        let ms = Duration::from_millis;
        let i = ms(100);
        assert_eq!(backoff(i, 1, 1.0), i);
        assert_eq!(backoff(i, 2, 1.0), 2 * i);
        assert_eq!(backoff(i, 3, 1.0), 4 * i);
        assert_eq!(backoff(i, 30, 1.0), ms(1000));
        assert_eq!(backoff(i, 1, 0.0), ms(50));
        for interval in [ms(100), ms(1000), ms(5000), Duration::from_secs(3600)] {
            for failures in [1, 2, 10, u32::MAX] {
                assert!(backoff(interval, failures, 0.999) <= RETRY_CEILING);
            }
        }
    }
}

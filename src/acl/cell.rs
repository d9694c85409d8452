//! The one place the current snapshot lives.
//!
//! Readers do one atomic load and keep the `Arc` they got for the whole request; the
//! poller swaps a whole new snapshot in. Freshness (when the store last answered) is a
//! separate timestamp, because an unchanged store is confirmed without a rebuild.

use super::snapshot::Snapshot;
use arc_swap::{ArcSwapOption, Guard};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct SnapshotCell {
    current: ArcSwapOption<Snapshot>,
    /// Milliseconds after `epoch` when the store last answered; 0 = never.
    confirmed_at_ms: AtomicU64,
    epoch: Instant,
}

impl Default for SnapshotCell {
    fn default() -> Self {
        Self::new()
    }
}

impl SnapshotCell {
    pub fn new() -> Self {
        Self {
            current: ArcSwapOption::empty(),
            confirmed_at_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// The current snapshot, cheaply, for the duration of one request.
    pub fn load(&self) -> Guard<Option<Arc<Snapshot>>> {
        self.current.load()
    }

    /// The current snapshot as an owned `Arc`, for callers that keep it across awaits.
    pub fn load_full(&self) -> Option<Arc<Snapshot>> {
        self.current.load_full()
    }

    /// Publishes a new snapshot, marks it fresh, and hands back the one it replaced:
    /// the caller decides where that is freed (a large one takes a while).
    #[must_use = "dropping the old snapshot here frees it on this thread"]
    pub fn publish(&self, snapshot: Arc<Snapshot>) -> Option<Arc<Snapshot>> {
        let previous = self.current.swap(Some(snapshot));
        self.confirm();
        previous
    }

    /// Records that the store answered and the current snapshot is still its truth.
    pub fn confirm(&self) {
        // `max(1)`: 0 means "never", even in the first millisecond after start.
        let ms = (self.epoch.elapsed().as_millis() as u64).max(1);
        self.confirmed_at_ms.store(ms, Ordering::Release);
    }

    /// Time since the store last answered; `None` before the first answer.
    pub fn age(&self) -> Option<Duration> {
        match self.confirmed_at_ms.load(Ordering::Acquire) {
            0 => None,
            ms => Some(
                self.epoch
                    .elapsed()
                    .saturating_sub(Duration::from_millis(ms)),
            ),
        }
    }

    /// True when `max_staleness` is set (non-zero) and the snapshot is older than it.
    pub fn is_stale(&self, max_staleness: Duration) -> bool {
        !max_staleness.is_zero() && self.age().is_none_or(|age| age > max_staleness)
    }

    pub fn is_loaded(&self) -> bool {
        self.current.load().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_until_published() {
        let cell = SnapshotCell::new();
        assert!(!cell.is_loaded());
        assert!(cell.age().is_none());
        assert!(cell.is_stale(Duration::from_secs(1)));
        assert!(!cell.is_stale(Duration::ZERO));
        assert!(cell.publish(Arc::new(Snapshot::default())).is_none());
        assert!(cell.is_loaded());
        assert!(cell.publish(Arc::new(Snapshot::default())).is_some());
        assert!(!cell.is_stale(Duration::from_secs(60)));
    }
}

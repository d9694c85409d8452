//! What a store tells its poller between polls: that another writer committed a
//! version (a notice, which may come late, twice, or never), and that the store answers
//! again after the poller saw it fail (a listener that reconnected, or any call that
//! succeeded). Hints only make a poll come sooner or be skipped; polling stays.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

pub struct Hints {
    wake: Notify,
    /// Wakes a listener waiting to reconnect: the store answered a call.
    listener: Notify,
    /// The highest version a commit notice carried (0: none).
    announced: AtomicU64,
    /// A notice came whose version could not be read: it could be anything.
    unknown: AtomicBool,
    /// The store answered while the poller was failing, or the listener (re)connected
    /// (commits made while it was away were not heard).
    back: AtomicBool,
    /// Whether the poller's last step failed: only then does a successful call wake it.
    failing: AtomicBool,
    /// When the newest notice came, in milliseconds after `epoch`.
    announced_at: AtomicU64,
    epoch: Instant,
}

impl Default for Hints {
    fn default() -> Self {
        Self {
            wake: Notify::new(),
            listener: Notify::new(),
            announced: AtomicU64::new(0),
            unknown: AtomicBool::new(false),
            back: AtomicBool::new(false),
            failing: AtomicBool::new(false),
            announced_at: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

/// What the poller finds when it is woken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heard {
    /// Poll now: the store is back, or commits may have gone unheard.
    pub back: bool,
    /// The newest version announced (`u64::MAX` when a notice could not be read).
    pub announced: u64,
}

impl Hints {
    pub fn new() -> Self {
        Self::default()
    }

    /// Another writer committed `version` (`None`: a notice without a readable one).
    pub fn committed(&self, version: Option<u64>) {
        match version {
            Some(v) => {
                if self.announced.fetch_max(v, Ordering::AcqRel) < v {
                    let ms = self.epoch.elapsed().as_millis() as u64;
                    self.announced_at.store(ms, Ordering::Release);
                }
            }
            None => self.unknown.store(true, Ordering::Release),
        }
        self.wake.notify_one();
    }

    /// The listener (re)connected: what was committed while it was away is unknown.
    pub fn reconnected(&self) {
        self.back.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// A call to the store succeeded: if the poller is failing, the store is back.
    /// Cheap enough for every call (one atomic load when the poller is fine).
    pub fn answered(&self) {
        if self.failing.load(Ordering::Acquire) {
            self.back.store(true, Ordering::Release);
            self.wake.notify_one();
            self.listener.notify_one();
        }
    }

    /// For the listener between attempts to reconnect: returns when a call of this
    /// gateway found the store back after the poller had failed, so the notices resume
    /// without waiting out the listener's own backoff.
    pub async fn store_back(&self) {
        self.listener.notified().await
    }

    /// The poller records how its last step went.
    pub fn poller_failing(&self, failing: bool) {
        let was = self.failing.swap(failing, Ordering::AcqRel);
        if was && !failing {
            // Its own successful calls said "back" a moment ago: already known.
            self.back.store(false, Ordering::Release);
        }
    }

    /// Whether a notice announced a version newer than `version` less than `within`
    /// ago: a read that did not find it (a replica that lags the primary the notice
    /// came from) is worth repeating for a while.
    pub fn unreached(&self, version: u64, within: Duration) -> bool {
        if self.announced.load(Ordering::Acquire) <= version {
            return false;
        }
        let at = Duration::from_millis(self.announced_at.load(Ordering::Acquire));
        self.epoch.elapsed().saturating_sub(at) < within
    }

    /// Waits for the next hint and takes what has been heard since the last one.
    pub async fn next(&self) -> Heard {
        self.wake.notified().await;
        let unknown = self.unknown.swap(false, Ordering::AcqRel);
        Heard {
            back: self.back.swap(false, Ordering::AcqRel),
            announced: if unknown {
                u64::MAX
            } else {
                self.announced.load(Ordering::Acquire)
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn notices_keep_the_newest_version_and_an_unreadable_one_means_any() {
        let h = Hints::new();
        h.committed(Some(7));
        h.committed(Some(5));
        let heard = h.next().await;
        assert_eq!(
            heard,
            Heard {
                back: false,
                announced: 7
            }
        );
        h.committed(None);
        assert_eq!(h.next().await.announced, u64::MAX);
        h.committed(Some(3));
        assert_eq!(h.next().await.announced, 7, "the newest stays");
    }

    #[test]
    fn an_unreached_version_is_chased_only_for_a_while() {
        let h = Hints::new();
        assert!(!h.unreached(0, Duration::from_secs(1)));
        h.committed(Some(5));
        assert!(h.unreached(4, Duration::from_secs(1)));
        assert!(!h.unreached(5, Duration::from_secs(1)));
        assert!(!h.unreached(4, Duration::ZERO), "too old to chase");
    }

    #[tokio::test]
    async fn a_successful_call_wakes_only_a_failing_poller() {
        let h = Hints::new();
        h.answered();
        h.committed(Some(1));
        assert!(!h.next().await.back, "not failing: an answer is no news");
        h.poller_failing(true);
        h.answered();
        assert!(h.next().await.back);
        h.answered();
        h.poller_failing(false);
        h.committed(Some(2));
        assert!(!h.next().await.back, "a good step clears what it knew");
        h.reconnected();
        h.poller_failing(false);
        assert!(
            h.next().await.back,
            "a reconnect while polling fine still counts"
        );
    }
}

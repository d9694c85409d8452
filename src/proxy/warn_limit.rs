//! A warning that a client can cause, written at most once per period with how many
//! were left out in between, so that a flood of bad connections cannot become a flood
//! of log lines. Shared by every connection task: two atomics, no lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub struct WarnLimit {
    every: Duration,
    start: Instant,
    /// When the last warning was written, in milliseconds since `start` plus one (0:
    /// never).
    last: AtomicU64,
    /// Occurrences not written since the last warning.
    left_out: AtomicU64,
}

impl WarnLimit {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            start: Instant::now(),
            last: AtomicU64::new(0),
            left_out: AtomicU64::new(0),
        }
    }

    /// `Some(left out since the last one)` when this occurrence is to be written.
    pub fn allow(&self) -> Option<u64> {
        let now = self.start.elapsed().as_millis() as u64 + 1;
        let last = self.last.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= self.every.as_millis() as u64;
        if due
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.left_out.swap(0, Ordering::Relaxed));
        }
        self.left_out.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_per_period_counting_the_rest() {
        let limit = WarnLimit::new(Duration::from_secs(3600));
        assert_eq!(limit.allow(), Some(0));
        for _ in 0..5 {
            assert_eq!(limit.allow(), None);
        }
        let every_time = WarnLimit::new(Duration::ZERO);
        assert_eq!(every_time.allow(), Some(0));
        assert_eq!(every_time.allow(), Some(0));
    }
}

//! A serving gateway's change notices, batched (issue 17).
//!
//! A `NOTIFY` inside every write's commit costs PostgreSQL a pass over every listening
//! session per commit: with 100 listening gateways, writes fell from ~520/s to ~90/s.
//! So a gateway that listens (it runs `serve` with `refresh.notify`) commits its writes
//! without one, and its listener connection (already open, on the primary) sends one
//! notice for the newest version its writes committed, at most one every
//! [`SPACING`]. Writes that commit while a notice is on its way are covered by the
//! next one, which carries the newer version: one notice per batch of commits.
//!
//! A notice is a hint only: a lost one (the listener down, the process ended) costs
//! the other gateways their next poll, never a write. One-shot processes (`ipgate
//! admin`) never listen, and notify inside their commit as before, so their change
//! is heard at once although they exit right after it.

use super::pool::TimedOut;
use super::rows::CHANNEL;
use crate::store::{Result, StoreError};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

/// The least time between two notices from one gateway: at most 100 a second, each
/// late by at most this much.
pub const SPACING: Duration = Duration::from_millis(10);

#[derive(Default)]
pub struct Notices {
    /// True once the gateway listens: its writes then leave the notice to this.
    batched: AtomicBool,
    /// The newest version this gateway's writes committed.
    wanted: AtomicU64,
    wake: Notify,
}

impl Notices {
    /// From now on writes are notified from here, not inside their commit.
    pub fn batch(&self) {
        self.batched.store(true, Ordering::Release);
    }

    /// Whether a write must notify inside its own commit.
    pub fn in_commit(&self) -> bool {
        !self.batched.load(Ordering::Acquire)
    }

    /// A write that did not notify committed `version`.
    pub fn committed(&self, version: u64) {
        self.wanted.fetch_max(version, Ordering::AcqRel);
        self.wake.notify_one();
    }

    /// Sends the notices on `client` (the listener's connection) until a send fails;
    /// `sent` is the newest version already sent, kept across reconnections.
    pub async fn send(
        &self,
        client: &tokio_postgres::Client,
        timeout: Duration,
        sent: &mut u64,
    ) -> Result<()> {
        loop {
            let wanted = self.wanted.load(Ordering::Acquire);
            if wanted <= *sent {
                // A `committed` between the load and here leaves a permit: not missed.
                self.wake.notified().await;
                continue;
            }
            let payload = wanted.to_string();
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&CHANNEL, &payload];
            let notify = client.execute("SELECT pg_notify($1, $2)", &params);
            tokio::time::timeout(timeout, notify)
                .await
                .map_err(|_| StoreError::unavailable(TimedOut(timeout)))??;
            *sent = wanted;
            tokio::time::sleep(SPACING).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_notify_in_their_commit_until_the_gateway_listens() {
        let n = Notices::default();
        assert!(n.in_commit());
        n.batch();
        assert!(!n.in_commit());
    }

    #[tokio::test]
    async fn a_version_committed_before_the_wait_is_not_missed() {
        let n = Notices::default();
        n.committed(7);
        n.committed(5);
        assert_eq!(n.wanted.load(Ordering::Acquire), 7, "the newest wins");
        // The permit left by `committed` lets a waiter through at once.
        tokio::time::timeout(Duration::from_millis(100), n.wake.notified())
            .await
            .expect("woken");
    }
}

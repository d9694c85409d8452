//! Moves the counts from the workers into the store: every `insight.flush_interval`
//! (a minute by default, so at most one write per address per minute per gateway),
//! and once more when the gateway stops. A batch the store refuses is kept and merged
//! into the next one, up to a bound; past it the oldest counts are let go, counted.
//! What the store refuses at the stop has no next flush: it is lost, logged and counted
//! as such.

use super::Recorder;
use crate::metrics::Metrics;
use crate::store::{Sighting, Store, UsageBatch};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long a flush gives the workers to hand their counts over.
const HAND_OVER_WAIT: Duration = Duration::from_millis(50);

/// Sightings kept for a store that is down, at most.
const MAX_PENDING: usize = 200_000;

/// Whether another flush follows this one: says what becomes of a batch the store
/// refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Then {
    /// Kept and merged into the next flush.
    Retry,
    /// The gateway is stopping: lost.
    Stop,
}

/// Runs until `stop`, then flushes once more.
pub async fn run(
    recorder: Arc<Recorder>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    every: Duration,
    stop: CancellationToken,
) {
    let mut pending = UsageBatch::default();
    let mut clock = tokio::time::interval(Duration::from_secs(1).min(every));
    clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut due = tokio::time::Instant::now() + every;
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                recorder.tick();
                flush(&recorder, store.as_ref(), &metrics, &mut pending, Then::Stop).await;
                return;
            }
            _ = clock.tick() => {}
        }
        recorder.tick();
        if tokio::time::Instant::now() >= due {
            flush(
                &recorder,
                store.as_ref(),
                &metrics,
                &mut pending,
                Then::Retry,
            )
            .await;
            due = tokio::time::Instant::now() + every;
        }
    }
}

/// Writes what the workers counted (and anything left from a failed flush).
pub async fn flush(
    recorder: &Recorder,
    store: &dyn Store,
    metrics: &Metrics,
    pending: &mut UsageBatch,
    then: Then,
) {
    recorder.ask();
    // Busy workers hand over with their next request, idle ones did when they parked.
    tokio::time::sleep(HAND_OVER_WAIT).await;
    let dropped = recorder.take_dropped();
    let batch = combine(std::mem::take(pending), recorder.drain());
    if batch.is_empty() {
        metrics.usage_dropped.inc_by(dropped);
        return;
    }
    let rows = (batch.allowed.len() + batch.refused.len()) as u64;
    match store.record_usage(batch.clone()).await {
        Ok(()) => {
            metrics.usage_flushes.with_label_values(&["ok"]).inc();
            metrics.usage_rows.inc_by(rows);
            metrics.usage_dropped.inc_by(dropped);
        }
        Err(error) if then == Then::Stop => {
            metrics.usage_flushes.with_label_values(&["error"]).inc();
            metrics.usage_dropped.inc_by(dropped + rows);
            let requests: u64 = batch
                .allowed
                .iter()
                .chain(&batch.refused)
                .map(|s| s.requests)
                .sum();
            tracing::error!(
                %error,
                cause = crate::logging::error_chain(&error),
                rows,
                requests,
                "usage could not be written at shutdown and is lost: {rows} rows, {requests} \
                 requests (no flush follows this one)"
            );
        }
        Err(error) => {
            metrics.usage_flushes.with_label_values(&["error"]).inc();
            tracing::warn!(
                %error,
                cause = crate::logging::error_chain(&error),
                rows,
                "usage could not be written; kept for the next flush"
            );
            let mut kept = batch;
            let over = (kept.allowed.len() + kept.refused.len()).saturating_sub(MAX_PENDING);
            if over > 0 {
                // Keep the most recent: what an owner reviews first.
                for list in [&mut kept.allowed, &mut kept.refused] {
                    list.sort_by_key(|s| std::cmp::Reverse(s.last_seen));
                }
                let cut = over.min(kept.allowed.len());
                kept.allowed.truncate(kept.allowed.len() - cut);
                kept.refused.truncate(kept.refused.len() - (over - cut));
            }
            metrics.usage_dropped.inc_by(dropped + over as u64);
            *pending = kept;
        }
    }
}

/// Two batches as one: counts add up, first and last take the extremes.
pub fn combine(a: UsageBatch, b: UsageBatch) -> UsageBatch {
    fn join(x: Vec<Sighting>, y: Vec<Sighting>) -> Vec<Sighting> {
        if x.is_empty() {
            return y;
        }
        let mut by: HashMap<(u64, IpAddr), Sighting> = HashMap::with_capacity(x.len() + y.len());
        for s in x.into_iter().chain(y) {
            by.entry((s.credential_id, s.ip))
                .and_modify(|t| {
                    t.requests += s.requests;
                    t.first_seen = t.first_seen.min(s.first_seen);
                    t.last_seen = t.last_seen.max(s.last_seen);
                })
                .or_insert(s);
        }
        by.into_values().collect()
    }
    UsageBatch {
        allowed: join(a.allowed, b.allowed),
        refused: join(a.refused, b.refused),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Timestamp;

    fn s(credential: u64, ip: &str, n: u64, first: i64, last: i64) -> Sighting {
        Sighting {
            credential_id: credential,
            ip: ip.parse().unwrap(),
            requests: n,
            first_seen: Timestamp(first),
            last_seen: Timestamp(last),
        }
    }

    #[test]
    fn batches_combine_by_credential_and_address() {
        let a = UsageBatch {
            allowed: vec![s(1, "10.0.0.1", 2, 10, 20)],
            refused: vec![s(1, "192.0.2.1", 1, 5, 5)],
        };
        let b = UsageBatch {
            allowed: vec![s(1, "10.0.0.1", 3, 5, 15), s(2, "10.0.0.1", 1, 1, 1)],
            refused: vec![],
        };
        let mut c = combine(a, b);
        c.allowed.sort_by_key(|x| x.credential_id);
        assert_eq!(
            c.allowed,
            [s(1, "10.0.0.1", 5, 5, 20), s(2, "10.0.0.1", 1, 1, 1)]
        );
        assert_eq!(c.refused, [s(1, "192.0.2.1", 1, 5, 5)]);
    }

    fn note(r: &Recorder, allowed: bool, credential_id: u64, ip: &str) {
        let who = crate::acl::Identity {
            credential_id,
            user_id: 1,
        };
        let decision = if allowed {
            crate::acl::Decision::Allow(who)
        } else {
            crate::acl::Decision::Deny(crate::acl::Reason::IpNotActive, Some(who))
        };
        r.note(decision, Some(ip.parse().unwrap()));
    }

    #[test]
    fn workers_count_apart_and_drain_together() {
        let r = Arc::new(Recorder::new(true));
        note(&r, true, 1, "10.0.0.1");
        note(&r, true, 1, "::ffff:10.0.0.1");
        let other = Arc::clone(&r);
        std::thread::spawn(move || {
            note(&other, true, 1, "10.0.0.1");
            note(&other, false, 1, "192.0.2.9");
        })
        .join()
        .unwrap();
        let batch = r.drain();
        assert_eq!(batch.allowed.len(), 1);
        assert_eq!(batch.allowed[0].requests, 3);
        assert_eq!(batch.refused.len(), 1);
        assert!(r.drain().is_empty(), "drained");
        let off = Recorder::new(false);
        note(&off, true, 1, "10.0.0.1");
        assert!(off.drain().is_empty());
    }
}

//! Moves the counts from the workers into the store: every `insight.flush_interval`
//! (a minute by default, so at most one write per address per minute per gateway),
//! and once more when the gateway stops. Each store call writes at most
//! [`MAX_ROWS_PER_WRITE`] rows, so a retry after an outage is as bounded as any flush.
//! What the store refuses is kept and merged into the next flush, up to a bound; past
//! it the oldest counts are let go, counted. What the store refuses at the stop has no
//! next flush: it is lost, logged and counted as such.

use super::Recorder;
use crate::metrics::Metrics;
use crate::store::{Sighting, Store, UsageBatch};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Sightings kept for a store that is down, at most.
const MAX_PENDING: usize = 200_000;

/// Sightings one store call writes at most: one transaction of this size stays well
/// inside `store.timeout` (and the server's statement timeout).
const MAX_ROWS_PER_WRITE: usize = 10_000;

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
    let batch = combine(std::mem::take(pending), recorder.drain());
    let dropped = recorder.take_dropped();
    if batch.is_empty() {
        metrics.usage_dropped.inc_by(dropped);
        return;
    }
    let mut rest = batch;
    while !rest.is_empty() {
        let (part, after) = split(rest, MAX_ROWS_PER_WRITE);
        let rows = part.len() as u64;
        match store.record_usage(part.clone()).await {
            Ok(()) => {
                metrics.usage_flushes.with_label_values(&["ok"]).inc();
                metrics.usage_rows.inc_by(rows);
                rest = after;
            }
            Err(error) if then == Then::Stop => {
                metrics.usage_flushes.with_label_values(&["error"]).inc();
                let lost = combine(part, after);
                let rows = lost.len() as u64;
                metrics.usage_dropped.inc_by(rows);
                let requests: u64 = lost
                    .allowed
                    .iter()
                    .chain(&lost.shadow)
                    .chain(&lost.refused)
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
                break;
            }
            Err(error) => {
                metrics.usage_flushes.with_label_values(&["error"]).inc();
                let kept = combine(part, after);
                tracing::warn!(
                    %error,
                    cause = crate::logging::error_chain(&error),
                    rows = kept.len(),
                    "usage could not be written; kept for the next flush"
                );
                let (kept, over) = bounded(kept);
                metrics.usage_dropped.inc_by(over as u64);
                *pending = kept;
                break;
            }
        }
    }
    metrics.usage_dropped.inc_by(dropped);
}

/// The first `max` sightings (allowed ones first, then shadow ones, refusals last) and
/// the rest.
fn split(mut batch: UsageBatch, max: usize) -> (UsageBatch, UsageBatch) {
    let mut room = max;
    let mut take = |list: &mut Vec<Sighting>| {
        let rest = list.split_off(list.len().min(room));
        room -= list.len();
        rest
    };
    let allowed = take(&mut batch.allowed);
    let shadow = take(&mut batch.shadow);
    let refused = take(&mut batch.refused);
    (
        batch,
        UsageBatch {
            allowed,
            refused,
            shadow,
        },
    )
}

/// `kept` cut to [`MAX_PENDING`] sightings, the most recent kept (what an owner
/// reviews first): allowed counts go first, then shadow ones, refusals (the stolen-key
/// signal) last; and how many were let go.
fn bounded(mut kept: UsageBatch) -> (UsageBatch, usize) {
    let over = kept.len().saturating_sub(MAX_PENDING);
    let mut left = over;
    if over > 0 {
        for list in [&mut kept.allowed, &mut kept.shadow, &mut kept.refused] {
            list.sort_by_key(|s| std::cmp::Reverse(s.last_seen));
            let cut = left.min(list.len());
            list.truncate(list.len() - cut);
            left -= cut;
        }
    }
    (kept, over)
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
        shadow: join(a.shadow, b.shadow),
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
            shadow: vec![s(1, "192.0.2.2", 1, 5, 5)],
        };
        let b = UsageBatch {
            allowed: vec![s(1, "10.0.0.1", 3, 5, 15), s(2, "10.0.0.1", 1, 1, 1)],
            refused: vec![],
            shadow: vec![s(1, "192.0.2.2", 2, 6, 7)],
        };
        let mut c = combine(a, b);
        c.allowed.sort_by_key(|x| x.credential_id);
        assert_eq!(
            c.allowed,
            [s(1, "10.0.0.1", 5, 5, 20), s(2, "10.0.0.1", 1, 1, 1)]
        );
        assert_eq!(c.refused, [s(1, "192.0.2.1", 1, 5, 5)]);
        assert_eq!(c.shadow, [s(1, "192.0.2.2", 3, 5, 7)]);
    }

    #[test]
    fn a_large_batch_is_written_in_bounded_parts_and_kept_bounded() {
        let many = |n: u64| -> Vec<Sighting> {
            (0..n).map(|i| s(i, "10.0.0.1", 1, 1, i as i64)).collect()
        };
        let batch = UsageBatch {
            allowed: many(7),
            refused: many(5),
            shadow: many(1),
        };
        let (part, rest) = split(batch, 9);
        assert_eq!(
            (part.allowed.len(), part.shadow.len(), part.refused.len()),
            (7, 1, 1)
        );
        assert_eq!((rest.allowed.len(), rest.refused.len()), (0, 4));
        let (part, rest) = split(rest, 9);
        assert_eq!(part.refused.len(), 4);
        assert!(rest.is_empty());
        let (kept, over) = bounded(UsageBatch {
            allowed: many(MAX_PENDING as u64 + 5),
            refused: many(2),
            shadow: many(1),
        });
        assert_eq!(over, 8);
        assert_eq!(kept.len(), MAX_PENDING);
        assert_eq!(kept.refused.len(), 2, "allowed sightings are let go first");
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

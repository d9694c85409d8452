//! The change feed from PostgreSQL: full loads, deltas after a position, and the
//! LISTEN connection that hints at commits. Everything here runs on the poller's own
//! connections, never waiting behind the management API: [`Lane::Feed`] (a streaming
//! replica when `store.read_url` names one) and [`Lane::Primary`] (the primary, for a
//! write this gateway made and for telling a lagging replica from a store that went
//! back). The listener is always on the primary: NOTIFY is not replicated.
//!
//! A delta is read only when it is worth it and can be read in time: one that spans
//! more versions than half the store's credentials (see [`worth_a_delta`]), or whose
//! read outlives `store.timeout`, becomes a full load (bounded by [`LOAD_TIMEOUT`])
//! instead, so a gateway far behind catches up rather than time out on every poll.

use super::super::feed::{continuation, CredentialChange, Delta, Feed, Position, ResyncReason};
use super::super::{Hints, Loaded, Result, StoreError};
use super::notices::Notices;
use super::pool::{with_server_timeouts, Lane, Lease, TimedOut};
use super::rows::PgFailure;
use super::rows::*;
use super::PostgresStore;
use crate::acl::SnapshotBuilder;
use crate::config::PostgresConfig;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::error::SqlState;
use tokio_postgres::IsolationLevel;
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_util::sync::CancellationToken;

/// A full load reads every credential: at a million that takes seconds, not the
/// timeout meant for one small call.
pub(super) const LOAD_TIMEOUT: Duration = Duration::from_secs(120);

/// Deltas of up to this many versions are always read: tens of milliseconds.
const ALWAYS_A_DELTA: u64 = 10_000;

/// Where the store stands, and the stamp it has for the caller's version ($1).
const PROBE: &str = "SELECT \
    (SELECT value FROM meta WHERE name = 'store_id'), \
    (SELECT value FROM meta WHERE name = 'change_version'), \
    (SELECT value FROM meta WHERE name = 'pruned_through'), \
    (SELECT stamp FROM change_log WHERE version = $1 LIMIT 1)";

/// Longest pause between attempts to re-establish the LISTEN connection. An attempt
/// against a database that is down costs it nothing, and a reconnect is what tells the
/// poller at once that the store is back: never more than a second late.
const MAX_LISTEN_BACKOFF: Duration = Duration::from_secs(1);

/// Where the poller reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Source {
    /// Its own connection: to the replica when `store.read_url` names one.
    Poller,
    /// The primary, where every acknowledged commit is: for catching up with a write
    /// this gateway just made, before its answer.
    Primary,
}

impl Source {
    fn lane(self) -> Lane {
        match self {
            Source::Poller => Lane::Feed,
            Source::Primary => Lane::Primary,
        }
    }
}

/// Every credential, in one consistent view.
pub(super) async fn load(store: &PostgresStore) -> Result<Loaded> {
    load_from(store, Source::Poller).await
}

pub(super) async fn load_from(store: &PostgresStore, source: Source) -> Result<Loaded> {
    store.call(source.lane(), LOAD_TIMEOUT, load_on).await
}

async fn load_on(mut client: Lease) -> Result<Loaded> {
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    // The connection's statement_timeout is meant for small calls; this one streams
    // every credential.
    tx.batch_execute(&format!(
        "SET LOCAL statement_timeout = {}",
        LOAD_TIMEOUT.as_millis()
    ))
    .await?;
    let (store_id, version, _) = read_meta(&tx).await?;
    let stamp = if version == 0 {
        0
    } else {
        stamp_at(&tx, version).await?.unwrap_or(0)
    };
    let count: i64 = col(
        &tx.query_one("SELECT COUNT(*) FROM credentials", &[])
            .await?,
        0,
    )?;
    let mut builder = SnapshotBuilder::new(version, count as usize);
    let mut damaged = Vec::new();
    stored_credentials(&tx, None, |stored| match stored.into_change() {
        CredentialChange::Readable(key, c) => builder.insert(key, c),
        broken => {
            if let Some((key, c)) = broken.entry(None) {
                builder.insert(key, c);
            }
            damaged.push(broken);
        }
    })
    .await?;
    tx.commit().await?;
    Ok(Loaded {
        snapshot: builder.build(),
        position: Position {
            store_id,
            version,
            stamp,
        },
        damaged,
    })
}

/// What changed after `at`: a cheap probe first (most polls stop there), then the
/// delta in its own call, so that a delta too slow to read becomes a full load.
pub(super) async fn changes_since(
    store: &PostgresStore,
    at: Position,
    source: Source,
) -> Result<Feed> {
    let feed = changes_on(store, at, source.lane()).await?;
    match feed {
        Feed::Resync(ResyncReason::WentBackwards)
            if source == Source::Poller && store.lanes.has_replica() =>
        {
            // The replica is behind this gateway (whose own writes were read from the
            // primary): lag, or a store that really went back. Only the primary can
            // tell; the replica is read again once it has caught up.
            let limit = store.config.timeout;
            match store.call(Lane::Primary, limit, |c| probe(c, at)).await? {
                Err(Feed::Resync(reason)) => Ok(Feed::Resync(reason)),
                _ => Ok(Feed::Unchanged),
            }
        }
        other => Ok(other),
    }
}

async fn changes_on(store: &PostgresStore, at: Position, lane: Lane) -> Result<Feed> {
    let limit = store.config.timeout;
    let behind = match store.call(lane, limit, |c| probe(c, at)).await? {
        Ok(behind) => behind,
        Err(decided) => return Ok(decided),
    };
    if behind > ALWAYS_A_DELTA {
        let credentials = match store.call(lane, limit, count_credentials).await {
            Ok(n) => n,
            Err(e) if timed_out(&e) => return Ok(Feed::Resync(ResyncReason::DeltaTimedOut)),
            Err(e) => return Err(e),
        };
        if !worth_a_delta(behind, credentials) {
            return Ok(Feed::Resync(ResyncReason::DeltaTooLarge));
        }
    }
    match store.call(lane, limit, |c| delta(c, at)).await {
        Err(e) if timed_out(&e) => Ok(Feed::Resync(ResyncReason::DeltaTimedOut)),
        other => other,
    }
}

/// How many versions the store is past `at`, or the answer when there is no delta to
/// read. One prepared statement, one round trip, no transaction.
async fn probe(client: Lease, at: Position) -> Result<Result<u64, Feed>> {
    let probe = client.prepare_cached(PROBE).await?;
    let row = client.query_one(&probe, &[&(at.version as i64)]).await?;
    let (store_id, version, pruned): (Option<i64>, Option<i64>, Option<i64>) =
        (col(&row, 0)?, col(&row, 1)?, col(&row, 2)?);
    let (Some(store_id), Some(version)) = (store_id, version) else {
        return Err(StoreError::Unavailable(
            "the store's meta table lacks its identity or version".into(),
        ));
    };
    let stamp = if at.version == 0 { None } else { col(&row, 3)? };
    let pruned = pruned.unwrap_or(0) as u64;
    if let Some(reason) = continuation(&at, store_id, version as u64, pruned, stamp) {
        return Ok(Err(Feed::Resync(reason)));
    }
    if version as u64 == at.version {
        return Ok(Err(Feed::Unchanged));
    }
    Ok(Ok(version as u64 - at.version))
}

/// The changes after `at` in one consistent view (checked again inside it: the probe
/// was a moment ago).
async fn delta(mut client: Lease, at: Position) -> Result<Feed> {
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let (store_id, version, pruned) = read_meta(&tx).await?;
    let stamp = if at.version == 0 {
        None
    } else {
        stamp_at(&tx, at.version).await?
    };
    if let Some(reason) = continuation(&at, store_id, version, pruned, stamp) {
        return Ok(Feed::Resync(reason));
    }
    if version == at.version {
        return Ok(Feed::Unchanged);
    }
    let (committed, ids, last_stamp) = changes_after(&tx, at.version).await?;
    let mut changed = Vec::with_capacity(ids.len());
    stored_credentials(&tx, Some(&ids), |s| changed.push(s.into_change())).await?;
    tx.commit().await?;
    Ok(Feed::Changes(Delta {
        to: Position {
            store_id,
            version,
            stamp: last_stamp.unwrap_or(0),
        },
        changed,
        committed,
    }))
}

/// Whether `behind` versions are cheaper to read as a delta than `credentials` as a
/// full load. A version changes at most one credential, and a delta costs about twice
/// a load per credential (BENCHMARKS.md, "A gateway far behind": at 100,000
/// credentials a delta of all of them took ~480 ms, the full load ~400 ms).
fn worth_a_delta(behind: u64, credentials: u64) -> bool {
    behind <= ALWAYS_A_DELTA || behind <= credentials / 2
}

async fn count_credentials(client: Lease) -> Result<u64> {
    let row = client
        .query_one("SELECT COUNT(*) FROM credentials", &[])
        .await?;
    Ok(col::<i64>(&row, 0)?.max(0) as u64)
}

/// The call ran out of time: our deadline, or the server's `statement_timeout`.
fn timed_out(e: &StoreError) -> bool {
    let StoreError::Unavailable(source) = e else {
        return false;
    };
    source.is::<TimedOut>()
        || source
            .downcast_ref::<PgFailure>()
            .and_then(|f| f.code.as_ref())
            == Some(&SqlState::QUERY_CANCELED)
}

/// Keeps one connection LISTENing for commits and passes each one's version to
/// `hints`, and tells it of every (re)connect: the store is back, and commits made
/// while the listener was away were not heard. Reconnects with backoff until `stop`.
pub(super) async fn listen(
    config: PostgresConfig,
    tls: MakeRustlsConnect,
    hints: Arc<Hints>,
    notices: Arc<Notices>,
    stop: CancellationToken,
) {
    let connect = with_server_timeouts(&config.connect, config.server_timeouts);
    let mut failures: u32 = 0;
    // The newest version this gateway's notices carried, across reconnections.
    let mut sent = 0u64;
    loop {
        let session = async {
            let connecting = connect.connect(tls.clone());
            let (client, mut connection) = tokio::time::timeout(config.timeout, connecting)
                .await
                .map_err(|_| StoreError::unavailable(TimedOut(config.timeout)))??;
            let heard = Arc::clone(&hints);
            let mut messages = tokio::spawn(async move {
                loop {
                    match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                        Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                            heard.committed(n.payload().parse().ok())
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Err(StoreError::from(e)),
                        None => return Ok(()),
                    }
                }
            });
            let statement = format!("LISTEN {CHANNEL}");
            let listen = client.batch_execute(&statement);
            tokio::time::timeout(config.timeout, listen)
                .await
                .map_err(|_| StoreError::unavailable(TimedOut(config.timeout)))??;
            tracing::debug!("listening for store changes");
            hints.reconnected();
            // The same connection sends this gateway's batched notices.
            let ended = tokio::select! {
                ended = &mut messages => ended,
                failed = notices.send(&client, config.timeout, &mut sent) => {
                    messages.abort();
                    Ok(failed)
                }
            };
            drop(client);
            match ended {
                Ok(result) => result,
                Err(join) => {
                    tracing::error!(error = %join, "store listener task failed");
                    Ok(())
                }
            }
        };
        let outcome = tokio::select! {
            _ = stop.cancelled() => return,
            outcome = session => outcome,
        };
        match outcome {
            Ok(()) => failures = 0,
            Err(error) => {
                failures = failures.saturating_add(1);
                tracing::warn!(%error, failures, "store change listener disconnected; polling continues");
            }
        }
        let pause = Duration::from_millis(250)
            .saturating_mul(2u32.saturating_pow(failures.min(6)))
            .min(MAX_LISTEN_BACKOFF);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
            _ = hints.store_back() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delta_is_read_unless_a_full_load_is_cheaper() {
        assert!(worth_a_delta(10_000, 0), "small deltas always");
        assert!(worth_a_delta(100_000, 1_000_000));
        assert!(worth_a_delta(50_000, 100_000));
        assert!(!worth_a_delta(50_001, 100_000));
        assert!(!worth_a_delta(60_000, 60_000));
    }
}

//! Connections to PostgreSQL: who may use which, what the server enforces on each, and
//! how a call is bounded.
//!
//! Three lanes, each its own pool, so no caller waits behind another kind: the
//! management API and `ipgate admin` share `store.pool_size` connections, the poller
//! (change feed and full loads) has one, and the usage flusher has one. With a read
//! replica (`store.read_url`) the poller's connection is to the replica, and it has
//! one more to the primary for checking what the replica cannot tell. Every
//! connection starts with the server-side limits of `store.*_timeout`, so a session
//! this gateway abandons (paused, partitioned) releases its locks by itself. A call
//! that outlives its deadline closes its connection rather than hand a still-busy
//! session to the next caller.

use super::super::{Result, StoreError};
use crate::config::{PostgresConfig, ServerTimeouts};
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres_rustls::MakeRustlsConnect;

/// Who a call is for; each has connections of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Lane {
    /// The management API and `ipgate admin`: `store.pool_size` connections.
    Api,
    /// The poller: the change feed and full loads, one step at a time.
    Feed,
    /// The usage flusher, once a minute.
    Usage,
    /// The poller's reads that must see the primary when the feed is read from a
    /// replica (`store.read_url`): the rare check that a replica behind this gateway
    /// is only lagging. Without a replica, the feed's own connection.
    Primary,
}

/// Connections the poller and the usage flusher each keep, beside the API's.
const FEED_CONNECTIONS: usize = 1;
const USAGE_CONNECTIONS: usize = 1;

#[derive(Debug, thiserror::Error)]
#[error("the store did not answer within {0:?}")]
pub(super) struct TimedOut(pub(super) Duration);

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            // deadpool's text repeats the backend's, which is its source as well: the
            // server's own words once, via `PgFailure`, read better.
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            e => StoreError::unavailable(e),
        }
    }
}

pub(super) struct Lanes {
    api: Pool,
    feed: Pool,
    usage: Pool,
    /// The primary for the poller, when `feed` is a replica.
    primary: Option<Pool>,
    tls: MakeRustlsConnect,
    /// The replica's, when there is one.
    read_tls: Option<MakeRustlsConnect>,
}

impl Lanes {
    /// Sets up the pools; nothing connects until the first call.
    pub(super) fn new(
        config: &PostgresConfig,
        tls: MakeRustlsConnect,
        read_tls: Option<MakeRustlsConnect>,
    ) -> Result<Self> {
        let pool = |size: usize, config: &PostgresConfig, tls: &MakeRustlsConnect| {
            let connect = with_server_timeouts(&config.connect, config.server_timeouts);
            let manager = Manager::from_config(
                connect,
                tls.clone(),
                ManagerConfig {
                    // A connection comes back only from a call that finished: it is idle.
                    recycling_method: RecyclingMethod::Fast,
                },
            );
            Pool::builder(manager)
                .max_size(size)
                .runtime(Runtime::Tokio1)
                .wait_timeout(Some(config.timeout))
                .create_timeout(Some(config.timeout))
                .recycle_timeout(Some(config.timeout))
                .build()
                .map_err(StoreError::unavailable)
        };
        let (feed, primary) = match (&config.read, &read_tls) {
            (Some(replica), Some(read_tls)) => (
                pool(FEED_CONNECTIONS, replica, read_tls)?,
                Some(pool(FEED_CONNECTIONS, config, &tls)?),
            ),
            _ => (pool(FEED_CONNECTIONS, config, &tls)?, None),
        };
        Ok(Self {
            api: pool(config.pool_size, config, &tls)?,
            feed,
            usage: pool(USAGE_CONNECTIONS, config, &tls)?,
            primary,
            tls,
            read_tls,
        })
    }

    /// Whether the poller reads a replica.
    pub(super) fn has_replica(&self) -> bool {
        self.primary.is_some()
    }

    fn pool(&self, lane: Lane) -> &Pool {
        match lane {
            Lane::Api => &self.api,
            Lane::Feed => &self.feed,
            Lane::Usage => &self.usage,
            Lane::Primary => self.primary.as_ref().unwrap_or(&self.feed),
        }
    }

    fn tls(&self, lane: Lane) -> &MakeRustlsConnect {
        match (lane, &self.read_tls) {
            (Lane::Feed, Some(read)) => read,
            _ => &self.tls,
        }
    }

    /// Runs `call` on a connection of `lane` within `limit`. A call that takes longer
    /// fails as unavailable and its connection is closed (the server rolls back what
    /// it left open), never returned to the pool still busy.
    pub(super) async fn call<T, F, Fut>(&self, lane: Lane, limit: Duration, call: F) -> Result<T>
    where
        F: FnOnce(Lease) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let abandoned = Arc::new(AtomicBool::new(false));
        let run = async {
            let conn = self.pool(lane).get().await?;
            call(Lease {
                conn: Some(conn),
                abandoned: Arc::clone(&abandoned),
                tls: self.tls(lane).clone(),
                limit,
            })
            .await
        };
        tokio::pin!(run);
        tokio::select! {
            result = &mut run => result,
            _ = tokio::time::sleep(limit) => {
                // Set before `run` (and the lease in it) is dropped on return.
                abandoned.store(true, Ordering::SeqCst);
                Err(StoreError::unavailable(TimedOut(limit)))
            }
        }
    }
}

/// `config` with the server-side limits added to its startup options (after any the
/// URL already gives, so ours win).
pub(super) fn with_server_timeouts(
    config: &tokio_postgres::Config,
    limits: ServerTimeouts,
) -> tokio_postgres::Config {
    let mut config = config.clone();
    let ours = server_options(limits);
    let options = match config.get_options() {
        Some(given) if !given.trim().is_empty() => format!("{given} {ours}"),
        _ => ours,
    };
    config.options(&options);
    config
}

/// The startup options that set `limits` on a new session.
pub(super) fn server_options(limits: ServerTimeouts) -> String {
    format!(
        "-c statement_timeout={} -c lock_timeout={} -c idle_in_transaction_session_timeout={}",
        limits.statement.as_millis(),
        limits.lock.as_millis(),
        limits.idle_in_transaction.as_millis()
    )
}

/// A pooled connection lent to one call: back to the pool when the call finishes,
/// closed when the call was abandoned at its deadline (its statements may still be
/// running, and the next caller would queue behind them).
pub(super) struct Lease {
    conn: Option<Object>,
    abandoned: Arc<AtomicBool>,
    tls: MakeRustlsConnect,
    limit: Duration,
}

impl Deref for Lease {
    type Target = Object;
    fn deref(&self) -> &Object {
        self.conn
            .as_ref()
            .expect("a lease holds its connection until dropped")
    }
}

impl DerefMut for Lease {
    fn deref_mut(&mut self) -> &mut Object {
        self.conn
            .as_mut()
            .expect("a lease holds its connection until dropped")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.abandoned.load(Ordering::SeqCst) {
            return;
        }
        let Some(conn) = self.conn.take() else { return };
        // Out of the pool for good; dropping it aborts its connection task, which
        // closes the socket. The server may not notice a closed socket while a
        // statement waits for a lock, so it is also asked to cancel that statement.
        let client = Object::take(conn);
        let cancel = client.cancel_token();
        drop(client);
        let (tls, limit) = (self.tls.clone(), self.limit);
        tracing::warn!(
            limit_ms = limit.as_millis() as u64,
            "a store call outlived its deadline; its connection is closed"
        );
        tokio::spawn(async move {
            match tokio::time::timeout(limit, cancel.cancel_query(tls)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::debug!(%error, "cancelling an abandoned statement failed")
                }
                Err(_) => tracing::debug!("cancelling an abandoned statement timed out"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_limits_are_startup_options_in_milliseconds() {
        let limits = ServerTimeouts {
            statement: Duration::from_secs(5),
            lock: Duration::from_millis(1500),
            idle_in_transaction: Duration::from_secs(2),
        };
        assert_eq!(
            server_options(limits),
            "-c statement_timeout=5000 -c lock_timeout=1500 \
             -c idle_in_transaction_session_timeout=2000"
        );
        let mut given = tokio_postgres::Config::new();
        given.options("-c search_path=ipgate");
        let both = with_server_timeouts(&given, limits);
        assert_eq!(
            both.get_options(),
            Some(
                "-c search_path=ipgate -c statement_timeout=5000 -c lock_timeout=1500 \
                 -c idle_in_transaction_session_timeout=2000"
            )
        );
    }
}

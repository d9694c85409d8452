//! The fleet store: one PostgreSQL database shared by every gateway and `ipgate admin`.
//!
//! A connection pool (deadpool) serves the calls; each is bounded by `store.timeout`.
//! Writes lock the credential they change (`SELECT … FOR UPDATE`) so the rules see a
//! list no one else is changing, then advance the store-wide version (the counter
//! row's lock orders versions by commit) and `NOTIFY` listeners. Reads of the feed
//! run in one `REPEATABLE READ` transaction, so a delta is one consistent view. The
//! schema is created or migrated on first use, under an advisory lock.

mod insight;
mod rows;
mod schema;
mod tls;

use super::feed::{continuation, CredentialChange, Delta, Feed, Position};
use super::model::*;
use super::rules::{self, Change, Changed, Target};
use super::{Committed, Loaded, NewCredential, Result, Store, StoreError};
use super::{RefusedReport, Suggestion, UnusedReport, UsageBatch};
use crate::acl::SnapshotBuilder;
use crate::config::PostgresConfig;
use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use rows::*;
use schema::{MIGRATIONS, MIGRATION_LOCK};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, OnceCell};
use tokio_postgres::IsolationLevel;
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_util::sync::CancellationToken;

/// A full load reads every credential: at a million that takes seconds, not the
/// timeout meant for one small call.
const LOAD_TIMEOUT: Duration = Duration::from_secs(120);

/// Where the store stands, and the stamp it has for the caller's version ($1).
const PROBE: &str = "SELECT \
    (SELECT value FROM meta WHERE name = 'store_id'), \
    (SELECT value FROM meta WHERE name = 'change_version'), \
    (SELECT value FROM meta WHERE name = 'pruned_through'), \
    (SELECT stamp FROM change_log WHERE version = $1 LIMIT 1)";

/// Longest pause between attempts to re-establish the LISTEN connection.
const MAX_LISTEN_BACKOFF: Duration = Duration::from_secs(10);

pub struct PostgresStore {
    pool: Pool,
    config: PostgresConfig,
    tls: MakeRustlsConnect,
    /// Done once per process, on the first call that reaches the database.
    schema: OnceCell<()>,
    /// Whether a database without ipgate's schema may be given one: `serve` and
    /// `admin init` only.
    create: bool,
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        StoreError::unavailable(e)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the store did not answer within {0:?}")]
struct TimedOut(Duration);

impl PostgresStore {
    /// Sets up the pool; nothing connects until the first call, which creates the
    /// schema if the database has none.
    pub fn new(config: &PostgresConfig) -> Result<Self> {
        Self::with(config, true)
    }

    /// The same for a database that must have ipgate's schema already: without it the
    /// first call is [`StoreError::Missing`] and nothing is created.
    pub fn existing(config: &PostgresConfig) -> Result<Self> {
        Self::with(config, false)
    }

    fn with(config: &PostgresConfig, create: bool) -> Result<Self> {
        let tls = tls::connector(config).map_err(StoreError::unavailable)?;
        let manager = Manager::from_config(
            config.connect.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.timeout))
            .create_timeout(Some(config.timeout))
            .recycle_timeout(Some(config.timeout))
            .build()
            .map_err(StoreError::unavailable)?;
        Ok(Self {
            pool,
            config: config.clone(),
            tls,
            schema: OnceCell::new(),
            create,
        })
    }

    /// Runs one call within `limit`; a call that takes longer fails as unavailable
    /// (its transaction, if any, rolls back).
    async fn within<T>(&self, limit: Duration, call: impl Future<Output = Result<T>>) -> Result<T> {
        tokio::time::timeout(limit, call)
            .await
            .map_err(|_| StoreError::unavailable(TimedOut(limit)))?
    }

    /// A pooled connection to a migrated database.
    async fn client(&self) -> Result<Object> {
        let mut client = self.pool.get().await?;
        let missing = (!self.create).then_some(self.config.display.as_str());
        self.schema
            .get_or_try_init(|| migrate(&mut client, missing))
            .await?;
        Ok(client)
    }

    async fn load_now(&self) -> Result<Loaded> {
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
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

    async fn changes_since_now(&self, at: Position) -> Result<Feed> {
        let mut client = self.client().await?;
        // Most polls find nothing new: one prepared statement, one round trip, one
        // consistent view, no transaction to open and close.
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
            return Ok(Feed::Resync(reason));
        }
        if version as u64 == at.version {
            return Ok(Feed::Unchanged);
        }
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

    async fn change_now(
        &self,
        target: Target,
        change: &Change,
        max_ips: usize,
        actor: &Actor,
    ) -> Result<Committed<Changed>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let id = match target {
            Target::Id(id) => id,
            Target::Key(key) => credential_id_by_key(&tx, &key.0)
                .await?
                .ok_or_else(|| StoreError::Rejected(rules::REGISTRATION_REFUSED.into()))?,
        };
        let before = lock_record(&tx, id).await?;
        let now = Timestamp::now();
        let plan = rules::plan(change, &before, now, max_ips)?;
        if plan.is_empty() {
            let (_, version, _) = read_meta(&tx).await?;
            return Ok(Committed {
                value: rules::changed(change, before),
                version,
            });
        }
        apply(&tx, id, &plan, now).await?;
        let after = read_record(&tx, id).await?;
        let (b, a) = rules::audit_values(change, &before, &after);
        let actor = rules::audit_actor(change, id, actor);
        audit(&tx, &actor, Some(id), plan.action, b, a).await?;
        let version = bump(&tx, Some(id), self.config.keep_changes).await?;
        tx.commit().await?;
        Ok(Committed {
            value: rules::changed(change, after),
            version,
        })
    }
}

/// Brings the schema up to date under a transaction-scoped advisory lock, or refuses a
/// database newer than this binary without touching it. `missing`: `Some(where)` when a
/// database without the schema is [`StoreError::Missing`] rather than given one.
async fn migrate(client: &mut Object, missing: Option<&str>) -> Result<()> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let no_store = |at: &str| StoreError::Missing(format!("postgres {at}"));
    if let Some(at) = missing {
        let exists: bool = col(
            &tx.query_one("SELECT to_regclass('ipgate_schema') IS NOT NULL", &[])
                .await?,
            0,
        )?;
        if !exists {
            return Err(no_store(at));
        }
    }
    tx.batch_execute("CREATE TABLE IF NOT EXISTS ipgate_schema (version INTEGER NOT NULL)")
        .await?;
    let found: i32 = match tx
        .query_opt("SELECT version FROM ipgate_schema", &[])
        .await?
    {
        Some(row) => col(&row, 0)?,
        None => {
            tx.execute("INSERT INTO ipgate_schema (version) VALUES (0)", &[])
                .await?;
            0
        }
    };
    if let (0, Some(at)) = (found, missing) {
        return Err(no_store(at));
    }
    let known = MIGRATIONS.len() as i32;
    if found > known {
        return Err(StoreError::Incompatible(format!(
            "the PostgreSQL database has ipgate schema version {found}, newer than this \
             ipgate ({known}); it is not touched"
        )));
    }
    for migration in &MIGRATIONS[found as usize..] {
        let store_id = super::random_stamp()?;
        tx.batch_execute(&migration.replace("{store_id}", &store_id.to_string()))
            .await?;
    }
    if found < known {
        tx.execute("UPDATE ipgate_schema SET version = $1", &[&known])
            .await?;
        tracing::info!(from = found, to = known, "PostgreSQL schema migrated");
    }
    tx.commit().await?;
    Ok(())
}

#[async_trait]
impl Store for PostgresStore {
    async fn load(&self) -> Result<Loaded> {
        self.within(LOAD_TIMEOUT, self.load_now()).await
    }

    async fn changes_since(&self, at: Position) -> Result<Feed> {
        self.within(self.config.timeout, self.changes_since_now(at))
            .await
    }

    fn change_hints(&self, stop: CancellationToken) -> Option<Arc<Notify>> {
        let notify = Arc::new(Notify::new());
        tokio::spawn(listen(
            self.config.clone(),
            self.tls.clone(),
            Arc::clone(&notify),
            stop,
        ));
        Some(notify)
    }

    async fn add_user(&self, name: Option<String>, actor: &Actor) -> Result<Committed<User>> {
        self.within(self.config.timeout, async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let now = Timestamp::now();
            let row = tx
                .query_one(
                    "INSERT INTO users (name, created) VALUES ($1, $2) RETURNING id",
                    &[&name, &now.0],
                )
                .await?;
            let user = User {
                id: col::<i64>(&row, 0)? as u64,
                name,
                created: now,
            };
            audit(
                &tx,
                actor,
                None,
                "user.add",
                None,
                serde_json::to_value(&user).ok(),
            )
            .await?;
            let version = bump(&tx, None, self.config.keep_changes).await?;
            tx.commit().await?;
            Ok(Committed {
                value: user,
                version,
            })
        })
        .await
    }

    async fn user(&self, id: u64) -> Result<User> {
        self.within(self.config.timeout, async {
            let client = self.client().await?;
            let row = client
                .query_opt(
                    "SELECT id, name, created FROM users WHERE id = $1",
                    &[&(id as i64)],
                )
                .await?
                .ok_or(StoreError::NotFound("user"))?;
            Ok(User {
                id: col::<i64>(&row, 0)? as u64,
                name: col(&row, 1)?,
                created: Timestamp(col(&row, 2)?),
            })
        })
        .await
    }

    async fn create_credential(
        &self,
        new: NewCredential,
        actor: &Actor,
    ) -> Result<Committed<Credential>> {
        self.within(self.config.timeout, async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let user = tx
                .query_opt(
                    "SELECT 1 FROM users WHERE id = $1",
                    &[&(new.user_id as i64)],
                )
                .await?;
            if user.is_none() {
                return Err(StoreError::NotFound("user"));
            }
            let now = Timestamp::now();
            let row = tx
                .query_one(
                    "INSERT INTO credentials \
                     (user_id, key_hash, status, description, created, updated, expiry) \
                     VALUES ($1, $2, 'PENDING_FIRST_USE', $3, $4, $4, $5) RETURNING id",
                    &[
                        &(new.user_id as i64),
                        &&new.key.0[..],
                        &new.description,
                        &now.0,
                        &new.expiry.0,
                    ],
                )
                .await?;
            let id = col::<i64>(&row, 0)? as u64;
            let credential = get_credential(&tx, id).await?;
            audit(
                &tx,
                actor,
                Some(id),
                "credential.create",
                None,
                serde_json::to_value(&credential).ok(),
            )
            .await?;
            let version = bump(&tx, Some(id), self.config.keep_changes).await?;
            tx.commit().await?;
            Ok(Committed {
                value: credential,
                version,
            })
        })
        .await
    }

    async fn credential(&self, id: u64) -> Result<Credential> {
        self.within(self.config.timeout, async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            get_credential(&tx, id).await
        })
        .await
    }

    async fn credentials(&self, user_id: u64, page: Page) -> Result<Vec<Credential>> {
        self.within(self.config.timeout, async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let q = page.sql(CREDENTIAL_COLUMNS, "credentials", "user_id = $1", '$');
            query_page(&tx, q, Some(user_id as i64), credential_from_row).await
        })
        .await
    }

    async fn change(
        &self,
        target: Target,
        change: Change,
        max_ips: usize,
        actor: &Actor,
    ) -> Result<Committed<Changed>> {
        self.within(
            self.config.timeout,
            self.change_now(target, &change, max_ips, actor),
        )
        .await
    }

    async fn ips(&self, credential_id: u64, page: Page) -> Result<Vec<PermittedIp>> {
        self.within(self.config.timeout, async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let q = page.sql(IP_COLUMNS, "entries", "credential_id = $1", '$');
            query_page(&tx, q, Some(credential_id as i64), ip_from_row).await
        })
        .await
    }

    async fn ip(&self, credential_id: u64, item_id: u64) -> Result<PermittedIp> {
        self.within(self.config.timeout, async {
            let client = self.client().await?;
            let row = client
                .query_opt(
                    &format!(
                        "SELECT {IP_COLUMNS} FROM entries WHERE id = $1 AND credential_id = $2"
                    ),
                    &[&(item_id as i64), &(credential_id as i64)],
                )
                .await?
                .ok_or(StoreError::NotFound("permitted IP"))?;
            ip_from_row(&row)
        })
        .await
    }

    async fn audit(&self, credential_id: Option<u64>, page: Page) -> Result<Vec<AuditEntry>> {
        self.within(self.config.timeout, async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let q = page.sql(
                "id, at, actor, actor_ip, credential_id, action, before, after",
                "audit_log",
                "($1::BIGINT IS NULL OR credential_id = $1)",
                '$',
            );
            query_page(&tx, q, credential_id.map(|c| c as i64), audit_from_row).await
        })
        .await
    }

    async fn usage(&self, user_id: Option<u64>) -> Result<Vec<Usage>> {
        self.within(self.config.timeout, async {
            let client = self.client().await?;
            let rows = client
                .query(
                    "SELECT c.id, c.user_id, c.status, c.wildcard, c.expiry, \
                     (SELECT COUNT(*) FROM permitted_ips p \
                      WHERE p.credential_id = c.id AND p.status = 'ACTIVE') \
                     FROM credentials c WHERE c.status <> 'REVOKED' \
                     AND ($1::BIGINT IS NULL OR c.user_id = $1) \
                     ORDER BY c.id",
                    &[&user_id.map(|u| u as i64)],
                )
                .await?;
            let now = Timestamp::now();
            rows.iter()
                .map(|r| {
                    let status: String = col(r, 2)?;
                    let stored = status
                        .parse()
                        .map_err(|e: String| StoreError::Unavailable(e.into()))?;
                    let expiry = col::<Option<i64>>(r, 4)?.map(Timestamp);
                    Ok(Usage {
                        credential_id: col::<i64>(r, 0)? as u64,
                        user_id: col::<i64>(r, 1)? as u64,
                        status: CredentialStatus::as_read(stored, expiry, now),
                        wildcard: col(r, 3)?,
                        active_ips: col::<i64>(r, 5)? as u64,
                    })
                })
                .collect()
        })
        .await
    }

    async fn record_usage(&self, batch: UsageBatch) -> Result<()> {
        self.within(self.config.timeout, async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            insight::record(&tx, &batch).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn refused(&self, credential_id: Option<u64>) -> Result<RefusedReport> {
        self.within(self.config.timeout, async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            insight::refused(&tx, credential_id).await
        })
        .await
    }

    async fn unused(&self, since: Timestamp, user_id: Option<u64>) -> Result<UnusedReport> {
        self.within(self.config.timeout, async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            insight::unused(&tx, since, user_id).await
        })
        .await
    }

    async fn suggest(&self, credential_id: u64) -> Result<Vec<Suggestion>> {
        self.within(self.config.timeout, async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            insight::suggest(&tx, credential_id).await
        })
        .await
    }

    async fn users(&self, page: Page) -> Result<Vec<User>> {
        self.within(self.config.timeout, async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let q = page.sql("id, name, created", "users", "$1::BIGINT IS NULL", '$');
            query_page(&tx, q, None, |r| {
                Ok(User {
                    id: col::<i64>(r, 0)? as u64,
                    name: col(r, 1)?,
                    created: Timestamp(col(r, 2)?),
                })
            })
            .await
        })
        .await
    }
}

/// Keeps one connection LISTENing for commits and wakes `notify` on each, and once
/// after every (re)connect, since commits made while it was away were not heard.
/// Reconnects with backoff until `stop`.
async fn listen(
    config: PostgresConfig,
    tls: MakeRustlsConnect,
    notify: Arc<Notify>,
    stop: CancellationToken,
) {
    let mut failures: u32 = 0;
    loop {
        let session = async {
            let connecting = config.connect.connect(tls.clone());
            let (client, mut connection) = tokio::time::timeout(config.timeout, connecting)
                .await
                .map_err(|_| StoreError::unavailable(TimedOut(config.timeout)))??;
            let woken = Arc::clone(&notify);
            let messages = tokio::spawn(async move {
                loop {
                    match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                        Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => {
                            woken.notify_one()
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
            notify.notify_one();
            let ended = messages.await;
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
        }
    }
}

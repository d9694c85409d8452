//! The fleet store: one PostgreSQL database shared by every gateway and `ipgate admin`.
//!
//! Each call runs on a connection of its lane ([`pool`]: the API's, the poller's or the
//! usage flusher's), bounded by `store.timeout` and by the server-side limits set on
//! every connection. Writes lock the credential they change (`SELECT … FOR UPDATE`) so
//! the rules see a list no one else is changing ([`writes`]), then advance the
//! store-wide version, log the change and `NOTIFY` listeners in one statement (the
//! counter row's lock orders versions by commit). The feed ([`feed`]) is read in one
//! `REPEATABLE READ` transaction, so a delta is one consistent view, from a streaming
//! replica when `store.read_url` names one. The schema is created or migrated on first
//! use, on the primary, under an advisory lock ([`schema`]). Every call that reaches
//! the database tells the poller's [`Hints`] (a failing poller polls again at once).

mod console_link;
mod feed;
mod insight;
mod notices;
mod pool;
mod rows;
mod schema;
mod tls;
mod writes;

use super::feed::{Feed, Position};
use super::model::*;
use super::rules::{Change, Changed, Target};
use super::{Committed, Hints, Loaded, NewCredential, Result, Store, StoreError};
use super::{NewConsoleLink, RefusedReport, Suggestion, UnusedReport, UsageBatch};
use crate::config::PostgresConfig;
use async_trait::async_trait;
use pool::{Lane, Lanes, Lease};
use rows::*;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_util::sync::CancellationToken;
use writes::{audit, bump};

pub struct PostgresStore {
    lanes: Lanes,
    config: PostgresConfig,
    tls: MakeRustlsConnect,
    /// Done once per process, on the first call that reaches the database.
    schema: OnceCell<()>,
    /// Whether a database without ipgate's schema may be given one: `serve` and
    /// `admin init` only.
    create: bool,
    /// Told of every call that reached the database, and of the listener's notices.
    hints: Arc<Hints>,
    /// This gateway's writes' notices, sent in batches once it listens.
    notices: Arc<notices::Notices>,
}

impl PostgresStore {
    /// Sets up the pools; nothing connects until the first call, which creates the
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
        let read_tls = match &config.read {
            Some(replica) => Some(tls::connector(replica).map_err(StoreError::unavailable)?),
            None => None,
        };
        Ok(Self {
            lanes: Lanes::new(config, tls.clone(), read_tls)?,
            config: config.clone(),
            tls,
            schema: OnceCell::new(),
            create,
            hints: Arc::new(Hints::new()),
            notices: Arc::default(),
        })
    }

    /// Runs a write that ends with [`bump`], told whether to notify in its commit;
    /// when not, its version goes to the batched notices once committed.
    async fn write<T, F, Fut>(&self, write: F) -> Result<Committed<T>>
    where
        F: FnOnce(Lease, bool) -> Fut,
        Fut: Future<Output = Result<Committed<T>>>,
    {
        let in_commit = self.notices.in_commit();
        let written = self
            .call(Lane::Api, self.config.timeout, |client| {
                write(client, in_commit)
            })
            .await?;
        if !in_commit {
            self.notices.committed(written.version);
        }
        Ok(written)
    }

    /// Runs `call` on a connection of `lane` to a migrated database, within `limit`
    /// (see [`Lanes::call`]).
    async fn call<T, F, Fut>(&self, lane: Lane, limit: Duration, call: F) -> Result<T>
    where
        F: FnOnce(Lease) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        if lane == Lane::Feed && self.lanes.has_replica() && self.schema.get().is_none() {
            // A replica cannot write: the schema is made or migrated on the primary.
            self.lanes
                .call(Lane::Primary, limit, |mut client| async move {
                    let missing = (!self.create).then_some(self.config.display.as_str());
                    self.schema
                        .get_or_try_init(|| schema::migrate(&mut client, missing))
                        .await
                        .map(drop)
                })
                .await?;
        }
        let result = self
            .lanes
            .call(lane, limit, |mut client| async move {
                let missing = (!self.create).then_some(self.config.display.as_str());
                self.schema
                    .get_or_try_init(|| schema::migrate(&mut client, missing))
                    .await?;
                call(client).await
            })
            .await;
        // Any answer (a refusal or "not found" too) proves the database is back.
        if !matches!(result, Err(StoreError::Unavailable(_))) {
            self.hints.answered();
        }
        result
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn load(&self) -> Result<Loaded> {
        feed::load(self).await
    }

    async fn changes_since(&self, at: Position) -> Result<Feed> {
        feed::changes_since(self, at, feed::Source::Poller).await
    }

    async fn changes_since_primary(&self, at: Position) -> Result<Feed> {
        feed::changes_since(self, at, feed::Source::Primary).await
    }

    async fn load_primary(&self) -> Result<Loaded> {
        feed::load_from(self, feed::Source::Primary).await
    }

    fn change_hints(&self, listen: bool, stop: CancellationToken) -> Option<Arc<Hints>> {
        if listen {
            self.notices.batch();
            tokio::spawn(feed::listen(
                self.config.clone(),
                self.tls.clone(),
                Arc::clone(&self.hints),
                Arc::clone(&self.notices),
                stop,
            ));
        }
        Some(Arc::clone(&self.hints))
    }

    async fn add_user(&self, name: Option<String>, actor: &Actor) -> Result<Committed<User>> {
        self.write(|mut client, notify| async move {
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
            let version = bump(&tx, None, self.config.keep_changes, notify).await?;
            tx.commit().await?;
            Ok(Committed {
                value: user,
                version,
            })
        })
        .await
    }

    async fn user(&self, id: u64) -> Result<User> {
        self.call(Lane::Api, self.config.timeout, |client| async move {
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
        self.write(|mut client, notify| async move {
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
            // The row just written, from what this call has: not read back.
            let credential = Credential {
                id,
                user_id: new.user_id,
                created: now,
                updated: now,
                status: CredentialStatus::as_read(
                    CredentialStatus::PendingFirstUse,
                    Some(new.expiry),
                    now,
                ),
                expiry_time: Some(new.expiry),
                description: new.description,
                wildcard: false,
                permitted_device: None,
                mode: Mode::Enforce,
            };
            audit(
                &tx,
                actor,
                Some(id),
                "credential.create",
                None,
                serde_json::to_value(&credential).ok(),
            )
            .await?;
            let version = bump(&tx, Some(id), self.config.keep_changes, notify).await?;
            tx.commit().await?;
            Ok(Committed {
                value: credential,
                version,
            })
        })
        .await
    }

    async fn credential(&self, id: u64) -> Result<Credential> {
        self.call(Lane::Api, self.config.timeout, |mut client| async move {
            let tx = client.transaction().await?;
            get_credential(&tx, id).await
        })
        .await
    }

    async fn credentials(&self, user_id: u64, page: Page) -> Result<Vec<Credential>> {
        self.call(Lane::Api, self.config.timeout, |mut client| async move {
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
        self.write(|client, notify| {
            writes::change(client, &self.config, target, change, max_ips, actor, notify)
        })
        .await
    }

    async fn ips(&self, credential_id: u64, page: Page) -> Result<Vec<PermittedIp>> {
        self.call(Lane::Api, self.config.timeout, |mut client| async move {
            let tx = client.transaction().await?;
            let q = page.sql(IP_COLUMNS, "entries", "credential_id = $1", '$');
            query_page(&tx, q, Some(credential_id as i64), ip_from_row).await
        })
        .await
    }

    async fn ip(&self, credential_id: u64, item_id: u64) -> Result<PermittedIp> {
        self.call(Lane::Api, self.config.timeout, |client| async move {
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
        self.call(Lane::Api, self.config.timeout, |mut client| async move {
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
        self.call(Lane::Api, self.config.timeout, |client| async move {
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
        self.call(Lane::Usage, self.config.timeout, |mut client| async move {
            let tx = client.transaction().await?;
            insight::record(&tx, &batch).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn refused(&self, credential_id: Option<u64>) -> Result<RefusedReport> {
        self.call(Lane::Api, self.config.timeout, |mut client| async move {
            let tx = client.transaction().await?;
            insight::refused(&tx, credential_id).await
        })
        .await
    }

    async fn unused(&self, since: Timestamp, user_id: Option<u64>) -> Result<UnusedReport> {
        self.call(Lane::Api, self.config.timeout, |mut client| async move {
            let tx = client.transaction().await?;
            insight::unused(&tx, since, user_id).await
        })
        .await
    }

    async fn suggest(&self, credential_id: u64) -> Result<Vec<Suggestion>> {
        self.call(Lane::Api, self.config.timeout, |mut client| async move {
            let tx = client.transaction().await?;
            insight::suggest(&tx, credential_id).await
        })
        .await
    }

    async fn mint_console_link(&self, link: NewConsoleLink, actor: &Actor) -> Result<()> {
        self.call(Lane::Api, self.config.timeout, |mut client| async move {
            let tx = client.transaction().await?;
            console_link::mint(&tx, &link, actor).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn use_console_link(
        &self,
        token_hash: String,
        from: std::net::IpAddr,
    ) -> Result<Option<crate::acl::Identity>> {
        self.call(Lane::Api, self.config.timeout, |mut client| async move {
            let tx = client.transaction().await?;
            let spent = console_link::spend(&tx, &token_hash, from).await?;
            tx.commit().await?;
            Ok(spent)
        })
        .await
    }

    async fn users(&self, page: Page) -> Result<Vec<User>> {
        self.call(Lane::Api, self.config.timeout, |mut client| async move {
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

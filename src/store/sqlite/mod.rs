//! The embedded store: one SQLite file, created and migrated on first use.
//!
//! Every call opens its own connection on the blocking pool: calls are rare (a poll a
//! second, an operator's command, a key holder's change), no runtime worker ever waits
//! on the disk, and a fresh open notices a file that went away instead of reading a
//! deleted inode forever. WAL journal with `synchronous=FULL` makes each committed
//! write durable before the call returns. Write transactions are `IMMEDIATE`: one
//! writer at a time across processes, so versions advance in commit order.

mod console_link;
mod feed;
mod file;
mod insight;
mod rows;
mod schema;
mod writes;

use super::feed::{Feed, Position};
use super::model::*;
use super::rules::{Change, Changed, Target};
use super::{Committed, Hints, Loaded, NewCredential, Result, Store, StoreError};
use super::{NewConsoleLink, RefusedReport, Suggestion, UnusedReport, UsageBatch};
use crate::config::SqliteConfig;
use async_trait::async_trait;
use file::FileError;
use rows::*;
use rusqlite::{params, OptionalExtension};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    config: SqliteConfig,
    /// Set once the file exists and is migrated. After that it is never created again:
    /// a file that vanishes is an error to report, not an empty whitelist to serve.
    ready: AtomicBool,
    /// Whether a missing (or empty) file may be created: `serve` and `admin init` only.
    create: bool,
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::unavailable(e)
    }
}

impl SqliteStore {
    /// The store in `config`'s file, created on first use if it is not there.
    pub fn new(config: SqliteConfig) -> Self {
        Self::with(config, true)
    }

    /// The store in `config`'s file, which must exist: a missing or empty file is
    /// [`StoreError::Missing`], and nothing is written to it.
    pub fn existing(config: SqliteConfig) -> Self {
        Self::with(config, false)
    }

    fn with(config: SqliteConfig, create: bool) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                ready: AtomicBool::new(false),
                create,
            }),
        }
    }

    /// Runs `f` on the blocking pool: SQLite calls block on the disk.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = Arc::clone(&self.inner);
        let path = self.inner.config.path.clone();
        let result = tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(StoreError::unavailable)?;
        // A log line about a failing file names the file.
        result.map_err(|e| match e {
            StoreError::Unavailable(source) => StoreError::unavailable(FileError { path, source }),
            other => other,
        })
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn load(&self) -> Result<Loaded> {
        self.blocking(Inner::load).await
    }

    async fn changes_since(&self, at: Position) -> Result<Feed> {
        self.blocking(move |s| s.changes_since(at)).await
    }

    fn change_hints(&self, _listen: bool, _stop: CancellationToken) -> Option<Arc<Hints>> {
        None
    }

    async fn add_user(&self, name: Option<String>, actor: &Actor) -> Result<Committed<User>> {
        let actor = actor.clone();
        self.blocking(move |s| {
            let keep = s.config.keep_changes;
            s.write(|tx| {
                let now = Timestamp::now();
                tx.execute(
                    "INSERT INTO users (name, created) VALUES (?1, ?2)",
                    params![name, now.0],
                )?;
                let user = User {
                    id: tx.last_insert_rowid() as u64,
                    name,
                    created: now,
                };
                audit(tx, &actor, None, "user.add", None, to_json(&user))?;
                let version = bump(tx, None, keep)?;
                Ok(Committed {
                    value: user,
                    version,
                })
            })
        })
        .await
    }

    async fn user(&self, id: u64) -> Result<User> {
        self.blocking(move |s| {
            s.read(|tx| {
                tx.query_row(
                    "SELECT id, name, created FROM users WHERE id = ?1",
                    [id],
                    |r| {
                        Ok(User {
                            id: r.get(0)?,
                            name: r.get(1)?,
                            created: Timestamp(r.get(2)?),
                        })
                    },
                )
                .optional()?
                .ok_or(StoreError::NotFound("user"))
            })
        })
        .await
    }

    async fn create_credential(
        &self,
        new: NewCredential,
        actor: &Actor,
    ) -> Result<Committed<Credential>> {
        let actor = actor.clone();
        self.blocking(move |s| {
            let keep = s.config.keep_changes;
            s.write(|tx| {
                let user_exists: bool = tx.query_row(
                    "SELECT EXISTS (SELECT 1 FROM users WHERE id = ?1)",
                    [new.user_id],
                    |r| r.get(0),
                )?;
                if !user_exists {
                    return Err(StoreError::NotFound("user"));
                }
                let now = Timestamp::now();
                tx.execute(
                    "INSERT INTO credentials \
                     (user_id, key_hash, status, description, created, updated, expiry) \
                     VALUES (?1, ?2, 'PENDING_FIRST_USE', ?3, ?4, ?4, ?5)",
                    params![
                        new.user_id,
                        &new.key.0[..],
                        new.description,
                        now.0,
                        new.expiry.0
                    ],
                )?;
                let credential = get_credential(tx, tx.last_insert_rowid() as u64)?;
                let id = credential.id;
                audit(
                    tx,
                    &actor,
                    Some(id),
                    "credential.create",
                    None,
                    to_json(&credential),
                )?;
                let version = bump(tx, Some(id), keep)?;
                Ok(Committed {
                    value: credential,
                    version,
                })
            })
        })
        .await
    }

    async fn credential(&self, id: u64) -> Result<Credential> {
        self.blocking(move |s| s.read(|tx| get_credential(tx, id)))
            .await
    }

    async fn credentials(&self, user_id: u64, page: Page) -> Result<Vec<Credential>> {
        self.blocking(move |s| {
            s.read(|tx| {
                let q = page.sql(CREDENTIAL_COLUMNS, "credentials", "user_id = ?1", '?');
                query_page(tx, q, Some(user_id), credential_from_row)
            })
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
        let actor = actor.clone();
        self.blocking(move |s| s.change(target, &change, max_ips, &actor))
            .await
    }

    async fn ips(&self, credential_id: u64, page: Page) -> Result<Vec<PermittedIp>> {
        self.blocking(move |s| {
            s.read(|tx| {
                let q = page.sql(IP_COLUMNS, "entries", "credential_id = ?1", '?');
                query_page(tx, q, Some(credential_id), ip_from_row)
            })
        })
        .await
    }

    async fn ip(&self, credential_id: u64, item_id: u64) -> Result<PermittedIp> {
        self.blocking(move |s| s.read(|tx| get_ip(tx, credential_id, item_id)))
            .await
    }

    async fn audit(&self, credential_id: Option<u64>, page: Page) -> Result<Vec<AuditEntry>> {
        self.blocking(move |s| {
            s.read(|tx| {
                let columns = "id, at, actor, actor_ip, credential_id, action, before, after";
                let filter = if credential_id.is_some() {
                    "credential_id = ?1"
                } else {
                    "1 = 1"
                };
                let q = page.sql(columns, "audit_log", filter, '?');
                let json = |s: Option<String>| s.and_then(|s| serde_json::from_str(&s).ok());
                query_page(tx, q, credential_id, |r| {
                    Ok(AuditEntry {
                        id: r.get(0)?,
                        at: Timestamp(r.get(1)?),
                        actor: r.get(2)?,
                        actor_ip: r.get(3)?,
                        credential_id: r.get(4)?,
                        action: r.get(5)?,
                        before: json(r.get(6)?),
                        after: json(r.get(7)?),
                    })
                })
            })
        })
        .await
    }

    async fn usage(&self, user_id: Option<u64>) -> Result<Vec<Usage>> {
        self.blocking(move |s| {
            s.read(|tx| {
                let sql = format!(
                    "SELECT c.id, c.user_id, c.status, c.wildcard, c.expiry, \
                     (SELECT COUNT(*) FROM permitted_ips p \
                      WHERE p.credential_id = c.id AND p.status = 'ACTIVE') \
                     FROM credentials c WHERE c.status <> 'REVOKED' {} ORDER BY c.id",
                    if user_id.is_some() {
                        "AND c.user_id = ?1"
                    } else {
                        ""
                    }
                );
                let mut stmt = tx.prepare(&sql)?;
                let now = Timestamp::now();
                let map = |r: &rusqlite::Row<'_>| {
                    let status: String = r.get(2)?;
                    let expiry = r.get::<_, Option<i64>>(4)?.map(Timestamp);
                    Ok(Usage {
                        credential_id: r.get(0)?,
                        user_id: r.get(1)?,
                        status: CredentialStatus::as_read(parse_column(2, &status)?, expiry, now),
                        wildcard: r.get(3)?,
                        active_ips: r.get(5)?,
                    })
                };
                let rows: rusqlite::Result<Vec<Usage>> = match user_id {
                    Some(id) => stmt.query_map([id], map)?.collect(),
                    None => stmt.query_map([], map)?.collect(),
                };
                Ok(rows?)
            })
        })
        .await
    }

    async fn record_usage(&self, batch: UsageBatch) -> Result<()> {
        self.blocking(move |s| s.write(|tx| insight::record(tx, &batch)))
            .await
    }

    async fn refused(&self, credential_id: Option<u64>) -> Result<RefusedReport> {
        self.blocking(move |s| s.read(|tx| insight::refused(tx, credential_id)))
            .await
    }

    async fn unused(&self, since: Timestamp, user_id: Option<u64>) -> Result<UnusedReport> {
        self.blocking(move |s| s.read(|tx| insight::unused(tx, since, user_id)))
            .await
    }

    async fn suggest(&self, credential_id: u64) -> Result<Vec<Suggestion>> {
        self.blocking(move |s| s.read(|tx| insight::suggest(tx, credential_id)))
            .await
    }

    async fn mint_console_link(&self, link: NewConsoleLink, actor: &Actor) -> Result<()> {
        let actor = actor.clone();
        self.blocking(move |s| s.write(|tx| console_link::mint(tx, &link, &actor)))
            .await
    }

    async fn use_console_link(
        &self,
        token_hash: String,
        from: std::net::IpAddr,
    ) -> Result<Option<crate::acl::Identity>> {
        self.blocking(move |s| s.write(|tx| console_link::spend(tx, &token_hash, from)))
            .await
    }

    async fn users(&self, page: Page) -> Result<Vec<User>> {
        self.blocking(move |s| {
            s.read(|tx| {
                let q = page.sql("id, name, created", "users", "1 = 1", '?');
                query_page(tx, q, None::<u64>, |r| {
                    Ok(User {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        created: Timestamp(r.get(2)?),
                    })
                })
            })
        })
        .await
    }
}

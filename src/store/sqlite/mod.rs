//! The embedded store: one SQLite file, created and migrated on first use.
//!
//! Every call opens its own connection on the blocking pool: calls are rare (a poll a
//! second, an operator's command, a key holder's change), no runtime worker ever waits
//! on the disk, and a fresh open notices a file that went away instead of reading a
//! deleted inode forever. WAL journal with `synchronous=FULL` makes each committed
//! write durable before the call returns. Write transactions are `IMMEDIATE`: one
//! writer at a time across processes, so versions advance in commit order.

mod insight;
mod rows;
mod schema;

use super::feed::{continuation, CredentialChange, Delta, Feed, Position};
use super::model::*;
use super::rules::{self, Change, Changed, Target};
use super::{Committed, Loaded, NewCredential, Result, Store, StoreError};
use super::{RefusedReport, Suggestion, UnusedReport, UsageBatch};
use crate::acl::SnapshotBuilder;
use crate::config::SqliteConfig;
use async_trait::async_trait;
use rows::*;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Transaction};
use schema::MIGRATIONS;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Credentials read per query when a delta names many.
const IDS_PER_QUERY: usize = 500;

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

/// Switches the file to WAL. That needs the file to itself for a moment, and SQLite
/// answers BUSY at once, without waiting in the busy handler, when another connection
/// (a gateway or `ipgate admin` starting at the same time) holds a lock: so wait here,
/// as long as the busy handler would. Runs on the blocking pool.
fn set_wal(conn: &Connection) -> Result<()> {
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Ok(()) => return Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// How many migrations the file has had: 0 for a new or empty file.
fn schema_version(conn: &Connection) -> Result<i64> {
    Ok(conn.pragma_query_value(None, "user_version", |r| r.get(0))?)
}

#[derive(Debug, thiserror::Error)]
#[error("SQLite store {}", path.display())]
struct FileError {
    path: std::path::PathBuf,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl Inner {
    fn connect(&self) -> Result<Connection> {
        let ready = self.ready.load(Ordering::Acquire);
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if !ready && self.create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let missing = || StoreError::Missing(format!("sqlite {}", self.config.path.display()));
        if !ready && !self.create && !self.config.path.exists() {
            return Err(missing());
        }
        let mut conn = Connection::open_with_flags(&self.config.path, flags)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "foreign_keys", true)?;
        if !ready {
            // Checked before WAL is switched on, which would write to the file: an
            // empty file (or one that is not ipgate's) is left as it was.
            if !self.create && schema_version(&conn)? == 0 {
                return Err(missing());
            }
            set_wal(&conn)?;
            self.migrate(&mut conn)?;
            self.ready.store(true, Ordering::Release);
        }
        // FULL: the WAL is synced at every commit, so an acknowledged write survives a
        // power cut, not only a crash of this process.
        conn.pragma_update(None, "synchronous", "FULL")?;
        Ok(conn)
    }

    /// Applies the migrations the file lacks, under the write lock, reading the file's
    /// version only once the lock is held: two processes starting together cannot both
    /// apply one.
    fn migrate(&self, conn: &mut Connection) -> Result<()> {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let found: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let known = MIGRATIONS.len() as i64;
        if found > known {
            return Err(StoreError::Incompatible(format!(
                "{} has schema version {found}, newer than this ipgate ({known}); \
                 it is not touched",
                self.config.path.display()
            )));
        }
        for migration in &MIGRATIONS[found as usize..] {
            let store_id = super::random_stamp()?;
            tx.execute_batch(&migration.replace("{store_id}", &store_id.to_string()))?;
        }
        tx.pragma_update(None, "user_version", known)?;
        tx.commit()?;
        Ok(())
    }

    /// Runs `f` in an immediate (write) transaction.
    fn write<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut conn = self.connect()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// Runs `f` in a read transaction: one consistent view of the file (WAL).
    fn read<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut conn = self.connect()?;
        let tx = conn.transaction()?;
        f(&tx)
    }

    fn load(&self) -> Result<Loaded> {
        self.read(|tx| {
            let (store_id, version, _) = read_meta(tx)?;
            let stamp = if version == 0 {
                0
            } else {
                stamp_at(tx, version)?.unwrap_or(0)
            };
            let count: i64 = tx.query_row("SELECT COUNT(*) FROM credentials", [], |r| r.get(0))?;
            let mut builder = SnapshotBuilder::new(version, count as usize);
            let mut damaged = Vec::new();
            stored_credentials(tx, None, |stored| match stored.into_change() {
                CredentialChange::Readable(key, c) => builder.insert(key, c),
                broken => {
                    if let Some((key, c)) = broken.entry(None) {
                        builder.insert(key, c);
                    }
                    damaged.push(broken);
                }
            })?;
            Ok(Loaded {
                snapshot: builder.build(),
                position: Position {
                    store_id,
                    version,
                    stamp,
                },
                damaged,
            })
        })
    }

    fn changes_since(&self, at: Position) -> Result<Feed> {
        self.read(|tx| {
            let (store_id, version, pruned) = read_meta(tx)?;
            let stamp = if at.version == 0 {
                None
            } else {
                stamp_at(tx, at.version)?
            };
            if let Some(reason) = continuation(&at, store_id, version, pruned, stamp) {
                return Ok(Feed::Resync(reason));
            }
            if version == at.version {
                return Ok(Feed::Unchanged);
            }
            let (committed, ids, last_stamp) = changes_after(tx, at.version)?;
            let mut changed = Vec::with_capacity(ids.len());
            for chunk in ids.chunks(IDS_PER_QUERY) {
                stored_credentials(tx, Some(chunk), |s| changed.push(s.into_change()))?;
            }
            Ok(Feed::Changes(Delta {
                to: Position {
                    store_id,
                    version,
                    stamp: last_stamp.unwrap_or(0),
                },
                changed,
                committed,
            }))
        })
    }

    fn change(
        &self,
        target: Target,
        change: &Change,
        max_ips: usize,
        actor: &Actor,
    ) -> Result<Committed<Changed>> {
        self.write(|tx| {
            let id = match target {
                Target::Id(id) => id,
                Target::Key(key) => credential_id_by_key(tx, &key.0)?
                    .ok_or_else(|| StoreError::Rejected(rules::REGISTRATION_REFUSED.into()))?,
            };
            let before = read_record(tx, id)?;
            let now = Timestamp::now();
            let plan = rules::plan(change, &before, now, max_ips)?;
            if plan.is_empty() {
                let (_, version, _) = read_meta(tx)?;
                return Ok(Committed {
                    value: rules::changed(change, before),
                    version,
                });
            }
            apply(tx, id, &plan, now)?;
            let after = read_record(tx, id)?;
            let (b, a) = rules::audit_values(change, &before, &after);
            let actor = rules::audit_actor(change, id, actor);
            audit(tx, &actor, Some(id), plan.action, b, a)?;
            let version = bump(tx, Some(id), self.config.keep_changes)?;
            Ok(Committed {
                value: rules::changed(change, after),
                version,
            })
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

    fn change_hints(&self, _stop: CancellationToken) -> Option<Arc<Notify>> {
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

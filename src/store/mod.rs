//! The source of truth: users, credentials, permitted IPs, the audit log, and the
//! change feed that gateways follow.
//!
//! [`Store`] is the one interface the rest of the program uses. Two backends implement
//! it: the embedded SQLite file ([`SqliteStore`]) for one gateway, and PostgreSQL
//! ([`PostgresStore`]) for a fleet. The rules both enforce live in [`rules`]; the feed
//! both publish is described in [`feed`]. Every write is durable before its call
//! returns and reports the version it committed at. The hot path never calls a store:
//! it reads snapshots the poller builds.

pub mod console_link;
mod feed;
mod hints;
pub mod insight;
mod model;
mod postgres;
pub mod rules;
mod sqlite;

pub use console_link::NewConsoleLink;
pub use feed::{
    continuation, CredentialChange, Delta, Feed, Position, ResyncReason, StoredCredential,
};
pub use hints::{Heard, Hints};
pub use insight::{RefusedReport, Sighting, Suggestion, UnusedReport, UsageBatch, REFUSED_KEPT};
pub use model::{
    Actor, AuditEntry, Credential, CredentialStatus, Device, IpStatus, Mode, Page, PermittedIp,
    Timestamp, Usage, User,
};
pub use postgres::PostgresStore;
pub use rules::{Change, Changed, Target};
pub use sqlite::SqliteStore;

use crate::acl::{Identity, KeyHash, Snapshot};
use crate::config::StoreConfig;
use async_trait::async_trait;
use std::net::IpAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A rule refused the change; nothing was written. The text is fit for the caller.
    #[error("{0}")]
    Rejected(String),
    /// The store could not be read or written; nothing was changed.
    #[error("store unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The store's schema is newer than this binary: it is not touched.
    #[error("{0}")]
    Incompatible(String),
    /// No store where the configuration points (no file, an empty one, or a database
    /// without ipgate's schema), and this caller may not create one.
    #[error("no ipgate store at {0}")]
    Missing(String),
}

impl StoreError {
    pub fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError::Unavailable(Box::new(e))
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What a write returns: its result and the version it committed at (the version it
/// found, for a change that changed nothing).
#[derive(Clone, Debug)]
pub struct Committed<T> {
    pub value: T,
    pub version: u64,
}

/// A new credential and the one moment its key is known.
#[derive(Clone, Debug)]
pub struct NewCredential {
    pub user_id: u64,
    pub key: KeyHash,
    pub description: Option<String>,
    /// By when the device must be registered.
    pub expiry: Timestamp,
}

/// Everything the hot path needs, as of one position.
pub struct Loaded {
    pub snapshot: Snapshot,
    pub position: Position,
    /// Credentials whose stored record could not be read (refused in the snapshot).
    pub damaged: Vec<CredentialChange>,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Every credential, read in one consistent view.
    async fn load(&self) -> Result<Loaded>;
    /// What changed after `at`, read in one consistent view.
    async fn changes_since(&self, at: Position) -> Result<Feed>;
    /// [`Store::changes_since`] read where every acknowledged commit already is. The
    /// same for a store without a read replica; with one, the primary: a write this
    /// gateway made is enforced before its answer, however far the replica lags.
    async fn changes_since_primary(&self, at: Position) -> Result<Feed> {
        self.changes_since(at).await
    }
    /// [`Store::load`] from where every acknowledged commit already is.
    async fn load_primary(&self) -> Result<Loaded> {
        self.load().await
    }
    /// What this store tells its poller between polls ([`Hints`]): that it answers
    /// again after failing, and, when `listen` and the backend can tell, each commit
    /// another writer announces (until `stop`). `None`: poll only.
    fn change_hints(&self, listen: bool, stop: CancellationToken) -> Option<Arc<Hints>>;

    async fn add_user(&self, name: Option<String>, actor: &Actor) -> Result<Committed<User>>;
    async fn user(&self, id: u64) -> Result<User>;
    /// Every user, newest first.
    async fn users(&self, page: Page) -> Result<Vec<User>>;

    async fn create_credential(
        &self,
        new: NewCredential,
        actor: &Actor,
    ) -> Result<Committed<Credential>>;
    async fn credential(&self, id: u64) -> Result<Credential>;
    async fn credentials(&self, user_id: u64, page: Page) -> Result<Vec<Credential>>;
    /// Applies one change to one credential under [`rules`]: locked, checked, written,
    /// audited and versioned in one transaction. `max_ips` is the ACTIVE entry limit.
    async fn change(
        &self,
        target: Target,
        change: Change,
        max_ips: usize,
        actor: &Actor,
    ) -> Result<Committed<Changed>>;

    async fn ips(&self, credential_id: u64, page: Page) -> Result<Vec<PermittedIp>>;
    async fn ip(&self, credential_id: u64, item_id: u64) -> Result<PermittedIp>;

    /// Newest first.
    async fn audit(&self, credential_id: Option<u64>, page: Page) -> Result<Vec<AuditEntry>>;

    /// ACTIVE entries per credential (of one user, or all), by credential id. REVOKED
    /// credentials are not billed, so not listed.
    async fn usage(&self, user_id: Option<u64>) -> Result<Vec<Usage>>;

    /// Adds one gateway's counts of what it saw to every gateway's (see [`insight`]).
    /// Not a change to any credential: no version, no audit row.
    async fn record_usage(&self, batch: UsageBatch) -> Result<()>;
    /// Refused addresses of valid keys, of one credential or all, most recent first.
    async fn refused(&self, credential_id: Option<u64>) -> Result<RefusedReport>;
    /// ACTIVE entries and ACTIVE credentials with no allowed request since `since`
    /// (entries and credentials created since then are not counted as unused).
    async fn unused(&self, since: Timestamp, user_id: Option<u64>) -> Result<UnusedReport>;
    /// Every address a credential was used from, allowed or refused, busiest first.
    async fn suggest(&self, credential_id: u64) -> Result<Vec<Suggestion>>;

    /// Keeps a console link for an existing credential, audited ([`console_link`]).
    async fn mint_console_link(&self, link: NewConsoleLink, actor: &Actor) -> Result<()>;
    /// Spends the link whose token hashes to `token_hash`, opened from `from`: its
    /// credential, once, before it expires, while the credential is ACTIVE; audited.
    /// `None` for an unknown, spent or expired link alike: the answer is no oracle.
    async fn use_console_link(&self, token_hash: String, from: IpAddr) -> Result<Option<Identity>>;
}

/// Opens the configured store, creating it (the file, or the schema) on the first call
/// if it is not there: for `serve` and `ipgate admin init` only. Nothing is created or
/// connected until the first call.
pub fn open(config: &StoreConfig) -> Result<Arc<dyn Store>> {
    Ok(match config {
        StoreConfig::Sqlite(c) => Arc::new(SqliteStore::new(c.clone())),
        StoreConfig::Postgres(c) => Arc::new(PostgresStore::new(c)?),
    })
}

/// Opens the configured store only if it exists: the first call fails with
/// [`StoreError::Missing`] instead of creating an empty store where a typo points.
/// An existing store older than this binary is still migrated.
pub fn open_existing(config: &StoreConfig) -> Result<Arc<dyn Store>> {
    Ok(match config {
        StoreConfig::Sqlite(c) => Arc::new(SqliteStore::existing(c.clone())),
        StoreConfig::Postgres(c) => Arc::new(PostgresStore::existing(c)?),
    })
}

/// A random stamp for a new version (or a new store's identity). Never 0, which means
/// "no stamp".
pub(crate) fn random_stamp() -> Result<i64> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| StoreError::Unavailable(e.to_string().into()))?;
    // 63 random bits, odd: positive and never 0.
    Ok((u64::from_le_bytes(b) >> 1) as i64 | 1)
}

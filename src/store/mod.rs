//! The source of truth: users, credentials, permitted IPs, the audit log and a change
//! version that every write bumps.
//!
//! [`Store`] is the small interface the rest of the program uses; backends live beside
//! it (the embedded SQLite one first). Every write is durable before the call returns.
//! The hot path never calls a store: it reads snapshots that the poller builds with
//! [`Store::load_snapshot`].

mod model;
mod sqlite;

pub use model::{
    Actor, AuditEntry, Credential, CredentialStatus, Device, IpStatus, Page, PermittedIp,
    Timestamp, Usage, User,
};
pub use sqlite::SqliteStore;

use crate::acl::{KeyHash, Snapshot, SnapshotCredential};
use crate::config::StoreConfig;
use std::net::IpAddr;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A rule refused the change; nothing was written. The text is fit for the caller.
    #[error("{0}")]
    Rejected(String),
    /// The store could not be read or written.
    #[error("store unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A new credential and the one moment its key is known.
pub struct NewCredential<'a> {
    pub user_id: u64,
    pub key: &'a KeyHash,
    pub description: Option<&'a str>,
    /// Unix microseconds by which the device must be registered.
    pub expiry: Timestamp,
}

/// A device registration as received.
pub struct Registration<'a> {
    pub key: &'a KeyHash,
    pub description: &'a str,
    /// Already normalised and de-duplicated; never empty.
    pub ips: &'a [IpAddr],
    pub caller: IpAddr,
    pub max_ips: usize,
}

pub trait Store: Send + Sync + 'static {
    /// A number that changes whenever anything the snapshot depends on changes.
    fn change_version(&self) -> Result<u64>;
    /// One consistent read of everything the hot path needs.
    fn load_snapshot(&self) -> Result<Snapshot>;
    /// One credential as the hot path sees it, and the change version it was read at.
    fn load_credential(&self, id: u64) -> Result<(u64, KeyHash, SnapshotCredential)>;

    fn add_user(&self, name: Option<&str>, actor: &Actor) -> Result<User>;
    fn user(&self, id: u64) -> Result<User>;

    fn create_credential(&self, new: NewCredential<'_>, actor: &Actor) -> Result<Credential>;
    fn credential(&self, id: u64) -> Result<Credential>;
    fn credentials(&self, user_id: u64, page: Page) -> Result<Vec<Credential>>;
    fn revoke_credential(&self, id: u64, actor: &Actor) -> Result<Credential>;
    fn set_wildcard(&self, id: u64, on: bool, actor: &Actor) -> Result<Credential>;
    fn register_device(&self, reg: Registration<'_>) -> Result<Credential>;

    fn ips(&self, credential_id: u64, page: Page) -> Result<Vec<PermittedIp>>;
    fn ip(&self, credential_id: u64, item_id: u64) -> Result<PermittedIp>;
    /// Adds an entry; refuses a duplicate address or more than `max_ips` ACTIVE entries.
    fn add_ip(
        &self,
        credential_id: u64,
        ip: IpAddr,
        status: IpStatus,
        max_ips: usize,
        actor: &Actor,
    ) -> Result<PermittedIp>;
    fn set_ip_status(
        &self,
        credential_id: u64,
        item_id: u64,
        status: IpStatus,
        max_ips: usize,
        actor: &Actor,
    ) -> Result<PermittedIp>;

    /// Newest first.
    fn audit(&self, credential_id: Option<u64>, page: Page) -> Result<Vec<AuditEntry>>;

    /// ACTIVE entries per credential (of one user, or all), by credential id.
    fn usage(&self, user_id: Option<u64>) -> Result<Vec<Usage>>;
}

/// Opens the configured store. Nothing is touched on disk until the first call.
pub fn open(config: &StoreConfig) -> Arc<dyn Store> {
    match config {
        StoreConfig::Sqlite { path } => Arc::new(SqliteStore::new(path.clone())),
    }
}

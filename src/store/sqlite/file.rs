//! Opening the SQLite file: created and switched to WAL on first use, migrated under
//! the write lock, every connection with the busy timeout and `synchronous=FULL`; and
//! the two kinds of transaction every call runs in.

use super::super::{Result, StoreError};
use super::schema::MIGRATIONS;
use super::Inner;
use rusqlite::{Connection, OpenFlags, Transaction};
use std::sync::atomic::Ordering;
use std::time::Duration;

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

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

/// A failure of the file, naming it in the log line.
#[derive(Debug, thiserror::Error)]
#[error("SQLite store {}", path.display())]
pub(super) struct FileError {
    pub(super) path: std::path::PathBuf,
    #[source]
    pub(super) source: Box<dyn std::error::Error + Send + Sync>,
}

impl Inner {
    pub(super) fn connect(&self) -> Result<Connection> {
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
            let store_id = super::super::random_stamp()?;
            tx.execute_batch(&migration.replace("{store_id}", &store_id.to_string()))?;
        }
        tx.pragma_update(None, "user_version", known)?;
        tx.commit()?;
        Ok(())
    }

    /// Runs `f` in an immediate (write) transaction.
    pub(super) fn write<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut conn = self.connect()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// Runs `f` in a read transaction: one consistent view of the file (WAL).
    pub(super) fn read<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut conn = self.connect()?;
        let tx = conn.transaction()?;
        f(&tx)
    }
}

/// How many migrations the file has had: 0 for a new or empty file.
fn schema_version(conn: &Connection) -> Result<i64> {
    Ok(conn.pragma_query_value(None, "user_version", |r| r.get(0))?)
}

//! The embedded store: one SQLite file, created and migrated on first use.
//!
//! Every call opens its own connection: calls are rare (a poll a second, an operator's
//! command, a key holder's change), and a fresh open notices a file that went away
//! instead of reading a deleted inode forever. WAL journal with `synchronous=FULL`
//! makes each committed write durable before the call returns; every write transaction
//! bumps `change_version` so pollers in any process see it.

use super::model::*;
use super::{NewCredential, Registration, Result, Store, StoreError};
use crate::acl::{
    CredentialState, IpSet, KeyHash, Snapshot, SnapshotBuilder, SnapshotCredential, NEVER,
};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row, Transaction};
use serde_json::json;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const SCHEMA_VERSION: i64 = 1;
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (name, value) VALUES ('change_version', 0);
CREATE TABLE IF NOT EXISTS users (
    id      INTEGER PRIMARY KEY,
    name    TEXT,
    created INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS credentials (
    id                 INTEGER PRIMARY KEY,
    user_id            INTEGER NOT NULL REFERENCES users(id),
    key_hash           BLOB NOT NULL UNIQUE,
    status             TEXT NOT NULL,
    wildcard           INTEGER NOT NULL DEFAULT 0,
    description        TEXT,
    created            INTEGER NOT NULL,
    updated            INTEGER NOT NULL,
    expiry             INTEGER,
    device_description TEXT,
    device_ip          TEXT
);
CREATE INDEX IF NOT EXISTS credentials_by_user ON credentials (user_id, id);
CREATE TABLE IF NOT EXISTS permitted_ips (
    id            INTEGER PRIMARY KEY,
    credential_id INTEGER NOT NULL REFERENCES credentials(id),
    ip            TEXT NOT NULL,
    status        TEXT NOT NULL,
    created       INTEGER NOT NULL,
    updated       INTEGER NOT NULL,
    UNIQUE (credential_id, ip)
);
CREATE TABLE IF NOT EXISTS audit_log (
    id            INTEGER PRIMARY KEY,
    at            INTEGER NOT NULL,
    actor         TEXT NOT NULL,
    actor_ip      TEXT,
    credential_id INTEGER,
    action        TEXT NOT NULL,
    before        TEXT,
    after         TEXT
);
CREATE INDEX IF NOT EXISTS audit_by_credential ON audit_log (credential_id, id);
";

pub struct SqliteStore {
    path: PathBuf,
    /// Set once the file exists and is migrated. After that it is never created again:
    /// a file that vanishes is an error to report, not an empty whitelist to serve.
    ready: AtomicBool,
}

fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Unavailable(Box::new(e))
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        unavailable(e)
    }
}

impl SqliteStore {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            ready: AtomicBool::new(false),
        }
    }

    fn connect(&self) -> Result<Connection> {
        let ready = self.ready.load(Ordering::Acquire);
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if !ready {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let conn = Connection::open_with_flags(&self.path, flags)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "foreign_keys", true)?;
        if !ready {
            conn.pragma_update(None, "journal_mode", "WAL")?;
            self.migrate(&conn)?;
            self.ready.store(true, Ordering::Release);
        }
        // FULL: the WAL is synced at every commit, so an acknowledged write survives a
        // power cut, not only a crash of this process.
        conn.pragma_update(None, "synchronous", "FULL")?;
        Ok(conn)
    }

    fn migrate(&self, conn: &Connection) -> Result<()> {
        let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::Rejected(format!(
                "{} has schema version {found}, newer than this ipgate ({SCHEMA_VERSION})",
                self.path.display()
            )));
        }
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
        ))?;
        Ok(())
    }

    /// Runs `f` in an immediate (write) transaction that bumps the change version.
    fn write<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut conn = self.connect()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.execute(
            "UPDATE meta SET value = value + 1 WHERE name = 'change_version'",
            [],
        )?;
        tx.commit()?;
        Ok(out)
    }

    fn read<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut conn = self.connect()?;
        let tx = conn.transaction()?;
        f(&tx)
    }
}

const CREDENTIAL_COLUMNS: &str = "id, user_id, status, wildcard, description, created, updated, \
     expiry, device_description, device_ip";

fn credential_from_row(row: &Row<'_>) -> rusqlite::Result<Credential> {
    let status: String = row.get(2)?;
    let device_description: Option<String> = row.get(8)?;
    let device_ip: Option<String> = row.get(9)?;
    Ok(Credential {
        id: row.get(0)?,
        user_id: row.get(1)?,
        status: parse_column(2, &status)?,
        wildcard: row.get(3)?,
        description: row.get(4)?,
        created: Timestamp(row.get(5)?),
        updated: Timestamp(row.get(6)?),
        expiry_time: row.get::<_, Option<i64>>(7)?.map(Timestamp),
        permitted_device: match (device_description, device_ip) {
            (Some(description), Some(ip)) => Some(Device {
                description,
                ip: parse_column(9, &ip)?,
            }),
            _ => None,
        },
    })
}

const IP_COLUMNS: &str = "id, credential_id, ip, status, created, updated";

fn ip_from_row(row: &Row<'_>) -> rusqlite::Result<PermittedIp> {
    let ip: String = row.get(2)?;
    let status: String = row.get(3)?;
    Ok(PermittedIp {
        id: row.get(0)?,
        credential_id: row.get(1)?,
        ip: parse_column(2, &ip)?,
        status: parse_column(3, &status)?,
        created: Timestamp(row.get(4)?),
        updated: Timestamp(row.get(5)?),
    })
}

/// A stored text that must parse; a row that does not is a damaged store.
fn parse_column<T: std::str::FromStr>(index: usize, s: &str) -> rusqlite::Result<T> {
    s.parse().map_err(|_| {
        rusqlite::Error::FromSqlConversionFailure(
            index,
            rusqlite::types::Type::Text,
            format!("unexpected value {s:?}").into(),
        )
    })
}

fn read_version(tx: &Transaction<'_>) -> Result<u64> {
    let v: i64 = tx.query_row(
        "SELECT value FROM meta WHERE name = 'change_version'",
        [],
        |r| r.get(0),
    )?;
    Ok(v as u64)
}

/// Every credential (or only `only`) with its ACTIVE addresses, as the hot path sees it,
/// in one ordered pass: rows of one credential are consecutive, so nothing is held
/// beyond the credential being assembled (a million of them fit in the snapshot alone).
fn snapshot_rows(
    tx: &Transaction<'_>,
    only: Option<u64>,
    mut each: impl FnMut(KeyHash, SnapshotCredential),
) -> Result<()> {
    let sql = format!(
        "SELECT c.id, c.user_id, c.key_hash, c.status, c.wildcard, c.expiry, p.ip \
         FROM credentials c \
         LEFT JOIN permitted_ips p ON p.credential_id = c.id AND p.status = 'ACTIVE' \
         {} ORDER BY c.id",
        if only.is_some() {
            "WHERE c.id = ?1"
        } else {
            ""
        }
    );
    let mut stmt = tx.prepare(&sql)?;
    let mut rows = match only {
        Some(id) => stmt.query([id])?,
        None => stmt.query([])?,
    };
    let mut current: Option<(KeyHash, SnapshotCredential, Vec<IpAddr>)> = None;
    while let Some(row) = rows.next()? {
        let id: u64 = row.get(0)?;
        if current.as_ref().is_none_or(|(_, c, _)| c.id != id) {
            if let Some((key, mut credential, ips)) = current.take() {
                credential.active_ips = IpSet::new(ips);
                each(key, credential);
            }
            let hash: Vec<u8> = row.get(2)?;
            let status: String = row.get(3)?;
            let state = match parse_column::<CredentialStatus>(3, &status)? {
                CredentialStatus::PendingFirstUse => CredentialState::PendingFirstUse,
                CredentialStatus::Active => CredentialState::Active,
                CredentialStatus::Revoked => CredentialState::Revoked,
            };
            let key = KeyHash::from_slice(&hash).ok_or_else(|| {
                StoreError::Rejected(format!("credential {id} has a damaged key hash"))
            })?;
            let credential = SnapshotCredential {
                id,
                user_id: row.get(1)?,
                state,
                expires_at: row
                    .get::<_, Option<i64>>(5)?
                    .map_or(NEVER, |t| Timestamp(t).unix_seconds()),
                wildcard: row.get(4)?,
                active_ips: IpSet::default(),
            };
            current = Some((key, credential, Vec::new()));
        }
        if let (Some(text), Some((_, _, ips))) =
            (row.get::<_, Option<String>>(6)?, current.as_mut())
        {
            ips.push(parse_column(6, &text)?);
        }
    }
    if let Some((key, mut credential, ips)) = current {
        credential.active_ips = IpSet::new(ips);
        each(key, credential);
    }
    Ok(())
}

fn get_credential(tx: &Transaction<'_>, id: u64) -> Result<Credential> {
    tx.query_row(
        &format!("SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE id = ?1"),
        [id],
        credential_from_row,
    )
    .optional()?
    .ok_or(StoreError::NotFound("credential"))
}

fn get_ip(tx: &Transaction<'_>, credential_id: u64, item_id: u64) -> Result<PermittedIp> {
    tx.query_row(
        &format!("SELECT {IP_COLUMNS} FROM permitted_ips WHERE id = ?1 AND credential_id = ?2"),
        [item_id, credential_id],
        ip_from_row,
    )
    .optional()?
    .ok_or(StoreError::NotFound("permitted IP"))
}

fn find_ip(tx: &Transaction<'_>, credential_id: u64, ip: IpAddr) -> Result<Option<PermittedIp>> {
    Ok(tx
        .query_row(
            &format!("SELECT {IP_COLUMNS} FROM permitted_ips WHERE credential_id = ?1 AND ip = ?2"),
            params![credential_id, ip.to_string()],
            ip_from_row,
        )
        .optional()?)
}

fn audit(
    tx: &Transaction<'_>,
    actor: &Actor,
    credential_id: Option<u64>,
    action: &str,
    before: Option<serde_json::Value>,
    after: Option<serde_json::Value>,
) -> Result<()> {
    tx.execute(
        "INSERT INTO audit_log (at, actor, actor_ip, credential_id, action, before, after) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            Timestamp::now().0,
            actor.who,
            actor.ip.map(|ip| ip.to_string()),
            credential_id,
            action,
            before.map(|v| v.to_string()),
            after.map(|v| v.to_string()),
        ],
    )?;
    Ok(())
}

fn to_json<T: serde::Serialize>(value: &T) -> Option<serde_json::Value> {
    serde_json::to_value(value).ok()
}

/// Newest-first paging over `table` rows matching `filter` (which binds `?1`).
fn page_query(columns: &str, table: &str, filter: &str, page: Page) -> (String, Option<u64>) {
    let limit = page.count;
    match (page.older_id, page.newer_id) {
        (_, Some(newer)) => (
            format!(
                "SELECT * FROM (SELECT {columns} FROM {table} WHERE {filter} AND id > ?2 \
                 ORDER BY id ASC LIMIT {limit}) ORDER BY id DESC"
            ),
            Some(newer),
        ),
        (Some(older), None) => (
            format!(
                "SELECT {columns} FROM {table} WHERE {filter} AND id < ?2 \
                 ORDER BY id DESC LIMIT {limit}"
            ),
            Some(older),
        ),
        (None, None) => (
            format!("SELECT {columns} FROM {table} WHERE {filter} ORDER BY id DESC LIMIT {limit}"),
            None,
        ),
    }
}

fn query_page<T>(
    tx: &Transaction<'_>,
    (sql, bound): (String, Option<u64>),
    first: Option<u64>,
    map: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>> {
    let mut stmt = tx.prepare(&sql)?;
    let rows: rusqlite::Result<Vec<T>> = match (first, bound) {
        (Some(a), Some(b)) => stmt.query_map(params![a, b], map)?.collect(),
        (Some(a), None) => stmt.query_map(params![a], map)?.collect(),
        (None, Some(b)) => stmt.query_map(params![b, b], map)?.collect(),
        (None, None) => stmt.query_map([], map)?.collect(),
    };
    Ok(rows?)
}

/// INACTIVE entries are kept forever as the audit trail, so they cannot count against
/// the limit (a key holder rotating addresses would run out); they are bounded apart.
const INACTIVE_PER_ACTIVE_LIMIT: usize = 10;

/// Refuses a change that would leave more than `max_ips` ACTIVE entries, or more than
/// `INACTIVE_PER_ACTIVE_LIMIT` times that in all, on one credential.
fn check_ip_limits(
    tx: &Transaction<'_>,
    credential_id: u64,
    new_active: usize,
    new_total: usize,
    max_ips: usize,
) -> Result<()> {
    let (active, total): (i64, i64) = tx.query_row(
        "SELECT COUNT(*) FILTER (WHERE status = 'ACTIVE'), COUNT(*) FROM permitted_ips \
         WHERE credential_id = ?1",
        [credential_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    if active as usize + new_active > max_ips {
        return Err(StoreError::Rejected(format!(
            "At most {max_ips} ACTIVE permitted IPs per credential; mark one INACTIVE first."
        )));
    }
    let max_total = max_ips.saturating_mul(INACTIVE_PER_ACTIVE_LIMIT);
    if total as usize + new_total > max_total {
        return Err(StoreError::Rejected(format!(
            "At most {max_total} permitted IP entries per credential, ACTIVE and INACTIVE."
        )));
    }
    Ok(())
}

fn insert_ip(
    tx: &Transaction<'_>,
    credential_id: u64,
    ip: IpAddr,
    status: IpStatus,
    now: Timestamp,
) -> Result<PermittedIp> {
    let exists: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM permitted_ips WHERE credential_id = ?1 AND ip = ?2)",
        params![credential_id, ip.to_string()],
        |r| r.get(0),
    )?;
    if exists {
        return Err(StoreError::Rejected(format!(
            "{ip} is already on this credential's list; change the status of that entry instead"
        )));
    }
    tx.execute(
        "INSERT INTO permitted_ips (credential_id, ip, status, created, updated) \
         VALUES (?1, ?2, ?3, ?4, ?4)",
        params![credential_id, ip.to_string(), status.as_str(), now.0],
    )?;
    get_ip(tx, credential_id, tx.last_insert_rowid() as u64)
}

impl Store for SqliteStore {
    fn change_version(&self) -> Result<u64> {
        self.read(read_version)
    }

    fn load_snapshot(&self) -> Result<Snapshot> {
        self.read(|tx| {
            let version = read_version(tx)?;
            let count: i64 = tx.query_row("SELECT COUNT(*) FROM credentials", [], |r| r.get(0))?;
            let mut builder = SnapshotBuilder::new(version, count as usize);
            snapshot_rows(tx, None, |key, credential| builder.insert(key, credential))?;
            Ok(builder.build())
        })
    }

    fn load_credential(&self, id: u64) -> Result<(u64, KeyHash, SnapshotCredential)> {
        self.read(|tx| {
            let version = read_version(tx)?;
            let mut found = None;
            snapshot_rows(tx, Some(id), |key, credential| {
                found = Some((key, credential))
            })?;
            let (key, credential) = found.ok_or(StoreError::NotFound("credential"))?;
            Ok((version, key, credential))
        })
    }

    fn add_user(&self, name: Option<&str>, actor: &Actor) -> Result<User> {
        self.write(|tx| {
            let now = Timestamp::now();
            tx.execute(
                "INSERT INTO users (name, created) VALUES (?1, ?2)",
                params![name, now.0],
            )?;
            let user = User {
                id: tx.last_insert_rowid() as u64,
                name: name.map(str::to_owned),
                created: now,
            };
            audit(tx, actor, None, "user.add", None, to_json(&user))?;
            Ok(user)
        })
    }

    fn user(&self, id: u64) -> Result<User> {
        self.read(|tx| {
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
    }

    fn create_credential(&self, new: NewCredential<'_>, actor: &Actor) -> Result<Credential> {
        self.write(|tx| {
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
                "INSERT INTO credentials (user_id, key_hash, status, description, created, updated, expiry) \
                 VALUES (?1, ?2, 'PENDING_FIRST_USE', ?3, ?4, ?4, ?5)",
                params![new.user_id, &new.key.0[..], new.description, now.0, new.expiry.0],
            )?;
            let credential = get_credential(tx, tx.last_insert_rowid() as u64)?;
            audit(tx, actor, Some(credential.id), "credential.create", None, to_json(&credential))?;
            Ok(credential)
        })
    }

    fn credential(&self, id: u64) -> Result<Credential> {
        self.read(|tx| get_credential(tx, id))
    }

    fn credentials(&self, user_id: u64, page: Page) -> Result<Vec<Credential>> {
        self.read(|tx| {
            let q = page_query(CREDENTIAL_COLUMNS, "credentials", "user_id = ?1", page);
            query_page(tx, q, Some(user_id), credential_from_row)
        })
    }

    fn revoke_credential(&self, id: u64, actor: &Actor) -> Result<Credential> {
        self.write(|tx| {
            let before = get_credential(tx, id)?;
            tx.execute(
                "UPDATE credentials SET status = 'REVOKED', updated = ?2 WHERE id = ?1",
                params![id, Timestamp::now().0],
            )?;
            let after = get_credential(tx, id)?;
            audit(
                tx,
                actor,
                Some(id),
                "credential.revoke",
                to_json(&before),
                to_json(&after),
            )?;
            Ok(after)
        })
    }

    fn set_wildcard(&self, id: u64, on: bool, actor: &Actor) -> Result<Credential> {
        self.write(|tx| {
            let before = get_credential(tx, id)?;
            tx.execute(
                "UPDATE credentials SET wildcard = ?2, updated = ?3 WHERE id = ?1",
                params![id, on, Timestamp::now().0],
            )?;
            let after = get_credential(tx, id)?;
            let action = if on { "wildcard.set" } else { "wildcard.clear" };
            audit(
                tx,
                actor,
                Some(id),
                action,
                to_json(&before),
                to_json(&after),
            )?;
            Ok(after)
        })
    }

    fn register_device(&self, reg: Registration<'_>) -> Result<Credential> {
        // One message for every reason a key cannot register, like the 403 on the hot
        // path: the answer must not tell a guesser which keys exist.
        let refused =
            || StoreError::Rejected("This secret cannot be used to register a device.".into());
        self.write(|tx| {
            let id: Option<u64> = tx
                .query_row(
                    "SELECT id FROM credentials WHERE key_hash = ?1",
                    [&reg.key.0[..]],
                    |r| r.get(0),
                )
                .optional()?;
            let before = get_credential(tx, id.ok_or_else(refused)?)?;
            let now = Timestamp::now();
            let in_window = before.expiry_time.is_none_or(|at| now < at);
            if before.status != CredentialStatus::PendingFirstUse || !in_window {
                return Err(refused());
            }
            // An address already on the list (the operator may prepare a pending key)
            // keeps its entry and becomes ACTIVE; the others are added.
            let mut found = Vec::with_capacity(reg.ips.len());
            for ip in reg.ips {
                found.push(find_ip(tx, before.id, *ip)?);
            }
            let new_active = found
                .iter()
                .filter(|e| e.as_ref().is_none_or(|e| e.status != IpStatus::Active))
                .count();
            let new_total = found.iter().filter(|e| e.is_none()).count();
            check_ip_limits(tx, before.id, new_active, new_total, reg.max_ips)?;
            for (ip, entry) in reg.ips.iter().zip(found) {
                match entry {
                    None => {
                        insert_ip(tx, before.id, *ip, IpStatus::Active, now)?;
                    }
                    Some(e) if e.status != IpStatus::Active => {
                        tx.execute(
                            "UPDATE permitted_ips SET status = 'ACTIVE', updated = ?2 WHERE id = ?1",
                            params![e.id, now.0],
                        )?;
                    }
                    Some(_) => {}
                }
            }
            tx.execute(
                "UPDATE credentials SET status = 'ACTIVE', expiry = NULL, updated = ?2, \
                 device_description = ?3, device_ip = ?4 WHERE id = ?1",
                params![before.id, now.0, reg.description, reg.caller.to_string()],
            )?;
            let after = get_credential(tx, before.id)?;
            let actor = Actor::credential(before.id, reg.caller);
            let mut after_json = to_json(&after);
            if let Some(serde_json::Value::Object(m)) = after_json.as_mut() {
                m.insert("permitted_ips".into(), json!(reg.ips));
            }
            audit(
                tx,
                &actor,
                Some(before.id),
                "device.register",
                to_json(&before),
                after_json,
            )?;
            Ok(after)
        })
    }

    fn ips(&self, credential_id: u64, page: Page) -> Result<Vec<PermittedIp>> {
        self.read(|tx| {
            let q = page_query(IP_COLUMNS, "permitted_ips", "credential_id = ?1", page);
            query_page(tx, q, Some(credential_id), ip_from_row)
        })
    }

    fn ip(&self, credential_id: u64, item_id: u64) -> Result<PermittedIp> {
        self.read(|tx| get_ip(tx, credential_id, item_id))
    }

    fn add_ip(
        &self,
        credential_id: u64,
        ip: IpAddr,
        status: IpStatus,
        max_ips: usize,
        actor: &Actor,
    ) -> Result<PermittedIp> {
        let ip = crate::acl::normalize(ip);
        self.write(|tx| {
            get_credential(tx, credential_id)?;
            let new_active = usize::from(status == IpStatus::Active);
            check_ip_limits(tx, credential_id, new_active, 1, max_ips)?;
            let entry = insert_ip(tx, credential_id, ip, status, Timestamp::now())?;
            audit(
                tx,
                actor,
                Some(credential_id),
                "ip.add",
                None,
                to_json(&entry),
            )?;
            Ok(entry)
        })
    }

    fn set_ip_status(
        &self,
        credential_id: u64,
        item_id: u64,
        status: IpStatus,
        max_ips: usize,
        actor: &Actor,
    ) -> Result<PermittedIp> {
        self.write(|tx| {
            let before = get_ip(tx, credential_id, item_id)?;
            if before.status == IpStatus::Inactive && status == IpStatus::Active {
                check_ip_limits(tx, credential_id, 1, 0, max_ips)?;
            }
            tx.execute(
                "UPDATE permitted_ips SET status = ?2, updated = ?3 WHERE id = ?1",
                params![item_id, status.as_str(), Timestamp::now().0],
            )?;
            let after = get_ip(tx, credential_id, item_id)?;
            audit(
                tx,
                actor,
                Some(credential_id),
                "ip.set_status",
                to_json(&before),
                to_json(&after),
            )?;
            Ok(after)
        })
    }

    fn audit(&self, credential_id: Option<u64>, page: Page) -> Result<Vec<AuditEntry>> {
        self.read(|tx| {
            let columns = "id, at, actor, actor_ip, credential_id, action, before, after";
            let filter = if credential_id.is_some() {
                "credential_id = ?1"
            } else {
                "1"
            };
            let q = page_query(columns, "audit_log", filter, page);
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
    }
}

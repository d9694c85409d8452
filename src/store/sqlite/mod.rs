//! The embedded store: one SQLite file, created and migrated on first use.
//!
//! Every call opens its own connection: calls are rare (a poll a second, an operator's
//! command, a key holder's change), and a fresh open notices a file that went away
//! instead of reading a deleted inode forever. WAL journal with `synchronous=FULL`
//! makes each committed write durable before the call returns; every write transaction
//! bumps `change_version` so pollers in any process see it.

mod rows;
mod schema;

use super::model::*;
use super::{NewCredential, Registration, Result, Store, StoreError};
use crate::acl::{KeyHash, Snapshot, SnapshotBuilder, SnapshotCredential};
use rows::*;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Transaction};
use schema::{SCHEMA, SCHEMA_VERSION};
use serde_json::json;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

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

    fn usage(&self, user_id: Option<u64>) -> Result<Vec<Usage>> {
        self.read(|tx| {
            let sql = format!(
                "SELECT c.id, c.user_id, c.status, c.wildcard, \
                 (SELECT COUNT(*) FROM permitted_ips p \
                  WHERE p.credential_id = c.id AND p.status = 'ACTIVE') \
                 FROM credentials c {} ORDER BY c.id",
                if user_id.is_some() {
                    "WHERE c.user_id = ?1"
                } else {
                    ""
                }
            );
            let mut stmt = tx.prepare(&sql)?;
            let map = |r: &rusqlite::Row<'_>| {
                let status: String = r.get(2)?;
                Ok(Usage {
                    credential_id: r.get(0)?,
                    user_id: r.get(1)?,
                    status: parse_column(2, &status)?,
                    wildcard: r.get(3)?,
                    active_ips: r.get(4)?,
                })
            };
            let rows: rusqlite::Result<Vec<Usage>> = match user_id {
                Some(id) => stmt.query_map([id], map)?.collect(),
                None => stmt.query_map([], map)?.collect(),
            };
            Ok(rows?)
        })
    }
}

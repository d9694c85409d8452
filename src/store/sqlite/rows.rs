//! Reading and writing rows: the column lists, row-to-object mappers, the snapshot's
//! ordered read, paging, the audit row, and the entry limits. Everything here runs
//! inside a transaction the caller opened.

use super::super::model::*;
use super::super::{Result, StoreError};
use crate::acl::{CredentialState, IpSet, KeyHash, SnapshotCredential, NEVER};
use rusqlite::{params, OptionalExtension, Row, Transaction};
use std::net::IpAddr;

pub(super) const CREDENTIAL_COLUMNS: &str =
    "id, user_id, status, wildcard, description, created, updated, \
     expiry, device_description, device_ip";

pub(super) fn credential_from_row(row: &Row<'_>) -> rusqlite::Result<Credential> {
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

pub(super) const IP_COLUMNS: &str = "id, credential_id, ip, status, created, updated";

pub(super) fn ip_from_row(row: &Row<'_>) -> rusqlite::Result<PermittedIp> {
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
pub(super) fn parse_column<T: std::str::FromStr>(index: usize, s: &str) -> rusqlite::Result<T> {
    s.parse().map_err(|_| {
        rusqlite::Error::FromSqlConversionFailure(
            index,
            rusqlite::types::Type::Text,
            format!("unexpected value {s:?}").into(),
        )
    })
}

pub(super) fn read_version(tx: &Transaction<'_>) -> Result<u64> {
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
pub(super) fn snapshot_rows(
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

pub(super) fn get_credential(tx: &Transaction<'_>, id: u64) -> Result<Credential> {
    tx.query_row(
        &format!("SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE id = ?1"),
        [id],
        credential_from_row,
    )
    .optional()?
    .ok_or(StoreError::NotFound("credential"))
}

pub(super) fn get_ip(
    tx: &Transaction<'_>,
    credential_id: u64,
    item_id: u64,
) -> Result<PermittedIp> {
    tx.query_row(
        &format!("SELECT {IP_COLUMNS} FROM permitted_ips WHERE id = ?1 AND credential_id = ?2"),
        [item_id, credential_id],
        ip_from_row,
    )
    .optional()?
    .ok_or(StoreError::NotFound("permitted IP"))
}

pub(super) fn find_ip(
    tx: &Transaction<'_>,
    credential_id: u64,
    ip: IpAddr,
) -> Result<Option<PermittedIp>> {
    Ok(tx
        .query_row(
            &format!("SELECT {IP_COLUMNS} FROM permitted_ips WHERE credential_id = ?1 AND ip = ?2"),
            params![credential_id, ip.to_string()],
            ip_from_row,
        )
        .optional()?)
}

pub(super) fn audit(
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

pub(super) fn to_json<T: serde::Serialize>(value: &T) -> Option<serde_json::Value> {
    serde_json::to_value(value).ok()
}

/// Newest-first paging over `table` rows matching `filter` (which binds `?1`).
pub(super) fn page_query(
    columns: &str,
    table: &str,
    filter: &str,
    page: Page,
) -> (String, Option<u64>) {
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

pub(super) fn query_page<T>(
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
pub(super) const INACTIVE_PER_ACTIVE_LIMIT: usize = 10;

/// Refuses a change that would leave more than `max_ips` ACTIVE entries, or more than
/// `INACTIVE_PER_ACTIVE_LIMIT` times that in all, on one credential.
pub(super) fn check_ip_limits(
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

pub(super) fn insert_ip(
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

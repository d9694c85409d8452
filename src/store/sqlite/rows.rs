//! Reading and writing rows: the column lists, row-to-object mappers, the snapshot's
//! ordered read, the change feed's rows, paging, the audit row, and writing a
//! [`Plan`]. Everything here runs inside a transaction the caller opened.

use super::super::feed::StoredCredential;
use super::super::model::*;
use super::super::rules::{Plan, Record};
use super::super::{random_stamp, Result, StoreError};
use rusqlite::types::ValueRef;
use rusqlite::{params, params_from_iter, OptionalExtension, Row, Transaction};

pub(super) const CREDENTIAL_COLUMNS: &str =
    "id, user_id, status, wildcard, description, created, updated, \
     expiry, device_description, device_ip, mode";

pub(super) fn credential_from_row(row: &Row<'_>) -> rusqlite::Result<Credential> {
    let status: String = row.get(2)?;
    let device_description: Option<String> = row.get(8)?;
    let device_ip: Option<String> = row.get(9)?;
    let mode: String = row.get(10)?;
    let expiry_time = row.get::<_, Option<i64>>(7)?.map(Timestamp);
    Ok(Credential {
        id: row.get(0)?,
        user_id: row.get(1)?,
        status: CredentialStatus::as_read(parse_column(2, &status)?, expiry_time, Timestamp::now()),
        wildcard: row.get(3)?,
        description: row.get(4)?,
        created: Timestamp(row.get(5)?),
        updated: Timestamp(row.get(6)?),
        expiry_time,
        permitted_device: match (device_description, device_ip) {
            (Some(description), Some(ip)) => Some(Device {
                description,
                ip: parse_column(9, &ip)?,
            }),
            _ => None,
        },
        mode: parse_column(10, &mode)?,
    })
}

/// An entry's columns, read from the `entries` view (the entry and its usage).
pub(super) const IP_COLUMNS: &str =
    "id, credential_id, ip, status, created, updated, last_seen, requests";

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
        last_seen: row.get::<_, Option<i64>>(6)?.map(Timestamp),
        requests: row.get(7)?,
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

/// What the store says of itself: identity, version, and the newest version whose
/// history was pruned.
pub(super) fn read_meta(tx: &Transaction<'_>) -> Result<(i64, u64, u64)> {
    let mut stmt = tx.prepare("SELECT name, value FROM meta")?;
    let mut rows = stmt.query([])?;
    let (mut id, mut version, mut pruned) = (None, None, 0);
    while let Some(row) = rows.next()? {
        let name: String = row.get(0)?;
        let value: i64 = row.get(1)?;
        match name.as_str() {
            "store_id" => id = Some(value),
            "change_version" => version = Some(value as u64),
            "pruned_through" => pruned = value as u64,
            _ => {}
        }
    }
    match (id, version) {
        (Some(id), Some(version)) => Ok((id, version, pruned)),
        _ => Err(StoreError::Unavailable(
            "the store's meta table lacks its identity or version".into(),
        )),
    }
}

/// The stamp recorded with `version`, if the history still holds it.
pub(super) fn stamp_at(tx: &Transaction<'_>, version: u64) -> Result<Option<i64>> {
    Ok(tx
        .query_row(
            "SELECT stamp FROM change_log WHERE version = ?1 LIMIT 1",
            [version],
            |r| r.get(0),
        )
        .optional()?)
}

/// Versions after `after`: each one's commit time and the credentials they changed.
pub(super) fn changes_after(
    tx: &Transaction<'_>,
    after: u64,
) -> Result<(Vec<Timestamp>, Vec<u64>, Option<i64>)> {
    let mut stmt = tx.prepare(
        "SELECT version, credential_id, committed_at, stamp FROM change_log \
         WHERE version > ?1 ORDER BY version",
    )?;
    let mut rows = stmt.query([after])?;
    let (mut committed, mut ids, mut last) = (Vec::new(), Vec::new(), None);
    let mut previous = after;
    while let Some(row) = rows.next()? {
        let version: u64 = row.get(0)?;
        if version != previous {
            committed.push(Timestamp(row.get(2)?));
            previous = version;
        }
        if let Some(id) = row.get::<_, Option<u64>>(1)? {
            ids.push(id);
        }
        last = Some(row.get(3)?);
    }
    ids.sort_unstable();
    ids.dedup();
    Ok((committed, ids, last))
}

/// A column read as whatever SQLite holds, never failing: the feed judges the value,
/// so that one damaged row damages only its credential.
fn loose_text(v: ValueRef<'_>) -> String {
    match v {
        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
        ValueRef::Integer(i) => i.to_string(),
        other => format!("<{:?}>", other.data_type()),
    }
}

fn loose_int(v: ValueRef<'_>) -> Option<i64> {
    match v {
        ValueRef::Integer(i) => Some(i),
        _ => None,
    }
}

/// Every credential (or those in `only`) with its ACTIVE addresses as stored, in one
/// ordered pass: rows of one credential are consecutive, so nothing is held beyond
/// the credential being assembled.
pub(super) fn stored_credentials(
    tx: &Transaction<'_>,
    only: Option<&[u64]>,
    mut each: impl FnMut(StoredCredential),
) -> Result<()> {
    let filter = match only {
        Some(ids) => format!("WHERE c.id IN ({})", vec!["?"; ids.len()].join(",")),
        None => String::new(),
    };
    let sql = format!(
        "SELECT c.id, c.user_id, c.key_hash, c.status, c.wildcard, c.expiry, c.mode, p.ip \
         FROM credentials c \
         LEFT JOIN permitted_ips p ON p.credential_id = c.id AND p.status = 'ACTIVE' \
         {filter} ORDER BY c.id"
    );
    let mut stmt = tx.prepare(&sql)?;
    let mut rows = stmt.query(params_from_iter(only.unwrap_or_default()))?;
    let mut current: Option<StoredCredential> = None;
    while let Some(row) = rows.next()? {
        let id: u64 = row.get(0)?;
        if current.as_ref().is_none_or(|c| c.id != id) {
            if let Some(done) = current.take() {
                each(done);
            }
            let damaged_int = |i| loose_int(row.get_ref_unwrap(i));
            current = Some(StoredCredential {
                id,
                user_id: damaged_int(1).unwrap_or(0) as u64,
                key: match row.get_ref_unwrap(2) {
                    ValueRef::Blob(b) => b.to_vec(),
                    _ => Vec::new(),
                },
                status: loose_text(row.get_ref_unwrap(3)),
                wildcard: damaged_int(4).is_some_and(|w| w != 0),
                // SQLite stores what it is given: a text here is no expiry to trust.
                expiry: match row.get_ref_unwrap(5) {
                    ValueRef::Null => Ok(None),
                    ValueRef::Integer(i) => Ok(Some(i)),
                    other => Err(format!("{:?}", loose_text(other))),
                },
                mode: loose_text(row.get_ref_unwrap(6)),
                ips: Vec::new(),
            });
        }
        let ip = row.get_ref_unwrap(7);
        if let (false, Some(c)) = (matches!(ip, ValueRef::Null), current.as_mut()) {
            c.ips.push(loose_text(ip));
        }
    }
    if let Some(done) = current {
        each(done);
    }
    Ok(())
}

/// Advances the change version by one and records what it changed, in the caller's
/// transaction, pruning history older than `keep` versions now and then. The counter
/// is written last, just before commit, so the write lock is held for as short a time
/// as possible.
pub(super) fn bump(tx: &Transaction<'_>, credential: Option<u64>, keep: u64) -> Result<u64> {
    let version: i64 = tx.query_row(
        "UPDATE meta SET value = value + 1 WHERE name = 'change_version' RETURNING value",
        [],
        |r| r.get(0),
    )?;
    let version = version as u64;
    tx.execute(
        "INSERT INTO change_log (version, credential_id, stamp, committed_at) \
         VALUES (?1, ?2, ?3, ?4)",
        params![version, credential, random_stamp()?, Timestamp::now().0],
    )?;
    if version % 64 == 0 && version > keep {
        let through = version - keep;
        tx.execute("DELETE FROM change_log WHERE version <= ?1", [through])?;
        tx.execute(
            "UPDATE meta SET value = MAX(value, ?1) WHERE name = 'pruned_through'",
            [through],
        )?;
    }
    Ok(version)
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

pub(super) fn credential_id_by_key(tx: &Transaction<'_>, key: &[u8]) -> Result<Option<u64>> {
    Ok(tx
        .query_row(
            "SELECT id FROM credentials WHERE key_hash = ?1",
            [key],
            |r| r.get(0),
        )
        .optional()?)
}

/// A credential and all its entries.
pub(super) fn read_record(tx: &Transaction<'_>, id: u64) -> Result<Record> {
    let credential = get_credential(tx, id)?;
    let mut stmt = tx.prepare(&format!(
        "SELECT {IP_COLUMNS} FROM entries WHERE credential_id = ?1 ORDER BY id"
    ))?;
    let entries = stmt
        .query_map([id], ip_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Record {
        credential,
        entries,
    })
}

/// Writes exactly the rows `plan` names.
pub(super) fn apply(tx: &Transaction<'_>, id: u64, plan: &Plan, now: Timestamp) -> Result<()> {
    if let Some(c) = &plan.credential {
        tx.execute(
            "UPDATE credentials SET status = ?2, wildcard = ?3, expiry = ?4, \
             device_description = ?5, device_ip = ?6, updated = ?7, mode = ?8 WHERE id = ?1",
            params![
                id,
                c.status.as_str(),
                c.wildcard,
                c.expiry.map(|t| t.0),
                c.device.as_ref().map(|d| d.description.as_str()),
                c.device.as_ref().map(|d| d.ip.to_string()),
                now.0,
                c.mode.as_str(),
            ],
        )?;
    }
    for (ip, status) in &plan.insert {
        tx.execute(
            "INSERT INTO permitted_ips (credential_id, ip, status, created, updated) \
             VALUES (?1, ?2, ?3, ?4, ?4)",
            params![id, ip.to_string(), status.as_str(), now.0],
        )?;
    }
    for (item, status) in &plan.update {
        tx.execute(
            "UPDATE permitted_ips SET status = ?3, updated = ?4 WHERE id = ?1 AND credential_id = ?2",
            params![item, id, status.as_str(), now.0],
        )?;
    }
    Ok(())
}

pub(super) fn get_ip(
    tx: &Transaction<'_>,
    credential_id: u64,
    item_id: u64,
) -> Result<PermittedIp> {
    tx.query_row(
        &format!("SELECT {IP_COLUMNS} FROM entries WHERE id = ?1 AND credential_id = ?2"),
        [item_id, credential_id],
        ip_from_row,
    )
    .optional()?
    .ok_or(StoreError::NotFound("permitted IP"))
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

//! Reading and writing rows in PostgreSQL: the same columns and steps as the SQLite
//! backend's, with `$n` placeholders, `BIGINT` ids and row locks. Everything here runs
//! inside a transaction the caller opened; nothing panics on an unexpected column.

use super::super::feed::StoredCredential;
use super::super::model::*;
use super::super::rules::{Plan, Record};
use super::super::{random_stamp, Result, StoreError};
use deadpool_postgres::Transaction;
use futures_util::{pin_mut, TryStreamExt};
use tokio_postgres::types::{FromSql, ToSql};
use tokio_postgres::Row;

/// The channel every write notifies on commit, with the new version as payload.
pub(super) const CHANNEL: &str = "ipgate_changes";

pub(super) const CREDENTIAL_COLUMNS: &str =
    "id, user_id, status, wildcard, description, created, updated, \
     expiry, device_description, device_ip, mode";

/// An entry's columns, read from the `entries` view (the entry and its usage).
pub(super) const IP_COLUMNS: &str =
    "id, credential_id, ip, status, created, updated, last_seen, requests";

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        StoreError::unavailable(e)
    }
}

// Every statement is prepared once per connection (deadpool's statement cache): a
// query by text alone costs a second round trip to prepare it, every time.

pub(super) async fn query(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>> {
    let statement = tx.prepare_cached(sql).await?;
    Ok(tx.query(&statement, params).await?)
}

pub(super) async fn query_one(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Row> {
    let statement = tx.prepare_cached(sql).await?;
    Ok(tx.query_one(&statement, params).await?)
}

pub(super) async fn query_opt(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Option<Row>> {
    let statement = tx.prepare_cached(sql).await?;
    Ok(tx.query_opt(&statement, params).await?)
}

pub(super) async fn execute(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64> {
    let statement = tx.prepare_cached(sql).await?;
    Ok(tx.execute(&statement, params).await?)
}

/// One column, or an error naming it: a schema that is not ours must not panic.
pub(super) fn col<'a, T: FromSql<'a>>(row: &'a Row, i: usize) -> Result<T> {
    row.try_get(i).map_err(StoreError::unavailable)
}

pub(super) fn id(v: i64) -> u64 {
    v as u64
}

/// A stored text that must parse; one that does not is a damaged store.
pub(super) fn parse<T: std::str::FromStr>(what: &str, s: &str) -> Result<T> {
    s.parse()
        .map_err(|_| StoreError::Unavailable(format!("stored {what} {s:?} does not parse").into()))
}

pub(super) fn credential_from_row(row: &Row) -> Result<Credential> {
    let status: String = col(row, 2)?;
    let device_description: Option<String> = col(row, 8)?;
    let device_ip: Option<String> = col(row, 9)?;
    let mode: String = col(row, 10)?;
    let expiry_time = col::<Option<i64>>(row, 7)?.map(Timestamp);
    Ok(Credential {
        id: id(col(row, 0)?),
        user_id: id(col(row, 1)?),
        status: CredentialStatus::as_read(parse("status", &status)?, expiry_time, Timestamp::now()),
        wildcard: col(row, 3)?,
        description: col(row, 4)?,
        created: Timestamp(col(row, 5)?),
        updated: Timestamp(col(row, 6)?),
        expiry_time,
        permitted_device: match (device_description, device_ip) {
            (Some(description), Some(ip)) => Some(Device {
                description,
                ip: parse("device address", &ip)?,
            }),
            _ => None,
        },
        mode: parse("mode", &mode)?,
    })
}

pub(super) fn ip_from_row(row: &Row) -> Result<PermittedIp> {
    let ip: String = col(row, 2)?;
    let status: String = col(row, 3)?;
    Ok(PermittedIp {
        id: id(col(row, 0)?),
        credential_id: id(col(row, 1)?),
        ip: parse("address", &ip)?,
        status: parse("status", &status)?,
        created: Timestamp(col(row, 4)?),
        updated: Timestamp(col(row, 5)?),
        last_seen: col::<Option<i64>>(row, 6)?.map(Timestamp),
        requests: col::<i64>(row, 7)? as u64,
    })
}

pub(super) fn audit_from_row(row: &Row) -> Result<AuditEntry> {
    let json = |s: Option<String>| s.and_then(|s| serde_json::from_str(&s).ok());
    Ok(AuditEntry {
        id: id(col(row, 0)?),
        at: Timestamp(col(row, 1)?),
        actor: col(row, 2)?,
        actor_ip: col(row, 3)?,
        credential_id: col::<Option<i64>>(row, 4)?.map(id),
        action: col(row, 5)?,
        before: json(col(row, 6)?),
        after: json(col(row, 7)?),
    })
}

/// Identity, version, and the newest version whose history was pruned.
pub(super) async fn read_meta(tx: &Transaction<'_>) -> Result<(i64, u64, u64)> {
    let (mut store_id, mut version, mut pruned) = (None, None, 0);
    for row in query(tx, "SELECT name, value FROM meta", &[]).await? {
        let name: String = col(&row, 0)?;
        let value: i64 = col(&row, 1)?;
        match name.as_str() {
            "store_id" => store_id = Some(value),
            "change_version" => version = Some(value as u64),
            "pruned_through" => pruned = value as u64,
            _ => {}
        }
    }
    match (store_id, version) {
        (Some(s), Some(v)) => Ok((s, v, pruned)),
        _ => Err(StoreError::Unavailable(
            "the store's meta table lacks its identity or version".into(),
        )),
    }
}

pub(super) async fn stamp_at(tx: &Transaction<'_>, version: u64) -> Result<Option<i64>> {
    let row = query_opt(
        tx,
        "SELECT stamp FROM change_log WHERE version = $1 LIMIT 1",
        &[&(version as i64)],
    )
    .await?;
    row.map(|r| col(&r, 0)).transpose()
}

/// Versions after `after`: each one's commit time, the credentials they changed, and
/// the stamp of the last.
pub(super) async fn changes_after(
    tx: &Transaction<'_>,
    after: u64,
) -> Result<(Vec<Timestamp>, Vec<i64>, Option<i64>)> {
    let rows = query(
        tx,
        "SELECT version, credential_id, committed_at, stamp FROM change_log \
             WHERE version > $1 ORDER BY version",
        &[&(after as i64)],
    )
    .await?;
    let (mut committed, mut ids, mut last) = (Vec::new(), Vec::new(), None);
    let mut previous = after as i64;
    for row in &rows {
        let version: i64 = col(row, 0)?;
        if version != previous {
            committed.push(Timestamp(col(row, 2)?));
            previous = version;
        }
        if let Some(id) = col::<Option<i64>>(row, 1)? {
            ids.push(id);
        }
        last = Some(col(row, 3)?);
    }
    ids.sort_unstable();
    ids.dedup();
    Ok((committed, ids, last))
}

/// Every credential (or those in `only`) with its ACTIVE addresses as stored, streamed
/// in id order: rows of one credential are consecutive, so nothing is held beyond the
/// one being assembled.
pub(super) async fn stored_credentials(
    tx: &Transaction<'_>,
    only: Option<&[i64]>,
    mut each: impl FnMut(StoredCredential),
) -> Result<()> {
    let sql = format!(
        "SELECT c.id, c.user_id, c.key_hash, c.status, c.wildcard, c.expiry, c.mode, p.ip \
         FROM credentials c \
         LEFT JOIN permitted_ips p ON p.credential_id = c.id AND p.status = 'ACTIVE' \
         {} ORDER BY c.id",
        if only.is_some() {
            "WHERE c.id = ANY($1)"
        } else {
            ""
        }
    );
    let params: Vec<&(dyn ToSql + Sync)> = match &only {
        Some(ids) => vec![ids],
        None => Vec::new(),
    };
    let statement = tx.prepare_cached(&sql).await?;
    let rows = tx.query_raw(&statement, params).await?;
    pin_mut!(rows);
    let mut current: Option<StoredCredential> = None;
    while let Some(row) = rows.try_next().await? {
        let credential_id = id(col(&row, 0)?);
        if current.as_ref().is_none_or(|c| c.id != credential_id) {
            if let Some(done) = current.take() {
                each(done);
            }
            current = Some(StoredCredential {
                id: credential_id,
                user_id: id(col(&row, 1)?),
                key: col(&row, 2)?,
                status: col(&row, 3)?,
                wildcard: col(&row, 4)?,
                expiry: col(&row, 5)?,
                mode: col(&row, 6)?,
                ips: Vec::new(),
            });
        }
        if let (Some(ip), Some(c)) = (col::<Option<String>>(&row, 7)?, current.as_mut()) {
            c.ips.push(ip);
        }
    }
    if let Some(done) = current {
        each(done);
    }
    Ok(())
}

/// Advances the change version by one, records what it changed and notifies
/// listeners, in the caller's transaction and in one statement: the counter row's lock
/// (what puts versions in commit order) is taken by it and held only until the commit
/// that follows, never across another round trip. Every 64th version also prunes the
/// history older than `keep`, in the same statement.
pub(super) async fn bump(tx: &Transaction<'_>, credential: Option<u64>, keep: u64) -> Result<u64> {
    let row = query_one(
        tx,
        "WITH bumped AS ( \
             UPDATE meta SET value = value + 1 WHERE name = 'change_version' RETURNING value \
         ), logged AS ( \
             INSERT INTO change_log (version, credential_id, stamp, committed_at) \
             SELECT value, $1::BIGINT, $2::BIGINT, $3::BIGINT FROM bumped RETURNING version \
         ), pruned AS ( \
             DELETE FROM change_log WHERE version <= (SELECT value - $4 FROM bumped) \
             AND (SELECT value % 64 = 0 AND value > $4 FROM bumped) \
         ), marked AS ( \
             UPDATE meta SET value = GREATEST(value, (SELECT value - $4::BIGINT FROM bumped)) \
             WHERE name = 'pruned_through' \
             AND (SELECT value % 64 = 0 AND value > $4 FROM bumped) \
         ), notified AS ( \
             SELECT pg_notify($5::TEXT, version::TEXT) FROM logged \
         ) \
         SELECT version FROM logged, notified",
        &[
            &credential.map(|c| c as i64),
            &random_stamp()?,
            &Timestamp::now().0,
            &(keep.min(i64::MAX as u64) as i64),
            &CHANNEL,
        ],
    )
    .await?;
    Ok(col::<i64>(&row, 0)? as u64)
}

pub(super) async fn get_credential(tx: &Transaction<'_>, credential: u64) -> Result<Credential> {
    let row = query_opt(
        tx,
        &format!("SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE id = $1"),
        &[&(credential as i64)],
    )
    .await?
    .ok_or(StoreError::NotFound("credential"))?;
    credential_from_row(&row)
}

pub(super) async fn credential_id_by_key(tx: &Transaction<'_>, key: &[u8]) -> Result<Option<u64>> {
    let row = query_opt(
        tx,
        "SELECT id FROM credentials WHERE key_hash = $1",
        &[&key],
    )
    .await?;
    row.map(|r| col::<i64>(&r, 0).map(id)).transpose()
}

/// A credential and all its entries, with the credential's row locked until commit:
/// two changes to one credential (two adds racing for the last free slot) take turns.
pub(super) async fn lock_record(tx: &Transaction<'_>, credential: u64) -> Result<Record> {
    let row = query_opt(
        tx,
        &format!("SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE id = $1 FOR UPDATE"),
        &[&(credential as i64)],
    )
    .await?
    .ok_or(StoreError::NotFound("credential"))?;
    let credential = credential_from_row(&row)?;
    Ok(Record {
        entries: entries(tx, credential.id).await?,
        credential,
    })
}

/// A credential and all its entries, as they are now in this transaction.
pub(super) async fn read_record(tx: &Transaction<'_>, credential: u64) -> Result<Record> {
    let credential = get_credential(tx, credential).await?;
    Ok(Record {
        entries: entries(tx, credential.id).await?,
        credential,
    })
}

async fn entries(tx: &Transaction<'_>, credential: u64) -> Result<Vec<PermittedIp>> {
    query(
        tx,
        &format!("SELECT {IP_COLUMNS} FROM entries WHERE credential_id = $1 ORDER BY id"),
        &[&(credential as i64)],
    )
    .await?
    .iter()
    .map(ip_from_row)
    .collect()
}

/// Writes exactly the rows `plan` names.
pub(super) async fn apply(
    tx: &Transaction<'_>,
    credential: u64,
    plan: &Plan,
    now: Timestamp,
) -> Result<()> {
    let credential = credential as i64;
    if let Some(c) = &plan.credential {
        execute(
            tx,
            "UPDATE credentials SET status = $2, wildcard = $3, expiry = $4, \
             device_description = $5, device_ip = $6, updated = $7, mode = $8 WHERE id = $1",
            &[
                &credential,
                &c.status.as_str(),
                &c.wildcard,
                &c.expiry.map(|t| t.0),
                &c.device.as_ref().map(|d| d.description.as_str()),
                &c.device.as_ref().map(|d| d.ip.to_string()),
                &now.0,
                &c.mode.as_str(),
            ],
        )
        .await?;
    }
    for (ip, status) in &plan.insert {
        execute(
            tx,
            "INSERT INTO permitted_ips (credential_id, ip, status, created, updated) \
             VALUES ($1, $2, $3, $4, $4)",
            &[&credential, &ip.to_string(), &status.as_str(), &now.0],
        )
        .await?;
    }
    for (item, status) in &plan.update {
        execute(tx,
            "UPDATE permitted_ips SET status = $3, updated = $4 WHERE id = $1 AND credential_id = $2",
            &[&(*item as i64), &credential, &status.as_str(), &now.0],
        )
        .await?;
    }
    Ok(())
}

pub(super) async fn audit(
    tx: &Transaction<'_>,
    actor: &Actor,
    credential: Option<u64>,
    action: &str,
    before: Option<serde_json::Value>,
    after: Option<serde_json::Value>,
) -> Result<()> {
    execute(
        tx,
        "INSERT INTO audit_log (at, actor, actor_ip, credential_id, action, before, after) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &Timestamp::now().0,
            &actor.who,
            &actor.ip.map(|ip| ip.to_string()),
            &credential.map(|c| c as i64),
            &action,
            &before.map(|v| v.to_string()),
            &after.map(|v| v.to_string()),
        ],
    )
    .await?;
    Ok(())
}

/// One page of rows: `sql` and its cursor from [`Page::sql`], `first` for `$1`.
pub(super) async fn query_page<T>(
    tx: &Transaction<'_>,
    (sql, cursor): (String, Option<u64>),
    first: Option<i64>,
    map: impl Fn(&Row) -> Result<T>,
) -> Result<Vec<T>> {
    let cursor = cursor.map(|c| c as i64);
    let rows = match cursor {
        Some(c) => query(tx, &sql, &[&first, &c]).await?,
        None => query(tx, &sql, &[&first]).await?,
    };
    rows.iter().map(map).collect()
}

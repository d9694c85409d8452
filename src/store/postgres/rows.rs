//! Rows in PostgreSQL: statements prepared once per connection, columns read without
//! panicking on an unexpected one, and the reads the feed, the writes and the API
//! share (the same columns and steps as the SQLite backend's, with `$n` placeholders
//! and `BIGINT` ids). Everything here runs inside a transaction the caller opened.

use super::super::feed::StoredCredential;
use super::super::model::*;
use super::super::{Result, StoreError};
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
        StoreError::unavailable(PgFailure::of(&e))
    }
}

/// A PostgreSQL error as one line that says what the server said: tokio-postgres's
/// own text for a server error is only "db error", with the server's words in a
/// source that several layers of wrapping lose (an operator read `db error: db error:`
/// and nothing else).
#[derive(Debug, thiserror::Error)]
#[error("{text}")]
pub(super) struct PgFailure {
    text: String,
    /// The server's SQLSTATE, for callers that tell one error from another
    /// (`QUERY_CANCELED`: a statement timeout).
    pub(super) code: Option<tokio_postgres::error::SqlState>,
}

impl PgFailure {
    pub(super) fn of(e: &tokio_postgres::Error) -> Self {
        let code = e.code().cloned();
        let Some(db) = e.as_db_error() else {
            return PgFailure {
                text: crate::logging::error_chain_with(e),
                code,
            };
        };
        let mut text = format!(
            "PostgreSQL {} {}: {}",
            db.severity(),
            db.code().code(),
            db.message()
        );
        if let Some(detail) = db.detail() {
            text.push_str("; detail: ");
            text.push_str(detail);
        }
        if let Some(hint) = db.hint() {
            text.push_str("; hint: ");
            text.push_str(hint);
        }
        PgFailure {
            text: text.replace('\n', " "),
            code,
        }
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
                // A typed column: it is a number or NULL.
                expiry: Ok(col(&row, 5)?),
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

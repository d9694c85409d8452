//! Usage and refused addresses in PostgreSQL: merging a gateway's batch (one statement
//! per table, rows in a fixed order), and the reports. Two gateways flushing at once
//! cannot deadlock: the upserts lock rows in one order, and the trim of a credential's
//! refused addresses (which deletes rows another flush may hold) runs only under that
//! credential's advisory lock, taken first and in one order.

use super::super::insight::*;
use super::super::model::Timestamp;
use super::super::{Result, StoreError};
use super::rows::{col, id, parse};
use super::rows::{execute, query, query_one, query_opt};
use deadpool_postgres::Transaction;

/// The advisory-lock class of "flushing this credential's refused addresses" (the
/// second key is the credential id): any fixed number no other lock uses.
const REFUSED_LOCK_CLASS: i32 = 0x6970_6772;

/// Adds one batch: sums, earliest first and latest last sighting; then keeps the
/// `REFUSED_KEPT` most recent refused (and shadow) addresses of each credential it
/// touched.
pub(super) async fn record(tx: &Transaction<'_>, batch: &UsageBatch) -> Result<()> {
    // Both trimmed tables (refused and shadow addresses) are flushed under the same
    // per-credential turn.
    let mut turns: Vec<i32> = batch
        .refused
        .iter()
        .chain(&batch.shadow)
        .map(|s| (s.credential_id % (1 << 31)) as i32)
        .collect();
    turns.sort_unstable();
    turns.dedup();
    if !turns.is_empty() {
        // In ascending order, before any row is touched: flushes that share a
        // credential take turns, and none waits while holding what another needs.
        query(
            tx,
            "SELECT pg_advisory_xact_lock($1, k) FROM UNNEST($2::INT4[]) AS k",
            &[&REFUSED_LOCK_CLASS, &turns],
        )
        .await?;
    }
    for (table, sightings) in [
        ("ip_usage", &batch.allowed),
        ("refused_ips", &batch.refused),
        ("shadow_ips", &batch.shadow),
    ] {
        if sightings.is_empty() {
            continue;
        }
        let mut rows: Vec<&Sighting> = sightings.iter().collect();
        rows.sort_by_key(|s| (s.credential_id, s.ip));
        let credentials: Vec<i64> = rows.iter().map(|s| s.credential_id as i64).collect();
        let ips: Vec<String> = rows.iter().map(|s| s.ip.to_string()).collect();
        let requests: Vec<i64> = rows.iter().map(|s| s.requests as i64).collect();
        let first: Vec<i64> = rows.iter().map(|s| s.first_seen.0).collect();
        let last: Vec<i64> = rows.iter().map(|s| s.last_seen.0).collect();
        execute(tx,
            &format!(
                "INSERT INTO {table} (credential_id, ip, requests, first_seen, last_seen) \
                 SELECT * FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::BIGINT[], $4::BIGINT[], $5::BIGINT[]) \
                 ON CONFLICT (credential_id, ip) DO UPDATE SET \
                   requests = {table}.requests + EXCLUDED.requests, \
                   first_seen = LEAST({table}.first_seen, EXCLUDED.first_seen), \
                   last_seen = GREATEST({table}.last_seen, EXCLUDED.last_seen)"
            ),
            &[&credentials, &ips, &requests, &first, &last],
        )
        .await?;
    }
    trim(tx, "refused_ips", &batch.refused, true).await?;
    // Shadow passes are bounded the same way (a stolen key in shadow mode could rotate
    // addresses too); `report suggest` reads them and says nothing of a truncation.
    trim(tx, "shadow_ips", &batch.shadow, false).await
}

/// Keeps the `REFUSED_KEPT` most recent addresses in `table` of each credential in
/// `sightings`; `count`: add how many went to `refused_dropped`.
async fn trim(
    tx: &Transaction<'_>,
    table: &str,
    sightings: &[Sighting],
    count: bool,
) -> Result<()> {
    let mut touched: Vec<i64> = sightings.iter().map(|s| s.credential_id as i64).collect();
    touched.sort_unstable();
    touched.dedup();
    for credential in touched {
        let kept: i64 = col(
            &query_one(
                tx,
                &format!("SELECT COUNT(*) FROM {table} WHERE credential_id = $1"),
                &[&credential],
            )
            .await?,
            0,
        )?;
        if kept as usize <= REFUSED_KEPT {
            continue;
        }
        let dropped = execute(
            tx,
            &format!(
                "DELETE FROM {table} WHERE credential_id = $1 AND ip NOT IN \
                 (SELECT ip FROM {table} WHERE credential_id = $1 \
                  ORDER BY last_seen DESC, requests DESC LIMIT $2)"
            ),
            &[&credential, &(REFUSED_KEPT as i64)],
        )
        .await?;
        if count {
            execute(
                tx,
                "INSERT INTO refused_dropped (credential_id, dropped) VALUES ($1, $2) \
                 ON CONFLICT (credential_id) DO UPDATE SET \
                   dropped = refused_dropped.dropped + EXCLUDED.dropped",
                &[&credential, &(dropped as i64)],
            )
            .await?;
        }
    }
    Ok(())
}

async fn exists(tx: &Transaction<'_>, table: &str, row: u64) -> Result<bool> {
    Ok(query_opt(
        tx,
        &format!("SELECT 1 FROM {table} WHERE id = $1"),
        &[&(row as i64)],
    )
    .await?
    .is_some())
}

fn timestamp(v: Option<i64>) -> Option<Timestamp> {
    v.map(Timestamp)
}

pub(super) async fn refused(
    tx: &Transaction<'_>,
    credential: Option<u64>,
) -> Result<RefusedReport> {
    if let Some(c) = credential {
        if !exists(tx, "credentials", c).await? {
            return Err(StoreError::NotFound("credential"));
        }
    }
    let credential = credential.map(|c| c as i64);
    let rows = query(
        tx,
        "SELECT r.credential_id, c.user_id, r.ip, r.requests, r.first_seen, r.last_seen, \
                    (SELECT p.status FROM permitted_ips p \
                     WHERE p.credential_id = r.credential_id AND p.ip = r.ip) \
             FROM refused_ips r JOIN credentials c ON c.id = r.credential_id \
             WHERE $1::BIGINT IS NULL OR r.credential_id = $1 \
             ORDER BY r.credential_id, r.last_seen DESC, r.ip",
        &[&credential],
    )
    .await?;
    let mut addresses = Vec::with_capacity(rows.len());
    for r in &rows {
        let ip: String = col(r, 2)?;
        addresses.push(RefusedAddress {
            credential_id: id(col(r, 0)?),
            user_id: id(col(r, 1)?),
            ip: parse("address", &ip)?,
            requests: col::<i64>(r, 3)? as u64,
            first_seen: Timestamp(col(r, 4)?),
            last_seen: Timestamp(col(r, 5)?),
            listed: col::<Option<String>>(r, 6)?
                .map(|s| parse("status", &s))
                .transpose()?,
        });
    }
    let rows = query(
        tx,
        "SELECT credential_id, dropped FROM refused_dropped \
             WHERE $1::BIGINT IS NULL OR credential_id = $1 ORDER BY credential_id",
        &[&credential],
    )
    .await?;
    let truncated = rows
        .iter()
        .map(|r| {
            Ok(Truncated {
                credential_id: id(col(r, 0)?),
                dropped: col::<i64>(r, 1)? as u64,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RefusedReport {
        addresses,
        truncated,
    })
}

pub(super) async fn unused(
    tx: &Transaction<'_>,
    since: Timestamp,
    user: Option<u64>,
) -> Result<UnusedReport> {
    if let Some(u) = user {
        if !exists(tx, "users", u).await? {
            return Err(StoreError::NotFound("user"));
        }
    }
    let user = user.map(|u| u as i64);
    let rows = query(
        tx,
        "SELECT p.credential_id, c.user_id, p.id, p.ip, p.created, u.last_seen, \
                    COALESCE(u.requests, 0) \
             FROM permitted_ips p \
             JOIN credentials c ON c.id = p.credential_id \
             LEFT JOIN ip_usage u ON u.credential_id = p.credential_id AND u.ip = p.ip \
             WHERE p.status = 'ACTIVE' AND c.status = 'ACTIVE' \
               AND COALESCE(u.last_seen, p.created) < $1 \
               AND ($2::BIGINT IS NULL OR c.user_id = $2) \
             ORDER BY p.credential_id, p.id",
        &[&since.0, &user],
    )
    .await?;
    let mut entries = Vec::with_capacity(rows.len());
    for r in &rows {
        let ip: String = col(r, 3)?;
        entries.push(UnusedEntry {
            credential_id: id(col(r, 0)?),
            user_id: id(col(r, 1)?),
            entry_id: id(col(r, 2)?),
            ip: parse("address", &ip)?,
            created: Timestamp(col(r, 4)?),
            last_seen: timestamp(col(r, 5)?),
            requests: col::<i64>(r, 6)? as u64,
        });
    }
    let rows = query(
        tx,
        "SELECT c.id, c.user_id, c.status, c.created, MAX(u.last_seen) \
             FROM credentials c LEFT JOIN ip_usage u ON u.credential_id = c.id \
             WHERE c.status = 'ACTIVE' AND ($2::BIGINT IS NULL OR c.user_id = $2) \
             GROUP BY c.id \
             HAVING COALESCE(MAX(u.last_seen), c.created) < $1 \
             ORDER BY c.id",
        &[&since.0, &user],
    )
    .await?;
    let mut credentials = Vec::with_capacity(rows.len());
    for r in &rows {
        let status: String = col(r, 2)?;
        credentials.push(UnusedCredential {
            credential_id: id(col(r, 0)?),
            user_id: id(col(r, 1)?),
            status: parse("status", &status)?,
            created: Timestamp(col(r, 3)?),
            last_seen: timestamp(col(r, 4)?),
        });
    }
    Ok(UnusedReport {
        entries,
        credentials,
    })
}

pub(super) async fn suggest(tx: &Transaction<'_>, credential: u64) -> Result<Vec<Suggestion>> {
    if !exists(tx, "credentials", credential).await? {
        return Err(StoreError::NotFound("credential"));
    }
    let rows = query(
        tx,
        "SELECT a.ip, SUM(a.allowed)::BIGINT, SUM(a.shadow)::BIGINT, SUM(a.refused)::BIGINT, \
                    MAX(a.last_seen), \
                    (SELECT p.status FROM permitted_ips p \
                     WHERE p.credential_id = $1 AND p.ip = a.ip) \
             FROM (SELECT ip, requests AS allowed, 0::BIGINT AS shadow, 0::BIGINT AS refused, \
                          last_seen \
                   FROM ip_usage WHERE credential_id = $1 \
                   UNION ALL \
                   SELECT ip, 0::BIGINT, requests, 0::BIGINT, last_seen FROM shadow_ips \
                   WHERE credential_id = $1 \
                   UNION ALL \
                   SELECT ip, 0::BIGINT, 0::BIGINT, requests, last_seen FROM refused_ips \
                   WHERE credential_id = $1) a \
             GROUP BY a.ip \
             ORDER BY SUM(a.allowed) + SUM(a.shadow) + SUM(a.refused) DESC, a.ip",
        &[&(credential as i64)],
    )
    .await?;
    rows.iter()
        .map(|r| {
            let ip: String = col(r, 0)?;
            let listed: Option<String> = col(r, 5)?;
            Ok(Suggestion {
                ip: parse("address", &ip)?,
                allowed: col::<i64>(r, 1)? as u64,
                shadow: col::<i64>(r, 2)? as u64,
                refused: col::<i64>(r, 3)? as u64,
                last_seen: Timestamp(col(r, 4)?),
                listed: listed.map(|s| parse("status", &s)).transpose()?,
            })
        })
        .collect()
}

//! Usage and refused addresses in SQLite: merging a gateway's batch, and the reports.

use super::super::insight::*;
use super::super::model::Timestamp;
use super::super::{Result, StoreError};
use super::rows::parse_column;
use rusqlite::{params, OptionalExtension, Transaction};

/// Adds one batch: sums, earliest first and latest last sighting; then keeps the
/// `REFUSED_KEPT` most recent refused (and shadow) addresses of each credential it
/// touched.
pub(super) fn record(tx: &Transaction<'_>, batch: &UsageBatch) -> Result<()> {
    for (table, sightings) in [
        ("ip_usage", &batch.allowed),
        ("refused_ips", &batch.refused),
        ("shadow_ips", &batch.shadow),
    ] {
        let mut upsert = tx.prepare(&format!(
            "INSERT INTO {table} (credential_id, ip, requests, first_seen, last_seen) \
             VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (credential_id, ip) DO UPDATE SET \
               requests = requests + excluded.requests, \
               first_seen = MIN(first_seen, excluded.first_seen), \
               last_seen = MAX(last_seen, excluded.last_seen)"
        ))?;
        for s in sightings {
            upsert.execute(params![
                s.credential_id,
                s.ip.to_string(),
                s.requests,
                s.first_seen.0,
                s.last_seen.0
            ])?;
        }
    }
    trim(tx, "refused_ips", &batch.refused, true)?;
    // Shadow passes are bounded the same way (a stolen key in shadow mode could rotate
    // addresses too); `report suggest` reads them and says nothing of a truncation.
    trim(tx, "shadow_ips", &batch.shadow, false)
}

/// Keeps the `REFUSED_KEPT` most recent addresses in `table` of each credential in
/// `sightings`; `count`: add how many went to `refused_dropped`.
fn trim(tx: &Transaction<'_>, table: &str, sightings: &[Sighting], count: bool) -> Result<()> {
    let mut touched: Vec<u64> = sightings.iter().map(|s| s.credential_id).collect();
    touched.sort_unstable();
    touched.dedup();
    for credential in touched {
        let kept: i64 = tx.query_row(
            &format!("SELECT COUNT(*) FROM {table} WHERE credential_id = ?1"),
            [credential],
            |r| r.get(0),
        )?;
        if kept as usize <= REFUSED_KEPT {
            continue;
        }
        let dropped = tx.execute(
            &format!(
                "DELETE FROM {table} WHERE credential_id = ?1 AND ip NOT IN \
                 (SELECT ip FROM {table} WHERE credential_id = ?1 \
                  ORDER BY last_seen DESC, requests DESC LIMIT ?2)"
            ),
            params![credential, REFUSED_KEPT as i64],
        )?;
        if count {
            tx.execute(
                "INSERT INTO refused_dropped (credential_id, dropped) VALUES (?1, ?2) \
                 ON CONFLICT (credential_id) DO UPDATE SET dropped = dropped + excluded.dropped",
                params![credential, dropped as i64],
            )?;
        }
    }
    Ok(())
}

fn exists(tx: &Transaction<'_>, table: &str, id: u64) -> Result<bool> {
    Ok(tx
        .query_row(
            &format!("SELECT 1 FROM {table} WHERE id = ?1"),
            [id],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

pub(super) fn refused(tx: &Transaction<'_>, credential: Option<u64>) -> Result<RefusedReport> {
    if let Some(id) = credential {
        if !exists(tx, "credentials", id)? {
            return Err(StoreError::NotFound("credential"));
        }
    }
    let mut stmt = tx.prepare(
        "SELECT r.credential_id, c.user_id, r.ip, r.requests, r.first_seen, r.last_seen, \
                (SELECT p.status FROM permitted_ips p \
                 WHERE p.credential_id = r.credential_id AND p.ip = r.ip) \
         FROM refused_ips r JOIN credentials c ON c.id = r.credential_id \
         WHERE ?1 IS NULL OR r.credential_id = ?1 \
         ORDER BY r.credential_id, r.last_seen DESC, r.ip",
    )?;
    let addresses = stmt
        .query_map([credential], |r| {
            let ip: String = r.get(2)?;
            let listed: Option<String> = r.get(6)?;
            Ok(RefusedAddress {
                credential_id: r.get(0)?,
                user_id: r.get(1)?,
                ip: parse_column(2, &ip)?,
                requests: r.get(3)?,
                first_seen: Timestamp(r.get(4)?),
                last_seen: Timestamp(r.get(5)?),
                listed: listed.map(|s| parse_column(6, &s)).transpose()?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut stmt = tx.prepare(
        "SELECT credential_id, dropped FROM refused_dropped \
         WHERE ?1 IS NULL OR credential_id = ?1 ORDER BY credential_id",
    )?;
    let truncated = stmt
        .query_map([credential], |r| {
            Ok(Truncated {
                credential_id: r.get(0)?,
                dropped: r.get(1)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(RefusedReport {
        addresses,
        truncated,
    })
}

pub(super) fn unused(
    tx: &Transaction<'_>,
    since: Timestamp,
    user: Option<u64>,
) -> Result<UnusedReport> {
    if let Some(id) = user {
        if !exists(tx, "users", id)? {
            return Err(StoreError::NotFound("user"));
        }
    }
    let mut stmt = tx.prepare(
        "SELECT p.credential_id, c.user_id, p.id, p.ip, p.created, u.last_seen, \
                COALESCE(u.requests, 0) \
         FROM permitted_ips p \
         JOIN credentials c ON c.id = p.credential_id \
         LEFT JOIN ip_usage u ON u.credential_id = p.credential_id AND u.ip = p.ip \
         WHERE p.status = 'ACTIVE' AND c.status = 'ACTIVE' \
           AND COALESCE(u.last_seen, p.created) < ?1 \
           AND (?2 IS NULL OR c.user_id = ?2) \
         ORDER BY p.credential_id, p.id",
    )?;
    let entries = stmt
        .query_map(params![since.0, user], |r| {
            let ip: String = r.get(3)?;
            Ok(UnusedEntry {
                credential_id: r.get(0)?,
                user_id: r.get(1)?,
                entry_id: r.get(2)?,
                ip: parse_column(3, &ip)?,
                created: Timestamp(r.get(4)?),
                last_seen: r.get::<_, Option<i64>>(5)?.map(Timestamp),
                requests: r.get(6)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut stmt = tx.prepare(
        "SELECT c.id, c.user_id, c.status, c.created, MAX(u.last_seen) \
         FROM credentials c LEFT JOIN ip_usage u ON u.credential_id = c.id \
         WHERE c.status = 'ACTIVE' AND (?2 IS NULL OR c.user_id = ?2) \
         GROUP BY c.id \
         HAVING COALESCE(MAX(u.last_seen), c.created) < ?1 \
         ORDER BY c.id",
    )?;
    let credentials = stmt
        .query_map(params![since.0, user], |r| {
            let status: String = r.get(2)?;
            Ok(UnusedCredential {
                credential_id: r.get(0)?,
                user_id: r.get(1)?,
                status: parse_column(2, &status)?,
                created: Timestamp(r.get(3)?),
                last_seen: r.get::<_, Option<i64>>(4)?.map(Timestamp),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(UnusedReport {
        entries,
        credentials,
    })
}

pub(super) fn suggest(tx: &Transaction<'_>, credential: u64) -> Result<Vec<Suggestion>> {
    if !exists(tx, "credentials", credential)? {
        return Err(StoreError::NotFound("credential"));
    }
    let mut stmt = tx.prepare(
        "SELECT a.ip, SUM(a.allowed), SUM(a.shadow), SUM(a.refused), MAX(a.last_seen), \
                (SELECT p.status FROM permitted_ips p \
                 WHERE p.credential_id = ?1 AND p.ip = a.ip) \
         FROM (SELECT ip, requests AS allowed, 0 AS shadow, 0 AS refused, last_seen \
               FROM ip_usage WHERE credential_id = ?1 \
               UNION ALL \
               SELECT ip, 0, requests, 0, last_seen FROM shadow_ips WHERE credential_id = ?1 \
               UNION ALL \
               SELECT ip, 0, 0, requests, last_seen FROM refused_ips WHERE credential_id = ?1) a \
         GROUP BY a.ip \
         ORDER BY SUM(a.allowed) + SUM(a.shadow) + SUM(a.refused) DESC, a.ip",
    )?;
    let rows = stmt
        .query_map([credential], |r| {
            let ip: String = r.get(0)?;
            let listed: Option<String> = r.get(5)?;
            Ok(Suggestion {
                ip: parse_column(0, &ip)?,
                allowed: r.get(1)?,
                shadow: r.get(2)?,
                refused: r.get(3)?,
                last_seen: Timestamp(r.get(4)?),
                listed: listed.map(|s| parse_column(5, &s)).transpose()?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

//! Writing: a change to one credential under the shared rules (the credential's row
//! locked, the plan checked and written, audited and versioned, in one transaction),
//! the audit row, and the version bump every write ends with. The version is advanced
//! last, so the store-wide counter row is held only from that statement to the commit.

use super::super::model::*;
use super::super::rules::{self, Change, Changed, Plan, Record, Target};
use super::super::{random_stamp, Committed, Result, StoreError};
use super::pool::Lease;
use super::rows::*;
use crate::config::PostgresConfig;
use deadpool_postgres::Transaction;

pub(super) async fn change(
    mut client: Lease,
    config: &PostgresConfig,
    target: Target,
    change: Change,
    max_ips: usize,
    actor: &Actor,
    notify: bool,
) -> Result<Committed<Changed>> {
    let change = &change;
    let tx = client.transaction().await?;
    let id = match target {
        Target::Id(id) => id,
        Target::Key(key) => credential_id_by_key(&tx, &key.0)
            .await?
            .ok_or_else(|| StoreError::Rejected(rules::REGISTRATION_REFUSED.into()))?,
    };
    let before = lock_record(&tx, id).await?;
    let now = Timestamp::now();
    let plan = rules::plan(change, &before, now, max_ips)?;
    if plan.is_empty() {
        let (_, version, _) = read_meta(&tx).await?;
        return Ok(Committed {
            value: rules::changed(change, before),
            version,
        });
    }
    let inserted = apply(&tx, id, &plan, now).await?;
    let after = rules::written(before.clone(), &plan, now, &inserted);
    let (b, a) = rules::audit_values(change, &before, &after);
    let actor = rules::audit_actor(change, id, actor);
    audit(&tx, &actor, Some(id), plan.action, b, a).await?;
    let version = bump(&tx, Some(id), config.keep_changes, notify).await?;
    tx.commit().await?;
    Ok(Committed {
        value: rules::changed(change, after),
        version,
    })
}

/// Advances the change version by one, records what it changed and, when `notify`,
/// notifies listeners, in the caller's transaction and in one statement: the counter
/// row's lock (what puts versions in commit order) is taken by it and held only until
/// the commit that follows, never across another round trip. Every 64th version also
/// prunes the history older than `keep`, in the same statement. A listening gateway's
/// writes do not notify here: its listener sends one notice per batch
/// ([`super::notices`]).
pub(super) async fn bump(
    tx: &Transaction<'_>,
    credential: Option<u64>,
    keep: u64,
    notify: bool,
) -> Result<u64> {
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
             SELECT pg_notify($5::TEXT, version::TEXT) FROM logged WHERE $6::BOOL \
         ) \
         SELECT version, (SELECT count(*) FROM notified) FROM logged",
        &[
            &credential.map(|c| c as i64),
            &random_stamp()?,
            &Timestamp::now().0,
            &(keep.min(i64::MAX as u64) as i64),
            &CHANNEL,
            &notify,
        ],
    )
    .await?;
    Ok(col::<i64>(&row, 0)? as u64)
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

/// Writes exactly the rows `plan` names; the ids of the inserted entries, in order.
pub(super) async fn apply(
    tx: &Transaction<'_>,
    credential: u64,
    plan: &Plan,
    now: Timestamp,
) -> Result<Vec<u64>> {
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
    let mut inserted = Vec::with_capacity(plan.insert.len());
    for (ip, status) in &plan.insert {
        let row = query_one(
            tx,
            "INSERT INTO permitted_ips (credential_id, ip, status, created, updated) \
             VALUES ($1, $2, $3, $4, $4) RETURNING id",
            &[&credential, &ip.to_string(), &status.as_str(), &now.0],
        )
        .await?;
        inserted.push(col::<i64>(&row, 0)? as u64);
    }
    for (item, status) in &plan.update {
        execute(tx,
            "UPDATE permitted_ips SET status = $3, updated = $4 WHERE id = $1 AND credential_id = $2",
            &[&(*item as i64), &credential, &status.as_str(), &now.0],
        )
        .await?;
    }
    Ok(inserted)
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

//! A change to one credential under the shared rules: the credential's row locked,
//! the plan checked and written, audited and versioned, in one transaction. The
//! version is advanced last, so the store-wide counter row is held only from that
//! statement to the commit.

use super::super::model::*;
use super::super::rules::{self, Change, Changed, Target};
use super::super::{Committed, Result, StoreError};
use super::pool::Lease;
use super::rows::*;
use crate::config::PostgresConfig;

pub(super) async fn change(
    mut client: Lease,
    config: &PostgresConfig,
    target: Target,
    change: Change,
    max_ips: usize,
    actor: &Actor,
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
    apply(&tx, id, &plan, now).await?;
    let after = read_record(&tx, id).await?;
    let (b, a) = rules::audit_values(change, &before, &after);
    let actor = rules::audit_actor(change, id, actor);
    audit(&tx, &actor, Some(id), plan.action, b, a).await?;
    let version = bump(&tx, Some(id), config.keep_changes).await?;
    tx.commit().await?;
    Ok(Committed {
        value: rules::changed(change, after),
        version,
    })
}

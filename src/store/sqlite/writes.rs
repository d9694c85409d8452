//! A change to one credential under the shared rules, in one immediate (write)
//! transaction: read, planned, written, audited and versioned, one writer at a time.

use super::super::model::*;
use super::super::rules::{self, Change, Changed, Target};
use super::super::{Committed, Result, StoreError};
use super::rows::*;
use super::Inner;

impl Inner {
    pub(super) fn change(
        &self,
        target: Target,
        change: &Change,
        max_ips: usize,
        actor: &Actor,
    ) -> Result<Committed<Changed>> {
        self.write(|tx| {
            let id = match target {
                Target::Id(id) => id,
                Target::Key(key) => credential_id_by_key(tx, &key.0)?
                    .ok_or_else(|| StoreError::Rejected(rules::REGISTRATION_REFUSED.into()))?,
            };
            let before = read_record(tx, id)?;
            let now = Timestamp::now();
            let plan = rules::plan(change, &before, now, max_ips)?;
            if plan.is_empty() {
                let (_, version, _) = read_meta(tx)?;
                return Ok(Committed {
                    value: rules::changed(change, before),
                    version,
                });
            }
            apply(tx, id, &plan, now)?;
            let after = read_record(tx, id)?;
            let (b, a) = rules::audit_values(change, &before, &after);
            let actor = rules::audit_actor(change, id, actor);
            audit(tx, &actor, Some(id), plan.action, b, a)?;
            let version = bump(tx, Some(id), self.config.keep_changes)?;
            Ok(Committed {
                value: rules::changed(change, after),
                version,
            })
        })
    }
}

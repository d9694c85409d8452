//! Console links in the SQLite file (see [`crate::store::console_link`]).

use super::rows::audit;
use crate::acl::Identity;
use crate::store::{Actor, NewConsoleLink, Result, StoreError, Timestamp};
use rusqlite::{params, OptionalExtension, Transaction};
use serde_json::json;
use std::net::IpAddr;

pub(super) fn mint(tx: &Transaction<'_>, link: &NewConsoleLink, actor: &Actor) -> Result<()> {
    let known: Option<i64> = tx
        .query_row(
            "SELECT id FROM credentials WHERE id = ?1",
            [link.credential_id],
            |r| r.get(0),
        )
        .optional()?;
    if known.is_none() {
        return Err(StoreError::NotFound("credential"));
    }
    tx.execute(
        "INSERT INTO console_links (token_hash, credential_id, created, expires) \
         VALUES (?1, ?2, ?3, ?4)",
        params![
            link.token_hash,
            link.credential_id,
            Timestamp::now().0,
            link.expires.0
        ],
    )?;
    audit(
        tx,
        actor,
        Some(link.credential_id),
        "console_link.mint",
        None,
        Some(json!({ "expires": link.expires.to_string() })),
    )
}

pub(super) fn spend(
    tx: &Transaction<'_>,
    token_hash: &str,
    from: IpAddr,
) -> Result<Option<Identity>> {
    let now = Timestamp::now();
    let spent: Option<(u64, u64)> = tx
        .query_row(
            "UPDATE console_links SET used = ?2, used_from = ?3 \
             WHERE token_hash = ?1 AND used IS NULL AND expires > ?2 \
               AND credential_id IN (SELECT id FROM credentials WHERE status = 'ACTIVE') \
             RETURNING credential_id, \
               (SELECT user_id FROM credentials WHERE id = console_links.credential_id)",
            params![token_hash, now.0, from.to_string()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((credential_id, user_id)) = spent else {
        return Ok(None);
    };
    let actor = Actor {
        who: "console-link".into(),
        ip: Some(from),
    };
    audit(
        tx,
        &actor,
        Some(credential_id),
        "console_link.use",
        None,
        Some(json!({ "from": from })),
    )?;
    Ok(Some(Identity {
        credential_id,
        user_id,
    }))
}

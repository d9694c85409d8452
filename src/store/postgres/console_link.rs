//! Console links in PostgreSQL (see [`crate::store::console_link`]).

use super::rows::col;
use super::writes::audit;
use crate::acl::Identity;
use crate::store::{Actor, NewConsoleLink, Result, StoreError, Timestamp};
use deadpool_postgres::Transaction;
use serde_json::json;
use std::net::IpAddr;

pub(super) async fn mint(tx: &Transaction<'_>, link: &NewConsoleLink, actor: &Actor) -> Result<()> {
    let credential = link.credential_id as i64;
    let known = tx
        .query_opt("SELECT id FROM credentials WHERE id = $1", &[&credential])
        .await?;
    if known.is_none() {
        return Err(StoreError::NotFound("credential"));
    }
    tx.execute(
        "INSERT INTO console_links (token_hash, credential_id, created, expires) \
         VALUES ($1, $2, $3, $4)",
        &[
            &link.token_hash,
            &credential,
            &Timestamp::now().0,
            &link.expires.0,
        ],
    )
    .await?;
    audit(
        tx,
        actor,
        Some(link.credential_id),
        "console_link.mint",
        None,
        Some(json!({ "expires": link.expires.to_string() })),
    )
    .await
}

pub(super) async fn spend(
    tx: &Transaction<'_>,
    token_hash: &str,
    from: IpAddr,
) -> Result<Option<Identity>> {
    let now = Timestamp::now();
    let row = tx
        .query_opt(
            "UPDATE console_links l SET used = $2, used_from = $3 \
             FROM credentials c \
             WHERE l.token_hash = $1 AND l.used IS NULL AND l.expires > $2 \
               AND c.id = l.credential_id AND c.status = 'ACTIVE' \
             RETURNING l.credential_id, c.user_id",
            &[&token_hash, &now.0, &from.to_string()],
        )
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let credential_id = col::<i64>(&row, 0)? as u64;
    let user_id = col::<i64>(&row, 1)? as u64;
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
    )
    .await?;
    Ok(Some(Identity {
        credential_id,
        user_id,
    }))
}

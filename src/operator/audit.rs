//! `usage` and `audit`: what is billed, and who changed what.

use super::table::{change_summary, shown, utc, Table};
use super::{or_dash, to_value, Context, OperatorError, Output};
use crate::store::Page;

pub(super) async fn usage(cx: &Context<'_>, user: Option<u64>) -> Result<Output, OperatorError> {
    if let Some(id) = user {
        cx.need_user(id).await?;
    }
    let list = cx.store.usage(user).await?;
    let mut t = Table::new(&["CREDENTIAL", "USER", "STATUS", "WILDCARD", "ACTIVE_IPS"]);
    for u in &list {
        t.row(vec![
            u.credential_id.to_string(),
            u.user_id.to_string(),
            u.status.to_string(),
            if u.wildcard { "*" } else { "-" }.into(),
            u.active_ips.to_string(),
        ]);
    }
    Ok(Output {
        plain: t.render(),
        json: to_value(&list),
    })
}

pub(super) async fn audit(
    cx: &Context<'_>,
    credential: Option<u64>,
    limit: u32,
) -> Result<Output, OperatorError> {
    if let Some(id) = credential {
        cx.need_credential(id).await?;
    }
    let list = cx.store.audit(credential, Page::first(limit)).await?;
    // The change in a few words; the full before and after are `--json`'s.
    let mut t = Table::new(&[
        "ID",
        "AT",
        "ACTOR",
        "FROM",
        "CREDENTIAL",
        "ACTION",
        "CHANGE",
    ])
    .flexible(6);
    for a in &list {
        t.row(vec![
            a.id.to_string(),
            utc(a.at),
            shown(&a.actor),
            shown(a.actor_ip.as_deref().unwrap_or("-")),
            or_dash(a.credential_id),
            a.action.to_string(),
            change_summary(a.before.as_ref(), a.after.as_ref()),
        ]);
    }
    Ok(Output {
        plain: t.render(),
        json: to_value(&list),
    })
}

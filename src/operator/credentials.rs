//! `credential list|revoke|mode` and `wildcard set|clear`: what a key is bound to.

use super::table::{shown, utc_or_dash, Table};
use super::{or_dash, to_value, Context, OperatorError, Output, WildcardAction};
use crate::store::{Change, Mode, Page};

pub(super) async fn credential_list(cx: &Context<'_>, user: u64) -> Result<Output, OperatorError> {
    cx.need_user(user).await?;
    let list = cx.store.credentials(user, Page::all()).await?;
    let mut t = Table::new(&[
        "ID",
        "STATUS",
        "MODE",
        "WILDCARD",
        "EXPIRY",
        "DEVICE",
        "DESCRIPTION",
    ])
    .flexible(6);
    for c in &list {
        t.row(vec![
            c.id.to_string(),
            c.status.to_string(),
            c.mode.to_string(),
            if c.wildcard { "*" } else { "-" }.into(),
            utc_or_dash(c.expiry_time),
            or_dash(
                c.permitted_device
                    .as_ref()
                    .map(|d| format!("{} ({})", shown(&d.description), d.ip)),
            ),
            shown(c.description.as_deref().unwrap_or("-")),
        ]);
    }
    Ok(Output {
        plain: t.render(),
        json: to_value(&list),
    })
}

pub(super) async fn credential_revoke(cx: &Context<'_>, id: u64) -> Result<Output, OperatorError> {
    let c = cx.change(id, Change::Revoke).await?.credential;
    Ok(Output {
        plain: format!("credential {} is {}", c.id, c.status),
        json: to_value(&c),
    })
}

pub(super) async fn credential_mode(
    cx: &Context<'_>,
    id: u64,
    mode: &str,
) -> Result<Output, OperatorError> {
    let mode: Mode = mode.parse().map_err(OperatorError::Input)?;
    let c = cx.change(id, Change::Mode(mode)).await?.credential;
    let what = match c.mode {
        Mode::Shadow => "shadow (keys from unlisted addresses are let through and reported)",
        Mode::Enforce => "enforce (keys from unlisted addresses are refused)",
    };
    Ok(Output {
        plain: format!("credential {}: {what}", c.id),
        json: to_value(&c),
    })
}

pub(super) async fn wildcard(
    cx: &Context<'_>,
    action: WildcardAction,
    id: u64,
) -> Result<Output, OperatorError> {
    let on = matches!(action, WildcardAction::Set);
    let c = cx.change(id, Change::Wildcard(on)).await?.credential;
    let state = if c.wildcard {
        "set (every address admitted)"
    } else {
        "cleared"
    };
    Ok(Output {
        plain: format!("credential {}: wildcard {state}", c.id),
        json: to_value(&c),
    })
}

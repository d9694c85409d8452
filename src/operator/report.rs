//! `ipgate admin report …`: what the gateways saw, for the owner of a whitelist
//! (SPEC section 9). The gateways count requests per credential and address and write
//! them to the store about once a minute; these commands read them back.

use super::table::{utc, utc_or_dash, Table};
use super::{or_dash, to_value, Context, OperatorError, Output};
use crate::store::{Timestamp, REFUSED_KEPT};
use clap::Subcommand;
use serde_json::json;
use std::fmt::Write as _;
use std::time::Duration;

/// Longest look-back `report unused` takes: the store keeps no older usage than the
/// gateway has run anyway, and a bigger number is a typo.
const MAX_DAYS: u32 = 36_500;

#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Addresses a valid key was refused from because they were not ACTIVE on its list:
    /// the sign of a stolen key (or of a list that is not finished yet). LISTED says
    /// when an address is on the list now (most likely added since by its owner).
    /// Requests let through by shadow mode are no refusals: see `report suggest`.
    Refused {
        /// Only this credential.
        #[arg(long = "credential")]
        credential_id: Option<u64>,
    },
    /// ACTIVE entries with no allowed request in the last N days, and ACTIVE
    /// credentials with none at all: candidates for removal.
    Unused {
        /// How far back a request counts as use.
        #[arg(long, default_value_t = 30)]
        days: u32,
        /// Only this user's credentials.
        #[arg(long)]
        user: Option<u64>,
    },
    /// Every address a credential was used from in the kept history, with counts:
    /// allowed by the list, let through by shadow mode only, refused. A whitelist to
    /// review before it is enforced.
    Suggest {
        /// The credential.
        credential_id: u64,
    },
}

pub(super) async fn run(cx: &Context<'_>, command: ReportCommand) -> Result<Output, OperatorError> {
    match command {
        ReportCommand::Refused { credential_id } => refused(cx, credential_id).await,
        ReportCommand::Unused { days, user } => unused(cx, days, user).await,
        ReportCommand::Suggest { credential_id } => suggest(cx, credential_id).await,
    }
}

async fn refused(cx: &Context<'_>, credential: Option<u64>) -> Result<Output, OperatorError> {
    if let Some(id) = credential {
        cx.need_credential(id).await?;
    }
    let report = cx.store.refused(credential).await?;
    let mut t = Table::new(&[
        "CREDENTIAL",
        "USER",
        "IP",
        "REQUESTS",
        "FIRST_SEEN",
        "LAST_SEEN",
        "LISTED",
    ]);
    for a in &report.addresses {
        t.row(vec![
            a.credential_id.to_string(),
            a.user_id.to_string(),
            a.ip.to_string(),
            a.requests.to_string(),
            utc(a.first_seen),
            utc(a.last_seen),
            or_dash(a.listed),
        ]);
    }
    let mut plain = t.render();
    for t in &report.truncated {
        write!(
            plain,
            "\ncredential {}: only the {REFUSED_KEPT} most recent addresses are kept; \
             {} older ones were let go",
            t.credential_id, t.dropped
        )
        .expect("write to String");
    }
    Ok(Output {
        plain,
        json: {
            let mut v = to_value(&report);
            v["kept_per_credential"] = json!(REFUSED_KEPT);
            v
        },
    })
}

async fn unused(cx: &Context<'_>, days: u32, user: Option<u64>) -> Result<Output, OperatorError> {
    if days == 0 || days > MAX_DAYS {
        return Err(OperatorError::Input(format!(
            "--days must be 1 to {MAX_DAYS}, not {days}"
        )));
    }
    if let Some(id) = user {
        cx.need_user(id).await?;
    }
    let window = Duration::from_secs(u64::from(days) * 86_400);
    let since = Timestamp(Timestamp::now().0 - window.as_micros() as i64);
    let report = cx.store.unused(since, user).await?;
    let mut entries = Table::new(&[
        "CREDENTIAL",
        "USER",
        "ENTRY",
        "IP",
        "CREATED",
        "LAST_SEEN",
        "REQUESTS",
    ]);
    for e in &report.entries {
        entries.row(vec![
            e.credential_id.to_string(),
            e.user_id.to_string(),
            e.entry_id.to_string(),
            e.ip.to_string(),
            utc(e.created),
            utc_or_dash(e.last_seen),
            e.requests.to_string(),
        ]);
    }
    let mut credentials = Table::new(&["CREDENTIAL", "USER", "STATUS", "CREATED", "LAST_SEEN"]);
    for c in &report.credentials {
        credentials.row(vec![
            c.credential_id.to_string(),
            c.user_id.to_string(),
            c.status.to_string(),
            utc(c.created),
            utc_or_dash(c.last_seen),
        ]);
    }
    let (entries, credentials) = (entries.render(), credentials.render());
    Ok(Output {
        plain: format!(
            "ACTIVE entries with no allowed request in {days} days:\n{entries}\n\n\
             ACTIVE credentials with no allowed request in {days} days:\n{credentials}"
        ),
        json: json!({
            "days": days,
            "since": since,
            "entries": to_value(&report.entries),
            "credentials": to_value(&report.credentials),
        }),
    })
}

async fn suggest(cx: &Context<'_>, id: u64) -> Result<Output, OperatorError> {
    cx.need_credential(id).await?;
    let list = cx.store.suggest(id).await?;
    let mut t = Table::new(&["IP", "ALLOWED", "SHADOW", "REFUSED", "LAST_SEEN", "LISTED"]);
    for s in &list {
        t.row(vec![
            s.ip.to_string(),
            s.allowed.to_string(),
            s.shadow.to_string(),
            s.refused.to_string(),
            utc(s.last_seen),
            or_dash(s.listed),
        ]);
    }
    Ok(Output {
        plain: t.render(),
        json: to_value(&list),
    })
}

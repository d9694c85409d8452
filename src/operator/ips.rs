//! `ip list|add|set-status`: a credential's permitted IPs.

use super::table::{utc, utc_or_dash, Table};
use super::{missing, to_value, Context, OperatorError, Output};
use crate::store::{self, Change, IpStatus, Page, StoreError, Target};
use std::net::IpAddr;

pub(super) fn parse_status(s: &str) -> Result<IpStatus, OperatorError> {
    s.parse().map_err(OperatorError::Input)
}

pub(super) fn parse_ip(s: &str) -> Result<IpAddr, OperatorError> {
    if s.trim() == "*" {
        return Err(OperatorError::Input(
            "\"*\" is not an address; use `ipgate admin wildcard set CREDENTIAL_ID`".into(),
        ));
    }
    s.trim()
        .parse()
        .map_err(|_| OperatorError::Input(format!("{s:?} is not a single IPv4 or IPv6 address")))
}

/// The entry an entry change was about.
pub(super) fn entry_of(changed: store::Changed) -> Result<store::PermittedIp, OperatorError> {
    changed
        .entry
        .ok_or(OperatorError::Store(StoreError::NotFound("permitted IP")))
}

/// The entries as an array (`--json`); the wildcard is the credential's, shown by
/// `credential list`, and here only as a line for people.
pub(super) async fn ip_list(cx: &Context<'_>, id: u64) -> Result<Output, OperatorError> {
    let c = cx.need_credential(id).await?;
    let list = cx.store.ips(id, Page::all()).await?;
    let mut t = Table::new(&[
        "ID",
        "IP",
        "STATUS",
        "CREATED",
        "UPDATED",
        "LAST_SEEN",
        "REQUESTS",
    ]);
    if c.wildcard {
        let dash = || "-".to_string();
        t.row(vec![
            dash(),
            "*".into(),
            "ACTIVE".into(),
            dash(),
            dash(),
            dash(),
            "- (operator wildcard)".into(),
        ]);
    }
    for p in &list {
        t.row(vec![
            p.id.to_string(),
            p.ip.to_string(),
            p.status.to_string(),
            utc(p.created),
            utc(p.updated),
            utc_or_dash(p.last_seen),
            p.requests.to_string(),
        ]);
    }
    Ok(Output {
        plain: t.render(),
        json: to_value(&list),
    })
}

pub(super) async fn ip_add(
    cx: &Context<'_>,
    id: u64,
    ip: &str,
    status: &str,
) -> Result<Output, OperatorError> {
    let add = Change::AddIp {
        ip: parse_ip(ip)?,
        status: parse_status(status)?,
    };
    let entry = entry_of(cx.change(id, add).await?)?;
    Ok(Output {
        plain: entry.id.to_string(),
        json: to_value(&entry),
    })
}

pub(super) async fn ip_set_status(
    cx: &Context<'_>,
    id: u64,
    item: u64,
    status: &str,
) -> Result<Output, OperatorError> {
    let set = Change::SetIpStatus {
        item,
        status: parse_status(status)?,
    };
    cx.need_credential(id).await?;
    let changed = cx
        .store
        .change(
            Target::Id(id),
            set,
            cx.config.limits.max_ips_per_credential,
            cx.actor,
        )
        .await
        .map_err(missing("permitted IP", item))?
        .value;
    let entry = entry_of(changed)?;
    Ok(Output {
        plain: format!("entry {} ({}) is {}", entry.id, entry.ip, entry.status),
        json: to_value(&entry),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_is_not_an_address() {
        assert!(parse_ip("*").is_err());
        assert!(parse_ip("10.0.0.0/8").is_err());
        assert!(parse_ip("::1").is_ok());
    }
}

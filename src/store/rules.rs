//! The rules every backend enforces, written once: what a change to one credential may
//! do and which rows it writes.
//!
//! A backend locks the credential, reads its [`Record`], asks [`plan`] what to write
//! (or why not), writes exactly that, and records the audit row [`audit_values`]
//! describes. Nothing here does I/O, so both backends agree by construction and the
//! rules are tested without a database.

use super::model::{
    Actor, Credential, CredentialStatus, Device, IpStatus, Mode, PermittedIp, Timestamp,
};
use super::StoreError;
use crate::acl::{normalize, KeyHash};
use serde_json::Value;
use std::net::IpAddr;

/// INACTIVE entries are kept forever as the audit trail, so they cannot count against
/// the limit (a key holder rotating addresses would run out); they are bounded apart:
/// at most this many times the ACTIVE limit, ACTIVE and INACTIVE together.
pub const INACTIVE_PER_ACTIVE_LIMIT: usize = 10;

/// One message for every reason a key cannot register, like the 403 on the hot path:
/// the answer must not tell a guesser which keys exist.
pub const REGISTRATION_REFUSED: &str = "This secret cannot be used to register a device.";

/// Which credential a change is for.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    Id(u64),
    /// By its key's digest (a device registration knows only the key).
    Key(KeyHash),
}

/// A change to one credential.
#[derive(Clone, Debug)]
pub enum Change {
    Revoke,
    /// Set or clear the operator-only "*".
    Wildcard(bool),
    /// Enforce the whitelist, or only report what it would refuse (operator only).
    Mode(Mode),
    /// Binds a pending key: `ips` (normalised, de-duplicated, never empty) become
    /// ACTIVE entries and the credential becomes ACTIVE.
    Register {
        description: String,
        ips: Vec<IpAddr>,
        caller: IpAddr,
    },
    AddIp {
        ip: IpAddr,
        status: IpStatus,
    },
    SetIpStatus {
        item: u64,
        status: IpStatus,
    },
}

/// A credential and every entry on its list, read under the credential's lock.
#[derive(Clone, Debug)]
pub struct Record {
    pub credential: Credential,
    pub entries: Vec<PermittedIp>,
}

impl Record {
    fn entry_by_ip(&self, ip: IpAddr) -> Option<&PermittedIp> {
        self.entries.iter().find(|e| e.ip == ip)
    }

    fn entry(&self, item: u64) -> Option<&PermittedIp> {
        self.entries.iter().find(|e| e.id == item)
    }

    fn active(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| e.status == IpStatus::Active)
            .count()
    }
}

/// The credential's columns a change may set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialUpdate {
    pub status: CredentialStatus,
    pub wildcard: bool,
    pub expiry: Option<Timestamp>,
    pub device: Option<Device>,
    pub mode: Mode,
}

/// The rows one change writes. An empty plan changes nothing: no row, no audit entry,
/// no new version.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The audit log's action name.
    pub action: &'static str,
    pub credential: Option<CredentialUpdate>,
    pub insert: Vec<(IpAddr, IpStatus)>,
    pub update: Vec<(u64, IpStatus)>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.credential.is_none() && self.insert.is_empty() && self.update.is_empty()
    }
}

fn rejected(msg: impl Into<String>) -> StoreError {
    StoreError::Rejected(msg.into())
}

/// The record as `plan` leaves it, built from what the writer already has (the record
/// it locked, the plan, and the ids the database gave the inserted entries, in the
/// plan's order) instead of read back: the same rows the writes produced.
pub fn written(before: Record, plan: &Plan, now: Timestamp, inserted: &[u64]) -> Record {
    let Record {
        mut credential,
        mut entries,
    } = before;
    if let Some(c) = &plan.credential {
        credential.status = CredentialStatus::as_read(c.status, c.expiry, now);
        credential.wildcard = c.wildcard;
        credential.expiry_time = c.expiry;
        credential.permitted_device = c.device.clone();
        credential.mode = c.mode;
        credential.updated = now;
    }
    for (item, status) in &plan.update {
        if let Some(e) = entries.iter_mut().find(|e| e.id == *item) {
            e.status = *status;
            e.updated = now;
        }
    }
    for ((ip, status), id) in plan.insert.iter().zip(inserted) {
        entries.push(PermittedIp {
            id: *id,
            credential_id: credential.id,
            ip: *ip,
            status: *status,
            created: now,
            updated: now,
            last_seen: None,
            requests: 0,
        });
    }
    entries.sort_by_key(|e| e.id);
    Record {
        credential,
        entries,
    }
}

/// What `change` writes to `record`'s credential, or why it may not.
pub fn plan(
    change: &Change,
    record: &Record,
    now: Timestamp,
    max_ips: usize,
) -> Result<Plan, StoreError> {
    let c = &record.credential;
    let update = || CredentialUpdate {
        // EXPIRED is how a pending key reads past its window; the store keeps it pending.
        status: c.status.stored(),
        wildcard: c.wildcard,
        expiry: c.expiry_time,
        device: c.permitted_device.clone(),
        mode: c.mode,
    };
    let mut plan = Plan::default();
    match change {
        Change::Revoke => {
            plan.action = "credential.revoke";
            if c.status != CredentialStatus::Revoked {
                plan.credential = Some(CredentialUpdate {
                    status: CredentialStatus::Revoked,
                    ..update()
                });
            }
        }
        Change::Wildcard(on) => {
            plan.action = if *on {
                "wildcard.set"
            } else {
                "wildcard.clear"
            };
            if *on && c.status != CredentialStatus::Active {
                return Err(rejected(format!(
                    "credential {} is {}: the wildcard can only be set on an ACTIVE credential",
                    c.id, c.status
                )));
            }
            if c.wildcard != *on {
                plan.credential = Some(CredentialUpdate {
                    wildcard: *on,
                    ..update()
                });
            }
        }
        Change::Mode(mode) => {
            plan.action = "credential.mode";
            if c.mode != *mode {
                plan.credential = Some(CredentialUpdate {
                    mode: *mode,
                    ..update()
                });
            }
        }
        Change::Register {
            description,
            ips,
            caller,
        } => {
            plan.action = "device.register";
            let in_window = c.expiry_time.is_none_or(|at| now < at);
            if c.status != CredentialStatus::PendingFirstUse || !in_window {
                return Err(rejected(REGISTRATION_REFUSED));
            }
            // An address already on the list (an operator may prepare a pending key)
            // keeps its entry and becomes ACTIVE; the others are added.
            for ip in ips {
                usable(normalize(*ip))?;
            }
            for ip in ips {
                match record.entry_by_ip(normalize(*ip)) {
                    None => plan.insert.push((normalize(*ip), IpStatus::Active)),
                    Some(e) if e.status != IpStatus::Active => {
                        plan.update.push((e.id, IpStatus::Active))
                    }
                    Some(_) => {}
                }
            }
            check_limits(
                record,
                plan.insert.len() + plan.update.len(),
                plan.insert.len(),
                max_ips,
            )?;
            plan.credential = Some(CredentialUpdate {
                status: CredentialStatus::Active,
                expiry: None,
                device: Some(Device {
                    description: description.clone(),
                    ip: normalize(*caller),
                }),
                ..update()
            });
        }
        Change::AddIp { ip, status } => {
            plan.action = "ip.add";
            let ip = normalize(*ip);
            not_revoked(c)?;
            usable(ip)?;
            if record.entry_by_ip(ip).is_some() {
                return Err(rejected(format!(
                    "{ip} is already on this credential's list; change the status of that entry instead"
                )));
            }
            check_limits(record, usize::from(*status == IpStatus::Active), 1, max_ips)?;
            plan.insert.push((ip, *status));
        }
        Change::SetIpStatus { item, status } => {
            plan.action = "ip.set_status";
            let entry = record
                .entry(*item)
                .ok_or(StoreError::NotFound("permitted IP"))?;
            if entry.status != *status {
                not_revoked(c)?;
                if *status == IpStatus::Active {
                    check_limits(record, 1, 0, max_ips)?;
                }
                plan.update.push((*item, *status));
            }
        }
    }
    Ok(plan)
}

/// A revoked credential's list is its audit trail: it no longer changes.
fn not_revoked(c: &Credential) -> Result<(), StoreError> {
    if c.status == CredentialStatus::Revoked {
        return Err(rejected(format!(
            "credential {} is REVOKED: its list of permitted IPs can no longer change",
            c.id
        )));
    }
    Ok(())
}

/// An entry must name an address a client can connect from. The unspecified address
/// (`0.0.0.0`, `::`) reads like "any address" but matches no client, and a multicast or
/// broadcast address is never a TCP peer: each would only take a billed slot.
fn usable(ip: IpAddr) -> Result<(), StoreError> {
    let why = match ip {
        ip if ip.is_unspecified() => "the unspecified address: no client connects from it",
        ip if ip.is_multicast() => "a multicast address: no client connects from it",
        IpAddr::V4(v4) if v4.is_broadcast() => "the broadcast address: no client connects from it",
        _ => return Ok(()),
    };
    Err(rejected(format!(
        "{ip} is {why}; list the address the client connects from"
    )))
}

/// Refuses a change that would leave more than `max_ips` ACTIVE entries, or more than
/// [`INACTIVE_PER_ACTIVE_LIMIT`] times that in all, on one credential.
fn check_limits(
    record: &Record,
    new_active: usize,
    new_total: usize,
    max_ips: usize,
) -> Result<(), StoreError> {
    if record.active() + new_active > max_ips {
        return Err(rejected(format!(
            "At most {max_ips} ACTIVE permitted IPs per credential; mark one INACTIVE first."
        )));
    }
    let max_total = max_ips.saturating_mul(INACTIVE_PER_ACTIVE_LIMIT);
    if record.entries.len() + new_total > max_total {
        return Err(rejected(format!(
            "At most {max_total} permitted IP entries per credential, ACTIVE and INACTIVE."
        )));
    }
    Ok(())
}

/// The audit row's "before" and "after" for a change that was written.
pub fn audit_values(
    change: &Change,
    before: &Record,
    after: &Record,
) -> (Option<Value>, Option<Value>) {
    match change {
        Change::Revoke | Change::Wildcard(_) | Change::Mode(_) => {
            (json(&before.credential), json(&after.credential))
        }
        Change::Register { ips, .. } => {
            let mut after_json = json(&after.credential);
            if let Some(Value::Object(m)) = after_json.as_mut() {
                let ips: Vec<IpAddr> = ips.iter().map(|ip| normalize(*ip)).collect();
                m.insert("permitted_ips".into(), serde_json::json!(ips));
            }
            (json(&before.credential), after_json)
        }
        Change::AddIp { ip, .. } => (None, after.entry_by_ip(normalize(*ip)).and_then(entry_json)),
        Change::SetIpStatus { item, .. } => (
            before.entry(*item).and_then(entry_json),
            after.entry(*item).and_then(entry_json),
        ),
    }
}

/// An entry as the audit log keeps it: what was set, not how much it was used.
fn entry_json(entry: &PermittedIp) -> Option<Value> {
    let mut v = json(entry)?;
    if let Value::Object(m) = &mut v {
        m.remove("last_seen");
        m.remove("requests");
    }
    Some(v)
}

/// Who the audit log names for a change to credential `id`: a device registration is
/// made by the key holder itself, whoever relayed it.
pub fn audit_actor(change: &Change, id: u64, given: &Actor) -> Actor {
    match change {
        Change::Register { caller, .. } => Actor::credential(id, normalize(*caller)),
        _ => given.clone(),
    }
}

fn json<T: serde::Serialize>(value: &T) -> Option<Value> {
    serde_json::to_value(value).ok()
}

/// What a change returns: the credential as it is now, and the entry the change was
/// about (for entry changes).
#[derive(Clone, Debug)]
pub struct Changed {
    pub credential: Credential,
    pub entry: Option<PermittedIp>,
}

/// The answer to `change` from the record as it stands after it.
pub fn changed(change: &Change, after: Record) -> Changed {
    let entry = match change {
        Change::AddIp { ip, .. } => after.entry_by_ip(normalize(*ip)).cloned(),
        Change::SetIpStatus { item, .. } => after.entry(*item).cloned(),
        _ => None,
    };
    Changed {
        credential: after.credential,
        entry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn record(status: CredentialStatus, entries: &[(&str, IpStatus)]) -> Record {
        Record {
            credential: Credential {
                id: 1,
                user_id: 1,
                created: Timestamp(0),
                updated: Timestamp(0),
                status,
                expiry_time: Some(Timestamp(100)),
                description: None,
                wildcard: false,
                permitted_device: None,
                mode: Mode::Enforce,
            },
            entries: entries
                .iter()
                .enumerate()
                .map(|(i, (a, s))| PermittedIp {
                    id: i as u64 + 1,
                    credential_id: 1,
                    ip: ip(a),
                    status: *s,
                    created: Timestamp(0),
                    updated: Timestamp(0),
                    last_seen: None,
                    requests: 0,
                })
                .collect(),
        }
    }

    const A: IpStatus = IpStatus::Active;
    const I: IpStatus = IpStatus::Inactive;

    #[test]
    fn registration_inserts_new_and_reactivates_listed_addresses() {
        let r = record(
            CredentialStatus::PendingFirstUse,
            &[("10.0.0.1", I), ("10.0.0.2", A)],
        );
        let change = Change::Register {
            description: "d".into(),
            ips: vec![ip("::ffff:10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.3")],
            caller: ip("::ffff:10.0.0.9"),
        };
        let p = plan(&change, &r, Timestamp(50), 5).unwrap();
        assert_eq!(p.insert, [(ip("10.0.0.3"), A)]);
        assert_eq!(p.update, [(1, A)]);
        let c = p.credential.unwrap();
        assert_eq!((c.status, c.expiry), (CredentialStatus::Active, None));
        assert_eq!(c.device.unwrap().ip, ip("10.0.0.9"));
        // Past the window, or not pending: the one refusal.
        for (status, now) in [
            (CredentialStatus::PendingFirstUse, 100),
            (CredentialStatus::Active, 50),
            (CredentialStatus::Revoked, 50),
        ] {
            let e = plan(&change, &record(status, &[]), Timestamp(now), 5).unwrap_err();
            assert_eq!(e.to_string(), REGISTRATION_REFUSED);
        }
    }

    #[test]
    fn entries_obey_duplicates_and_both_limits() {
        let r = record(
            CredentialStatus::Active,
            &[("10.0.0.1", A), ("10.0.0.2", I)],
        );
        let add = |a: &str, s| Change::AddIp {
            ip: ip(a),
            status: s,
        };
        assert!(plan(&add("::ffff:10.0.0.2", A), &r, Timestamp(0), 5).is_err());
        assert!(plan(&add("10.0.0.3", A), &r, Timestamp(0), 1).is_err());
        // INACTIVE entries are bounded by the total: 10 x the ACTIVE limit.
        assert_eq!(
            plan(&add("10.0.0.3", I), &r, Timestamp(0), 1)
                .unwrap()
                .insert,
            [(ip("10.0.0.3"), I)]
        );
        let full: Vec<(String, IpStatus)> = (0..10).map(|i| (format!("10.1.0.{i}"), I)).collect();
        let full: Vec<(&str, IpStatus)> = full.iter().map(|(a, s)| (a.as_str(), *s)).collect();
        let full = record(CredentialStatus::Active, &full);
        assert!(plan(&add("10.0.0.3", I), &full, Timestamp(0), 1).is_err());
        let back = Change::SetIpStatus { item: 2, status: A };
        assert!(plan(&back, &r, Timestamp(0), 1).is_err());
        assert_eq!(plan(&back, &r, Timestamp(0), 2).unwrap().update, [(2, A)]);
        let missing = Change::SetIpStatus { item: 9, status: A };
        assert!(matches!(
            plan(&missing, &r, Timestamp(0), 2),
            Err(StoreError::NotFound(_))
        ));
    }

    #[test]
    fn unusable_addresses_and_revoked_lists_are_refused() {
        let r = record(CredentialStatus::Active, &[("10.0.0.1", I)]);
        for bad in [
            "0.0.0.0",
            "::",
            "::ffff:0.0.0.0",
            "224.0.0.1",
            "ff02::1",
            "255.255.255.255",
        ] {
            let add = Change::AddIp {
                ip: ip(bad),
                status: A,
            };
            let e = plan(&add, &r, Timestamp(0), 5).unwrap_err();
            assert!(
                e.to_string().contains("no client connects from it"),
                "{bad}: {e}"
            );
            let register = Change::Register {
                description: "d".into(),
                ips: vec![ip(bad)],
                caller: ip("10.0.0.9"),
            };
            let pending = record(CredentialStatus::PendingFirstUse, &[]);
            assert!(plan(&register, &pending, Timestamp(0), 5).is_err(), "{bad}");
        }
        let revoked = record(CredentialStatus::Revoked, &[("10.0.0.1", I)]);
        let add = Change::AddIp {
            ip: ip("10.0.0.2"),
            status: A,
        };
        let e = plan(&add, &revoked, Timestamp(0), 5).unwrap_err();
        assert!(e.to_string().contains("REVOKED"), "{e}");
        let set = Change::SetIpStatus { item: 1, status: A };
        assert!(plan(&set, &revoked, Timestamp(0), 5).is_err());
    }

    #[test]
    fn changes_that_change_nothing_plan_nothing() {
        let r = record(CredentialStatus::Revoked, &[("10.0.0.1", A)]);
        for change in [
            Change::Revoke,
            Change::Wildcard(false),
            Change::SetIpStatus { item: 1, status: A },
            Change::Mode(Mode::Enforce),
        ] {
            assert!(
                plan(&change, &r, Timestamp(0), 5).unwrap().is_empty(),
                "{change:?}"
            );
        }
        assert!(plan(&Change::Wildcard(true), &r, Timestamp(0), 5).is_err());
        let active = record(CredentialStatus::Active, &[]);
        assert!(!plan(&Change::Wildcard(true), &active, Timestamp(0), 5)
            .unwrap()
            .is_empty());
    }
}

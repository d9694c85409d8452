//! The change feed: where a snapshot stands in a store's history, and what changed
//! after it.
//!
//! Every write transaction advances one store-wide version by exactly one and records,
//! in the same transaction, which credentials it changed and a random stamp. Versions
//! are gap-free and in commit order (the counter row is locked until commit), so a
//! gateway at version V that reads V+1 … W has seen every change in between. The
//! stamp of V tells whether the store still has the history the gateway applied: a
//! restored backup or a failover that lost commits reuses version numbers with other
//! stamps, and that forces a full load instead of a silently stale snapshot.

use super::model::{CredentialStatus, Mode, Timestamp};
use crate::acl::{CredentialState, IpSet, KeyHash, Snapshot, SnapshotCredential, NEVER};
use std::net::IpAddr;

/// Where a snapshot stands in one store's history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    /// Made at random when the store's schema was created: another value is another
    /// database.
    pub store_id: i64,
    pub version: u64,
    /// The stamp written with `version` (0 for version 0, which has none).
    pub stamp: i64,
}

/// What [`super::Store::changes_since`] found.
#[derive(Debug)]
pub enum Feed {
    /// Nothing committed after the position; the store confirms it.
    Unchanged,
    Changes(Delta),
    /// The position cannot be continued from: load everything again.
    Resync(ResyncReason),
}

/// Every credential changed after a position, in its state as of `to`.
#[derive(Debug)]
pub struct Delta {
    pub to: Position,
    pub changed: Vec<CredentialChange>,
    /// When each version after the position was committed, oldest first.
    pub committed: Vec<Timestamp>,
}

/// Why a gateway has to load everything again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResyncReason {
    /// It fell further behind than the history the store keeps.
    TooOld,
    /// The store's record of the gateway's version has another stamp: restored or
    /// failed over, with a different history.
    HistoryRewritten,
    /// The store's version is lower than the gateway's.
    WentBackwards,
    /// Another database altogether.
    OtherStore,
    /// It fell so far behind that reading the delta would cost more than a full load
    /// (more versions behind than half the store's credentials).
    DeltaTooLarge,
    /// Reading the delta took longer than a poll may: a full load has more time.
    DeltaTimedOut,
}

impl ResyncReason {
    pub const ALL: [ResyncReason; 6] = [
        Self::TooOld,
        Self::HistoryRewritten,
        Self::WentBackwards,
        Self::OtherStore,
        Self::DeltaTooLarge,
        Self::DeltaTimedOut,
    ];

    /// Metric label and log field.
    pub fn label(self) -> &'static str {
        match self {
            Self::TooOld => "too_old",
            Self::HistoryRewritten => "history_rewritten",
            Self::WentBackwards => "went_backwards",
            Self::OtherStore => "other_store",
            Self::DeltaTooLarge => "delta_too_large",
            Self::DeltaTimedOut => "delta_timed_out",
        }
    }
}

/// Decides how a gateway at `at` continues, from what the store says of itself: its
/// identity, its version, the oldest version it no longer keeps, and the stamp it has
/// for `at.version` (`None` when it has no such row).
pub fn continuation(
    at: &Position,
    store_id: i64,
    version: u64,
    pruned_through: u64,
    stamp_at: Option<i64>,
) -> Option<ResyncReason> {
    if store_id != at.store_id {
        return Some(ResyncReason::OtherStore);
    }
    if version < at.version {
        return Some(ResyncReason::WentBackwards);
    }
    if at.version == 0 {
        // Version 0 has no row and no stamp: everything after it is the history, as
        // long as none of it was pruned.
        return (pruned_through > 0).then_some(ResyncReason::TooOld);
    }
    if at.version == pruned_through && at.stamp == 0 && stamp_at.is_none() {
        // A position a full load made where history starts: it found no row for its
        // version (a store upgraded from before the change feed, where history begins
        // at the version it had), and everything after it is kept.
        return None;
    }
    if at.version <= pruned_through {
        return Some(ResyncReason::TooOld);
    }
    match stamp_at {
        Some(stamp) if stamp == at.stamp => None,
        _ => Some(ResyncReason::HistoryRewritten),
    }
}

/// One changed credential as the snapshot needs it.
#[derive(Debug)]
pub enum CredentialChange {
    Readable(KeyHash, SnapshotCredential),
    /// Its stored record could not be read. It is refused (under its old key when the
    /// key itself is unreadable) and every other change still applies.
    Damaged {
        id: u64,
        user_id: u64,
        key: Option<KeyHash>,
        problem: String,
    },
}

impl CredentialChange {
    pub fn id(&self) -> u64 {
        match self {
            Self::Readable(_, c) => c.id,
            Self::Damaged { id, .. } => *id,
        }
    }

    /// The entry to file in a snapshot: under its own key, or for a damaged record
    /// whose key cannot be read, under the key `current` has for its id (if any).
    pub fn entry(&self, current: Option<&Snapshot>) -> Option<(KeyHash, SnapshotCredential)> {
        match self {
            Self::Readable(key, c) => Some((*key, c.clone())),
            Self::Damaged {
                id, user_id, key, ..
            } => key
                .or_else(|| current.and_then(|s| s.key_of(*id)))
                .map(|k| (k, SnapshotCredential::damaged(*id, *user_id))),
        }
    }
}

/// A credential's columns as stored, before any of them is trusted.
pub struct StoredCredential {
    pub id: u64,
    pub user_id: u64,
    pub key: Vec<u8>,
    pub status: String,
    pub wildcard: bool,
    pub mode: String,
    /// Unix microseconds; `Err` when the stored value is not a number (the credential
    /// is damaged, never "without expiry").
    pub expiry: Result<Option<i64>, String>,
    /// Its ACTIVE entries' addresses.
    pub ips: Vec<String>,
}

impl StoredCredential {
    /// What the snapshot holds for it; anything that does not parse makes it damaged.
    pub fn into_change(self) -> CredentialChange {
        let key = KeyHash::from_slice(&self.key);
        let damaged = |problem: String| CredentialChange::Damaged {
            id: self.id,
            user_id: self.user_id,
            key,
            problem,
        };
        let Some(key) = key else {
            return damaged(format!("key digest is {} bytes, not 32", self.key.len()));
        };
        let state = match self.status.parse::<CredentialStatus>() {
            Ok(CredentialStatus::PendingFirstUse) => CredentialState::PendingFirstUse,
            Ok(CredentialStatus::Active) => CredentialState::Active,
            Ok(CredentialStatus::Revoked) => CredentialState::Revoked,
            // Derived on read, never stored: a row that says so was not written by ipgate.
            Ok(CredentialStatus::Expired) => {
                return damaged("status EXPIRED is never stored".into())
            }
            Err(e) => return damaged(e),
        };
        let shadow = match self.mode.parse::<Mode>() {
            Ok(mode) => mode == Mode::Shadow,
            Err(e) => return damaged(e),
        };
        let expiry = match &self.expiry {
            Ok(expiry) => *expiry,
            Err(e) => return damaged(format!("expiry {e} is not a time")),
        };
        let mut ips = Vec::with_capacity(self.ips.len());
        for text in &self.ips {
            match text.parse::<IpAddr>() {
                Ok(ip) => ips.push(ip),
                Err(_) => return damaged(format!("permitted IP {text:?} is not an address")),
            }
        }
        CredentialChange::Readable(
            key,
            SnapshotCredential {
                id: self.id,
                user_id: self.user_id,
                state,
                expires_at: expiry.map_or(NEVER, |t| Timestamp(t).unix_seconds()),
                wildcard: self.wildcard,
                shadow,
                active_ips: IpSet::new(ips),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(version: u64, stamp: i64) -> Position {
        Position {
            store_id: 9,
            version,
            stamp,
        }
    }

    #[test]
    fn continuation_rules() {
        assert_eq!(continuation(&at(5, 55), 9, 7, 0, Some(55)), None);
        assert_eq!(continuation(&at(5, 55), 9, 5, 0, Some(55)), None);
        assert_eq!(
            continuation(&at(5, 55), 8, 7, 0, Some(55)),
            Some(ResyncReason::OtherStore)
        );
        assert_eq!(
            continuation(&at(5, 55), 9, 4, 0, None),
            Some(ResyncReason::WentBackwards)
        );
        assert_eq!(
            continuation(&at(5, 55), 9, 9, 5, None),
            Some(ResyncReason::TooOld)
        );
        assert_eq!(
            continuation(&at(5, 55), 9, 9, 4, Some(56)),
            Some(ResyncReason::HistoryRewritten)
        );
        assert_eq!(
            continuation(&at(5, 55), 9, 9, 4, None),
            Some(ResyncReason::HistoryRewritten)
        );
        assert_eq!(continuation(&at(0, 0), 9, 3, 0, None), None);
        // Upgraded from before the change feed: history starts at the version the store
        // had, with no row for it; a load there continues, and resyncs no more.
        assert_eq!(continuation(&at(5, 0), 9, 5, 5, None), None);
        assert_eq!(continuation(&at(5, 0), 9, 8, 5, None), None);
        assert_eq!(
            continuation(&at(4, 0), 9, 8, 5, None),
            Some(ResyncReason::TooOld)
        );
        assert_eq!(
            continuation(&at(5, 55), 9, 8, 5, None),
            Some(ResyncReason::TooOld)
        );
        assert_eq!(
            continuation(&at(0, 0), 9, 3, 1, None),
            Some(ResyncReason::TooOld)
        );
    }

    fn stored() -> StoredCredential {
        StoredCredential {
            id: 4,
            user_id: 2,
            key: vec![7; 32],
            status: "ACTIVE".into(),
            wildcard: false,
            mode: "enforce".into(),
            expiry: Ok(None),
            ips: vec!["10.0.0.1".into(), "::ffff:10.0.0.2".into()],
        }
    }

    #[test]
    fn readable_rows_become_snapshot_entries() {
        let CredentialChange::Readable(key, c) = stored().into_change() else {
            panic!("should be readable");
        };
        assert_eq!(key, KeyHash([7; 32]));
        assert_eq!((c.id, c.user_id, c.state), (4, 2, CredentialState::Active));
        assert!(c.active_ips.contains(&"10.0.0.2".parse().unwrap()));
    }

    #[test]
    fn a_damaged_column_damages_only_its_credential() {
        for (what, row) in [
            (
                "status",
                StoredCredential {
                    status: "BOGUS".into(),
                    ..stored()
                },
            ),
            (
                "ip",
                StoredCredential {
                    ips: vec!["10.0.0.1".into(), "ten".into()],
                    ..stored()
                },
            ),
            (
                "key",
                StoredCredential {
                    key: vec![1; 31],
                    ..stored()
                },
            ),
            (
                "expiry",
                StoredCredential {
                    expiry: Err("\"tomorrow\"".into()),
                    ..stored()
                },
            ),
            (
                "mode",
                StoredCredential {
                    mode: "audit".into(),
                    ..stored()
                },
            ),
        ] {
            let change = row.into_change();
            let CredentialChange::Damaged { id, key, .. } = &change else {
                panic!("{what}: should be damaged");
            };
            assert_eq!(*id, 4);
            assert_eq!(key.is_some(), what != "key", "{what}");
        }
    }
}

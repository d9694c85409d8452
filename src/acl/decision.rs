//! The answer to "may this request pass?", and everything a refusal maps to.
//!
//! [`decide`] is the whole authorisation check. A [`Reason`] maps to its status code,
//! metric label and public message here, in one place each, so no caller can disagree.

use super::ip::normalize;
use super::key::KeyHash;
use super::snapshot::{CredentialState, Snapshot, NEVER};
use std::net::IpAddr;

/// Who a request was allowed as. Neither value is secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub credential_id: u64,
    pub user_id: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow(Identity),
    /// Refused. The identity is there when the key was known (a revoked key, or a
    /// valid one from the wrong address): for the log and the operator, never the
    /// client.
    Deny(Reason, Option<Identity>),
    /// A credential in shadow mode used from an address that is not ACTIVE on it: let
    /// through and marked, so a whitelist can be rolled out without breaking clients.
    /// The reason is the one enforcement would have refused with.
    Shadow(Identity, Reason),
}

impl Decision {
    /// Why the request was (or, in shadow mode, would have been) refused.
    pub fn reason(&self) -> Option<Reason> {
        match self {
            Decision::Allow(_) => None,
            Decision::Deny(reason, _) | Decision::Shadow(_, reason) => Some(*reason),
        }
    }
}

/// Why a request was refused. The true reason goes to logs and metrics; the client sees
/// only [`Reason::status`] (and a body chosen by it, `bunq::refusal_body`), identical
/// for every key problem so that the answer is no oracle for whether a key is valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// No credential header, or one that cannot be read.
    MissingKey,
    /// More than one credential header: ambiguity is refused, not resolved.
    ManyKeys,
    UnknownKey,
    RevokedKey,
    ExpiredKey,
    /// Known key still waiting for its device registration.
    PendingKey,
    /// Known, usable key from an address that is not ACTIVE on it: the leaked-key signal.
    IpNotActive,
    /// The client address could not be established (a forwarding header from a trusted
    /// proxy that does not parse).
    ClientIpUnknown,
    /// No snapshot has been loaded yet.
    NoSnapshot,
    /// The snapshot is older than `refresh.max_staleness`.
    StaleSnapshot,
    /// The credential's stored record could not be read; it is refused until repaired.
    DamagedCredential,
}

impl Reason {
    pub const ALL: [Reason; 11] = [
        Reason::MissingKey,
        Reason::ManyKeys,
        Reason::UnknownKey,
        Reason::RevokedKey,
        Reason::ExpiredKey,
        Reason::PendingKey,
        Reason::IpNotActive,
        Reason::ClientIpUnknown,
        Reason::NoSnapshot,
        Reason::StaleSnapshot,
        Reason::DamagedCredential,
    ];

    pub fn status(self) -> u16 {
        match self {
            Reason::MissingKey | Reason::ManyKeys => 401,
            Reason::UnknownKey
            | Reason::RevokedKey
            | Reason::ExpiredKey
            | Reason::PendingKey
            | Reason::IpNotActive
            | Reason::ClientIpUnknown
            | Reason::DamagedCredential => 403,
            Reason::NoSnapshot | Reason::StaleSnapshot => 503,
        }
    }

    /// Metric label and log field.
    pub fn label(self) -> &'static str {
        match self {
            Reason::MissingKey => "missing_key",
            Reason::ManyKeys => "many_keys",
            Reason::UnknownKey => "unknown_key",
            Reason::RevokedKey => "revoked_key",
            Reason::ExpiredKey => "expired_key",
            Reason::PendingKey => "pending_key",
            Reason::IpNotActive => "ip_not_active",
            Reason::ClientIpUnknown => "client_ip_unknown",
            Reason::NoSnapshot => "no_snapshot",
            Reason::StaleSnapshot => "stale_snapshot",
            Reason::DamagedCredential => "damaged_credential",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Checks one request. `snapshot` is `None` before the first load; `stale` says the
/// loaded one is older than the configured maximum; `ip` is the client address
/// (`None` when it could not be established); `now` tells Unix seconds, and is asked
/// only for a credential that can expire.
pub fn decide(
    snapshot: Option<&Snapshot>,
    stale: bool,
    key: Option<&KeyHash>,
    ip: Option<IpAddr>,
    now: impl FnOnce() -> i64,
) -> Decision {
    let Some(snapshot) = snapshot else {
        return Decision::Deny(Reason::NoSnapshot, None);
    };
    if stale {
        return Decision::Deny(Reason::StaleSnapshot, None);
    }
    let Some(key) = key else {
        return Decision::Deny(Reason::MissingKey, None);
    };
    let Some(credential) = snapshot.get(key) else {
        return Decision::Deny(Reason::UnknownKey, None);
    };
    let identity = Identity {
        credential_id: credential.id,
        user_id: credential.user_id,
    };
    let deny = |reason| Decision::Deny(reason, Some(identity));
    let expired = credential.expires_at != NEVER && now() >= credential.expires_at;
    match credential.state {
        CredentialState::Revoked => return deny(Reason::RevokedKey),
        CredentialState::Damaged => return deny(Reason::DamagedCredential),
        // An expired pending key is reported as expired: that is what needs fixing.
        CredentialState::PendingFirstUse if expired => return deny(Reason::ExpiredKey),
        CredentialState::PendingFirstUse => return deny(Reason::PendingKey),
        CredentialState::Active if expired => return deny(Reason::ExpiredKey),
        CredentialState::Active => {}
    }
    let Some(ip) = ip else {
        return deny(Reason::ClientIpUnknown);
    };
    if credential.wildcard || credential.active_ips.contains(&normalize(ip)) {
        Decision::Allow(identity)
    } else if credential.shadow {
        Decision::Shadow(identity, Reason::IpNotActive)
    } else {
        deny(Reason::IpNotActive)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::{IpSet, SnapshotBuilder, SnapshotCredential};

    const NOW: i64 = 1_800_000_000;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn key(n: u8) -> KeyHash {
        KeyHash::of(&[n])
    }

    fn cred(id: u64, state: CredentialState, ips: &[&str]) -> SnapshotCredential {
        SnapshotCredential {
            id,
            user_id: 100 + id,
            state,
            expires_at: NEVER,
            wildcard: false,
            shadow: false,
            active_ips: IpSet::new(ips.iter().map(|s| ip(s))),
        }
    }

    fn snapshot() -> Snapshot {
        let mut b = SnapshotBuilder::new(7, 8);
        b.insert(
            key(1),
            cred(1, CredentialState::Active, &["10.0.0.1", "2001:db8::1"]),
        );
        b.insert(key(2), cred(2, CredentialState::Revoked, &["10.0.0.1"]));
        b.insert(key(3), cred(3, CredentialState::PendingFirstUse, &[]));
        let mut expired = cred(4, CredentialState::PendingFirstUse, &[]);
        expired.expires_at = NOW - 1;
        b.insert(key(4), expired);
        let mut wildcard = cred(5, CredentialState::Active, &[]);
        wildcard.wildcard = true;
        b.insert(key(5), wildcard);
        let mut lapsed = cred(6, CredentialState::Active, &["10.0.0.1"]);
        lapsed.expires_at = NOW;
        b.insert(key(6), lapsed);
        let mut future = cred(7, CredentialState::Active, &["10.0.0.1"]);
        future.expires_at = NOW + 1;
        b.insert(key(7), future);
        b.insert(key(8), SnapshotCredential::damaged(8, 108));
        let mut shadow = cred(9, CredentialState::Active, &["10.0.0.1"]);
        shadow.shadow = true;
        b.insert(key(9), shadow);
        let mut shadow_revoked = cred(10, CredentialState::Revoked, &["10.0.0.1"]);
        shadow_revoked.shadow = true;
        b.insert(key(10), shadow_revoked);
        let mut shadow_pending = cred(11, CredentialState::PendingFirstUse, &[]);
        shadow_pending.shadow = true;
        b.insert(key(11), shadow_pending);
        b.build()
    }

    fn check(s: &Snapshot, k: Option<u8>, addr: Option<&str>) -> Decision {
        decide(Some(s), false, k.map(key).as_ref(), addr.map(ip), || NOW)
    }

    fn allowed(id: u64) -> Decision {
        Decision::Allow(Identity {
            credential_id: id,
            user_id: 100 + id,
        })
    }

    #[test]
    fn every_outcome() {
        let s = snapshot();
        assert_eq!(s.version(), 7);
        assert_eq!(s.active_ip_count(), 7);
        let deny = |id: u64, reason| {
            Decision::Deny(
                reason,
                Some(Identity {
                    credential_id: id,
                    user_id: 100 + id,
                }),
            )
        };
        let cases: &[(Option<u8>, Option<&str>, Decision)] = &[
            (Some(1), Some("10.0.0.1"), allowed(1)),
            (Some(1), Some("::ffff:10.0.0.1"), allowed(1)),
            (Some(1), Some("2001:db8::1"), allowed(1)),
            (Some(1), Some("10.0.0.2"), deny(1, Reason::IpNotActive)),
            (Some(1), None, deny(1, Reason::ClientIpUnknown)),
            (
                None,
                Some("10.0.0.1"),
                Decision::Deny(Reason::MissingKey, None),
            ),
            (
                Some(99),
                Some("10.0.0.1"),
                Decision::Deny(Reason::UnknownKey, None),
            ),
            (Some(2), Some("10.0.0.1"), deny(2, Reason::RevokedKey)),
            (Some(3), Some("10.0.0.1"), deny(3, Reason::PendingKey)),
            (Some(4), Some("10.0.0.1"), deny(4, Reason::ExpiredKey)),
            (Some(5), Some("203.0.113.9"), allowed(5)),
            (Some(5), Some("::1"), allowed(5)),
            (Some(6), Some("10.0.0.1"), deny(6, Reason::ExpiredKey)),
            (Some(7), Some("10.0.0.1"), allowed(7)),
            (
                Some(8),
                Some("10.0.0.1"),
                deny(8, Reason::DamagedCredential),
            ),
            // Shadow mode lets only the address check through, and says so.
            (Some(9), Some("10.0.0.1"), allowed(9)),
            (
                Some(9),
                Some("10.0.0.2"),
                Decision::Shadow(
                    Identity {
                        credential_id: 9,
                        user_id: 109,
                    },
                    Reason::IpNotActive,
                ),
            ),
            (Some(9), None, deny(9, Reason::ClientIpUnknown)),
            (Some(10), Some("10.0.0.2"), deny(10, Reason::RevokedKey)),
            (Some(11), Some("10.0.0.2"), deny(11, Reason::PendingKey)),
        ];
        for (k, addr, want) in cases {
            assert_eq!(check(&s, *k, *addr), *want, "key {k:?} from {addr:?}");
        }
    }

    #[test]
    fn no_snapshot_or_stale_never_allows() {
        let s = snapshot();
        let k = key(1);
        let a = Some(ip("10.0.0.1"));
        assert_eq!(
            decide(None, false, Some(&k), a, || NOW),
            Decision::Deny(Reason::NoSnapshot, None)
        );
        assert_eq!(
            decide(Some(&s), true, Some(&k), a, || NOW),
            Decision::Deny(Reason::StaleSnapshot, None)
        );
    }

    #[test]
    fn key_refusals_look_identical() {
        let refusals = [
            Reason::UnknownKey,
            Reason::RevokedKey,
            Reason::ExpiredKey,
            Reason::PendingKey,
            Reason::IpNotActive,
            Reason::DamagedCredential,
        ];
        for r in refusals {
            assert_eq!(r.status(), 403);
        }
        assert_eq!(Reason::MissingKey.status(), 401);
        assert_eq!(Reason::StaleSnapshot.status(), 503);
    }

    #[test]
    fn reason_index_matches_all() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }
}

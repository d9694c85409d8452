//! What the gateways saw, as the store keeps it: requests per address per credential
//! (allowed; let through by shadow mode from an address not ACTIVE; and refused with a
//! valid key), and the reports built from them.
//!
//! Gateways count in memory and write batches (`Store::record_usage`); the store
//! merges batches from every gateway: counts add up, first and last times take the
//! earliest and the latest. Refused addresses, and shadow-mode addresses, are kept per
//! credential up to [`REFUSED_KEPT`] each, the most recently seen; how many refused
//! ones were let go is recorded, so a report says when it is truncated and an attacker
//! rotating addresses cannot grow the store.

use super::model::{CredentialStatus, IpStatus, Timestamp};
use serde::Serialize;
use std::net::IpAddr;

/// Refused addresses kept per credential.
pub const REFUSED_KEPT: usize = 256;

/// Requests from one address with one credential, over a stretch of time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Sighting {
    pub credential_id: u64,
    pub ip: IpAddr,
    pub requests: u64,
    pub first_seen: Timestamp,
    pub last_seen: Timestamp,
}

/// One flush from one gateway.
#[derive(Clone, Debug, Default)]
pub struct UsageBatch {
    /// Allowed requests (forwarded), by address.
    pub allowed: Vec<Sighting>,
    /// Valid, registered keys from addresses that are not ACTIVE on them, refused.
    pub refused: Vec<Sighting>,
    /// The same let through because the credential is in shadow mode: not refusals
    /// (the client was served), not allowed requests (the list would refuse them).
    pub shadow: Vec<Sighting>,
}

impl UsageBatch {
    pub fn is_empty(&self) -> bool {
        self.allowed.is_empty() && self.refused.is_empty() && self.shadow.is_empty()
    }

    /// Rows this batch writes.
    pub fn len(&self) -> usize {
        self.allowed.len() + self.refused.len() + self.shadow.len()
    }
}

/// A refused address of one credential: the stolen-key signal.
#[derive(Clone, Debug, Serialize)]
pub struct RefusedAddress {
    pub credential_id: u64,
    pub user_id: u64,
    pub ip: IpAddr,
    pub requests: u64,
    pub first_seen: Timestamp,
    pub last_seen: Timestamp,
    /// Its entry's status when the address is on the list now (added since it was
    /// refused, or INACTIVE): an ACTIVE one is most likely the owner's, not a thief's.
    pub listed: Option<IpStatus>,
}

/// `report refused`: the addresses, and per credential how many older ones were let go.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RefusedReport {
    pub addresses: Vec<RefusedAddress>,
    pub truncated: Vec<Truncated>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Truncated {
    pub credential_id: u64,
    /// Addresses no longer kept (the least recently seen).
    pub dropped: u64,
}

/// An ACTIVE entry with no allowed request since the report's cut-off.
#[derive(Clone, Debug, Serialize)]
pub struct UnusedEntry {
    pub credential_id: u64,
    pub user_id: u64,
    pub entry_id: u64,
    pub ip: IpAddr,
    pub created: Timestamp,
    /// `None`: never used.
    pub last_seen: Option<Timestamp>,
    pub requests: u64,
}

/// A credential with no allowed request since the cut-off.
#[derive(Clone, Debug, Serialize)]
pub struct UnusedCredential {
    pub credential_id: u64,
    pub user_id: u64,
    pub status: CredentialStatus,
    pub created: Timestamp,
    pub last_seen: Option<Timestamp>,
}

/// `report unused`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct UnusedReport {
    pub entries: Vec<UnusedEntry>,
    pub credentials: Vec<UnusedCredential>,
}

/// One address a credential was used from, allowed or refused, for `report suggest`.
#[derive(Clone, Debug, Serialize)]
pub struct Suggestion {
    pub ip: IpAddr,
    /// Requests the list let through.
    pub allowed: u64,
    /// Requests let through only because the credential was in shadow mode.
    pub shadow: u64,
    /// Requests refused.
    pub refused: u64,
    pub last_seen: Timestamp,
    /// Its entry's status when the address is on the list already.
    pub listed: Option<IpStatus>,
}

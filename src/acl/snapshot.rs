//! The immutable view of every credential that requests are checked against.
//!
//! Built whole by the control plane from one consistent read of the store, then
//! published through [`super::SnapshotCell`]. It is never changed after it is built.

use super::ip::IpSet;
use super::key::KeyHash;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Where a credential stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialState {
    /// Created; waits for its device registration.
    PendingFirstUse,
    Active,
    /// Revoked by an operator; never comes back.
    Revoked,
}

/// `expires_at` of a credential that does not expire.
pub const NEVER: i64 = i64::MAX;

/// What the hot path needs to know about one credential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotCredential {
    pub id: u64,
    pub user_id: u64,
    pub state: CredentialState,
    /// Unix seconds from which the credential is refused; [`NEVER`] for none. A plain
    /// integer keeps the entry 8 bytes smaller than an `Option` (a million entries: 8 MB)
    /// and lets the hot path skip reading the clock.
    pub expires_at: i64,
    /// Set by an operator only: every address is admitted.
    pub wildcard: bool,
    /// ACTIVE entries only; INACTIVE ones never reach the snapshot.
    pub active_ips: IpSet,
}

/// Hashes a [`KeyHash`] by taking the 64 bits its `Hash` impl writes: the digest is
/// uniform already, so mixing it again would only cost time.
#[derive(Default)]
pub struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached if something other than `KeyHash` were hashed; stay correct.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type CredentialMap = HashMap<KeyHash, SnapshotCredential, BuildHasherDefault<DigestHasher>>;

/// Every credential, by key digest, as of one store version.
#[derive(Debug, Default)]
pub struct Snapshot {
    version: u64,
    credentials: CredentialMap,
    active_ips: usize,
}

impl Snapshot {
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn get(&self, key: &KeyHash) -> Option<&SnapshotCredential> {
        self.credentials.get(key)
    }

    /// Number of credentials in any state.
    pub fn credential_count(&self) -> usize {
        self.credentials.len()
    }

    /// ACTIVE entries over all credentials: what is billed.
    pub fn active_ip_count(&self) -> usize {
        self.active_ips
    }
}

/// Collects credentials for the next snapshot.
#[derive(Default)]
pub struct SnapshotBuilder {
    version: u64,
    credentials: CredentialMap,
    active_ips: usize,
}

impl SnapshotBuilder {
    pub fn new(version: u64, expected: usize) -> Self {
        Self {
            version,
            credentials: CredentialMap::with_capacity_and_hasher(expected, Default::default()),
            active_ips: 0,
        }
    }

    pub fn insert(&mut self, key: KeyHash, credential: SnapshotCredential) {
        self.active_ips += credential.active_ips.len();
        if let Some(old) = self.credentials.insert(key, credential) {
            // Keys are unique in the store; keep the count honest if a source repeats one.
            self.active_ips -= old.active_ips.len();
        }
    }

    pub fn build(mut self) -> Snapshot {
        self.credentials.shrink_to_fit();
        Snapshot {
            version: self.version,
            credentials: self.credentials,
            active_ips: self.active_ips,
        }
    }
}

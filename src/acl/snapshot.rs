//! The immutable view of every credential that requests are checked against.
//!
//! Built whole by the control plane from one consistent read of the store, then
//! published through [`super::SnapshotCell`]. It is never changed after it is built.

use super::ip::IpSet;
use super::key::KeyHash;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

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
///
/// A full build fills `base`. A change made through this gateway's API is published
/// at once as a new snapshot that shares `base` and carries the changed credentials in
/// a small `overlay`, so a write costs one credential's read, not a rebuild of a
/// million; the next full build folds the overlay away.
#[derive(Debug, Default)]
pub struct Snapshot {
    version: u64,
    base: Arc<CredentialMap>,
    overlay: CredentialMap,
    credential_count: usize,
    active_ips: usize,
}

impl Snapshot {
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn get(&self, key: &KeyHash) -> Option<&SnapshotCredential> {
        // The overlay is empty but for a moment after an API write: skip hashing into it.
        if !self.overlay.is_empty() {
            if let Some(c) = self.overlay.get(key) {
                return Some(c);
            }
        }
        self.base.get(key)
    }

    /// Number of credentials in any state.
    pub fn credential_count(&self) -> usize {
        self.credential_count
    }

    /// ACTIVE entries over all credentials: what is billed.
    pub fn active_ip_count(&self) -> usize {
        self.active_ips
    }

    /// Credentials carried beside the base since the last full build.
    pub fn overlay_len(&self) -> usize {
        self.overlay.len()
    }

    /// This snapshot with `key`'s credential replaced (or added), as of `version`.
    pub fn with_credential(
        &self,
        version: u64,
        key: KeyHash,
        credential: SnapshotCredential,
    ) -> Snapshot {
        let mut overlay = self.overlay.clone();
        let mut credential_count = self.credential_count;
        let mut active_ips = self.active_ips + credential.active_ips.len();
        match self.get(&key) {
            Some(previous) => active_ips -= previous.active_ips.len(),
            None => credential_count += 1,
        }
        overlay.insert(key, credential);
        Snapshot {
            version,
            base: Arc::clone(&self.base),
            overlay,
            credential_count,
            active_ips,
        }
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
            credential_count: self.credentials.len(),
            base: Arc::new(self.credentials),
            overlay: CredentialMap::default(),
            active_ips: self.active_ips,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::IpSet;

    fn cred(id: u64, ips: &[&str]) -> SnapshotCredential {
        SnapshotCredential {
            id,
            user_id: 1,
            state: CredentialState::Active,
            expires_at: NEVER,
            wildcard: false,
            active_ips: IpSet::new(ips.iter().map(|s| s.parse().unwrap())),
        }
    }

    #[test]
    fn overlay_replaces_and_adds_and_keeps_counts() {
        let mut b = SnapshotBuilder::new(1, 2);
        b.insert(KeyHash::of(b"a"), cred(1, &["10.0.0.1", "10.0.0.2"]));
        b.insert(KeyHash::of(b"b"), cred(2, &["10.0.0.3"]));
        let base = b.build();
        assert_eq!((base.credential_count(), base.active_ip_count()), (2, 3));

        let changed = base.with_credential(2, KeyHash::of(b"a"), cred(1, &["10.0.0.9"]));
        assert_eq!(changed.version(), 2);
        assert_eq!(
            (changed.credential_count(), changed.active_ip_count()),
            (2, 2)
        );
        assert!(changed
            .get(&KeyHash::of(b"a"))
            .unwrap()
            .active_ips
            .contains(&"10.0.0.9".parse().unwrap()));
        assert!(!changed
            .get(&KeyHash::of(b"a"))
            .unwrap()
            .active_ips
            .contains(&"10.0.0.1".parse().unwrap()));
        assert_eq!(changed.get(&KeyHash::of(b"b")).unwrap().id, 2);

        let added = changed.with_credential(3, KeyHash::of(b"c"), cred(3, &[]));
        assert_eq!(
            (
                added.credential_count(),
                added.active_ip_count(),
                added.overlay_len()
            ),
            (3, 2, 2)
        );
        // The snapshot it came from is untouched.
        assert!(changed.get(&KeyHash::of(b"c")).is_none());
        assert!(base
            .get(&KeyHash::of(b"a"))
            .unwrap()
            .active_ips
            .contains(&"10.0.0.1".parse().unwrap()));
    }
}

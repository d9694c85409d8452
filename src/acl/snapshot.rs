//! The immutable view of every credential that requests are checked against.
//!
//! A snapshot is split into [`SHARDS`] maps by a byte of the key digest, each behind
//! its own `Arc`. A full build fills them all; a change to a few credentials
//! ([`Snapshot::with_changes`]) copies only the shards those credentials live in and
//! shares the rest, so applying one change costs the same at a million credentials as
//! at ten. A snapshot is never changed after it is built.

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
    /// Its stored record could not be read: refused until it is repaired.
    Damaged,
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
    /// Shadow mode: a usable key from an address that is not ACTIVE is forwarded and
    /// reported instead of refused. Unknown, revoked, expired and pending keys are not.
    pub shadow: bool,
    /// ACTIVE entries only; INACTIVE ones never reach the snapshot.
    pub active_ips: IpSet,
}

impl SnapshotCredential {
    /// A credential whose stored record could not be read: nothing it could match lets
    /// anyone in.
    pub fn damaged(id: u64, user_id: u64) -> Self {
        Self {
            id,
            user_id,
            state: CredentialState::Damaged,
            expires_at: NEVER,
            wildcard: false,
            shadow: false,
            active_ips: IpSet::default(),
        }
    }
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

type Shard = HashMap<KeyHash, SnapshotCredential, BuildHasherDefault<DigestHasher>>;

/// Number of shards. A change copies one shard: at a million credentials that is
/// about 4,000 entries, well under a millisecond.
pub const SHARDS: usize = 256;

/// The shard a key lives in: the digest's last byte, which the in-shard hash (its first
/// eight bytes) never looks at, so shards stay evenly filled inside as well.
fn shard_of(key: &KeyHash) -> usize {
    usize::from(key.0[31])
}

/// Every credential, by key digest, as of one store version.
#[derive(Debug)]
pub struct Snapshot {
    version: u64,
    shards: [Arc<Shard>; SHARDS],
    credential_count: usize,
    active_ips: usize,
    damaged: usize,
}

impl Default for Snapshot {
    fn default() -> Self {
        SnapshotBuilder::new(0, 0).build()
    }
}

impl Snapshot {
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn get(&self, key: &KeyHash) -> Option<&SnapshotCredential> {
        self.shards[shard_of(key)].get(key)
    }

    /// Number of credentials in any state.
    pub fn credential_count(&self) -> usize {
        self.credential_count
    }

    /// ACTIVE entries over all credentials: what is billed.
    pub fn active_ip_count(&self) -> usize {
        self.active_ips
    }

    /// Credentials refused because their stored record could not be read.
    pub fn damaged_count(&self) -> usize {
        self.damaged
    }

    /// Every credential, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&KeyHash, &SnapshotCredential)> {
        self.shards.iter().flat_map(|s| s.iter())
    }

    /// The key a credential is filed under. A full scan: only for the rare case of a
    /// changed credential whose stored key can no longer be read.
    pub fn key_of(&self, id: u64) -> Option<KeyHash> {
        self.iter().find(|(_, c)| c.id == id).map(|(k, _)| *k)
    }

    /// This snapshot with `changes` applied (each replaces or adds the credential under
    /// its key), as of `version`. Only the shards the changes touch are copied; the
    /// rest are shared with `self`, which is left as it was.
    pub fn with_changes(
        &self,
        version: u64,
        changes: impl IntoIterator<Item = (KeyHash, SnapshotCredential)>,
    ) -> Snapshot {
        let mut shards = self.shards.clone();
        let mut copied = [false; SHARDS];
        let mut next = Counts::of(self);
        for (key, credential) in changes {
            let i = shard_of(&key);
            if !copied[i] {
                // The clone shares nothing with the published shard, which requests
                // may be reading right now.
                shards[i] = Arc::new(Shard::clone(&shards[i]));
                copied[i] = true;
            }
            let shard = Arc::get_mut(&mut shards[i]).expect("a shard copied here is not shared");
            next.add(&credential);
            if let Some(old) = shard.insert(key, credential) {
                next.remove(&old);
            }
        }
        Snapshot {
            version,
            shards,
            credential_count: next.credentials,
            active_ips: next.active_ips,
            damaged: next.damaged,
        }
    }
}

/// The totals a snapshot carries, kept as credentials come and go.
#[derive(Default)]
struct Counts {
    credentials: usize,
    active_ips: usize,
    damaged: usize,
}

impl Counts {
    fn of(s: &Snapshot) -> Self {
        Self {
            credentials: s.credential_count,
            active_ips: s.active_ips,
            damaged: s.damaged,
        }
    }

    fn add(&mut self, c: &SnapshotCredential) {
        self.credentials += 1;
        self.active_ips += c.active_ips.len();
        self.damaged += usize::from(c.state == CredentialState::Damaged);
    }

    fn remove(&mut self, c: &SnapshotCredential) {
        self.credentials -= 1;
        self.active_ips -= c.active_ips.len();
        self.damaged -= usize::from(c.state == CredentialState::Damaged);
    }
}

/// Collects credentials for a full snapshot.
pub struct SnapshotBuilder {
    version: u64,
    shards: Vec<Shard>,
    counts: Counts,
}

impl SnapshotBuilder {
    pub fn new(version: u64, expected: usize) -> Self {
        // Slightly over the even share: digests spread evenly, not exactly.
        let per_shard = expected.div_ceil(SHARDS) + expected.div_ceil(SHARDS) / 8;
        Self {
            version,
            shards: (0..SHARDS)
                .map(|_| Shard::with_capacity_and_hasher(per_shard, Default::default()))
                .collect(),
            counts: Counts::default(),
        }
    }

    pub fn insert(&mut self, key: KeyHash, credential: SnapshotCredential) {
        self.counts.add(&credential);
        if let Some(old) = self.shards[shard_of(&key)].insert(key, credential) {
            // Keys are unique in the store; keep the counts honest if a source repeats one.
            self.counts.remove(&old);
        }
    }

    pub fn build(self) -> Snapshot {
        let shards: Vec<Arc<Shard>> = self
            .shards
            .into_iter()
            .map(|mut s| {
                s.shrink_to_fit();
                Arc::new(s)
            })
            .collect();
        Snapshot {
            version: self.version,
            shards: shards.try_into().expect("exactly SHARDS shards"),
            credential_count: self.counts.credentials,
            active_ips: self.counts.active_ips,
            damaged: self.counts.damaged,
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
            shadow: false,
            active_ips: IpSet::new(ips.iter().map(|s| s.parse().unwrap())),
        }
    }

    fn has(s: &Snapshot, key: &[u8], ip: &str) -> bool {
        s.get(&KeyHash::of(key))
            .unwrap()
            .active_ips
            .contains(&ip.parse().unwrap())
    }

    #[test]
    fn changes_replace_and_add_and_keep_counts() {
        let mut b = SnapshotBuilder::new(1, 2);
        b.insert(KeyHash::of(b"a"), cred(1, &["10.0.0.1", "10.0.0.2"]));
        b.insert(KeyHash::of(b"b"), cred(2, &["10.0.0.3"]));
        let base = b.build();
        assert_eq!((base.credential_count(), base.active_ip_count()), (2, 3));

        let changed = base.with_changes(2, [(KeyHash::of(b"a"), cred(1, &["10.0.0.9"]))]);
        assert_eq!(changed.version(), 2);
        assert_eq!(
            (changed.credential_count(), changed.active_ip_count()),
            (2, 2)
        );
        assert!(has(&changed, b"a", "10.0.0.9"));
        assert!(!has(&changed, b"a", "10.0.0.1"));
        assert_eq!(changed.get(&KeyHash::of(b"b")).unwrap().id, 2);

        let mut broken = SnapshotCredential::damaged(3, 1);
        broken.user_id = 1;
        let added = changed.with_changes(3, [(KeyHash::of(b"c"), broken)]);
        assert_eq!(
            (
                added.credential_count(),
                added.active_ip_count(),
                added.damaged_count()
            ),
            (3, 2, 1)
        );
        assert_eq!(added.key_of(3), Some(KeyHash::of(b"c")));
        // The snapshots it came from are untouched.
        assert!(changed.get(&KeyHash::of(b"c")).is_none());
        assert!(has(&base, b"a", "10.0.0.1"));
    }

    #[test]
    fn a_change_copies_only_its_shard() {
        let mut b = SnapshotBuilder::new(1, 2000);
        for i in 0..2000u32 {
            b.insert(KeyHash::of(&i.to_le_bytes()), cred(u64::from(i), &[]));
        }
        let base = b.build();
        let key = KeyHash::of(&7u32.to_le_bytes());
        let next = base.with_changes(2, [(key, cred(7, &["10.0.0.1"]))]);
        let shared = base
            .shards
            .iter()
            .zip(next.shards.iter())
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count();
        assert_eq!(shared, SHARDS - 1);
        assert_eq!(next.credential_count(), 2000);
        assert_eq!(next.iter().count(), 2000);
    }
}

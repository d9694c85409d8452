//! API keys and their SHA-256 digests.
//!
//! A plain key exists only in a request header or in the one answer that creates it;
//! everything stored or compared is its [`KeyHash`]. [`ApiKey`]'s `Debug` is redacted
//! so that a careless `?value` in a log line cannot leak it, and its memory is wiped
//! when it is dropped, so a freed buffer does not keep the key around either.

use sha2::{Digest, Sha256};
use std::fmt;
use std::hash::{Hash, Hasher};
use zeroize::Zeroize;

/// Every key starts with this, so secret scanners can recognise a leaked one.
pub const KEY_PREFIX: &str = "ipg_";

/// A plain API key. Never logged, never stored; zeroed when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl Drop for ApiKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// Read straight from a request body (the device registration's `secret`), so the
/// plain key never sits in a `String` whose `Debug` shows it.
impl<'de> serde::Deserialize<'de> for ApiKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self)
    }
}

impl ApiKey {
    /// Wraps a key read from a request or freshly generated.
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// The secret itself, for the single place that must show it (key creation).
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> KeyHash {
        KeyHash::of(self.0.as_bytes())
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// SHA-256 of a key: what the store keeps and the snapshot is indexed by.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    pub fn of(key: &[u8]) -> Self {
        Self(Sha256::digest(key).into())
    }

    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }
}

impl Hash for KeyHash {
    // The digest is already uniformly distributed: its first eight bytes are as good a
    // hash as any hasher could make, and an attacker who grinds keys only controls
    // lookups of keys that are not stored (see `snapshot::DigestHasher`).
    fn hash<H: Hasher>(&self, state: &mut H) {
        let mut head = [0u8; 8];
        head.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(head));
    }
}

impl fmt::Debug for KeyHash {
    // A digest is not a secret, but a short prefix is enough to correlate and keeps
    // logs readable.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "KeyHash({:02x}{:02x}{:02x}{:02x}…)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_key() {
        let key = ApiKey::new("ipg_supersecret");
        assert_eq!(format!("{key:?}"), "ApiKey(<redacted>)");
        assert!(!format!("{:?}", key.hash()).contains("supersecret"));
    }

    #[test]
    fn deserialized_keys_are_redacted_too() {
        let key: ApiKey = serde_json::from_str("\"ipg_supersecret\"").unwrap();
        assert_eq!(key.expose(), "ipg_supersecret");
        assert_eq!(format!("{key:?}"), "ApiKey(<redacted>)");
    }

    #[test]
    fn hash_is_sha256() {
        // echo -n abc | sha256sum
        let h = KeyHash::of(b"abc");
        assert_eq!(h.0[..4], [0xba, 0x78, 0x16, 0xbf]);
    }
}

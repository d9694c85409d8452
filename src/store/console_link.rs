//! Console links (SPEC section 10): an operator mints a short-lived, single-use link
//! that opens the console for one credential, for an owner who is locked out.
//!
//! Only the SHA-256 of a link's token is stored. A link is spent at most once (one
//! conditional update, so two gateways cannot both spend it), only before it expires
//! and only while its credential is ACTIVE. Minting and spending are audited
//! (`console_link.mint`, `console_link.use`); neither is a change to any credential's
//! list, so neither advances the change version.

use super::model::Timestamp;
use sha2::{Digest, Sha256};

/// A link to store.
#[derive(Clone, Debug)]
pub struct NewConsoleLink {
    pub credential_id: u64,
    /// The SHA-256 of the token, as lowercase hex ([`token_hash`]).
    pub token_hash: String,
    pub expires: Timestamp,
}

/// The stored form of a link's token.
pub fn token_hash(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    let mut hex = String::with_capacity(64);
    for b in digest {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_token_is_stored_as_its_sha256() {
        assert_eq!(
            super::token_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}

//! The credential check both doors use: the key from its header, one snapshot load,
//! one [`decide`].
//!
//! Depends on [`crate::acl`] and [`crate::config`] only: the forwarder, the management
//! API and the front door all call it, and it calls none of them. It writes no wire
//! text (refusal bodies are [`crate::bunq`]'s) and does no I/O.

use crate::acl::{decide, Decision, KeyHash, Reason, SnapshotCell};
use crate::config::AuthConfig;
use crate::head::Sent;
use http::header::HeaderMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Longest key that is hashed at all. Keys are 47 bytes; a longer one is unknown
/// without the cost of hashing up to a whole 64 KiB header.
const MAX_KEY_BYTES: usize = 256;

/// Stands for every over-long key: no key hashes to all zeros, so it is never found.
const TOO_LONG: KeyHash = KeyHash([0; 32]);

/// The key in the credential header's value; an unreadable or empty one is no key
/// (and several lines of it are none either: [`Gatekeeper::check_sent`]).
///
/// On bytes: a header value holds no control byte but tab, so it is readable text
/// (what `to_str` checks byte by byte) exactly when it is ASCII, which `is_ascii`
/// checks a word at a time; and the only white space it can hold is ASCII's.
fn key_of<'h>(value: &'h [u8], auth: &AuthConfig) -> Option<&'h [u8]> {
    if !value.is_ascii() {
        return None;
    }
    let text = value.trim_ascii();
    let key = if auth.bearer {
        let space = text.iter().position(|&b| b == b' ')?;
        let (scheme, rest) = (&text[..space], &text[space + 1..]);
        if !scheme.eq_ignore_ascii_case(b"bearer") {
            return None;
        }
        rest.trim_ascii()
    } else {
        text
    };
    (!key.is_empty()).then_some(key)
}

/// The authorisation check as the hot path and the management API both run it.
pub struct Gatekeeper {
    pub cell: Arc<SnapshotCell>,
    pub auth: AuthConfig,
    pub max_staleness: Duration,
}

impl Gatekeeper {
    /// One snapshot load, one SHA-256, one lookup. The snapshot is released before
    /// returning, so no request holds it across an await.
    pub fn check(&self, headers: &HeaderMap, client_ip: Option<IpAddr>) -> Decision {
        self.check_sent(&Sent::of(headers, &self.auth.header), client_ip)
    }

    /// [`Gatekeeper::check`] with the credential header's lines already found.
    pub fn check_sent(&self, sent: &Sent, client_ip: Option<IpAddr>) -> Decision {
        let key = sent
            .once()
            .and_then(|v| key_of(v.as_bytes(), &self.auth))
            .map(|k| {
                if k.len() > MAX_KEY_BYTES {
                    TOO_LONG
                } else {
                    KeyHash::of(k)
                }
            });
        let snapshot = self.cell.load();
        let decision = decide(
            snapshot.as_deref(),
            self.cell.is_stale(self.max_staleness),
            key.as_ref(),
            client_ip,
            unix_now,
        );
        match decision {
            Decision::Deny(Reason::MissingKey, None) if *sent == Sent::Repeated => {
                Decision::Deny(Reason::ManyKeys, None)
            }
            decision => decision,
        }
    }
}

/// Unix seconds. A clock set before 1970 reads as the end of time, so every credential
/// that can expire is treated as expired: fail closed.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(i64::MAX, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderName;

    fn auth(header: &str) -> AuthConfig {
        let header = HeaderName::from_bytes(header.as_bytes()).unwrap();
        AuthConfig {
            bearer: header == http::header::AUTHORIZATION,
            header,
            registration_window: Duration::from_secs(60),
            forward_key: false,
            response_signing_key: None,
        }
    }

    /// The key `check` would hash.
    fn credential_key(h: &HeaderMap, a: &AuthConfig) -> Option<Vec<u8>> {
        let sent = Sent::of(h, &a.header);
        sent.once()
            .and_then(|v| key_of(v.as_bytes(), a))
            .map(<[u8]>::to_vec)
    }

    #[test]
    fn key_extraction() {
        let a = auth("x-bunq-client-authentication");
        let mut h = HeaderMap::new();
        assert_eq!(credential_key(&h, &a), None);
        h.insert("x-bunq-client-authentication", " ipg_abc ".parse().unwrap());
        assert_eq!(credential_key(&h, &a), Some(b"ipg_abc".to_vec()));
        h.append("x-bunq-client-authentication", "ipg_other".parse().unwrap());
        assert_eq!(credential_key(&h, &a), None, "two keys are no key");
        h.insert("x-bunq-client-authentication", "".parse().unwrap());
        assert_eq!(credential_key(&h, &a), None);
    }

    #[test]
    fn bearer_extraction() {
        let a = auth("authorization");
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer ipg_abc".parse().unwrap());
        assert_eq!(credential_key(&h, &a), Some(b"ipg_abc".to_vec()));
        h.insert("authorization", "bearer  ipg_abc".parse().unwrap());
        assert_eq!(credential_key(&h, &a), Some(b"ipg_abc".to_vec()));
        h.insert("authorization", "Basic dXNlcg==".parse().unwrap());
        assert_eq!(credential_key(&h, &a), None);
        h.insert("authorization", "ipg_abc".parse().unwrap());
        assert_eq!(credential_key(&h, &a), None);
    }

    #[test]
    fn no_snapshot_refuses_and_over_long_keys_are_unknown() {
        let gate = Gatekeeper {
            cell: Arc::new(SnapshotCell::new()),
            auth: auth("x-key"),
            max_staleness: Duration::ZERO,
        };
        let mut h = HeaderMap::new();
        h.insert("x-key", "k".repeat(MAX_KEY_BYTES + 1).parse().unwrap());
        let ip = Some("10.0.0.1".parse().unwrap());
        assert_eq!(
            gate.check(&h, ip).reason(),
            Some(crate::acl::Reason::NoSnapshot)
        );
        let published = gate.cell.publish(Arc::new(crate::acl::Snapshot::default()));
        assert!(published.is_none());
        assert_eq!(
            gate.check(&h, ip).reason(),
            Some(crate::acl::Reason::UnknownKey)
        );
    }
}

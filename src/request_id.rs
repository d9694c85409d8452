//! Every request's id (`X-Request-Id`): the client's own when it is a sane one, else a
//! new one. It goes to the upstream with an allowed request, back to the client with
//! every answer, and into the access line, so one request can be followed through the
//! client's, the gateway's and the upstream's logs.
//!
//! A client's id is hostile input that ends up in logs: it is kept only when it is one
//! header line of at most [`MAX_LEN`] characters from a set that needs no escaping in
//! any log format. Anything else is replaced, never repaired.

use crate::head::Sent;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest client id kept.
pub const MAX_LEN: usize = 64;

/// Makes ids: unique within the process (a counter), unlikely to repeat across
/// processes (a random seed), 16 hex digits.
pub struct RequestIds {
    seed: u64,
    next: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestIds {
    pub fn new() -> Self {
        let mut b = [0u8; 8];
        // Without OS randomness ids are still unique within this process; across
        // processes they would only be likelier to repeat.
        if getrandom::fill(&mut b).is_err() {
            b = (std::process::id() as u64).to_le_bytes();
        }
        Self {
            seed: u64::from_le_bytes(b),
            next: AtomicU64::new(0),
        }
    }

    /// The client's id if it is a sane one, else a new one.
    pub fn of(&self, headers: &HeaderMap) -> HeaderValue {
        self.of_sent(Sent::of(headers, &X_REQUEST_ID))
    }

    /// [`RequestIds::of`] with the `X-Request-Id` lines already found.
    ///
    /// Marked sensitive: HTTP/2's HPACK then sends it as a literal it never indexes. An
    /// id differs in every message, so indexing it only filled each connection's table
    /// with ids no later message repeats, and every answer's id was compared with them
    /// all (some 5,400 instructions an HTTP/2 answer, BENCHMARKS.md).
    pub fn of_sent(&self, sent: Sent) -> HeaderValue {
        let mut id = match sent {
            Sent::Once(id) if is_sane(id.as_bytes()) => id,
            _ => self.make(),
        };
        id.set_sensitive(true);
        id
    }

    /// A new id. SplitMix64's finaliser is a bijection, so distinct counts give
    /// distinct ids; the seed makes them differ between processes.
    ///
    /// Made [`BATCH`] at a time into one buffer that each id is a slice of: an id then
    /// costs a reference count, not an allocation and a free of its own (ids go
    /// upstream and back to the client, so they must be shareable anyway).
    pub fn make(&self) -> HeaderValue {
        let text = BATCHES.with(|cell| {
            let mut batch = cell.borrow_mut();
            if batch.seed != self.seed || batch.used == BATCH {
                *batch = self.batch();
            }
            let at = batch.used * ID_LEN;
            batch.used += 1;
            batch.text.slice(at..at + ID_LEN)
        });
        HeaderValue::from_maybe_shared(text).expect("hex digits are a valid header value")
    }

    /// The next [`BATCH`] ids, written out.
    fn batch(&self) -> Batch {
        let first = self.next.fetch_add(BATCH as u64, Ordering::Relaxed);
        let mut text = Vec::with_capacity(BATCH * ID_LEN);
        for n in first..first + BATCH as u64 {
            let mut z = self
                .seed
                .wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            const HEX: &[u8; 16] = b"0123456789abcdef";
            text.extend((0..ID_LEN).map(|i| HEX[((z >> (60 - 4 * i)) & 0xF) as usize]));
        }
        Batch {
            seed: self.seed,
            text: Bytes::from(text),
            used: 0,
        }
    }
}

/// Ids made at once.
const BATCH: usize = 64;

/// Hex digits in an id.
const ID_LEN: usize = 16;

/// Ids made and not yet handed out, per thread (no lock): the ones of the
/// [`RequestIds`] with `seed` (one per process, but for tests that run several
/// gateways in one).
struct Batch {
    seed: u64,
    text: Bytes,
    used: usize,
}

thread_local! {
    static BATCHES: RefCell<Batch> = const {
        RefCell::new(Batch {
            seed: 0,
            text: Bytes::new(),
            used: BATCH,
        })
    };
}

/// The one value of header `name` if it is a sane id; `None` when it is missing, sent
/// more than once, or not sane. For any id a client sends that is shown back or logged.
pub fn sane_one(headers: &HeaderMap, name: &HeaderName) -> Option<HeaderValue> {
    let mut sent = headers.get_all(name).iter();
    match (sent.next(), sent.next()) {
        (Some(id), None) if is_sane(id.as_bytes()) => Some(id.clone()),
        _ => None,
    }
}

/// 1 to [`MAX_LEN`] of `A-Z a-z 0-9 - _ . : + / =` (UUIDs, ULIDs, hex, base64 ids).
pub fn is_sane(id: &[u8]) -> bool {
    (1..=MAX_LEN).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:+/=".contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sane_client_id_is_kept_anything_else_replaced() {
        let ids = RequestIds::new();
        let mut h = HeaderMap::new();
        h.insert(
            X_REQUEST_ID,
            "5f0c6c2e-9a1b-4d1e-8f00-2b7c0f6f0a11".parse().unwrap(),
        );
        assert_eq!(ids.of(&h), "5f0c6c2e-9a1b-4d1e-8f00-2b7c0f6f0a11");
        for bad in [
            "",
            "has space",
            "quote\"",
            "back\\slash",
            "new\tline",
            &"a".repeat(MAX_LEN + 1),
        ] {
            let mut h = HeaderMap::new();
            h.insert(X_REQUEST_ID, HeaderValue::from_str(bad).unwrap());
            let got = ids.of(&h);
            assert_eq!(got.len(), 16, "{bad:?} was kept");
        }
        let mut two = HeaderMap::new();
        two.append(X_REQUEST_ID, "a".parse().unwrap());
        two.append(X_REQUEST_ID, "b".parse().unwrap());
        assert_eq!(ids.of(&two).len(), 16, "two ids are none");
    }

    #[test]
    fn made_ids_are_distinct_hex() {
        let ids = RequestIds::new();
        let made: std::collections::HashSet<HeaderValue> =
            (0..10_000).map(|_| ids.make()).collect();
        assert_eq!(made.len(), 10_000);
        assert!(made
            .iter()
            .all(|v| v.len() == 16 && v.as_bytes().iter().all(u8::is_ascii_hexdigit)));
    }
}

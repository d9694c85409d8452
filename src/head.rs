//! The lines of a request head the front door reads by name, the credential header and
//! `X-Request-Id`, found in one pass over the head's lines. A lookup by name hashes the
//! name (some 150 instructions for a name as long as `X-Bunq-Client-Authentication`);
//! comparing the few names a request carries with the two wanted costs less.

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// How often a header was sent, and its value when it was sent once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sent {
    Never,
    Once(HeaderValue),
    /// More than once: never resolved, always refused or replaced.
    Repeated,
}

impl Sent {
    /// The lines of `name` in `headers`, by lookup (where only one name is wanted).
    pub fn of(headers: &HeaderMap, name: &HeaderName) -> Sent {
        let mut lines = headers.get_all(name).iter();
        match (lines.next(), lines.next()) {
            (None, _) => Sent::Never,
            (Some(value), None) => Sent::Once(value.clone()),
            (Some(_), Some(_)) => Sent::Repeated,
        }
    }

    /// The value when the header was sent exactly once.
    pub fn once(&self) -> Option<&HeaderValue> {
        match self {
            Sent::Once(value) => Some(value),
            Sent::Never | Sent::Repeated => None,
        }
    }

    fn add(&mut self, value: &HeaderValue) {
        *self = match self {
            Sent::Never => Sent::Once(value.clone()),
            Sent::Once(_) | Sent::Repeated => Sent::Repeated,
        };
    }
}

/// The lines of `a` and of `b` (two different names), in one pass over `headers`.
pub fn two(headers: &HeaderMap, a: &HeaderName, b: &HeaderName) -> (Sent, Sent) {
    let (mut first, mut second) = (Sent::Never, Sent::Never);
    for (name, value) in headers {
        if name == a {
            first.add(value);
        } else if name == b {
            second.add(value);
        }
    }
    (first, second)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_pass_finds_what_lookups_find() {
        let a = HeaderName::from_static("x-bunq-client-authentication");
        let b = HeaderName::from_static("x-request-id");
        let mut h = HeaderMap::new();
        h.insert("host", "x".parse().unwrap());
        assert_eq!(two(&h, &a, &b), (Sent::Never, Sent::Never));
        h.insert(&a, "key".parse().unwrap());
        h.append(&b, "1".parse().unwrap());
        h.append(&b, "2".parse().unwrap());
        let (key, id) = two(&h, &a, &b);
        assert_eq!(key, Sent::Once("key".parse().unwrap()));
        assert_eq!(id, Sent::Repeated);
        assert_eq!(key, Sent::of(&h, &a));
        assert_eq!(id, Sent::of(&h, &b));
        assert_eq!(key.once().unwrap(), "key");
        assert_eq!(id.once(), None);
    }
}

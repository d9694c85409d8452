//! Addresses as the whitelist compares them.
//!
//! Every address is normalised before it is stored or compared: `::ffff:a.b.c.d` is the
//! IPv4 address `a.b.c.d`, everywhere.

use std::net::IpAddr;

/// The one spelling of an address used for every comparison.
pub fn normalize(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// The ACTIVE addresses of one credential: a sorted, de-duplicated boxed slice, so an
/// entry costs 17 bytes and a lookup is a binary search over at most
/// `limits.max_ips_per_credential` addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpSet(Box<[IpAddr]>);

impl IpSet {
    pub fn new(ips: impl IntoIterator<Item = IpAddr>) -> Self {
        let mut v: Vec<IpAddr> = ips.into_iter().map(normalize).collect();
        v.sort_unstable();
        v.dedup();
        Self(v.into_boxed_slice())
    }

    /// `ip` must already be normalised (the hot path normalises the client address once).
    pub fn contains(&self, ip: &IpAddr) -> bool {
        // Short lists are the norm; a linear scan beats the branches of a search there.
        if self.0.len() <= 8 {
            self.0.contains(ip)
        } else {
            self.0.binary_search(ip).is_ok()
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn mapped_ipv4_is_ipv4() {
        assert_eq!(normalize(ip("::ffff:10.1.2.3")), ip("10.1.2.3"));
        assert_eq!(normalize(ip("::1")), ip("::1"));
        let set = IpSet::new([ip("::ffff:10.1.2.3")]);
        assert!(set.contains(&ip("10.1.2.3")));
    }

    #[test]
    fn long_sets_search() {
        let set = IpSet::new((1..=50u8).map(|i| IpAddr::from([10, 0, 0, i])));
        assert_eq!(set.len(), 50);
        assert!(set.contains(&ip("10.0.0.50")));
        assert!(set.contains(&ip("10.0.0.1")));
        assert!(!set.contains(&ip("10.0.0.51")));
        assert!(!set.contains(&ip("::1")));
    }

    #[test]
    fn duplicates_collapse() {
        let set = IpSet::new([ip("1.2.3.4"), ip("::ffff:1.2.3.4"), ip("1.2.3.4")]);
        assert_eq!(set.len(), 1);
    }
}

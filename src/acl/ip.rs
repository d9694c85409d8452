//! Addresses as the whitelist compares them.
//!
//! Every address is normalised before it is stored or compared: `::ffff:a.b.c.d` is the
//! IPv4 address `a.b.c.d`, everywhere.

use std::net::IpAddr;

/// The one spelling of an address used for every comparison.
pub fn normalize(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// An address as one integer: IPv6 as itself, IPv4 as its IPv4-mapped IPv6 form. After
/// [`normalize`] no IPv6 address is in the mapped range, so the encoding is one-to-one,
/// and comparing two addresses is comparing two integers.
fn key(ip: &IpAddr) -> u128 {
    match normalize(*ip) {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// Up to this many addresses a scan beats a binary search (it also never mispredicts).
const SCAN_LIMIT: usize = 32;

/// The ACTIVE addresses of one credential: sorted, de-duplicated integers in one heap
/// slice, 16 bytes an address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpSet(Box<[u128]>);

impl IpSet {
    pub fn new(ips: impl IntoIterator<Item = IpAddr>) -> Self {
        let mut v: Vec<u128> = ips.into_iter().map(|ip| key(&ip)).collect();
        v.sort_unstable();
        v.dedup();
        Self(v.into_boxed_slice())
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        let k = key(ip);
        if self.0.len() <= SCAN_LIMIT {
            self.0.contains(&k)
        } else {
            self.0.binary_search(&k).is_ok()
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
        assert!(set.contains(&ip("::ffff:10.1.2.3")));
        let set = IpSet::new([ip("10.1.2.3")]);
        assert!(set.contains(&ip("::ffff:10.1.2.3")));
    }

    #[test]
    fn families_never_collide() {
        // 10.0.0.1 and ::a00:1 share their low 32 bits; only the mapping tells them apart.
        let set = IpSet::new([ip("10.0.0.1")]);
        assert!(!set.contains(&ip("::a00:1")));
        assert!(!set.contains(&ip("::")));
        let set = IpSet::new([ip("::a00:1")]);
        assert!(!set.contains(&ip("10.0.0.1")));
    }

    #[test]
    fn short_and_long_sets() {
        for n in [1u8, 8, 32, 33, 200] {
            let set = IpSet::new((1..=n).map(|i| IpAddr::from([10, 0, 0, i])));
            assert_eq!(set.len(), usize::from(n));
            assert!(set.contains(&ip("10.0.0.1")));
            assert!(set.contains(&IpAddr::from([10, 0, 0, n])));
            assert!(!set.contains(&ip("10.0.0.0")));
            assert!(!set.contains(&ip("::1")));
            if n < 255 {
                assert!(!set.contains(&IpAddr::from([10, 0, 0, n + 1])));
            }
        }
    }

    #[test]
    fn duplicates_collapse() {
        let set = IpSet::new([ip("1.2.3.4"), ip("::ffff:1.2.3.4"), ip("1.2.3.4")]);
        assert_eq!(set.len(), 1);
    }
}

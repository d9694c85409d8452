//! Per-address refusal limiting, in the spirit of HAProxy's stick tables: an address
//! refused more than `limits.refusals_per_second` times in the current second gets its
//! further refusals answered 429, as cheaply as the gateway can answer anything (a
//! static body, one counter, no access-log line), and held until that second is over
//! first, as HAProxy's `http-request tarpit` holds them: a client that waits for each
//! answer then sends at most one refused request per connection and second, instead of
//! as many as the machine can carry, so the flood stops eating the CPU the allowed
//! clients need. At most [`MAX_HELD`] refusals are held at once (each keeps its
//! connection busy); past that they are answered at once.
//!
//! An IPv6 client is counted by its /64 (one subscriber's prefix, which it can rotate
//! through at will), an IPv4 client by its address.
//!
//! Memory is fixed at start: a table of [`BUCKETS`] words, each a (second, count)
//! pair, indexed by a keyed hash of the address (SipHash with per-process random keys,
//! so nobody can pick addresses that collide on purpose). Two addresses that share a
//! bucket share a count, which only ever makes limiting stricter for them; the table
//! never grows. One atomic load to ask, one atomic add to count; no lock, no
//! allocation.
//!
//! Only refusals count, and the limiter is asked only about a request that is already
//! refused: an allowed request is never counted and never limited, not even one from
//! an address that is being limited (a client behind the same NAT as a flood still
//! gets in).

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Buckets in the table: 512 KiB. Enough that unrelated addresses rarely share one
/// while a flood comes from a handful of them.
pub const BUCKETS: usize = 1 << 16;

/// Limited refusals held back at once, at most.
pub const MAX_HELD: usize = 1024;

pub struct RefusalLimiter {
    /// 0: off.
    per_second: u32,
    /// Seeded per process (the addresses are the client's choice); foldhash costs a
    /// few instructions where SipHash cost some eighty a refusal.
    hasher: foldhash::fast::RandomState,
    started: Instant,
    /// Per bucket: the second (since `started`) in the high 32 bits, the refusals
    /// counted in it in the low 32.
    buckets: Box<[AtomicU64]>,
    /// Limited refusals being held right now.
    held: AtomicUsize,
}

/// Gives a held refusal's place back, also when the client leaves while it is held.
struct Held<'a>(&'a AtomicUsize);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl RefusalLimiter {
    pub fn new(per_second: u32) -> Self {
        let buckets = if per_second == 0 { 0 } else { BUCKETS };
        Self {
            per_second,
            hasher: foldhash::fast::RandomState::default(),
            started: Instant::now(),
            buckets: (0..buckets).map(|_| AtomicU64::new(0)).collect(),
            held: AtomicUsize::new(0),
        }
    }

    /// Holds a limited refusal until the current second is over (at most one second),
    /// unless [`MAX_HELD`] are held already.
    pub async fn hold(&self) {
        if self.held.fetch_add(1, Ordering::Relaxed) >= MAX_HELD {
            self.held.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let _held = Held(&self.held);
        let elapsed = self.started.elapsed();
        let rest = Duration::from_secs(elapsed.as_secs() + 1).saturating_sub(elapsed);
        tokio::time::sleep(rest).await;
    }

    /// Counts one refusal of `ip`, made at `at` (the request's arrival: no clock read
    /// here), and says whether it is over the limit for this second (then it is to be
    /// answered 429 instead).
    pub fn over_limit(&self, ip: IpAddr, at: Instant) -> bool {
        if self.per_second == 0 {
            return false;
        }
        let second = at.saturating_duration_since(self.started).as_secs() as u32;
        self.over_limit_in(ip, second)
    }

    fn over_limit_in(&self, ip: IpAddr, second: u32) -> bool {
        self.count(ip, second) > self.per_second
    }

    /// Adds one refusal in `second` and returns how many there are now.
    fn count(&self, ip: IpAddr, second: u32) -> u32 {
        let bucket = &self.buckets[self.bucket_of(ip)];
        let fresh = u64::from(second) << 32 | 1;
        let mut word = bucket.load(Ordering::Relaxed);
        loop {
            if (word >> 32) as u32 == second {
                // Same second: a plain add. The count cannot reach 2^32 in a second.
                return (bucket.fetch_add(1, Ordering::Relaxed) as u32).saturating_add(1);
            }
            // A new second (or the first refusal ever): start over at one.
            match bucket.compare_exchange_weak(word, fresh, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return 1,
                Err(now) => word = now,
            }
        }
    }
}

impl RefusalLimiter {
    /// The bucket an address counts in: an IPv6 address by its /64.
    fn bucket_of(&self, ip: IpAddr) -> usize {
        let client = match ip {
            IpAddr::V4(v4) => u128::from(v4.to_bits()),
            IpAddr::V6(v6) => v6.to_bits() >> 64 | 1 << 127,
        };
        self.hasher.hash_one(client) as usize % self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn limits_per_address_and_per_second() {
        let l = RefusalLimiter::new(3);
        let a = ip("192.0.2.1");
        let counts: Vec<u32> = (0..5).map(|_| l.count(a, 7)).collect();
        assert_eq!(counts, [1, 2, 3, 4, 5]);
        // The next second starts over.
        assert_eq!(l.count(a, 8), 1);
        // Another address has its own count (unless it shares the bucket, which only
        // makes it stricter: here it does not, by the odds of 1 in 65,536).
        let b = ip("192.0.2.2");
        if l.bucket_of(a) != l.bucket_of(b) {
            assert_eq!(l.count(b, 8), 1);
        }
    }

    #[test]
    fn over_limit_after_n_refusals() {
        let l = RefusalLimiter::new(2);
        let a = ip("2001:db8::1");
        // Two pass, and once over, it stays over until the second ends.
        let over: Vec<bool> = (0..4).map(|_| l.over_limit_in(a, 3)).collect();
        assert_eq!(over, [false, false, true, true]);
        assert!(!l.over_limit_in(a, 4), "a new second starts over");
    }

    #[test]
    fn an_ipv6_client_is_counted_by_its_64() {
        let l = RefusalLimiter::new(2);
        // Rotating within one /64 is one client.
        let over: Vec<bool> = ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::9"]
            .into_iter()
            .map(|a| l.over_limit_in(ip(a), 5))
            .collect();
        assert_eq!(over, [false, false, true]);
        // The next /64 is another client (unless it shares the bucket by chance).
        let next = ip("2001:db8:1:3::1");
        if l.bucket_of(next) != l.bucket_of(ip("2001:db8:1:2::1")) {
            assert!(!l.over_limit_in(next, 5));
        }
    }

    #[test]
    fn holds_are_bounded_and_given_back() {
        let l = RefusalLimiter::new(1);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let holds: Vec<_> = (0..MAX_HELD + 5).map(|_| Box::pin(l.hold())).collect();
            let mut holds = holds;
            // Poll each once: the first MAX_HELD wait, the rest return at once.
            let mut done = 0;
            for h in &mut holds {
                if futures_poll_once(h.as_mut()).await {
                    done += 1;
                }
            }
            assert_eq!(done, 5);
            assert_eq!(l.held.load(Ordering::Relaxed), MAX_HELD);
            drop(holds);
            assert_eq!(l.held.load(Ordering::Relaxed), 0);
        });
    }

    /// Polls a future once; true when it finished.
    async fn futures_poll_once<F: std::future::Future>(f: std::pin::Pin<&mut F>) -> bool {
        let mut f = Some(f);
        std::future::poll_fn(|cx| {
            let ready = f.take().unwrap().poll(cx).is_ready();
            std::task::Poll::Ready(ready)
        })
        .await
    }

    #[test]
    fn zero_disables_and_allocates_nothing() {
        let l = RefusalLimiter::new(0);
        assert!(l.buckets.is_empty());
        assert!((0..1000).all(|_| !l.over_limit(ip("192.0.2.1"), Instant::now())));
    }
}

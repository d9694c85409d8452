//! What each credential is used from, counted off the hot path's back.
//!
//! The hot path calls [`Recorder::note`] with its decision: a thread-local lookup and
//! a map update, with no lock, nothing shared written and nothing allocated once an
//! address has been seen. Workers hand their counts over when a flush asks (with their
//! next request) and whenever they go idle, moving the whole tally (never entry by
//! entry under the shared lock); [`flush`] merges them and writes them to the store in
//! batches, and the store adds up every gateway's.
//!
//! Memory is bounded: each worker keeps at most [`MAX_PER_WORKER`] addresses between
//! hand-overs and the flusher's outbox at most [`MAX_WAITING`] (an attacker rotating
//! addresses with a stolen key fills them, then further sightings are counted as
//! dropped), and the store keeps the 256 most recent refused addresses per credential.

pub mod flush;

use crate::acl::{Decision, Reason};
use crate::store::{Sighting, Timestamp, UsageBatch};
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Addresses (allowed and refused together) a worker holds between two hand-overs.
pub const MAX_PER_WORKER: usize = 100_000;

/// Addresses handed over and not yet flushed, at most.
pub const MAX_WAITING: usize = 200_000;

/// One credential and one address, the address as one integer: IPv6, with IPv4 in its
/// IPv4-mapped form (so `::ffff:a.b.c.d` and `a.b.c.d` are one address for free).
type Key = (u64, u128);

#[inline]
fn key(credential: u64, ip: IpAddr) -> Key {
    let bits = match ip {
        IpAddr::V4(v4) => (0xffff << 32) | u128::from(v4.to_bits()),
        IpAddr::V6(v6) => v6.to_bits(),
    };
    (credential, bits)
}

fn address(bits: u128) -> IpAddr {
    std::net::Ipv6Addr::from(bits).to_canonical()
}

/// Seeded per process: the addresses are the client's choice, so the hash must not be
/// predictable (the maps are bounded besides). foldhash costs a few nanoseconds where
/// std's SipHash cost about twenty, a tenth of the whole decision.
type Map = HashMap<Key, Seen, foldhash::fast::RandomState>;

#[derive(Clone, Copy)]
enum Kind {
    Allowed,
    /// Let through by shadow mode from an address not ACTIVE: served, but not by the
    /// list's leave, so neither allowed nor refused.
    Shadow,
    Refused,
}

#[derive(Clone, Copy)]
struct Seen {
    requests: u64,
    first: i64,
    last: i64,
}

impl Seen {
    fn add(&mut self, other: Seen) {
        self.requests += other.requests;
        self.first = self.first.min(other.first);
        self.last = self.last.max(other.last);
    }
}

/// Counts since the last hand-over.
#[derive(Default)]
struct Tally {
    allowed: Map,
    shadow: Map,
    refused: Map,
}

impl Tally {
    fn len(&self) -> usize {
        self.allowed.len() + self.shadow.len() + self.refused.len()
    }

    fn maps(&mut self) -> [&mut Map; 3] {
        [&mut self.allowed, &mut self.shadow, &mut self.refused]
    }

    /// Adds `from` into this one, up to `max` addresses (returns how many sightings
    /// did not fit), and empties it, keeping its capacity: a worker's tally does not
    /// allocate again for the addresses it sees every minute.
    fn absorb(&mut self, from: &mut Tally, max: usize) -> u64 {
        let mut room = max.saturating_sub(self.len());
        let mut lost = 0;
        for (into, from) in self.maps().into_iter().zip(from.maps()) {
            for (key, seen) in from.drain() {
                if let Some(s) = into.get_mut(&key) {
                    s.add(seen);
                } else if room > 0 {
                    room -= 1;
                    into.insert(key, seen);
                } else {
                    lost += seen.requests;
                }
            }
        }
        lost
    }
}

/// What the workers share with the flusher; no worker touches it per request.
struct Shared {
    /// Advanced by the flusher to ask every worker for its counts.
    epoch: AtomicU64,
    /// Counts handed over by the workers, waiting for the flusher.
    outbox: Mutex<Outbox>,
    /// Unix microseconds, refreshed every second by the flusher: the hot path reads an
    /// atomic instead of the clock.
    now: AtomicI64,
    dropped: AtomicU64,
}

/// Tallies handed over whole, and emptied ones to hand back. A hand-over runs on a
/// serving thread and holds the lock every worker shares: it only moves a tally in and
/// a spare out, whatever their size; the merging is the flusher's, off the lock.
#[derive(Default)]
struct Outbox {
    pending: Vec<Tally>,
    /// Addresses in `pending`, counted per tally (so the same address from two workers
    /// counts twice: the bound errs on the side of less memory).
    waiting: usize,
    /// Emptied tallies with their capacity, for workers to count into again.
    spares: Vec<Tally>,
}

/// Spare tallies kept for reuse; more workers than this allocate afresh.
const MAX_SPARES: usize = 64;

/// A tally this small is added into the outbox entry by entry; a larger one is moved
/// whole. Either way the lock is held for at most this many map updates.
const ABSORB_BELOW: usize = 1024;

impl Shared {
    fn receive(&self, tally: &mut Tally) {
        let n = tally.len();
        if n == 0 {
            return;
        }
        let refused = {
            let mut outbox = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
            if n <= ABSORB_BELOW {
                // The usual hand-over (a worker parks after a few requests): a few map
                // updates cost less than moving maps around, and the worker keeps its
                // own map's capacity. The lock is held for a bounded number of them.
                if outbox.pending.is_empty() {
                    let spare = outbox.spares.pop().unwrap_or_default();
                    outbox.pending.push(spare);
                }
                let others = outbox.waiting - outbox.pending.last().map_or(0, Tally::len);
                let last = outbox.pending.last_mut().expect("one was just made");
                let lost = last.absorb(tally, MAX_WAITING.saturating_sub(others));
                outbox.waiting = others + outbox.pending.last().map_or(0, Tally::len);
                drop(outbox);
                self.dropped.fetch_add(lost, Ordering::Relaxed);
                return;
            }
            if outbox.waiting + n <= MAX_WAITING {
                let spare = outbox.spares.pop().unwrap_or_default();
                outbox.pending.push(std::mem::replace(tally, spare));
                outbox.waiting += n;
                None
            } else {
                Some(std::mem::take(tally))
            }
        };
        // The outbox is full: what did not fit is counted as dropped, off the lock.
        if let Some(mut lost) = refused {
            let mut requests = 0;
            for map in lost.maps() {
                requests += map.values().map(|s| s.requests).sum::<u64>();
                map.clear();
            }
            self.dropped.fetch_add(requests, Ordering::Relaxed);
            *tally = lost;
        }
    }

    /// Everything handed over so far, merged, with the emptied tallies given back.
    fn take(&self) -> Tally {
        let pending = {
            let mut outbox = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
            outbox.waiting = 0;
            std::mem::take(&mut outbox.pending)
        };
        let mut merged = Tally::default();
        let mut emptied = Vec::with_capacity(pending.len());
        for mut tally in pending {
            // Cannot lose anything: the bound was kept when they were handed over.
            merged.absorb(&mut tally, usize::MAX);
            emptied.push(tally);
        }
        let mut outbox = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
        let room = MAX_SPARES.saturating_sub(outbox.spares.len());
        outbox.spares.extend(emptied.into_iter().take(room));
        merged
    }
}

/// One thread's counts for one recorder.
struct Local {
    shared: Arc<Shared>,
    /// The last epoch this thread handed over for.
    epoch: u64,
    tally: Tally,
}

impl Drop for Local {
    /// A thread that ends hands over what it counted.
    fn drop(&mut self) {
        self.shared.receive(&mut self.tally);
    }
}

thread_local! {
    /// This thread's tally for each recorder it has counted for (one, but for tests
    /// that run several gateways in one process).
    static LOCALS: RefCell<Vec<Local>> = const { RefCell::new(Vec::new()) };
}

/// Hands this thread's counts over to the flusher. The runtime calls it whenever a
/// worker goes idle (`on_thread_park`), so the counts of a quiet worker are never
/// stuck on it; a busy worker hands over at its next request after a flush asked.
pub fn hand_over() {
    let _ = LOCALS.try_with(|cell| {
        if let Ok(mut locals) = cell.try_borrow_mut() {
            for local in locals.iter_mut() {
                local.shared.receive(&mut local.tally);
            }
        }
    });
}

/// Counts requests per credential and address on the threads that serve them.
///
/// Per request: a thread-local lookup and a map update, nothing shared written, no
/// lock, no allocation once an address has been seen. The flusher asks for the counts
/// (an epoch); each worker hands its tally over with its next request, or when it goes
/// idle, under a lock taken once per worker per flush.
pub struct Recorder {
    enabled: bool,
    shared: Arc<Shared>,
}

impl Recorder {
    /// A recorder; when `enabled` is false every call is a no-op (for measuring what
    /// recording costs).
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            shared: Arc::new(Shared {
                epoch: AtomicU64::new(0),
                outbox: Mutex::new(Outbox::default()),
                now: AtomicI64::new(Timestamp::now().0),
                dropped: AtomicU64::new(0),
            }),
        }
    }

    /// Records what `decision` says about who used which address: an allowed request,
    /// a valid key from an address not ACTIVE on it forwarded in shadow mode, or the
    /// same refused. Every other refusal is no one's usage.
    #[inline]
    pub fn note(&self, decision: Decision, client_ip: Option<IpAddr>) {
        if !self.enabled {
            return;
        }
        let Some(ip) = client_ip else { return };
        match decision {
            Decision::Allow(who) => self.count(Kind::Allowed, who.credential_id, ip),
            Decision::Shadow(who, Reason::IpNotActive) => {
                self.count(Kind::Shadow, who.credential_id, ip)
            }
            Decision::Deny(Reason::IpNotActive, Some(who)) => {
                self.count(Kind::Refused, who.credential_id, ip)
            }
            Decision::Shadow(..) | Decision::Deny(..) => {}
        }
    }

    fn count(&self, kind: Kind, credential: u64, ip: IpAddr) {
        let now = self.shared.now.load(Ordering::Relaxed);
        let key = key(credential, ip);
        let _ = LOCALS.try_with(|cell| {
            let Ok(mut locals) = cell.try_borrow_mut() else {
                return;
            };
            let local = match locals
                .iter()
                .position(|l| Arc::ptr_eq(&l.shared, &self.shared))
            {
                Some(i) => &mut locals[i],
                None => self.first_on_this_thread(&mut locals),
            };
            let epoch = self.shared.epoch.load(Ordering::Relaxed);
            if epoch != local.epoch {
                local.epoch = epoch;
                local.shared.receive(&mut local.tally);
            }
            let full = local.tally.len() >= MAX_PER_WORKER;
            let map = match kind {
                Kind::Allowed => &mut local.tally.allowed,
                Kind::Shadow => &mut local.tally.shadow,
                Kind::Refused => &mut local.tally.refused,
            };
            if let Some(seen) = map.get_mut(&key) {
                seen.requests += 1;
                // The coarse clock may lag the first sighting's exact one.
                seen.last = seen.last.max(now);
            } else if full {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            } else {
                first_sighting(map, key);
            }
        });
    }

    /// This thread's tally for this recorder, made on its first count here.
    #[cold]
    fn first_on_this_thread<'l>(&self, locals: &'l mut Vec<Local>) -> &'l mut Local {
        // Tallies of recorders that are gone (only the thread holds them still) are
        // handed over to no one: let them go.
        locals.retain(|l| Arc::strong_count(&l.shared) > 1);
        locals.push(Local {
            shared: Arc::clone(&self.shared),
            epoch: self.shared.epoch.load(Ordering::Acquire),
            tally: Tally::default(),
        });
        locals.last_mut().expect("just pushed")
    }

    /// Moves the clock the hot path stamps sightings with.
    pub fn tick(&self) {
        self.shared.now.store(Timestamp::now().0, Ordering::Relaxed);
    }

    /// Asks every worker for its counts: each hands them over with its next request,
    /// or at once if idle (it did when it parked). This thread hands over now.
    pub fn ask(&self) {
        self.shared.epoch.fetch_add(1, Ordering::Release);
        hand_over();
    }

    /// Sightings not kept because a worker's tally was full, since the last call.
    pub fn take_dropped(&self) -> u64 {
        self.shared.dropped.swap(0, Ordering::Relaxed)
    }

    /// Takes the counts handed over so far (and this thread's), leaving them empty.
    pub fn drain(&self) -> UsageBatch {
        hand_over();
        let taken = self.shared.take();
        UsageBatch {
            allowed: sightings(taken.allowed),
            refused: sightings(taken.refused),
            shadow: sightings(taken.shadow),
        }
    }
}

/// An address not seen since the last hand-over: out of line, the hot path is a hit.
///
/// Stamped with the exact time, not the clock the flusher moves once a second: a
/// request right after a device registration would otherwise be stamped before the
/// entry the registration created, and `ip list` would show an entry used before it
/// existed. Once per address per hand-over, so the hot path keeps its cheap clock.
#[cold]
fn first_sighting(map: &mut Map, key: Key) {
    let now = Timestamp::now().0;
    map.insert(
        key,
        Seen {
            requests: 1,
            first: now,
            last: now,
        },
    );
}

fn sightings(map: Map) -> Vec<Sighting> {
    map.into_iter()
        .map(|((credential_id, ip), s)| Sighting {
            credential_id,
            ip: address(ip),
            requests: s.requests,
            first_seen: Timestamp(s.first),
            last_seen: Timestamp(s.last),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn ip() -> IpAddr {
        "10.0.0.1".parse().unwrap()
    }

    #[test]
    fn addresses_are_one_integer_and_come_back_as_they_were() {
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(key(1, v4), key(1, mapped));
        assert_ne!(key(1, v4), key(2, v4));
        assert_eq!(address(key(1, mapped).1), v4);
        assert_eq!(address(key(1, v6).1), v6);
        assert_eq!(address(key(1, "::1".parse().unwrap()).1).to_string(), "::1");
    }

    fn allow(r: &Recorder, credential_id: u64, at: IpAddr) {
        let who = crate::acl::Identity {
            credential_id,
            user_id: 1,
        };
        r.note(Decision::Allow(who), Some(at));
    }

    fn allowed(r: &Recorder) -> u64 {
        r.drain().allowed.iter().map(|s| s.requests).sum()
    }

    #[test]
    fn a_first_sighting_is_never_stamped_before_it_happened() {
        let r = Recorder::new(true);
        // The coarse clock as it may be just before the flusher moves it.
        r.shared
            .now
            .store(Timestamp::now().0 - 900_000, Ordering::Relaxed);
        let before = Timestamp::now();
        allow(&r, 1, ip());
        allow(&r, 1, ip());
        let batch = r.drain();
        let seen = &batch.allowed[0];
        assert_eq!(seen.requests, 2);
        assert!(seen.first_seen >= before, "stamped by the lagging clock");
        assert!(seen.last_seen >= seen.first_seen);
    }

    #[test]
    fn shadow_passes_are_counted_apart_from_refusals() {
        let r = Recorder::new(true);
        let who = crate::acl::Identity {
            credential_id: 1,
            user_id: 1,
        };
        r.note(Decision::Shadow(who, Reason::IpNotActive), Some(ip()));
        r.note(Decision::Shadow(who, Reason::IpNotActive), Some(ip()));
        r.note(Decision::Deny(Reason::IpNotActive, Some(who)), Some(ip()));
        let batch = r.drain();
        assert_eq!(batch.shadow.len(), 1);
        assert_eq!(batch.shadow[0].requests, 2);
        assert_eq!(batch.refused[0].requests, 1);
        assert!(batch.allowed.is_empty());
    }

    #[test]
    fn workers_hand_over_when_asked_when_idle_and_when_they_end() {
        let r = Arc::new(Recorder::new(true));
        let (go, wait) = mpsc::channel::<&str>();
        let (done, finished) = mpsc::channel();
        let worker = {
            let r = Arc::clone(&r);
            std::thread::spawn(move || {
                for step in wait {
                    match step {
                        "count" => allow(&r, 1, ip()),
                        "park" => hand_over(),
                        _ => return,
                    }
                    done.send(()).unwrap();
                }
            })
        };
        let step = |s| {
            go.send(s).unwrap();
            finished.recv().unwrap();
        };
        step("count");
        assert_eq!(allowed(&r), 0, "a busy worker keeps its counts until asked");
        r.ask();
        step("count");
        assert_eq!(
            allowed(&r),
            1,
            "handed over with the next request after the ask"
        );
        step("park");
        assert_eq!(allowed(&r), 1, "an idle worker hands over");
        step("count");
        go.send("end").unwrap();
        worker.join().unwrap();
        assert_eq!(allowed(&r), 1, "a thread that ends hands over");
    }

    #[test]
    fn the_outbox_is_bounded() {
        let r = Recorder::new(true);
        let mut big = Tally::default();
        for i in 0..(MAX_WAITING as u64 + 10) {
            big.refused.insert(
                key(i, ip()),
                Seen {
                    requests: 2,
                    first: 0,
                    last: 0,
                },
            );
        }
        r.shared.receive(&mut big);
        assert_eq!(
            r.take_dropped(),
            2 * (MAX_WAITING as u64 + 10),
            "too big: all dropped"
        );
        assert_eq!(big.len(), 0);
        let half = |from: u64| {
            let mut t = Tally::default();
            for i in from..from + MAX_WAITING as u64 / 2 {
                t.refused.insert(
                    key(i, ip()),
                    Seen {
                        requests: 1,
                        first: 0,
                        last: 0,
                    },
                );
            }
            r.shared.receive(&mut t);
        };
        half(0);
        half(1_000_000);
        half(2_000_000);
        assert_eq!(
            r.take_dropped(),
            MAX_WAITING as u64 / 2,
            "the third did not fit"
        );
        assert_eq!(r.drain().refused.len(), MAX_WAITING);
    }

    #[test]
    fn a_hand_over_moves_a_tally_whole_and_gets_a_spare_back() {
        let r = Recorder::new(true);
        let mut tally = Tally::default();
        for i in 0..10_000 {
            tally.allowed.insert(
                key(i, ip()),
                Seen {
                    requests: 1,
                    first: 0,
                    last: 0,
                },
            );
        }
        let capacity = tally.allowed.capacity();
        r.shared.receive(&mut tally);
        // Moved, not copied entry by entry under the lock: the outbox holds the very
        // map (its capacity), and the worker counts on in a fresh one.
        {
            let outbox = r.shared.outbox.lock().unwrap();
            assert_eq!(outbox.pending.len(), 1);
            assert_eq!(outbox.pending[0].allowed.capacity(), capacity);
        }
        assert_eq!(tally.allowed.capacity(), 0);
        assert_eq!(r.drain().allowed.len(), 10_000);
        // A small hand-over is added entry by entry (the worker keeps its own map), into
        // the emptied map that came back as a spare, capacity kept.
        let mut next = Tally::default();
        next.allowed.insert(
            key(1, ip()),
            Seen {
                requests: 1,
                first: 0,
                last: 0,
            },
        );
        r.shared.receive(&mut next);
        assert_eq!(next.len(), 0);
        assert!(next.allowed.capacity() > 0, "the worker keeps its map");
        {
            let outbox = r.shared.outbox.lock().unwrap();
            assert_eq!(outbox.pending.len(), 1);
            assert!(outbox.pending[0].allowed.capacity() >= 10_000);
        }
        assert_eq!(r.drain().allowed.len(), 1);
    }
}

//! What each credential is used from, counted off the hot path's back.
//!
//! The hot path calls [`Recorder::note`] with its decision: a thread-local lookup, a
//! lock only this thread takes between two flushes, and a map update, with nothing
//! another worker writes and nothing allocated once an address has been seen. Each
//! worker's tally is registered with the recorder when the thread first counts; the
//! flusher ([`flush`]) takes every tally itself, swapping an emptied one in under that
//! worker's lock (the worker's only contention: once per flush), so a worker, busy or
//! idle, never has to hand anything over. It merges them and writes them to the store
//! in batches, and the store adds up every gateway's.
//!
//! Memory is bounded: each worker keeps at most [`MAX_PER_WORKER`] addresses between
//! flushes and a flush merges at most [`MAX_WAITING`] (an attacker rotating addresses
//! with a stolen key fills them, then further sightings are counted as dropped), and
//! the store keeps the 256 most recent refused addresses per credential.

pub mod flush;

use crate::acl::{Decision, Reason};
use crate::store::{Sighting, Timestamp, UsageBatch};
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Addresses (allowed and refused together) a worker holds between two flushes.
pub const MAX_PER_WORKER: usize = 100_000;

/// Addresses one flush takes from the workers, at most.
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

/// Counts since the last flush.
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
    /// did not fit), and empties it, keeping its capacity: a tally given back to a
    /// worker does not allocate again for the addresses it sees every minute.
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

/// One worker's tally: written by that worker per request, taken by the flusher once
/// per flush. The lock is the worker's own: no other worker ever takes it.
type Slot = Arc<Mutex<Tally>>;

fn lock(slot: &Mutex<Tally>) -> MutexGuard<'_, Tally> {
    slot.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the workers share with the flusher; no worker writes it per request.
struct Shared {
    /// Every thread's tally, registered on its first count; a thread that ends leaves
    /// its tally here for the next flush to take.
    workers: Mutex<Vec<Slot>>,
    /// Emptied tallies, swapped in for the full ones at the next flush (their capacity
    /// kept).
    spares: Mutex<Vec<Tally>>,
    /// Unix microseconds, refreshed every second by the flusher: the hot path reads an
    /// atomic instead of the clock.
    now: AtomicI64,
    dropped: AtomicU64,
}

impl Shared {
    /// Every worker's counts, merged (at most [`MAX_WAITING`] addresses; the rest
    /// counted as dropped), each worker left counting into an emptied tally. A worker
    /// waits on its lock only for the swap, however many addresses it holds.
    fn take(&self) -> Tally {
        let workers: Vec<Slot> = {
            let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
            // Taken below for the last time: only this list holds a thread that ended.
            let all = workers.clone();
            workers.retain(|w| Arc::strong_count(w) > 2);
            all
        };
        let mut spares =
            std::mem::take(&mut *self.spares.lock().unwrap_or_else(|p| p.into_inner()));
        let mut merged = Tally::default();
        let mut lost = 0;
        for worker in &workers {
            let spare = spares.pop().unwrap_or_default();
            let mut taken = std::mem::replace(&mut *lock(worker), spare);
            lost += merged.absorb(&mut taken, MAX_WAITING);
            spares.push(taken);
        }
        spares.truncate(workers.len());
        *self.spares.lock().unwrap_or_else(|p| p.into_inner()) = spares;
        self.dropped.fetch_add(lost, Ordering::Relaxed);
        merged
    }
}

/// One thread's tally for one recorder.
struct Local {
    shared: Arc<Shared>,
    tally: Slot,
}

thread_local! {
    /// This thread's tally for each recorder it has counted for (one, but for tests
    /// that run several gateways in one process).
    static LOCALS: RefCell<Vec<Local>> = const { RefCell::new(Vec::new()) };
}

/// Counts requests per credential and address on the threads that serve them.
///
/// Per request: a thread-local lookup, this worker's own lock and a map update,
/// nothing another worker writes, no allocation once an address has been seen. The
/// flusher takes every worker's tally in [`Recorder::drain`].
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
                workers: Mutex::new(Vec::new()),
                spares: Mutex::new(Vec::new()),
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
            let mut tally = lock(&local.tally);
            let full = tally.len() >= MAX_PER_WORKER;
            let map = match kind {
                Kind::Allowed => &mut tally.allowed,
                Kind::Shadow => &mut tally.shadow,
                Kind::Refused => &mut tally.refused,
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

    /// This thread's tally for this recorder, made and registered on its first count
    /// here.
    #[cold]
    fn first_on_this_thread<'l>(&self, locals: &'l mut Vec<Local>) -> &'l mut Local {
        // Tallies of recorders that are gone (only the thread holds them still) are
        // taken by no one: let them go.
        locals.retain(|l| Arc::strong_count(&l.shared) > 1);
        let tally = Slot::default();
        self.shared
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::clone(&tally));
        locals.push(Local {
            shared: Arc::clone(&self.shared),
            tally,
        });
        locals.last_mut().expect("just pushed")
    }

    /// Moves the clock the hot path stamps sightings with.
    pub fn tick(&self) {
        self.shared.now.store(Timestamp::now().0, Ordering::Relaxed);
    }

    /// Sightings not kept because a tally was full, since the last call.
    pub fn take_dropped(&self) -> u64 {
        self.shared.dropped.swap(0, Ordering::Relaxed)
    }

    /// Takes every worker's counts, leaving them empty.
    pub fn drain(&self) -> UsageBatch {
        let taken = self.shared.take();
        UsageBatch {
            allowed: sightings(taken.allowed),
            refused: sightings(taken.refused),
            shadow: sightings(taken.shadow),
        }
    }
}

/// An address not seen since the last flush: out of line, the hot path is a hit.
///
/// Stamped with the exact time, not the clock the flusher moves once a second: a
/// request right after a device registration would otherwise be stamped before the
/// entry the registration created, and `ip list` would show an entry used before it
/// existed. Once per address per flush, so the hot path keeps its cheap clock.
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
    fn a_flush_takes_every_workers_counts_busy_idle_or_ended() {
        let r = Arc::new(Recorder::new(true));
        let (go, wait) = mpsc::channel::<&str>();
        let (done, finished) = mpsc::channel();
        let worker = {
            let r = Arc::clone(&r);
            std::thread::spawn(move || {
                for step in wait {
                    match step {
                        "count" => allow(&r, 1, ip()),
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
        step("count");
        assert_eq!(
            allowed(&r),
            2,
            "taken from a worker that does nothing to help"
        );
        assert_eq!(allowed(&r), 0, "and taken once");
        step("count");
        go.send("end").unwrap();
        worker.join().unwrap();
        assert_eq!(allowed(&r), 1, "a thread that ended leaves its counts");
        assert_eq!(r.shared.workers.lock().unwrap().len(), 0, "and then goes");
    }

    fn fill(t: &mut Tally, from: u64, n: usize, requests: u64) {
        for i in from..from + n as u64 {
            t.refused.insert(
                key(i, ip()),
                Seen {
                    requests,
                    first: 0,
                    last: 0,
                },
            );
        }
    }

    #[test]
    fn a_flush_takes_a_bounded_number_of_addresses() {
        let r = Recorder::new(true);
        for from in [0, 1_000_000, 2_000_000] {
            let slot = Slot::default();
            fill(&mut lock(&slot), from, MAX_WAITING / 2, 1);
            r.shared.workers.lock().unwrap().push(slot);
        }
        assert_eq!(r.drain().refused.len(), MAX_WAITING);
        assert_eq!(
            r.take_dropped(),
            MAX_WAITING as u64 / 2,
            "the third did not fit"
        );
    }

    #[test]
    fn a_flush_swaps_a_tally_whole_and_gives_an_emptied_one_back() {
        let r = Recorder::new(true);
        let slot = Slot::default();
        r.shared.workers.lock().unwrap().push(Arc::clone(&slot));
        // The worker's own handle besides the list's: it is alive.
        let _worker = Arc::clone(&slot);
        fill(&mut lock(&slot), 0, 10_000, 1);
        assert_eq!(r.drain().refused.len(), 10_000);
        assert_eq!(lock(&slot).refused.capacity(), 0, "a fresh one swapped in");
        fill(&mut lock(&slot), 0, 1, 1);
        assert_eq!(r.drain().refused.len(), 1);
        // The emptied tally of the first flush, its capacity kept.
        assert!(lock(&slot).refused.capacity() >= 10_000);
        assert_eq!(lock(&slot).len(), 0);
    }
}

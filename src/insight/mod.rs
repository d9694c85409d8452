//! What each credential is used from, counted off the hot path's back.
//!
//! The hot path calls [`Recorder::allowed`] or [`Recorder::refused`]: a thread-local
//! lookup, an uncontended lock (only the flusher ever takes it from another thread,
//! once a minute) and a map update. No lock is shared between workers and nothing is
//! allocated per request once an address has been seen. [`flush`] drains the counts
//! into the store in batches; the store adds up every gateway's.
//!
//! Memory is bounded: each worker keeps at most [`MAX_PER_WORKER`] addresses between
//! flushes (an attacker rotating addresses with a stolen key fills it, then further
//! sightings are counted as dropped), and the store keeps the 256 most recent refused
//! addresses per credential.

pub mod flush;

use crate::acl::{normalize, Decision, Reason};
use crate::store::{Sighting, Timestamp, UsageBatch};
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Addresses (allowed and refused together) a worker holds between two flushes.
pub const MAX_PER_WORKER: usize = 100_000;

/// One credential and one address.
type Key = (u64, IpAddr);

#[derive(Clone, Copy)]
enum Kind {
    Allowed,
    Refused,
}

#[derive(Clone, Copy)]
struct Seen {
    requests: u64,
    first: i64,
    last: i64,
}

/// One worker's counts since the last flush.
#[derive(Default)]
struct Tally {
    allowed: HashMap<Key, Seen>,
    refused: HashMap<Key, Seen>,
}

impl Tally {
    fn len(&self) -> usize {
        self.allowed.len() + self.refused.len()
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's tally for each recorder it has recorded for (one, but for tests
    /// that run several gateways in one process).
    static TALLIES: RefCell<Vec<(u64, Arc<Mutex<Tally>>)>> = const { RefCell::new(Vec::new()) };
}

/// Counts requests per credential and address on the threads that serve them.
pub struct Recorder {
    id: u64,
    enabled: bool,
    /// Unix microseconds, refreshed every second by the flusher: the hot path reads an
    /// atomic instead of the clock.
    now: AtomicI64,
    /// Every thread's tally, for the flusher.
    tallies: Mutex<Vec<Arc<Mutex<Tally>>>>,
    dropped: AtomicU64,
}

impl Recorder {
    /// A recorder; when `enabled` is false every call is a no-op (for measuring what
    /// recording costs).
    pub fn new(enabled: bool) -> Self {
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            enabled,
            now: AtomicI64::new(Timestamp::now().0),
            tallies: Mutex::new(Vec::new()),
            dropped: AtomicU64::new(0),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// An allowed request from `ip` with `credential`.
    pub fn allowed(&self, credential: u64, ip: IpAddr) {
        if self.enabled {
            self.count(Kind::Allowed, credential, ip);
        }
    }

    /// A valid, registered key from an address that is not ACTIVE on it (refused, or
    /// forwarded in shadow mode). Unknown keys are never recorded: they belong to no one.
    pub fn refused(&self, credential: u64, ip: IpAddr) {
        if self.enabled {
            self.count(Kind::Refused, credential, ip);
        }
    }

    /// Records what `decision` says about who used which address: an allowed request,
    /// or a valid key from an address not ACTIVE on it (refused, or forwarded in
    /// shadow mode). Every other refusal is no one's usage.
    #[inline]
    pub fn note(&self, decision: Decision, client_ip: Option<IpAddr>) {
        if !self.enabled {
            return;
        }
        let Some(ip) = client_ip else { return };
        match decision {
            Decision::Allow(who) => self.count(Kind::Allowed, who.credential_id, ip),
            Decision::Shadow(who, Reason::IpNotActive)
            | Decision::Deny(Reason::IpNotActive, Some(who)) => {
                self.count(Kind::Refused, who.credential_id, ip)
            }
            Decision::Shadow(..) | Decision::Deny(..) => {}
        }
    }

    fn count(&self, kind: Kind, credential: u64, ip: IpAddr) {
        let now = self.now.load(Ordering::Relaxed);
        let key = (credential, normalize(ip));
        self.with_tally(|tally| {
            let full = tally.len() >= MAX_PER_WORKER;
            let map = match kind {
                Kind::Allowed => &mut tally.allowed,
                Kind::Refused => &mut tally.refused,
            };
            if let Some(seen) = map.get_mut(&key) {
                seen.requests += 1;
                seen.last = now;
            } else if full {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            } else {
                map.insert(
                    key,
                    Seen {
                        requests: 1,
                        first: now,
                        last: now,
                    },
                );
            }
        });
    }

    /// Runs `f` on this thread's tally, making one on first use.
    fn with_tally(&self, f: impl FnOnce(&mut Tally)) {
        TALLIES.with(|cell| {
            let mut mine = cell.borrow_mut();
            let tally = match mine.iter().find(|(id, _)| *id == self.id) {
                Some((_, t)) => Arc::clone(t),
                None => {
                    let t = Arc::new(Mutex::new(Tally::default()));
                    self.tallies
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(Arc::clone(&t));
                    mine.push((self.id, Arc::clone(&t)));
                    t
                }
            };
            drop(mine);
            let mut guard = tally.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard);
        });
    }

    /// Moves the clock the hot path stamps sightings with.
    pub fn tick(&self) {
        self.now.store(Timestamp::now().0, Ordering::Relaxed);
    }

    /// Sightings not kept because a worker's tally was full, since the last call.
    pub fn take_dropped(&self) -> u64 {
        self.dropped.swap(0, Ordering::Relaxed)
    }

    /// Takes every worker's counts, merged, leaving them empty.
    pub fn drain(&self) -> UsageBatch {
        let tallies: Vec<Arc<Mutex<Tally>>> = self
            .tallies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut allowed: HashMap<Key, Seen> = HashMap::new();
        let mut refused: HashMap<Key, Seen> = HashMap::new();
        for tally in tallies {
            let taken = std::mem::take(&mut *tally.lock().unwrap_or_else(|p| p.into_inner()));
            merge(&mut allowed, taken.allowed);
            merge(&mut refused, taken.refused);
        }
        UsageBatch {
            allowed: sightings(allowed),
            refused: sightings(refused),
        }
    }
}

fn merge(into: &mut HashMap<Key, Seen>, from: HashMap<Key, Seen>) {
    for (key, seen) in from {
        into.entry(key)
            .and_modify(|s| {
                s.requests += seen.requests;
                s.first = s.first.min(seen.first);
                s.last = s.last.max(seen.last);
            })
            .or_insert(seen);
    }
}

fn sightings(map: HashMap<Key, Seen>) -> Vec<Sighting> {
    map.into_iter()
        .map(|((credential_id, ip), s)| Sighting {
            credential_id,
            ip,
            requests: s.requests,
            first_seen: Timestamp(s.first),
            last_seen: Timestamp(s.last),
        })
        .collect()
}

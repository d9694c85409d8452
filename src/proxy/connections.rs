//! The connection table: at most `server.max_connections` client connections, and
//! which of them are idle.
//!
//! When every place is taken, a new connection takes the place of an idle one (no
//! request in flight: waiting for its first or next request head, or in its TLS
//! handshake), which is closed, as nginx reuses its idle keep-alive connections. Only
//! when none of the places looked at is idle is the new connection refused, at accept,
//! before any TLS or HTTP work. So sockets that sit idle, however many, cannot keep a
//! new client out, and requests in flight are never cut to make room.
//!
//! Which idle connection goes is chosen by a clock hand with a second chance: a
//! connection that finished a request since the hand last passed is skipped once, so
//! the ones idle longest (or never used) go first. The hand is moved by the accept
//! loop alone; each place is one atomic word, changed by compare-and-swap, so a
//! request start racing an eviction either wins (and the place is not taken) or finds
//! itself evicted.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Places the hand looks at before refusing a connection: bounds the work per accept
/// when every connection is busy.
const SCAN: usize = 4096;

/// Low 32 bits of a place's word: requests in flight, and this flag.
const RECENT: u64 = 1 << 31;
const IN_FLIGHT: u64 = RECENT - 1;

struct Place {
    /// The owner's generation in the high 32 bits; `RECENT` and the requests in flight
    /// in the low 32. A free place has no owner: its generation is bumped when it is
    /// freed, so a stale handle never matches again.
    word: AtomicU64,
    /// Woken when the place is taken from its owner.
    evicted: Notify,
}

pub struct ConnectionTable {
    places: Box<[Place]>,
    free: Mutex<Vec<u32>>,
    hand: AtomicUsize,
}

/// What the accept loop does with a new connection.
pub enum Admission {
    /// Serve it; there was a free place.
    Free(Seat),
    /// Serve it; an idle connection was closed to make room.
    Evicted(Seat),
    /// Close it at once: every place looked at is busy.
    Full,
}

/// A connection's place in the table, held for as long as it is open.
pub struct Seat {
    table: Arc<ConnectionTable>,
    index: u32,
    generation: u32,
    /// Requests this connection finished (for telling an idle close from a timeout).
    finished: AtomicU32,
}

fn generation(word: u64) -> u32 {
    (word >> 32) as u32
}

impl ConnectionTable {
    pub fn new(max: usize) -> Arc<Self> {
        let max = max.clamp(1, u32::MAX as usize);
        Arc::new(Self {
            places: (0..max)
                .map(|_| Place {
                    word: AtomicU64::new(0),
                    evicted: Notify::new(),
                })
                .collect(),
            free: Mutex::new((0..max as u32).rev().collect()),
            hand: AtomicUsize::new(0),
        })
    }

    /// A place for a new connection: a free one, or an idle one's. Only the accept loop
    /// calls this.
    pub fn admit(self: &Arc<Self>) -> Admission {
        let free = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop();
        if let Some(index) = free {
            let word = self.places[index as usize].word.load(Ordering::Acquire);
            return Admission::Free(self.seat(index, generation(word)));
        }
        let n = self.places.len();
        let mut hand = self.hand.load(Ordering::Relaxed);
        for _ in 0..SCAN.min(2 * n) {
            let index = hand % n;
            hand = hand.wrapping_add(1);
            let place = &self.places[index];
            let word = place.word.load(Ordering::Acquire);
            if word & IN_FLIGHT != 0 {
                continue;
            }
            if word & RECENT != 0 {
                // Second chance: clear the mark and pass on. A failed swap means the
                // connection just started or finished a request: pass on all the same.
                let _ = place.word.compare_exchange(
                    word,
                    word & !RECENT,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                );
                continue;
            }
            let taken = u64::from(generation(word).wrapping_add(1)) << 32;
            if place
                .word
                .compare_exchange(word, taken, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                place.evicted.notify_waiters();
                self.hand.store(hand, Ordering::Relaxed);
                return Admission::Evicted(self.seat(index as u32, generation(taken)));
            }
        }
        self.hand.store(hand, Ordering::Relaxed);
        Admission::Full
    }

    fn seat(self: &Arc<Self>, index: u32, generation: u32) -> Seat {
        Seat {
            table: Arc::clone(self),
            index,
            generation,
            finished: AtomicU32::new(0),
        }
    }
}

impl Seat {
    fn place(&self) -> &Place {
        &self.table.places[self.index as usize]
    }

    /// Changes the word if this seat still owns the place.
    fn update(&self, change: impl Fn(u64) -> u64) {
        let place = self.place();
        let mut word = place.word.load(Ordering::Acquire);
        while generation(word) == self.generation {
            match place.word.compare_exchange_weak(
                word,
                change(word),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(now) => word = now,
            }
        }
    }

    /// A request started on this connection: it is not idle until the request ends.
    pub fn request_started(&self) {
        self.update(|w| (w + 1) | RECENT);
    }

    /// A request's response was sent (or abandoned).
    pub fn request_finished(&self) {
        self.finished.fetch_add(1, Ordering::Relaxed);
        self.update(|w| ((w & IN_FLIGHT).saturating_sub(1)) | (w & !IN_FLIGHT) | RECENT);
    }

    /// True when the connection has answered at least one request and has none in
    /// flight: it was waiting for the client's next one.
    pub fn idle_after_requests(&self) -> bool {
        self.finished.load(Ordering::Relaxed) > 0
            && self.place().word.load(Ordering::Acquire) & IN_FLIGHT == 0
    }

    /// True once no request ever started on this connection.
    pub fn never_used(&self) -> bool {
        self.finished.load(Ordering::Relaxed) == 0
            && self.place().word.load(Ordering::Acquire) & (IN_FLIGHT | RECENT) == 0
    }

    /// Resolves when a new connection took this seat's place.
    pub async fn evicted(&self) {
        let place = self.place();
        loop {
            let notified = place.evicted.notified();
            tokio::pin!(notified);
            // Registered before the check, so an eviction between the two still wakes.
            notified.as_mut().enable();
            if generation(place.word.load(Ordering::Acquire)) != self.generation {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        let place = self.place();
        let freed = u64::from(self.generation.wrapping_add(1)) << 32;
        let mut word = place.word.load(Ordering::Acquire);
        while generation(word) == self.generation {
            match place
                .word
                .compare_exchange_weak(word, freed, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    let mut free = self.table.free.lock().unwrap_or_else(|p| p.into_inner());
                    free.push(self.index);
                    return;
                }
                Err(now) => word = now,
            }
        }
        // Evicted: the place is someone else's now.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seat(a: Admission) -> Seat {
        match a {
            Admission::Free(s) | Admission::Evicted(s) => s,
            Admission::Full => panic!("refused"),
        }
    }

    #[test]
    fn free_places_first_then_idle_ones_then_refusal() {
        let table = ConnectionTable::new(2);
        let a = seat(table.admit());
        let b = seat(table.admit());
        a.request_started();
        b.request_started();
        assert!(matches!(table.admit(), Admission::Full), "both busy");

        b.request_finished();
        // b finished a request just now: it gets a second chance, then goes.
        let c = match table.admit() {
            Admission::Evicted(c) => c,
            _ => panic!("an idle connection should make room"),
        };
        assert!(c.never_used());
        drop(b); // evicted: its drop frees nothing
        assert!(table.free.lock().unwrap().is_empty());
        drop(c);
        assert_eq!(table.free.lock().unwrap().len(), 1);
        let d = seat(table.admit());
        assert!(d.never_used());
        a.request_finished();
        assert!(a.idle_after_requests());
    }

    #[test]
    fn an_evicted_connection_learns_it_at_once() {
        let table = ConnectionTable::new(1);
        let a = seat(table.admit());
        let b = seat(table.admit());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(a.evicted()); // returns: the place is taken
                                  // A request on an evicted seat changes nothing for the new owner.
        a.request_started();
        assert!(b.never_used());
    }

    #[test]
    fn a_request_in_flight_is_never_evicted() {
        let table = ConnectionTable::new(3);
        let seats: Vec<Seat> = (0..3).map(|_| seat(table.admit())).collect();
        for s in &seats {
            s.request_started();
        }
        for _ in 0..10 {
            assert!(matches!(table.admit(), Admission::Full));
        }
        seats[1].request_finished();
        let mut evicted = None;
        for _ in 0..3 {
            if let Admission::Evicted(s) = table.admit() {
                evicted = Some(s);
                break;
            }
        }
        let _new = evicted.expect("the idle one makes room");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(seats[1].evicted());
    }
}

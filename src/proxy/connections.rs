//! The connection table: at most `server.max_connections` client connections, at most
//! a share of them per client address, and which of them are idle or stalled.
//!
//! When every place is taken, a new connection takes the place of an idle one (no
//! request in flight: waiting for its first or next request head, or in its TLS
//! handshake) or a stalled one (every request in flight waits on its client, for body
//! bytes or to read the answer, and none moved lately: marked by the listener's
//! watchdog), which is closed, as nginx reuses its idle keep-alive connections. Only
//! when none of the places looked at is idle or stalled is the new connection refused,
//! at accept, before any TLS or HTTP work. So sockets that sit idle or stalled, however
//! many, cannot keep a new client out, and requests that are moving (or waiting on the
//! upstream) are never cut to make room.
//!
//! One client address (one /64 for IPv6, which one subscriber usually holds whole)
//! holds at most `per_client` places; a connection beyond that is refused at accept,
//! even when places are free, so no one address can fill the table. Trusted proxies
//! are not counted: many clients stand behind each.
//!
//! Which idle connection goes is chosen by a clock hand with a second chance: a
//! connection that finished a request since the hand last passed is skipped once, so
//! the ones idle longest (or never used) go first. The hand is moved by the accept
//! loop alone; each place is one atomic word, changed by compare-and-swap, so a
//! request start racing an eviction either wins (and the place is not taken) or finds
//! itself evicted.

use super::deadlines::UpstreamWait;
use super::Cut;
use futures_util::task::AtomicWaker;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Context;
use tokio::sync::Notify;

/// Places the hand looks at before refusing a connection: bounds the work per accept
/// when every connection is busy.
const SCAN: usize = 4096;

/// Low 32 bits of a place's word: requests in flight, and these flags.
const RECENT: u64 = 1 << 31;
/// Set by the watchdog: every request in flight waits on the client and nothing moved.
const STALLED: u64 = 1 << 30;
const IN_FLIGHT: u64 = STALLED - 1;

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
    /// Places one client may hold.
    per_client: u32,
    /// Places held per client (only those with at least one). foldhash: keyed per
    /// table, so chosen addresses cannot pile into one bucket, and a tenth of SipHash's
    /// cost on every accept.
    clients: Mutex<HashMap<u128, u32, foldhash::fast::RandomState>>,
}

/// Whom a connection is counted against: its address, or its /64 for IPv6 (both as
/// IPv6 bits; IPv4 as mapped, which no normalised IPv6 address is).
pub fn client_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6) & !(u128::from(u64::MAX)),
    }
}

/// What the accept loop does with a new connection.
pub enum Admission {
    /// Serve it; there was a free place.
    Free(Seat),
    /// Serve it; an idle connection was closed to make room.
    Evicted(Seat),
    /// Close it at once: every place looked at is busy.
    Full,
    /// Close it at once: its client holds its share of the places already.
    OverShare,
}

/// A connection's place in the table, held for as long as it is open.
pub struct Seat {
    table: Arc<ConnectionTable>,
    index: u32,
    generation: u32,
    /// Requests this connection finished (for telling an idle close from a timeout).
    finished: AtomicU32,
    /// The client this place is counted against.
    client: Option<u128>,
    /// Requests in flight whose body is still coming from the client.
    bodies_waiting: AtomicU32,
    /// Answers in flight that wait for the client to take more of them.
    answers_waiting: AtomicU32,
    /// Body bytes received and answer bytes taken by the client: what the watchdog
    /// calls progress.
    moved: AtomicU64,
    /// Why the listener closed the connection ([`Cut`] as a number; 0: it did not).
    cut: AtomicU8,
    /// Which request heads the watchdog times ([`Heads`] as a number; 0: none yet).
    heads: AtomicU8,
    /// Set once at shutdown: finish the request in flight, then close.
    draining: AtomicBool,
    /// The serving task, woken when `draining` is set.
    serving: AtomicWaker,
    /// The exchange with the upstream in flight on the connection's lane.
    pub upstream: UpstreamWait,
}

/// Which request heads of a connection the watchdog holds to `header_read_timeout`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Heads {
    /// Only the first (hyper-util's `auto` times the later HTTP/1 ones itself; HTTP/2
    /// has none).
    First = 1,
    /// Every one, also the wait for the next one on a kept-alive connection (hyper's
    /// HTTP/1 server runs without a timer of its own).
    Every = 2,
}

/// What every request in flight on a connection waits for, when it is the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientWait {
    /// At least one request's body is still coming.
    Body,
    /// Only answers the client does not take.
    Answer,
}

fn generation(word: u64) -> u32 {
    (word >> 32) as u32
}

impl ConnectionTable {
    /// A table of `max` places, of which one client may hold `per_client`.
    pub fn new(max: usize, per_client: usize) -> Arc<Self> {
        let max = max.clamp(1, u32::MAX as usize);
        Arc::new(Self {
            per_client: per_client.clamp(1, max) as u32,
            clients: Mutex::new(HashMap::default()),
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

    /// A place for a new connection from `client` (see [`client_key`]; `None` for a
    /// trusted proxy): a free one, or an idle or stalled one's. Only the accept loop
    /// calls this.
    pub fn admit(self: &Arc<Self>, client: Option<u128>) -> Admission {
        if let Some(key) = client {
            let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
            let held = clients.entry(key).or_insert(0);
            // A share of every place is no share: what refuses then is the cap.
            if *held >= self.per_client && (self.per_client as usize) < self.places.len() {
                return Admission::OverShare;
            }
            *held += 1;
        }
        let admission = self.place(client);
        if matches!(admission, Admission::Full) {
            self.release(client);
        }
        admission
    }

    /// One place fewer held by `client`.
    fn release(&self, client: Option<u128>) {
        let Some(key) = client else { return };
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(held) = clients.get_mut(&key) {
            *held -= 1;
            if *held == 0 {
                clients.remove(&key);
            }
        }
    }

    fn place(self: &Arc<Self>, client: Option<u128>) -> Admission {
        let free = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop();
        if let Some(index) = free {
            let word = self.places[index as usize].word.load(Ordering::Acquire);
            return Admission::Free(self.seat(index, generation(word), client));
        }
        let n = self.places.len();
        let mut hand = self.hand.load(Ordering::Relaxed);
        for _ in 0..SCAN.min(2 * n) {
            let index = hand % n;
            hand = hand.wrapping_add(1);
            let place = &self.places[index];
            let word = place.word.load(Ordering::Acquire);
            if word & IN_FLIGHT != 0 && word & STALLED == 0 {
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
                return Admission::Evicted(self.seat(index as u32, generation(taken), client));
            }
        }
        self.hand.store(hand, Ordering::Relaxed);
        Admission::Full
    }

    fn seat(self: &Arc<Self>, index: u32, generation: u32, client: Option<u128>) -> Seat {
        Seat {
            table: Arc::clone(self),
            index,
            generation,
            finished: AtomicU32::new(0),
            client,
            bodies_waiting: AtomicU32::new(0),
            answers_waiting: AtomicU32::new(0),
            moved: AtomicU64::new(0),
            cut: AtomicU8::new(0),
            heads: AtomicU8::new(0),
            draining: AtomicBool::new(false),
            serving: AtomicWaker::new(),
            upstream: UpstreamWait::default(),
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
        self.update(|w| ((w & !STALLED) + 1) | RECENT);
    }

    /// A request's response was sent (or abandoned).
    pub fn request_finished(&self) {
        self.finished.fetch_add(1, Ordering::Relaxed);
        self.update(|w| ((w & IN_FLIGHT).saturating_sub(1)) | (w & !IN_FLIGHT & !STALLED) | RECENT);
    }

    /// The listener is about to close this connection, for `why`.
    pub fn cut(&self, why: Cut) {
        self.cut.store(why as u8, Ordering::Release);
    }

    /// Why the listener closed this connection, if it did.
    pub fn cut_by(&self) -> Option<Cut> {
        match self.cut.load(Ordering::Acquire) {
            1 => Some(Cut::BodyTimeout),
            2 => Some(Cut::ResponseTimeout),
            3 => Some(Cut::Evicted),
            _ => None,
        }
    }

    /// Marks the connection stalled (a new connection may take its place) or not.
    pub fn set_stalled(&self, stalled: bool) {
        self.update(|w| if stalled { w | STALLED } else { w & !STALLED });
    }

    /// A request body started, or stopped, waiting on the client.
    pub fn body_waiting(&self, waiting: bool) {
        count(&self.bodies_waiting, waiting);
    }

    /// An answer started, or stopped, waiting for the client to take it.
    pub fn answer_waiting(&self, waiting: bool) {
        count(&self.answers_waiting, waiting);
    }

    /// `bytes` of a body arrived, or of an answer were taken.
    pub fn moved(&self, bytes: usize) {
        self.moved.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Bytes moved so far (see [`Seat::moved`]).
    pub fn progress(&self) -> u64 {
        self.moved.load(Ordering::Relaxed)
    }

    /// What the requests in flight wait on, when every one of them waits on the client;
    /// `None` when none is in flight or one waits on something else (the upstream).
    pub fn client_wait(&self) -> Option<ClientWait> {
        let in_flight = (self.place().word.load(Ordering::Acquire) & IN_FLIGHT) as u32;
        let bodies = self.bodies_waiting.load(Ordering::Relaxed);
        let answers = self.answers_waiting.load(Ordering::Relaxed);
        if in_flight == 0 || bodies.saturating_add(answers) < in_flight {
            None
        } else if bodies > 0 {
            Some(ClientWait::Body)
        } else {
            Some(ClientWait::Answer)
        }
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

    /// From now on the watchdog holds `heads` to the head deadline (before this, the
    /// PROXY header and TLS handshake have deadlines of their own).
    pub fn time_heads(&self, heads: Heads) {
        self.heads.store(heads as u8, Ordering::Release);
    }

    /// True when the connection waits for a request head the watchdog times: none in
    /// flight, and this is its first, or every head is timed.
    pub fn awaits_head(&self) -> bool {
        match self.heads.load(Ordering::Acquire) {
            1 => self.never_used(),
            2 => self.place().word.load(Ordering::Acquire) & IN_FLIGHT == 0,
            _ => false,
        }
    }

    /// Requests finished so far (a new one since the last look resets the head wait).
    pub fn finished(&self) -> u32 {
        self.finished.load(Ordering::Relaxed)
    }

    /// Asks the connection to finish the request in flight and close (shutdown).
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Release);
        self.serving.wake();
    }

    /// True once [`Seat::drain`] was called; until then the serving task (`cx`) is
    /// woken when it is. One atomic load and a waker check per wake-up.
    pub fn draining(&self, cx: &Context<'_>) -> bool {
        self.serving.register(cx.waker());
        self.draining.load(Ordering::Acquire)
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

/// One more, or one fewer.
fn count(counter: &AtomicU32, up: bool) {
    if up {
        counter.fetch_add(1, Ordering::Relaxed);
    } else {
        counter.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.table.release(self.client);
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
            Admission::Full | Admission::OverShare => panic!("refused"),
        }
    }

    #[test]
    fn free_places_first_then_idle_ones_then_refusal() {
        let table = ConnectionTable::new(2, 2);
        let a = seat(table.admit(None));
        let b = seat(table.admit(None));
        a.request_started();
        b.request_started();
        assert!(matches!(table.admit(None), Admission::Full), "both busy");

        b.request_finished();
        // b finished a request just now: it gets a second chance, then goes.
        let c = match table.admit(None) {
            Admission::Evicted(c) => c,
            _ => panic!("an idle connection should make room"),
        };
        assert!(c.never_used());
        drop(b); // evicted: its drop frees nothing
        assert!(table.free.lock().unwrap().is_empty());
        drop(c);
        assert_eq!(table.free.lock().unwrap().len(), 1);
        let d = seat(table.admit(None));
        assert!(d.never_used());
        a.request_finished();
        assert!(a.idle_after_requests());
    }

    #[test]
    fn an_evicted_connection_learns_it_at_once() {
        let table = ConnectionTable::new(1, 1);
        let a = seat(table.admit(None));
        let b = seat(table.admit(None));
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
        let table = ConnectionTable::new(3, 3);
        let seats: Vec<Seat> = (0..3).map(|_| seat(table.admit(None))).collect();
        for s in &seats {
            s.request_started();
        }
        for _ in 0..10 {
            assert!(matches!(table.admit(None), Admission::Full));
        }
        seats[1].request_finished();
        let mut evicted = None;
        for _ in 0..3 {
            if let Admission::Evicted(s) = table.admit(None) {
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

    #[test]
    fn one_client_holds_only_its_share() {
        let table = ConnectionTable::new(10, 3);
        let a = Some(client_key("10.0.0.1".parse().unwrap()));
        let held: Vec<Seat> = (0..3).map(|_| seat(table.admit(a))).collect();
        assert!(matches!(table.admit(a), Admission::OverShare));
        let other = Some(client_key("10.0.0.2".parse().unwrap()));
        let _b = seat(table.admit(other));
        // Trusted proxies are not counted.
        let _proxied: Vec<Seat> = (0..4).map(|_| seat(table.admit(None))).collect();
        drop(held);
        let _again = seat(table.admit(a));
        assert_eq!(table.clients.lock().unwrap().len(), 2);
    }

    #[test]
    fn an_ipv6_client_is_its_slash_64() {
        let key = |s: &str| client_key(s.parse().unwrap());
        assert_eq!(key("2001:db8::1"), key("2001:db8::ffff:1:2:3"));
        assert_ne!(key("2001:db8::1"), key("2001:db8:0:1::1"));
        assert_ne!(key("0.0.0.1"), key("::1"));
        let table = ConnectionTable::new(10, 1);
        let _one = seat(table.admit(Some(key("2001:db8::1"))));
        assert!(matches!(
            table.admit(Some(key("2001:db8::2"))),
            Admission::OverShare
        ));
    }

    #[test]
    fn a_stalled_connection_makes_room_and_one_that_moves_does_not() {
        let table = ConnectionTable::new(2, 2);
        let a = seat(table.admit(None));
        let b = seat(table.admit(None));
        a.request_started();
        b.request_started();
        a.body_waiting(true);
        assert_eq!(a.client_wait(), Some(ClientWait::Body));
        assert_eq!(b.client_wait(), None, "waits on the upstream");
        assert!(matches!(table.admit(None), Admission::Full));
        a.set_stalled(true);
        let mut evicted = None;
        for _ in 0..4 {
            if let Admission::Evicted(s) = table.admit(None) {
                evicted = Some(s);
                break;
            }
        }
        let c = evicted.expect("the stalled one makes room");
        c.request_started();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(a.evicted());
        // A stalled mark is cleared by a request that ends.
        b.set_stalled(true);
        b.request_finished();
        b.request_started();
        assert!(matches!(table.admit(None), Admission::Full));
        assert!(matches!(table.admit(None), Admission::Full));
    }
}

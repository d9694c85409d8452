//! Deadlines on what waits on the client once a request head has arrived: its body
//! coming in, and its answer going out (an HTTP/1 client that does not drain its
//! socket, an HTTP/2 client that leaves its flow-control window at 0).
//!
//! The models are nginx's `client_body_timeout` and Apache's mod_reqtimeout: a wait
//! may last `timeout`, and every `min_rate` bytes that move earn it one more second, so
//! a body that stalls is cut after `timeout` and one that trickles soon after. Time
//! spent waiting on the upstream is never counted: a body the upstream reads slowly,
//! or an answer the upstream has not produced yet, is not the client's doing.
//!
//! The request body ([`RequestBody`]) and the answer body (the listener's `Tracked`)
//! tell the connection's [`Seat`] when they wait on the client and how many bytes
//! moved; one watchdog per connection ([`watch`]) looks once a [`TICK`] and reports a
//! connection whose every request in flight has waited past its deadline. It also
//! marks a connection stalled (nothing moved since its last look) so that a new
//! client may take its place at the cap. This module decides nothing else: the
//! listener closes the connection and counts it.

use super::connections::{ClientWait, Seat};
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::task::AbortHandle;
use tokio::time::{Instant, MissedTickBehavior};

/// How often the watchdog looks at its connection: the granularity of every deadline
/// here, and how soon a stalled connection may be evicted (after two looks).
pub const TICK: Duration = Duration::from_millis(500);

/// The limits on waiting for a client (`server.body_*`, `server.response_*`).
#[derive(Clone, Copy, Debug)]
pub struct Deadlines {
    pub body_timeout: Duration,
    /// Bytes a second that earn one more second; 0: none do.
    pub body_min_rate: u64,
    pub response_timeout: Duration,
    pub response_min_rate: u64,
}

impl Deadlines {
    /// How long a wait may last after `moved` bytes moved during it.
    fn allowed(&self, wait: ClientWait, moved: u64) -> Duration {
        let (timeout, rate) = match wait {
            ClientWait::Body => (self.body_timeout, self.body_min_rate),
            ClientWait::Answer => (self.response_timeout, self.response_min_rate),
        };
        let earned = moved.checked_div(rate).unwrap_or(0);
        timeout.saturating_add(Duration::from_secs(earned))
    }
}

/// A client's request body as the front door reads it: hyper's own, which tells the
/// connection's seat while it is still coming and how much of it arrived.
pub struct RequestBody {
    inner: Incoming,
    /// Held while the body is still coming (none for a request without a body).
    seat: Option<Arc<Seat>>,
}

impl RequestBody {
    pub(super) fn new(inner: Incoming, seat: &Arc<Seat>) -> Self {
        let seat = (!inner.is_end_stream()).then(|| {
            seat.body_waiting(true);
            Arc::clone(seat)
        });
        Self { inner, seat }
    }

    fn done(&mut self) {
        if let Some(seat) = self.seat.take() {
            seat.body_waiting(false);
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let Some(seat) = &self.seat else {
            return polled;
        };
        let ended = match &polled {
            Poll::Pending => false,
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    seat.moved(data.len());
                }
                self.inner.is_end_stream()
            }
            Poll::Ready(_) => true,
        };
        if ended {
            self.done();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        self.done();
    }
}

/// The upstream exchange in flight on an HTTP/1 connection's lane (one at a time), timed
/// by the connection's watchdog: `upstream.timeout` costs two stores a request instead
/// of a `Sleep` in the timer wheel (some 600 instructions a request). When the deadline
/// passes, the watchdog closes the lane's upstream connection, which ends the exchange
/// with an error the forwarder then reports as the timeout it was; the client gets its
/// 504 at the first look past the deadline (up to one [`TICK`] late, never early).
#[derive(Default)]
pub struct UpstreamWait {
    /// When the upstream must have answered, as [`since_start`] of that instant; 0
    /// while no exchange is in flight, [`OVERDUE`] once the watchdog cut it. One word,
    /// so that an exchange that ends just as the watchdog looks is either answered or
    /// cut, never both (an answer whose body the cut would then break).
    deadline: AtomicU64,
    /// Closes the lane's upstream connection (the task driving it); set when it opens.
    close: Mutex<Option<AbortHandle>>,
}

/// [`UpstreamWait::deadline`] of an exchange the watchdog cut.
const OVERDUE: u64 = u64::MAX;

impl UpstreamWait {
    /// The lane opened a new upstream connection, driven by `task`; one opened after
    /// the exchange was cut (its deadline passed while connecting) is closed at once.
    pub fn opened(&self, task: AbortHandle) {
        let mut close = self.close.lock().unwrap_or_else(|p| p.into_inner());
        if self.overdue() {
            task.abort();
        } else {
            *close = Some(task);
        }
    }

    /// An exchange starts: the upstream has until `deadline` to answer.
    pub fn begin(&self, deadline: std::time::Instant) {
        // Neither 0 (no exchange) nor OVERDUE.
        let at = since_start(deadline).clamp(1, OVERDUE - 1);
        self.deadline.store(at, Ordering::Release);
    }

    /// True once the watchdog cut the exchange in flight.
    pub fn overdue(&self) -> bool {
        self.deadline.load(Ordering::Acquire) == OVERDUE
    }

    /// The exchange ended; true when the watchdog cut it for its deadline.
    pub fn end(&self) -> bool {
        self.deadline.swap(0, Ordering::AcqRel) == OVERDUE
    }

    /// At a look: cuts the exchange in flight if it is past its deadline.
    fn look(&self, now: std::time::Instant) {
        let deadline = self.deadline.load(Ordering::Acquire);
        if deadline == 0 || since_start(now) < deadline {
            return;
        }
        // Lost to `end` (answered just now) or already cut: nothing to do.
        let cut =
            self.deadline
                .compare_exchange(deadline, OVERDUE, Ordering::AcqRel, Ordering::Acquire);
        if cut.is_err() {
            return;
        }
        if let Some(task) = self.close.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
    }
}

/// Nanoseconds from the first call in this process to `at` (0 before it): an instant
/// that fits an atomic.
fn since_start(at: std::time::Instant) -> u64 {
    static START: LazyLock<std::time::Instant> = LazyLock::new(std::time::Instant::now);
    at.saturating_duration_since(*START).as_nanos() as u64
}

/// A wait on the client the watchdog is timing.
struct Wait {
    kind: ClientWait,
    since: Instant,
    /// Bytes moved on the connection when it began, and at the last look.
    start: u64,
    last: u64,
}

/// What a client kept waiting past its deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overdue {
    /// A body or an answer ([`Deadlines`]).
    Client(ClientWait),
    /// A request head the seat times ([`Seat::awaits_head`]) did not come within
    /// `header_read_timeout`.
    Head,
}

/// Resolves with what the client kept waiting past its deadline; never, while every
/// wait is within its deadline. Marks the seat stalled from the second look at a wait
/// in which nothing moved, and clears the mark when the wait ends or bytes move.
///
/// The head deadline is timed here too, at the same looks: hyper's HTTP/1 timer made a
/// boxed `Sleep` for every request head (some 700 instructions a request, in the timer
/// wheel); here it costs nothing per request, never fires early, and fires up to two
/// [`TICK`]s late (a wait is timed from the first look that sees it).
pub async fn watch(seat: &Seat, deadlines: &Deadlines, head_timeout: Duration) -> Overdue {
    let mut tick = tokio::time::interval_at(Instant::now() + TICK, TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut wait: Option<Wait> = None;
    // Since when, and after how many finished requests, a head has been awaited.
    let mut head: Option<(Instant, u32)> = None;
    loop {
        tick.tick().await;
        let now = Instant::now();
        seat.upstream.look(now.into_std());
        if seat.awaits_head() {
            let finished = seat.finished();
            match head {
                Some((since, at)) if at == finished => {
                    if now.duration_since(since) >= head_timeout {
                        return Overdue::Head;
                    }
                }
                _ => head = Some((now, finished)),
            }
        } else {
            head = None;
        }
        let Some(kind) = seat.client_wait() else {
            if wait.take().is_some() {
                seat.set_stalled(false);
            }
            continue;
        };
        let moved = seat.progress();
        match &mut wait {
            Some(w) if w.kind == kind => {
                if now.duration_since(w.since) >= deadlines.allowed(kind, moved - w.start) {
                    return Overdue::Client(kind);
                }
                seat.set_stalled(moved == w.last);
                w.last = moved;
            }
            _ => {
                wait = Some(Wait {
                    kind,
                    since: now,
                    start: moved,
                    last: moved,
                });
                seat.set_stalled(false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_exchange_is_either_answered_or_cut_never_both() {
        let now = std::time::Instant::now();
        let later = now + Duration::from_secs(1);
        let parked = || tokio::spawn(std::future::pending::<()>());

        // Answered in time: a look after the end cuts nothing.
        let wait = UpstreamWait::default();
        let task = parked();
        wait.opened(task.abort_handle());
        wait.begin(now);
        assert!(!wait.end());
        wait.look(later);
        assert!(!wait.overdue());
        assert!(!task.is_finished());

        // Past its deadline: cut (the connection's task aborted), and the end says so.
        wait.begin(now);
        wait.look(later);
        assert!(wait.overdue());
        assert!(task.await.unwrap_err().is_cancelled());
        assert!(wait.end());

        // A connection opened after the cut is closed at once.
        wait.begin(now);
        wait.look(later);
        let late = parked();
        wait.opened(late.abort_handle());
        assert!(late.await.unwrap_err().is_cancelled());
        assert!(wait.end());
    }

    #[test]
    fn bytes_that_move_earn_time_at_the_minimum_rate() {
        let d = Deadlines {
            body_timeout: Duration::from_secs(10),
            body_min_rate: 500,
            response_timeout: Duration::from_secs(3),
            response_min_rate: 0,
        };
        assert_eq!(d.allowed(ClientWait::Body, 0), Duration::from_secs(10));
        assert_eq!(d.allowed(ClientWait::Body, 499), Duration::from_secs(10));
        assert_eq!(d.allowed(ClientWait::Body, 5_000), Duration::from_secs(20));
        assert_eq!(
            d.allowed(ClientWait::Answer, 1 << 40),
            Duration::from_secs(3),
            "rate 0: a hard deadline"
        );
        assert_eq!(
            d.allowed(ClientWait::Body, u64::MAX),
            Duration::from_secs(10 + u64::MAX / 500)
        );
    }
}

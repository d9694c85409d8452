//! Upgraded connections (RFC 9110 section 7.8; a WebSocket, RFC 6455): telling an
//! upgrade request from the others, the headers that carry it across, and splicing the
//! client's connection to the upstream's after the upstream's 101, both ways, until
//! either side closes or neither sends a byte for `upstream.tunnel_idle_timeout`.
//!
//! The credential check has happened before any of this, once, on the upgrade request:
//! a refused one never reaches the upstream. The listener runs the splice on the
//! client connection's own task ([`TunnelSlot`]), so the tunnel holds its place under
//! `server.max_connections` and is cut, like any connection, at the end of
//! `server.shutdown_grace`. What crosses is not read: frames are the two ends'
//! business.

use crate::metrics::Metrics;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use prometheus::IntCounter;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// True for an HTTP/1.1 upgrade request (`Connection: upgrade` with `Upgrade`). hyper
/// marks those (and `CONNECT`s, refused before this) with an `OnUpgrade` extension; a
/// request without extensions costs one look at an empty map.
///
/// Never `Upgrade: h2c`: a tunnel of HTTP/2 requests would carry every later request
/// past the check and the access log ("h2c smuggling"); such a request is forwarded as
/// a plain one, its `Upgrade` dropped with the other hop-by-hop headers, as Envoy does.
pub fn wanted<B>(req: &Request<B>) -> bool {
    req.extensions().get::<OnUpgrade>().is_some()
        && req.method() != Method::CONNECT
        && req.headers().get(header::UPGRADE).is_some_and(|v| {
            !v.as_bytes()
                .split(|b| *b == b',')
                .any(|p| p.trim_ascii().eq_ignore_ascii_case(b"h2c"))
        })
}

/// Writes `Upgrade: protocol` and `Connection: upgrade`: the two hop-by-hop headers an
/// upgrade needs on each hop, after the others were stripped.
pub fn mark_upgrade(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::UPGRADE, protocol);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
}

/// A tunnel that waits for its client connection to be handed over: the front door
/// puts it here when it answers 101, the listener runs it once hyper has written that
/// answer and let go of the connection.
pub type Tunnel = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Where a client connection's tunnel waits for the listener. Empty on every
/// connection that never upgrades.
#[derive(Default)]
pub struct TunnelSlot(Mutex<Option<Tunnel>>);

impl TunnelSlot {
    pub fn put(&self, tunnel: Tunnel) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(tunnel);
    }

    pub fn take(&self) -> Option<Tunnel> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// How a tunnel ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// One side closed (or both): the other was closed too.
    Closed,
    /// No byte either way for the idle timeout.
    Idle,
    /// A side failed (a reset, a broken TLS record).
    Error,
    /// The upgrade never completed on one side.
    NotUpgraded,
}

impl End {
    pub fn label(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Idle => "idle_timeout",
            Self::Error => "error",
            Self::NotUpgraded => "not_upgraded",
        }
    }
}

/// What crossed a tunnel.
#[derive(Debug, Default)]
pub struct Spliced {
    /// From the client to the upstream.
    pub up: AtomicU64,
    /// From the upstream to the client.
    pub down: AtomicU64,
}

impl Spliced {
    fn total(&self) -> u64 {
        self.up.load(Ordering::Relaxed) + self.down.load(Ordering::Relaxed)
    }
}

/// Waits for both ends to be handed over, then copies both ways until one side closes
/// (its write half is then shut down on the other), a side fails, or nothing moves for
/// `idle`. Counts what crossed into `spliced` and `ipgate_tunnel_bytes_total` as it
/// goes.
pub async fn splice(
    client: OnUpgrade,
    upstream: OnUpgrade,
    idle: Duration,
    spliced: &Spliced,
    metrics: &Metrics,
) -> End {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(error) => {
            tracing::debug!(%error, "upgrade not completed");
            return End::NotUpgraded;
        }
    };
    let mut client = Counted::new(client, &spliced.up, &metrics.tunnel_bytes_up);
    let mut upstream = Counted::new(upstream, &spliced.down, &metrics.tunnel_bytes_down);
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    tokio::select! {
        copied = copy => match copied {
            Ok(_) => End::Closed,
            Err(error) => {
                tracing::debug!(%error, "tunnel ended with an error");
                End::Error
            }
        },
        () = idle_for(idle, spliced) => End::Idle,
    }
}

/// Resolves once nothing crossed for `idle` (looked at four times in that span, so
/// within a quarter of it).
async fn idle_for(idle: Duration, spliced: &Spliced) {
    let look = (idle / 4).max(Duration::from_millis(10));
    let mut seen = spliced.total();
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(look).await;
        let now = spliced.total();
        if now != seen {
            seen = now;
            since = Instant::now();
        } else if since.elapsed() >= idle {
            return;
        }
    }
}

/// One end of a tunnel, counting what is read from it.
struct Counted<'a> {
    io: TokioIo<Upgraded>,
    read: &'a AtomicU64,
    metric: &'a IntCounter,
}

impl<'a> Counted<'a> {
    fn new(upgraded: Upgraded, read: &'a AtomicU64, metric: &'a IntCounter) -> Self {
        Self {
            io: TokioIo::new(upgraded),
            read,
            metric,
        }
    }
}

impl AsyncRead for Counted<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let n = (buf.filled().len() - before) as u64;
            self.read.fetch_add(n, Ordering::Relaxed);
            self.metric.inc_by(n);
        }
        polled
    }
}

impl AsyncWrite for Counted<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_upgrade_with_hypers_mark_is_one() {
        let plain = Request::get("/").body(()).unwrap();
        assert!(!wanted(&plain));
        let mut unmarked = Request::get("/")
            .header(header::UPGRADE, "websocket")
            .body(())
            .unwrap();
        assert!(!wanted(&unmarked), "hyper did not see Connection: upgrade");
        // An `OnUpgrade` can only be made by hyper; a request that has one and the
        // header is covered end to end in tests/websocket.rs.
        unmarked.headers_mut().remove(header::UPGRADE);
        assert!(!wanted(&unmarked));
    }

    #[test]
    fn an_upgrade_is_carried_by_its_two_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive".parse().unwrap());
        mark_upgrade(&mut h, HeaderValue::from_static("websocket"));
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::CONNECTION], "upgrade");
        assert_eq!(h.len(), 2);
    }

    #[tokio::test]
    async fn silence_for_the_idle_timeout_ends_it_and_traffic_does_not() {
        let spliced = Spliced::default();
        let started = Instant::now();
        let idle = Duration::from_millis(400);
        let traffic = async {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(300)).await;
                spliced.up.fetch_add(1, Ordering::Relaxed);
            }
        };
        tokio::join!(idle_for(idle, &spliced), traffic);
        let lasted = started.elapsed();
        assert!(lasted >= Duration::from_millis(900 + 400), "{lasted:?}");
        assert!(
            lasted <= Duration::from_millis(900 + 400 + 800),
            "{lasted:?}"
        );
    }
}

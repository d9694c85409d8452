//! Accepting connections on the public listener (plain or TLS), keeping them within
//! `server.max_connections` and each client address within its share of it, closing
//! the ones that send no request head in time or keep a body or an answer waiting past
//! its deadline (`deadlines`), refusing heads over their bound with 431, and draining
//! connections on shutdown.
//!
//! Deadlines: a PROXY header and a TLS handshake each within `header_read_timeout`;
//! then the first request head within it, and on a connection known to speak HTTP/1
//! every later head within it too, also the wait for the next request on a kept-alive
//! connection (so an idle HTTP/1 connection is closed after that long). The watchdog
//! times those heads at its looks (up to a second late), not hyper's timer (a new one
//! per request); hyper-util's HTTP/1 behind `auto` keeps hyper's timer.
//!
//! A connection known to speak HTTP/1 (TLS ALPN `http/1.1`, or first bytes that are
//! not the HTTP/2 preface) is served by hyper's HTTP/1 server directly; the others by
//! hyper-util's `auto`, which reads the first bytes itself and wraps the connection to
//! give them back: a layer every later read and write of the connection goes through.

use super::connections::{client_key, Admission, ClientWait, ConnectionTable, Heads, Seat};
use super::deadlines::{watch, Deadlines, Overdue, RequestBody};
use super::proxy_protocol::read_header;
use super::warn_limit::WarnLimit;
use super::{ClientConn, Cut, Door, Origin};
use crate::acl::normalize;
use crate::config::ProxyLocal;
use crate::metrics::{ClientError, Metrics};
use bytes::Buf;
use http::Request;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::AbortHandle;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// Largest request head (request line and headers) accepted, over HTTP/1 and HTTP/2;
/// a larger one is answered 431 and never forwarded (HAProxy's buffer is 16 KiB,
/// nginx's largest head 32 KiB: this leaves room for big tokens and cookies).
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Largest single line of a head: the request target, or one header's name and value
/// (nginx refuses lines over 8 KiB).
const MAX_LINE_BYTES: usize = 16 * 1024;
/// Concurrent streams per HTTP/2 connection.
const MAX_H2_STREAMS: u32 = 256;
/// At most one warning per this long about connections refused at the cap.
const REFUSED_WARNING_EVERY: Duration = Duration::from_secs(10);
/// At most one warning per this long about connections refused for their PROXY header.
const PROXY_WARNING_EVERY: Duration = Duration::from_secs(10);
/// Descriptors beside the connections: listeners, the store, logs.
const SPARE_FILES: u64 = 64;

/// How the public listener serves.
pub struct ListenerOptions {
    /// Both the request-head deadline and the TLS handshake deadline.
    pub header_read_timeout: Duration,
    /// How long shutdown waits for requests in flight.
    pub grace: Duration,
    pub tls: Option<TlsAcceptor>,
    /// Read a PROXY protocol header first (from trusted proxies only).
    pub proxy_protocol: bool,
    /// What a PROXY header that names no client gets.
    pub proxy_protocol_local: ProxyLocal,
    /// Client connections open at once, at most.
    pub max_connections: usize,
    /// Percent of `max_connections` one client address (one /64) may hold.
    pub client_share_percent: u64,
    /// How long a body or an answer may wait on the client.
    pub deadlines: Deadlines,
    /// Where the connections' watchdogs run: off the serving runtime, whose timer
    /// wheel then holds nothing between requests.
    pub watchdogs: tokio::runtime::Handle,
}

/// The warning about refused connections, at most once per `REFUSED_WARNING_EVERY`,
/// with how many were refused in between. Owned by the accept loop.
#[derive(Default)]
struct RefusedWarning {
    last: Option<Instant>,
    since: u64,
}

impl RefusedWarning {
    fn refused(&mut self, max: usize) {
        self.since += 1;
        if self
            .last
            .is_some_and(|t| t.elapsed() < REFUSED_WARNING_EVERY)
        {
            return;
        }
        tracing::warn!(
            refused = self.since,
            max_connections = max,
            "connections refused: server.max_connections are open and none is idle"
        );
        self.last = Some(Instant::now());
        self.since = 0;
    }
}

/// Raises the soft limit on open files to the hard one: every connection is a
/// descriptor (one with a request forwarded holds a second, its upstream lane).
fn raise_open_file_limit(max_connections: usize) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < max_connections as u64 + SPARE_FILES => tracing::warn!(
            limit,
            max_connections,
            "the open file limit cannot hold server.max_connections connections; raise \
             the hard limit (LimitNOFILE=, ulimit -Hn) or lower server.max_connections"
        ),
        Ok(limit) => tracing::info!(limit, max_connections, "open file limit"),
        Err(error) => tracing::warn!(%error, "cannot read or raise the open file limit"),
    }
}

/// How long, after the grace period, the cut connections get to drop their requests.
const CUT_PATIENCE: Duration = Duration::from_secs(1);

/// Serves until `shutdown` fires, then stops accepting and waits up to `grace` for
/// in-flight requests to finish; the rest are cut off.
pub async fn serve<D: Door>(
    listener: TcpListener,
    door: Arc<D>,
    metrics: Arc<Metrics>,
    options: ListenerOptions,
    shutdown: CancellationToken,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    // hyper-util's HTTP/1 settings have no `max_header_size`: `max_buf_size` bounds a
    // head that arrives in parts, and `oversized_head` one that fits a larger read.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_H2_STREAMS)
        .max_header_list_size(MAX_HEAD_BYTES as u32)
        .keep_alive_interval(Duration::from_secs(30));
    let mut http1_builder = http1::Builder::new();
    // `max_buf_size` alone lets a head through whole when one read brings more than
    // it (the buffer grows past it before the head is parsed): `max_header_size` is
    // checked on the parsed head. No timer: the connection's watchdog times every head
    // (hyper's timer is a new boxed `Sleep` per request).
    http1_builder
        .header_read_timeout(None)
        .max_header_size(MAX_HEAD_BYTES)
        .max_buf_size(MAX_HEAD_BYTES);
    let builder = Arc::new(builder);
    let http1_builder = Arc::new(http1_builder);
    raise_open_file_limit(options.max_connections);
    let per_client = (options.max_connections as u64 * options.client_share_percent / 100) as usize;
    let table = ConnectionTable::new(options.max_connections, per_client);
    metrics.max_connections.set(options.max_connections as i64);
    let tasks = TaskTracker::new();
    let cut = CancellationToken::new();
    let mut refused = RefusedWarning::default();

    let proxy_warnings = Arc::new(WarnLimit::new(PROXY_WARNING_EVERY));
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let peer_ip = normalize(peer.ip());
        // Trusted proxies stand for many clients: no share for them.
        let client = (!door.trusts(peer_ip)).then(|| client_key(peer_ip));
        // Before any other work: a connection over the cap costs an accept and a close.
        let seat = match table.admit(client) {
            Admission::Free(seat) => seat,
            Admission::Evicted(seat) => {
                metrics.connections_evicted.inc();
                seat
            }
            Admission::Full => {
                drop(stream);
                metrics.connections_refused.inc();
                refused.refused(options.max_connections);
                continue;
            }
            Admission::OverShare => {
                drop(stream);
                metrics.connections_over_share.inc();
                continue;
            }
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "set_nodelay failed");
        }
        let client = Client {
            proxy_protocol: options.proxy_protocol,
            proxy_protocol_local: options.proxy_protocol_local,
            proxy_warnings: Arc::clone(&proxy_warnings),
            tls: options.tls.clone(),
            handshake_timeout: options.header_read_timeout,
            door: Arc::clone(&door),
            metrics: Arc::clone(&metrics),
            builder: Arc::clone(&builder),
            http1: Arc::clone(&http1_builder),
        };
        let span = tracing::debug_span!("conn", peer = %peer);
        let seat = Arc::new(seat);
        let serving = Arc::clone(&seat);
        let open = Open::counted(&metrics);
        let (ended, end) = oneshot::channel::<Infallible>();
        // Nothing but the connection itself is polled at its wake-ups: shutdown, the
        // cut-off and every deadline reach it through its watchdog.
        let connection = tasks.spawn(
            async move {
                let _open = open;
                let _ended = ended;
                client.serve(stream, peer_ip, &serving).await;
            }
            .instrument(span),
        );
        let watched = Watched {
            seat,
            deadlines: options.deadlines,
            head_timeout: options.header_read_timeout,
            metrics: Arc::clone(&metrics),
            connection: connection.abort_handle(),
            shutdown: shutdown.clone(),
            cut: cut.clone(),
        };
        options.watchdogs.spawn(watchdog(watched, end));
    }

    drop(listener);
    tracing::info!(
        grace_ms = options.grace.as_millis() as u64,
        "draining connections"
    );
    tasks.close();
    tokio::select! {
        () = tasks.wait() => tracing::info!("all connections drained"),
        _ = tokio::time::sleep(options.grace) => {
            tracing::warn!(
                connections = tasks.len(),
                "grace period over; cutting off the connections still open"
            );
            door.cutting_off();
            cut.cancel();
            if tokio::time::timeout(CUT_PATIENCE, tasks.wait()).await.is_err() {
                tracing::warn!(connections = tasks.len(), "connections still closing at exit");
            }
        }
    }
}

/// What serving one client connection needs.
struct Client<D> {
    proxy_protocol: bool,
    proxy_protocol_local: ProxyLocal,
    /// Connections refused for their PROXY header: warned about, but never a log line
    /// each (anyone who can connect can cause one).
    proxy_warnings: Arc<WarnLimit>,
    tls: Option<TlsAcceptor>,
    handshake_timeout: Duration,
    door: Arc<D>,
    metrics: Arc<Metrics>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    /// The same HTTP/1 settings, for connections known to speak HTTP/1.
    http1: Arc<http1::Builder>,
}

/// What a connection is known to speak before it is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Speaks {
    /// HTTP/1 for sure: hyper's HTTP/1 server, no sniffing layer.
    Http1,
    /// HTTP/2, or not known yet: hyper-util's `auto` reads the first bytes and picks.
    Unknown,
}

/// The first bytes of every HTTP/2 connection without TLS (prior knowledge).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the first bytes a client sent say. Anything that may still become the HTTP/2
/// preface (nothing yet, or a prefix of it) is left to `auto`.
fn speaks(first: &[u8]) -> Speaks {
    if !first.is_empty() && !H2_PREFACE.starts_with(first) && !first.starts_with(H2_PREFACE) {
        Speaks::Http1
    } else {
        Speaks::Unknown
    }
}

/// A client connection the listener serves HTTP on.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Which HTTP it speaks, as far as can be told without consuming a byte.
    fn speaks(&self) -> impl Future<Output = Speaks> + Send;
}

impl Stream for TcpStream {
    /// Waits for the first bytes and looks at them (a peek: they stay in the socket).
    /// The wait is bounded by the first-head deadline around it.
    async fn speaks(&self) -> Speaks {
        let mut first = [0u8; H2_PREFACE.len()];
        match self.peek(&mut first).await {
            Ok(n) => speaks(&first[..n]),
            Err(_) => Speaks::Unknown,
        }
    }
}

impl Stream for TlsStream<TcpStream> {
    /// What ALPN settled; without ALPN the client may still send the HTTP/2 preface.
    fn speaks(&self) -> impl Future<Output = Speaks> + Send {
        let alpn = self.get_ref().1.alpn_protocol();
        std::future::ready(if alpn == Some(b"http/1.1".as_slice()) {
            Speaks::Http1
        } else {
            Speaks::Unknown
        })
    }
}

impl<D: Door> Client<D> {
    /// One client connection from accept to close: PROXY header, TLS, HTTP.
    async fn serve(&self, stream: tokio::net::TcpStream, peer_ip: IpAddr, seat: &Arc<Seat>) {
        let mut stream = stream;
        let (peer_ip, origin) = if self.proxy_protocol {
            match self.client_from_proxy_header(&mut stream, peer_ip).await {
                Ok(named) => named,
                Err(why) => {
                    self.metrics.proxy_header_failures.inc();
                    if let Some(left_out) = self.proxy_warnings.allow() {
                        tracing::warn!(peer = %peer_ip, why, left_out, "PROXY protocol connection refused");
                    }
                    return;
                }
            }
        } else {
            (peer_ip, Origin::Direct)
        };
        match &self.tls {
            None => self.serve_http(stream, peer_ip, origin, seat).await,
            // Boxed: a TLS connection's future is more than twice a plain one's (8 KiB),
            // and every connection's task would be its size, copied whole when spawned.
            Some(acceptor) => {
                Box::pin(self.serve_tls(acceptor, stream, peer_ip, origin, seat)).await
            }
        }
    }

    async fn serve_tls(
        &self,
        acceptor: &TlsAcceptor,
        stream: tokio::net::TcpStream,
        peer_ip: IpAddr,
        origin: Origin,
        seat: &Arc<Seat>,
    ) {
        let handshake = tokio::time::timeout(self.handshake_timeout, acceptor.accept(stream)).await;
        match handshake {
            Ok(Ok(stream)) => self.serve_http(stream, peer_ip, origin, seat).await,
            Ok(Err(error)) => {
                self.metrics.tls_handshake_failures.inc();
                tracing::debug!(%error, "TLS handshake failed");
            }
            Err(_) => {
                self.metrics.tls_handshake_failures.inc();
                tracing::debug!("TLS handshake timed out");
            }
        }
    }

    /// The client a trusted proxy names in its PROXY header, or the proxy itself for a
    /// health check when those are allowed; `Err` (why, for the log) closes the
    /// connection.
    async fn client_from_proxy_header(
        &self,
        stream: &mut tokio::net::TcpStream,
        peer: IpAddr,
    ) -> Result<(IpAddr, Origin), String> {
        if !self.door.trusts(peer) {
            return Err("the peer is not in client_ip.trusted_proxies".into());
        }
        match tokio::time::timeout(self.handshake_timeout, read_header(stream)).await {
            Ok(Ok(Some(named))) => Ok((normalize(named), Origin::Proxied)),
            Ok(Ok(None)) => match self.proxy_protocol_local {
                ProxyLocal::Health => Ok((peer, Origin::HealthCheck)),
                ProxyLocal::Refuse => Err(
                    "the header names no client (UNKNOWN, LOCAL or no address); set \
                     server.proxy_protocol_local = \"health\" to answer the balancer's health \
                     checks"
                        .into(),
                ),
            },
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err("the header was not received in time".into()),
        }
    }

    async fn serve_http<I: Stream>(&self, io: I, peer: IpAddr, origin: Origin, seat: &Arc<Seat>) {
        let conn = Arc::new(ClientConn::on_seat(peer, origin, Arc::clone(seat)));
        let service = service_fn(|req: Request<Incoming>| {
            // Busy from the head's arrival until the response has been sent or dropped.
            seat.request_started();
            let busy = InFlight(Arc::clone(seat));
            let door = Arc::clone(&self.door);
            let conn = Arc::clone(&conn);
            // Wrapped inside the future, not here: a closure any bigger than this is
            // not inlined into hyper's dispatcher, and the request's future (kilobytes)
            // is then built elsewhere and copied.
            async move {
                let req = req.map(|body| RequestBody::new(body, &busy.0));
                let resp = door.serve(req, &conn).await;
                Ok::<_, Infallible>(resp.map(|body| Tracked::new(body, busy)))
            }
        });
        // The first head is timed from here on (the PROXY header and TLS handshake
        // had their own deadline); hyper-util's sniffing has no timer, HTTP/2 none at all.
        seat.time_heads(Heads::First);
        let result = match io.speaks().await {
            Speaks::Http1 => {
                seat.time_heads(Heads::Every);
                let conn = self.http1.serve_connection(TokioIo::new(io), service);
                drained(conn.with_upgrades(), seat, |c| c.graceful_shutdown())
                    .await
                    .map_err(Box::<dyn std::error::Error + Send + Sync>::from)
            }
            Speaks::Unknown => {
                let conn = self
                    .builder
                    .serve_connection_with_upgrades(TokioIo::new(io), service);
                drained(conn, seat, GracefulConnection::graceful_shutdown).await
            }
        };
        // An upgrade answered 101: the connection is the tunnel's now, and counted
        // busy (never idle, never evicted) until it ends; the watchdog still cuts it
        // at the end of the grace period.
        if let Some(tunnel) = conn.tunnel.take() {
            seat.request_started();
            let _busy = InFlight(Arc::clone(seat));
            tunnel.await;
        }
        let Err(error) = result else { return };
        let hyper_error = error.downcast_ref::<hyper::Error>();
        let timed_out = hyper_error.is_some_and(hyper::Error::is_timeout);
        if hyper_error.is_some_and(hyper::Error::is_parse_too_large) {
            // hyper answered 431 itself.
            self.metrics.record_client_error(ClientError::HeadTooLarge);
        } else if !timed_out {
            tracing::debug!(error = %error, "connection ended with an error");
        } else {
            // hyper-util's HTTP/1 (a connection that was not known to speak it).
            head_timed_out(seat, &self.metrics);
        }
    }
}

/// Counts a connection closed for a request head that did not come in time: a
/// kept-alive one that went quiet after its requests is no client error.
fn head_timed_out(seat: &Seat, metrics: &Metrics) {
    if seat.idle_after_requests() {
        metrics.idle_closed.inc();
        tracing::debug!("idle kept-alive connection closed");
    } else {
        metrics.record_client_error(ClientError::HeaderTimeout);
        tracing::debug!("header read timeout: no request head in time, connection closed");
    }
}

/// Serves `conn` to its end; once the seat is told to drain (shutdown, through the
/// watchdog), asks it to finish the request in flight and close. The flag is read at
/// each wake-up: cheaper than a shutdown future polled beside the connection.
/// `graceful` is the connection's own graceful shutdown (hyper's upgradeable HTTP/1
/// connection has one but is no hyper-util `GracefulConnection`).
async fn drained<C: Future>(
    conn: C,
    seat: &Seat,
    graceful: fn(std::pin::Pin<&mut C>),
) -> C::Output {
    let mut conn = std::pin::pin!(conn);
    let mut asked = false;
    std::future::poll_fn(|cx| {
        if !asked && seat.draining(cx) {
            asked = true;
            graceful(conn.as_mut());
        }
        conn.as_mut().poll(cx)
    })
    .await
}

/// Counts a connection in `ipgate_open_connections` until dropped, also when its task
/// is aborted.
struct Open(Arc<Metrics>);

impl Open {
    fn counted(metrics: &Arc<Metrics>) -> Self {
        metrics.open_connections.inc();
        Self(Arc::clone(metrics))
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open_connections.dec();
    }
}

/// What a connection's watchdog watches, and the task it may abort.
struct Watched {
    seat: Arc<Seat>,
    deadlines: Deadlines,
    /// `server.header_read_timeout`, for the heads the seat times.
    head_timeout: Duration,
    metrics: Arc<Metrics>,
    /// The task serving the connection.
    connection: AbortHandle,
    /// Graceful shutdown: the connection finishes its request in flight and closes.
    shutdown: CancellationToken,
    /// The end of the grace period: the connection is cut off.
    cut: CancellationToken,
}

/// Watches one connection from its own task and aborts `connection` (the task serving
/// it) when its client keeps it waiting past a deadline (a body, an answer, a request
/// head), a new connection took its place at the cap, or the grace period ended; tells
/// it to drain at shutdown; ends with the connection (`end` closes). A task of its
/// own, not branches beside the serving: those would be polled at every wake-up of
/// every request (the cancellation futures and hyper's head timer). Not awaiting the
/// serving task's `JoinHandle`: reading its output moves the whole of its (large)
/// future's slot.
async fn watchdog(w: Watched, mut end: oneshot::Receiver<Infallible>) {
    let seat = &w.seat;
    let watching = watch(seat, &w.deadlines, w.head_timeout);
    tokio::pin!(watching);
    let mut draining = false;
    let why = loop {
        tokio::select! {
            _ = &mut end => return,
            () = w.shutdown.cancelled(), if !draining => {
                draining = true;
                seat.drain();
            }
            () = w.cut.cancelled() => {
                w.connection.abort();
                tracing::debug!("connection cut off at the end of the grace period");
                return;
            }
            overdue = &mut watching => break match overdue {
                Overdue::Client(ClientWait::Body) => {
                    w.metrics.record_client_error(ClientError::BodyTimeout);
                    Cut::BodyTimeout
                }
                Overdue::Client(ClientWait::Answer) => {
                    w.metrics.record_client_error(ClientError::ResponseTimeout);
                    Cut::ResponseTimeout
                }
                Overdue::Head => {
                    // No request in flight: no access line to tell.
                    w.connection.abort();
                    head_timed_out(seat, &w.metrics);
                    return;
                }
            },
            () = seat.evicted() => break Cut::Evicted,
        }
    };
    // Before the abort: the requests' access lines, written as they are dropped, say why.
    seat.cut(why);
    w.connection.abort();
    tracing::debug!(reason = why.label(), "connection closed by the listener");
}

/// Marks a request finished when dropped.
struct InFlight(Arc<Seat>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// True when a line of the head (the target, or one header) or the whole of it is over
/// its bound: the door answers 431. hyper bounds HTTP/1 heads as it reads them and
/// HTTP/2 header lists as they are decoded, but not single lines, and not a head that
/// arrived whole in a read larger than its buffer bound (hyper-util's HTTP/1 has no
/// `max_header_size`).
pub fn oversized_head<B>(req: &Request<B>) -> bool {
    let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    let mut total = target;
    for (name, value) in req.headers() {
        let line = name.as_str().len() + value.len() + 4;
        if line > MAX_LINE_BYTES {
            return true;
        }
        total += line;
    }
    target > MAX_LINE_BYTES || total > MAX_HEAD_BYTES
}

/// A response body that keeps its connection counted busy until hyper drops it, that
/// is, until it has been written out or abandoned; and tells the seat while it waits
/// for the client to take more of it (hyper has not asked for the next frame, or not
/// dropped it after the last).
struct Tracked<B> {
    body: B,
    busy: InFlight,
    waiting: bool,
}

impl<B: Body> Tracked<B> {
    fn new(body: B, busy: InFlight) -> Self {
        let waiting = !body.is_end_stream();
        if waiting {
            busy.0.answer_waiting(true);
        }
        Self {
            body,
            busy,
            waiting,
        }
    }
}

impl<B> Drop for Tracked<B> {
    fn drop(&mut self) {
        if self.waiting {
            self.busy.0.answer_waiting(false);
        }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        // hyper asks for more: the client took what it had (or it is the first ask).
        if self.waiting {
            self.waiting = false;
            self.busy.0.answer_waiting(false);
        }
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.busy.0.moved(data.remaining());
            }
            // Also after the last frame: hyper holds the body until that frame is
            // written (HTTP/1) or sent within the client's window (HTTP/2).
            self.waiting = true;
            self.busy.0.answer_waiting(true);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bytes_that_cannot_become_the_http2_preface_are_http1() {
        assert_eq!(speaks(b"GET / HTTP/1.1\r\n"), Speaks::Http1);
        assert_eq!(speaks(b"POST"), Speaks::Http1);
        assert_eq!(speaks(b"PUT / HTTP/1.1"), Speaks::Http1);
        assert_eq!(speaks(b"PR"), Speaks::Unknown, "may still be the preface");
        assert_eq!(speaks(b"P"), Speaks::Unknown);
        assert_eq!(speaks(b""), Speaks::Unknown);
        assert_eq!(speaks(H2_PREFACE), Speaks::Unknown);
        assert_eq!(
            speaks(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0"),
            Speaks::Unknown
        );
        assert_eq!(speaks(b"PRI * HTTP/1.1"), Speaks::Http1);
    }
}

//! Accepting connections on the public listener (plain or TLS) and draining them on
//! shutdown.

use super::proxy_protocol::read_header;
use super::{ClientConn, Gateway};
use crate::acl::normalize;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Largest request head (line and headers) accepted over HTTP/1.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Concurrent streams per HTTP/2 connection.
const MAX_H2_STREAMS: u32 = 256;

/// How the public listener serves.
pub struct ListenerOptions {
    /// Both the request-head deadline and the TLS handshake deadline.
    pub header_read_timeout: Duration,
    /// How long shutdown waits for requests in flight.
    pub grace: Duration,
    pub tls: Option<TlsAcceptor>,
    /// Read a PROXY protocol header first (from trusted proxies only).
    pub proxy_protocol: bool,
}

/// Serves until `shutdown` fires, then stops accepting and waits up to `grace` for
/// in-flight requests to finish.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    options: ListenerOptions,
    shutdown: CancellationToken,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_H2_STREAMS)
        .max_header_list_size(MAX_HEAD_BYTES as u32)
        .keep_alive_interval(Duration::from_secs(30));
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();

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
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "set_nodelay failed");
        }
        let peer_ip = normalize(peer.ip());
        let proxy_protocol = options.proxy_protocol;
        let gateway = Arc::clone(&gateway);
        let builder = Arc::clone(&builder);
        let watcher = graceful.watcher();
        let span = tracing::debug_span!("conn", peer = %peer);
        let tls = options.tls.clone();
        let handshake_timeout = options.header_read_timeout;
        tokio::spawn(
            async move {
                let mut stream = stream;
                let peer_ip = if proxy_protocol {
                    match client_from_proxy_header(
                        &mut stream,
                        peer_ip,
                        &gateway,
                        handshake_timeout,
                    )
                    .await
                    {
                        Some(ip) => ip,
                        None => {
                            gateway.metrics.proxy_header_failures.inc();
                            return;
                        }
                    }
                } else {
                    peer_ip
                };
                gateway.metrics.open_connections.inc();
                match tls {
                    None => serve_connection(&builder, stream, &gateway, peer_ip, watcher).await,
                    Some(acceptor) => {
                        let handshake =
                            tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await;
                        match handshake {
                            Ok(Ok(stream)) => {
                                serve_connection(&builder, stream, &gateway, peer_ip, watcher).await
                            }
                            Ok(Err(error)) => {
                                gateway.metrics.tls_handshake_failures.inc();
                                tracing::debug!(%error, "TLS handshake failed");
                            }
                            Err(_) => {
                                gateway.metrics.tls_handshake_failures.inc();
                                tracing::debug!("TLS handshake timed out");
                            }
                        }
                    }
                }
                gateway.metrics.open_connections.dec();
            }
            .instrument(span),
        );
    }

    drop(listener);
    tracing::info!(
        grace_ms = options.grace.as_millis() as u64,
        "draining connections"
    );
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections drained"),
        _ = tokio::time::sleep(options.grace) => tracing::warn!("grace period over; closing remaining connections"),
    }
}

/// The client a trusted proxy names in its PROXY header (the proxy itself for its own
/// health checks); `None` closes the connection.
async fn client_from_proxy_header(
    stream: &mut tokio::net::TcpStream,
    peer: IpAddr,
    gateway: &Gateway,
    deadline: Duration,
) -> Option<IpAddr> {
    if !super::client_ip::is_trusted(peer, &gateway.client_ip.trusted_proxies) {
        tracing::warn!(%peer, "PROXY protocol connection from a peer that is not a trusted proxy");
        return None;
    }
    match tokio::time::timeout(deadline, read_header(stream)).await {
        Ok(Ok(named)) => Some(named.map_or(peer, normalize)),
        Ok(Err(error)) => {
            tracing::warn!(%peer, %error, "PROXY protocol header refused");
            None
        }
        Err(_) => {
            tracing::warn!(%peer, "PROXY protocol header not received in time");
            None
        }
    }
}

async fn serve_connection<I>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    gateway: &Arc<Gateway>,
    peer: IpAddr,
    watcher: Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = Arc::new(ClientConn::new(peer, &gateway.client_ip));
    let service = service_fn(|req| {
        let gateway = Arc::clone(gateway);
        let conn = Arc::clone(&conn);
        async move { Ok::<_, Infallible>(gateway.handle(req, &conn).await) }
    });
    let conn = builder.serve_connection(TokioIo::new(io), service);
    if let Err(error) = watcher.watch(conn).await {
        tracing::debug!(error = %error, "connection ended with an error");
    }
}

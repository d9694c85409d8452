//! Accepting connections on the public listener and draining them on shutdown.

use super::Gateway;
use crate::acl::normalize;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Largest request head (line and headers) accepted over HTTP/1.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Concurrent streams per HTTP/2 connection.
const MAX_H2_STREAMS: u32 = 256;

/// Serves until `shutdown` fires, then stops accepting and waits up to `grace` for
/// in-flight requests to finish.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    header_read_timeout: Duration,
    grace: Duration,
    shutdown: CancellationToken,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
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
        let gateway = Arc::clone(&gateway);
        let builder = Arc::clone(&builder);
        let watcher = graceful.watcher();
        let span = tracing::debug_span!("conn", peer = %peer);
        tokio::spawn(
            async move {
                gateway.metrics.open_connections.inc();
                let service = service_fn(|req| {
                    let gateway = Arc::clone(&gateway);
                    async move { Ok::<_, Infallible>(gateway.handle(req, peer_ip).await) }
                });
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                if let Err(error) = watcher.watch(conn).await {
                    tracing::debug!(error = %error, "connection ended with an error");
                }
                gateway.metrics.open_connections.dec();
            }
            .instrument(span),
        );
    }

    drop(listener);
    tracing::info!(grace_ms = grace.as_millis() as u64, "draining connections");
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections drained"),
        _ = tokio::time::sleep(grace) => tracing::warn!("grace period over; closing remaining connections"),
    }
}

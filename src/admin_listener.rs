//! The admin listener (loopback by default). Routes:
//!
//! - `GET /metrics`: Prometheus text format, every `ipgate_*` metric.
//! - `GET /livez`: 200 while the process serves at all.
//! - `GET /readyz`: 200 once the first snapshot is loaded and until draining starts;
//!   503 otherwise.
//!
//! Nothing here changes state; the operator's writes go through `ipgate admin`.
//!
//! No client holds it either (it is loopback by default, but a scraper may be slow or
//! broken): at most `MAX_CONNECTIONS` at once, heads of at most `MAX_HEAD_BYTES`
//! (431), and each connection closed after `CONNECTION_LIFETIME` whatever it is doing,
//! which bounds a body that never comes and an answer that is never read. A request
//! body is never read: hyper answers and closes the connection when one is left.

use crate::acl::SnapshotCell;
use crate::metrics::Metrics;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Admin connections open at once; more are closed at accept.
const MAX_CONNECTIONS: usize = 64;
/// Largest request head: the routes take no headers worth more.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// How long one admin connection may stay open. A scrape takes milliseconds; a
/// kept-alive scraper reconnects.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
/// Each request head within this (also a kept-alive connection's idle time).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

pub struct AdminState {
    pub cell: Arc<SnapshotCell>,
    pub metrics: Arc<Metrics>,
    /// Set when shutdown starts: the gateway is no longer ready for new traffic.
    pub draining: AtomicBool,
}

impl AdminState {
    pub fn is_ready(&self) -> bool {
        self.cell.is_loaded() && !self.draining.load(Ordering::Acquire)
    }

    fn answer(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let text = |status: StatusCode, body: String, content_type: &'static str| {
            let mut r = Response::new(Full::new(Bytes::from(body)));
            *r.status_mut() = status;
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            r
        };
        let plain = "text/plain; charset=utf-8";
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into(), plain);
        }
        match req.uri().path() {
            "/metrics" => text(
                StatusCode::OK,
                self.metrics.render(&self.cell),
                "text/plain; version=0.0.4; charset=utf-8",
            ),
            "/livez" => text(StatusCode::OK, "ok\n".into(), plain),
            "/readyz" if self.is_ready() => text(StatusCode::OK, "ready\n".into(), plain),
            "/readyz" if self.draining.load(Ordering::Acquire) => {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n".into(), plain)
            }
            "/readyz" => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "no snapshot loaded yet\n".into(),
                plain,
            ),
            _ => text(StatusCode::NOT_FOUND, "not found\n".into(), plain),
        }
    }
}

pub async fn serve(listener: TcpListener, state: Arc<AdminState>, shutdown: CancellationToken) {
    let places = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(place) = Arc::clone(&places).try_acquire_owned() else {
            tracing::debug!("admin connection closed at accept: {MAX_CONNECTIONS} open");
            continue;
        };
        let state = Arc::clone(&state);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _place = place;
            let service = service_fn(|req| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(state.answer(&req)) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_header_size(MAX_HEAD_BYTES)
                .max_buf_size(MAX_HEAD_BYTES);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let served = async {
                tokio::select! {
                    result = conn.as_mut() => result,
                    _ = shutdown.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        conn.as_mut().await
                    }
                }
            };
            match tokio::time::timeout(CONNECTION_LIFETIME, served).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::debug!(%error, "admin connection ended with an error"),
                Err(_) => tracing::debug!("admin connection closed at the end of its lifetime"),
            }
        });
    }
}

//! The HTTP/2 upstream (`upstream.protocol = "h2c"` or `"h2"`): one multiplexed
//! connection to it, shared by every client connection, and what gRPC needs on the way
//! (`TE: trailers` kept; trailers pass both ways as hyper streams them).
//!
//! hyper-util's pool keeps one HTTP/2 connection per upstream and opens the next only
//! when it breaks (a connect is never raced for HTTP/2). How many streams run on it
//! at once is bounded by the upstream's own `SETTINGS_MAX_CONCURRENT_STREAMS`, and
//! until its SETTINGS arrive by [`MAX_STREAMS`]: a request beyond that waits for a
//! stream to end, within `upstream.timeout`. This module sends nothing itself.

use super::forward::ClientBody;
use http::header::{self, HeaderMap};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::time::Duration;

/// Streams opened on the upstream connection before its SETTINGS say how many it takes
/// (the listener allows as many per client connection).
pub const MAX_STREAMS: usize = 256;
/// A PING this often on an idle connection finds a dead upstream before a request does.
const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// How long a PING may go unanswered before the connection is closed.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTP/2-only client over `connector` (prior knowledge for `h2c`, ALPN `h2` for
/// `h2`).
pub fn client(
    connector: HttpsConnector<HttpConnector>,
) -> Client<HttpsConnector<HttpConnector>, ClientBody> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .timer(TokioTimer::new())
        .http2_initial_max_send_streams(MAX_STREAMS)
        .http2_keep_alive_interval(KEEP_ALIVE)
        .http2_keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_timer(TokioTimer::new())
        .build(connector)
}

/// True when the client asked for trailers (`TE: trailers`, as every gRPC client does).
pub fn asks_trailers(headers: &HeaderMap) -> bool {
    headers.get_all(header::TE).iter().any(|v| {
        v.to_str()
            .unwrap_or_default()
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailers_are_asked_for_by_name_only() {
        let mut h = HeaderMap::new();
        assert!(!asks_trailers(&h));
        h.insert(header::TE, "gzip".parse().unwrap());
        assert!(!asks_trailers(&h));
        h.append(header::TE, "deflate, Trailers".parse().unwrap());
        assert!(asks_trailers(&h));
    }
}

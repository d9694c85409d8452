//! The hot path: accept, find the client address, check, forward.
//!
//! Per request: one snapshot load, one SHA-256 of the key, one hash-map lookup, one
//! short address search; no lock, no store call, no allocation for a refusal beyond
//! its response. Everything the control plane owns is reached only through
//! [`SnapshotCell`].

pub mod client_ip;
mod connections;
mod forward;
mod listener;
mod proxy_protocol;
mod refusal_limit;
mod target;
pub mod tls;

pub use forward::{Upstream, UpstreamSetupError, CLIENT_IP, CREDENTIAL_ID, USER_ID};
pub use listener::{serve, ListenerOptions};
pub use refusal_limit::RefusalLimiter;

use crate::access_log::{AccessLog, Entry};
use crate::acl::Decision;
use crate::api::Api;
use crate::bunq;
use crate::config::ClientIpConfig;
use crate::gate::Gatekeeper;
use crate::metrics::{ClientError, Metrics, UpstreamError};
use bytes::Bytes;
use forward::{ForwardError, Forwarding, Lane};
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

/// What the public listener answers with: the upstream's streamed body or our own.
pub type Body = Either<Incoming, Full<Bytes>>;

/// Everything a request needs, shared by all connections.
pub struct Gateway {
    pub gate: Gatekeeper,
    pub metrics: Arc<Metrics>,
    pub client_ip: ClientIpConfig,
    pub upstream: Upstream,
    pub api: Api,
    /// The public listener speaks TLS (for `X-Forwarded-Proto`).
    pub tls: bool,
    pub access_log: AccessLog,
    /// Answers an address's refusals past `limits.refusals_per_second` with 429.
    pub refusals: RefusalLimiter,
}

/// What every request on one client connection shares.
pub struct ClientConn {
    /// The TCP peer, normalised.
    pub peer: IpAddr,
    /// `peer` is inside `client_ip.trusted_proxies`: its forwarding headers count.
    peer_trusted: bool,
    /// `peer` as a header value, formatted once per connection.
    peer_value: http::HeaderValue,
    /// The upstream connection this client connection owns (HTTP/1 only).
    lane: Lane,
}

impl ClientConn {
    pub fn new(peer: IpAddr, config: &ClientIpConfig) -> Self {
        Self {
            peer,
            peer_trusted: client_ip::is_trusted(peer, &config.trusted_proxies),
            peer_value: forward::ip_value(peer),
            lane: Lane::default(),
        }
    }
}

impl Gateway {
    /// Handles one request that arrived on `conn`.
    pub async fn handle(&self, req: Request<Incoming>, conn: &ClientConn) -> Response<Body> {
        let started = Instant::now();
        let peer = conn.peer;
        let client_ip = client_ip::resolve(peer, conn.peer_trusted, req.headers(), &self.client_ip);

        if let Some(malformed) = target::check(&req) {
            self.metrics.record_client_error(ClientError::Request);
            tracing::debug!(
                problem = malformed.label(),
                client_ip = client_ip.map(tracing::field::display),
                "request refused before routing"
            );
            let resp = closing(bunq::error(StatusCode::BAD_REQUEST, malformed.message()));
            self.access_log.record(&Entry {
                status: resp.status().as_u16(),
                allowed: false,
                reason: "bad_request",
                credential_id: None,
                client_ip,
                peer,
                latency_us: started.elapsed().as_micros() as u64,
            });
            return resp.map(Either::Right);
        }

        if Api::owns(req.uri().path()) {
            let resp = self.api.handle(req, client_ip, &self.gate).await;
            return resp.map(Either::Right);
        }

        let decision = self.gate.check(req.headers(), client_ip);

        let (resp, reason, identity) = match decision {
            Decision::Deny(reason, known) => {
                self.metrics.record_deny(reason);
                // 503s are the gateway's own state, not the client's doing.
                if reason.status() != 503 && self.refusals.over_limit(client_ip.unwrap_or(peer)) {
                    self.metrics.refusals_limited.inc();
                    // Counted, not logged line by line: a flood must not become a log
                    // flood. Held first (a tarpit), so it cannot come back at once.
                    self.refusals.hold().await;
                    return bunq::too_many_refusals().map(Either::Right);
                }
                (
                    bunq::refusal(reason).map(Either::Right),
                    reason.label(),
                    known,
                )
            }
            Decision::Allow(identity) => {
                self.metrics.record_allow();
                let how = Forwarding {
                    identity,
                    // `Allow` is only ever decided for a known address.
                    client_ip: client_ip.unwrap_or(peer),
                    via_trusted_proxy: conn.peer_trusted,
                    peer: &conn.peer_value,
                    tls: self.tls,
                    strip: (!self.gate.auth.forward_key).then_some(&self.gate.auth.header),
                };
                let upstream_started = Instant::now();
                let resp = match self.upstream.forward(req, how, Some(&conn.lane)).await {
                    Ok(resp) => resp.map(Either::Left),
                    Err(ForwardError::Upstream(kind)) => {
                        self.metrics.record_upstream_error(kind);
                        upstream_failure(kind).map(Either::Right)
                    }
                    Err(ForwardError::ClientBody) => {
                        self.metrics.record_client_error(ClientError::Body);
                        closing(bunq::error(
                            StatusCode::BAD_REQUEST,
                            "The request body is malformed or ended early.",
                        ))
                        .map(Either::Right)
                    }
                };
                self.metrics
                    .upstream_duration
                    .observe(upstream_started.elapsed().as_secs_f64());
                (resp, "ok", Some(identity))
            }
        };
        let elapsed = started.elapsed();
        self.metrics.request_duration.observe(elapsed.as_secs_f64());
        self.access_log.record(&Entry {
            status: resp.status().as_u16(),
            allowed: decision.reason().is_none(),
            reason,
            credential_id: identity.map(|i| i.credential_id),
            client_ip,
            peer,
            latency_us: elapsed.as_micros() as u64,
        });
        resp
    }
}

/// Marks an answer as the connection's last: after a malformed request the rest of
/// the stream cannot be trusted to be where the client meant it.
fn closing(mut resp: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    resp.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    resp
}

fn upstream_failure(kind: UpstreamError) -> Response<Full<Bytes>> {
    match kind {
        UpstreamError::Timeout => bunq::error(
            StatusCode::GATEWAY_TIMEOUT,
            "The upstream service did not answer in time.",
        ),
        UpstreamError::Connect | UpstreamError::Protocol => bunq::error(
            StatusCode::BAD_GATEWAY,
            "The upstream service is unavailable.",
        ),
    }
}

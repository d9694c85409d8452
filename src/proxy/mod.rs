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
#[doc(hidden)] // public for the fuzz targets only
pub mod proxy_protocol;
mod refusal_limit;
mod target;
pub mod tls;

pub use forward::{Upstream, UpstreamSetupError, CLIENT_IP, CREDENTIAL_ID, USER_ID};
pub use listener::{serve, ListenerOptions};
pub use refusal_limit::RefusalLimiter;

use crate::access_log::{AccessLog, Entry};
use crate::acl::{decide, Decision, KeyHash, Reason, SnapshotCell};
use crate::api::Api;
use crate::bunq;
use crate::config::{AuthConfig, ClientIpConfig};
use crate::metrics::{ClientError, Metrics, UpstreamError};
use bytes::Bytes;
use forward::{ForwardError, Forwarding, Lane};
use http::header::HeaderMap;
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

/// Longest key that is hashed at all. Keys are 47 bytes; a longer one is unknown
/// without the cost of hashing up to a whole 64 KiB header.
const MAX_KEY_BYTES: usize = 256;

/// Stands for every over-long key: no key hashes to all zeros, so it is never found.
const TOO_LONG: KeyHash = KeyHash([0; 32]);

/// The key from the configured header. Several copies, an unreadable value or an empty
/// one count as no key: ambiguity is refused, not resolved.
pub fn credential_key<'h>(headers: &'h HeaderMap, auth: &AuthConfig) -> Option<&'h str> {
    let mut values = headers.get_all(&auth.header).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let text = value.to_str().ok()?.trim();
    let key = if auth.bearer {
        let (scheme, rest) = text.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        rest.trim()
    } else {
        text
    };
    (!key.is_empty()).then_some(key)
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

/// The authorisation check as the hot path and the management API both run it.
pub struct Gatekeeper {
    pub cell: Arc<SnapshotCell>,
    pub auth: AuthConfig,
    pub max_staleness: Duration,
}

impl Gatekeeper {
    /// One snapshot load, one SHA-256, one lookup. The snapshot is released before
    /// returning, so no request holds it across an await.
    pub fn check(&self, headers: &HeaderMap, client_ip: Option<IpAddr>) -> Decision {
        let key = credential_key(headers, &self.auth).map(|k| {
            if k.len() > MAX_KEY_BYTES {
                TOO_LONG
            } else {
                KeyHash::of(k.as_bytes())
            }
        });
        let snapshot = self.cell.load();
        decide(
            snapshot.as_deref(),
            self.cell.is_stale(self.max_staleness),
            key.as_ref(),
            client_ip,
            unix_now,
        )
    }
}

/// Unix seconds. A clock set before 1970 reads as the end of time, so every credential
/// that can expire is treated as expired: fail closed.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(i64::MAX, |d| d.as_secs() as i64)
}

/// A refusal's response: status and body depend on the reason's class only.
pub fn refusal(reason: Reason) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(reason.status()).unwrap_or(StatusCode::FORBIDDEN);
    let mut resp = bunq::static_error(status, reason.public_body());
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("ipgate"),
        );
    }
    resp
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
                    return limited().map(Either::Right);
                }
                (refusal(reason).map(Either::Right), reason.label(), known)
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

/// The answer to a refusal past the address's limit: fixed, and as cheap as any.
fn limited() -> Response<Full<Bytes>> {
    let mut resp = bunq::static_error(
        StatusCode::TOO_MANY_REQUESTS,
        crate::static_error_body!("Too many refused requests from this address; try again later."),
    );
    resp.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("1"),
    );
    resp
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

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderName;

    fn auth(header: &str) -> AuthConfig {
        let header = HeaderName::from_bytes(header.as_bytes()).unwrap();
        AuthConfig {
            bearer: header == http::header::AUTHORIZATION,
            header,
            registration_window: Duration::from_secs(60),
            forward_key: false,
        }
    }

    #[test]
    fn key_extraction() {
        let a = auth("x-bunq-client-authentication");
        let mut h = HeaderMap::new();
        assert_eq!(credential_key(&h, &a), None);
        h.insert("x-bunq-client-authentication", " ipg_abc ".parse().unwrap());
        assert_eq!(credential_key(&h, &a), Some("ipg_abc"));
        h.append("x-bunq-client-authentication", "ipg_other".parse().unwrap());
        assert_eq!(credential_key(&h, &a), None, "two keys are no key");
        h.insert("x-bunq-client-authentication", "".parse().unwrap());
        assert_eq!(credential_key(&h, &a), None);
    }

    #[test]
    fn bearer_extraction() {
        let a = auth("authorization");
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer ipg_abc".parse().unwrap());
        assert_eq!(credential_key(&h, &a), Some("ipg_abc"));
        h.insert("authorization", "bearer  ipg_abc".parse().unwrap());
        assert_eq!(credential_key(&h, &a), Some("ipg_abc"));
        h.insert("authorization", "Basic dXNlcg==".parse().unwrap());
        assert_eq!(credential_key(&h, &a), None);
        h.insert("authorization", "ipg_abc".parse().unwrap());
        assert_eq!(credential_key(&h, &a), None);
    }

    #[test]
    fn refusal_bodies() {
        assert_eq!(refusal(Reason::MissingKey).status(), 401);
        assert_eq!(refusal(Reason::UnknownKey).status(), 403);
        assert_eq!(refusal(Reason::NoSnapshot).status(), 503);
    }
}

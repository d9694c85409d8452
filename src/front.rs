//! The one front door: every request on the public listener comes through here, is
//! routed to the management API or checked and forwarded, and gets exactly one access
//! line, also when it is cut off before it is answered.
//!
//! The settings a SIGHUP may change ([`Live`]) sit behind one `ArcSwap`, loaded once
//! per request: a reload is seen by the next request, never halfway through one.
//! Owns the gatekeeper (in [`Live`]), the API and the forwarder; the listener in
//! `proxy/` only hands requests in.

use crate::access_log::{AccessLog, Entry};
use crate::acl::{Decision, SnapshotCell};
use crate::api::{Api, ApiCall, CallSettings};
use crate::bunq;
use crate::config::{ClientIpConfig, Config, LimitsConfig};
use crate::console::Console;
use crate::gate::Gatekeeper;
use crate::head::{self, Sent};
use crate::metrics::{ClientError, Metrics, UpstreamError};
use crate::proxy::{
    client_ip, oversized_head, target, tunnel, Body, ClientConn, Door, ForwardError, Forwarding,
    Origin, RefusalLimiter, RequestBody, Upstream, UpstreamSetupError,
};
use crate::request_id::{RequestIds, X_REQUEST_ID};
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{Either, Full};
use hyper::body::Body as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

mod upgrade;

/// The parts of the configuration a SIGHUP may change, as one value: swapped whole.
pub struct Live {
    /// Counts the reloads that built a new one (0 at start).
    pub generation: u64,
    pub gate: Gatekeeper,
    pub client_ip: ClientIpConfig,
    pub upstream: Arc<Upstream>,
    pub limits: LimitsConfig,
    pub refusals: Arc<RefusalLimiter>,
}

impl Live {
    /// The settings `config` asks for. What did not change is taken over from
    /// `previous` (the upstream's connections, the refusal counts).
    pub fn build(
        config: &Config,
        cell: &Arc<SnapshotCell>,
        previous: Option<&Live>,
    ) -> Result<Live, UpstreamSetupError> {
        let generation = previous.map_or(0, |p| p.generation + 1);
        let upstream = match previous {
            Some(p) if *p.upstream.config() == config.upstream => Arc::clone(&p.upstream),
            _ => Arc::new(Upstream::new(&config.upstream, generation)?),
        };
        let refusals = match previous {
            Some(p) if p.limits.refusals_per_second == config.limits.refusals_per_second => {
                Arc::clone(&p.refusals)
            }
            _ => Arc::new(RefusalLimiter::new(config.limits.refusals_per_second)),
        };
        Ok(Live {
            generation,
            gate: Gatekeeper {
                cell: Arc::clone(cell),
                auth: config.auth.clone(),
                max_staleness: config.refresh.max_staleness,
            },
            client_ip: config.client_ip.clone(),
            upstream,
            limits: config.limits.clone(),
            refusals,
        })
    }
}

pub struct Front {
    live: ArcSwap<Live>,
    api: Api,
    /// The key holder's page; `None` when `console.enabled` is false.
    console: Option<Console>,
    metrics: Arc<Metrics>,
    access_log: AccessLog,
    ids: RequestIds,
    /// The public listener speaks TLS (for `X-Forwarded-Proto`).
    tls: bool,
    /// Set when the grace period is over: a request dropped from then on was cut off by
    /// the shutdown, not by its client.
    cutting_off: AtomicBool,
}

impl Front {
    pub fn new(
        live: Live,
        api: Api,
        console: Option<Console>,
        metrics: Arc<Metrics>,
        access_log: AccessLog,
        tls: bool,
    ) -> Self {
        Self {
            live: ArcSwap::from_pointee(live),
            api,
            console,
            metrics,
            access_log,
            ids: RequestIds::new(),
            tls,
            cutting_off: AtomicBool::new(false),
        }
    }

    /// The settings requests are served with now.
    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// Serves new requests with `next`; those in flight finish with what they loaded.
    pub fn swap(&self, next: Live) {
        self.live.store(Arc::new(next));
    }

    /// Handles one request that arrived on `conn`.
    pub async fn handle(&self, req: Request<RequestBody>, conn: &ClientConn) -> Response<Body> {
        let started = Instant::now();
        let live = self.live.load();
        let trusted = conn.peer_trusted(live.generation, &live.client_ip.trusted_proxies);
        let client_ip = client_ip::resolve(conn.peer, trusted, req.headers(), &live.client_ip);
        let (key, request_id) = head::two(req.headers(), &live.gate.auth.header, &X_REQUEST_ID);
        let request_id = self.ids.of_sent(request_id);
        let mut line = Line {
            front: self,
            conn,
            started,
            upstream_started: None,
            method: req.method().clone(),
            uri: req.uri().clone(),
            request_id,
            peer: conn.peer,
            client_ip,
            bytes_in: req.body().size_hint().exact(),
            route: "none",
            allowed: false,
            shadow: false,
            reason: "none",
            credential_id: None,
            done: false,
        };
        let mut resp = self.route(req, key, conn, &live, trusted, &mut line).await;
        line.answered(&resp);
        // The line is written: the id moves into the answer instead of being copied.
        let id = std::mem::replace(&mut line.request_id, HeaderValue::from_static(""));
        resp.headers_mut().insert(X_REQUEST_ID, id);
        resp
    }

    /// `key`: the credential header's lines, found with the request id's.
    async fn route(
        &self,
        req: Request<RequestBody>,
        key: Sent,
        conn: &ClientConn,
        live: &Live,
        trusted: bool,
        line: &mut Line<'_>,
    ) -> Response<Body> {
        let client_ip = line.client_ip;
        if conn.origin == Origin::HealthCheck {
            line.route = "health";
            line.reason = "health_check";
            return health(&live.gate).map(Either::Right);
        }
        if oversized_head(&req) {
            self.metrics.record_client_error(ClientError::HeadTooLarge);
            line.reason = "head_too_large";
            let resp = closing(bunq::error(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "The request head, or one line of it, is too large.",
            ));
            return resp.map(Either::Right);
        }
        if let Some(malformed) = target::check(&req) {
            self.metrics.record_client_error(ClientError::Request);
            line.reason = malformed.label();
            let resp = closing(bunq::error(StatusCode::BAD_REQUEST, malformed.message()));
            return resp.map(Either::Right);
        }
        if disguised_api_path(req.uri().path()) {
            self.metrics.record_client_error(ClientError::Request);
            line.reason = "ambiguous_path";
            let resp = closing(bunq::error(
                StatusCode::BAD_REQUEST,
                "This path reads as a management API path once normalised; send it as such.",
            ));
            return resp.map(Either::Right);
        }

        let console = self.console.as_ref().filter(|c| c.owns(req.uri().path()));
        if console.is_some() || Api::owns(req.uri().path()) {
            let settings = CallSettings {
                gate: &live.gate,
                limits: &live.limits,
            };
            // Boxed: the API's future is the largest the door holds, and every request's
            // future (moved whole by hyper when it starts) would otherwise be its size.
            let (resp, call) = match console {
                Some(console) => {
                    Box::pin(console.handle(req, client_ip, settings, &self.api, self.tls)).await
                }
                None => Box::pin(self.api.handle(req, client_ip, settings)).await,
            };
            let ApiCall {
                operation,
                ok,
                reason,
                credential_id,
            } = call;
            line.route = operation;
            line.allowed = ok;
            line.reason = reason;
            line.credential_id = credential_id;
            // The API's refusals count against the same per-address limit as the
            // proxy's: a key guessed at through the API is no cheaper.
            let refused = matches!(
                resp.status(),
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
            );
            if refused
                && live
                    .refusals
                    .over_limit(client_ip.unwrap_or(conn.peer), line.started)
            {
                self.metrics.refusals_limited.inc();
                line.done = true;
                live.refusals.hold().await;
                return bunq::too_many_refusals().map(Either::Right);
            }
            return resp.map(Either::Right);
        }

        line.route = "proxy";
        let decision = live.gate.check_sent(&key, client_ip);
        self.api.recorder.note(decision, client_ip);
        let (identity, shadow) = match decision {
            Decision::Deny(reason, known) => {
                self.metrics.record_deny(reason);
                line.reason = reason.label();
                line.credential_id = known.map(|i| i.credential_id);
                // 503s are the gateway's own state, not the client's doing.
                let peer = conn.peer;
                if reason.status() != 503
                    && live
                        .refusals
                        .over_limit(client_ip.unwrap_or(peer), line.started)
                {
                    self.metrics.refusals_limited.inc();
                    // Counted, not logged line by line: a flood must not become a log
                    // flood. Held first (a tarpit), so it cannot come back at once.
                    line.done = true;
                    live.refusals.hold().await;
                    if crate::grpc::called(&req) {
                        return crate::grpc::refusal(429).map(Either::Right);
                    }
                    return bunq::too_many_refusals().map(Either::Right);
                }
                if crate::grpc::called(&req) {
                    return crate::grpc::refusal(reason.status()).map(Either::Right);
                }
                return bunq::refusal(reason).map(Either::Right);
            }
            Decision::Allow(identity) => {
                self.metrics.record_allow();
                line.reason = "ok";
                (identity, false)
            }
            Decision::Shadow(identity, reason) => {
                self.metrics.record_shadow(reason);
                line.reason = reason.label();
                line.shadow = true;
                (identity, true)
            }
        };
        line.allowed = true;
        line.credential_id = Some(identity.credential_id);
        let how = Forwarding {
            identity: conn.identity.values(identity),
            // Only a known address is ever allowed or shadowed.
            client_ip: client_ip.unwrap_or(conn.peer),
            // Resolving succeeded, so reading the same chain again does too.
            verified: trusted.then(|| {
                client_ip::verified_chain(conn.peer, req.headers(), &live.client_ip)
                    .unwrap_or_default()
            }),
            peer: &conn.peer_value,
            tls: self.tls,
            strip: (!live.gate.auth.forward_key).then_some(&live.gate.auth.header),
            request_id: &line.request_id,
            shadow,
        };
        let upstream_started = Instant::now();
        let forwarded = if tunnel::wanted(&req) {
            // Boxed: a tunnel's set-up is rare and must not grow every request's future.
            let forwarded = Box::pin(self.upgrade(req, how, live, conn, line)).await;
            self.metrics
                .upstream_duration
                .observe(upstream_started.elapsed().as_secs_f64());
            // A tunnel writes its own line when it ends.
            line.done =
                matches!(&forwarded, Ok(r) if r.status() == StatusCode::SWITCHING_PROTOCOLS);
            forwarded
        } else {
            let forwarded = live
                .upstream
                .forward(req, how, Some(conn), line.started)
                .await;
            // Observed when the line is written, from the same clock read.
            line.upstream_started = Some(upstream_started);
            forwarded
        };
        match forwarded {
            Ok(resp) => resp.map(Either::Left),
            Err(ForwardError::Upstream(kind)) => {
                self.metrics.record_upstream_error(kind);
                line.reason = match kind {
                    UpstreamError::Connect => "upstream_connect",
                    UpstreamError::Timeout => "upstream_timeout",
                    UpstreamError::Protocol => "upstream_protocol",
                };
                upstream_failure(kind).map(Either::Right)
            }
            Err(ForwardError::ClientBody) => {
                self.metrics.record_client_error(ClientError::Body);
                line.reason = "client_body";
                closing(bunq::error(
                    StatusCode::BAD_REQUEST,
                    "The request body is malformed or ended early.",
                ))
                .map(Either::Right)
            }
        }
    }
}

impl Door for Front {
    fn serve(
        &self,
        req: Request<RequestBody>,
        conn: &ClientConn,
    ) -> impl std::future::Future<Output = Response<Body>> + Send {
        self.handle(req, conn)
    }

    fn trusts(&self, peer: IpAddr) -> bool {
        client_ip::is_trusted(peer, &self.live.load().client_ip.trusted_proxies)
    }

    fn cutting_off(&self) {
        self.cutting_off.store(true, Ordering::Release);
    }
}

/// One request's access line, filled in as the request goes. Written when the answer
/// is ready, or, when the request is dropped before that (the client left, or the
/// grace period ended), when it is dropped.
struct Line<'f> {
    front: &'f Front,
    /// Says why, when the listener cut the connection under this request.
    conn: &'f ClientConn,
    started: Instant,
    /// When the request was sent upstream, once the upstream answered (or failed).
    upstream_started: Option<Instant>,
    method: Method,
    uri: Uri,
    request_id: HeaderValue,
    peer: IpAddr,
    client_ip: Option<IpAddr>,
    bytes_in: Option<u64>,
    route: &'static str,
    allowed: bool,
    shadow: bool,
    reason: &'static str,
    credential_id: Option<u64>,
    /// Written already, or not to be written (a limited refusal).
    done: bool,
}

impl Line<'_> {
    fn answered(&mut self, resp: &Response<Body>) {
        let bytes_out = if self.method == Method::HEAD {
            Some(0)
        } else {
            resp.body().size_hint().exact()
        };
        self.write(resp.status().as_u16(), bytes_out, None);
    }

    fn write(&mut self, status: u16, bytes_out: Option<u64>, cut: Option<&str>) {
        if self.done {
            return;
        }
        self.done = true;
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.started);
        let metrics = &self.front.metrics;
        metrics.request_duration.observe(elapsed.as_secs_f64());
        if let Some(upstream_started) = self.upstream_started {
            let upstream = now.saturating_duration_since(upstream_started);
            metrics.upstream_duration.observe(upstream.as_secs_f64());
        }
        // The declared length is what arrived only for a body read to its end: one cut
        // off, broken or refused as too large says nothing of what was read.
        let whole_body =
            cut.is_none() && !matches!(self.reason, "client_body" | "too_large" | "head_too_large");
        self.front.access_log.record(&Entry {
            status,
            allowed: self.allowed,
            shadow: self.shadow,
            reason: self.reason,
            route: self.route,
            method: self.method.as_str(),
            path: self.uri.path(),
            request_id: self.request_id.as_bytes(),
            credential_id: self.credential_id,
            client_ip: self.client_ip,
            peer: self.peer,
            bytes_in: self.bytes_in.filter(|_| whole_body),
            bytes_out,
            latency_us: elapsed.as_micros() as u64,
            cut,
        });
    }
}

impl Drop for Line<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let by = if self.front.cutting_off.load(Ordering::Acquire) {
            "shutdown"
        } else if let Some(cut) = self.conn.cut_by() {
            cut.label()
        } else {
            "client_closed"
        };
        self.write(0, None, Some(by));
    }
}

/// The answer to a balancer's health check (a PROXY header that named no client, with
/// `server.proxy_protocol_local = "health"`): ready or not, never forwarded.
fn health(gate: &crate::gate::Gatekeeper) -> Response<Full<Bytes>> {
    let ready = gate.cell.is_loaded()
        && (gate.max_staleness.is_zero() || !gate.cell.is_stale(gate.max_staleness));
    let (status, text) = if ready {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    };
    let mut resp = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// True when `path` is not a management API path as written, but becomes one once
/// normalised the way many upstream servers do (percent-decoded, a backslash as `/`, `;`
/// parameters dropped, empty, `.` and `..` segments resolved). Routing is an exact
/// match, so such a path would go to the upstream; it is refused instead, as the
/// ambiguous request it is. Most paths hold none of those bytes and cost one pass.
fn disguised_api_path(path: &str) -> bool {
    let mut previous = 0u8;
    let odd = path.bytes().any(|b| {
        let odd =
            matches!(b, b';' | b'%' | b'\\') || (previous == b'/' && matches!(b, b'/' | b'.'));
        previous = b;
        odd
    });
    if !odd || Api::owns(path) {
        return false;
    }
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split(['/', '\\']) {
        let segment = segment.split(';').next().unwrap_or_default();
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    Api::owns(&format!("/{}", segments.join("/")))
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
    use super::disguised_api_path;

    #[test]
    fn management_paths_in_disguise_are_told_apart() {
        for disguised in [
            "//v1/device-server",
            "/v1/./user/1/credential-password-ip",
            "/v1/user/1/credential-password-ip;x",
            "/v1/user/1/credential-password-ip;x/3/ip",
            "/v1%2Fdevice-server",
            "/v1%2fuser%2f1/credential-password-ip",
            "/x/../v1/device-server",
            "/v1\\device-server",
            "/v1/user/1/%63redential-password-ip",
        ] {
            assert!(disguised_api_path(disguised), "{disguised}");
        }
        for plain in [
            "/",
            "/v1/device-server",
            "/v1/user/1/credential-password-ip/2/ip",
            "/v1/user/1/payment",
            "/v1/user/1/payment;x",
            "//static/a.css",
            "/files/a%20b",
            "/v1/user/1/./payment",
        ] {
            assert!(!disguised_api_path(plain), "{plain}");
        }
    }
}

//! The key holder's console (SPEC section 10): a small web page on the public listener,
//! under `console.path` (default `/ipgate/console/`).
//!
//! Routes, relative to that path:
//!
//! | method | path | does |
//! |---|---|---|
//! | GET, HEAD | `` | the page (no data in it) |
//! | GET, HEAD | `console.js`, `console.css` | its assets, compiled into the binary |
//! | GET, HEAD | `me` | who the key in the request's header is: user, credential, caller's address |
//!
//! The page calls the management API itself with the key, which lives only in the
//! page's memory (never a cookie, a URL or a log). There is no second write path: a
//! session's calls go through the same [`Api`] handlers and rules, only authenticated
//! by the session instead of the key, and limited to its one credential.
//!
//! Must not: serve anything from another origin, let itself be framed, or answer
//! anything with data that a cache may keep.

mod assets;

use crate::acl::Identity;
use crate::api::{Answer, Api, ApiCall, ApiError, CallSettings};
use crate::bunq;
use crate::config::ConsoleConfig;
use crate::proxy::RequestBody;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use serde_json::json;
use std::net::IpAddr;

/// Content-Security-Policy of every console answer: only this origin's script, style
/// and calls, no inline script, no framing by anyone.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self'; form-action 'self'; \
                   base-uri 'none'; frame-ancestors 'none'";

/// The console as served: its path, and the sessions opened by operators' links.
pub struct Console {
    path: String,
}

impl Console {
    /// `None` when the config turns the console off.
    pub fn new(config: &ConsoleConfig) -> Option<Console> {
        config.enabled.then(|| Console {
            path: config.path.clone(),
        })
    }

    /// True for the console's paths. One prefix compare: this runs for every request.
    pub fn owns(&self, path: &str) -> bool {
        path.starts_with(self.path.as_str())
    }

    /// Answers one console request.
    pub async fn handle(
        &self,
        req: Request<RequestBody>,
        client_ip: Option<IpAddr>,
        settings: CallSettings<'_>,
        api: &Api,
        _tls: bool,
    ) -> (Answer, ApiCall) {
        let rest = req.uri().path()[self.path.len()..].to_owned();
        let reading = matches!(*req.method(), Method::GET | Method::HEAD);
        let mut call = ApiCall {
            operation: "console_page",
            ok: true,
            reason: "ok",
            credential_id: None,
        };
        let answer = match (rest.as_str(), reading) {
            ("", true) => page(assets::render_page(&self.path, &settings.gate.auth)),
            ("console.js", true) => asset(assets::SCRIPT, "text/javascript; charset=utf-8"),
            ("console.css", true) => asset(assets::STYLE, "text/css; charset=utf-8"),
            ("me", true) => {
                call.operation = "console_me";
                match api.authenticate(settings.gate, &req, client_ip, &mut call.credential_id) {
                    Ok(identity) => who(identity, client_ip, None),
                    Err(e) => failed(&mut call, e),
                }
            }
            ("" | "console.js" | "console.css" | "me", false) => {
                not_allowed(&mut call, "GET, HEAD")
            }
            _ => {
                call.ok = false;
                call.reason = "not_found";
                text(StatusCode::NOT_FOUND, "No such page.\n")
            }
        };
        count(api, &call, &answer);
        (secure(answer), call)
    }
}

/// Counts a console request in `ipgate_api_requests_total` under its own operation
/// (`console_*`, listed in `metrics::API_OPERATIONS`).
fn count(api: &Api, call: &ApiCall, answer: &Answer) {
    let class = match answer.status().as_u16() {
        200..=399 => "2xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    api.metrics
        .api_requests
        .with_label_values(&[call.operation, class])
        .inc();
}

/// `me`: who the caller is, and (for a session) its CSRF token.
fn who(identity: Identity, client_ip: Option<IpAddr>, csrf: Option<&str>) -> Answer {
    let mut body = json!({
        "user_id": identity.user_id,
        "credential_id": identity.credential_id,
        "caller_ip": client_ip.map(|ip| ip.to_canonical().to_string()),
    });
    if let Some(csrf) = csrf {
        body["csrf"] = json!(csrf);
    }
    bunq::json_response(StatusCode::OK, Bytes::from(body.to_string()))
}

fn failed(call: &mut ApiCall, e: ApiError) -> Answer {
    call.ok = false;
    call.reason = e.label();
    e.into_response()
}

fn not_allowed(call: &mut ApiCall, allow: &'static str) -> Answer {
    call.ok = false;
    call.reason = "method_not_allowed";
    let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed.\n");
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

fn page(html: String) -> Answer {
    let mut r = Response::new(Full::new(Bytes::from(html)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

fn asset(body: &'static str, content_type: &'static str) -> Answer {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn text(status: StatusCode, message: &'static str) -> Answer {
    let mut r = Response::new(Full::new(Bytes::from_static(message.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The headers every console answer carries, whatever made it.
fn secure(mut r: Answer) -> Answer {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Everything: the page holds no data, but a cached page could outlive a fix to it.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        http::HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        http::HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("same-origin"),
    );
    r
}

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
//! | GET, HEAD | `link/{token}` | a page that opens an operator's link with one POST |
//! | POST | `link` | spends the link: a session cookie, then back to the page |
//! | GET, HEAD | `session/me` | who the session is, and its CSRF token |
//! | any | `session/api/v1/…` | the management API as the session's credential |
//!
//! The page calls the management API itself with the key, which lives only in the
//! page's memory (never a cookie, a URL or a log). There is no second write path: a
//! session's calls go through the same [`Api`] handlers and rules, only authenticated
//! by the session instead of the key, and limited to its one credential.
//!
//! Must not: serve anything from another origin, let itself be framed, or answer
//! anything with data that a cache may keep.

mod assets;
mod session;

pub use session::{Refusal, Sessions};

use crate::acl::Identity;
use crate::api::{Answer, Api, ApiCall, ApiError, CallSettings};
use crate::bunq;
use crate::config::ConsoleConfig;
use crate::proxy::RequestBody;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde_json::json;
use std::net::IpAddr;
use std::sync::Arc;

/// The largest body the link form may send.
const MAX_FORM_BYTES: usize = 1024;

/// Content-Security-Policy of every console answer: only this origin's script, style
/// and calls, no inline script, no framing by anyone.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self'; form-action 'self'; \
                   base-uri 'none'; frame-ancestors 'none'";

/// The console as served: its path, and the sessions opened by operators' links.
pub struct Console {
    path: String,
    pub sessions: Arc<Sessions>,
}

impl Console {
    /// `None` when the config turns the console off.
    pub fn new(config: &ConsoleConfig, sessions: Arc<Sessions>) -> Option<Console> {
        config.enabled.then(|| Console {
            path: config.path.clone(),
            sessions,
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
        tls: bool,
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
            (link, true) if link.starts_with("link/") => {
                call.operation = "console_link";
                page(assets::render_link(&self.path, &link["link/".len()..]))
            }
            ("link", false) if *req.method() == Method::POST => {
                call.operation = "console_link";
                self.open_link(req, client_ip, tls, &mut call).await
            }
            (rest, _) if rest.starts_with("session/") => {
                call.operation = "console_session";
                let (answer, call) = self.in_session(req, client_ip, settings, api, call).await;
                count(api, &call, &answer);
                return (secure(answer), call);
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

    /// `POST link` with `token=…`: spends the link and opens a session for its
    /// credential, bound to the address that opened it.
    async fn open_link(
        &self,
        req: Request<RequestBody>,
        client_ip: Option<IpAddr>,
        tls: bool,
        call: &mut ApiCall,
    ) -> Answer {
        let Some(ip) = client_ip else {
            call.ok = false;
            call.reason = "client_ip_unknown";
            return text(StatusCode::FORBIDDEN, "Your address is unknown.\n");
        };
        let form = match Limited::new(req.into_body(), MAX_FORM_BYTES)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                call.ok = false;
                call.reason = "bad_input";
                return text(StatusCode::BAD_REQUEST, "The form could not be read.\n");
            }
        };
        let token = form_urlencoded::parse(&form)
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        match self.sessions.open(&token, ip).await {
            Ok(opened) => {
                call.credential_id = Some(opened.identity.credential_id);
                let mut cookie = format!(
                    "{}={}; Path={}; HttpOnly; SameSite=Strict; Max-Age={}",
                    session::COOKIE_NAME,
                    opened.cookie,
                    self.path,
                    session::SESSION_TTL.as_secs()
                );
                if tls {
                    cookie.push_str("; Secure");
                }
                let mut r = text(StatusCode::SEE_OTHER, "Opening the console.\n");
                r.headers_mut().insert(
                    header::LOCATION,
                    HeaderValue::from_str(&self.path).unwrap_or(HeaderValue::from_static("/")),
                );
                if let Ok(v) = HeaderValue::from_str(&cookie) {
                    r.headers_mut().insert(header::SET_COOKIE, v);
                }
                r
            }
            Err(why) => {
                call.ok = false;
                call.reason = why.label();
                text(StatusCode::FORBIDDEN, why.message())
            }
        }
    }

    /// `session/…`: the session's cookie, from the address that opened it, from this
    /// origin; writes also carry its CSRF token.
    async fn in_session(
        &self,
        req: Request<RequestBody>,
        client_ip: Option<IpAddr>,
        settings: CallSettings<'_>,
        api: &Api,
        mut call: ApiCall,
    ) -> (Answer, ApiCall) {
        let reading = matches!(*req.method(), Method::GET | Method::HEAD);
        let session = match self.sessions.check(&req, client_ip, reading) {
            Ok(s) => s,
            Err(why) => {
                call.ok = false;
                call.reason = why.label();
                return (bunq::error(StatusCode::FORBIDDEN, why.message()), call);
            }
        };
        call.credential_id = Some(session.identity.credential_id);
        let cookie = session::cookie_value(&req).unwrap_or_default().to_owned();
        if let Err(why) = self.sessions.confirm(&session, &cookie).await {
            call.ok = false;
            call.reason = why.label();
            let status = match why {
                Refusal::Store => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::FORBIDDEN,
            };
            return (bunq::error(status, why.message()), call);
        }
        let rest = req.uri().path()[self.path.len() + "session/".len()..].to_owned();
        if rest == "me" && reading {
            return (who(session.identity, client_ip, Some(&session.csrf)), call);
        }
        let Some(api_path) = rest.strip_prefix("api").filter(|p| Api::owns(p)) else {
            call.ok = false;
            call.reason = "not_found";
            return (text(StatusCode::NOT_FOUND, "No such page.\n"), call);
        };
        // The same request, addressed to the API's own path.
        let (mut parts, body) = req.into_parts();
        let path_and_query = match parts.uri.query() {
            Some(q) => format!("{api_path}?{q}"),
            None => api_path.to_owned(),
        };
        parts.uri = match path_and_query.parse() {
            Ok(uri) => uri,
            Err(_) => {
                call.ok = false;
                call.reason = "not_found";
                return (text(StatusCode::NOT_FOUND, "No such page.\n"), call);
            }
        };
        let req = Request::from_parts(parts, body);
        let (answer, api_call) =
            Box::pin(api.handle_as(req, client_ip, settings, Some(session.identity))).await;
        call.ok = api_call.ok;
        call.reason = api_call.reason;
        (answer, call)
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

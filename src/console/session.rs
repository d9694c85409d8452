//! Console sessions opened by an operator's link (`ipgate admin console-link`).
//!
//! Spending a link is the store's (once, before it expires, across every gateway).
//! The session it opens lives in this gateway's memory only: a random cookie
//! (`HttpOnly`, `SameSite=Strict`, `Secure` on TLS, scoped to the console's path),
//! bound to the address that opened it, for [`SESSION_TTL`], at most
//! [`MAX_SESSIONS`] at once. A call made in a session must come from that address
//! and, when the browser says where it comes from (`Origin`, `Sec-Fetch-Site`), from
//! this origin; a write must also carry the session's CSRF token. Every call reads
//! the credential once: a revocation ends its sessions at their next call.
//!
//! What a session can do is the management API's, for its one credential: the API
//! cannot set the wildcard or change the mode, so a session cannot either.

use crate::acl::Identity;
use crate::metrics::Metrics;
use crate::store::{console_link::token_hash, CredentialStatus, Store, StoreError};
use base64::Engine;
use http::header::{COOKIE, HOST, ORIGIN};
use http::Request;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a session opened by a link lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(30 * 60);
/// Sessions kept at once; the oldest goes when a new one needs room.
pub const MAX_SESSIONS: usize = 1024;
/// The session cookie's name.
pub const COOKIE_NAME: &str = "ipgate_console";
/// The header a session's writes carry their CSRF token in.
pub const CSRF_HEADER: &str = "x-ipgate-csrf";
/// A link token or a cookie longer than this is no token of ours.
const MAX_TOKEN: usize = 128;

/// One open session.
#[derive(Clone, Debug)]
pub struct Session {
    pub identity: Identity,
    pub csrf: String,
    ip: IpAddr,
    expires: Instant,
}

/// A session just opened: who, and the cookie that carries it.
pub struct Opened {
    pub identity: Identity,
    pub cookie: String,
}

/// Why a link or a session was refused. The words are for the person at the page; no
/// one of them tells an unknown link from a spent or expired one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Unknown, spent or expired link, or its credential is not ACTIVE.
    Link,
    /// The store could not be asked.
    Store,
    NoSession,
    OtherAddress,
    OtherOrigin,
    Csrf,
    /// The credential was revoked (or is otherwise not ACTIVE) since the link was used.
    NotActive,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Link => "link_refused",
            Refusal::Store => "store_unavailable",
            Refusal::NoSession => "no_session",
            Refusal::OtherAddress => "session_other_address",
            Refusal::OtherOrigin => "session_other_origin",
            Refusal::Csrf => "csrf",
            Refusal::NotActive => "credential_not_active",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Refusal::Link => {
                "This console link is not valid: it was used already, it expired, or it \
                 never existed. Ask your operator for a new one.\n"
            }
            Refusal::Store => "The store is unavailable. Try again in a moment.\n",
            Refusal::NoSession => "No console session. Sign in with your key or a new link.",
            Refusal::OtherAddress => {
                "This console session belongs to another address. Open a new link."
            }
            Refusal::OtherOrigin => "Console calls come from the console's own page only.",
            Refusal::Csrf => "The request did not carry this session's CSRF token.",
            Refusal::NotActive => "This credential is no longer ACTIVE; the session has ended.",
        }
    }
}

/// The sessions of this gateway.
pub struct Sessions {
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    /// By the SHA-256 of the cookie, so the map holds no usable cookie.
    open: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    pub fn new(store: Arc<dyn Store>, metrics: Arc<Metrics>) -> Self {
        Self {
            store,
            metrics,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Spends the link `token` and opens a session for it, bound to `ip`.
    pub async fn open(&self, token: &str, ip: IpAddr) -> Result<Opened, Refusal> {
        if token.is_empty() || token.len() > MAX_TOKEN {
            self.metrics.record_console_link("refused");
            return Err(Refusal::Link);
        }
        let spent = match self.store.use_console_link(token_hash(token), ip).await {
            Ok(spent) => spent,
            Err(e) => {
                tracing::error!(error = %e, "cannot spend a console link");
                return Err(Refusal::Store);
            }
        };
        let Some(identity) = spent else {
            self.metrics.record_console_link("refused");
            return Err(Refusal::Link);
        };
        let (cookie, csrf) = match (random_token(), random_token()) {
            (Some(c), Some(t)) => (c, t),
            _ => return Err(Refusal::Store),
        };
        let now = Instant::now();
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|_, s| s.expires > now);
        if open.len() >= MAX_SESSIONS {
            if let Some(oldest) = open
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
            {
                open.remove(&oldest);
            }
        }
        open.insert(
            token_hash(&cookie),
            Session {
                identity,
                csrf,
                ip,
                expires: now + SESSION_TTL,
            },
        );
        self.metrics.record_console_link("used");
        tracing::info!(
            credential_id = identity.credential_id,
            client_ip = %ip,
            "console link used: session opened"
        );
        Ok(Opened { identity, cookie })
    }

    /// The session a request is made in, if it may be: its cookie, from its address,
    /// from this origin, and for a write with its CSRF token.
    pub fn check<B>(
        &self,
        req: &Request<B>,
        client_ip: Option<IpAddr>,
        reading: bool,
    ) -> Result<Session, Refusal> {
        if !same_origin(req) {
            return Err(Refusal::OtherOrigin);
        }
        let cookie = cookie(req).ok_or(Refusal::NoSession)?;
        let session = {
            let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            open.get(&token_hash(cookie)).cloned()
        };
        let session = session
            .filter(|s| s.expires > Instant::now())
            .ok_or(Refusal::NoSession)?;
        if client_ip.map(|ip| ip.to_canonical()) != Some(session.ip.to_canonical()) {
            return Err(Refusal::OtherAddress);
        }
        if !reading {
            let sent = req
                .headers()
                .get(CSRF_HEADER)
                .map(|v| v.as_bytes())
                .unwrap_or_default();
            if !same_bytes(sent, session.csrf.as_bytes()) {
                return Err(Refusal::Csrf);
            }
        }
        Ok(session)
    }

    /// Ends `session` unless its credential is still ACTIVE: a revocation ends every
    /// session of the credential at its next call, not when the session expires.
    pub async fn confirm(&self, session: &Session, cookie_of: &str) -> Result<(), Refusal> {
        let id = session.identity.credential_id;
        match self.store.credential(id).await {
            Ok(c) if c.status == CredentialStatus::Active => Ok(()),
            Ok(_) | Err(StoreError::NotFound(_)) => {
                let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
                open.remove(&token_hash(cookie_of));
                Err(Refusal::NotActive)
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read a console session's credential");
                Err(Refusal::Store)
            }
        }
    }
}

/// The session cookie a request carries, for [`Sessions::confirm`].
pub fn cookie_value<B>(req: &Request<B>) -> Option<&str> {
    cookie(req)
}

/// 32 random bytes, base64url.
fn random_token() -> Option<String> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).ok()?;
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
}

/// The session cookie's value, when the request carries exactly one.
fn cookie<B>(req: &Request<B>) -> Option<&str> {
    let mut found = None;
    for header in req.headers().get_all(COOKIE) {
        let text = header.to_str().ok()?;
        for pair in text.split(';') {
            if let Some((name, value)) = pair.trim().split_once('=') {
                if name == COOKIE_NAME {
                    if found.is_some() || value.is_empty() || value.len() > MAX_TOKEN {
                        return None;
                    }
                    found = Some(value);
                }
            }
        }
    }
    found
}

/// False when the browser says the request comes from another site or origin: an
/// `Origin` whose host is not the request's `Host`, or a `Sec-Fetch-Site` other than
/// `same-origin` (direct navigation, `none`, is fine too).
fn same_origin<B>(req: &Request<B>) -> bool {
    let headers = req.headers();
    if let Some(site) = headers.get("sec-fetch-site") {
        if !matches!(site.as_bytes(), b"same-origin" | b"none") {
            return false;
        }
    }
    let Some(origin) = headers.get(ORIGIN) else {
        return true;
    };
    let host = headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, h)| h);
    matches!((origin_host, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
}

/// Compares without stopping at the first difference.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().uri("/ipgate/console/session/me");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn the_origin_must_be_the_host() {
        assert!(same_origin(&req(&[("host", "gw:8080")])));
        assert!(same_origin(&req(&[
            ("host", "gw:8080"),
            ("origin", "https://gw:8080")
        ])));
        assert!(!same_origin(&req(&[
            ("host", "gw:8080"),
            ("origin", "https://evil.example")
        ])));
        assert!(!same_origin(&req(&[("origin", "null"), ("host", "gw")])));
        assert!(!same_origin(&req(&[
            ("host", "gw"),
            ("sec-fetch-site", "cross-site")
        ])));
    }

    #[test]
    fn exactly_one_session_cookie() {
        assert_eq!(
            cookie(&req(&[("cookie", "a=1; ipgate_console=xyz")])),
            Some("xyz")
        );
        assert_eq!(
            cookie(&req(&[("cookie", "ipgate_console=x; ipgate_console=y")])),
            None
        );
        assert_eq!(cookie(&req(&[("cookie", "other=1")])), None);
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same_bytes(b"abc", b"abc"));
        assert!(!same_bytes(b"abc", b"abd"));
        assert!(!same_bytes(b"abc", b"ab"));
    }
}

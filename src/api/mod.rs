//! The management API: a key holder manages its own whitelist, bunq style.
//!
//! Routes (on the public listener, authenticated like any proxied request except the
//! registration, which is how a key gets its first address):
//!
//! | method | path | does |
//! |---|---|---|
//! | POST | `/v1/device-server` | register the device of a pending key |
//! | GET, HEAD | `/v1/user/{u}/credential-password-ip` | list the user's credentials |
//! | GET, HEAD | `/v1/user/{u}/credential-password-ip/{c}` | one credential |
//! | GET, HEAD | `/v1/user/{u}/credential-password-ip/{c}/ip` | list its entries |
//! | POST | `/v1/user/{u}/credential-password-ip/{c}/ip` | add an entry |
//! | GET, HEAD | `/v1/user/{u}/credential-password-ip/{c}/ip/{i}` | one entry |
//! | PUT | `/v1/user/{u}/credential-password-ip/{c}/ip/{i}` | change its status |
//! | GET, HEAD | `/v1/user/{u}/credential-password-ip/{c}/refused-ip` | ipgate: addresses the key was refused from, newest first |
//! | GET, HEAD | `/v1/user/{u}/credential-password-ip/{c}/suggested-ip` | ipgate: `report suggest` for the credential |
//!
//! A path under `/v1/user/{u}/credential-password-ip` that names no route (a user id
//! that is no number, an extra segment) is this API's 404, never forwarded.
//!
//! Every write is committed to the store and then enforced here (this gateway's
//! snapshot catches up to the write's version, through the poller's ordered path)
//! before the answer is sent.
//!
//! As bunq's own SDKs expect: a body with no `Content-Type` is read as JSON, every
//! answer carries a fresh `X-Bunq-Client-Response-Id`, and a sane
//! `X-Bunq-Client-Request-Id` is echoed. A call takes one of the API's store slots only
//! once its body is read, so a client that sends its body slowly holds none. With
//! `auth.response_signing_key` set, every successful answer carries
//! `X-Bunq-Server-Signature` over its body, which the SDKs verify with the key they
//! were given as the server's ([`sign`]).

mod error;
mod registration;
pub(crate) use error::{Answer, ApiError};
#[doc(hidden)] // public for the fuzz targets only
pub mod route;
#[doc(hidden)] // public for the fuzz targets only
pub mod wire;

use crate::acl::{Decision, Identity, Reason};
use crate::bunq;
use crate::config::{LimitsConfig, ResponseSigningKey};
use crate::gate::Gatekeeper;
use crate::insight::Recorder;
use crate::metrics::Metrics;
use crate::proxy::RequestBody;
use crate::refresh::Refresher;
use crate::request_id::{self, RequestIds};
use crate::store::{Actor, Change, Committed, Page, Store, Target};
use bytes::Bytes;
use error::{created_id, ok, ApiResult};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use route::Route;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use wire::BadInput;

pub struct Api {
    pub store: Arc<dyn Store>,
    pub refresher: Arc<Refresher>,
    pub metrics: Arc<Metrics>,
    /// Counts the calls made with each credential from each address.
    pub recorder: Arc<Recorder>,
    /// Store calls the API may have in flight at once: [`API_STORE_SLOTS`].
    pub store_slots: tokio::sync::Semaphore,
    /// Makes each answer's `X-Bunq-Client-Response-Id`.
    pub response_ids: RequestIds,
    /// Signs successful answers as bunq's server does (`auth.response_signing_key`);
    /// `None`: no answer carries `X-Bunq-Server-Signature`.
    pub signing_key: Option<ResponseSigningKey>,
}

/// What one call was, for its access line: the operation, whether it did what was
/// asked and why not, and whose credential it was made with (when known).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiCall {
    pub operation: &'static str,
    pub ok: bool,
    /// `ok`, or why not: a refusal's reason (`ip_not_active`, …), `bad_input`,
    /// `not_found`, a registration's `unknown_key`, … (`ApiError::label`); `not_signed`
    /// for a successful answer that could not be signed (sent as a 500).
    pub reason: &'static str,
    pub credential_id: Option<u64>,
}

/// What the settings a SIGHUP may change say for one call.
pub struct CallSettings<'a> {
    pub gate: &'a Gatekeeper,
    pub limits: &'a LimitsConfig,
}

/// Concurrent store calls from the management API on the embedded store; the poller
/// never waits for one.
pub const API_STORE_SLOTS: usize = 8;

/// The API's store slots for `store`: on PostgreSQL as many as the API's own pool has
/// connections (`store.pool_size`), so no call waits inside the pool, where its wait
/// would count against its own deadline; the poller and the flusher have connections
/// of their own besides.
pub fn store_slots(store: &crate::config::StoreConfig) -> usize {
    match store {
        crate::config::StoreConfig::Postgres(c) => c.pool_size.max(1),
        crate::config::StoreConfig::Sqlite(_) => API_STORE_SLOTS,
    }
}
/// How long an API call waits for a store slot before answering 503.
const STORE_SLOT_WAIT: Duration = Duration::from_secs(5);

impl Api {
    /// True for paths the management API answers instead of the upstream: the
    /// device-server and the credential-password-ip tree. The upstream's own
    /// `/v1/user/{id}/…` routes stay the upstream's.
    pub fn owns(path: &str) -> bool {
        // Runs for every request on the public listener: no allocation, no split.
        let path = path.trim_end_matches('/');
        if path == "/v1/device-server" {
            return true;
        }
        let Some((_user, rest)) = path
            .strip_prefix("/v1/user/")
            .and_then(|r| r.split_once('/'))
        else {
            return false;
        };
        rest.strip_prefix("credential-password-ip")
            .is_some_and(|tail| tail.is_empty() || tail.starts_with('/'))
    }

    /// Answers one call. HEAD is answered as GET; hyper sends the head without the body.
    pub async fn handle(
        &self,
        req: Request<RequestBody>,
        client_ip: Option<IpAddr>,
        settings: CallSettings<'_>,
    ) -> (Answer, ApiCall) {
        self.handle_as(req, client_ip, settings, None).await
    }

    /// Answers one call, authenticated by its key, or, with `session`, made through a
    /// console session opened by an operator's link (`crate::console`): the same
    /// handlers and rules, limited to the session's own credential, never a
    /// registration.
    pub async fn handle_as(
        &self,
        req: Request<RequestBody>,
        client_ip: Option<IpAddr>,
        settings: CallSettings<'_>,
        session: Option<Identity>,
    ) -> (Answer, ApiCall) {
        let route = Route::parse(req.uri().path());
        let operation = route.operation(req.method());
        // Echoed only when sane: it is the client's text, shown back on every answer.
        let client_request_id = request_id::sane_one(req.headers(), &bunq::CLIENT_REQUEST_ID);
        let mut credential_id = None;
        let (mut answer, mut reason) = match self
            .dispatch(
                route,
                req,
                client_ip,
                &settings,
                session,
                &mut credential_id,
            )
            .await
        {
            Ok(a) => (a, None),
            Err(e) => {
                let label = e.label();
                (e.into_response(), Some(label))
            }
        };
        let headers = answer.headers_mut();
        headers.insert(bunq::CLIENT_RESPONSE_ID, self.response_ids.make());
        if let Some(id) = client_request_id {
            headers.insert(bunq::CLIENT_REQUEST_ID, id);
        }
        if let (Some(key), true) = (&self.signing_key, answer.status().is_success()) {
            answer = sign(answer, key).await.unwrap_or_else(|unsigned| {
                reason = Some("not_signed");
                unsigned
            });
        }
        let class = match answer.status().as_u16() {
            200..=299 => "2xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.metrics
            .api_requests
            .with_label_values(&[operation, class])
            .inc();
        let call = ApiCall {
            operation,
            ok: reason.is_none(),
            reason: reason.unwrap_or("ok"),
            credential_id,
        };
        (answer, call)
    }

    /// `credential_id` is set as soon as the caller's credential is known.
    async fn dispatch(
        &self,
        route: Route,
        req: Request<RequestBody>,
        client_ip: Option<IpAddr>,
        settings: &CallSettings<'_>,
        session: Option<Identity>,
        credential_id: &mut Option<u64>,
    ) -> ApiResult {
        // HEAD reads as GET: the same checks and the same answer, no body on the wire.
        let reading = matches!(*req.method(), Method::GET | Method::HEAD);
        let allowed = route.allowed();
        if route == Route::NotFound {
            let shape = Route::shape_allows(req.uri().path());
            if !shape.is_empty() && !shape.split(", ").any(|m| m == req.method().as_str()) {
                return Err(ApiError::MethodNotAllowed(shape));
            }
            return Err(ApiError::NotFound("endpoint"));
        }
        if !allowed.split(", ").any(|m| m == req.method().as_str()) {
            return Err(ApiError::MethodNotAllowed(allowed));
        }
        let identity = match session {
            Some(identity) => {
                *credential_id = Some(identity.credential_id);
                // A session reaches its own credential only: no registration, no list
                // of the user's other credentials.
                if route.credential() != Some(identity.credential_id) {
                    return Err(ApiError::NotFound("endpoint"));
                }
                identity
            }
            None if route == Route::DeviceServer => {
                return self.register(req, client_ip, settings, credential_id).await;
            }
            None => self.authenticate(settings.gate, &req, client_ip, credential_id)?,
        };
        if let Some(user) = route.user() {
            self.own_user(identity, user)?;
        }
        let max_ips = settings.limits.max_ips_per_credential;
        let caller_ip = client_ip.ok_or(ApiError::Refused(Reason::ClientIpUnknown))?;
        let actor = Actor::credential(identity.credential_id, caller_ip);
        let query = req.uri().query().map(str::to_owned);
        let base = req.uri().path().trim_end_matches('/').to_owned();
        // The body is read before a store slot is taken: a client that sends it slowly
        // (or never) must not hold one of the few slots every other caller needs.
        let body = if reading {
            Bytes::new()
        } else {
            self.body(req, settings.limits).await?
        };
        let _slot = self.store_slot().await?;
        match route {
            Route::Credentials { user } => {
                let page = wire::parse_page(query.as_deref())?;
                let rows = self
                    .store
                    .credentials(
                        user,
                        Page {
                            count: page.count + 1,
                            ..page
                        },
                    )
                    .await?;
                let (rows, more) = trim(rows, page);
                let ids: Vec<u64> = rows.iter().map(|c| c.id).collect();
                let views: Vec<wire::CredentialView> = rows.iter().map(Into::into).collect();
                let p = wire::pagination(&base, page, &ids, more);
                Ok(bunq::json_response(
                    StatusCode::OK,
                    bunq::envelope("CredentialPasswordIp", &views, Some(p)),
                ))
            }
            Route::Credential { user, credential } => {
                let c = self.own_credential(user, credential).await?;
                ok("CredentialPasswordIp", &[wire::CredentialView::from(&c)])
            }
            Route::Ips { user, credential } if reading => {
                self.own_credential(user, credential).await?;
                let page = wire::parse_page(query.as_deref())?;
                let rows = self
                    .store
                    .ips(
                        credential,
                        Page {
                            count: page.count + 1,
                            ..page
                        },
                    )
                    .await?;
                let (rows, more) = trim(rows, page);
                let ids: Vec<u64> = rows.iter().map(|p| p.id).collect();
                let views: Vec<wire::PermittedIpView> = rows.iter().map(Into::into).collect();
                let p = wire::pagination(&base, page, &ids, more);
                Ok(bunq::json_response(
                    StatusCode::OK,
                    bunq::envelope("PermittedIp", &views, Some(p)),
                ))
            }
            Route::Ips { user, credential } => {
                let new: wire::NewIpBody = wire::parse_json(&body)?;
                let ip = wire::parse_ip(&new.ip)?;
                let status = match new.status.as_deref() {
                    Some(s) => wire::parse_status(s)?,
                    None => crate::store::IpStatus::Active,
                };
                self.own_credential(user, credential).await?;
                let entry = self
                    .write(credential, Change::AddIp { ip, status }, &actor, max_ips)
                    .await?;
                created_id(entry)
            }
            Route::Ip {
                user,
                credential,
                item,
            } if reading => {
                self.own_credential(user, credential).await?;
                let entry = self.store.ip(credential, item).await?;
                ok("PermittedIp", &[wire::PermittedIpView::from(&entry)])
            }
            Route::Ip {
                user,
                credential,
                item,
            } => {
                let change: wire::UpdateIpBody = wire::parse_json(&body)?;
                let new_ip = change.ip.as_deref().map(wire::parse_ip).transpose()?;
                let status = change
                    .status
                    .as_deref()
                    .map(wire::parse_status)
                    .transpose()?
                    .ok_or_else(|| {
                        BadInput::Invalid("Send the new \"status\": ACTIVE or INACTIVE.".into())
                    })?;
                self.own_credential(user, credential).await?;
                let current = self.store.ip(credential, item).await?;
                if new_ip.is_some_and(|ip| ip != current.ip) {
                    return Err(BadInput::Invalid(format!(
                        "The address of an entry never changes. Mark entry {item} ({}) INACTIVE \
                         and add a new entry for the new address.",
                        current.ip
                    ))
                    .into());
                }
                let entry = self
                    .write(
                        credential,
                        Change::SetIpStatus { item, status },
                        &actor,
                        max_ips,
                    )
                    .await?;
                created_id(entry)
            }
            Route::RefusedIps { user, credential } => {
                self.own_credential(user, credential).await?;
                // Newest first; at most `store::REFUSED_KEPT`, so no page is needed.
                let report = self.store.refused(Some(credential)).await?;
                let views: Vec<wire::RefusedIpView> =
                    report.addresses.iter().map(Into::into).collect();
                ok("RefusedIp", &views)
            }
            Route::SuggestedIps { user, credential } => {
                self.own_credential(user, credential).await?;
                let rows = self.store.suggest(credential).await?;
                let views: Vec<wire::SuggestedIpView> = rows.iter().map(Into::into).collect();
                ok("SuggestedIp", &views)
            }
            Route::DeviceServer | Route::NotFound => Err(ApiError::NotFound("endpoint")),
        }
    }

    /// The same check as a proxied request: own key, from one of its ACTIVE addresses.
    /// Counted like any request; the access line says who and why. Shadow mode does not
    /// open the management API: whoever may change a list must already be on it.
    pub(crate) fn authenticate(
        &self,
        gate: &Gatekeeper,
        req: &Request<RequestBody>,
        client_ip: Option<IpAddr>,
        credential_id: &mut Option<u64>,
    ) -> Result<Identity, ApiError> {
        let decision = gate.check(req.headers(), client_ip);
        self.recorder.note(decision, client_ip);
        let mut refuse = |reason, known: Option<Identity>| {
            self.metrics.record_deny(reason);
            *credential_id = known.map(|i| i.credential_id);
            Err(ApiError::Refused(reason))
        };
        match decision {
            Decision::Allow(identity) => {
                self.metrics.record_allow();
                *credential_id = Some(identity.credential_id);
                Ok(identity)
            }
            Decision::Shadow(identity, reason) => refuse(reason, Some(identity)),
            Decision::Deny(reason, known) => refuse(reason, known),
        }
    }

    fn own_user(&self, identity: Identity, user: u64) -> Result<(), ApiError> {
        if identity.user_id == user {
            Ok(())
        } else {
            Err(ApiError::OtherUser)
        }
    }

    /// The credential, if it belongs to `user`; another user's is as missing as none.
    async fn own_credential(
        &self,
        user: u64,
        credential: u64,
    ) -> Result<crate::store::Credential, ApiError> {
        let c = self.store.credential(credential).await?;
        if c.user_id == user {
            Ok(c)
        } else {
            Err(ApiError::NotFound("credential"))
        }
    }

    /// A turn at the store for one API call. The API gets a fixed number at once, so a
    /// crowd of API calls cannot take every connection or blocking thread from the
    /// poller; a call that waits too long is answered 503.
    async fn store_slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
        match tokio::time::timeout(STORE_SLOT_WAIT, self.store_slots.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(ApiError::Store(crate::store::StoreError::Unavailable(
                "every store slot of the management API stayed busy".into(),
            ))),
        }
    }

    /// Reads a body of at most `limits.max_body_bytes`, declared as JSON or not declared.
    async fn body(
        &self,
        req: Request<RequestBody>,
        limits: &LimitsConfig,
    ) -> Result<Bytes, ApiError> {
        wire::require_json(req.headers())?;
        let limit = limits.max_body_bytes;
        match Limited::new(req.into_body(), limit).collect().await {
            Ok(b) => Ok(b.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                Err(BadInput::TooLarge(limit).into())
            }
            Err(_) => {
                self.metrics
                    .record_client_error(crate::metrics::ClientError::Body);
                Err(BadInput::Invalid("Request body could not be read.".into()).into())
            }
        }
    }

    /// Changes one entry list and answers with the entry's id once this gateway
    /// enforces the change.
    async fn write(
        &self,
        credential: u64,
        change: Change,
        actor: &Actor,
        max_ips: usize,
    ) -> Result<u64, ApiError> {
        let committed = self
            .store
            .change(Target::Id(credential), change, max_ips, actor)
            .await?;
        self.enforce(committed.version).await?;
        let Committed { value, .. } = committed;
        value
            .entry
            .map(|e| e.id)
            .ok_or(ApiError::NotFound("permitted IP"))
    }

    /// Makes this gateway enforce everything up to `version` (a write it just made)
    /// before the caller hears back.
    async fn enforce(&self, version: u64) -> Result<(), ApiError> {
        self.refresher.catch_up(version).await.map_err(|e| {
            tracing::error!(
                error = %e,
                cause = crate::logging::error_chain(&e),
                "catching up after an API write failed"
            );
            ApiError::NotEnforced
        })
    }
}

/// Adds `X-Bunq-Server-Signature` over the answer's body, the bytes bunq's SDKs verify
/// (HEAD too: its head is GET's, body unsent). Only successful answers are signed: the
/// SDKs check no other (bunq-sdk raises on any status but 200 before it verifies), and
/// signing refusals would hand every caller without a key an RSA operation per request.
/// An answer that cannot be signed is not sent unsigned: `Err` holds the 500 to send
/// instead, with the answer's bunq ids.
///
/// An RSA signature takes about a millisecond with a 2048-bit key and ten with 4096
/// bits: it runs on the blocking pool, not on a worker that serves other connections.
async fn sign(answer: Answer, key: &ResponseSigningKey) -> Result<Answer, Answer> {
    let (mut head, body) = answer.into_parts();
    // A `Full` body is one chunk, already there: this never waits.
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(never) => match never {},
    };
    let signing = {
        let (key, body) = (key.clone(), body.clone());
        tokio::task::spawn_blocking(move || key.sign(&body))
    };
    let signature = match signing.await {
        Ok(Ok(s)) => http::HeaderValue::try_from(s).ok(),
        _ => None,
    };
    let Some(signature) = signature else {
        tracing::error!("cannot sign a management API answer; answering 500 instead");
        let mut failed = bunq::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The request was carried out (a change it asked for is stored), but its \
             answer could not be signed.",
        );
        for name in [bunq::CLIENT_RESPONSE_ID, bunq::CLIENT_REQUEST_ID] {
            if let Some(v) = head.headers.remove(&name) {
                failed.headers_mut().insert(name, v);
            }
        }
        return Err(failed);
    };
    head.headers.insert(bunq::SERVER_SIGNATURE, signature);
    Ok(Answer::from_parts(head, http_body_util::Full::new(body)))
}

/// Splits a list fetched with one extra row into the page and "more exist". Lists
/// are newest first; the extra row is the furthest from the cursor, which is the
/// newest one when paging towards newer items.
fn trim<T>(mut rows: Vec<T>, page: Page) -> (Vec<T>, bool) {
    let more = rows.len() > page.count as usize;
    if more {
        if page.newer_id.is_some() {
            rows.remove(0);
        } else {
            rows.truncate(page.count as usize);
        }
    }
    (rows, more)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_paths() {
        assert!(Api::owns("/v1/device-server"));
        assert!(Api::owns("/v1/user/3/credential-password-ip"));
        assert!(Api::owns("/v1/user/x/credential-password-ip/4/ip/"));
        assert!(!Api::owns("/v1/user/3"));
        assert!(!Api::owns("/v1/user/3/monetary-account/1/payment"));
        assert!(!Api::owns("/v1/device-server/extra"));
        assert!(!Api::owns("/v1/payments"));
    }
}

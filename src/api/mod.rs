//! The management API: a key holder manages its own whitelist, bunq style.
//!
//! Routes (on the public listener, authenticated like any proxied request except the
//! registration, which is how a key gets its first address):
//!
//! | method | path | does |
//! |---|---|---|
//! | POST | `/v1/device-server` | register the device of a pending key |
//! | GET | `/v1/user/{u}/credential-password-ip` | list the user's credentials |
//! | GET | `/v1/user/{u}/credential-password-ip/{c}` | one credential |
//! | GET | `/v1/user/{u}/credential-password-ip/{c}/ip` | list its entries |
//! | POST | `/v1/user/{u}/credential-password-ip/{c}/ip` | add an entry |
//! | GET | `/v1/user/{u}/credential-password-ip/{c}/ip/{i}` | one entry |
//! | PUT | `/v1/user/{u}/credential-password-ip/{c}/ip/{i}` | change its status |
//!
//! Every write is committed to the store and then enforced here (this gateway's
//! snapshot catches up to the write's version, through the poller's ordered path)
//! before the answer is sent.

mod error;
mod route;
mod wire;

use crate::acl::{CredentialState, NEVER};
use crate::acl::{Decision, Identity};
use crate::bunq;
use crate::gate::Gatekeeper;
use crate::metrics::Metrics;
use crate::metrics::Registration;
use crate::refresh::Refresher;
use crate::store::rules::REGISTRATION_REFUSED;
use crate::store::{Actor, Change, Committed, Page, Store, Target};
use bytes::Bytes;
use error::{created_id, ok, Answer, ApiError, ApiResult};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use route::Route;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use wire::BadInput;

pub struct Api {
    pub store: Arc<dyn Store>,
    pub refresher: Arc<Refresher>,
    pub metrics: Arc<Metrics>,
    pub max_ips: usize,
    pub max_body_bytes: usize,
    /// Store calls the API may have in flight at once: [`API_STORE_SLOTS`].
    pub store_slots: tokio::sync::Semaphore,
}

/// Concurrent store calls from the management API; the poller never waits for one.
pub const API_STORE_SLOTS: usize = 8;
/// How long an API call waits for a store slot before answering 503.
const STORE_SLOT_WAIT: Duration = Duration::from_secs(5);
/// Registrations with keys the snapshot does not know share one look at the store per
/// this much time.
const REGISTRATION_RECHECK: Duration = Duration::from_millis(100);

/// What the snapshot says of a key offered for registration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bindable {
    Pending,
    /// Known, and not pending (or past its window): registered, revoked or expired.
    Bound,
    Unknown,
    NoSnapshot,
}

impl Bindable {
    fn of(gate: &Gatekeeper, key: &crate::acl::KeyHash) -> Self {
        let snapshot = gate.cell.load();
        let Some(snapshot) = snapshot.as_ref() else {
            return Bindable::NoSnapshot;
        };
        match snapshot.get(key) {
            None => Bindable::Unknown,
            Some(c)
                if c.state == CredentialState::PendingFirstUse
                    && (c.expires_at == NEVER || crate::gate::unix_now() < c.expires_at) =>
            {
                Bindable::Pending
            }
            Some(_) => Bindable::Bound,
        }
    }

    fn result(self) -> Registration {
        match self {
            Bindable::Unknown => Registration::UnknownKey,
            _ => Registration::Refused,
        }
    }
}

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

    pub async fn handle(
        &self,
        req: Request<Incoming>,
        client_ip: Option<IpAddr>,
        gate: &Gatekeeper,
    ) -> Answer {
        let route = Route::parse(req.uri().path());
        let operation = route.operation(req.method());
        let answer = match self.dispatch(route, req, client_ip, gate).await {
            Ok(a) => a,
            Err(e) => e.into_response(),
        };
        let class = match answer.status().as_u16() {
            200..=299 => "2xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.metrics
            .api_requests
            .with_label_values(&[operation, class])
            .inc();
        answer
    }

    async fn dispatch(
        &self,
        route: Route,
        req: Request<Incoming>,
        client_ip: Option<IpAddr>,
        gate: &Gatekeeper,
    ) -> ApiResult {
        let method = req.method().clone();
        let allowed = route.allowed();
        if route == Route::NotFound {
            return Err(ApiError::NotFound("endpoint"));
        }
        if !allowed.split(", ").any(|m| m == method.as_str()) {
            return Err(ApiError::MethodNotAllowed(allowed));
        }
        if route == Route::DeviceServer {
            return self.register(req, client_ip, gate).await;
        }

        let identity = self.authenticate(gate, &req, client_ip)?;
        let _slot = self.store_slot().await?;
        let caller_ip = client_ip.ok_or(ApiError::Refused(crate::acl::Reason::ClientIpUnknown))?;
        let actor = Actor::credential(identity.credential_id, caller_ip);
        let query = req.uri().query().map(str::to_owned);
        let base = req.uri().path().trim_end_matches('/').to_owned();
        match route {
            Route::Credentials { user } => {
                self.own_user(identity, user)?;
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
                self.own_user(identity, user)?;
                let c = self.own_credential(user, credential).await?;
                ok("CredentialPasswordIp", &[wire::CredentialView::from(&c)])
            }
            Route::Ips { user, credential } if method == Method::GET => {
                self.own_user(identity, user)?;
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
                self.own_user(identity, user)?;
                let body = self.body(req).await?;
                let new: wire::NewIpBody = wire::parse_json(&body)?;
                let ip = wire::parse_ip(&new.ip)?;
                let status = match new.status.as_deref() {
                    Some(s) => wire::parse_status(s)?,
                    None => crate::store::IpStatus::Active,
                };
                self.own_credential(user, credential).await?;
                let entry = self
                    .write(credential, Change::AddIp { ip, status }, &actor)
                    .await?;
                created_id(entry)
            }
            Route::Ip {
                user,
                credential,
                item,
            } if method == Method::GET => {
                self.own_user(identity, user)?;
                self.own_credential(user, credential).await?;
                let entry = self.store.ip(credential, item).await?;
                ok("PermittedIp", &[wire::PermittedIpView::from(&entry)])
            }
            Route::Ip {
                user,
                credential,
                item,
            } => {
                self.own_user(identity, user)?;
                let body = self.body(req).await?;
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
                    .write(credential, Change::SetIpStatus { item, status }, &actor)
                    .await?;
                created_id(entry)
            }
            Route::DeviceServer | Route::NotFound => Err(ApiError::NotFound("endpoint")),
        }
    }

    /// The same check as a proxied request: own key, from one of its ACTIVE addresses.
    fn authenticate(
        &self,
        gate: &Gatekeeper,
        req: &Request<Incoming>,
        client_ip: Option<IpAddr>,
    ) -> Result<Identity, ApiError> {
        match gate.check(req.headers(), client_ip) {
            Decision::Allow(identity) => {
                self.metrics.record_allow();
                Ok(identity)
            }
            Decision::Deny(reason, known) => {
                self.metrics.record_deny(reason);
                tracing::info!(
                    target: "ipgate::access",
                    reason = reason.label(),
                    credential_id = known.map(|i| i.credential_id),
                    client_ip = client_ip.map(tracing::field::display),
                    "management API call refused"
                );
                Err(ApiError::Refused(reason))
            }
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

    async fn register(
        &self,
        req: Request<Incoming>,
        client_ip: Option<IpAddr>,
        gate: &Gatekeeper,
    ) -> ApiResult {
        let arrived = std::time::Instant::now();
        let caller = client_ip.ok_or(ApiError::Refused(crate::acl::Reason::ClientIpUnknown))?;
        let body = self.body(req).await?;
        let reg: wire::DeviceServerBody = wire::parse_json(&body)?;
        let ips = wire::registration_ips(&reg.permitted_ips, caller)?;
        if reg.description.len() > 1024 {
            return Err(BadInput::Invalid("description is longer than 1024 bytes.".into()).into());
        }
        let key = reg.secret.hash();
        // Only a key the snapshot knows as pending reaches the store's write lock. One it
        // does not know may be newer than the last poll: look once more, in a poll begun
        // after this request arrived and shared with every other such registration, then
        // refuse. A storm of made-up secrets costs the store one read per
        // REGISTRATION_RECHECK at most.
        let mut bindable = Bindable::of(gate, &key);
        if bindable == Bindable::Unknown {
            // The store cannot say whether the key exists: try again later, not "no".
            self.refresher
                .refresh_since(arrived, REGISTRATION_RECHECK)
                .await
                .map_err(ApiError::Store)?;
            bindable = Bindable::of(gate, &key);
        }
        match bindable {
            Bindable::Pending => {}
            Bindable::NoSnapshot => {
                return Err(ApiError::Refused(crate::acl::Reason::NoSnapshot));
            }
            Bindable::Unknown | Bindable::Bound => {
                self.metrics.record_registration(bindable.result());
                return Err(BadInput::Invalid(REGISTRATION_REFUSED.into()).into());
            }
        }
        let change = Change::Register {
            description: reg.description,
            ips,
            caller,
        };
        // The store names the key holder once it knows which credential the key is.
        let actor = Actor {
            who: "device-server".into(),
            ip: Some(caller),
        };
        let _slot = self.store_slot().await?;
        let committed = match self
            .store
            .change(Target::Key(key), change, self.max_ips, &actor)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                if matches!(e, crate::store::StoreError::Rejected(_)) {
                    self.metrics.record_registration(Registration::Refused);
                }
                return Err(e.into());
            }
        };
        self.metrics.record_registration(Registration::Registered);
        let credential = committed.value.credential.id;
        tracing::info!(credential_id = credential, caller = %caller, "device registered");
        self.enforce(committed.version).await?;
        created_id(credential)
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

    /// Reads a body of at most `limits.max_body_bytes`, declared as JSON.
    async fn body(&self, req: Request<Incoming>) -> Result<Bytes, ApiError> {
        wire::require_json(req.headers())?;
        let limit = self.max_body_bytes;
        match Limited::new(req.into_body(), limit).collect().await {
            Ok(b) => Ok(b.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                Err(BadInput::Invalid(format!("Request body is larger than {limit} bytes.")).into())
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
    async fn write(&self, credential: u64, change: Change, actor: &Actor) -> Result<u64, ApiError> {
        let committed = self
            .store
            .change(Target::Id(credential), change, self.max_ips, actor)
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

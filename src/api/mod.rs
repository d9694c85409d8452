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
//! Every write is committed to the store and then enforced here (the changed credential
//! is read back into this gateway's snapshot) before the answer is sent.

mod error;
#[doc(hidden)] // public for the fuzz targets only
pub mod route;
#[doc(hidden)] // public for the fuzz targets only
pub mod wire;

use crate::acl::{Decision, Identity, KeyHash};
use crate::bunq;
use crate::metrics::Metrics;
use crate::proxy::Gatekeeper;
use crate::refresh::Refresher;
use crate::store::{Actor, Page, Registration, Store, StoreError};
use bytes::Bytes;
use error::{created_id, ok, Answer, ApiError, ApiResult};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use route::Route;
use std::net::IpAddr;
use std::sync::Arc;
use wire::BadInput;

pub struct Api {
    pub store: Arc<dyn Store>,
    pub refresher: Arc<Refresher>,
    pub metrics: Arc<Metrics>,
    pub max_ips: usize,
    pub max_body_bytes: usize,
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
            return self.register(req, client_ip).await;
        }

        let identity = self.authenticate(gate, &req, client_ip)?;
        let caller_ip = client_ip.ok_or(ApiError::Refused(crate::acl::Reason::ClientIpUnknown))?;
        let actor = Actor::credential(identity.credential_id, caller_ip);
        let query = req.uri().query().map(str::to_owned);
        let base = req.uri().path().trim_end_matches('/').to_owned();
        match route {
            Route::Credentials { user } => {
                self.own_user(identity, user)?;
                let page = wire::parse_page(query.as_deref())?;
                let rows = self
                    .blocking(move |s| {
                        s.credentials(
                            user,
                            Page {
                                count: page.count + 1,
                                ..page
                            },
                        )
                    })
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
                    .blocking(move |s| {
                        s.ips(
                            credential,
                            Page {
                                count: page.count + 1,
                                ..page
                            },
                        )
                    })
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
                let max = self.max_ips;
                let entry = self
                    .blocking(move |s| s.add_ip(credential, ip, status, max, &actor))
                    .await?;
                self.enforce(credential).await?;
                created_id(entry.id)
            }
            Route::Ip {
                user,
                credential,
                item,
            } if method == Method::GET => {
                self.own_user(identity, user)?;
                self.own_credential(user, credential).await?;
                let entry = self.blocking(move |s| s.ip(credential, item)).await?;
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
                let current = self.blocking(move |s| s.ip(credential, item)).await?;
                if new_ip.is_some_and(|ip| ip != current.ip) {
                    return Err(BadInput::Invalid(format!(
                        "The address of an entry never changes. Mark entry {item} ({}) INACTIVE \
                         and add a new entry for the new address.",
                        current.ip
                    ))
                    .into());
                }
                let max = self.max_ips;
                let entry = self
                    .blocking(move |s| s.set_ip_status(credential, item, status, max, &actor))
                    .await?;
                self.enforce(credential).await?;
                created_id(entry.id)
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
        let c = self.blocking(move |s| s.credential(credential)).await?;
        if c.user_id == user {
            Ok(c)
        } else {
            Err(ApiError::NotFound("credential"))
        }
    }

    async fn register(&self, req: Request<Incoming>, client_ip: Option<IpAddr>) -> ApiResult {
        let caller = client_ip.ok_or(ApiError::Refused(crate::acl::Reason::ClientIpUnknown))?;
        let body = self.body(req).await?;
        let reg: wire::DeviceServerBody = wire::parse_json(&body)?;
        let ips = wire::registration_ips(&reg.permitted_ips, caller)?;
        if reg.description.len() > 1024 {
            return Err(BadInput::Invalid("description is longer than 1024 bytes.".into()).into());
        }
        let key = KeyHash::of(reg.secret.as_bytes());
        let max_ips = self.max_ips;
        let credential = self
            .blocking(move |s| {
                s.register_device(Registration {
                    key: &key,
                    description: &reg.description,
                    ips: &ips,
                    caller,
                    max_ips,
                })
            })
            .await?;
        tracing::info!(credential_id = credential.id, caller = %caller, "device registered");
        self.enforce(credential.id).await?;
        created_id(credential.id)
    }

    /// Reads a body of at most `limits.max_body_bytes`.
    async fn body(&self, req: Request<Incoming>) -> Result<Bytes, ApiError> {
        let limit = self.max_body_bytes;
        match Limited::new(req.into_body(), limit).collect().await {
            Ok(b) => Ok(b.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                Err(BadInput::Invalid(format!("Request body is larger than {limit} bytes.")).into())
            }
            Err(_) => Err(BadInput::Invalid("Request body could not be read.".into()).into()),
        }
    }

    /// Makes this gateway enforce what was just written to `credential` before the
    /// caller hears back.
    async fn enforce(&self, credential: u64) -> Result<(), ApiError> {
        self.refresher
            .enforce_credential(credential)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "refresh after an API write failed");
                ApiError::NotEnforced
            })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let store = Arc::clone(&self.store);
        match tokio::task::spawn_blocking(move || f(store.as_ref())).await {
            Ok(r) => r.map_err(ApiError::from),
            Err(e) => Err(ApiError::Store(StoreError::Unavailable(Box::new(e)))),
        }
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

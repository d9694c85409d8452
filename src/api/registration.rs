//! `POST /v1/device-server`: a pending key binds its first addresses.
//!
//! Every refusal gets the same answer (no oracle for which keys exist); the true reason
//! goes to the access line and `ipgate_device_registrations_total`. Only a key the
//! snapshot knows as pending reaches the store's write lock.

use super::error::{created_id, ApiError, ApiResult};
use super::{wire, Api, CallSettings};
use crate::acl::{CredentialState, KeyHash, Reason, NEVER};
use crate::gate::Gatekeeper;
use crate::metrics::Registration;
use crate::proxy::RequestBody;
use crate::store::rules::REGISTRATION_REFUSED;
use crate::store::{Actor, Change, StoreError, Target};
use http::Request;
use std::net::IpAddr;
use std::time::{Duration, Instant};
use wire::BadInput;

/// Registrations with keys the snapshot does not know share one look at the store per
/// this much time.
const REGISTRATION_RECHECK: Duration = Duration::from_millis(100);

/// What the snapshot says of a key offered for registration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bindable {
    Pending,
    /// Known, and not bindable: why (a log label), and which credential it is.
    Bound(&'static str, u64),
    Unknown,
    NoSnapshot,
}

impl Bindable {
    fn of(gate: &Gatekeeper, key: &KeyHash) -> Self {
        let snapshot = gate.cell.load();
        let Some(snapshot) = snapshot.as_ref() else {
            return Bindable::NoSnapshot;
        };
        let Some(c) = snapshot.get(key) else {
            return Bindable::Unknown;
        };
        let lapsed = c.expires_at != NEVER && crate::gate::unix_now() >= c.expires_at;
        match c.state {
            CredentialState::PendingFirstUse if !lapsed => Bindable::Pending,
            CredentialState::PendingFirstUse => Bindable::Bound("expired_key", c.id),
            CredentialState::Active => Bindable::Bound("already_registered", c.id),
            CredentialState::Revoked => Bindable::Bound("revoked_key", c.id),
            CredentialState::Damaged => Bindable::Bound("damaged_credential", c.id),
        }
    }
}

impl Api {
    pub(super) async fn register(
        &self,
        req: Request<RequestBody>,
        client_ip: Option<IpAddr>,
        settings: &CallSettings<'_>,
        credential_id: &mut Option<u64>,
    ) -> ApiResult {
        let arrived = Instant::now();
        let caller = client_ip.ok_or(ApiError::Refused(Reason::ClientIpUnknown))?;
        let body = self.body(req, settings.limits).await?;
        let reg: wire::DeviceServerBody = wire::parse_json(&body)?;
        let ips = wire::registration_ips(&reg.permitted_ips, caller)?;
        if reg.description.len() > 1024 {
            return Err(BadInput::Invalid("description is longer than 1024 bytes.".into()).into());
        }
        // Shown to operators in tables and terminals: no newline, tab or escape code.
        if reg.description.chars().any(char::is_control) {
            return Err(BadInput::Invalid(
                "description may not hold control characters (newlines, tabs, escapes).".into(),
            )
            .into());
        }
        let key = reg.secret.hash();
        // Only a key the snapshot knows as pending reaches the store's write lock. One it
        // does not know may be newer than the last poll: look once more, in a poll begun
        // after this request arrived and shared with every other such registration, then
        // refuse. A storm of made-up secrets costs the store one read per
        // REGISTRATION_RECHECK at most.
        let mut bindable = Bindable::of(settings.gate, &key);
        if bindable == Bindable::Unknown {
            // The store cannot say whether the key exists: try again later, not "no".
            self.refresher
                .refresh_since(arrived, REGISTRATION_RECHECK)
                .await
                .map_err(ApiError::Store)?;
            bindable = Bindable::of(settings.gate, &key);
        }
        match bindable {
            Bindable::Pending => {}
            Bindable::NoSnapshot => return Err(ApiError::Refused(Reason::NoSnapshot)),
            Bindable::Unknown => {
                self.metrics.record_registration(Registration::UnknownKey);
                return Err(ApiError::RegistrationRefused("unknown_key"));
            }
            Bindable::Bound(why, id) => {
                *credential_id = Some(id);
                self.metrics.record_registration(Registration::Refused);
                return Err(ApiError::RegistrationRefused(why));
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
        let max_ips = settings.limits.max_ips_per_credential;
        let committed = match self
            .store
            .change(Target::Key(key), change, max_ips, &actor)
            .await
        {
            Ok(c) => c,
            Err(StoreError::Rejected(msg)) => {
                self.metrics.record_registration(Registration::Refused);
                // Bound by another gateway since the snapshot was built, or past a limit.
                return Err(if msg == REGISTRATION_REFUSED {
                    ApiError::RegistrationRefused("not_pending")
                } else {
                    BadInput::Invalid(msg).into()
                });
            }
            Err(e) => return Err(e.into()),
        };
        self.metrics.record_registration(Registration::Registered);
        let credential = committed.value.credential.id;
        *credential_id = Some(credential);
        tracing::info!(credential_id = credential, caller = %caller, "device registered");
        self.enforce(committed.version).await?;
        created_id(credential)
    }
}

//! Everything the management API can answer besides success, mapped to a status and a
//! bunq-shaped message in one place.

use super::wire::BadInput;
use crate::acl::Reason;
use crate::bunq;
use crate::store::rules::REGISTRATION_REFUSED;
use crate::store::StoreError;
use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;

pub(crate) type Answer = Response<Full<Bytes>>;

/// What went wrong, mapped to status and message in one place.
#[derive(Debug)]
pub(crate) enum ApiError {
    Input(BadInput),
    Refused(Reason),
    OtherUser,
    NotFound(&'static str),
    MethodNotAllowed(&'static str),
    Store(StoreError),
    NotEnforced,
    /// A device registration refused: one answer for every reason; the label says which.
    RegistrationRefused(&'static str),
}

impl From<BadInput> for ApiError {
    fn from(e: BadInput) -> Self {
        ApiError::Input(e)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => ApiError::NotFound(what),
            StoreError::Rejected(msg) => ApiError::Input(BadInput::Invalid(msg)),
            e => ApiError::Store(e),
        }
    }
}

impl ApiError {
    /// Why, for the access line: a short fixed label, never the message.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            ApiError::Input(BadInput::Invalid(_)) => "bad_input",
            ApiError::Input(BadInput::NotJson) => "not_json",
            ApiError::Input(BadInput::Wildcard) => "wildcard",
            ApiError::Input(BadInput::TooLarge(_)) => "too_large",
            ApiError::Refused(reason) => reason.label(),
            ApiError::OtherUser => "other_user",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::Store(_) => "store_unavailable",
            ApiError::NotEnforced => "not_enforced",
            ApiError::RegistrationRefused(why) => why,
        }
    }

    pub(crate) fn into_response(self) -> Answer {
        match self {
            ApiError::Input(BadInput::Invalid(msg)) => bunq::error(StatusCode::BAD_REQUEST, &msg),
            ApiError::Input(BadInput::NotJson) => bunq::error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Send the body as JSON, with Content-Type: application/json.",
            ),
            ApiError::Input(BadInput::TooLarge(limit)) => bunq::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("Request body is larger than {limit} bytes."),
            ),
            ApiError::Input(BadInput::Wildcard) => bunq::error(
                StatusCode::FORBIDDEN,
                "The wildcard \"*\" can only be set by an operator.",
            ),
            ApiError::Refused(reason) => bunq::refusal(reason),
            ApiError::OtherUser => bunq::error(
                StatusCode::FORBIDDEN,
                "You can only see and change your own user's data.",
            ),
            ApiError::NotFound(what) => {
                bunq::error(StatusCode::NOT_FOUND, &format!("No such {what}."))
            }
            ApiError::MethodNotAllowed(allow) => {
                let mut r = bunq::error(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed.");
                if let Ok(v) = header::HeaderValue::from_str(allow) {
                    r.headers_mut().insert(header::ALLOW, v);
                }
                r
            }
            ApiError::Store(e) => {
                tracing::error!(error = %e, cause = crate::logging::error_chain(&e), "store failed during an API call");
                bunq::error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The store is unavailable; nothing was changed. Try again later.",
                )
            }
            ApiError::RegistrationRefused(_) => {
                bunq::error(StatusCode::BAD_REQUEST, REGISTRATION_REFUSED)
            }
            ApiError::NotEnforced => bunq::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "The change was stored but could not be enforced yet; it will take effect \
                 within the refresh interval.",
            ),
        }
    }
}

pub(super) type ApiResult = Result<Answer, ApiError>;

pub(super) fn ok(kind: &str, items: &[impl Serialize]) -> ApiResult {
    Ok(bunq::json_response(
        StatusCode::OK,
        bunq::envelope(kind, items, None),
    ))
}

pub(super) fn created_id(id: u64) -> ApiResult {
    ok("Id", &[serde_json::json!({ "id": id })])
}

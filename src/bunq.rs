//! The bunq wire shapes shared by refusals on the hot path and the management API.
//!
//! Errors: `{"Error":[{"error_description":"…","error_description_translated":"…"}]}`.
//! Answers: `{"Response":[{"<Type>":{…}}, …]}`, lists with a `Pagination` object.
//! What a refused request is told lives here too, so the decision core holds no wire
//! text: every key problem gets the same 403 body, so the answer is no oracle.
//! The names of bunq's own request and response id and signature headers live here too.

use crate::acl::Reason;
use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;
use serde_json::json;

pub const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// A bunq client's id for its request; the management API echoes it when it is sane.
pub const CLIENT_REQUEST_ID: HeaderName = HeaderName::from_static("x-bunq-client-request-id");
/// A fresh id on every management API answer, as bunq sends; bunq's SDKs quote it in
/// their error messages.
pub const CLIENT_RESPONSE_ID: HeaderName = HeaderName::from_static("x-bunq-client-response-id");
/// The server's RSA signature of an answer's body, base64, which bunq's SDKs verify
/// with the server public key of their installation.
pub const SERVER_SIGNATURE: HeaderName = HeaderName::from_static("x-bunq-server-signature");

/// An error body as a `&'static str`, for answers that never change (refusals on the
/// hot path): building them with serde for every request cost more than the check.
/// The message must not need JSON escaping.
macro_rules! static_error_body {
    ($message:literal) => {
        concat!(
            "{\"Error\":[{\"error_description\":\"",
            $message,
            "\",\"error_description_translated\":\"",
            $message,
            "\"}]}"
        )
    };
}

/// A refusal's response: status and body depend on the reason's class only.
pub fn refusal(reason: Reason) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(reason.status()).unwrap_or(StatusCode::FORBIDDEN);
    let mut resp = static_error(status, refusal_body(reason));
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("ipgate"));
    }
    resp
}

/// What the client is told, as a whole JSON body. Deliberately the same for every 403.
pub fn refusal_body(reason: Reason) -> &'static str {
    match reason.status() {
        401 if reason == Reason::ManyKeys => {
            static_error_body!("More than one authentication token; send exactly one.")
        }
        401 => static_error_body!("Missing authentication token."),
        403 => static_error_body!("Insufficient authorisation."),
        _ => static_error_body!("Service temporarily unavailable, try again later."),
    }
}

/// The answer to a refusal past its address's limit: fixed, and as cheap as any.
pub fn too_many_refusals() -> Response<Full<Bytes>> {
    let mut resp = static_error(
        StatusCode::TOO_MANY_REQUESTS,
        static_error_body!("Too many refused requests from this address; try again later."),
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

/// A complete error response with a fixed body.
pub fn static_error(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    json_response(status, Bytes::from_static(body.as_bytes()))
}

/// The body of every error ipgate itself answers with.
pub fn error_body(description: &str) -> Bytes {
    let body = json!({
        "Error": [{
            "error_description": description,
            "error_description_translated": description,
        }]
    });
    Bytes::from(body.to_string())
}

/// A complete error response.
pub fn error(status: StatusCode, description: &str) -> Response<Full<Bytes>> {
    json_response(status, error_body(description))
}

pub fn json_response(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, JSON);
    r
}

/// `{"Response":[{"<kind>":item}, …]}`, plus `Pagination` when given.
pub fn envelope<T: Serialize>(
    kind: &str,
    items: &[T],
    pagination: Option<serde_json::Value>,
) -> Bytes {
    let wrapped: Vec<_> = items.iter().map(|i| json!({ kind: i })).collect();
    let mut body = json!({ "Response": wrapped });
    if let Some(p) = pagination {
        body["Pagination"] = p;
    }
    Bytes::from(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_shape() {
        let v: serde_json::Value = serde_json::from_slice(&error_body("nope")).unwrap();
        assert_eq!(v["Error"][0]["error_description"], "nope");
        assert_eq!(v["Error"][0]["error_description_translated"], "nope");
    }

    #[test]
    fn static_bodies_match_built_ones() {
        assert_eq!(static_error_body!("No way."), error_body("No way."));
    }

    #[test]
    fn key_refusals_look_identical() {
        for r in Reason::ALL.into_iter().filter(|r| r.status() == 403) {
            assert_eq!(refusal_body(r), refusal_body(Reason::UnknownKey));
            assert_eq!(refusal(r).status(), 403);
        }
        assert_eq!(refusal(Reason::MissingKey).status(), 401);
        assert!(refusal(Reason::MissingKey)
            .headers()
            .contains_key(header::WWW_AUTHENTICATE));
        assert_eq!(refusal(Reason::NoSnapshot).status(), 503);
        assert_eq!(too_many_refusals().status(), 429);
    }

    #[test]
    fn envelope_shape() {
        let v: serde_json::Value =
            serde_json::from_slice(&envelope("Id", &[json!({"id": 3})], None)).unwrap();
        assert_eq!(v, json!({"Response": [{"Id": {"id": 3}}]}));
    }
}

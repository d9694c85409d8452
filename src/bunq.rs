//! The bunq wire shapes shared by refusals on the hot path and the management API.
//!
//! Errors: `{"Error":[{"error_description":"…","error_description_translated":"…"}]}`.
//! Answers: `{"Response":[{"<Type>":{…}}, …]}`, lists with a `Pagination` object.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;
use serde_json::json;

pub const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// An error body as a `&'static str`, for answers that never change (refusals on the
/// hot path): building them with serde for every request cost more than the check.
/// The message must not need JSON escaping.
#[macro_export]
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
    fn envelope_shape() {
        let v: serde_json::Value =
            serde_json::from_slice(&envelope("Id", &[json!({"id": 3})], None)).unwrap();
        assert_eq!(v, json!({"Response": [{"Id": {"id": 3}}]}));
    }
}

//! ipgate's own answers to a gRPC call (an HTTP/2 request with `content-type:
//! application/grpc…`), in the shape gRPC clients read: HTTP 200 with `grpc-status` in
//! a body-less answer ("trailers-only", gRPC over HTTP/2 protocol spec), instead of a
//! 401 or 403 that a gRPC client reports as a protocol error.
//!
//! The status says what the HTTP status says and no more: `UNAUTHENTICATED` (16) for
//! what is a 401 (no key), `PERMISSION_DENIED` (7) for every 403 alike (a key unknown,
//! revoked, or from an address not on its list: told apart, they would tell a guesser
//! which keys exist), `UNAVAILABLE` (14) for the gateway's own 503, and
//! `RESOURCE_EXHAUSTED` (8) for too many refusals. No message, no body.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::Full;

const GRPC_STATUS: header::HeaderName = header::HeaderName::from_static("grpc-status");

/// True for a gRPC call. Looked at only on HTTP/2 (gRPC's transport), so an HTTP/1
/// refusal costs one comparison more.
pub fn called<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_2
        && req
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The gRPC status for an answer ipgate would give with `http_status`.
pub fn status_for(http_status: u16) -> &'static str {
    match http_status {
        401 => "16",
        403 => "7",
        429 => "8",
        503 => "14",
        _ => "13",
    }
}

/// The trailers-only answer standing for a refusal with `http_status`.
pub fn refusal(http_status: u16) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::OK;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(
        GRPC_STATUS,
        HeaderValue::from_static(status_for(http_status)),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_http2_grpc_call_is_one() {
        let call = |version, ct: &str| {
            Request::post("/a.B/C")
                .version(version)
                .header(header::CONTENT_TYPE, ct)
                .body(())
                .unwrap()
        };
        assert!(called(&call(Version::HTTP_2, "application/grpc")));
        assert!(called(&call(Version::HTTP_2, "application/grpc+proto")));
        assert!(!called(&call(Version::HTTP_2, "application/json")));
        assert!(!called(&call(Version::HTTP_11, "application/grpc")));
    }

    #[test]
    fn every_403_is_the_same_permission_denied() {
        assert_eq!(status_for(401), "16");
        assert_eq!(status_for(403), "7");
        assert_eq!(status_for(503), "14");
        assert_eq!(status_for(429), "8");
        let resp = refusal(403);
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["grpc-status"], "7");
        assert_eq!(resp.headers()["content-type"], "application/grpc");
        assert_eq!(resp.headers().len(), 2);
    }
}

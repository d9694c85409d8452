//! The whitelist's rules: addresses never change, the wildcard is the operator's,
//! entries are never deleted, bad input stores nothing, limits hold.

use crate::common::*;
use crate::helpers::*;
use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn an_entry_address_never_changes() {
    let (_up, gw) = setup().await;
    let holder = Holder::new(&gw, &["127.0.0.2"]).await;
    let item = holder.add("127.0.0.3", "ACTIVE").await;
    let before = holder.stored();

    for body in [
        json!({"ip": "127.0.0.4", "status": "INACTIVE"}),
        json!({"ip": "127.0.0.4", "status": "ACTIVE"}),
        json!({"ip": "::1", "status": "ACTIVE"}),
    ] {
        let r = holder
            .call(Method::PUT, &holder.entry(item), Some(body))
            .await;
        let says = assert_error(&r, StatusCode::BAD_REQUEST, "never changes");
        assert!(says.contains("INACTIVE"), "{says}");
        assert!(says.contains("add a new entry"), "{says}");
        assert!(says.contains("127.0.0.3"), "{says}");
    }
    assert_eq!(holder.stored(), before);
    assert_eq!(holder.probe("127.0.0.4").await, StatusCode::FORBIDDEN);

    // The same address, in either spelling, may accompany a status change.
    for (spelling, status) in [("127.0.0.3", "INACTIVE"), ("::ffff:127.0.0.3", "ACTIVE")] {
        let body = json!({"ip": spelling, "status": status});
        let r = holder
            .call(Method::PUT, &holder.entry(item), Some(body))
            .await;
        assert_eq!(created_id(&r), item);
        assert_eq!(holder.stored_entry("127.0.0.3"), (item, status.into()));
    }
    // A PUT must say which status.
    let r = holder
        .call(
            Method::PUT,
            &holder.entry(item),
            Some(json!({"ip": "127.0.0.3"})),
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "\"status\"");
}

#[tokio::test]
async fn the_wildcard_is_the_operators_alone() {
    let (_up, gw) = setup().await;
    let holder = Holder::new(&gw, &["127.0.0.2"]).await;
    let (item, _) = holder.stored_entry("127.0.0.2");
    let before = holder.stored();

    for (method, path, body) in [
        (Method::POST, holder.ips(), json!({"ip": "*"})),
        (
            Method::POST,
            holder.ips(),
            json!({"ip": " * ", "status": "ACTIVE"}),
        ),
        (
            Method::POST,
            holder.ips(),
            json!({"ip": "*", "status": "INACTIVE"}),
        ),
        (
            Method::PUT,
            holder.entry(item),
            json!({"ip": "*", "status": "ACTIVE"}),
        ),
    ] {
        let r = holder.call(method, &path, Some(body)).await;
        assert_error(&r, StatusCode::FORBIDDEN, "only be set by an operator");
    }
    assert_eq!(holder.stored(), before);
    assert_eq!(
        stored_credential(&gw, holder.user, holder.cred)["wildcard"],
        false
    );
    assert_eq!(holder.probe("127.0.0.7").await, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn entries_are_never_deleted() {
    let (_up, gw) = setup().await;
    let holder = Holder::new(&gw, &["127.0.0.2"]).await;
    let (item, _) = holder.stored_entry("127.0.0.2");
    let before = holder.stored();

    let r = holder.call(Method::DELETE, &holder.entry(item), None).await;
    assert_error(&r, StatusCode::METHOD_NOT_ALLOWED, "");
    assert_eq!(r.headers["allow"], "GET, HEAD, PUT");
    let r = holder.call(Method::DELETE, &holder.ips(), None).await;
    assert_error(&r, StatusCode::METHOD_NOT_ALLOWED, "");
    assert_eq!(r.headers["allow"], "GET, HEAD, POST");
    let r = holder
        .call(Method::DELETE, &holder.credential(), None)
        .await;
    assert_error(&r, StatusCode::METHOD_NOT_ALLOWED, "");
    assert_eq!(r.headers["allow"], "GET, HEAD");
    // An id that is no number keeps its route's shape: DELETE is 405, as documented
    // (deploy/openapi.yaml; found by schemathesis), and GET is 404.
    let malformed = holder.ips() + "/-1";
    let r = holder.call(Method::DELETE, &malformed, None).await;
    assert_error(&r, StatusCode::METHOD_NOT_ALLOWED, "");
    assert_eq!(r.headers["allow"], "GET, HEAD, PUT");
    let r = holder.call(Method::GET, &malformed, None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    assert_eq!(holder.stored(), before);
    assert_eq!(holder.probe("127.0.0.2").await, StatusCode::OK);
}

#[tokio::test]
async fn bad_input_is_refused_and_nothing_is_stored() {
    let (_up, gw) = setup_with(|s| s.set("limits.max_body_bytes", "1024")).await;
    let holder = Holder::new(&gw, &["127.0.0.2"]).await;
    let (item, _) = holder.stored_entry("127.0.0.2");
    let before = holder.stored();

    let padded = |n: usize| format!("{{\"ip\":\"127.0.0.5\"{}}}", " ".repeat(n));
    let oversized = padded(2000);
    let post_cases: Vec<(&[u8], &str)> = vec![
        (
            br#"{"ip":"127.0.0.256"}"#,
            "not a valid IPv4 or IPv6 address",
        ),
        (br#"{"ip":"bogus"}"#, "not a valid IPv4 or IPv6 address"),
        (br#"{"ip":""}"#, "not a valid IPv4 or IPv6 address"),
        (br#"{"ip":"127.0.0.0/24"}"#, "is a network"),
        (br#"{"ip":"2001:db8::/32"}"#, "is a network"),
        (
            br#"{"ip":"127.0.0.2"}"#,
            "already on this credential's list",
        ),
        (
            br#"{"ip":"::ffff:127.0.0.2"}"#,
            "already on this credential's list",
        ),
        (
            br#"{"ip":"127.0.0.5","status":"ENABLED"}"#,
            "Unknown status",
        ),
        (br#"{"ip":"127.0.0.5","status":"active"}"#, "Unknown status"),
        (br#"{"ip":"127.0.0.5""#, "Malformed request body"),
        (b"", "Malformed request body"),
        (br#"{"ip":5}"#, "Malformed request body"),
        (br#"{"status":"ACTIVE"}"#, "missing field `ip`"),
        (
            br#"{"ip":"127.0.0.5","stauts":"ACTIVE"}"#,
            "unknown field `stauts`",
        ),
        (br#"{"ip":"0.0.0.0"}"#, "the unspecified address"),
        (br#"{"ip":"::"}"#, "the unspecified address"),
        (br#"{"ip":"224.0.0.1"}"#, "a multicast address"),
        (br#"{"ip":"255.255.255.255"}"#, "the broadcast address"),
    ];
    for (body, says) in post_cases {
        let r = holder.raw(Method::POST, &holder.ips(), body).await;
        assert_error(&r, StatusCode::BAD_REQUEST, says);
        assert_eq!(holder.stored(), before, "after {says}");
    }
    // Too large is its own status (RFC 9110: 413), not a malformed body.
    let r = holder
        .raw(Method::POST, &holder.ips(), oversized.as_bytes())
        .await;
    assert_error(&r, StatusCode::PAYLOAD_TOO_LARGE, "larger than 1024 bytes");
    assert_eq!(holder.stored(), before);
    let put_cases: Vec<(&[u8], &str)> = vec![
        (br#"{"status":"DELETED"}"#, "Unknown status"),
        (br#"{"status":"INACTIVE""#, "Malformed request body"),
        (
            br#"{"status":"INACTIVE","note":"x"}"#,
            "unknown field `note`",
        ),
        (
            br#"{"ip":"127.0.0.0/8","status":"INACTIVE"}"#,
            "is a network",
        ),
        (br#"{}"#, "\"status\""),
    ];
    for (body, says) in put_cases {
        let r = holder.raw(Method::PUT, &holder.entry(item), body).await;
        assert_error(&r, StatusCode::BAD_REQUEST, says);
        assert_eq!(holder.stored(), before, "after {says}");
    }
    assert_eq!(holder.probe("127.0.0.5").await, StatusCode::FORBIDDEN);

    // The refusals were about the body, not the address: a well-formed one is taken.
    let r = holder
        .raw(Method::POST, &holder.ips(), padded(900).as_bytes())
        .await;
    created_id(&r);
    assert_eq!(holder.probe("127.0.0.5").await, StatusCode::OK);
}

#[tokio::test]
async fn writes_must_be_declared_json() {
    let (_up, gw) = setup().await;
    let holder = Holder::new(&gw, &["127.0.0.2"]).await;
    let (item, _) = holder.stored_entry("127.0.0.2");
    let before = holder.stored();
    let from = ip("127.0.0.2");
    let send = |method: Method, path: String, content_type: Option<&'static str>, body: &str| {
        let mut headers = vec![(KEY_HEADER, holder.key.as_str())];
        if let Some(t) = content_type {
            headers.push(("content-type", t));
        }
        let body = Bytes::from(body.to_owned());
        let to = gw.target(from);
        async move { send_raw(from, to, method, &path, &headers, body).await }
    };
    let add = r#"{"ip":"127.0.0.5"}"#;
    let put = r#"{"status":"INACTIVE"}"#;
    for declared in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("application/jsonp"),
        Some("application/json-patch+json"),
        Some("multipart/form-data; boundary=x"),
        Some(""),
    ] {
        let r = send(Method::POST, holder.ips(), declared, add).await;
        assert_error(&r, StatusCode::UNSUPPORTED_MEDIA_TYPE, "application/json");
        let r = send(Method::PUT, holder.entry(item), declared, put).await;
        assert_error(&r, StatusCode::UNSUPPORTED_MEDIA_TYPE, "application/json");
        assert_eq!(holder.stored(), before, "after {declared:?}");
    }
    // Registration is a write too.
    let (_, cred, key) = gw.new_key();
    let body = json!({"description": "d", "secret": key}).to_string();
    let r = send(
        Method::POST,
        "/v1/device-server".into(),
        Some("text/plain"),
        &body,
    )
    .await;
    assert_error(&r, StatusCode::UNSUPPORTED_MEDIA_TYPE, "application/json");
    assert_eq!(entries(&gw, cred), json!([]));

    // Parameters and case do not matter.
    let r = send(
        Method::POST,
        holder.ips(),
        Some("Application/JSON; charset=utf-8"),
        add,
    )
    .await;
    created_id(&r);
    let r = send(
        Method::PUT,
        holder.entry(item),
        Some("application/json"),
        put,
    )
    .await;
    created_id(&r);
}

#[tokio::test]
async fn active_entries_are_limited_per_credential() {
    let (_up, gw) = setup_with(|s| s.set("limits.max_ips_per_credential", "2")).await;
    let holder = Holder::new(&gw, &["127.0.0.2"]).await;
    let second = holder.add("127.0.0.3", "ACTIVE").await;
    let before = holder.stored();

    let r = holder
        .call(
            Method::POST,
            &holder.ips(),
            Some(json!({"ip": "127.0.0.4"})),
        )
        .await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "At most 2 ACTIVE permitted IPs",
    );
    assert_eq!(holder.stored(), before);
    assert_eq!(holder.probe("127.0.0.4").await, StatusCode::FORBIDDEN);

    // INACTIVE entries do not count, but turning one ACTIVE beyond the limit is refused.
    let parked = holder.add("127.0.0.4", "INACTIVE").await;
    let before = holder.stored();
    let r = holder.set_status(parked, "ACTIVE").await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "At most 2 ACTIVE permitted IPs",
    );
    assert_eq!(holder.stored(), before);
    assert_eq!(holder.probe("127.0.0.4").await, StatusCode::FORBIDDEN);

    // Retire one, then the parked one fits.
    assert_eq!(
        created_id(&holder.set_status(second, "INACTIVE").await),
        second
    );
    assert_eq!(
        created_id(&holder.set_status(parked, "ACTIVE").await),
        parked
    );
    assert_eq!(
        addresses(&holder.stored()),
        vec![
            ("127.0.0.2".into(), "ACTIVE".into()),
            ("127.0.0.3".into(), "INACTIVE".into()),
            ("127.0.0.4".into(), "ACTIVE".into()),
        ]
    );
    // Setting an ACTIVE entry ACTIVE again is no new entry: allowed at the limit.
    assert_eq!(
        created_id(&holder.set_status(parked, "ACTIVE").await),
        parked
    );
}

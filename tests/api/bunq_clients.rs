//! What bunq's own SDKs need from the API (issue 16): a body with no `Content-Type`
//! read as JSON, `X-Bunq-Client-Response-Id` on every answer and the caller's
//! `X-Bunq-Client-Request-Id` echoed; and a client that sends its body slowly holding
//! none of the API's store slots. The SDK itself runs in `tests/bunq_sdk.rs`.

use crate::common::*;
use crate::helpers::*;
use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const REQUEST_ID: &str = "x-bunq-client-request-id";
const RESPONSE_ID: &str = "x-bunq-client-response-id";

#[tokio::test]
async fn a_body_without_content_type_is_read_as_json() {
    let (_up, gw) = setup().await;
    let holder = Holder::new(&gw, &["127.0.0.2"]).await;
    let from = ip("127.0.0.2");
    // bunq's Python SDK posts `requests.request(data=bytes)`: no Content-Type at all.
    let send = |method: Method, path: String, body: String| {
        let headers = [(KEY_HEADER, holder.key.as_str())];
        let to = gw.target(from);
        async move { send_raw(from, to, method, &path, &headers, Bytes::from(body)).await }
    };
    let r = send(
        Method::POST,
        holder.ips(),
        json!({"ip": "127.0.0.5", "status": "ACTIVE"}).to_string(),
    )
    .await;
    let item = created_id(&r);
    assert_eq!(holder.probe("127.0.0.5").await, StatusCode::OK);
    let r = send(
        Method::PUT,
        holder.entry(item),
        json!({"status": "INACTIVE"}).to_string(),
    )
    .await;
    assert_eq!(created_id(&r), item);
    assert_eq!(holder.probe("127.0.0.5").await, StatusCode::FORBIDDEN);
    // Read as JSON means judged as JSON: a body that is none is still a 400.
    let r = send(Method::POST, holder.ips(), "ip=127.0.0.6".into()).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "Malformed");

    // The device registration, as the SDK's DeviceServerInternal.create sends it.
    let (_, cred, key) = gw.new_key();
    let body = json!({"description": "sdk", "secret": key, "permitted_ips": ["127.0.0.3"]});
    let r = send_raw(
        ip("127.0.0.3"),
        gw.target(ip("127.0.0.3")),
        Method::POST,
        "/v1/device-server",
        &[],
        Bytes::from(body.to_string()),
    )
    .await;
    assert_eq!(created_id(&r), cred);
}

/// The response id of an answer: present, one short visible-ASCII value; and the
/// request id echoed exactly when one sane value was sent.
#[track_caller]
fn bunq_ids(r: &Answer, sent: Option<&str>, ids: &mut BTreeSet<String>) {
    let mut response = r.headers.get_all(RESPONSE_ID).iter();
    let (Some(id), None) = (response.next(), response.next()) else {
        panic!("{} has no single {RESPONSE_ID}: {:?}", r.status, r.headers);
    };
    let id = id.to_str().unwrap().to_owned();
    assert!((1..=64).contains(&id.len()), "{id:?}");
    assert!(ids.insert(id.clone()), "response id {id} was given twice");
    let echoed: Vec<_> = r.headers.get_all(REQUEST_ID).iter().collect();
    match sent {
        Some(sent) => assert_eq!(echoed, [sent], "{}: request id not echoed", r.status),
        None => assert!(echoed.is_empty(), "{}: echoed {echoed:?}", r.status),
    }
}

#[tokio::test]
async fn every_answer_carries_a_response_id_and_echoes_the_request_id() {
    let (_up, gw) = setup().await;
    let holder = Holder::new(&gw, &["127.0.0.2"]).await;
    let other = Holder::new(&gw, &["127.0.0.4"]).await;
    let from = ip("127.0.0.2");
    let to = gw.target(from);
    let mut ids = BTreeSet::new();
    let rid = "0f8d2c4e-7b1a-4c3d-9e5f-a1b2c3d4e5f6";
    let key = holder.key.as_str();
    let json_body = |v: serde_json::Value| Bytes::from(v.to_string());
    let json_ct = ("content-type", "application/json");

    // 200: a list, one item, a created entry, a change, HEAD.
    let h = [(REQUEST_ID, rid), (KEY_HEADER, key)];
    let hj = [(REQUEST_ID, rid), (KEY_HEADER, key), json_ct];
    for path in [holder.credentials(), holder.credential(), holder.ips()] {
        let r = send_raw(from, to, Method::GET, &path, &h, Bytes::new()).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text());
        bunq_ids(&r, Some(rid), &mut ids);
        let r = send_raw(from, to, Method::HEAD, &path, &h, Bytes::new()).await;
        assert_eq!(r.status, StatusCode::OK, "HEAD {path}");
        bunq_ids(&r, Some(rid), &mut ids);
    }
    let r = send_raw(
        from,
        to,
        Method::POST,
        &holder.ips(),
        &hj,
        json_body(json!({"ip": "127.0.0.5"})),
    )
    .await;
    let item = created_id(&r);
    bunq_ids(&r, Some(rid), &mut ids);
    let r = send_raw(
        from,
        to,
        Method::PUT,
        &holder.entry(item),
        &hj,
        json_body(json!({"status": "INACTIVE"})),
    )
    .await;
    created_id(&r);
    bunq_ids(&r, Some(rid), &mut ids);
    // 400: a duplicate address.
    let r = send_raw(
        from,
        to,
        Method::POST,
        &holder.ips(),
        &hj,
        json_body(json!({"ip": "127.0.0.5"})),
    )
    .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "");
    bunq_ids(&r, Some(rid), &mut ids);
    // 401: no key.
    let r = send_raw(
        from,
        to,
        Method::GET,
        &holder.ips(),
        &[(REQUEST_ID, rid)],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    bunq_ids(&r, Some(rid), &mut ids);
    // 403: another user's data; a key from an address not on it; the wildcard.
    let r = send_raw(from, to, Method::GET, &other.ips(), &h, Bytes::new()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    bunq_ids(&r, Some(rid), &mut ids);
    let elsewhere = ip("127.0.0.9");
    let r = send_raw(
        elsewhere,
        gw.target(elsewhere),
        Method::GET,
        &holder.ips(),
        &h,
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    bunq_ids(&r, Some(rid), &mut ids);
    let r = send_raw(
        from,
        to,
        Method::POST,
        &holder.ips(),
        &hj,
        json_body(json!({"ip": "*"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    bunq_ids(&r, Some(rid), &mut ids);
    // 404: a missing entry; a path of this API that names no route.
    let r = send_raw(
        from,
        to,
        Method::GET,
        &holder.entry(999_999),
        &h,
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    bunq_ids(&r, Some(rid), &mut ids);
    let r = send_raw(
        from,
        to,
        Method::GET,
        "/v1/user/abc/credential-password-ip",
        &h,
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    bunq_ids(&r, Some(rid), &mut ids);
    // 405: no DELETE.
    let r = send_raw(
        from,
        to,
        Method::DELETE,
        &holder.entry(item),
        &h,
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    bunq_ids(&r, Some(rid), &mut ids);
    // 415: a declared non-JSON body.
    let r = send_raw(
        from,
        to,
        Method::POST,
        &holder.ips(),
        &[
            (REQUEST_ID, rid),
            (KEY_HEADER, key),
            ("content-type", "text/plain"),
        ],
        json_body(json!({"ip": "127.0.0.6"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    bunq_ids(&r, Some(rid), &mut ids);
    // The device registration: taken, and refused.
    let (_, cred, new_key) = gw.new_key();
    let reg = [(REQUEST_ID, rid), json_ct];
    let from3 = ip("127.0.0.3");
    let body = json_body(json!({"description": "d", "secret": new_key}));
    let r = send_raw(
        from3,
        gw.target(from3),
        Method::POST,
        "/v1/device-server",
        &reg,
        body.clone(),
    )
    .await;
    assert_eq!(created_id(&r), cred);
    bunq_ids(&r, Some(rid), &mut ids);
    let r = send_raw(
        from3,
        gw.target(from3),
        Method::POST,
        "/v1/device-server",
        &reg,
        body,
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    bunq_ids(&r, Some(rid), &mut ids);

    // A hostile request id is not echoed; the answer still has its response id.
    let long = "a".repeat(65);
    let hostile: [&[u8]; 5] = [
        long.as_bytes(),
        b"has space",
        b"quote\"",
        b"caf\xc3\xa9",
        b"",
    ];
    for sent in hostile {
        let mut req = format!(
            "GET {} HTTP/1.1\r\nhost: x\r\n{KEY_HEADER}: {key}\r\n{REQUEST_ID}: ",
            holder.ips()
        )
        .into_bytes();
        req.extend_from_slice(sent);
        req.extend_from_slice(b"\r\nconnection: close\r\n\r\n");
        let head = raw_head(from, to, &req).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(head.contains(&format!("{RESPONSE_ID}: ")), "{head}");
        assert!(!head.contains(REQUEST_ID), "{sent:?} was echoed: {head}");
    }
    // Two request ids are none.
    let two = [(REQUEST_ID, "a"), (REQUEST_ID, "b"), (KEY_HEADER, key)];
    let r = send_raw(from, to, Method::GET, &holder.ips(), &two, Bytes::new()).await;
    assert_eq!(r.status, StatusCode::OK);
    bunq_ids(&r, None, &mut ids);
    // No request id: none echoed, a response id all the same.
    let r = holder.get(&holder.ips()).await;
    bunq_ids(&r, None, &mut ids);
    // Proxied requests are the upstream's answers: no bunq ids added.
    let r = gw.get(from, "/probe", Some(key)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(!r.headers.contains_key(RESPONSE_ID));
}

/// Sends `request` as written and returns the answer's head (up to the blank line).
async fn raw_head(from: std::net::IpAddr, to: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = connect_from(from, to).await;
    stream.write_all(request).await.unwrap();
    read_head(&mut stream).await
}

async fn read_head(stream: &mut tokio::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert!(head.len() < 64 * 1024, "no end of head");
        let n = stream.read(&mut byte).await.unwrap();
        assert_eq!(n, 1, "closed after {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).to_ascii_lowercase()
}

#[tokio::test]
async fn a_slow_body_holds_no_store_slot() {
    let (_up, gw) = setup().await;
    let holder = Holder::new(&gw, &["127.0.0.2"]).await;
    let from = ip("127.0.0.2");
    // More writes than the API has store slots (API_STORE_SLOTS, 8), each stalled in its
    // body. `Expect: 100-continue` says when the gateway starts reading a body: hyper
    // sends `100 Continue` at the first read, so once every stalled write has its 100,
    // each is past whatever the API does before reading a body.
    let mut stalled = Vec::new();
    for _ in 0..10 {
        let mut stream = connect_from(from, gw.target(from)).await;
        let head = format!(
            "POST {} HTTP/1.1\r\nhost: x\r\n{KEY_HEADER}: {}\r\n\
             content-type: application/json\r\ncontent-length: 100\r\n\
             expect: 100-continue\r\n\r\n",
            holder.ips(),
            holder.key
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let continued = read_head(&mut stream).await;
        assert!(continued.starts_with("http/1.1 100"), "{continued}");
        stream.write_all(b"{").await.unwrap();
        stalled.push(stream);
    }
    // A store slot is waited for up to 5 s, then 503: an answer well inside that shows
    // no stalled body holds one.
    for path in [holder.ips(), holder.credentials()] {
        let r = tokio::time::timeout(Duration::from_secs(3), holder.get(&path))
            .await
            .unwrap_or_else(|_| panic!("GET {path} waited for a store slot"));
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }
    let r = tokio::time::timeout(
        Duration::from_secs(3),
        holder.call(
            Method::POST,
            &holder.ips(),
            Some(json!({"ip": "127.0.0.7"})),
        ),
    )
    .await
    .expect("a write waited for a store slot");
    created_id(&r);
    drop(stalled);
}

//! What the gateway logs. The access log: one line for every request on the public
//! listener (proxied, refused, management API calls, bad requests, refused
//! registrations), each with its method, path, route, reason, sizes and request id;
//! `X-Request-Id` kept or made, passed upstream and returned. The snapshot's lines: the
//! version they name is the one whose content they describe.

mod common;

use common::*;
use http::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Every access line logged so far, parsed.
fn access_lines(gw: &Gateway) -> Vec<Value> {
    gw.logs()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "ipgate::access")
        .collect()
}

/// The one access line of the request with this id (waits for it; fails on two).
async fn line_of(gw: &Gateway, id: &str) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let found: Vec<Value> = access_lines(gw)
            .into_iter()
            .filter(|v| v["request_id"] == id)
            .collect();
        match found.len() {
            1 => return found[0].clone(),
            0 => {}
            n => panic!("{n} access lines for request {id}: {found:#?}"),
        }
        assert!(Instant::now() < deadline, "no access line for request {id}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn assert_fields(line: &Value, want: Value) {
    for (k, v) in want.as_object().unwrap() {
        assert_eq!(&line[k], v, "{k} in {line:#}");
    }
}

#[tokio::test]
async fn every_request_has_one_access_line_and_an_id() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&Settings::new(&upstream.url()));
    gw.wait_ready().await;
    let (user, cred, key) = gw.registered_key(&["127.0.0.2"]).await;
    let from = ip("127.0.0.2");
    let paths = ApiPaths { user, cred };
    let send = |method: Method,
                path: String,
                id: &'static str,
                key: Option<String>,
                body: Option<Value>| {
        let gw = &gw;
        async move {
            let mut headers = vec![("x-request-id", id)];
            let key = key.unwrap_or_default();
            if !key.is_empty() {
                headers.push((KEY_HEADER, key.as_str()));
            }
            gw.send(from, method, &path, &headers, body).await
        }
    };

    // Allowed and forwarded: the id goes upstream and comes back; no query is logged.
    let r = send(
        Method::GET,
        "/probe?token=secret".into(),
        "t-allow",
        Some(key.clone()),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["x-request-id"], "t-allow");
    assert_eq!(r.echoed("x-request-id").unwrap(), ["t-allow"]);
    let line = line_of(&gw, "t-allow").await;
    assert_fields(
        &line,
        json!({"status": 200, "method": "GET", "path": "/probe", "route": "proxy",
               "decision": "allow", "reason": "ok", "credential_id": cred,
               "client_ip": "127.0.0.2"}),
    );
    assert!(
        !line.to_string().contains("secret"),
        "the query was logged: {line}"
    );
    assert!(line["latency_us"].is_u64());

    // A percent-encoded path is logged as sent, not encoded twice.
    let r = send(
        Method::GET,
        "/a%20b/c".into(),
        "t-pct",
        Some(key.clone()),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(line_of(&gw, "t-pct").await["path"], "/a%20b/c");

    // Refused on the hot path.
    let r = send(
        Method::GET,
        "/probe".into(),
        "t-deny",
        Some("ipg_nothing".into()),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.headers["x-request-id"], "t-deny");
    assert_fields(
        &line_of(&gw, "t-deny").await,
        json!({"status": 403, "route": "proxy", "decision": "deny", "reason": "unknown_key"}),
    );

    // A management API call, a HEAD, and an API 400: each names its operation and why.
    let r = send(Method::GET, paths.ips(), "t-api", Some(key.clone()), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_fields(
        &line_of(&gw, "t-api").await,
        json!({"status": 200, "route": "list_ips", "decision": "allow", "reason": "ok",
               "credential_id": cred, "bytes_out": r.body.len()}),
    );
    let r = send(Method::HEAD, paths.ips(), "t-head", Some(key.clone()), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_fields(
        &line_of(&gw, "t-head").await,
        json!({"status": 200, "method": "HEAD", "route": "list_ips", "bytes_out": 0}),
    );
    let bad = json!({"ip": "10.0.0.0/8"});
    let size = bad.to_string().len();
    let r = send(
        Method::POST,
        paths.ips(),
        "t-api-400",
        Some(key.clone()),
        Some(bad),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_fields(
        &line_of(&gw, "t-api-400").await,
        json!({"status": 400, "method": "POST", "route": "add_ip", "decision": "deny",
               "reason": "bad_input", "credential_id": cred, "bytes_in": size}),
    );
    // The right key from an address that is not ACTIVE on it.
    let headers = [(KEY_HEADER, key.as_str()), ("x-request-id", "t-api-403")];
    let r = gw
        .send(ip("127.0.0.9"), Method::GET, &paths.ips(), &headers, None)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_fields(
        &line_of(&gw, "t-api-403").await,
        json!({"status": 403, "reason": "ip_not_active", "credential_id": cred,
               "client_ip": "127.0.0.9"}),
    );

    // Refused registrations say why, which the answer never does.
    let again = json!({"description": "d", "secret": key});
    let r = send(
        Method::POST,
        "/v1/device-server".into(),
        "t-reg-again",
        None,
        Some(again),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_fields(
        &line_of(&gw, "t-reg-again").await,
        json!({"status": 400, "route": "device_server", "decision": "deny",
               "reason": "already_registered", "credential_id": cred}),
    );
    let unknown = json!({"description": "d", "secret": "ipg_unknown"});
    let r = send(
        Method::POST,
        "/v1/device-server".into(),
        "t-reg-unknown",
        None,
        Some(unknown),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let line = line_of(&gw, "t-reg-unknown").await;
    assert_fields(&line, json!({"status": 400, "reason": "unknown_key"}));
    assert!(line.get("credential_id").is_none());

    // Refused before routing (two Host lines), on a raw connection.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = connect_from(from, gw.target(from)).await;
        s.write_all(b"GET /x HTTP/1.1\r\nhost: a\r\nhost: b\r\nx-request-id: t-bad\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 400"));
    }
    assert_fields(
        &line_of(&gw, "t-bad").await,
        json!({"status": 400, "route": "none", "decision": "deny", "reason": "many_hosts"}),
    );

    // No id, or one not safe to log: a new one, the same everywhere.
    let too_long = "x".repeat(65);
    for sent in [None, Some("a b"), Some(too_long.as_str())] {
        let mut headers = vec![(KEY_HEADER, key.as_str())];
        if let Some(id) = sent {
            headers.push(("x-request-id", id));
        }
        let r = gw.send(from, Method::GET, "/probe", &headers, None).await;
        let id = r.headers["x-request-id"].to_str().unwrap().to_owned();
        assert_eq!(id.len(), 16, "{sent:?} -> {id}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(r.echoed("x-request-id").unwrap(), std::slice::from_ref(&id));
        line_of(&gw, &id).await;
    }

    // Every request observed once in the latency histogram, API calls included.
    let observed = gw.metric("ipgate_request_duration_seconds_count").await as usize;
    let deadline = Instant::now() + PATIENCE;
    while access_lines(&gw).len() < observed {
        assert!(
            Instant::now() < deadline,
            "fewer access lines than requests"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(access_lines(&gw).len(), observed, "one line per request");
}

#[tokio::test]
async fn a_request_whose_client_leaves_is_logged_as_cut() {
    use tokio::io::AsyncWriteExt;
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&Settings::new(&upstream.url()));
    gw.wait_ready().await;
    let (_, cred, key) = gw.registered_key(&["127.0.0.2"]).await;
    let from = ip("127.0.0.2");
    let before = upstream.received();
    let mut s = connect_from(from, gw.target(from)).await;
    let head = format!(
        "GET /slow HTTP/1.1\r\nhost: x\r\n{KEY_HEADER}: {key}\r\nx-request-id: t-gone\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    upstream.wait_received_beyond(before).await;
    drop(s);
    assert_fields(
        &line_of(&gw, "t-gone").await,
        json!({"status": 0, "path": "/slow", "decision": "allow", "credential_id": cred,
               "cut": "client_closed"}),
    );

    // A body declared far longer than what was sent before the client left: the line
    // does not claim the declared length arrived.
    let before = upstream.received();
    let mut s = connect_from(from, gw.target(from)).await;
    let head = format!(
        "POST /slow HTTP/1.1\r\nhost: x\r\n{KEY_HEADER}: {key}\r\nx-request-id: t-short\r\n\
         content-length: 20000000\r\n\r\n{}",
        "x".repeat(1000)
    );
    s.write_all(head.as_bytes()).await.unwrap();
    upstream.wait_received_beyond(before).await;
    drop(s);
    let line = line_of(&gw, "t-short").await;
    assert!(
        line["cut"].is_string() || line["reason"] == "client_body",
        "{line}"
    );
    assert!(line.get("bytes_in").is_none(), "{line}");
}

#[tokio::test]
async fn the_logged_snapshot_version_is_the_one_applied() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        &Settings::new(&upstream.url()).set("log.level", "\"info,ipgate::refresh=debug\""),
    );
    gw.wait_ready().await;
    // Versions: user 1, key 2, registration 3, then an entry through the API: 4.
    let (user, cred, key) = gw.registered_key(&["127.0.0.2"]).await;
    let paths = ApiPaths { user, cred };
    let r = gw
        .send(
            ip("127.0.0.2"),
            Method::POST,
            &paths.ips(),
            &[(KEY_HEADER, &key)],
            Some(json!({"ip": "127.0.0.3"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(gw.metric("ipgate_snapshot_version").await, 4.0);
    gw.wait_log("\"version\":4").await;
    let snapshots: Vec<Value> = gw
        .logs()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == "changes applied" || v["message"] == "snapshot loaded")
        .collect();
    assert!(!snapshots.is_empty());
    let mut last = 0;
    for s in &snapshots {
        let version = s["version"].as_u64().unwrap();
        if let Some(previous) = s["previous"].as_u64() {
            assert!(
                version > previous,
                "a new snapshot must name a new version: {s}"
            );
        }
        assert!(version >= last, "versions go forward: {s}");
        last = version;
        // The credential appears with the version that created it (2), never before.
        let credentials = s["credentials"].as_u64().unwrap();
        assert_eq!(credentials, u64::from(version >= 2), "{s}");
    }
    assert_eq!(last, 4);
}

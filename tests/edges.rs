//! Hostile and broken requests at the edge of the hot path, sent byte by byte on raw
//! sockets: malformed bodies, tunnels, ambiguous hosts, forwarding chains, and heads
//! that never finish.

mod common;

use common::*;
use http::{Method, StatusCode};
use tokio::io::AsyncWriteExt;

async fn setup(settings: impl FnOnce(Settings) -> Settings) -> (Upstream, Gateway, String) {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&settings(Settings::new(&upstream.url())));
    gw.wait_ready().await;
    let (_, _, key) = gw.registered_key(&["127.0.0.2"]).await;
    (upstream, gw, key)
}

/// The status line's code and the JSON body of a raw HTTP/1.1 answer.
fn parse_answer(raw: &str) -> (u16, serde_json::Value) {
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {raw:?}"));
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let json = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
    (status, json)
}

#[track_caller]
fn assert_bunq_error(raw: &str, status: u16) {
    let (got, body) = parse_answer(raw);
    assert_eq!(got, status, "{raw}");
    assert!(
        body["Error"][0]["error_description"].is_string(),
        "not a bunq error: {raw}"
    );
}

#[tokio::test]
async fn malformed_request_bodies_are_the_clients_fault() {
    let (_up, gw, key) = setup(|s| s).await;
    let from = ip("127.0.0.2");
    let head = |framing: &str| {
        format!("POST /upload HTTP/1.1\r\nhost: x\r\n{KEY_HEADER}: {key}\r\n{framing}\r\n\r\n")
    };
    let chunked = head("transfer-encoding: chunked");
    let cases: [(&str, Vec<u8>, bool); 3] = [
        (
            "bad chunk size",
            format!("{chunked}5zz\r\nhello\r\n0\r\n\r\n").into_bytes(),
            false,
        ),
        (
            "17 hex digits",
            format!("{chunked}10000000000000000\r\nhello\r\n0\r\n\r\n").into_bytes(),
            false,
        ),
        (
            "body ends early",
            format!("{}0123456789", head("content-length: 100")).into_bytes(),
            true,
        ),
    ];
    for (n, (what, bytes, half_close)) in cases.iter().enumerate() {
        let raw = exchange(from, gw.target(from), bytes, *half_close).await;
        assert_bunq_error(&raw, 400);
        assert!(
            raw.to_ascii_lowercase().contains("connection: close"),
            "{what}: {raw}"
        );
        gw.wait_metric("ipgate_client_errors_total{kind=\"body\"}", (n + 1) as f64)
            .await;
    }
    for kind in ["connect", "timeout", "protocol"] {
        let sample = format!("ipgate_upstream_errors_total{{kind=\"{kind}\"}}");
        assert_eq!(gw.metric(&sample).await, 0.0, "{sample}");
    }
    let blamed: Vec<String> = gw
        .logs()
        .into_iter()
        .filter(|l| l.contains("WARN") && l.contains("upstream request failed"))
        .collect();
    assert!(
        blamed.is_empty(),
        "a client's bad body was logged as the upstream's failure: {blamed:#?}"
    );
}

#[tokio::test]
async fn connect_and_authority_form_never_reach_the_upstream() {
    let (up, gw, key) = setup(|s| s).await;
    let from = ip("127.0.0.2");
    let before = up.received();
    let target = up.addr.to_string();
    for request in [
        format!("CONNECT {target} HTTP/1.1\r\nhost: {target}\r\n{KEY_HEADER}: {key}\r\n\r\n"),
        format!("GET {target} HTTP/1.1\r\nhost: {target}\r\n{KEY_HEADER}: {key}\r\n\r\n"),
    ] {
        let raw = exchange(from, gw.target(from), request.as_bytes(), false).await;
        assert_bunq_error(&raw, 400);
    }
    // An ordinary request afterwards reaches it: the upstream counts what arrives.
    assert_eq!(
        gw.get(from, "/after", Some(&key)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        up.received(),
        before + 1,
        "a tunnel request reached the upstream"
    );
    gw.wait_metric("ipgate_client_errors_total{kind=\"request\"}", 2.0)
        .await;
}

#[tokio::test]
async fn host_must_be_one_valid_line() {
    let (up, gw, key) = setup(|s| s).await;
    let from = ip("127.0.0.2");
    let before = up.received();
    for hosts in [
        "host: a.example\r\nhost: b.example\r\n",
        "host: a.example\r\nhost: a.example\r\n",
        "",
        "host: a b\r\n",
    ] {
        let request = format!("GET /h HTTP/1.1\r\n{hosts}{KEY_HEADER}: {key}\r\n\r\n");
        let raw = exchange(from, gw.target(from), request.as_bytes(), false).await;
        assert_bunq_error(&raw, 400);
    }
    assert_eq!(
        up.received(),
        before,
        "an ambiguous host reached the upstream"
    );
}

#[tokio::test]
async fn an_absolute_form_target_reaches_only_the_configured_upstream() {
    let (up, gw, key) = setup(|s| s).await;
    let from = ip("127.0.0.2");
    let before = up.received();
    let request = format!(
        "GET http://evil.example/steal?x=1 HTTP/1.1\r\nhost: other.example\r\n\
         {KEY_HEADER}: {key}\r\nconnection: close\r\n\r\n"
    );
    let raw = exchange(from, gw.target(from), request.as_bytes(), false).await;
    let (status, echo) = parse_answer(&raw);
    assert_eq!(status, 200, "{raw}");
    // The echo comes from our upstream: the only place the gateway sends anything.
    assert_eq!(echo["path"], "/steal?x=1", "{raw}");
    assert_eq!(up.received(), before + 1);
}

#[tokio::test]
async fn several_forwarded_for_lines_become_one_chain() {
    let (_up, gw, _) =
        setup(|s| s.set("client_ip.trusted_proxies", "[\"127.0.0.5\", \"10.1.1.1\"]")).await;
    let (_, _, key) = gw.registered_key(&["127.0.0.9"]).await;
    let r = gw
        .send(
            ip("127.0.0.5"),
            Method::GET,
            "/",
            &[
                (KEY_HEADER, &key),
                ("x-forwarded-for", "6.6.6.6, 127.0.0.9"),
                ("x-forwarded-for", "10.1.1.1"),
            ],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // Read as one list from the right, past the trusted 10.1.1.1; what the client
    // wrote to the left of itself (6.6.6.6) is not passed on as if verified.
    assert_eq!(
        r.echoed("x-forwarded-for"),
        Some(vec!["127.0.0.9, 10.1.1.1, 127.0.0.5".into()])
    );
    assert_eq!(
        r.echoed("x-ipgate-client-ip"),
        Some(vec!["127.0.0.9".into()])
    );
}

#[tokio::test]
async fn a_head_that_never_ends_is_closed_and_counted() {
    let (_up, gw, key) = {
        let upstream = Upstream::start().await;
        let gw = Gateway::start_with_env(
            &Settings::new(&upstream.url()).set("server.header_read_timeout", "\"300ms\""),
            &[("RUST_LOG", "info,ipgate=debug")],
        );
        gw.wait_ready().await;
        let (_, _, key) = gw.registered_key(&["127.0.0.2"]).await;
        (upstream, gw, key)
    };
    let from = ip("127.0.0.2");
    // Half a head: closed without an answer.
    let raw = exchange(
        from,
        gw.target(from),
        b"GET / HTTP/1.1\r\nhost: x\r\n",
        false,
    )
    .await;
    assert!(!raw.contains(" 200 "), "{raw}");
    gw.wait_metric("ipgate_client_errors_total{kind=\"header_timeout\"}", 1.0)
        .await;
    gw.wait_log("header read timeout").await;
    // Nothing at all: closed as well.
    exchange(from, gw.target(from), b"", false).await;
    gw.wait_metric("ipgate_client_errors_total{kind=\"header_timeout\"}", 2.0)
        .await;

    // A kept-alive connection that goes quiet after a request is closed too, and that
    // is no client error.
    let mut s = connect_from(from, gw.target(from)).await;
    let request = format!("GET /once HTTP/1.1\r\nhost: x\r\n{KEY_HEADER}: {key}\r\n\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    let raw = read_until_closed(&mut s).await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    let idle = "ipgate_idle_connections_closed_total";
    gw.wait_metric(idle, 1.0).await;
    assert_eq!(
        gw.metric("ipgate_client_errors_total{kind=\"header_timeout\"}")
            .await,
        2.0
    );
}

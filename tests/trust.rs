//! What the service behind believes: every header about the client's address, identity
//! or host that reaches the upstream is one ipgate wrote. Tried as a proxy-CVE hunter
//! would, against the echoing upstream, with a valid key from an allowed address.

mod common;

use bytes::Bytes;
use common::*;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::IpAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The upstream's JSON echo in a raw HTTP/1 answer.
fn echo_of(answer: &str) -> serde_json::Value {
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not an echo ({e}): {answer}"))
}

#[tokio::test]
async fn client_written_identity_headers_never_reach_the_upstream() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        &Settings::new(&upstream.url())
            .set("client_ip.trusted_proxies", "[\"127.0.0.5\"]")
            .set("upstream.send_forwarded", "true")
            .set("upstream.send_real_ip", "true"),
    );
    gw.wait_ready().await;
    let (user, cred, key) = gw.registered_key(&["127.0.0.2", "127.0.0.9"]).await;
    let spoofed = [
        ("forwarded", "for=10.0.0.1;proto=https;host=evil.example"),
        ("x-real-ip", "10.0.0.1"),
        ("true-client-ip", "10.0.0.1"),
        ("x-client-ip", "10.0.0.1"),
        ("cf-connecting-ip", "10.0.0.1"),
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-port", "8443"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-for", "10.0.0.1"),
        ("X_Ipgate_User_Id", "999"),
        ("x_forwarded_for", "10.0.0.1"),
        ("x-ipgate-user-id", "999"),
        ("x-ipgate-client-ip", "10.0.0.1"),
    ];
    let mut headers = vec![(KEY_HEADER, key.as_str())];
    headers.extend(spoofed);

    // Straight from the client: only the gateway's own, about the TCP peer.
    let r = gw
        .send(ip("127.0.0.2"), Method::GET, "/", &headers, None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let echoed = r.json()["headers"].clone();
    let names: Vec<&String> = echoed.as_object().unwrap().keys().collect();
    for gone in [
        "true-client-ip",
        "x-client-ip",
        "cf-connecting-ip",
        "x-forwarded-host",
        "x-forwarded-port",
        "x_ipgate_user_id",
        "x_forwarded_for",
    ] {
        assert!(
            !names.iter().any(|n| *n == gone),
            "{gone} reached the upstream: {names:?}"
        );
    }
    let one = |name: &str| r.echoed(name);
    assert_eq!(one("x-forwarded-for"), Some(vec!["127.0.0.2".into()]));
    assert_eq!(one("x-forwarded-proto"), Some(vec!["http".into()]));
    assert_eq!(one("x-real-ip"), Some(vec!["127.0.0.2".into()]));
    assert_eq!(one("x-ipgate-client-ip"), Some(vec!["127.0.0.2".into()]));
    assert_eq!(one("x-ipgate-user-id"), Some(vec![user.to_string()]));
    assert_eq!(one("x-ipgate-credential-id"), Some(vec![cred.to_string()]));
    assert_eq!(
        one("forwarded"),
        Some(vec!["for=127.0.0.2;proto=http".into()])
    );

    // Through a trusted proxy: its chain, without what the client wrote to its left.
    let r = gw
        .send(
            ip("127.0.0.5"),
            Method::GET,
            "/",
            &[
                (KEY_HEADER, &key),
                ("x-forwarded-for", "6.6.6.6, 127.0.0.9"),
                ("x-forwarded-proto", "https"),
                ("forwarded", "for=6.6.6.6"),
                ("x-real-ip", "6.6.6.6"),
            ],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        r.echoed("x-forwarded-for"),
        Some(vec!["127.0.0.9, 127.0.0.5".into()])
    );
    assert_eq!(r.echoed("x-forwarded-proto"), Some(vec!["https".into()]));
    assert_eq!(
        r.echoed("forwarded"),
        Some(vec!["for=127.0.0.9, for=127.0.0.5;proto=https".into()])
    );
    assert_eq!(r.echoed("x-real-ip"), Some(vec!["127.0.0.9".into()]));
}

#[tokio::test]
async fn one_host_rule_for_http_1_0_1_1_and_2() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&Settings::new(&upstream.url()));
    gw.wait_ready().await;
    let (_, _, key) = gw.registered_key(&["127.0.0.2"]).await;
    let from = ip("127.0.0.2");
    let before = upstream.received();

    // HTTP/1.0, absolute-form with userinfo and a port that is no number, no Host.
    let bad = format!("GET http://evil@api.internal:xyz/y HTTP/1.0\r\n{KEY_HEADER}: {key}\r\n\r\n");
    let answer = exchange(from, gw.target(from), bad.as_bytes(), false).await;
    assert!(
        answer.starts_with("HTTP/1.0 400") || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );
    // The same on HTTP/1.1, with a Host that looks fine.
    let bad = format!(
        "GET http://evil@api.internal/y HTTP/1.1\r\nhost: api.internal\r\n{KEY_HEADER}: {key}\r\n\r\n"
    );
    let answer = exchange(from, gw.target(from), bad.as_bytes(), false).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(
        upstream.received(),
        before,
        "the upstream saw a bad authority"
    );

    // `Connection: host` cannot take the Host away.
    let req = format!(
        "GET /c HTTP/1.1\r\nhost: a.example\r\nconnection: host, close\r\n{KEY_HEADER}: {key}\r\n\r\n"
    );
    let answer = exchange(from, gw.target(from), req.as_bytes(), false).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(echo_of(&answer)["headers"]["host"][0], "a.example");
    // An absolute-form target's authority wins over Host (RFC 9112 section 3.2.2).
    let req = format!(
        "GET http://b.example/c HTTP/1.1\r\nhost: a.example\r\nconnection: close\r\n{KEY_HEADER}: {key}\r\n\r\n"
    );
    let answer = exchange(from, gw.target(from), req.as_bytes(), false).await;
    assert_eq!(
        echo_of(&answer)["headers"]["host"][0],
        "b.example",
        "{answer}"
    );
    // HTTP/1.0 without any host: the upstream's own.
    let req = format!("GET /c HTTP/1.0\r\n{KEY_HEADER}: {key}\r\n\r\n");
    let answer = exchange(from, gw.target(from), req.as_bytes(), false).await;
    assert_eq!(
        echo_of(&answer)["headers"]["host"][0],
        upstream.addr.to_string().as_str(),
        "{answer}"
    );

    // HTTP/2: userinfo in :authority, and a Host that names another authority.
    let before = upstream.received();
    let h2 = |authority: &'static str, host: Option<&'static str>| {
        let key = key.clone();
        let to = gw.target(from);
        async move {
            let stream = connect_from(from, to).await;
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let mut req = Request::builder()
                .uri(format!("http://{authority}/h2"))
                .header(KEY_HEADER, key);
            if let Some(host) = host {
                req = req.header("host", host);
            }
            let req = req.body(Full::new(Bytes::new())).unwrap();
            collect(sender.send_request(req).await.unwrap()).await
        }
    };
    assert_eq!(
        h2("evil@api.internal", None).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        h2("a.example", Some("b.example")).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        upstream.received(),
        before,
        "the upstream saw a bad authority"
    );
    let ok = h2("a.example:8443", None).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    assert_eq!(ok.echoed("host"), Some(vec!["a.example:8443".into()]));
}

#[tokio::test]
async fn a_pinned_host_is_the_only_one_the_upstream_sees() {
    let upstream = Upstream::start().await;
    let gw =
        Gateway::start(&Settings::new(&upstream.url()).set("upstream.host", "\"api.internal\""));
    gw.wait_ready().await;
    let (_, _, key) = gw.registered_key(&["127.0.0.2"]).await;
    let r = gw.get(ip("127.0.0.2"), "/p", Some(&key)).await;
    assert_eq!(r.echoed("host"), Some(vec!["api.internal".into()]));
    let r = send_h2(ip("127.0.0.2"), gw.target(ip("127.0.0.2")), "/p", &key).await;
    assert_eq!(r.echoed("host"), Some(vec!["api.internal".into()]));
}

/// Sends `preamble` then one HTTP/1.1 request (with `extra` headers) on a connection
/// from `from`; `None` when the gateway closed it instead of answering.
async fn with_preamble(
    gw: &Gateway,
    from: IpAddr,
    preamble: &[u8],
    key: &str,
    extra: &str,
) -> Option<String> {
    let mut s = connect_from(from, gw.target(from)).await;
    let req = format!(
        "GET /pp HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{KEY_HEADER}: {key}\r\n{extra}\r\n"
    );
    if s.write_all(&[preamble, req.as_bytes()].concat())
        .await
        .is_err()
    {
        return None;
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, s.read_to_end(&mut out)).await;
    (!out.is_empty()).then(|| String::from_utf8_lossy(&out).into_owned())
}

const V2_LOCAL: &[u8] = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";
const V2_UNSPEC: &[u8] = b"\r\n\r\n\0\r\nQUIT\n\x21\x00\x00\x00";

#[tokio::test]
async fn proxy_headers_naming_no_client_are_refused_by_default() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        &Settings::new(&upstream.url())
            .set("server.proxy_protocol", "true")
            .set(
                "client_ip.trusted_proxies",
                "[\"127.0.0.5\", \"192.0.2.0/24\"]",
            ),
    );
    gw.wait_ready().await;
    let (_, cred, key) = gw.new_key();
    gw.admin(&["ip", "add", &cred.to_string(), "127.0.0.5"]);
    gw.admin(&["ip", "add", &cred.to_string(), "127.0.0.9"]);
    gw.admin(&["ip", "add", &cred.to_string(), "192.0.2.9"]);
    // The key must be ACTIVE: register it through the proxy for 192.0.2.9.
    let body = serde_json::json!({"description": "lb", "secret": key}).to_string();
    let reg = format!(
        "PROXY TCP4 192.0.2.9 127.0.0.1 40000 443\r\nPOST /v1/device-server HTTP/1.1\r\nhost: x\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let answer = exchange(
        ip("127.0.0.5"),
        gw.target(ip("127.0.0.5")),
        reg.as_bytes(),
        false,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let before = upstream.received();
    for preamble in [&b"PROXY UNKNOWN\r\n"[..], V2_LOCAL, V2_UNSPEC] {
        let got = with_preamble(&gw, ip("127.0.0.5"), preamble, &key, "").await;
        assert_eq!(got, None, "{preamble:?} was answered");
    }
    assert_eq!(upstream.received(), before);
    assert_eq!(gw.metric("ipgate_proxy_protocol_failures_total").await, 3.0);

    // A client the PROXY header names is judged by that address, even when it lies
    // inside trusted_proxies: its own X-Forwarded-For is never believed.
    let v1 = b"PROXY TCP4 192.0.2.9 127.0.0.1 40000 443\r\n";
    let plain = with_preamble(&gw, ip("127.0.0.5"), v1, &key, "")
        .await
        .unwrap();
    assert!(plain.starts_with("HTTP/1.1 200"), "{plain}");
    assert_eq!(
        echo_of(&plain)["headers"]["x-forwarded-for"][0],
        "192.0.2.9"
    );
    // Listed for the key: 127.0.0.9 would pass if the header were believed.
    let v1_other = b"PROXY TCP4 192.0.2.77 127.0.0.1 40000 443\r\n";
    let spoofing = with_preamble(
        &gw,
        ip("127.0.0.5"),
        v1_other,
        &key,
        "x-forwarded-for: 127.0.0.9\r\n",
    )
    .await
    .unwrap();
    assert!(spoofing.starts_with("HTTP/1.1 403"), "{spoofing}");

    // Anyone who can connect can be refused: ten more from an untrusted peer, and the
    // warning is still one line (with how many it left out when it is next written).
    for _ in 0..10 {
        assert_eq!(
            with_preamble(&gw, ip("127.0.0.6"), v1, &key, "").await,
            None
        );
    }
    gw.wait_metric("ipgate_proxy_protocol_failures_total", 13.0)
        .await;
    gw.wait_log("PROXY protocol connection refused").await;
    let warnings = gw
        .logs()
        .iter()
        .filter(|l| l.contains("PROXY protocol connection refused"))
        .count();
    assert_eq!(warnings, 1);
}

#[tokio::test]
async fn proxy_health_checks_are_answered_and_never_forwarded() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        &Settings::new(&upstream.url())
            .set("server.proxy_protocol", "true")
            .set("server.proxy_protocol_local", "\"health\"")
            .set("client_ip.trusted_proxies", "[\"127.0.0.5\"]"),
    );
    gw.wait_ready().await;
    // Never looked at: a health check is not authenticated.
    let key = "ipg_no_such_key";
    let before = upstream.received();
    for preamble in [&b"PROXY UNKNOWN\r\n"[..], V2_LOCAL] {
        let got = with_preamble(&gw, ip("127.0.0.5"), preamble, key, "")
            .await
            .expect("an answer");
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
        assert!(got.ends_with("ready\n"), "{got}");
    }
    assert_eq!(
        upstream.received(),
        before,
        "a health check reached the upstream"
    );
}

#[tokio::test]
async fn a_registration_cannot_store_control_characters() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&Settings::new(&upstream.url()));
    gw.wait_ready().await;
    let (_, cred, key) = gw.new_key();
    let forged = "laptop\n99\tACTIVE\u{1b}[2J";
    let body = serde_json::json!({"description": forged, "secret": key, "permitted_ips": ["*"]});
    let r = gw.register_device(ip("127.0.0.2"), body).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(r.text().contains("control characters"), "{}", r.text());
    // Nothing stored: the key is still pending, and may register with a plain text.
    let body = serde_json::json!({"description": "laptop", "secret": key, "permitted_ips": ["*"]});
    let r = gw.register_device(ip("127.0.0.2"), body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let listed = gw.admin(&["ip", "list", &cred.to_string()]);
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
}

#[tokio::test]
async fn management_paths_in_disguise_are_refused_not_forwarded() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&Settings::new(&upstream.url()));
    gw.wait_ready().await;
    let (user, cred, key) = gw.registered_key(&["127.0.0.2"]).await;
    let before = upstream.received();
    for path in [
        "//v1/device-server".to_string(),
        format!("/v1/./user/{user}/credential-password-ip"),
        format!("/v1/user/{user}/credential-password-ip;x/{cred}/ip"),
        "/v1%2Fdevice-server".to_string(),
        format!("/v1/user/{user}/x/../credential-password-ip"),
    ] {
        let req = format!(
            "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{KEY_HEADER}: {key}\r\n\r\n"
        );
        let answer = exchange(
            ip("127.0.0.2"),
            gw.target(ip("127.0.0.2")),
            req.as_bytes(),
            false,
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
    }
    assert_eq!(
        upstream.received(),
        before,
        "a disguised API path was forwarded"
    );
    // The upstream's own paths with the same bytes still pass.
    let r = gw
        .get(ip("127.0.0.2"), "/static/./a%20b;v=1", Some(&key))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

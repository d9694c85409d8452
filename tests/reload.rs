//! SIGHUP reloads the configuration: what may change applies to new requests (also on
//! connections already open), what may not is named and kept, a bad file changes
//! nothing. Every reload is counted by result.

mod common;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::time::{Duration, Instant};

/// An HTTP/1 connection from `from` that stays open across reloads.
async fn keep_alive(gw: &Gateway, from: &str) -> SendRequest<Full<Bytes>> {
    let stream = connect_from(ip(from), gw.target(ip(from))).await;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn get_on(sender: &mut SendRequest<Full<Bytes>>, headers: &[(&str, &str)]) -> Answer {
    let mut req = Request::builder()
        .uri("/reload")
        .header("host", "gateway.test");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::new())).unwrap();
    collect(sender.send_request(req).await.unwrap()).await
}

/// Rewrites the gateway's file, sends SIGHUP, and waits until the reload is counted.
async fn reload(gw: &Gateway, settings: &Settings, result: &str) {
    let sample = format!("ipgate_config_reloads_total{{result=\"{result}\"}}");
    let before = gw.metric(&sample).await;
    write_config(gw.dir.path(), settings);
    signal(gw.pid(), "HUP");
    gw.wait_metric(&sample, before + 1.0).await;
}

/// Waits until a log line contains every one of `needles`.
async fn wait_line(gw: &Gateway, needles: &[&str]) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(l) = gw
            .logs()
            .into_iter()
            .find(|l| needles.iter().all(|n| l.contains(n)))
        {
            return l;
        }
        assert!(Instant::now() < deadline, "no log line with {needles:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn sighup_applies_what_may_change_and_names_what_may_not() {
    let first = Upstream::start().await;
    let second = Upstream::start().await;
    let settings = Settings::new(&first.url());
    let gw = Gateway::start(&settings);
    gw.wait_ready().await;
    for result in ["ok", "error"] {
        let sample = format!("ipgate_config_reloads_total{{result=\"{result}\"}}");
        assert_eq!(
            gw.metric(&sample).await,
            0.0,
            "{sample} exists from the start"
        );
    }
    let (_, _, key) = gw.registered_key(&["127.0.0.2"]).await;
    let auth = [(KEY_HEADER, key.as_str())];

    // A connection from a proxy that is not trusted yet: its X-Forwarded-For is ignored.
    let mut via_proxy = keep_alive(&gw, "127.0.0.3").await;
    let forwarded = [(KEY_HEADER, key.as_str()), ("x-forwarded-for", "127.0.0.2")];
    assert_eq!(
        get_on(&mut via_proxy, &forwarded).await.status,
        StatusCode::FORBIDDEN
    );
    let mut client = keep_alive(&gw, "127.0.0.2").await;
    let before = (first.received(), second.received());
    assert_eq!(get_on(&mut client, &auth).await.status, StatusCode::OK);
    assert_eq!(
        (first.received(), second.received()),
        (before.0 + 1, before.1)
    );

    // Upstream, trusted proxies, log level and a key that cannot change at run time.
    let next = Settings::new(&second.url())
        .set("client_ip.trusted_proxies", "[\"127.0.0.3\"]")
        .set("log.level", "\"info,ipgate::access=off\"")
        .set("server.workers", "2");
    reload(&gw, &next, "ok").await;
    let warning = wait_line(&gw, &["WARN", "cannot change while running"]).await;
    assert!(warning.contains("server.workers"), "{warning}");

    // The same connections, new requests: the new upstream, the new trusted proxy.
    let before = (first.received(), second.received());
    let r = get_on(
        &mut client,
        &[(KEY_HEADER, &key), ("x-request-id", "t-silent")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        (first.received(), second.received()),
        (before.0, before.1 + 1),
        "a kept-alive connection goes to the new upstream"
    );
    assert_eq!(
        get_on(&mut via_proxy, &forwarded).await.status,
        StatusCode::OK
    );

    // A bad file: refused, logged with its problems (all of them in one line, for
    // line-based log shippers), and nothing changes.
    write_config(
        gw.dir.path(),
        &next
            .clone()
            .set("log.level", "\"inf\"")
            .set("refresh.interval", "\"soon\""),
    );
    let errors = gw
        .metric("ipgate_config_reloads_total{result=\"error\"}")
        .await;
    signal(gw.pid(), "HUP");
    gw.wait_metric(
        "ipgate_config_reloads_total{result=\"error\"}",
        errors + 1.0,
    )
    .await;
    let refused = wait_line(&gw, &["ERROR", "configuration reload refused"]).await;
    assert!(refused.contains("log.level"), "{refused}");
    let details = serde_json::from_str::<serde_json::Value>(&refused).unwrap()["details"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(details.contains("refresh.interval"), "{details}");
    assert!(!details.contains('\n'), "{details:?}");
    let before = second.received();
    assert_eq!(get_on(&mut client, &auth).await.status, StatusCode::OK);
    assert_eq!(second.received(), before + 1);

    // The access log comes back with the level; the request made while it was off
    // never had a line (lines arrive in order: one after it is there, so would it be).
    reload(&gw, &next.clone().set("log.level", "\"info\""), "ok").await;
    let r = get_on(
        &mut client,
        &[(KEY_HEADER, &key), ("x-request-id", "t-loud")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    gw.wait_log("\"request_id\":\"t-loud\"").await;
    assert!(!gw.logs().iter().any(|l| l.contains("t-silent")));

    // The key header: Authorization reads a bearer key from the next request on.
    reload(
        &gw,
        &next.clone().set("auth.header", "\"Authorization\""),
        "ok",
    )
    .await;
    let bearer = format!("Bearer {key}");
    assert_eq!(
        get_on(&mut client, &[("authorization", &bearer)])
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        get_on(&mut client, &auth).await.status,
        StatusCode::UNAUTHORIZED
    );
}

/// One request after a PROXY v1 header from `from`; the status line, or `None` when
/// the connection was closed unanswered.
async fn through_proxy(gw: &Gateway, from: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = connect_from(ip(from), gw.target(ip(from))).await;
    let req = "PROXY TCP4 192.0.2.9 127.0.0.1 40000 443\r\nGET / HTTP/1.1\r\nhost: x\r\n\
               connection: close\r\n\r\n";
    s.write_all(req.as_bytes()).await.ok()?;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    text.lines().next().map(str::to_owned)
}

#[tokio::test]
async fn a_reload_is_checked_whole_with_the_keys_it_cannot_change() {
    let upstream = Upstream::start().await;
    let settings = Settings::new(&upstream.url())
        .set("server.proxy_protocol", "true")
        .set("client_ip.trusted_proxies", "[\"127.0.0.5\"]")
        .set("refresh.interval", "\"5s\"");
    let gw = Gateway::start(&settings);
    gw.wait_ready().await;
    assert_eq!(
        through_proxy(&gw, "127.0.0.5").await.as_deref(),
        Some("HTTP/1.1 401 Unauthorized")
    );

    // Valid on its own (no PROXY protocol, so no trusted proxy is needed), but the
    // listener goes on reading PROXY headers: every connection would be refused.
    reload(&gw, &Settings::new(&upstream.url()), "error").await;
    let refused = wait_line(&gw, &["ERROR", "reload refused", "trusted_proxies"]).await;
    assert!(refused.contains("server.proxy_protocol"), "{refused}");
    assert_eq!(
        through_proxy(&gw, "127.0.0.5").await.as_deref(),
        Some("HTTP/1.1 401 Unauthorized"),
        "the running trust stays"
    );

    // A staleness longer than the file's own interval, but not than the one kept.
    let stale = settings
        .clone()
        .set("refresh.interval", "\"1s\"")
        .set("refresh.max_staleness", "\"2s\"");
    reload(&gw, &stale, "error").await;
    wait_line(&gw, &["ERROR", "refresh.max_staleness (2s)"]).await;
    assert_eq!(gw.admin_get("/readyz").await.0, StatusCode::OK);

    // Trust that widens applies, and says so with the old and new values.
    let wider = settings
        .clone()
        .set("client_ip.trusted_proxies", "[\"127.0.0.0/8\"]");
    reload(&gw, &wider, "ok").await;
    let warning = wait_line(&gw, &["WARN", "widened whom the gateway trusts"]).await;
    assert!(warning.contains("127.0.0.0/8"), "{warning}");
    assert!(warning.contains("127.0.0.5/32"), "{warning}");
    assert_eq!(
        through_proxy(&gw, "127.0.0.6").await.as_deref(),
        Some("HTTP/1.1 401 Unauthorized")
    );
}

//! The hot path, end to end: the real binary, a real upstream, clients from real
//! source addresses.

mod common;

use common::*;
use http::{Method, StatusCode};
use serde_json::json;
use std::time::{Duration, Instant};

async fn setup() -> (Upstream, Gateway) {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&Settings::new(&upstream.url()));
    gw.wait_ready().await;
    (upstream, gw)
}

#[tokio::test]
async fn allowed_from_active_address_refused_elsewhere() {
    let (_up, gw) = setup().await;
    let (user, cred, key) = gw.registered_key(&["127.0.0.2"]).await;

    let ok = gw.get(ip("127.0.0.2"), "/accounts?x=1", Some(&key)).await;
    assert_eq!(ok.status, StatusCode::OK);
    let echo = ok.json();
    assert_eq!(echo["path"], "/accounts?x=1");
    assert_eq!(
        ok.echoed("x-ipgate-credential-id"),
        Some(vec![cred.to_string()])
    );
    assert_eq!(ok.echoed("x-ipgate-user-id"), Some(vec![user.to_string()]));
    assert_eq!(ok.echoed("x-forwarded-for"), Some(vec!["127.0.0.2".into()]));
    assert_eq!(ok.echoed("x-forwarded-proto"), Some(vec!["http".into()]));
    assert_eq!(ok.echoed(KEY_HEADER), None, "the key is not forwarded");
    assert_eq!(ok.headers["x-from-upstream"], "yes");
    assert!(
        ok.headers.get("connection").is_none(),
        "hop-by-hop header passed back"
    );

    let other = gw.get(ip("127.0.0.3"), "/accounts", Some(&key)).await;
    assert_eq!(other.status, StatusCode::FORBIDDEN);
    let v6 = gw.get(ip("::1"), "/accounts", Some(&key)).await;
    assert_eq!(v6.status, StatusCode::FORBIDDEN);
    assert_eq!(
        gw.metric("ipgate_requests_total{decision=\"deny\",reason=\"ip_not_active\"}")
            .await,
        2.0
    );
    assert_eq!(gw.metric("ipgate_key_from_unlisted_ip_total").await, 2.0);
    // The operator can tell which credential leaked from the access log (written by a
    // background thread: wait for it).
    gw.wait_log("ip_not_active").await;
    let leak = gw
        .logs()
        .into_iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
        .find(|v| v["reason"] == "ip_not_active")
        .expect("an access log line for the refusal");
    assert_eq!(leak["credential_id"], cred);
    assert_eq!(leak["client_ip"], "127.0.0.3");
    assert_eq!(leak["status"], 403);
}

#[tokio::test]
async fn client_cannot_forge_identity_or_hop_headers() {
    let (_up, gw) = setup().await;
    let (user, cred, key) = gw.registered_key(&["127.0.0.2"]).await;
    let r = gw
        .send(
            ip("127.0.0.2"),
            Method::POST,
            "/upload",
            &[
                (KEY_HEADER, &key),
                ("x-ipgate-user-id", "999"),
                ("x-ipgate-credential-id", "999"),
                ("x-ipgate-client-ip", "10.9.9.9"),
                ("x-forwarded-for", "10.9.9.9"),
                ("connection", "x-drop-me"),
                ("x-drop-me", "1"),
                ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ],
            Some(json!({"hello": "world"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.echoed("x-ipgate-user-id"), Some(vec![user.to_string()]));
    assert_eq!(
        r.echoed("x-ipgate-credential-id"),
        Some(vec![cred.to_string()])
    );
    assert_eq!(
        r.echoed("x-ipgate-client-ip"),
        Some(vec!["127.0.0.2".into()])
    );
    assert_eq!(r.echoed("x-forwarded-for"), Some(vec!["127.0.0.2".into()]));
    assert_eq!(r.echoed("x-drop-me"), None);
    assert_eq!(r.echoed("proxy-authorization"), None);
    assert_eq!(r.json()["method"], "POST");
    assert_eq!(r.json()["body"], "{\"hello\":\"world\"}");
}

#[tokio::test]
async fn every_key_refusal_looks_the_same() {
    let upstream = Upstream::start().await;
    let gw =
        Gateway::start(&Settings::new(&upstream.url()).set("auth.registration_window", "\"2s\""));
    gw.wait_ready().await;
    let created = Instant::now();
    let (_, _, expired) = gw.new_key();
    let (_, revoked_cred, revoked) = gw.registered_key(&["127.0.0.2"]).await;
    let (_, inactive_cred, inactive) = gw.registered_key(&["127.0.0.2"]).await;
    let (_, _, unlisted) = gw.registered_key(&["127.0.0.4"]).await;

    gw.admin(&["credential", "revoke", &revoked_cred.to_string()]);
    let entries = gw.admin(&["ip", "list", &inactive_cred.to_string()]);
    let item = entries[0]["id"].as_u64().unwrap().to_string();
    gw.admin(&[
        "ip",
        "set-status",
        &inactive_cred.to_string(),
        &item,
        "INACTIVE",
    ]);
    gw.wait_for_status(ip("127.0.0.2"), &revoked, StatusCode::FORBIDDEN)
        .await;
    gw.wait_for_status(ip("127.0.0.2"), &inactive, StatusCode::FORBIDDEN)
        .await;
    // The registration window is 2 s: let it pass for the first key.
    tokio::time::sleep(
        (created + Duration::from_millis(2100)).saturating_duration_since(Instant::now()),
    )
    .await;
    // A key still inside its window, created after the first one lapsed.
    let (_, _, pending) = gw.new_key();
    gw.wait_metric("ipgate_snapshot_credentials", 5.0).await;

    let from = ip("127.0.0.2");
    let unknown = "ipg_0000000000000000000000000000000000000000000000000000000000000000";
    let mut bodies = Vec::new();
    for (what, key) in [
        ("unknown", unknown),
        ("expired", expired.as_str()),
        ("pending", pending.as_str()),
        ("revoked", revoked.as_str()),
        ("inactive", inactive.as_str()),
        ("unlisted", unlisted.as_str()),
    ] {
        let r = gw.get(from, "/x", Some(key)).await;
        bodies.push((what, r.status, r.body));
    }
    for (what, status, body) in &bodies {
        assert_eq!(*status, StatusCode::FORBIDDEN, "{what}");
        assert_eq!(body, &bodies[0].2, "{what} body differs from unknown key's");
    }
    let v: serde_json::Value = serde_json::from_slice(&bodies[0].2).unwrap();
    assert!(v["Error"][0]["error_description"].is_string());
    assert!(v["Error"][0]["error_description_translated"].is_string());

    for reason in [
        "unknown_key",
        "expired_key",
        "pending_key",
        "revoked_key",
        "ip_not_active",
    ] {
        let sample = format!("ipgate_requests_total{{decision=\"deny\",reason=\"{reason}\"}}");
        assert!(gw.metric(&sample).await >= 1.0, "{reason} not counted");
    }
}

#[tokio::test]
async fn missing_key_is_401_and_wildcard_admits_everyone() {
    let (_up, gw) = setup().await;
    let r = gw.get(ip("127.0.0.2"), "/", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.json()["Error"][0]["error_description"],
        "Missing authentication token."
    );

    let (_, cred, key) = gw.registered_key(&["127.0.0.2"]).await;
    // Two key headers, even the right key twice: refused, and told why.
    let two = [(KEY_HEADER, key.as_str()), (KEY_HEADER, key.as_str())];
    let r = gw.send(ip("127.0.0.2"), Method::GET, "/", &two, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(
        r.json()["Error"][0]["error_description"]
            .as_str()
            .unwrap()
            .starts_with("More than one authentication token"),
        "{}",
        r.text()
    );
    gw.wait_metric(
        "ipgate_requests_total{decision=\"deny\",reason=\"many_keys\"}",
        1.0,
    )
    .await;
    assert_eq!(
        gw.get(ip("127.0.0.7"), "/", Some(&key)).await.status,
        StatusCode::FORBIDDEN
    );
    gw.admin(&["wildcard", "set", &cred.to_string()]);
    gw.wait_until_allowed(ip("127.0.0.7"), &key).await;
    assert_eq!(
        gw.get(ip("::1"), "/", Some(&key)).await.status,
        StatusCode::OK
    );
    gw.admin(&["wildcard", "clear", &cred.to_string()]);
    gw.wait_for_status(ip("127.0.0.7"), &key, StatusCode::FORBIDDEN)
        .await;
    assert_eq!(
        gw.get(ip("127.0.0.2"), "/", Some(&key)).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn ipv6_and_ipv4_mapped_addresses() {
    let (_up, gw) = setup().await;
    let (_, cred, key) = gw.registered_key(&["::1"]).await;
    assert_eq!(
        gw.get(ip("::1"), "/", Some(&key)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        gw.get(ip("127.0.0.1"), "/", Some(&key)).await.status,
        StatusCode::FORBIDDEN
    );

    // Stored as IPv4 whatever the spelling; IPv4 clients reach a dual-stack listener as
    // ::ffff:127.0.0.3 and still match.
    let added = gw.admin(&["ip", "add", &cred.to_string(), "::ffff:127.0.0.3"]);
    assert_eq!(added["ip"], "127.0.0.3");
    gw.wait_until_allowed(ip("127.0.0.3"), &key).await;
    let dup = gw.admin_raw(&["ip", "add", &cred.to_string(), "127.0.0.3"]);
    assert!(!dup.status.success(), "a duplicate address was accepted");
}

#[tokio::test]
async fn forwarding_headers_count_only_from_trusted_proxies() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        &Settings::new(&upstream.url()).set("client_ip.trusted_proxies", "[\"127.0.0.5/32\"]"),
    );
    gw.wait_ready().await;
    let (_, _, key) = gw.registered_key(&["127.0.0.9"]).await;
    let via = |from: &'static str, xff: &'static str| {
        let gw = &gw;
        let key = key.clone();
        async move {
            gw.send(
                ip(from),
                Method::GET,
                "/",
                &[(KEY_HEADER, &key), ("x-forwarded-for", xff)],
                None,
            )
            .await
        }
    };
    // From the trusted proxy: the rightmost untrusted hop is the client, and the chain
    // the upstream gets starts there (6.6.6.6 is the client's own writing).
    let r = via("127.0.0.5", "6.6.6.6, 127.0.0.9").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.echoed("x-forwarded-for"),
        Some(vec!["127.0.0.9, 127.0.0.5".into()])
    );
    assert_eq!(
        r.echoed("x-ipgate-client-ip"),
        Some(vec!["127.0.0.9".into()])
    );
    // A client spoofing the header is judged by its own address.
    assert_eq!(via("127.0.0.9", "127.0.0.9").await.status, StatusCode::OK);
    assert_eq!(
        via("127.0.0.6", "127.0.0.9").await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        via("127.0.0.5", "127.0.0.9, 10.0.0.1").await.status,
        StatusCode::FORBIDDEN
    );
    // Garbage from the trusted proxy fails closed.
    assert_eq!(
        via("127.0.0.5", "not-an-ip").await.status,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn rfc7239_forwarded_header() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        &Settings::new(&upstream.url())
            .set("client_ip.trusted_proxies", "[\"127.0.0.5\"]")
            .set("client_ip.header", "\"forwarded\""),
    );
    gw.wait_ready().await;
    let (_, _, key) = gw.registered_key(&["::1"]).await;
    let r = gw
        .send(
            ip("127.0.0.5"),
            Method::GET,
            "/",
            &[
                (KEY_HEADER, &key),
                ("forwarded", "for=\"[::1]:4711\";proto=https"),
            ],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = gw
        .send(
            ip("127.0.0.5"),
            Method::GET,
            "/",
            &[(KEY_HEADER, &key), ("x-forwarded-for", "::1")],
            None,
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "x-forwarded-for is not the configured header"
    );
}

#[tokio::test]
async fn admin_changes_in_another_process_are_picked_up() {
    let (_up, gw) = setup().await;
    let (_, cred, key) = gw.registered_key(&["127.0.0.2"]).await;
    assert_eq!(
        gw.get(ip("127.0.0.3"), "/", Some(&key)).await.status,
        StatusCode::FORBIDDEN
    );
    let item = gw.admin(&["ip", "add", &cred.to_string(), "127.0.0.3"])["id"]
        .as_u64()
        .unwrap();
    // Polling alone brings it in (within PATIENCE; how soon is a loaded machine's call).
    gw.wait_until_allowed(ip("127.0.0.3"), &key).await;
    gw.admin(&[
        "ip",
        "set-status",
        &cred.to_string(),
        &item.to_string(),
        "INACTIVE",
    ]);
    gw.wait_for_status(ip("127.0.0.3"), &key, StatusCode::FORBIDDEN)
        .await;
    gw.admin(&["credential", "revoke", &cred.to_string()]);
    gw.wait_for_status(ip("127.0.0.2"), &key, StatusCode::FORBIDDEN)
        .await;
}

#[tokio::test]
async fn last_good_snapshot_while_the_store_is_unreadable() {
    let (_up, gw) = setup().await;
    let (_, _, key) = gw.registered_key(&["127.0.0.2"]).await;
    let db = gw.dir.path().join("ipgate.db");
    let away = gw.dir.path().join("moved.db");
    let errors_before = gw.metric("ipgate_refresh_total{result=\"error\"}").await;
    std::fs::rename(&db, &away).unwrap();

    gw.wait_metric(
        "ipgate_refresh_total{result=\"error\"}",
        errors_before + 2.0,
    )
    .await;
    assert_eq!(
        gw.get(ip("127.0.0.2"), "/", Some(&key)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        gw.get(ip("127.0.0.3"), "/", Some(&key)).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(gw.admin_get("/readyz").await.0, StatusCode::OK);
    gw.wait_log("keeping the last good snapshot").await;

    std::fs::rename(&away, &db).unwrap();
    let unchanged = "ipgate_refresh_total{result=\"unchanged\"}";
    let before = gw.metric(unchanged).await;
    gw.wait_metric(unchanged, before + 1.0).await;
}

#[tokio::test]
async fn unavailable_before_first_load_and_past_max_staleness() {
    let upstream = Upstream::start().await;
    // The store's file is no database yet: the first load cannot happen. (A folder
    // that does not exist is refused at start, see tests/cli.rs.)
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("later")).unwrap();
    let db = dir.path().join("later/ipgate.db");
    std::fs::write(&db, vec![b'x'; 4096]).unwrap();
    let gw = Gateway::start_in(
        dir,
        &Settings::new(&upstream.url())
            .set("store.url", "\"sqlite://later/ipgate.db\"")
            .set("refresh.max_staleness", "\"400ms\""),
        &[],
    );
    let r = gw.get(ip("127.0.0.2"), "/", Some("ipg_whatever")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.json()["Error"][0]["error_description"].is_string());
    assert_eq!(
        gw.get(ip("127.0.0.2"), "/", None).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        gw.admin_get("/readyz").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(gw.admin_get("/livez").await.0, StatusCode::OK);

    std::fs::remove_file(&db).unwrap();
    gw.wait_ready().await;
    let (_, _, key) = gw.registered_key(&["127.0.0.2"]).await;

    let away = gw.dir.path().join("later/moved.db");
    std::fs::rename(&db, &away).unwrap();
    gw.wait_for_status(ip("127.0.0.2"), &key, StatusCode::SERVICE_UNAVAILABLE)
        .await;
    assert!(gw.metric("ipgate_snapshot_age_seconds").await > 0.4);
    std::fs::rename(&away, &db).unwrap();
    gw.wait_until_allowed(ip("127.0.0.2"), &key).await;
}

#[tokio::test]
async fn upstream_down_is_502_and_slow_is_504() {
    let down = closed_port().await;
    let gw = Gateway::start(&Settings::new(&format!("http://{down}")));
    gw.wait_ready().await;
    let (_, cred, key) = gw.new_key();
    // Register through the API (answered by the gateway itself, not the upstream).
    let body = json!({"description": "d", "secret": key});
    let r = gw.register_device(ip("127.0.0.2"), body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = gw.get(ip("127.0.0.2"), "/", Some(&key)).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert!(r.json()["Error"][0]["error_description"].is_string());
    assert_eq!(
        gw.metric("ipgate_upstream_errors_total{kind=\"connect\"}")
            .await,
        1.0
    );
    let _ = cred;

    let upstream = Upstream::start().await;
    let slow = Gateway::start(&Settings::new(&upstream.url()).set("upstream.timeout", "\"300ms\""));
    slow.wait_ready().await;
    let (_, _, key) = slow.registered_key(&["127.0.0.2"]).await;
    let r = slow.get(ip("127.0.0.2"), "/slow", Some(&key)).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        slow.metric("ipgate_upstream_errors_total{kind=\"timeout\"}")
            .await,
        1.0
    );
    // Both failures are warnings, each naming its kind; the access lines say why too.
    for (gw, kind) in [(&gw, "connect"), (&slow, "timeout")] {
        gw.wait_log(&format!("\"kind\":\"{kind}\"")).await;
        let warned = gw.logs().iter().any(|l| {
            l.contains("\"level\":\"WARN\"") && l.contains(&format!("\"kind\":\"{kind}\""))
        });
        assert!(warned, "no warning for the {kind} failure");
        gw.wait_log(&format!("\"reason\":\"upstream_{kind}\""))
            .await;
    }
}

/// The upstream's answer on a kept-alive client connection is timed by the connection's
/// watchdog: the 504 comes no earlier than `upstream.timeout` (and before `/slow`'s
/// answer at 2 s), and the same client connection then gets its next answer on a new
/// upstream connection.
#[tokio::test]
async fn an_upstream_timeout_leaves_the_client_connection_usable() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&Settings::new(&upstream.url()).set("upstream.timeout", "\"700ms\""));
    gw.wait_ready().await;
    let from = ip("127.0.0.2");
    let (_, _, key) = gw.registered_key(&["127.0.0.2"]).await;
    let stream = connect_from(from, gw.target(from)).await;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let get = |path: &str| {
        http::Request::get(path)
            .header("host", "gateway.test")
            .header(KEY_HEADER, key.as_str())
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap()
    };
    let r = collect(sender.send_request(get("/first")).await.unwrap()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let started = Instant::now();
    let r = collect(sender.send_request(get("/slow")).await.unwrap()).await;
    let took = started.elapsed();
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{}", r.text());
    assert!(
        took >= Duration::from_millis(700),
        "answered early: {took:?}"
    );
    sender.ready().await.unwrap();
    let r = collect(sender.send_request(get("/after")).await.unwrap()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["path"], "/after");
    assert_eq!(
        gw.metric("ipgate_upstream_errors_total{kind=\"timeout\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn http2_clients_are_served() {
    let (_up, gw) = setup().await;
    let (_, cred, key) = gw.registered_key(&["127.0.0.2"]).await;
    let r = send_h2(ip("127.0.0.2"), gw.target(ip("127.0.0.2")), "/h2?q=1", &key).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["path"], "/h2?q=1");
    assert_eq!(
        r.echoed("x-ipgate-credential-id"),
        Some(vec![cred.to_string()])
    );
    assert_eq!(r.echoed("host"), Some(vec!["gateway.test".into()]));
    let r = send_h2(ip("127.0.0.3"), gw.target(ip("127.0.0.3")), "/", &key).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn bearer_header_when_configured() {
    let upstream = Upstream::start().await;
    let gw =
        Gateway::start(&Settings::new(&upstream.url()).set("auth.header", "\"Authorization\""));
    gw.wait_ready().await;
    let (_, _, key) = gw.new_key();
    let body = json!({"description": "d", "secret": key, "permitted_ips": ["127.0.0.2"]});
    let r = gw.register_device(ip("127.0.0.2"), body).await;
    assert_eq!(r.status, StatusCode::OK);
    let bearer = format!("Bearer {key}");
    let r = gw
        .send(
            ip("127.0.0.2"),
            Method::GET,
            "/",
            &[("authorization", &bearer)],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.echoed("authorization"), None);
    let r = gw
        .send(
            ip("127.0.0.2"),
            Method::GET,
            "/",
            &[(KEY_HEADER, &key)],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn no_key_in_any_log_line() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start_with_env(&Settings::new(&upstream.url()), &[("RUST_LOG", "trace")]);
    gw.wait_ready().await;
    let (user, cred, key) = gw.registered_key(&["127.0.0.2"]).await;
    let (_, _, stranger) = gw.new_key();
    gw.get(ip("127.0.0.2"), "/", Some(&key)).await;
    gw.get(ip("127.0.0.3"), "/", Some(&key)).await;
    gw.get(ip("127.0.0.2"), "/", Some(&stranger)).await;
    send_h2(ip("127.0.0.2"), gw.target(ip("127.0.0.2")), "/", &key).await;
    let path = format!("/v1/user/{user}/credential-password-ip/{cred}/ip");
    gw.send(
        ip("127.0.0.2"),
        Method::POST,
        &path,
        &[(KEY_HEADER, &key)],
        Some(json!({"ip": "127.0.0.8"})),
    )
    .await;
    let body = json!({"description": "again", "secret": stranger, "permitted_ips": ["bogus"]});
    gw.send(
        ip("127.0.0.2"),
        Method::POST,
        "/v1/device-server",
        &[],
        Some(body),
    )
    .await;

    // Lines are written in order by one thread: once a line logged after every request
    // above has arrived, so has everything they logged.
    signal(gw.pid(), "HUP");
    gw.wait_log("configuration reloaded").await;
    let logs = gw.logs();
    assert!(
        logs.len() > 20,
        "expected trace output, got {} lines",
        logs.len()
    );
    assert!(
        logs.iter().any(|l| l.contains("ipgate::access")),
        "no access log"
    );
    for secret in [&key, &stranger] {
        // The whole key, and any long piece of it.
        let piece = &secret[4..24];
        for line in &logs {
            assert!(!line.contains(piece), "a key leaked into the log: {line}");
        }
    }
}

/// An upstream that answers one request per connection and then hangs up without
/// saying so (no `Connection: close`), as servers with short keep-alive timeouts do.
async fn one_shot_upstream() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn upstream_hanging_up_between_requests_costs_no_request() {
    let upstream = one_shot_upstream().await;
    let gw = Gateway::start(&Settings::new(&format!("http://{upstream}")));
    gw.wait_ready().await;
    let (_, _, key) = gw.new_key();
    let body = json!({"description": "d", "secret": key});
    let r = gw.register_device(ip("127.0.0.2"), body).await;
    assert_eq!(r.status, StatusCode::OK);
    gw.wait_until_allowed(ip("127.0.0.2"), &key).await;

    // One client connection, many requests: each finds its upstream connection gone.
    let stream = connect_from(ip("127.0.0.2"), gw.target(ip("127.0.0.2"))).await;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    for i in 0..30 {
        let req = http::Request::builder()
            .uri(format!("/n/{i}"))
            .header("host", "x")
            .header(KEY_HEADER, &key)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let r = collect(sender.send_request(req).await.unwrap()).await;
        assert_eq!(r.status, StatusCode::OK, "request {i}: {}", r.text());
        assert_eq!(r.body, "ok");
    }
}

/// Sends `preamble` then one HTTP/1.1 request on a connection from `from`.
async fn with_preamble(
    gw: &Gateway,
    from: std::net::IpAddr,
    preamble: &[u8],
    key: &str,
) -> Option<Answer> {
    use tokio::io::AsyncWriteExt;
    let mut stream = connect_from(from, gw.target(from)).await;
    stream.write_all(preamble).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri("/pp")
        .header("host", "x")
        .header(KEY_HEADER, key)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    Some(collect(sender.send_request(req).await.ok()?).await)
}

#[tokio::test]
async fn proxy_protocol_from_trusted_proxies_only() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        &Settings::new(&upstream.url())
            .set("server.proxy_protocol", "true")
            .set("client_ip.trusted_proxies", "[\"127.0.0.5\"]"),
    );
    gw.wait_ready().await;
    let (_, cred, key) = gw.new_key();
    gw.admin(&["ip", "add", &cred.to_string(), "192.0.2.9"]);
    gw.admin(&["ip", "add", &cred.to_string(), "2001:db8::9"]);
    // Registration itself arrives through the proxy, for the client 192.0.2.9.
    let v1 = b"PROXY TCP4 192.0.2.9 127.0.0.1 40000 443\r\n";
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = connect_from(ip("127.0.0.5"), gw.target(ip("127.0.0.5"))).await;
        let body = json!({"description": "lb", "secret": key}).to_string();
        let req = format!(
            "POST /v1/device-server HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(&[&v1[..], req.as_bytes()].concat())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    }
    gw.wait_ready().await;
    let deadline = std::time::Instant::now() + PATIENCE;
    let r = loop {
        let r = with_preamble(&gw, ip("127.0.0.5"), v1, &key)
            .await
            .expect("an answer");
        if r.status == StatusCode::OK || std::time::Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        r.echoed("x-ipgate-client-ip"),
        Some(vec!["192.0.2.9".into()])
    );

    // v2, binary, IPv6 source.
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x21\x00\x24".to_vec();
    v2.extend_from_slice(
        &"2001:db8::9"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    v2.extend_from_slice(&"::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
    v2.extend_from_slice(&[0x9c, 0x40, 0x01, 0xbb]);
    let r = with_preamble(&gw, ip("127.0.0.5"), &v2, &key)
        .await
        .expect("an answer");
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        r.echoed("x-ipgate-client-ip"),
        Some(vec!["2001:db8::9".into()])
    );

    // A client naming someone else, not through the proxy: closed, no answer.
    assert!(with_preamble(&gw, ip("127.0.0.6"), v1, &key)
        .await
        .is_none());
    // The proxy without a header, or with a broken one: closed.
    assert!(with_preamble(&gw, ip("127.0.0.5"), b"", &key)
        .await
        .is_none());
    assert!(
        with_preamble(&gw, ip("127.0.0.5"), b"PROXY TCP4 nonsense\r\n", &key)
            .await
            .is_none()
    );
    // A header that names no client (UNKNOWN) is refused by default: the gateway never
    // guesses (tests/trust.rs has the health-check setting).
    assert!(
        with_preamble(&gw, ip("127.0.0.5"), b"PROXY UNKNOWN\r\n", &key)
            .await
            .is_none()
    );
    assert_eq!(gw.metric("ipgate_proxy_protocol_failures_total").await, 4.0);
}

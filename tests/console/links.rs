//! Console links and the sessions they open, request by request.

use crate::common::*;
use crate::helpers::*;
use http::StatusCode;
use serde_json::json;
use std::time::Duration;

/// A locked-out owner's link: works once, from the address that opened it, from this
/// origin, with the CSRF token on writes; cannot set the wildcard; expires; audited.
#[tokio::test]
async fn a_console_link_opens_one_session_once() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&Settings::new(&upstream.url()));
    gw.wait_ready().await;
    // Registered from 127.0.0.5; the owner is now at 127.0.0.3, locked out.
    let (user, cred, key) = gw.registered_key(&["127.0.0.5"]).await;
    let owner = "127.0.0.3";
    let link = mint(&gw, cred, "15m");

    let (status, cookie) = spend(&gw, owner, &link).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let cookie = cookie.expect("a session cookie");
    // Used once: the second time it opens nothing, from anywhere.
    let (again, none) = spend(&gw, owner, &link).await;
    assert_eq!(again, StatusCode::FORBIDDEN);
    assert!(none.is_none());

    let me = in_session(
        &gw,
        owner,
        http::Method::GET,
        "/ipgate/console/session/me",
        &[("cookie", &cookie)],
        None,
    )
    .await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.text());
    let who = me.json();
    assert_eq!(who["credential_id"], cred);
    assert_eq!(who["user_id"], user);
    assert_eq!(who["caller_ip"], owner);
    let csrf = who["csrf"].as_str().unwrap().to_owned();

    let ips =
        format!("/ipgate/console/session/api/v1/user/{user}/credential-password-ip/{cred}/ip");
    let add = |ip: &str| Some(json!({ "ip": ip }));
    // A write without the CSRF token, or with a forged one: refused, nothing stored.
    for headers in [
        vec![("cookie", cookie.as_str())],
        vec![("cookie", cookie.as_str()), ("x-ipgate-csrf", "forged")],
    ] {
        let r = in_session(&gw, owner, http::Method::POST, &ips, &headers, add(owner)).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    }
    // The cookie from another address, or sent by another origin's page: refused.
    let with = [
        ("cookie", cookie.as_str()),
        ("x-ipgate-csrf", csrf.as_str()),
    ];
    let r = in_session(
        &gw,
        "127.0.0.4",
        http::Method::POST,
        &ips,
        &with,
        add("127.0.0.4"),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let evil = [
        ("cookie", cookie.as_str()),
        ("x-ipgate-csrf", csrf.as_str()),
        ("origin", "https://evil.example"),
    ];
    let r = gw
        .send(ip(owner), http::Method::POST, &ips, &evil, add(owner))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let cross = [
        ("cookie", cookie.as_str()),
        ("sec-fetch-site", "cross-site"),
    ];
    let r = gw
        .send(ip(owner), http::Method::GET, &ips, &cross, None)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(
        gw.get(ip(owner), "/work", Some(&key)).await.status,
        StatusCode::FORBIDDEN,
        "nothing was added by the refused writes"
    );
    // Never the wildcard.
    let r = in_session(&gw, owner, http::Method::POST, &ips, &with, add("*")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.text().contains("wildcard"), "{}", r.text());
    // Only its own credential: not the user's list, not registration.
    let r = in_session(
        &gw,
        owner,
        http::Method::GET,
        &format!("/ipgate/console/session/api/v1/user/{user}/credential-password-ip"),
        &with,
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // With everything right: the owner adds the new address, and the key works from it.
    let r = in_session(&gw, owner, http::Method::POST, &ips, &with, add(owner)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        gw.get(ip(owner), "/work", Some(&key)).await.status,
        StatusCode::OK
    );

    // Audited when minted and when used.
    let audit = gw.admin(&["audit", "--credential", &cred.to_string()]);
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(actions.contains(&"console_link.mint"), "{actions:?}");
    assert!(actions.contains(&"console_link.use"), "{actions:?}");

    // A link past its time opens nothing.
    let short = mint(&gw, cred, "1s");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (expired, none) = spend(&gw, owner, &short).await;
    assert_eq!(expired, StatusCode::FORBIDDEN);
    assert!(none.is_none());
    // An unknown one neither, and it says so in the same words.
    let (unknown, _) = spend(&gw, owner, "/ipgate/console/link/not-a-link").await;
    assert_eq!(unknown, StatusCode::FORBIDDEN);

    // Revoked: the session ends at its next call, reads included.
    gw.admin(&["credential", "revoke", &cred.to_string()]);
    let r = in_session(&gw, owner, http::Method::GET, &ips, &with, None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert!(r.text().contains("no longer ACTIVE"), "{}", r.text());

    let metrics = metrics(&gw).await;
    assert!(
        metrics.contains("ipgate_console_links_total{result=\"used\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ipgate_console_links_total{result=\"refused\"} 3"),
        "{metrics}"
    );
}

/// On a TLS listener the session cookie is `Secure` too.
#[tokio::test]
async fn on_tls_the_session_cookie_is_secure() {
    use crate::common::ca::TestCa;
    use http_body_util::Full;
    use hyper_util::rt::TokioIo;
    use rustls::pki_types::ServerName;

    let ca = TestCa::new();
    let leaf = ca.leaf("console");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), &leaf.cert_pem).unwrap();
    std::fs::write(dir.path().join("key.pem"), &leaf.key_pem).unwrap();
    let upstream = Upstream::start().await;
    let settings = Settings::new(&upstream.url())
        .set("server.tls", r#"{ cert = "cert.pem", key = "key.pem" }"#);
    let gw = Gateway::start_in(dir, &settings, &[]);
    gw.wait_ready().await;
    let from = ip("127.0.0.2");
    let post = |path: &'static str, content_type: &'static str, body: String| {
        let (ca, gw) = (&ca, &gw);
        async move {
            let tcp = connect_from(from, gw.target(from)).await;
            let tls = ca
                .client(&[b"http/1.1"])
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .expect("TLS handshake");
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .unwrap();
            tokio::spawn(conn);
            let req = http::Request::builder()
                .method("POST")
                .uri(path)
                .header("host", "localhost")
                .header("content-type", content_type)
                .body(Full::new(bytes::Bytes::from(body)))
                .unwrap();
            collect(sender.send_request(req).await.unwrap()).await
        }
    };
    let (_user, cred, key) = gw.new_key();
    let body = json!({"description": "tls", "secret": key, "permitted_ips": ["127.0.0.2"]});
    let r = post("/v1/device-server", "application/json", body.to_string()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let link = mint(&gw, cred, "15m");
    let token = link.rsplit('/').next().unwrap().to_owned();
    let r = post(
        "/ipgate/console/link",
        "application/x-www-form-urlencoded",
        format!("token={token}"),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    let cookie = r.headers["set-cookie"].to_str().unwrap();
    for attribute in ["; HttpOnly", "; SameSite=Strict", "; Secure"] {
        assert!(cookie.contains(attribute), "{cookie} lacks {attribute}");
    }
}

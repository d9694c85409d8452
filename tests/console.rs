//! The key holder's console in a real browser: headless Chromium driven through
//! chromedriver (WebDriver, `fantoccini`), against a real `ipgate serve` and a real
//! upstream, as a person would use it: with the keyboard, reading what the page says.
//!
//! Without Chromium and chromedriver installed each test prints one "skipped" line and
//! returns; with `IPGATE_REQUIRE_BROWSER=1` (CI) the skip is a failure. The test starts
//! chromedriver on a free port and stops it by its PID.
//!
//! Screenshots at phone width (375 px) and desktop width are written to
//! `$CARGO_TARGET_TMPDIR/console-*.png`; with `IPGATE_CONSOLE_SCREENSHOTS=DIR` also to
//! DIR (how `docs/console.png` is made).

mod common;

use common::*;
use fantoccini::{elements::Element, Client, ClientBuilder, Locator};
use http::StatusCode;
use serde_json::{json, Value};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const REQUIRE_ENV: &str = "IPGATE_REQUIRE_BROWSER";

/// A running chromedriver, stopped by its PID when dropped.
struct Driver {
    child: Child,
    url: String,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Ours, by PID; chromedriver ends the browsers it started as it goes.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A browser, or `None` (after one line saying why) when none is installed outside CI.
async fn browser() -> Option<(Driver, Client)> {
    let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
        .into_iter()
        .filter(|p| !Path::new(p).is_file())
        .collect();
    if !missing.is_empty() {
        let why = format!("console browser tests skipped: {missing:?} not installed (apt-get install chromium chromium-driver)");
        assert!(
            std::env::var_os(REQUIRE_ENV).is_none(),
            "{why}, and {REQUIRE_ENV} is set"
        );
        eprintln!("{why}");
        return None;
    }
    // A free port from the OS, handed to chromedriver (it takes no port 0).
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let profile = tempfile::tempdir().unwrap();
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _profile: profile,
    };
    let deadline = Instant::now() + PATIENCE;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage",
                format!("--user-data-dir={}", driver._profile.path().display()),
                "--window-size=1280,1000",
            ],
        }),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a session with chromedriver");
    Some((driver, client))
}

/// Waits until `check` holds, clicking the page's Refresh button between looks when
/// `refresh` (usage reaches the store in batches).
async fn eventually<F, Fut>(c: &Client, what: &str, refresh: bool, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "never happened: {what}");
        if refresh {
            c.find(Locator::Id("refresh"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

async fn text_of(c: &Client, css: &str) -> String {
    match c.find(Locator::Css(css)).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// The message the page shows, once it says something.
async fn message(c: &Client) -> String {
    eventually(c, "a message", false, || async {
        !text_of(c, "#message").await.is_empty()
    })
    .await;
    text_of(c, "#message").await
}

async fn button(c: &Client, label: &str) -> Element {
    c.find(Locator::Css(&format!("button[aria-label=\"{label}\"]")))
        .await
        .unwrap_or_else(|_| panic!("no button labelled {label:?}"))
}

async fn screenshot(c: &Client, name: &str, width: u32, height: u32) {
    c.set_window_size(width, height).await.unwrap();
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let file = format!("console-{name}.png");
    let mut dirs = vec![PathBuf::from(env!("CARGO_TARGET_TMPDIR"))];
    if let Some(dir) = std::env::var_os("IPGATE_CONSOLE_SCREENSHOTS") {
        dirs.push(PathBuf::from(dir));
    }
    for dir in dirs {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(&file), &png).unwrap();
    }
}

fn console_url(gw: &Gateway) -> String {
    format!("http://127.0.0.1:{}/ipgate/console/", gw.public.port())
}

/// Login with the key (keyboard only), usage appears, a refused address appears, it is
/// added from the suggestions and then passes, set INACTIVE it is refused again; the
/// API's refusals are shown in words; a wrong key is refused.
#[tokio::test]
async fn the_key_holder_sees_and_fixes_the_list_in_a_browser() {
    let Some((_driver, c)) = browser().await else {
        return;
    };
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        &Settings::new(&upstream.url())
            .set("insight.flush_interval", "\"100ms\"")
            .set("limits.max_ips_per_credential", "3"),
    );
    gw.wait_ready().await;
    let (_user, _cred, key) = gw.registered_key(&["127.0.0.1"]).await;
    let me = ip("127.0.0.1");
    let other = ip("127.0.0.2");
    assert_eq!(gw.get(me, "/work", Some(&key)).await.status, StatusCode::OK);
    assert_eq!(
        gw.get(other, "/work", Some(&key)).await.status,
        StatusCode::FORBIDDEN
    );

    c.goto(&console_url(&gw)).await.unwrap();
    // Keyboard only: the key field has the focus; type the key, press Enter.
    let focused = c.active_element().await.unwrap();
    assert_eq!(focused.attr("id").await.unwrap().as_deref(), Some("key"));
    focused.send_keys(&format!("{key}\u{E007}")).await.unwrap();
    eventually(&c, "the credential is shown", false, || async {
        text_of(&c, "#credential-status").await == "ACTIVE"
    })
    .await;
    assert!(text_of(&c, "#caller")
        .await
        .contains("127.0.0.1: ACTIVE on this key"));
    assert!(text_of(&c, "#credential-mode").await.starts_with("enforce"));
    // The key is nowhere in the page once used.
    let typed: Value = c
        .execute("return document.getElementById('key').value", vec![])
        .await
        .unwrap();
    assert_eq!(typed, json!(""));
    assert!(!c.source().await.unwrap().contains(&key));

    // Every control has a label a screen reader reads.
    let unlabelled: Value = c
        .execute(
            "return Array.from(document.querySelectorAll('input, button')).filter(function (e) {
               if (e.tagName === 'BUTTON') { return !(e.getAttribute('aria-label') || e.textContent.trim()); }
               return !document.querySelector('label[for=\"' + e.id + '\"]');
             }).map(function (e) { return e.outerHTML; })",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(unlabelled, json!([]), "controls without a label");

    // Usage appears after traffic.
    // (The page's own calls count too: they are requests with the key.)
    eventually(&c, "usage of 127.0.0.1", true, || async {
        let requests = text_of(&c, "#entries tbody tr td:nth-child(5)").await;
        requests.parse::<u64>().is_ok_and(|n| n >= 1)
            && text_of(&c, "#entries tbody tr td:nth-child(4)")
                .await
                .ends_with("ago")
    })
    .await;
    // The refused address appears, with its count.
    eventually(&c, "127.0.0.2 among the refused", true, || async {
        text_of(&c, "#refused tbody").await.contains("127.0.0.2")
    })
    .await;
    screenshot(&c, "desktop", 1280, 1500).await;
    screenshot(&c, "phone", 375, 1000).await;
    c.set_window_size(1280, 1000).await.unwrap();

    // Added from the suggestions in one click (here: keyboard, Enter on the button);
    // then a request from it passes.
    let add = button(&c, "Add 127.0.0.2 to the list").await;
    add.send_keys("\u{E007}").await.unwrap();
    assert!(message(&c).await.contains("127.0.0.2 was added"));
    assert_eq!(
        gw.get(other, "/work", Some(&key)).await.status,
        StatusCode::OK
    );

    // Set INACTIVE: refused again.
    button(&c, "Set 127.0.0.2 INACTIVE")
        .await
        .click()
        .await
        .unwrap();
    eventually(&c, "127.0.0.2 INACTIVE", false, || async {
        text_of(&c, "#message")
            .await
            .contains("127.0.0.2 is now INACTIVE")
    })
    .await;
    assert_eq!(
        gw.get(other, "/work", Some(&key)).await.status,
        StatusCode::FORBIDDEN
    );

    // The API's rules, shown inline in words: the wildcard, a network, a duplicate.
    for (typed, says) in [
        ("*", "wildcard"),
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("127.0.0.1", "127.0.0.1"),
    ] {
        let input = c.find(Locator::Id("new-ip")).await.unwrap();
        input.clear().await.unwrap();
        input.send_keys(&format!("{typed}\u{E007}")).await.unwrap();
        eventually(&c, &format!("a refusal of {typed}"), false, || async {
            let m = text_of(&c, "#message").await;
            m.starts_with(&format!("Could not add {typed}: ")) && m.contains(says)
        })
        .await;
    }
    let entries = text_of(&c, "#entries tbody").await;
    assert!(!entries.contains('*') && !entries.contains("10.0.0.0"));

    // Sign out: nothing left on the page; a wrong key is refused in words.
    c.find(Locator::Id("logout"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert_eq!(text_of(&c, "#entries tbody").await, "");
    let input = c.find(Locator::Id("key")).await.unwrap();
    input
        .send_keys("ipg_not_a_real_key_at_all\u{E007}")
        .await
        .unwrap();
    eventually(&c, "the wrong key refused", false, || async {
        text_of(&c, "#message").await.contains("not accepted")
    })
    .await;
    let view = c.find(Locator::Id("view")).await.unwrap();
    assert!(!view.is_displayed().await.unwrap());

    c.close().await.unwrap();
}

/// The page cannot be framed by another origin: the headers say so, and a real
/// browser shows nothing of it inside a frame.
#[tokio::test]
async fn a_page_framed_by_another_origin_is_refused() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&Settings::new(&upstream.url()));
    gw.wait_ready().await;
    let me = ip("127.0.0.1");
    for path in ["", "console.js", "console.css", "me", "nothing"] {
        let r = gw.get(me, &format!("/ipgate/console/{path}"), None).await;
        let csp = r.headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"));
        assert_eq!(r.headers["x-frame-options"], "DENY", "{path}");
        assert_eq!(r.headers["referrer-policy"], "no-referrer", "{path}");
        assert_eq!(r.headers["cache-control"], "no-store", "{path}");
    }
    // Never forwarded: the upstream saw none of those.
    assert_eq!(upstream.received(), 0);
    // In the access log with routes of their own, and counted by operation.
    gw.wait_log("\"route\":\"console_page\"").await;
    gw.wait_log("\"route\":\"console_me\"").await;
    let m = metrics(&gw).await;
    assert!(
        m.contains("ipgate_api_requests_total{operation=\"console_page\",status=\"2xx\"} 3"),
        "{m}"
    );
    assert!(
        m.contains("ipgate_api_requests_total{operation=\"console_me\",status=\"4xx\"} 1"),
        "{m}"
    );

    let Some((_driver, c)) = browser().await else {
        return;
    };
    // Another origin: a page of its own (data: URL) that frames the console.
    let framing = format!(
        "data:text/html,<iframe id=f src='{}' width=600 height=400></iframe>",
        console_url(&gw)
    );
    c.goto(&framing).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let frame = c.find(Locator::Id("f")).await.unwrap();
    frame.enter_frame().await.unwrap();
    assert!(
        c.find(Locator::Id("key")).await.is_err(),
        "the console rendered inside another origin's frame"
    );
    c.enter_parent_frame().await.unwrap();
    // The same page opened directly works, so the frame's emptiness is the refusal.
    c.goto(&console_url(&gw)).await.unwrap();
    assert!(c.find(Locator::Id("key")).await.is_ok());
    c.close().await.unwrap();
}

/// POSTs the link form as a browser would.
async fn send_form(gw: &Gateway, from: &str, body: &str) -> Answer {
    send_raw(
        ip(from),
        gw.target(ip(from)),
        http::Method::POST,
        "/ipgate/console/link",
        &[("content-type", "application/x-www-form-urlencoded")],
        bytes::Bytes::from(body.to_owned()),
    )
    .await
}

async fn metrics(gw: &Gateway) -> String {
    send_raw(
        ip("127.0.0.1"),
        gw.admin,
        http::Method::GET,
        "/metrics",
        &[],
        bytes::Bytes::new(),
    )
    .await
    .text()
}

/// Mints a console link for `cred` with the CLI; returns its path.
fn mint(gw: &Gateway, cred: u64, ttl: &str) -> String {
    let out = gw.admin(&[
        "console-link",
        "--credential",
        &cred.to_string(),
        "--ttl",
        ttl,
    ]);
    let path = out["path"].as_str().unwrap().to_owned();
    assert!(path.starts_with("/ipgate/console/link/"), "{out}");
    assert!(out["expires"].is_string(), "{out}");
    path
}

/// Spends a link from `from`: the session cookie (`name=value`) when it opened one.
async fn spend(gw: &Gateway, from: &str, path: &str) -> (StatusCode, Option<String>) {
    let token = path.rsplit('/').next().unwrap();
    // The GET shows a form only: link previews and mail scanners must not spend it.
    let page = gw.get(ip(from), path, None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.text().contains(&format!("value=\"{token}\"")));
    let r = send_form(gw, from, &format!("token={token}")).await;
    let cookie = r.headers.get("set-cookie").map(|c| {
        let c = c.to_str().unwrap().to_owned();
        for attribute in ["HttpOnly", "SameSite=Strict", "Path=/ipgate/console/"] {
            assert!(c.contains(attribute), "{c} lacks {attribute}");
        }
        assert!(!c.contains("Secure"), "plain HTTP here: {c}");
        c.split(';').next().unwrap().to_owned()
    });
    (r.status, cookie)
}

/// A call in a session: its cookie, from `from`, with these extra headers.
async fn in_session(
    gw: &Gateway,
    from: &str,
    method: http::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Answer {
    let mut all = vec![("origin", "http://gateway.test")];
    all.extend_from_slice(headers);
    gw.send(ip(from), method, path, &all, body).await
}

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

/// The locked-out owner in a real browser: opens the link, sees that the current
/// address is not on the list, adds it from the suggestions... or typed, and the key
/// then works from it.
#[tokio::test]
async fn a_locked_out_owner_uses_a_link_in_a_browser() {
    let Some((_driver, c)) = browser().await else {
        return;
    };
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&Settings::new(&upstream.url()));
    gw.wait_ready().await;
    let (_user, cred, key) = gw.registered_key(&["127.0.0.5"]).await;
    let link = mint(&gw, cred, "15m");
    c.goto(&format!("http://127.0.0.1:{}{link}", gw.public.port()))
        .await
        .unwrap();
    c.find(Locator::Id("open-link"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually(&c, "the session's view", false, || async {
        text_of(&c, "#signed-in-with").await == "an operator's console link"
    })
    .await;
    assert!(text_of(&c, "#caller")
        .await
        .contains("127.0.0.1: not on this key's list"));
    let input = c.find(Locator::Id("new-ip")).await.unwrap();
    input.send_keys("127.0.0.1\u{E007}").await.unwrap();
    eventually(&c, "127.0.0.1 added", false, || async {
        text_of(&c, "#message")
            .await
            .contains("127.0.0.1 was added")
    })
    .await;
    assert!(text_of(&c, "#caller").await.contains("ACTIVE on this key"));
    assert_eq!(
        gw.get(ip("127.0.0.1"), "/work", Some(&key)).await.status,
        StatusCode::OK
    );
    // The cookie is the browser's, out of the script's reach (HttpOnly).
    let seen: Value = c.execute("return document.cookie", vec![]).await.unwrap();
    assert_eq!(seen, json!(""));
    c.close().await.unwrap();
}

/// On a TLS listener the session cookie is `Secure` too.
#[tokio::test]
async fn on_tls_the_session_cookie_is_secure() {
    use common::ca::TestCa;
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

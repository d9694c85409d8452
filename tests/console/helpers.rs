//! The browser and the link helpers both halves use.

use crate::common::*;
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
pub struct Driver {
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
pub async fn browser() -> Option<(Driver, Client)> {
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
pub async fn eventually<F, Fut>(c: &Client, what: &str, refresh: bool, check: F)
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

pub async fn text_of(c: &Client, css: &str) -> String {
    match c.find(Locator::Css(css)).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// The message the page shows, once it says something.
pub async fn message(c: &Client) -> String {
    eventually(c, "a message", false, || async {
        !text_of(c, "#message").await.is_empty()
    })
    .await;
    text_of(c, "#message").await
}

pub async fn button(c: &Client, label: &str) -> Element {
    c.find(Locator::Css(&format!("button[aria-label=\"{label}\"]")))
        .await
        .unwrap_or_else(|_| panic!("no button labelled {label:?}"))
}

pub async fn screenshot(c: &Client, name: &str, width: u32, height: u32) {
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

pub fn console_url(gw: &Gateway) -> String {
    format!("http://127.0.0.1:{}/ipgate/console/", gw.public.port())
}

/// POSTs the link form as a browser would.
pub async fn send_form(gw: &Gateway, from: &str, body: &str) -> Answer {
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

pub async fn metrics(gw: &Gateway) -> String {
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
pub fn mint(gw: &Gateway, cred: u64, ttl: &str) -> String {
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
pub async fn spend(gw: &Gateway, from: &str, path: &str) -> (StatusCode, Option<String>) {
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
pub async fn in_session(
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

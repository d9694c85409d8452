//! The console in a real browser.

use crate::common::*;
use crate::helpers::*;
use fantoccini::Locator;
use http::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

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

//! ipgate's extensions beside bunq's paths: a credential's refused addresses and its
//! suggested list, as the console and scripts read them.

use crate::common::*;
use crate::helpers::*;
use http::StatusCode;
use serde_json::Value;
use std::time::{Duration, Instant};

/// Reads `path` until `done` holds for its items (usage reaches the store in batches).
async fn until(
    holder: &Holder<'_>,
    path: &str,
    kind: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let r = holder.get(path).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert!(
            r.json().get("Pagination").is_none(),
            "a bounded list, not paged"
        );
        let items: Vec<Value> = r.json()["Response"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i[kind].clone())
            .collect();
        if done(&items) {
            return items;
        }
        assert!(Instant::now() < deadline, "{path}: {items:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn refused_addresses_newest_first_and_what_is_listed_now() {
    let (_up, gw) = setup_with(|s| s.set("insight.flush_interval", "\"100ms\"")).await;
    let holder = Holder::new(&gw, &["127.0.0.2"]).await;
    assert_eq!(holder.probe("127.0.0.3").await, StatusCode::FORBIDDEN);
    let refused = holder.refused();
    until(&holder, &refused, "RefusedIp", |i| i.len() == 1).await;
    // The coarse clock: a later refusal is seen a second later at the latest.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(holder.probe("127.0.0.4").await, StatusCode::FORBIDDEN);
    assert_eq!(holder.probe("127.0.0.4").await, StatusCode::FORBIDDEN);
    let items = until(&holder, &refused, "RefusedIp", |i| i.len() == 2).await;
    assert_eq!(items[0]["ip"], "127.0.0.4", "newest first: {items:?}");
    assert_eq!(items[0]["requests"], 2);
    assert_eq!(items[1]["ip"], "127.0.0.3");
    assert!(is_bunq_time(&items[0]["first_seen"]) && is_bunq_time(&items[0]["last_seen"]));
    assert_eq!(items[0]["listed"], Value::Null);

    // The owner adds it: the report keeps it, saying it is ACTIVE now.
    holder.add("127.0.0.4", "ACTIVE").await;
    let items = until(&holder, &refused, "RefusedIp", |i| {
        i[0]["listed"] == "ACTIVE"
    })
    .await;
    assert_eq!(items[1]["listed"], Value::Null);

    // The suggestion: every address with its counts, and what is listed.
    assert_eq!(holder.probe("127.0.0.2").await, StatusCode::OK);
    let suggested = holder.suggested();
    let items = until(&holder, &suggested, "SuggestedIp", |i| {
        i.iter()
            .any(|s| s["ip"] == "127.0.0.2" && s["allowed"].as_u64() >= Some(1))
    })
    .await;
    let of = |ip: &str| items.iter().find(|s| s["ip"] == ip).cloned().unwrap();
    assert_eq!(of("127.0.0.2")["listed"], "ACTIVE");
    assert_eq!(of("127.0.0.4")["refused"], 2);
    assert_eq!(of("127.0.0.4")["listed"], "ACTIVE");
    assert_eq!(of("127.0.0.3")["refused"], 1);
    assert_eq!(of("127.0.0.3")["listed"], Value::Null);
    assert_eq!(of("127.0.0.3")["allowed"], 0);
}

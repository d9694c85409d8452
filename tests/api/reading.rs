//! Reading credentials and entries: bunq's shapes, paging, HEAD.

use crate::common::*;
use crate::helpers::*;
use http::{Method, StatusCode};
use serde_json::{json, Value};

#[tokio::test]
async fn credentials_list_and_get_in_bunq_shape() {
    let (_up, gw) = setup().await;
    let holder = Holder::new(&gw, &["127.0.0.2"]).await;
    let (pending_cred, _) = gw.key_for(holder.user);

    let (items, pagination) = listed(
        &holder.get(&holder.credentials()).await,
        "CredentialPasswordIp",
    );
    assert_eq!(ids(&items), vec![pending_cred, holder.cred], "newest first");
    for c in &items {
        assert_credential(c);
    }
    let (pending, registered) = (&items[0], &items[1]);
    assert_eq!(pending["status"], "PENDING_FIRST_USE");
    assert!(
        is_bunq_time(&pending["expiry_time"]),
        "a pending key has a deadline"
    );
    assert_eq!(pending["permitted_device"], Value::Null);
    assert_eq!(registered["status"], "ACTIVE");
    assert_eq!(
        registered["permitted_device"],
        json!({"description": "test device", "ip": "127.0.0.2"})
    );
    assert_eq!(pagination["older_url"], Value::Null);
    assert_eq!(pagination["newer_url"], Value::Null);
    assert!(pagination["future_url"].is_string());

    // One credential: the same object as in the list, without Pagination.
    for c in &items {
        let path = format!("{}/{}", holder.credentials(), c["id"]);
        let one = only_item(&holder.get(&path).await, "CredentialPasswordIp");
        assert_eq!(&one, c);
    }
}

#[tokio::test]
async fn entries_list_and_get_in_bunq_shape() {
    let (_up, gw) = setup().await;
    let holder = Holder::new(&gw, &["127.0.0.2", "::1"]).await;
    let item = holder.add("127.0.0.3", "INACTIVE").await;

    let (items, pagination) = listed(&holder.get(&holder.ips()).await, "PermittedIp");
    assert_eq!(items.len(), 3);
    assert_eq!(items[0]["id"], item, "newest first");
    let mut sorted = ids(&items);
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(ids(&items), sorted, "newest first");
    for e in &items {
        assert_permitted_ip(e);
    }
    assert_eq!(items[0]["ip"], "127.0.0.3");
    assert_eq!(items[0]["status"], "INACTIVE");
    assert_eq!(items[0]["created"], items[0]["updated"]);
    assert!(pagination["future_url"].is_string());

    for e in &items {
        let one = only_item(
            &holder.get(&holder.entry(e["id"].as_u64().unwrap())).await,
            "PermittedIp",
        );
        assert_eq!(&one, e);
    }
    // A status change moves `updated`, never `created` or the address.
    let r = holder.set_status(item, "ACTIVE").await;
    assert_eq!(created_id(&r), item);
    let after = only_item(&holder.get(&holder.entry(item)).await, "PermittedIp");
    assert_permitted_ip(&after);
    assert_eq!(after["status"], "ACTIVE");
    assert_eq!(after["created"], items[0]["created"]);
    assert_eq!(after["ip"], "127.0.0.3");
    assert!(after["updated"].as_str() > items[0]["updated"].as_str());
}

#[tokio::test]
async fn pagination_walks_both_ways_and_polls_the_future() {
    let (_up, gw) = setup().await;
    let addrs: Vec<String> = (1..=12).map(|i| format!("127.0.1.{i}")).collect();
    let refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let holder = Holder::new(&gw, &refs).await;
    let stored = entries(&gw, holder.cred);
    let mut all: Vec<u64> = ids(stored.as_array().unwrap());
    all.sort_unstable_by(|a, b| b.cmp(a)); // newest first
    assert_eq!(all.len(), 12);

    // Default count is 10, newest first.
    let (first, p1) = listed(&holder.get(&holder.ips()).await, "PermittedIp");
    assert_eq!(ids(&first), all[..10]);
    assert_eq!(
        p1["older_url"],
        format!("{}?count=10&older_id={}", holder.ips(), all[9])
    );
    assert_eq!(p1["newer_url"], Value::Null);
    assert_eq!(
        p1["future_url"],
        format!("{}?count=10&newer_id={}", holder.ips(), all[0])
    );

    // Following older_url gives the rest, and nothing older after it.
    let (older, p2) = listed(
        &holder.get(p1["older_url"].as_str().unwrap()).await,
        "PermittedIp",
    );
    assert_eq!(ids(&older), all[10..]);
    assert_eq!(p2["older_url"], Value::Null);
    assert_eq!(p2["future_url"], Value::Null);

    // Its newer_url leads back to the first page, with the same links.
    let (back, p3) = listed(
        &holder.get(p2["newer_url"].as_str().unwrap()).await,
        "PermittedIp",
    );
    assert_eq!(ids(&back), all[..10]);
    assert_eq!(p3, p1);

    // future_url: empty now, the new entry once one is added.
    let future = p1["future_url"].as_str().unwrap().to_owned();
    let (nothing, p4) = listed(&holder.get(&future).await, "PermittedIp");
    assert!(nothing.is_empty());
    assert_eq!(p4["future_url"], future.as_str(), "polling stays put");
    let new = holder.add("127.0.1.13", "INACTIVE").await;
    let (news, _) = listed(&holder.get(&future).await, "PermittedIp");
    assert_eq!(ids(&news), vec![new]);

    // count: any of 1..=200; older_id and newer_id page from a given id.
    let page = |q: String| {
        let path = format!("{}?{q}", holder.ips());
        let holder = &holder;
        async move { holder.get(&path).await }
    };
    let (three, _) = listed(&page("count=3".into()).await, "PermittedIp");
    assert_eq!(ids(&three), vec![new, all[0], all[1]]);
    let (everything, p) = listed(&page("count=200".into()).await, "PermittedIp");
    assert_eq!(everything.len(), 13);
    assert_eq!(p["older_url"], Value::Null);
    let (before, _) = listed(
        &page(format!("count=2&older_id={}", all[4])).await,
        "PermittedIp",
    );
    assert_eq!(ids(&before), all[5..7]);
    let (after, _) = listed(
        &page(format!("count=2&newer_id={}", all[4])).await,
        "PermittedIp",
    );
    assert_eq!(ids(&after), all[2..4]);

    for (query, says) in [
        ("count=201", "count must be between 1 and 200"),
        ("count=0", "count must be between 1 and 200"),
        ("count=ten", "count must be a whole number"),
        ("older_id=x", "older_id must be a whole number"),
        ("older_id=3&newer_id=5", "not both"),
    ] {
        assert_error(&page(query.into()).await, StatusCode::BAD_REQUEST, says);
    }
}

#[tokio::test]
async fn credential_list_pages_too() {
    let (_up, gw) = setup().await;
    let holder = Holder::new(&gw, &["127.0.0.2"]).await;
    let (second, _) = gw.key_for(holder.user);
    let (third, _) = gw.key_for(holder.user);

    let path = format!("{}?count=2", holder.credentials());
    let (page, p) = listed(&holder.get(&path).await, "CredentialPasswordIp");
    assert_eq!(ids(&page), vec![third, second]);
    let (rest, p2) = listed(
        &holder.get(p["older_url"].as_str().unwrap()).await,
        "CredentialPasswordIp",
    );
    assert_eq!(ids(&rest), vec![holder.cred]);
    assert_eq!(p2["older_url"], Value::Null);
    let r = holder
        .get(&format!("{}?count=201", holder.credentials()))
        .await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "count must be between 1 and 200",
    );
}

#[tokio::test]
async fn head_answers_like_get_without_a_body() {
    let (_up, gw) = setup().await;
    let holder = Holder::new(&gw, &["127.0.0.2"]).await;
    let (item, _) = holder.stored_entry("127.0.0.2");
    for path in [
        holder.credentials(),
        holder.credential(),
        holder.ips(),
        holder.entry(item),
    ] {
        let get = holder.call(Method::GET, &path, None).await;
        let head = holder.call(Method::HEAD, &path, None).await;
        assert_eq!(head.status, StatusCode::OK, "{path}");
        assert!(head.body.is_empty(), "{path}: HEAD sent a body");
        assert_eq!(head.headers["content-type"], "application/json", "{path}");
        assert_eq!(
            head.headers["content-length"],
            get.body.len().to_string().as_str(),
            "{path}: HEAD's length is GET's"
        );
    }
    // Refusals are the same as for GET too.
    let r = gw
        .send(
            ip("127.0.0.9"),
            Method::HEAD,
            &holder.ips(),
            &[(KEY_HEADER, &holder.key)],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.body.is_empty());
    // HEAD never writes: the list is unchanged; the registration takes POST only.
    let before = holder.stored();
    let r = holder.call(Method::HEAD, "/v1/device-server", None).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.headers["allow"], "POST");
    assert_eq!(holder.stored(), before);
}

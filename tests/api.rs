//! The management API end to end (SPEC sections 1 and 3): the real binary, a real
//! upstream, key holders calling from real source addresses (127.0.0.x, ::1).
//!
//! Every call made with a key goes through [`Holder`], which checks that the key never
//! comes back in a response body; every refusal is checked for the exact bunq error
//! shape. "Nothing stored" is checked by comparing the store's own list
//! (`ipgate admin ip list`) before and after.

mod common;

use bytes::Bytes;
use common::*;
use http::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

async fn setup() -> (Upstream, Gateway) {
    setup_with(|s| s).await
}

async fn setup_with(tune: impl FnOnce(Settings) -> Settings) -> (Upstream, Gateway) {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&tune(Settings::new(&upstream.url())));
    gw.wait_ready().await;
    (upstream, gw)
}

/// A key holder calling the management API from one of its addresses.
struct Holder<'g> {
    gw: &'g Gateway,
    /// `user`, `cred` and the paths built from them.
    paths: ApiPaths,
    key: String,
    from: IpAddr,
}

impl std::ops::Deref for Holder<'_> {
    type Target = ApiPaths;

    fn deref(&self) -> &ApiPaths {
        &self.paths
    }
}

impl<'g> Holder<'g> {
    /// A new user whose key was registered with `ips` from the first of them.
    async fn new(gw: &'g Gateway, ips: &[&str]) -> Self {
        let (user, cred, key) = gw.registered_key(ips).await;
        Self {
            gw,
            paths: ApiPaths { user, cred },
            key,
            from: ip(ips[0]),
        }
    }

    async fn get(&self, path: &str) -> Answer {
        self.call(Method::GET, path, None).await
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        self.raw_from(self.from, method, path, &body).await
    }

    async fn raw(&self, method: Method, path: &str, body: &[u8]) -> Answer {
        self.raw_from(self.from, method, path, body).await
    }

    async fn raw_from(&self, from: IpAddr, method: Method, path: &str, body: &[u8]) -> Answer {
        let headers = [
            (KEY_HEADER, self.key.as_str()),
            ("content-type", "application/json"),
        ];
        let body = Bytes::copy_from_slice(body);
        let r = send_raw(from, self.gw.target(from), method, path, &headers, body).await;
        assert_no_secret(&r, &self.key);
        r
    }

    /// Adds an entry through the API and returns its id.
    async fn add(&self, address: &str, status: &str) -> u64 {
        let r = self
            .call(
                Method::POST,
                &self.ips(),
                Some(json!({"ip": address, "status": status})),
            )
            .await;
        created_id(&r)
    }

    async fn set_status(&self, item: u64, status: &str) -> Answer {
        self.call(
            Method::PUT,
            &self.entry(item),
            Some(json!({ "status": status })),
        )
        .await
    }

    /// The store's own view of this credential's entries.
    fn stored(&self) -> Value {
        self.gw.admin(&["ip", "list", &self.cred.to_string()])
    }

    /// The stored entry with address `address`: (id, status).
    fn stored_entry(&self, address: &str) -> (u64, String) {
        let list = self.stored();
        let e = list
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["ip"] == address)
            .unwrap_or_else(|| panic!("{address} not stored: {list}"));
        (
            e["id"].as_u64().unwrap(),
            e["status"].as_str().unwrap().into(),
        )
    }

    /// What the hot path answers this key from `from`, at once (no polling).
    async fn probe(&self, from: &str) -> StatusCode {
        self.gw
            .get(ip(from), "/probe", Some(&self.key))
            .await
            .status
    }
}

/// The key (or any long piece of it) must never be in a response body.
fn assert_no_secret(r: &Answer, key: &str) {
    let text = r.text();
    assert!(
        !text.contains(&key[4..24]),
        "the key came back in a response: {text}"
    );
}

/// `POST /v1/device-server` from `from`, checking that the secret is not echoed.
async fn register(gw: &Gateway, from: &str, body: Value) -> Answer {
    let r = gw.register_device(ip(from), body.clone()).await;
    if let Some(secret) = body["secret"].as_str().filter(|s| s.len() > 24) {
        assert_no_secret(&r, secret);
    }
    r
}

fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect()
}

fn set<'a>(names: &[&'a str]) -> BTreeSet<&'a str> {
    names.iter().copied().collect()
}

/// A bunq error with exactly this status, JSON content type and shape; returns the
/// description after checking it contains `says`.
#[track_caller]
fn assert_error(r: &Answer, status: StatusCode, says: &str) -> String {
    let body = r.json();
    assert_eq!(r.status, status, "{body}");
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(keys(&body), set(&["Error"]), "{body}");
    let errors = body["Error"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{body}");
    assert_eq!(
        keys(&errors[0]),
        set(&["error_description", "error_description_translated"])
    );
    let text = errors[0]["error_description"].as_str().unwrap().to_owned();
    assert_eq!(errors[0]["error_description_translated"], text.as_str());
    assert!(text.contains(says), "{text:?} does not say {says:?}");
    text
}

/// `{"Response":[{"<kind>":{…}}]}` with one item, nothing else; returns the item.
#[track_caller]
fn only_item(r: &Answer, kind: &str) -> Value {
    let body = r.json();
    assert_eq!(r.status, StatusCode::OK, "{body}");
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(keys(&body), set(&["Response"]), "{body}");
    let items = body["Response"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{body}");
    assert_eq!(keys(&items[0]), set(&[kind]), "{body}");
    items[0][kind].clone()
}

/// A list answer: `{"Response":[{"<kind>":{…}}, …],"Pagination":{…}}`; returns the
/// items and the pagination object.
#[track_caller]
fn listed(r: &Answer, kind: &str) -> (Vec<Value>, Value) {
    let body = r.json();
    assert_eq!(r.status, StatusCode::OK, "{body}");
    assert_eq!(keys(&body), set(&["Response", "Pagination"]), "{body}");
    let pagination = body["Pagination"].clone();
    assert_eq!(
        keys(&pagination),
        set(&["older_url", "newer_url", "future_url"])
    );
    for url in pagination.as_object().unwrap().values() {
        assert!(url.is_null() || url.is_string(), "{pagination}");
    }
    let items = body["Response"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            assert_eq!(keys(item), set(&[kind]), "{body}");
            item[kind].clone()
        })
        .collect();
    (items, pagination)
}

/// `{"Response":[{"Id":{"id":N}}]}`; returns N.
#[track_caller]
fn created_id(r: &Answer) -> u64 {
    let id = only_item(r, "Id");
    assert_eq!(keys(&id), set(&["id"]));
    id["id"].as_u64().unwrap()
}

/// UTC `YYYY-MM-DD hh:mm:ss.ffffff`.
fn is_bunq_time(v: &Value) -> bool {
    let Some(s) = v.as_str() else { return false };
    s.len() == 26
        && s.char_indices().all(|(i, c)| match i {
            4 | 7 => c == '-',
            10 => c == ' ',
            13 | 16 => c == ':',
            19 => c == '.',
            _ => c.is_ascii_digit(),
        })
}

#[track_caller]
fn assert_permitted_ip(v: &Value) {
    assert_eq!(
        keys(v),
        set(&["id", "ip", "status", "created", "updated"]),
        "{v}"
    );
    assert!(v["id"].is_u64(), "{v}");
    assert!(v["ip"].as_str().unwrap().parse::<IpAddr>().is_ok(), "{v}");
    assert!(v["status"] == "ACTIVE" || v["status"] == "INACTIVE", "{v}");
    assert!(is_bunq_time(&v["created"]), "{v}");
    assert!(is_bunq_time(&v["updated"]), "{v}");
}

#[track_caller]
fn assert_credential(v: &Value) {
    assert_eq!(
        keys(v),
        set(&[
            "id",
            "created",
            "updated",
            "status",
            "expiry_time",
            "token_value",
            "permitted_device"
        ]),
        "{v}"
    );
    assert!(v["id"].is_u64(), "{v}");
    assert!(is_bunq_time(&v["created"]), "{v}");
    assert!(is_bunq_time(&v["updated"]), "{v}");
    assert!(
        ["PENDING_FIRST_USE", "ACTIVE", "REVOKED"].contains(&v["status"].as_str().unwrap()),
        "{v}"
    );
    assert!(
        v["expiry_time"].is_null() || is_bunq_time(&v["expiry_time"]),
        "{v}"
    );
    assert_eq!(v["token_value"], Value::Null, "keys are never stored");
    let device = &v["permitted_device"];
    if !device.is_null() {
        assert_eq!(keys(device), set(&["description", "ip"]), "{v}");
        assert!(device["description"].is_string());
        assert!(device["ip"].as_str().unwrap().parse::<IpAddr>().is_ok());
    }
}

fn ids(items: &[Value]) -> Vec<u64> {
    items.iter().map(|i| i["id"].as_u64().unwrap()).collect()
}

fn addresses(list: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["ip"].as_str().unwrap().to_owned(),
                e["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

fn active(addrs: &[&str]) -> Vec<(String, String)> {
    let mut out: Vec<_> = addrs
        .iter()
        .map(|a| (a.to_string(), "ACTIVE".to_string()))
        .collect();
    out.sort();
    out
}

/// The operator's view of one credential (status, device, expiry), from the store.
fn stored_credential(gw: &Gateway, user: u64, cred: u64) -> Value {
    let list = gw.admin(&["credential", "list", "--user", &user.to_string()]);
    list.as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == cred)
        .cloned()
        .unwrap_or_else(|| panic!("credential {cred} not listed: {list}"))
}

fn entries(gw: &Gateway, cred: u64) -> Value {
    gw.admin(&["ip", "list", &cred.to_string()])
}

// ---------------------------------------------------------------------------------------
// Device registration
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn registration_activates_every_listed_address_at_once() {
    // A long poll interval: only the registration's own refresh can explain a pass.
    let (_up, gw) = setup_with(|s| s.set("refresh.interval", "\"1h\"")).await;
    let (user, cred, key) = gw.new_key();
    let pending = stored_credential(&gw, user, cred);
    assert_eq!(pending["status"], "PENDING_FIRST_USE");

    // From an address that is on no list at all: registration needs no whitelisting.
    let body = json!({
        "description": "build server",
        "secret": key,
        "permitted_ips": ["127.0.0.2", "::1", "::ffff:127.0.0.3"],
    });
    let r = register(&gw, "127.0.0.9", body).await;
    assert_eq!(created_id(&r), cred);

    for from in ["127.0.0.2", "::1", "127.0.0.3"] {
        let r = gw.get(ip(from), "/probe", Some(&key)).await;
        assert_eq!(r.status, StatusCode::OK, "{from} was not enforced at once");
    }
    // The caller itself was not listed, so it is not admitted.
    let r = gw.get(ip("127.0.0.9"), "/probe", Some(&key)).await;
    assert_error(&r, StatusCode::FORBIDDEN, "");

    // Each listed address is one ACTIVE entry; the mapped one is stored as IPv4.
    let stored = entries(&gw, cred);
    assert_eq!(
        addresses(&stored),
        active(&["127.0.0.2", "::1", "127.0.0.3"])
    );
    assert_eq!(stored_credential(&gw, user, cred)["wildcard"], false);

    let holder = Holder {
        gw: &gw,
        paths: ApiPaths { user, cred },
        key,
        from: ip("127.0.0.2"),
    };
    let c = only_item(
        &holder.get(&holder.credential()).await,
        "CredentialPasswordIp",
    );
    assert_credential(&c);
    assert_eq!(c["id"], cred);
    assert_eq!(c["status"], "ACTIVE");
    assert_eq!(
        c["permitted_device"],
        json!({"description": "build server", "ip": "127.0.0.9"})
    );
    assert_eq!(
        c["expiry_time"],
        Value::Null,
        "a registered key has no deadline"
    );
    let (items, _) = listed(&holder.get(&holder.ips()).await, "PermittedIp");
    let shown: BTreeSet<&str> = items.iter().map(|e| e["ip"].as_str().unwrap()).collect();
    assert_eq!(shown, set(&["127.0.0.2", "::1", "127.0.0.3"]));
}

#[tokio::test]
async fn registration_star_empty_or_missing_list_means_the_caller() {
    let (_up, gw) = setup().await;
    let cases: [(&str, Value, &[&str]); 4] = [
        ("127.0.0.4", json!(["*"]), &["127.0.0.4"]),
        ("127.0.0.5", json!([]), &["127.0.0.5"]),
        ("127.0.0.6", Value::Null, &["127.0.0.6"]),
        (
            "::1",
            json!(["127.0.0.8", "*", "::1"]),
            &["127.0.0.8", "::1"],
        ),
    ];
    for (caller, listed, expected) in cases {
        let (user, cred, key) = gw.new_key();
        let mut body = json!({"description": "d", "secret": key});
        if !listed.is_null() {
            body["permitted_ips"] = listed.clone();
        }
        let r = register(&gw, caller, body).await;
        assert_eq!(created_id(&r), cred, "{listed}");

        let stored = entries(&gw, cred);
        assert_eq!(addresses(&stored), active(expected), "{listed}");
        assert_eq!(
            stored_credential(&gw, user, cred)["wildcard"],
            false,
            "\"*\" must never become a wildcard"
        );
        assert_eq!(
            gw.get(ip(caller), "/probe", Some(&key)).await.status,
            StatusCode::OK
        );
        // Never a real wildcard: other addresses are still refused.
        for other in ["127.0.0.7", "127.0.0.1"] {
            let r = gw.get(ip(other), "/probe", Some(&key)).await;
            assert_error(&r, StatusCode::FORBIDDEN, "");
        }
    }
}

#[tokio::test]
async fn registration_happens_only_once() {
    let (_up, gw) = setup().await;
    let (user, cred, key) = gw.new_key();
    let first = json!({"description": "first", "secret": key, "permitted_ips": ["127.0.0.2"]});
    assert_eq!(created_id(&register(&gw, "127.0.0.2", first).await), cred);
    let credential_before = stored_credential(&gw, user, cred);
    let entries_before = entries(&gw, cred);

    let again = json!({"description": "second", "secret": key, "permitted_ips": ["127.0.0.3"]});
    let r = register(&gw, "127.0.0.3", again).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "cannot be used to register");

    assert_eq!(stored_credential(&gw, user, cred), credential_before);
    assert_eq!(entries(&gw, cred), entries_before);
    let r = gw.get(ip("127.0.0.3"), "/probe", Some(&key)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn registration_refuses_unknown_and_expired_keys_alike() {
    let (_up, gw) = setup_with(|s| s.set("auth.registration_window", "\"2s\"")).await;
    let (user, cred, key) = gw.new_key();
    let created = Instant::now(); // after the key was made: its deadline is before +2 s

    let unknown = "ipg_0000000000000000000000000000000000000000000000000000000000000000";
    let body = json!({"description": "d", "secret": unknown});
    let r = register(&gw, "127.0.0.2", body).await;
    let unknown_says = assert_error(&r, StatusCode::BAD_REQUEST, "cannot be used to register");

    // Let the 2 s window pass (real time, not synchronisation).
    let lapsed = created + Duration::from_millis(2200);
    tokio::time::sleep(lapsed.saturating_duration_since(Instant::now())).await;
    let body = json!({"description": "d", "secret": key, "permitted_ips": ["127.0.0.2"]});
    let r = register(&gw, "127.0.0.2", body).await;
    let expired_says = assert_error(&r, StatusCode::BAD_REQUEST, "");
    assert_eq!(
        expired_says, unknown_says,
        "the answer must not tell keys apart"
    );
    // The operator and the key holder both see why: the window passed.
    assert_eq!(stored_credential(&gw, user, cred)["status"], "EXPIRED");
    assert_eq!(entries(&gw, cred), json!([]));

    // A key used within its window registers: the refusal above was the deadline.
    let (fresh_cred, fresh) = gw.key_for(user);
    let body = json!({"description": "d", "secret": fresh, "permitted_ips": ["127.0.0.2"]});
    assert_eq!(
        created_id(&register(&gw, "127.0.0.2", body).await),
        fresh_cred
    );
    gw.wait_until_allowed(ip("127.0.0.2"), &fresh).await;
    let paths = ApiPaths { user, cred };
    let r = gw
        .get(ip("127.0.0.2"), &paths.credential(), Some(&fresh))
        .await;
    assert_eq!(only_item(&r, "CredentialPasswordIp")["status"], "EXPIRED");
}

#[tokio::test]
async fn registration_refuses_bad_bodies_and_stores_nothing() {
    let (_up, gw) = setup_with(|s| s.set("limits.max_ips_per_credential", "2")).await;
    let (user, cred, key) = gw.new_key();
    let before = stored_credential(&gw, user, cred);
    let cases = [
        (
            json!({"description": "d", "secret": key, "permitted_ips": ["127.0.0.300"]}),
            "not a valid IPv4 or IPv6 address",
        ),
        (
            json!({"description": "d", "secret": key, "permitted_ips": ["127.0.0.0/24"]}),
            "is a network",
        ),
        (
            json!({"description": "d", "secret": key,
                   "permitted_ips": ["127.0.0.2", "127.0.0.3", "127.0.0.4"]}),
            "At most 2 ACTIVE permitted IPs",
        ),
        (json!({"description": "d"}), "missing field `secret`"),
        (json!({"secret": key}), "missing field `description`"),
        (
            json!({"description": "d", "secret": key, "device": "x"}),
            "unknown field `device`",
        ),
    ];
    for (body, says) in cases {
        let r = register(&gw, "127.0.0.2", body).await;
        assert_error(&r, StatusCode::BAD_REQUEST, says);
        assert_eq!(stored_credential(&gw, user, cred), before, "after {says}");
        assert_eq!(entries(&gw, cred), json!([]), "after {says}");
    }
    let r = gw
        .send(ip("127.0.0.2"), Method::GET, "/v1/device-server", &[], None)
        .await;
    assert_error(&r, StatusCode::METHOD_NOT_ALLOWED, "");
    assert_eq!(r.headers["allow"], "POST");

    // The key is still pending and registers with a good body.
    let body = json!({"description": "d", "secret": key, "permitted_ips": ["127.0.0.2", "*"]});
    assert_eq!(created_id(&register(&gw, "127.0.0.3", body).await), cred);
    assert_eq!(
        addresses(&entries(&gw, cred)),
        active(&["127.0.0.2", "127.0.0.3"])
    );
}

// ---------------------------------------------------------------------------------------
// Reading credentials and entries
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// Who may see and change what
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn only_your_own_user_and_its_credentials() {
    let (_up, gw) = setup().await;
    let alice = Holder::new(&gw, &["127.0.0.2"]).await;
    let bob = Holder::new(&gw, &["127.0.0.3"]).await;
    let bob_item = bob.stored_entry("127.0.0.3").0;
    let alice_item = alice.stored_entry("127.0.0.2").0;
    let bob_before = bob.stored();

    // Bob's user id in the path: 403 on every route, whatever the ids after it.
    let bob_paths = [
        bob.credentials(),
        bob.credential(),
        bob.ips(),
        bob.entry(bob_item),
    ];
    for path in &bob_paths {
        let r = alice.get(path).await;
        assert_error(&r, StatusCode::FORBIDDEN, "your own user");
    }
    let add = json!({"ip": "127.0.0.2"});
    let r = alice
        .call(Method::POST, &bob.ips(), Some(add.clone()))
        .await;
    assert_error(&r, StatusCode::FORBIDDEN, "your own user");
    let put = json!({"status": "INACTIVE"});
    let r = alice
        .call(Method::PUT, &bob.entry(bob_item), Some(put.clone()))
        .await;
    assert_error(&r, StatusCode::FORBIDDEN, "your own user");

    // Bob's credential under Alice's own user: as missing as a credential that never was.
    let bob_cred_as_alice = format!("{}/{}", alice.credentials(), bob.cred);
    let missing_cred = format!("{}/999999", alice.credentials());
    for base in [&bob_cred_as_alice, &missing_cred] {
        let r = alice.get(base).await;
        assert_error(&r, StatusCode::NOT_FOUND, "No such credential");
        let r = alice.get(&format!("{base}/ip")).await;
        assert_error(&r, StatusCode::NOT_FOUND, "No such credential");
        let r = alice.get(&format!("{base}/ip/{bob_item}")).await;
        assert_error(&r, StatusCode::NOT_FOUND, "No such credential");
        let r = alice
            .call(Method::POST, &format!("{base}/ip"), Some(add.clone()))
            .await;
        assert_error(&r, StatusCode::NOT_FOUND, "No such credential");
        let r = alice
            .call(
                Method::PUT,
                &format!("{base}/ip/{bob_item}"),
                Some(put.clone()),
            )
            .await;
        assert_error(&r, StatusCode::NOT_FOUND, "No such credential");
    }
    // Bob's entry id under Alice's own credential, and an entry that never was.
    for item in [bob_item, 999_999] {
        let r = alice.get(&alice.entry(item)).await;
        assert_error(&r, StatusCode::NOT_FOUND, "No such permitted IP");
        let r = alice
            .call(Method::PUT, &alice.entry(item), Some(put.clone()))
            .await;
        assert_error(&r, StatusCode::NOT_FOUND, "No such permitted IP");
    }
    assert_eq!(bob.stored(), bob_before, "Bob's list was changed by Alice");
    assert_eq!(bob.probe("127.0.0.3").await, StatusCode::OK);
    assert_eq!(
        alice.stored_entry("127.0.0.2"),
        (alice_item, "ACTIVE".into())
    );
}

#[tokio::test]
async fn the_api_needs_the_key_from_an_active_address() {
    let (_up, gw) = setup().await;
    let holder = Holder::new(&gw, &["127.0.0.2", "127.0.0.3"]).await;
    let (inactive_item, _) = holder.stored_entry("127.0.0.3");
    assert_eq!(
        created_id(&holder.set_status(inactive_item, "INACTIVE").await),
        inactive_item
    );
    let hot_path_refusal = gw.get(ip("127.0.0.9"), "/probe", Some(&holder.key)).await;
    assert_error(&hot_path_refusal, StatusCode::FORBIDDEN, "");
    let (_, pending) = gw.key_for(holder.user);
    let before = holder.stored();

    let routes = [
        (Method::GET, holder.credentials(), None),
        (Method::GET, holder.credential(), None),
        (Method::GET, holder.ips(), None),
        (Method::GET, holder.entry(inactive_item), None),
        (Method::POST, holder.ips(), Some(json!({"ip": "127.0.0.9"}))),
        (
            Method::PUT,
            holder.entry(inactive_item),
            Some(json!({"status": "ACTIVE"})),
        ),
    ];
    for (method, path, body) in &routes {
        let bytes = body.as_ref().map(|b| b.to_string()).unwrap_or_default();
        // From an unlisted and from an INACTIVE address: the hot path's 403, same body.
        for from in ["127.0.0.9", "127.0.0.3"] {
            let r = holder
                .raw_from(ip(from), method.clone(), path, bytes.as_bytes())
                .await;
            assert_error(&r, StatusCode::FORBIDDEN, "");
            assert_eq!(r.body, hot_path_refusal.body, "{method} {path} from {from}");
        }
        // Without a key: 401.
        let r = send_raw(
            ip("127.0.0.2"),
            gw.target(ip("127.0.0.2")),
            method.clone(),
            path,
            &[],
            Bytes::from(bytes.clone()),
        )
        .await;
        assert_error(&r, StatusCode::UNAUTHORIZED, "Missing authentication token");
        assert_eq!(r.headers["www-authenticate"], "ipgate");
        // An unknown key, or the user's own key still pending registration: 403.
        for key in [
            "ipg_0000000000000000000000000000000000000000000000000000000000000000",
            pending.as_str(),
        ] {
            let r = send_raw(
                ip("127.0.0.2"),
                gw.target(ip("127.0.0.2")),
                method.clone(),
                path,
                &[(KEY_HEADER, key)],
                Bytes::from(bytes.clone()),
            )
            .await;
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{method} {path}");
            assert_eq!(r.body, hot_path_refusal.body);
        }
    }
    assert_eq!(holder.stored(), before, "a refused call changed the list");
}

// ---------------------------------------------------------------------------------------
// The whitelist's rules
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn an_entry_address_never_changes() {
    let (_up, gw) = setup().await;
    let holder = Holder::new(&gw, &["127.0.0.2"]).await;
    let item = holder.add("127.0.0.3", "ACTIVE").await;
    let before = holder.stored();

    for body in [
        json!({"ip": "127.0.0.4", "status": "INACTIVE"}),
        json!({"ip": "127.0.0.4", "status": "ACTIVE"}),
        json!({"ip": "::1", "status": "ACTIVE"}),
    ] {
        let r = holder
            .call(Method::PUT, &holder.entry(item), Some(body))
            .await;
        let says = assert_error(&r, StatusCode::BAD_REQUEST, "never changes");
        assert!(says.contains("INACTIVE"), "{says}");
        assert!(says.contains("add a new entry"), "{says}");
        assert!(says.contains("127.0.0.3"), "{says}");
    }
    assert_eq!(holder.stored(), before);
    assert_eq!(holder.probe("127.0.0.4").await, StatusCode::FORBIDDEN);

    // The same address, in either spelling, may accompany a status change.
    for (spelling, status) in [("127.0.0.3", "INACTIVE"), ("::ffff:127.0.0.3", "ACTIVE")] {
        let body = json!({"ip": spelling, "status": status});
        let r = holder
            .call(Method::PUT, &holder.entry(item), Some(body))
            .await;
        assert_eq!(created_id(&r), item);
        assert_eq!(holder.stored_entry("127.0.0.3"), (item, status.into()));
    }
    // A PUT must say which status.
    let r = holder
        .call(
            Method::PUT,
            &holder.entry(item),
            Some(json!({"ip": "127.0.0.3"})),
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "\"status\"");
}

#[tokio::test]
async fn the_wildcard_is_the_operators_alone() {
    let (_up, gw) = setup().await;
    let holder = Holder::new(&gw, &["127.0.0.2"]).await;
    let (item, _) = holder.stored_entry("127.0.0.2");
    let before = holder.stored();

    for (method, path, body) in [
        (Method::POST, holder.ips(), json!({"ip": "*"})),
        (
            Method::POST,
            holder.ips(),
            json!({"ip": " * ", "status": "ACTIVE"}),
        ),
        (
            Method::POST,
            holder.ips(),
            json!({"ip": "*", "status": "INACTIVE"}),
        ),
        (
            Method::PUT,
            holder.entry(item),
            json!({"ip": "*", "status": "ACTIVE"}),
        ),
    ] {
        let r = holder.call(method, &path, Some(body)).await;
        assert_error(&r, StatusCode::FORBIDDEN, "only be set by an operator");
    }
    assert_eq!(holder.stored(), before);
    assert_eq!(
        stored_credential(&gw, holder.user, holder.cred)["wildcard"],
        false
    );
    assert_eq!(holder.probe("127.0.0.7").await, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn entries_are_never_deleted() {
    let (_up, gw) = setup().await;
    let holder = Holder::new(&gw, &["127.0.0.2"]).await;
    let (item, _) = holder.stored_entry("127.0.0.2");
    let before = holder.stored();

    let r = holder.call(Method::DELETE, &holder.entry(item), None).await;
    assert_error(&r, StatusCode::METHOD_NOT_ALLOWED, "");
    assert_eq!(r.headers["allow"], "GET, HEAD, PUT");
    let r = holder.call(Method::DELETE, &holder.ips(), None).await;
    assert_error(&r, StatusCode::METHOD_NOT_ALLOWED, "");
    assert_eq!(r.headers["allow"], "GET, HEAD, POST");
    let r = holder
        .call(Method::DELETE, &holder.credential(), None)
        .await;
    assert_error(&r, StatusCode::METHOD_NOT_ALLOWED, "");
    assert_eq!(r.headers["allow"], "GET, HEAD");

    assert_eq!(holder.stored(), before);
    assert_eq!(holder.probe("127.0.0.2").await, StatusCode::OK);
}

#[tokio::test]
async fn bad_input_is_refused_and_nothing_is_stored() {
    let (_up, gw) = setup_with(|s| s.set("limits.max_body_bytes", "1024")).await;
    let holder = Holder::new(&gw, &["127.0.0.2"]).await;
    let (item, _) = holder.stored_entry("127.0.0.2");
    let before = holder.stored();

    let padded = |n: usize| format!("{{\"ip\":\"127.0.0.5\"{}}}", " ".repeat(n));
    let oversized = padded(2000);
    let post_cases: Vec<(&[u8], &str)> = vec![
        (
            br#"{"ip":"127.0.0.256"}"#,
            "not a valid IPv4 or IPv6 address",
        ),
        (br#"{"ip":"bogus"}"#, "not a valid IPv4 or IPv6 address"),
        (br#"{"ip":""}"#, "not a valid IPv4 or IPv6 address"),
        (br#"{"ip":"127.0.0.0/24"}"#, "is a network"),
        (br#"{"ip":"2001:db8::/32"}"#, "is a network"),
        (
            br#"{"ip":"127.0.0.2"}"#,
            "already on this credential's list",
        ),
        (
            br#"{"ip":"::ffff:127.0.0.2"}"#,
            "already on this credential's list",
        ),
        (
            br#"{"ip":"127.0.0.5","status":"ENABLED"}"#,
            "Unknown status",
        ),
        (br#"{"ip":"127.0.0.5","status":"active"}"#, "Unknown status"),
        (br#"{"ip":"127.0.0.5""#, "Malformed request body"),
        (b"", "Malformed request body"),
        (br#"{"ip":5}"#, "Malformed request body"),
        (br#"{"status":"ACTIVE"}"#, "missing field `ip`"),
        (
            br#"{"ip":"127.0.0.5","stauts":"ACTIVE"}"#,
            "unknown field `stauts`",
        ),
        (oversized.as_bytes(), "larger than 1024 bytes"),
    ];
    for (body, says) in post_cases {
        let r = holder.raw(Method::POST, &holder.ips(), body).await;
        assert_error(&r, StatusCode::BAD_REQUEST, says);
        assert_eq!(holder.stored(), before, "after {says}");
    }
    let put_cases: Vec<(&[u8], &str)> = vec![
        (br#"{"status":"DELETED"}"#, "Unknown status"),
        (br#"{"status":"INACTIVE""#, "Malformed request body"),
        (
            br#"{"status":"INACTIVE","note":"x"}"#,
            "unknown field `note`",
        ),
        (
            br#"{"ip":"127.0.0.0/8","status":"INACTIVE"}"#,
            "is a network",
        ),
        (br#"{}"#, "\"status\""),
    ];
    for (body, says) in put_cases {
        let r = holder.raw(Method::PUT, &holder.entry(item), body).await;
        assert_error(&r, StatusCode::BAD_REQUEST, says);
        assert_eq!(holder.stored(), before, "after {says}");
    }
    assert_eq!(holder.probe("127.0.0.5").await, StatusCode::FORBIDDEN);

    // The refusals were about the body, not the address: a well-formed one is taken.
    let r = holder
        .raw(Method::POST, &holder.ips(), padded(900).as_bytes())
        .await;
    created_id(&r);
    assert_eq!(holder.probe("127.0.0.5").await, StatusCode::OK);
}

#[tokio::test]
async fn writes_must_be_declared_json() {
    let (_up, gw) = setup().await;
    let holder = Holder::new(&gw, &["127.0.0.2"]).await;
    let (item, _) = holder.stored_entry("127.0.0.2");
    let before = holder.stored();
    let from = ip("127.0.0.2");
    let send = |method: Method, path: String, content_type: Option<&'static str>, body: &str| {
        let mut headers = vec![(KEY_HEADER, holder.key.as_str())];
        if let Some(t) = content_type {
            headers.push(("content-type", t));
        }
        let body = Bytes::from(body.to_owned());
        let to = gw.target(from);
        async move { send_raw(from, to, method, &path, &headers, body).await }
    };
    let add = r#"{"ip":"127.0.0.5"}"#;
    let put = r#"{"status":"INACTIVE"}"#;
    for declared in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("application/jsonp"),
        Some("application/json-patch+json"),
        Some("multipart/form-data; boundary=x"),
        Some(""),
        None,
    ] {
        let r = send(Method::POST, holder.ips(), declared, add).await;
        assert_error(&r, StatusCode::UNSUPPORTED_MEDIA_TYPE, "application/json");
        let r = send(Method::PUT, holder.entry(item), declared, put).await;
        assert_error(&r, StatusCode::UNSUPPORTED_MEDIA_TYPE, "application/json");
        assert_eq!(holder.stored(), before, "after {declared:?}");
    }
    // Registration is a write too.
    let (_, cred, key) = gw.new_key();
    let body = json!({"description": "d", "secret": key}).to_string();
    let r = send(
        Method::POST,
        "/v1/device-server".into(),
        Some("text/plain"),
        &body,
    )
    .await;
    assert_error(&r, StatusCode::UNSUPPORTED_MEDIA_TYPE, "application/json");
    assert_eq!(entries(&gw, cred), json!([]));

    // Parameters and case do not matter.
    let r = send(
        Method::POST,
        holder.ips(),
        Some("Application/JSON; charset=utf-8"),
        add,
    )
    .await;
    created_id(&r);
    let r = send(
        Method::PUT,
        holder.entry(item),
        Some("application/json"),
        put,
    )
    .await;
    created_id(&r);
}

#[tokio::test]
async fn active_entries_are_limited_per_credential() {
    let (_up, gw) = setup_with(|s| s.set("limits.max_ips_per_credential", "2")).await;
    let holder = Holder::new(&gw, &["127.0.0.2"]).await;
    let second = holder.add("127.0.0.3", "ACTIVE").await;
    let before = holder.stored();

    let r = holder
        .call(
            Method::POST,
            &holder.ips(),
            Some(json!({"ip": "127.0.0.4"})),
        )
        .await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "At most 2 ACTIVE permitted IPs",
    );
    assert_eq!(holder.stored(), before);
    assert_eq!(holder.probe("127.0.0.4").await, StatusCode::FORBIDDEN);

    // INACTIVE entries do not count, but turning one ACTIVE beyond the limit is refused.
    let parked = holder.add("127.0.0.4", "INACTIVE").await;
    let before = holder.stored();
    let r = holder.set_status(parked, "ACTIVE").await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "At most 2 ACTIVE permitted IPs",
    );
    assert_eq!(holder.stored(), before);
    assert_eq!(holder.probe("127.0.0.4").await, StatusCode::FORBIDDEN);

    // Retire one, then the parked one fits.
    assert_eq!(
        created_id(&holder.set_status(second, "INACTIVE").await),
        second
    );
    assert_eq!(
        created_id(&holder.set_status(parked, "ACTIVE").await),
        parked
    );
    assert_eq!(
        addresses(&holder.stored()),
        vec![
            ("127.0.0.2".into(), "ACTIVE".into()),
            ("127.0.0.3".into(), "INACTIVE".into()),
            ("127.0.0.4".into(), "ACTIVE".into()),
        ]
    );
    // Setting an ACTIVE entry ACTIVE again is no new entry: allowed at the limit.
    assert_eq!(
        created_id(&holder.set_status(parked, "ACTIVE").await),
        parked
    );
}

// ---------------------------------------------------------------------------------------
// A change is enforced before its answer returns
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn changes_are_enforced_before_the_answer() {
    // The poller runs once at start and then not for an hour: every pass and refusal
    // below can only come from the write path's own refresh.
    let (_up, gw) = setup_with(|s| s.set("refresh.interval", "\"1h\"")).await;
    let holder = Holder::new(&gw, &["127.0.0.2"]).await;
    assert_eq!(holder.probe("127.0.0.3").await, StatusCode::FORBIDDEN);

    let item = holder.add("127.0.0.3", "ACTIVE").await;
    assert_eq!(holder.probe("127.0.0.3").await, StatusCode::OK);
    // The new address can use the API right away, too.
    let r = holder
        .raw_from(ip("127.0.0.3"), Method::GET, &holder.ips(), b"")
        .await;
    assert_eq!(listed(&r, "PermittedIp").0.len(), 2);

    let r = holder.set_status(item, "INACTIVE").await;
    assert_eq!(created_id(&r), item);
    assert_eq!(holder.probe("127.0.0.3").await, StatusCode::FORBIDDEN);

    let r = holder.set_status(item, "ACTIVE").await;
    assert_eq!(created_id(&r), item);
    assert_eq!(holder.probe("127.0.0.3").await, StatusCode::OK);

    // Moving house: the new address retires the old one, and is cut off at once.
    let (old, _) = holder.stored_entry("127.0.0.2");
    let r = holder
        .raw_from(
            ip("127.0.0.3"),
            Method::PUT,
            &holder.entry(old),
            br#"{"status":"INACTIVE"}"#,
        )
        .await;
    assert_eq!(created_id(&r), old);
    assert_eq!(holder.probe("127.0.0.2").await, StatusCode::FORBIDDEN);
    assert_eq!(
        holder.get(&holder.ips()).await.status,
        StatusCode::FORBIDDEN
    );
}

// ---------------------------------------------------------------------------------------
// Audit
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn every_change_is_audited_with_who_where_before_and_after() {
    let (_up, gw) = setup().await;
    let (user, cred, key) = gw.new_key();
    let body = json!({"description": "laptop", "secret": key, "permitted_ips": ["127.0.0.2"]});
    assert_eq!(created_id(&register(&gw, "127.0.0.9", body).await), cred);
    let holder = Holder {
        gw: &gw,
        paths: ApiPaths { user, cred },
        key,
        from: ip("127.0.0.2"),
    };
    let item = holder.add("127.0.0.3", "ACTIVE").await;
    assert_eq!(created_id(&holder.set_status(item, "INACTIVE").await), item);
    // Refusals change nothing and so leave no trace.
    let r = holder
        .call(
            Method::POST,
            &holder.ips(),
            Some(json!({"ip": "127.0.0.3"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    let audit = gw.admin(&["audit", "--credential", &cred.to_string()]);
    let audit = audit.as_array().unwrap();
    let actions: Vec<&str> = audit
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "ip.set_status",
            "ip.add",
            "device.register",
            "credential.create"
        ],
        "newest first: {audit:?}"
    );
    let actor = format!("credential:{cred}");
    let (set, add, reg) = (&audit[0], &audit[1], &audit[2]);
    for a in [set, add, reg] {
        assert_eq!(a["actor"], actor.as_str());
        assert_eq!(a["credential_id"], cred);
        assert!(is_bunq_time(&a["at"]), "{a}");
    }

    assert_eq!(reg["actor_ip"], "127.0.0.9");
    assert_eq!(reg["before"]["status"], "PENDING_FIRST_USE");
    assert_eq!(reg["after"]["status"], "ACTIVE");
    assert_eq!(
        reg["after"]["permitted_device"],
        json!({"description": "laptop", "ip": "127.0.0.9"})
    );
    assert_eq!(reg["after"]["permitted_ips"], json!(["127.0.0.2"]));

    assert_eq!(add["actor_ip"], "127.0.0.2");
    assert_eq!(add["before"], Value::Null);
    assert_eq!(add["after"]["id"], item);
    assert_eq!(add["after"]["ip"], "127.0.0.3");
    assert_eq!(add["after"]["status"], "ACTIVE");

    assert_eq!(set["actor_ip"], "127.0.0.2");
    assert_eq!(set["before"]["id"], item);
    assert_eq!(set["before"]["status"], "ACTIVE");
    assert_eq!(set["after"]["status"], "INACTIVE");
    assert_eq!(set["after"]["ip"], "127.0.0.3");

    assert!(
        !Value::Array(audit.to_vec())
            .to_string()
            .contains(&holder.key[4..24]),
        "the key is in the audit log"
    );
}

// ---------------------------------------------------------------------------------------
// What the API owns, and what it leaves to the upstream
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn other_user_paths_still_reach_the_upstream() {
    // The gateway fronts a bunq-style API: its own /v1/user/… routes must be proxied,
    // only credential-password-ip and device-server are answered here.
    let (_up, gw) = setup().await;
    let holder = Holder::new(&gw, &["127.0.0.2"]).await;
    for path in [
        format!("/v1/user/{}", holder.user),
        format!("/v1/user/{}/monetary-account", holder.user),
        format!(
            "/v1/user/{}/monetary-account/7/payment?count=3",
            holder.user
        ),
    ] {
        let r = holder.get(&path).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text());
        assert_eq!(r.headers["x-from-upstream"], "yes", "{path}");
        assert_eq!(r.json()["path"], path.as_str());
        assert_eq!(
            r.echoed("x-ipgate-user-id"),
            Some(vec![holder.user.to_string()])
        );
        // …and the hot path's rules apply to them.
        let r = holder
            .raw_from(ip("127.0.0.9"), Method::GET, &path, b"")
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}");
    }
}

#[tokio::test]
async fn registration_activates_addresses_the_operator_listed_beforehand() {
    let (_up, gw) = setup().await;
    let (_, cred, key) = gw.new_key();
    let c = cred.to_string();
    // The operator prepared the pending key: one address parked, one already ACTIVE.
    let parked = gw.admin(&["ip", "add", &c, "127.0.0.2", "--status", "INACTIVE"])["id"]
        .as_u64()
        .unwrap();
    let ready = gw.admin(&["ip", "add", &c, "127.0.0.3"])["id"]
        .as_u64()
        .unwrap();

    let body = json!({"description": "d", "secret": key, "permitted_ips": ["*", "127.0.0.3"]});
    let r = register(&gw, "127.0.0.2", body).await;
    assert_eq!(created_id(&r), cred, "{}", r.text());

    let stored = entries(&gw, cred);
    assert_eq!(addresses(&stored), active(&["127.0.0.2", "127.0.0.3"]));
    let stored_ids: BTreeSet<u64> = ids(stored.as_array().unwrap()).into_iter().collect();
    assert_eq!(
        stored_ids,
        [parked, ready].into(),
        "the same entries, not new ones"
    );
    for from in ["127.0.0.2", "127.0.0.3"] {
        let r = gw.get(ip(from), "/probe", Some(&key)).await;
        assert_eq!(r.status, StatusCode::OK, "{from}");
    }
}

// ---- the write path applies one change, not the whole snapshot --------------------

#[tokio::test]
async fn an_api_write_is_applied_as_a_change_not_a_full_load() {
    let (_up, gw) = setup().await;
    let holder = Holder::new(&gw, &["127.0.0.2"]).await;
    let loaded = "ipgate_refresh_total{result=\"loaded\"}";
    let applied = "ipgate_changes_applied_total";
    assert_eq!(gw.metric(loaded).await, 1.0, "one full load, at start");
    let changes = gw.metric(applied).await;

    holder.add("127.0.0.3", "ACTIVE").await;
    assert_eq!(holder.probe("127.0.0.3").await, StatusCode::OK);
    assert!(gw.metric(applied).await > changes);
    assert_eq!(gw.metric("ipgate_snapshot_active_ips").await, 2.0);

    // A change made elsewhere arrives by the poll, on top of the API's.
    let cred = holder.cred.to_string();
    gw.admin(&["ip", "add", &cred, "127.0.0.4"]);
    gw.wait_until_allowed(ip("127.0.0.4"), &holder.key).await;
    assert_eq!(holder.probe("127.0.0.3").await, StatusCode::OK);
    assert_eq!(gw.metric("ipgate_snapshot_active_ips").await, 3.0);
    assert_eq!(
        gw.metric(loaded).await,
        1.0,
        "never loaded everything again"
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

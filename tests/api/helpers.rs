//! What the tests share: a key holder calling the API, and checks of bunq's shapes.

use crate::common::*;
use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::IpAddr;

pub(crate) async fn setup() -> (Upstream, Gateway) {
    setup_with(|s| s).await
}

pub(crate) async fn setup_with(tune: impl FnOnce(Settings) -> Settings) -> (Upstream, Gateway) {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&tune(Settings::new(&upstream.url())));
    gw.wait_ready().await;
    (upstream, gw)
}

/// A key holder calling the management API from one of its addresses.
pub(crate) struct Holder<'g> {
    pub(crate) gw: &'g Gateway,
    /// `user`, `cred` and the paths built from them.
    pub(crate) paths: ApiPaths,
    pub(crate) key: String,
    pub(crate) from: IpAddr,
}

impl std::ops::Deref for Holder<'_> {
    type Target = ApiPaths;

    fn deref(&self) -> &ApiPaths {
        &self.paths
    }
}

impl<'g> Holder<'g> {
    /// A new user whose key was registered with `ips` from the first of them.
    pub(crate) async fn new(gw: &'g Gateway, ips: &[&str]) -> Self {
        let (user, cred, key) = gw.registered_key(ips).await;
        Self {
            gw,
            paths: ApiPaths { user, cred },
            key,
            from: ip(ips[0]),
        }
    }

    pub(crate) async fn get(&self, path: &str) -> Answer {
        self.call(Method::GET, path, None).await
    }

    pub(crate) async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        self.raw_from(self.from, method, path, &body).await
    }

    pub(crate) async fn raw(&self, method: Method, path: &str, body: &[u8]) -> Answer {
        self.raw_from(self.from, method, path, body).await
    }

    pub(crate) async fn raw_from(
        &self,
        from: IpAddr,
        method: Method,
        path: &str,
        body: &[u8],
    ) -> Answer {
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
    pub(crate) async fn add(&self, address: &str, status: &str) -> u64 {
        let r = self
            .call(
                Method::POST,
                &self.ips(),
                Some(json!({"ip": address, "status": status})),
            )
            .await;
        created_id(&r)
    }

    pub(crate) async fn set_status(&self, item: u64, status: &str) -> Answer {
        self.call(
            Method::PUT,
            &self.entry(item),
            Some(json!({ "status": status })),
        )
        .await
    }

    /// The store's own view of this credential's entries.
    pub(crate) fn stored(&self) -> Value {
        self.gw.admin(&["ip", "list", &self.cred.to_string()])
    }

    /// The stored entry with address `address`: (id, status).
    pub(crate) fn stored_entry(&self, address: &str) -> (u64, String) {
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
    pub(crate) async fn probe(&self, from: &str) -> StatusCode {
        self.gw
            .get(ip(from), "/probe", Some(&self.key))
            .await
            .status
    }
}

/// The key (or any long piece of it) must never be in a response body.
pub(crate) fn assert_no_secret(r: &Answer, key: &str) {
    let text = r.text();
    assert!(
        !text.contains(&key[4..24]),
        "the key came back in a response: {text}"
    );
}

/// `POST /v1/device-server` from `from`, checking that the secret is not echoed.
pub(crate) async fn register(gw: &Gateway, from: &str, body: Value) -> Answer {
    let r = gw.register_device(ip(from), body.clone()).await;
    if let Some(secret) = body["secret"].as_str().filter(|s| s.len() > 24) {
        assert_no_secret(&r, secret);
    }
    r
}

pub(crate) fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect()
}

pub(crate) fn set<'a>(names: &[&'a str]) -> BTreeSet<&'a str> {
    names.iter().copied().collect()
}

/// A bunq error with exactly this status, JSON content type and shape; returns the
/// description after checking it contains `says`.
#[track_caller]
pub(crate) fn assert_error(r: &Answer, status: StatusCode, says: &str) -> String {
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
pub(crate) fn only_item(r: &Answer, kind: &str) -> Value {
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
pub(crate) fn listed(r: &Answer, kind: &str) -> (Vec<Value>, Value) {
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
pub(crate) fn created_id(r: &Answer) -> u64 {
    let id = only_item(r, "Id");
    assert_eq!(keys(&id), set(&["id"]));
    id["id"].as_u64().unwrap()
}

/// UTC `YYYY-MM-DD hh:mm:ss.ffffff`.
pub(crate) fn is_bunq_time(v: &Value) -> bool {
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
pub(crate) fn assert_permitted_ip(v: &Value) {
    assert_eq!(
        keys(v),
        set(&[
            "id",
            "ip",
            "status",
            "created",
            "updated",
            "last_seen",
            "requests"
        ]),
        "{v}"
    );
    // ipgate's usage beside bunq's fields.
    assert!(
        v["last_seen"].is_null() || is_bunq_time(&v["last_seen"]),
        "{v}"
    );
    assert!(v["requests"].is_u64(), "{v}");
    assert!(v["id"].is_u64(), "{v}");
    assert!(v["ip"].as_str().unwrap().parse::<IpAddr>().is_ok(), "{v}");
    assert!(v["status"] == "ACTIVE" || v["status"] == "INACTIVE", "{v}");
    assert!(is_bunq_time(&v["created"]), "{v}");
    assert!(is_bunq_time(&v["updated"]), "{v}");
}

#[track_caller]
pub(crate) fn assert_credential(v: &Value) {
    assert_eq!(
        keys(v),
        set(&[
            "id",
            "created",
            "updated",
            "status",
            "expiry_time",
            "token_value",
            "permitted_device",
            "mode"
        ]),
        "{v}"
    );
    // ipgate's mode beside bunq's fields.
    assert!(v["mode"] == "enforce" || v["mode"] == "shadow", "{v}");
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

pub(crate) fn ids(items: &[Value]) -> Vec<u64> {
    items.iter().map(|i| i["id"].as_u64().unwrap()).collect()
}

pub(crate) fn addresses(list: &Value) -> Vec<(String, String)> {
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

pub(crate) fn active(addrs: &[&str]) -> Vec<(String, String)> {
    let mut out: Vec<_> = addrs
        .iter()
        .map(|a| (a.to_string(), "ACTIVE".to_string()))
        .collect();
    out.sort();
    out
}

/// The operator's view of one credential (status, device, expiry), from the store.
pub(crate) fn stored_credential(gw: &Gateway, user: u64, cred: u64) -> Value {
    let list = gw.admin(&["credential", "list", "--user", &user.to_string()]);
    list.as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == cred)
        .cloned()
        .unwrap_or_else(|| panic!("credential {cred} not listed: {list}"))
}

pub(crate) fn entries(gw: &Gateway, cred: u64) -> Value {
    gw.admin(&["ip", "list", &cred.to_string()])
}

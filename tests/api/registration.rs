//! Device registration: a pending key binds its first addresses, once.

use crate::common::*;
use crate::helpers::*;
use http::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

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

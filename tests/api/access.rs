//! Who may see and change what: own user, own key, from an ACTIVE address.

use crate::common::*;
use crate::helpers::*;
use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::json;

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

//! Writes: enforced before the answer, audited, applied as one change; what the API
//! leaves to the upstream.

use crate::common::*;
use crate::helpers::*;
use http::{Method, StatusCode};
use serde_json::{json, Value};

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
async fn a_change_that_changes_nothing_succeeds_and_leaves_no_trace() {
    let (_up, gw) = setup().await;
    let holder = Holder::new(&gw, &["127.0.0.2"]).await;
    let (item, _) = holder.stored_entry("127.0.0.2");
    let audit = || {
        gw.admin(&["audit", "--credential", &holder.cred.to_string()])
            .as_array()
            .unwrap()
            .len()
    };
    let rows = audit();
    let version = gw.metric("ipgate_snapshot_version").await;
    for _ in 0..2 {
        let r = holder.set_status(item, "ACTIVE").await;
        assert_eq!(created_id(&r), item, "{}", r.text());
    }
    assert_eq!(
        audit(),
        rows,
        "no audit row for a change that changed nothing"
    );
    assert_eq!(
        gw.metric("ipgate_snapshot_version").await,
        version,
        "no new version"
    );
}

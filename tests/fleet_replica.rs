//! A fleet past one database: gateways whose poller reads a real PostgreSQL streaming
//! replica (`store.read_url`, made by the test with `pg_basebackup -R`) while writes go
//! to the primary. A gateway enforces its own write before answering however far the
//! replica lags, never goes back to the replica's older view, and the others follow
//! the replica; a rebuilt replica is followed again without a resync. NOTIFY is not
//! replicated: the listener is on the primary and its notices are hints only.
//! Skipped with one line when PostgreSQL is not installed (CI requires it).

mod common;

use common::pg::Postgres;
use common::*;
use http::{Method, StatusCode};
use serde_json::json;
use std::time::Instant;

fn settings(primary: &Postgres, replica: &Postgres, db: &str, upstream: &Upstream) -> Settings {
    Settings::new(&upstream.url())
        .set("store.url", &format!("\"{}\"", primary.url(db)))
        .set("store.read_url", &format!("\"{}\"", replica.url(db)))
        .set("refresh.interval", "\"1s\"")
        .set("refresh.notify", "true")
}

async fn add_ip(gw: &Gateway, paths: &ApiPaths, key: &str, new: &str) {
    let r = gw
        .send(
            ip("127.0.0.2"),
            Method::POST,
            &paths.ips(),
            &[(KEY_HEADER, key), ("content-type", "application/json")],
            Some(json!({"ip": new, "status": "ACTIVE"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

async fn status(gw: &Gateway, from: &str, key: &str) -> StatusCode {
    gw.get(ip(from), "/", Some(key)).await.status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_fleet_reads_the_replica_and_stays_exact_across_lag_and_a_rebuild() {
    if !Postgres::available() {
        return;
    }
    let primary = Postgres::start();
    let db = primary.database();
    let replica = primary.replica();
    let upstream = Upstream::start().await;
    let mut gws = Vec::new();
    for _ in 0..2 {
        let gw = Gateway::start(&settings(&primary, &replica, &db, &upstream));
        gw.wait_ready().await;
        gws.push(gw);
    }
    let (user, cred, key) = gws[0].registered_key(&["127.0.0.2"]).await;
    gws[1].wait_until_allowed(ip("127.0.0.2"), &key).await;
    let paths = ApiPaths { user, cred };

    // Lag: the replica stops replaying. A write through gateway 0 is on the primary,
    // and gateway 0 enforces it before answering, from the primary.
    replica.pause_replay(true);
    add_ip(&gws[0], &paths, &key, "127.0.0.3").await;
    assert_eq!(status(&gws[0], "127.0.0.3", &key).await, StatusCode::OK);
    // Polls of the lagging replica in the meantime: gateway 1 has not seen it (it
    // reads the replica), and gateway 0 does not go back to the replica's older view.
    let polls = gws[1]
        .metric("ipgate_refresh_total{result=\"unchanged\"}")
        .await;
    gws[1]
        .wait_metric("ipgate_refresh_total{result=\"unchanged\"}", polls + 2.0)
        .await;
    gws[0]
        .wait_metric("ipgate_refresh_total{result=\"unchanged\"}", 2.0)
        .await;
    assert_eq!(
        status(&gws[1], "127.0.0.3", &key).await,
        StatusCode::FORBIDDEN,
        "gateway 1 reads the replica, which has not replayed the write"
    );
    assert_eq!(status(&gws[0], "127.0.0.3", &key).await, StatusCode::OK);
    let resumed = Instant::now();
    replica.pause_replay(false);
    gws[1].wait_until_allowed(ip("127.0.0.3"), &key).await;
    eprintln!(
        "a write made while the replica lagged reached the other gateway {:?} after \
         replay resumed",
        resumed.elapsed()
    );

    // Rebuilt: the replica is made again from a fresh base backup, while a write goes
    // to the primary. Both gateways follow the rebuilt replica: same history, no resync.
    let rebuilt = {
        let (primary, replica) = (&primary, &replica);
        std::thread::scope(|s| {
            let rebuilding = s.spawn(|| primary.rebuild_replica(replica));
            let written = gws[0].admin(&["ip", "add", &cred.to_string(), "127.0.0.4"]);
            rebuilding.join().unwrap();
            written
        })
    };
    assert!(rebuilt.to_string().contains("127.0.0.4"), "{rebuilt}");
    let started = Instant::now();
    for gw in &gws {
        gw.wait_until_allowed(ip("127.0.0.4"), &key).await;
    }
    eprintln!(
        "after the rebuild, a write made during it was enforced by both {:?} after the \
         replica was back",
        started.elapsed()
    );
    add_ip(&gws[1], &paths, &key, "127.0.0.5").await;
    assert_eq!(status(&gws[1], "127.0.0.5", &key).await, StatusCode::OK);
    gws[0].wait_until_allowed(ip("127.0.0.5"), &key).await;
    for gw in &gws {
        assert_eq!(
            gw.metric("ipgate_refresh_total{result=\"loaded\"}").await,
            1.0,
            "one full load (at start): lag and the rebuild were followed as deltas"
        );
    }
}

//! The fleet after a database outage: once PostgreSQL is back, an operator's change made
//! right after its return is enforced by every gateway within `refresh.interval` + 1 s,
//! however long the outage lasted (no backoff left standing, notices heeded again).
//! Three real `ipgate serve` on one real PostgreSQL that the test stops and starts.
//! Skipped with one line when PostgreSQL is not installed (CI requires it).

mod common;

use common::pg::Postgres;
use common::*;
use http::StatusCode;
use std::time::{Duration, Instant};

const INTERVAL: Duration = Duration::from_secs(1);
/// What the fleet promises after a return: the interval and one second.
const PROMISE: Duration = Duration::from_secs(2);

async fn change_right_after_the_return(notify: bool) {
    if !Postgres::available() {
        return;
    }
    let pg = Postgres::start();
    let db = pg.database();
    let upstream = Upstream::start().await;
    let mut gws = Vec::new();
    for _ in 0..3 {
        let settings = Settings::new(&upstream.url())
            .set("store.url", &format!("\"{}\"", pg.url(&db)))
            .set("refresh.interval", "\"1s\"")
            .set("refresh.notify", &notify.to_string());
        let gw = Gateway::start(&settings);
        gw.wait_ready().await;
        gws.push(gw);
    }
    let (_, cred, key) = gws[0].registered_key(&["127.0.0.2"]).await;
    for gw in &gws {
        gw.wait_until_allowed(ip("127.0.0.2"), &key).await;
    }

    pg.stop();
    let down = Instant::now();
    // Long enough for a doubling backoff to have grown past the promise: four failed
    // polls on every gateway (an old poller waited 8 s after its fourth).
    for gw in &gws {
        gw.wait_metric("ipgate_refresh_total{result=\"error\"}", 4.0)
            .await;
    }
    pg.start_again();
    let back = Instant::now();
    let out = gws[0].admin_raw(&["ip", "add", &cred.to_string(), "127.0.0.5"]);
    assert!(
        out.status.success(),
        "the CLI writes once the database is back: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let acked = Instant::now();
    for gw in &gws {
        gw.wait_until_allowed(ip("127.0.0.5"), &key).await;
    }
    let took = acked.elapsed();
    eprintln!(
        "notify={notify}: outage {:?}; change acknowledged {:?} after the return, \
         enforced by all three {took:?} after that",
        back - down,
        acked - back
    );
    assert!(
        took <= PROMISE,
        "enforced everywhere {took:?} after the change, promised within {PROMISE:?} \
         (interval {INTERVAL:?} + 1 s)"
    );
    for gw in &gws {
        assert_eq!(gw.metric("ipgate_store_up").await, 1.0);
        assert_eq!(
            gw.get(ip("127.0.0.5"), "/", Some(&key)).await.status,
            StatusCode::OK
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_notify_a_change_after_an_outage_is_enforced_within_an_interval_and_a_second() {
    change_right_after_the_return(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_alone_enforces_a_change_after_an_outage_within_an_interval_and_a_second() {
    change_right_after_the_return(false).await;
}

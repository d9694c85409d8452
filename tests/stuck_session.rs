//! No stuck PostgreSQL session freezes the fleet: a session that holds the store-wide
//! counter row (an operator's forgotten `BEGIN`, or a gateway paused between bumping
//! the version and committing) stops no gateway's polls; writes elsewhere answer 503
//! within `store.timeout` and succeed again by themselves; a revocation written once
//! the session is gone reaches every gateway. Real gateways, a real PostgreSQL, short
//! timeouts so each case ends in seconds. Skipped with one line without PostgreSQL.

mod common;

use common::pg::Postgres;
use common::*;
use http::{Method, StatusCode};
use serde_json::json;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// `store.timeout` in these tests: each stuck call gives up after this.
const STORE_TIMEOUT: Duration = Duration::from_secs(1);
/// What a write may take beyond `STORE_TIMEOUT` on a busy test machine.
const SLACK: Duration = Duration::from_millis(1500);

fn settings(pg: &Postgres, database: &str, upstream: &Upstream) -> Settings {
    Settings::new(&upstream.url())
        .set("store.url", &format!("\"{}\"", pg.url(database)))
        .set("store.timeout", "\"1s\"")
        .set("refresh.interval", "\"100ms\"")
        .set("refresh.notify", "true")
}

/// A session of the test's own on `database`.
async fn session(pg: &Postgres, database: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&pg.url(database), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

/// `POST …/ip` of `new` as the key holder; the status and how long the answer took.
async fn add_ip(
    gw: &Gateway,
    from: IpAddr,
    paths: &ApiPaths,
    key: &str,
    new: &str,
) -> (StatusCode, Duration) {
    let started = Instant::now();
    let r = gw
        .send(
            from,
            Method::POST,
            &paths.ips(),
            &[(KEY_HEADER, key), ("content-type", "application/json")],
            Some(json!({"ip": new, "status": "ACTIVE"})),
        )
        .await;
    (r.status, started.elapsed())
}

/// Failed and completed polls so far.
async fn polls(gw: &Gateway) -> (f64, f64) {
    (
        gw.metric("ipgate_refresh_total{result=\"error\"}").await,
        gw.metric("ipgate_refresh_total{result=\"unchanged\"}")
            .await
            + gw.metric("ipgate_refresh_total{result=\"updated\"}").await,
    )
}

/// Sessions of `database` that wait for a lock, by backend pid.
async fn lock_waiters(db: &tokio_postgres::Client, database: &str) -> Vec<i32> {
    db.query(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
        &[&database],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Retries a write through `gw` until it is stored; how long that took.
async fn until_a_write_succeeds(gw: &Gateway, paths: &ApiPaths, key: &str, tag: u8) -> Duration {
    let started = Instant::now();
    for attempt in 0u8.. {
        let (status, _) = add_ip(
            gw,
            ip("127.0.0.2"),
            paths,
            key,
            &format!("10.{tag}.9.{attempt}"),
        )
        .await;
        if status == StatusCode::OK {
            return started.elapsed();
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(started.elapsed() < PATIENCE, "writes never recovered");
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_holding_the_counter_row_stops_no_poll() {
    let Some(pg) = Postgres::shared() else { return };
    let db = pg.database();
    let upstream = Upstream::start().await;
    let gws = [
        Gateway::start(&settings(pg, &db, &upstream)),
        Gateway::start(&settings(pg, &db, &upstream)),
    ];
    for gw in &gws {
        gw.wait_ready().await;
    }
    let (user, cred, key) = gws[0].registered_key(&["127.0.0.2"]).await;
    let paths = ApiPaths { user, cred };
    for gw in &gws {
        gw.wait_until_allowed(ip("127.0.0.2"), &key).await;
    }

    // BEGIN; lock the counter row; then nothing.
    let mut holder = session(pg, &db).await;
    let held = holder.transaction().await.unwrap();
    held.query_one(
        "SELECT value FROM meta WHERE name = 'change_version' FOR UPDATE",
        &[],
    )
    .await
    .unwrap();
    let before: Vec<(f64, f64)> = futures_util::future::join_all(gws.iter().map(polls)).await;

    // As many writers as the API has connections keep writing through gateway 1 for a
    // while: every write answers 503 within the store's timeout.
    let until = Instant::now() + Duration::from_secs(3);
    let writers = (0..4u8).map(|w| {
        let (gw, paths, key) = (&gws[1], &paths, &key);
        async move {
            let mut n = 0u8;
            while Instant::now() < until {
                let (status, took) =
                    add_ip(gw, ip("127.0.0.2"), paths, key, &format!("10.1.{w}.{n}")).await;
                assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "write {w}.{n}");
                assert!(took < STORE_TIMEOUT + SLACK, "write {w}.{n} took {took:?}");
                n += 1;
            }
        }
    });
    futures_util::future::join_all(writers).await;

    // Meanwhile both gateways kept polling, and none of their polls failed.
    for (gw, (errors, done)) in gws.iter().zip(before) {
        let (errors_now, done_now) = polls(gw).await;
        assert_eq!(
            errors_now, errors,
            "polls failed while the counter row was held"
        );
        assert!(
            done_now >= done + 5.0,
            "too few polls: {done} -> {done_now}"
        );
        assert_eq!(gw.metric("ipgate_store_up").await, 1.0);
    }

    // The session ends: writes succeed again, and a revocation reaches every gateway.
    held.rollback().await.unwrap();
    let took = until_a_write_succeeds(&gws[1], &paths, &key, 2).await;
    eprintln!("writes succeeded again {took:?} after the session ended");
    gws[0].admin(&["credential", "revoke", &cred.to_string()]);
    for gw in &gws {
        gw.wait_for_status(ip("127.0.0.2"), &key, StatusCode::FORBIDDEN)
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_past_its_deadline_leaves_no_session_waiting() {
    let Some(pg) = Postgres::shared() else { return };
    let db = pg.database();
    let upstream = Upstream::start().await;
    // The server's own limits far away: only the gateway's deadline ends the wait.
    let gw = Gateway::start(
        &settings(pg, &db, &upstream)
            .set("store.statement_timeout", "\"60s\"")
            .set("store.lock_timeout", "\"60s\""),
    );
    gw.wait_ready().await;
    let (user, cred, key) = gw.registered_key(&["127.0.0.2"]).await;
    let paths = ApiPaths { user, cred };

    let observer = session(pg, &db).await;
    let mut holder = session(pg, &db).await;
    let held = holder.transaction().await.unwrap();
    held.query_one(
        "SELECT value FROM meta WHERE name = 'change_version' FOR UPDATE",
        &[],
    )
    .await
    .unwrap();
    let (status, _) = add_ip(&gw, ip("127.0.0.2"), &paths, &key, "10.3.0.1").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // The abandoned session does not go on waiting for the row (and holding the
    // credential's row lock it took first).
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let waiting = lock_waiters(&observer, &db).await;
        if waiting.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sessions {waiting:?} still wait for the counter row after their call gave up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    held.rollback().await.unwrap();
    // Nothing of the abandoned write was stored, and the next write is not stuck
    // behind it.
    until_a_write_succeeds(&gw, &paths, &key, 3).await;
    let listed = gw.admin(&["ip", "list", &cred.to_string()]).to_string();
    assert!(!listed.contains("10.3.0.1"), "{listed}");
}

/// Sends SIGCONT to what it stopped, however the test ends.
struct Stopped(u32);

impl Drop for Stopped {
    fn drop(&mut self) {
        signal(self.0, "CONT");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_paused_in_the_middle_of_a_write_does_not_freeze_the_others() {
    let Some(pg) = Postgres::shared() else { return };
    let db = pg.database();
    let upstream = Upstream::start().await;
    // A paused gateway's session is ended by the server after this much silence.
    let idle = Duration::from_secs(3);
    let settings = settings(pg, &db, &upstream).set("store.idle_in_transaction_timeout", "\"3s\"");
    let gws = [
        Gateway::start(&settings),
        Gateway::start(&settings),
        Gateway::start(&settings),
    ];
    for gw in &gws {
        gw.wait_ready().await;
    }
    let (user, cred, key) = gws[0].registered_key(&["127.0.0.2"]).await;
    let paths = ApiPaths { user, cred };
    for gw in &gws {
        gw.wait_until_allowed(ip("127.0.0.2"), &key).await;
    }

    // A write's change-log row waits for a lock the test holds, so gateway 0 can be
    // paused while its transaction holds the counter row.
    let control = session(pg, &db).await;
    control
        .batch_execute(
            "CREATE FUNCTION hold_writes() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN PERFORM pg_advisory_xact_lock_shared(4242); RETURN NULL; END $$; \
             CREATE TRIGGER hold_writes AFTER INSERT ON change_log \
             FOR EACH ROW EXECUTE FUNCTION hold_writes(); \
             SELECT pg_advisory_lock(4242);",
        )
        .await
        .unwrap();
    let paused_write = {
        let target = gws[0].target(ip("127.0.0.2"));
        let (path, key) = (paths.ips(), key.clone());
        tokio::spawn(async move {
            let body = json!({"ip": "10.4.0.1", "status": "ACTIVE"}).to_string();
            send_raw(
                ip("127.0.0.2"),
                target,
                Method::POST,
                &path,
                &[(KEY_HEADER, &key), ("content-type", "application/json")],
                bytes::Bytes::from(body),
            )
            .await
            .status
        })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while lock_waiters(&control, &db).await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the write never reached the trigger"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    signal(gws[0].pid(), "STOP");
    let stopped = Stopped(gws[0].pid());
    control
        .batch_execute("SELECT pg_advisory_unlock(4242)")
        .await
        .unwrap();
    let paused_at = Instant::now();
    // Its statement is done; its transaction now waits for a COMMIT that cannot come.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let idle_in_tx: i64 = control
            .query_one(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = $1 \
                 AND state = 'idle in transaction'",
                &[&db],
            )
            .await
            .unwrap()
            .get(0);
        if idle_in_tx == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the paused write is not holding its transaction"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Writes through another gateway fail fast while the counter row is held, then
    // succeed by themselves once the server has ended the paused session.
    let before: Vec<(f64, f64)> = futures_util::future::join_all(gws[1..].iter().map(polls)).await;
    let (status, took) = add_ip(&gws[1], ip("127.0.0.2"), &paths, &key, "10.4.1.1").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(took < STORE_TIMEOUT + SLACK, "a write took {took:?}");
    until_a_write_succeeds(&gws[1], &paths, &key, 4).await;
    let recovered = paused_at.elapsed();
    eprintln!("writes succeeded again {recovered:?} after gateway 0 was paused");
    assert!(recovered < idle + SLACK + STORE_TIMEOUT, "{recovered:?}");
    for (gw, (errors, done)) in gws[1..].iter().zip(before) {
        let (errors_now, done_now) = polls(gw).await;
        assert_eq!(
            errors_now, errors,
            "polls failed while gateway 0 was paused"
        );
        assert!(done_now > done, "no polls while gateway 0 was paused");
    }

    // A revocation made now reaches every gateway, the paused one once it runs again.
    gws[1].admin(&["credential", "revoke", &cred.to_string()]);
    for gw in &gws[1..] {
        gw.wait_for_status(ip("127.0.0.2"), &key, StatusCode::FORBIDDEN)
            .await;
    }
    drop(stopped);
    gws[0]
        .wait_for_status(ip("127.0.0.2"), &key, StatusCode::FORBIDDEN)
        .await;
    // The paused write was never acknowledged, and nothing of it was stored.
    let answered = tokio::time::timeout(PATIENCE, paused_write)
        .await
        .expect("the paused gateway answered its write")
        .unwrap();
    assert_ne!(answered, StatusCode::OK);
    let listed = gws[1].admin(&["ip", "list", &cred.to_string()]).to_string();
    assert!(!listed.contains("10.4.0.1"), "{listed}");
}

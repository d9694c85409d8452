//! Fleet mode end to end: several real `ipgate serve` processes and the CLI on one real
//! PostgreSQL, which the tests stop, start, restore and kill under them. Skipped with
//! one line when PostgreSQL is not installed (CI requires it).

mod common;

use common::pg::Postgres;
use common::*;
use http::{Method, StatusCode};
use serde_json::json;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// A gateway on `database`, polling every `interval`, with or without NOTIFY.
fn settings(
    pg: &Postgres,
    database: &str,
    upstream: &Upstream,
    interval: &str,
    notify: bool,
) -> Settings {
    Settings::new(&upstream.url())
        .set("store.url", &format!("\"{}\"", pg.url(database)))
        .set("refresh.interval", &format!("\"{interval}\""))
        .set("refresh.notify", &notify.to_string())
}

async fn fleet(
    pg: &Postgres,
    database: &str,
    upstream: &Upstream,
    n: usize,
    notify: bool,
) -> Vec<Gateway> {
    let mut gateways = Vec::new();
    for _ in 0..n {
        let gw = Gateway::start(&settings(pg, database, upstream, "1s", notify));
        gw.wait_ready().await;
        gateways.push(gw);
    }
    gateways
}

/// `POST …/ip` through `gw` as the key holder.
async fn add_ip(gw: &Gateway, from: IpAddr, paths: &ApiPaths, key: &str, new: &str) -> Answer {
    gw.send(
        from,
        Method::POST,
        &paths.ips(),
        &[(KEY_HEADER, key), ("content-type", "application/json")],
        Some(json!({"ip": new, "status": "ACTIVE"})),
    )
    .await
}

/// How long until every gateway lets `key` in from `from`.
async fn until_everywhere(
    gateways: &[Gateway],
    from: IpAddr,
    key: &str,
    want: StatusCode,
) -> Duration {
    let started = Instant::now();
    for gw in gateways {
        gw.wait_for_status(from, key, want).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_through_one_gateway_is_enforced_by_all() {
    let Some(pg) = Postgres::shared() else { return };
    let db = pg.database();
    let upstream = Upstream::start().await;
    let gws = fleet(pg, &db, &upstream, 3, true).await;

    let (user, cred, key) = gws[0].registered_key(&["127.0.0.2"]).await;
    let took = until_everywhere(&gws, ip("127.0.0.2"), &key, StatusCode::OK).await;
    eprintln!("registration through gateway 0 enforced by all three after {took:?}");

    // A change through the second gateway's API: enforced there before its answer,
    // and by the others soon after.
    let paths = ApiPaths { user, cred };
    let r = add_ip(&gws[1], ip("127.0.0.2"), &paths, &key, "127.0.0.3").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        gws[1].get(ip("127.0.0.3"), "/", Some(&key)).await.status,
        StatusCode::OK
    );
    let took = until_everywhere(&gws, ip("127.0.0.3"), &key, StatusCode::OK).await;
    eprintln!("an API write through gateway 1 enforced by all three after {took:?}");
    for gw in &gws {
        gw.wait_metric("ipgate_changes_applied_total", 1.0).await;
        assert_eq!(gw.metric("ipgate_store_up").await, 1.0);
        assert_eq!(
            gw.metric("ipgate_refresh_total{result=\"loaded\"}").await,
            1.0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_alone_carries_a_revocation_by_the_cli() {
    let Some(pg) = Postgres::shared() else { return };
    let db = pg.database();
    let upstream = Upstream::start().await;
    let mut gws = Vec::new();
    for _ in 0..2 {
        let gw = Gateway::start(&settings(pg, &db, &upstream, "200ms", false));
        gw.wait_ready().await;
        gws.push(gw);
    }
    let (_, cred, key) = gws[0].registered_key(&["127.0.0.2"]).await;
    until_everywhere(&gws, ip("127.0.0.2"), &key, StatusCode::OK).await;
    gws[1].admin(&["credential", "revoke", &cred.to_string()]);
    let took = until_everywhere(&gws, ip("127.0.0.2"), &key, StatusCode::FORBIDDEN).await;
    eprintln!("a CLI revocation reached both gateways by polling after {took:?}");
    for gw in &gws {
        gw.wait_log("revoked_key").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_down_keeps_the_last_snapshot_refuses_writes_and_catches_up() {
    if !Postgres::available() {
        return;
    }
    let pg = Postgres::start();
    let db = pg.database();
    let upstream = Upstream::start().await;
    let gws = fleet(&pg, &db, &upstream, 2, true).await;
    let (user, cred, key) = gws[0].registered_key(&["127.0.0.2"]).await;
    until_everywhere(&gws, ip("127.0.0.2"), &key, StatusCode::OK).await;
    let paths = ApiPaths { user, cred };

    pg.stop();
    for gw in &gws {
        gw.wait_metric("ipgate_refresh_total{result=\"error\"}", 1.0)
            .await;
        assert_eq!(gw.metric("ipgate_store_up").await, 0.0);
        // The last good snapshot keeps serving.
        assert_eq!(
            gw.get(ip("127.0.0.2"), "/", Some(&key)).await.status,
            StatusCode::OK
        );
        assert_eq!(gw.admin_get("/readyz").await.0, StatusCode::OK);
    }
    // A write cannot be stored: 503 in bunq's shape, nothing half-written.
    let r = add_ip(&gws[0], ip("127.0.0.2"), &paths, &key, "127.0.0.3").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert!(r.json()["Error"][0]["error_description"]
        .as_str()
        .unwrap()
        .contains("nothing was changed"));
    let out = gws[0].admin_raw(&["ip", "list", &cred.to_string()]);
    assert!(!out.status.success(), "the CLI reports the database down");

    pg.start_again();
    // Back: a change made now reaches both, without a restart.
    let r = add_ip(&gws[1], ip("127.0.0.2"), &paths, &key, "127.0.0.4").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    until_everywhere(&gws, ip("127.0.0.4"), &key, StatusCode::OK).await;
    let listed = gws[0].admin(&["ip", "list", &cred.to_string()]);
    assert!(
        !listed.to_string().contains("127.0.0.3"),
        "the refused write left nothing"
    );
    for gw in &gws {
        gw.wait_log("store reachable again").await;
        assert_eq!(gw.metric("ipgate_store_up").await, 1.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_staleness_a_gateway_refuses_rather_than_trust_an_old_list() {
    if !Postgres::available() {
        return;
    }
    let pg = Postgres::start();
    let db = pg.database();
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        &settings(&pg, &db, &upstream, "200ms", true).set("refresh.max_staleness", "\"1s\""),
    );
    gw.wait_ready().await;
    let (_, _, key) = gw.registered_key(&["127.0.0.2"]).await;
    pg.stop();
    gw.wait_for_status(ip("127.0.0.2"), &key, StatusCode::SERVICE_UNAVAILABLE)
        .await;
    gw.wait_metric(
        "ipgate_requests_total{decision=\"deny\",reason=\"stale_snapshot\"}",
        1.0,
    )
    .await;
    pg.start_again();
    gw.wait_until_allowed(ip("127.0.0.2"), &key).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_started_while_the_database_is_down_lets_nobody_in() {
    if !Postgres::available() {
        return;
    }
    let pg = Postgres::start();
    let db = pg.database();
    let upstream = Upstream::start().await;
    let first = Gateway::start(&settings(&pg, &db, &upstream, "200ms", true));
    first.wait_ready().await;
    let (_, _, key) = first.registered_key(&["127.0.0.2"]).await;
    pg.stop();
    let forwarded = upstream.received();

    let late = Gateway::start(&settings(&pg, &db, &upstream, "200ms", true));
    late.wait_metric("ipgate_refresh_total{result=\"error\"}", 1.0)
        .await;
    assert_eq!(
        late.admin_get("/readyz").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let r = late.get(ip("127.0.0.2"), "/", Some(&key)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        upstream.received(),
        forwarded,
        "nothing reached the upstream"
    );

    pg.start_again();
    late.wait_ready().await;
    late.wait_until_allowed(ip("127.0.0.2"), &key).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_gateway_during_writes_loses_nothing_acknowledged() {
    let Some(pg) = Postgres::shared() else { return };
    let db = pg.database();
    let upstream = Upstream::start().await;
    let mut gws = fleet(pg, &db, &upstream, 2, true).await;
    let (user, cred, key) = gws[0].registered_key(&["127.0.0.2"]).await;
    let paths = ApiPaths { user, cred };

    // A stream of writes through gateway 0; it is killed part way.
    let target = gws[0].target(ip("127.0.0.2"));
    let writer = {
        let key = key.clone();
        let path = paths.ips();
        tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for i in 0..90u32 {
                let addr = format!("10.20.{}.{}", i / 200, i % 200 + 1);
                let stream = match tokio::time::timeout(Duration::from_secs(2), async {
                    let socket = tokio::net::TcpSocket::new_v4().unwrap();
                    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
                    socket.connect(target).await
                })
                .await
                {
                    Ok(Ok(s)) => s,
                    _ => break,
                };
                let Ok(r) = try_post(stream, &path, &key, &addr).await else {
                    break;
                };
                if r == StatusCode::OK {
                    acknowledged.push(addr);
                }
            }
            acknowledged
        })
    };
    // Kill once some writes are in.
    gws[1]
        .wait_metric("ipgate_changes_applied_total", 10.0)
        .await;
    signal(gws[0].pid(), "KILL");
    let acknowledged = writer.await.unwrap();
    assert!(
        acknowledged.len() >= 5,
        "too few writes before the kill: {}",
        acknowledged.len()
    );
    let stored = gws[1].admin(&["ip", "list", &cred.to_string()]).to_string();
    for addr in &acknowledged {
        assert!(
            stored.contains(&format!("\"{addr}\"")),
            "{addr} was acknowledged but is gone"
        );
    }
    // Every acknowledged entry is enforced by the survivor, and by a new gateway.
    // (The survivor's snapshot holds them all: the registration's own address and
    // every acknowledged one, ACTIVE; 127.0.0.2 alone was allowed from the start.)
    let last = acknowledged.last().unwrap();
    gws[1]
        .wait_metric(
            "ipgate_snapshot_active_ips",
            acknowledged.len() as f64 + 1.0,
        )
        .await;
    let fresh = Gateway::start(&settings(pg, &db, &upstream, "1s", true));
    fresh.wait_ready().await;
    let active = fresh.metric("ipgate_snapshot_active_ips").await;
    assert!(
        active >= acknowledged.len() as f64 + 1.0,
        "{active} ACTIVE after {last}"
    );
    gws.remove(0);
}

/// One `POST` of a new ACTIVE address over `stream`; the status, or an error when the
/// gateway died under it.
async fn try_post(
    stream: tokio::net::TcpStream,
    path: &str,
    key: &str,
    addr: &str,
) -> Result<StatusCode, hyper::Error> {
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let body = json!({"ip": addr, "status": "ACTIVE"}).to_string();
    let req = http::Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("host", "gateway.test")
        .header(KEY_HEADER, key)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    Ok(sender.send_request(req).await?.status())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_database_forces_a_full_load_never_a_stale_snapshot() {
    let Some(pg) = Postgres::shared() else { return };
    let db = pg.database();
    let upstream = Upstream::start().await;
    // No polls and no hints: the gateway learns of the store only through its own
    // API writes, so the test decides what it sees and when.
    let gw = Gateway::start(&settings(pg, &db, &upstream, "1h", false));
    gw.wait_ready().await;
    let (a_user, a_cred, a_key) = gw.registered_key(&["127.0.0.2"]).await;
    let (b_user, b_cred, b_key) = gw.registered_key(&["127.0.0.5"]).await;
    let a = ApiPaths {
        user: a_user,
        cred: a_cred,
    };
    let b = ApiPaths {
        user: b_user,
        cred: b_cred,
    };

    // A backup; then B adds an address the backup does not have.
    let dump = pg.dir().join(format!("{db}.sql"));
    pg.dump(&db, &dump);
    let r = add_ip(&gw, ip("127.0.0.5"), &b, &b_key, "127.0.0.6").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        gw.get(ip("127.0.0.6"), "/", Some(&b_key)).await.status,
        StatusCode::OK
    );

    // The database is restored from the backup and other history is written over the
    // same version number. B's address is gone from the store; B is not touched again.
    pg.restore(&db, &dump);
    gw.admin(&["user", "add", "--name", "after-restore"]);
    // A's next write makes the gateway read the feed. Trusting version numbers alone,
    // it would apply only A's change and keep B's lost address for good.
    let r = add_ip(&gw, ip("127.0.0.2"), &a, &a_key, "127.0.0.3").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        gw.metric("ipgate_resyncs_total{reason=\"history_rewritten\"}")
            .await,
        1.0
    );
    assert_eq!(
        gw.get(ip("127.0.0.6"), "/", Some(&b_key)).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        gw.get(ip("127.0.0.3"), "/", Some(&a_key)).await.status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_notifies_every_listening_gateway() {
    let Some(pg) = Postgres::shared() else { return };
    let db = pg.database();
    let upstream = Upstream::start().await;
    // Polls an hour apart: only the notification of a commit can carry a change.
    let gw = Gateway::start(&settings(pg, &db, &upstream, "1h", true));
    gw.wait_ready().await;
    let (_, cred, key) = gw.registered_key(&["127.0.0.2"]).await;
    let before = gw.metric("ipgate_changes_applied_total").await;
    gw.admin(&["credential", "revoke", &cred.to_string()]);
    gw.wait_for_status(ip("127.0.0.2"), &key, StatusCode::FORBIDDEN)
        .await;
    assert!(gw.metric("ipgate_changes_applied_total").await > before);
}

/// A listening gateway's own writes commit without a NOTIFY; its listener sends one
/// notice per batch, carrying the newest version. With polls an hour apart only that
/// notice can tell the other gateway: every write of a burst must reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listening_gateways_writes_reach_the_others_by_its_batched_notice() {
    let Some(pg) = Postgres::shared() else { return };
    let db = pg.database();
    let upstream = Upstream::start().await;
    let gws: Vec<Gateway> = (0..2)
        .map(|_| Gateway::start(&settings(pg, &db, &upstream, "1h", true)))
        .collect();
    for gw in &gws {
        gw.wait_ready().await;
    }
    let (user, cred, key) = gws[0].registered_key(&["127.0.0.2"]).await;
    let paths = ApiPaths { user, cred };
    gws[1]
        .wait_for_status(ip("127.0.0.2"), &key, StatusCode::OK)
        .await;
    // A burst of writes through gateway 0, faster than its notices are spaced.
    let burst = ["127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6"];
    let writes = burst
        .iter()
        .map(|new| add_ip(&gws[0], ip("127.0.0.2"), &paths, &key, new));
    for r in futures_util::future::join_all(writes).await {
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }
    let started = Instant::now();
    for new in burst {
        gws[1].wait_for_status(ip(new), &key, StatusCode::OK).await;
    }
    eprintln!(
        "a burst through gateway 0 enforced by gateway 1 after {:?}",
        started.elapsed()
    );
    assert_eq!(
        gws[1]
            .metric("ipgate_refresh_total{result=\"loaded\"}")
            .await,
        1.0,
        "carried by notices and deltas, never a full load"
    );
}

/// Waits until `gw` has at least `n` credentials and a resync for `reason`.
async fn wait_for_load(gw: &Gateway, n: u32, reason: &str) -> Duration {
    let started = Instant::now();
    gw.wait_metric(&format!("ipgate_resyncs_total{{reason=\"{reason}\"}}"), 1.0)
        .await;
    gw.wait_metric("ipgate_snapshot_credentials", f64::from(n))
        .await;
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_far_behind_loads_everything_instead_of_a_delta() {
    let Some(pg) = Postgres::shared() else { return };
    let db = pg.database();
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&settings(pg, &db, &upstream, "200ms", false));
    gw.wait_ready().await;
    pg.many_changes(&db, 60_000);
    let took = wait_for_load(&gw, 60_000, "delta_too_large").await;
    eprintln!("60,000 versions behind: a full load instead of a delta, after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_too_slow_to_read_becomes_a_full_load() {
    let Some(pg) = Postgres::shared() else { return };
    let db = pg.database();
    let upstream = Upstream::start().await;
    // 70,000 credentials loaded with the ordinary limits; then a gateway whose
    // statements may run 50 ms: it loads at start (a full load has 120 s), and a delta
    // of 30,000 more (less than half the store: worth a delta) does not fit.
    let gw = Gateway::start(&settings(pg, &db, &upstream, "200ms", false));
    gw.wait_ready().await;
    pg.many_changes(&db, 70_000);
    drop(gw);
    let gw = Gateway::start(
        &settings(pg, &db, &upstream, "200ms", false).set("store.statement_timeout", "\"50ms\""),
    );
    gw.wait_ready().await;
    gw.wait_metric("ipgate_snapshot_credentials", 70_000.0)
        .await;
    pg.many_changes(&db, 30_000);
    let took = wait_for_load(&gw, 100_000, "delta_timed_out").await;
    eprintln!("30,000 versions behind, the delta timed out: loaded after {took:?}");
}

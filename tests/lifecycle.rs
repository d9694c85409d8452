//! SIGTERM: stop accepting, turn not-ready, drain requests in flight within
//! `server.shutdown_grace`, exit 0.

mod common;

use common::*;
use http::StatusCode;
use std::time::{Duration, Instant};

#[tokio::test]
async fn sigterm_drains_the_request_in_flight() {
    let upstream = Upstream::start().await;
    let mut gw =
        Gateway::start(&Settings::new(&upstream.url()).set("server.shutdown_grace", "\"8s\""));
    gw.wait_ready().await;
    let (_, _, key) = gw.registered_key(&["127.0.0.2"]).await;

    let target = gw.target(ip("127.0.0.2"));
    let before = upstream.received();
    let slow_key = key.clone();
    let in_flight = tokio::spawn(async move {
        send_raw(
            ip("127.0.0.2"),
            target,
            http::Method::GET,
            "/slow",
            &[(KEY_HEADER, &slow_key)],
            bytes::Bytes::new(),
        )
        .await
    });
    upstream.wait_received_beyond(before).await;

    signal(gw.pid(), "TERM");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, body) = gw.admin_get("/readyz").await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(body, "draining\n");
            break;
        }
        assert!(Instant::now() < deadline, "/readyz never turned not-ready");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // New connections stop a moment later: the listener closes once the accept loop
    // sees the signal.
    let deadline = Instant::now() + PATIENCE;
    while tokio::net::TcpStream::connect(gw.target(ip("127.0.0.1")))
        .await
        .is_ok()
    {
        assert!(Instant::now() < deadline, "still accepting while draining");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let answer = in_flight.await.unwrap();
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "the request in flight was cut"
    );
    assert_eq!(answer.json()["path"], "/slow");
    // How soon it exits is the machine's business (wait_exit allows PATIENCE); that the
    // drain ended by itself, not by the grace period, is what the log says.
    let status = gw.wait_exit();
    assert!(status.success(), "exit status {status:?}");
    gw.wait_log("all connections drained").await;
}

#[tokio::test]
async fn grace_period_bounds_the_drain() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = Upstream::start().await;
    let mut gw =
        Gateway::start(&Settings::new(&upstream.url()).set("server.shutdown_grace", "\"300ms\""));
    gw.wait_ready().await;
    let (_, _, key) = gw.registered_key(&["127.0.0.2"]).await;
    let from = ip("127.0.0.2");
    let before = upstream.received();
    // A request whose body never comes: the upstream waits for it for ever, so only the
    // grace period can end the drain (no race with a slow machine).
    let mut s = connect_from(from, gw.target(from)).await;
    let head = format!(
        "POST /upload HTTP/1.1\r\nhost: x\r\n{KEY_HEADER}: {key}\r\ncontent-length: 10\r\n\
         x-request-id: t-cut\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    upstream.wait_received_beyond(before).await;
    signal(gw.pid(), "TERM");
    let status = gw.wait_exit();
    assert!(status.success(), "exit status {status:?}");
    gw.wait_log("grace period over").await;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await; // EOF or reset: the process is gone
    assert!(
        !String::from_utf8_lossy(&out).contains(" 200 "),
        "the cut request should fail, not succeed"
    );
    // The cut request has its access line, saying so.
    gw.wait_log("\"request_id\":\"t-cut\"").await;
    let line: serde_json::Value = gw
        .logs()
        .iter()
        .find(|l| l.contains("\"request_id\":\"t-cut\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .unwrap();
    assert_eq!(line["status"], 0, "{line}");
    assert_eq!(line["cut"], "shutdown", "{line}");
    assert_eq!(line["path"], "/upload", "{line}");
    // Its 10 declared bytes never came: the line does not claim them.
    assert_eq!(line["bytes_in"], serde_json::Value::Null, "{line}");
}

#[tokio::test]
async fn sighup_without_tls_is_harmless() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&Settings::new(&upstream.url()));
    gw.wait_ready().await;
    signal(gw.pid(), "HUP");
    gw.wait_log("configuration reloaded").await;
    assert_eq!(gw.admin_get("/livez").await.0, StatusCode::OK);
}

#[tokio::test]
async fn one_startup_line_says_what_runs_and_never_a_password() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&Settings::new(&upstream.url()));
    gw.wait_log("ipgate started").await;
    let line: serde_json::Value = gw
        .logs()
        .iter()
        .find(|l| l.contains("ipgate started"))
        .map(|l| serde_json::from_str(l).unwrap())
        .unwrap();
    assert_eq!(line["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(line["listen"], gw.public.to_string());
    assert_eq!(line["admin_listen"], gw.admin.to_string());
    assert_eq!(line["upstream"], format!("{}/", upstream.url()));
    let db = gw.dir.path().join("ipgate.db");
    assert_eq!(line["store"], format!("sqlite {}", db.display()));
    assert_eq!(line["tls"], false);
    assert_eq!(line["workers"], 1);

    // A PostgreSQL store is named without its password (it need not be reachable: the
    // line comes before the first load).
    let closed = closed_port().await;
    let pg = Gateway::start(&Settings::new(&upstream.url()).set(
        "store.url",
        &format!(
            "\"postgres://gw:s3cret@127.0.0.1:{}/ipgate\"",
            closed.port()
        ),
    ));
    pg.wait_log("ipgate started").await;
    let line = pg
        .logs()
        .into_iter()
        .find(|l| l.contains("ipgate started"))
        .unwrap();
    assert!(
        line.contains(&format!(
            "postgres postgres://gw@127.0.0.1:{}/ipgate",
            closed.port()
        )),
        "{line}"
    );
    assert!(
        pg.logs().iter().all(|l| !l.contains("s3cret")),
        "a password was logged"
    );
}

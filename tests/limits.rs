//! Limits that keep one client from crowding out the others: refusals per address and
//! second, and connections at once.

mod common;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::net::IpAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const UNKNOWN: &str = "ipg_0000000000000000000000000000000000000000000";

async fn start(settings: impl FnOnce(Settings) -> Settings) -> (Upstream, Gateway) {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&settings(Settings::new(&upstream.url())));
    gw.wait_ready().await;
    (upstream, gw)
}

/// A kept-alive HTTP/1.1 connection from `from`.
async fn keep_alive(gw: &Gateway, from: IpAddr) -> SendRequest<Full<Bytes>> {
    let stream = connect_from(from, gw.target(from)).await;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn get_on(sender: &mut SendRequest<Full<Bytes>>, key: &str) -> Answer {
    let req = Request::builder()
        .uri("/limited")
        .header("host", "x")
        .header(KEY_HEADER, key)
        .body(Full::new(Bytes::new()))
        .unwrap();
    collect(sender.send_request(req).await.unwrap()).await
}

#[tokio::test]
async fn an_address_flooding_refusals_is_limited_and_nobody_else() {
    let (_up, gw) = start(|s| s.set("limits.refusals_per_second", "1")).await;
    let (_, _, other) = gw.registered_key(&["127.0.0.2"]).await;
    let (_, _, own) = gw.registered_key(&["127.0.0.3"]).await;
    let flooder = ip("127.0.0.3");
    let mut flood = keep_alive(&gw, flooder).await;

    // Refused keys from one address, until it is limited (two refusals in a second).
    let mut first = None;
    for _ in 0..1000 {
        let r = get_on(&mut flood, UNKNOWN).await;
        match r.status {
            StatusCode::FORBIDDEN => {}
            StatusCode::TOO_MANY_REQUESTS => {
                first = Some(r);
                break;
            }
            other => panic!("unexpected {other}: {}", r.text()),
        }
    }
    let limited = first.expect("no refusal was ever limited");
    assert_eq!(limited.headers["retry-after"], "1");
    assert_eq!(limited.headers["content-type"], "application/json");
    assert!(limited.json()["Error"][0]["error_description"].is_string());
    gw.wait_metric("ipgate_refusals_limited_total", 1.0).await;

    // Meanwhile allowed requests pass, from another address and from the flooding one
    // (a client behind the same NAT), and are never answered 429.
    let mut limited_between = 0;
    for _ in 0..1000 {
        let r = get_on(&mut flood, &own).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let r = gw.get(ip("127.0.0.2"), "/limited", Some(&other)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        // The refusal right after shows whether the limit was in force all along.
        match get_on(&mut flood, UNKNOWN).await.status {
            StatusCode::TOO_MANY_REQUESTS => limited_between += 1,
            StatusCode::FORBIDDEN => {}
            other => panic!("unexpected {other}"),
        }
        if limited_between >= 3 {
            break;
        }
    }
    assert!(
        limited_between >= 3,
        "the limit never held between allowed requests"
    );
    // A refusal from a third address is not limited by the flood.
    assert_eq!(
        gw.get(ip("127.0.0.4"), "/limited", Some(UNKNOWN))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
}

/// Waits until `ipgate_open_connections` is exactly `want`.
async fn wait_open(gw: &Gateway, want: f64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let now = gw.metric("ipgate_open_connections").await;
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{now} connections open, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads until the gateway closes the connection (at most PATIENCE).
async fn read_until_closed(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, s.read_to_end(&mut out)).await;
    assert!(
        closed.is_ok(),
        "still open: {}",
        String::from_utf8_lossy(&out)
    );
    String::from_utf8_lossy(&out).into_owned()
}

/// A GET for `key` on a fresh connection, retried while the gateway closes new
/// connections unanswered (a place frees a moment after a client leaves).
async fn served_eventually(gw: &Gateway, from: IpAddr, key: &str) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut s = connect_from(from, gw.target(from)).await;
        let request = format!(
            "GET /new HTTP/1.1\r\nhost: x\r\n{KEY_HEADER}: {key}\r\nconnection: close\r\n\r\n"
        );
        // A refused connection may already be closed: a failed write is a refusal too.
        let _ = s.write_all(request.as_bytes()).await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(PATIENCE, s.read_to_end(&mut out)).await;
        let answer = String::from_utf8_lossy(&out).into_owned();
        if !answer.is_empty() {
            return answer;
        }
        assert!(Instant::now() < deadline, "a new client was never served");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const CAP: usize = 20;

#[tokio::test]
async fn at_the_cap_busy_connections_keep_their_place() {
    let (up, gw) = start(|s| {
        s.set("server.max_connections", &CAP.to_string())
            .set("server.client_share_percent", "100")
            .set("server.header_read_timeout", "\"60s\"")
    })
    .await;
    let (_, _, key) = gw.registered_key(&["127.0.0.2"]).await;
    let from = ip("127.0.0.2");
    wait_open(&gw, 0.0).await;
    assert_eq!(gw.metric("ipgate_max_connections").await, CAP as f64);

    // Every place taken by a request in flight that waits on the upstream (`/slow`
    // answers after 2 s): busy, not stalled.
    let before = up.received();
    let mut busy = Vec::new();
    for _ in 0..CAP {
        let mut s = connect_from(from, gw.target(from)).await;
        let request = format!(
            "POST /slow HTTP/1.1\r\nhost: x\r\n{KEY_HEADER}: {key}\r\ncontent-length: 10\r\n\r\n\
             0123456789"
        );
        s.write_all(request.as_bytes()).await.unwrap();
        busy.push(s);
    }
    let deadline = Instant::now() + PATIENCE;
    while up.received() < before + CAP {
        assert!(
            Instant::now() < deadline,
            "not every request reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // One more: closed at once, unanswered, counted.
    let mut extra = connect_from(from, gw.target(from)).await;
    let request = format!("GET /x HTTP/1.1\r\nhost: x\r\n{KEY_HEADER}: {key}\r\n\r\n");
    let _ = extra.write_all(request.as_bytes()).await;
    assert_eq!(read_until_closed(&mut extra).await, "");
    gw.wait_metric("ipgate_connections_refused_total", 1.0)
        .await;
    assert_eq!(gw.metric("ipgate_connections_evicted_total").await, 0.0);

    // The requests in flight were not touched: each completes when the upstream answers.
    for s in busy.iter_mut() {
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
    }
    assert_eq!(gw.metric("ipgate_connections_evicted_total").await, 0.0);
    // Some leave; a new client is served.
    busy.truncate(CAP - 3);
    let answer = served_eventually(&gw, from, &key).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn idle_connections_cannot_keep_a_new_client_out() {
    let (_up, gw) = start(|s| {
        s.set("server.max_connections", &CAP.to_string())
            .set("server.client_share_percent", "100")
            .set("server.header_read_timeout", "\"60s\"")
    })
    .await;
    let (_, _, key) = gw.registered_key(&["127.0.0.2"]).await;
    let from = ip("127.0.0.2");
    wait_open(&gw, 0.0).await;

    // Every place taken by a connection that says nothing.
    let mut idle = Vec::new();
    for _ in 0..CAP {
        idle.push(connect_from(ip("127.0.0.7"), gw.target(from)).await);
    }
    wait_open(&gw, CAP as f64).await;

    // A new client is served at once: an idle connection makes room.
    let r = gw.get(from, "/new", Some(&key)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    gw.wait_metric("ipgate_connections_evicted_total", 1.0)
        .await;
    assert_eq!(gw.metric("ipgate_connections_refused_total").await, 0.0);

    // One idle connection was closed for it, and only one.
    assert_eq!(gw.metric("ipgate_connections_evicted_total").await, 1.0);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let closed = idle.iter().filter(|s| !would_block(s)).count();
        if closed >= 1 {
            assert_eq!(closed, 1, "more than one idle connection was closed");
            break;
        }
        assert!(Instant::now() < deadline, "no idle connection was closed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// True while a connection is open with nothing to read.
fn would_block(s: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(s.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// 2,000 registrations with made-up secrets, 64 at a time, from many addresses. None of
/// them reaches the store's write lock; meanwhile a real registration, a holder's API
/// write, allowed traffic and the poller all go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_storm_stalls_nothing() {
    let (_up, gw) = start(|s| s.set("refresh.interval", "\"100ms\"")).await;
    let (user, cred, key) = gw.registered_key(&["127.0.0.2"]).await;
    let holder = ApiPaths { user, cred };
    let (_, _, pending_key) = gw.new_key();
    let polls = gw
        .metric("ipgate_refresh_total{result=\"unchanged\"}")
        .await;

    let gw = std::sync::Arc::new(gw);
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
    let mut storm = Vec::new();
    for i in 0..2000u32 {
        let permit = std::sync::Arc::clone(&slots).acquire_owned().await.unwrap();
        let storming = std::sync::Arc::clone(&gw);
        storm.push(tokio::spawn(async move {
            let from = ip(&format!("127.0.1.{}", i % 200 + 1));
            let secret = format!("ipg_storm{i:038}");
            let body = serde_json::json!({"description": "x", "secret": secret});
            let r = storming.register_device(from, body).await;
            drop(permit);
            r.status
        }));
        if i == 1000 {
            // Halfway: everything else still works.
            let body = serde_json::json!({"description": "real", "secret": pending_key});
            let r = gw.register_device(ip("127.0.0.3"), body).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            let r = gw
                .send(
                    ip("127.0.0.2"),
                    http::Method::POST,
                    &holder.ips(),
                    &[(KEY_HEADER, &key)],
                    Some(serde_json::json!({"ip": "127.0.0.4"})),
                )
                .await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            assert_eq!(
                gw.get(ip("127.0.0.4"), "/", Some(&key)).await.status,
                StatusCode::OK
            );
        }
    }
    for s in storm {
        assert_eq!(s.await.unwrap(), StatusCode::BAD_REQUEST);
    }
    assert_eq!(
        gw.metric("ipgate_device_registrations_total{result=\"unknown_key\"}")
            .await,
        2000.0,
        "every made-up secret was refused before the store's write lock"
    );
    assert_eq!(
        gw.metric("ipgate_device_registrations_total{result=\"registered\"}")
            .await,
        2.0
    );
    gw.wait_until_allowed(ip("127.0.0.3"), &pending_key).await;
    assert!(
        gw.metric("ipgate_refresh_total{result=\"unchanged\"}")
            .await
            > polls
    );
}

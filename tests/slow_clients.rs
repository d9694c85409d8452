//! No client holds the gateway (SPEC section 6): heads over their bound are refused at
//! ipgate's edge, bodies and unread answers have deadlines, one address holds only its
//! share of `server.max_connections`, and stalled connections make room for new
//! clients. Raw sockets from chosen 127.0.0.x addresses, on HTTP/1.1 and HTTP/2.

mod common;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::IpAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start(settings: impl FnOnce(Settings) -> Settings) -> (Upstream, Gateway) {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&settings(Settings::new(&upstream.url())));
    gw.wait_ready().await;
    (upstream, gw)
}

/// Writes `bytes` (ignoring a failed write: the gateway may close first) while reading
/// until the gateway closes; what it answered.
async fn answer_to(gw: &Gateway, from: IpAddr, bytes: Vec<u8>) -> String {
    let s = connect_from(from, gw.target(from)).await;
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&bytes).await;
        wr
    });
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rd.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("still open: {}", String::from_utf8_lossy(&out)),
        }
    }
    drop(writer.await);
    String::from_utf8_lossy(&out).into_owned()
}

fn get_with(key: &str, extra: &[(String, String)]) -> Vec<u8> {
    let mut head = format!("GET /big HTTP/1.1\r\nhost: x\r\n{KEY_HEADER}: {key}\r\n");
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// One 100 KB line; a 20 KB line (under the head's bound, over a line's); a 1 MB head
/// of 70 lines of 15 KB each.
fn oversized_heads() -> Vec<(&'static str, Vec<(String, String)>)> {
    let line = |n: usize| "a".repeat(n);
    vec![
        ("100 KB line", vec![("x-big".into(), line(100 * 1024))]),
        ("20 KB line", vec![("x-big".into(), line(20 * 1024))]),
        (
            "1 MB head",
            (0..70)
                .map(|i| (format!("x-part-{i}"), line(15 * 1024)))
                .collect(),
        ),
    ]
}

#[tokio::test]
async fn a_head_over_its_bound_is_answered_431_and_never_forwarded_http1() {
    let (up, gw) = start(|s| s).await;
    let (_, _, key) = gw.registered_key(&["127.0.0.2"]).await;
    let from = ip("127.0.0.2");
    // A head within the bounds passes (and counts as one upstream request).
    let fine = get_with(&key, &[("x-fine".into(), "a".repeat(8 * 1024))]);
    let raw = answer_to(
        &gw,
        from,
        [
            fine,
            b"GET /x HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_vec(),
        ]
        .concat(),
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    let seen = up.received();
    for (what, extra) in oversized_heads() {
        let raw = answer_to(&gw, from, get_with(&key, &extra)).await;
        assert!(raw.starts_with("HTTP/1.1 431"), "{what}: {raw:?}");
    }
    assert_eq!(
        up.received(),
        seen,
        "an oversized head reached the upstream"
    );
    gw.wait_metric("ipgate_client_errors_total{kind=\"head_too_large\"}", 3.0)
        .await;
}

#[tokio::test]
async fn a_head_over_its_bound_is_answered_431_and_never_forwarded_http2() {
    let (up, gw) = start(|s| s).await;
    let (_, _, key) = gw.registered_key(&["127.0.0.2"]).await;
    let from = ip("127.0.0.2");
    assert_eq!(
        send_h2(from, gw.target(from), "/fine", &key).await.status,
        StatusCode::OK
    );
    let seen = up.received();
    for (what, extra) in oversized_heads() {
        let stream = connect_from(from, gw.target(from)).await;
        let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .max_header_list_size(16 << 20)
            .handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut req = Request::builder()
            .uri("http://gateway.test/big")
            .header(KEY_HEADER, &key);
        for (name, value) in &extra {
            req = req.header(name, value);
        }
        let sent = sender.send_request(req.body(Full::new(Bytes::new())).unwrap());
        match tokio::time::timeout(PATIENCE, sent).await {
            Ok(Ok(resp)) => assert_eq!(
                resp.status(),
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "{what}"
            ),
            // A head that needs more CONTINUATION frames than a 64 KiB list can fill
            // ends the connection before it is decoded (h2's flood guard): refused at
            // the edge all the same, with GOAWAY instead of 431.
            Ok(Err(error))
                if what == "1 MB head"
                    && format!("{error:?}").contains("too_many_continuations") => {}
            Ok(Err(error)) => panic!("{what}: no 431 but {error:?}"),
            Err(_) => panic!("{what}: no answer"),
        }
    }
    assert_eq!(
        up.received(),
        seen,
        "an oversized head reached the upstream"
    );
    assert_eq!(
        send_h2(from, gw.target(from), "/fine", &key).await.status,
        StatusCode::OK
    );
}

/// A POST whose body never comes past its first byte.
fn stalled_post(path: &str, key: Option<&str>) -> Vec<u8> {
    let key = key.map_or(String::new(), |k| format!("{KEY_HEADER}: {k}\r\n"));
    format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\n{key}content-type: application/json\r\n\
         content-length: 100\r\n\r\n{{"
    )
    .into_bytes()
}

async fn stalled(gw: &Gateway, from: IpAddr, path: &str, key: Option<&str>) -> TcpStream {
    let mut s = connect_from(from, gw.target(from)).await;
    // The gateway may close it at once (over a share): that is for the caller to see.
    let _ = s.write_all(&stalled_post(path, key)).await;
    s
}

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

#[tokio::test]
async fn a_body_that_stalls_or_trickles_is_cut_and_its_access_line_says_why() {
    let (up, gw) = start(|s| {
        s.set("server.body_timeout", "\"2s\"")
            .set("server.body_min_rate", "500")
    })
    .await;
    let (_, _, key) = gw.registered_key(&["127.0.0.2"]).await;
    let from = ip("127.0.0.2");

    // Stalls on its way to the upstream, and on its way to the management API.
    let before = up.received();
    let started = Instant::now();
    let mut proxied = stalled(&gw, from, "/upload", Some(&key)).await;
    let mut api = stalled(&gw, from, "/v1/device-server", None).await;
    read_until_closed(&mut proxied).await;
    read_until_closed(&mut api).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "cut before its deadline: {took:?}"
    );
    gw.wait_metric("ipgate_client_errors_total{kind=\"body_timeout\"}", 2.0)
        .await;
    gw.wait_log("\"body_timeout\"").await;
    assert!(up.received() <= before + 1, "only the proxied head went up");

    // One byte every 100 ms (10 B/s, under 500 B/s) is cut too, long before its end.
    let mut s = stalled(&gw, from, "/v1/device-server", None).await;
    let started = Instant::now();
    let mut sent = 1;
    let cut = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if s.write_all(b" ").await.is_err() || would_close(&s) {
            break started.elapsed();
        }
        sent += 1;
        assert!(sent < 99, "a trickling body was read to its end");
    };
    assert!(cut < Duration::from_secs(6), "{cut:?}");
    gw.wait_metric("ipgate_client_errors_total{kind=\"body_timeout\"}", 3.0)
        .await;

    // A body that keeps coming at a fair rate is not cut, however long it takes.
    let mut s = connect_from(from, gw.target(from)).await;
    let body = vec![b'x'; 4000];
    let head = format!(
        "POST /echo HTTP/1.1\r\nhost: x\r\n{KEY_HEADER}: {key}\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    for part in body.chunks(1000) {
        // 1000 bytes every 1.5 s: 3 s beyond body_timeout, earned at 500 B/s.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        s.write_all(part).await.unwrap();
    }
    let raw = read_until_closed(&mut s).await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
}

/// True when the gateway closed the connection (an end of stream is waiting).
fn would_close(s: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    !matches!(s.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// Waits until `ipgate_open_connections` is `want`.
async fn wait_open(gw: &Gateway, want: f64) {
    let deadline = Instant::now() + PATIENCE * 3;
    loop {
        let now = gw.metric("ipgate_open_connections").await;
        if now == want {
            return;
        }
        assert!(Instant::now() < deadline, "{now} open, wanted {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A GET on a fresh connection from `from`, retried while the gateway closes new
/// connections unanswered; how long until it was answered 200.
async fn served_within(gw: &Gateway, from: IpAddr, key: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let mut s = connect_from(from, gw.target(from)).await;
        let request = format!(
            "GET /new HTTP/1.1\r\nhost: x\r\n{KEY_HEADER}: {key}\r\nconnection: close\r\n\r\n"
        );
        let _ = s.write_all(request.as_bytes()).await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(limit, s.read_to_end(&mut out)).await;
        let answer = String::from_utf8_lossy(&out);
        if answer.starts_with("HTTP/1.1 200") {
            return started.elapsed();
        }
        assert!(answer.is_empty(), "{answer}");
        assert!(started.elapsed() < limit, "not served within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn one_address_holds_only_its_share() {
    let (_up, gw) = start(|s| {
        s.set("server.max_connections", "20")
            .set("server.client_share_percent", "25")
    })
    .await;
    let (_, _, key) = gw.registered_key(&["127.0.0.2"]).await;
    let attacker = ip("127.0.0.3");
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(stalled(&gw, attacker, "/v1/device-server", None).await);
    }
    wait_open(&gw, 5.0).await;
    // The sixth from the same address is closed at accept, unanswered.
    let mut extra = stalled(&gw, attacker, "/v1/device-server", None).await;
    assert_eq!(read_until_closed(&mut extra).await, "");
    gw.wait_metric("ipgate_connections_refused_client_share_total", 1.0)
        .await;
    // Anyone else is served at once.
    served_within(&gw, ip("127.0.0.2"), &key, Duration::from_secs(2)).await;
    assert_eq!(gw.metric("ipgate_connections_evicted_total").await, 0.0);
}

/// Raises this process's soft limit on open files (each connection is one).
fn enough_files(n: u64) {
    let limit = rlimit::increase_nofile_limit(n + 256).unwrap();
    assert!(
        limit >= n + 64,
        "open file limit {limit}: too low for {n} sockets"
    );
}

/// How many stalled connections the test opens: 12,000 (SPEC's figure), or
/// IPGATE_SLOW_CLIENTS where the open file limit is lower.
fn attackers() -> usize {
    std::env::var("IPGATE_SLOW_CLIENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(12_000)
}

/// Stalled bodies from five addresses, more than the gateway holds: each address
/// fills its share, together they fill the cap, and an allowed client from a sixth is
/// served within 2 s all the same (a stalled connection makes room), during and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_bodies_from_five_addresses_keep_no_one_out() {
    let total = attackers();
    enough_files(total as u64);
    const CAP: usize = 500;
    let (_up, gw) = start(|s| {
        s.set("server.max_connections", &CAP.to_string())
            .set("server.client_share_percent", "20")
            .set("server.body_timeout", "\"60s\"")
    })
    .await;
    let (_, _, key) = gw.registered_key(&["127.0.0.7"]).await;
    let allowed = ip("127.0.0.7");
    let mut held = Vec::with_capacity(total);
    for i in 0..total {
        let from = ip(&format!("127.0.0.{}", 2 + i % 5));
        held.push(stalled(&gw, from, "/v1/device-server", None).await);
    }
    wait_open(&gw, CAP as f64).await;
    assert!(
        gw.metric("ipgate_connections_refused_client_share_total")
            .await
            >= (total - CAP) as f64
    );
    for _ in 0..3 {
        let took = served_within(&gw, allowed, &key, Duration::from_secs(2)).await;
        eprintln!("stalled bodies, {total} connections: served in {took:?}");
    }
    gw.wait_metric("ipgate_connections_evicted_total", 1.0)
        .await;
    gw.wait_log("\"evicted_stalled\"").await;
    // After: the attackers leave, and the gateway serves as before.
    drop(held);
    wait_open(&gw, 0.0).await;
    let took = served_within(&gw, allowed, &key, Duration::from_secs(2)).await;
    eprintln!("after: served in {took:?}");
}

/// HTTP/2 clients from five addresses that open streams with a flow-control window
/// of 0 and never read, more than the gateway holds: their answers wait on them. An
/// allowed client from a sixth is served within 2 s all the same (a stalled
/// connection makes room), during and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_http2_answers_keep_no_one_out() {
    let total = attackers() / 4;
    enough_files(total as u64 + 2 * CAP as u64);
    const CAP: usize = 500;
    const STREAMS: usize = 2;
    let (_up, gw) = start(|s| {
        s.set("server.max_connections", &CAP.to_string())
            .set("server.client_share_percent", "20")
            // Never reached here: what makes room is eviction (the deadline has a
            // test of its own below).
            .set("server.response_timeout", "\"120s\"")
    })
    .await;
    let addresses = [
        "127.0.0.2",
        "127.0.0.3",
        "127.0.0.4",
        "127.0.0.5",
        "127.0.0.6",
    ];
    let (_, _, key) = gw.registered_key(&addresses).await;
    let (_, _, own) = gw.registered_key(&["127.0.0.7"]).await;
    let allowed = ip("127.0.0.7");
    let mut held = Vec::new();
    let mut answers = Vec::new();
    let started = Instant::now();
    for i in 0..total {
        let from = ip(addresses[i % 5]);
        let stream = connect_from(from, gw.target(from)).await;
        let handshake = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(0)
            .handshake(TokioIo::new(stream));
        let Ok((mut sender, conn)) = handshake.await else {
            continue; // closed at accept: over its share
        };
        let conn = tokio::spawn(conn);
        for _ in 0..STREAMS {
            let req = Request::builder()
                .uri("http://gateway.test/unread")
                .header(KEY_HEADER, &key)
                .body(Full::new(Bytes::new()))
                .unwrap();
            let sent = tokio::time::timeout(PATIENCE, sender.send_request(req)).await;
            if let Ok(Ok(resp)) = sent {
                // The head comes; the body never can.
                answers.push(resp);
            }
        }
        held.push((sender, conn));
    }
    eprintln!(
        "{total} HTTP/2 connections tried in {:?}",
        started.elapsed()
    );
    assert!(answers.len() >= CAP * STREAMS, "{} answers", answers.len());
    wait_open(&gw, CAP as f64).await;
    for _ in 0..3 {
        let took = served_within(&gw, allowed, &own, Duration::from_secs(2)).await;
        eprintln!("HTTP/2 stalled answers, {total} connections: served in {took:?}");
    }
    gw.wait_metric("ipgate_connections_evicted_total", 1.0)
        .await;
    // After: the attackers leave, and the gateway serves as before.
    drop(answers);
    for (_, conn) in held {
        conn.abort();
    }
    wait_open(&gw, 0.0).await;
    let took = served_within(&gw, allowed, &own, Duration::from_secs(2)).await;
    eprintln!("after: served in {took:?}");
}

/// An HTTP/2 answer the client never makes room for is cut at
/// `server.response_timeout`, and counted.
#[tokio::test]
async fn an_unread_http2_answer_is_cut_at_its_deadline() {
    let (_up, gw) = start(|s| s.set("server.response_timeout", "\"2s\"")).await;
    let (_, _, key) = gw.registered_key(&["127.0.0.2"]).await;
    let from = ip("127.0.0.2");
    let stream = connect_from(from, gw.target(from)).await;
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(0)
        .handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let started = Instant::now();
    let req = Request::builder()
        .uri("http://gateway.test/unread")
        .header(KEY_HEADER, &key)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let answer = sender.send_request(req).await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    // The gateway closes the connection: the client's connection task ends.
    let closed = tokio::time::timeout(PATIENCE, conn).await;
    assert!(closed.is_ok(), "still open");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "cut before its deadline: {took:?}"
    );
    gw.wait_metric("ipgate_client_errors_total{kind=\"response_timeout\"}", 1.0)
        .await;
    drop(answer);
}

/// The admin listener: a head over 16 KiB is answered 431; a scraper that sends half
/// a body, or holds connections open, cannot keep `/metrics` from the next one.
#[tokio::test]
async fn the_admin_listener_bounds_heads_and_connections() {
    let (_up, gw) = start(|s| s).await;
    let from = ip("127.0.0.1");
    let ask = |extra: String| {
        format!("GET /livez HTTP/1.1\r\nhost: x\r\n{extra}connection: close\r\n\r\n").into_bytes()
    };
    let raw = admin_answer(&gw, ask(format!("x-big: {}\r\n", "a".repeat(20 * 1024)))).await;
    assert!(raw.starts_with("HTTP/1.1 431"), "{raw:?}");
    let raw = admin_answer(&gw, ask(String::new())).await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw:?}");

    // Half a body is never waited for: answered, and the connection closed.
    let raw = admin_answer(
        &gw,
        b"POST /livez HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{".to_vec(),
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 405"), "{raw:?}");

    // 64 connections held open (a few more, should earlier ones still be closing):
    // the next is closed at accept, unanswered; once they go, the admin listener
    // serves again.
    let mut held = Vec::new();
    for _ in 0..72 {
        held.push(connect_from(from, gw.admin).await);
    }
    assert_eq!(admin_answer(&gw, ask(String::new())).await, "");
    drop(held);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let raw = admin_answer(&gw, ask(String::new())).await;
        if raw.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(raw.is_empty(), "{raw:?}");
        assert!(Instant::now() < deadline, "the admin listener stayed full");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn admin_answer(gw: &Gateway, bytes: Vec<u8>) -> String {
    let mut s = connect_from(ip("127.0.0.1"), gw.admin).await;
    let _ = s.write_all(&bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// An HTTP/1 client that sends a large request (echoed back by the upstream) and
/// never reads the answer fills its socket; the answer waits on it and is cut at
/// `server.response_timeout`, and counted.
#[tokio::test]
async fn an_unread_http1_answer_is_cut_at_its_deadline() {
    let (_up, gw) = start(|s| s.set("server.response_timeout", "\"2s\"")).await;
    let (_, _, key) = gw.registered_key(&["127.0.0.2"]).await;
    let from = ip("127.0.0.2");
    let mut s = connect_from(from, gw.target(from)).await;
    // Larger than the socket buffers on both sides can hold, twice over (the echo is
    // JSON, as large as the body).
    let body = vec![b'x'; 16 << 20];
    let head = format!(
        "POST /echo HTTP/1.1\r\nhost: x\r\n{KEY_HEADER}: {key}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&body).await.unwrap();
    let sent = Instant::now();
    // Nothing is read until the gateway gives up on this client.
    gw.wait_metric("ipgate_client_errors_total{kind=\"response_timeout\"}", 1.0)
        .await;
    let took = sent.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "cut before its deadline: {took:?}"
    );
    // What arrived is the start of the answer, then the end of the stream.
    let mut out = Vec::new();
    let read = tokio::time::timeout(PATIENCE, s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "still open");
    assert!(
        out.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        &out[..out.len().min(40)]
    );
}

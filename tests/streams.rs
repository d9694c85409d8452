//! Long and large bodies through ipgate: a 1 GiB upload and a 1 GiB download stream
//! through with the gateway's memory flat (its peak RSS, `VmHWM`, barely moves),
//! server-sent events reach the client as they are sent, and a client that stops
//! reading a long stream is cut at `server.response_timeout` like any slow client.
//!
//! `IPGATE_STREAM_BYTES` sets the size of the large bodies (default 1 GiB).

mod common;

use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

const CHUNK: usize = 64 * 1024;
/// How much the gateway's peak RSS may grow while the large bodies pass: far less than
/// either body, so neither was held whole (nor a large part of it).
const MAX_GROWTH_KIB: u64 = 64 * 1024;
/// Time between two events, and how late one may arrive.
const EVENT_EVERY: Duration = Duration::from_millis(200);
const EVENT_LATENESS: Duration = Duration::from_millis(100);

fn stream_bytes() -> u64 {
    std::env::var("IPGATE_STREAM_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 30)
}

type BoxBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// `n` bytes in 64 KiB chunks, made as they are asked for.
fn generated(n: u64) -> BoxBody {
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    let chunks = futures_util::stream::unfold(n, move |left| {
        let chunk = chunk.clone();
        async move {
            (left > 0).then(|| {
                let take = left.min(CHUNK as u64);
                let frame = Frame::data(chunk.slice(..take as usize));
                (Ok::<_, std::io::Error>(frame), left - take)
            })
        }
    });
    BodyExt::boxed(StreamBody::new(chunks))
}

/// When each event left the upstream.
type Sent = Arc<Mutex<Vec<Instant>>>;

/// `POST /upload`: reads the body to its end, answers its length. `GET /download/N`:
/// N bytes. `GET /events`: five server-sent events, one every `EVENT_EVERY`. Anything
/// else: 200.
async fn streaming_upstream(sent: Sent) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let sent = Arc::clone(&sent);
            tokio::spawn(async move {
                let service = service_fn(move |req| answer(req, Arc::clone(&sent)));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

async fn answer(req: Request<Incoming>, sent: Sent) -> Result<Response<BoxBody>, hyper::Error> {
    let path = req.uri().path().to_owned();
    if path == "/upload" {
        let mut body = req.into_body();
        let mut n = 0u64;
        while let Some(frame) = body.frame().await {
            if let Some(data) = frame?.data_ref() {
                n += data.len() as u64;
            }
        }
        return Ok(Response::new(full(n.to_string())));
    }
    if let Some(n) = path.strip_prefix("/download/") {
        return Ok(Response::new(generated(n.parse().unwrap())));
    }
    if path == "/events" {
        let events = futures_util::stream::unfold(0u32, move |i| {
            let sent = Arc::clone(&sent);
            async move {
                if i == 5 {
                    return None;
                }
                tokio::time::sleep(EVENT_EVERY).await;
                sent.lock().unwrap().push(Instant::now());
                let event = Frame::data(Bytes::from(format!("data: event {i}\n\n")));
                Some((Ok::<_, std::io::Error>(event), i + 1))
            }
        });
        let mut resp = Response::new(BodyExt::boxed(StreamBody::new(events)));
        resp.headers_mut()
            .insert("content-type", "text/event-stream".parse().unwrap());
        return Ok(resp);
    }
    Ok(Response::new(full("plain".into())))
}

fn full(text: String) -> BoxBody {
    BodyExt::boxed(Full::new(Bytes::from(text)).map_err(|e| match e {}))
}

/// The gateway's peak resident set so far, KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

async fn gateway(extra: &[(&str, &str)]) -> (Gateway, String, Sent) {
    let sent = Sent::default();
    let upstream = streaming_upstream(Arc::clone(&sent)).await;
    let mut settings = Settings::new(&format!("http://{upstream}"));
    for (k, v) in extra {
        settings = settings.set(k, v);
    }
    let gw = Gateway::start(&settings);
    gw.wait_ready().await;
    let (_, _, key) = gw.registered_key(&["127.0.0.2"]).await;
    (gw, key, sent)
}

/// An HTTP/1.1 connection from 127.0.0.2 to the gateway.
async fn connection(gw: &Gateway) -> hyper::client::conn::http1::SendRequest<BoxBody> {
    let from = ip("127.0.0.2");
    let stream = connect_from(from, gw.target(from)).await;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

fn request(method: &str, path: &str, key: &str, body: BoxBody) -> Request<BoxBody> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "gateway.test")
        .header(KEY_HEADER, key)
        .body(body)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_upload_and_download_stream_through_with_flat_memory() {
    let n = stream_bytes();
    let (gw, key, _) = gateway(&[]).await;
    let mut sender = connection(&gw).await;
    let before = peak_rss_kib(gw.pid());

    let started = Instant::now();
    let resp = sender
        .send_request(request("POST", "/upload", &key, generated(n)))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let counted = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        counted,
        n.to_string().as_bytes(),
        "the upstream got all of it"
    );
    let up = started.elapsed();

    // The same connection carries the download: ready once the upload's answer is done
    // (an error here is the gateway closing it).
    sender.ready().await.expect("the connection stays open");
    let started = Instant::now();
    let resp = sender
        .send_request(request(
            "GET",
            &format!("/download/{n}"),
            &key,
            full(String::new()),
        ))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut got = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame.unwrap().data_ref() {
            got += data.len() as u64;
        }
    }
    assert_eq!(got, n);
    let down = started.elapsed();

    let after = peak_rss_kib(gw.pid());
    eprintln!(
        "{n} bytes up in {up:?}, down in {down:?}; gateway peak RSS {before} KiB -> {after} KiB"
    );
    assert!(
        after.saturating_sub(before) < MAX_GROWTH_KIB,
        "peak RSS grew from {before} KiB to {after} KiB"
    );
}

#[tokio::test]
async fn server_sent_events_arrive_as_they_are_sent() {
    let (gw, key, sent) = gateway(&[]).await;
    let mut sender = connection(&gw).await;
    let resp = sender
        .send_request(request("GET", "/events", &key, full(String::new())))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut frames = resp.into_body().into_data_stream();
    let mut text = String::new();
    let mut arrived = Vec::new();
    while let Some(data) = frames.next().await {
        let data = data.unwrap();
        text.push_str(std::str::from_utf8(&data).unwrap());
        // One arrival per complete event, however the bytes were cut.
        while arrived.len() < text.matches("\n\n").count() {
            arrived.push(Instant::now());
        }
    }
    let sent = sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 5);
    assert_eq!(arrived.len(), 5, "{text:?}");
    for (i, (s, a)) in sent.iter().zip(&arrived).enumerate() {
        let late = a.duration_since(*s);
        assert!(
            late < EVENT_LATENESS,
            "event {i} arrived {late:?} after it was sent"
        );
    }
    assert!(text.starts_with("data: event 0\n\n"), "{text:?}");
}

#[tokio::test]
async fn a_client_that_stops_reading_a_long_stream_is_cut_at_its_deadline() {
    let (gw, key, _) = gateway(&[
        ("server.response_timeout", "\"1s\""),
        ("server.response_min_rate", "0"),
    ])
    .await;
    let from = ip("127.0.0.2");
    let mut stream = connect_from(from, gw.target(from)).await;
    // Reads nothing at all: the socket buffers fill, then the answer waits on the client.
    let head = format!(
        "GET /download/{} HTTP/1.1\r\nHost: gateway.test\r\n{KEY_HEADER}: {key}\r\n\r\n",
        1u64 << 30
    );
    tokio::io::AsyncWriteExt::write_all(&mut stream, head.as_bytes())
        .await
        .unwrap();
    let started = Instant::now();
    gw.wait_metric("ipgate_client_errors_total{kind=\"response_timeout\"}", 1.0)
        .await;
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(1), "cut after {took:?}");
    assert!(took < PATIENCE, "cut after {took:?}");
    // What was buffered ends short of the whole: the connection was closed under it.
    let mut got = 0u64;
    let mut buf = vec![0u8; CHUNK];
    loop {
        match tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n as u64,
        }
    }
    assert!(got < 1 << 30, "the whole stream arrived: {got}");
}

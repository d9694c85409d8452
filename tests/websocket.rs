//! WebSockets through ipgate (RFC 6455 over HTTP/1.1): a real tungstenite echo server
//! behind a real hyper server, a real tungstenite client, a real `ipgate serve`
//! between. Allowed: the handshake is forwarded with its `Upgrade`, frames cross both
//! ways, the tunnel gets one access line with its sizes when it ends. Refused: the
//! client gets the 403, the upstream never sees the handshake. Bounded: an idle tunnel
//! is closed, and shutdown closes open ones after `server.shutdown_grace`.

mod common;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// An HTTP server that answers plain requests 200 and upgrades WebSocket handshakes
/// to an echo; keeps the headers of every handshake it saw.
struct EchoServer {
    addr: SocketAddr,
    handshakes: Arc<Mutex<Vec<http::HeaderMap>>>,
    task: tokio::task::JoinHandle<()>,
}

impl EchoServer {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handshakes = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&handshakes);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(req, Arc::clone(&seen)));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Self {
            addr,
            handshakes,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn handshakes(&self) -> Vec<http::HeaderMap> {
        self.handshakes.lock().unwrap().clone()
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    mut req: Request<Incoming>,
    seen: Arc<Mutex<Vec<http::HeaderMap>>>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return Ok(Response::new(Full::new(Bytes::from_static(b"plain"))));
    };
    seen.lock().unwrap().push(req.headers().clone());
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    let accept = derive_accept_key(key.as_bytes());
    Ok(Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", accept)
        .body(Full::new(Bytes::new()))
        .unwrap())
}

type Client = WebSocketStream<tokio::net::TcpStream>;

/// A WebSocket handshake from `from` through the gateway, with `key` if any.
async fn open(gw: &Gateway, from: IpAddr, key: Option<&str>) -> Result<Client, WsError> {
    let stream = connect_from(from, gw.target(from)).await;
    let mut req = "ws://gateway.test/chat".into_client_request().unwrap();
    if let Some(key) = key {
        req.headers_mut().insert(KEY_HEADER, key.parse().unwrap());
    }
    tokio_tungstenite::client_async(req, stream)
        .await
        .map(|(ws, _)| ws)
}

fn access_lines(gw: &Gateway) -> Vec<Value> {
    gw.logs()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "ipgate::access")
        .collect()
}

/// Waits for the access line of a tunnel (status 101) and returns it.
async fn tunnel_line(gw: &Gateway) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(line) = access_lines(gw).into_iter().find(|v| v["status"] == 101) {
            return line;
        }
        assert!(Instant::now() < deadline, "no access line for the tunnel");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn gateway(upstream: &EchoServer, extra: &[(&str, &str)]) -> (Gateway, String) {
    let mut settings = Settings::new(&upstream.url());
    for (k, v) in extra {
        settings = settings.set(k, v);
    }
    let gw = Gateway::start(&settings);
    gw.wait_ready().await;
    let (_, _, key) = gw.registered_key(&["127.0.0.2"]).await;
    (gw, key)
}

#[tokio::test]
async fn an_allowed_websocket_echoes_both_ways_and_is_logged_when_it_ends() {
    let upstream = EchoServer::start().await;
    let (gw, key) = gateway(&upstream, &[]).await;
    let mut ws = open(&gw, ip("127.0.0.2"), Some(&key)).await.unwrap();
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
    let blob = vec![7u8; 100_000];
    ws.send(Message::binary(blob.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(blob));
    assert_eq!(gw.metric("ipgate_open_tunnels").await, 1.0);
    // The tunnel holds its connection: counted open like any other.
    assert!(gw.metric("ipgate_open_connections").await >= 1.0);

    let seen = upstream.handshakes();
    assert_eq!(seen.len(), 1);
    let h = &seen[0];
    assert_eq!(h["upgrade"], "websocket");
    assert_eq!(h["connection"], "upgrade");
    assert_eq!(h["x-forwarded-for"], "127.0.0.2");
    assert!(h.get(KEY_HEADER).is_none(), "the key went upstream");
    assert!(h.get("x-ipgate-credential-id").is_some());

    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}
    drop(ws);
    let line = tunnel_line(&gw).await;
    assert_eq!(line["decision"], "allow", "{line}");
    assert_eq!(line["path"], "/chat", "{line}");
    assert!(line.get("cut").is_none() || line["cut"].is_null(), "{line}");
    let up = line["bytes_in"].as_u64().unwrap();
    let down = line["bytes_out"].as_u64().unwrap();
    assert!(up > 100_000 && down > 100_000, "{line}");
    gw.wait_metric("ipgate_tunnel_bytes_total{direction=\"up\"}", up as f64)
        .await;
    gw.wait_metric("ipgate_tunnel_bytes_total{direction=\"down\"}", down as f64)
        .await;
    assert_eq!(gw.metric("ipgate_open_tunnels").await, 0.0);
}

#[tokio::test]
async fn a_refused_websocket_gets_the_403_and_never_reaches_the_upstream() {
    let upstream = EchoServer::start().await;
    let (gw, key) = gateway(&upstream, &[]).await;
    // A listed key from an address not on its list, and an unknown key.
    for (from, key) in [
        ("127.0.0.3", key.as_str()),
        ("127.0.0.2", "not-a-key-at-all"),
    ] {
        match open(&gw, ip(from), Some(key)).await {
            Err(WsError::Http(resp)) => assert_eq!(resp.status(), StatusCode::FORBIDDEN),
            other => panic!("expected a 403, got {:?}", other.map(|_| "a WebSocket")),
        }
    }
    match open(&gw, ip("127.0.0.2"), None).await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status(), StatusCode::UNAUTHORIZED),
        other => panic!("expected a 401, got {:?}", other.map(|_| "a WebSocket")),
    }
    assert!(
        upstream.handshakes().is_empty(),
        "a refused handshake went upstream"
    );
}

#[tokio::test]
async fn an_idle_tunnel_is_closed_after_its_timeout() {
    let upstream = EchoServer::start().await;
    let (gw, key) = gateway(&upstream, &[("upstream.tunnel_idle_timeout", "\"1s\"")]).await;
    let mut ws = open(&gw, ip("127.0.0.2"), Some(&key)).await.unwrap();
    ws.send(Message::text("one")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("one"));
    let quiet = Instant::now();
    // The gateway closes both ends without a close frame: the stream just ends.
    let ended = tokio::time::timeout(PATIENCE, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the idle tunnel stayed open");
    let waited = quiet.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}"
    );
    assert!(waited < Duration::from_secs(3), "closed after {waited:?}");
    let line = tunnel_line(&gw).await;
    assert_eq!(line["cut"], "idle_timeout", "{line}");
}

#[tokio::test]
async fn shutdown_closes_an_open_tunnel_after_the_grace_period() {
    let upstream = EchoServer::start().await;
    let (mut gw, key) = gateway(&upstream, &[("server.shutdown_grace", "\"1s\"")]).await;
    let mut ws = open(&gw, ip("127.0.0.2"), Some(&key)).await.unwrap();
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("before"));
    let asked = Instant::now();
    signal(gw.pid(), "TERM");
    // Within the grace period the tunnel still works.
    tokio::time::sleep(Duration::from_millis(300)).await;
    ws.send(Message::text("during")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("during"));
    let ended = tokio::time::timeout(PATIENCE, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the tunnel outlived the grace period");
    let waited = asked.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}"
    );
    let status = tokio::task::spawn_blocking(move || {
        let status = gw.wait_exit();
        (status, gw)
    })
    .await
    .unwrap();
    assert!(status.0.success(), "{:?}", status.0);
    let line = tunnel_line(&status.1).await;
    assert_eq!(line["cut"], "shutdown", "{line}");
}

/// `Upgrade: h2c` is never tunnelled: the request goes up as a plain one, without its
/// `Upgrade`, so every later request still passes the check.
#[tokio::test]
async fn an_h2c_upgrade_is_forwarded_as_a_plain_request() {
    let upstream = EchoServer::start().await;
    let (gw, key) = gateway(&upstream, &[]).await;
    let from = ip("127.0.0.2");
    let head = format!(
        "GET /h2c HTTP/1.1\r\nHost: gateway.test\r\nConnection: Upgrade, HTTP2-Settings\r\n\
         Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n{KEY_HEADER}: {key}\r\n\
         Connection: close\r\n\r\n"
    );
    let answer = exchange(from, gw.target(from), head.as_bytes(), false).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("plain"), "{answer}");
    assert!(upstream.handshakes().is_empty());
}

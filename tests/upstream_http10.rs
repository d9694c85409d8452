//! An HTTP/1.0 upstream (the README's own demo, `python3 -m http.server`, is one) does
//! not make ipgate answer its HTTP/1.1 clients in HTTP/1.0 or close their connections:
//! the client's connection and version are the client's.

mod common;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode, Version};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Answers every request in HTTP/1.0, with no length (the body ends with the
/// connection), and closes, as old servers do.
async fn http10_upstream() -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello")
                    .await;
            });
        }
    });
    (url, task)
}

#[tokio::test]
async fn an_http10_upstream_leaves_the_client_on_http11_keep_alive() {
    let (url, upstream) = http10_upstream().await;
    let gw = Gateway::start(&Settings::new(&url));
    gw.wait_ready().await;
    let (_, _, key) = gw.registered_key(&["127.0.0.2"]).await;
    let from = ip("127.0.0.2");
    let stream = connect_from(from, gw.target(from)).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    for i in 0..3 {
        let req = Request::builder()
            .uri(format!("/old/{i}"))
            .header("host", "x")
            .header(KEY_HEADER, &key)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.version(), Version::HTTP_11, "request {i}");
        assert_ne!(
            resp.headers().get("connection").map(|v| v.as_bytes()),
            Some(&b"close"[..]),
            "request {i}"
        );
        let r = collect(resp).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, "hello");
    }
    upstream.abort();
}

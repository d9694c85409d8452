//! Clients that connect from chosen source addresses, and what they get back.

use bytes::Bytes;
use http::Method;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use super::{KEY_HEADER, PATIENCE};

/// The management API's paths for one user's credential.
pub struct ApiPaths {
    pub user: u64,
    pub cred: u64,
}

impl ApiPaths {
    pub fn credentials(&self) -> String {
        format!("/v1/user/{}/credential-password-ip", self.user)
    }

    pub fn credential(&self) -> String {
        format!("{}/{}", self.credentials(), self.cred)
    }

    pub fn ips(&self) -> String {
        format!("{}/ip", self.credential())
    }

    pub fn entry(&self, item: u64) -> String {
        format!("{}/{item}", self.ips())
    }

    /// ipgate's extension: the addresses the key was refused from.
    pub fn refused(&self) -> String {
        format!("{}/refused-ip", self.credential())
    }

    /// ipgate's extension: `report suggest` for the credential.
    pub fn suggested(&self) -> String {
        format!("{}/suggested-ip", self.credential())
    }
}

/// A response with its body read.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The upstream's echo of a request header, if the upstream saw it.
    pub fn echoed(&self, name: &str) -> Option<Vec<String>> {
        self.json()["headers"][name]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
    }
}

/// Connects from `from` (port chosen by the OS) to `to` and sends one HTTP/1.1 request.
pub async fn send_raw(
    from: IpAddr,
    to: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Answer {
    let stream = connect_from(from, to).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "gateway.test");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Full::new(body)).unwrap())
        .await
        .unwrap();
    collect(resp).await
}

pub async fn collect(resp: Response<Incoming>) -> Answer {
    let (parts, body) = resp.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

pub async fn connect_from(from: IpAddr, to: SocketAddr) -> tokio::net::TcpStream {
    let socket = if from.is_ipv6() {
        TcpSocket::new_v6().unwrap()
    } else {
        TcpSocket::new_v4().unwrap()
    };
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    socket.connect(to).await.unwrap()
}

/// An HTTP/2 (prior knowledge, cleartext) request from `from`.
pub async fn send_h2(from: IpAddr, to: SocketAddr, path: &str, key: &str) -> Answer {
    let stream = connect_from(from, to).await;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .uri(format!("http://gateway.test{path}"))
        .header(KEY_HEADER, key)
        .body(Full::new(Bytes::new()))
        .unwrap();
    collect(sender.send_request(req).await.unwrap()).await
}

/// Writes `bytes` from `from` to `to` (then, with `half_close`, shuts the write side) and reads
/// until the gateway closes the connection. Panics when it does not within PATIENCE.
pub async fn exchange(from: IpAddr, to: SocketAddr, bytes: &[u8], half_close: bool) -> String {
    let mut s = connect_from(from, to).await;
    s.write_all(bytes).await.unwrap();
    if half_close {
        s.shutdown().await.unwrap();
    }
    read_until_closed(&mut s).await
}

pub async fn read_until_closed(s: &mut tokio::net::TcpStream) -> String {
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
            Err(_) => panic!(
                "the gateway kept the connection open; so far: {}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

//! TLS on the public listener (HTTP/1.1 and HTTP/2 by ALPN), certificate reload on
//! SIGHUP, and an https upstream, with a CA made in the test.

mod common;

use bytes::Bytes;
use common::ca::{Leaf, TestCa};
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

fn install(dir: &Path, leaf: &Leaf) {
    std::fs::write(dir.join("cert.pem"), &leaf.cert_pem).unwrap();
    std::fs::write(dir.join("key.pem"), &leaf.key_pem).unwrap();
}

/// A TLS gateway whose certificate files sit in its own folder.
async fn tls_gateway(ca: &TestCa, upstream: &Upstream) -> (Gateway, Leaf) {
    let leaf = ca.leaf("first");
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), &leaf);
    let settings = Settings::new(&upstream.url())
        .set("server.tls", r#"{ cert = "cert.pem", key = "key.pem" }"#);
    let gw = Gateway::start_in(dir, &settings, &[]);
    gw.wait_ready().await;
    (gw, leaf)
}

type TlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn handshake(
    ca: &TestCa,
    from: std::net::IpAddr,
    to: SocketAddr,
    alpn: &[&[u8]],
) -> TlsStream {
    let tcp = connect_from(from, to).await;
    ca.client(alpn)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake")
}

fn served_cert(stream: &TlsStream) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

async fn h1_over(stream: TlsStream) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn get_h1(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    key: &str,
) -> Answer {
    let req = Request::builder()
        .uri("/tls")
        .header("host", "localhost")
        .header(KEY_HEADER, key)
        .body(Full::new(Bytes::new()))
        .unwrap();
    collect(sender.send_request(req).await.unwrap()).await
}

/// Where the gateway reads its certificate and key.
fn cert_paths(gw: &Gateway) -> (std::path::PathBuf, std::path::PathBuf) {
    (
        gw.dir.path().join("cert.pem"),
        gw.dir.path().join("key.pem"),
    )
}

#[tokio::test]
async fn tls_serves_http1_and_http2_by_alpn() {
    let ca = TestCa::new();
    let upstream = Upstream::start().await;
    let (gw, leaf) = tls_gateway(&ca, &upstream).await;
    // Register over TLS too: the management API lives on the same listener.
    let (_, cred, key) = gw.registered_key_tls(&ca).await;
    let from = ip("127.0.0.2");

    let stream = handshake(&ca, from, gw.target(from), &[b"http/1.1"]).await;
    assert_eq!(served_cert(&stream), leaf.der);
    let mut h1 = h1_over(stream).await;
    let r = get_h1(&mut h1, &key).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.echoed("x-forwarded-proto"), Some(vec!["https".into()]));
    assert_eq!(
        r.echoed("x-ipgate-credential-id"),
        Some(vec![cred.to_string()])
    );

    let stream = handshake(&ca, from, gw.target(from), &[b"h2", b"http/1.1"]).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .uri("https://localhost/over-h2")
        .header(KEY_HEADER, &key)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = collect(h2.send_request(req).await.unwrap()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["path"], "/over-h2");

    // The same key from an address not on its list is refused over TLS as well.
    let other = ip("127.0.0.3");
    let mut h1 = h1_over(handshake(&ca, other, gw.target(other), &[b"http/1.1"]).await).await;
    assert_eq!(get_h1(&mut h1, &key).await.status, StatusCode::FORBIDDEN);

    // Plain HTTP to the TLS port is a failed handshake, counted.
    let _ = send_raw_timeout(gw.target(from)).await;
    gw.wait_metric("ipgate_tls_handshake_failures_total", 1.0)
        .await;
}

/// Sends a plain HTTP request to a TLS port and returns whatever comes back.
async fn send_raw_timeout(to: SocketAddr) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = connect_from(ip("127.0.0.1"), to).await;
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    buf
}

#[tokio::test]
async fn sighup_rolls_the_certificate_and_keeps_the_old_one_if_the_new_is_bad() {
    let ca = TestCa::new();
    let upstream = Upstream::start().await;
    let (gw, first) = tls_gateway(&ca, &upstream).await;
    let (_, _, key) = gw.registered_key_tls(&ca).await;
    let from = ip("127.0.0.2");

    // A connection opened before the roll keeps working after it.
    let stream = handshake(&ca, from, gw.target(from), &[b"http/1.1"]).await;
    assert_eq!(served_cert(&stream), first.der);
    let mut before = h1_over(stream).await;
    assert_eq!(get_h1(&mut before, &key).await.status, StatusCode::OK);

    let second = ca.leaf("second");
    let (cert, key_path) = cert_paths(&gw);
    std::fs::write(&cert, &second.cert_pem).unwrap();
    std::fs::write(&key_path, &second.key_pem).unwrap();
    signal(gw.pid(), "HUP");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let s = handshake(&ca, from, gw.target(from), &[b"http/1.1"]).await;
        if served_cert(&s) == second.der {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        get_h1(&mut before, &key).await.status,
        StatusCode::OK,
        "open connection broke"
    );
    // The new certificate is served a moment before the reload is counted.
    gw.wait_metric("ipgate_tls_reloads_total{result=\"ok\"}", 1.0)
        .await;

    // A key that does not match the certificate: refused, the second pair keeps serving.
    let third = ca.leaf("third");
    std::fs::write(&cert, &third.cert_pem).unwrap();
    std::fs::write(&key_path, &second.key_pem).unwrap();
    signal(gw.pid(), "HUP");
    gw.wait_metric("ipgate_config_reloads_total{result=\"error\"}", 1.0)
        .await;
    gw.wait_metric("ipgate_tls_reloads_total{result=\"error\"}", 1.0)
        .await;
    let s = handshake(&ca, from, gw.target(from), &[b"http/1.1"]).await;
    assert_eq!(served_cert(&s), second.der);
    let mut after = h1_over(s).await;
    assert_eq!(get_h1(&mut after, &key).await.status, StatusCode::OK);
    gw.wait_log("TLS reload failed").await;
}

#[tokio::test]
async fn https_upstream_verified_with_a_ca_file() {
    let ca = TestCa::new();
    let leaf = ca.leaf("upstream");
    let upstream = tls_upstream(&leaf).await;
    let ca_dir = tempfile::tempdir().unwrap();
    let ca_file = ca_dir.path().join("ca.pem");
    ca.write_pem(&ca_file);
    let gw = Gateway::start(
        &Settings::new(&format!("https://localhost:{}", upstream.port())).set(
            "upstream.ca_file",
            &format!("{:?}", ca_file.display().to_string()),
        ),
    );
    gw.wait_ready().await;
    let (_, _, key) = gw.registered_key(&["127.0.0.2"]).await;
    let r = gw.get(ip("127.0.0.2"), "/over-tls", Some(&key)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["path"], "/over-tls");

    // Without the CA the upstream's certificate is not trusted: 502, never plaintext.
    let untrusting = Gateway::start(&Settings::new(&format!(
        "https://localhost:{}",
        upstream.port()
    )));
    untrusting.wait_ready().await;
    let (_, _, key) = untrusting.new_key();
    let body = serde_json::json!({"description": "d", "secret": key});
    let r = untrusting
        .send(
            ip("127.0.0.2"),
            http::Method::POST,
            "/v1/device-server",
            &[],
            Some(body),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    untrusting
        .wait_for_status(ip("127.0.0.2"), &key, StatusCode::BAD_GATEWAY)
        .await;
    untrusting.wait_log("UnknownIssuer").await;
}

async fn tls_upstream(leaf: &Leaf) -> SocketAddr {
    use rustls::pki_types::pem::PemObject;
    let certs = vec![leaf.der.clone()];
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), hyper::service::service_fn(echo))
                    .await;
            });
        }
    });
    addr
}

trait TlsRegistration {
    async fn registered_key_tls(&self, ca: &TestCa) -> (u64, u64, String);
}

impl TlsRegistration for Gateway {
    /// Like `registered_key`, over TLS, for 127.0.0.2.
    async fn registered_key_tls(&self, ca: &TestCa) -> (u64, u64, String) {
        let (user, cred, key) = self.new_key();
        let from = ip("127.0.0.2");
        let mut h1 = h1_over(handshake(ca, from, self.target(from), &[b"http/1.1"]).await).await;
        let body = serde_json::json!({"description": "tls", "secret": key, "permitted_ips": ["127.0.0.2"]});
        let req = Request::builder()
            .method("POST")
            .uri("/v1/device-server")
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        assert_eq!(
            collect(h1.send_request(req).await.unwrap()).await.status,
            StatusCode::OK
        );
        (user, cred, key)
    }
}

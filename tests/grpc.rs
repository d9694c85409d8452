//! gRPC through ipgate: a real tonic server (over HTTP/2 without TLS, `upstream.protocol
//! = "h2c"`, and over TLS with ALPN, `"h2"`) and a real tonic client, with a codec
//! written here (raw bytes as the message: no protoc, no generated code). Unary and
//! bidirectional streaming calls pass, with their trailers (`grpc-status`,
//! `grpc-message`); refusals come back as gRPC statuses, and never reach the server.
//! Also `curl --http2-prior-knowledge` to the gateway, over an h2c upstream.

mod common;

use bytes::{Buf, BufMut, Bytes};
use common::ca::{Leaf, TestCa};
use common::*;
use futures_util::StreamExt;
use http::uri::PathAndQuery;
use http::Uri;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder, Streaming};
use tonic::{Code, Request, Response, Status};

/// Raw bytes as a gRPC message.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

const UNARY: &str = "/echo.Echo/Unary";
const BIDI: &str = "/echo.Echo/Bidi";
const FAIL: &str = "/echo.Echo/Fail";

/// Answers a unary call with its message reversed, and what it saw of the gateway.
struct Unary;

impl tonic::server::UnaryService<Bytes> for Unary {
    type Response = Bytes;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Bytes>, Status>> + Send>>;
    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        Box::pin(async move {
            let forwarded = req
                .metadata()
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_owned();
            let key_seen = req.metadata().get(KEY_HEADER).is_some();
            let mut out: Vec<u8> = req.into_inner().to_vec();
            out.reverse();
            let mut resp = Response::new(Bytes::from(out));
            resp.metadata_mut()
                .insert("x-seen-forwarded-for", forwarded.parse().unwrap());
            resp.metadata_mut().insert(
                "x-seen-key",
                if key_seen { "yes" } else { "no" }.parse().unwrap(),
            );
            Ok(resp)
        })
    }
}

/// Fails every call with a status and a message (sent as trailers).
struct Fail;

impl tonic::server::UnaryService<Bytes> for Fail {
    type Response = Bytes;
    type Future = std::future::Ready<Result<Response<Bytes>, Status>>;
    fn call(&mut self, _: Request<Bytes>) -> Self::Future {
        std::future::ready(Err(Status::new(Code::NotFound, "no such thing here")))
    }
}

/// Echoes each message of a stream as it comes.
struct Bidi;

impl tonic::server::StreamingService<Bytes> for Bidi {
    type Response = Bytes;
    type ResponseStream = Streaming<Bytes>;
    type Future = std::future::Ready<Result<Response<Streaming<Bytes>>, Status>>;
    fn call(&mut self, req: Request<Streaming<Bytes>>) -> Self::Future {
        std::future::ready(Ok(Response::new(req.into_inner())))
    }
}

/// The gRPC server: each connection served over HTTP/2 by hyper, each call by tonic.
/// Counts the calls that reached it; answers anything else 200 (the readiness probe).
struct GrpcServer {
    addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl GrpcServer {
    async fn start(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let counted = Arc::clone(&counted);
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => serve_grpc(tcp, counted).await,
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(tcp).await else {
                                return;
                            };
                            assert_eq!(stream.get_ref().1.alpn_protocol(), Some(b"h2".as_slice()));
                            serve_grpc(stream, counted).await
                        }
                    }
                });
            }
        });
        Self { addr, calls, task }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_grpc<I>(io: I, calls: Arc<AtomicUsize>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
        let calls = Arc::clone(&calls);
        async move {
            let path = req.uri().path().to_owned();
            let resp = match path.as_str() {
                UNARY | BIDI | FAIL => {
                    calls.fetch_add(1, Ordering::SeqCst);
                    let mut grpc = tonic::server::Grpc::new(RawCodec);
                    match path.as_str() {
                        UNARY => grpc.unary(Unary, req).await,
                        FAIL => grpc.unary(Fail, req).await,
                        _ => grpc.streaming(Bidi, req).await,
                    }
                }
                "/trailers" => echo_trailers(req).await,
                _ => http::Response::new(tonic::body::Body::new(Full::new(Bytes::from_static(
                    b"plain",
                )))),
            };
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), service)
        .await;
}

/// Answers with the request's trailers as its own (renamed `x-echoed-*`) after a body.
async fn echo_trailers(req: http::Request<Incoming>) -> http::Response<tonic::body::Body> {
    use http_body_util::BodyExt;
    let collected = req.into_body().collect().await.unwrap();
    let mut echoed = http::HeaderMap::new();
    for (name, value) in collected.trailers().into_iter().flatten() {
        let name = format!("x-echoed-{name}");
        echoed.insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.clone(),
        );
    }
    let frames = vec![
        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from_static(b"body"))),
        Ok(hyper::body::Frame::trailers(echoed)),
    ];
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
    http::Response::new(tonic::body::Body::new(body))
}

type Channel = hyper_util::client::legacy::Client<SourceConnector, tonic::body::Body>;

/// Connects from a chosen source address (the gateway decides by it).
#[derive(Clone)]
struct SourceConnector(IpAddr);

impl tower_service::Service<Uri> for SourceConnector {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;
    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, uri: Uri) -> Self::Future {
        let from = self.0;
        Box::pin(async move {
            let to: SocketAddr = uri.authority().unwrap().as_str().parse().unwrap();
            Ok(TokioIo::new(connect_from(from, to).await))
        })
    }
}

/// A tonic client over HTTP/2 (prior knowledge) from `from` to the gateway.
fn grpc_client(gw: &Gateway, from: IpAddr) -> tonic::client::Grpc<Channel> {
    let channel = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(SourceConnector(from));
    let origin: Uri = format!("http://{}", gw.target(from)).parse().unwrap();
    tonic::client::Grpc::with_origin(channel, origin)
}

fn call<T>(message: T, key: Option<&str>) -> Request<T> {
    let mut req = Request::new(message);
    if let Some(key) = key {
        req.metadata_mut().insert(KEY_HEADER, key.parse().unwrap());
    }
    req
}

async fn unary(
    client: &mut tonic::client::Grpc<Channel>,
    path: &'static str,
    key: Option<&str>,
) -> Result<Response<Bytes>, Status> {
    client.ready().await.unwrap();
    client
        .unary(
            call(Bytes::from_static(b"ipgate"), key),
            PathAndQuery::from_static(path),
            RawCodec,
        )
        .await
}

/// Unary, failing and bidirectional-streaming calls through `gw`, allowed and refused.
async fn calls_pass_and_refusals_are_grpc_statuses(gw: &Gateway, server: &GrpcServer) {
    let (_, _, key) = gw.registered_key(&["127.0.0.2"]).await;
    let mut client = grpc_client(gw, ip("127.0.0.2"));

    let resp = unary(&mut client, UNARY, Some(&key)).await.unwrap();
    let seen = |name: &str| {
        resp.metadata()
            .get(name)
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(seen("x-seen-forwarded-for"), "127.0.0.2");
    assert_eq!(seen("x-seen-key"), "no");
    assert_eq!(resp.into_inner(), Bytes::from_static(b"etagpi"));

    // A status with a message travels in the trailers.
    let status = unary(&mut client, FAIL, Some(&key)).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(status.message(), "no such thing here");

    // Bidirectional: each message is answered before the next is sent.
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let outgoing =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    client.ready().await.unwrap();
    let mut replies = client
        .streaming(
            call(outgoing, Some(&key)),
            PathAndQuery::from_static(BIDI),
            RawCodec,
        )
        .await
        .unwrap()
        .into_inner();
    for i in 0..5 {
        let message = Bytes::from(format!("message {i}"));
        tx.send(message.clone()).await.unwrap();
        assert_eq!(replies.next().await.unwrap().unwrap(), message);
    }
    drop(tx);
    assert!(replies.next().await.is_none());
    assert!(replies.trailers().await.unwrap().is_some(), "no trailers");

    let reached = server.calls();
    let no_key = unary(&mut client, UNARY, None).await.unwrap_err();
    assert_eq!(no_key.code(), Code::Unauthenticated, "{no_key:?}");
    let unknown = unary(&mut client, UNARY, Some("not-a-key-at-all"))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::PermissionDenied, "{unknown:?}");
    let mut elsewhere = grpc_client(gw, ip("127.0.0.3"));
    let wrong_ip = unary(&mut elsewhere, UNARY, Some(&key)).await.unwrap_err();
    assert_eq!(wrong_ip.code(), Code::PermissionDenied, "{wrong_ip:?}");
    // The same answer for every refusal: nothing tells an unknown key from a misplaced one.
    assert_eq!(unknown.message(), wrong_ip.message());
    assert_eq!(server.calls(), reached, "a refused call reached the server");
}

#[tokio::test]
async fn grpc_over_an_h2c_upstream() {
    let server = GrpcServer::start(None).await;
    let gw = Gateway::start(
        &Settings::new(&format!("http://{}", server.addr)).set("upstream.protocol", "\"h2c\""),
    );
    gw.wait_ready().await;
    calls_pass_and_refusals_are_grpc_statuses(&gw, &server).await;
}

fn tls_acceptor(leaf: &Leaf) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der.clone()], key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

#[tokio::test]
async fn grpc_over_an_h2_upstream_with_tls() {
    let ca = TestCa::new();
    let server = GrpcServer::start(Some(tls_acceptor(&ca.leaf("grpc-upstream")))).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    ca.write_pem(&ca_file);
    let gw = Gateway::start(
        &Settings::new(&format!("https://localhost:{}", server.addr.port()))
            .set("upstream.protocol", "\"h2\"")
            .set(
                "upstream.ca_file",
                &format!("{:?}", ca_file.display().to_string()),
            ),
    );
    gw.wait_ready().await;
    calls_pass_and_refusals_are_grpc_statuses(&gw, &server).await;
}

#[tokio::test]
async fn curl_with_http2_prior_knowledge_through_an_h2c_upstream() {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(std::env::var_os("CI").is_none(), "curl is needed in CI");
        eprintln!("skipped: curl is not installed");
        return;
    }
    let server = GrpcServer::start(None).await;
    let gw = Gateway::start(
        &Settings::new(&format!("http://{}", server.addr)).set("upstream.protocol", "\"h2c\""),
    );
    gw.wait_ready().await;
    let (_, _, key) = gw.registered_key(&["127.0.0.2"]).await;
    // curl blocks: run it off this runtime, which also serves the upstream.
    let target = gw.target(ip("127.0.0.2"));
    let curl = |key: String| {
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new("curl")
                .args(["-sS", "--http2-prior-knowledge", "--interface", "127.0.0.2"])
                .args(["-w", "\n%{http_version} %{http_code}", "-H"])
                .arg(format!("{KEY_HEADER}: {key}"))
                .arg(format!("http://{target}/hello"))
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            String::from_utf8(out.stdout).unwrap()
        })
    };
    assert_eq!(curl(key).await.unwrap(), "plain\n2 200");
    let refused = curl("not-a-key-at-all".into()).await.unwrap();
    assert!(refused.ends_with("\n2 403"), "{refused}");
}

/// Trailers cross both ways: an HTTP/2 client's request trailers reach the h2c upstream,
/// whose answer's trailers reach the client.
#[tokio::test]
async fn trailers_pass_both_ways_over_an_h2c_upstream() {
    use http_body_util::BodyExt;
    let server = GrpcServer::start(None).await;
    let gw = Gateway::start(
        &Settings::new(&format!("http://{}", server.addr)).set("upstream.protocol", "\"h2c\""),
    );
    gw.wait_ready().await;
    let (_, _, key) = gw.registered_key(&["127.0.0.2"]).await;
    let from = ip("127.0.0.2");
    let stream = connect_from(from, gw.target(from)).await;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-checksum", "abc123".parse().unwrap());
    let frames = vec![
        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from_static(b"data"))),
        Ok(hyper::body::Frame::trailers(trailers)),
    ];
    let req = http::Request::builder()
        .method("POST")
        .uri("http://gateway.test/trailers")
        .header(KEY_HEADER, &key)
        .header("te", "trailers")
        .body(http_body_util::StreamBody::new(futures_util::stream::iter(
            frames,
        )))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), http::StatusCode::OK);
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected
        .trailers()
        .cloned()
        .expect("no trailers came back");
    assert_eq!(trailers["x-echoed-x-checksum"], "abc123");
    assert_eq!(collected.to_bytes(), Bytes::from_static(b"body"));
}

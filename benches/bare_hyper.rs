//! The floor (issue 12): the least a hyper 1 proxy doing ipgate's check costs on this
//! machine. `benches/load.sh` runs it as the `bare-hyper` target beside ipgate, nginx
//! and haproxy, and `benches/instructions.sh` counts its instructions per request, so
//! every run shows how far ipgate is from what hyper allows.
//!
//! Same hyper, tokio, sha2, rustls and crypto provider (ring) as ipgate (this is one of
//! its bench targets, built from the same lock file). A current-thread runtime; one
//! protocol per run, never sniffed: HTTP/1 (`http1::Builder`), HTTP/2 with prior
//! knowledge (`--h2c`, `http2::Builder`) or HTTP/1.1 over TLS 1.3 (`--tls`, tokio-rustls,
//! ALPN `http/1.1`, rustls' default session tickets as ipgate has them). Per request: a
//! SHA-256 of the key header, a map lookup, and the peer address checked against that
//! key's address set; a fixed 403 on refusal. Nothing else: no header rewriting (but an
//! HTTP/2 request's `Host`, below), no timeouts, no metrics, no access log.
//!
//! The upstream is HTTP/1. Each client connection keeps its own idle upstream
//! connections (no shared pool), each opened at a first allowed request that finds none
//! idle and driven in its own task, as ipgate's lanes are: over HTTP/1 one at most (one
//! request at a time), over HTTP/2 as many as streams were in flight at once, the way
//! hyper-util's pooled client (ipgate's path for HTTP/2 streams) settles on as many
//! idle connections as the streams needed. An HTTP/2 request goes up as HTTP/1.1 with
//! a `Host` from its authority, the least an HTTP/1.1 upstream needs.
//!
//! ```text
//! cargo bench --bench bare_hyper --no-run        # builds it; benches/load.sh does this
//! bare_hyper [--h2c | --tls CERT KEY] LISTEN UPSTREAM SIZE KEY_OK KEY_NOIP
//!   --h2c              HTTP/2 without TLS, prior knowledge (no HTTP/1 at all)
//!   --tls CERT KEY     TLS 1.3 with these PEM files, HTTP/1.1 inside
//!   LISTEN, UPSTREAM   host:port
//!   SIZE               credentials in the map (the two keys below and SIZE - 2 others)
//!   KEY_OK             a key allowed from 127.0.0.1
//!   KEY_NOIP           a known key whose addresses are elsewhere (10.255.255.x)
//! ```
//!
//! Without arguments (as `cargo bench` runs every bench target) it prints this usage
//! and exits 0.

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

const KEY_HEADER: &str = "x-bunq-client-authentication";
const FORBIDDEN: &str = "{\"Error\":[{\"error_description\":\"Insufficient authorisation.\",\"error_description_translated\":\"Insufficient authorisation.\"}]}";

type Body = Either<Incoming, Full<Bytes>>;
/// Key digest -> the addresses it is allowed from.
type Keys = HashMap<[u8; 32], HashSet<IpAddr>>;
/// A client connection's idle upstream connections.
type Lanes = Mutex<Vec<SendRequest<Incoming>>>;

/// What the listener speaks.
enum Mode {
    Http1,
    H2c,
    Tls(TlsAcceptor),
}

fn digest(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

fn keys(size: usize, ok: &str, noip: &str) -> Keys {
    let elsewhere = |i: usize| {
        (0..3)
            .map(|j| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + (i * 3 + j) as u32)))
            .collect::<HashSet<_>>()
    };
    let mut keys: Keys = (0..size.saturating_sub(2))
        .map(|i| {
            (
                digest(format!("ipg_bare_bench_{i}").as_bytes()),
                elsewhere(i),
            )
        })
        .collect();
    let mut allowed = elsewhere(size);
    allowed.insert(IpAddr::V4(Ipv4Addr::LOCALHOST));
    keys.insert(digest(ok.as_bytes()), allowed);
    keys.insert(
        digest(noip.as_bytes()),
        (1..4)
            .map(|i| IpAddr::V4(Ipv4Addr::new(10, 255, 255, i)))
            .collect(),
    );
    keys
}

/// TLS 1.3 only, ring (ipgate's provider), one certificate, ALPN `http/1.1`.
fn tls_acceptor(cert: &str, key: &str) -> TlsAcceptor {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect())
        .expect("CERT: a PEM certificate chain");
    let key = PrivateKeyDer::from_pem_file(key).expect("KEY: a PEM private key");
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("TLS 1.3")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("CERT and KEY: a matching pair");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsAcceptor::from(Arc::new(config))
}

fn allowed(keys: &Keys, req: &Request<Incoming>, peer: IpAddr) -> bool {
    req.headers()
        .get(KEY_HEADER)
        .and_then(|key| keys.get(&digest(key.as_bytes())))
        .is_some_and(|ips| ips.contains(&peer))
}

fn answer(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from_static(
        body.as_bytes(),
    ))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

async fn open(upstream: &str) -> Option<SendRequest<Incoming>> {
    let stream = TcpStream::connect(upstream).await.ok()?;
    stream.set_nodelay(true).ok()?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(sender)
}

/// An HTTP/2 request made fit for an HTTP/1.1 upstream: that version, and a `Host`.
fn as_http1(req: &mut Request<Incoming>) {
    *req.version_mut() = Version::HTTP_11;
    let host = req
        .uri()
        .authority()
        .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok());
    if let Some(host) = host {
        req.headers_mut().insert(http::header::HOST, host);
    }
}

async fn forward(upstream: &str, lanes: &Lanes, mut req: Request<Incoming>) -> Response<Body> {
    if req.version() == Version::HTTP_2 {
        as_http1(&mut req);
    }
    let idle = {
        let mut lanes = lanes.lock().unwrap();
        std::iter::from_fn(|| lanes.pop()).find(|s| !s.is_closed())
    };
    let sender = match idle {
        Some(sender) => Some(sender),
        None => open(upstream).await,
    };
    let Some(mut sender) = sender else {
        return answer(StatusCode::BAD_GATEWAY, "{}");
    };
    match sender.send_request(req).await {
        Ok(resp) => {
            lanes.lock().unwrap().push(sender);
            resp.map(Either::Left)
        }
        Err(_) => answer(StatusCode::BAD_GATEWAY, "{}"),
    }
}

/// The check, and the forwarding of what passes it, for one client connection.
///
/// `MODE` only makes each mode's service a type of its own: served by three kinds of
/// connection, one `call` was no longer inlined into the HTTP/1 dispatcher, which cost
/// that row ~300 instructions a request more than the floor without modes.
fn service<const MODE: u8>(
    peer: IpAddr,
    upstream: Arc<str>,
    keys: Arc<Keys>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send,
> {
    let lanes = Arc::new(Lanes::default());
    service_fn(move |req: Request<Incoming>| {
        let (upstream, lanes) = (Arc::clone(&upstream), Arc::clone(&lanes));
        let allow = allowed(&keys, &req, peer);
        async move {
            Ok::<_, Infallible>(if allow {
                forward(&upstream, &lanes, req).await
            } else {
                answer(StatusCode::FORBIDDEN, FORBIDDEN)
            })
        }
    })
}

async fn serve(listener: TcpListener, mode: Mode, upstream: Arc<str>, keys: Arc<Keys>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (peer, upstream, keys) = (peer.ip(), Arc::clone(&upstream), Arc::clone(&keys));
        let http1 = hyper::server::conn::http1::Builder::new();
        match &mode {
            Mode::Http1 => tokio::spawn(async move {
                let service = service::<0>(peer, upstream, keys);
                let _ = http1.serve_connection(TokioIo::new(stream), service).await;
            }),
            Mode::H2c => tokio::spawn(async move {
                let service = service::<1>(peer, upstream, keys);
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            }),
            Mode::Tls(acceptor) => {
                let accept = acceptor.accept(stream);
                tokio::spawn(async move {
                    let service = service::<2>(peer, upstream, keys);
                    if let Ok(stream) = accept.await {
                        let _ = http1.serve_connection(TokioIo::new(stream), service).await;
                    }
                })
            }
        };
    }
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mode = match args.first().map(String::as_str) {
        Some("--h2c") => {
            args.remove(0);
            Mode::H2c
        }
        Some("--tls") if args.len() > 2 => {
            let acceptor = tls_acceptor(&args[1], &args[2]);
            args.drain(..3);
            Mode::Tls(acceptor)
        }
        _ => Mode::Http1,
    };
    let [listen, upstream, size, ok, noip] = args.as_slice() else {
        eprintln!(
            "bare_hyper [--h2c | --tls CERT KEY] LISTEN UPSTREAM SIZE KEY_OK KEY_NOIP \
             (see the file's header)"
        );
        return;
    };
    let size: usize = size.parse().expect("SIZE: a count");
    let keys = Arc::new(keys(size, ok, noip));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let listener = TcpListener::bind(listen.as_str())
            .await
            .expect("bind LISTEN");
        eprintln!("bare_hyper: listening on {listen}, {} keys", keys.len());
        serve(listener, mode, Arc::from(upstream.as_str()), keys).await;
    });
}

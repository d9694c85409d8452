//! The floor (issue 12): the least a hyper 1 proxy doing ipgate's check costs on this
//! machine. `benches/load.sh` runs it as the `bare-hyper` target beside ipgate, nginx
//! and haproxy, and `benches/instructions.sh` counts its instructions per request, so
//! every run shows how far ipgate is from what hyper allows.
//!
//! Same hyper, tokio and sha2 as ipgate (this is one of its bench targets, built from
//! the same lock file). A current-thread runtime; HTTP/1 only (`http1::Builder`, no
//! protocol sniffing); one upstream connection per client connection (no pool), opened
//! at the first allowed request and driven in its own task, as ipgate's lanes are. Per
//! request: a SHA-256 of the key header, a map lookup, and the peer address checked
//! against that key's address set; a fixed 403 with keep-alive on refusal. Nothing
//! else: no header rewriting, no timeouts, no metrics, no access log.
//!
//! ```text
//! cargo bench --bench bare_hyper --no-run        # builds it; benches/load.sh does this
//! bare_hyper LISTEN UPSTREAM SIZE KEY_OK KEY_NOIP
//!   LISTEN, UPSTREAM   host:port
//!   SIZE               credentials in the map (the two keys below and SIZE - 2 others)
//!   KEY_OK             a key allowed from 127.0.0.1
//!   KEY_NOIP           a known key whose addresses are elsewhere (10.255.255.x)
//! ```
//!
//! Without arguments (as `cargo bench` runs every bench target) it prints this usage
//! and exits 0.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};

const KEY_HEADER: &str = "x-bunq-client-authentication";
const FORBIDDEN: &str = "{\"Error\":[{\"error_description\":\"Insufficient authorisation.\",\"error_description_translated\":\"Insufficient authorisation.\"}]}";

type Body = Either<Incoming, Full<Bytes>>;
/// Key digest -> the addresses it is allowed from.
type Keys = HashMap<[u8; 32], HashSet<IpAddr>>;

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

async fn forward(
    upstream: &str,
    lane: &Mutex<Option<SendRequest<Incoming>>>,
    req: Request<Incoming>,
) -> Response<Body> {
    let taken = lane.lock().unwrap().take().filter(|s| !s.is_closed());
    let sender = match taken {
        Some(sender) => Some(sender),
        None => open(upstream).await,
    };
    let Some(mut sender) = sender else {
        return answer(StatusCode::BAD_GATEWAY, "{}");
    };
    match sender.send_request(req).await {
        Ok(resp) => {
            *lane.lock().unwrap() = Some(sender);
            resp.map(Either::Left)
        }
        Err(_) => answer(StatusCode::BAD_GATEWAY, "{}"),
    }
}

async fn serve(listener: TcpListener, upstream: Arc<str>, keys: Arc<Keys>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let peer = peer.ip();
        let (upstream, keys) = (Arc::clone(&upstream), Arc::clone(&keys));
        tokio::spawn(async move {
            let lane = Arc::new(Mutex::new(None));
            let service = service_fn(|req: Request<Incoming>| {
                let (upstream, keys, lane) = (&upstream, &keys, Arc::clone(&lane));
                let allow = allowed(keys, &req, peer);
                let upstream = Arc::clone(upstream);
                async move {
                    Ok::<_, Infallible>(if allow {
                        forward(&upstream, &lane, req).await
                    } else {
                        answer(StatusCode::FORBIDDEN, FORBIDDEN)
                    })
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, upstream, size, ok, noip] = args.as_slice() else {
        eprintln!("bare_hyper LISTEN UPSTREAM SIZE KEY_OK KEY_NOIP (see the file's header)");
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
        serve(listener, Arc::from(upstream.as_str()), keys).await;
    });
}

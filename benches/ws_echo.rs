//! The WebSocket echo for benches/protocols.sh: not a criterion bench, a binary with two
//! modes. `cargo bench` runs it without arguments: it prints its usage and exits.
//!
//!   ws_echo serve                         echo server on 127.0.0.1:0; prints its port
//!   ws_echo load URL SECONDS CONNECTIONS [NAME:VALUE]
//!                                         CONNECTIONS WebSockets to URL (with the header),
//!                                         each sending a 32-byte message and waiting for
//!                                         its echo, again and again for SECONDS; prints
//!                                         round trips, round trips/s, p50 and p99 in us
//!
//! One thread each (a current-thread runtime), as wrk -t1 and the other rows run.

use futures_util::{SinkExt, StreamExt};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    match args.first().map(String::as_str) {
        Some("serve") => runtime.block_on(serve()),
        Some("load") if args.len() >= 4 => {
            let seconds: u64 = args[2].parse().expect("SECONDS");
            let connections: usize = args[3].parse().expect("CONNECTIONS");
            let header = args.get(4).map(|h| h.split_once(':').expect("NAME:VALUE"));
            runtime.block_on(load(&args[1], seconds, connections, header));
        }
        _ => eprintln!("usage: ws_echo serve | ws_echo load URL SECONDS CONNECTIONS [NAME:VALUE]"),
    }
}

async fn serve() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    println!("{}", listener.local_addr().expect("address").port());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            if stream.set_nodelay(true).is_err() {
                return;
            }
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            while let Some(Ok(msg)) = ws.next().await {
                if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                    return;
                }
            }
        });
    }
}

async fn load(url: &str, seconds: u64, connections: usize, header: Option<(&str, &str)>) {
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let mut req = url.into_client_request().expect("a ws:// URL");
        if let Some((name, value)) = header {
            let name = http::HeaderName::from_bytes(name.trim().as_bytes()).expect("a header name");
            req.headers_mut()
                .insert(name, value.trim().parse().expect("a header value"));
        }
        let authority = req
            .uri()
            .authority()
            .expect("host:port")
            .as_str()
            .to_owned();
        let stream = tokio::net::TcpStream::connect(&authority)
            .await
            .expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let (mut ws, _) = tokio_tungstenite::client_async(req, stream)
            .await
            .expect("the handshake");
        tasks.push(tokio::spawn(async move {
            let mut rtts = Vec::new();
            let payload = "x".repeat(32);
            while Instant::now() < until {
                let sent = Instant::now();
                ws.send(Message::text(payload.clone())).await.expect("send");
                match ws.next().await {
                    Some(Ok(_)) => rtts.push(sent.elapsed().as_micros() as u64),
                    other => panic!("no echo: {other:?}"),
                }
            }
            rtts
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("a load task"));
    }
    all.sort_unstable();
    let pick = |q: f64| all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)));
    println!(
        "round_trips {} per_second {:.0} p50_us {} p99_us {}",
        all.len(),
        all.len() as f64 / seconds as f64,
        pick(0.50).copied().unwrap_or(0),
        pick(0.99).copied().unwrap_or(0)
    );
}

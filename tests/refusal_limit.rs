//! The per-address refusal limit holds on every route: a key guessed at through the
//! management API is limited as one guessed at through the proxy.

mod common;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;

#[tokio::test]
async fn management_api_refusals_are_limited_too() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&Settings::new(&upstream.url()).set("limits.refusals_per_second", "1"));
    gw.wait_ready().await;
    let (user, _, key) = gw.registered_key(&["127.0.0.2"]).await;
    let from = ip("127.0.0.3");
    let stream = connect_from(from, gw.target(from)).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let path = format!("/v1/user/{user}/credential-password-ip");
    let mut limited = None;
    for _ in 0..1000 {
        let req = Request::builder()
            .uri(&path)
            .header("host", "x")
            .header(KEY_HEADER, "ipg_guessed_key_0000000000000000")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let r = collect(sender.send_request(req).await.unwrap()).await;
        match r.status {
            StatusCode::FORBIDDEN => {}
            StatusCode::TOO_MANY_REQUESTS => {
                limited = Some(r);
                break;
            }
            other => panic!("unexpected {other}: {}", r.text()),
        }
    }
    let limited = limited.expect("no API refusal was ever limited");
    assert_eq!(limited.headers["retry-after"], "1");
    gw.wait_metric("ipgate_refusals_limited_total", 1.0).await;
    // The key holder, from its own address, is not limited by it.
    let r = gw.get(ip("127.0.0.2"), &path, Some(&key)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

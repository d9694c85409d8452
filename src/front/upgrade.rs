//! An allowed upgrade request (a WebSocket handshake): forwarded, and when the upstream
//! switches protocols, the tunnel left on the client connection for the listener to
//! run, with its own access line written when it ends: its duration, the bytes each
//! way, and how it ended. The request's usual line is not written (it would say 101
//! and nothing of what crossed).

use super::{Front, Line, Live};
use crate::access_log::{AccessLog, Entry};
use crate::metrics::Metrics;
use crate::proxy::tunnel::{splice, End, Spliced};
use crate::proxy::{ClientConn, ForwardError, Forwarding, RequestBody};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

impl Front {
    /// Forwards an upgrade request; on a 101, leaves the tunnel in `conn`, which
    /// writes `line`'s entry when it ends (the caller marks `line` done).
    pub(super) async fn upgrade(
        &self,
        mut req: Request<RequestBody>,
        how: Forwarding<'_>,
        live: &Live,
        conn: &ClientConn,
        line: &Line<'_>,
    ) -> Result<Response<Incoming>, ForwardError> {
        let client_side = hyper::upgrade::on(&mut req);
        let mut resp = live.upstream.upgrade(req, how).await?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Ok(resp);
        }
        let upstream_side = hyper::upgrade::on(&mut resp);
        self.metrics
            .request_duration
            .observe(line.started.elapsed().as_secs_f64());
        let mut record = TunnelRecord {
            log: self.access_log.clone(),
            metrics: Arc::clone(&self.metrics),
            started: line.started,
            method: line.method.clone(),
            path: line.uri.path().to_owned(),
            request_id: line.request_id.clone(),
            credential_id: line.credential_id,
            client_ip: line.client_ip,
            peer: line.peer,
            shadow: line.shadow,
            reason: line.reason,
            spliced: Spliced::default(),
            end: None,
        };
        // Counted from here: the record's drop, however the tunnel ends, uncounts it.
        self.metrics.open_tunnels.inc();
        let idle = live.upstream.tunnel_idle_timeout();
        conn.tunnel.put(Box::pin(async move {
            let metrics = Arc::clone(&record.metrics);
            let end = splice(client_side, upstream_side, idle, &record.spliced, &metrics).await;
            record.ended(end);
        }));
        Ok(resp)
    }
}

/// A tunnel's access line, written when the tunnel ends: also when it is dropped
/// unfinished (cut at the end of the grace period, or its connection closed by the
/// listener), then with `cut = "shutdown"`.
struct TunnelRecord {
    log: AccessLog,
    metrics: Arc<Metrics>,
    started: Instant,
    method: Method,
    path: String,
    request_id: HeaderValue,
    credential_id: Option<u64>,
    client_ip: Option<IpAddr>,
    peer: IpAddr,
    shadow: bool,
    reason: &'static str,
    spliced: Spliced,
    /// `None` until the splice ends; still `None` when dropped unfinished.
    end: Option<End>,
}

impl TunnelRecord {
    fn ended(&mut self, end: End) {
        self.end = Some(end);
    }
}

impl Drop for TunnelRecord {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        self.metrics.open_tunnels.dec();
        let cut = match self.end {
            Some(End::Closed) => None,
            Some(end) => Some(end.label()),
            None => Some("shutdown"),
        };
        self.log.record(&Entry {
            status: 101,
            allowed: true,
            shadow: self.shadow,
            reason: self.reason,
            route: "proxy",
            method: self.method.as_str(),
            path: &self.path,
            request_id: self.request_id.as_bytes(),
            credential_id: self.credential_id,
            client_ip: self.client_ip,
            peer: self.peer,
            bytes_in: Some(self.spliced.up.load(Relaxed)),
            bytes_out: Some(self.spliced.down.load(Relaxed)),
            latency_us: self.started.elapsed().as_micros() as u64,
            cut,
        });
    }
}

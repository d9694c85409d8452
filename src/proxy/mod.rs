//! Hot-path plumbing: accepting connections (plain, TLS, PROXY protocol), keeping
//! them within the cap and their clients within their deadlines, finding the client address, forwarding to the upstream, and
//! limiting refusals per address.
//!
//! What a request means is not decided here: the listener hands every request to a
//! [`Door`] (the front door, `crate::front`), and the forwarder is told what to send.
//! Nothing here knows the management API or the credential check.

pub mod client_ip;
mod connections;
mod deadlines;
mod forward;
mod h2_upstream;
mod headers;
mod listener;
#[doc(hidden)] // public for the fuzz targets only
pub mod proxy_protocol;
mod refusal_limit;
pub mod target;
pub mod tls;
pub mod tunnel;
mod warn_limit;

pub use deadlines::{Deadlines, RequestBody};
pub use forward::{ForwardError, Upstream, UpstreamSetupError};
pub use headers::{
    ip_value, spoofable, Forwarding, CLIENT_IP, CREDENTIAL_ID, ENFORCEMENT, USER_ID,
};
pub use listener::{oversized_head, serve, ListenerOptions};
pub use refusal_limit::RefusalLimiter;

use bytes::Bytes;
use connections::Seat;
use forward::Lane;
use http::{Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use ipnet::IpNet;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What the public listener answers with: the upstream's streamed body or our own.
pub type Body = Either<Incoming, Full<Bytes>>;

/// Where the listener hands each request: it routes, answers and logs.
pub trait Door: Send + Sync + 'static {
    /// Answers one request that arrived on `conn`.
    fn serve(
        &self,
        req: Request<RequestBody>,
        conn: &ClientConn,
    ) -> impl Future<Output = Response<Body>> + Send;

    /// Whether `peer` is a trusted proxy now (it may send a PROXY protocol header).
    fn trusts(&self, peer: IpAddr) -> bool;

    /// The grace period is over: requests still in flight are about to be cut off.
    fn cutting_off(&self);
}

/// How a connection's client address became known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The TCP peer is the client (or a proxy in front of it that may vouch for it).
    Direct,
    /// A trusted layer-4 balancer named the client in a PROXY header. The client wrote
    /// every HTTP header itself: its forwarding headers are never believed, whatever
    /// its address.
    Proxied,
    /// A balancer's own health check (PROXY v1 `UNKNOWN`, v2 `LOCAL` or no address),
    /// allowed by `server.proxy_protocol_local = "health"`: answered by the gateway,
    /// never forwarded, never authenticated.
    HealthCheck,
}

/// What every request on one client connection shares.
pub struct ClientConn {
    /// The TCP peer (or the client a PROXY header named), normalised.
    pub peer: IpAddr,
    pub origin: Origin,
    /// `peer` as a header value, formatted once per connection.
    pub peer_value: http::HeaderValue,
    /// The upstream connection this client connection owns (HTTP/1 only).
    pub lane: Lane,
    /// The identity headers of the last credential forwarded on it.
    pub identity: headers::IdentityCache,
    /// The tunnel an upgrade answered 101 leaves for the listener to run.
    pub tunnel: tunnel::TunnelSlot,
    /// Whether `peer` is a trusted proxy, as of which configuration: `generation + 1`
    /// in the high bits (0: not worked out yet), the answer in bit 0. Worked out once
    /// per connection and configuration, not per request.
    trusted: AtomicU64,
    /// Its place in the listener's table, which says why the listener cut it.
    seat: Option<Arc<Seat>>,
}

/// Why the listener closed a connection while requests were in flight: what their
/// access lines say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Cut {
    /// A request body waited on the client past `server.body_timeout`.
    BodyTimeout = 1,
    /// An answer waited for the client to read it past `server.response_timeout`.
    ResponseTimeout = 2,
    /// Stalled at the cap: a new client took its place.
    Evicted = 3,
}

impl Cut {
    pub fn label(self) -> &'static str {
        match self {
            Self::BodyTimeout => "body_timeout",
            Self::ResponseTimeout => "response_timeout",
            Self::Evicted => "evicted_stalled",
        }
    }
}

impl ClientConn {
    pub fn new(peer: IpAddr, origin: Origin) -> Self {
        Self {
            peer,
            origin,
            peer_value: headers::ip_value(peer),
            lane: Lane::default(),
            identity: headers::IdentityCache::default(),
            tunnel: tunnel::TunnelSlot::default(),
            trusted: AtomicU64::new(0),
            seat: None,
        }
    }

    /// A connection that holds `seat` in the listener's table.
    fn on_seat(peer: IpAddr, origin: Origin, seat: Arc<Seat>) -> Self {
        Self {
            seat: Some(seat),
            ..Self::new(peer, origin)
        }
    }

    /// Why the listener closed this connection under its requests, if it did.
    pub fn cut_by(&self) -> Option<Cut> {
        self.seat.as_ref().and_then(|seat| seat.cut_by())
    }

    /// Whether the peer is inside `trusted` (the proxies of configuration `generation`)
    /// and connected directly: only then are its forwarding headers believed.
    pub fn peer_trusted(&self, generation: u64, trusted: &[IpNet]) -> bool {
        if self.origin != Origin::Direct {
            return false;
        }
        let tag = generation.wrapping_add(1) << 1;
        let known = self.trusted.load(Ordering::Relaxed);
        if known & !1 == tag {
            return known & 1 == 1;
        }
        let answer = client_ip::is_trusted(self.peer, trusted);
        self.trusted
            .store(tag | u64::from(answer), Ordering::Relaxed);
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_is_worked_out_again_for_a_new_configuration() {
        let conn = ClientConn::new("10.0.0.5".parse().unwrap(), Origin::Direct);
        let net: IpNet = "10.0.0.0/8".parse().unwrap();
        assert!(!conn.peer_trusted(0, &[]));
        assert!(!conn.peer_trusted(0, &[net]), "cached for generation 0");
        assert!(conn.peer_trusted(1, &[net]));
        assert!(!conn.peer_trusted(2, &[]));
    }

    #[test]
    fn a_client_named_by_a_proxy_header_is_never_a_trusted_proxy() {
        let net: IpNet = "10.0.0.0/8".parse().unwrap();
        for origin in [Origin::Proxied, Origin::HealthCheck] {
            let conn = ClientConn::new("10.0.0.5".parse().unwrap(), origin);
            assert!(!conn.peer_trusted(0, &[net]), "{origin:?}");
        }
    }
}

//! Client connections on the public listener: how many are open against the ceiling,
//! the ones closed before or between requests, and the upgraded ones (WebSockets)
//! spliced to the upstream.

use super::{counter, counter_vec, int_gauge};
use prometheus::{IntCounter, IntGauge, Registry};

pub(super) fn open_connections(r: &Registry) -> IntGauge {
    int_gauge(
        r,
        "ipgate_open_connections",
        "Client connections open on the public listener.",
    )
}

pub(super) fn max_connections(r: &Registry) -> IntGauge {
    int_gauge(
        r,
        "ipgate_max_connections",
        "The configured server.max_connections: the ceiling of ipgate_open_connections.",
    )
}

pub(super) fn tls_handshake_failures(r: &Registry) -> IntCounter {
    counter(
        r,
        "ipgate_tls_handshake_failures_total",
        "TLS handshakes on the public listener that failed or timed out.",
    )
}

pub(super) fn proxy_header_failures(r: &Registry) -> IntCounter {
    counter(
        r,
        "ipgate_proxy_protocol_failures_total",
        "Connections closed because their PROXY protocol header was missing, \
         malformed, late, or sent by a peer that is not a trusted proxy.",
    )
}

pub(super) fn idle_closed(r: &Registry) -> IntCounter {
    counter(
        r,
        "ipgate_idle_connections_closed_total",
        "Kept-alive client connections closed after a request because no next \
         request head arrived within server.header_read_timeout.",
    )
}

pub(super) fn connections_refused(r: &Registry) -> IntCounter {
    counter(
        r,
        "ipgate_connections_refused_total",
        "Client connections closed at accept because server.max_connections were \
         open and none of them was idle.",
    )
}

pub(super) fn connections_evicted(r: &Registry) -> IntCounter {
    counter(
        r,
        "ipgate_connections_evicted_total",
        "Idle or stalled client connections closed to make room for a new one at \
         server.max_connections.",
    )
}

pub(super) fn connections_over_share(r: &Registry) -> IntCounter {
    counter(
        r,
        "ipgate_connections_refused_client_share_total",
        "Client connections closed at accept because their client address (its /64 \
         for IPv6) held server.client_share_percent of server.max_connections \
         already.",
    )
}

/// `ipgate_tunnel_bytes_total`'s handles: `up`, then `down`.
pub(super) fn tunnel_bytes(r: &Registry) -> (IntCounter, IntCounter) {
    let v = counter_vec(
        r,
        "ipgate_tunnel_bytes_total",
        "Bytes spliced through upgraded connections (WebSockets), by direction: \
         up (client to upstream), down (upstream to client).",
        &["direction"],
    );
    (v.with_label_values(&["up"]), v.with_label_values(&["down"]))
}

pub(super) fn open_tunnels(r: &Registry) -> IntGauge {
    int_gauge(
        r,
        "ipgate_open_tunnels",
        "Upgraded connections (WebSockets) being spliced to the upstream now.",
    )
}

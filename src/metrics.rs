//! Every metric ipgate exports, in one owned registry.
//!
//! No globals: a [`Metrics`] is built per gateway and passed in, so tests run side by
//! side. Labels come from small enums only (decision, reason, result, kind): never a
//! key, an address or a path. Hot-path counters are resolved to handles up front so a
//! request pays one atomic add, not a label lookup.

use crate::acl::{Reason, SnapshotCell};
use crate::store::ResyncReason;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};
use std::sync::Arc;

/// Buckets for request latencies: 100 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Buckets for the time from a change's commit to its enforcement: 1 ms to 30 s.
const PROPAGATION_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 5.0, 10.0, 30.0,
];

/// Why an upstream exchange failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamError {
    Connect,
    Timeout,
    Protocol,
}

impl UpstreamError {
    const ALL: [UpstreamError; 3] = [Self::Connect, Self::Timeout, Self::Protocol];

    pub fn label(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::Protocol => "protocol",
        }
    }
}

/// A request or connection the client got wrong: answered 400 or closed, never blamed
/// on the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientError {
    /// The request body was malformed (a bad chunk) or ended early.
    Body,
    /// Refused before routing: a tunnel (`CONNECT`, authority-form target), a missing,
    /// repeated or invalid `Host`.
    Request,
    /// The request head did not arrive within `server.header_read_timeout`.
    HeaderTimeout,
    /// The request head, or one line of it, was over ipgate's bound: answered 431.
    HeadTooLarge,
    /// A request body waited on the client past `server.body_timeout` (and its
    /// minimum rate): the connection was closed.
    BodyTimeout,
    /// An answer the client did not read past `server.response_timeout` (and its
    /// minimum rate): the connection was closed.
    ResponseTimeout,
}

impl ClientError {
    const ALL: [ClientError; 6] = [
        Self::Body,
        Self::Request,
        Self::HeaderTimeout,
        Self::HeadTooLarge,
        Self::BodyTimeout,
        Self::ResponseTimeout,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Body => "body",
            Self::Request => "request",
            Self::HeaderTimeout => "header_timeout",
            Self::HeadTooLarge => "head_too_large",
            Self::BodyTimeout => "body_timeout",
            Self::ResponseTimeout => "response_timeout",
        }
    }
}

/// How a device registration ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Registration {
    Registered,
    /// The store refused it (not pending, window passed, limits).
    Refused,
    /// The key is in no snapshot, even after one more look at the store: refused
    /// without touching the store's write lock. Many of these: someone guessing keys.
    UnknownKey,
}

impl Registration {
    const ALL: [Registration; 3] = [Self::Registered, Self::Refused, Self::UnknownKey];

    pub fn label(self) -> &'static str {
        match self {
            Self::Registered => "registered",
            Self::Refused => "refused",
            Self::UnknownKey => "unknown_key",
        }
    }
}

/// Every operation label of `ipgate_api_requests_total` (the management API's routes,
/// `src/api/route.rs`), so each series exists from the start.
pub const API_OPERATIONS: [&str; 14] = [
    "device_server",
    "list_credentials",
    "get_credential",
    "list_ips",
    "add_ip",
    "get_ip",
    "update_ip",
    "list_refused_ips",
    "list_suggested_ips",
    // The console's own routes (`src/console/`): its page and assets, and `me`.
    "console_page",
    "console_me",
    "console_link",
    "console_session",
    "not_found",
];

/// Results of `ipgate_console_links_total`.
pub const CONSOLE_LINK_RESULTS: [&str; 2] = ["used", "refused"];

/// Status classes of `ipgate_api_requests_total`.
pub const API_CLASSES: [&str; 3] = ["2xx", "4xx", "5xx"];

/// Results of `ipgate_tls_reloads_total`.
pub const TLS_RELOAD_RESULTS: [&str; 2] = ["ok", "error"];

/// How a configuration reload (SIGHUP) ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigReload {
    /// Applied (keys that cannot change at run time are named in a warning and kept).
    Ok,
    /// Not applied: the file is bad, or something in it could not be set up (a TLS
    /// pair, an upstream CA file). The running configuration is unchanged.
    Error,
}

impl ConfigReload {
    const ALL: [ConfigReload; 2] = [Self::Ok, Self::Error];

    pub fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
        }
    }
}

/// Outcome of one poll of the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefreshResult {
    /// Version unchanged; snapshot confirmed fresh.
    Unchanged,
    /// The changes since the snapshot's version applied to it.
    Updated,
    /// Everything loaded anew (at start, or on a resync).
    Loaded,
    Error,
}

impl RefreshResult {
    const ALL: [RefreshResult; 4] = [Self::Unchanged, Self::Updated, Self::Loaded, Self::Error];

    pub fn label(self) -> &'static str {
        match self {
            Self::Unchanged => "unchanged",
            Self::Updated => "updated",
            Self::Loaded => "loaded",
            Self::Error => "error",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    allowed: IntCounter,
    denied: Vec<IntCounter>,
    shadowed: IntCounter,
    pub leaked_key: IntCounter,
    pub request_duration: Histogram,
    pub upstream_duration: Histogram,
    upstream_errors: Vec<IntCounter>,
    pub open_connections: IntGauge,
    pub tls_handshake_failures: IntCounter,
    pub proxy_header_failures: IntCounter,
    pub tls_reloads: IntCounterVec,
    config_reloads: Vec<IntCounter>,
    pub snapshot_version: IntGauge,
    pub snapshot_credentials: IntGauge,
    pub snapshot_active_ips: IntGauge,
    snapshot_age: Gauge,
    refresh: Vec<IntCounter>,
    pub refresh_duration: Histogram,
    pub api_requests: IntCounterVec,
    pub store_up: IntGauge,
    pub changes_applied: IntCounter,
    resyncs: Vec<IntCounter>,
    pub change_propagation: Histogram,
    pub damaged_credentials: IntGauge,
    registrations: Vec<IntCounter>,
    pub usage_flushes: IntCounterVec,
    pub usage_rows: IntCounter,
    pub usage_dropped: IntCounter,
    client_errors: Vec<IntCounter>,
    pub idle_closed: IntCounter,
    pub connections_refused: IntCounter,
    pub connections_evicted: IntCounter,
    pub connections_over_share: IntCounter,
    pub max_connections: IntGauge,
    pub refusals_limited: IntCounter,
    /// Bytes spliced through upgraded connections (WebSockets): `up` from the client,
    /// `down` from the upstream.
    pub tunnel_bytes_up: IntCounter,
    pub tunnel_bytes_down: IntCounter,
    pub open_tunnels: IntGauge,
    console_links: IntCounterVec,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    // Names are constants below and unique; a clash is a programming error caught by
    // the unit test, never a runtime condition.
    r.register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

/// The process's own memory, open descriptors, CPU time, threads and start time, read
/// from `/proc/self` at scrape time by the `prometheus` crate's collector, named
/// `ipgate_process_*` (every name starts with `ipgate_`). Linux only: elsewhere the
/// crate has no collector and these families are absent.
#[cfg(target_os = "linux")]
fn register_process(r: &Registry) {
    // A pid always fits a pid_t (i32) on Linux: the kernel caps it at 2^22.
    let pid = i32::try_from(std::process::id()).expect("a Linux pid fits an i32");
    r.register(Box::new(
        prometheus::process_collector::ProcessCollector::new(pid, "ipgate"),
    ))
    .expect("metric names are unique");
}

#[cfg(not(target_os = "linux"))]
fn register_process(_: &Registry) {}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let requests = register(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "ipgate_requests_total",
                    "Requests on the public listener by decision (allow, deny, shadow: forwarded only because the credential is in shadow mode) and reason.",
                ),
                &["decision", "reason"],
            )
            .expect("valid metric"),
        );
        let allowed = requests.with_label_values(&["allow", "ok"]);
        let denied = Reason::ALL
            .iter()
            .map(|r| requests.with_label_values(&["deny", r.label()]))
            .collect();
        // The address check is the only one shadow mode lets through.
        let shadowed = requests.with_label_values(&["shadow", Reason::IpNotActive.label()]);
        let upstream_errors_vec = register(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "ipgate_upstream_errors_total",
                    "Allowed requests the upstream did not answer, by kind (connect, timeout, protocol).",
                ),
                &["kind"],
            )
            .expect("valid metric"),
        );
        let upstream_errors = UpstreamError::ALL
            .iter()
            .map(|k| upstream_errors_vec.with_label_values(&[k.label()]))
            .collect();
        let refresh_vec = register(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "ipgate_refresh_total",
                    "Polls of the store by result (unchanged; updated: changes applied; loaded: \
                     everything loaded anew; error).",
                ),
                &["result"],
            )
            .expect("valid metric"),
        );
        let refresh = RefreshResult::ALL
            .iter()
            .map(|k| refresh_vec.with_label_values(&[k.label()]))
            .collect();
        let resyncs_vec = register(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "ipgate_resyncs_total",
                    "Full loads after the snapshot's position in the store's history could not \
                     be continued, by reason (too_old, history_rewritten, went_backwards, \
                     other_store, delta_too_large, delta_timed_out).",
                ),
                &["reason"],
            )
            .expect("valid metric"),
        );
        let resyncs = ResyncReason::ALL
            .iter()
            .map(|k| resyncs_vec.with_label_values(&[k.label()]))
            .collect();
        let client_errors_vec = register(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "ipgate_client_errors_total",
                    "Requests and connections the client got wrong, by kind (body: a \
                     malformed or cut-short request body; request: a tunnel or a bad Host, \
                     answered 400; header_timeout: no complete request head in time; \
                     head_too_large: a request head or one of its lines over ipgate's bound, \
                     answered 431; body_timeout and response_timeout: a request body not \
                     sent, or an answer not read, within its deadline and minimum rate).",
                ),
                &["kind"],
            )
            .expect("valid metric"),
        );
        let client_errors = ClientError::ALL
            .iter()
            .map(|k| client_errors_vec.with_label_values(&[k.label()]))
            .collect();
        let config_reloads_vec = register(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "ipgate_config_reloads_total",
                    "Configuration reloads on SIGHUP by result (ok: applied; error: the file \
                     or something it names is bad, and the running configuration is kept).",
                ),
                &["result"],
            )
            .expect("valid metric"),
        );
        let config_reloads = ConfigReload::ALL
            .iter()
            .map(|k| config_reloads_vec.with_label_values(&[k.label()]))
            .collect();
        register(
            &r,
            IntGaugeVec::new(
                Opts::new(
                    "ipgate_build_info",
                    "Always 1; the label says which ipgate this is.",
                ),
                &["version"],
            )
            .expect("valid metric"),
        )
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
        register_process(&r);
        let counter = |name: &str, help: &str| {
            register(&r, IntCounter::new(name, help).expect("valid metric"))
        };
        let registrations_vec = register(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "ipgate_device_registrations_total",
                    "POST /v1/device-server by result (registered; refused by the store; \
                     unknown_key: refused from the snapshot, without a store write).",
                ),
                &["result"],
            )
            .expect("valid metric"),
        );
        let registrations = Registration::ALL
            .iter()
            .map(|k| registrations_vec.with_label_values(&[k.label()]))
            .collect();
        let histogram = |name: &str, help: &str| {
            register(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                )
                .expect("valid metric"),
            )
        };
        let int_gauge =
            |name: &str, help: &str| register(&r, IntGauge::new(name, help).expect("valid metric"));
        let tunnel_bytes = register(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "ipgate_tunnel_bytes_total",
                    "Bytes spliced through upgraded connections (WebSockets), by direction: \
                     up (client to upstream), down (upstream to client).",
                ),
                &["direction"],
            )
            .expect("valid metric"),
        );
        Self {
            allowed,
            denied,
            shadowed,
            leaked_key: register(
                &r,
                IntCounter::new(
                    "ipgate_key_from_unlisted_ip_total",
                    "Requests with a valid, ACTIVE key from an address that is not ACTIVE on it: \
                     the signal of a leaked key.",
                )
                .expect("valid metric"),
            ),
            request_duration: histogram(
                "ipgate_request_duration_seconds",
                "Time from request received to response headers sent, on the public listener.",
            ),
            upstream_duration: histogram(
                "ipgate_upstream_duration_seconds",
                "Time the upstream took to answer with response headers.",
            ),
            upstream_errors,
            open_connections: int_gauge(
                "ipgate_open_connections",
                "Client connections open on the public listener.",
            ),
            tls_handshake_failures: register(
                &r,
                IntCounter::new(
                    "ipgate_tls_handshake_failures_total",
                    "TLS handshakes on the public listener that failed or timed out.",
                )
                .expect("valid metric"),
            ),
            proxy_header_failures: register(
                &r,
                IntCounter::new(
                    "ipgate_proxy_protocol_failures_total",
                    "Connections closed because their PROXY protocol header was missing, \
                     malformed, late, or sent by a peer that is not a trusted proxy.",
                )
                .expect("valid metric"),
            ),
            tls_reloads: register(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "ipgate_tls_reloads_total",
                        "Certificate reloads on SIGHUP by result (ok, error; on error the old \
                         certificate keeps serving).",
                    ),
                    &["result"],
                )
                .expect("valid metric"),
            ),
            config_reloads,
            snapshot_version: int_gauge(
                "ipgate_snapshot_version",
                "Store change version of the snapshot being enforced.",
            ),
            snapshot_credentials: int_gauge(
                "ipgate_snapshot_credentials",
                "Credentials in the snapshot being enforced, in any state.",
            ),
            snapshot_active_ips: int_gauge(
                "ipgate_snapshot_active_ips",
                "ACTIVE permitted IP entries in the snapshot being enforced (billed).",
            ),
            snapshot_age: register(
                &r,
                Gauge::new(
                    "ipgate_snapshot_age_seconds",
                    "Seconds since the store last confirmed the snapshot; -1 before the first load.",
                )
                .expect("valid metric"),
            ),
            refresh,
            refresh_duration: histogram(
                "ipgate_refresh_duration_seconds",
                "Time one poll of the store took, including a rebuild when the version changed.",
            ),
            api_requests: register(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "ipgate_api_requests_total",
                        "Management API requests by operation and status class.",
                    ),
                    &["operation", "status"],
                )
                .expect("valid metric"),
            ),
            store_up: int_gauge(
                "ipgate_store_up",
                "1 when the last poll of the store succeeded, 0 when it failed.",
            ),
            changes_applied: register(
                &r,
                IntCounter::new(
                    "ipgate_changes_applied_total",
                    "Store versions applied to the snapshot as deltas.",
                )
                .expect("valid metric"),
            ),
            resyncs,
            change_propagation: register(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "ipgate_change_propagation_seconds",
                        "Time from a change's commit in the store to its enforcement by this \
                         gateway (clocks of the writer and this host).",
                    )
                    .buckets(PROPAGATION_BUCKETS.to_vec()),
                )
                .expect("valid metric"),
            ),
            damaged_credentials: int_gauge(
                "ipgate_store_damaged_credentials",
                "Credentials refused because their stored record could not be read.",
            ),
            registrations,
            usage_flushes: {
                let v = register(
                    &r,
                    IntCounterVec::new(
                        Opts::new(
                            "ipgate_usage_flushes_total",
                            "Writes of per-address usage and refused addresses to the store, \
                             by result (ok, error: kept for the next one).",
                        ),
                        &["result"],
                    )
                    .expect("valid metric"),
                );
                for result in ["ok", "error"] {
                    v.with_label_values(&[result]);
                }
                v
            },
            usage_rows: counter(
                "ipgate_usage_rows_total",
                "Per-address usage and refused-address rows written to the store.",
            ),
            usage_dropped: counter(
                "ipgate_usage_dropped_total",
                "Sightings not kept: a worker's table was full between two flushes, or the \
                 store stayed down too long.",
            ),
            client_errors,
            idle_closed: counter(
                "ipgate_idle_connections_closed_total",
                "Kept-alive client connections closed after a request because no next \
                 request head arrived within server.header_read_timeout.",
            ),
            connections_refused: counter(
                "ipgate_connections_refused_total",
                "Client connections closed at accept because server.max_connections were \
                 open and none of them was idle.",
            ),
            connections_evicted: counter(
                "ipgate_connections_evicted_total",
                "Idle or stalled client connections closed to make room for a new one at \
                 server.max_connections.",
            ),
            connections_over_share: counter(
                "ipgate_connections_refused_client_share_total",
                "Client connections closed at accept because their client address (its /64 \
                 for IPv6) held server.client_share_percent of server.max_connections \
                 already.",
            ),
            max_connections: int_gauge(
                "ipgate_max_connections",
                "The configured server.max_connections: the ceiling of ipgate_open_connections.",
            ),
            refusals_limited: counter(
                "ipgate_refusals_limited_total",
                "Requests answered 429 because their client address was refused more than \
                 limits.refusals_per_second times this second.",
            ),
            tunnel_bytes_up: tunnel_bytes.with_label_values(&["up"]),
            tunnel_bytes_down: tunnel_bytes.with_label_values(&["down"]),
            open_tunnels: int_gauge(
                "ipgate_open_tunnels",
                "Upgraded connections (WebSockets) being spliced to the upstream now.",
            ),
            console_links: register(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "ipgate_console_links_total",
                        "Console links presented here: used (a session opened) or refused (unknown, spent or expired). Minting is in the audit log (console_link.mint).",
                    ),
                    &["result"],
                )
                .expect("valid metric"),
            ),
            registry: r,
        }
        .touch_every_series()
    }

    /// Creates every series of the labelled families that are not resolved to handles,
    /// so a scrape shows each from the start (dashboards and tests never find a hole).
    fn touch_every_series(self) -> Self {
        for result in TLS_RELOAD_RESULTS {
            self.tls_reloads.with_label_values(&[result]);
        }
        for operation in API_OPERATIONS {
            for class in API_CLASSES {
                self.api_requests.with_label_values(&[operation, class]);
            }
        }
        for result in CONSOLE_LINK_RESULTS {
            self.console_links.with_label_values(&[result]);
        }
        self
    }

    /// Counts a console link presented here (`used` or `refused`).
    pub fn record_console_link(&self, result: &'static str) {
        self.console_links.with_label_values(&[result]).inc();
    }

    pub fn record_client_error(&self, kind: ClientError) {
        self.client_errors[kind as usize].inc();
    }

    pub fn record_allow(&self) {
        self.allowed.inc();
    }

    /// Forwarded in shadow mode: enforcement would have refused it for `reason`. Not a
    /// leaked key: the owner has not turned the list on yet.
    pub fn record_shadow(&self, reason: Reason) {
        debug_assert_eq!(reason, Reason::IpNotActive);
        self.shadowed.inc();
    }

    pub fn record_deny(&self, reason: Reason) {
        self.denied[reason.index()].inc();
        if reason == Reason::IpNotActive {
            self.leaked_key.inc();
        }
    }

    pub fn record_upstream_error(&self, kind: UpstreamError) {
        self.upstream_errors[kind as usize].inc();
    }

    pub fn record_registration(&self, result: Registration) {
        self.registrations[result as usize].inc();
    }

    pub fn record_resync(&self, reason: ResyncReason) {
        self.resyncs[reason as usize].inc();
    }

    pub fn record_config_reload(&self, result: ConfigReload) {
        self.config_reloads[result as usize].inc();
    }

    pub fn record_refresh(&self, result: RefreshResult) {
        self.refresh[result as usize].inc();
    }

    /// The Prometheus text exposition, with the snapshot age read at scrape time.
    pub fn render(&self, cell: &SnapshotCell) -> String {
        self.snapshot_age
            .set(cell.age().map_or(-1.0, |a| a.as_secs_f64()));
        let mut out = Vec::with_capacity(8 * 1024);
        // Encoding into a Vec cannot fail for these metric types.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Shared handle.
pub type SharedMetrics = Arc<Metrics>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_labelled_series_exists_from_the_start() {
        let text = Metrics::new().render(&SnapshotCell::new());
        let mut want = vec![
            "ipgate_tls_reloads_total{result=\"ok\"} 0".to_owned(),
            "ipgate_tls_reloads_total{result=\"error\"} 0".to_owned(),
            "ipgate_config_reloads_total{result=\"ok\"} 0".to_owned(),
            "ipgate_config_reloads_total{result=\"error\"} 0".to_owned(),
            format!(
                "ipgate_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            ),
        ];
        for kind in ClientError::ALL {
            want.push(format!(
                "ipgate_client_errors_total{{kind=\"{}\"}} 0",
                kind.label()
            ));
        }
        for operation in API_OPERATIONS {
            for class in API_CLASSES {
                want.push(format!(
                    "ipgate_api_requests_total{{operation=\"{operation}\",status=\"{class}\"}} 0"
                ));
            }
        }
        for reason in Reason::ALL {
            want.push(format!(
                "ipgate_requests_total{{decision=\"deny\",reason=\"{}\"}} 0",
                reason.label()
            ));
        }
        for sample in want {
            assert!(text.contains(&sample), "{sample} missing from\n{text}");
        }
    }

    #[test]
    fn renders_the_contract_names() {
        let m = Metrics::new();
        m.record_allow();
        m.record_deny(Reason::IpNotActive);
        m.record_shadow(Reason::IpNotActive);
        let text = m.render(&SnapshotCell::new());
        for name in [
            "ipgate_requests_total{decision=\"allow\",reason=\"ok\"} 1",
            "ipgate_requests_total{decision=\"deny\",reason=\"ip_not_active\"} 1",
            "ipgate_requests_total{decision=\"shadow\",reason=\"ip_not_active\"} 1",
            "ipgate_key_from_unlisted_ip_total 1",
            "ipgate_snapshot_age_seconds -1",
            "ipgate_snapshot_active_ips 0",
            "ipgate_refresh_total{result=\"error\"} 0",
            #[cfg(target_os = "linux")]
            "ipgate_process_resident_memory_bytes ",
            #[cfg(target_os = "linux")]
            "ipgate_process_open_fds ",
            #[cfg(target_os = "linux")]
            "ipgate_process_cpu_seconds_total ",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }
}

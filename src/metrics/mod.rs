//! Every metric ipgate exports, in one owned registry.
//!
//! No globals: a [`Metrics`] is built per gateway and passed in, so tests run side by
//! side. Labels come from small enums only (decision, reason, result, kind): never a
//! key, an address or a path. Hot-path counters are resolved to handles up front so a
//! request pays one atomic add, not a label lookup.
//!
//! This file ties the registry together (the struct, its construction, the scrape);
//! each family's name, help text and labels live in the file named for what it
//! measures: `requests.rs`, `connections.rs`, `upstream.rs`, `store.rs` (the snapshot
//! and its refresh), `api.rs` (the management API and the console), `usage.rs` and
//! `reload.rs`. The process's own families (`ipgate_build_info`, `ipgate_process_*`)
//! are here.

mod api;
mod connections;
mod reload;
mod requests;
mod store;
mod upstream;
mod usage;

pub use api::{Registration, API_CLASSES, API_OPERATIONS, CONSOLE_LINK_RESULTS};
pub use reload::{ConfigReload, TLS_RELOAD_RESULTS};
pub use requests::ClientError;
pub use store::RefreshResult;
pub use upstream::UpstreamError;

use crate::acl::SnapshotCell;
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

pub struct Metrics {
    registry: Registry,
    // requests.rs
    allowed: IntCounter,
    denied: Vec<IntCounter>,
    shadowed: IntCounter,
    pub leaked_key: IntCounter,
    pub request_duration: Histogram,
    client_errors: Vec<IntCounter>,
    pub refusals_limited: IntCounter,
    // upstream.rs
    pub upstream_duration: Histogram,
    upstream_errors: Vec<IntCounter>,
    // connections.rs
    pub open_connections: IntGauge,
    pub tls_handshake_failures: IntCounter,
    pub proxy_header_failures: IntCounter,
    pub idle_closed: IntCounter,
    pub connections_refused: IntCounter,
    pub connections_evicted: IntCounter,
    pub connections_over_share: IntCounter,
    pub max_connections: IntGauge,
    /// Bytes spliced through upgraded connections (WebSockets): `up` from the client,
    /// `down` from the upstream.
    pub tunnel_bytes_up: IntCounter,
    pub tunnel_bytes_down: IntCounter,
    pub open_tunnels: IntGauge,
    // reload.rs
    pub tls_reloads: IntCounterVec,
    config_reloads: Vec<IntCounter>,
    // store.rs
    pub snapshot_version: IntGauge,
    pub snapshot_credentials: IntGauge,
    pub snapshot_active_ips: IntGauge,
    snapshot_age: Gauge,
    refresh: Vec<IntCounter>,
    pub refresh_duration: Histogram,
    pub store_up: IntGauge,
    pub changes_applied: IntCounter,
    resyncs: Vec<IntCounter>,
    pub change_propagation: Histogram,
    pub damaged_credentials: IntGauge,
    // api.rs
    pub api_requests: IntCounterVec,
    registrations: Vec<IntCounter>,
    console_links: IntCounterVec,
    // usage.rs
    pub usage_flushes: IntCounterVec,
    pub usage_rows: IntCounter,
    pub usage_dropped: IntCounter,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    // Names are constants and unique; a clash is a programming error caught by the
    // unit test, never a runtime condition.
    r.register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    register(r, IntCounter::new(name, help).expect("valid metric"))
}

fn int_gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    register(r, IntGauge::new(name, help).expect("valid metric"))
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        r,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

/// One handle per value of a family's only label, in the order given: the enums' `ALL`
/// order, so `handles[kind as usize]` is that kind's series.
fn handles<'a>(v: &IntCounterVec, labels: impl IntoIterator<Item = &'a str>) -> Vec<IntCounter> {
    labels
        .into_iter()
        .map(|label| v.with_label_values(&[label]))
        .collect()
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    register(
        r,
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
            .expect("valid metric"),
    )
}

fn latency_histogram(r: &Registry, name: &str, help: &str) -> Histogram {
    histogram(r, name, help, LATENCY_BUCKETS)
}

fn register_build_info(r: &Registry) {
    register(
        r,
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
        register_build_info(&r);
        register_process(&r);
        let (allowed, denied, shadowed) = requests::decisions(&r);
        let (tunnel_bytes_up, tunnel_bytes_down) = connections::tunnel_bytes(&r);
        Self {
            allowed,
            denied,
            shadowed,
            leaked_key: requests::leaked_key(&r),
            request_duration: requests::request_duration(&r),
            client_errors: requests::client_errors(&r),
            refusals_limited: requests::refusals_limited(&r),
            upstream_duration: upstream::upstream_duration(&r),
            upstream_errors: upstream::upstream_errors(&r),
            open_connections: connections::open_connections(&r),
            tls_handshake_failures: connections::tls_handshake_failures(&r),
            proxy_header_failures: connections::proxy_header_failures(&r),
            idle_closed: connections::idle_closed(&r),
            connections_refused: connections::connections_refused(&r),
            connections_evicted: connections::connections_evicted(&r),
            connections_over_share: connections::connections_over_share(&r),
            max_connections: connections::max_connections(&r),
            tunnel_bytes_up,
            tunnel_bytes_down,
            open_tunnels: connections::open_tunnels(&r),
            tls_reloads: reload::tls_reloads(&r),
            config_reloads: reload::config_reloads(&r),
            snapshot_version: store::snapshot_version(&r),
            snapshot_credentials: store::snapshot_credentials(&r),
            snapshot_active_ips: store::snapshot_active_ips(&r),
            snapshot_age: store::snapshot_age(&r),
            refresh: store::refresh(&r),
            refresh_duration: store::refresh_duration(&r),
            store_up: store::store_up(&r),
            changes_applied: store::changes_applied(&r),
            resyncs: store::resyncs(&r),
            change_propagation: store::change_propagation(&r),
            damaged_credentials: store::damaged_credentials(&r),
            api_requests: api::api_requests(&r),
            registrations: api::registrations(&r),
            console_links: api::console_links(&r),
            usage_flushes: usage::usage_flushes(&r),
            usage_rows: usage::usage_rows(&r),
            usage_dropped: usage::usage_dropped(&r),
            registry: r,
        }
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
    use crate::acl::Reason;

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

//! `/metrics` is valid Prometheus text, every family documented, names prefixed, labels
//! bounded (never a key, an address or a path).

mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet};

/// Label names a metric may carry; anything else could be unbounded. (`version` has one
/// value per binary.)
const ALLOWED_LABELS: [&str; 9] = [
    "version",
    "direction",
    "decision",
    "reason",
    "kind",
    "result",
    "operation",
    "status",
    "le",
];

#[tokio::test]
async fn metrics_are_well_formed_and_bounded() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&Settings::new(&upstream.url()));
    gw.wait_ready().await;
    let (user, _, key) = gw.registered_key(&["127.0.0.2"]).await;
    gw.get(ip("127.0.0.3"), "/", Some(&key)).await;
    gw.get(ip("127.0.0.2"), "/", None).await;
    gw.get(
        ip("127.0.0.2"),
        &format!("/v1/user/{user}/credential-password-ip"),
        Some(&key),
    )
    .await;

    let (status, text) = gw.admin_get("/metrics").await;
    assert_eq!(status, 200);
    let mut help = BTreeSet::new();
    let mut types = BTreeMap::new();
    let mut samples = 0;
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, doc) = rest.split_once(' ').expect("HELP has text");
            assert!(doc.len() > 10, "{name}: help text too thin");
            help.insert(name.to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            if kind == "counter" {
                assert!(name.ends_with("_total"), "counter {name} lacks _total");
            }
            if kind == "histogram" {
                assert!(name.ends_with("_seconds"), "histogram {name} lacks a unit");
            }
            types.insert(name.to_owned(), kind.to_owned());
        } else {
            samples += 1;
            let (series, value) = line.rsplit_once(' ').expect("sample has a value");
            value
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("bad value in {line}"));
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (n, l.strip_suffix('}').expect("closing brace")),
                None => (series, ""),
            };
            assert!(name.starts_with("ipgate_"), "{name}");
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
                })
                .unwrap_or(name);
            assert!(types.contains_key(family), "{name} sampled before its TYPE");
            for pair in labels.split(',').filter(|p| !p.is_empty()) {
                let (label, value) = pair.split_once('=').unwrap();
                assert!(ALLOWED_LABELS.contains(&label), "{name} has label {label}");
                assert!(!value.contains(&key[4..20]), "a key in a label");
                assert!(!value.contains("127.0.0."), "an address in a label: {line}");
                assert!(!value.contains('/'), "a path in a label: {line}");
            }
        }
    }
    assert!(samples > 50, "only {samples} samples");
    assert_eq!(
        help,
        types.keys().cloned().collect::<BTreeSet<_>>(),
        "HELP and TYPE differ"
    );
    for name in [
        "ipgate_requests_total",
        "ipgate_request_duration_seconds",
        "ipgate_upstream_duration_seconds",
        "ipgate_upstream_errors_total",
        "ipgate_open_connections",
        "ipgate_tls_handshake_failures_total",
        "ipgate_snapshot_version",
        "ipgate_snapshot_age_seconds",
        "ipgate_snapshot_credentials",
        "ipgate_snapshot_active_ips",
        "ipgate_refresh_total",
        "ipgate_refresh_duration_seconds",
        "ipgate_key_from_unlisted_ip_total",
        "ipgate_api_requests_total",
        "ipgate_tls_reloads_total",
        "ipgate_config_reloads_total",
        "ipgate_build_info",
    ] {
        assert!(types.contains_key(name), "{name} missing");
    }
    let build = format!(
        "ipgate_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(gw.metric(&build).await, 1.0);
    for result in ["ok", "error"] {
        for family in ["ipgate_tls_reloads_total", "ipgate_config_reloads_total"] {
            let sample = format!("{family}{{result=\"{result}\"}}");
            assert_eq!(
                gw.metric(&sample).await,
                0.0,
                "{sample} exists from the start"
            );
        }
    }
    assert_eq!(gw.metric("ipgate_snapshot_active_ips").await, 1.0);
    assert_eq!(gw.metric("ipgate_snapshot_credentials").await, 1.0);
    assert_eq!(gw.metric("ipgate_key_from_unlisted_ip_total").await, 1.0);
    assert!(gw.metric("ipgate_request_duration_seconds_count").await >= 3.0);
}

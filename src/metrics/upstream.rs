//! The upstream's side of an allowed request: how long it took to answer, and why it
//! did not.

use super::{counter_vec, handles, latency_histogram, Metrics};
use prometheus::{Histogram, IntCounter, Registry};

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

pub(super) fn upstream_duration(r: &Registry) -> Histogram {
    latency_histogram(
        r,
        "ipgate_upstream_duration_seconds",
        "Time the upstream took to answer with response headers.",
    )
}

pub(super) fn upstream_errors(r: &Registry) -> Vec<IntCounter> {
    let v = counter_vec(
        r,
        "ipgate_upstream_errors_total",
        "Allowed requests the upstream did not answer, by kind (connect, timeout, protocol).",
        &["kind"],
    );
    handles(&v, UpstreamError::ALL.map(UpstreamError::label))
}

impl Metrics {
    pub fn record_upstream_error(&self, kind: UpstreamError) {
        self.upstream_errors[kind as usize].inc();
    }
}

//! The snapshot being enforced and how it is kept fresh: its version and size, the
//! polls of the store, the changes applied and how long they took to arrive.

use super::{
    counter, counter_vec, handles, histogram, int_gauge, latency_histogram, register, Metrics,
};
use crate::store::ResyncReason;
use prometheus::{Gauge, Histogram, IntCounter, IntGauge, Registry};

/// Buckets for the time from a change's commit to its enforcement: 1 ms to 30 s.
const PROPAGATION_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 5.0, 10.0, 30.0,
];

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

pub(super) fn snapshot_version(r: &Registry) -> IntGauge {
    int_gauge(
        r,
        "ipgate_snapshot_version",
        "Store change version of the snapshot being enforced.",
    )
}

pub(super) fn snapshot_credentials(r: &Registry) -> IntGauge {
    int_gauge(
        r,
        "ipgate_snapshot_credentials",
        "Credentials in the snapshot being enforced, in any state.",
    )
}

pub(super) fn snapshot_active_ips(r: &Registry) -> IntGauge {
    int_gauge(
        r,
        "ipgate_snapshot_active_ips",
        "ACTIVE permitted IP entries in the snapshot being enforced (billed).",
    )
}

/// Set at scrape time, by [`Metrics::render`].
pub(super) fn snapshot_age(r: &Registry) -> Gauge {
    register(
        r,
        Gauge::new(
            "ipgate_snapshot_age_seconds",
            "Seconds since the store last confirmed the snapshot; -1 before the first load.",
        )
        .expect("valid metric"),
    )
}

pub(super) fn refresh(r: &Registry) -> Vec<IntCounter> {
    let v = counter_vec(
        r,
        "ipgate_refresh_total",
        "Polls of the store by result (unchanged; updated: changes applied; loaded: \
         everything loaded anew; error).",
        &["result"],
    );
    handles(&v, RefreshResult::ALL.map(RefreshResult::label))
}

pub(super) fn refresh_duration(r: &Registry) -> Histogram {
    latency_histogram(
        r,
        "ipgate_refresh_duration_seconds",
        "Time one poll of the store took, including a rebuild when the version changed.",
    )
}

pub(super) fn store_up(r: &Registry) -> IntGauge {
    int_gauge(
        r,
        "ipgate_store_up",
        "1 when the last poll of the store succeeded, 0 when it failed.",
    )
}

pub(super) fn changes_applied(r: &Registry) -> IntCounter {
    counter(
        r,
        "ipgate_changes_applied_total",
        "Store versions applied to the snapshot as deltas.",
    )
}

pub(super) fn resyncs(r: &Registry) -> Vec<IntCounter> {
    let v = counter_vec(
        r,
        "ipgate_resyncs_total",
        "Full loads after the snapshot's position in the store's history could not \
         be continued, by reason (too_old, history_rewritten, went_backwards, \
         other_store, delta_too_large, delta_timed_out).",
        &["reason"],
    );
    handles(&v, ResyncReason::ALL.map(ResyncReason::label))
}

pub(super) fn change_propagation(r: &Registry) -> Histogram {
    histogram(
        r,
        "ipgate_change_propagation_seconds",
        "Time from a change's commit in the store to its enforcement by this \
         gateway (clocks of the writer and this host).",
        PROPAGATION_BUCKETS,
    )
}

pub(super) fn damaged_credentials(r: &Registry) -> IntGauge {
    int_gauge(
        r,
        "ipgate_store_damaged_credentials",
        "Credentials refused because their stored record could not be read.",
    )
}

impl Metrics {
    pub fn record_refresh(&self, result: RefreshResult) {
        self.refresh[result as usize].inc();
    }

    pub fn record_resync(&self, reason: ResyncReason) {
        self.resyncs[reason as usize].inc();
    }
}

//! Usage counted off the hot path's back (`src/insight/`): its flushes to the store,
//! the rows written and the sightings dropped.

use super::{counter, counter_vec};
use prometheus::{IntCounter, IntCounterVec, Registry};

/// Every result's series exists from the start.
pub(super) fn usage_flushes(r: &Registry) -> IntCounterVec {
    let v = counter_vec(
        r,
        "ipgate_usage_flushes_total",
        "Writes of per-address usage and refused addresses to the store, \
         by result (ok, error: kept for the next one).",
        &["result"],
    );
    for result in ["ok", "error"] {
        v.with_label_values(&[result]);
    }
    v
}

pub(super) fn usage_rows(r: &Registry) -> IntCounter {
    counter(
        r,
        "ipgate_usage_rows_total",
        "Per-address usage and refused-address rows written to the store.",
    )
}

pub(super) fn usage_dropped(r: &Registry) -> IntCounter {
    counter(
        r,
        "ipgate_usage_dropped_total",
        "Sightings not kept: a worker's table was full between two flushes, or the \
         store stayed down too long.",
    )
}

//! The management API and the console: requests by operation, device registrations,
//! console links presented.

use super::{counter_vec, handles, Metrics};
use prometheus::{IntCounter, IntCounterVec, Registry};

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

/// Status classes of `ipgate_api_requests_total`.
pub const API_CLASSES: [&str; 3] = ["2xx", "4xx", "5xx"];

/// Results of `ipgate_console_links_total`.
pub const CONSOLE_LINK_RESULTS: [&str; 2] = ["used", "refused"];

/// Every operation and status class's series exists from the start.
pub(super) fn api_requests(r: &Registry) -> IntCounterVec {
    let v = counter_vec(
        r,
        "ipgate_api_requests_total",
        "Management API requests by operation and status class.",
        &["operation", "status"],
    );
    for operation in API_OPERATIONS {
        for class in API_CLASSES {
            v.with_label_values(&[operation, class]);
        }
    }
    v
}

pub(super) fn registrations(r: &Registry) -> Vec<IntCounter> {
    let v = counter_vec(
        r,
        "ipgate_device_registrations_total",
        "POST /v1/device-server by result (registered; refused by the store; \
         unknown_key: refused from the snapshot, without a store write).",
        &["result"],
    );
    handles(&v, Registration::ALL.map(Registration::label))
}

/// Every result's series exists from the start.
pub(super) fn console_links(r: &Registry) -> IntCounterVec {
    let v = counter_vec(
        r,
        "ipgate_console_links_total",
        "Console links presented here: used (a session opened) or refused (unknown, spent or expired). Minting is in the audit log (console_link.mint).",
        &["result"],
    );
    for result in CONSOLE_LINK_RESULTS {
        v.with_label_values(&[result]);
    }
    v
}

impl Metrics {
    pub fn record_registration(&self, result: Registration) {
        self.registrations[result as usize].inc();
    }

    /// Counts a console link presented here (`used` or `refused`).
    pub fn record_console_link(&self, result: &'static str) {
        self.console_links.with_label_values(&[result]).inc();
    }
}

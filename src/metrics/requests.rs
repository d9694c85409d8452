//! Requests on the public listener: the decision on each, its time, and the requests
//! the client got wrong. The request path's handles: nothing here knows the store.

use super::{counter, counter_vec, handles, latency_histogram, Metrics};
use crate::acl::Reason;
use prometheus::{Histogram, IntCounter, Registry};

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
    pub(super) const ALL: [ClientError; 6] = [
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

/// `ipgate_requests_total`'s handles: allowed; denied, one per [`Reason`] in
/// `Reason::ALL` order; shadowed.
pub(super) fn decisions(r: &Registry) -> (IntCounter, Vec<IntCounter>, IntCounter) {
    let requests = counter_vec(
        r,
        "ipgate_requests_total",
        "Requests on the public listener by decision (allow, deny, shadow: forwarded only because the credential is in shadow mode) and reason.",
        &["decision", "reason"],
    );
    let allowed = requests.with_label_values(&["allow", "ok"]);
    let denied = Reason::ALL
        .iter()
        .map(|r| requests.with_label_values(&["deny", r.label()]))
        .collect();
    // The address check is the only one shadow mode lets through.
    let shadowed = requests.with_label_values(&["shadow", Reason::IpNotActive.label()]);
    (allowed, denied, shadowed)
}

pub(super) fn leaked_key(r: &Registry) -> IntCounter {
    counter(
        r,
        "ipgate_key_from_unlisted_ip_total",
        "Requests with a valid, ACTIVE key from an address that is not ACTIVE on it: \
         the signal of a leaked key.",
    )
}

pub(super) fn request_duration(r: &Registry) -> Histogram {
    latency_histogram(
        r,
        "ipgate_request_duration_seconds",
        "Time from request received to response headers sent, on the public listener.",
    )
}

pub(super) fn client_errors(r: &Registry) -> Vec<IntCounter> {
    let v = counter_vec(
        r,
        "ipgate_client_errors_total",
        "Requests and connections the client got wrong, by kind (body: a \
         malformed or cut-short request body; request: a tunnel or a bad Host, \
         answered 400; header_timeout: no complete request head in time; \
         head_too_large: a request head or one of its lines over ipgate's bound, \
         answered 431; body_timeout and response_timeout: a request body not \
         sent, or an answer not read, within its deadline and minimum rate).",
        &["kind"],
    );
    handles(&v, ClientError::ALL.map(ClientError::label))
}

pub(super) fn refusals_limited(r: &Registry) -> IntCounter {
    counter(
        r,
        "ipgate_refusals_limited_total",
        "Requests answered 429 because their client address was refused more than \
         limits.refusals_per_second times this second.",
    )
}

impl Metrics {
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

    pub fn record_client_error(&self, kind: ClientError) {
        self.client_errors[kind as usize].inc();
    }
}

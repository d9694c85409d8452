//! Reloads on SIGHUP: the configuration, and the TLS certificate.

use super::{counter_vec, handles, Metrics};
use prometheus::{IntCounter, IntCounterVec, Registry};

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

/// Every result's series exists from the start.
pub(super) fn tls_reloads(r: &Registry) -> IntCounterVec {
    let v = counter_vec(
        r,
        "ipgate_tls_reloads_total",
        "Certificate reloads on SIGHUP by result (ok, error; on error the old \
         certificate keeps serving).",
        &["result"],
    );
    for result in TLS_RELOAD_RESULTS {
        v.with_label_values(&[result]);
    }
    v
}

pub(super) fn config_reloads(r: &Registry) -> Vec<IntCounter> {
    let v = counter_vec(
        r,
        "ipgate_config_reloads_total",
        "Configuration reloads on SIGHUP by result (ok: applied; error: the file \
         or something it names is bad, and the running configuration is kept).",
        &["result"],
    );
    handles(&v, ConfigReload::ALL.map(ConfigReload::label))
}

impl Metrics {
    pub fn record_config_reload(&self, result: ConfigReload) {
        self.config_reloads[result as usize].inc();
    }
}

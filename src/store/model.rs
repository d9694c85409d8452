//! The stored objects, as the store returns them and the API shows them.

use serde::Serialize;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

/// A moment in Unix microseconds, shown as UTC `YYYY-MM-DD hh:mm:ss.ffffff`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn now() -> Self {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Self(d.as_micros() as i64)
    }

    pub fn unix_seconds(self) -> i64 {
        self.0.div_euclid(1_000_000)
    }

    pub fn plus(self, d: std::time::Duration) -> Self {
        Self(self.0.saturating_add(d.as_micros() as i64))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let format = time::macros::format_description!(
            "[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:6]"
        );
        let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1000)
            .map_err(|_| fmt::Error)?;
        let s = t.format(&format).map_err(|_| fmt::Error)?;
        f.write_str(&s)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Who made a change, for the audit log.
#[derive(Clone, Debug)]
pub struct Actor {
    /// `admin` or `admin:LOGIN` for the operator's CLI, `credential:N` for a key holder.
    pub who: String,
    pub ip: Option<IpAddr>,
}

impl Actor {
    pub fn admin() -> Self {
        Self {
            who: "admin".into(),
            ip: None,
        }
    }

    /// The operator's CLI run by `name` (a login name): `admin:name`.
    pub fn operator(name: &str) -> Self {
        Self {
            who: format!("admin:{name}"),
            ip: None,
        }
    }

    pub fn credential(id: u64, ip: IpAddr) -> Self {
        Self {
            who: format!("credential:{id}"),
            ip: Some(ip),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct User {
    pub id: u64,
    pub name: Option<String>,
    pub created: Timestamp,
}

macro_rules! wire_enum {
    ($name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(
                        "unknown value {other:?}, expected one of: {}",
                        [$($text),+].join(", ")
                    )),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
}

wire_enum!(CredentialStatus {
    PendingFirstUse => "PENDING_FIRST_USE",
    Active => "ACTIVE",
    Revoked => "REVOKED",
    Expired => "EXPIRED",
});

impl CredentialStatus {
    /// The status a credential is shown with, worked out whenever a backend reads one
    /// (and only here): a pending key whose registration window has passed is EXPIRED,
    /// as it is refused on the hot path. The store keeps PENDING_FIRST_USE.
    pub fn as_read(stored: CredentialStatus, expiry: Option<Timestamp>, now: Timestamp) -> Self {
        match (stored, expiry) {
            (CredentialStatus::PendingFirstUse, Some(at)) if now >= at => CredentialStatus::Expired,
            (status, _) => status,
        }
    }

    /// What the store keeps for this status: EXPIRED is derived on read, never written.
    pub fn stored(self) -> Self {
        match self {
            CredentialStatus::Expired => CredentialStatus::PendingFirstUse,
            other => other,
        }
    }
}

wire_enum!(IpStatus {
    Active => "ACTIVE",
    Inactive => "INACTIVE",
});

// How a credential's whitelist is applied: `shadow` forwards a valid key from an
// address that is not ACTIVE (counted and logged) instead of refusing it.
wire_enum!(Mode {
    Enforce => "enforce",
    Shadow => "shadow",
});

/// The device that bound a credential at registration.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Device {
    pub description: String,
    pub ip: IpAddr,
}

#[derive(Clone, Debug, Serialize)]
pub struct Credential {
    pub id: u64,
    pub user_id: u64,
    pub created: Timestamp,
    pub updated: Timestamp,
    pub status: CredentialStatus,
    /// Registration deadline while pending; `None` once registered.
    pub expiry_time: Option<Timestamp>,
    pub description: Option<String>,
    /// Operator-set: every address is admitted.
    pub wildcard: bool,
    pub permitted_device: Option<Device>,
    /// Enforce (the default) or shadow; not part of bunq's object.
    pub mode: Mode,
}

#[derive(Clone, Debug, Serialize)]
pub struct PermittedIp {
    pub id: u64,
    pub credential_id: u64,
    pub ip: IpAddr,
    pub status: IpStatus,
    pub created: Timestamp,
    pub updated: Timestamp,
    /// The last allowed request from this address, over every gateway (flushed once a
    /// minute); `None` when never used.
    pub last_seen: Option<Timestamp>,
    /// Allowed requests from this address, over every gateway.
    pub requests: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct AuditEntry {
    pub id: u64,
    pub at: Timestamp,
    pub actor: String,
    pub actor_ip: Option<String>,
    pub credential_id: Option<u64>,
    pub action: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

/// What one credential is billed for: its ACTIVE entries.
#[derive(Clone, Debug, Serialize)]
pub struct Usage {
    pub credential_id: u64,
    pub user_id: u64,
    pub status: CredentialStatus,
    /// Operator-set "*": every address, whatever the entries say.
    pub wildcard: bool,
    pub active_ips: u64,
}

/// Which slice of a newest-first list to return.
#[derive(Clone, Copy, Debug)]
pub struct Page {
    pub count: u32,
    /// Only items with a smaller id (older).
    pub older_id: Option<u64>,
    /// Only items with a larger id (newer); the ones just above it.
    pub newer_id: Option<u64>,
}

impl Page {
    pub fn first(count: u32) -> Self {
        Self {
            count,
            older_id: None,
            newer_id: None,
        }
    }

    pub fn all() -> Self {
        Self::first(u32::MAX)
    }

    /// Newest-first SQL for this page of `table` rows matching `filter` (which binds
    /// parameter 1), and the cursor to bind as parameter 2. `mark` is the backend's
    /// placeholder prefix: `?` for SQLite, `$` for PostgreSQL.
    pub(super) fn sql(
        &self,
        columns: &str,
        table: &str,
        filter: &str,
        mark: char,
    ) -> (String, Option<u64>) {
        let limit = self.count;
        match (self.older_id, self.newer_id) {
            (_, Some(newer)) => (
                format!(
                    "SELECT * FROM (SELECT {columns} FROM {table} WHERE {filter} AND id > {mark}2 \
                     ORDER BY id ASC LIMIT {limit}) AS page ORDER BY id DESC"
                ),
                Some(newer),
            ),
            (Some(older), None) => (
                format!(
                    "SELECT {columns} FROM {table} WHERE {filter} AND id < {mark}2 \
                     ORDER BY id DESC LIMIT {limit}"
                ),
                Some(older),
            ),
            (None, None) => (
                format!(
                    "SELECT {columns} FROM {table} WHERE {filter} ORDER BY id DESC LIMIT {limit}"
                ),
                None,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_use_the_bunq_format() {
        assert_eq!(
            Timestamp(1_500_000_000_123_456).to_string(),
            "2017-07-14 02:40:00.123456"
        );
    }

    #[test]
    fn a_pending_key_past_its_window_reads_as_expired() {
        use CredentialStatus::*;
        let at = Some(Timestamp(100));
        assert_eq!(
            CredentialStatus::as_read(PendingFirstUse, at, Timestamp(99)),
            PendingFirstUse
        );
        assert_eq!(
            CredentialStatus::as_read(PendingFirstUse, at, Timestamp(100)),
            Expired
        );
        assert_eq!(
            CredentialStatus::as_read(PendingFirstUse, None, Timestamp(100)),
            PendingFirstUse
        );
        assert_eq!(
            CredentialStatus::as_read(Revoked, at, Timestamp(200)),
            Revoked
        );
        assert_eq!(
            CredentialStatus::as_read(Active, at, Timestamp(200)),
            Active
        );
        assert_eq!(Expired.stored(), PendingFirstUse);
        assert_eq!(Revoked.stored(), Revoked);
    }

    #[test]
    fn statuses_round_trip() {
        assert_eq!("INACTIVE".parse::<IpStatus>(), Ok(IpStatus::Inactive));
        assert!("inactive".parse::<IpStatus>().is_err());
        assert_eq!("shadow".parse::<Mode>(), Ok(Mode::Shadow));
        assert_eq!(
            CredentialStatus::PendingFirstUse.as_str(),
            "PENDING_FIRST_USE"
        );
    }
}

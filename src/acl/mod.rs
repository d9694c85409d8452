//! The pure decision core: who may pass, from where.
//!
//! Owns the immutable [`Snapshot`] of every credential and its whitelist, the
//! [`Decision`] a request gets, and the [`SnapshotCell`] the hot path loads it from.
//! Nothing here does I/O, awaits, or takes a lock: the hot path calls [`decide`] once
//! per request and the control plane builds the next snapshot with [`SnapshotBuilder`].

mod cell;
mod decision;
mod ip;
mod key;
mod snapshot;

pub use cell::SnapshotCell;
pub use decision::{decide, Decision, Identity, Reason};
pub use ip::{normalize, IpSet};
pub use key::{ApiKey, KeyHash, KEY_PREFIX};
pub use snapshot::{
    CredentialState, DigestHasher, Snapshot, SnapshotBuilder, SnapshotCredential, NEVER, SHARDS,
};

//! The management API end to end (SPEC sections 1 and 3): the real binary, a real
//! upstream, key holders calling from real source addresses (127.0.0.x, ::1).
//!
//! Every call made with a key goes through [`helpers::Holder`], which checks that the
//! key never comes back in a response body; every refusal is checked for the exact bunq
//! error shape. "Nothing stored" is checked by comparing the store's own list
//! (`ipgate admin ip list`) before and after.

#[path = "../common/mod.rs"]
mod common;

mod access;
mod bunq_clients;
mod helpers;
mod insight;
mod reading;
mod registration;
mod rules;
mod signatures;
mod writes;

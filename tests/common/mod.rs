//! Test harness: the real `ipgate` binary on port 0, a real upstream on port 0, and
//! HTTP clients that connect from chosen source addresses (127.0.0.x, ::1).
//!
//! - [`gateway`]: a running `ipgate serve` with its config (`Settings`) and its logs.
//! - [`upstream`]: an echoing upstream, and a port where nothing listens.
//! - [`client`]: requests from chosen addresses, answers with their bodies read, the
//!   management API's paths.
//! - [`ca`]: throwaway certificates; [`pg`]: throwaway PostgreSQL servers.

#![allow(dead_code)] // each test file uses its own part of the harness

pub mod ca;
pub mod client;
pub mod gateway;
pub mod pg;
pub mod upstream;

// Each test file uses its own part of the harness.
#[allow(unused_imports)]
pub use client::*;
#[allow(unused_imports)]
pub use gateway::*;
#[allow(unused_imports)]
pub use upstream::*;

use std::net::IpAddr;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_ipgate");
pub const KEY_HEADER: &str = "x-bunq-client-authentication";
/// How long a test waits for something that should happen within a few polls.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

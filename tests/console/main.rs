//! The key holder's console: in a real browser (headless Chromium driven through
//! chromedriver with `fantoccini`) and over plain HTTP, against a real `ipgate serve`
//! and a real upstream, as a person would use it: with the keyboard, reading what the
//! page says.
//!
//! Without Chromium and chromedriver installed each browser test prints one "skipped"
//! line and returns; with `IPGATE_REQUIRE_BROWSER=1` (CI) the skip is a failure. The
//! test starts chromedriver on a free port and stops it by its PID.
//!
//! Screenshots at phone width (375 px) and desktop width are written to
//! `$CARGO_TARGET_TMPDIR/console-*.png`; with `IPGATE_CONSOLE_SCREENSHOTS=DIR` also to
//! DIR (how `docs/console.png` is made).
//!
//! - [`browser`]: the page with a key, framing, a link opened in the browser;
//! - [`links`]: console links and their sessions, request by request.

#[path = "../common/mod.rs"]
mod common;

mod browser;
mod helpers;
mod links;

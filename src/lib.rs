//! ipgate: an authentication gateway. A request passes only with a valid API key from
//! an address that is ACTIVE on that key's whitelist, so a stolen key is useless from
//! anywhere else.
//!
//! Layout, dependencies pointing one way (hot path and control plane both depend on
//! the pure core, never on each other):
//!
//! - [`acl`]: the pure core: snapshot, decision, the cell it is published in.
//! - [`gate`]: the credential check both doors use (key header -> decision); [`head`]:
//!   the few lines of a request head read by name, in one pass.
//! - [`front`]: the one front door: routes each request to the API or the forwarder
//!   and writes its access line; holds what a SIGHUP may change.
//! - [`proxy`]: hot-path plumbing: listener, TLS, PROXY protocol, client address,
//!   forwarding.
//! - [`api`]: the management API (bunq's credential-password-ip and device-server).
//! - [`bunq`]: the wire shapes both answer with ([`grpc`]: a refusal as gRPC clients
//!   read one); [`request_id`]: `X-Request-Id`.
//! - [`store`]: the source of truth; [`refresh`]: the poller that turns it into
//!   snapshots.
//! - [`config`] (and [`reload`]: SIGHUP), [`metrics`], [`logging`] and [`access_log`],
//!   [`admin_listener`], [`operator`] (the `ipgate admin` commands) and [`app`] (the
//!   wiring; [`control`]: the control plane's own runtime and thread).

pub mod access_log;
pub mod acl;
pub mod admin_listener;
pub mod api;
pub mod app;
pub mod bunq;
pub mod config;
pub mod console;
pub mod control;
pub mod front;
pub mod gate;
pub mod grpc;
pub mod head;
pub mod insight;
pub mod logging;
pub mod metrics;
pub mod operator;
pub mod proxy;
pub mod refresh;
pub mod reload;
pub mod request_id;
pub mod store;

//! Wiring: build the shared state, bind the listeners, start the poller and the
//! SIGHUP reloader, and drain on SIGTERM/SIGINT.
//!
//! Shutdown order: `/readyz` turns 503, the public listener stops accepting and waits
//! up to `server.shutdown_grace` for requests in flight, then the usage counts are
//! flushed to the store one last time and the poller and the admin listener stop.

use crate::access_log::AccessLog;
use crate::acl::SnapshotCell;
use crate::admin_listener::{self, AdminState};
use crate::api::Api;
use crate::config::Config;
use crate::front::{Front, Live};
use crate::insight::{self, Recorder};
use crate::logging::LogLevel;
use crate::metrics::Metrics;
use crate::proxy::tls::{TlsCertificates, TlsError};
use crate::proxy::{self, ListenerOptions, UpstreamSetupError};
use crate::refresh::{Pace, Refresher};
use crate::reload::Reloader;
use crate::store;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot listen on {addr} ({what})")]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Upstream(#[from] UpstreamSetupError),
    #[error("cannot set up the store")]
    Store(#[from] crate::store::StoreError),
}

async fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, AppError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Bind { addr, what, source })?;
    let local = listener.local_addr().unwrap_or(addr);
    tracing::info!(listener = what, addr = %local, "listening");
    Ok(listener)
}

/// Where the gateway's logs go, as `logging::init` set them up.
pub struct Logs {
    pub access: AccessLog,
    pub level: LogLevel,
}

/// Runs the gateway until `stop` fires (the binary ties it to SIGTERM/SIGINT).
/// `config` was read from `path`, which SIGHUP reads again.
/// The control plane's tasks (poller, flusher, SIGHUP, admin listener, watchdogs) are
/// spawned on `control`, the serving ones on the current runtime.
pub async fn serve(
    config: Config,
    path: PathBuf,
    logs: Logs,
    stop: CancellationToken,
    control: tokio::runtime::Handle,
) -> Result<(), AppError> {
    let metrics = Arc::new(Metrics::new());
    let cell = Arc::new(SnapshotCell::new());
    let store = store::open(&config.store)?;
    let refresher = Arc::new(Refresher::new(
        Arc::clone(&store),
        Arc::clone(&cell),
        Arc::clone(&metrics),
    ));

    let certificates = config
        .server
        .tls
        .as_ref()
        .map(TlsCertificates::load)
        .transpose()?;
    let acceptor = certificates.as_ref().map(|c| c.acceptor()).transpose()?;
    let live = Live::build(&config, &cell, None)?;

    let public = bind(config.server.listen, "public").await?;
    let admin = bind(config.server.admin_listen, "admin").await?;
    summary(&config, &public, &admin);

    let recorder = Arc::new(Recorder::new(config.insight.record_usage));
    let api = Api {
        store: Arc::clone(&store),
        response_ids: crate::request_id::RequestIds::new(),
        refresher: Arc::clone(&refresher),
        metrics: Arc::clone(&metrics),
        recorder: Arc::clone(&recorder),
        store_slots: tokio::sync::Semaphore::new(crate::api::store_slots(&config.store)),
        signing_key: config.auth.response_signing_key.clone(),
    };
    let sessions = crate::console::Sessions::new(Arc::clone(&store), Arc::clone(&metrics));
    let console = crate::console::Console::new(&config.console, Arc::new(sessions));
    let front = Arc::new(Front::new(
        live,
        api,
        console,
        Arc::clone(&metrics),
        logs.access,
        acceptor.is_some(),
    ));
    let admin_state = Arc::new(AdminState {
        cell,
        metrics,
        draining: AtomicBool::new(false),
    });

    let background = CancellationToken::new();
    // The store's listener task (NOTIFY) is spawned where this runs: the control plane.
    let hints = {
        let _control = control.enter();
        store.change_hints(config.refresh.notify, background.child_token())
    };
    let pace = Pace {
        interval: config.refresh.interval,
        hint_spacing: config.refresh.hint_spacing,
    };
    let poller = control.spawn(Arc::clone(&refresher).run(pace, hints, background.child_token()));
    // Its own token: cancelled only once the last request is answered, so the final
    // flush has every count.
    let flushing = CancellationToken::new();
    let flusher = control.spawn(insight::flush::run(
        recorder,
        Arc::clone(&store),
        Arc::clone(&admin_state.metrics),
        config.insight.flush_interval,
        flushing.clone(),
    ));
    let reloader = Reloader {
        path,
        running: config.clone(),
        front: Arc::clone(&front),
        cell: Arc::clone(&admin_state.cell),
        certificates,
        log_level: logs.level,
        metrics: Arc::clone(&admin_state.metrics),
    };
    control.spawn(reloader.run(background.child_token()));
    let admin_task = control.spawn(admin_listener::serve(
        admin,
        Arc::clone(&admin_state),
        background.child_token(),
    ));

    let accepting = CancellationToken::new();
    let on_stop = {
        let accepting = accepting.clone();
        let admin_state = Arc::clone(&admin_state);
        async move {
            stop.cancelled().await;
            tracing::info!("shutdown requested");
            admin_state.draining.store(true, Ordering::Release);
            accepting.cancel();
        }
    };
    let stopper = tokio::spawn(on_stop);
    let options = ListenerOptions {
        header_read_timeout: config.server.header_read_timeout,
        grace: config.server.shutdown_grace,
        tls: acceptor,
        proxy_protocol: config.server.proxy_protocol,
        proxy_protocol_local: config.server.proxy_protocol_local,
        max_connections: config.server.max_connections,
        client_share_percent: config.server.client_share_percent,
        deadlines: proxy::Deadlines {
            body_timeout: config.server.body_timeout,
            body_min_rate: config.server.body_min_rate,
            response_timeout: config.server.response_timeout,
            response_min_rate: config.server.response_min_rate,
        },
        watchdogs: control.clone(),
    };
    proxy::serve(
        public,
        front,
        Arc::clone(&admin_state.metrics),
        options,
        accepting,
    )
    .await;

    flushing.cancel();
    background.cancel();
    let tasks = [
        ("usage flusher", flusher),
        ("poller", poller),
        ("admin listener", admin_task),
    ];
    for (what, task) in tasks {
        if let Err(error) = task.await {
            tracing::error!(%error, task = what, "task ended abnormally");
        }
    }
    stopper.abort();
    tracing::info!("stopped");
    Ok(())
}

/// One line that says what this gateway is and does: version, where it listens, where
/// it forwards to, which store (never a password), TLS, workers.
fn summary(config: &Config, public: &TcpListener, admin: &TcpListener) {
    let addr = |l: &TcpListener, configured| l.local_addr().unwrap_or(configured);
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        listen = %addr(public, config.server.listen),
        admin_listen = %addr(admin, config.server.admin_listen),
        upstream = %config.upstream.url,
        store = %config.store.describe(),
        tls = config.server.tls.is_some(),
        proxy_protocol = config.server.proxy_protocol,
        signs_api_answers = config.auth.response_signing_key.is_some(),
        workers = tokio::runtime::Handle::current().metrics().num_workers(),
        "ipgate started"
    );
}

/// Fires on SIGTERM or SIGINT.
pub fn stop_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let fire = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers; stop with SIGKILL");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "signal received"),
            _ = int.recv() => tracing::info!(signal = "SIGINT", "signal received"),
        }
        fire.cancel();
    });
    token
}

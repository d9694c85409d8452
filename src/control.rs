//! The control plane's runtime, on a thread of its own: the poller, the usage flusher,
//! SIGHUP, the admin listener and every client connection's watchdog run there, never
//! on the threads that serve requests.
//!
//! Beside keeping the two apart, this empties the serving runtime's timer wheel: it
//! holds no timer between requests (the watchdogs' ticks, the poller's and the
//! flusher's intervals are all here), so each time a serving thread parks it costs what
//! a bare hyper server's park does, ~300 instructions a request less (BENCHMARKS.md,
//! "Where round three stands").

use std::thread::JoinHandle;
use std::time::Duration;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// How long the control plane's blocking calls (a store call, a freed snapshot) may
/// hold the exit once the gateway has stopped.
const SHUTDOWN: Duration = Duration::from_secs(2);

/// The control plane's runtime and its thread; stopped (and joined) when dropped.
pub struct ControlPlane {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ControlPlane {
    pub fn start() -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("ipgate-control".into())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
                runtime.shutdown_timeout(SHUTDOWN);
            })?;
        Ok(Self {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where the control plane's tasks are spawned.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

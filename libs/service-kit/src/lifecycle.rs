//! Graceful shutdown.
//!
//! On SIGTERM or SIGINT (or when a test cancels the token it passed in):
//! 1. health goes NOT_SERVING (gRPC health and `/readyz`), so Kubernetes and the
//!    mesh stop routing new requests here;
//! 2. after `DRAIN_DELAY`, [`Lifecycle::draining`] is cancelled: servers stop
//!    accepting, long-lived streams end, in-flight requests finish;
//! 3. [`Lifecycle::finish`] waits for the servers, at most `SHUTDOWN_TIMEOUT`.

use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::RuntimeArgs;
use crate::health::Health;

/// Cancelled by SIGTERM/SIGINT (binaries) — the signal to begin shutting down.
pub fn signal_token() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received");
        t.cancel();
    });
    token
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = int.recv() => {},
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Ties a stop request to health, the drain delay and the servers of a process.
pub struct Lifecycle {
    stop: CancellationToken,
    draining: CancellationToken,
    tasks: JoinSet<anyhow::Result<()>>,
    shutdown_timeout: Duration,
}

impl Lifecycle {
    /// `stop` starts the shutdown sequence when cancelled ([`signal_token`] in
    /// binaries, a token of the test's own in tests).
    pub fn new(stop: CancellationToken, health: Health, runtime: &RuntimeArgs) -> Self {
        let draining = CancellationToken::new();
        let drain_delay = runtime.drain_delay;
        {
            let stop = stop.clone();
            let draining = draining.clone();
            tokio::spawn(async move {
                stop.cancelled().await;
                health.set_not_serving().await;
                if !drain_delay.is_zero() {
                    tracing::info!(
                        ?drain_delay,
                        "draining: NOT_SERVING before closing listeners"
                    );
                    tokio::time::sleep(drain_delay).await;
                }
                draining.cancel();
            });
        }
        Self {
            stop,
            draining,
            tasks: JoinSet::new(),
            shutdown_timeout: runtime.shutdown_timeout,
        }
    }

    /// Cancelled when servers must stop accepting and streams must end.
    pub fn draining(&self) -> CancellationToken {
        self.draining.clone()
    }

    /// Cancelled as soon as shutdown is requested (before the drain delay).
    pub fn stopping(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Runs a server or background task until it returns; an early error stops
    /// the whole process.
    pub fn spawn<F>(&mut self, name: &'static str, fut: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let stop = self.stop.clone();
        self.tasks.spawn(async move {
            let result = fut.await;
            if let Err(err) = &result {
                tracing::error!(task = name, error = %format!("{err:#}"), "task failed; shutting down");
                stop.cancel();
            }
            result
        });
    }

    /// Waits for shutdown to be requested and for every task to end, at most
    /// `SHUTDOWN_TIMEOUT` after draining began. Returns the first task error.
    pub async fn finish(mut self) -> anyhow::Result<()> {
        let mut first_error = None;
        // Tasks may fail before any stop request; that request comes from them.
        loop {
            tokio::select! {
                _ = self.draining.cancelled() => break,
                joined = self.tasks.join_next() => match joined {
                    Some(Ok(Err(e))) => { first_error.get_or_insert(e); }
                    Some(Err(e)) => { first_error.get_or_insert(e.into()); }
                    Some(Ok(Ok(()))) => {}
                    None => { self.stop.cancel(); self.draining.cancelled().await; break; }
                }
            }
        }
        let deadline = tokio::time::sleep(self.shutdown_timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => {
                    tracing::warn!(remaining = self.tasks.len(), "shutdown deadline reached; aborting");
                    self.tasks.abort_all();
                    break;
                }
                joined = self.tasks.join_next() => match joined {
                    Some(Ok(Err(e))) => { first_error.get_or_insert(e); }
                    Some(Err(e)) if !e.is_cancelled() => { first_error.get_or_insert(e.into()); }
                    Some(_) => {}
                    None => break,
                }
            }
        }
        tracing::info!("stopped");
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

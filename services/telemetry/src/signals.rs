//! The signals that stop a Berth process: SIGINT (a terminal's Ctrl-C) and SIGTERM (a
//! supervisor's stop).

use std::fmt;

/// Which shutdown signal arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownSignal {
    Interrupt,
    Terminate,
}

impl ShutdownSignal {
    pub fn name(self) -> &'static str {
        match self {
            Self::Interrupt => "SIGINT",
            Self::Terminate => "SIGTERM",
        }
    }
}

impl fmt::Display for ShutdownSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// SIGINT and SIGTERM, received as many times as they arrive (a second one may mean
/// "hurry").
#[cfg(unix)]
pub struct ShutdownSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl ShutdownSignals {
    /// Installs the handlers; must run inside a tokio runtime.
    pub fn new() -> Result<Self, crate::TelemetryError> {
        use tokio::signal::unix::{signal, SignalKind};
        let install = |kind: SignalKind, which: ShutdownSignal| {
            signal(kind).map_err(|source| crate::TelemetryError::Signal {
                signal: which,
                source,
            })
        };
        Ok(Self {
            interrupt: install(SignalKind::interrupt(), ShutdownSignal::Interrupt)?,
            terminate: install(SignalKind::terminate(), ShutdownSignal::Terminate)?,
        })
    }

    /// The next SIGINT or SIGTERM.
    pub async fn recv(&mut self) -> ShutdownSignal {
        tokio::select! {
            _ = self.interrupt.recv() => ShutdownSignal::Interrupt,
            _ = self.terminate.recv() => ShutdownSignal::Terminate,
        }
    }
}

/// Completes on the first SIGINT or SIGTERM: the `shutdown` future a binary hands to its
/// library. When the SIGTERM handler cannot be installed, SIGINT alone stops it.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    match ShutdownSignals::new() {
        Ok(mut signals) => {
            let signal = signals.recv().await;
            tracing::debug!(%signal, "shutting down");
        }
        Err(e) => {
            tracing::warn!(error = %e, "waiting for Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

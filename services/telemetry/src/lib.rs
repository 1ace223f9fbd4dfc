//! What every Berth binary does the same way before and after its real work: logging
//! set-up ([`init`]: `RUST_LOG` over a per-binary default, text or JSON lines, always on
//! stderr so that stdout stays the binary's output) and the shutdown signals
//! ([`shutdown_signal`], [`ShutdownSignals`]: SIGINT or SIGTERM).

mod logging;
mod signals;

pub use logging::{filter, init, LogArgs, LOG_FILTER_ENV, LOG_JSON_ENV};
#[cfg(unix)]
pub use signals::ShutdownSignals;
pub use signals::{shutdown_signal, ShutdownSignal};

/// Failures of the set-up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot install the log subscriber: {0}")]
    Subscriber(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
    #[error("cannot handle {signal}: {source}")]
    Signal {
        signal: ShutdownSignal,
        #[source]
        source: std::io::Error,
    },
}

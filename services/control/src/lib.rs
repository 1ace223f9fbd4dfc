//! `berth-control`, the cluster manager: the ECS API over NATS, the command consumer,
//! the cluster/instance/task actors and the in-memory view. Replicas are stateless: any
//! number may run against the same NATS, all correct at once through the journal's
//! optimistic concurrency. `main.rs` only parses flags and calls [`run_blocking`]; tests
//! start replicas in-process with [`spawn`].

mod actors;
pub mod api;
mod commands;
pub mod config;
mod ids;
mod janitor;
mod liveness;
mod planners;
mod reconcile;
mod reservations;
mod services;
mod shared;
mod validation;

pub use config::{CommandHold, ControlConfig};

use berth_journal::{view::View, Journal, JournalError};
use std::future::Future;
use std::time::Duration;

/// Failures that end a replica.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("cannot start the runtime: {0}")]
    Runtime(#[from] std::io::Error),
    #[error("API service failed: {0}")]
    Api(String),
    #[error("the view did not catch up with the journal within {0:?}")]
    ViewNotReady(Duration),
}

/// How long a starting replica waits for its view to hold the whole journal.
const VIEW_READY_TIMEOUT: Duration = Duration::from_secs(600);

/// Runs a replica until `shutdown` completes. Must run inside an actix `System` (see
/// [`run_blocking`]): the actors live on its arbiter.
pub async fn run(
    config: ControlConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ControlError> {
    let journal = Journal::open(&config.journal()).await?;
    let view = View::start(&journal).await?;
    if !view.wait_ready(VIEW_READY_TIMEOUT).await {
        return Err(ControlError::ViewNotReady(VIEW_READY_TIMEOUT));
    }
    tracing::info!(
        applied = view.applied_sequence(),
        instances = view.instances_len(),
        tasks = view.tasks_len(),
        "view ready"
    );
    let arbiter = actix::System::current().arbiter().clone();
    let shared = shared::Shared::new(journal, view, config, arbiter);
    let api = tokio::spawn(api::serve(shared.clone()));
    let consumer = tokio::spawn(commands::run(shared.clone()));
    let liveness = tokio::spawn(liveness::run(shared.clone()));
    let reconciler = tokio::spawn(reconcile::run(shared.clone()));
    let janitor = tokio::spawn(janitor::run(shared.clone()));
    let services = tokio::spawn(services::scheduler::run(shared.clone()));
    for name in shared.config.create_clusters.clone() {
        let shared = shared.clone();
        tokio::spawn(async move {
            let body = serde_json::json!({ "clusterName": name }).to_string();
            match api::submit::submit(
                &shared,
                berth_messages::command::Action::CreateCluster,
                berth_messages::codec::Encoding::Json,
                body.as_bytes(),
                None,
            )
            .await
            {
                Ok(_) => tracing::info!(cluster = %name, "cluster ready"),
                Err(e) => tracing::error!(cluster = %name, error = %e, "cannot create cluster"),
            }
        });
    }
    tracing::info!("berth-control serving");
    let result = tokio::select! {
        _ = shutdown => Ok(()),
        r = api => match r {
            Ok(Ok(())) => Err(ControlError::Api("service ended".into())),
            Ok(Err(e)) => Err(ControlError::Api(e.to_string())),
            Err(e) => Err(ControlError::Api(e.to_string())),
        },
        r = consumer => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.into()),
            Err(e) => Err(ControlError::Api(e.to_string())),
        },
    };
    liveness.abort();
    reconciler.abort();
    janitor.abort();
    services.abort();
    if let Err(e) = shared.journal.client().flush().await {
        tracing::debug!(error = %e, "flush on shutdown failed");
    }
    result
}

/// Builds an actix System on a multi-thread tokio runtime and runs a replica on it.
pub fn run_blocking(
    config: ControlConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ControlError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("berth-control")
        .build()?;
    let system = actix::System::with_tokio_rt(move || runtime);
    system.block_on(run(config, shutdown))
}

/// A replica running on its own thread (for tests and embedding).
pub struct ControlHandle {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), ControlError>>>,
}

/// Starts a replica on a new thread.
pub fn spawn(config: ControlConfig) -> ControlHandle {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        run_blocking(config, async move {
            let _ = rx.await;
        })
    });
    ControlHandle {
        stop: Some(tx),
        thread: Some(thread),
    }
}

impl ControlHandle {
    /// Stops the replica and waits for its thread.
    pub fn stop(mut self) -> Result<(), ControlError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), ControlError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(ControlError::Api("replica thread panicked".into())),
            None => Ok(()),
        }
    }
}

impl Drop for ControlHandle {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

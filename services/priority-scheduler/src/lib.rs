//! berth-priority-scheduler: a priority scheduler built only on Berth's public contract, the way
//! ECS customers (Hailo) built theirs on the ECS API. It takes jobs from the `BERTH_JOBS`
//! work-queue stream ([`jobs`]), follows the cluster's container instances in the journal
//! ([`follower`]), chooses an instance for each task itself ([`pool`], best fit), and
//! starts the task there with `StartTask`. When another scheduler took the capacity first
//! the control plane refuses with `RESOURCE:*`; the scheduler avoids that instance until
//! its record changes and places the task again.
//!
//! Run it with [`run`]; the binary `berth-priority-scheduler` adds flags, logging and signals.

pub mod api;
pub mod config;
pub mod follower;
pub mod jobs;
pub mod pool;
pub mod queue;
mod scheduler;

pub use config::Config;
pub use jobs::{Job, JobOutcome, JobStatus, PlacedTask};
pub use scheduler::{run, SchedulerError};

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A scheduler's counters, logged at exit and answered on [`jobs::stats_subject`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    pub cluster: String,
    /// Tasks started.
    pub placements: u64,
    /// Placements another writer won first (StartTask failures with `RESOURCE:*`).
    pub conflicts: u64,
    /// Placements tried again: after a conflict, a stale view or an unanswered call.
    pub retries: u64,
    /// Jobs that ended FAILED.
    pub failed: u64,
    /// Jobs that ended PLACED.
    pub jobs_placed: u64,
    pub jobs_received: u64,
    /// Jobs held now (received, not finished).
    pub jobs_held: u64,
    /// Tasks of held jobs neither started nor being started.
    pub tasks_waiting: u64,
    /// API calls in flight.
    pub in_flight: u64,
    /// Container instances known.
    pub instances: u64,
}

/// Asks the scheduler of `cluster` for its counters (the first to answer, when several
/// run).
pub async fn request_stats(
    client: &async_nats::Client,
    cluster: &str,
    timeout: Duration,
) -> Result<Stats, async_nats::Error> {
    let reply = tokio::time::timeout(
        timeout,
        client.request(jobs::stats_subject(cluster), bytes::Bytes::new()),
    )
    .await??;
    Ok(serde_json::from_slice(&reply.payload)?)
}

//! Placement throughput: closed-loop clients send RunTask (count 10) to the API until a
//! number of tasks is placed. A RunTask is answered once its instance and task records
//! are durable in the journal and its outcome recorded, so tasks answered per second is
//! "RunTask accepted to records durable" per second. Around the load the run reads the
//! replica's counters (`$SRV.STATS`), the streams' sequences (journal writes, commands
//! and outcomes per task), the CPU each process used, and a `perf` profile of the
//! control plane.

use crate::api::{Api, CallError, ControlStats};
use crate::procfs::{CpuMeter, CpuUse};
use crate::profile::{self, Profile};
use crate::stats::{Percentiles, Samples};
use berth_messages::api::{RunTaskRequest, TasksResponse};
use berth_messages::command::Action;
use berth_messages::streams;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Tasks per RunTask request.
pub const COUNT: i64 = 10;

/// What the load is.
#[derive(Debug, Clone)]
pub struct Load {
    pub cluster: String,
    pub family: String,
    pub tasks: usize,
    pub concurrency: usize,
}

/// What a placement run measured.
#[derive(Debug, Clone, Default)]
pub struct PlacementRun {
    pub instances: usize,
    pub concurrency: usize,
    pub placed: u64,
    /// Tasks the control plane could not place (`failures[]`).
    pub failures: u64,
    /// Requests that failed outright (errors, timeouts).
    pub errors: u64,
    pub first_error: Option<String>,
    pub elapsed: Duration,
    pub rate: f64,
    /// RunTask round trip (count 10).
    pub latency: Percentiles,
    pub stats: ControlStats,
    /// Messages written to each stream during the run.
    pub state_writes: u64,
    pub commands: u64,
    pub outcomes: u64,
    pub cpu: CpuUse,
    pub profile: Option<Profile>,
    /// How long the hollow instances took to register.
    pub registration: Duration,
}

impl PlacementRun {
    /// Journal messages (state + commands + outcomes) per task placed.
    pub fn writes_per_task(&self) -> f64 {
        if self.placed == 0 {
            return 0.0;
        }
        (self.state_writes + self.commands + self.outcomes) as f64 / self.placed as f64
    }

    pub fn conflicts_per_1000(&self) -> f64 {
        if self.stats.placements == 0 {
            return 0.0;
        }
        self.stats.conflicts as f64 * 1000.0 / self.stats.placements as f64
    }
}

/// Last sequence of a stream (0 if it cannot be read).
pub async fn last_sequence(js: &async_nats::jetstream::Context, stream: &str) -> u64 {
    match js.get_stream(stream).await {
        Ok(mut s) => s.info().await.map(|i| i.state.last_sequence).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Runs `load` and measures around it. `pids` are the processes whose CPU is accounted;
/// `profile_pid` (the control plane) is profiled with perf into `profile_dir` if given.
pub async fn run(
    api: &Api,
    load: &Load,
    pids: Vec<(String, Vec<u32>)>,
    profile_target: Option<(u32, &Path)>,
) -> PlacementRun {
    let js = async_nats::jetstream::new(api.client().clone());
    let stats_before = api.control_stats().await.unwrap_or_default();
    let sequences_before = (
        last_sequence(&js, streams::STATE).await,
        last_sequence(&js, streams::CMD).await,
        last_sequence(&js, streams::OUTCOME).await,
    );
    let recording =
        profile_target.and_then(|(pid, dir)| profile::start(pid, &dir.join("perf.data")));
    let meter = CpuMeter::start(pids);

    let requests = load.tasks.div_ceil(COUNT as usize);
    let next = Arc::new(AtomicUsize::new(0));
    let placed = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..load.concurrency.max(1) {
        let (api, load) = (api.clone(), load.clone());
        let (next, placed, failures, errors, first_error) = (
            next.clone(),
            placed.clone(),
            failures.clone(),
            errors.clone(),
            first_error.clone(),
        );
        workers.spawn(async move {
            let mut latency = Samples::with_capacity(requests / load.concurrency.max(1) + 1);
            while next.fetch_add(1, Ordering::Relaxed) < requests {
                let request = RunTaskRequest {
                    cluster: Some(load.cluster.clone()),
                    task_definition: load.family.clone(),
                    count: Some(COUNT),
                    started_by: Some("berth-bench".into()),
                    ..Default::default()
                };
                let t0 = Instant::now();
                let answer: Result<TasksResponse, CallError> =
                    api.call(Action::RunTask, &request).await;
                match answer {
                    Ok(r) => {
                        latency.push(t0.elapsed());
                        placed.fetch_add(r.tasks.len() as u64, Ordering::Relaxed);
                        failures.fetch_add(r.failures.len() as u64, Ordering::Relaxed);
                    }
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut first) = first_error.lock() {
                            first.get_or_insert_with(|| e.to_string());
                        }
                    }
                }
            }
            latency
        });
    }
    let mut latency = Samples::default();
    while let Some(done) = workers.join_next().await {
        if let Ok(samples) = done {
            latency.extend(samples);
        }
    }
    let elapsed = started.elapsed();
    let cpu = meter.stop();
    let profile = match recording {
        Some(r) => r.finish().await,
        None => None,
    };
    let stats_after = api.control_stats().await.unwrap_or_default();
    let sequences_after = (
        last_sequence(&js, streams::STATE).await,
        last_sequence(&js, streams::CMD).await,
        last_sequence(&js, streams::OUTCOME).await,
    );
    let placed = placed.load(Ordering::Relaxed);
    let first_error = first_error.lock().ok().and_then(|e| e.clone());
    PlacementRun {
        instances: 0,
        concurrency: load.concurrency,
        placed,
        failures: failures.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        first_error,
        elapsed,
        rate: crate::stats::per_second(placed, elapsed),
        latency: latency.summary(),
        stats: stats_after.since(&stats_before),
        state_writes: sequences_after.0.saturating_sub(sequences_before.0),
        commands: sequences_after.1.saturating_sub(sequences_before.1),
        outcomes: sequences_after.2.saturating_sub(sequences_before.2),
        cpu,
        profile,
        registration: Duration::ZERO,
    }
}

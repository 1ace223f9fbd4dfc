//! Placement throughput: closed-loop clients send RunTask (count 10) to the API until a
//! number of tasks is placed. A RunTask is answered once its instance and task records
//! are durable in the journal and its outcome recorded, so tasks answered per second is
//! "RunTask accepted to records durable" per second. Around the load the run reads the
//! replica's counters (`$SRV.STATS`), the streams' sequences (journal writes, commands
//! and outcomes per task), the CPU each process used, and a `perf` profile of the
//! control plane.

use crate::api::{Api, ControlStats};
use crate::processes::Traffic;
use crate::procfs::{CpuMeter, CpuUse};
use crate::profile::{self, Profile};
use crate::stats::{Percentiles, Samples};
use berth_client::ClientError;
use berth_messages::api::RunTaskRequest;
use berth_messages::command::Action;
use berth_messages::model::PlacementStrategy;
use berth_messages::streams;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Tasks per RunTask request.
pub const COUNT: i64 = 10;
/// RunTask requests whose stages are timed from the journal after the run.
const STAGE_SAMPLES: usize = 300;

/// What the load is.
#[derive(Debug, Clone)]
pub struct Load {
    pub cluster: String,
    pub family: String,
    pub tasks: usize,
    pub concurrency: usize,
    /// The requests' `placementStrategy` (empty: Berth's default).
    pub strategies: Vec<PlacementStrategy>,
    /// The nats-server monitor ports whose traffic is counted around the load.
    pub monitor_ports: Vec<u16>,
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
    /// Where a RunTask's time goes, from journal timestamps of sampled requests.
    pub stages: Option<Stages>,
    /// How long the hollow instances took to register.
    pub registration: Duration,
    /// What the nats-server(s) received and sent during the run.
    pub traffic: Option<Traffic>,
}

/// The stages of a RunTask, from the client's clock, the control plane's `createdAt`
/// (set when a task's instance allocation is durable and its record is built), the
/// server's timestamps of the task records, and the outcome's `completedAt` (one
/// machine, one clock).
#[derive(Debug, Clone, Default)]
pub struct Stages {
    pub samples: usize,
    /// Request sent to the first task's record built: API, command stream, consumer,
    /// outcome check, placement decision, instance write (group commit) durable.
    pub to_first_placed: Percentiles,
    /// First task built to the last task record durable (allocations and task writes of
    /// the 10 tasks).
    pub task_writes: Percentiles,
    /// Last task record durable to the outcome built.
    pub to_outcome: Percentiles,
    /// Outcome built to the reply at the client: outcome write, reply publish, the API
    /// handler's wait for its view to reach the outcome, reply.
    pub to_reply: Percentiles,
}

/// What the load reads of a RunTask reply: the placed tasks' ARNs and how many tasks
/// failed. The rest of each task is skipped, not decoded: the load generator shares the
/// two cores with what it measures.
#[derive(serde::Deserialize)]
struct Placed {
    tasks: Vec<PlacedTask>,
    failures: Vec<serde::de::IgnoredAny>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct PlacedTask {
    task_arn: String,
    container_instance_arn: String,
}

/// One sampled RunTask: when it was sent and answered (wall clock) and its task ARNs.
struct Sampled {
    sent: std::time::SystemTime,
    answered: std::time::SystemTime,
    tasks: Vec<(String, String)>,
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
    let traffic_before = Traffic::read(&load.monitor_ports).await;
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
        let sample_every = (requests / STAGE_SAMPLES).max(1);
        workers.spawn(async move {
            let mut latency = Samples::with_capacity(requests / load.concurrency.max(1) + 1);
            let mut sampled = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= requests {
                    break;
                }
                let request = RunTaskRequest {
                    cluster: Some(load.cluster.clone()),
                    task_definition: load.family.clone(),
                    count: Some(COUNT),
                    started_by: Some("berth-bench".into()),
                    placement_strategy: load.strategies.clone(),
                    ..Default::default()
                };
                let t0 = Instant::now();
                let sent = std::time::SystemTime::now();
                let answer: Result<Placed, ClientError> = api.call(Action::RunTask, &request).await;
                match answer {
                    Ok(r) => {
                        latency.push(t0.elapsed());
                        if n % sample_every == 0 && !r.tasks.is_empty() {
                            sampled.push(Sampled {
                                sent,
                                answered: std::time::SystemTime::now(),
                                tasks: r
                                    .tasks
                                    .iter()
                                    .map(|t| (t.task_arn.clone(), t.container_instance_arn.clone()))
                                    .collect(),
                            });
                        }
                        placed.fetch_add(r.tasks.len() as u64, Ordering::Relaxed);
                        failures.fetch_add(r.failures.len() as u64, Ordering::Relaxed);
                    }
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut first) = first_error.lock() {
                            first.get_or_insert_with(|| berth_client::error_chain(&e));
                        }
                    }
                }
            }
            (latency, sampled)
        });
    }
    let mut latency = Samples::default();
    let mut sampled = Vec::new();
    while let Some(done) = workers.join_next().await {
        if let Ok((samples, requests)) = done {
            latency.extend(samples);
            sampled.extend(requests);
        }
    }
    let elapsed = started.elapsed();
    let cpu = meter.stop();
    let traffic_after = Traffic::read(&load.monitor_ports).await;
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
    let stages = stages(&js, &load.cluster, &sampled).await;
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
        stages,
        registration: Duration::ZERO,
        traffic: traffic_after
            .zip(traffic_before)
            .map(|(after, before)| after.since(&before)),
    }
}

fn epoch_nanos(t: std::time::SystemTime) -> i128 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

fn between(from_nanos: i128, to_nanos: i128) -> Duration {
    Duration::from_nanos(u64::try_from(to_nanos - from_nanos).unwrap_or(0))
}

/// Reads the task records and outcomes of the sampled requests and splits their time.
async fn stages(
    js: &async_nats::jetstream::Context,
    cluster: &str,
    sampled: &[Sampled],
) -> Option<Stages> {
    let stream = js.get_stream_no_info(streams::STATE).await.ok()?;
    let outcomes = js.get_stream_no_info(streams::OUTCOME).await.ok()?;
    let mut result = (
        Samples::default(),
        Samples::default(),
        Samples::default(),
        Samples::default(),
    );
    for request in sampled {
        let mut first_built = i128::MAX;
        let mut last_durable = i128::MIN;
        let mut command_id = None;
        for (task_arn, instance_arn) in &request.tasks {
            let task_id = berth_messages::arn::task_id(task_arn).1;
            let instance_id = berth_messages::arn::container_instance_id(instance_arn).1;
            let subject = berth_messages::subjects::task(cluster, instance_id, task_id);
            let Ok(message) = stream.direct_get_last_for_subject(subject).await else {
                continue;
            };
            let Ok(task) = berth_messages::codec::decode_record::<berth_messages::model::Task>(
                &message.payload,
            ) else {
                continue;
            };
            first_built = first_built.min((task.created_at * 1e9) as i128);
            last_durable = last_durable.max(message.time.unix_timestamp_nanos());
            command_id = command_id.or_else(|| berth_journal::command_id_of(&message.headers));
        }
        let Some(command_id) = command_id else {
            continue;
        };
        let Ok(outcome) = outcomes
            .direct_get_last_for_subject(berth_messages::subjects::outcome(&command_id))
            .await
        else {
            continue;
        };
        let Ok(outcome) = berth_messages::codec::decode_record::<berth_messages::command::Outcome>(
            &outcome.payload,
        ) else {
            continue;
        };
        let completed = (outcome.completed_at * 1e9) as i128;
        result
            .0
            .push(between(epoch_nanos(request.sent), first_built));
        result.1.push(between(first_built, last_durable));
        result.2.push(between(last_durable, completed));
        result
            .3
            .push(between(completed, epoch_nanos(request.answered)));
    }
    let samples = result.0.len();
    (samples > 0).then(|| Stages {
        samples,
        to_first_placed: result.0.summary(),
        task_writes: result.1.summary(),
        to_outcome: result.2.summary(),
        to_reply: result.3.summary(),
    })
}

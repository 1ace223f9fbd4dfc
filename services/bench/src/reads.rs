//! Read latency under churn. While hollow instances join and leave the cluster at a fixed
//! rate (RegisterContainerInstance / DeregisterContainerInstance through the API, 10 a
//! second each by default) and RunTask places tasks in the background on the cluster's
//! hollow hosts (which play them: RUNNING, then STOPPED), two closed-loop readers time
//! DescribeTasks (10 random seeded tasks per call) and DescribeContainerInstances (10
//! random hollow instances per call), one request at a time over NATS request/reply.
//!
//! Churn instances register with 1 CPU unit and 1 MiB so that no task fits on them: they
//! come and go without holding work, like hosts of an autoscaling group cycling.

use crate::api::Api;
use crate::seed::Seeder;
use crate::stats::{Percentiles, Samples};
use berth_messages::api::{
    ContainerInstanceResponse, DeregisterContainerInstanceRequest,
    DescribeContainerInstancesRequest, DescribeTasksRequest, RegisterContainerInstanceRequest,
    RunTaskRequest, TasksResponse,
};
use berth_messages::command::Action;
use berth_messages::model::{Attribute, Resource};
use rand::seq::SliceRandom;
use rand::Rng;
use serde::de::IgnoredAny;
use serde::Deserialize;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Items per read call.
pub const BATCH: usize = 10;
/// Requests each reader sends before it starts timing.
const WARM_UP: usize = 200;
/// Churn instances alive at once: each leaves this many ticks after it joined.
const CHURN_POOL: usize = 20;
/// Background RunTask requests in flight at most: a tick that finds this many waiting is
/// skipped, so a slow control plane is loaded, not buried under an ever-growing backlog.
const BACKGROUND_IN_FLIGHT: usize = 4;

/// What a read measurement does.
#[derive(Debug, Clone)]
pub struct ReadLoad {
    pub cluster: String,
    /// Task family placed in the background.
    pub family: String,
    /// Timed requests per reader.
    pub samples: usize,
    /// Joins (and leaves) per second.
    pub churn_per_second: u32,
    /// RunTask (count 10) requests per second in the background (at most).
    pub background_per_second: u32,
    /// Each reader stops after this long even if it has not sent `samples` requests.
    pub max_duration: Duration,
}

/// What a read measurement found.
#[derive(Debug, Clone, Default)]
pub struct ReadRun {
    pub seeded_tasks: usize,
    pub describe_tasks: Percentiles,
    pub describe_instances: Percentiles,
    /// Reads that failed or came back short.
    pub read_errors: u64,
    pub joins: u64,
    pub leaves: u64,
    pub churn_errors: u64,
    pub background_tasks: u64,
    pub background_errors: u64,
    pub elapsed: Duration,
    /// Resident memory of the control plane after the run, KiB.
    pub control_rss_kib: Option<u64>,
    /// CPU used during the run, by process.
    pub cpu: crate::procfs::CpuUse,
    /// Where berth-control spent its CPU during the run (largest size only).
    pub profile: Option<crate::profile::Profile>,
}

impl ReadRun {
    pub fn joins_per_second(&self) -> f64 {
        crate::stats::per_second(self.joins, self.elapsed)
    }
    pub fn leaves_per_second(&self) -> f64 {
        crate::stats::per_second(self.leaves, self.elapsed)
    }
}

#[derive(Deserialize)]
struct TaskCount {
    tasks: Vec<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InstanceCount {
    container_instances: Vec<IgnoredAny>,
}

/// Measures read latency with churn and background placements running. `readers` and
/// `load_api` should be separate connections so the load does not queue the reads.
pub async fn measure(
    readers: &Api,
    load_api: &Api,
    load: &ReadLoad,
    seeder: &Seeder,
    hollow: &[String],
) -> ReadRun {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let counters = Arc::new(Counters::default());
    let churn = tokio::spawn(churn(
        load_api.clone(),
        load.cluster.clone(),
        load.churn_per_second,
        stop_rx.clone(),
        counters.clone(),
    ));
    let background = tokio::spawn(background(
        load_api.clone(),
        load.clone(),
        stop_rx,
        counters.clone(),
    ));
    let seeded = seeder.tasks();
    let started = Instant::now();
    let tasks_reader = {
        let api = readers.clone();
        let cluster = load.cluster.clone();
        let names = seeder.names();
        let samples = load.samples;
        let max_duration = load.max_duration;
        tokio::spawn(async move {
            let mut latency = Samples::with_capacity(samples);
            let mut errors = 0u64;
            for n in 0..WARM_UP + samples {
                if n > WARM_UP && started.elapsed() > max_duration {
                    break;
                }
                let tasks: Vec<String> = {
                    let mut rng = rand::thread_rng();
                    (0..BATCH)
                        .map(|_| names.task_arn(rng.gen_range(0..seeded.max(1))))
                        .collect()
                };
                let request = DescribeTasksRequest {
                    cluster: Some(cluster.clone()),
                    tasks,
                    include: Vec::new(),
                };
                let t0 = Instant::now();
                let answer = api
                    .call::<_, TaskCount>(Action::DescribeTasks, &request)
                    .await;
                let took = t0.elapsed();
                match answer {
                    Ok(r) if r.tasks.len() == BATCH => {}
                    _ => errors += 1,
                }
                if n >= WARM_UP {
                    latency.push(took);
                }
            }
            (latency, errors)
        })
    };
    let instances_reader = {
        let api = readers.clone();
        let cluster = load.cluster.clone();
        let hollow = hollow.to_vec();
        let samples = load.samples;
        let max_duration = load.max_duration;
        tokio::spawn(async move {
            let mut latency = Samples::with_capacity(samples);
            let mut errors = 0u64;
            for n in 0..WARM_UP + samples {
                if n > WARM_UP && started.elapsed() > max_duration {
                    break;
                }
                let instances: Vec<String> = {
                    let mut rng = rand::thread_rng();
                    hollow
                        .choose_multiple(&mut rng, BATCH.min(hollow.len()))
                        .cloned()
                        .collect()
                };
                let wanted = instances.len();
                let request = DescribeContainerInstancesRequest {
                    cluster: Some(cluster.clone()),
                    container_instances: instances,
                    include: Vec::new(),
                };
                let t0 = Instant::now();
                let answer = api
                    .call::<_, InstanceCount>(Action::DescribeContainerInstances, &request)
                    .await;
                let took = t0.elapsed();
                match answer {
                    Ok(r) if r.container_instances.len() == wanted => {}
                    _ => errors += 1,
                }
                if n >= WARM_UP {
                    latency.push(took);
                }
            }
            (latency, errors)
        })
    };
    let (mut tasks_latency, task_errors) = tasks_reader.await.unwrap_or_default();
    let (mut instances_latency, instance_errors) = instances_reader.await.unwrap_or_default();
    let elapsed = started.elapsed();
    let _ = stop_tx.send(true);
    let _ = churn.await;
    let _ = background.await;
    ReadRun {
        seeded_tasks: seeded,
        describe_tasks: tasks_latency.summary(),
        describe_instances: instances_latency.summary(),
        read_errors: task_errors + instance_errors,
        joins: counters.joins.load(Ordering::Relaxed),
        leaves: counters.leaves.load(Ordering::Relaxed),
        churn_errors: counters.churn_errors.load(Ordering::Relaxed),
        background_tasks: counters.background_tasks.load(Ordering::Relaxed),
        background_errors: counters.background_errors.load(Ordering::Relaxed),
        elapsed,
        ..Default::default()
    }
}

#[derive(Debug, Default)]
struct Counters {
    joins: AtomicU64,
    leaves: AtomicU64,
    churn_errors: AtomicU64,
    background_tasks: AtomicU64,
    background_errors: AtomicU64,
}

/// Every tick one instance joins and, once the pool is full, the oldest leaves. Calls run
/// concurrently so a slow answer does not slow the rate; the remaining pool leaves at
/// the end.
async fn churn(
    api: Api,
    cluster: String,
    per_second: u32,
    mut stop: tokio::sync::watch::Receiver<bool>,
    counters: Arc<Counters>,
) {
    if per_second == 0 {
        return;
    }
    let pool: Arc<Mutex<VecDeque<String>>> = Arc::default();
    let mut calls = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(per_second)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        let leaving = pool
            .lock()
            .ok()
            .and_then(|mut p| (p.len() >= CHURN_POOL).then(|| p.pop_front()).flatten());
        if let Some(arn) = leaving {
            calls.spawn(leave(api.clone(), cluster.clone(), arn, counters.clone()));
        }
        calls.spawn(join(
            api.clone(),
            cluster.clone(),
            pool.clone(),
            counters.clone(),
        ));
        while calls.try_join_next().is_some() {}
    }
    while calls.join_next().await.is_some() {}
    let remaining: Vec<String> = pool
        .lock()
        .map(|mut p| p.drain(..).collect())
        .unwrap_or_default();
    for arn in remaining {
        calls.spawn(leave(api.clone(), cluster.clone(), arn, counters.clone()));
    }
    while calls.join_next().await.is_some() {}
}

async fn join(
    api: Api,
    cluster: String,
    pool: Arc<Mutex<VecDeque<String>>>,
    counters: Arc<Counters>,
) {
    let request = RegisterContainerInstanceRequest {
        cluster: Some(cluster),
        total_resources: vec![
            Resource::integer(Resource::CPU, 1),
            Resource::integer(Resource::MEMORY, 1),
            Resource::string_set(Resource::PORTS, ["22".to_string()]),
        ],
        attributes: vec![Attribute {
            name: "berth.bench".into(),
            value: Some("churn".into()),
            ..Default::default()
        }],
        ..Default::default()
    };
    match api
        .call::<_, ContainerInstanceResponse>(Action::RegisterContainerInstance, &request)
        .await
    {
        Ok(r) => {
            counters.joins.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut p) = pool.lock() {
                p.push_back(r.container_instance.container_instance_arn);
            }
        }
        Err(e) => {
            counters.churn_errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(error = %e, "churn join failed");
        }
    }
}

async fn leave(api: Api, cluster: String, arn: String, counters: Arc<Counters>) {
    let request = DeregisterContainerInstanceRequest {
        cluster: Some(cluster),
        container_instance: arn,
        force: Some(true),
    };
    match api
        .call::<_, ContainerInstanceResponse>(Action::DeregisterContainerInstance, &request)
        .await
    {
        Ok(_) => {
            counters.leaves.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            counters.churn_errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(error = %e, "churn leave failed");
        }
    }
}

/// RunTask (count 10) at a fixed rate on the cluster's hollow hosts.
async fn background(
    api: Api,
    load: ReadLoad,
    mut stop: tokio::sync::watch::Receiver<bool>,
    counters: Arc<Counters>,
) {
    if load.background_per_second == 0 {
        return;
    }
    let mut calls = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(
        1.0 / f64::from(load.background_per_second),
    ));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        while calls.try_join_next().is_some() {}
        if calls.len() >= BACKGROUND_IN_FLIGHT {
            continue;
        }
        let (api, counters) = (api.clone(), counters.clone());
        let request = RunTaskRequest {
            cluster: Some(load.cluster.clone()),
            task_definition: load.family.clone(),
            count: Some(crate::placement::COUNT),
            started_by: Some("berth-bench-background".into()),
            ..Default::default()
        };
        calls.spawn(async move {
            match api
                .call::<_, TasksResponse>(Action::RunTask, &request)
                .await
            {
                Ok(r) => {
                    counters
                        .background_tasks
                        .fetch_add(r.tasks.len() as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    counters.background_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, "background RunTask failed");
                }
            }
        });
        while calls.try_join_next().is_some() {}
    }
    while calls.join_next().await.is_some() {}
}

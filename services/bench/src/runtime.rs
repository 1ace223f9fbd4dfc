//! Task start latency: RunTask (count 1) at a steady rate on a cluster whose one host is a
//! real `berth-agent` (each task a short-lived process), or whose hosts are a fleet of
//! real shape (hollow tasks), and the time from sending RunTask to the moment the task's
//! record with lastStatus RUNNING reaches a follower of the hosts' task subjects in the
//! journal.

use crate::api::Api;
use crate::stats::{Percentiles, Samples};
use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::pull, consumer::DeliverPolicy};
use berth_messages::api::{RunTaskRequest, TasksResponse};
use berth_messages::command::Action;
use berth_messages::model::{Task, TaskStatus};
use berth_messages::subjects::{self, StateKey};
use berth_messages::{arn, codec, streams};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the measurement does.
#[derive(Debug, Clone)]
pub struct StartLoad {
    pub cluster: String,
    pub family: String,
    /// The host to follow; none: every host of the cluster.
    pub instance_arn: Option<String>,
    pub tasks: usize,
    /// RunTask requests per second.
    pub per_second: u32,
}

/// What it found.
#[derive(Debug, Clone, Default)]
pub struct StartRun {
    pub requested: usize,
    /// Tasks seen RUNNING in the journal.
    pub observed: usize,
    /// Tasks that went to STOPPED without a RUNNING record.
    pub never_running: usize,
    /// Tasks seen STOPPED by the end (their processes exited).
    pub stopped: usize,
    pub errors: usize,
    pub first_error: Option<String>,
    pub latency: Percentiles,
    pub elapsed: Duration,
}

/// What the follower saw of one task.
#[derive(Debug, Clone, Copy, Default)]
struct Sighting {
    /// When a record with lastStatus RUNNING first arrived.
    running: Option<Instant>,
    stopped: bool,
}

type Seen = Arc<Mutex<HashMap<String, Sighting>>>;

pub async fn measure(api: &Api, load: &StartLoad, timeout: Duration) -> anyhow::Result<StartRun> {
    let js = jetstream::new(api.client().clone());
    let stream = js
        .get_stream(streams::STATE)
        .await
        .context("opening BERTH_STATE")?;
    let instance_id = load
        .instance_arn
        .as_deref()
        .map_or("*", |arn| arn::container_instance_id(arn).1)
        .to_string();
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: subjects::tasks_of_instance(&load.cluster, &instance_id),
            deliver_policy: DeliverPolicy::New,
            ..Default::default()
        })
        .await
        .context("creating the task follower")?;
    let mut messages = consumer.messages().await.context("following tasks")?;
    let seen: Seen = Arc::default();
    let follower = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(Ok(message)) = messages.next().await {
                let at = Instant::now();
                let Some(StateKey::Task { task_id, .. }) = subjects::parse_state(&message.subject)
                else {
                    continue;
                };
                let Ok(task) = codec::decode_record::<Task>(&message.payload) else {
                    continue;
                };
                if let Ok(mut seen) = seen.lock() {
                    let sighting = seen.entry(task_id.to_string()).or_default();
                    if task.last_status == TaskStatus::Stopped {
                        sighting.stopped = true;
                    } else if task.last_status >= TaskStatus::Running && sighting.running.is_none()
                    {
                        sighting.running = Some(at);
                    }
                }
            }
        })
    };

    let mut sent: Vec<(String, Instant)> = Vec::with_capacity(load.tasks);
    let mut errors = 0;
    let mut first_error = None;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(
        1.0 / f64::from(load.per_second.max(1)),
    ));
    let mut calls = tokio::task::JoinSet::new();
    let started = Instant::now();
    for _ in 0..load.tasks {
        tick.tick().await;
        let api = api.clone();
        let request = RunTaskRequest {
            cluster: Some(load.cluster.clone()),
            task_definition: load.family.clone(),
            count: Some(1),
            started_by: Some("berth-bench-start".into()),
            ..Default::default()
        };
        calls.spawn(async move {
            let t0 = Instant::now();
            let answer = api
                .call::<_, TasksResponse>(Action::RunTask, &request)
                .await;
            (t0, answer)
        });
    }
    while let Some(done) = calls.join_next().await {
        match done {
            Ok((t0, Ok(r))) => {
                for task in &r.tasks {
                    sent.push((arn::task_id(&task.task_arn).1.to_string(), t0));
                }
                if let Some(f) = r.failures.first() {
                    errors += r.failures.len();
                    first_error.get_or_insert_with(|| format!("{:?}: {:?}", f.reason, f.detail));
                }
            }
            Ok((_, Err(e))) => {
                errors += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    // Every task's process is short-lived: wait until all of them are STOPPED, so the
    // agent has nothing left to report when it is stopped.
    let deadline = Instant::now() + timeout;
    loop {
        let all_stopped = seen
            .lock()
            .map(|s| {
                sent.iter()
                    .all(|(id, _)| s.get(id).is_some_and(|x| x.stopped))
            })
            .unwrap_or(false);
        if all_stopped || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    follower.abort();
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    let mut latency = Samples::with_capacity(sent.len());
    let mut never_running = 0;
    let mut stopped = 0;
    for (id, t0) in &sent {
        let sighting = seen.get(id).copied().unwrap_or_default();
        match sighting.running {
            Some(at) => latency.push(at.saturating_duration_since(*t0)),
            None if sighting.stopped => never_running += 1,
            None => {}
        }
        stopped += usize::from(sighting.stopped);
    }
    Ok(StartRun {
        requested: load.tasks,
        observed: latency.len(),
        never_running,
        stopped,
        errors,
        first_error,
        latency: latency.summary(),
        elapsed,
    })
}

//! ECS services under load, on hollow hosts (and one real agent): a REPLICA service of
//! thousands of tasks from CreateService to steady state (compared with RunTask placement
//! on as many hosts in the same run), a rolling deployment of it (compared with its
//! scale-up), replacement latency of a stopped task (hollow) and of a killed process
//! (real agent), the control plane's CPU while many services rest, and many services
//! deploying at once under two replicas (the run's audit replays every step's bounds).
//!
//! Replacement is timed from the kill to the moment a record of a new task of the service
//! with lastStatus RUNNING is published on its journal subject (a core subscription on
//! `berth.state.<cluster>.task.>` sees every write).

use crate::api::Api;
use crate::stats::{Percentiles, Samples};
use anyhow::{bail, Context as _};
use berth_messages::api::{ListTasksRequest, ListTasksResponse, StopTaskRequest, TaskResponse};
use berth_messages::command::Action;
use berth_messages::model::{Task, TaskStatus};
use berth_messages::service::*;
use berth_messages::{arn, codec, subjects};
use futures::StreamExt;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the services measurements found.
#[derive(Debug, Clone, Default)]
pub struct ServicesRun {
    pub hosts: usize,
    pub tasks: usize,
    /// CreateService to steady state (every task RUNNING and the steady-state event).
    pub scale_up: Option<Duration>,
    /// UpdateService to a new task definition (min 100, max 200) to COMPLETED.
    pub rolling: Option<Duration>,
    /// A stopped task of a hollow service replaced and RUNNING again.
    pub replacement_hollow: Option<Percentiles>,
    /// A killed process of a service on a real agent replaced and RUNNING again.
    pub replacement_process: Option<Percentiles>,
    /// Services (of `idle_tasks_each` tasks) at rest while berth-control's CPU is
    /// measured, and its share of one core.
    pub idle_services: usize,
    pub idle_tasks_each: usize,
    pub idle_core_share: Option<f64>,
    /// Services deploying at once under two replicas, and how long until all were steady.
    pub concurrent_services: usize,
    pub concurrent_elapsed: Option<Duration>,
}

/// How often a wait looks at the services.
const POLL: Duration = Duration::from_millis(50);

/// A service's progress as DescribeServices shows it.
async fn describe(api: &Api, cluster: &str, names: &[String]) -> anyhow::Result<Vec<Service>> {
    let mut out = Vec::with_capacity(names.len());
    for chunk in names.chunks(10) {
        let r: DescribeServicesResponse = api
            .call(
                Action::DescribeServices,
                &DescribeServicesRequest {
                    cluster: Some(cluster.into()),
                    services: chunk.to_vec(),
                    include: Vec::new(),
                },
            )
            .await
            .context("DescribeServices")?;
        out.extend(r.services);
    }
    Ok(out)
}

/// Steady: one deployment, COMPLETED, of `task_definition` if given, its desired count
/// RUNNING and nothing pending.
fn is_steady(s: &Service, task_definition: Option<&str>) -> bool {
    let [d] = s.deployments.as_slice() else {
        return false;
    };
    d.rollout_state == RolloutState::Completed
        && s.running_count == s.desired_count
        && s.pending_count == 0
        && task_definition.is_none_or(|td| d.task_definition == td)
}

/// Waits until every named service is steady; returns how long that took.
pub async fn wait_steady(
    api: &Api,
    cluster: &str,
    names: &[String],
    task_definition: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut pending: Vec<String> = names.to_vec();
    loop {
        let services = describe(api, cluster, &pending).await?;
        let steady: HashSet<&str> = services
            .iter()
            .filter(|s| is_steady(s, task_definition))
            .map(|s| s.service_name.as_str())
            .collect();
        pending.retain(|n| !steady.contains(n.as_str()));
        if pending.is_empty() {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            bail!(
                "{} service(s) not steady after {timeout:?}, e.g. {}",
                pending.len(),
                pending[0]
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

pub async fn create(
    api: &Api,
    cluster: &str,
    name: &str,
    task_definition: &str,
    desired: i64,
) -> anyhow::Result<()> {
    let _: ServiceResponse = api
        .call(
            Action::CreateService,
            &CreateServiceRequest {
                cluster: Some(cluster.into()),
                service_name: name.into(),
                task_definition: Some(task_definition.into()),
                desired_count: Some(desired),
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("CreateService {name}"))?;
    Ok(())
}

pub async fn deploy(
    api: &Api,
    cluster: &str,
    name: &str,
    task_definition: &str,
    config: Option<DeploymentConfiguration>,
) -> anyhow::Result<()> {
    let _: ServiceResponse = api
        .call(
            Action::UpdateService,
            &UpdateServiceRequest {
                cluster: Some(cluster.into()),
                service: name.into(),
                task_definition: Some(task_definition.into()),
                deployment_configuration: config,
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("UpdateService {name}"))?;
    Ok(())
}

/// Creates many services at once (64 calls in flight).
pub async fn create_many(
    api: &Api,
    cluster: &str,
    names: &[String],
    task_definition: &str,
    desired: i64,
) -> anyhow::Result<()> {
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(names)
        .map(|name| create(api, cluster, name, task_definition, desired))
        .buffer_unordered(64)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Deploys a new task definition to many services at once (64 calls in flight).
pub async fn deploy_many(
    api: &Api,
    cluster: &str,
    names: &[String],
    task_definition: &str,
) -> anyhow::Result<()> {
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(names)
        .map(|name| deploy(api, cluster, name, task_definition, None))
        .buffer_unordered(64)
        .collect()
        .await;
    results.into_iter().collect()
}

/// The tasks of one service group as the journal's task subjects publish them: which are
/// RUNNING, and when each was first seen RUNNING.
#[derive(Clone, Default)]
pub struct Follower {
    state: Arc<Mutex<FollowerState>>,
}

#[derive(Default)]
struct FollowerState {
    running: HashMap<String, Instant>,
    stopped: HashSet<String>,
}

impl Follower {
    /// Follows the tasks of `group` in `cluster` from now on.
    pub async fn start(
        client: &async_nats::Client,
        cluster: &str,
        group: &str,
    ) -> anyhow::Result<(Follower, tokio::task::JoinHandle<()>)> {
        let mut sub = client
            .subscribe(format!("{}.{cluster}.task.>", subjects::STATE_PREFIX))
            .await
            .context("subscribing to the task records")?;
        let follower = Follower::default();
        let state = follower.state.clone();
        let group = group.to_string();
        let handle = tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let Ok(task) = codec::decode_record::<Task>(&msg.payload) else {
                    continue;
                };
                if task.group != group {
                    continue;
                }
                let id = arn::task_id(&task.task_arn).1.to_string();
                let mut s = state
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                match task.last_status {
                    TaskStatus::Running if task.desired_status == TaskStatus::Running => {
                        s.running.entry(id).or_insert_with(Instant::now);
                    }
                    TaskStatus::Stopped => {
                        s.running.remove(&id);
                        s.stopped.insert(id);
                    }
                    _ => {}
                }
            }
        });
        Ok((follower, handle))
    }

    fn snapshot(&self) -> HashMap<String, Instant> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .running
            .clone()
    }

    /// Waits until a task not in `known` is RUNNING; returns when it was seen.
    async fn new_running(
        &self,
        known: &HashMap<String, Instant>,
        timeout: Duration,
    ) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self
                .snapshot()
                .iter()
                .filter(|(id, _)| !known.contains_key(*id))
                .map(|(_, at)| *at)
                .min();
            if found.is_some() {
                return found;
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Waits until `count` tasks are RUNNING.
    pub async fn wait_running(&self, count: usize, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while self.snapshot().len() < count {
            if Instant::now() > deadline {
                bail!("fewer than {count} tasks RUNNING after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }
}

/// How a measurement kills one task of the service.
pub enum Kill<'a> {
    /// StopTask by a user.
    StopTask { api: &'a Api, cluster: &'a str },
    /// SIGKILL of a process whose command line is exactly this.
    Process { command_line: &'a str },
}

/// Kills a RUNNING task of the followed service `kills` times, one at a time, and times
/// each replacement to RUNNING.
pub async fn replacement(
    follower: &Follower,
    kill: &Kill<'_>,
    desired: usize,
    kills: usize,
) -> anyhow::Result<Percentiles> {
    let mut samples = Samples::with_capacity(kills);
    for _ in 0..kills {
        follower
            .wait_running(desired, Duration::from_secs(30))
            .await?;
        let known = follower.snapshot();
        let killed_at = match kill {
            Kill::StopTask { api, cluster } => {
                let Some(victim) = known.keys().next().cloned() else {
                    bail!("no RUNNING task to stop");
                };
                let _: TaskResponse = api
                    .call(
                        Action::StopTask,
                        &StopTaskRequest {
                            cluster: Some(cluster.to_string()),
                            task: victim,
                            reason: Some("berth-bench: replacement".into()),
                            stop_code: None,
                        },
                    )
                    .await
                    .context("StopTask")?;
                Instant::now()
            }
            Kill::Process { command_line } => {
                let Some(pid) = crate::procfs::pids_with_command_line(command_line)
                    .first()
                    .copied()
                else {
                    bail!("no process runs {command_line:?}");
                };
                let at = Instant::now();
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                )
                .context("SIGKILL of a service process")?;
                at
            }
        };
        let Some(running) = follower.new_running(&known, Duration::from_secs(30)).await else {
            bail!("a killed task was not replaced within 30 s");
        };
        samples.push(running.saturating_duration_since(killed_at));
    }
    Ok(samples.summary())
}

/// Tasks the service's group has, by ListTasks (for the process measurement's start).
pub async fn listed(api: &Api, cluster: &str, service: &str) -> anyhow::Result<usize> {
    let r: ListTasksResponse = api
        .call(
            Action::ListTasks,
            &ListTasksRequest {
                cluster: Some(cluster.into()),
                service_name: Some(service.into()),
                ..Default::default()
            },
        )
        .await
        .context("ListTasks")?;
    Ok(r.task_arns.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_means_one_completed_deployment_with_every_task_running() {
        let mut s = Service {
            desired_count: 2,
            running_count: 2,
            ..Default::default()
        };
        s.start_deployment("td:1", 0.0);
        assert!(!is_steady(&s, None));
        if let Some(p) = s.primary_mut() {
            p.rollout_state = RolloutState::Completed;
        }
        assert!(is_steady(&s, None));
        assert!(is_steady(&s, Some("td:1")));
        assert!(!is_steady(&s, Some("td:2")));
        s.pending_count = 1;
        assert!(!is_steady(&s, None));
    }
}

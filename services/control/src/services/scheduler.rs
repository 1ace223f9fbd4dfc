//! The service scheduler: every replica runs it, for every service, and they stay
//! correct together through the service record (see "Services" in ARCHITECTURE.md).
//!
//! A pass over one service plans from the view (`planners::service`) and writes the next
//! record conditionally on the version it planned from; the write carries the step (the
//! tasks to launch and stop), so of the replicas planning at once one wins and the others
//! see a conflict. The step's effects are RunTask and StopTask commands whose ids derive
//! from the step id: carried out twice (by a replica that takes over a step left
//! unfinished), they take effect once. Once every command has its outcome, and this
//! replica's view holds what they wrote, the step is cleared in a second conditional
//! write, with the events it produced. Every record written after that is newer than the
//! tasks the step made, so the next plan (on any replica whose view holds the record)
//! counts them: the bounds of a deployment hold across replicas.
//!
//! Passes are driven by the view's changes (a service record, a task of a service, an
//! instance whose status changed) and by a level pass every few seconds over the services
//! that wait on time (a step in flight, whose replica may have died; a deployment under
//! way; a throttle), and every minute over all of them.

use crate::api::submit::submit;
use crate::planners::service::{plan, InstanceFacts, Snapshot, TaskFacts};
use crate::shared::Shared;
use berth_journal::Versioned;
use berth_messages::api::{RunTaskRequest, StartTaskRequest, StopTaskRequest, TasksResponse};
use berth_messages::codec::{self, Encoding};
use berth_messages::command::Action;
use berth_messages::model::{InstanceStatus, PlacementStrategy, StopCode};
use berth_messages::service::*;
use berth_messages::{arn, ids, subjects, ApiError, ErrorType};
use dashmap::DashMap;
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// Least time between two passes over one service while changes keep coming.
const PASS_SPACING: Duration = Duration::from_millis(20);
/// Every service is looked at this often even without a change.
const LEVEL_PASS: Duration = Duration::from_secs(5);
/// Every this many level passes, every service is looked at, whatever its state (the
/// first pass after a start is one).
const FULL_SWEEP_EVERY: u64 = 12;
/// A step older than this whose replica is not this one is carried out here too.
const STEP_TAKEOVER: f64 = 10.0;
/// After a step some of whose tasks could not be placed, launches wait this long.
const PLACEMENT_RETRY: f64 = 2.0;
/// Commands of one step in flight at once.
const STEP_CONCURRENCY: usize = 256;
/// Attempts of a step's settling write.
const SETTLE_ATTEMPTS: u32 = 50;
/// Task ids named in a "has started" or "has stopped" event.
const EVENT_TASKS: usize = 10;

type Key = (String, String);

/// Whether a service may need a pass without any change to signal it: a step in flight
/// (to take over), a deployment under way, a throttle or a placement retry to wait out,
/// a service draining. A steady service waits for the signals, and for the full sweep.
fn awaits_time(s: &Service) -> bool {
    s.step.is_some()
        || s.status == ServiceStatus::Draining
        || s.retry_launch_at.is_some()
        || s.deployments
            .iter()
            .any(|d| d.rollout_state == RolloutState::InProgress || d.throttled_until.is_some())
        || s.deployments.len() > 1
}

/// Runs the scheduler until the replica stops.
pub async fn run(shared: Shared) {
    let workers: Arc<DashMap<Key, Arc<AtomicBool>>> = Arc::new(DashMap::new());
    let mine: Arc<DashMap<String, ()>> = Arc::new(DashMap::new());
    let mut level = tokio::time::interval(LEVEL_PASS);
    let mut ticks: u64 = 0;
    level.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let keys: Vec<Key> = tokio::select! {
            changes = shared.view.service_changes() => {
                let mut keys: Vec<Key> = changes.services.into_iter().collect();
                for cluster in changes.clusters {
                    keys.extend(
                        shared
                            .view
                            .services(&cluster)
                            .iter()
                            .map(|s| (cluster.clone(), s.value.service_name.clone())),
                    );
                }
                keys
            }
            _ = level.tick() => {
                ticks += 1;
                let sweep = ticks % FULL_SWEEP_EVERY == 1;
                shared
                    .view
                    .all_services()
                    .into_iter()
                    .filter(|(cluster, name)| {
                        sweep
                            || shared
                                .view
                                .service(cluster, name)
                                .is_some_and(|s| awaits_time(&s.value))
                    })
                    .collect()
            }
        };
        for key in keys {
            schedule(&shared, &workers, &mine, key);
        }
    }
}

/// Runs a pass over the service, or asks the pass under way to run once more.
fn schedule(
    shared: &Shared,
    workers: &Arc<DashMap<Key, Arc<AtomicBool>>>,
    mine: &Arc<DashMap<String, ()>>,
    key: Key,
) {
    let again = match workers.entry(key.clone()) {
        dashmap::mapref::entry::Entry::Occupied(e) => {
            e.get().store(true, Ordering::Release);
            return;
        }
        dashmap::mapref::entry::Entry::Vacant(v) => {
            v.insert(Arc::new(AtomicBool::new(false))).clone()
        }
    };
    let (shared, workers, mine) = (shared.clone(), workers.clone(), mine.clone());
    let span = tracing::info_span!("service", cluster = %key.0, service = %key.1);
    tokio::spawn(
        async move {
            loop {
                again.store(false, Ordering::Release);
                pass(&shared, &mine, &key.0, &key.1).await;
                if again.load(Ordering::Acquire) {
                    // Changes keep coming (a step's tasks starting): gather them for a
                    // moment rather than decode the service's tasks once per batch.
                    tokio::time::sleep(PASS_SPACING).await;
                    continue;
                }
                if workers
                    .remove_if(&key, |_, flag| !flag.load(Ordering::Acquire))
                    .is_some()
                {
                    return;
                }
            }
        }
        .instrument(span),
    );
}

/// One look at a service: finish a step left behind, or plan and take the next one.
async fn pass(shared: &Shared, mine: &DashMap<String, ()>, cluster: &str, name: &str) {
    let Some(record) = shared.view.service(cluster, name) else {
        return;
    };
    if record.value.status == ServiceStatus::Inactive {
        return;
    }
    let now = berth_messages::now_epoch_seconds();
    if let Some(step) = &record.value.step {
        if mine.contains_key(&step.id) || now - step.started_at < STEP_TAKEOVER {
            return;
        }
        tracing::info!(step = %step.id, "taking over a step left unfinished");
        carry_out(shared, mine, cluster, &record.value, step.clone()).await;
        return;
    }
    let snapshot = snapshot(shared, cluster, &record, now);
    let Some(next) = plan(&snapshot) else {
        return;
    };
    let subject = subjects::service(cluster, name);
    let cause = format!(
        "{}{}",
        ids::INTERNAL_COMMAND_PREFIX,
        step_id(&next.service_arn, record.version)
    );
    match shared
        .journal
        .write(&subject, &next, record.version, &cause)
        .await
    {
        Ok(_) => {}
        Err(e) if e.is_conflict() => {
            tracing::debug!("another replica changed the service first");
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot write the service record");
            return;
        }
    }
    if let Some(step) = next.step.clone() {
        carry_out(shared, mine, cluster, &next, step).await;
    }
}

/// The facts a plan needs: the tasks of the service's live deployments and their
/// instances.
fn snapshot(shared: &Shared, cluster: &str, record: &Versioned<Service>, now: f64) -> Snapshot {
    let mut tasks = Vec::new();
    let mut instances: HashMap<String, InstanceFacts> = HashMap::new();
    for d in record.value.live_deployments() {
        for t in shared.view.deployment_tasks(cluster, &d.id) {
            if !instances.contains_key(&t.instance_id) {
                let active = shared
                    .view
                    .instance(cluster, &t.instance_id)
                    .is_some_and(|i| i.value.status == InstanceStatus::Active);
                instances.insert(t.instance_id.clone(), InstanceFacts { active });
            }
            tasks.push(TaskFacts {
                task_id: t.task_id,
                instance_id: t.instance_id,
                deployment_id: d.id.clone(),
                last: t.last,
                desired: t.desired,
                health: t.health.map(|h| h.as_str().to_string()),
                started_at: t.started_at,
                stop_code: t.stop_code,
            });
        }
    }
    let eligible = match record.value.scheduling_strategy {
        SchedulingStrategy::Daemon => daemon_instances(shared, cluster, &record.value),
        SchedulingStrategy::Replica => Vec::new(),
    };
    Snapshot {
        service: record.value.clone(),
        version: record.version,
        tasks,
        instances,
        eligible,
        now,
    }
}

/// The instances a DAEMON service runs on: ACTIVE, agent connected, satisfying the
/// service's and its task definition's memberOf constraints.
fn daemon_instances(shared: &Shared, cluster: &str, service: &Service) -> Vec<String> {
    let definition_constraints = service
        .primary()
        .and_then(|p| berth_messages::arn::task_definition_ref(&p.task_definition))
        .and_then(|r| shared.view.task_definition(&r.family, r.revision?))
        .map(|td| td.value.placement_constraints.clone())
        .unwrap_or_default();
    let all: Vec<_> = service
        .placement_constraints
        .iter()
        .chain(&definition_constraints)
        .cloned()
        .collect();
    let Ok(constraints) = berth_placement::constraints_from(&all) else {
        return Vec::new();
    };
    let groups = std::collections::BTreeMap::new();
    shared
        .view
        .instances(cluster)
        .iter()
        .filter(|i| i.value.status == InstanceStatus::Active && i.value.agent_connected)
        .filter(|i| {
            let candidate = berth_placement::Candidate::from_record(&i.value, &groups);
            constraints.iter().all(|c| match c {
                berth_placement::Constraint::MemberOf(expr) => {
                    berth_placement::evaluate(expr, &candidate)
                }
                berth_placement::Constraint::DistinctInstance => true,
            })
        })
        .map(|i| {
            arn::container_instance_id(&i.value.container_instance_arn)
                .1
                .to_string()
        })
        .collect()
}

/// What the commands of a step did.
#[derive(Default)]
struct StepResult {
    started: Vec<String>,
    stopped: Vec<String>,
    /// (reason, closest instance ARN) of tasks that could not be placed.
    unplaced: Vec<(String, Option<String>)>,
    errors: usize,
    /// A command whose outcome is unknown (a timeout, a server fault): it may still take
    /// effect, so the step stays in the record and is carried out again later.
    unknown: usize,
}

enum Effect {
    Started(TasksResponse),
    Stopped,
    Failed(ApiError),
}

/// Carries a step out and settles it.
async fn carry_out(
    shared: &Shared,
    mine: &DashMap<String, ()>,
    cluster: &str,
    service: &Service,
    step: ServiceStep,
) {
    mine.insert(step.id.clone(), ());
    let began = std::time::Instant::now();
    let result = effects(shared, cluster, service, &step).await;
    tracing::info!(
        step = %step.id,
        launches = step.launches.iter().map(|l| l.count).sum::<i64>(),
        stops = step.stops.len(),
        started = result.started.len(),
        unplaced = result.unplaced.len(),
        refused = result.errors,
        unknown = result.unknown,
        elapsed_ms = began.elapsed().as_millis() as u64,
        "service step carried out"
    );
    if result.unknown == 0 {
        settle(shared, cluster, &service.service_name, &step, result).await;
    } else {
        tracing::warn!(step = %step.id, unknown = result.unknown, "step left for the level pass to carry out again");
    }
    mine.remove(&step.id);
}

/// The default placement of a REPLICA service's tasks without a strategy of its own
/// (ECS): spread over availability zones, then over instances.
fn default_strategy() -> Vec<PlacementStrategy> {
    vec![
        PlacementStrategy {
            strategy_type: Some("spread".into()),
            field: Some("attribute:ecs.availability-zone".into()),
        },
        PlacementStrategy {
            strategy_type: Some("spread".into()),
            field: Some("instanceId".into()),
        },
    ]
}

async fn effects(
    shared: &Shared,
    cluster: &str,
    service: &Service,
    step: &ServiceStep,
) -> StepResult {
    let group = group_of(&service.service_name);
    let strategy = if service.placement_strategy.is_empty() {
        default_strategy()
    } else {
        service.placement_strategy.clone()
    };
    let mut calls: Vec<(Action, String, Vec<u8>)> = Vec::new();
    for (l, launch) in step.launches.iter().enumerate() {
        if !launch.container_instances.is_empty() {
            for (chunk, instances) in launch
                .container_instances
                .chunks(ids::MAX_TASKS_PER_COMMAND)
                .enumerate()
            {
                let request = StartTaskRequest {
                    cluster: Some(cluster.to_string()),
                    task_definition: launch.task_definition.clone(),
                    container_instances: instances.to_vec(),
                    started_by: Some(launch.deployment_id.clone()),
                    group: Some(group.clone()),
                    ..Default::default()
                };
                if let Ok(body) = codec::encode(Encoding::MsgPack, &request) {
                    calls.push((
                        Action::StartTask,
                        launch_command_id(&step.id, l, chunk),
                        body,
                    ));
                }
            }
            continue;
        }
        let mut left = launch.count;
        let mut chunk = 0;
        while left > 0 {
            let count = left.min(ids::MAX_TASKS_PER_COMMAND as i64);
            left -= count;
            let request = RunTaskRequest {
                cluster: Some(cluster.to_string()),
                task_definition: launch.task_definition.clone(),
                count: Some(count),
                started_by: Some(launch.deployment_id.clone()),
                group: Some(group.clone()),
                placement_constraints: service.placement_constraints.clone(),
                placement_strategy: strategy.clone(),
                launch_type: None,
                tags: if service.propagate_tags.as_deref() == Some("SERVICE") {
                    service.tags.clone()
                } else {
                    Vec::new()
                },
                ..Default::default()
            };
            if let Ok(body) = codec::encode(Encoding::MsgPack, &request) {
                calls.push((Action::RunTask, launch_command_id(&step.id, l, chunk), body));
            }
            chunk += 1;
        }
    }
    for (i, stop) in step.stops.iter().enumerate() {
        let request = StopTaskRequest {
            cluster: Some(cluster.to_string()),
            task: stop.task_id.clone(),
            reason: Some(stop.reason.clone()),
            stop_code: Some(StopCode::ServiceSchedulerInitiated),
        };
        if let Ok(body) = codec::encode(Encoding::MsgPack, &request) {
            calls.push((Action::StopTask, stop_command_id(&step.id, i), body));
        }
    }
    let outcomes: Vec<Effect> = futures::stream::iter(calls)
        .map(|(action, id, body)| async move {
            let reply = submit(shared, action, Encoding::MsgPack, &body, Some(&id)).await;
            let reply = match reply {
                // A server fault recorded as the command's outcome is final; one without
                // an outcome (a timeout) may still take effect.
                Err(e) if e.error_type == ErrorType::ServerException => {
                    match shared.journal.read_outcome(&id).await {
                        Ok(Some(_)) => Err(ApiError::client(e.message)),
                        _ => Err(e),
                    }
                }
                other => other,
            };
            match (action, reply) {
                (Action::RunTask, Ok(reply)) => {
                    match codec::decode::<TasksResponse>(Encoding::MsgPack, &reply.body) {
                        Ok(r) => Effect::Started(r),
                        Err(e) => Effect::Failed(ApiError::server(e.to_string())),
                    }
                }
                (_, Ok(_)) => Effect::Stopped,
                (_, Err(e)) => Effect::Failed(e),
            }
        })
        .buffer_unordered(STEP_CONCURRENCY)
        .collect()
        .await;
    let mut result = StepResult::default();
    for outcome in outcomes {
        match outcome {
            Effect::Started(r) => {
                result.started.extend(
                    r.tasks
                        .iter()
                        .map(|t| arn::task_id(&t.task_arn).1.to_string()),
                );
                result.unplaced.extend(
                    r.failures
                        .into_iter()
                        .map(|f| (f.reason.unwrap_or_default(), f.arn)),
                );
            }
            Effect::Stopped => {}
            Effect::Failed(e) if e.error_type == ErrorType::ConflictException => {
                // Carried out before with other parameters (the service changed since):
                // its effect stands.
            }
            Effect::Failed(e) if e.error_type == ErrorType::ServerException => {
                tracing::warn!(error = %e, "a command of a service step has no outcome yet");
                result.unknown += 1;
            }
            Effect::Failed(e) => {
                tracing::warn!(error = %e, "a command of a service step was refused");
                result.errors += 1;
            }
        }
    }
    result.stopped = step.stops.iter().map(|s| s.task_id.clone()).collect();
    result
}

fn task_list(ids: &[String]) -> String {
    let mut named: Vec<String> = ids
        .iter()
        .take(EVENT_TASKS)
        .map(|id| format!("(task {id})"))
        .collect();
    if ids.len() > EVENT_TASKS {
        named.push(format!("and {} more", ids.len() - EVENT_TASKS));
    }
    named.join(" ")
}

/// ECS's wording for a task that could not be placed.
fn placement_message(subject: &str, reason: &str, closest: Option<&str>) -> String {
    let prefix = format!(
        "{subject} was unable to place a task because no container instance met all of its requirements."
    );
    let closest = closest.map(|a| arn::container_instance_id(a).1.to_string());
    let what = match reason {
        "RESOURCE:CPU" => "has insufficient CPU units available.",
        "RESOURCE:MEMORY" => "has insufficient memory available.",
        "RESOURCE:PORTS" | "RESOURCE:PORTS_UDP" => "is already using a port required by your task.",
        "ATTRIBUTE" => "is missing an attribute required by your task.",
        "AGENT" => "encountered error \"AGENT\".",
        _ => "",
    };
    match (closest, what.is_empty()) {
        (Some(id), false) => format!(
            "{prefix} The closest matching (container-instance {id}) {what} For more information, see the Troubleshooting section."
        ),
        _ => format!("{prefix} Reason: {reason}. For more information, see the Troubleshooting section."),
    }
}

/// Clears the step from the record, with the events it produced.
async fn settle(
    shared: &Shared,
    cluster: &str,
    name: &str,
    step: &ServiceStep,
    result: StepResult,
) {
    let subject = subjects::service(cluster, name);
    let settle_id = format!("{}{}-settled", ids::INTERNAL_COMMAND_PREFIX, step.id);
    let written = shared
        .journal
        .update::<Service, std::convert::Infallible, _>(
            &subject,
            &settle_id,
            SETTLE_ATTEMPTS,
            |current| {
                let Some(current) = current else {
                    return Ok(None);
                };
                let mut s = current.value;
                if s.step.as_ref().is_none_or(|st| st.id != step.id) {
                    return Ok(None);
                }
                s.step = None;
                let now = berth_messages::now_epoch_seconds();
                let subject = s.event_subject();
                let mut n = 0;
                let mut say = |s: &mut Service, message: String| {
                    n += 1;
                    if let Some(newest) = s.events.first_mut() {
                        if newest.message == message {
                            newest.created_at = now;
                            return;
                        }
                    }
                    let id = ids::derived(&step.id, &format!("event-{n}"));
                    let id = format!(
                        "{}-{}-{}-{}-{}",
                        &id[0..8],
                        &id[8..12],
                        &id[12..16],
                        &id[16..20],
                        &id[20..32]
                    );
                    s.push_event(id, now, message);
                };
                if !result.stopped.is_empty() {
                    say(
                        &mut s,
                        format!(
                            "{subject} has stopped {} running tasks: {}.",
                            result.stopped.len(),
                            task_list(&result.stopped)
                        ),
                    );
                }
                if !result.started.is_empty() {
                    say(
                        &mut s,
                        format!(
                            "{subject} has started {} tasks: {}.",
                            result.started.len(),
                            task_list(&result.started)
                        ),
                    );
                }
                if let Some((reason, closest)) = result.unplaced.first() {
                    say(
                        &mut s,
                        placement_message(&subject, reason, closest.as_deref()),
                    );
                }
                if !result.unplaced.is_empty() || result.errors > 0 {
                    s.retry_launch_at = Some(now + PLACEMENT_RETRY);
                }
                Ok(Some(s))
            },
        )
        .await;
    match written {
        Ok(Some(w)) => {
            // The next pass plans from this record only once the view holds it.
            shared
                .view
                .wait_for(w.version, Duration::from_secs(10))
                .await;
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(error = %e, step = %step.id, "cannot settle the service step; the level pass takes it over")
        }
    }
}

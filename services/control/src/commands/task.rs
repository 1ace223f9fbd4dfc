//! Task commands. RunTask and StartTask decide on this replica's view, then commit each
//! placement with one conditional write on the chosen instance (through its actor,
//! which group-commits and re-validates on conflict), and only then create the task
//! record. Task ids derive from the command id, so a redelivered command finds what an
//! earlier attempt already placed or created instead of placing twice.

use super::taskdef::resolve_for_launch;
use super::Delivery;
use crate::actors::instance::{InstanceOp, InstanceOpError, OpDone, OpKind};
use crate::actors::task::{locate, release, TaskDone, TaskOp, TaskOpKind};
use crate::shared::{ExecResult, Metrics, Shared};
use berth_journal::Versioned;
use berth_messages::api::*;
use berth_messages::command::{CommandRequest, CommandResponse};
use berth_messages::model::*;
use berth_messages::{arn, ApiError};
use berth_placement::{
    constraints_from, strategies_from, Constraint, Demand, PlacementFailure, PlacementRequest,
    StrategyPlacer, MAX_CONSTRAINTS,
};
use futures::StreamExt;
use std::collections::HashSet;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

/// Placement rounds for tasks whose chosen instance refused (another scheduler won).
const PLACEMENT_ROUNDS: usize = 4;

/// Longest a placement promise waits for the view to show its allocation.
const PROMISE_WAIT: Duration = Duration::from_secs(5);

/// Everything needed to build the tasks of one launch.
struct Launch {
    cluster: String,
    command_id: String,
    /// See [`Delivery::fresh`]: its tasks are published without acknowledgement.
    fresh: bool,
    /// See [`Delivery::claim`].
    claim: u32,
    definition: Arc<Versioned<TaskDefinition>>,
    demand: Demand,
    group: String,
    started_by: Option<String>,
    overrides: TaskOverride,
    tags: Vec<Tag>,
}

impl Launch {
    fn build_task(
        &self,
        shared: &Shared,
        task_id: &str,
        instance_id: &str,
        allocation: &Allocation,
    ) -> ExecResult<Task> {
        let td = &self.definition.value;
        let task_arn = shared.arns.task(&self.cluster, task_id);
        let bindings = berth_placement::network_bindings(td, allocation).map_err(ApiError::from)?;
        let containers = td
            .container_definitions
            .iter()
            .map(|c| {
                let network_bindings: Vec<NetworkBinding> = bindings
                    .iter()
                    .filter(|(name, _)| *name == c.name)
                    .map(|(_, b)| b.clone())
                    .collect();
                let o = self
                    .overrides
                    .container_overrides
                    .iter()
                    .find(|o| o.name.as_deref() == Some(c.name.as_str()));
                Container {
                    health_status: c.health_check.as_ref().map(|_| health::UNKNOWN.into()),
                    container_arn: shared.arns.container(
                        &self.cluster,
                        task_id,
                        &crate::ids::derived(task_id, &c.name),
                    ),
                    task_arn: task_arn.clone(),
                    name: c.name.clone(),
                    image: c.image.clone(),
                    last_status: "PENDING".into(),
                    network_bindings,
                    cpu: Some(o.and_then(|o| o.cpu).unwrap_or(c.cpu).to_string()),
                    memory: o.and_then(|o| o.memory).or(c.memory).map(|m| m.to_string()),
                    memory_reservation: o
                        .and_then(|o| o.memory_reservation)
                        .or(c.memory_reservation)
                        .map(|m| m.to_string()),
                    ..Default::default()
                }
            })
            .collect();
        let health_status = td
            .container_definitions
            .iter()
            .any(|c| c.health_check.is_some())
            .then(|| health::UNKNOWN.to_string());
        Ok(Task {
            health_status,
            task_arn,
            cluster_arn: shared.arns.cluster(&self.cluster),
            task_definition_arn: td.task_definition_arn.clone(),
            container_instance_arn: shared.arns.container_instance(&self.cluster, instance_id),
            last_status: TaskStatus::Pending,
            desired_status: TaskStatus::Running,
            containers,
            overrides: self.overrides.clone(),
            group: self.group.clone(),
            started_by: self.started_by.clone(),
            created_at: berth_messages::now_epoch_seconds(),
            cpu: Some(self.demand.cpu.to_string()),
            memory: Some(self.demand.memory.to_string()),
            launch_type: "EC2".into(),
            tags: self.tags.clone(),
            // The group is the task's own field; only the instance's copy repeats it.
            allocation: Allocation {
                group: None,
                claim: None,
                ..allocation.clone()
            },
            ..Default::default()
        })
    }

    async fn create(
        &self,
        shared: &Shared,
        task_id: &str,
        instance_id: &str,
        allocation: &Allocation,
    ) -> ExecResult<TaskDone> {
        let task = self.build_task(shared, task_id, instance_id, allocation)?;
        let done = TaskOp::run(
            shared,
            &self.cluster,
            task_id,
            &self.command_id,
            TaskOpKind::Create {
                instance_id: instance_id.to_string(),
                task: Box::new(task),
                fresh: self.fresh,
                unique: self.claim > 1,
            },
        )
        .await?;
        if done.instance_id != instance_id {
            // Another delivery created the task elsewhere first: what this one allocated
            // here goes back.
            tracing::warn!(task = task_id, kept = %done.instance_id, released = instance_id, "task already created on another instance");
            release(
                shared,
                &self.cluster,
                instance_id,
                task_id,
                &self.command_id,
            )
            .await?;
        }
        Ok(done)
    }
}

fn presented(t: TaskDone) -> Task {
    t.task.value.presented(t.task.version)
}

/// On a redelivery, waits until the view holds everything the journal had, so that
/// writes of an earlier attempt are visible.
async fn catch_up(shared: &Shared) -> ExecResult<()> {
    let last = shared.journal.state_last_sequence().await?;
    shared.view.wait_for(last, Duration::from_secs(10)).await;
    Ok(())
}

/// A redelivery takes the command over: it fences the earlier claims off every instance
/// they could allocate on (each delivery allocates only on instances its view knew when
/// it began, and this one's view has caught up past that), then waits until its view
/// shows the fenced records, and with them any allocation an earlier claim made first.
async fn fence_earlier_claims(
    shared: &Shared,
    cluster: &str,
    d: &Delivery,
    instance_ids: impl IntoIterator<Item = String>,
) -> ExecResult<()> {
    let fences = instance_ids.into_iter().map(|instance_id| async move {
        let op = OpKind::Fence { claim: d.claim };
        match InstanceOp::run(shared, cluster, &instance_id, &d.command_id, op).await {
            Ok(done) => Ok(done.version),
            Err(InstanceOpError::Missing) => Ok(0),
            Err(e) => Err(e),
        }
    });
    let versions: Vec<_> = fences
        .collect::<futures::stream::FuturesUnordered<_>>()
        .collect()
        .await;
    let mut last = 0;
    for version in versions {
        last = last.max(version?);
    }
    shared.view.wait_for(last, Duration::from_secs(10)).await;
    Ok(())
}

/// What RunTask and StartTask ask beyond the definition.
struct LaunchParams {
    group: Option<String>,
    started_by: Option<String>,
    overrides: Option<TaskOverride>,
    tags: Vec<Tag>,
}

fn launch_for(
    cluster: String,
    d: &Delivery,
    definition: Arc<Versioned<TaskDefinition>>,
    p: LaunchParams,
) -> ExecResult<Launch> {
    let demand = berth_placement::demand_of(&definition.value, p.overrides.as_ref())
        .map_err(ApiError::from)?;
    let group = p
        .group
        .unwrap_or_else(|| format!("family:{}", definition.value.family));
    Ok(Launch {
        cluster,
        command_id: d.command_id.clone(),
        fresh: d.fresh,
        claim: d.claim,
        definition,
        demand,
        group,
        started_by: p.started_by,
        overrides: p.overrides.unwrap_or_default(),
        tags: p.tags,
    })
}

pub async fn run(
    shared: &Shared,
    d: &Delivery,
    r: RunTaskRequest,
) -> ExecResult<(CommandResponse, u64)> {
    let cluster = CommandRequest::RunTask(r.clone()).scope();
    super::active_cluster(shared, &cluster).await?;
    let definition = resolve_for_launch(shared, &r.task_definition).await?;
    let count = usize::try_from(r.count.unwrap_or(1)).unwrap_or(1);
    let combined: Vec<PlacementConstraint> = definition
        .value
        .placement_constraints
        .iter()
        .chain(&r.placement_constraints)
        .cloned()
        .collect();
    if combined.len() > MAX_CONSTRAINTS {
        return Err(ApiError::invalid(format!(
            "the task definition and the request have {} placement constraints together; at most {MAX_CONSTRAINTS}",
            combined.len()
        ))
        .into());
    }
    let constraints = constraints_from(&combined).map_err(ApiError::from)?;
    let strategies = strategies_from(&r.placement_strategy).map_err(ApiError::from)?;
    let distinct = constraints.contains(&Constraint::DistinctInstance);
    let launch = launch_for(
        cluster.clone(),
        d,
        definition,
        LaunchParams {
            group: r.group,
            started_by: r.started_by,
            overrides: r.overrides,
            tags: r.tags,
        },
    )?;
    // The instances this delivery may allocate on: those its view knows now. A later
    // delivery fences every instance its own view knows, which includes these.
    let known_slots = shared.view.with_pool(&cluster, |pool| pool.len());
    if d.redelivered {
        catch_up(shared).await?;
        let instances = shared.view.instances(&cluster);
        let ids = instances.iter().map(|i| {
            arn::container_instance_id(&i.value.container_instance_arn)
                .1
                .to_string()
        });
        fence_earlier_claims(shared, &cluster, d, ids).await?;
    }
    let task_ids: Vec<String> = (0..count)
        .map(|i| berth_messages::ids::run_task_id(&d.command_id, i))
        .collect();
    let mut done: Vec<Option<TaskDone>> = vec![None; count];
    let mut failures: Vec<Failure> = Vec::new();

    // What an earlier attempt of this command already created or allocated (a fresh
    // command has none: its task ids derive from an id minted for it).
    let earlier = if d.fresh {
        Vec::new()
    } else {
        shared.view.tasks_by_id(&cluster, &task_ids)
    };
    for (i, entry) in earlier.into_iter().enumerate() {
        if let Some(entry) = entry {
            done[i] = Some(TaskDone {
                instance_id: entry.instance_id.clone(),
                task: entry.task.clone(),
            });
        }
    }
    if d.redelivered {
        for instance in shared.view.instances(&cluster) {
            for (i, task_id) in task_ids.iter().enumerate() {
                if done[i].is_some() {
                    continue;
                }
                if let Some(allocation) = instance.value.allocations.get(task_id) {
                    let instance_id =
                        arn::container_instance_id(&instance.value.container_instance_arn)
                            .1
                            .to_string();
                    done[i] = Some(
                        launch
                            .create(shared, task_id, &instance_id, allocation)
                            .await?,
                    );
                }
            }
        }
    }

    let mut pending: Vec<usize> = (0..count).filter(|i| done[*i].is_none()).collect();
    // Instance ids that refused a task of this command (their record changed under us).
    let mut refused: HashSet<Arc<str>> = HashSet::new();
    let mut placer = StrategyPlacer::new();
    for round in 0..PLACEMENT_ROUNDS {
        if pending.is_empty() {
            break;
        }
        // One decision at a time per cluster in this replica, so that each sees the
        // promises of the one before (they are made inside it).
        let decisions = shared.reservations.decisions(&cluster);
        let one_at_a_time = decisions.lock().unwrap_or_else(PoisonError::into_inner);
        let decided = shared.view.with_pool(&cluster, |pool| {
            if pool.present() == 0 {
                return None;
            }
            let excluded: Vec<usize> = refused
                .iter()
                .filter_map(|id| pool.slot(id))
                .chain(known_slots..pool.len())
                .collect();
            // Strategies score instances alike for concurrent requests (binpack herds
            // them onto one instance): they see what is promised but not yet written.
            // Without strategies, promises name the instance writes under way, which the
            // draw among the best few joins (one group commit for several requests).
            let reserved = shared.reservations.of(&cluster);
            let request = PlacementRequest {
                demand: &launch.demand,
                count: pending.len(),
                group: &launch.group,
                constraints: &constraints,
                strategies: &strategies,
            };
            let mut placements =
                placer.place_in_pool_reserving(pool, &request, &excluded, &reserved);
            // Promises are best effort and can count a placement the pool already shows
            // (its write applied, its promise not yet ended): tasks they leave without room
            // are decided again without them, and the instance write still decides.
            let unplaced: Vec<usize> = (0..placements.len())
                .filter(|&i| placements[i].is_err())
                .collect();
            if !reserved.is_empty() && !unplaced.is_empty() {
                let again = PlacementRequest {
                    count: unplaced.len(),
                    ..request
                };
                let retried = placer.place_in_pool_reserving(pool, &again, &excluded, &[]);
                for (i, placement) in unplaced.into_iter().zip(retried) {
                    placements[i] = placement;
                }
            }
            Some(
                placements
                    .into_iter()
                    .map(|placement| {
                        // The instance actor computes the allocation again on its record.
                        placement.map(|p| {
                            let id = pool.id(p.instance_index).cloned().unwrap_or_default();
                            let arn = pool
                                .record(p.instance_index)
                                .map(|r| r.instance().container_instance_arn.clone())
                                .unwrap_or_default();
                            // Held until the instance write is answered, or with
                            // strategies until the task is written (the guard is
                            // dropped then).
                            let promise = shared.reservations.reserve(
                                &cluster,
                                p.instance_index,
                                launch.demand.cpu,
                                launch.demand.memory,
                            );
                            (id, arn, promise)
                        })
                    })
                    .collect::<Vec<_>>(),
            )
        });
        drop(one_at_a_time);
        let Some(placements) = decided else {
            if round == 0 && refused.is_empty() {
                return Err(ApiError::invalid(
                    "No Container Instances were found in your cluster.",
                )
                .into());
            }
            break;
        };
        let keep_promises = !strategies.is_empty();
        let attempts = pending.iter().zip(placements).map(|(&i, placement)| {
            let launch = &launch;
            let task_id = &task_ids[i];
            async move {
                let (instance_id, instance_arn, promise) = match placement {
                    Ok(instance) => instance,
                    Err(f) => return (i, Attempt::Failed(f.into())),
                };
                let op = OpKind::Allocate {
                    task_id: task_id.clone(),
                    demand: launch.demand.clone(),
                    group: launch.group.clone(),
                    require_active: true,
                    distinct,
                    claim: launch.claim,
                };
                let answer = InstanceOp::run(
                    shared,
                    &launch.cluster,
                    &instance_id,
                    &launch.command_id,
                    op,
                )
                .await;
                // With strategies the promise is kept until the task record is written and
                // the view shows the instance write that replaces it (it ends with this
                // block); without, it only marked the write under way.
                let promise = keep_promises.then_some(promise);
                match answer {
                    // The shared record is not kept across the next await, so that the
                    // instance actor can edit it in place.
                    Ok(OpDone {
                        allocation,
                        version,
                        ..
                    }) => match allocation {
                        Some(allocation) => {
                            let created = launch
                                .create(shared, task_id, &instance_id, &allocation)
                                .await;
                            if promise.is_some() {
                                // The promise ends once the view shows the allocation.
                                shared.view.wait_for(version, PROMISE_WAIT).await;
                            }
                            match created {
                                Ok(t) => (i, Attempt::Placed(Box::new(t))),
                                Err(e) => (i, Attempt::Error(e)),
                            }
                        }
                        None => (
                            i,
                            Attempt::Error(ApiError::server("allocation without result").into()),
                        ),
                    },
                    Err(InstanceOpError::Shortfall(s)) => (
                        i,
                        Attempt::Refused(instance_id, Failure::new(instance_arn, s.reason())),
                    ),
                    Err(InstanceOpError::Missing) => (
                        i,
                        Attempt::Refused(instance_id, Failure::new(instance_arn, "MISSING")),
                    ),
                    Err(InstanceOpError::SameGroup(group)) => {
                        let failure = PlacementFailure::distinct_instance(&instance_arn, &group);
                        (i, Attempt::Refused(instance_id, failure.into()))
                    }
                    Err(e) => (i, Attempt::Error(e.into())),
                }
            }
        });
        // Polled as each is woken (join_all polls all ten whenever one wakes).
        let results: Vec<_> = attempts
            .collect::<futures::stream::FuturesUnordered<_>>()
            .collect()
            .await;
        let mut next_pending = Vec::new();
        for (i, attempt) in results {
            match attempt {
                Attempt::Placed(t) => {
                    Metrics::inc(&shared.metrics.placements);
                    done[i] = Some(*t);
                }
                Attempt::Failed(f) => {
                    Metrics::inc(&shared.metrics.placement_failures);
                    failures.push(f);
                }
                Attempt::Refused(instance_id, f) => {
                    Metrics::inc(&shared.metrics.retries);
                    refused.insert(instance_id);
                    if round + 1 == PLACEMENT_ROUNDS {
                        failures.push(f);
                    } else {
                        next_pending.push(i);
                    }
                }
                Attempt::Error(e) => return Err(e),
            }
        }
        pending = next_pending;
    }
    let tasks: Vec<TaskDone> = done.into_iter().flatten().collect();
    let sequence = tasks.iter().map(|t| t.task.version).max().unwrap_or(0);
    Ok((
        CommandResponse::Tasks(TasksResponse {
            tasks: tasks.into_iter().map(presented).collect(),
            failures,
        }),
        sequence,
    ))
}

enum Attempt {
    Placed(Box<TaskDone>),
    Failed(Failure),
    /// The instance (by id) refused: its record changed since the decision.
    Refused(Arc<str>, Failure),
    Error(crate::shared::ExecError),
}

pub async fn start(
    shared: &Shared,
    d: &Delivery,
    r: StartTaskRequest,
) -> ExecResult<(CommandResponse, u64)> {
    let cluster = CommandRequest::StartTask(r.clone()).scope();
    super::active_cluster(shared, &cluster).await?;
    let definition = resolve_for_launch(shared, &r.task_definition).await?;
    let launch = launch_for(
        cluster.clone(),
        d,
        definition,
        LaunchParams {
            group: r.group,
            started_by: r.started_by,
            overrides: r.overrides,
            tags: r.tags,
        },
    )?;
    if d.redelivered {
        catch_up(shared).await?;
        let named = r
            .container_instances
            .iter()
            .map(|reference| arn::container_instance_id(reference).1.to_string());
        fence_earlier_claims(shared, &cluster, d, named).await?;
    }
    let mut tasks = Vec::new();
    let mut failures = Vec::new();
    for (i, reference) in r.container_instances.iter().enumerate() {
        let (in_arn, instance_id) = arn::container_instance_id(reference);
        if in_arn.is_some_and(|c| c != cluster) {
            return Err(ApiError::invalid(format!(
                "container instance {reference} is not in cluster {cluster}"
            ))
            .into());
        }
        let instance_arn = shared.arns.container_instance(&cluster, instance_id);
        let task_id = berth_messages::ids::start_task_id(&d.command_id, i);
        if let Some(entry) = shared.view.task(&cluster, &task_id) {
            tasks.push(TaskDone {
                instance_id: entry.instance_id.clone(),
                task: entry.task.clone(),
            });
            continue;
        }
        let op = OpKind::Allocate {
            task_id: task_id.clone(),
            demand: launch.demand.clone(),
            group: launch.group.clone(),
            require_active: true,
            distinct: false,
            claim: d.claim,
        };
        match InstanceOp::run(shared, &cluster, instance_id, &d.command_id, op).await {
            Ok(OpDone { allocation, .. }) => {
                let Some(allocation) = allocation else {
                    return Err(ApiError::server("allocation without result").into());
                };
                Metrics::inc(&shared.metrics.placements);
                tasks.push(
                    launch
                        .create(shared, &task_id, instance_id, &allocation)
                        .await?,
                );
            }
            Err(InstanceOpError::Missing) => {
                failures.push(Failure::new(instance_arn, reason::MISSING))
            }
            Err(InstanceOpError::Shortfall(s)) => {
                Metrics::inc(&shared.metrics.placement_failures);
                failures.push(Failure::new(instance_arn, s.reason()))
            }
            Err(e) => return Err(e.into()),
        }
    }
    let sequence = tasks.iter().map(|t| t.task.version).max().unwrap_or(0);
    Ok((
        CommandResponse::Tasks(TasksResponse {
            tasks: tasks.into_iter().map(presented).collect(),
            failures,
        }),
        sequence,
    ))
}

/// The task id of a request, checked against the request's cluster.
fn task_of(cluster: &str, reference: &str) -> Result<String, ApiError> {
    let (in_arn, id) = arn::task_id(reference);
    if in_arn.is_some_and(|c| c != cluster) {
        return Err(ApiError::invalid(format!(
            "task {reference} is not in cluster {cluster}"
        )));
    }
    Ok(id.to_string())
}

pub async fn stop(
    shared: &Shared,
    d: &Delivery,
    r: StopTaskRequest,
) -> ExecResult<(CommandResponse, u64)> {
    let cluster = CommandRequest::StopTask(r.clone()).scope();
    super::active_cluster(shared, &cluster).await?;
    let task_id = task_of(&cluster, &r.task)?;
    let instance_id = locate(shared, &cluster, &task_id).await?;
    // Without an instance (deregistered) no agent will ever report: stop at once.
    let agentless = shared
        .view
        .instance(&cluster, &instance_id)
        .is_none_or(|i| i.value.status == InstanceStatus::Inactive);
    let reason = r
        .reason
        .clone()
        .unwrap_or_else(|| "Task stopped by user".into());
    let stop_code = r.stop_code.unwrap_or(StopCode::UserInitiated);
    let change = Box::new(move |t: &mut Task| {
        let now = berth_messages::now_epoch_seconds();
        if t.desired_status != TaskStatus::Stopped {
            t.desired_status = TaskStatus::Stopped;
            t.stop_code.get_or_insert(stop_code);
            t.stopped_reason.get_or_insert_with(|| reason.clone());
            t.stopping_at.get_or_insert(now);
        }
        if agentless && t.last_status != TaskStatus::Stopped {
            t.last_status = TaskStatus::Stopped;
            t.stopped_at = Some(now);
            for c in &mut t.containers {
                c.last_status = "STOPPED".into();
            }
        }
        Ok(())
    });
    let done = TaskOp::run(
        shared,
        &cluster,
        &task_id,
        &d.command_id,
        TaskOpKind::Update(change),
    )
    .await?;
    let sequence = done.task.version;
    Ok((
        CommandResponse::Task(TaskResponse {
            task: presented(done),
        }),
        sequence,
    ))
}

fn container_rank(status: &str) -> u8 {
    match status {
        "PENDING" => 0,
        "RUNNING" => 1,
        "STOPPED" => 2,
        _ => 0,
    }
}

fn apply_container_change(
    c: &mut Container,
    status: Option<&str>,
    exit_code: Option<i32>,
    reason: Option<&str>,
    runtime_id: Option<&str>,
    bindings: &[NetworkBinding],
) {
    if let Some(s) = status {
        if container_rank(s) > container_rank(&c.last_status) {
            c.last_status = s.to_string();
        }
    }
    if exit_code.is_some() {
        c.exit_code = exit_code;
    }
    if let Some(r) = reason {
        c.reason = Some(r.chars().take(255).collect());
    }
    if let Some(id) = runtime_id {
        c.runtime_id = Some(id.to_string());
    }
    if !bindings.is_empty() {
        c.network_bindings = bindings.to_vec();
    }
}

pub async fn submit_task_state(
    shared: &Shared,
    d: &Delivery,
    r: SubmitTaskStateChangeRequest,
) -> ExecResult<(CommandResponse, u64)> {
    let cluster = CommandRequest::SubmitTaskStateChange(r.clone()).scope();
    super::active_cluster(shared, &cluster).await?;
    let task_id = task_of(&cluster, &r.task)?;
    let change = Box::new(move |t: &mut Task| {
        for change in &r.containers {
            let Some(name) = change.container_name.as_deref() else {
                continue;
            };
            let c = t
                .containers
                .iter_mut()
                .find(|c| c.name == name)
                .ok_or_else(|| {
                    ApiError::invalid(format!("the task has no container named {name}"))
                })?;
            apply_container_change(
                c,
                change.status.as_deref(),
                change.exit_code,
                change.reason.as_deref(),
                change.runtime_id.as_deref(),
                &change.network_bindings,
            );
        }
        let now = berth_messages::now_epoch_seconds();
        if let Some(t0) = r.pull_started_at {
            t.pull_started_at.get_or_insert(t0);
        }
        if let Some(t1) = r.pull_stopped_at {
            t.pull_stopped_at.get_or_insert(t1);
        }
        if let Some(status) = r.status {
            // lastStatus only moves forward; a late or repeated report changes nothing.
            if status > t.last_status {
                if status >= TaskStatus::Running
                    && t.last_status < TaskStatus::Running
                    && status != TaskStatus::Stopped
                {
                    t.started_at.get_or_insert(now);
                }
                t.last_status = status;
                if status >= TaskStatus::Stopping {
                    t.desired_status = TaskStatus::Stopped;
                }
                if status == TaskStatus::Stopped {
                    t.stopped_at = Some(now);
                    t.execution_stopped_at = Some(r.execution_stopped_at.unwrap_or(now));
                    for c in &mut t.containers {
                        c.last_status = "STOPPED".into();
                    }
                    if t.stop_code.is_none() {
                        t.stop_code = Some(r.stop_code.unwrap_or(if t.started_at.is_none() {
                            StopCode::TaskFailedToStart
                        } else {
                            StopCode::EssentialContainerExited
                        }));
                    }
                    if t.stopped_reason.is_none() {
                        t.stopped_reason = r
                            .reason
                            .clone()
                            .or_else(|| Some("Essential container in task exited".into()));
                    }
                }
            }
        }
        Ok(())
    });
    acknowledged_update(shared, d, &cluster, &task_id, change).await
}

/// Applies an agent's report to its task and acknowledges it as ECS does.
async fn acknowledged_update(
    shared: &Shared,
    d: &Delivery,
    cluster: &str,
    task_id: &str,
    change: crate::actors::task::TaskChange,
) -> ExecResult<(CommandResponse, u64)> {
    let done = TaskOp::run(
        shared,
        cluster,
        task_id,
        &d.command_id,
        TaskOpKind::Update(change),
    )
    .await?;
    Ok((
        CommandResponse::Acknowledgment(AcknowledgmentResponse {
            acknowledgment: "ACK".into(),
        }),
        done.task.version,
    ))
}

pub async fn submit_container_state(
    shared: &Shared,
    d: &Delivery,
    r: SubmitContainerStateChangeRequest,
) -> ExecResult<(CommandResponse, u64)> {
    let cluster = CommandRequest::SubmitContainerStateChange(r.clone()).scope();
    super::active_cluster(shared, &cluster).await?;
    let task_id = task_of(&cluster, &r.task)?;
    let view = shared.view.clone();
    let change = Box::new(move |t: &mut Task| {
        let c = t
            .containers
            .iter_mut()
            .find(|c| c.name == r.container_name)
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "the task has no container named {}",
                    r.container_name
                ))
            })?;
        apply_container_change(
            c,
            r.status.as_deref(),
            r.exit_code,
            r.reason.as_deref(),
            r.runtime_id.as_deref(),
            &r.network_bindings,
        );
        if let Some(status) = &r.health_status {
            c.health_status = Some(status.clone());
            let definition = arn::task_definition_ref(&t.task_definition_arn)
                .and_then(|d| view.task_definition(&d.family, d.revision?));
            // Without its definition every container with a health check counts.
            let essential = |name: &str| {
                definition.as_ref().is_none_or(|d| {
                    d.value
                        .container_definitions
                        .iter()
                        .find(|c| c.name == name)
                        .is_none_or(|c| c.is_essential())
                })
            };
            t.health_status = t.aggregate_health(essential).map(String::from);
        }
        Ok(())
    });
    acknowledged_update(shared, d, &cluster, &task_id, change).await
}

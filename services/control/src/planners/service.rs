//! The service scheduler's decision, pure: given a service record and the facts about
//! its tasks (and their instances) at one moment, the next record, whose `step` (if any)
//! holds the tasks to launch and to stop. The caller writes that record conditionally on
//! the version it planned from, then carries the step out (`crate::services`).
//!
//! ECS's rolling rules: at most `maximumPercent` of the desired count non-stopped (rounded
//! down), at least `minimumHealthyPercent` healthy (rounded up) while tasks are stopped
//! for a deployment, a drain or a scale-in. A task is healthy when it is RUNNING, still
//! meant to run, and HEALTHY where its containers have a health check (no fixed wait for
//! tasks without one). Tasks on DRAINING (or gone) instances are replaced, start first
//! where the maximum allows; UNHEALTHY tasks past the grace period are stopped and
//! replaced. A task of a deployment that stops for any reason but the scheduler's own or a
//! user's StopTask counts as failed (the circuit breaker), and one that never ran counts
//! towards the restart throttle.

use berth_messages::model::{health, StopCode, TaskStatus};
use berth_messages::service::*;
use std::collections::{HashMap, HashSet};

/// A service task as the planner sees it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TaskFacts {
    pub task_id: String,
    pub instance_id: String,
    pub deployment_id: String,
    pub last: TaskStatus,
    pub desired: TaskStatus,
    /// The task's aggregated health; `None` without health checks.
    pub health: Option<String>,
    pub started_at: Option<f64>,
    pub stop_code: Option<StopCode>,
}

impl TaskFacts {
    fn is_live(&self) -> bool {
        self.last != TaskStatus::Stopped
    }

    fn is_active(&self) -> bool {
        self.is_live() && self.desired == TaskStatus::Running
    }

    fn is_healthy(&self) -> bool {
        self.is_active()
            && self.last == TaskStatus::Running
            && self.health.as_deref().is_none_or(|h| h == health::HEALTHY)
    }
}

/// What the planner needs of a task's instance.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InstanceFacts {
    /// ACTIVE (placement may use it); DRAINING or deregistered instances are not.
    pub active: bool,
}

/// Everything one decision looks at.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub service: Service,
    /// The journal version of `service` (event ids derive from it).
    pub version: u64,
    /// Tasks of the service's live deployments, stopped ones included.
    pub tasks: Vec<TaskFacts>,
    /// The instances of those tasks; a missing one is gone.
    pub instances: HashMap<String, InstanceFacts>,
    /// DAEMON: the instances that should run one task each (ACTIVE, agent connected,
    /// satisfying the constraints), by id.
    pub eligible: Vec<String>,
    pub now: f64,
}

/// Failed tasks kept per deployment to count each once (the breaker's largest threshold).
pub const MAX_COUNTED_FAILURES: usize = 200;
/// Tasks that never ran, in a row, before the restart throttle holds launches back.
pub const THROTTLE_AFTER: i64 = 3;
/// First throttle delay in seconds (doubling per further failure).
pub const THROTTLE_BASE: f64 = 5.0;
/// Longest throttle delay in seconds (ECS: up to 15 minutes).
pub const THROTTLE_MAX: f64 = 900.0;
/// Seconds after its completion during which a deployment's circuit breaker still
/// counts failures, and after which its task definition is the one a later breaker rolls
/// back to.
pub const BREAKER_WATCH: f64 = 10.0;
/// ECS repeats the steady-state event at most this often, in seconds.
pub const STEADY_REPEAT: f64 = 6.0 * 3600.0;

pub fn throttle_delay(start_failures: i64) -> f64 {
    let doublings = (start_failures - THROTTLE_AFTER).clamp(0, 20);
    (THROTTLE_BASE * f64::from(1u32 << doublings)).min(THROTTLE_MAX)
}

struct Events<'a> {
    service: &'a mut Service,
    base: String,
    now: f64,
    made: usize,
}

impl Events<'_> {
    /// Adds an event, or refreshes the newest one when it says the same (no flood).
    fn say(&mut self, message: String) {
        if let Some(newest) = self.service.events.first_mut() {
            if newest.message == message {
                newest.created_at = self.now;
                return;
            }
        }
        self.made += 1;
        let id = uuid_like(&self.base, self.made);
        self.service.push_event(id, self.now, message);
    }
}

fn uuid_like(base: &str, n: usize) -> String {
    let h = berth_messages::ids::derived(base, &format!("event-{n}"));
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// What one strategy decided for a step.
struct Decision {
    launches: Vec<StepLaunch>,
    stops: Vec<StepStop>,
    /// Tasks to launch were held back by the bounds (not by a throttle or a failure).
    blocked: bool,
    /// Every task the service needs is in place and healthy, and no other is left.
    complete: bool,
    /// The desired count the strategy sets (DAEMON: one per eligible instance).
    desired: Option<i64>,
}

/// The next record of the service, `None` when nothing is to change.
pub fn plan(snap: &Snapshot) -> Option<Service> {
    let original = &snap.service;
    if original.step.is_some() || original.status == ServiceStatus::Inactive {
        return None;
    }
    let mut s = original.clone();
    let now = snap.now;
    let subject = s.event_subject();
    let base = format!("{}/{}", s.service_arn, snap.version);
    let mut events = Events {
        base: base.clone(),
        service: &mut s,
        now,
        made: 0,
    };
    count_failures(&mut events, &snap.tasks);
    trip_breaker(&mut events);
    let mut health_failures: Vec<(String, String)> = Vec::new();
    let decision = match events.service.scheduling_strategy {
        SchedulingStrategy::Replica => replica(events.service, snap, &mut health_failures),
        SchedulingStrategy::Daemon => daemon(events.service, snap, &mut health_failures),
    };
    for (deployment, task) in health_failures {
        if let Some(d) = events
            .service
            .deployments
            .iter_mut()
            .find(|d| d.id == deployment)
        {
            if !d.failed_task_ids.contains(&task) && d.failed_task_ids.len() < MAX_COUNTED_FAILURES
            {
                d.failed_task_ids.push(task);
                d.failed_tasks += 1;
            }
        }
    }
    if let Some(desired) = decision.desired {
        events.service.desired_count = desired;
        if let Some(p) = events.service.primary_mut() {
            p.desired_count = desired;
        }
    }
    if decision.blocked {
        events.say(format!(
            "{subject} was unable to stop or start tasks during a deployment because of the service deployment configuration. Update the minimumHealthyPercent or maximumPercent value and try again."
        ));
    }

    // Deployments whose tasks are all gone become INACTIVE; a primary with every task
    // in place and healthy, and nothing else left, has COMPLETED.
    let live_of = |id: &str| {
        snap.tasks
            .iter()
            .filter(|t| t.is_live() && t.deployment_id == id)
            .count()
    };
    let settled = decision.launches.is_empty() && decision.stops.is_empty();
    events
        .service
        .deployments
        .retain(|d| d.status == DeploymentStatus::Primary || live_of(&d.id) > 0);
    let others_gone = events
        .service
        .deployments
        .iter()
        .all(|d| d.status == DeploymentStatus::Primary);
    let steady = settled && others_gone && decision.complete;
    if steady {
        let primary_td = events.service.primary().map(|p| p.task_definition.clone());
        if let Some(p) = events.service.primary_mut() {
            if p.rollout_state == RolloutState::InProgress {
                p.rollout_state = RolloutState::Completed;
                p.rollout_state_reason = Some(format!("ECS deployment {} completed.", p.id));
                p.updated_at = now;
                p.start_failures = 0;
                p.throttled_until = None;
                let id = p.id.clone();
                events.say(format!("{subject} ({id}) deployment completed."));
            }
        }
        // Past the breaker's watch, the completed deployment is the one to roll back to.
        let watched = events
            .service
            .primary()
            .is_some_and(|p| breaker_armed(p, now));
        if !watched && events.service.stable_task_definition != primary_td {
            events.service.stable_task_definition = primary_td;
        }
        let repeat = events
            .service
            .steady_since
            .is_none_or(|since| now - since >= STEADY_REPEAT);
        if repeat && events.service.status == ServiceStatus::Active {
            events.service.steady_since = Some(now);
            events.say(format!("{subject} has reached a steady state."));
        }
    } else if !settled {
        events.service.steady_since = None;
    }
    let s = events.service;
    let live = snap.tasks.iter().filter(|t| t.is_live()).count();
    if s.status == ServiceStatus::Draining && live == 0 && settled {
        s.status = ServiceStatus::Inactive;
        s.deployments.clear();
    }
    if !settled {
        s.retry_launch_at = None;
        let ceiling = match s.scheduling_strategy {
            SchedulingStrategy::Replica if s.status == ServiceStatus::Active => s.bounds().ceiling,
            SchedulingStrategy::Replica => 0,
            SchedulingStrategy::Daemon => s.desired_count,
        };
        s.step = Some(ServiceStep {
            id: step_id(&s.service_arn, snap.version),
            started_at: now,
            ceiling,
            launches: decision.launches,
            stops: decision.stops,
        });
    }
    (s != original).then(|| s.clone())
}

/// UNHEALTHY tasks past the grace period: stopped (and replaced), each a failure of its
/// deployment (pushed to `failures`).
fn unhealthy_stops<'a>(
    s: &Service,
    snap: &'a Snapshot,
    failures: &mut Vec<(String, String)>,
) -> (Vec<StepStop>, HashSet<&'a str>) {
    let grace = s.health_check_grace_period_seconds.unwrap_or(0) as f64;
    let mut stops = Vec::new();
    let mut stopped = HashSet::new();
    for t in snap.tasks.iter().filter(|t| t.is_active()) {
        let unhealthy = t.health.as_deref() == Some(health::UNHEALTHY)
            && t.started_at.is_none_or(|at| snap.now - at >= grace);
        if unhealthy {
            stops.push(StepStop {
                task_id: t.task_id.clone(),
                reason: "Task failed container health checks".into(),
            });
            stopped.insert(t.task_id.as_str());
            failures.push((t.deployment_id.clone(), t.task_id.clone()));
        }
    }
    (stops, stopped)
}

/// Whether the primary may launch now (not FAILED, not throttled, not waiting to retry
/// a placement).
fn launch_held(s: &Service, now: f64) -> bool {
    s.primary().is_none_or(|p| {
        p.rollout_state == RolloutState::Failed
            || p.throttled_until.is_some_and(|until| until > now)
    }) || s.retry_launch_at.is_some_and(|at| at > now)
}

fn scaling_reason(s: &Service) -> String {
    format!(
        "Scaling activity initiated by (deployment {})",
        s.primary().map(|p| p.id.as_str()).unwrap_or_default()
    )
}

/// REPLICA: keep the desired count of the primary's tasks within the bounds.
fn replica(s: &Service, snap: &Snapshot, failures: &mut Vec<(String, String)>) -> Decision {
    let now = snap.now;
    let desired = if s.status == ServiceStatus::Draining {
        0
    } else {
        s.desired_count
    };
    let bounds = if s.status == ServiceStatus::Draining {
        Bounds {
            floor: 0,
            ceiling: 0,
        }
    } else {
        s.bounds()
    };
    let primary = s.primary();
    let instance_active = |id: &str| snap.instances.get(id).is_some_and(|i| i.active);
    let live = snap.tasks.iter().filter(|t| t.is_live()).count() as i64;
    let (mut stops, stopped) = unhealthy_stops(s, snap, failures);

    // Tasks to keep (the primary's, on usable instances) and tasks to retire.
    let primary_id = primary.map(|p| p.id.as_str()).unwrap_or_default();
    let per_instance = {
        let mut m: HashMap<&str, i64> = HashMap::new();
        for t in snap.tasks.iter().filter(|t| t.is_active()) {
            *m.entry(t.instance_id.as_str()).or_default() += 1;
        }
        m
    };
    let mut keep: Vec<&TaskFacts> = Vec::new();
    let mut retire: Vec<&TaskFacts> = Vec::new();
    for t in snap.tasks.iter().filter(|t| t.is_active()) {
        if stopped.contains(t.task_id.as_str()) {
            continue;
        }
        if t.deployment_id == primary_id && instance_active(&t.instance_id) {
            keep.push(t);
        } else {
            retire.push(t);
        }
    }
    // Scale-in: the excess of the primary's tasks goes, the least useful first (not yet
    // healthy, then on the instance with the most tasks of the service).
    let order = |a: &&TaskFacts, b: &&TaskFacts| {
        a.is_healthy()
            .cmp(&b.is_healthy())
            .then_with(|| {
                per_instance[b.instance_id.as_str()].cmp(&per_instance[a.instance_id.as_str()])
            })
            .then_with(|| a.task_id.cmp(&b.task_id))
    };
    if keep.len() as i64 > desired {
        keep.sort_by(order);
        let excess = keep.len() - desired.max(0) as usize;
        retire.extend(keep.drain(..excess));
    }

    let held = launch_held(s, now);
    let want = (desired - keep.len() as i64).max(0);
    let room = (bounds.ceiling - live).max(0);
    let launch = if held { 0 } else { want.min(room) };

    // Stops of retired tasks: those not healthy at once, healthy ones down to the floor.
    let healthy = snap
        .tasks
        .iter()
        .filter(|t| t.is_healthy() && !stopped.contains(t.task_id.as_str()))
        .count() as i64;
    let mut allowed = healthy - bounds.floor;
    retire.sort_by(order);
    let reason = scaling_reason(s);
    let mut retired_blocked = 0;
    for t in &retire {
        if t.is_healthy() {
            if allowed <= 0 {
                retired_blocked += 1;
                continue;
            }
            allowed -= 1;
        }
        stops.push(StepStop {
            task_id: t.task_id.clone(),
            reason: reason.clone(),
        });
    }
    let launches = match (primary, launch > 0) {
        (Some(p), true) => vec![StepLaunch {
            deployment_id: p.id.clone(),
            task_definition: p.task_definition.clone(),
            count: launch,
            container_instances: Vec::new(),
        }],
        _ => Vec::new(),
    };
    let blocked = launch == 0 && stops.is_empty() && ((want > 0 && !held) || retired_blocked > 0);
    let complete =
        keep.len() as i64 == desired && keep.iter().all(|t| t.is_healthy()) && live == desired;
    Decision {
        launches,
        stops,
        blocked,
        complete,
        desired: None,
    }
}

/// DAEMON: one task of the primary on every eligible instance (ACTIVE, connected,
/// satisfying the constraints); a task elsewhere, an extra one on an instance, or one of
/// an older deployment is stopped (DAEMON's defaults: minimum 0%, maximum 100%, so a
/// new deployment stops the old task of an instance before it starts the new one).
fn daemon(s: &Service, snap: &Snapshot, failures: &mut Vec<(String, String)>) -> Decision {
    let draining = s.status == ServiceStatus::Draining;
    let eligible: HashSet<&str> = if draining {
        HashSet::new()
    } else {
        snap.eligible.iter().map(String::as_str).collect()
    };
    let (mut stops, stopped) = unhealthy_stops(s, snap, failures);
    let primary = s.primary();
    let primary_id = primary.map(|p| p.id.as_str()).unwrap_or_default();
    let reason = scaling_reason(s);
    let mut occupied: HashSet<&str> = HashSet::new();
    let mut in_place = 0;
    let mut healthy_in_place = 0;
    let mut active: Vec<&TaskFacts> = snap.tasks.iter().filter(|t| t.is_active()).collect();
    // The primary's tasks first, so that they are the ones an instance keeps.
    active.sort_by_key(|t| (t.deployment_id != primary_id, t.task_id.clone()));
    for t in active {
        if stopped.contains(t.task_id.as_str()) {
            continue;
        }
        let keep = t.deployment_id == primary_id
            && eligible.contains(t.instance_id.as_str())
            && !occupied.contains(t.instance_id.as_str());
        if keep {
            occupied.insert(&t.instance_id);
            in_place += 1;
            healthy_in_place += usize::from(t.is_healthy());
        } else {
            stops.push(StepStop {
                task_id: t.task_id.clone(),
                reason: reason.clone(),
            });
        }
    }
    // An instance takes the new task once nothing of the service is left on it.
    let busy: HashSet<&str> = snap
        .tasks
        .iter()
        .filter(|t| t.is_live())
        .map(|t| t.instance_id.as_str())
        .collect();
    let mut targets: Vec<String> = eligible
        .iter()
        .filter(|id| !busy.contains(*id))
        .map(|id| id.to_string())
        .collect();
    targets.sort();
    // maximumPercent holds for daemons too: while tasks that are going (drained
    // hosts, extra ones, an older deployment's) still run, the new ones wait.
    let live = snap.tasks.iter().filter(|t| t.is_live()).count();
    let ceiling = if draining {
        0
    } else {
        Bounds::of(
            SchedulingStrategy::Daemon,
            eligible.len() as i64,
            &s.deployment_configuration,
        )
        .ceiling
    };
    let room = usize::try_from(ceiling).unwrap_or(0).saturating_sub(live);
    targets.truncate(room);
    if launch_held(s, snap.now) {
        targets.clear();
    }
    let launches = match (primary, targets.is_empty()) {
        (Some(p), false) => vec![StepLaunch {
            deployment_id: p.id.clone(),
            task_definition: p.task_definition.clone(),
            count: targets.len() as i64,
            container_instances: targets,
        }],
        _ => Vec::new(),
    };
    Decision {
        launches,
        stops,
        blocked: false,
        complete: in_place == eligible.len() && healthy_in_place == in_place && live == in_place,
        desired: (!draining).then_some(eligible.len() as i64),
    }
}

/// Counts each newly stopped failed task of a live deployment once; those that never
/// ran feed the restart throttle.
fn count_failures(events: &mut Events<'_>, tasks: &[TaskFacts]) {
    let now = events.now;
    let subject = events.service.event_subject();
    let mut throttled = false;
    for d in events.service.deployments.iter_mut() {
        for t in tasks.iter().filter(|t| t.deployment_id == d.id) {
            let failed = t.last == TaskStatus::Stopped
                && !matches!(
                    t.stop_code,
                    Some(StopCode::UserInitiated | StopCode::ServiceSchedulerInitiated)
                );
            if !failed
                || d.failed_task_ids.contains(&t.task_id)
                || d.failed_task_ids.len() >= MAX_COUNTED_FAILURES
            {
                continue;
            }
            d.failed_task_ids.push(t.task_id.clone());
            d.failed_tasks += 1;
            if t.started_at.is_none() {
                d.start_failures += 1;
                if d.start_failures >= THROTTLE_AFTER {
                    d.throttled_until = Some(now + throttle_delay(d.start_failures));
                    throttled = true;
                }
            }
        }
    }
    if throttled {
        events.say(format!(
            "{subject} is unable to consistently start tasks successfully. For more information, see the Troubleshooting section of the Amazon ECS Developer Guide."
        ));
    }
}

/// Whether the circuit breaker watches a deployment: until it COMPLETED, and for
/// [`BREAKER_WATCH`] seconds after (a deployment completes as soon as its tasks are
/// healthy, with no fixed wait, so tasks that crash right after starting still count).
fn breaker_armed(d: &Deployment, now: f64) -> bool {
    match d.rollout_state {
        RolloutState::InProgress => true,
        RolloutState::Completed => now - d.updated_at < BREAKER_WATCH,
        RolloutState::Failed => false,
    }
}

/// Trips the circuit breaker of an IN_PROGRESS primary that failed too often, and rolls
/// back to the last COMPLETED task definition when asked to.
fn trip_breaker(events: &mut Events<'_>) {
    let now = events.now;
    let s = &mut *events.service;
    let Some(breaker) = s.deployment_configuration.deployment_circuit_breaker else {
        return;
    };
    if !breaker.enable {
        return;
    }
    let threshold = circuit_breaker_threshold(s.desired_count);
    let Some(p) = s.primary_mut() else { return };
    if !breaker_armed(p, now) || p.failed_tasks < threshold {
        return;
    }
    p.rollout_state = RolloutState::Failed;
    p.rollout_state_reason = Some("ECS deployment circuit breaker: tasks failed to start.".into());
    p.updated_at = now;
    let failed_id = p.id.clone();
    let failed_td = p.task_definition.clone();
    let subject = s.event_subject();
    let rollback_to = s
        .stable_task_definition
        .clone()
        .filter(|td| breaker.rollback && *td != failed_td);
    events.say(format!(
        "{subject} ({failed_id}) deployment failed: tasks failed to start."
    ));
    if let Some(td) = rollback_to {
        let id = events.service.start_deployment(&td, now);
        events.say(format!(
            "{subject} rolling back to {id} with task definition {td}."
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARN: &str = "arn:aws:ecs:local:0:service/c/web";

    fn service(desired: i64, max: i64, min: i64) -> Service {
        let mut s = Service {
            service_arn: ARN.into(),
            service_name: "web".into(),
            status: ServiceStatus::Active,
            desired_count: desired,
            deployment_configuration: DeploymentConfiguration {
                maximum_percent: Some(max),
                minimum_healthy_percent: Some(min),
                deployment_circuit_breaker: Some(DeploymentCircuitBreaker {
                    enable: true,
                    rollback: true,
                }),
            },
            ..Default::default()
        };
        s.start_deployment("td:1", 0.0);
        s
    }

    fn running(id: &str, deployment: &str, instance: &str) -> TaskFacts {
        TaskFacts {
            task_id: id.into(),
            instance_id: instance.into(),
            deployment_id: deployment.into(),
            last: TaskStatus::Running,
            desired: TaskStatus::Running,
            started_at: Some(1.0),
            ..Default::default()
        }
    }

    fn snapshot(service: Service, tasks: Vec<TaskFacts>) -> Snapshot {
        let mut instances = HashMap::new();
        for t in &tasks {
            instances.insert(t.instance_id.clone(), InstanceFacts { active: true });
        }
        Snapshot {
            service,
            version: 7,
            tasks,
            instances,
            eligible: Vec::new(),
            now: 100.0,
        }
    }

    fn primary_id(s: &Service) -> String {
        s.primary().unwrap().id.clone()
    }

    fn step(next: &Service) -> &ServiceStep {
        next.step.as_ref().expect("a step")
    }

    fn launched(next: &Service) -> i64 {
        step(next).launches.iter().map(|l| l.count).sum()
    }

    #[test]
    fn a_new_service_launches_its_desired_count() {
        let next = plan(&snapshot(service(3, 200, 100), vec![])).unwrap();
        assert_eq!(launched(&next), 3);
        assert_eq!(step(&next).id, step_id(ARN, 7));
        assert!(step(&next).stops.is_empty());
    }

    #[test]
    fn a_stopped_task_is_replaced_and_counted_as_failed() {
        let s = service(2, 200, 100);
        let d = primary_id(&s);
        let mut dead = running("t2", &d, "i1");
        dead.last = TaskStatus::Stopped;
        dead.desired = TaskStatus::Stopped;
        dead.stop_code = Some(StopCode::EssentialContainerExited);
        let next = plan(&snapshot(s, vec![running("t1", &d, "i1"), dead])).unwrap();
        assert_eq!(launched(&next), 1);
        assert_eq!(next.primary().unwrap().failed_tasks, 1);
        // A user's StopTask is replaced but is no failure.
        let s = service(2, 200, 100);
        let d = primary_id(&s);
        let mut stopped = running("t2", &d, "i1");
        stopped.last = TaskStatus::Stopped;
        stopped.stop_code = Some(StopCode::UserInitiated);
        let next = plan(&snapshot(s, vec![running("t1", &d, "i1"), stopped])).unwrap();
        assert_eq!(launched(&next), 1);
        assert_eq!(next.primary().unwrap().failed_tasks, 0);
    }

    #[test]
    fn a_steady_service_completes_once_then_rests() {
        let s = service(2, 200, 100);
        let d = primary_id(&s);
        let tasks = vec![running("t1", &d, "i1"), running("t2", &d, "i2")];
        let next = plan(&snapshot(s, tasks.clone())).unwrap();
        assert!(next.step.is_none());
        assert_eq!(
            next.primary().unwrap().rollout_state,
            RolloutState::Completed
        );
        assert_eq!(
            next.events[0].message,
            "(service web) has reached a steady state."
        );
        assert!(next.events[1].message.ends_with("deployment completed."));
        // Rolled back to only once the breaker's watch is over.
        assert_eq!(next.stable_task_definition, None);
        // Nothing to do on the next look, until six hours pass.
        let mut again = snapshot(next.clone(), tasks);
        assert!(plan(&again).is_none());
        again.now += STEADY_REPEAT;
        let repeated = plan(&again).unwrap();
        assert_eq!(repeated.stable_task_definition.as_deref(), Some("td:1"));
        assert_eq!(repeated.events.len(), next.events.len());
        assert_eq!(repeated.events[0].created_at, again.now);
    }

    #[test]
    fn rolling_deployment_respects_both_bounds() {
        // desired 4, min 50, max 200: start 4 and stop 2 at once.
        let mut s = service(4, 200, 50);
        let old = primary_id(&s);
        s.start_deployment("td:2", 1.0);
        let tasks: Vec<TaskFacts> = (0..4)
            .map(|i| running(&format!("o{i}"), &old, &format!("i{i}")))
            .collect();
        let next = plan(&snapshot(s.clone(), tasks.clone())).unwrap();
        assert_eq!(launched(&next), 4);
        assert_eq!(step(&next).stops.len(), 2);
        // min 100, max 200: start first, stop nothing while the new ones are not healthy.
        let mut s100 = s.clone();
        s100.deployment_configuration.minimum_healthy_percent = Some(100);
        let next = plan(&snapshot(s100.clone(), tasks.clone())).unwrap();
        assert_eq!(launched(&next), 4);
        assert!(step(&next).stops.is_empty());
        // Once the new tasks run, the old ones go, and not below the floor.
        let new = primary_id(&s100);
        let mut both = tasks.clone();
        both.extend((0..4).map(|i| running(&format!("n{i}"), &new, &format!("i{i}"))));
        let next = plan(&snapshot(s100.clone(), both)).unwrap();
        assert_eq!(launched(&next), 0);
        assert_eq!(step(&next).stops.len(), 4);
        // min 100, max 100: stuck, and it says so.
        let mut stuck = s;
        stuck.deployment_configuration.maximum_percent = Some(100);
        stuck.deployment_configuration.minimum_healthy_percent = Some(100);
        let next = plan(&snapshot(stuck, tasks)).unwrap();
        assert!(next.step.is_none());
        assert!(next.events[0]
            .message
            .contains("unable to stop or start tasks"));
    }

    #[test]
    fn tasks_on_draining_instances_are_replaced_start_first() {
        let s = service(2, 200, 100);
        let d = primary_id(&s);
        let mut snap = snapshot(s, vec![running("t1", &d, "i1"), running("t2", &d, "i2")]);
        snap.instances
            .insert("i2".into(), InstanceFacts { active: false });
        let next = plan(&snap).unwrap();
        assert_eq!(launched(&next), 1);
        assert!(step(&next).stops.is_empty());
        // With the replacement running, the drained one goes.
        let mut t3 = running("t3", &d, "i3");
        t3.started_at = Some(50.0);
        snap.tasks.push(t3);
        snap.instances
            .insert("i3".into(), InstanceFacts { active: true });
        let next = plan(&snap).unwrap();
        assert_eq!(launched(&next), 0);
        assert_eq!(step(&next).stops[0].task_id, "t2");
    }

    #[test]
    fn scale_in_stops_the_excess_and_never_exceeds_the_maximum() {
        let s = service(1, 200, 100);
        let d = primary_id(&s);
        let tasks = vec![
            running("a", &d, "i1"),
            running("b", &d, "i1"),
            running("c", &d, "i2"),
        ];
        let next = plan(&snapshot(s, tasks)).unwrap();
        // Two go, from the instance with the most tasks first.
        let stops: Vec<&str> = step(&next)
            .stops
            .iter()
            .map(|s| s.task_id.as_str())
            .collect();
        assert_eq!(stops, vec!["a", "b"]);
        // Pending tasks count towards the maximum.
        let s = service(4, 100, 0);
        let d = primary_id(&s);
        let mut pending = running("p", &d, "i1");
        pending.last = TaskStatus::Pending;
        let mut stopping = running("s", &d, "i1");
        stopping.desired = TaskStatus::Stopped;
        let next = plan(&snapshot(s, vec![pending, stopping])).unwrap();
        assert_eq!(launched(&next), 2);
    }

    #[test]
    fn the_breaker_trips_and_rolls_back() {
        let mut s = service(2, 200, 100);
        s.stable_task_definition = Some("td:1".into());
        s.start_deployment("td:2", 1.0);
        let d = primary_id(&s);
        let tasks: Vec<TaskFacts> = (0..10)
            .map(|i| TaskFacts {
                task_id: format!("f{i}"),
                instance_id: "i1".into(),
                deployment_id: d.clone(),
                last: TaskStatus::Stopped,
                desired: TaskStatus::Stopped,
                started_at: Some(1.0),
                stop_code: Some(StopCode::EssentialContainerExited),
                ..Default::default()
            })
            .collect();
        let next = plan(&snapshot(s, tasks)).unwrap();
        let failed = next.deployments.iter().find(|x| x.id == d);
        // The failed deployment has no live task left, so only the rollback remains.
        assert!(failed.is_none());
        let p = next.primary().unwrap();
        assert_eq!(p.task_definition, "td:1");
        assert_eq!(launched(&next), 2);
        assert!(next.events.iter().any(|e| e
            .message
            .ends_with("deployment failed: tasks failed to start.")));
    }

    #[test]
    fn the_breaker_watches_a_completed_deployment_for_a_while() {
        let mut s = service(2, 200, 100);
        s.stable_task_definition = Some("td:1".into());
        s.start_deployment("td:2", 1.0);
        let d = primary_id(&s);
        if let Some(p) = s.primary_mut() {
            p.rollout_state = RolloutState::Completed;
            p.updated_at = 95.0;
        }
        let crashed: Vec<TaskFacts> = (0..10)
            .map(|i| TaskFacts {
                task_id: format!("c{i}"),
                instance_id: "i1".into(),
                deployment_id: d.clone(),
                last: TaskStatus::Stopped,
                desired: TaskStatus::Stopped,
                started_at: Some(96.0),
                stop_code: Some(StopCode::EssentialContainerExited),
                ..Default::default()
            })
            .collect();
        let next = plan(&snapshot(s.clone(), crashed.clone())).unwrap();
        assert_eq!(next.primary().unwrap().task_definition, "td:1");
        // Past the watch, the same failures trip nothing.
        let mut late = snapshot(s, crashed);
        late.now = 95.0 + BREAKER_WATCH;
        let next = plan(&late).unwrap();
        assert_eq!(next.primary().unwrap().task_definition, "td:2");
    }

    #[test]
    fn tasks_that_never_run_are_throttled() {
        let s = service(1, 200, 100);
        let d = primary_id(&s);
        let never = |i: usize| TaskFacts {
            task_id: format!("n{i}"),
            instance_id: "i1".into(),
            deployment_id: d.clone(),
            last: TaskStatus::Stopped,
            desired: TaskStatus::Stopped,
            stop_code: Some(StopCode::TaskFailedToStart),
            ..Default::default()
        };
        let next = plan(&snapshot(s.clone(), vec![never(0), never(1)])).unwrap();
        assert_eq!(launched(&next), 1);
        let next = plan(&snapshot(s, vec![never(0), never(1), never(2)])).unwrap();
        assert!(next.step.is_none());
        let p = next.primary().unwrap();
        assert_eq!(p.start_failures, 3);
        assert_eq!(p.throttled_until, Some(100.0 + THROTTLE_BASE));
        assert!(next.events[0]
            .message
            .contains("unable to consistently start tasks"));
        assert!(throttle_delay(5) > throttle_delay(4));
        assert_eq!(throttle_delay(100), THROTTLE_MAX);
    }

    #[test]
    fn a_deleted_service_drains_then_goes_inactive() {
        let mut s = service(0, 200, 100);
        s.status = ServiceStatus::Draining;
        let d = primary_id(&s);
        let next = plan(&snapshot(s.clone(), vec![running("t", &d, "i1")])).unwrap();
        assert_eq!(step(&next).stops.len(), 1);
        let next = plan(&snapshot(s, vec![])).unwrap();
        assert_eq!(next.status, ServiceStatus::Inactive);
    }

    #[test]
    fn a_daemon_runs_one_task_per_eligible_instance() {
        let mut s = service(0, 100, 0);
        s.scheduling_strategy = SchedulingStrategy::Daemon;
        s.deployment_configuration = DeploymentConfiguration::default();
        let d = primary_id(&s);
        let mut snap = snapshot(
            s.clone(),
            vec![
                running("a", &d, "i1"),
                running("extra", &d, "i1"),
                running("drained", &d, "i3"),
            ],
        );
        snap.eligible = vec!["i1".into(), "i2".into()];
        let next = plan(&snap).unwrap();
        assert_eq!(next.desired_count, 2);
        let mut stops: Vec<&str> = step(&next)
            .stops
            .iter()
            .map(|s| s.task_id.as_str())
            .collect();
        stops.sort();
        assert_eq!(stops, vec!["drained", "extra"]);
        // Three still run against a maximum of two: the new host waits for the stops.
        assert!(step(&next).launches.is_empty());
        for t in snap.tasks.iter_mut().filter(|t| t.task_id != "a") {
            t.last = TaskStatus::Stopped;
            t.desired = TaskStatus::Stopped;
            t.stop_code = Some(StopCode::ServiceSchedulerInitiated);
        }
        let next = plan(&snap).unwrap();
        assert_eq!(
            step(&next).launches[0].container_instances,
            vec!["i2".to_string()]
        );
        // In place on both: complete and steady.
        let mut steady = snapshot(s, vec![running("a", &d, "i1"), running("b", &d, "i2")]);
        steady.eligible = vec!["i1".into(), "i2".into()];
        let next = plan(&steady).unwrap();
        assert!(next.step.is_none());
        assert_eq!(
            next.primary().unwrap().rollout_state,
            RolloutState::Completed
        );
    }

    #[test]
    fn a_daemon_deployment_replaces_the_old_task_of_each_instance() {
        let mut s = service(0, 100, 0);
        s.scheduling_strategy = SchedulingStrategy::Daemon;
        let old = primary_id(&s);
        s.start_deployment("td:2", 1.0);
        let mut snap = snapshot(s, vec![running("o1", &old, "i1")]);
        snap.eligible = vec!["i1".into()];
        let next = plan(&snap).unwrap();
        // The old task goes first; the new one starts once the instance is free.
        assert_eq!(step(&next).stops[0].task_id, "o1");
        assert!(step(&next).launches.is_empty());
    }

    #[test]
    fn unhealthy_tasks_wait_for_the_grace_period() {
        let mut s = service(1, 200, 100);
        s.health_check_grace_period_seconds = Some(60);
        let d = primary_id(&s);
        let mut t = running("t", &d, "i1");
        t.health = Some(health::UNHEALTHY.into());
        t.started_at = Some(90.0);
        let next = plan(&snapshot(s.clone(), vec![t.clone()]));
        assert!(next.is_none_or(|n| n.step.is_none()));
        t.started_at = Some(10.0);
        let next = plan(&snapshot(s, vec![t])).unwrap();
        assert_eq!(step(&next).stops.len(), 1);
        assert_eq!(launched(&next), 1);
        assert_eq!(next.primary().unwrap().failed_tasks, 1);
    }
}

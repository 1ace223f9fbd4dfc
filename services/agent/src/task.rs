//! One actor per task on this host, the only writer of what the agent knows about that
//! task (as in amazon-ecs-agent's managed task). It receives the task's journal records
//! (desired status) and its containers' events (started, ended, stop timeout), drives the
//! containers from their known status to the desired one, and queues the reports.
//!
//! Level-triggered: [`TaskActor::drive`] looks at the whole state after every event and
//! does what is missing, so a restarted agent that adopts containers from disk, a
//! repeated record, or events in any order all lead to the same end.
//!
//! - Desired RUNNING: containers start in `dependsOn` order (START waits for the
//!   dependency to have started, HEALTHY for its health check to pass, COMPLETE for it
//!   to have exited, SUCCESS for it to have exited 0). The task is reported RUNNING once
//!   every container has started.
//! - Health checks: a running container with a `healthCheck` is probed every `interval`
//!   (the command in the container's environment, killed after `timeout`). One success
//!   makes it HEALTHY; `retries` failures in a row, outside the `startPeriod`, make it
//!   UNHEALTHY (Docker's rules). Each change is reported as a container change.
//! - An essential container exits: the others are stopped and the task is reported
//!   STOPPED with stopCode EssentialContainerExited. A non-essential one exiting is
//!   reported as a container change and the task goes on.
//! - A container cannot start (unknown executable, user or directory, an unmet
//!   dependency): the others are stopped, the task is reported STOPPED with stopCode
//!   TaskFailedToStart and the reason.
//! - Desired STOPPED: every running container is stopped (SIGTERM, SIGKILL after its
//!   stopTimeout); then the task is reported STOPPED.
//!
//! The actor ends once the journal shows the task STOPPED and no container runs.
//!
//! What runs the containers is the agent's [`Runtime`]; what the actor needs besides (task
//! definitions, the report queue) comes through [`Agent`], so the lifecycle here holds
//! nothing of a particular runtime or of NATS.

use crate::client::{Report, Reporter};
use crate::runtime::{Adopted, ContainerRef, Runtime, RuntimeError, Stopped, CANNOT_START};
use actix::prelude::*;
use berth_messages::api::{
    ContainerStateChange, SubmitContainerStateChangeRequest, SubmitTaskStateChangeRequest,
};
use berth_messages::model::{
    health, ContainerDefinition, ContainerDependency, HealthCheck, StopCode, Task, TaskDefinition,
    TaskStatus,
};
use futures::future::{BoxFuture, FutureExt};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Task reason when an essential container exited (as ECS words it).
pub const ESSENTIAL_EXITED: &str = "Essential container in task exited";

/// What a task actor needs from the agent around it.
pub(crate) trait Agent: Send + Sync + 'static {
    fn cluster(&self) -> &str;
    fn runtime(&self) -> &Arc<dyn Runtime>;
    /// For containers without their own stopTimeout.
    fn default_stop_timeout(&self) -> Duration;
    /// A task definition by ARN; the error is the reason it cannot be had at all.
    fn task_definition(
        self: Arc<Self>,
        arn: String,
    ) -> BoxFuture<'static, Result<Arc<TaskDefinition>, String>>;
    /// Where the state changes of a task go, in order.
    fn reports(&self, task_id: &str) -> Arc<dyn Reports>;
    /// The actor `actor_id` of the task has ended.
    fn forget(&self, task_id: &str, actor_id: u64);
}

/// A task's queue of state-change reports.
pub(crate) trait Reports: Send + Sync + 'static {
    fn send(&self, report: Report);
    /// Resolves once every report sent so far has been delivered or given up.
    fn flush(&self) -> BoxFuture<'static, ()>;
}

impl Reports for Reporter {
    fn send(&self, report: Report) {
        Reporter::send(self, report);
    }
    fn flush(&self) -> BoxFuture<'static, ()> {
        Reporter::flush(self).boxed()
    }
}

/// A journal record of the task.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Record(pub Box<Task>);

/// The agent is exiting; with `stop_tasks` the task is stopped and reported first. The
/// answer comes once that is done (or at once without `stop_tasks`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown {
    pub stop_tasks: bool,
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    Pending,
    Starting,
    /// With its runtime id.
    Running(String),
    Exited {
        code: Option<i32>,
        reason: Option<String>,
        started: bool,
    },
}

/// What the agent knows of the health of a running container with a health check.
#[derive(Debug, Clone, PartialEq)]
struct Health {
    status: &'static str,
    /// Failed probes in a row outside the start period.
    failures: i64,
    /// When the agent saw the container running (the start period counts from it).
    since: Instant,
}

impl Health {
    fn new(known: Option<&str>) -> Health {
        let status = health::ALL
            .into_iter()
            .find(|s| Some(*s) == known)
            .unwrap_or(health::UNKNOWN);
        Health {
            status,
            failures: 0,
            since: Instant::now(),
        }
    }

    /// Takes one probe's result; returns the new status if it changed.
    fn observe(
        &mut self,
        passed: bool,
        in_start_period: bool,
        retries: i64,
    ) -> Option<&'static str> {
        let next = if passed {
            self.failures = 0;
            health::HEALTHY
        } else if in_start_period {
            return None;
        } else {
            self.failures += 1;
            if self.failures < retries {
                return None;
            }
            health::UNHEALTHY
        };
        (next != self.status).then(|| {
            self.status = next;
            next
        })
    }
}

struct Slot {
    definition: ContainerDefinition,
    state: State,
    stop_sent: bool,
    health: Option<Health>,
}

impl Slot {
    fn name(&self) -> &str {
        &self.definition.name
    }
    fn health_status(&self) -> Option<&'static str> {
        self.health.as_ref().map(|h| h.status)
    }
    fn has_started(&self) -> bool {
        matches!(
            self.state,
            State::Running(_) | State::Exited { started: true, .. }
        )
    }
    fn is_exited(&self) -> bool {
        matches!(self.state, State::Exited { .. })
    }
    fn is_active(&self) -> bool {
        matches!(self.state, State::Starting | State::Running(_))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Load {
    NotLoaded,
    Loading,
    /// The definition is in; the runtime is asked what it still has of the containers.
    Adopting,
    Loaded,
}

/// Why the agent itself stops the task (a desired STOPPED from the journal needs none).
#[derive(Debug, Clone)]
struct StopCause {
    code: StopCode,
    reason: String,
}

pub struct TaskActor {
    agent: Arc<dyn Agent>,
    runtime: Arc<dyn Runtime>,
    actor_id: u64,
    task_id: String,
    record: Task,
    load: Load,
    slots: Vec<Slot>,
    cause: Option<StopCause>,
    reported_running: bool,
    reported_stopped: bool,
    reports: Arc<dyn Reports>,
    stopped_waiters: Vec<oneshot::Sender<()>>,
}

impl TaskActor {
    pub(crate) fn new(agent: Arc<dyn Agent>, actor_id: u64, task_id: String, record: Task) -> Self {
        let reports = agent.reports(&task_id);
        let runtime = agent.runtime().clone();
        let reported_running = record.last_status >= TaskStatus::Running;
        Self {
            agent,
            runtime,
            actor_id,
            task_id,
            record,
            load: Load::NotLoaded,
            slots: Vec::new(),
            cause: None,
            reported_running,
            reported_stopped: false,
            reports,
            stopped_waiters: Vec::new(),
        }
    }

    fn container(&self, idx: usize) -> ContainerRef {
        ContainerRef::new(&self.task_id, self.slots[idx].name())
    }

    fn wants_stop(&self) -> bool {
        self.cause.is_some() || self.record.desired_status == TaskStatus::Stopped
    }

    fn fail(&mut self, reason: String) {
        if self.cause.is_none() && self.record.desired_status != TaskStatus::Stopped {
            self.cause = Some(StopCause {
                code: StopCode::TaskFailedToStart,
                reason,
            });
        }
    }

    fn start_loading(&mut self, ctx: &mut Context<Self>) {
        self.load = Load::Loading;
        let arn = self.record.task_definition_arn.clone();
        ctx.spawn(
            self.agent
                .clone()
                .task_definition(arn)
                .into_actor(self)
                .map(|result, act, ctx| act.on_loaded(result, ctx)),
        );
    }

    fn on_loaded(&mut self, result: Result<Arc<TaskDefinition>, String>, ctx: &mut Context<Self>) {
        match result {
            Ok(definition) => {
                self.slots = definition
                    .container_definitions
                    .iter()
                    .map(|d| Slot {
                        definition: d.clone(),
                        state: State::Pending,
                        stop_sent: false,
                        health: None,
                    })
                    .collect();
                let info = crate::runtime::TaskInfo {
                    task_arn: self.record.task_arn.clone(),
                    containers: self.slots.iter().map(|s| s.name().to_string()).collect(),
                };
                if let Err(e) = self.runtime.save_task(&self.task_id, &info) {
                    tracing::warn!(task = %self.task_id, error = %e.reason(), "cannot keep the task's record");
                }
                self.adopt(ctx);
                return;
            }
            Err(reason) => {
                self.load = Load::Loaded;
                tracing::warn!(task = %self.task_id, %reason, "task definition unavailable");
                self.slots = self
                    .record
                    .containers
                    .iter()
                    .map(|c| Slot {
                        definition: ContainerDefinition {
                            name: c.name.clone(),
                            ..Default::default()
                        },
                        state: State::Exited {
                            code: None,
                            reason: Some(reason.clone()),
                            started: false,
                        },
                        stop_sent: false,
                        health: None,
                    })
                    .collect();
                self.fail(reason);
            }
        }
        self.drive(ctx);
    }

    /// Takes over what earlier runs of the agent left of this task's containers.
    fn adopt(&mut self, ctx: &mut Context<Self>) {
        self.load = Load::Adopting;
        let found = (0..self.slots.len()).map(|idx| self.runtime.adopt(&self.container(idx)));
        ctx.spawn(
            futures::future::join_all(found)
                .into_actor(self)
                .map(|found, act, ctx| act.on_adopted(found, ctx)),
        );
    }

    fn on_adopted(&mut self, found: Vec<Adopted>, ctx: &mut Context<Self>) {
        self.load = Load::Loaded;
        for (idx, adopted) in found.into_iter().enumerate() {
            match adopted {
                Adopted::Absent => {}
                Adopted::Running(id) => {
                    tracing::info!(task = %self.task_id, container = %self.slots[idx].name(), id, "adopting a running container");
                    self.slots[idx].state = State::Running(id);
                    self.watch(idx, ctx);
                    self.begin_health_checks(idx, ctx);
                }
                Adopted::Stopped(stopped) => self.ended(idx, stopped),
            }
        }
        self.drive(ctx);
    }

    fn watch(&mut self, idx: usize, ctx: &mut Context<Self>) {
        ctx.spawn(
            self.runtime
                .wait(&self.container(idx))
                .into_actor(self)
                .map(move |stopped, act, ctx| act.on_ended(idx, stopped, ctx)),
        );
    }

    fn start_container(&mut self, idx: usize, ctx: &mut Context<Self>) -> Result<(), RuntimeError> {
        let starting = self.runtime.start(
            &self.container(idx),
            &self.record,
            &self.slots[idx].definition,
        )?;
        self.slots[idx].state = State::Starting;
        ctx.spawn(
            starting
                .into_actor(self)
                .map(move |started, act, ctx| act.on_started(idx, started, ctx)),
        );
        Ok(())
    }

    fn on_started(
        &mut self,
        idx: usize,
        started: Result<String, Stopped>,
        ctx: &mut Context<Self>,
    ) {
        if self.slots[idx].state != State::Starting {
            return;
        }
        match started {
            Ok(id) => {
                self.slots[idx].state = State::Running(id);
                self.watch(idx, ctx);
                self.begin_health_checks(idx, ctx);
            }
            Err(stopped) => self.ended(idx, stopped),
        }
        self.drive(ctx);
    }

    fn health_check(&self, idx: usize) -> Option<&HealthCheck> {
        self.slots[idx].definition.health_check.as_ref()
    }

    /// Starts probing a container that has just been seen running, if it has a check.
    fn begin_health_checks(&mut self, idx: usize, ctx: &mut Context<Self>) {
        let Some(check) = self.health_check(idx) else {
            return;
        };
        let interval = seconds(check.interval_seconds());
        let name = self.slots[idx].name();
        let known = self
            .record
            .containers
            .iter()
            .find(|c| c.name == name)
            .and_then(|c| c.health_status.as_deref());
        self.slots[idx].health = Some(Health::new(known));
        ctx.run_later(interval, move |act, ctx| act.probe(idx, ctx));
    }

    fn probe(&mut self, idx: usize, ctx: &mut Context<Self>) {
        let slot = &self.slots[idx];
        if !matches!(slot.state, State::Running(_)) || slot.stop_sent || self.wants_stop() {
            return;
        }
        let Some(check) = &slot.definition.health_check else {
            return;
        };
        let timeout = seconds(check.timeout_seconds());
        let probe = match check.argv() {
            Ok(argv) => self.runtime.probe(
                &self.container(idx),
                &self.record,
                &slot.definition,
                argv,
                timeout,
            ),
            Err(_) => futures::future::ready(false).boxed(),
        };
        ctx.spawn(
            probe
                .into_actor(self)
                .map(move |passed, act, ctx| act.probed(idx, passed, ctx)),
        );
    }

    fn probed(&mut self, idx: usize, passed: bool, ctx: &mut Context<Self>) {
        let Some(check) = self.health_check(idx).cloned() else {
            return;
        };
        if !matches!(self.slots[idx].state, State::Running(_)) {
            return;
        }
        let slot = &mut self.slots[idx];
        let name = slot.definition.name.clone();
        let Some(health) = slot.health.as_mut() else {
            return;
        };
        let in_start_period = health.since.elapsed() < seconds(check.start_period_seconds());
        tracing::debug!(task = %self.task_id, container = %name, passed, in_start_period, "health check");
        if let Some(status) = health.observe(passed, in_start_period, check.retries_count()) {
            tracing::info!(task = %self.task_id, container = %name, status, "container health changed");
            self.reports
                .send(Report::Container(SubmitContainerStateChangeRequest {
                    cluster: Some(self.agent.cluster().to_string()),
                    task: self.record.task_arn.clone(),
                    container_name: name,
                    health_status: Some(status.into()),
                    ..Default::default()
                }));
            self.drive(ctx);
        }
        ctx.run_later(seconds(check.interval_seconds()), move |act, ctx| {
            act.probe(idx, ctx)
        });
    }

    fn on_ended(&mut self, idx: usize, stopped: Stopped, ctx: &mut Context<Self>) {
        if self.slots[idx].is_exited() {
            return;
        }
        self.ended(idx, stopped);
        self.drive(ctx);
    }

    /// Records how a container ended and what that means for the task.
    fn ended(&mut self, idx: usize, stopped: Stopped) {
        let Stopped {
            exit_code: code,
            reason,
            started,
        } = stopped;
        let name = self.slots[idx].name().to_string();
        tracing::info!(task = %self.task_id, container = %name, ?code, ?reason, "container ended");
        self.runtime.release(&self.container(idx));
        self.slots[idx].state = State::Exited {
            code,
            reason: reason.clone(),
            started,
        };
        if !started {
            self.fail(reason.unwrap_or_else(|| format!("{CANNOT_START}: {name}")));
            return;
        }
        if self.wants_stop() {
            return;
        }
        if self.slots[idx].definition.is_essential() {
            let reason = match &reason {
                Some(why) => format!("Essential container {name} ended: {why}"),
                None => ESSENTIAL_EXITED.to_string(),
            };
            self.cause = Some(StopCause {
                code: StopCode::EssentialContainerExited,
                reason,
            });
        } else {
            self.reports
                .send(Report::Container(SubmitContainerStateChangeRequest {
                    cluster: Some(self.agent.cluster().to_string()),
                    task: self.record.task_arn.clone(),
                    container_name: name,
                    runtime_id: None,
                    status: Some("STOPPED".into()),
                    exit_code: code,
                    reason,
                    ..Default::default()
                }));
        }
    }

    fn stop_timeout(&self, idx: usize) -> Duration {
        self.slots[idx]
            .definition
            .stop_timeout
            .filter(|s| *s > 0)
            .map(|s| Duration::from_secs(s.unsigned_abs()))
            .unwrap_or_else(|| self.agent.default_stop_timeout())
    }

    /// Does whatever the state calls for next.
    fn drive(&mut self, ctx: &mut Context<Self>) {
        match self.load {
            Load::NotLoaded => return self.start_loading(ctx),
            Load::Loading | Load::Adopting => return,
            Load::Loaded => {}
        }
        if self.reported_stopped {
            return self.maybe_finish(ctx);
        }
        if self.wants_stop() {
            for idx in 0..self.slots.len() {
                match &self.slots[idx].state {
                    State::Pending => {
                        self.slots[idx].state = State::Exited {
                            code: None,
                            reason: None,
                            started: false,
                        }
                    }
                    State::Running(_) if !self.slots[idx].stop_sent => {
                        self.slots[idx].stop_sent = true;
                        let grace = self.stop_timeout(idx);
                        ctx.spawn(
                            self.runtime
                                .stop(&self.container(idx), grace)
                                .into_actor(self),
                        );
                    }
                    _ => {}
                }
            }
            if self.slots.iter().all(Slot::is_exited) {
                self.report_stopped();
                self.maybe_finish(ctx);
            }
            return;
        }
        for idx in 0..self.slots.len() {
            if self.slots[idx].state != State::Pending {
                continue;
            }
            match readiness(&self.slots[idx].definition.depends_on, |name| {
                self.slots
                    .iter()
                    .find(|s| s.name() == name)
                    .map(|s| (s.state.clone(), s.health_status()))
            }) {
                Readiness::Ready => {
                    if let Err(e) = self.start_container(idx, ctx) {
                        let reason = e.reason();
                        let name = self.slots[idx].name().to_string();
                        tracing::info!(task = %self.task_id, container = %name, %reason, "container cannot start");
                        self.slots[idx].state = State::Exited {
                            code: None,
                            reason: Some(reason.clone()),
                            started: false,
                        };
                        self.fail(reason);
                        return self.drive(ctx);
                    }
                }
                Readiness::Wait => {}
                Readiness::Never(reason) => {
                    self.slots[idx].state = State::Exited {
                        code: None,
                        reason: Some(reason.clone()),
                        started: false,
                    };
                    self.fail(reason);
                    return self.drive(ctx);
                }
            }
        }
        let any_active = self.slots.iter().any(Slot::is_active);
        let waiting: Vec<&str> = self
            .slots
            .iter()
            .filter(|s| s.state == State::Pending)
            .map(Slot::name)
            .collect();
        if !any_active && !waiting.is_empty() {
            let reason = format!(
                "{CANNOT_START}: the dependsOn conditions of {} can never be met",
                waiting.join(", ")
            );
            self.fail(reason);
            return self.drive(ctx);
        }
        if !self.slots.is_empty() && self.slots.iter().all(Slot::is_exited) {
            // Only non-essential containers, all ended.
            self.cause = Some(StopCause {
                code: StopCode::EssentialContainerExited,
                reason: "All containers in task exited".into(),
            });
            return self.drive(ctx);
        }
        if !self.reported_running && self.slots.iter().all(Slot::has_started) {
            self.report_running();
        }
    }

    fn container_changes(&self) -> Vec<ContainerStateChange> {
        self.slots
            .iter()
            .map(|s| {
                let bindings = self
                    .record
                    .containers
                    .iter()
                    .find(|c| c.name == s.name())
                    .map(|c| c.network_bindings.clone())
                    .unwrap_or_default();
                let (status, runtime_id, exit_code, reason) = match &s.state {
                    State::Running(id) => ("RUNNING", Some(id.clone()), None, None),
                    State::Exited { code, reason, .. } => ("STOPPED", None, *code, reason.clone()),
                    State::Pending | State::Starting => ("PENDING", None, None, None),
                };
                ContainerStateChange {
                    container_name: Some(s.name().to_string()),
                    runtime_id,
                    exit_code,
                    network_bindings: bindings,
                    reason,
                    status: Some(status.into()),
                }
            })
            .collect()
    }

    fn report_running(&mut self) {
        self.reported_running = true;
        tracing::info!(task = %self.task_id, "task running");
        self.reports
            .send(Report::Task(SubmitTaskStateChangeRequest {
                cluster: Some(self.agent.cluster().to_string()),
                task: self.record.task_arn.clone(),
                status: Some(TaskStatus::Running),
                containers: self.container_changes(),
                ..Default::default()
            }));
    }

    fn report_stopped(&mut self) {
        self.reported_stopped = true;
        tracing::info!(task = %self.task_id, cause = ?self.cause, "task stopped");
        let now = berth_messages::now_epoch_seconds();
        self.reports
            .send(Report::Task(SubmitTaskStateChangeRequest {
                cluster: Some(self.agent.cluster().to_string()),
                task: self.record.task_arn.clone(),
                status: Some(TaskStatus::Stopped),
                reason: self.cause.as_ref().map(|c| c.reason.clone()),
                stop_code: self.cause.as_ref().map(|c| c.code),
                containers: self.container_changes(),
                execution_stopped_at: Some(now),
                ..Default::default()
            }));
        for waiter in self.stopped_waiters.drain(..) {
            let _ = waiter.send(());
        }
    }

    fn maybe_finish(&mut self, ctx: &mut Context<Self>) {
        let done = self.record.last_status == TaskStatus::Stopped
            && !self.slots.iter().any(Slot::is_active);
        if done && self.reported_stopped {
            ctx.stop();
        }
    }
}

impl Actor for TaskActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.drive(ctx);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.agent.forget(&self.task_id, self.actor_id);
        for waiter in self.stopped_waiters.drain(..) {
            let _ = waiter.send(());
        }
    }
}

impl Handler<Record> for TaskActor {
    type Result = ();

    fn handle(&mut self, Record(task): Record, ctx: &mut Context<Self>) {
        if task.last_status >= TaskStatus::Running {
            self.reported_running = true;
        }
        self.record = *task;
        self.drive(ctx);
        if self.load == Load::Loaded {
            self.maybe_finish(ctx);
        }
    }
}

impl Handler<Shutdown> for TaskActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: Shutdown, ctx: &mut Context<Self>) -> Self::Result {
        if !msg.stop_tasks {
            return Box::pin(async {});
        }
        if self.cause.is_none() && self.record.desired_status != TaskStatus::Stopped {
            self.cause = Some(StopCause {
                code: StopCode::UserInitiated,
                reason: "The host's agent stopped with --stop-tasks-on-exit".into(),
            });
        }
        let (tx, rx) = oneshot::channel();
        if self.reported_stopped {
            let _ = tx.send(());
        } else {
            self.stopped_waiters.push(tx);
        }
        self.drive(ctx);
        // The flush is queued once the STOPPED report is (the waiter fires right after it
        // is queued): a flush queued now would complete before that report is delivered.
        let reports = self.reports.clone();
        Box::pin(async move {
            let _ = rx.await;
            reports.flush().await;
        })
    }
}

/// Whether a container may start, given how its dependencies stand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    Wait,
    Never(String),
}

fn seconds(s: i64) -> Duration {
    Duration::from_secs(s.max(0).unsigned_abs())
}

/// `state_of` gives a container's state and, if it has a health check, its health.
fn readiness(
    deps: &[ContainerDependency],
    state_of: impl Fn(&str) -> Option<(State, Option<&'static str>)>,
) -> Readiness {
    let mut wait = false;
    for dep in deps {
        let name = dep.container_name.as_str();
        let Some((state, health_status)) = state_of(name) else {
            return Readiness::Never(format!(
                "{CANNOT_START}: dependsOn names an unknown container {name}"
            ));
        };
        let never = |why: String| {
            Readiness::Never(format!(
                "{CANNOT_START}: dependency {name} ({} condition) {why}",
                dep.condition
            ))
        };
        match (dep.condition.as_str(), &state) {
            (_, State::Exited { started: false, .. }) => return never("never started".into()),
            ("START", State::Running(_) | State::Exited { .. }) => {}
            ("HEALTHY", State::Running(_)) => match health_status {
                Some(health::HEALTHY) => {}
                Some(health::UNHEALTHY) => return never("is UNHEALTHY".into()),
                // Registration refuses HEALTHY on a container without a health check.
                None => return never("has no health check".into()),
                Some(_) => wait = true,
            },
            ("HEALTHY", State::Exited { .. }) if health_status != Some(health::HEALTHY) => {
                return never("exited before it was HEALTHY".into())
            }
            ("HEALTHY", State::Exited { .. }) => {}
            ("COMPLETE", State::Exited { .. }) => {}
            ("SUCCESS", State::Exited { code: Some(0), .. }) => {}
            ("SUCCESS", State::Exited { code, .. }) => {
                let how = code.map_or("without an exit code".to_string(), |c| {
                    format!("with code {c}")
                });
                return never(format!("exited {how}"));
            }
            _ => wait = true,
        }
    }
    if wait {
        Readiness::Wait
    } else {
        Readiness::Ready
    }
}

#[cfg(test)]
mod tests;

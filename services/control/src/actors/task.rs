//! The task actor: the only writer of one task record in this replica. It runs one
//! operation at a time (a read-modify-conditional-write), and when a task
//! reaches STOPPED it returns the task's resources to its instance before answering.
//! Idle actors stop themselves; the registry starts a new one on demand. Creation does not
//! go through an actor: it is conditional on an empty subject, so it cannot overwrite.

use crate::actors::instance::{InstanceOp, OpKind};
use crate::shared::{ExecError, ExecResult, Shared};
use actix::prelude::*;
use berth_journal::{JournalError, Versioned};
use berth_messages::codec;
use berth_messages::model::{Task, TaskStatus};
use berth_messages::{subjects, ApiError};
use bytes::Bytes;
use futures::FutureExt;
use std::time::Duration;
use tokio::sync::oneshot;

const IDLE_STOP: Duration = Duration::from_secs(30);
const MAX_CONFLICTS: u32 = 50;
/// How long a fresh creation waits for the view to show it before reading the journal.
const LANDING_WAIT: Duration = Duration::from_secs(5);
const LANDING_ATTEMPTS: u32 = 3;

/// A change to a task record; it must leave the record untouched when it refuses.
pub type TaskChange = Box<dyn FnMut(&mut Task) -> Result<(), ApiError> + Send + 'static>;

pub enum TaskOpKind {
    /// Create the record on `instance_id` (idempotent: an existing record is returned).
    Create {
        instance_id: String,
        task: Box<Task>,
        /// No earlier attempt of the command can have written it (see
        /// [`crate::commands::Delivery::fresh`]): it is published without acknowledgement
        /// and confirmed by the view.
        fresh: bool,
        /// The command is redelivered: the creation is also conditional on no record of
        /// the task on any other instance (a filter check the server pays for with a walk
        /// over the cluster's instances, so the first delivery, which fences make safe,
        /// does without it).
        unique: bool,
    },
    /// Change the record wherever it lives.
    Update(TaskChange),
}

/// A task record as written, with the instance it lives on.
#[derive(Debug, Clone)]
pub struct TaskDone {
    pub instance_id: String,
    pub task: Versioned<Task>,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct TaskOp {
    pub command_id: String,
    /// Creations never reach the actor (see [`TaskOp::run`]).
    pub change: TaskChange,
    pub reply: oneshot::Sender<ExecResult<TaskDone>>,
}

impl TaskOp {
    pub async fn run(
        shared: &Shared,
        cluster: &str,
        task_id: &str,
        command_id: &str,
        kind: TaskOpKind,
    ) -> ExecResult<TaskDone> {
        let change = match kind {
            TaskOpKind::Create {
                instance_id,
                task,
                fresh,
                unique,
            } => {
                // Creation is conditional on the subject being empty (expected sequence 0),
                // so it cannot overwrite anyone and needs no serialising actor.
                let span = tracing::debug_span!("task_create", command_id = %command_id, cluster = %cluster, task = %task_id);
                let target = Creation {
                    subject: subjects::task(cluster, &instance_id, task_id),
                    unique: unique.then(|| subjects::task_on_any_instance(cluster, task_id)),
                    instance_id,
                };
                let created = if fresh {
                    create_fresh(shared, target, command_id, task).boxed()
                } else {
                    create(shared, target, task_id, command_id, task).boxed()
                };
                return tracing::Instrument::instrument(created, span).await;
            }
            TaskOpKind::Update(change) => change,
        };
        let (tx, rx) = oneshot::channel();
        shared.task_actor(cluster, task_id).do_send(TaskOp {
            command_id: command_id.to_string(),
            change,
            reply: tx,
        });
        rx.await.unwrap_or_else(|_| {
            Err(ExecError::Transient(berth_journal::JournalError::Consumer(
                "task actor stopped".into(),
            )))
        })
    }
}

pub struct TaskActor {
    shared: Shared,
    cluster: String,
    task_id: String,
    generation: u64,
}

impl TaskActor {
    pub fn new(shared: Shared, cluster: String, task_id: String) -> Self {
        Self {
            shared,
            cluster,
            task_id,
            generation: 0,
        }
    }
}

impl Actor for TaskActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(256);
        self.schedule_idle_stop(ctx);
    }

    fn stopped(&mut self, ctx: &mut Self::Context) {
        self.shared
            .forget_task_actor(&self.cluster, &self.task_id, &ctx.address());
    }
}

impl TaskActor {
    fn schedule_idle_stop(&mut self, ctx: &mut Context<Self>) {
        let generation = self.generation;
        ctx.run_later(IDLE_STOP, move |act, ctx| {
            if act.generation == generation {
                ctx.stop();
            }
        });
    }
}

impl Handler<TaskOp> for TaskActor {
    type Result = ();

    fn handle(&mut self, op: TaskOp, ctx: &mut Self::Context) {
        self.generation += 1;
        let shared = self.shared.clone();
        let cluster = self.cluster.clone();
        let task_id = self.task_id.clone();
        let span = tracing::debug_span!("task_op", command_id = %op.command_id, cluster = %cluster, task = %task_id);
        let fut = async move {
            let result = update(&shared, &cluster, &task_id, &op.command_id, op.change).await;
            let _ = op.reply.send(result);
        };
        ctx.wait(tracing::Instrument::instrument(fut, span).into_actor(self));
        self.schedule_idle_stop(ctx);
    }
}

/// Where a task record is created.
struct Creation {
    subject: String,
    instance_id: String,
    /// The filter over every instance's subject for the task, when the creation must
    /// also be the only record of the task in the cluster.
    unique: Option<String>,
}

impl Creation {
    /// The task's record as it already is in the journal: on this subject, or with
    /// `unique` on whichever instance holds it (the answer then names that instance, and
    /// the caller returns what it allocated here).
    async fn existing(&self, shared: &Shared) -> ExecResult<Option<TaskDone>> {
        let Some(filter) = &self.unique else {
            let found = Box::pin(shared.journal.read::<Task>(&self.subject)).await?;
            return Ok(found.map(|task| TaskDone {
                instance_id: self.instance_id.clone(),
                task,
            }));
        };
        let found = Box::pin(shared.journal.read_last_matching::<Task>(filter)).await?;
        Ok(
            found.and_then(|(subject, task)| match subjects::parse_state(&subject) {
                Some(subjects::StateKey::Task { instance_id, .. }) => Some(TaskDone {
                    instance_id: instance_id.to_string(),
                    task,
                }),
                _ => None,
            }),
        )
    }
}

/// Writes a new task record (expected sequence 0); an existing one is returned as is.
/// Kept apart from updates so that a RunTask's ten creations in flight stay small futures.
async fn create(
    shared: &Shared,
    target: Creation,
    task_id: &str,
    command_id: &str,
    task: Box<Task>,
) -> ExecResult<TaskDone> {
    let written = match &target.unique {
        Some(filter) => {
            shared
                .journal
                .create_unique(&target.subject, filter, &*task, command_id)
                .await
        }
        None => {
            shared
                .journal
                .write(&target.subject, &*task, 0, command_id)
                .await
        }
    };
    match written {
        Ok(version) => Ok(TaskDone {
            instance_id: target.instance_id,
            task: Versioned {
                value: *task,
                version,
            },
        }),
        Err(e) if e.is_conflict() => target.existing(shared).await?.ok_or_else(|| {
            ExecError::Transient(JournalError::Read {
                subject: target.subject.clone(),
                reason: format!("task {task_id} conflicts but is absent"),
            })
        }),
        Err(e) => Err(e.into()),
    }
}

/// [`create`] of a record no one else can have written: published without asking for an
/// acknowledgement, and confirmed by the view applying it (see [`berth_journal::landing`]).
/// When the view does not show it in time, the journal is read: a record found is the one
/// published (nothing else writes this subject), an empty subject is published again.
async fn create_fresh(
    shared: &Shared,
    target: Creation,
    command_id: &str,
    task: Box<Task>,
) -> ExecResult<TaskDone> {
    let payload = Bytes::from(codec::encode_record(&*task).map_err(JournalError::from)?);
    for _ in 0..LANDING_ATTEMPTS {
        let landing = shared.view.expect_landing(&target.subject);
        shared
            .journal
            .publish_unacknowledged(
                &target.subject,
                payload.clone(),
                0,
                target.unique.as_deref(),
                command_id,
            )
            .await?;
        if let Some(version) = landing.wait(LANDING_WAIT).await {
            return Ok(TaskDone {
                instance_id: target.instance_id,
                task: Versioned {
                    value: *task,
                    version,
                },
            });
        }
        if let Some(existing) = target.existing(shared).await? {
            return Ok(existing);
        }
        tracing::warn!(
            subject = target.subject,
            "task record not in the journal after publishing; publishing again"
        );
    }
    Err(ExecError::Transient(JournalError::Publish {
        subject: target.subject,
        reason: format!("not in the journal after {LANDING_ATTEMPTS} unacknowledged publishes"),
    }))
}

/// Read, change, conditionally write the task record wherever it lives; on STOPPED the
/// task's resources return to its instance before the answer.
async fn update(
    shared: &Shared,
    cluster: &str,
    task_id: &str,
    command_id: &str,
    mut change: TaskChange,
) -> ExecResult<TaskDone> {
    let instance_id = locate(shared, cluster, task_id).await?;
    let subject = subjects::task(cluster, &instance_id, task_id);
    let mut current = match shared.view.task(cluster, task_id) {
        Some(entry) if entry.instance_id == instance_id => Some(entry.task.clone()),
        _ => None,
    };
    for _ in 0..MAX_CONFLICTS {
        let Some(read) = current.take() else {
            current = shared.journal.read::<Task>(&subject).await?;
            if current.is_none() {
                return Err(ApiError::invalid(format!(
                    "The referenced task was not found: {task_id}"
                ))
                .into());
            }
            continue;
        };
        let mut next = read.value.clone();
        next.version = None;
        change(&mut next)?;
        let mut unchanged = read.value.clone();
        unchanged.version = None;
        if next == unchanged {
            // A STOPPED record whose release did not follow (this writer's own STOPPED
            // write landed but its answer was lost, and the write came back as a
            // conflict): release now rather than leave it to reconciliation.
            if read.value.last_status == TaskStatus::Stopped
                && shared
                    .view
                    .instance(cluster, &instance_id)
                    .is_some_and(|i| i.value.allocations.contains_key(task_id))
            {
                release(shared, cluster, &instance_id, task_id, command_id).await?;
            }
            return Ok(TaskDone {
                instance_id,
                task: read,
            });
        }
        match shared
            .journal
            .write(&subject, &next, read.version, command_id)
            .await
        {
            Ok(version) => {
                if next.last_status == TaskStatus::Stopped
                    && read.value.last_status != TaskStatus::Stopped
                {
                    release(shared, cluster, &instance_id, task_id, command_id).await?;
                }
                return Ok(TaskDone {
                    instance_id,
                    task: Versioned {
                        value: next,
                        version,
                    },
                });
            }
            Err(e) if e.is_conflict() => {
                crate::shared::Metrics::inc(&shared.metrics.conflicts);
                current = None;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(ExecError::Transient(
        berth_journal::JournalError::TooManyConflicts {
            subject,
            attempts: MAX_CONFLICTS,
        },
    ))
}

/// Returns a stopped task's resources to its instance.
pub async fn release(
    shared: &Shared,
    cluster: &str,
    instance_id: &str,
    task_id: &str,
    command_id: &str,
) -> ExecResult<()> {
    match InstanceOp::run(
        shared,
        cluster,
        instance_id,
        command_id,
        OpKind::Release {
            task_id: task_id.to_string(),
        },
    )
    .await
    {
        Ok(_) | Err(crate::actors::instance::InstanceOpError::Missing) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The instance a task lives on: from the view, or, if the view has not seen it yet,
/// after the view has caught up with the journal.
pub async fn locate(shared: &Shared, cluster: &str, task_id: &str) -> ExecResult<String> {
    if let Some(entry) = shared.view.task(cluster, task_id) {
        return Ok(entry.instance_id.clone());
    }
    let last = shared.journal.state_last_sequence().await?;
    shared.view.wait_for(last, Duration::from_secs(5)).await;
    shared
        .view
        .task(cluster, task_id)
        .map(|e| e.instance_id.clone())
        .ok_or_else(|| {
            ApiError::invalid(format!("The referenced task was not found: {task_id}")).into()
        })
}

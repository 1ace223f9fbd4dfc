//! The instance actor: the only writer of one container-instance record in this replica.
//! It group-commits: while one conditional write is in flight it gathers further
//! operations (allocations, releases, status or attribute changes, agent flips) and
//! writes them together in the next one. That keeps one write in flight per instance
//! subject, which R3 streams require, and turns a burst of placements on one host into
//! one journal write. On a conflict it re-reads the record and re-validates every
//! operation of the batch against it.

use crate::shared::{ExecError, Metrics, Shared};
use actix::prelude::*;
use berth_journal::{JournalError, Versioned};
use berth_messages::model::{Allocation, ContainerInstance};
use berth_messages::{subjects, ApiError};
use berth_placement::{Demand, Shortfall};
use std::sync::Arc;
use tokio::sync::oneshot;

/// Gives up a batch after this many consecutive conflicts (the command is retried
/// later by redelivery).
const MAX_CONFLICTS: u32 = 50;

/// Why an operation on an instance did not apply.
#[derive(Debug, thiserror::Error)]
pub enum InstanceOpError {
    #[error("the container instance does not exist")]
    Missing,
    #[error("the container instance lacks {0:?}")]
    Shortfall(Shortfall),
    #[error("the container instance already runs a task of group {0}")]
    SameGroup(String),
    #[error("claim {claim} of the command is fenced off this instance")]
    ClaimLost { claim: u32 },
    #[error(transparent)]
    Rejected(ApiError),
    #[error(transparent)]
    Journal(JournalError),
}

impl From<InstanceOpError> for ExecError {
    fn from(e: InstanceOpError) -> Self {
        match e {
            InstanceOpError::Journal(j) => j.into(),
            InstanceOpError::Rejected(a) => ExecError::Api(a),
            InstanceOpError::Missing => ExecError::Api(ApiError::invalid(
                "The referenced container instance was not found",
            )),
            InstanceOpError::Shortfall(s) => ExecError::Api(ApiError::client(format!(
                "the container instance cannot take it: {}",
                s.reason()
            ))),
            InstanceOpError::SameGroup(group) => ExecError::Api(ApiError::client(format!(
                "distinctInstance placement constraint unsatisfied: the container instance \
                 already runs a task of group {group}"
            ))),
            InstanceOpError::ClaimLost { claim } => ExecError::ClaimLost { claim },
        }
    }
}

/// A change to an instance record that may refuse (with an API error).
pub type Mutation = Box<dyn FnMut(&mut ContainerInstance) -> Result<(), ApiError> + Send + 'static>;

/// Builds a record from the current one (if any).
pub type Upsert =
    Box<dyn FnMut(Option<&ContainerInstance>) -> Result<ContainerInstance, ApiError> + Send>;

/// What an operation asks of the record.
pub enum OpKind {
    /// Reserve resources for a task of `group` (idempotent per task id).
    /// `require_active`: the instance must be ACTIVE with a connected agent (RunTask and
    /// StartTask). `distinct`: the instance must hold no other task of the group
    /// (distinctInstance, checked on the record the write replaces). `claim`: the
    /// delivery of the command making it; refused when the record fences it off.
    Allocate {
        task_id: String,
        demand: Demand,
        group: String,
        require_active: bool,
        distinct: bool,
        claim: u32,
    },
    /// Return a task's resources (idempotent).
    Release { task_id: String },
    /// Fence off every claim of the operation's command below `claim` (a later delivery
    /// taking the command over): allocations they make on this record are refused.
    Fence { claim: u32 },
    /// Any other change: status, attributes, agentConnected, deregistration.
    Mutate(Mutation),
    /// Create the record (registration) or replace it when it exists (re-registration);
    /// the function receives the current record if any.
    Upsert(Upsert),
}

/// The result of an applied operation: the record version written (or read, if the
/// operation changed nothing) and, for allocations, what the task holds.
#[derive(Debug, Clone)]
pub struct OpDone {
    pub version: u64,
    pub allocation: Option<Allocation>,
    /// The record as written (or read), shared by every operation of the batch.
    pub instance: Arc<Versioned<ContainerInstance>>,
}

/// One operation with its command id and where its result goes.
#[derive(Message)]
#[rtype(result = "()")]
pub struct InstanceOp {
    pub command_id: String,
    pub kind: OpKind,
    pub reply: oneshot::Sender<Result<OpDone, InstanceOpError>>,
}

impl InstanceOp {
    /// Sends an operation and waits for its result.
    pub async fn run(
        shared: &Shared,
        cluster: &str,
        instance_id: &str,
        command_id: &str,
        kind: OpKind,
    ) -> Result<OpDone, InstanceOpError> {
        let (tx, rx) = oneshot::channel();
        let op = InstanceOp {
            command_id: command_id.to_string(),
            kind,
            reply: tx,
        };
        shared.instance_actor(cluster, instance_id).do_send(op);
        rx.await.unwrap_or_else(|_| {
            Err(InstanceOpError::Journal(JournalError::Consumer(
                "instance actor stopped".into(),
            )))
        })
    }
}

pub struct InstanceActor {
    shared: Shared,
    cluster: String,
    instance_id: String,
    subject: String,
    record: Option<Arc<Versioned<ContainerInstance>>>,
    pending: Vec<InstanceOp>,
    in_flight: bool,
}

impl InstanceActor {
    pub fn new(shared: Shared, cluster: String, instance_id: String) -> Self {
        let subject = subjects::instance(&cluster, &instance_id);
        Self {
            shared,
            cluster,
            instance_id,
            subject,
            record: None,
            pending: Vec::new(),
            in_flight: false,
        }
    }

    /// Starts the next group commit if none is in flight.
    fn kick(&mut self, ctx: &mut Context<Self>) {
        if self.in_flight || self.pending.is_empty() {
            return;
        }
        self.in_flight = true;
        let batch = std::mem::take(&mut self.pending);
        // Prefer the view's copy when it is newer than ours (another replica wrote).
        let mut cached = self.record.take();
        if let Some(seen) = self.shared.view.instance(&self.cluster, &self.instance_id) {
            if cached.as_ref().is_none_or(|c| c.version < seen.version) {
                cached = Some(seen);
            }
        }
        let shared = self.shared.clone();
        let subject = self.subject.clone();
        let span = tracing::debug_span!("instance_commit", cluster = %self.cluster, instance = %self.instance_id, ops = batch.len());
        let fut = commit(shared, subject, cached, batch);
        ctx.spawn(
            tracing::Instrument::instrument(fut, span)
                .into_actor(self)
                .map(|record, act, ctx| {
                    act.record = record;
                    act.in_flight = false;
                    act.kick(ctx);
                }),
        );
    }
}

impl Actor for InstanceActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(4096);
    }
}

impl Handler<InstanceOp> for InstanceActor {
    type Result = ();

    fn handle(&mut self, op: InstanceOp, ctx: &mut Self::Context) {
        self.pending.push(op);
        self.kick(ctx);
    }
}

/// Applies one batch to the freshest record and writes it; re-reads and re-applies on
/// conflict. Returns the record as last known.
async fn commit(
    shared: Shared,
    subject: String,
    mut record: Option<Arc<Versioned<ContainerInstance>>>,
    mut batch: Vec<InstanceOp>,
) -> Option<Arc<Versioned<ContainerInstance>>> {
    let mut conflicts = 0;
    let mut must_read = record.is_none();
    loop {
        if must_read {
            match shared.journal.read::<ContainerInstance>(&subject).await {
                Ok(r) => record = r.map(Arc::new),
                Err(e) => {
                    fail_all(batch, || InstanceOpError::Journal(clone_journal_error(&e)));
                    return None;
                }
            }
        }
        let expected = record.as_ref().map_or(0, |r| r.version);
        // The record is shared with the view (which applies what the actor wrote instead
        // of decoding it), so the batch edits a copy; `remainingResources` is recomputed
        // below rather than copied.
        let mut next = record.as_ref().map(|r| r.value.clone_for_update());
        let mut results: Vec<Result<Option<Allocation>, InstanceOpError>> =
            Vec::with_capacity(batch.len());
        let mut changed = false;
        for op in batch.iter_mut() {
            results.push(apply(&mut next, &op.command_id, &mut op.kind, &mut changed));
        }
        if !changed {
            // Nothing to write (no operation changed the record): answer from it as it is.
            respond(batch, results, record.as_ref());
            return record;
        }
        let Some(mut next) = next else {
            respond(batch, results, None);
            return None;
        };
        drop_expired_fences(&mut next);
        next.remaining_resources = berth_placement::remaining_resources(&next);
        next.version = None;
        next.running_tasks_count = None;
        next.pending_tasks_count = None;
        let command_id = batch
            .iter()
            .zip(&results)
            .find(|(_, r)| r.is_ok())
            .map(|(op, _)| op.command_id.clone())
            .unwrap_or_default();
        Metrics::inc(&shared.metrics.group_commits);
        match shared
            .journal
            .write(&subject, &next, expected, &command_id)
            .await
        {
            Ok(version) => {
                next.version = Some(version);
                let written = Arc::new(Versioned {
                    value: next,
                    version,
                });
                shared.view.offer_written_instance(&written);
                respond(batch, results, Some(&written));
                return Some(written);
            }
            Err(e) if e.is_conflict() => {
                Metrics::inc(&shared.metrics.conflicts);
                conflicts += 1;
                if conflicts >= MAX_CONFLICTS {
                    fail_all(batch, || InstanceOpError::Journal(clone_journal_error(&e)));
                    return None;
                }
                Metrics::inc(&shared.metrics.retries);
                must_read = true;
            }
            Err(e) => {
                fail_all(batch, || InstanceOpError::Journal(clone_journal_error(&e)));
                return None;
            }
        }
    }
}

/// A fence outlives the command's outcome (kept 24 h), after which no delivery of the
/// command executes any more.
const FENCE_RETENTION_SECONDS: f64 = 24.0 * 3600.0;

/// Drops fences past their retention (on records being written anyway).
fn drop_expired_fences(record: &mut ContainerInstance) {
    if record.fenced_commands.is_empty() {
        return;
    }
    let horizon = berth_messages::now_epoch_seconds() - FENCE_RETENTION_SECONDS;
    record
        .fenced_commands
        .retain(|_, fence| fence.at >= horizon);
}

fn apply(
    record: &mut Option<ContainerInstance>,
    command_id: &str,
    kind: &mut OpKind,
    changed: &mut bool,
) -> Result<Option<Allocation>, InstanceOpError> {
    if let OpKind::Upsert(f) = kind {
        let next = f(record.as_ref()).map_err(InstanceOpError::Rejected)?;
        *record = Some(next);
        *changed = true;
        return Ok(None);
    }
    let Some(instance) = record.as_mut() else {
        return Err(InstanceOpError::Missing);
    };
    match kind {
        OpKind::Allocate {
            task_id,
            demand,
            group,
            require_active,
            distinct,
            claim,
        } => {
            if let Some(existing) = instance.allocations.get(task_id.as_str()) {
                return Ok(Some(existing.clone()));
            }
            // The write that follows is conditional on this record's version, so a fence
            // raised after it was read makes the write conflict and this check run again.
            if instance
                .fenced_commands
                .get(command_id)
                .is_some_and(|fence| *claim < fence.claim)
            {
                return Err(InstanceOpError::ClaimLost { claim: *claim });
            }
            if *distinct
                && instance
                    .allocations
                    .values()
                    .any(|held| held.group.as_deref() == Some(group.as_str()))
            {
                return Err(InstanceOpError::SameGroup(group.clone()));
            }
            let mut allocation = if *require_active {
                berth_placement::fit(instance, demand)
            } else {
                berth_placement::fit_resources(&berth_placement::remaining(instance), demand)
            }
            .map_err(InstanceOpError::Shortfall)?;
            allocation.group = Some(group.clone());
            allocation.claim = (*claim > 1).then_some(*claim);
            // remainingResources is refreshed once for the whole batch before the write.
            instance
                .allocations
                .insert(task_id.clone(), allocation.clone());
            *changed = true;
            Ok(Some(allocation))
        }
        OpKind::Release { task_id } => {
            if instance.allocations.remove(task_id.as_str()).is_some() {
                *changed = true;
            }
            Ok(None)
        }
        OpKind::Fence { claim } => {
            let fence = instance
                .fenced_commands
                .entry(command_id.to_string())
                .or_default();
            if fence.claim < *claim {
                fence.claim = *claim;
                fence.at = berth_messages::now_epoch_seconds();
                *changed = true;
            }
            Ok(None)
        }
        OpKind::Mutate(f) => {
            let mut candidate = instance.clone();
            f(&mut candidate).map_err(InstanceOpError::Rejected)?;
            if candidate != *instance {
                *instance = candidate;
                *changed = true;
            }
            Ok(None)
        }
        OpKind::Upsert(_) => Ok(None),
    }
}

fn respond(
    batch: Vec<InstanceOp>,
    results: Vec<Result<Option<Allocation>, InstanceOpError>>,
    record: Option<&Arc<Versioned<ContainerInstance>>>,
) {
    for (op, result) in batch.into_iter().zip(results) {
        let answer = result.and_then(|allocation| match record {
            Some(r) => Ok(OpDone {
                version: r.version,
                allocation,
                instance: r.clone(),
            }),
            None => Err(InstanceOpError::Missing),
        });
        let _ = op.reply.send(answer);
    }
}

fn fail_all(batch: Vec<InstanceOp>, error: impl Fn() -> InstanceOpError) {
    for op in batch {
        let _ = op.reply.send(Err(error()));
    }
}

fn clone_journal_error(e: &JournalError) -> JournalError {
    match e {
        JournalError::Conflict { subject, expected } => JournalError::TooManyConflicts {
            subject: format!("{subject} (last expected {expected})"),
            attempts: MAX_CONFLICTS,
        },
        other => JournalError::Consumer(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_messages::model::{InstanceStatus, Resource};

    fn instance() -> Option<ContainerInstance> {
        let registered = vec![
            Resource {
                name: Resource::CPU.into(),
                resource_type: "INTEGER".into(),
                integer_value: Some(1024),
                ..Default::default()
            },
            Resource {
                name: Resource::MEMORY.into(),
                resource_type: "INTEGER".into(),
                integer_value: Some(1024),
                ..Default::default()
            },
        ];
        Some(ContainerInstance {
            container_instance_arn: "arn:aws:ecs:r:1:container-instance/c/i1".into(),
            remaining_resources: registered.clone(),
            registered_resources: registered,
            status: InstanceStatus::Active,
            agent_connected: true,
            ..Default::default()
        })
    }

    fn allocate(task_id: &str, group: &str, distinct: bool) -> OpKind {
        OpKind::Allocate {
            task_id: task_id.into(),
            demand: Demand {
                cpu: 10,
                memory: 10,
                ..Default::default()
            },
            group: group.into(),
            require_active: true,
            distinct,
            claim: 1,
        }
    }

    /// Applies one operation of command `cmd`.
    fn run(record: &mut Option<ContainerInstance>, mut kind: OpKind) -> AllocationResult {
        apply(record, "cmd", &mut kind, &mut false)
    }

    type AllocationResult = Result<Option<Allocation>, InstanceOpError>;

    #[test]
    fn distinct_allocation_refuses_a_second_task_of_its_group() {
        let mut record = instance();
        let first = run(&mut record, allocate("t1", "g", true));
        assert_eq!(first.ok().flatten().and_then(|a| a.group), Some("g".into()));
        // Idempotent for the same task; refused for another task of the group.
        assert!(run(&mut record, allocate("t1", "g", true)).is_ok());
        assert!(matches!(
            run(&mut record, allocate("t2", "g", true)),
            Err(InstanceOpError::SameGroup(g)) if g == "g"
        ));
        // Another group, or the same group without the constraint, still fits.
        assert!(run(&mut record, allocate("t3", "h", true)).is_ok());
        assert!(run(&mut record, allocate("t4", "g", false)).is_ok());
        // Once the group's tasks are released the instance takes one again.
        for task_id in ["t1", "t4"] {
            let release = OpKind::Release {
                task_id: task_id.into(),
            };
            assert!(run(&mut record, release).is_ok());
        }
        assert!(run(&mut record, allocate("t5", "g", true)).is_ok());
        assert_eq!(record.map(|r| r.allocations.len()), Some(2));
    }

    fn allocate_as(task_id: &str, claim: u32) -> OpKind {
        let mut op = allocate(task_id, "g", false);
        if let OpKind::Allocate { claim: c, .. } = &mut op {
            *c = claim;
        }
        op
    }

    #[test]
    fn a_fenced_claim_allocates_nothing_and_later_claims_do() {
        let mut record = instance();
        // Claim 1 allocates t1 before the fence: the later delivery adopts it.
        assert!(run(&mut record, allocate_as("t1", 1)).is_ok());
        let mut changed = false;
        let mut fence = OpKind::Fence { claim: 2 };
        assert!(apply(&mut record, "cmd", &mut fence, &mut changed).is_ok());
        assert!(changed, "raising a fence is a write");
        // Fencing again with the same or a lower claim changes nothing.
        changed = false;
        for claim in [2, 1] {
            let mut again = OpKind::Fence { claim };
            assert!(apply(&mut record, "cmd", &mut again, &mut changed).is_ok());
        }
        assert!(!changed);
        // Claim 1 may no longer allocate; what it already holds is still answered.
        assert!(matches!(
            run(&mut record, allocate_as("t2", 1)),
            Err(InstanceOpError::ClaimLost { claim: 1 })
        ));
        assert!(run(&mut record, allocate_as("t1", 1)).is_ok());
        // Claim 2 allocates and is stamped; other commands are not fenced.
        let t2 = run(&mut record, allocate_as("t2", 2));
        assert_eq!(t2.ok().flatten().and_then(|a| a.claim), Some(2));
        let mut other = allocate_as("t3", 1);
        let other = apply(&mut record, "other", &mut other, &mut changed);
        assert_eq!(other.ok().flatten().map(|a| a.claim), Some(None));
        let held = record.map(|r| r.allocations.len());
        assert_eq!(held, Some(3));
    }

    #[test]
    fn fences_past_their_retention_are_dropped() {
        let mut record = instance().unwrap_or_default();
        let now = berth_messages::now_epoch_seconds();
        for (command, at) in [("old", now - FENCE_RETENTION_SECONDS - 1.0), ("new", now)] {
            record.fenced_commands.insert(
                command.into(),
                berth_messages::model::Fence { claim: 2, at },
            );
        }
        drop_expired_fences(&mut record);
        assert_eq!(
            record.fenced_commands.keys().collect::<Vec<_>>(),
            vec!["new"]
        );
    }
}

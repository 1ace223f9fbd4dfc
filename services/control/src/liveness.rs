//! Agent liveness, control-plane side. Any message on
//! `berth.host.<cluster>.<instance-id>.heartbeat` is a beat from that instance's agent.
//! Every replica hears every beat; `agentConnected` flips to false after three missed
//! intervals and back to true on the next beat. A flip is one conditional write through
//! the instance actor, and a flip that another replica already made re-reads as a no-op,
//! so there is one journal write per flip, never one per beat. After a restart a replica
//! grants every instance three intervals of grace before judging it.
//!
//! The rules live in [`crate::planners::liveness`]; this module records beats, takes
//! snapshots of the view for the planner and carries out its flips.

use crate::actors::instance::{InstanceOp, OpKind};
use crate::planners::liveness::{
    plan_beat, LivenessAction, LivenessPlanner, Now, ObservedInstance,
};
use crate::shared::{Metrics, Shared};
use berth_messages::agent::Heartbeat;
use berth_messages::codec;
use berth_messages::model::{ContainerInstance, InstanceHealthStatus, InstanceStatus};
use berth_messages::subjects;
use dashmap::{DashMap, DashSet};
use futures::StreamExt;
use std::sync::Arc;
use tokio::time::Instant;

type InstanceKey = (String, String);

pub async fn run(shared: Shared) -> Result<(), async_nats::Error> {
    let beats: Arc<DashMap<InstanceKey, Instant>> = Arc::new(DashMap::new());
    let flipping: Arc<DashSet<InstanceKey>> = Arc::new(DashSet::new());
    let planner = LivenessPlanner::with_host_lost_after(
        shared.config.heartbeat(),
        shared.config.host_lost_after(),
        Instant::now(),
    );
    let mut sub = shared
        .journal
        .client()
        .subscribe(subjects::HEARTBEAT_ALL.to_string())
        .await?;
    let checker = {
        let (observer, executor) = (shared.clone(), shared.clone());
        let beats = beats.clone();
        let flipping = flipping.clone();
        tokio::spawn(check(
            planner,
            move || observe(&observer, &beats),
            move |action| execute(&executor, &flipping, action),
        ))
    };
    while let Some(msg) = sub.next().await {
        let Some((cluster, instance)) = subjects::parse_heartbeat(&msg.subject) else {
            continue;
        };
        beats.insert((cluster.to_string(), instance.to_string()), Instant::now());
        let impaired = codec::decode_record::<Heartbeat>(&msg.payload)
            .ok()
            .and_then(|beat| beat.impaired);
        let record = shared.view.instance(cluster, instance);
        let action = plan_beat(
            cluster,
            instance,
            record.as_ref().map(|r| &r.value),
            impaired.as_deref(),
        );
        if let Some(action) = action {
            execute(&shared, &flipping, action);
        }
    }
    checker.abort();
    Ok(())
}

/// Checks on the planner's period: a snapshot from `observe`, the plan, its actions to
/// `execute`.
async fn check(
    mut planner: LivenessPlanner,
    mut observe: impl FnMut() -> Vec<ObservedInstance>,
    mut execute: impl FnMut(LivenessAction),
) {
    let mut ticker = tokio::time::interval(planner.check_period());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let now = Now::current();
        for action in planner.plan(&observe(), now) {
            execute(action);
        }
    }
}

/// Every instance the view holds, with the last beat this replica heard from it.
fn observe(shared: &Shared, beats: &DashMap<InstanceKey, Instant>) -> Vec<ObservedInstance> {
    let mut observed = Vec::new();
    for cluster in clusters(shared) {
        for record in shared.view.instances(&cluster) {
            let id = crate::planners::liveness::instance_id(&record.value);
            let last_beat = beats.get(&(cluster.clone(), id.to_string())).map(|t| *t);
            observed.push(ObservedInstance::new(&cluster, &record.value, last_beat));
        }
    }
    observed
}

fn clusters(shared: &Shared) -> Vec<String> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = shared.view.page_clusters(after.as_deref(), 500);
        out.extend(page.items.iter().map(|c| c.value.cluster_name.clone()));
        match page.next {
            Some(n) => after = Some(n),
            None => return out,
        }
    }
}

fn execute(shared: &Shared, flipping: &Arc<DashSet<InstanceKey>>, action: LivenessAction) {
    match action {
        LivenessAction::GraceGranted { late } => tracing::warn!(
            late_ms = late.as_millis() as u64,
            "liveness check ran late; granting agents a grace period"
        ),
        LivenessAction::MarkDisconnected {
            cluster,
            instance_id,
        } => flip(shared, flipping, (cluster, instance_id), Flip::Disconnected),
        LivenessAction::HostLost {
            cluster,
            instance_id,
        } => lose_host(shared, flipping, (cluster, instance_id)),
        LivenessAction::MarkConnected {
            cluster,
            instance_id,
            impaired,
        } => flip(
            shared,
            flipping,
            (cluster, instance_id),
            Flip::Heard { impaired },
        ),
    }
}

/// Why the tasks of a lost host stopped.
pub const HOST_LOST_REASON: &str = "Host lost: agent disconnected";

/// Marks every task of the host that is not STOPPED yet STOPPED, unless this replica is
/// already at it (the task actor releases their allocations as for any STOPPED task); an
/// agent that comes back sees them STOPPED and stops what it still runs.
fn lose_host(shared: &Shared, busy: &Arc<DashSet<InstanceKey>>, key: InstanceKey) {
    let live: Vec<String> = shared
        .view
        .tasks_on_instance(&key.0, &key.1)
        .iter()
        .filter(|t| t.task.value.last_status != berth_messages::model::TaskStatus::Stopped)
        .map(|t| {
            berth_messages::arn::task_id(&t.task.value.task_arn)
                .1
                .to_string()
        })
        .collect();
    if live.is_empty() || !busy.insert(key.clone()) {
        return;
    }
    let shared = shared.clone();
    let busy = busy.clone();
    tokio::spawn(async move {
        tracing::warn!(cluster = %key.0, instance = %key.1, tasks = live.len(), "host lost: marking its tasks STOPPED");
        let command_id = format!(
            "{}host-lost-{}",
            berth_messages::ids::INTERNAL_COMMAND_PREFIX,
            crate::ids::fresh_command_id()
        );
        for task_id in live {
            let change = Box::new(|t: &mut berth_messages::model::Task| {
                use berth_messages::model::TaskStatus;
                if t.last_status == TaskStatus::Stopped {
                    return Ok(());
                }
                let now = berth_messages::now_epoch_seconds();
                t.desired_status = TaskStatus::Stopped;
                t.last_status = TaskStatus::Stopped;
                t.stopped_reason = Some(HOST_LOST_REASON.into());
                t.stopping_at.get_or_insert(now);
                t.execution_stopped_at.get_or_insert(now);
                t.stopped_at = Some(now);
                for c in &mut t.containers {
                    c.last_status = "STOPPED".into();
                }
                Ok(())
            });
            let op = crate::actors::task::TaskOpKind::Update(change);
            if let Err(e) =
                crate::actors::task::TaskOp::run(&shared, &key.0, &task_id, &command_id, op).await
            {
                tracing::warn!(task = %task_id, error = %e, "cannot mark a task of a lost host STOPPED");
            }
        }
        busy.remove(&key);
    });
}

/// What a flip writes.
#[derive(Debug, Clone)]
enum Flip {
    Disconnected,
    /// The agent spoke: connected, with the health it reported.
    Heard {
        impaired: Option<String>,
    },
}

impl Flip {
    fn apply(&self, ci: &mut ContainerInstance) {
        if ci.status == InstanceStatus::Inactive {
            return;
        }
        match self {
            Flip::Disconnected => ci.agent_connected = false,
            Flip::Heard { impaired } => {
                ci.agent_connected = true;
                if ci.is_impaired() != impaired.is_some() {
                    let status = if impaired.is_some() {
                        InstanceHealthStatus::IMPAIRED
                    } else {
                        InstanceHealthStatus::OK
                    };
                    let now = berth_messages::now_epoch_seconds();
                    ci.health_status = Some(InstanceHealthStatus::runtime(status, now));
                }
            }
        }
    }

    fn connected(&self) -> bool {
        matches!(self, Flip::Heard { .. })
    }
}

/// Writes the flip unless one for this instance is in flight.
fn flip(shared: &Shared, flipping: &Arc<DashSet<InstanceKey>>, key: InstanceKey, change: Flip) {
    if !flipping.insert(key.clone()) {
        return;
    }
    let shared = shared.clone();
    let flipping = flipping.clone();
    tokio::spawn(async move {
        let command_id = format!(
            "{}liveness-{}",
            berth_messages::ids::INTERNAL_COMMAND_PREFIX,
            crate::ids::fresh_command_id()
        );
        let connected = change.connected();
        if let Flip::Heard {
            impaired: Some(reason),
        } = &change
        {
            tracing::warn!(cluster = %key.0, instance = %key.1, reason, "agent reports it cannot follow its tasks");
        }
        let op = OpKind::Mutate(Box::new(move |ci: &mut ContainerInstance| {
            change.apply(ci);
            Ok(())
        }));
        match InstanceOp::run(&shared, &key.0, &key.1, &command_id, op).await {
            Ok(done) => {
                Metrics::inc(&shared.metrics.agent_flips);
                tracing::info!(cluster = %key.0, instance = %key.1, connected, version = done.version, "agent connectivity changed");
                // Let the view catch up so the next tick does not flip again.
                shared
                    .view
                    .wait_for(done.version, shared.config.heartbeat())
                    .await;
            }
            Err(e) => {
                tracing::warn!(cluster = %key.0, instance = %key.1, error = %e, "agent flip failed")
            }
        }
        flipping.remove(&key);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    const INTERVAL: Duration = Duration::from_secs(5);

    /// A connected agent registered long ago whose last beat is `last_beat`.
    fn observed(last_beat: Option<Instant>) -> ObservedInstance {
        ObservedInstance {
            cluster: "default".into(),
            instance_id: "i-1".into(),
            agent_connected: true,
            status: InstanceStatus::Active,
            registered_at: 0.0,
            last_beat,
        }
    }

    /// The loop on virtual time: an agent that beats until `silent_after` is marked
    /// disconnected on the first check more than three intervals after its last beat.
    #[tokio::test(start_paused = true)]
    async fn the_loop_disconnects_an_agent_three_intervals_after_its_last_beat() {
        let started = Instant::now();
        let silent_after = Duration::from_secs(20);
        let actions: Arc<Mutex<Vec<(Duration, LivenessAction)>>> = Arc::default();
        let recorded = actions.clone();
        let checker = tokio::spawn(check(
            LivenessPlanner::new(INTERVAL, started),
            move || {
                let now = Instant::now();
                let last_beat = now.min(started + silent_after);
                vec![observed(Some(last_beat))]
            },
            move |action| {
                if let Ok(mut a) = recorded.lock() {
                    a.push((started.elapsed(), action));
                }
            },
        ));
        tokio::time::sleep(Duration::from_secs(60)).await;
        checker.abort();
        let actions = actions.lock().map(|a| a.clone()).unwrap_or_default();
        let disconnected: Vec<Duration> = actions
            .iter()
            .filter(|(_, a)| matches!(a, LivenessAction::MarkDisconnected { .. }))
            .map(|(at, _)| *at)
            .collect();
        // Checks run every 2.5 s: 35 s is exactly three intervals of silence, 37.5 s more.
        assert_eq!(disconnected.first(), Some(&Duration::from_millis(37_500)));
        assert!(
            !actions
                .iter()
                .any(|(_, a)| matches!(a, LivenessAction::GraceGranted { .. })),
            "an on-time loop granted grace: {actions:?}"
        );
    }
}

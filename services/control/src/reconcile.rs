//! Level-triggered repair of what a crash between two writes can leave behind: a task
//! whose record says STOPPED while its instance still holds its resources gets them
//! released. Runs periodically on every replica; releases are idempotent.
//!
//! The view keeps the set of such allocations as it applies records, so a pass costs the
//! size of that set (normally empty), not the number of allocations. Which of them to
//! release is decided by [`crate::planners::reconcile`]; this module snapshots the view
//! once per interval and carries out the releases.

use crate::actors::task::release;
use crate::planners::reconcile::{ReconcileAction, ReconcilePlanner, ReconcileSnapshot};
use crate::shared::Shared;

pub async fn run(shared: Shared) {
    let mut ticker = tokio::time::interval(shared.config.reconcile_interval());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut planner = ReconcilePlanner::default();
    loop {
        ticker.tick().await;
        let applied = shared.view.applied_sequence();
        let snapshot = ReconcileSnapshot {
            applied,
            stale: shared.view.stale_allocations(),
        };
        for action in planner.plan(snapshot) {
            execute(&shared, action).await;
        }
    }
}

async fn execute(shared: &Shared, action: ReconcileAction) {
    let ReconcileAction::Release(stale) = action;
    let command_id = format!(
        "{}reconcile-{}",
        berth_messages::ids::INTERNAL_COMMAND_PREFIX,
        crate::ids::fresh_command_id()
    );
    tracing::info!(
        cluster = %stale.cluster,
        instance = %stale.instance_id,
        task = %stale.task_id,
        since = stale.since,
        "releasing the allocation of a stopped task"
    );
    if let Err(e) = release(
        shared,
        &stale.cluster,
        &stale.instance_id,
        &stale.task_id,
        &command_id,
    )
    .await
    {
        tracing::warn!(cluster = %stale.cluster, task = %stale.task_id, error = %e, "release failed");
    }
}

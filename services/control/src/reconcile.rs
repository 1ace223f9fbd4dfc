//! Level-triggered repair of what a crash between two writes can leave behind: a task
//! whose record says STOPPED while its instance still holds its resources gets them
//! released. Runs periodically on every replica; releases are idempotent.
//!
//! The view keeps the set of such allocations as it applies records, so a pass costs the
//! size of that set (normally empty), not the number of allocations. An allocation is
//! released only once it has stayed in the set for a whole interval, so the pass never
//! races the task actor's own release right after its STOPPED write.

use crate::actors::task::release;
use crate::shared::Shared;

pub async fn run(shared: Shared) {
    let mut ticker = tokio::time::interval(shared.config.reconcile_interval());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // What the view had applied at the previous pass: an allocation stale since then has
    // been stale for a whole interval.
    let mut horizon: Option<u64> = None;
    loop {
        ticker.tick().await;
        let applied = shared.view.applied_sequence();
        if let Some(horizon) = horizon {
            for stale in shared.view.stale_allocations() {
                if stale.since > horizon {
                    continue;
                }
                let command_id = format!("internal-reconcile-{}", crate::ids::fresh_command_id());
                tracing::info!(
                    cluster = %stale.cluster,
                    instance = %stale.instance_id,
                    task = %stale.task_id,
                    since = stale.since,
                    "releasing the allocation of a stopped task"
                );
                if let Err(e) = release(
                    &shared,
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
        }
        horizon = Some(applied);
    }
}

//! Reconcile planner: which allocations left behind for STOPPED tasks to release.
//!
//! Shape (shared by every planner): a snapshot in, actions out, I/O outside. The loop in
//! `crate::reconcile` snapshots the view's stale allocations and applied sequence once per
//! interval, passes them to [`ReconcilePlanner::plan`], and carries out each release
//! through the task actors' release path. The planner's clock is the journal sequence:
//! it remembers only what the view had applied at the previous pass.
//!
//! The rule: an allocation is released once it has stayed stale for a whole interval,
//! i.e. it was already stale when the previous pass snapshotted the view, so a pass never
//! races the task actor's own release right after its STOPPED write.

use berth_journal::view::StaleAllocation;

/// What the reconciler does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReconcileAction {
    /// Release the allocation the instance record still holds for a STOPPED task.
    Release(StaleAllocation),
}

/// What one pass sees of the view.
#[derive(Debug, Clone, Default)]
pub struct ReconcileSnapshot {
    /// The journal sequence the view had applied, read before `stale`.
    pub applied: u64,
    /// Allocations held for tasks whose record is STOPPED.
    pub stale: Vec<StaleAllocation>,
}

/// The reconcile rule and the horizon of the previous pass.
#[derive(Debug, Clone, Default)]
pub struct ReconcilePlanner {
    /// What the view had applied at the previous pass: an allocation stale since then has
    /// been stale for a whole interval.
    horizon: Option<u64>,
}

impl ReconcilePlanner {
    /// The releases of one pass; the snapshot's sequence becomes the next horizon.
    pub fn plan(&mut self, snapshot: ReconcileSnapshot) -> Vec<ReconcileAction> {
        let actions = match self.horizon {
            None => Vec::new(),
            Some(horizon) => snapshot
                .stale
                .into_iter()
                .filter(|stale| stale.since <= horizon)
                .map(ReconcileAction::Release)
                .collect(),
        };
        self.horizon = Some(snapshot.applied);
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stale(task: &str, since: u64) -> StaleAllocation {
        StaleAllocation {
            cluster: "default".into(),
            instance_id: "i-1".into(),
            task_id: task.into(),
            since,
        }
    }

    fn snapshot(applied: u64, stale: &[StaleAllocation]) -> ReconcileSnapshot {
        ReconcileSnapshot {
            applied,
            stale: stale.to_vec(),
        }
    }

    #[test]
    fn the_first_pass_only_sets_the_horizon() {
        let mut planner = ReconcilePlanner::default();
        assert!(planner.plan(snapshot(100, &[stale("t1", 1)])).is_empty());
        assert_eq!(
            planner.plan(snapshot(120, &[stale("t1", 1)])),
            vec![ReconcileAction::Release(stale("t1", 1))]
        );
    }

    #[test]
    fn an_allocation_stale_for_a_whole_interval_is_released() {
        let mut planner = ReconcilePlanner::default();
        assert!(planner.plan(snapshot(100, &[])).is_empty());
        // Stale since the horizon exactly: already stale when the previous pass looked.
        let at_horizon = stale("t1", 100);
        // Stale since after the horizon: the task actor may be releasing it right now.
        let fresh = stale("t2", 101);
        assert_eq!(
            planner.plan(snapshot(150, &[at_horizon.clone(), fresh.clone()])),
            vec![ReconcileAction::Release(at_horizon)]
        );
        assert_eq!(
            planner.plan(snapshot(160, std::slice::from_ref(&fresh))),
            vec![ReconcileAction::Release(fresh)]
        );
    }

    #[test]
    fn an_allocation_released_meanwhile_is_not_planned_again() {
        let mut planner = ReconcilePlanner::default();
        assert!(planner.plan(snapshot(10, &[])).is_empty());
        assert_eq!(planner.plan(snapshot(20, &[stale("t1", 5)])).len(), 1);
        assert!(planner.plan(snapshot(30, &[])).is_empty());
    }
}

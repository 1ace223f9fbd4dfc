//! The placement pool feed: each cluster's [`InstancePool`] (instances in the flat shape
//! placement scans) is kept up to date by the apply loop, with the RUNNING tasks per
//! instance and the non-stopped tasks per group counted in here; placement reads it under
//! the view's read lock ([`View::with_pool`]) or as [`PlacementEntry`]s.

use super::scope::task_weight;
use super::task::StoredTask;
use super::{read, View};
use crate::keys::Symbols;
use crate::Versioned;
use berth_messages::model::{ContainerInstance, TaskStatus};
use berth_placement::{InstancePool, InstanceRecord};
use std::collections::BTreeMap;
use std::sync::Arc;

impl InstanceRecord for Versioned<ContainerInstance> {
    fn instance(&self) -> &ContainerInstance {
        &self.value
    }
}

/// What placement needs to know about one instance beyond its record.
#[derive(Debug, Clone)]
pub struct PlacementEntry {
    pub instance: Arc<Versioned<ContainerInstance>>,
    /// Non-stopped tasks on the instance per task group.
    pub groups: Arc<BTreeMap<String, u32>>,
    /// Tasks whose lastStatus is RUNNING.
    pub running_tasks: i64,
}

impl View {
    /// Every instance of a cluster with its task groups and running count, by id (what the
    /// cluster query language evaluates). Cheap: records and group maps are shared.
    pub fn placement_entries(&self, cluster: &str) -> Vec<PlacementEntry> {
        let Some(scope) = self.inner.scope(cluster) else {
            return Vec::new();
        };
        let data = read(&scope.data);
        let empty: Arc<BTreeMap<String, u32>> = Arc::default();
        data.instances
            .iter()
            .map(|(id, instance)| {
                let slot = data.pool.slot(id);
                PlacementEntry {
                    instance: instance.clone(),
                    groups: slot
                        .and_then(|s| data.pool.groups_of(s))
                        .map_or_else(|| empty.clone(), Arc::clone),
                    running_tasks: slot.map_or(0, |s| data.pool.running(s)),
                }
            })
            .collect()
    }

    /// Runs `decide` over the cluster's placement pool under the view's read lock (keep it
    /// short: the apply loop waits for it). An unknown cluster has an empty pool.
    pub fn with_pool<R>(&self, cluster: &str, decide: impl FnOnce(&InstancePool) -> R) -> R {
        match self.inner.scope(cluster) {
            Some(scope) => decide(&read(&scope.data).pool),
            None => decide(&InstancePool::new()),
        }
    }
}

/// Counts a task record into (`sign` 1) or out of (-1) its instance's figures in the
/// placement pool: RUNNING tasks, and tasks per group unless STOPPED.
pub(super) fn count_in_pool(
    pool: &mut InstancePool,
    syms: &Symbols,
    instance_id: &str,
    task: &StoredTask,
    sign: i64,
) {
    let (running, _) = task_weight(task.last);
    pool.add_running(instance_id, sign * running);
    if task.last != TaskStatus::Stopped {
        pool.add_group_tasks(instance_id, syms.name(task.group), sign);
    }
}

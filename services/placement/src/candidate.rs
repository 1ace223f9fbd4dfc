//! What the query language and the strategies need to know about one container instance
//! beyond its record: the task groups it runs and its running-task count. The caller
//! derives them from its view of the tasks; this crate never reads tasks itself.

use berth_messages::model::ContainerInstance;
use std::collections::BTreeMap;

/// One container instance as placement and the cluster query language see it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub instance: &'a ContainerInstance,
    /// Non-stopped tasks on the instance, per task group (`task:group`, spread and
    /// distinctInstance read it).
    pub groups: &'a BTreeMap<String, u32>,
    /// What `runningTasksCount` compares against.
    pub running_tasks: i64,
}

impl<'a> Candidate<'a> {
    /// A candidate whose running-task count is the record's `runningTasksCount` (0 if
    /// unset).
    pub fn from_record(instance: &'a ContainerInstance, groups: &'a BTreeMap<String, u32>) -> Self {
        Self {
            instance,
            groups,
            running_tasks: instance.running_tasks_count.unwrap_or(0),
        }
    }
}

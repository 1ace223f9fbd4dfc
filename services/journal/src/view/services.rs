//! Services: their records by cluster and name, the tasks each deployment started, and
//! the changes the service scheduler waits on. A change is a service record applied, a
//! task of a service's group (`service:<name>`) applied, or an instance whose status,
//! agent connection, health or attributes changed (every service of its cluster).
//! Changes are collected as a set and handed over in one batch, so a burst of task
//! records costs the scheduler one pass per service, not one per record.

use super::task::Health;
use super::{read, write, Inner, View};
use crate::Versioned;
use berth_messages::model::{ContainerInstance, StopCode, TaskStatus};
use berth_messages::service::Service;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

/// Services by cluster, then by name.
pub(super) type ServiceMap = BTreeMap<String, BTreeMap<String, Arc<Versioned<Service>>>>;

/// What the service scheduler reads of one task of a deployment.
#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentTask {
    pub task_id: String,
    pub instance_id: String,
    pub last: TaskStatus,
    pub desired: TaskStatus,
    pub health: Option<Health>,
    pub started_at: Option<f64>,
    pub stop_code: Option<StopCode>,
}

/// What changed since the scheduler last looked.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ServiceChanges {
    /// (cluster, service name).
    pub services: HashSet<(String, String)>,
    /// Clusters whose instances changed: every service of each.
    pub clusters: HashSet<String>,
}

impl ServiceChanges {
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.clusters.is_empty()
    }
}

#[derive(Default)]
pub(super) struct ServiceState {
    pub(super) records: std::sync::RwLock<ServiceMap>,
    changes: Mutex<ServiceChanges>,
    notify: tokio::sync::Notify,
}

impl ServiceState {
    fn changed(&self, f: impl FnOnce(&mut ServiceChanges)) {
        f(&mut self.changes.lock().unwrap_or_else(PoisonError::into_inner));
        self.notify.notify_one();
    }
}

/// The service a task group names (`service:<name>`).
pub(super) fn service_of_group(group: &str) -> Option<&str> {
    group.strip_prefix("service:")
}

/// Whether an instance changed in a way that matters to services (not its allocations).
pub(super) fn instance_matters(old: Option<&ContainerInstance>, new: &ContainerInstance) -> bool {
    match old {
        None => true,
        Some(old) => {
            old.status != new.status
                || old.agent_connected != new.agent_connected
                || old.health_status != new.health_status
                || old.attributes != new.attributes
        }
    }
}

impl Inner {
    pub(super) fn apply_service(&self, cluster: &str, name: &str, value: Service, version: u64) {
        {
            let mut records = write(&self.services.records);
            let by_name = records.entry(cluster.to_string()).or_default();
            if by_name.get(name).is_some_and(|s| s.version >= version) {
                return;
            }
            let mut value = value;
            value.version = Some(version);
            by_name.insert(name.to_string(), Arc::new(Versioned { value, version }));
        }
        self.services.changed(|c| {
            c.services.insert((cluster.to_string(), name.to_string()));
        });
    }

    /// A task of `group` was applied.
    pub(super) fn service_task_changed(&self, cluster: &str, group: &str) {
        if let Some(name) = service_of_group(group) {
            self.services.changed(|c| {
                c.services.insert((cluster.to_string(), name.to_string()));
            });
        }
    }

    /// An instance of `cluster` changed in a way that matters to its services.
    pub(super) fn service_instances_changed(&self, cluster: &str) {
        let has_services = read(&self.services.records)
            .get(cluster)
            .is_some_and(|s| !s.is_empty());
        if has_services {
            self.services.changed(|c| {
                c.clusters.insert(cluster.to_string());
            });
        }
    }
}

impl View {
    pub fn service(&self, cluster: &str, name: &str) -> Option<Arc<Versioned<Service>>> {
        read(&self.inner.services.records)
            .get(cluster)
            .and_then(|s| s.get(name))
            .cloned()
    }

    /// A cluster's services of every status, by name.
    pub fn services(&self, cluster: &str) -> Vec<Arc<Versioned<Service>>> {
        read(&self.inner.services.records)
            .get(cluster)
            .map(|s| s.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Services by name after `after` (exclusive), at most `limit`.
    pub fn services_after(
        &self,
        cluster: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Vec<Arc<Versioned<Service>>> {
        use std::ops::Bound;
        let records = read(&self.inner.services.records);
        let Some(by_name) = records.get(cluster) else {
            return Vec::new();
        };
        let start = match after {
            Some(a) => Bound::Excluded(a.to_string()),
            None => Bound::Unbounded,
        };
        by_name
            .range((start, Bound::Unbounded))
            .take(limit)
            .map(|(_, s)| s.clone())
            .collect()
    }

    /// Every (cluster, service name) the view holds.
    pub fn all_services(&self) -> Vec<(String, String)> {
        read(&self.inner.services.records)
            .iter()
            .flat_map(|(c, s)| s.keys().map(move |n| (c.clone(), n.clone())))
            .collect()
    }

    /// Waits until something changed for services, then takes every change so far.
    pub async fn service_changes(&self) -> ServiceChanges {
        loop {
            let notified = self.inner.services.notify.notified();
            let taken = std::mem::take(
                &mut *self
                    .inner
                    .services
                    .changes
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner),
            );
            if !taken.is_empty() {
                return taken;
            }
            notified.await;
        }
    }

    /// What the service scheduler needs of the tasks whose `startedBy` is `started_by`
    /// (a deployment's tasks), by task id, read without decoding the records.
    pub fn deployment_tasks(&self, cluster: &str, started_by: &str) -> Vec<DeploymentTask> {
        let Some(scope) = self.inner.scope(cluster) else {
            return Vec::new();
        };
        let data = read(&scope.data);
        let Some(sym) = data.syms.get(started_by) else {
            return Vec::new();
        };
        let Some(ids) = data.by_started_by.get(&sym) else {
            return Vec::new();
        };
        ids.iter()
            .filter_map(|id| {
                let t = data.tasks.get(id)?;
                Some(DeploymentTask {
                    task_id: id.to_string(),
                    instance_id: data.syms.name(t.instance).to_string(),
                    last: t.last,
                    desired: t.desired,
                    health: t.health,
                    started_at: (!t.started_at.is_nan()).then_some(t.started_at),
                    stop_code: t.stop_code,
                })
            })
            .collect()
    }

    /// (running, pending) tasks of a deployment that are still meant to run, counted
    /// without decoding them.
    pub fn deployment_counts(&self, cluster: &str, started_by: &str) -> (i64, i64) {
        let Some(scope) = self.inner.scope(cluster) else {
            return (0, 0);
        };
        let data = read(&scope.data);
        let Some(ids) = data
            .syms
            .get(started_by)
            .and_then(|sym| data.by_started_by.get(&sym))
        else {
            return (0, 0);
        };
        let (mut running, mut pending) = (0, 0);
        for t in ids.iter().filter_map(|id| data.tasks.get(id)) {
            if t.last == TaskStatus::Running {
                running += 1;
            } else if t.last.is_pending() {
                pending += 1;
            }
        }
        (running, pending)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use berth_messages::model::{InstanceStatus, TaskStatus};
    use berth_messages::subjects;

    fn service(name: &str) -> Service {
        Service {
            service_name: name.into(),
            desired_count: 2,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn services_and_their_changes() {
        let mut feed = Feed::new();
        feed.view.inner.mark_ready();
        let v1 = feed.put(&subjects::service("c", "web"), &service("web"));
        let got = feed.view.service("c", "web").unwrap();
        assert_eq!(got.version, v1);
        assert_eq!(got.value.version, Some(v1));
        let changes = feed.view.service_changes().await;
        assert!(changes.services.contains(&("c".into(), "web".into())));
        // A task of the service's group marks it; a task of another group does not.
        let mut s = spec("i1", "web", TaskStatus::Running);
        s.group = "service:web".into();
        s.started_by = Some("ecs-svc/1".into());
        put_task(&mut feed, "c", "t1", &s);
        let mut other = spec("i1", "batch", TaskStatus::Running);
        other.started_by = Some("ecs-svc/1".into());
        put_task(&mut feed, "c", "t2", &other);
        let changes = feed.view.service_changes().await;
        assert_eq!(changes.services.len(), 1);
        assert_eq!(feed.view.deployment_tasks("c", "ecs-svc/1").len(), 2);
        let facts = feed.view.deployment_tasks("c", "ecs-svc/1");
        assert_eq!(facts.len(), 2);
        assert_eq!(facts[0].task_id, "t1");
        assert_eq!(facts[0].instance_id, "i1");
        assert_eq!(facts[0].last, TaskStatus::Running);
        assert_eq!(feed.view.deployment_counts("c", "ecs-svc/1"), (2, 0));
        assert!(feed.view.deployment_tasks("c", "ecs-svc/2").is_empty());
        // An instance's status change marks its cluster.
        feed.put(
            &subjects::instance("c", "i1"),
            &instance("c", "i1", InstanceStatus::Draining),
        );
        let changes = feed.view.service_changes().await;
        assert!(changes.clusters.contains("c"));
        assert_eq!(feed.view.services_after("c", None, 10).len(), 1);
        assert!(feed.view.services_after("c", Some("web"), 10).is_empty());
        assert_eq!(feed.view.all_services(), vec![("c".into(), "web".into())]);
    }
}

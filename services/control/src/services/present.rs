//! Services as the API shows them: the record with its internal fields removed and
//! `runningCount` / `pendingCount` (of the service and of each deployment) derived from
//! the tasks the view holds, never stored.

use crate::shared::Shared;
use berth_journal::Versioned;
use berth_messages::model::TaskStatus;
use berth_messages::service::Service;

/// (running, pending) tasks a deployment started that are still meant to run.
pub fn deployment_counts(shared: &Shared, cluster: &str, deployment_id: &str) -> (i64, i64) {
    let mut running = 0;
    let mut pending = 0;
    for entry in shared.view.tasks_started_by(cluster, deployment_id) {
        let t = &entry.task.value;
        if t.desired_status == TaskStatus::Stopped && t.last_status == TaskStatus::Stopped {
            continue;
        }
        if t.last_status == TaskStatus::Running {
            running += 1;
        } else if t.last_status.is_pending() {
            pending += 1;
        }
    }
    (running, pending)
}

/// The service as DescribeServices and the service actions answer it.
pub fn presented(
    shared: &Shared,
    cluster: &str,
    record: &Versioned<Service>,
    tags: bool,
) -> Service {
    let mut s = record.value.clone().presented(record.version);
    let (mut running, mut pending) = (0, 0);
    for d in &mut s.deployments {
        let (r, p) = deployment_counts(shared, cluster, &d.id);
        d.running_count = r;
        d.pending_count = p;
        running += r;
        pending += p;
    }
    s.running_count = running;
    s.pending_count = pending;
    if !tags {
        s.tags.clear();
    }
    s
}

//! Services as the API shows them: the record with its internal fields removed and
//! `runningCount` / `pendingCount` (of the service and of each deployment) derived from
//! the tasks the view holds, never stored.

use crate::shared::Shared;
use berth_journal::Versioned;
use berth_messages::service::Service;

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
        let (r, p) = shared.view.deployment_counts(cluster, &d.id);
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

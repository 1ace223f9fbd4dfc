//! CreateCluster and DeleteCluster. A cluster record changes rarely, so its writes use
//! the journal's read-modify-conditional-write loop directly.

use super::Delivery;
use crate::shared::{ExecResult, Shared};
use berth_journal::UpdateError;
use berth_messages::api::{ClusterResponse, CreateClusterRequest, DeleteClusterRequest};
use berth_messages::command::{CommandResponse, DEFAULT_CLUSTER};
use berth_messages::model::{Cluster, ClusterStatus, InstanceStatus};
use berth_messages::{arn, subjects, ApiError, ErrorType};

const ATTEMPTS: u32 = 20;

/// The cluster as the API returns it: the record plus counters derived from the view.
pub fn with_counters(shared: &Shared, mut cluster: Cluster) -> Cluster {
    let counts = shared.view.counts(&cluster.cluster_name);
    cluster.registered_container_instances_count = Some(counts.registered_instances);
    cluster.running_tasks_count = Some(counts.running_tasks);
    cluster.pending_tasks_count = Some(counts.pending_tasks);
    cluster.active_services_count = Some(
        shared
            .view
            .services(&cluster.cluster_name)
            .iter()
            .filter(|s| s.value.status == berth_messages::service::ServiceStatus::Active)
            .count() as i64,
    );
    cluster
}

pub(super) fn updated<T>(
    r: Result<Option<berth_journal::Versioned<T>>, UpdateError<ApiError>>,
) -> ExecResult<Option<berth_journal::Versioned<T>>> {
    match r {
        Ok(v) => Ok(v),
        Err(UpdateError::Rejected(e)) => Err(e.into()),
        Err(UpdateError::Journal(e)) => Err(e.into()),
    }
}

pub async fn create(
    shared: &Shared,
    d: &Delivery,
    r: CreateClusterRequest,
) -> ExecResult<(CommandResponse, u64)> {
    let name = r
        .cluster_name
        .clone()
        .unwrap_or_else(|| DEFAULT_CLUSTER.to_string());
    let subject = subjects::cluster(&name);
    let arn = shared.arns.cluster(&name);
    let mut unchanged: Option<Cluster> = None;
    let written = updated(
        shared
            .journal
            .update::<Cluster, ApiError, _>(&subject, &d.command_id, ATTEMPTS, |current| {
                match current {
                    Some(c) if c.value.status == ClusterStatus::Active => {
                        unchanged = Some(c.value);
                        Ok(None)
                    }
                    _ => Ok(Some(Cluster {
                        cluster_arn: arn.clone(),
                        cluster_name: name.clone(),
                        status: ClusterStatus::Active,
                        settings: r.settings.clone(),
                        tags: r.tags.clone(),
                        ..Default::default()
                    })),
                }
            })
            .await,
    )?;
    let (cluster, seq) = match (written, unchanged) {
        (Some(w), _) => (w.value, w.version),
        (None, Some(c)) => (c, 0),
        (None, None) => return Err(ApiError::server("cluster write produced nothing").into()),
    };
    Ok((
        CommandResponse::Cluster(ClusterResponse {
            cluster: with_counters(shared, cluster),
        }),
        seq,
    ))
}

pub async fn delete(
    shared: &Shared,
    d: &Delivery,
    r: DeleteClusterRequest,
) -> ExecResult<(CommandResponse, u64)> {
    let name = arn::cluster_name(&r.cluster).to_string();
    super::active_cluster(shared, &name).await?;
    let last = shared.journal.state_last_sequence().await?;
    shared
        .view
        .wait_for(last, std::time::Duration::from_secs(5))
        .await;
    let registered = shared
        .view
        .instances(&name)
        .iter()
        .filter(|i| i.value.status != InstanceStatus::Inactive)
        .count();
    if registered > 0 {
        return Err(ApiError::new(
            ErrorType::ClusterContainsContainerInstancesException,
            format!("The cluster {name} has {registered} registered container instances: deregister them first"),
        )
        .into());
    }
    let counts = shared.view.counts(&name);
    if counts.running_tasks + counts.pending_tasks > 0 {
        return Err(ApiError::new(
            ErrorType::ClusterContainsTasksException,
            format!("The cluster {name} has active tasks: stop them first"),
        )
        .into());
    }
    let written = updated(
        shared
            .journal
            .update::<Cluster, ApiError, _>(
                &subjects::cluster(&name),
                &d.command_id,
                ATTEMPTS,
                |current| match current {
                    Some(c) if c.value.status == ClusterStatus::Active => {
                        let mut next = c.value;
                        next.status = ClusterStatus::Inactive;
                        Ok(Some(next))
                    }
                    _ => Err(ApiError::cluster_not_found(&name)),
                },
            )
            .await,
    )?
    .ok_or_else(|| ApiError::cluster_not_found(&name))?;
    Ok((
        CommandResponse::Cluster(ClusterResponse {
            cluster: with_counters(shared, written.value),
        }),
        written.version,
    ))
}

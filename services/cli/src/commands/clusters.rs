//! `berth clusters list|describe|create|delete`.

use super::{all_pages, failures_error, Context};
use crate::args::ClustersCommand;
use crate::error::CliError;
use crate::output::{self, Table};
use berth_messages::api::*;
use berth_messages::command::Action;
use berth_messages::model::Cluster;

pub async fn run(ctx: &Context, command: ClustersCommand) -> Result<(), CliError> {
    match command {
        ClustersCommand::List => list(ctx).await,
        ClustersCommand::Describe { names } => {
            let names = if names.is_empty() {
                vec![ctx.cluster.clone()]
            } else {
                names
            };
            describe(ctx, names).await
        }
        ClustersCommand::Create { name } => {
            let r: ClusterResponse = ctx
                .client
                .call(
                    Action::CreateCluster,
                    &CreateClusterRequest {
                        cluster_name: Some(name),
                        ..Default::default()
                    },
                )
                .await?;
            ctx.emit(&r, || {
                format!(
                    "cluster {} is {} ({})\n",
                    r.cluster.cluster_name,
                    status(&r.cluster),
                    r.cluster.cluster_arn
                )
            })
        }
        ClustersCommand::Delete { name } => {
            let r: ClusterResponse = ctx
                .client
                .call(
                    Action::DeleteCluster,
                    &DeleteClusterRequest { cluster: name },
                )
                .await?;
            ctx.emit(&r, || {
                format!(
                    "cluster {} deleted ({})\n",
                    r.cluster.cluster_name,
                    status(&r.cluster)
                )
            })
        }
    }
}

async fn list(ctx: &Context) -> Result<(), CliError> {
    let arns = all_pages(|token| async move {
        let r: ListClustersResponse = ctx
            .client
            .call(
                Action::ListClusters,
                &ListClustersRequest {
                    next_token: token,
                    max_results: Some(100),
                },
            )
            .await?;
        Ok((r.cluster_arns, r.next_token))
    })
    .await?;
    if ctx.json() {
        return ctx.emit(
            &ListClustersResponse {
                cluster_arns: arns,
                next_token: None,
            },
            String::new,
        );
    }
    let mut clusters = Vec::new();
    for chunk in arns.chunks(100) {
        let r: DescribeClustersResponse = ctx
            .client
            .call(
                Action::DescribeClusters,
                &DescribeClustersRequest {
                    clusters: Some(chunk.to_vec()),
                    include: Vec::new(),
                },
            )
            .await?;
        clusters.extend(r.clusters);
    }
    output::print(&table(&clusters));
    Ok(())
}

async fn describe(ctx: &Context, names: Vec<String>) -> Result<(), CliError> {
    let r: DescribeClustersResponse = ctx
        .client
        .call(
            Action::DescribeClusters,
            &DescribeClustersRequest {
                clusters: Some(names),
                include: Vec::new(),
            },
        )
        .await?;
    ctx.emit(&r, || {
        if r.clusters.is_empty() {
            String::new()
        } else {
            table(&r.clusters)
        }
    })?;
    if !r.failures.is_empty() {
        let missing: Vec<String> = r
            .failures
            .iter()
            .filter_map(|f| f.arn.as_deref())
            .map(|arn| berth_messages::arn::cluster_name(arn).to_string())
            .collect();
        if r.failures.len() == missing.len() {
            let hint = missing.first().map_or(String::new(), |n| {
                format!(": create it with `berth clusters create {n}`")
            });
            return Err(CliError::other(format!(
                "cluster {} not found{hint}",
                missing.join(", ")
            )));
        }
        return failures_error("some clusters could not be described", &r.failures);
    }
    Ok(())
}

fn status(c: &Cluster) -> &'static str {
    use berth_messages::model::ClusterStatus as S;
    match c.status {
        S::Active => "ACTIVE",
        S::Provisioning => "PROVISIONING",
        S::Deprovisioning => "DEPROVISIONING",
        S::Failed => "FAILED",
        S::Inactive => "INACTIVE",
    }
}

fn table(clusters: &[Cluster]) -> String {
    let mut t = Table::new(&["NAME", "STATUS", "INSTANCES", "RUNNING", "PENDING"]);
    let n = |v: Option<i64>| v.unwrap_or(0).to_string();
    for c in clusters {
        t.row(vec![
            c.cluster_name.clone(),
            status(c).to_string(),
            n(c.registered_container_instances_count),
            n(c.running_tasks_count),
            n(c.pending_tasks_count),
        ]);
    }
    t.render()
}

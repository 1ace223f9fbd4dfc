//! `berth instances list|describe|drain|activate|attributes`.

use super::{all_pages, failures_error, Context};
use crate::args::{InstanceStatusArg, InstancesCommand};
use crate::error::CliError;
use crate::output::{self, free_of, resource_set, short_id, Table};
use berth_messages::api::*;
use berth_messages::command::Action;
use berth_messages::model::{Attribute, ContainerInstance, InstanceStatus, Resource};

pub async fn run(ctx: &Context, command: InstancesCommand) -> Result<(), CliError> {
    match command {
        InstancesCommand::List { status } => list(ctx, status.map(instance_status)).await,
        InstancesCommand::Describe { ids } => {
            let r = describe_instances(ctx, &ids).await?;
            ctx.emit(&r, || {
                r.container_instances
                    .iter()
                    .map(detail)
                    .collect::<Vec<_>>()
                    .join("\n")
            })?;
            failures_error("some instances could not be described", &r.failures)
        }
        InstancesCommand::Drain { id } => set_state(ctx, id, InstanceStatus::Draining).await,
        InstancesCommand::Activate { id } => set_state(ctx, id, InstanceStatus::Active).await,
        InstancesCommand::Attributes { id, put, delete } => attributes(ctx, id, put, delete).await,
    }
}

fn instance_status(s: InstanceStatusArg) -> InstanceStatus {
    match s {
        InstanceStatusArg::Active => InstanceStatus::Active,
        InstanceStatusArg::Draining => InstanceStatus::Draining,
        InstanceStatusArg::Registering => InstanceStatus::Registering,
        InstanceStatusArg::Deregistering => InstanceStatus::Deregistering,
        InstanceStatusArg::RegistrationFailed => InstanceStatus::RegistrationFailed,
    }
}

/// DescribeContainerInstances in batches of 100.
pub async fn describe_instances(
    ctx: &Context,
    ids: &[String],
) -> Result<ContainerInstancesResponse, CliError> {
    let mut out = ContainerInstancesResponse::default();
    for chunk in ids.chunks(100) {
        let r: ContainerInstancesResponse = ctx
            .client
            .call(
                Action::DescribeContainerInstances,
                &DescribeContainerInstancesRequest {
                    cluster: Some(ctx.cluster.clone()),
                    container_instances: chunk.to_vec(),
                    include: Vec::new(),
                },
            )
            .await?;
        out.container_instances.extend(r.container_instances);
        out.failures.extend(r.failures);
    }
    Ok(out)
}

async fn list(ctx: &Context, status: Option<InstanceStatus>) -> Result<(), CliError> {
    let arns = all_pages(|token| async move {
        let r: ListContainerInstancesResponse = ctx
            .client
            .call(
                Action::ListContainerInstances,
                &ListContainerInstancesRequest {
                    cluster: Some(ctx.cluster.clone()),
                    status,
                    next_token: token,
                    max_results: Some(100),
                    ..Default::default()
                },
            )
            .await?;
        Ok((r.container_instance_arns, r.next_token))
    })
    .await?;
    if ctx.json() {
        return ctx.emit(
            &ListContainerInstancesResponse {
                container_instance_arns: arns,
                next_token: None,
            },
            String::new,
        );
    }
    let r = describe_instances(ctx, &arns).await?;
    output::print(&table(&r.container_instances));
    Ok(())
}

fn table(instances: &[ContainerInstance]) -> String {
    let mut t = Table::new(&[
        "INSTANCE",
        "STATUS",
        "AGENT",
        "CPU FREE/TOTAL",
        "MEMORY FREE/TOTAL",
        "RUNNING",
        "PENDING",
        "VERSION",
    ]);
    for ci in instances {
        t.row(vec![
            short_id(&ci.container_instance_arn).to_string(),
            ci.status.as_str().to_string(),
            if ci.agent_connected {
                "connected"
            } else {
                "disconnected"
            }
            .to_string(),
            free_of(
                &ci.remaining_resources,
                &ci.registered_resources,
                Resource::CPU,
            ),
            free_of(
                &ci.remaining_resources,
                &ci.registered_resources,
                Resource::MEMORY,
            ),
            ci.running_tasks_count.unwrap_or(0).to_string(),
            ci.pending_tasks_count.unwrap_or(0).to_string(),
            ci.version_info
                .agent_version
                .clone()
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    t.render()
}

fn detail(ci: &ContainerInstance) -> String {
    let ports = |name: &str| {
        let used = resource_set(&ci.remaining_resources, name);
        if used.is_empty() {
            "-".to_string()
        } else {
            used.join(",")
        }
    };
    let mut s = String::new();
    s.push_str(&format!("instance:   {}\n", ci.container_instance_arn));
    s.push_str(&format!(
        "status:     {}{}\n",
        ci.status.as_str(),
        ci.status_reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default()
    ));
    s.push_str(&format!("agent:      {}\n", connected(ci)));
    s.push_str(&format!(
        "cpu:        {} free\n",
        free_of(
            &ci.remaining_resources,
            &ci.registered_resources,
            Resource::CPU
        )
    ));
    s.push_str(&format!(
        "memory:     {} MiB free\n",
        free_of(
            &ci.remaining_resources,
            &ci.registered_resources,
            Resource::MEMORY
        )
    ));
    s.push_str(&format!(
        "ports:      {} (tcp, reserved or in use)\n",
        ports(Resource::PORTS)
    ));
    s.push_str(&format!(
        "tasks:      {} running, {} pending\n",
        ci.running_tasks_count.unwrap_or(0),
        ci.pending_tasks_count.unwrap_or(0)
    ));
    s.push_str(&format!(
        "registered: {}\n",
        output::timestamp(ci.registered_at)
    ));
    if !ci.attributes.is_empty() {
        s.push_str("attributes:\n");
        for a in &ci.attributes {
            s.push_str(&format!("  {}\n", attribute_text(a)));
        }
    }
    s
}

fn connected(ci: &ContainerInstance) -> String {
    let version = ci
        .version_info
        .agent_version
        .as_deref()
        .map(|v| format!(", version {v}"))
        .unwrap_or_default();
    if ci.agent_connected {
        format!("connected{version}")
    } else {
        format!("disconnected{version}")
    }
}

fn attribute_text(a: &Attribute) -> String {
    match &a.value {
        Some(v) => format!("{}={v}", a.name),
        None => a.name.clone(),
    }
}

async fn set_state(ctx: &Context, id: String, status: InstanceStatus) -> Result<(), CliError> {
    let r: ContainerInstancesResponse = ctx
        .client
        .call(
            Action::UpdateContainerInstancesState,
            &UpdateContainerInstancesStateRequest {
                cluster: Some(ctx.cluster.clone()),
                container_instances: vec![id],
                status,
            },
        )
        .await?;
    ctx.emit(&r, || {
        r.container_instances
            .iter()
            .map(|ci| {
                format!(
                    "instance {} is {}\n",
                    short_id(&ci.container_instance_arn),
                    ci.status.as_str()
                )
            })
            .collect()
    })?;
    failures_error("the instance state was not changed", &r.failures)
}

/// Parses `name=value` (or a bare `name`) of `--put`.
pub fn parse_attribute(text: &str) -> Result<(String, Option<String>), CliError> {
    let (name, value) = match text.split_once('=') {
        Some((n, v)) => (n.trim(), Some(v.to_string())),
        None => (text.trim(), None),
    };
    if name.is_empty() {
        return Err(CliError::input(format!(
            "--put '{text}': expected NAME=VALUE (or NAME), e.g. --put stack=prod"
        )));
    }
    Ok((name.to_string(), value))
}

async fn attributes(
    ctx: &Context,
    id: String,
    put: Vec<String>,
    delete: Vec<String>,
) -> Result<(), CliError> {
    let target = |name: String, value: Option<String>| Attribute {
        name,
        value,
        target_type: Some("container-instance".into()),
        target_id: Some(id.clone()),
    };
    if !put.is_empty() {
        let mut attributes = Vec::new();
        for p in &put {
            let (name, value) = parse_attribute(p)?;
            attributes.push(target(name, value));
        }
        let _: AttributesResponse = ctx
            .client
            .call(
                Action::PutAttributes,
                &AttributesRequest {
                    cluster: Some(ctx.cluster.clone()),
                    attributes,
                },
            )
            .await?;
    }
    if !delete.is_empty() {
        let attributes = delete.into_iter().map(|n| target(n, None)).collect();
        let _: AttributesResponse = ctx
            .client
            .call(
                Action::DeleteAttributes,
                &AttributesRequest {
                    cluster: Some(ctx.cluster.clone()),
                    attributes,
                },
            )
            .await?;
    }
    let r = describe_instances(ctx, std::slice::from_ref(&id)).await?;
    failures_error("no such instance", &r.failures).map_err(|_| {
        CliError::other(format!(
            "instance {id} not found in cluster {}: `berth instances list` shows its instances",
            ctx.cluster
        ))
    })?;
    let Some(ci) = r.container_instances.first() else {
        return Err(CliError::other(format!("instance {id} not found")));
    };
    let attributes: Vec<Attribute> = ci
        .attributes
        .iter()
        .map(|a| Attribute {
            target_type: Some("container-instance".into()),
            target_id: Some(ci.container_instance_arn.clone()),
            ..a.clone()
        })
        .collect();
    ctx.emit(
        &AttributesResponse {
            attributes: attributes.clone(),
        },
        || {
            let mut t = Table::new(&["NAME", "VALUE"]);
            for a in &attributes {
                t.row(vec![a.name.clone(), a.value.clone().unwrap_or_default()]);
            }
            t.render()
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_parse() {
        assert_eq!(
            parse_attribute("stack=prod").unwrap(),
            ("stack".into(), Some("prod".into()))
        );
        assert_eq!(parse_attribute("gpu").unwrap(), ("gpu".into(), None));
        assert_eq!(
            parse_attribute("a=b=c").unwrap(),
            ("a".into(), Some("b=c".into()))
        );
        assert!(parse_attribute("=x").is_err());
    }
}

//! Container-instance commands: registration, deregistration, state (ACTIVE/DRAINING)
//! and attributes. Every write goes through the instance's actor.

use super::Delivery;
use crate::actors::instance::{InstanceOp, InstanceOpError, OpKind};
use crate::shared::{ExecResult, Shared};
use berth_messages::api::*;
use berth_messages::command::CommandResponse;
use berth_messages::model::{
    reason, Attribute, ContainerInstance, Failure, InstanceStatus, Resource, TaskStatus,
};
use berth_messages::{arn, validate, ApiError, ErrorType};

/// The instance as the API returns it: record plus derived counters and version.
pub fn presented(
    shared: &Shared,
    cluster: &str,
    mut ci: ContainerInstance,
    version: u64,
) -> ContainerInstance {
    let id = instance_id_of(&ci.container_instance_arn);
    let (running, pending) = shared.view.instance_counts(cluster, id);
    ci.running_tasks_count = Some(running);
    ci.pending_tasks_count = Some(pending);
    ci.version = Some(version);
    ci
}

fn instance_id_of(arn_or_id: &str) -> &str {
    arn::container_instance_id(arn_or_id).1
}

/// Resolves an instance reference against the request's cluster.
fn resolve(cluster: &str, reference: &str) -> Result<String, ApiError> {
    let (in_arn, id) = arn::container_instance_id(reference);
    if let Some(c) = in_arn {
        if c != cluster {
            return Err(ApiError::invalid(format!(
                "container instance {reference} belongs to cluster {c}, not {cluster}"
            )));
        }
    }
    Ok(id.to_string())
}

pub async fn register(
    shared: &Shared,
    d: &Delivery,
    r: RegisterContainerInstanceRequest,
) -> ExecResult<(CommandResponse, u64)> {
    let cluster =
        berth_messages::command::CommandRequest::RegisterContainerInstance(r.clone()).scope();
    super::active_cluster(shared, &cluster).await?;
    let instance_id = match &r.container_instance_arn {
        Some(given) => resolve(&cluster, given)?,
        None => crate::ids::derived(&d.command_id, "instance"),
    };
    let arn = shared.arns.container_instance(&cluster, &instance_id);
    let ec2_instance_id = r
        .instance_identity_document
        .as_deref()
        .and_then(|doc| serde_json::from_str::<serde_json::Value>(doc).ok())
        .and_then(|v| {
            v.get("instanceId")
                .and_then(|i| i.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| instance_id.clone());
    let registered = normalize_resources(&r.total_resources);
    let now = berth_messages::now_epoch_seconds();
    let request = r.clone();
    let arn_for_record = arn.clone();
    let upsert = OpKind::Upsert(Box::new(move |current: Option<&ContainerInstance>| {
        let mut next = current.cloned().unwrap_or_default();
        let fresh = current.is_none_or(|c| c.status == InstanceStatus::Inactive);
        next.container_instance_arn = arn_for_record.clone();
        next.ec2_instance_id = ec2_instance_id.clone();
        next.registered_resources = registered.clone();
        next.version_info = request.version_info.clone().unwrap_or_default();
        next.attributes = request.attributes.clone();
        next.tags = request.tags.clone();
        if fresh {
            // A re-registering agent is judged by its heartbeats like any other.
            next.agent_connected = true;
            next.status = InstanceStatus::Active;
            next.status_reason = None;
            next.registered_at = now;
            next.allocations.clear();
        }
        Ok(next)
    }));
    let done = InstanceOp::run(shared, &cluster, &instance_id, &d.command_id, upsert).await?;
    Ok((
        CommandResponse::ContainerInstance(ContainerInstanceResponse {
            container_instance: presented(
                shared,
                &cluster,
                done.instance.value.clone(),
                done.version,
            ),
        }),
        done.version,
    ))
}

/// CPU and MEMORY as integers, PORTS and PORTS_UDP as sorted string sets, other
/// resources as given.
fn normalize_resources(given: &[Resource]) -> Vec<Resource> {
    given
        .iter()
        .map(|res| match res.name.as_str() {
            Resource::CPU | Resource::MEMORY => {
                Resource::integer(&res.name, res.number().unwrap_or(0))
            }
            Resource::PORTS | Resource::PORTS_UDP => {
                let mut ports: Vec<u16> = res
                    .string_set_value
                    .iter()
                    .filter_map(|p| p.parse().ok())
                    .collect();
                ports.sort_unstable();
                ports.dedup();
                Resource::string_set(&res.name, ports.into_iter().map(|p| p.to_string()))
            }
            _ => res.clone(),
        })
        .collect()
}

pub async fn deregister(
    shared: &Shared,
    d: &Delivery,
    r: DeregisterContainerInstanceRequest,
) -> ExecResult<(CommandResponse, u64)> {
    let cluster =
        berth_messages::command::CommandRequest::DeregisterContainerInstance(r.clone()).scope();
    super::active_cluster(shared, &cluster).await?;
    let instance_id = resolve(&cluster, &r.container_instance)?;
    let force = r.force.unwrap_or(false);
    let active_tasks = shared
        .view
        .tasks_on_instance(&cluster, &instance_id)
        .iter()
        .filter(|t| t.task.value.last_status != TaskStatus::Stopped)
        .count();
    if active_tasks > 0 && !force {
        return Err(ApiError::invalid(format!(
            "The container instance {instance_id} has {active_tasks} tasks that are not stopped: stop them or deregister with force"
        ))
        .into());
    }
    let mutate = OpKind::Mutate(Box::new(|ci: &mut ContainerInstance| {
        ci.status = InstanceStatus::Inactive;
        ci.agent_connected = false;
        Ok(())
    }));
    let done = InstanceOp::run(shared, &cluster, &instance_id, &d.command_id, mutate)
        .await
        .map_err(|e| {
            missing_as(
                e,
                ApiError::invalid(format!(
                    "The referenced container instance {instance_id} was not found"
                )),
            )
        })?;
    Ok((
        CommandResponse::ContainerInstance(ContainerInstanceResponse {
            container_instance: presented(
                shared,
                &cluster,
                done.instance.value.clone(),
                done.version,
            ),
        }),
        done.version,
    ))
}

fn missing_as(e: InstanceOpError, api: ApiError) -> crate::shared::ExecError {
    match e {
        InstanceOpError::Missing => api.into(),
        other => other.into(),
    }
}

pub async fn update_state(
    shared: &Shared,
    d: &Delivery,
    r: UpdateContainerInstancesStateRequest,
) -> ExecResult<(CommandResponse, u64)> {
    let cluster =
        berth_messages::command::CommandRequest::UpdateContainerInstancesState(r.clone()).scope();
    super::active_cluster(shared, &cluster).await?;
    let wanted = r.status;
    let mut instances = Vec::new();
    let mut failures = Vec::new();
    let mut last = 0;
    for reference in &r.container_instances {
        let instance_id = resolve(&cluster, reference)?;
        let arn = shared.arns.container_instance(&cluster, &instance_id);
        let mutate = OpKind::Mutate(Box::new(move |ci: &mut ContainerInstance| {
            match (ci.status, wanted) {
                (InstanceStatus::Inactive, _) => Err(ApiError::client(reason::INACTIVE)),
                (InstanceStatus::Active | InstanceStatus::Draining, _) => {
                    ci.status = wanted;
                    Ok(())
                }
                (other, _) => Err(ApiError::client(format!(
                    "cannot change status from {}",
                    other.as_str()
                ))),
            }
        }));
        match InstanceOp::run(shared, &cluster, &instance_id, &d.command_id, mutate).await {
            Ok(done) => {
                last = last.max(done.version);
                instances.push(presented(
                    shared,
                    &cluster,
                    done.instance.value.clone(),
                    done.version,
                ));
            }
            Err(InstanceOpError::Missing) => failures.push(Failure::new(arn, reason::MISSING)),
            Err(InstanceOpError::Rejected(e)) => {
                let why = if e.message == reason::INACTIVE {
                    reason::INACTIVE.to_string()
                } else {
                    e.message
                };
                failures.push(Failure::new(arn, why));
            }
            Err(other) => return Err(other.into()),
        }
    }
    Ok((
        CommandResponse::ContainerInstances(ContainerInstancesResponse {
            container_instances: instances,
            failures,
        }),
        last,
    ))
}

fn is_builtin(name: &str) -> bool {
    name.starts_with("ecs.") || name.starts_with("com.amazonaws.ecs.")
}

pub async fn put_attributes(
    shared: &Shared,
    d: &Delivery,
    r: AttributesRequest,
) -> ExecResult<(CommandResponse, u64)> {
    change_attributes(shared, d, r, true).await
}

pub async fn delete_attributes(
    shared: &Shared,
    d: &Delivery,
    r: AttributesRequest,
) -> ExecResult<(CommandResponse, u64)> {
    change_attributes(shared, d, r, false).await
}

async fn change_attributes(
    shared: &Shared,
    d: &Delivery,
    r: AttributesRequest,
    put: bool,
) -> ExecResult<(CommandResponse, u64)> {
    let cluster = berth_messages::command::CommandRequest::PutAttributes(r.clone()).scope();
    super::active_cluster(shared, &cluster).await?;
    // Every target must exist before anything is written.
    for attribute in &r.attributes {
        let target = attribute.target_id.as_deref().unwrap_or_default();
        let instance_id = resolve(&cluster, target)?;
        let known = shared.view.instance(&cluster, &instance_id).is_some()
            || shared
                .journal
                .read_raw(&berth_messages::subjects::instance(&cluster, &instance_id))
                .await?
                .is_some();
        if !known {
            return Err(ApiError::new(
                ErrorType::TargetNotFoundException,
                format!("Could not find {target}"),
            )
            .into());
        }
    }
    // All changes to one instance go into one write, and the custom-attribute limit is
    // checked on every instance before anything is written: a refused request leaves
    // no instance half changed.
    let mut groups: Vec<(String, Vec<Attribute>)> = Vec::new();
    for attribute in &r.attributes {
        let target = attribute.target_id.as_deref().unwrap_or_default();
        let instance_id = resolve(&cluster, target)?;
        let change = Attribute {
            name: attribute.name.clone(),
            value: attribute.value.clone(),
            target_type: None,
            target_id: None,
        };
        match groups.iter_mut().find(|(id, _)| *id == instance_id) {
            Some((_, changes)) => changes.push(change),
            None => groups.push((instance_id, vec![change])),
        }
    }
    for (instance_id, changes) in &groups {
        if let Some(current) = shared.view.instance(&cluster, instance_id) {
            apply_attributes(&mut current.value.clone(), changes, put)?;
        }
    }
    let mut last = 0;
    for (instance_id, changes) in groups {
        let target = shared.arns.container_instance(&cluster, &instance_id);
        let mutate = OpKind::Mutate(Box::new(move |ci: &mut ContainerInstance| {
            apply_attributes(ci, &changes, put)
        }));
        let done = InstanceOp::run(shared, &cluster, &instance_id, &d.command_id, mutate)
            .await
            .map_err(|e| {
                missing_as(
                    e,
                    ApiError::new(
                        ErrorType::TargetNotFoundException,
                        format!("Could not find {target}"),
                    ),
                )
            })?;
        last = last.max(done.version);
    }
    let mut echoed = Vec::new();
    for attribute in &r.attributes {
        let target = attribute.target_id.as_deref().unwrap_or_default();
        let instance_id = resolve(&cluster, target)?;
        let mut out = attribute.clone();
        out.target_type = Some("container-instance".into());
        out.target_id = Some(shared.arns.container_instance(&cluster, &instance_id));
        echoed.push(out);
    }
    Ok((
        CommandResponse::Attributes(AttributesResponse { attributes: echoed }),
        last,
    ))
}

/// Puts or deletes attributes on an instance record; refuses to go over the limit of
/// custom attributes.
fn apply_attributes(
    ci: &mut ContainerInstance,
    changes: &[Attribute],
    put: bool,
) -> Result<(), ApiError> {
    for change in changes {
        ci.attributes.retain(|a| a.name != change.name);
        if put {
            ci.attributes.push(change.clone());
        }
    }
    let custom = ci
        .attributes
        .iter()
        .filter(|a| !is_builtin(&a.name))
        .count();
    if put && custom > validate::MAX_ATTRIBUTES {
        return Err(ApiError::new(
            ErrorType::AttributeLimitExceededException,
            format!(
                "a container instance takes at most {} custom attributes",
                validate::MAX_ATTRIBUTES
            ),
        ));
    }
    Ok(())
}

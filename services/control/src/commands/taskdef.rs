//! RegisterTaskDefinition and DeregisterTaskDefinition. The family record
//! (`berth.state.taskdef.<family>`) is the revision counter: taking a revision is a
//! conditional write on it, so two registrations never get the same revision and a
//! revision is never reused. It remembers the command that took the last revision, so
//! a redelivered registration finishes with the same revision instead of taking another.

use super::Delivery;
use crate::shared::{ExecResult, Shared};
use berth_journal::{UpdateError, Versioned};
use berth_messages::api::*;
use berth_messages::command::CommandResponse;
use berth_messages::model::{TaskDefinition, TaskDefinitionFamily, TaskDefinitionStatus};
use berth_messages::{subjects, ApiError};

const ATTEMPTS: u32 = 50;

pub async fn register(
    shared: &Shared,
    d: &Delivery,
    r: RegisterTaskDefinitionRequest,
) -> ExecResult<(CommandResponse, u64)> {
    let mut definition = TaskDefinition {
        family: r.family.clone(),
        container_definitions: r.container_definitions.clone(),
        network_mode: Some(r.network_mode.clone().unwrap_or_else(|| "bridge".into())),
        volumes: r.volumes.clone(),
        placement_constraints: r.placement_constraints.clone(),
        compatibilities: vec!["EC2".into(), "EXTERNAL".into()],
        requires_compatibilities: r.requires_compatibilities.clone(),
        cpu: r.cpu.clone(),
        memory: r.memory.clone(),
        task_role_arn: r.task_role_arn.clone(),
        execution_role_arn: r.execution_role_arn.clone(),
        pid_mode: r.pid_mode.clone(),
        ipc_mode: r.ipc_mode.clone(),
        tags: r.tags.clone(),
        status: TaskDefinitionStatus::Active,
        registered_at: berth_messages::now_epoch_seconds(),
        ..Default::default()
    };
    // The definition must be placeable: memory somewhere, ports in range.
    berth_placement::demand_of(&definition, None).map_err(|e| ApiError::invalid(e.to_string()))?;

    let family_subject = subjects::task_definition_family(&r.family);
    let command_id = d.command_id.clone();
    let family = r.family.clone();
    let taken = shared
        .journal
        .update::<TaskDefinitionFamily, ApiError, _>(
            &family_subject,
            &d.command_id,
            ATTEMPTS,
            |current| match current {
                Some(c) if c.value.last_command_id == command_id => Ok(None),
                Some(c) => Ok(Some(TaskDefinitionFamily {
                    family: family.clone(),
                    last_revision: c.value.last_revision + 1,
                    last_command_id: command_id.clone(),
                })),
                None => Ok(Some(TaskDefinitionFamily {
                    family: family.clone(),
                    last_revision: 1,
                    last_command_id: command_id.clone(),
                })),
            },
        )
        .await;
    let revision = match taken {
        Ok(Some(w)) => w.value.last_revision,
        // This command took its revision in an earlier attempt.
        Ok(None) => shared
            .journal
            .read::<TaskDefinitionFamily>(&family_subject)
            .await?
            .map(|f| f.value.last_revision)
            .ok_or_else(|| ApiError::server("family record vanished"))?,
        Err(UpdateError::Rejected(e)) => return Err(e.into()),
        Err(UpdateError::Journal(e)) => return Err(e.into()),
    };
    definition.revision = revision;
    definition.task_definition_arn = shared.arns.task_definition(&r.family, revision);
    let subject = subjects::task_definition(&r.family, revision);
    let written = match shared
        .journal
        .write(&subject, &definition, 0, &d.command_id)
        .await
    {
        Ok(version) => Versioned {
            value: definition,
            version,
        },
        Err(e) if e.is_conflict() => shared
            .journal
            .read::<TaskDefinition>(&subject)
            .await?
            .ok_or_else(|| ApiError::server("task definition conflict but absent"))?,
        Err(e) => return Err(e.into()),
    };
    let tags = written.value.tags.clone();
    Ok((
        CommandResponse::TaskDefinition(TaskDefinitionResponse {
            task_definition: written.value,
            tags,
        }),
        written.version,
    ))
}

pub async fn deregister(
    shared: &Shared,
    d: &Delivery,
    r: TaskDefinitionRefRequest,
) -> ExecResult<(CommandResponse, u64)> {
    let parsed = crate::validation::task_definition_ref(&r.task_definition)?;
    let revision = parsed
        .revision
        .ok_or_else(|| ApiError::invalid("taskDefinition must name a revision"))?;
    let subject = subjects::task_definition(&parsed.family, revision);
    let not_found = || ApiError::client("Unable to describe task definition.");
    let result = shared
        .journal
        .update::<TaskDefinition, ApiError, _>(&subject, &d.command_id, ATTEMPTS, |current| {
            match current {
                None => Err(not_found()),
                Some(c) if c.value.status == TaskDefinitionStatus::Inactive => Ok(None),
                Some(c) => {
                    let mut next = c.value;
                    next.status = TaskDefinitionStatus::Inactive;
                    next.deregistered_at = Some(berth_messages::now_epoch_seconds());
                    Ok(Some(next))
                }
            }
        })
        .await;
    let written = match result {
        Ok(Some(w)) => w,
        Ok(None) => shared
            .journal
            .read::<TaskDefinition>(&subject)
            .await?
            .ok_or_else(not_found)?,
        Err(UpdateError::Rejected(e)) => return Err(e.into()),
        Err(UpdateError::Journal(e)) => return Err(e.into()),
    };
    Ok((
        CommandResponse::TaskDefinition(TaskDefinitionResponse {
            task_definition: written.value,
            tags: Vec::new(),
        }),
        written.version,
    ))
}

/// Resolves a task definition reference for RunTask/StartTask: a bare family means its
/// latest ACTIVE revision; an explicit revision must be ACTIVE.
pub async fn resolve_for_launch(
    shared: &Shared,
    reference: &str,
) -> ExecResult<std::sync::Arc<Versioned<TaskDefinition>>> {
    let parsed = crate::validation::task_definition_ref(reference)?;
    let found = match parsed.revision {
        Some(rev) => match shared.view.task_definition(&parsed.family, rev) {
            Some(td) => Some(td),
            None => shared
                .journal
                .read::<TaskDefinition>(&subjects::task_definition(&parsed.family, rev))
                .await?
                .map(std::sync::Arc::new),
        },
        None => shared.view.latest_active_task_definition(&parsed.family),
    };
    match found {
        Some(td) if td.value.status == TaskDefinitionStatus::Active => Ok(td),
        Some(_) => Err(ApiError::client(format!("TaskDefinition is inactive: {reference}")).into()),
        None => {
            Err(ApiError::client(format!("Unable to find task definition: {reference}")).into())
        }
    }
}

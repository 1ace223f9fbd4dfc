//! `berth task-definitions register|list|describe|deregister`.

use super::{all_pages, Context};
use crate::args::{TaskDefinitionStatusArg, TaskDefinitionsCommand};
use crate::error::{task_definition_not_found, CliError};
use crate::output::{self, short_task_definition, Table};
use crate::taskdef_file;
use berth_messages::api::*;
use berth_messages::command::Action;
use berth_messages::model::{TaskDefinition, TaskDefinitionStatus};
use berth_messages::ErrorType;
use std::path::Path;

pub async fn run(ctx: &Context, command: TaskDefinitionsCommand) -> Result<(), CliError> {
    match command {
        TaskDefinitionsCommand::Register { file } => register(ctx, &file).await,
        TaskDefinitionsCommand::List { family, status } => list(ctx, family, status).await,
        TaskDefinitionsCommand::Describe { task_definition } => {
            check_reference(&task_definition)?;
            let r: TaskDefinitionResponse = ctx
                .client
                .call(
                    Action::DescribeTaskDefinition,
                    &TaskDefinitionRefRequest {
                        task_definition: task_definition.clone(),
                        include: vec!["TAGS".into()],
                    },
                )
                .await
                .map_err(|e| match e {
                    CliError::Api(api) if api.error_type == ErrorType::ClientException => {
                        CliError::other(task_definition_not_found(&task_definition))
                    }
                    other => other,
                })?;
            ctx.emit(&r, || detail(&r.task_definition))
        }
        TaskDefinitionsCommand::Deregister { task_definition } => {
            let reference = check_reference(&task_definition)?;
            if reference.revision.is_none() {
                return Err(CliError::input(format!(
                    "deregister needs a revision: `berth task-definitions deregister \
                     {task_definition}:<revision>` (`berth task-definitions list --family \
                     {task_definition}` shows them)"
                )));
            }
            let r: TaskDefinitionResponse = ctx
                .client
                .call(
                    Action::DeregisterTaskDefinition,
                    &TaskDefinitionRefRequest {
                        task_definition,
                        include: Vec::new(),
                    },
                )
                .await?;
            ctx.emit(&r, || {
                format!(
                    "task definition {}:{} is {}\n",
                    r.task_definition.family,
                    r.task_definition.revision,
                    status(r.task_definition.status)
                )
            })
        }
    }
}

/// Parses a task-definition reference or says what one looks like.
pub fn check_reference(
    reference: &str,
) -> Result<berth_messages::arn::TaskDefinitionRef, CliError> {
    berth_messages::arn::task_definition_ref(reference).ok_or_else(|| {
        CliError::input(format!(
            "'{reference}' is not a task definition: give a family (hello), a family and \
             revision (hello:2) or a task-definition ARN"
        ))
    })
}

async fn register(ctx: &Context, file: &Path) -> Result<(), CliError> {
    let name = file.display().to_string();
    let text = std::fs::read_to_string(file)
        .map_err(|e| CliError::input(format!("cannot read task definition file {name}: {e}")))?;
    let parsed = taskdef_file::parse(&name, &text)?;
    for w in &parsed.warnings {
        output::note(&format!("warning: {w}"));
    }
    let r: TaskDefinitionResponse = ctx
        .client
        .call(Action::RegisterTaskDefinition, &parsed.request)
        .await
        .map_err(|e| match e {
            CliError::Api(api) => CliError::input(format!(
                "{name}: the task definition was refused: {}: {}",
                api.error_type, api.message
            )),
            other => other,
        })?;
    ctx.emit(&r, || {
        format!(
            "registered {}:{} ({})\n",
            r.task_definition.family,
            r.task_definition.revision,
            r.task_definition.task_definition_arn
        )
    })
}

async fn list(
    ctx: &Context,
    family: Option<String>,
    status: Option<TaskDefinitionStatusArg>,
) -> Result<(), CliError> {
    let status = status.map(|s| match s {
        TaskDefinitionStatusArg::Active => TaskDefinitionStatus::Active,
        TaskDefinitionStatusArg::Inactive => TaskDefinitionStatus::Inactive,
    });
    let arns = all_pages(|token| {
        let family = family.clone();
        async move {
            let r: ListTaskDefinitionsResponse = ctx
                .client
                .call(
                    Action::ListTaskDefinitions,
                    &ListTaskDefinitionsRequest {
                        family_prefix: family,
                        status,
                        next_token: token,
                        max_results: Some(100),
                        ..Default::default()
                    },
                )
                .await?;
            Ok((r.task_definition_arns, r.next_token))
        }
    })
    .await?;
    ctx.emit(
        &ListTaskDefinitionsResponse {
            task_definition_arns: arns.clone(),
            next_token: None,
        },
        || {
            let mut t = Table::new(&["FAMILY", "REVISION", "ARN"]);
            for arn in &arns {
                let short = short_task_definition(arn);
                let (family, revision) = short.split_once(':').unwrap_or((short, "-"));
                t.row(vec![family.into(), revision.into(), arn.clone()]);
            }
            t.render()
        },
    )
}

fn status(s: TaskDefinitionStatus) -> &'static str {
    match s {
        TaskDefinitionStatus::Active => "ACTIVE",
        TaskDefinitionStatus::Inactive => "INACTIVE",
        TaskDefinitionStatus::DeleteInProgress => "DELETE_IN_PROGRESS",
    }
}

fn detail(td: &TaskDefinition) -> String {
    let mut s = String::new();
    s.push_str(&format!("task definition: {}\n", td.task_definition_arn));
    s.push_str(&format!("status:          {}\n", status(td.status)));
    s.push_str(&format!(
        "registered:      {}\n",
        output::timestamp(td.registered_at)
    ));
    if td.cpu.is_some() || td.memory.is_some() {
        s.push_str(&format!(
            "task size:       cpu {} memory {}\n",
            td.cpu.as_deref().unwrap_or("-"),
            td.memory.as_deref().unwrap_or("-")
        ));
    }
    s.push('\n');
    let mut t = Table::new(&[
        "CONTAINER",
        "IMAGE",
        "CPU",
        "MEMORY",
        "ESSENTIAL",
        "PORTS",
        "COMMAND",
    ]);
    for c in &td.container_definitions {
        let ports: Vec<String> = c
            .port_mappings
            .iter()
            .map(|p| {
                format!(
                    "{}->{}/{}",
                    p.host_port.map_or("auto".into(), |h| h.to_string()),
                    p.container_port.map_or("-".into(), |h| h.to_string()),
                    p.protocol.as_deref().unwrap_or("tcp")
                )
            })
            .collect();
        let command: Vec<&str> = c
            .entry_point
            .iter()
            .chain(&c.command)
            .map(String::as_str)
            .collect();
        t.row(vec![
            c.name.clone(),
            c.image.clone().unwrap_or_else(|| "-".into()),
            c.cpu.to_string(),
            c.memory
                .or(c.memory_reservation)
                .map_or("-".into(), |m| m.to_string()),
            c.is_essential().to_string(),
            if ports.is_empty() {
                "-".into()
            } else {
                ports.join(",")
            },
            if command.is_empty() {
                "-".into()
            } else {
                command.join(" ")
            },
        ]);
    }
    s.push_str(&t.render());
    s
}

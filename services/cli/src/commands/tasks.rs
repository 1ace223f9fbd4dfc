//! `berth tasks run|start|stop|list|describe|logs|wait`.

use super::wait::{describe_tasks, stop_text, tasks_not_found, wait_tasks};
use super::{all_pages, failures_error, Context};
use crate::args::{DesiredStatusArg, TasksCommand, WaitStatus};
use crate::error::CliError;
use crate::output::{self, short_id, short_task_definition, task_table, Table};
use berth_messages::api::*;
use berth_messages::command::Action;
use berth_messages::model::{Task, TaskStatus};
use std::time::Duration;

pub async fn run(ctx: &Context, command: TasksCommand) -> Result<(), CliError> {
    match command {
        TasksCommand::Run {
            task_definition,
            count,
            started_by,
            group,
            wait,
            timeout,
        } => {
            super::taskdefs::check_reference(&task_definition)?;
            if !(1..=10).contains(&count) {
                return Err(CliError::input(format!(
                    "--count {count}: RunTask starts 1 to 10 tasks at a time"
                )));
            }
            let timeout = seconds(timeout)?;
            let r: TasksResponse = ctx
                .client
                .call(
                    Action::RunTask,
                    &RunTaskRequest {
                        cluster: Some(ctx.cluster.clone()),
                        task_definition,
                        count: Some(count),
                        started_by,
                        group,
                        ..Default::default()
                    },
                )
                .await?;
            placed(ctx, r, wait, timeout).await
        }
        TasksCommand::Start {
            task_definition,
            instances,
            started_by,
            group,
            wait,
            timeout,
        } => {
            super::taskdefs::check_reference(&task_definition)?;
            let timeout = seconds(timeout)?;
            let r: TasksResponse = ctx
                .client
                .call(
                    Action::StartTask,
                    &StartTaskRequest {
                        cluster: Some(ctx.cluster.clone()),
                        task_definition,
                        container_instances: instances,
                        started_by,
                        group,
                        ..Default::default()
                    },
                )
                .await?;
            placed(ctx, r, wait, timeout).await
        }
        TasksCommand::Stop {
            task,
            reason,
            wait,
            timeout,
        } => stop(ctx, task, reason, wait, seconds(timeout)?).await,
        TasksCommand::List {
            instance,
            family,
            started_by,
            desired_status,
        } => {
            let request = ListTasksRequest {
                cluster: Some(ctx.cluster.clone()),
                container_instance: instance,
                family,
                started_by,
                desired_status: desired_status.map(|d| match d {
                    DesiredStatusArg::Running => DesiredStatusFilter::Running,
                    DesiredStatusArg::Stopped => DesiredStatusFilter::Stopped,
                }),
                ..Default::default()
            };
            list(ctx, request).await
        }
        TasksCommand::Describe { tasks } => {
            let r = describe_tasks(ctx, &tasks).await?;
            ctx.emit(&r, || {
                r.tasks.iter().map(detail).collect::<Vec<_>>().join("\n")
            })?;
            tasks_not_found(ctx, &r)
        }
        TasksCommand::Logs {
            task,
            container,
            follow,
        } => super::logs::run(ctx, &task, container, follow).await,
        TasksCommand::Wait {
            tasks,
            status,
            timeout,
        } => {
            let r = wait_tasks(ctx, &tasks, status, seconds(timeout)?).await?;
            ctx.emit(&r, || task_table(&r.tasks))
        }
    }
}

/// A `--timeout` in seconds, which must be positive.
pub(crate) fn seconds(timeout: Option<f64>) -> Result<Option<Duration>, CliError> {
    match timeout {
        None => Ok(None),
        Some(s) if s.is_finite() && s > 0.0 => Duration::try_from_secs_f64(s)
            .map(Some)
            .map_err(|_| CliError::input(format!("--timeout {s}: too many seconds"))),
        Some(s) => Err(CliError::input(format!(
            "--timeout {s}: give a positive number of seconds"
        ))),
    }
}

/// After RunTask or StartTask: report what was placed, wait if asked, print.
async fn placed(
    ctx: &Context,
    r: TasksResponse,
    wait: Option<WaitStatus>,
    timeout: Option<Duration>,
) -> Result<(), CliError> {
    if r.tasks.is_empty() {
        if ctx.json() {
            output::print(&output::json(&r)?);
        }
        return failures_error("no task was started", &r.failures);
    }
    if !r.failures.is_empty() {
        if let Err(e) = failures_error("some tasks were not started", &r.failures) {
            output::note(&format!("warning: {e}"));
        }
    }
    let Some(target) = wait else {
        return ctx.emit(&r, || task_table(&r.tasks));
    };
    let arns: Vec<String> = r.tasks.iter().map(|t| t.task_arn.clone()).collect();
    let mut done = wait_tasks(ctx, &arns, target, timeout).await?;
    done.failures = r.failures;
    ctx.emit(&done, || task_table(&done.tasks))?;
    // Ready-made follow-ups for the common case of one task.
    if !ctx.json() && done.tasks.len() == 1 {
        let id = short_id(&done.tasks[0].task_arn);
        output::note(&format!("output: berth tasks logs {id}"));
    }
    Ok(())
}

async fn stop(
    ctx: &Context,
    task: String,
    reason: Option<String>,
    wait: bool,
    timeout: Option<Duration>,
) -> Result<(), CliError> {
    let r: TaskResponse = ctx
        .client
        .call(
            Action::StopTask,
            &StopTaskRequest {
                cluster: Some(ctx.cluster.clone()),
                task,
                reason,
                stop_code: None,
            },
        )
        .await
        .map_err(|e| match e {
            CliError::Api(api) if api.message.contains("not found") => CliError::other(format!(
                "{}: `berth tasks list` shows the cluster's running tasks",
                api.message
            )),
            other => other,
        })?;
    if !wait {
        return ctx.emit(&r, || {
            format!(
                "task {} is {} (desired {})\n",
                short_id(&r.task.task_arn),
                r.task.last_status.as_str(),
                r.task.desired_status.as_str()
            )
        });
    }
    let done = wait_tasks(
        ctx,
        std::slice::from_ref(&r.task.task_arn),
        WaitStatus::Stopped,
        timeout,
    )
    .await?;
    let task = done.tasks.into_iter().next().unwrap_or(r.task);
    ctx.emit(&TaskResponse { task: task.clone() }, || {
        task_table(std::slice::from_ref(&task))
    })
}

async fn list(ctx: &Context, request: ListTasksRequest) -> Result<(), CliError> {
    let arns = all_pages(|token| {
        let request = ListTasksRequest {
            next_token: token,
            max_results: Some(100),
            ..request.clone()
        };
        async move {
            let r: ListTasksResponse = ctx.client.call(Action::ListTasks, &request).await?;
            Ok((r.task_arns, r.next_token))
        }
    })
    .await?;
    if ctx.json() {
        return ctx.emit(
            &ListTasksResponse {
                task_arns: arns,
                next_token: None,
            },
            String::new,
        );
    }
    let r = describe_tasks(ctx, &arns).await?;
    output::print(&task_table(&r.tasks));
    Ok(())
}

fn detail(task: &Task) -> String {
    let mut s = String::new();
    let line = |s: &mut String, label: &str, value: String| {
        s.push_str(&format!("{label:<12}{value}\n"));
    };
    line(&mut s, "task:", task.task_arn.clone());
    line(
        &mut s,
        "definition:",
        short_task_definition(&task.task_definition_arn).to_string(),
    );
    line(
        &mut s,
        "status:",
        format!(
            "{} (desired {})",
            task.last_status.as_str(),
            task.desired_status.as_str()
        ),
    );
    line(
        &mut s,
        "instance:",
        short_id(&task.container_instance_arn).to_string(),
    );
    if let Some(by) = &task.started_by {
        line(&mut s, "started by:", by.clone());
    }
    if !task.group.is_empty() {
        line(&mut s, "group:", task.group.clone());
    }
    line(&mut s, "created:", output::timestamp(task.created_at));
    if let Some(t) = task.started_at {
        line(&mut s, "started:", output::timestamp(t));
    }
    if let Some(t) = task.stopped_at {
        line(&mut s, "stopped:", output::timestamp(t));
    }
    if task.last_status == TaskStatus::Stopped || task.stop_code.is_some() {
        line(&mut s, "stop:", stop_text(task));
    }
    if let Some(health) = &task.health_status {
        line(&mut s, "health:", health.clone());
    }
    s.push('\n');
    let mut t = Table::new(&["CONTAINER", "STATUS", "HEALTH", "EXIT", "PORTS", "REASON"]);
    for c in &task.containers {
        let ports: Vec<String> = c
            .network_bindings
            .iter()
            .map(|b| {
                format!(
                    "{}->{}/{}",
                    b.host_port.map_or("-".into(), |p| p.to_string()),
                    b.container_port.map_or("-".into(), |p| p.to_string()),
                    b.protocol.as_deref().unwrap_or("tcp")
                )
            })
            .collect();
        t.row(vec![
            c.name.clone(),
            if c.last_status.is_empty() {
                "-".into()
            } else {
                c.last_status.clone()
            },
            c.health_status.clone().unwrap_or_else(|| "-".into()),
            c.exit_code.map_or("-".into(), |e| e.to_string()),
            if ports.is_empty() {
                "-".into()
            } else {
                ports.join(",")
            },
            c.reason.clone().unwrap_or_default(),
        ]);
    }
    s.push_str(&t.render());
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_messages::model::Container;

    #[test]
    fn detail_shows_task_and_container_health() {
        let task = Task {
            task_arn: "arn:aws:ecs:r:1:task/c/0123".into(),
            health_status: Some("HEALTHY".into()),
            containers: vec![
                Container {
                    name: "db".into(),
                    last_status: "RUNNING".into(),
                    health_status: Some("HEALTHY".into()),
                    ..Default::default()
                },
                Container {
                    name: "web".into(),
                    last_status: "RUNNING".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let text = detail(&task);
        assert!(
            text.contains("health:") && text.contains("HEALTHY"),
            "{text}"
        );
        let web = text
            .lines()
            .find(|l| l.starts_with("web"))
            .expect("web row");
        assert!(web.split_whitespace().nth(2) == Some("-"), "{web}");
    }
}

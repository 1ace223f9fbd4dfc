//! Waiting until tasks reach a status, printing each status change on stderr as it
//! happens. Changes arrive from the task's journal subject when this connection may
//! subscribe to it, and from DescribeTasks once a second in any case, so a missed message
//! only delays the display.

use super::Context;
use crate::args::WaitStatus;
use crate::error::CliError;
use crate::output::{self, short_id};
use berth_messages::api::{DescribeTasksRequest, TasksResponse};
use berth_messages::command::Action;
use berth_messages::model::{StopCode, Task, TaskStatus};
use berth_messages::{arn, codec, subjects};
use futures::StreamExt;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

/// How often the API is asked when no change arrived.
const POLL: Duration = Duration::from_secs(1);
/// How often the API is asked while its view catches up with a change already seen.
const VIEW_CATCH_UP: Duration = Duration::from_millis(50);

/// DescribeTasks in batches of 100.
pub async fn describe_tasks(ctx: &Context, tasks: &[String]) -> Result<TasksResponse, CliError> {
    let mut out = TasksResponse::default();
    for chunk in tasks.chunks(100) {
        let r: TasksResponse = ctx
            .client
            .call(
                Action::DescribeTasks,
                &DescribeTasksRequest {
                    cluster: Some(ctx.cluster.clone()),
                    tasks: chunk.to_vec(),
                    include: Vec::new(),
                },
            )
            .await?;
        out.tasks.extend(r.tasks);
        out.failures.extend(r.failures);
    }
    Ok(out)
}

/// The error for tasks DescribeTasks did not find.
pub fn tasks_not_found(ctx: &Context, r: &TasksResponse) -> Result<(), CliError> {
    if r.failures.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = r
        .failures
        .iter()
        .map(|f| short_id(f.arn.as_deref().unwrap_or("?")))
        .collect();
    Err(CliError::other(format!(
        "task {} not found in cluster {}: `berth tasks list` shows running tasks, \
         `berth tasks list --desired-status STOPPED` stopped ones (stopped tasks are kept \
         for a while, then forgotten)",
        ids.join(", "),
        ctx.cluster
    )))
}

/// Whether `task` satisfies the wait; an error when it can no longer.
fn reached(task: &Task, target: WaitStatus) -> Result<bool, CliError> {
    match target {
        WaitStatus::Stopped => Ok(task.last_status == TaskStatus::Stopped),
        WaitStatus::Running => match task.last_status {
            TaskStatus::Stopped if task.started_at.is_none() => Err(CliError::other(format!(
                "task {} stopped before it was RUNNING: {}",
                short_id(&task.task_arn),
                stop_text(task)
            ))),
            s => Ok(s >= TaskStatus::Running),
        },
    }
}

/// Why a task stopped, in one line.
pub fn stop_text(task: &Task) -> String {
    let code = task.stop_code.map(|c| match c {
        StopCode::TaskFailedToStart => "TaskFailedToStart",
        StopCode::EssentialContainerExited => "EssentialContainerExited",
        StopCode::UserInitiated => "UserInitiated",
        StopCode::ServiceSchedulerInitiated => "ServiceSchedulerInitiated",
        StopCode::SpotInterruption => "SpotInterruption",
        StopCode::TerminationNotice => "TerminationNotice",
    });
    match (code, task.stopped_reason.as_deref()) {
        (Some(c), Some(r)) => format!("{c}: {r}"),
        (Some(c), None) => c.to_string(),
        (None, Some(r)) => r.to_string(),
        (None, None) => "no reason given".to_string(),
    }
}

/// Follows tasks until each reaches `target`; returns their final DescribeTasks records.
pub async fn wait_tasks(
    ctx: &Context,
    tasks: &[String],
    target: WaitStatus,
    timeout: Option<Duration>,
) -> Result<TasksResponse, CliError> {
    let started = Instant::now();
    let deadline = timeout.map(|t| started + t);
    let first = describe_tasks(ctx, tasks).await?;
    tasks_not_found(ctx, &first)?;
    let mut progress = Progress::new(started);
    let mut known: BTreeMap<String, Task> = BTreeMap::new();
    for t in first.tasks {
        progress.observe(known.get(&t.task_arn), &t);
        known.insert(t.task_arn.clone(), t);
    }
    let mut updates = subscribe(ctx, known.values()).await;
    loop {
        let mut all = true;
        for t in known.values() {
            all &= reached(t, target)?;
        }
        if all {
            // The journal may run ahead of the API's view: answer once the view agrees.
            let arns: Vec<String> = known.keys().cloned().collect();
            let described = describe_tasks(ctx, &arns).await?;
            let mut agreed = described.failures.is_empty();
            for t in &described.tasks {
                agreed &= reached(t, target)?;
            }
            if agreed {
                return Ok(described);
            }
        }
        let now = Instant::now();
        if let Some(d) = deadline {
            if now >= d {
                let pending: Vec<String> = known
                    .values()
                    .filter(|t| !reached(t, target).unwrap_or(true))
                    .map(|t| format!("{} is {}", short_id(&t.task_arn), t.last_status.as_str()))
                    .collect();
                return Err(CliError::other(format!(
                    "timed out after {:.0} s waiting for {}: {}",
                    (now - started).as_secs_f64(),
                    match target {
                        WaitStatus::Running => "RUNNING",
                        WaitStatus::Stopped => "STOPPED",
                    },
                    pending.join(", ")
                )));
            }
        }
        let pause = if all { VIEW_CATCH_UP } else { POLL };
        let tick = deadline.map_or(pause, |d| pause.min(d - now));
        let mut closed = false;
        let changed: Vec<Task> = match &mut updates {
            Some(stream) => tokio::select! {
                message = stream.next() => match message {
                    Some(m) => codec::decode_record::<Task>(&m.payload).ok().into_iter().collect(),
                    None => {
                        closed = true;
                        Vec::new()
                    }
                },
                _ = tokio::time::sleep(tick) => poll(ctx, &known).await?,
            },
            None => {
                tokio::time::sleep(tick).await;
                poll(ctx, &known).await?
            }
        };
        if closed {
            updates = None;
        }
        for t in changed {
            let Some(old) = known.get(&t.task_arn) else {
                continue;
            };
            if t.last_status < old.last_status {
                continue;
            }
            progress.observe(Some(old), &t);
            known.insert(t.task_arn.clone(), t);
        }
    }
}

async fn poll(ctx: &Context, known: &BTreeMap<String, Task>) -> Result<Vec<Task>, CliError> {
    let arns: Vec<String> = known.keys().cloned().collect();
    Ok(describe_tasks(ctx, &arns).await?.tasks)
}

/// Journal subjects of the tasks, merged; `None` when none can be subscribed.
async fn subscribe<'a>(
    ctx: &Context,
    tasks: impl Iterator<Item = &'a Task>,
) -> Option<futures::stream::SelectAll<async_nats::Subscriber>> {
    let mut subscribers = Vec::new();
    for t in tasks {
        let (cluster, task_id) = arn::task_id(&t.task_arn);
        let cluster = cluster.unwrap_or(&ctx.cluster);
        let (_, instance_id) = arn::container_instance_id(&t.container_instance_arn);
        if instance_id.is_empty() {
            continue;
        }
        match ctx
            .client
            .nats()
            .subscribe(subjects::task(cluster, instance_id, task_id))
            .await
        {
            Ok(s) => subscribers.push(s),
            Err(_) => return None,
        }
    }
    (!subscribers.is_empty()).then(|| futures::stream::select_all(subscribers))
}

/// Prints a line per status change.
struct Progress {
    started: Instant,
}

impl Progress {
    fn new(started: Instant) -> Progress {
        Progress { started }
    }

    fn observe(&mut self, old: Option<&Task>, new: &Task) {
        let changed = old.is_none_or(|o| {
            o.last_status != new.last_status || o.desired_status != new.desired_status
        });
        if !changed {
            return;
        }
        let elapsed = self.started.elapsed().as_secs_f64();
        let mut line = format!(
            "[{elapsed:6.1}s] task {}  {}",
            short_id(&new.task_arn),
            new.last_status.as_str()
        );
        if new.desired_status != new.last_status && new.last_status != TaskStatus::Stopped {
            line.push_str(&format!(" (desired {})", new.desired_status.as_str()));
        }
        if new.last_status == TaskStatus::Stopped {
            line.push_str(&format!("  exit {}", output::exit_codes(new)));
            line.push_str(&format!("  {}", stop_text(new)));
        }
        output::note(&line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(last: TaskStatus, started: bool) -> Task {
        Task {
            task_arn: "arn:aws:ecs:local:0:task/default/t1".into(),
            last_status: last,
            started_at: started.then_some(1.0),
            stop_code: Some(StopCode::TaskFailedToStart),
            stopped_reason: Some("command not found".into()),
            ..Default::default()
        }
    }

    #[test]
    fn waiting_for_running() {
        assert!(!reached(&task(TaskStatus::Pending, false), WaitStatus::Running).unwrap());
        assert!(reached(&task(TaskStatus::Running, true), WaitStatus::Running).unwrap());
        assert!(reached(&task(TaskStatus::Stopped, true), WaitStatus::Running).unwrap());
        let e = reached(&task(TaskStatus::Stopped, false), WaitStatus::Running).unwrap_err();
        assert_eq!(
            e.to_string(),
            "task t1 stopped before it was RUNNING: TaskFailedToStart: command not found"
        );
    }

    #[test]
    fn waiting_for_stopped() {
        assert!(!reached(&task(TaskStatus::Running, true), WaitStatus::Stopped).unwrap());
        assert!(reached(&task(TaskStatus::Stopped, false), WaitStatus::Stopped).unwrap());
    }
}

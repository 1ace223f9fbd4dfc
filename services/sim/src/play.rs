//! The lifecycle a hollow instance plays for each of its tasks, as a pure state machine:
//! task records, timers and report acknowledgements go in, timers to set and
//! `SubmitTaskStateChange` reports to send come out. Keeping it free of I/O makes
//! re-delivery and ordering cases testable, and keeps the per-task state small (a phase,
//! the task ARN and container names) so thousands of instances fit in one process.
//!
//! A task placed here (desired RUNNING, last PENDING) is reported RUNNING after the start
//! delay, then, once that report is acknowledged, STOPPED after the run time with every
//! container exiting with the configured code. A task whose desired status turns STOPPED
//! first is reported STOPPED at once. Every record is level-triggered: seeing the same
//! record again, or an older one, changes nothing, so nothing is reported twice.

use berth_messages::api::{ContainerStateChange, SubmitTaskStateChangeRequest};
use berth_messages::model::{StopCode, Task, TaskStatus};
use serde::Deserialize;
use std::collections::HashMap;
use std::time::Duration;

/// What a hollow instance reads of a task record: its statuses, ARN and container names.
/// The journal holds the whole ECS task; decoding all of it (every ARN and field as an
/// owned string) was a quarter of the benchmark's hollow hosts' CPU.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlayedTask {
    pub task_arn: String,
    pub last_status: TaskStatus,
    pub desired_status: TaskStatus,
    #[serde(default)]
    pub containers: Vec<PlayedContainer>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PlayedContainer {
    pub name: String,
}

impl From<&Task> for PlayedTask {
    fn from(task: &Task) -> Self {
        Self {
            task_arn: task.task_arn.clone(),
            last_status: task.last_status,
            desired_status: task.desired_status,
            containers: task
                .containers
                .iter()
                .map(|c| PlayedContainer {
                    name: c.name.clone(),
                })
                .collect(),
        }
    }
}

/// Exit code reported for a container that was running when its task was stopped by
/// request: 128 + SIGTERM, as a process that honours SIGTERM ends.
pub const STOPPED_BY_REQUEST_EXIT_CODE: i32 = 143;
/// Reason of a task whose essential container exited.
pub const ESSENTIAL_EXITED_REASON: &str = "Essential container in task exited";

/// How hollow tasks behave.
#[derive(Debug, Clone, PartialEq)]
pub struct Script {
    pub cluster: String,
    pub start_delay: Duration,
    pub run_time: Duration,
    pub exit_code: i32,
}

/// Where a task stands as far as this instance is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Placed here; RUNNING is reported when the start delay ends.
    Starting,
    /// RUNNING is being reported.
    StartReported,
    /// RUNNING acknowledged; the containers exit when the run time ends.
    Running,
    /// STOPPED is being (or has been) reported; waiting for the record to say so.
    StopReported,
}

/// A timer the state machine asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Wake {
    /// The start delay has passed.
    Start,
    /// The run time has passed.
    Exit,
}

/// What the caller must do after an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Call back [`TaskBook::wake`] with `wake` after `after`.
    Wake { wake: Wake, after: Duration },
    /// Send this report until acknowledged, then call [`TaskBook::acknowledged`].
    Report(Box<SubmitTaskStateChangeRequest>),
}

#[derive(Debug)]
struct Entry {
    phase: Phase,
    task_arn: String,
    containers: Vec<String>,
}

/// The tasks of one hollow instance that are not yet known to be STOPPED, by task id.
#[derive(Debug, Default)]
pub struct TaskBook {
    tasks: HashMap<String, Entry>,
}

impl TaskBook {
    /// Tasks this instance holds (not yet seen STOPPED in the journal).
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    pub fn phase(&self, task_id: &str) -> Option<Phase> {
        self.tasks.get(task_id).map(|e| e.phase)
    }

    /// A task record for this instance, as the journal holds it now.
    pub fn observe(&mut self, task_id: &str, task: &PlayedTask, script: &Script) -> Option<Effect> {
        if task.last_status == TaskStatus::Stopped {
            self.tasks.remove(task_id);
            return None;
        }
        if task.desired_status == TaskStatus::Stopped {
            let entry = self
                .tasks
                .entry(task_id.to_string())
                .or_insert_with(|| Entry::of(task, Phase::Starting));
            if entry.phase == Phase::StopReported {
                return None;
            }
            let started = matches!(entry.phase, Phase::StartReported | Phase::Running)
                || task.last_status >= TaskStatus::Running;
            entry.phase = Phase::StopReported;
            return Some(Effect::Report(Box::new(stopped_by_request(
                entry, started, script,
            ))));
        }
        if task.desired_status != TaskStatus::Running || self.tasks.contains_key(task_id) {
            return None;
        }
        if task.last_status < TaskStatus::Running {
            self.tasks
                .insert(task_id.to_string(), Entry::of(task, Phase::Starting));
            Some(Effect::Wake {
                wake: Wake::Start,
                after: script.start_delay,
            })
        } else {
            // Already RUNNING before we saw it (a restarted sim): adopt it and play on.
            self.tasks
                .insert(task_id.to_string(), Entry::of(task, Phase::Running));
            Some(Effect::Wake {
                wake: Wake::Exit,
                after: script.run_time,
            })
        }
    }

    /// A timer set by an earlier [`Effect::Wake`] has fired. Stale timers do nothing.
    pub fn wake(&mut self, task_id: &str, wake: Wake, script: &Script) -> Option<Effect> {
        let entry = self.tasks.get_mut(task_id)?;
        match (wake, entry.phase) {
            (Wake::Start, Phase::Starting) => {
                entry.phase = Phase::StartReported;
                Some(Effect::Report(Box::new(running(entry, script))))
            }
            (Wake::Exit, Phase::Running) => {
                entry.phase = Phase::StopReported;
                Some(Effect::Report(Box::new(exited(entry, script))))
            }
            _ => None,
        }
    }

    /// The control plane acknowledged a report of `status`.
    pub fn acknowledged(
        &mut self,
        task_id: &str,
        status: TaskStatus,
        script: &Script,
    ) -> Option<Effect> {
        let entry = self.tasks.get_mut(task_id)?;
        if status == TaskStatus::Running && entry.phase == Phase::StartReported {
            entry.phase = Phase::Running;
            return Some(Effect::Wake {
                wake: Wake::Exit,
                after: script.run_time,
            });
        }
        None
    }

    /// The control plane refused a report for good (e.g. the task no longer exists):
    /// forget the task.
    pub fn abandon(&mut self, task_id: &str) {
        self.tasks.remove(task_id);
    }
}

impl Entry {
    fn of(task: &PlayedTask, phase: Phase) -> Entry {
        Entry {
            phase,
            task_arn: task.task_arn.clone(),
            containers: task.containers.iter().map(|c| c.name.clone()).collect(),
        }
    }

    fn containers(&self, status: &str, exit_code: Option<i32>) -> Vec<ContainerStateChange> {
        self.containers
            .iter()
            .map(|name| ContainerStateChange {
                container_name: Some(name.clone()),
                status: Some(status.to_string()),
                exit_code,
                ..Default::default()
            })
            .collect()
    }
}

fn running(entry: &Entry, script: &Script) -> SubmitTaskStateChangeRequest {
    SubmitTaskStateChangeRequest {
        cluster: Some(script.cluster.clone()),
        task: entry.task_arn.clone(),
        status: Some(TaskStatus::Running),
        containers: entry.containers("RUNNING", None),
        ..Default::default()
    }
}

fn exited(entry: &Entry, script: &Script) -> SubmitTaskStateChangeRequest {
    SubmitTaskStateChangeRequest {
        cluster: Some(script.cluster.clone()),
        task: entry.task_arn.clone(),
        status: Some(TaskStatus::Stopped),
        reason: Some(ESSENTIAL_EXITED_REASON.into()),
        containers: entry.containers("STOPPED", Some(script.exit_code)),
        execution_stopped_at: Some(berth_messages::now_epoch_seconds()),
        stop_code: Some(StopCode::EssentialContainerExited),
        ..Default::default()
    }
}

/// STOPPED after a StopTask: the control plane already recorded the stop code and
/// reason, so the report names neither.
fn stopped_by_request(
    entry: &Entry,
    started: bool,
    script: &Script,
) -> SubmitTaskStateChangeRequest {
    SubmitTaskStateChangeRequest {
        cluster: Some(script.cluster.clone()),
        task: entry.task_arn.clone(),
        status: Some(TaskStatus::Stopped),
        containers: entry.containers("STOPPED", started.then_some(STOPPED_BY_REQUEST_EXIT_CODE)),
        execution_stopped_at: Some(berth_messages::now_epoch_seconds()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_messages::model::Container;

    fn script() -> Script {
        Script {
            cluster: "c1".into(),
            start_delay: Duration::from_millis(50),
            run_time: Duration::from_millis(500),
            exit_code: 3,
        }
    }

    fn record(desired: TaskStatus, last: TaskStatus) -> PlayedTask {
        PlayedTask::from(&Task {
            task_arn: "arn:aws:ecs:r:a:task/c1/t1".into(),
            desired_status: desired,
            last_status: last,
            containers: ["app", "sidecar"]
                .iter()
                .map(|n| Container {
                    name: n.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    fn report(effect: Option<Effect>) -> SubmitTaskStateChangeRequest {
        match effect {
            Some(Effect::Report(r)) => *r,
            other => panic!("expected a report, got {other:?}"),
        }
    }

    use TaskStatus::{Pending, Running, Stopped};

    #[test]
    fn placed_task_runs_then_exits_with_the_exit_code() {
        let s = script();
        let mut book = TaskBook::default();
        assert_eq!(
            book.observe("t1", &record(Running, Pending), &s),
            Some(Effect::Wake {
                wake: Wake::Start,
                after: s.start_delay
            })
        );
        assert_eq!(book.phase("t1"), Some(Phase::Starting));

        let r = report(book.wake("t1", Wake::Start, &s));
        assert_eq!(r.status, Some(Running));
        assert_eq!(r.task, "arn:aws:ecs:r:a:task/c1/t1");
        assert_eq!(r.cluster.as_deref(), Some("c1"));
        assert_eq!(r.containers.len(), 2);
        assert!(r
            .containers
            .iter()
            .all(|c| c.status.as_deref() == Some("RUNNING") && c.exit_code.is_none()));

        assert_eq!(
            book.acknowledged("t1", Running, &s),
            Some(Effect::Wake {
                wake: Wake::Exit,
                after: s.run_time
            })
        );
        let r = report(book.wake("t1", Wake::Exit, &s));
        assert_eq!(r.status, Some(Stopped));
        assert_eq!(r.stop_code, Some(StopCode::EssentialContainerExited));
        assert_eq!(r.reason.as_deref(), Some(ESSENTIAL_EXITED_REASON));
        assert!(r
            .containers
            .iter()
            .all(|c| c.status.as_deref() == Some("STOPPED") && c.exit_code == Some(3)));
        assert_eq!(book.phase("t1"), Some(Phase::StopReported));
        assert_eq!(book.acknowledged("t1", Stopped, &s), None);
        assert_eq!(book.len(), 1, "kept until the journal says STOPPED");

        assert_eq!(book.observe("t1", &record(Stopped, Stopped), &s), None);
        assert!(book.is_empty());
    }

    #[test]
    fn redelivered_and_older_records_report_nothing_twice() {
        let s = script();
        let mut book = TaskBook::default();
        assert!(book.observe("t1", &record(Running, Pending), &s).is_some());
        assert_eq!(book.observe("t1", &record(Running, Pending), &s), None);
        report(book.wake("t1", Wake::Start, &s));
        // The start timer firing again, the same record again, and our own RUNNING
        // coming back from the journal change nothing.
        assert_eq!(book.wake("t1", Wake::Start, &s), None);
        assert_eq!(book.observe("t1", &record(Running, Pending), &s), None);
        assert_eq!(book.observe("t1", &record(Running, Running), &s), None);
        assert!(book.acknowledged("t1", Running, &s).is_some());
        // A second acknowledgement (a retried report) does not set a second exit timer.
        assert_eq!(book.acknowledged("t1", Running, &s), None);
        assert_eq!(book.observe("t1", &record(Running, Running), &s), None);
        report(book.wake("t1", Wake::Exit, &s));
        assert_eq!(book.wake("t1", Wake::Exit, &s), None);
        assert_eq!(book.observe("t1", &record(Running, Running), &s), None);
    }

    #[test]
    fn exit_timer_waits_for_the_running_acknowledgement() {
        let s = script();
        let mut book = TaskBook::default();
        book.observe("t1", &record(Running, Pending), &s);
        report(book.wake("t1", Wake::Start, &s));
        assert_eq!(book.wake("t1", Wake::Exit, &s), None);
        assert_eq!(book.phase("t1"), Some(Phase::StartReported));
    }

    #[test]
    fn stop_before_start_reports_stopped_at_once_without_exit_codes() {
        let s = script();
        let mut book = TaskBook::default();
        book.observe("t1", &record(Running, Pending), &s);
        let r = report(book.observe("t1", &record(Stopped, Pending), &s));
        assert_eq!(r.status, Some(Stopped));
        assert_eq!(r.stop_code, None, "the control plane set UserInitiated");
        assert_eq!(r.reason, None);
        assert!(r.containers.iter().all(|c| c.exit_code.is_none()));
        // The start timer is now stale, the stop record again changes nothing.
        assert_eq!(book.wake("t1", Wake::Start, &s), None);
        assert_eq!(book.observe("t1", &record(Stopped, Pending), &s), None);
        assert_eq!(book.observe("t1", &record(Stopped, Stopped), &s), None);
        assert!(book.is_empty());
    }

    #[test]
    fn stop_while_running_reports_stopped_once_with_sigterm_exit() {
        let s = script();
        let mut book = TaskBook::default();
        book.observe("t1", &record(Running, Pending), &s);
        report(book.wake("t1", Wake::Start, &s));
        book.acknowledged("t1", Running, &s);
        let r = report(book.observe("t1", &record(Stopped, Running), &s));
        assert_eq!(r.status, Some(Stopped));
        assert!(r
            .containers
            .iter()
            .all(|c| c.exit_code == Some(STOPPED_BY_REQUEST_EXIT_CODE)));
        assert_eq!(book.wake("t1", Wake::Exit, &s), None);
        assert_eq!(book.observe("t1", &record(Stopped, Running), &s), None);
    }

    #[test]
    fn first_sight_of_a_stop_request_is_reported() {
        let s = script();
        let mut book = TaskBook::default();
        let r = report(book.observe("t9", &record(Stopped, Pending), &s));
        assert_eq!(r.status, Some(Stopped));
        assert_eq!(book.phase("t9"), Some(Phase::StopReported));
    }

    #[test]
    fn running_task_seen_after_a_restart_is_adopted() {
        let s = script();
        let mut book = TaskBook::default();
        assert_eq!(
            book.observe("t1", &record(Running, Running), &s),
            Some(Effect::Wake {
                wake: Wake::Exit,
                after: s.run_time
            })
        );
        let r = report(book.wake("t1", Wake::Exit, &s));
        assert_eq!(r.status, Some(Stopped));
    }

    #[test]
    fn stopped_records_and_unknown_events_are_ignored() {
        let s = script();
        let mut book = TaskBook::default();
        assert_eq!(book.observe("t1", &record(Stopped, Stopped), &s), None);
        assert_eq!(book.observe("t2", &record(Running, Stopped), &s), None);
        assert_eq!(book.wake("t3", Wake::Start, &s), None);
        assert_eq!(book.acknowledged("t3", Running, &s), None);
        assert!(book.is_empty());
    }

    #[test]
    fn abandoned_task_is_forgotten() {
        let s = script();
        let mut book = TaskBook::default();
        book.observe("t1", &record(Running, Pending), &s);
        report(book.wake("t1", Wake::Start, &s));
        book.abandon("t1");
        assert!(book.is_empty());
        assert_eq!(book.acknowledged("t1", Running, &s), None);
    }
}

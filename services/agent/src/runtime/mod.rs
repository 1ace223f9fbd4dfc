//! The seam between a task's lifecycle ([`crate::task`]) and what runs its containers.
//!
//! A [`Runtime`] creates and starts containers, waits for them to end, stops them
//! (SIGTERM, then SIGKILL once the stop timeout has passed), finds again what an earlier
//! run of this agent started (adoption), probes their health and reads their output. It
//! keeps no lifecycle of its own: the task actor decides what should happen and when, and
//! reports it. The shape follows amazon-ecs-agent's docker client: a container is named by
//! the agent ([`ContainerRef`], which a Docker runtime turns into a container name and
//! labels), has a runtime id once it runs (reported as `runtimeId`), and ends with an exit
//! code and, when the exit alone does not say it, a reason.
//!
//! Implementations: [`process`] (`--runtime process`), host processes under the agent's
//! shim; [`hollow`] (`--runtime sim`), containers that run nothing, for scale tests. The runtime is chosen once at start-up ([`Kind`]) and shared as
//! `Arc<dyn Runtime>`.
//!
//! Asynchronous operations return boxed `'static` futures: the trait stays usable as
//! `dyn Runtime`, and the task actor can spawn them on its context.

pub mod hollow;
pub mod process;

use berth_messages::model::{ContainerDefinition, Task};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Prefix of every reason a container could not start for (as ECS words it).
pub const CANNOT_START: &str = "CannotStartContainerError";
/// Container reason when the kernel killed it for exceeding its memory limit (ECS's words).
pub const OUT_OF_MEMORY: &str = "OutOfMemoryError: Container killed due to memory usage";

/// The runtimes an agent can run its containers with (`--runtime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Kind {
    /// Host processes, each under a shim in its own process group.
    #[default]
    Process,
    /// Hollow containers that run nothing (a hollow host of real shape, for scale tests):
    /// they start after `--sim-start-delay-ms`, run `--sim-run-ms` and exit with
    /// `--sim-exit-code`.
    Sim,
}

impl Kind {
    /// The value of the `berth.runtime` attribute the instance registers with.
    pub fn attribute_value(self) -> &'static str {
        match self {
            Kind::Process => "process",
            Kind::Sim => "sim",
        }
    }
}

/// How the agent names a container to its runtime: its task and its name in the task
/// definition. A runtime finds what it started from these alone, also after the agent
/// restarted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContainerRef {
    pub task_id: String,
    pub name: String,
}

impl ContainerRef {
    pub fn new(task_id: &str, name: &str) -> Self {
        Self {
            task_id: task_id.to_string(),
            name: name.to_string(),
        }
    }
}

/// What the agent keeps about a task beside its containers: enough for the log service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskInfo {
    pub task_arn: String,
    /// Container names in definition order.
    pub containers: Vec<String>,
}

/// How a container ended, or why it never ran.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stopped {
    /// As Docker and ECS report it: the code, or 128 + the signal that ended it. None if
    /// it never ran or nothing recorded how it ended.
    pub exit_code: Option<i32>,
    /// Why, when the exit code alone does not say it (could not start, out of memory,
    /// vanished).
    pub reason: Option<String>,
    /// Whether its command ran at all.
    pub started: bool,
}

impl Stopped {
    /// A container that never ran, with the reason.
    pub fn not_started(reason: String) -> Self {
        Self {
            exit_code: None,
            reason: Some(reason),
            started: false,
        }
    }
}

/// What the runtime has of a container that an earlier run of this agent may have
/// started. A container still starting is waited for until it runs or ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Adopted {
    /// Nothing: it never started on this host.
    Absent,
    /// Running, with its runtime id.
    Running(String),
    Stopped(Stopped),
}

/// A chunk of a container's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChunk {
    /// Offset of the first byte of `data` (bytes since the container started).
    pub offset: u64,
    pub next_offset: u64,
    pub data: Vec<u8>,
    /// Offset just past the last byte written so far.
    pub end: u64,
    /// Whether the container has ended, so no output follows `end`; None when the runtime
    /// has nothing of the container (it never started here).
    pub ended: Option<bool>,
}

/// Which part of a container's output to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRange {
    /// From this offset; else the last `tail` bytes; else from the oldest kept.
    pub offset: Option<u64>,
    pub tail: Option<u64>,
    /// At most this many bytes (less if a character would be cut).
    pub max: u64,
}

/// A runtime's failure.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The container cannot start here (unknown executable, user or directory, ...).
    #[error("{CANNOT_START}: {0}")]
    CannotStart(String),
    /// The container cannot start because a system call failed.
    #[error("{CANNOT_START}: {what}")]
    StartFailed {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// What the runtime keeps about a task cannot be written.
    #[error("cannot keep the record of task {task_id}")]
    TaskRecord {
        task_id: String,
        #[source]
        source: std::io::Error,
    },
    /// A container's output cannot be read.
    #[error("cannot read the output of {container}")]
    Logs {
        container: String,
        #[source]
        source: std::io::Error,
    },
}

impl RuntimeError {
    /// The message and its causes on one line: the reason reported for a container this
    /// error kept from starting.
    pub fn reason(&self) -> String {
        let mut text = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(e) = cause {
            text.push_str(": ");
            text.push_str(&e.to_string());
            cause = e.source();
        }
        text
    }
}

/// A container being started: resolves with its runtime id once it runs, or with how it
/// ended if it never got that far.
pub type Starting = BoxFuture<'static, Result<String, Stopped>>;

/// What runs containers for the agent's tasks.
pub trait Runtime: Send + Sync + 'static {
    /// Keeps what the agent knows of a task before its containers start (read back by
    /// the log service and after a restart).
    fn save_task(&self, task_id: &str, info: &TaskInfo) -> Result<(), RuntimeError>;

    /// What [`Runtime::save_task`] kept, if anything.
    fn task(&self, task_id: &str) -> Option<TaskInfo>;

    /// Whether a container of the task may still run here: a restarted agent takes over a
    /// task the journal shows stopped only then.
    fn any_live(&self, task_id: &str) -> bool;

    /// Finds a container an earlier run of this agent started (or learns how it ended).
    fn adopt(&self, container: &ContainerRef) -> BoxFuture<'static, Adopted>;

    /// Creates and starts a container of `task` from its definition. What can never start
    /// is refused at once, before anything is created; the rest resolves in [`Starting`].
    fn start(
        &self,
        container: &ContainerRef,
        task: &Task,
        definition: &ContainerDefinition,
    ) -> Result<Starting, RuntimeError>;

    /// Resolves once a running (started or adopted) container has ended.
    fn wait(&self, container: &ContainerRef) -> BoxFuture<'static, Stopped>;

    /// Asks a running container to stop (SIGTERM), and kills it (SIGKILL) if it still runs
    /// after `timeout`. How it ended comes from [`Runtime::wait`].
    fn stop(&self, container: &ContainerRef, timeout: Duration) -> BoxFuture<'static, ()>;

    /// Frees what an ended container holds beyond its output (best effort).
    fn release(&self, container: &ContainerRef);

    /// Runs a health check command in a running container (its environment, directory and
    /// user): true if it exits 0 within `timeout`.
    fn probe(
        &self,
        container: &ContainerRef,
        task: &Task,
        definition: &ContainerDefinition,
        argv: Vec<String>,
        timeout: Duration,
    ) -> BoxFuture<'static, bool>;

    /// Reads a part of a container's output.
    fn logs(
        &self,
        container: &ContainerRef,
        range: LogRange,
    ) -> BoxFuture<'static, Result<LogChunk, RuntimeError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_carry_their_causes() {
        let e = RuntimeError::StartFailed {
            what: "cannot start the shim /x".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert_eq!(
            e.reason(),
            "CannotStartContainerError: cannot start the shim /x: entity not found"
        );
        assert_eq!(
            RuntimeError::CannotStart("no".into()).reason(),
            "CannotStartContainerError: no"
        );
    }
}

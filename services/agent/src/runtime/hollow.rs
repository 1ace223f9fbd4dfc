//! The hollow runtime (`--runtime sim`): containers that run nothing. A container "starts"
//! after a start delay, "runs" for a run time and ends with a chosen exit code, or at once
//! when it is stopped (exit code 143, as SIGTERM would end it). Everything else the agent
//! does (registration, its own connection and task consumer, the task actors, reports,
//! heartbeats, the log service) is the real agent's: a hollow host differs from a real
//! one only here, which is what makes it a fair stand-in at scale.
//!
//! The timings come from the agent's `--sim-*` flags, or per container from the Docker
//! labels `berth.sim.start-delay-ms`, `berth.sim.run-ms` and `berth.sim.exit-code` of its
//! definition. State is in memory: an agent restarted with this runtime finds nothing to
//! adopt.

use super::{
    Adopted, ContainerRef, LogChunk, LogRange, Runtime, RuntimeError, Starting, Stopped, TaskInfo,
};
use berth_messages::model::{ContainerDefinition, Task};
use dashmap::DashMap;
use futures::future::BoxFuture;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// Exit code of a hollow container that was asked to stop (128 + SIGTERM).
pub const STOPPED_EXIT_CODE: i32 = 143;

/// Docker label of a container definition overriding the start delay (milliseconds).
pub const START_DELAY_LABEL: &str = "berth.sim.start-delay-ms";
/// Docker label overriding the run time (milliseconds).
pub const RUN_TIME_LABEL: &str = "berth.sim.run-ms";
/// Docker label overriding the exit code.
pub const EXIT_CODE_LABEL: &str = "berth.sim.exit-code";

/// How hollow containers behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Script {
    /// From being started to running.
    pub start_delay: Duration,
    /// From running to ending on its own.
    pub run_time: Duration,
    /// Exit code when the run time ends.
    pub exit_code: i32,
}

impl Script {
    /// This script with what a container definition's Docker labels override
    /// ([`START_DELAY_LABEL`], [`RUN_TIME_LABEL`], [`EXIT_CODE_LABEL`]): one fleet can run
    /// tasks that start at once and tasks that never do. Unparsable values are ignored.
    pub fn for_container(&self, definition: &ContainerDefinition) -> Script {
        let label = |name: &str| definition.docker_labels.get(name).map(|v| v.trim());
        let millis = |name: &str| {
            label(name)
                .and_then(|v| v.parse::<u64>().ok())
                .map(Duration::from_millis)
        };
        Script {
            start_delay: millis(START_DELAY_LABEL).unwrap_or(self.start_delay),
            run_time: millis(RUN_TIME_LABEL).unwrap_or(self.run_time),
            exit_code: label(EXIT_CODE_LABEL)
                .and_then(|v| v.parse().ok())
                .unwrap_or(self.exit_code),
        }
    }
}

/// One hollow container: how it ended, once it has, and the bell its stop rings.
struct Container {
    ended: watch::Sender<Option<Stopped>>,
    stop: Notify,
}

impl Container {
    fn end(&self, stopped: Stopped) {
        self.ended.send_if_modified(|slot| {
            if slot.is_some() {
                return false;
            }
            *slot = Some(stopped);
            true
        });
    }

    fn has_ended(&self) -> bool {
        self.ended.borrow().is_some()
    }
}

/// Runs hollow containers for one agent.
pub struct HollowRuntime {
    script: Script,
    containers: DashMap<ContainerRef, Arc<Container>>,
    tasks: DashMap<String, TaskInfo>,
    next_id: AtomicU64,
}

impl HollowRuntime {
    pub fn new(script: Script) -> Self {
        Self {
            script,
            containers: DashMap::new(),
            tasks: DashMap::new(),
            next_id: AtomicU64::new(1),
        }
    }
}

impl Runtime for HollowRuntime {
    fn save_task(&self, task_id: &str, info: &TaskInfo) -> Result<(), RuntimeError> {
        self.tasks.insert(task_id.to_string(), info.clone());
        Ok(())
    }

    fn task(&self, task_id: &str) -> Option<TaskInfo> {
        self.tasks.get(task_id).map(|t| t.value().clone())
    }

    fn any_live(&self, task_id: &str) -> bool {
        self.containers
            .iter()
            .any(|c| c.key().task_id == task_id && !c.value().has_ended())
    }

    fn adopt(&self, container: &ContainerRef) -> BoxFuture<'static, Adopted> {
        let found = self.containers.get(container).map(|c| c.value().clone());
        Box::pin(async move {
            match found {
                None => Adopted::Absent,
                Some(c) => match c.ended.borrow().clone() {
                    Some(stopped) => Adopted::Stopped(stopped),
                    None => Adopted::Running("hollow".into()),
                },
            }
        })
    }

    fn start(
        &self,
        container: &ContainerRef,
        _task: &Task,
        definition: &ContainerDefinition,
    ) -> Result<Starting, RuntimeError> {
        let (ended, _) = watch::channel(None);
        let hollow = Arc::new(Container {
            ended,
            stop: Notify::new(),
        });
        self.containers.insert(container.clone(), hollow.clone());
        let id = format!("hollow-{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        let script = self.script.for_container(definition);
        Ok(Box::pin(async move {
            tokio::select! {
                _ = tokio::time::sleep(script.start_delay) => {}
                _ = hollow.stop.notified() => {
                    let stopped = Stopped::not_started("stopped before it started".into());
                    hollow.end(stopped.clone());
                    return Err(stopped);
                }
            }
            let running = hollow.clone();
            tokio::spawn(async move {
                let exit_code = tokio::select! {
                    _ = tokio::time::sleep(script.run_time) => script.exit_code,
                    _ = running.stop.notified() => STOPPED_EXIT_CODE,
                };
                running.end(Stopped {
                    exit_code: Some(exit_code),
                    reason: None,
                    started: true,
                });
            });
            Ok(id)
        }))
    }

    fn wait(&self, container: &ContainerRef) -> BoxFuture<'static, Stopped> {
        let found = self.containers.get(container).map(|c| c.value().clone());
        Box::pin(async move {
            let Some(hollow) = found else {
                return Stopped::not_started("no such hollow container".into());
            };
            let mut ended = hollow.ended.subscribe();
            // The sender lives in `hollow`, held here: the wait cannot lose it.
            let stopped = match ended.wait_for(Option::is_some).await {
                Ok(stopped) => stopped.clone().unwrap_or_default(),
                Err(_) => Stopped::default(),
            };
            stopped
        })
    }

    fn stop(&self, container: &ContainerRef, _timeout: Duration) -> BoxFuture<'static, ()> {
        if let Some(c) = self.containers.get(container) {
            // A permit is kept if the container is not waiting yet: the stop is not lost.
            c.value().stop.notify_one();
        }
        Box::pin(async {})
    }

    fn release(&self, container: &ContainerRef) {
        self.containers.remove(container);
        if !self
            .containers
            .iter()
            .any(|c| c.key().task_id == container.task_id)
        {
            self.tasks.remove(&container.task_id);
        }
    }

    fn probe(
        &self,
        _container: &ContainerRef,
        _task: &Task,
        _definition: &ContainerDefinition,
        _argv: Vec<String>,
        _timeout: Duration,
    ) -> BoxFuture<'static, bool> {
        Box::pin(async { true })
    }

    fn logs(
        &self,
        container: &ContainerRef,
        _range: LogRange,
    ) -> BoxFuture<'static, Result<LogChunk, RuntimeError>> {
        let ended = self
            .containers
            .get(container)
            .map(|c| c.value().has_ended());
        Box::pin(async move {
            Ok(LogChunk {
                offset: 0,
                next_offset: 0,
                data: Vec::new(),
                end: 0,
                ended,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime(run_time: Duration) -> HollowRuntime {
        HollowRuntime::new(Script {
            start_delay: Duration::from_millis(50),
            run_time,
            exit_code: 3,
        })
    }

    fn start(rt: &HollowRuntime, c: &ContainerRef) -> Starting {
        rt.start(c, &Task::default(), &ContainerDefinition::default())
            .expect("hollow containers always start")
    }

    #[tokio::test(start_paused = true)]
    async fn a_container_runs_for_its_run_time_and_exits_with_the_code() {
        let rt = runtime(Duration::from_secs(2));
        let c = ContainerRef::new("t1", "web");
        let id = start(&rt, &c).await.expect("runs");
        assert!(id.starts_with("hollow-"));
        assert!(rt.any_live("t1"));
        let stopped = rt.wait(&c).await;
        assert_eq!(stopped.exit_code, Some(3));
        assert!(stopped.started);
        assert!(!rt.any_live("t1"));
        rt.release(&c);
        assert_eq!(rt.adopt(&c).await, Adopted::Absent);
    }

    #[test]
    fn labels_override_the_script() {
        let base = Script {
            start_delay: Duration::from_millis(50),
            run_time: Duration::from_secs(1),
            exit_code: 0,
        };
        let mut definition = ContainerDefinition::default();
        definition
            .docker_labels
            .insert(START_DELAY_LABEL.into(), "3600000".into());
        definition
            .docker_labels
            .insert(EXIT_CODE_LABEL.into(), "7".into());
        definition
            .docker_labels
            .insert(RUN_TIME_LABEL.into(), "soon".into());
        let script = base.for_container(&definition);
        assert_eq!(script.start_delay, Duration::from_secs(3600));
        assert_eq!(script.run_time, Duration::from_secs(1));
        assert_eq!(script.exit_code, 7);
        assert_eq!(base.for_container(&ContainerDefinition::default()), base);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_ends_it_at_once_with_sigterm_s_code() {
        let rt = runtime(Duration::from_secs(3600));
        let c = ContainerRef::new("t2", "web");
        start(&rt, &c).await.expect("runs");
        let waiting = rt.wait(&c);
        rt.stop(&c, Duration::from_secs(30)).await;
        let stopped = tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("ends without its run time");
        assert_eq!(stopped.exit_code, Some(STOPPED_EXIT_CODE));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_before_the_start_ends_it_unstarted() {
        let rt = runtime(Duration::from_secs(3600));
        let c = ContainerRef::new("t3", "web");
        let starting = start(&rt, &c);
        rt.stop(&c, Duration::from_secs(30)).await;
        let refused = starting.await.expect_err("never ran");
        assert!(!refused.started);
        assert!(!rt.wait(&c).await.started);
    }
}

//! Unit tests of the task actor: dependency and health rules, and the whole lifecycle
//! driven through an in-memory runtime on virtual time (a runtime is one implementation
//! of [`Runtime`], nothing in the actor knows which).

use super::*;
use berth_messages::api::ContainerStateChange;

fn dep(name: &str, condition: &str) -> ContainerDependency {
    ContainerDependency {
        container_name: name.into(),
        condition: condition.into(),
    }
}

fn running() -> State {
    State::Running("2".into())
}

fn exited(code: i32) -> State {
    State::Exited {
        code: Some(code),
        reason: None,
        started: true,
    }
}

#[test]
fn dependencies_gate_starts() {
    let of = |s: State| move |_: &str| Some((s.clone(), None));
    assert_eq!(readiness(&[], of(State::Pending)), Readiness::Ready);
    assert_eq!(
        readiness(&[dep("a", "START")], of(State::Pending)),
        Readiness::Wait
    );
    assert_eq!(
        readiness(&[dep("a", "START")], of(State::Starting)),
        Readiness::Wait
    );
    assert_eq!(
        readiness(&[dep("a", "START")], of(running())),
        Readiness::Ready
    );
    assert_eq!(
        readiness(&[dep("a", "COMPLETE")], of(running())),
        Readiness::Wait
    );
    assert_eq!(
        readiness(&[dep("a", "COMPLETE")], of(exited(1))),
        Readiness::Ready
    );
    assert_eq!(
        readiness(&[dep("a", "SUCCESS")], of(exited(0))),
        Readiness::Ready
    );
    match readiness(&[dep("a", "SUCCESS")], of(exited(2))) {
        Readiness::Never(why) => assert!(why.contains("exited with code 2"), "{why}"),
        other => panic!("{other:?}"),
    }
    let failed = State::Exited {
        code: None,
        reason: None,
        started: false,
    };
    assert!(matches!(
        readiness(&[dep("a", "START")], of(failed)),
        Readiness::Never(_)
    ));
    assert!(matches!(
        readiness(&[dep("zz", "START")], |_| None),
        Readiness::Never(_)
    ));
}

#[test]
fn healthy_dependencies_wait_for_the_health_check() {
    let healthy = [dep("a", "HEALTHY")];
    let with = |s: State, h: Option<&'static str>| move |_: &str| Some((s.clone(), h));
    assert_eq!(
        readiness(&healthy, with(running(), Some(health::UNKNOWN))),
        Readiness::Wait
    );
    assert_eq!(
        readiness(&healthy, with(State::Starting, None)),
        Readiness::Wait
    );
    assert_eq!(
        readiness(&healthy, with(running(), Some(health::HEALTHY))),
        Readiness::Ready
    );
    assert_eq!(
        readiness(&healthy, with(exited(0), Some(health::HEALTHY))),
        Readiness::Ready
    );
    for never in [
        with(running(), Some(health::UNHEALTHY)),
        with(running(), None),
        with(exited(0), Some(health::UNKNOWN)),
    ] {
        assert!(matches!(readiness(&healthy, never), Readiness::Never(_)));
    }
}

#[test]
fn health_follows_dockers_rules() {
    let mut h = Health::new(None);
    assert_eq!(h.status, health::UNKNOWN);
    // Failures inside the start period do not count.
    for _ in 0..5 {
        assert_eq!(h.observe(false, true, 2), None);
    }
    assert_eq!(h.observe(true, true, 2), Some(health::HEALTHY));
    assert_eq!(h.observe(true, false, 2), None);
    // One failure short of the retries keeps it HEALTHY; the next makes it UNHEALTHY.
    assert_eq!(h.observe(false, false, 2), None);
    assert_eq!(h.observe(false, false, 2), Some(health::UNHEALTHY));
    assert_eq!(h.observe(false, false, 2), None);
    // A success starts the count again.
    assert_eq!(h.observe(true, false, 2), Some(health::HEALTHY));
    assert_eq!(h.observe(false, false, 2), None);
    assert_eq!(h.status, health::HEALTHY);
    // A restarted agent starts from what the journal knew.
    assert_eq!(Health::new(Some("HEALTHY")).status, health::HEALTHY);
    assert_eq!(Health::new(Some("bogus")).status, health::UNKNOWN);
}

/// An in-memory [`Runtime`]: containers are scripted (how long they run, their exit code,
/// whether they ignore SIGTERM) and what the actor asks of it is logged as events.
mod fake {
    use crate::runtime::{
        Adopted, ContainerRef, LogChunk, LogRange, Runtime, RuntimeError, Starting, Stopped,
        TaskInfo,
    };
    use berth_messages::model::{ContainerDefinition, Task};
    use futures::future::{BoxFuture, FutureExt};
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use tokio::sync::watch;

    /// How a fake container behaves.
    #[derive(Debug, Clone, Default)]
    pub struct Script {
        /// Refused at start with this reason.
        pub cannot_start: Option<String>,
        /// Ends by itself after this long, with `exit_code`.
        pub runs_for: Option<Duration>,
        pub exit_code: i32,
        /// SIGTERM does nothing: only the SIGKILL after the stop timeout ends it.
        pub ignores_term: bool,
    }

    #[derive(Default)]
    pub struct FakeRuntime {
        pub scripts: Mutex<HashMap<String, Script>>,
        /// What adoption finds, by container name.
        pub adoptable: Mutex<HashMap<String, Adopted>>,
        ends: Mutex<HashMap<String, watch::Sender<Option<Stopped>>>>,
        tasks: Mutex<HashMap<String, TaskInfo>>,
        pub events: Arc<Mutex<Vec<String>>>,
    }

    impl FakeRuntime {
        pub fn script(&self, name: &str, script: Script) {
            lock(&self.scripts).insert(name.to_string(), script);
        }

        pub fn events(&self) -> Vec<String> {
            lock(&self.events).clone()
        }

        fn event(&self, text: String) {
            lock(&self.events).push(text);
        }

        fn end_channel(&self, name: &str) -> watch::Sender<Option<Stopped>> {
            lock(&self.ends)
                .entry(name.to_string())
                .or_insert_with(|| watch::channel(None).0)
                .clone()
        }
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Ends a container with `code` unless it has ended already.
    fn finish(end: &watch::Sender<Option<Stopped>>, code: i32) {
        end.send_if_modified(|ended| {
            if ended.is_some() {
                return false;
            }
            *ended = Some(Stopped {
                exit_code: Some(code),
                reason: None,
                started: true,
            });
            true
        });
    }

    impl Runtime for FakeRuntime {
        fn save_task(&self, task_id: &str, info: &TaskInfo) -> Result<(), RuntimeError> {
            lock(&self.tasks).insert(task_id.to_string(), info.clone());
            Ok(())
        }

        fn task(&self, task_id: &str) -> Option<TaskInfo> {
            lock(&self.tasks).get(task_id).cloned()
        }

        fn any_live(&self, _task_id: &str) -> bool {
            lock(&self.ends).values().any(|end| end.borrow().is_none())
        }

        fn adopt(&self, container: &ContainerRef) -> BoxFuture<'static, Adopted> {
            let found = lock(&self.adoptable)
                .remove(&container.name)
                .unwrap_or(Adopted::Absent);
            if matches!(found, Adopted::Running(_)) {
                self.end_channel(&container.name);
            }
            futures::future::ready(found).boxed()
        }

        fn start(
            &self,
            container: &ContainerRef,
            _task: &Task,
            _definition: &ContainerDefinition,
        ) -> Result<Starting, RuntimeError> {
            let script = lock(&self.scripts)
                .get(&container.name)
                .cloned()
                .unwrap_or_default();
            if let Some(reason) = script.cannot_start {
                return Err(RuntimeError::CannotStart(reason));
            }
            self.event(format!("start {}", container.name));
            let end = self.end_channel(&container.name);
            let id = format!("fake-{}", container.name);
            Ok(async move {
                if let Some(run) = script.runs_for {
                    tokio::spawn(async move {
                        tokio::time::sleep(run).await;
                        finish(&end, script.exit_code);
                    });
                }
                Ok(id)
            }
            .boxed())
        }

        fn wait(&self, container: &ContainerRef) -> BoxFuture<'static, Stopped> {
            let mut ended = self.end_channel(&container.name).subscribe();
            async move {
                match ended.wait_for(Option::is_some).await {
                    Ok(stopped) => stopped.clone().unwrap_or_default(),
                    Err(_) => Stopped::default(),
                }
            }
            .boxed()
        }

        fn stop(&self, container: &ContainerRef, timeout: Duration) -> BoxFuture<'static, ()> {
            self.event(format!("stop {} {timeout:?}", container.name));
            let ignores_term = lock(&self.scripts)
                .get(&container.name)
                .is_some_and(|s| s.ignores_term);
            let end = self.end_channel(&container.name);
            async move {
                if ignores_term {
                    tokio::time::sleep(timeout).await;
                    finish(&end, 137);
                } else {
                    finish(&end, 143);
                }
            }
            .boxed()
        }

        fn release(&self, container: &ContainerRef) {
            self.event(format!("release {}", container.name));
        }

        fn probe(
            &self,
            _container: &ContainerRef,
            _task: &Task,
            _definition: &ContainerDefinition,
            _argv: Vec<String>,
            _timeout: Duration,
        ) -> BoxFuture<'static, bool> {
            futures::future::ready(true).boxed()
        }

        fn logs(
            &self,
            _container: &ContainerRef,
            _range: LogRange,
        ) -> BoxFuture<'static, Result<LogChunk, RuntimeError>> {
            futures::future::ready(Ok(LogChunk {
                offset: 0,
                next_offset: 0,
                data: Vec::new(),
                end: 0,
                ended: None,
            }))
            .boxed()
        }
    }
}

/// The agent around an actor under test: one task definition, reports into a channel.
struct TestAgent {
    runtime: Arc<dyn Runtime>,
    definition: Arc<TaskDefinition>,
    reports: Arc<Recorded>,
}

struct Recorded(tokio::sync::mpsc::UnboundedSender<Report>);

impl Reports for Recorded {
    fn send(&self, report: Report) {
        let _ = self.0.send(report);
    }
    fn flush(&self) -> BoxFuture<'static, ()> {
        futures::future::ready(()).boxed()
    }
}

impl Agent for TestAgent {
    fn cluster(&self) -> &str {
        "c"
    }
    fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.runtime
    }
    fn default_stop_timeout(&self) -> Duration {
        Duration::from_secs(30)
    }
    fn task_definition(
        self: Arc<Self>,
        _arn: String,
    ) -> BoxFuture<'static, Result<Arc<TaskDefinition>, String>> {
        futures::future::ready(Ok(self.definition.clone())).boxed()
    }
    fn reports(&self, _task_id: &str) -> Arc<dyn Reports> {
        self.reports.clone()
    }
    fn forget(&self, _task_id: &str, _actor_id: u64) {}
}

struct Harness {
    runtime: Arc<fake::FakeRuntime>,
    reports: tokio::sync::mpsc::UnboundedReceiver<Report>,
    actor: Addr<TaskActor>,
}

const TASK_ARN: &str = "arn:aws:ecs:r:a:task/c/t1";

fn task_record(desired: TaskStatus, last: TaskStatus) -> Task {
    Task {
        task_arn: TASK_ARN.into(),
        task_definition_arn: "arn:aws:ecs:r:a:task-definition/f:1".into(),
        desired_status: desired,
        last_status: last,
        ..Default::default()
    }
}

fn container_def(name: &str) -> ContainerDefinition {
    ContainerDefinition {
        name: name.into(),
        command: vec!["run".into()],
        ..Default::default()
    }
}

impl Harness {
    /// Starts an actor for a task of `containers` on `runtime`, from `record`.
    fn start(
        runtime: fake::FakeRuntime,
        containers: Vec<ContainerDefinition>,
        record: Task,
    ) -> Self {
        let runtime = Arc::new(runtime);
        let (tx, reports) = tokio::sync::mpsc::unbounded_channel();
        let agent = Arc::new(TestAgent {
            runtime: runtime.clone(),
            definition: Arc::new(TaskDefinition {
                container_definitions: containers,
                ..Default::default()
            }),
            reports: Arc::new(Recorded(tx)),
        });
        let actor = TaskActor::new(agent, 0, "t1".into(), record).start();
        Harness {
            runtime,
            reports,
            actor,
        }
    }

    async fn next_report(&mut self) -> Report {
        match tokio::time::timeout(Duration::from_secs(3600), self.reports.recv()).await {
            Ok(Some(report)) => report,
            other => panic!("no report: {other:?}"),
        }
    }

    async fn next_task_report(&mut self) -> SubmitTaskStateChangeRequest {
        match self.next_report().await {
            Report::Task(r) => r,
            other => panic!("expected a task report, got {other:?}"),
        }
    }
}

fn change<'a>(report: &'a SubmitTaskStateChangeRequest, name: &str) -> &'a ContainerStateChange {
    report
        .containers
        .iter()
        .find(|c| c.container_name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no {name} in {report:?}"))
}

#[actix_rt::test]
async fn a_task_runs_reports_and_stops_through_any_runtime() {
    tokio::time::pause();
    let runtime = fake::FakeRuntime::default();
    runtime.script(
        "app",
        fake::Script {
            ignores_term: true,
            ..Default::default()
        },
    );
    runtime.script(
        "side",
        fake::Script {
            runs_for: Some(Duration::from_secs(5)),
            exit_code: 3,
            ..Default::default()
        },
    );
    let app = ContainerDefinition {
        stop_timeout: Some(10),
        ..container_def("app")
    };
    let side = ContainerDefinition {
        essential: Some(false),
        ..container_def("side")
    };
    let mut h = Harness::start(
        runtime,
        vec![app, side],
        task_record(TaskStatus::Running, TaskStatus::Pending),
    );

    let running = h.next_task_report().await;
    assert_eq!(running.status, Some(TaskStatus::Running));
    assert_eq!(
        change(&running, "app").runtime_id.as_deref(),
        Some("fake-app")
    );
    assert_eq!(change(&running, "side").status.as_deref(), Some("RUNNING"));

    // The non-essential container ends on its own: a container change, the task goes on.
    let before = tokio::time::Instant::now();
    match h.next_report().await {
        Report::Container(c) => {
            assert_eq!(c.container_name, "side");
            assert_eq!(c.status.as_deref(), Some("STOPPED"));
            assert_eq!(c.exit_code, Some(3));
        }
        other => panic!("{other:?}"),
    }
    assert!(
        before.elapsed() >= Duration::from_secs(4),
        "{:?}",
        before.elapsed()
    );

    // Desired STOPPED: the container that ignores SIGTERM ends at its stop timeout.
    let asked = tokio::time::Instant::now();
    h.actor.do_send(Record(Box::new(task_record(
        TaskStatus::Stopped,
        TaskStatus::Running,
    ))));
    let stopped = h.next_task_report().await;
    assert_eq!(stopped.status, Some(TaskStatus::Stopped));
    assert_eq!(stopped.stop_code, None);
    assert_eq!(change(&stopped, "app").exit_code, Some(137));
    assert_eq!(change(&stopped, "side").exit_code, Some(3));
    let took = asked.elapsed();
    assert!(
        took >= Duration::from_secs(10) && took < Duration::from_secs(11),
        "{took:?}"
    );
    assert_eq!(
        h.runtime.events(),
        vec![
            "start app",
            "start side",
            "release side",
            "stop app 10s",
            "release app"
        ]
    );

    // The journal shows it STOPPED: the actor ends.
    h.actor.do_send(Record(Box::new(task_record(
        TaskStatus::Stopped,
        TaskStatus::Stopped,
    ))));
    tokio::time::timeout(Duration::from_secs(60), async {
        while h.actor.connected() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the actor ends");
}

#[actix_rt::test]
async fn dependencies_order_starts_and_a_refused_start_fails_the_task() {
    tokio::time::pause();
    let runtime = fake::FakeRuntime::default();
    runtime.script(
        "init",
        fake::Script {
            runs_for: Some(Duration::from_secs(2)),
            ..Default::default()
        },
    );
    runtime.script(
        "broken",
        fake::Script {
            cannot_start: Some("executable \"nope\" not found".into()),
            ..Default::default()
        },
    );
    let init = ContainerDefinition {
        essential: Some(false),
        ..container_def("init")
    };
    let after = |name: &str| ContainerDefinition {
        depends_on: vec![ContainerDependency {
            container_name: "init".into(),
            condition: "SUCCESS".into(),
        }],
        ..container_def(name)
    };
    let mut h = Harness::start(
        runtime,
        vec![init, after("broken"), after("app")],
        task_record(TaskStatus::Running, TaskStatus::Pending),
    );
    match h.next_report().await {
        Report::Container(c) => {
            assert_eq!((c.container_name.as_str(), c.exit_code), ("init", Some(0)))
        }
        other => panic!("{other:?}"),
    }
    let stopped = h.next_task_report().await;
    assert_eq!(stopped.status, Some(TaskStatus::Stopped));
    assert_eq!(stopped.stop_code, Some(StopCode::TaskFailedToStart));
    let reason = "CannotStartContainerError: executable \"nope\" not found";
    assert_eq!(stopped.reason.as_deref(), Some(reason));
    assert_eq!(change(&stopped, "broken").reason.as_deref(), Some(reason));
    // Refused at once: the container after it in the same pass never starts.
    assert_eq!(change(&stopped, "app").status.as_deref(), Some("STOPPED"));
    assert_eq!(h.runtime.events(), vec!["start init", "release init"]);
}

#[actix_rt::test]
async fn a_restarted_agent_adopts_instead_of_starting_again() {
    tokio::time::pause();
    let runtime = fake::FakeRuntime::default();
    runtime
        .adoptable
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .extend([
            ("app".to_string(), Adopted::Running("fake-app".into())),
            (
                "side".to_string(),
                Adopted::Stopped(Stopped {
                    exit_code: Some(0),
                    reason: None,
                    started: true,
                }),
            ),
        ]);
    let side = ContainerDefinition {
        essential: Some(false),
        ..container_def("side")
    };
    let mut h = Harness::start(
        runtime,
        vec![container_def("app"), side],
        task_record(TaskStatus::Running, TaskStatus::Running),
    );
    match h.next_report().await {
        Report::Container(c) => {
            assert_eq!((c.container_name.as_str(), c.exit_code), ("side", Some(0)))
        }
        other => panic!("{other:?}"),
    }
    h.actor.do_send(Record(Box::new(task_record(
        TaskStatus::Stopped,
        TaskStatus::Running,
    ))));
    let stopped = h.next_task_report().await;
    assert_eq!(stopped.status, Some(TaskStatus::Stopped));
    assert_eq!(change(&stopped, "app").exit_code, Some(143));
    assert_eq!(
        h.runtime.events(),
        vec!["release side", "stop app 30s", "release app"]
    );
}

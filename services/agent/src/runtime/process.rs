//! The `process` runtime: a container is a host process started through the shim (see
//! [`shim`]) in its own process group, with its memory limit in a cgroup where the host
//! offers them ([`cgroup`]) and its output in rotating files ([`log_files`]). A task's
//! containers become launches ([`launch`]: command line, environment, directory, user);
//! this module starts their shims, reads back what a container's directory says about it
//! (running, exited, vanished), signals process groups and serves the output files.
//!
//! Layout under the agent's `tasks/` directory (the shims outlive the agent, so a
//! restarted agent adopts what they record):
//! ```text
//! <task-id>/task.json                 {"taskArn", "containers": [names in definition order]}
//! <task-id>/work/                     default working directory of the task's containers
//! <task-id>/containers/<name>/        state.json, exit.json, shim.log, logs/
//! ```
//!
//! A container's runtime id is its command's pid, which is also its process group id.

pub mod cgroup;
pub mod launch;
pub mod log_files;
pub mod shim;

use crate::datadir::write_atomically;
use crate::runtime::{
    Adopted, ContainerRef, LogChunk, LogRange, Runtime, RuntimeError, Starting, Stopped, TaskInfo,
    CANNOT_START, OUT_OF_MEMORY,
};
use berth_messages::model::{ContainerDefinition, Task};
use cgroup::Cgroups;
use dashmap::DashMap;
use futures::future::{BoxFuture, FutureExt};
use launch::Launch;
use serde::de::DeserializeOwned;
use shim::{ExitRecord, StateRecord};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

/// How long a started shim may take to start its command.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How often an adopted container (not a child of this agent) is checked.
const ADOPTED_POLL: Duration = Duration::from_millis(250);
/// Container reason when its shim vanished without recording how the command ended.
pub const VANISHED: &str =
    "container ended without recording an exit status (its shim was killed or the host restarted)";

/// Where one container keeps its state.
#[derive(Debug, Clone)]
pub struct ContainerPaths {
    pub dir: PathBuf,
    pub state: PathBuf,
    pub exit: PathBuf,
    pub logs: PathBuf,
    pub shim_log: PathBuf,
}

/// What a container's directory says about it.
#[derive(Debug, Clone, PartialEq)]
pub enum Observed {
    /// Never started on this host.
    Absent,
    /// A shim was started but has not recorded anything yet.
    Starting,
    Running(StateRecord),
    Exited(ExitRecord),
    /// Its shim is gone without recording how the command ended.
    Vanished,
}

/// How a watched container ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ended {
    Exited(ExitRecord),
    Vanished,
}

#[derive(Debug, Clone)]
pub struct ProcessRuntime {
    tasks_dir: PathBuf,
    shim_exe: PathBuf,
    cgroups: Option<Cgroups>,
    log_max_bytes: u64,
    log_files: usize,
    /// Shims this agent started, until [`Runtime::wait`] waits for them; adopted
    /// containers are polled through their directories instead.
    shims: Arc<DashMap<ContainerRef, tokio::process::Child>>,
}

impl ProcessRuntime {
    pub fn new(
        tasks_dir: PathBuf,
        shim_exe: PathBuf,
        cgroups: Option<Cgroups>,
        log_max_bytes: u64,
        log_files: usize,
    ) -> Self {
        Self {
            tasks_dir,
            shim_exe,
            cgroups,
            log_max_bytes,
            log_files,
            shims: Arc::new(DashMap::new()),
        }
    }

    pub fn task_dir(&self, task_id: &str) -> PathBuf {
        self.tasks_dir.join(task_id)
    }

    pub fn work_dir(&self, task_id: &str) -> PathBuf {
        self.task_dir(task_id).join("work")
    }

    pub fn paths(&self, task_id: &str, container: &str) -> ContainerPaths {
        let dir = self.task_dir(task_id).join("containers").join(container);
        ContainerPaths {
            state: dir.join("state.json"),
            exit: dir.join("exit.json"),
            logs: dir.join("logs"),
            shim_log: dir.join("shim.log"),
            dir,
        }
    }

    fn paths_of(&self, container: &ContainerRef) -> ContainerPaths {
        self.paths(&container.task_id, &container.name)
    }

    /// Reads a container's directory.
    pub fn observe(&self, task_id: &str, container: &str) -> Observed {
        observe_paths(&self.paths(task_id, container))
    }

    /// Builds the launch of a container, or the reason it cannot start.
    pub fn launch_for(
        &self,
        task: &Task,
        definition: &ContainerDefinition,
    ) -> Result<Launch, RuntimeError> {
        let task_id = berth_messages::arn::task_id(&task.task_arn).1;
        launch::launch_for(&self.work_dir(task_id), task, definition)
    }

    /// Starts a container's shim. The returned child is the shim; see [`wait_started`].
    fn spawn(
        &self,
        container: &ContainerRef,
        launch: &Launch,
    ) -> Result<(tokio::process::Child, ContainerPaths), RuntimeError> {
        let paths = self.paths_of(container);
        let io = |what: &str, source: std::io::Error| RuntimeError::StartFailed {
            what: what.to_string(),
            source,
        };
        std::fs::create_dir_all(&paths.dir).map_err(|e| io("cannot create its directory", e))?;
        for stale in [&paths.state, &paths.exit] {
            let _ = std::fs::remove_file(stale);
        }
        let default_work = self.work_dir(&container.task_id);
        if launch.workdir == default_work {
            std::fs::create_dir_all(&default_work)
                .map_err(|e| io("cannot create the working directory", e))?;
            if let Some(user) = &launch.user {
                let owner = nix::unistd::chown(
                    &default_work,
                    Some(nix::unistd::Uid::from_raw(user.uid)),
                    Some(nix::unistd::Gid::from_raw(user.gid)),
                );
                if let Err(e) = owner {
                    tracing::debug!(error = %e, "cannot give the working directory to the task's user");
                }
            }
        }
        let cgroup = match (&self.cgroups, launch.memory_mib) {
            (Some(cg), Some(mib)) => cg.create(&cgroup_name(container), mib),
            _ => None,
        };
        let shim_log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&paths.shim_log)
            .map_err(|e| io("cannot open shim.log", e))?;
        let shim_err = shim_log
            .try_clone()
            .map_err(|e| io("cannot open shim.log", e))?;
        let mut command = tokio::process::Command::new(&self.shim_exe);
        command
            .arg("shim")
            .arg("--state-file")
            .arg(&paths.state)
            .arg("--exit-file")
            .arg(&paths.exit)
            .arg("--log-dir")
            .arg(&paths.logs)
            .arg("--log-max-bytes")
            .arg(self.log_max_bytes.to_string())
            .arg("--log-files")
            .arg(self.log_files.to_string())
            .arg("--workdir")
            .arg(&launch.workdir);
        if let Some(dir) = &cgroup {
            command.arg("--cgroup").arg(dir);
        }
        if let Some(user) = &launch.user {
            command
                .arg("--uid")
                .arg(user.uid.to_string())
                .arg("--gid")
                .arg(user.gid.to_string());
        }
        command
            .arg("--")
            .args(&launch.argv)
            .env_clear()
            .envs(&launch.env)
            .stdin(Stdio::null())
            .stdout(Stdio::from(shim_log))
            .stderr(Stdio::from(shim_err))
            .process_group(0)
            .kill_on_drop(false);
        let child = command.spawn().map_err(|e| {
            io(
                &format!("cannot start the shim {}", self.shim_exe.display()),
                e,
            )
        })?;
        Ok((child, paths))
    }

    /// Whether the kernel killed a process of a container's cgroup for want of memory.
    fn oom_killed(&self, container: &ContainerRef) -> bool {
        self.cgroups
            .as_ref()
            .is_some_and(|cg| cg.oom_killed(&cgroup_name(container)))
    }

    /// What the agent reports of a container that ended as `ended` says.
    fn stopped(&self, container: &ContainerRef, ended: Ended) -> Stopped {
        match ended {
            Ended::Exited(exit) => match exit.error {
                Some(error) if error.starts_with(CANNOT_START) => Stopped::not_started(error),
                Some(error) => Stopped::not_started(format!("{CANNOT_START}: {error}")),
                None => {
                    let exit_code = exit.reported_code();
                    let oom = exit_code == Some(137) && self.oom_killed(container);
                    Stopped {
                        exit_code,
                        reason: oom.then(|| OUT_OF_MEMORY.to_string()),
                        started: true,
                    }
                }
            },
            Ended::Vanished => Stopped {
                exit_code: None,
                reason: Some(VANISHED.to_string()),
                started: true,
            },
        }
    }
}

/// A container's cgroup, under the runtime's cgroup base.
fn cgroup_name(container: &ContainerRef) -> String {
    format!("{}-{}", container.task_id, container.name)
}

impl Runtime for ProcessRuntime {
    fn save_task(&self, task_id: &str, info: &TaskInfo) -> Result<(), RuntimeError> {
        let dir = self.task_dir(task_id);
        let write = || {
            std::fs::create_dir_all(&dir)?;
            let body = serde_json::to_vec(info).map_err(std::io::Error::other)?;
            write_atomically(&dir.join("task.json"), &body)
        };
        write().map_err(|source| RuntimeError::TaskRecord {
            task_id: task_id.to_string(),
            source,
        })
    }

    fn task(&self, task_id: &str) -> Option<TaskInfo> {
        read_json(&self.task_dir(task_id).join("task.json"))
    }

    /// True if any container of the task has a live shim.
    fn any_live(&self, task_id: &str) -> bool {
        let Ok(entries) = std::fs::read_dir(self.task_dir(task_id).join("containers")) else {
            return false;
        };
        entries.flatten().any(|e| {
            let name = e.file_name();
            matches!(
                self.observe(task_id, &name.to_string_lossy()),
                Observed::Running(_) | Observed::Starting
            )
        })
    }

    fn adopt(&self, container: &ContainerRef) -> BoxFuture<'static, Adopted> {
        let paths = self.paths_of(container);
        let ended = match observe_paths(&paths) {
            Observed::Absent => return futures::future::ready(Adopted::Absent).boxed(),
            Observed::Running(state) => {
                return futures::future::ready(Adopted::Running(state.pid.to_string())).boxed()
            }
            Observed::Exited(exit) => Ended::Exited(exit),
            Observed::Vanished => Ended::Vanished,
            Observed::Starting => {
                let this = self.clone();
                let container = container.clone();
                return async move {
                    match wait_recorded(paths).await {
                        Ok(state) => Adopted::Running(state.pid.to_string()),
                        Err(ended) => Adopted::Stopped(this.stopped(&container, ended)),
                    }
                }
                .boxed();
            }
        };
        futures::future::ready(Adopted::Stopped(self.stopped(container, ended))).boxed()
    }

    fn start(
        &self,
        container: &ContainerRef,
        task: &Task,
        definition: &ContainerDefinition,
    ) -> Result<Starting, RuntimeError> {
        let launch = self.launch_for(task, definition)?;
        let (mut shim, paths) = self.spawn(container, &launch)?;
        tracing::info!(task = %container.task_id, container = %container.name, argv = ?launch.argv, "starting container");
        let this = self.clone();
        let container = container.clone();
        Ok(async move {
            match wait_started(&paths, &mut shim).await {
                Ok(state) => {
                    this.shims.insert(container, shim);
                    Ok(state.pid.to_string())
                }
                Err(exit) => Err(this.stopped(&container, Ended::Exited(exit))),
            }
        }
        .boxed())
    }

    fn wait(&self, container: &ContainerRef) -> BoxFuture<'static, Stopped> {
        let shim = self.shims.remove(container).map(|(_, child)| child);
        let paths = self.paths_of(container);
        let this = self.clone();
        let container = container.clone();
        async move {
            let ended = wait_ended(paths, shim).await;
            this.stopped(&container, ended)
        }
        .boxed()
    }

    fn stop(&self, container: &ContainerRef, timeout: Duration) -> BoxFuture<'static, ()> {
        let paths = self.paths_of(container);
        let Observed::Running(state) = observe_paths(&paths) else {
            return futures::future::ready(()).boxed();
        };
        let pgid = state.pid;
        tracing::info!(task = %container.task_id, container = %container.name, pgid, "stopping container (SIGTERM)");
        signal_group(pgid, nix::sys::signal::Signal::SIGTERM);
        let container = container.clone();
        async move {
            tokio::time::sleep(timeout).await;
            // The same command still runs: its pid, and so its group, is not reused.
            if matches!(observe_paths(&paths), Observed::Running(now) if now.pid == pgid) {
                tracing::info!(task = %container.task_id, container = %container.name, pgid, "stop timeout passed (SIGKILL)");
                signal_group(pgid, nix::sys::signal::Signal::SIGKILL);
            }
        }
        .boxed()
    }

    /// Removes the container's cgroup.
    fn release(&self, container: &ContainerRef) {
        if let Some(cg) = &self.cgroups {
            cg.remove(&cgroup_name(container));
        }
    }

    fn probe(
        &self,
        _container: &ContainerRef,
        task: &Task,
        definition: &ContainerDefinition,
        argv: Vec<String>,
        timeout: Duration,
    ) -> BoxFuture<'static, bool> {
        match self.launch_for(task, definition) {
            Ok(launch) => async move { probe(&argv, &launch, timeout).await }.boxed(),
            Err(_) => futures::future::ready(false).boxed(),
        }
    }

    fn logs(
        &self,
        container: &ContainerRef,
        range: LogRange,
    ) -> BoxFuture<'static, Result<LogChunk, RuntimeError>> {
        let paths = self.paths_of(container);
        let name = container.name.clone();
        async move {
            let read = move || {
                // Checked before reading: once the exit file exists, the output is final.
                let ended = paths.dir.is_dir().then(|| paths.exit.exists());
                log_files::read(&paths.logs, range.offset, range.tail, range.max).map(|chunk| {
                    LogChunk {
                        offset: chunk.offset,
                        next_offset: chunk.next_offset,
                        data: chunk.data,
                        end: chunk.end,
                        ended,
                    }
                })
            };
            let logs_error = |source| RuntimeError::Logs {
                container: name.clone(),
                source,
            };
            match tokio::task::spawn_blocking(read).await {
                Ok(read) => read.map_err(logs_error),
                Err(e) => Err(logs_error(std::io::Error::other(e))),
            }
        }
        .boxed()
    }
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Option<T> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn observe_paths(paths: &ContainerPaths) -> Observed {
    if !paths.dir.is_dir() {
        return Observed::Absent;
    }
    if let Some(exit) = read_json::<ExitRecord>(&paths.exit) {
        return Observed::Exited(exit);
    }
    match read_json::<StateRecord>(&paths.state) {
        Some(state) if shim_alive(state.shim_pid, &paths.exit) => Observed::Running(state),
        Some(_) => match read_json::<ExitRecord>(&paths.exit) {
            Some(exit) => Observed::Exited(exit),
            None => Observed::Vanished,
        },
        None => Observed::Starting,
    }
}

/// True if `pid` is a live (not zombie) shim of the container whose exit file is `exit`.
pub fn shim_alive(pid: i32, exit: &Path) -> bool {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let Ok(stat) = std::fs::read_to_string(proc_dir.join("stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    if matches!(state, Some("Z") | Some("X") | None) {
        return false;
    }
    let Ok(cmdline) = std::fs::read(proc_dir.join("cmdline")) else {
        return false;
    };
    let exit = exit.as_os_str().as_encoded_bytes();
    cmdline.split(|b| *b == 0).any(|arg| arg == exit)
}

/// Waits until a spawned shim has started its command (or failed to).
pub async fn wait_started(
    paths: &ContainerPaths,
    shim: &mut tokio::process::Child,
) -> Result<StateRecord, ExitRecord> {
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    let mut backoff = Duration::from_millis(2);
    loop {
        if let Some(state) = read_json::<StateRecord>(&paths.state) {
            return Ok(state);
        }
        if let Some(exit) = read_json::<ExitRecord>(&paths.exit) {
            return Err(exit);
        }
        let shim_ended = matches!(shim.try_wait(), Ok(Some(_)) | Err(_));
        if shim_ended || tokio::time::Instant::now() >= deadline {
            if let Some(state) = read_json::<StateRecord>(&paths.state) {
                return Ok(state);
            }
            if let Some(exit) = read_json::<ExitRecord>(&paths.exit) {
                return Err(exit);
            }
            let why = if shim_ended {
                format!(
                    "the shim ended before starting the command (see {})",
                    paths.shim_log.display()
                )
            } else {
                let _ = shim.start_kill();
                format!("the command did not start within {START_TIMEOUT:?}")
            };
            return Err(ExitRecord {
                error: Some(why),
                finished_at: berth_messages::now_epoch_seconds(),
                ..Default::default()
            });
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(50));
    }
}

/// Waits until a container has ended. `shim` is the shim when it is this agent's child;
/// an adopted container is polled through its directory.
pub async fn wait_ended(paths: ContainerPaths, shim: Option<tokio::process::Child>) -> Ended {
    match shim {
        Some(mut child) => {
            if let Err(e) = child.wait().await {
                tracing::warn!(error = %e, "cannot wait for a shim; polling it");
                return poll_ended(&paths).await;
            }
        }
        None => return poll_ended(&paths).await,
    }
    match read_json::<ExitRecord>(&paths.exit) {
        Some(exit) => Ended::Exited(exit),
        None => Ended::Vanished,
    }
}

/// Waits until the shim of an adopted container that had recorded nothing yet (its agent
/// died right after starting it) records its state.
pub async fn wait_recorded(paths: ContainerPaths) -> Result<StateRecord, Ended> {
    let mut waited = Duration::ZERO;
    loop {
        match observe_paths(&paths) {
            Observed::Running(state) => return Ok(state),
            Observed::Exited(exit) => return Err(Ended::Exited(exit)),
            Observed::Vanished | Observed::Absent => return Err(Ended::Vanished),
            Observed::Starting if waited >= START_TIMEOUT => return Err(Ended::Vanished),
            Observed::Starting => {}
        }
        tokio::time::sleep(ADOPTED_POLL).await;
        waited += ADOPTED_POLL;
    }
}

async fn poll_ended(paths: &ContainerPaths) -> Ended {
    let mut unrecorded = Duration::ZERO;
    loop {
        match observe_paths(paths) {
            Observed::Exited(exit) => return Ended::Exited(exit),
            Observed::Vanished | Observed::Absent => return Ended::Vanished,
            // A shim started by an agent that died at once records its state quickly.
            Observed::Starting if unrecorded >= START_TIMEOUT => return Ended::Vanished,
            Observed::Starting => unrecorded += ADOPTED_POLL,
            Observed::Running(_) => {}
        }
        tokio::time::sleep(ADOPTED_POLL).await;
    }
}

/// Runs a health check command in a container's environment (its variables, working
/// directory and user); passes if it exits 0 within `timeout`, else its process group is
/// killed.
pub async fn probe(argv: &[String], launch: &Launch, timeout: Duration) -> bool {
    let Some((program, args)) = argv.split_first() else {
        return false;
    };
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(&launch.env)
        .current_dir(&launch.workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(user) = &launch.user {
        command.uid(user.uid).gid(user.gid);
    }
    let Ok(mut child) = command.spawn() else {
        return false;
    };
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => status.success(),
        _ => {
            if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
                signal_group(pid, nix::sys::signal::Signal::SIGKILL);
            }
            false
        }
    }
}

/// Sends a signal to a container's process group; a group that is already gone is fine.
pub fn signal_group(pgid: i32, signal: nix::sys::signal::Signal) {
    if pgid <= 1 {
        return;
    }
    match nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pgid, %signal, error = %e, "cannot signal a container"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime(dir: &Path) -> ProcessRuntime {
        ProcessRuntime::new(dir.join("tasks"), PathBuf::from("/bin/false"), None, 100, 2)
    }

    #[test]
    fn directories_are_observed() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path());
        assert_eq!(rt.observe("t", "app"), Observed::Absent);
        let p = rt.paths("t", "app");
        std::fs::create_dir_all(&p.dir).unwrap();
        assert_eq!(rt.observe("t", "app"), Observed::Starting);
        // A state whose shim is not alive (pid of no shim of ours) and no exit: vanished.
        let state = StateRecord {
            shim_pid: i32::try_from(std::process::id()).unwrap(),
            pid: 1,
        };
        std::fs::write(&p.state, serde_json::to_vec(&state).unwrap()).unwrap();
        assert_eq!(rt.observe("t", "app"), Observed::Vanished);
        let exit = ExitRecord {
            exit_code: Some(2),
            ..Default::default()
        };
        std::fs::write(&p.exit, serde_json::to_vec(&exit).unwrap()).unwrap();
        assert_eq!(rt.observe("t", "app"), Observed::Exited(exit));
        assert!(!rt.any_live("t"));
    }

    #[test]
    fn exit_records_become_what_the_agent_reports() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path());
        let app = ContainerRef::new("t", "app");
        let failed = |error: &str| {
            Ended::Exited(ExitRecord {
                error: Some(error.into()),
                ..Default::default()
            })
        };
        assert_eq!(
            rt.stopped(&app, failed("executable \"x\" not found")),
            Stopped::not_started("CannotStartContainerError: executable \"x\" not found".into())
        );
        let already = "CannotStartContainerError: the command did not start";
        assert_eq!(
            rt.stopped(&app, failed(already)),
            Stopped::not_started(already.into())
        );
        // Killed by a signal, without cgroups: 128 + 9, no out-of-memory reason.
        let killed = Ended::Exited(ExitRecord {
            signal: Some(9),
            ..Default::default()
        });
        assert_eq!(
            rt.stopped(&app, killed),
            Stopped {
                exit_code: Some(137),
                reason: None,
                started: true,
            }
        );
        let vanished = rt.stopped(&app, Ended::Vanished);
        assert_eq!(vanished.reason.as_deref(), Some(VANISHED));
        assert!(vanished.started);
    }

    #[tokio::test]
    async fn task_records_and_adoption_read_the_directories() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path());
        let info = TaskInfo {
            task_arn: "arn:aws:ecs:r:a:task/c/t".into(),
            containers: vec!["app".into()],
        };
        rt.save_task("t", &info).unwrap();
        assert_eq!(rt.task("t"), Some(info));
        assert_eq!(rt.task("other"), None);
        let app = ContainerRef::new("t", "app");
        assert_eq!(rt.adopt(&app).await, Adopted::Absent);
        let p = rt.paths("t", "app");
        std::fs::create_dir_all(&p.dir).unwrap();
        let exit = ExitRecord {
            exit_code: Some(4),
            ..Default::default()
        };
        std::fs::write(&p.exit, serde_json::to_vec(&exit).unwrap()).unwrap();
        assert_eq!(
            rt.adopt(&app).await,
            Adopted::Stopped(Stopped {
                exit_code: Some(4),
                reason: None,
                started: true,
            })
        );
        let range = LogRange {
            offset: None,
            tail: None,
            max: 10,
        };
        let logs = rt.logs(&app, range).await.unwrap();
        assert_eq!((logs.data.len(), logs.ended), (0, Some(true)));
        let never = rt
            .logs(&ContainerRef::new("t", "none"), range)
            .await
            .unwrap();
        assert_eq!(never.ended, None);
    }
}

//! The `process` runtime: a container is a host process started through the shim (see
//! [`crate::shim`]) in its own process group. This module turns a container of a task
//! into a command line, an environment, a working directory and a user, refusing with a
//! precise reason what cannot start (unknown executable, user or directory); starts the
//! shim; reads back what a container's directory says about it (running, exited,
//! vanished); and signals process groups.
//!
//! Environment of a container, later entries winning:
//! 1. `PATH` (the agent's, or a standard one), `HOME` (the user's, or the agent's), `USER`
//!    and `LOGNAME` when a user is given, `LANG` and `TZ` when the agent has them;
//! 2. `BERTH_TASK_ARN`, `BERTH_TASK_ID`, `BERTH_CONTAINER_NAME`, `BERTH_CLUSTER_ARN`;
//! 3. the definition's `environment`, then the task's containerOverrides `environment`;
//! 4. host ports: `PORT` = host port of the container's first port mapping (as Heroku
//!    does), and for every mapping `PORT_<containerPort>` (TCP) or
//!    `PORT_<containerPort>_UDP` (UDP) = its host port.
//!
//! The working directory defaults to `tasks/<task-id>/work` in the data directory,
//! shared by the task's containers.

use crate::cgroup::Cgroups;
use crate::datadir::write_atomically;
use crate::shim::{ExitRecord, StateRecord};
use berth_messages::model::{Container, ContainerDefinition, Task};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// Prefix of every reason a container could not start for.
pub const CANNOT_START: &str = "CannotStartContainerError";
/// PATH given to containers when the agent has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How long a started shim may take to start its command.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How often an adopted container (not a child of this agent) is checked.
const ADOPTED_POLL: Duration = Duration::from_millis(250);

fn cannot_start(detail: impl std::fmt::Display) -> String {
    format!("{CANNOT_START}: {detail}")
}

/// Where one container keeps its state.
#[derive(Debug, Clone)]
pub struct ContainerPaths {
    pub dir: PathBuf,
    pub state: PathBuf,
    pub exit: PathBuf,
    pub logs: PathBuf,
    pub shim_log: PathBuf,
}

/// What the agent keeps about a task beside its containers: enough for the log service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskInfo {
    pub task_arn: String,
    /// Container names in definition order.
    pub containers: Vec<String>,
}

/// A user to run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
    pub name: Option<String>,
    pub home: Option<PathBuf>,
}

/// Everything the shim needs to start one container.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub workdir: PathBuf,
    pub user: Option<RunAs>,
    pub memory_mib: Option<i64>,
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

    pub fn save_task_info(&self, task_id: &str, info: &TaskInfo) -> std::io::Result<()> {
        let dir = self.task_dir(task_id);
        std::fs::create_dir_all(&dir)?;
        let body = serde_json::to_vec(info).map_err(std::io::Error::other)?;
        write_atomically(&dir.join("task.json"), &body)
    }

    pub fn task_info(&self, task_id: &str) -> Option<TaskInfo> {
        read_json(&self.task_dir(task_id).join("task.json"))
    }

    /// True if any container of the task has a live shim.
    pub fn any_live(&self, task_id: &str) -> bool {
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

    /// Reads a container's directory.
    pub fn observe(&self, task_id: &str, container: &str) -> Observed {
        observe_paths(&self.paths(task_id, container))
    }

    /// Builds the launch of a container, or the reason it cannot start.
    pub fn launch_for(
        &self,
        task: &Task,
        definition: &ContainerDefinition,
    ) -> Result<Launch, String> {
        let task_id = berth_messages::arn::task_id(&task.task_arn).1;
        let record = task.containers.iter().find(|c| c.name == definition.name);
        let overrides = task
            .overrides
            .container_overrides
            .iter()
            .find(|o| o.name.as_deref() == Some(definition.name.as_str()));
        let mut argv = definition.entry_point.clone();
        match overrides.and_then(|o| o.command.clone()) {
            Some(command) => argv.extend(command),
            None => argv.extend(definition.command.iter().cloned()),
        }
        if argv.is_empty() {
            return Err(cannot_start(format!(
                "container {} has no entryPoint or command to run",
                definition.name
            )));
        }
        let user = definition
            .user
            .as_deref()
            .filter(|u| !u.is_empty())
            .map(resolve_user)
            .transpose()?;
        let workdir = match definition.working_directory.as_deref() {
            Some(dir) if !dir.is_empty() => {
                let path = self.work_dir(task_id).join(dir);
                match std::fs::metadata(&path) {
                    Ok(m) if m.is_dir() => path,
                    Ok(_) => {
                        return Err(cannot_start(format!(
                            "working directory {dir:?} is not a directory"
                        )))
                    }
                    Err(_) => {
                        return Err(cannot_start(format!(
                            "working directory {dir:?} does not exist"
                        )))
                    }
                }
            }
            _ => self.work_dir(task_id),
        };
        let env = environment(task, record, definition, user.as_ref());
        find_executable(&argv[0], env.get("PATH").map(String::as_str), &workdir)?;
        let memory_mib = record
            .and_then(|c| c.memory.as_deref())
            .and_then(|m| m.parse::<i64>().ok())
            .or(definition.memory)
            .filter(|m| *m > 0);
        Ok(Launch {
            argv,
            env,
            workdir,
            user,
            memory_mib,
        })
    }

    /// Starts a container's shim. The returned child is the shim; see [`wait_started`].
    pub fn spawn(
        &self,
        task_id: &str,
        container: &str,
        launch: &Launch,
    ) -> Result<(tokio::process::Child, ContainerPaths), String> {
        let paths = self.paths(task_id, container);
        let io = |what: &str, e: std::io::Error| cannot_start(format!("{what}: {e}"));
        std::fs::create_dir_all(&paths.dir).map_err(|e| io("cannot create its directory", e))?;
        for stale in [&paths.state, &paths.exit] {
            let _ = std::fs::remove_file(stale);
        }
        let default_work = self.work_dir(task_id);
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
        let cgroup_name = format!("{task_id}-{container}");
        let cgroup = match (&self.cgroups, launch.memory_mib) {
            (Some(cg), Some(mib)) => cg.create(&cgroup_name, mib),
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
    pub fn oom_killed(&self, task_id: &str, container: &str) -> bool {
        self.cgroups
            .as_ref()
            .is_some_and(|cg| cg.oom_killed(&format!("{task_id}-{container}")))
    }

    /// Removes a container's cgroup after it ended (best effort).
    pub fn release(&self, task_id: &str, container: &str) {
        if let Some(cg) = &self.cgroups {
            cg.remove(&format!("{task_id}-{container}"));
        }
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

/// The environment of a container (see the module documentation for the order).
pub fn environment(
    task: &Task,
    record: Option<&Container>,
    definition: &ContainerDefinition,
    user: Option<&RunAs>,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert(
        "PATH".to_string(),
        std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.into()),
    );
    let home = user
        .and_then(|u| u.home.as_ref())
        .map(|h| h.display().to_string())
        .or_else(|| std::env::var("HOME").ok())
        .unwrap_or_else(|| "/".into());
    env.insert("HOME".into(), home);
    if let Some(name) = user.and_then(|u| u.name.clone()) {
        env.insert("USER".into(), name.clone());
        env.insert("LOGNAME".into(), name);
    }
    for inherited in ["LANG", "TZ"] {
        if let Ok(v) = std::env::var(inherited) {
            env.insert(inherited.into(), v);
        }
    }
    let task_id = berth_messages::arn::task_id(&task.task_arn).1;
    env.insert("BERTH_TASK_ARN".into(), task.task_arn.clone());
    env.insert("BERTH_TASK_ID".into(), task_id.to_string());
    env.insert("BERTH_CONTAINER_NAME".into(), definition.name.clone());
    env.insert("BERTH_CLUSTER_ARN".into(), task.cluster_arn.clone());
    let overrides = task
        .overrides
        .container_overrides
        .iter()
        .filter(|o| o.name.as_deref() == Some(definition.name.as_str()))
        .flat_map(|o| o.environment.iter());
    for kv in definition.environment.iter().chain(overrides) {
        if let Some(name) = kv.name.as_deref().filter(|n| !n.is_empty()) {
            env.insert(name.to_string(), kv.value.clone().unwrap_or_default());
        }
    }
    let bindings = record.map(|c| c.network_bindings.as_slice()).unwrap_or(&[]);
    for (i, b) in bindings.iter().enumerate() {
        let Some(host) = b.host_port else { continue };
        if i == 0 {
            env.insert("PORT".into(), host.to_string());
        }
        let container_port = b.container_port.unwrap_or(host);
        let name = if b.protocol.as_deref() == Some("udp") {
            format!("PORT_{container_port}_UDP")
        } else {
            format!("PORT_{container_port}")
        };
        env.insert(name, host.to_string());
    }
    env
}

/// Resolves `user`, `uid`, `user:group` or `uid:gid` on this host.
pub fn resolve_user(spec: &str) -> Result<RunAs, String> {
    use nix::unistd::{Gid, Group, Uid, User};
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let found = match user_part.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid)).ok().flatten(),
        Err(_) => User::from_name(user_part).ok().flatten(),
    };
    let (uid, mut gid, name, home) = match (&found, user_part.parse::<u32>()) {
        (Some(u), _) => (
            u.uid.as_raw(),
            u.gid.as_raw(),
            Some(u.name.clone()),
            Some(u.dir.clone()),
        ),
        (None, Ok(uid)) => (uid, uid, None, None),
        (None, Err(_)) => {
            return Err(cannot_start(format!(
                "user {user_part:?} does not exist on the host"
            )))
        }
    };
    if let Some(group) = group_part.filter(|g| !g.is_empty()) {
        gid = match group.parse::<u32>() {
            Ok(g) => g,
            Err(_) => match Group::from_name(group).ok().flatten() {
                Some(g) => g.gid.as_raw(),
                None => {
                    return Err(cannot_start(format!(
                        "group {group:?} does not exist on the host"
                    )))
                }
            },
        };
    }
    let me = Uid::effective();
    if !me.is_root() && (uid != me.as_raw() || gid != Gid::effective().as_raw()) {
        return Err(cannot_start(format!(
            "cannot run as user {spec:?}: the agent runs as uid {me}, not as root"
        )));
    }
    Ok(RunAs {
        uid,
        gid,
        name,
        home,
    })
}

/// Checks that `program` can be executed, the way the shim will look it up.
pub fn find_executable(
    program: &str,
    path_var: Option<&str>,
    workdir: &Path,
) -> Result<PathBuf, String> {
    let executable = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if program.contains('/') {
        let path = workdir.join(program);
        if !path.exists() {
            return Err(cannot_start(format!("executable {program:?} not found")));
        }
        if !executable(&path) {
            return Err(cannot_start(format!("{program:?} is not executable")));
        }
        return Ok(path);
    }
    let search = path_var.unwrap_or(DEFAULT_PATH);
    search
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| workdir.join(d).join(program))
        .find(|p| executable(p))
        .ok_or_else(|| cannot_start(format!("executable {program:?} not found")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_messages::model::{ContainerOverride, KeyValuePair, NetworkBinding, TaskOverride};

    fn task() -> Task {
        Task {
            task_arn: "arn:aws:ecs:r:a:task/c/t1".into(),
            cluster_arn: "arn:aws:ecs:r:a:cluster/c".into(),
            containers: vec![Container {
                name: "app".into(),
                memory: Some("64".into()),
                network_bindings: vec![
                    NetworkBinding {
                        container_port: Some(80),
                        host_port: Some(49153),
                        protocol: Some("tcp".into()),
                        ..Default::default()
                    },
                    NetworkBinding {
                        container_port: Some(53),
                        host_port: Some(49154),
                        protocol: Some("udp".into()),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            overrides: TaskOverride {
                container_overrides: vec![ContainerOverride {
                    name: Some("app".into()),
                    command: Some(vec!["-c".into(), "echo over".into()]),
                    environment: vec![KeyValuePair {
                        name: Some("MODE".into()),
                        value: Some("override".into()),
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn definition() -> ContainerDefinition {
        ContainerDefinition {
            name: "app".into(),
            entry_point: vec!["sh".into()],
            command: vec!["-c".into(), "echo base".into()],
            environment: vec![
                KeyValuePair {
                    name: Some("MODE".into()),
                    value: Some("base".into()),
                },
                KeyValuePair {
                    name: Some("KEEP".into()),
                    value: Some("1".into()),
                },
            ],
            ..Default::default()
        }
    }

    fn runtime(dir: &Path) -> ProcessRuntime {
        ProcessRuntime::new(dir.join("tasks"), PathBuf::from("/bin/false"), None, 100, 2)
    }

    #[test]
    fn environment_layers_and_ports() {
        let t = task();
        let env = environment(&t, t.containers.first(), &definition(), None);
        assert_eq!(env["MODE"], "override");
        assert_eq!(env["KEEP"], "1");
        assert_eq!(env["PORT"], "49153");
        assert_eq!(env["PORT_80"], "49153");
        assert_eq!(env["PORT_53_UDP"], "49154");
        assert_eq!(env["BERTH_TASK_ID"], "t1");
        assert_eq!(env["BERTH_CONTAINER_NAME"], "app");
        assert!(env.contains_key("PATH"));
    }

    #[test]
    fn launch_applies_overrides_and_memory() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path());
        let l = rt.launch_for(&task(), &definition()).unwrap();
        assert_eq!(l.argv, vec!["sh", "-c", "echo over"]);
        assert_eq!(l.memory_mib, Some(64));
        assert_eq!(l.workdir, rt.work_dir("t1"));
    }

    #[test]
    fn bad_launches_have_precise_reasons() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path());
        let mut t = task();
        t.overrides = TaskOverride::default();
        let mut d = definition();
        d.entry_point = vec!["no-such-program-xyz".into()];
        assert_eq!(
            rt.launch_for(&t, &d).unwrap_err(),
            "CannotStartContainerError: executable \"no-such-program-xyz\" not found"
        );
        let mut d = definition();
        d.working_directory = Some("/no/such/dir".into());
        assert_eq!(
            rt.launch_for(&t, &d).unwrap_err(),
            "CannotStartContainerError: working directory \"/no/such/dir\" does not exist"
        );
        let mut d = definition();
        d.user = Some("no-such-user-xyz".into());
        assert_eq!(
            rt.launch_for(&t, &d).unwrap_err(),
            "CannotStartContainerError: user \"no-such-user-xyz\" does not exist on the host"
        );
        let mut d = definition();
        d.entry_point.clear();
        d.command.clear();
        assert!(rt.launch_for(&t, &d).unwrap_err().contains("no entryPoint"));
    }

    #[test]
    fn executables_are_found_like_exec_does() {
        let dir = tempfile::tempdir().unwrap();
        assert!(find_executable("sh", None, dir.path()).is_ok());
        assert!(find_executable("/bin/sh", None, dir.path()).is_ok());
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "x").unwrap();
        assert_eq!(
            find_executable("./plain", None, dir.path()).unwrap_err(),
            "CannotStartContainerError: \"./plain\" is not executable"
        );
        assert!(find_executable("sh", Some("/nowhere"), dir.path()).is_err());
    }

    #[test]
    fn users_resolve() {
        let root = resolve_user("0").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        if nix::unistd::Uid::effective().is_root() {
            let named = resolve_user("root:0").unwrap();
            assert_eq!(named.name.as_deref(), Some("root"));
        }
        assert!(resolve_user("root:no-such-group-xyz")
            .unwrap_err()
            .contains("group \"no-such-group-xyz\" does not exist"));
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
}

//! A container of a task as a process launch: command line, environment, working
//! directory, user and memory limit, refusing with a precise reason what cannot start
//! (no command, unknown executable, user, group or directory).
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
//! The working directory defaults to the task's shared one (`work_dir`).

use crate::runtime::RuntimeError;
use berth_messages::model::{Container, ContainerDefinition, Task};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// PATH given to containers when the agent has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn cannot_start(detail: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::CannotStart(detail.to_string())
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

/// Builds the launch of a container whose task's shared working directory is `work_dir`,
/// or the reason it cannot start.
pub fn launch_for(
    work_dir: &Path,
    task: &Task,
    definition: &ContainerDefinition,
) -> Result<Launch, RuntimeError> {
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
            let path = work_dir.join(dir);
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
        _ => work_dir.to_path_buf(),
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
pub fn resolve_user(spec: &str) -> Result<RunAs, RuntimeError> {
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
) -> Result<PathBuf, RuntimeError> {
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

    fn launch(task: &Task, definition: &ContainerDefinition) -> Result<Launch, String> {
        launch_for(Path::new("/tmp"), task, definition).map_err(|e| e.to_string())
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
        let l = launch(&task(), &definition()).unwrap();
        assert_eq!(l.argv, vec!["sh", "-c", "echo over"]);
        assert_eq!(l.memory_mib, Some(64));
        assert_eq!(l.workdir, Path::new("/tmp"));
    }

    #[test]
    fn bad_launches_have_precise_reasons() {
        let mut t = task();
        t.overrides = TaskOverride::default();
        let mut d = definition();
        d.entry_point = vec!["no-such-program-xyz".into()];
        assert_eq!(
            launch(&t, &d).unwrap_err(),
            "CannotStartContainerError: executable \"no-such-program-xyz\" not found"
        );
        let mut d = definition();
        d.working_directory = Some("/no/such/dir".into());
        assert_eq!(
            launch(&t, &d).unwrap_err(),
            "CannotStartContainerError: working directory \"/no/such/dir\" does not exist"
        );
        let mut d = definition();
        d.user = Some("no-such-user-xyz".into());
        assert_eq!(
            launch(&t, &d).unwrap_err(),
            "CannotStartContainerError: user \"no-such-user-xyz\" does not exist on the host"
        );
        let mut d = definition();
        d.entry_point.clear();
        d.command.clear();
        assert!(launch(&t, &d).unwrap_err().contains("no entryPoint"));
    }

    #[test]
    fn executables_are_found_like_exec_does() {
        let dir = tempfile::tempdir().unwrap();
        assert!(find_executable("sh", None, dir.path()).is_ok());
        assert!(find_executable("/bin/sh", None, dir.path()).is_ok());
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "x").unwrap();
        assert_eq!(
            find_executable("./plain", None, dir.path())
                .unwrap_err()
                .to_string(),
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
            .to_string()
            .contains("group \"no-such-group-xyz\" does not exist"));
    }
}

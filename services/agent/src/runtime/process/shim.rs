//! The container shim (`berth-agent shim ... -- cmd args`), in the manner of
//! containerd-shim: the agent starts one per container, in its own process group. The
//! shim joins the container's cgroup if it has one, starts the command in a process group
//! of its own, copies its stdout and stderr into the rotating log, forwards SIGTERM,
//! SIGINT and SIGHUP to the command's group, and when the command ends kills what is left
//! of its group and records how it ended in the exit file. Because the shim is not tied
//! to the agent, containers outlive an agent that is killed: the next agent adopts them
//! (shim alive, no exit file) or learns their exit status from the exit file.

use super::log_files::RotatingWriter;
use crate::datadir::write_atomically;
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// How long the shim waits for the output pipe to drain after the command ended.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, clap::Args)]
pub struct ShimArgs {
    /// Written once the command runs: shim and command pids.
    #[arg(long)]
    pub state_file: PathBuf,
    /// Written once the command has ended: its exit code or signal, or why it did not start.
    #[arg(long)]
    pub exit_file: PathBuf,
    /// Directory of the command's output segments.
    #[arg(long)]
    pub log_dir: PathBuf,
    #[arg(long, default_value_t = crate::config::DEFAULT_LOG_MAX_BYTES)]
    pub log_max_bytes: u64,
    #[arg(long, default_value_t = crate::config::DEFAULT_LOG_FILES)]
    pub log_files: usize,
    /// cgroup v2 directory to join before starting the command.
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    #[arg(long)]
    pub uid: Option<u32>,
    #[arg(long)]
    pub gid: Option<u32>,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// What the shim records once the command runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateRecord {
    pub shim_pid: i32,
    /// The command's pid, which is also its process group id.
    pub pid: i32,
}

/// How a command ended (or why it never started).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ExitRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Set when the command could not be started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub finished_at: f64,
}

impl ExitRecord {
    /// The exit code as Docker and ECS report it: the code, or 128 + the signal.
    pub fn reported_code(&self) -> Option<i32> {
        self.exit_code.or(self.signal.map(|s| 128 + s))
    }

    pub fn started(&self) -> bool {
        self.error.is_none()
    }
}

/// Why a command could not be started, in the words the agent reports.
pub fn spawn_error(program: &str, e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => format!("executable {program:?} not found"),
        std::io::ErrorKind::PermissionDenied => {
            format!("{program:?} is not executable (permission denied)")
        }
        _ => format!("cannot execute {program:?}: {e}"),
    }
}

/// Runs the shim; returns the shim's own exit code.
pub fn run(args: ShimArgs) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            record_failure(&args.exit_file, format!("shim cannot start: {e}"));
            return 1;
        }
    };
    runtime.block_on(supervise(args))
}

fn record_failure(exit_file: &Path, error: String) {
    let record = ExitRecord {
        error: Some(error),
        finished_at: berth_messages::now_epoch_seconds(),
        ..Default::default()
    };
    write_record(exit_file, &record);
}

fn write_record<T: Serialize>(path: &Path, record: &T) {
    match serde_json::to_vec(record) {
        Ok(body) => {
            if let Err(e) = write_atomically(path, &body) {
                eprintln!("shim: cannot write {}: {e}", path.display());
            }
        }
        Err(e) => eprintln!("shim: cannot encode {}: {e}", path.display()),
    }
}

/// The shell that makes a command join its cgroup before it runs.
const SHELL: &str = "/bin/sh";
/// `$1`: the cgroup's `cgroup.procs`; the rest: the command.
const JOIN_AND_EXEC: &str =
    "echo $$ > \"$1\" || echo \"berth: cannot join the cgroup $1\" >&2; shift; exec \"$@\"";

/// Moves this process into a cgroup (best effort).
fn join(cgroup: &Path) {
    let procs = cgroup.join("cgroup.procs");
    if let Err(e) = std::fs::write(&procs, std::process::id().to_string()) {
        eprintln!("shim: cannot join {}: {e}", cgroup.display());
    }
}

async fn supervise(args: ShimArgs) -> i32 {
    let mut log = match RotatingWriter::open(&args.log_dir, args.log_max_bytes, args.log_files) {
        Ok(w) => w,
        Err(e) => {
            record_failure(
                &args.exit_file,
                format!("cannot open the log in {}: {e}", args.log_dir.display()),
            );
            return 1;
        }
    };
    let (program, rest) = match args.command.split_first() {
        Some(split) => split,
        None => {
            record_failure(&args.exit_file, "no command to run".into());
            return 1;
        }
    };
    let (reader, writer) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => {
            record_failure(&args.exit_file, format!("cannot create a pipe: {e}"));
            return 1;
        }
    };
    let stdout = match writer.try_clone() {
        Ok(w) => w,
        Err(e) => {
            record_failure(&args.exit_file, format!("cannot create a pipe: {e}"));
            return 1;
        }
    };
    // With a cgroup, the command joins it itself through a `/bin/sh` that writes its own
    // pid into `cgroup.procs` and then execs the command: the fork happens outside the
    // limit (a shim forking inside a small limit took ~10 ms more, its page tables charged
    // against it) and the shim's memory never counts. Without `/bin/sh` the shim joins
    // before it spawns (the child inherits the cgroup) and stays there.
    let procs = args.cgroup.as_ref().map(|c| c.join("cgroup.procs"));
    let wrapped = procs.as_ref().filter(|_| Path::new(SHELL).exists());
    let mut command = match wrapped {
        Some(procs) => {
            let mut c = tokio::process::Command::new(SHELL);
            c.arg("-c")
                .arg(JOIN_AND_EXEC)
                .arg("berth-join")
                .arg(procs)
                .arg(program)
                .args(rest);
            if let Some(uid) = args.uid {
                // The command's user writes its own pid.
                let owner = nix::unistd::chown(
                    procs,
                    Some(nix::unistd::Uid::from_raw(uid)),
                    args.gid.map(nix::unistd::Gid::from_raw),
                );
                if let Err(e) = owner {
                    eprintln!("shim: cannot give {} to uid {uid}: {e}", procs.display());
                }
            }
            c
        }
        None => {
            let mut c = tokio::process::Command::new(program);
            c.args(rest);
            c
        }
    };
    command
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(writer))
        .process_group(0);
    if let Some(dir) = &args.workdir {
        command.current_dir(dir);
    }
    if let Some(gid) = args.gid {
        command.gid(gid);
    }
    if let Some(uid) = args.uid {
        command.uid(uid);
    }
    if let Some(cgroup) = args.cgroup.as_deref().filter(|_| wrapped.is_none()) {
        join(cgroup);
    }
    let spawned = command.spawn();
    // The command holds the pipe's write ends; drop ours so the reader sees EOF.
    drop(command);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            record_failure(&args.exit_file, spawn_error(program, &e));
            return 0;
        }
    };
    let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) else {
        record_failure(&args.exit_file, "the command vanished at once".into());
        return 1;
    };
    write_record(
        &args.state_file,
        &StateRecord {
            shim_pid: i32::try_from(std::process::id()).unwrap_or(0),
            pid,
        },
    );

    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        copy_output(reader, &mut log);
        let _ = drained_tx.send(());
    });

    let status = wait_forwarding_signals(&mut child, pid).await;
    // Like a container whose init ended: nothing of the group outlives the command.
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = tokio::time::timeout(DRAIN_GRACE, drained_rx).await;
    let record = match status {
        Ok(status) => ExitRecord {
            exit_code: status.code(),
            signal: status.signal(),
            error: None,
            finished_at: berth_messages::now_epoch_seconds(),
        },
        Err(e) => {
            eprintln!("shim: cannot wait for the command: {e}");
            ExitRecord {
                exit_code: Some(255),
                finished_at: berth_messages::now_epoch_seconds(),
                ..Default::default()
            }
        }
    };
    write_record(&args.exit_file, &record);
    0
}

fn copy_output(mut reader: std::io::PipeReader, log: &mut RotatingWriter) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if let Err(e) = log.write_all(&buf[..n]) {
                    eprintln!("shim: cannot write output: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                eprintln!("shim: cannot read output: {e}");
                return;
            }
        }
    }
}

async fn wait_forwarding_signals(
    child: &mut tokio::process::Child,
    pid: i32,
) -> std::io::Result<std::process::ExitStatus> {
    use tokio::signal::unix::{signal, SignalKind};
    let kinds = [
        (SignalKind::terminate(), nix::sys::signal::Signal::SIGTERM),
        (SignalKind::interrupt(), nix::sys::signal::Signal::SIGINT),
        (SignalKind::hangup(), nix::sys::signal::Signal::SIGHUP),
    ];
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for (kind, sig) in kinds {
        match signal(kind) {
            Ok(mut stream) => {
                let tx = tx.clone();
                tokio::spawn(async move {
                    while stream.recv().await.is_some() {
                        if tx.send(sig).is_err() {
                            return;
                        }
                    }
                });
            }
            Err(e) => eprintln!("shim: cannot catch {sig}: {e}"),
        }
    }
    loop {
        tokio::select! {
            status = child.wait() => return status,
            Some(sig) = rx.recv() => {
                let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), sig);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_docker() {
        let code = ExitRecord {
            exit_code: Some(3),
            ..Default::default()
        };
        assert_eq!(code.reported_code(), Some(3));
        let killed = ExitRecord {
            signal: Some(9),
            ..Default::default()
        };
        assert_eq!(killed.reported_code(), Some(137));
        let failed = ExitRecord {
            error: Some("x".into()),
            ..Default::default()
        };
        assert!(!failed.started());
        assert_eq!(failed.reported_code(), None);
    }

    #[test]
    fn spawn_errors_name_the_program() {
        let e = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert_eq!(spawn_error("nope", &e), "executable \"nope\" not found");
    }
}

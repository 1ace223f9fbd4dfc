//! `berth dev`: a whole local Berth in one command. It starts a JetStream nats-server on
//! a data directory, a `berth-control` replica and one `berth-agent` with the process
//! runtime, creates the cluster, waits until the agent's instance is ACTIVE and
//! connected, says what it started, and on Ctrl-C (SIGINT or SIGTERM) stops the agent
//! first (which stops its tasks), then the control plane, then nats-server. The children
//! run in their own process groups so that a terminal's Ctrl-C reaches only `berth dev`,
//! which keeps that order. Everything lives under the data directory: started again on
//! it, Berth resumes with the same journal and the same instance.

use crate::args::{DevArgs, GlobalArgs};
use crate::client::Client;
use crate::error::CliError;
use crate::output::{self, Table};
use berth_messages::api::*;
use berth_messages::command::Action;
use berth_messages::model::InstanceStatus;
use berth_telemetry::{ShutdownSignal, ShutdownSignals};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::time::Instant;

const NATS_READY_TIMEOUT: Duration = Duration::from_secs(30);
const CONTROL_READY_TIMEOUT: Duration = Duration::from_secs(180);
const AGENT_READY_TIMEOUT: Duration = Duration::from_secs(120);
/// The agent stops its tasks on the way out (SIGTERM, then SIGKILL after stopTimeout,
/// 30 s by default), so it gets longer than the others.
const AGENT_STOP_GRACE: Duration = Duration::from_secs(60);
const STOP_GRACE: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(100);
/// What `berth-agent` writes on stderr once registered and following its tasks.
const AGENT_READY_MARKER: &str = "berth-agent ready instance=";
const LOG_TAIL_LINES: usize = 30;

/// Runs `berth dev` until SIGINT or SIGTERM.
pub async fn run(global: &GlobalArgs, args: DevArgs) -> Result<(), CliError> {
    let cluster = berth_messages::arn::cluster_name(&global.cluster).to_string();
    berth_messages::validate::cluster_name(&cluster)
        .map_err(|e| CliError::input(format!("--cluster / BERTH_CLUSTER: {}", e.message)))?;
    let binaries = Binaries::locate()?;
    std::fs::create_dir_all(&args.data_dir).map_err(|e| {
        CliError::input(format!(
            "cannot create data directory {}: {e}",
            args.data_dir.display()
        ))
    })?;
    let data_dir = args
        .data_dir
        .canonicalize()
        .map_err(|e| CliError::input(format!("data directory {}: {e}", args.data_dir.display())))?;
    let _lock = lock_data_dir(&data_dir)?;
    port_is_free(args.port)?;
    let mut signals = ShutdownSignals::new().map_err(|e| CliError::other(e.to_string()))?;
    let mut stack = Stack::default();
    let config = StartConfig {
        binaries,
        data_dir,
        port: args.port,
        cluster,
    };
    let started = tokio::select! {
        r = start(&mut stack, &config) => r.map(Some),
        s = signals.recv() => {
            output::note(&format!("{s}: stopping what was started"));
            Ok(None)
        }
    };
    let result = match started {
        Ok(Some(ready)) => {
            output::print(&summary(&config, &stack, &ready));
            wait_for_end(&mut stack, &mut signals).await
        }
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };
    stack.stop(&mut signals).await;
    if result.is_ok() {
        output::note("berth dev: everything stopped");
    }
    result
}

/// The three executables `berth dev` runs.
struct Binaries {
    nats_server: PathBuf,
    control: PathBuf,
    agent: PathBuf,
}

impl Binaries {
    fn locate() -> Result<Binaries, CliError> {
        let exe = std::env::current_exe()
            .map_err(|e| CliError::other(format!("cannot find the berth executable: {e}")))?;
        let exe = exe.canonicalize().unwrap_or(exe);
        Ok(Binaries {
            nats_server: nats_server_bin(&exe)?,
            control: sibling_bin(&exe, "berth-control")?,
            agent: sibling_bin(&exe, "berth-agent")?,
        })
    }
}

/// `$NATS_SERVER_BIN`, else `.tools/nats/bin/nats-server` in a directory above the
/// executable or the current directory (the repository's setup puts it there), else PATH.
fn nats_server_bin(exe: &Path) -> Result<PathBuf, CliError> {
    if let Some(configured) = std::env::var_os("NATS_SERVER_BIN").filter(|v| !v.is_empty()) {
        let path = PathBuf::from(configured);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(CliError::input(format!(
                "NATS_SERVER_BIN={} does not exist: unset it, or run scripts/setup",
                path.display()
            )))
        };
    }
    let cwd = std::env::current_dir().ok();
    let roots = exe
        .ancestors()
        .skip(1)
        .chain(cwd.iter().flat_map(|c| c.ancestors()));
    for root in roots {
        let candidate = root.join(".tools/nats/bin/nats-server");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    on_path("nats-server").ok_or_else(|| {
        CliError::input(
            "nats-server not found: run scripts/setup in the Berth repository (it installs \
             nats-server 2.15 under .tools/), put nats-server on PATH, or set NATS_SERVER_BIN",
        )
    })
}

/// A binary next to `berth` (same cargo target directory), else on PATH.
fn sibling_bin(exe: &Path, name: &str) -> Result<PathBuf, CliError> {
    let file = format!("{name}{}", std::env::consts::EXE_SUFFIX);
    if let Some(dir) = exe.parent() {
        let candidate = dir.join(&file);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    on_path(&file).ok_or_else(|| {
        CliError::input(format!(
            "{name} not found next to {} nor on PATH: build it with \
             `cargo build --release -p berth-cli -p berth-control -p berth-agent` \
             (scripts/dev does this for you)",
            exe.display()
        ))
    })
}

fn on_path(file: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(file))
        .find(|candidate| candidate.is_file())
}

/// Holds `<data-dir>/berth-dev.lock` for the life of `berth dev`: two of them on one data
/// directory would fight over the store and the agent's identity.
fn lock_data_dir(data_dir: &Path) -> Result<File, CliError> {
    let path = data_dir.join("berth-dev.lock");
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| CliError::other(format!("cannot open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.is_empty() {
                String::new()
            } else {
                format!(" (pid {holder})")
            };
            return Err(CliError::other(format!(
                "another `berth dev`{who} is running on data directory {}: stop it first, or \
                 give this one another --data-dir / BERTH_DATA_DIR (and --port)",
                data_dir.display()
            )));
        }
        Err(TryLockError::Error(e)) => {
            return Err(CliError::other(format!(
                "cannot lock {}: {e}",
                path.display()
            )))
        }
    }
    let _ = file.set_len(0);
    let _ = file.rewind();
    let _ = writeln!(file, "{}", std::process::id());
    Ok(file)
}

fn port_is_free(port: u16) -> Result<(), CliError> {
    std::net::TcpListener::bind(("127.0.0.1", port))
        .map(drop)
        .map_err(|e| {
            CliError::other(format!(
                "port {port} on 127.0.0.1 is not free ({e}): is another nats-server or \
                 `berth dev` running? Stop it, or choose another port with --port / \
                 BERTH_NATS_PORT"
            ))
        })
}

/// A child process `berth dev` owns.
struct Managed {
    name: &'static str,
    child: Child,
    pid: u32,
    log: PathBuf,
    log_pipe: Option<tokio::task::JoinHandle<()>>,
}

enum StopEvent {
    Exited,
    GraceOver,
    Signal(ShutdownSignal),
}

impl Managed {
    fn signal(&self, signal: Signal) {
        if let Ok(pid) = i32::try_from(self.pid) {
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }

    fn has_exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM, then SIGKILL after `grace` or at a second Ctrl-C (`hurry`).
    async fn stop(&mut self, grace: Duration, signals: &mut ShutdownSignals, hurry: &mut bool) {
        if self.has_exited().is_some() {
            return;
        }
        if *hurry {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
            return;
        }
        output::note(&format!("stopping {} (pid {})", self.name, self.pid));
        self.signal(Signal::SIGTERM);
        let event = tokio::select! {
            _ = self.child.wait() => StopEvent::Exited,
            _ = tokio::time::sleep(grace) => StopEvent::GraceOver,
            s = signals.recv() => StopEvent::Signal(s),
        };
        match event {
            StopEvent::Exited => {}
            StopEvent::GraceOver => {
                output::note(&format!(
                    "{} did not stop within {} s: killing it",
                    self.name,
                    grace.as_secs()
                ));
                let _ = self.child.start_kill();
                let _ = self.child.wait().await;
            }
            StopEvent::Signal(s) => {
                output::note(&format!("{s} again: killing everything"));
                *hurry = true;
                let _ = self.child.start_kill();
                let _ = self.child.wait().await;
            }
        }
        self.flush_log().await;
    }

    async fn flush_log(&mut self) {
        if let Some(pipe) = self.log_pipe.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), pipe).await;
        }
    }

    /// The error for a child that ended on its own, with the end of its log.
    async fn exited_error(&mut self, status: Option<ExitStatus>, when: &str) -> CliError {
        self.flush_log().await;
        let status = status.map_or("ended".to_string(), |s| format!("exited ({s})"));
        CliError::other(format!(
            "{} {status} {when}; the end of {}:\n{}",
            self.name,
            self.log.display(),
            log_tail(&self.log)
        ))
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(LOG_TAIL_LINES);
    let tail: Vec<String> = lines[start..].iter().map(|l| format!("  {l}")).collect();
    if tail.is_empty() {
        "  (empty)".to_string()
    } else {
        tail.join("\n")
    }
}

/// The children, stopped in reverse order of start.
#[derive(Default)]
struct Stack {
    nats: Option<Managed>,
    control: Option<Managed>,
    agent: Option<Managed>,
}

impl Stack {
    async fn stop(&mut self, signals: &mut ShutdownSignals) {
        let mut hurry = false;
        if let Some(agent) = &mut self.agent {
            agent.stop(AGENT_STOP_GRACE, signals, &mut hurry).await;
        }
        if let Some(control) = &mut self.control {
            control.stop(STOP_GRACE, signals, &mut hurry).await;
        }
        if let Some(nats) = &mut self.nats {
            nats.stop(STOP_GRACE, signals, &mut hurry).await;
        }
    }
}

struct StartConfig {
    binaries: Binaries,
    data_dir: PathBuf,
    port: u16,
    cluster: String,
}

impl StartConfig {
    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

/// What the summary reports.
struct Ready {
    instance_arn: String,
}

async fn start(stack: &mut Stack, config: &StartConfig) -> Result<Ready, CliError> {
    let url = config.url();
    let data = &config.data_dir;

    // nats-server: JetStream on the data directory, logging to a file of its own.
    let nats_log = data.join("nats-server.log");
    output::note(&format!(
        "starting nats-server on 127.0.0.1:{} (store {})",
        config.port,
        data.join("nats").display()
    ));
    let mut command = Command::new(&config.binaries.nats_server);
    command
        .args(["-n", "berth-dev", "-js", "-a", "127.0.0.1", "-p"])
        .arg(config.port.to_string())
        .arg("-sd")
        .arg(data.join("nats"))
        .arg("-l")
        .arg(&nats_log);
    let nats = stack
        .nats
        .insert(spawn_logged("nats-server", command, nats_log, None)?);
    wait_nats(nats, &url).await?;

    // berth-control.
    output::note(&format!(
        "starting berth-control (log {})",
        data.join("berth-control.log").display()
    ));
    let mut command = Command::new(&config.binaries.control);
    command.arg("--nats").arg(&url);
    let control = stack.control.insert(spawn_logged(
        "berth-control",
        command,
        data.join("berth-control.log"),
        None,
    )?);
    let client = wait_control(control, &url, &config.cluster).await?;

    // berth-agent with the process runtime.
    output::note(&format!(
        "starting berth-agent (identity in {}, log {})",
        data.join("agent").display(),
        data.join("berth-agent.log").display()
    ));
    let mut command = Command::new(&config.binaries.agent);
    command
        .arg("--nats")
        .arg(&url)
        .arg("--cluster")
        .arg(&config.cluster)
        .arg("--data-dir")
        .arg(data.join("agent"))
        .arg("--stop-tasks-on-exit")
        .env_remove("BERTH_SIM");
    let (ready_tx, ready_rx) = oneshot::channel();
    let agent = stack.agent.insert(spawn_logged(
        "berth-agent",
        command,
        data.join("berth-agent.log"),
        Some(ready_tx),
    )?);
    let instance_arn = wait_agent(agent, ready_rx, &client, &config.cluster).await?;
    Ok(Ready { instance_arn })
}

fn spawn(
    name: &'static str,
    mut command: Command,
    log: PathBuf,
    log_pipe: Option<tokio::task::JoinHandle<()>>,
) -> Result<Managed, CliError> {
    command.process_group(0).kill_on_drop(true);
    let child = command.spawn().map_err(|e| {
        CliError::other(format!(
            "cannot start {name} ({}): {e}",
            command.as_std().get_program().to_string_lossy()
        ))
    })?;
    let pid = child.id().unwrap_or(0);
    Ok(Managed {
        name,
        child,
        pid,
        log,
        log_pipe,
    })
}

/// Spawns a Berth process whose stderr is appended to `log`; when `ready` is given, it
/// receives the ARN from the agent's ready line.
fn spawn_logged(
    name: &'static str,
    mut command: Command,
    log: PathBuf,
    ready: Option<oneshot::Sender<String>>,
) -> Result<Managed, CliError> {
    if std::env::var_os("RUST_LOG").is_none() {
        command.env("RUST_LOG", "info");
    }
    command
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| CliError::other(format!("cannot open log {}: {e}", log.display())))?;
    let mut managed = spawn(name, command, log, None)?;
    if let Some(stderr) = managed.child.stderr.take() {
        managed.log_pipe = Some(tokio::spawn(pipe_log(stderr, file, ready)));
    }
    Ok(managed)
}

async fn pipe_log(
    stderr: tokio::process::ChildStderr,
    file: File,
    mut ready: Option<oneshot::Sender<String>>,
) {
    let mut reader = tokio::io::BufReader::new(stderr);
    let mut file = tokio::fs::File::from_std(file);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let _ = file.write_all(&line).await;
        if ready.is_some() {
            if let Some(arn) = ready_arn(&String::from_utf8_lossy(&line)) {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(arn);
                }
            }
        }
    }
    let _ = file.flush().await;
}

/// The instance ARN of the agent's ready line.
fn ready_arn(line: &str) -> Option<String> {
    let rest = &line[line.find(AGENT_READY_MARKER)? + AGENT_READY_MARKER.len()..];
    let arn: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '/' | '-' | '_' | '.'))
        .collect();
    arn.starts_with("arn:").then_some(arn)
}

async fn wait_nats(nats: &mut Managed, url: &str) -> Result<(), CliError> {
    let deadline = Instant::now() + NATS_READY_TIMEOUT;
    loop {
        if let Some(status) = nats.has_exited() {
            return Err(nats.exited_error(Some(status), "while starting").await);
        }
        let attempt = tokio::time::timeout(Duration::from_secs(2), async_nats::connect(url)).await;
        if let Ok(Ok(client)) = attempt {
            let js = async_nats::jetstream::new(client);
            if js.query_account().await.is_ok() {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return Err(CliError::other(format!(
                "nats-server did not accept clients with JetStream on {url} within {} s; the end \
                 of {}:\n{}",
                NATS_READY_TIMEOUT.as_secs(),
                nats.log.display(),
                log_tail(&nats.log)
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until the API answers, then creates the cluster (a no-op when it exists).
async fn wait_control(control: &mut Managed, url: &str, cluster: &str) -> Result<Client, CliError> {
    let client = Client::connect(&[url.to_string()]).await?;
    let deadline = Instant::now() + CONTROL_READY_TIMEOUT;
    loop {
        if let Some(status) = control.has_exited() {
            return Err(control.exited_error(Some(status), "while starting").await);
        }
        let created: Result<ClusterResponse, CliError> = client
            .call(
                Action::CreateCluster,
                &CreateClusterRequest {
                    cluster_name: Some(cluster.to_string()),
                    ..Default::default()
                },
            )
            .await;
        match created {
            Ok(_) => return Ok(client),
            Err(CliError::Api(e)) if e.error_type != berth_messages::ErrorType::ServerException => {
                return Err(CliError::Api(e))
            }
            Err(e) if Instant::now() >= deadline => {
                return Err(CliError::other(format!(
                    "berth-control did not serve the API within {} s ({e}); the end of {}:\n{}",
                    CONTROL_READY_TIMEOUT.as_secs(),
                    control.log.display(),
                    log_tail(&control.log)
                )))
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

enum AgentEvent {
    Ready(String),
    NoMarker,
    Exited(Option<ExitStatus>),
    TimedOut,
}

/// Waits for the agent's ready line, then for its instance to be ACTIVE and connected.
async fn wait_agent(
    agent: &mut Managed,
    ready: oneshot::Receiver<String>,
    client: &Client,
    cluster: &str,
) -> Result<String, CliError> {
    let deadline = Instant::now() + AGENT_READY_TIMEOUT;
    let event = tokio::select! {
        r = ready => match r {
            Ok(arn) => AgentEvent::Ready(arn),
            Err(_) => AgentEvent::NoMarker,
        },
        s = agent.child.wait() => AgentEvent::Exited(s.ok()),
        _ = tokio::time::sleep_until(deadline) => AgentEvent::TimedOut,
    };
    let arn = match event {
        AgentEvent::Ready(arn) => arn,
        AgentEvent::NoMarker | AgentEvent::Exited(_) => {
            let status = match event {
                AgentEvent::Exited(s) => s,
                // Its stderr closed without the ready line: it is on its way out.
                _ => tokio::time::timeout(Duration::from_secs(5), agent.child.wait())
                    .await
                    .ok()
                    .and_then(Result::ok),
            };
            return Err(agent.exited_error(status, "before it was ready").await);
        }
        AgentEvent::TimedOut => {
            return Err(CliError::other(format!(
                "berth-agent did not report ready within {} s; the end of {}:\n{}",
                AGENT_READY_TIMEOUT.as_secs(),
                agent.log.display(),
                log_tail(&agent.log)
            )))
        }
    };
    loop {
        if let Some(status) = agent.has_exited() {
            return Err(agent.exited_error(Some(status), "after registering").await);
        }
        let described: Result<ContainerInstancesResponse, CliError> = client
            .call(
                Action::DescribeContainerInstances,
                &DescribeContainerInstancesRequest {
                    cluster: Some(cluster.to_string()),
                    container_instances: vec![arn.clone()],
                    include: Vec::new(),
                },
            )
            .await;
        if let Ok(r) = described {
            if r.container_instances
                .iter()
                .any(|ci| ci.status == InstanceStatus::Active && ci.agent_connected)
            {
                return Ok(arn);
            }
        }
        if Instant::now() >= deadline {
            return Err(CliError::other(format!(
                "the agent's instance {arn} is not ACTIVE with its agent connected after {} s; \
                 see {}",
                AGENT_READY_TIMEOUT.as_secs(),
                agent.log.display()
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

enum End {
    Signal(ShutdownSignal),
    Exited(&'static str),
}

/// Runs until a signal, or until a child ends on its own (an error).
async fn wait_for_end(stack: &mut Stack, signals: &mut ShutdownSignals) -> Result<(), CliError> {
    let (Some(nats), Some(control), Some(agent)) =
        (&mut stack.nats, &mut stack.control, &mut stack.agent)
    else {
        return Err(CliError::other("berth dev: a process is missing"));
    };
    let end = tokio::select! {
        s = signals.recv() => End::Signal(s),
        _ = agent.child.wait() => End::Exited("berth-agent"),
        _ = control.child.wait() => End::Exited("berth-control"),
        _ = nats.child.wait() => End::Exited("nats-server"),
    };
    match end {
        End::Signal(s) => {
            output::note(&format!(
                "{s}: stopping berth-agent (and its tasks), berth-control, nats-server"
            ));
            Ok(())
        }
        End::Exited(name) => {
            let managed = [nats, control, agent].into_iter().find(|m| m.name == name);
            match managed {
                Some(m) => {
                    let status = m.has_exited();
                    Err(m.exited_error(status, "unexpectedly").await)
                }
                None => Err(CliError::other(format!("{name} ended unexpectedly"))),
            }
        }
    }
}

fn summary(config: &StartConfig, stack: &Stack, ready: &Ready) -> String {
    let data = &config.data_dir;
    let shown = |p: PathBuf| display_path(&p);
    let pid = |m: &Option<Managed>| m.as_ref().map_or("-".into(), |m| format!("pid {}", m.pid));
    let mut t = Table::new(&["", "", "", ""]);
    t.row(vec![
        "nats-server".into(),
        pid(&stack.nats),
        format!(
            "{} (JetStream store {})",
            config.url(),
            shown(data.join("nats"))
        ),
        format!("log {}", shown(data.join("nats-server.log"))),
    ]);
    t.row(vec![
        "berth-control".into(),
        pid(&stack.control),
        format!("cluster {}", config.cluster),
        format!("log {}", shown(data.join("berth-control.log"))),
    ]);
    t.row(vec![
        "berth-agent".into(),
        pid(&stack.agent),
        format!(
            "instance {} (ACTIVE, agent connected)",
            output::short_id(&ready.instance_arn)
        ),
        format!("log {}", shown(data.join("berth-agent.log"))),
    ]);
    let processes: String = t
        .render()
        .lines()
        .skip(1)
        .map(|l| format!("  {l}\n"))
        .collect();
    let berth = std::env::current_exe()
        .map(|p| display_path(&p))
        .unwrap_or_else(|_| "berth".into());
    let mut env = String::new();
    if config.port != 4222 {
        env.push_str(&format!("  export BERTH_NATS_URL={}\n", config.url()));
    }
    if config.cluster != "default" {
        env.push_str(&format!("  export BERTH_CLUSTER={}\n", config.cluster));
    }
    format!(
        "\nBerth is running. State lives in {}: started again on it, Berth resumes where it was.\n\n\
         {processes}\n\
         Try it from another terminal in this directory:\n\
         {env}  \
         {berth} task-definitions register examples/hello.json\n  \
         {berth} tasks run hello --wait STOPPED\n  \
         {berth} tasks logs <task id>\n  \
         {berth} instances list\n  \
         {berth} --help\n\n\
         Press Ctrl-C to stop everything (the agent stops its tasks first).\n",
        display_path(data),
    )
}

/// A path relative to the current directory when it lies below it.
fn display_path(path: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| path.to_path_buf())
        .display()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_yields_the_instance_arn() {
        assert_eq!(
            ready_arn(
                "berth-agent ready instance=arn:aws:ecs:local:0:container-instance/default/ab-12\n"
            ),
            Some("arn:aws:ecs:local:0:container-instance/default/ab-12".into())
        );
        assert_eq!(
            ready_arn("2026-01-01T00:00:00Z INFO berth-agent ready instance=arn:aws:ecs:r:a:container-instance/c/i \u{1b}[0m"),
            Some("arn:aws:ecs:r:a:container-instance/c/i".into())
        );
        assert_eq!(ready_arn("registering"), None);
    }

    #[test]
    fn a_second_lock_on_a_data_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _held = lock_data_dir(dir.path()).unwrap();
        let e = lock_data_dir(dir.path()).unwrap_err().to_string();
        assert!(e.starts_with("another `berth dev` (pid "), "{e}");
    }
}

//! The processes a benchmark run starts: nats-server (one node or a 3-node cluster, through
//! berth-testkit), `berth-control` replicas and a `berth-agent` with the process runtime.
//! Each is a real process, so its resident memory and CPU time can be read from `/proc`.

use crate::api::Api;
use crate::procfs;
use anyhow::{bail, Context as _};
use berth_messages::api::{DescribeClustersRequest, DescribeClustersResponse};
use berth_messages::command::Action;
use berth_testkit::{NatsCluster, NatsServer};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// How long a stopped process may take to exit before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(20);

/// The nats-server(s) of a run.
pub enum Nats {
    Single(NatsServer),
    Cluster(NatsCluster),
}

impl Nats {
    /// Starts one JetStream node, or an n-node cluster on loopback (R3 streams).
    pub async fn start(nodes: usize) -> anyhow::Result<Nats> {
        tokio::task::spawn_blocking(move || {
            if nodes <= 1 {
                Nats::Single(NatsServer::start())
            } else {
                Nats::Cluster(NatsCluster::start(nodes))
            }
        })
        .await
        .context("starting nats-server")
    }

    fn nodes(&self) -> Vec<&NatsServer> {
        match self {
            Nats::Single(server) => vec![server],
            Nats::Cluster(cluster) => cluster.nodes.iter().collect(),
        }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes().iter().map(|n| n.url()).collect()
    }

    /// Stream replicas that fit: 1 on one node, 3 on a cluster.
    pub fn replicas(&self) -> usize {
        match self {
            Nats::Single(_) => 1,
            Nats::Cluster(cluster) => cluster.nodes.len().min(3),
        }
    }

    /// Monitor ports of the nats-server processes.
    pub fn monitor_ports(&self) -> Vec<u16> {
        self.nodes().iter().map(|n| n.monitor_port()).collect()
    }

    /// Pids of the nats-server processes (found by their config file argument).
    pub fn pids(&self) -> Vec<u32> {
        self.nodes()
            .iter()
            .filter_map(|node| {
                node.store_dir()
                    .parent()
                    .map(|d| d.join("nats-server.conf"))
            })
            .flat_map(|config| procfs::pids_with_argument(&config))
            .collect()
    }

    pub async fn connect(&self, name: &str) -> anyhow::Result<async_nats::Client> {
        let addrs = self
            .urls()
            .iter()
            .map(|u| u.parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .context("nats URL")?;
        async_nats::ConnectOptions::new()
            .name(name)
            .connect(addrs)
            .await
            .context("connecting to nats-server")
    }

    /// Kills node `node` and starts it again on its ports and store; returns once it
    /// accepts clients. Blocking.
    pub fn restart_node(&mut self, node: usize) {
        match self {
            Nats::Single(server) => server.restart(),
            Nats::Cluster(cluster) => {
                if let Some(server) = cluster.nodes.get_mut(node) {
                    server.restart();
                }
            }
        }
    }

    /// Stops the server(s) off the async threads (dropping waits for the processes).
    pub async fn stop(self) {
        let _ = tokio::task::spawn_blocking(move || drop(self)).await;
    }
}

/// A `berth-control` replica running as a process.
pub struct ControlProcess {
    child: Child,
    pid: u32,
    log: PathBuf,
    pub started: Instant,
}

impl ControlProcess {
    /// Starts `bin` against `nats`, its log (stderr) going to `log`.
    pub fn spawn(
        bin: &Path,
        nats: &[String],
        replicas: usize,
        log: &Path,
    ) -> anyhow::Result<ControlProcess> {
        let log_file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let started = Instant::now();
        let child = Command::new(bin)
            .arg("--nats")
            .arg(nats.join(","))
            .arg("--replicas")
            .arg(replicas.to_string())
            .env("RUST_LOG", control_log())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id().context("pid of berth-control")?;
        Ok(ControlProcess {
            child,
            pid,
            log: log.to_path_buf(),
            started,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn rss_kib(&self) -> Option<u64> {
        procfs::rss_kib(self.pid)
    }

    /// Fails if the process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait().context("polling berth-control")? {
            bail!(
                "berth-control exited ({status}); log tail:\n{}",
                tail(&self.log, 30)
            );
        }
        Ok(())
    }

    /// Waits until the replica answers the API (DescribeClusters).
    pub async fn wait_serving(&mut self, api: &Api, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let quick = api.with_timeout(Duration::from_millis(500));
        loop {
            self.check_alive()?;
            let answer: Result<DescribeClustersResponse, _> = quick
                .call(
                    Action::DescribeClusters,
                    &DescribeClustersRequest::default(),
                )
                .await;
            if answer.is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("berth-control did not serve the API within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The `tasks=` figure of the replica's "view ready" log line.
    pub fn view_ready_tasks(&self) -> Option<u64> {
        let log = std::fs::read_to_string(&self.log).ok()?;
        log.lines()
            .filter(|line| line.contains("view ready"))
            .find_map(|line| field(line, "tasks"))
    }

    /// SIGTERM, then SIGKILL after a grace period.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        terminate(&mut self.child, self.pid, "berth-control").await
    }
}

/// A `berth-agent` running the process runtime.
pub struct AgentProcess {
    child: Child,
    pid: u32,
    pub instance_arn: String,
}

impl AgentProcess {
    /// Starts the agent and waits for its "berth-agent ready instance=<arn>" line.
    pub async fn spawn(
        bin: &Path,
        nats: &[String],
        cluster: &str,
        data_dir: &Path,
        log: &Path,
        timeout: Duration,
    ) -> anyhow::Result<AgentProcess> {
        let marker = "berth-agent ready instance=";
        let (child, pid, ready) =
            launch(Command::new(bin), nats, cluster, data_dir, log, &[], marker)?;
        let instance_arn = await_ready(child, pid, ready, log, timeout, |rest| {
            rest.split_whitespace()
                .next()
                .map(|arn| arn.trim_matches('"').to_string())
        })
        .await?;
        Ok(AgentProcess {
            child: instance_arn.0,
            pid,
            instance_arn: instance_arn.1,
        })
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        terminate(&mut self.child, self.pid, "berth-agent").await
    }
}

/// What a [`FleetProcess`] runs.
pub struct FleetSpec<'a> {
    pub cluster: &'a str,
    pub hosts: usize,
    /// Each host keeps its identity in `host-<n>` under it.
    pub data_dir: &'a Path,
    /// More settings (`BERTH_SIM_*`, `BERTH_HEARTBEAT_INTERVAL`).
    pub env: Vec<(&'a str, String)>,
}

/// `berth-agent --sim N --sim-shape real`: N hollow hosts of real shape in one process.
pub struct FleetProcess {
    child: Child,
    pid: u32,
    pub hosts: usize,
    /// From starting the process to every host following its tasks.
    pub registration: Duration,
}

impl FleetProcess {
    /// Starts the fleet and waits for its "berth-agent ready sim=<N>" line.
    pub async fn spawn(
        bin: &Path,
        nats: &[String],
        fleet: &FleetSpec<'_>,
        log: &Path,
        timeout: Duration,
    ) -> anyhow::Result<FleetProcess> {
        // Thousands of hosts each logging their start would fill the log for nothing.
        let mut settings = vec![
            ("BERTH_SIM", fleet.hosts.to_string()),
            ("BERTH_SIM_SHAPE", "real".to_string()),
            ("RUST_LOG", "warn".to_string()),
        ];
        settings.extend(fleet.env.iter().cloned());
        let started = Instant::now();
        let marker = "berth-agent ready sim=";
        // The hosts stand for machines of their own: at the lowest CPU priority, the
        // fleet's own work takes what the control plane and nats-server leave.
        let mut program = Command::new("nice");
        program.args(["-n", "19"]).arg(bin);
        let (child, pid, ready) = launch(
            program,
            nats,
            fleet.cluster,
            fleet.data_dir,
            log,
            &settings,
            marker,
        )?;
        let (child, _) = await_ready(child, pid, ready, log, timeout, |rest| {
            Some(rest.to_string())
        })
        .await?;
        Ok(FleetProcess {
            child,
            pid,
            hosts: fleet.hosts,
            registration: started.elapsed(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        terminate(&mut self.child, self.pid, "berth-agent --sim").await
    }
}

/// Starts `berth-agent` with `env`, its stderr copied to `log`; the receiver gets what
/// follows `marker` on the first line that starts with it (the ready line is printed,
/// not logged).
fn launch(
    mut program: Command,
    nats: &[String],
    cluster: &str,
    data_dir: &Path,
    log: &Path,
    env: &[(&str, String)],
    marker: &'static str,
) -> anyhow::Result<(Child, u32, tokio::sync::oneshot::Receiver<String>)> {
    let mut child = program
        .arg("--cluster")
        .arg(cluster)
        .arg("--nats")
        .arg(nats.join(","))
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting berth-agent")?;
    let pid = child.id().context("pid of berth-agent")?;
    let stderr = child.stderr.take().context("stderr of berth-agent")?;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<String>();
    let log = log.to_path_buf();
    tokio::spawn(async move {
        let Ok(mut log_file) = tokio::fs::File::create(&log).await else {
            return;
        };
        let mut lines = BufReader::new(stderr).lines();
        let mut ready = Some(ready_tx);
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = log_file.write_all(line.as_bytes()).await;
            let _ = log_file.write_all(b"\n").await;
            if let Some(rest) = line.strip_prefix(marker) {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(rest.trim().to_string());
                }
            }
        }
    });
    Ok((child, pid, ready_rx))
}

/// Waits for the ready line and reads it with `parse`; kills the process and fails with
/// its log's tail if it does not come within `timeout`.
async fn await_ready<T>(
    mut child: Child,
    pid: u32,
    ready: tokio::sync::oneshot::Receiver<String>,
    log: &Path,
    timeout: Duration,
    parse: impl FnOnce(&str) -> Option<T>,
) -> anyhow::Result<(Child, T)> {
    let line = tokio::time::timeout(timeout, ready).await;
    match line.ok().and_then(Result::ok).and_then(|rest| parse(&rest)) {
        Some(value) => Ok((child, value)),
        None => {
            let _ = child.start_kill();
            bail!(
                "berth-agent (pid {pid}) was not ready within {timeout:?}; log tail:\n{}",
                tail(log, 30)
            )
        }
    }
}

async fn terminate(child: &mut Child, pid: u32, name: &str) -> anyhow::Result<()> {
    if child.try_wait()?.is_some() {
        return Ok(());
    }
    let raw = i32::try_from(pid).context("pid out of range")?;
    if let Err(e) = kill(Pid::from_raw(raw), Signal::SIGTERM) {
        tracing::debug!(error = %e, "{name}: SIGTERM failed");
    }
    match tokio::time::timeout(STOP_GRACE, child.wait()).await {
        Ok(status) => {
            status.with_context(|| format!("waiting for {name}"))?;
        }
        Err(_) => {
            tracing::warn!("{name} did not stop within {STOP_GRACE:?}; killing it");
            child
                .kill()
                .await
                .with_context(|| format!("killing {name}"))?;
        }
    }
    Ok(())
}

/// `name=<digits>` in a log line (without ANSI colours: the child runs with NO_COLOR).
fn field(line: &str, name: &str) -> Option<u64> {
    let key = format!("{name}=");
    line.split_whitespace()
        .find_map(|token| token.strip_prefix(key.as_str()))
        .and_then(|value| value.parse().ok())
}

/// The last `lines` lines of a log file.
pub fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fields_of_log_lines() {
        let line = "2025-01-01T00:00:00Z  INFO berth_control: view ready applied=1234 instances=10 tasks=100000";
        assert_eq!(field(line, "tasks"), Some(100_000));
        assert_eq!(field(line, "applied"), Some(1_234));
        assert_eq!(field(line, "missing"), None);
    }
}

/// Messages and bytes the nats-server(s) received and sent (`/varz`, summed over nodes).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Traffic {
    pub in_msgs: u64,
    pub out_msgs: u64,
    pub in_bytes: u64,
    pub out_bytes: u64,
}

impl Traffic {
    /// Reads every node's counters; `None` if one cannot be read.
    pub async fn read(monitor_ports: &[u16]) -> Option<Traffic> {
        let ports = monitor_ports.to_vec();
        tokio::task::spawn_blocking(move || {
            let mut total = Traffic::default();
            for port in ports {
                let (status, body) = berth_testkit::http_get(port, "/varz").ok()?;
                if status != 200 {
                    return None;
                }
                let varz: serde_json::Value = serde_json::from_str(&body).ok()?;
                let count = |name: &str| varz.get(name).and_then(serde_json::Value::as_u64);
                total.in_msgs += count("in_msgs")?;
                total.out_msgs += count("out_msgs")?;
                total.in_bytes += count("in_bytes")?;
                total.out_bytes += count("out_bytes")?;
            }
            Some(total)
        })
        .await
        .ok()
        .flatten()
    }

    pub fn since(&self, before: &Traffic) -> Traffic {
        Traffic {
            in_msgs: self.in_msgs.saturating_sub(before.in_msgs),
            out_msgs: self.out_msgs.saturating_sub(before.out_msgs),
            in_bytes: self.in_bytes.saturating_sub(before.in_bytes),
            out_bytes: self.out_bytes.saturating_sub(before.out_bytes),
        }
    }
}

/// The `RUST_LOG` of the control plane the bench starts: `BERTH_BENCH_CONTROL_LOG`, else
/// `info` (to trace a measurement, e.g. `info,berth_control::commands=debug`).
fn control_log() -> String {
    std::env::var("BERTH_BENCH_CONTROL_LOG").unwrap_or_else(|_| "info".to_string())
}

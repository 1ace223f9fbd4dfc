//! The agent's settings: every flag has a `BERTH_*` environment twin so that `berth dev`,
//! systemd units and tests configure it the same way.

use crate::runtime::Kind;
use clap::builder::BoolishValueParser;
use std::path::PathBuf;
use std::time::Duration;

/// Size at which a container's output file is rotated.
pub const DEFAULT_LOG_MAX_BYTES: u64 = 10 * 1024 * 1024;
/// Output files kept per container (the current one included).
pub const DEFAULT_LOG_FILES: usize = 3;

#[derive(Debug, Clone, clap::Args)]
pub struct AgentConfig {
    /// Cluster this host joins.
    #[arg(long, env = "BERTH_CLUSTER", default_value = "default")]
    pub cluster: String,
    /// NATS server URLs, comma separated.
    #[arg(
        long = "nats",
        env = "BERTH_NATS_URL",
        value_delimiter = ',',
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats: Vec<String>,
    /// What runs the containers: `process` (host processes under the agent's shim).
    #[arg(long, env = "BERTH_RUNTIME", value_enum, default_value_t = Kind::Process)]
    pub runtime: Kind,
    /// Where the agent keeps its identity, lock, container state and output.
    #[arg(long, env = "BERTH_DATA_DIR", default_value = ".berth/agent")]
    pub data_dir: PathBuf,
    /// MiB of host memory not offered to tasks.
    #[arg(long, env = "BERTH_RESERVED_MEMORY", default_value_t = 0)]
    pub reserved_memory: i64,
    /// Host TCP ports never given to tasks, comma separated.
    #[arg(long, env = "BERTH_RESERVED_PORTS", default_value = "22")]
    pub reserved_ports: String,
    /// Custom attributes: "name=value,name2=value2" (a name alone has no value).
    #[arg(long, env = "BERTH_ATTRIBUTES", default_value = "")]
    pub attributes: String,
    /// Seconds between heartbeats (the control plane must use the same interval).
    #[arg(long, env = "BERTH_HEARTBEAT_INTERVAL", default_value_t = 5.0)]
    pub heartbeat_interval: f64,
    /// On SIGINT/SIGTERM, stop every task (and report it) before exiting. Without it the
    /// agent leaves its tasks running and adopts them when it starts again.
    #[arg(
        long,
        env = "BERTH_STOP_TASKS_ON_EXIT",
        value_parser = BoolishValueParser::new(),
        default_value_t = false,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub stop_tasks_on_exit: bool,
    /// Seconds between SIGTERM and SIGKILL for containers without their own stopTimeout.
    #[arg(long, env = "BERTH_STOP_TIMEOUT", default_value_t = 30.0)]
    pub stop_timeout: f64,
    /// Size at which a container's output file is rotated.
    #[arg(long, env = "BERTH_LOG_MAX_BYTES", default_value_t = DEFAULT_LOG_MAX_BYTES)]
    pub log_max_bytes: u64,
    /// Output files kept per container.
    #[arg(long, env = "BERTH_LOG_FILES", default_value_t = DEFAULT_LOG_FILES)]
    pub log_files: usize,
    /// `--log-json` / `BERTH_LOG_JSON`.
    #[command(flatten)]
    pub log: berth_telemetry::LogArgs,

    /// Register this many hollow instances (runtime `sim`) instead of this host.
    #[arg(long, env = "BERTH_SIM")]
    pub sim: Option<usize>,
    /// CPU units of each hollow instance.
    #[arg(long, env = "BERTH_SIM_CPU", default_value_t = 4096)]
    pub sim_cpu: i64,
    /// MiB of memory of each hollow instance.
    #[arg(long, env = "BERTH_SIM_MEMORY", default_value_t = 16384)]
    pub sim_memory: i64,
    /// Milliseconds a hollow task takes to start.
    #[arg(long, env = "BERTH_SIM_START_DELAY_MS", default_value_t = 50)]
    pub sim_start_delay_ms: u64,
    /// Milliseconds a hollow task runs.
    #[arg(long, env = "BERTH_SIM_RUN_MS", default_value_t = 500)]
    pub sim_run_ms: u64,
    /// Exit code of every hollow container.
    #[arg(long, env = "BERTH_SIM_EXIT_CODE", default_value_t = 0)]
    pub sim_exit_code: i32,
    /// How `--sim` hosts reach NATS: `shared` (one connection and one consumer for all)
    /// or `real` (each its own connection and consumer, exactly as a real agent).
    #[arg(long, env = "BERTH_SIM_SHAPE", value_enum, default_value_t = SimShape::Shared)]
    pub sim_shape: SimShape,
}

/// How the hollow hosts of `--sim` are built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SimShape {
    /// One connection, one consumer on the cluster's tasks and one heartbeat loop for all
    /// (`berth-sim`): thousands of hosts for the cost of one.
    #[default]
    Shared,
    /// Each host is a whole agent with the hollow runtime: its own connection, consumer,
    /// heartbeats and task actors.
    Real,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            cluster: "default".into(),
            nats: vec!["nats://127.0.0.1:4222".into()],
            runtime: Kind::Process,
            data_dir: PathBuf::from(".berth/agent"),
            reserved_memory: 0,
            reserved_ports: "22".into(),
            attributes: String::new(),
            heartbeat_interval: 5.0,
            stop_tasks_on_exit: false,
            stop_timeout: 30.0,
            log_max_bytes: DEFAULT_LOG_MAX_BYTES,
            log_files: DEFAULT_LOG_FILES,
            log: berth_telemetry::LogArgs::default(),
            sim: None,
            sim_cpu: 4096,
            sim_memory: 16384,
            sim_start_delay_ms: 50,
            sim_run_ms: 500,
            sim_exit_code: 0,
            sim_shape: SimShape::Shared,
        }
    }
}

impl AgentConfig {
    pub fn heartbeat_interval(&self) -> Duration {
        seconds(self.heartbeat_interval, Duration::from_secs(5))
    }

    pub fn default_stop_timeout(&self) -> Duration {
        seconds(self.stop_timeout, Duration::from_secs(30))
    }

    /// What hollow containers do (`--runtime sim`).
    pub fn hollow_script(&self) -> crate::runtime::hollow::Script {
        crate::runtime::hollow::Script {
            start_delay: Duration::from_millis(self.sim_start_delay_ms),
            run_time: Duration::from_millis(self.sim_run_ms),
            exit_code: self.sim_exit_code,
        }
    }
}

/// A positive, finite number of seconds, or `fallback`.
fn seconds(value: f64, fallback: Duration) -> Duration {
    if value.is_finite() && value > 0.0 {
        Duration::from_secs_f64(value)
    } else {
        fallback
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Probe {
        #[command(flatten)]
        agent: AgentConfig,
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let p = Probe::try_parse_from(["berth-agent"]).unwrap();
        let d = AgentConfig::default();
        assert_eq!(p.agent.cluster, d.cluster);
        assert_eq!(p.agent.nats, d.nats);
        assert_eq!(p.agent.data_dir, d.data_dir);
        assert_eq!(p.agent.runtime, Kind::Process);
        assert_eq!(p.agent.reserved_ports, "22");
        assert!(!p.agent.stop_tasks_on_exit);
        assert_eq!(p.agent.heartbeat_interval(), Duration::from_secs(5));
        assert_eq!(p.agent.default_stop_timeout(), Duration::from_secs(30));
        assert_eq!(p.agent.sim, None);
        assert_eq!(p.agent.sim_memory, 16384);
    }

    #[test]
    fn flags_parse() {
        let p = Probe::try_parse_from([
            "berth-agent",
            "--nats",
            "nats://a:1,nats://b:2",
            "--stop-tasks-on-exit",
            "--heartbeat-interval",
            "0.5",
            "--sim",
            "3",
            "--runtime",
            "process",
        ])
        .unwrap();
        assert_eq!(p.agent.nats, vec!["nats://a:1", "nats://b:2"]);
        assert!(p.agent.stop_tasks_on_exit);
        assert_eq!(p.agent.heartbeat_interval(), Duration::from_millis(500));
        assert_eq!(p.agent.sim, Some(3));
        assert_eq!(p.agent.runtime, Kind::Process);
        assert!(Probe::try_parse_from(["berth-agent", "--runtime", "docker"]).is_err());
        let p = Probe::try_parse_from(["berth-agent", "--runtime", "sim", "--sim-shape", "real"])
            .unwrap();
        assert_eq!(p.agent.runtime, Kind::Sim);
        assert_eq!(p.agent.sim_shape, SimShape::Real);
        assert!(Probe::try_parse_from(["berth-agent", "--sim-shape", "both"]).is_err());
        let p = Probe::try_parse_from(["berth-agent", "--stop-tasks-on-exit", "false"]).unwrap();
        assert!(!p.agent.stop_tasks_on_exit);
    }

    #[test]
    fn nonsense_durations_fall_back() {
        let c = AgentConfig {
            heartbeat_interval: -1.0,
            stop_timeout: f64::NAN,
            ..AgentConfig::default()
        };
        assert_eq!(c.heartbeat_interval(), Duration::from_secs(5));
        assert_eq!(c.default_stop_timeout(), Duration::from_secs(30));
    }
}

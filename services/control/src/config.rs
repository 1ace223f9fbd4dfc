//! Configuration of a `berth-control` replica: flags with `BERTH_*` environment twins.

use berth_journal::JournalConfig;
use berth_messages::arn::ArnScope;
use berth_messages::streams::{self, StreamOptions};
use std::time::Duration;

/// Flags of `berth-control`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "berth-control",
    version,
    about = "Berth control plane: ECS API over NATS JetStream"
)]
pub struct ControlConfig {
    /// NATS server URLs, comma separated.
    #[arg(
        long = "nats",
        env = "BERTH_NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        value_delimiter = ','
    )]
    pub nats: Vec<String>,
    /// Stream replicas: 1 on a single node, 3 on a three-node cluster.
    #[arg(long, env = "BERTH_REPLICAS", default_value_t = 1)]
    pub replicas: usize,
    /// Records kept per entity subject in BERTH_STATE.
    #[arg(long, env = "BERTH_HISTORY", default_value_t = 64)]
    pub history: i64,
    /// Consumers each stream accepts. `BERTH_STATE` holds one per agent, so this bounds
    /// the fleet across all clusters; start-up warns when a stream nears it.
    #[arg(
        long = "max-consumers",
        env = "BERTH_MAX_CONSUMERS",
        default_value_t = streams::DEFAULT_MAX_CONSUMERS,
        value_parser = clap::value_parser!(i64).range(1..=i64::from(i32::MAX))
    )]
    pub max_consumers: i64,
    /// Region in minted ARNs.
    #[arg(long, env = "BERTH_REGION", default_value = "local")]
    pub region: String,
    /// Account id in minted ARNs.
    #[arg(long, env = "BERTH_ACCOUNT_ID", default_value = "000000000000")]
    pub account_id: String,
    /// Seconds between agent heartbeats; an agent is disconnected after three missed.
    #[arg(long, env = "BERTH_HEARTBEAT_INTERVAL", default_value_t = 5.0)]
    pub heartbeat_interval: f64,
    /// Seconds an API call waits for its command's outcome.
    #[arg(long, env = "BERTH_API_TIMEOUT", default_value_t = 30.0)]
    pub api_timeout: f64,
    /// Seconds a STOPPED task stays in the journal and the API before it is purged.
    #[arg(long, env = "BERTH_STOPPED_TASK_RETENTION", default_value_t = 3600.0)]
    pub stopped_task_retention: f64,
    /// Seconds between reconciliation passes; an allocation left behind for a STOPPED task
    /// is released once it has stayed so for a whole interval.
    #[arg(long, env = "BERTH_RECONCILE_INTERVAL", default_value_t = 10.0)]
    pub reconcile_interval: f64,
    /// Seconds a command may go without an acknowledgement or a progress report before
    /// the stream gives it to another replica; the replica executing it reports progress
    /// every third of this, so only a dead or hung replica loses its commands.
    #[arg(
        long = "command-ack-wait",
        env = "BERTH_COMMAND_ACK_WAIT",
        default_value_t = 5.0,
        value_parser = positive_seconds
    )]
    pub command_ack_wait: f64,
    /// Seconds an agent may stay disconnected before its host counts as lost: its tasks
    /// are then marked STOPPED ("Host lost: agent disconnected") and services replace
    /// them; an agent that comes back stops them, as their desired status says.
    #[arg(
        long = "host-lost-after",
        env = "BERTH_HOST_LOST_AFTER",
        default_value_t = 300.0,
        value_parser = positive_seconds
    )]
    pub host_lost_after: f64,
    /// Clusters to create at start-up if they do not exist (comma separated).
    #[arg(
        long = "create-cluster",
        env = "BERTH_CREATE_CLUSTERS",
        value_delimiter = ','
    )]
    pub create_clusters: Vec<String>,
    /// `--log-json` / `BERTH_LOG_JSON`.
    #[command(flatten)]
    pub log: berth_telemetry::LogArgs,
    /// Test hook (no flag): commands whose id starts with the prefix are held this long
    /// before they execute, as a slow command would be.
    #[arg(skip)]
    pub command_hold: Option<CommandHold>,
}

/// Holds matching commands before they execute (tests of the claim a slow command keeps).
#[derive(Debug, Clone)]
pub struct CommandHold {
    pub id_prefix: String,
    pub duration: Duration,
}

/// A duration in seconds that is finite and above zero.
fn positive_seconds(value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && Duration::try_from_secs_f64(v).is_ok() => Ok(v),
        Ok(_) => Err(format!("'{value}' is not a number of seconds above zero")),
        Err(e) => Err(format!("'{value}' is not a number of seconds: {e}")),
    }
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            nats: vec!["nats://127.0.0.1:4222".into()],
            replicas: 1,
            history: 64,
            max_consumers: streams::DEFAULT_MAX_CONSUMERS,
            region: "local".into(),
            account_id: "000000000000".into(),
            heartbeat_interval: 5.0,
            api_timeout: 30.0,
            create_clusters: Vec::new(),
            stopped_task_retention: 3600.0,
            reconcile_interval: 10.0,
            command_ack_wait: 5.0,
            host_lost_after: 300.0,
            log: berth_telemetry::LogArgs::default(),
            command_hold: None,
        }
    }
}

impl ControlConfig {
    pub fn journal(&self) -> JournalConfig {
        JournalConfig {
            servers: self.nats.clone(),
            streams: StreamOptions {
                replicas: self.replicas,
                history: self.history,
                max_consumers: self.max_consumers,
                ..StreamOptions::default()
            },
            name: "berth-control".into(),
            ..JournalConfig::default()
        }
    }

    pub fn arns(&self) -> ArnScope {
        ArnScope {
            region: self.region.clone(),
            account: self.account_id.clone(),
        }
    }

    pub fn host_lost_after(&self) -> Duration {
        Duration::from_secs_f64(self.host_lost_after)
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs_f64(self.heartbeat_interval.max(0.05))
    }

    pub fn stopped_task_retention(&self) -> Duration {
        Duration::from_secs_f64(self.stopped_task_retention.max(1.0))
    }

    pub fn reconcile_interval(&self) -> Duration {
        Duration::from_secs_f64(self.reconcile_interval.max(0.05))
    }

    /// The command consumer's ack wait (see `--command-ack-wait`).
    pub fn command_ack_wait(&self) -> Duration {
        Duration::try_from_secs_f64(self.command_ack_wait.max(0.05))
            .unwrap_or(Duration::from_secs(5))
    }

    pub fn api_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.api_timeout.max(0.1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn command_ack_wait_is_seconds_above_zero() {
        let parse =
            |v: &str| ControlConfig::try_parse_from(["berth-control", "--command-ack-wait", v]);
        let c = parse("1.5").expect("1.5 s");
        assert_eq!(c.command_ack_wait(), Duration::from_millis(1500));
        for bad in ["0", "-1", "nan", "inf", "soon"] {
            assert!(parse(bad).is_err(), "{bad} accepted");
        }
        let default = ControlConfig::try_parse_from(["berth-control"]).expect("defaults");
        assert_eq!(default.command_ack_wait(), Duration::from_secs(5));
        assert_eq!(
            ControlConfig::default().command_ack_wait(),
            Duration::from_secs(5)
        );
    }
}

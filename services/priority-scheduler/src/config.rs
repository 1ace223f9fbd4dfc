//! Configuration of a scheduler: flags with `BERTH_*` environment twins.

use std::time::Duration;

/// Flags of `berth-priority-scheduler`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "berth-priority-scheduler",
    version,
    about = "Berth priority scheduler: jobs from the BERTH_JOBS work queue, placed by priority with StartTask"
)]
pub struct Config {
    /// NATS server URLs, comma separated.
    #[arg(
        long = "nats",
        env = "BERTH_NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        value_delimiter = ','
    )]
    pub nats: Vec<String>,
    /// The cluster whose pool this scheduler places on (jobs of `berth.jobs.<cluster>`).
    #[arg(long, env = "BERTH_CLUSTER", default_value = "default")]
    pub cluster: String,
    /// Jobs read before a scheduling pass when more are waiting: the pass orders
    /// everything held by priority, so a larger batch orders a larger backlog.
    #[arg(long, env = "BERTH_SCHEDULER_BATCH", default_value_t = 256)]
    pub batch: usize,
    /// API calls (StartTask and look-ups) in flight at once.
    #[arg(long, env = "BERTH_SCHEDULER_MAX_IN_FLIGHT", default_value_t = 32)]
    pub max_in_flight: usize,
    /// Jobs held (delivered, not yet finished) at most; the consumer's max ack pending.
    #[arg(long, env = "BERTH_SCHEDULER_MAX_HELD", default_value_t = 10_000)]
    pub max_held: usize,
    /// Consecutive refused placements of one job before it fails with CONFLICT.
    #[arg(long, env = "BERTH_SCHEDULER_MAX_RETRIES", default_value_t = 10)]
    pub max_retries: u32,
    /// Never start a lower-priority job while a higher one waits for capacity (by
    /// default a smaller lower-priority job may use capacity a larger one cannot).
    #[arg(long, env = "BERTH_SCHEDULER_STRICT", default_value_t = false)]
    pub strict_priority: bool,
    /// Pick at random among this many best-fitting instances (1: always the best fit).
    /// Several schedulers on one pool collide far less often with 2 or 3.
    #[arg(long, env = "BERTH_SCHEDULER_CANDIDATES", default_value_t = 1)]
    pub candidates: usize,
    /// Replicas of the BERTH_JOBS stream (3 on a three-node cluster).
    #[arg(long, env = "BERTH_REPLICAS", default_value_t = 1)]
    pub replicas: usize,
    /// Seconds an API call waits for its reply, all attempts together (an unanswered
    /// attempt is sent again after 2 s, a mutation under the same command id).
    #[arg(long, env = "BERTH_SCHEDULER_REQUEST_TIMEOUT", default_value_t = 45.0)]
    pub request_timeout: f64,
    /// `--log-json` / `BERTH_LOG_JSON`.
    #[command(flatten)]
    pub log: berth_telemetry::LogArgs,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            nats: vec!["nats://127.0.0.1:4222".into()],
            cluster: "default".into(),
            batch: 256,
            max_in_flight: 32,
            max_held: 10_000,
            max_retries: 10,
            strict_priority: false,
            candidates: 1,
            replicas: 1,
            request_timeout: 45.0,
            log: berth_telemetry::LogArgs::default(),
        }
    }
}

impl Config {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.request_timeout.clamp(0.1, 3600.0))
    }
}

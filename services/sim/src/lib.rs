//! berth-sim: hollow container instances for scale tests (`berth-agent --sim N`). One
//! process registers N instances (CPU and MEMORY as configured, PORTS reserving 22,
//! attributes `ecs.os-type=linux` and `berth.sim=true`), heartbeats for each of them, and
//! plays each task placed on them: RUNNING after a start delay, STOPPED with a chosen exit
//! code after a run time, STOPPED at once when a stop is requested.
//!
//! Thousands of instances share everything so that nats-server is not the limit: one NATS
//! connection, one ordered consumer on the cluster's task records, one heartbeat loop,
//! one timer heap, and bounded pools of registrations and reports (see [`engine`] and
//! [`fleet`]). The per-task lifecycle is a pure state machine in [`play`].

pub mod api;
pub mod engine;
pub mod fleet;
mod identity;
pub mod play;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;

/// What to simulate and where.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    pub cluster: String,
    /// NATS server URLs.
    pub nats: Vec<String>,
    /// Hollow instances to register.
    pub instances: usize,
    /// CPU units each instance registers.
    pub cpu: i64,
    /// MiB of memory each instance registers.
    pub memory: i64,
    /// From seeing a task placed to reporting it RUNNING.
    pub start_delay: Duration,
    /// From RUNNING (acknowledged) to reporting STOPPED.
    pub run_time: Duration,
    /// Exit code of every container when its task's run time ends.
    pub exit_code: i32,
    pub heartbeat_interval: Duration,
    /// Where instance identities are kept across restarts; none: fresh instances each run.
    pub data_dir: Option<PathBuf>,
    /// State-change reports in flight at once for all the instances together (real
    /// agents each have their own; the default, [`engine::REPORTS_IN_FLIGHT`], keeps
    /// the hollow hosts' share of the CPU small).
    pub reports_in_flight: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            cluster: "default".into(),
            nats: vec!["nats://127.0.0.1:4222".into()],
            instances: 1,
            cpu: 4096,
            memory: 16384,
            start_delay: Duration::from_millis(50),
            run_time: Duration::from_millis(500),
            exit_code: 0,
            heartbeat_interval: Duration::from_secs(5),
            data_dir: None,
            reports_in_flight: engine::REPORTS_IN_FLIGHT,
        }
    }
}

/// Why the sim cannot run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("invalid sim configuration: {0}")]
    Config(String),
    #[error("cannot connect to NATS at {servers}: {reason}")]
    Connect { servers: String, reason: String },
    #[error("cannot register hollow instances in cluster {cluster}: {error}")]
    Register {
        cluster: String,
        #[source]
        error: berth_client::ClientError,
    },
    #[error("cannot follow the task records of cluster {cluster}: {reason}")]
    Follow { cluster: String, reason: String },
    #[error(transparent)]
    DataDir(#[from] identity::DataDirError),
}

/// A running sim.
pub struct SimHandle {
    arns: Vec<String>,
    client: async_nats::Client,
    tasks: JoinSet<()>,
    _data_dir: Option<identity::DataDir>,
}

impl SimHandle {
    /// Container instance ARNs of the hollow instances, in slot order.
    pub fn instance_arns(&self) -> &[String] {
        &self.arns
    }

    /// Stops heartbeats, the consumer and every report in flight. The instances stay
    /// registered; the control plane marks them disconnected after missed beats.
    pub async fn stop(mut self) {
        self.tasks.shutdown().await;
        if let Err(e) = self.client.flush().await {
            tracing::debug!(error = %e, "flush on stop failed");
        }
    }
}

fn validate(config: &SimConfig) -> Result<(), SimError> {
    let fail = |m: &str| Err(SimError::Config(m.to_string()));
    if config.instances == 0 {
        return fail("the number of hollow instances (--sim) must be at least 1");
    }
    if config.cpu <= 0 || config.memory <= 0 {
        return fail("hollow instances need positive CPU (--sim-cpu) and memory (--sim-memory)");
    }
    if config.heartbeat_interval.is_zero() {
        return fail("the heartbeat interval must be positive");
    }
    if config.nats.is_empty() {
        return fail("no NATS server URL given");
    }
    berth_messages::validate::cluster_name(&config.cluster).map_err(|e| SimError::Config(e.message))
}

/// Registers every hollow instance, starts following their tasks, and returns once all
/// are registered (logging `berth-agent ready sim=<N>`).
pub async fn start(config: SimConfig) -> Result<SimHandle, SimError> {
    validate(&config)?;
    let data_dir = match &config.data_dir {
        Some(dir) => Some(identity::DataDir::open(dir)?),
        None => None,
    };
    let known = match &data_dir {
        Some(d) => d.load(&config.cluster)?,
        None => Vec::new(),
    };
    let servers = config.nats.join(",");
    let connect_error = |e: async_nats::ConnectError| SimError::Connect {
        servers: servers.clone(),
        reason: e.to_string(),
    };
    let mut client = async_nats::ConnectOptions::new()
        .name("berth-sim")
        .connect(config.nats.clone())
        .await
        .map_err(connect_error)?;
    // Like an agent: on a cluster, connected to the server that leads the state stream.
    if let Some(near) = berth_journal::connect_leader_first(
        &client,
        &config.nats,
        berth_messages::streams::STATE,
        async_nats::ConnectOptions::new().name("berth-sim"),
    )
    .await
    {
        client = near.map_err(connect_error)?;
    }

    let fleet = Arc::new(fleet::Fleet::new(&config.cluster, config.instances));
    let mut tasks = JoinSet::new();
    // Beats start with the first registration: the control plane judges each instance
    // from its own registration on.
    tasks.spawn(fleet::heartbeats(
        client.clone(),
        fleet.clone(),
        config.heartbeat_interval,
    ));
    let shape = fleet::Shape {
        cpu: config.cpu,
        memory: config.memory,
    };
    let started = std::time::Instant::now();
    fleet::register_all(&client, &fleet, &shape, &known)
        .await
        .map_err(|error| SimError::Register {
            cluster: config.cluster.clone(),
            error,
        })?;
    let arns = fleet.arns();
    tracing::info!(instances = arns.len(), elapsed = ?started.elapsed(), "hollow instances registered");
    if let Some(d) = &data_dir {
        let mut kept = arns.clone();
        kept.extend(known.iter().skip(arns.len()).cloned());
        d.store(&config.cluster, &kept)?;
    }

    let follower =
        engine::Follower::create(&async_nats::jetstream::new(client.clone()), &config.cluster)
            .await
            .map_err(|reason| SimError::Follow {
                cluster: config.cluster.clone(),
                reason,
            })?;
    let script = play::Script {
        cluster: config.cluster.clone(),
        start_delay: config.start_delay,
        run_time: config.run_time,
        exit_code: config.exit_code,
    };
    engine::spawn(
        &mut tasks,
        client.clone(),
        fleet,
        script,
        follower,
        config.reports_in_flight.max(1),
    );
    tracing::info!("berth-agent ready sim={}", arns.len());
    Ok(SimHandle {
        arns,
        client,
        tasks,
        _data_dir: data_dir,
    })
}

/// Runs the sim until `shutdown` completes.
pub async fn run(config: SimConfig, shutdown: impl Future<Output = ()>) -> Result<(), SimError> {
    tokio::pin!(shutdown);
    let handle = tokio::select! {
        started = start(config) => started?,
        _ = &mut shutdown => return Ok(()),
    };
    shutdown.await;
    handle.stop().await;
    Ok(())
}

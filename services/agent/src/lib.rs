//! `berth-agent`, one per host: registers the host as a container instance (keeping its
//! identity in its data directory), follows its task records (a snapshot of the last
//! record per task, then live on core NATS where `BERTH_STATE` republishes them, see
//! `follow`) and hands each task to its own actor
//! ([`task::TaskActor`]), which drives the task's containers through the runtime chosen
//! at start-up ([`runtime::Runtime`], `--runtime`) and reports their state changes. It
//! heartbeats on the host's subject and serves the containers' output on the host's log
//! subject ([`log_service`]). `main.rs` parses flags and calls [`run_blocking`];
//! `berth-agent --sim N` runs hollow instances instead: from `berth-sim`, sharing one
//! connection, or ([`fleet`]) N agents of real shape with the hollow runtime.

pub mod client;
pub mod config;
pub mod datadir;
pub mod error;
pub mod fleet;
pub mod host;
mod log_service;
pub mod runtime;
mod task;

/// The process runtime's shim (this binary's hidden `shim` subcommand) and cgroups, at the
/// crate root for `main.rs` and the end-to-end tests.
pub use runtime::process::{cgroup, shim};

pub use config::AgentConfig;
pub use error::AgentError;

use actix::prelude::*;
use berth_client::{Backoff, Client};
use berth_messages::agent::Heartbeat;
use berth_messages::api::{ContainerInstanceResponse, RegisterContainerInstanceRequest};
use berth_messages::command::Action;
use berth_messages::model::{Task, TaskDefinition, TaskStatus};
use berth_messages::subjects::{self, StateKey};
use berth_messages::{arn, codec, streams, ErrorType};
use dashmap::DashMap;
use datadir::{DataDir, Identity};
use futures::StreamExt;
use runtime::hollow::HollowRuntime;
use runtime::process::ProcessRuntime;
use runtime::Runtime;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use task::TaskActor;

/// Longest wait between two attempts to reach the control plane or the journal.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Snapshot consumers being created at once in this process (a `--sim` fleet holds
/// thousands of agents; a real agent creates one at a time anyway).
static CONSUMER_CREATIONS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(32);
/// How often an agent looks whether its client reconnected.
const RECONNECT_CHECK: Duration = Duration::from_millis(250);
/// A snapshot consumer left behind (its agent died) is deleted by the server after this.
const SNAPSHOT_CONSUMER_INACTIVE: Duration = Duration::from_secs(10);
const SNAPSHOT_BATCH: usize = 500;
const SNAPSHOT_PULL_EXPIRY: Duration = Duration::from_secs(5);
/// A snapshot that delivers nothing for this long is abandoned and taken again.
const SNAPSHOT_IDLE: Duration = Duration::from_secs(15);
/// Attempts at creating the snapshot consumer: generous (the server may be busy with a
/// whole fleet's), and given up after [`IMPAIRED_AFTER`] to report the agent impaired.
const CONSUMER_PATIENCE: berth_journal::recovery::Patience = berth_journal::recovery::Patience {
    attempt_timeout: Duration::from_secs(1),
    max_attempt_timeout: Duration::from_secs(5),
    give_up_after: Some(IMPAIRED_AFTER),
    max_pause: berth_journal::recovery::MAX_PAUSE,
};
/// How long a snapshot may fail before the agent reports itself impaired.
pub const IMPAIRED_AFTER: Duration = Duration::from_secs(15);
const IMPAIRED_FIRST_BACKOFF: Duration = Duration::from_secs(1);
const IMPAIRED_MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Spread of an agent's reconnections: a fleet that lost its server comes back over this
/// rather than in one instant.
const RECONNECT_JITTER: Duration = Duration::from_secs(1);
/// After a reconnection, the snapshot is taken again within this.
const RESYNC_SPREAD: Duration = Duration::from_secs(2);

/// What the agent's tasks share.
pub(crate) struct Shared {
    pub cluster: String,
    pub instance_id: String,
    pub client: async_nats::Client,
    pub api: Client,
    pub state: async_nats::jetstream::stream::Stream<()>,
    pub runtime: Arc<dyn Runtime>,
    pub default_stop_timeout: Duration,
    /// The actor of every task this agent is working on, by task id.
    pub tasks: DashMap<String, (u64, Addr<TaskActor>)>,
    definitions: DashMap<String, Arc<TaskDefinition>>,
    arbiter: ArbiterHandle,
    next_actor: AtomicU64,
    /// What the heartbeats say about following the host's tasks.
    following: std::sync::Mutex<Following>,
    /// The version (stream sequence) of the last record handed on, by task id: live
    /// records and a snapshot's may arrive in either order.
    versions: DashMap<String, u64>,
}

/// How following the host's tasks fares, as the heartbeats report it.
#[derive(Debug, Clone, Default)]
struct Following {
    /// Why no snapshot can be taken, after [`IMPAIRED_AFTER`] of trying.
    impaired: Option<String>,
    /// When (epoch seconds) the latest snapshot was in.
    synced_at: Option<f64>,
}

impl Shared {
    fn following(&self) -> Following {
        self.following.lock().map(|f| f.clone()).unwrap_or_default()
    }

    fn set_following(&self, change: impl FnOnce(&mut Following)) {
        if let Ok(mut f) = self.following.lock() {
            change(&mut f);
        }
    }

    /// A task definition by ARN from the journal. Transient failures are retried; the
    /// error is for definitions that cannot be had at all.
    pub async fn task_definition(
        &self,
        task_definition_arn: &str,
    ) -> Result<Arc<TaskDefinition>, String> {
        if let Some(found) = self.definitions.get(task_definition_arn) {
            return Ok(found.clone());
        }
        let unusable = |why: String| {
            format!(
                "{}: task definition {task_definition_arn} {why}",
                runtime::CANNOT_START
            )
        };
        let reference = arn::task_definition_ref(task_definition_arn)
            .filter(|r| r.revision.is_some())
            .ok_or_else(|| unusable("is not a task definition ARN".into()))?;
        let subject =
            subjects::task_definition(&reference.family, reference.revision.unwrap_or_default());
        let mut wait = Duration::from_millis(100);
        loop {
            use async_nats::jetstream::stream::DirectGetErrorKind;
            match self
                .state
                .direct_get_last_for_subject(subject.as_str())
                .await
            {
                Ok(msg) => {
                    let definition: TaskDefinition = codec::decode_record(&msg.payload)
                        .map_err(|e| unusable(format!("cannot be decoded: {e}")))?;
                    let definition = Arc::new(definition);
                    self.definitions
                        .insert(task_definition_arn.to_string(), definition.clone());
                    return Ok(definition);
                }
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => {
                    return Err(unusable("does not exist".into()))
                }
                Err(e) => {
                    tracing::info!(error = %e, subject, "cannot read a task definition yet");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Hands on a task record of version `sequence` unless a newer one was.
    fn offer(self: &Arc<Self>, task_id: &str, sequence: u64, payload: &[u8]) {
        // The task id is copied only for a task seen for the first time.
        match self.versions.get_mut(task_id) {
            Some(version) if *version >= sequence => return,
            Some(mut version) => *version = sequence,
            None => {
                self.versions.insert(task_id.to_string(), sequence);
            }
        }
        match codec::decode_record::<Task>(payload) {
            Ok(record) => self.deliver(task_id, record),
            Err(e) => {
                tracing::warn!(task = task_id, sequence, error = %e, "undecodable task record")
            }
        }
    }

    /// Hands a journal record to its task's actor, starting one if needed. Stopped tasks
    /// get no actor unless something of theirs still runs here.
    fn deliver(self: &Arc<Self>, task_id: &str, record: Task) {
        let existing = self
            .tasks
            .get(task_id)
            .map(|entry| entry.value().1.clone())
            .filter(Addr::connected);
        if let Some(addr) = existing {
            addr.do_send(task::Record(Box::new(record)));
            return;
        }
        if record.last_status == TaskStatus::Stopped && !self.runtime.any_live(task_id) {
            return;
        }
        let actor_id = self.next_actor.fetch_add(1, Ordering::Relaxed);
        let agent: Arc<dyn task::Agent> = self.clone();
        let id = task_id.to_string();
        let addr = TaskActor::start_in_arbiter(&self.arbiter, move |_| {
            TaskActor::new(agent, actor_id, id, record)
        });
        self.tasks.insert(task_id.to_string(), (actor_id, addr));
    }
}

impl task::Agent for Shared {
    fn cluster(&self) -> &str {
        &self.cluster
    }

    fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.runtime
    }

    fn default_stop_timeout(&self) -> Duration {
        self.default_stop_timeout
    }

    fn task_definition(
        self: Arc<Self>,
        arn: String,
    ) -> futures::future::BoxFuture<'static, Result<Arc<TaskDefinition>, String>> {
        Box::pin(async move { Shared::task_definition(&self, &arn).await })
    }

    fn reports(&self, task_id: &str) -> Arc<dyn task::Reports> {
        Arc::new(client::Reporter::start(
            self.api.clone(),
            task_id.to_string(),
        ))
    }

    fn forget(&self, task_id: &str, actor_id: u64) {
        self.tasks.remove_if(task_id, |_, (id, _)| *id == actor_id);
    }
}

/// Connects to NATS with Berth's client settings, on a cluster to the server that leads
/// the state stream (which republishes the host's task records and serves its snapshots).
async fn connect(config: &AgentConfig) -> Result<async_nats::Client, AgentError> {
    berth_journal::connect_near(
        &berth_journal::JournalConfig {
            servers: config.nats.clone(),
            name: "berth-agent".into(),
            reconnect_jitter: RECONNECT_JITTER,
            ..Default::default()
        },
        berth_messages::streams::STATE,
    )
    .await
    .map_err(|e| AgentError::Connect(e.to_string()))
}

/// Registers (or re-registers) this host; waits for the control plane if none answers.
async fn register(
    api: &Client,
    request: &RegisterContainerInstanceRequest,
    cluster: &str,
) -> Result<String, AgentError> {
    let backoff = Backoff {
        first: Duration::from_millis(100),
        max: MAX_BACKOFF,
        growth: 2.0,
    };
    let registered = api
        .call_until_answered::<_, ContainerInstanceResponse>(
            Action::RegisterContainerInstance,
            request,
            None,
            backoff,
        )
        .await;
    match registered {
        Ok(reply) => Ok(reply.container_instance.container_instance_arn),
        Err(e) if e.error_type() == ErrorType::ClusterNotFoundException => {
            Err(AgentError::ClusterMissing(cluster.to_string()))
        }
        Err(e) => Err(AgentError::Registration(e)),
    }
}

/// Follows the host's task records and feeds the task actors. `ready` is answered once
/// the first snapshot is in.
///
/// Live records come on core NATS, where `BERTH_STATE` republishes every task record as
/// it stores it (`subjects::host_tasks`): a subscription costs nats-server a lookup per
/// record, where a long-lived consumer per host would cost a scan of every other host's
/// records between two of its own. The subscription is made first; then a snapshot
/// (the last record of every task of the host, through a consumer that lives only as
/// long as the snapshot) covers what was stored before it; records are handed on in
/// version order per task (a record older than one already handed on is dropped). A
/// reconnection may have lost live records, so it brings a new snapshot, after a
/// jittered pause and at most [`CONSUMER_CREATIONS`] at once in this process, so that a
/// fleet reconnecting together does not take its snapshots in one burst. A snapshot that
/// cannot be had for [`IMPAIRED_AFTER`] is reported loudly (an error in the log, the
/// instance IMPAIRED through the heartbeats) and asked for again with backoff.
async fn follow(shared: Arc<Shared>, ready: tokio::sync::oneshot::Sender<()>) {
    use berth_journal::recovery::LeaderSignals;
    let mut ready = Some(ready);
    let mut signals = LeaderSignals::reconnections(&shared.client, RECONNECT_CHECK).await;
    let mut refused_wait = IMPAIRED_FIRST_BACKOFF;
    let subject = subjects::host_tasks(&shared.cluster, &shared.instance_id);
    loop {
        let mut live = match shared.client.subscribe(subject.clone()).await {
            Ok(live) => live,
            Err(e) => {
                tracing::warn!(error = %e, "cannot subscribe to this host's task records");
                tokio::time::sleep(jittered(refused_wait)).await;
                refused_wait = (refused_wait * 2).min(IMPAIRED_MAX_BACKOFF);
                continue;
            }
        };
        'snapshots: loop {
            match snapshot(&shared, &mut signals).await {
                Ok(tasks) => {
                    refused_wait = IMPAIRED_FIRST_BACKOFF;
                    shared.set_following(|f| {
                        if f.impaired.take().is_some() {
                            tracing::info!("following this host's tasks again");
                        }
                        f.synced_at = Some(berth_messages::now_epoch_seconds());
                    });
                    tracing::debug!(tasks, "task snapshot taken");
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                }
                Err(reason) => {
                    tracing::error!(
                        error = %reason,
                        retry_in = ?refused_wait,
                        "cannot follow this host's tasks: no task placed here will run until this is fixed"
                    );
                    shared.set_following(|f| f.impaired = Some(reason));
                    tokio::time::sleep(jittered(refused_wait)).await;
                    refused_wait = (refused_wait * 2).min(IMPAIRED_MAX_BACKOFF);
                    continue 'snapshots;
                }
            }
            loop {
                tokio::select! {
                    message = live.next() => match message {
                        Some(message) => {
                            let (Some(task_id), Some(sequence)) = (
                                subjects::parse_host_task(&message.subject),
                                republished_sequence(&message),
                            ) else {
                                continue;
                            };
                            shared.offer(task_id, sequence, &message.payload);
                        }
                        None => break 'snapshots,
                    },
                    signal = signals.next() => {
                        tracing::info!(?signal, "connection changed; taking a new snapshot of this host's tasks");
                        // Spread a fleet's snapshots over a moment instead of one burst.
                        tokio::time::sleep(jittered(RESYNC_SPREAD)).await;
                        continue 'snapshots;
                    }
                }
            }
        }
        tracing::warn!("the subscription to this host's task records ended; subscribing again");
    }
}

/// The stream sequence of a republished record (`Nats-Sequence`).
fn republished_sequence(message: &async_nats::Message) -> Option<u64> {
    message
        .headers
        .as_ref()?
        .get(async_nats::header::NATS_SEQUENCE)?
        .as_str()
        .parse()
        .ok()
}

/// Hands the last record of every task of the host to the actors, through a consumer
/// with `LastPerSubject` that is deleted once it has delivered them; returns how many.
async fn snapshot(
    shared: &Arc<Shared>,
    signals: &mut berth_journal::recovery::LeaderSignals,
) -> Result<usize, String> {
    use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
    use berth_journal::recovery::retry;
    let filter = subjects::tasks_of_instance(&shared.cluster, &shared.instance_id);
    let create = || async {
        let _turn = CONSUMER_CREATIONS.acquire().await;
        let consumer = shared
            .state
            .create_consumer(pull::Config {
                filter_subject: filter.clone(),
                deliver_policy: DeliverPolicy::LastPerSubject,
                ack_policy: AckPolicy::None,
                memory_storage: true,
                num_replicas: 1,
                inactive_threshold: SNAPSHOT_CONSUMER_INACTIVE,
                ..Default::default()
            })
            .await
            .map_err(|e| AgentError::Follow(berth_journal::error_chain(&e)))?;
        let pending = consumer.cached_info().num_pending;
        let name = consumer.cached_info().name.clone();
        let messages = consumer
            .stream()
            .max_messages_per_batch(SNAPSHOT_BATCH)
            .expires(SNAPSHOT_PULL_EXPIRY)
            .messages()
            .await
            .map_err(|e| AgentError::Follow(berth_journal::error_chain(&e)))?;
        Ok::<_, AgentError>((messages, pending, name))
    };
    let (mut messages, mut pending, name) =
        retry("task snapshot", CONSUMER_PATIENCE, Some(signals), create)
            .await
            .map_err(|e| berth_journal::error_chain(&e))?;
    let mut tasks = std::collections::HashSet::new();
    while pending > 0 {
        let next = tokio::time::timeout(SNAPSHOT_IDLE, messages.next()).await;
        let message = match next {
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(e))) => return Err(format!("task snapshot failed: {e}")),
            Ok(None) => return Err("task snapshot ended early".into()),
            Err(_) => return Err(format!("task snapshot stalled for {SNAPSHOT_IDLE:?}")),
        };
        let info = message
            .info()
            .map_err(|e| format!("task record without metadata: {e}"))?;
        pending = info.pending;
        let sequence = info.stream_sequence;
        if let Some(StateKey::Task { task_id, .. }) = subjects::parse_state(&message.subject) {
            tasks.insert(task_id.to_string());
            shared.offer(task_id, sequence, &message.payload);
        }
    }
    drop(messages);
    if let Err(e) = shared.state.delete_consumer(&name).await {
        tracing::debug!(error = %e, "snapshot consumer not deleted; it expires on its own");
    }
    // Versions of tasks the journal no longer holds (purged) and no actor works on are
    // not needed to order anything any more.
    shared
        .versions
        .retain(|id, _| tasks.contains(id) || shared.tasks.contains_key(id));
    Ok(tasks.len())
}

/// A random share (from half to all) of `spread`, so that agents started or reconnected
/// together do not act in step.
fn jittered(spread: Duration) -> Duration {
    spread.mul_f64(0.5 + rand::random::<f64>() * 0.5)
}

async fn heartbeats(shared: Arc<Shared>, arn: String, interval: Duration) {
    let subject = subjects::heartbeat(&shared.cluster, &shared.instance_id);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let following = shared.following();
        let beat = Heartbeat {
            container_instance_arn: arn.clone(),
            agent_version: host::AGENT_VERSION.into(),
            sent_at: berth_messages::now_epoch_seconds(),
            running_tasks: u32::try_from(shared.tasks.len()).unwrap_or(u32::MAX),
            impaired: following.impaired,
            tasks_synced_at: following.synced_at,
        };
        match codec::encode_record(&beat) {
            Ok(body) => {
                if let Err(e) = shared.client.publish(subject.clone(), body.into()).await {
                    tracing::debug!(error = %e, "heartbeat not sent");
                }
            }
            Err(e) => tracing::warn!(error = %e, "heartbeat cannot be encoded"),
        }
    }
}

/// Runs the agent until `shutdown` completes. Must run inside an actix `System` (see
/// [`run_blocking`]): the task actors live on its arbiter.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    run_host(config, shutdown, None).await
}

/// A host of a `--sim` fleet of real shape: its directory inside the fleet's, and where
/// it tells its instance ARN once it follows its tasks (instead of printing the ready
/// line).
pub(crate) struct FleetHost {
    pub data: DataDir,
    pub ready: tokio::sync::oneshot::Sender<String>,
}

/// [`run`], or one host of a fleet.
pub(crate) async fn run_host(
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
    fleet: Option<FleetHost>,
) -> Result<(), AgentError> {
    // The lock comes first: a second agent on the same directory disturbs nothing.
    let (data, ready) = match fleet {
        Some(host) => (host.data, Some(host.ready)),
        None => (DataDir::open(&config.data_dir)?, None),
    };
    let identity = data.identity()?;
    if let Some(id) = &identity {
        if id.cluster != config.cluster {
            return Err(AgentError::WrongCluster {
                path: data.root().to_path_buf(),
                arn: id.container_instance_arn.clone(),
                cluster: id.cluster.clone(),
                wanted: config.cluster.clone(),
            });
        }
    }
    let request = host::registration(&config, identity.map(|i| i.container_instance_arn))?;
    let client = connect(&config).await?;
    let api = client::api_client(client.clone());
    tokio::pin!(shutdown);
    let instance_arn = tokio::select! {
        registered = register(&api, &request, &config.cluster) => registered?,
        _ = &mut shutdown => return Ok(()),
    };
    data.save_identity(&Identity {
        cluster: config.cluster.clone(),
        container_instance_arn: instance_arn.clone(),
    })?;
    let instance_id = arn::container_instance_id(&instance_arn).1.to_string();
    tracing::info!(instance = %instance_arn, "registered");

    let js = async_nats::jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(10))
        .build(client.clone());
    let state = js
        .get_stream_no_info(streams::STATE)
        .await
        .map_err(|e| AgentError::Follow(e.to_string()))?;
    let runtime = start_runtime(&config, &data)?;
    let shared = Arc::new(Shared {
        cluster: config.cluster.clone(),
        instance_id,
        client: client.clone(),
        api,
        state,
        runtime,
        default_stop_timeout: config.default_stop_timeout(),
        tasks: DashMap::new(),
        definitions: DashMap::new(),
        arbiter: System::current().arbiter().clone(),
        next_actor: AtomicU64::new(0),
        following: std::sync::Mutex::new(Following::default()),
        versions: DashMap::new(),
    });
    let beats = tokio::spawn(heartbeats(
        shared.clone(),
        instance_arn.clone(),
        config.heartbeat_interval(),
    ));
    let log_service = {
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = log_service::serve(shared).await {
                tracing::error!(error = %e, "log service failed");
            }
        })
    };
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let follower = tokio::spawn(follow(shared.clone(), ready_tx));
    tokio::select! {
        _ = ready_rx => {
            tracing::info!(instance = %instance_arn, "berth-agent ready");
            match ready {
                Some(tx) => {
                    let _ = tx.send(instance_arn.clone());
                }
                None => eprintln!("berth-agent ready instance={instance_arn}"),
            }
            shutdown.await;
        }
        _ = &mut shutdown => {}
    }

    follower.abort();
    if config.stop_tasks_on_exit {
        let actors: Vec<Addr<TaskActor>> = shared
            .tasks
            .iter()
            .map(|entry| entry.value().1.clone())
            .collect();
        tracing::info!(tasks = actors.len(), "stopping tasks before exiting");
        let stops = actors
            .iter()
            .map(|a| a.send(task::Shutdown { stop_tasks: true }));
        let bound = config.default_stop_timeout() + Duration::from_secs(60);
        if tokio::time::timeout(bound, futures::future::join_all(stops))
            .await
            .is_err()
        {
            tracing::warn!("some tasks were not reported stopped before exiting");
        }
    }
    beats.abort();
    log_service.abort();
    if let Err(e) = client.flush().await {
        tracing::debug!(error = %e, "flush on exit failed");
    }
    drop(data);
    Ok(())
}

/// The runtime `--runtime` names.
fn start_runtime(config: &AgentConfig, data: &DataDir) -> Result<Arc<dyn Runtime>, AgentError> {
    Ok(match config.runtime {
        runtime::Kind::Process => Arc::new(ProcessRuntime::new(
            data.tasks_dir(),
            shim_executable()?,
            cgroup::Cgroups::detect(),
            config.log_max_bytes,
            config.log_files,
        )),
        runtime::Kind::Sim => Arc::new(HollowRuntime::new(config.hollow_script())),
    })
}

/// This executable, which is also the shim. A binary replaced on disk while the agent runs
/// (an upgrade, a rebuild) shows as "<path> (deleted)": the shim is the new one.
fn shim_executable() -> std::io::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let text = exe.to_string_lossy();
    Ok(match text.strip_suffix(" (deleted)") {
        Some(path) => std::path::PathBuf::from(path),
        None => exe,
    })
}

/// Runs `berth-agent --sim N` until `shutdown`: hollow instances from `berth-sim` sharing
/// one connection (`--sim-shape shared`), or N agents of real shape (`real`, see
/// [`fleet`]).
pub async fn run_sim(
    config: AgentConfig,
    instances: usize,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    match config.sim_shape {
        config::SimShape::Shared => run_shared_sim(config, instances, shutdown).await,
        config::SimShape::Real => fleet::run(config, instances, shutdown).await,
    }
}

async fn run_shared_sim(
    config: AgentConfig,
    instances: usize,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let sim = berth_sim::SimConfig {
        cluster: config.cluster.clone(),
        nats: config.nats.clone(),
        instances,
        cpu: config.sim_cpu,
        memory: config.sim_memory,
        start_delay: Duration::from_millis(config.sim_start_delay_ms),
        run_time: Duration::from_millis(config.sim_run_ms),
        exit_code: config.sim_exit_code,
        heartbeat_interval: config.heartbeat_interval(),
        data_dir: Some(config.data_dir.clone()),
        reports_in_flight: berth_sim::engine::REPORTS_IN_FLIGHT,
    };
    tokio::pin!(shutdown);
    let handle = tokio::select! {
        started = berth_sim::start(sim) => started.map_err(|e| AgentError::Sim(e.to_string()))?,
        _ = &mut shutdown => return Ok(()),
    };
    eprintln!("berth-agent ready sim={}", handle.instance_arns().len());
    shutdown.await;
    handle.stop().await;
    Ok(())
}

/// Builds an actix System on a multi-thread tokio runtime and runs `future` on it.
pub fn block_on<F: Future>(future: F) -> Result<F::Output, AgentError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("berth-agent")
        .build()?;
    let system = System::with_tokio_rt(move || runtime);
    Ok(system.block_on(future))
}

/// Runs the agent (or `--sim` instances) on its own actix System until `shutdown`.
pub fn run_blocking(
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    match config.sim {
        Some(instances) => block_on(run_sim(config, instances, shutdown))?,
        None => block_on(run(config, shutdown))?,
    }
}

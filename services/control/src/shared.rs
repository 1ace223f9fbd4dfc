//! What every part of a replica shares: the journal, the view, ARN minting, the actor
//! registries and counters. Cheap to clone (`Arc`).

use crate::actors::{instance::InstanceActor, task::TaskActor};
use crate::config::ControlConfig;
use actix::{Actor, Addr};
use actix_rt::ArbiterHandle;
use berth_journal::{view::View, Journal, JournalError};
use berth_messages::arn::ArnScope;
use berth_messages::ApiError;
use dashmap::DashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Failure of a command's execution.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// A definitive answer: it becomes the command's outcome.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The journal could not be reached or kept conflicting: no outcome is written and
    /// the command is redelivered later.
    #[error("journal unavailable: {0}")]
    Transient(JournalError),
    /// A later delivery of the command fenced this one off an instance it was about to
    /// allocate on: this executor stops without an outcome, acknowledgement or retry
    /// (the later delivery finishes the command).
    #[error("the command's claim {claim} was fenced off by a later delivery")]
    ClaimLost { claim: u32 },
}

impl From<JournalError> for ExecError {
    fn from(e: JournalError) -> Self {
        match e {
            JournalError::Decode { .. } | JournalError::Encode(_) => {
                Self::Api(ApiError::server(e.to_string()))
            }
            other => Self::Transient(other),
        }
    }
}

impl From<ExecError> for ApiError {
    /// What an API caller is told when a command could not be answered by an outcome.
    fn from(e: ExecError) -> Self {
        match e {
            ExecError::Api(a) => a,
            other => ApiError::server(other.to_string()),
        }
    }
}

pub type ExecResult<T> = Result<T, ExecError>;

/// Counters of a replica (exposed through `$SRV.STATS` data).
#[derive(Debug, Default)]
pub struct Metrics {
    pub commands: AtomicU64,
    pub placements: AtomicU64,
    pub placement_failures: AtomicU64,
    pub conflicts: AtomicU64,
    pub retries: AtomicU64,
    pub group_commits: AtomicU64,
    pub agent_flips: AtomicU64,
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
    pub fn snapshot(&self) -> serde_json::Value {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "commands": g(&self.commands),
            "placements": g(&self.placements),
            "placementFailures": g(&self.placement_failures),
            "conflicts": g(&self.conflicts),
            "retries": g(&self.retries),
            "groupCommits": g(&self.group_commits),
            "agentFlips": g(&self.agent_flips),
        })
    }
}

pub struct SharedInner {
    pub journal: Journal,
    pub view: View,
    pub arns: ArnScope,
    pub config: ControlConfig,
    pub arbiter: ArbiterHandle,
    pub metrics: Metrics,
    /// Resources promised to placements whose instance writes are in flight.
    pub reservations: Arc<crate::reservations::Reservations>,
    /// The replica's reply inbox for command outcomes (started on first use).
    pub replies: tokio::sync::OnceCell<Arc<crate::api::Replies>>,
    /// Command ids this replica's API minted (random) for calls still waiting: on its
    /// first delivery such a command cannot have an outcome yet, so the processor does
    /// not look one up.
    pub fresh_commands: dashmap::DashSet<String>,
    instances: DashMap<(String, String), Addr<InstanceActor>>,
    tasks: DashMap<(String, String), Addr<TaskActor>>,
}

/// Handle shared by the API, the command processor and the actors.
#[derive(Clone)]
pub struct Shared(Arc<SharedInner>);

impl std::ops::Deref for Shared {
    type Target = SharedInner;
    fn deref(&self) -> &SharedInner {
        &self.0
    }
}

impl Shared {
    pub fn new(
        journal: Journal,
        view: View,
        config: ControlConfig,
        arbiter: ArbiterHandle,
    ) -> Self {
        Self(Arc::new(SharedInner {
            journal,
            view,
            arns: config.arns(),
            config,
            arbiter,
            metrics: Metrics::default(),
            reservations: Arc::default(),
            replies: tokio::sync::OnceCell::new(),
            fresh_commands: dashmap::DashSet::new(),
            instances: DashMap::new(),
            tasks: DashMap::new(),
        }))
    }

    /// The actor that owns writes to one instance record in this replica.
    pub fn instance_actor(&self, cluster: &str, instance_id: &str) -> Addr<InstanceActor> {
        let key = (cluster.to_string(), instance_id.to_string());
        if let Some(addr) = self.instances.get(&key).map(|a| a.clone()) {
            if addr.connected() {
                return addr;
            }
        }
        let shared = self.clone();
        let (c, i) = key.clone();
        let addr = self
            .instances
            .entry(key)
            .and_modify(|a| {
                if !a.connected() {
                    let shared = shared.clone();
                    let (c, i) = (c.clone(), i.clone());
                    *a = InstanceActor::start_in_arbiter(&shared.arbiter.clone(), move |_| {
                        InstanceActor::new(shared, c, i)
                    });
                }
            })
            .or_insert_with(|| {
                let arbiter = shared.arbiter.clone();
                InstanceActor::start_in_arbiter(&arbiter, move |_| InstanceActor::new(shared, c, i))
            })
            .clone();
        addr
    }

    /// The actor that owns writes to one task record in this replica.
    pub fn task_actor(&self, cluster: &str, task_id: &str) -> Addr<TaskActor> {
        let key = (cluster.to_string(), task_id.to_string());
        if let Some(addr) = self.tasks.get(&key).map(|a| a.clone()) {
            if addr.connected() {
                return addr;
            }
        }
        let shared = self.clone();
        let (c, t) = key.clone();
        self.tasks
            .entry(key)
            .and_modify(|a| {
                if !a.connected() {
                    let shared = shared.clone();
                    let (c, t) = (c.clone(), t.clone());
                    *a = TaskActor::start_in_arbiter(&shared.arbiter.clone(), move |_| {
                        TaskActor::new(shared, c, t)
                    });
                }
            })
            .or_insert_with(|| {
                let arbiter = shared.arbiter.clone();
                TaskActor::start_in_arbiter(&arbiter, move |_| TaskActor::new(shared, c, t))
            })
            .clone()
    }

    /// Forgets a stopped task actor (called from its `stopped`).
    pub fn forget_task_actor(&self, cluster: &str, task_id: &str, addr: &Addr<TaskActor>) {
        self.tasks
            .remove_if(&(cluster.to_string(), task_id.to_string()), |_, a| {
                a == addr
            });
    }
}

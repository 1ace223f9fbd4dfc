//! The scheduling loop. One task owns all state: the held jobs in priority order, the
//! pool (journal records plus this scheduler's own reservations), the API calls in flight
//! and the counters. Every event (a job, a journal record, an answered call, a tick) may
//! change what fits, and is followed by a scheduling pass that walks the held jobs from
//! the highest priority down, chooses an instance for each task that fits and starts
//! them with StartTask on the chosen instances.
//!
//! A job's message stays unacknowledged while the job is held (its ack deadline extended
//! with progress acks) and is acknowledged only after the job's outcome is published; a
//! job redelivered after a crash first looks up the tasks an earlier attempt started (they
//! carry the [`jobs::JOB_TAG`] tag) so it starts only what is missing.

use crate::api::Api;
use crate::config::Config;
use crate::follower::{self, Event};
use crate::jobs::{self, Job, JobOutcome, JobStatus, PlacedTask};
use crate::pool::{dominates, Choice, Pool, Unplaced};
use crate::queue::{JobKey, JobQueue};
use crate::Stats;
use async_nats::jetstream::{self, consumer::pull, AckKind};
use async_nats::HeaderMap;
use berth_client::ClientError;
use berth_messages::api::{StartTaskRequest, TasksResponse};
use berth_messages::model::{Allocation, Tag, Task, TaskDefinition};
use berth_messages::{arn, headers, validate};
use berth_placement::{demand_of, Demand};
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How often held jobs are checked (deadlines, progress acks, look-ups to retry).
const TICK: Duration = Duration::from_millis(250);
/// Ack wait of the jobs consumer; held jobs send a progress ack well within it.
const ACK_WAIT: Duration = Duration::from_secs(30);
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// How long a `family` reference (latest ACTIVE revision) is trusted.
const FAMILY_CACHE_TTL: Duration = Duration::from_secs(10);
/// Delay before a look-up that went unanswered is tried again.
const LOOKUP_RETRY: Duration = Duration::from_secs(1);
/// How long shutdown waits for calls in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// StartTask takes at most ten container instances.
const MAX_PER_START: usize = 10;
/// A StartTask whose result is unknown is sent again with the same command id this many
/// times (then its tasks are looked up instead), waiting this long more each time.
const SAME_ID_ATTEMPTS: u32 = 5;
const SAME_ID_BACKOFF: Duration = Duration::from_millis(500);

/// Why the scheduler could not run.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot connect to NATS: {0}")]
    Connect(String),
    #[error("cannot set up {what}: {reason}")]
    Setup { what: &'static str, reason: String },
}

/// Runs a scheduler until `shutdown` completes; returns its final counters. On shutdown
/// it waits briefly for the calls in flight, then hands every unfinished job back to the
/// stream (NAK) for another scheduler, or for this one when it restarts.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<Stats, SchedulerError> {
    validate::cluster_name(&config.cluster).map_err(|e| SchedulerError::Config(e.message))?;
    if config.batch == 0 || config.max_in_flight == 0 || config.max_held == 0 {
        return Err(SchedulerError::Config(
            "batch, max-in-flight and max-held must be at least 1".into(),
        ));
    }
    let client = connect(&config).await?;
    let js = jetstream::new(client.clone());
    let setup = |what: &'static str| {
        move |e: async_nats::Error| SchedulerError::Setup {
            what,
            reason: e.to_string(),
        }
    };
    let stream = jobs::provision(&js, config.replicas)
        .await
        .map_err(setup("the BERTH_JOBS stream"))?;
    let consumer: jetstream::consumer::Consumer<pull::Config> = stream
        .create_consumer(pull::Config {
            durable_name: Some(jobs::consumer_name(&config.cluster)),
            filter_subject: jobs::subject(&config.cluster),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            max_ack_pending: i64::try_from(config.max_held).unwrap_or(i64::MAX),
            max_deliver: -1,
            ..Default::default()
        })
        .await
        .map_err(|e| setup("the jobs consumer")(e.into()))?;
    let mut stats_requests = client
        .subscribe(jobs::stats_subject(&config.cluster))
        .await
        .map_err(|e| setup("the stats subscription")(e.into()))?;

    let (events_tx, mut events) = mpsc::channel(1024);
    let follower = tokio::spawn(follower::follow(
        client.clone(),
        config.cluster.clone(),
        events_tx,
    ));
    let _follower = AbortOnDrop(follower);

    let mut state = State::new(&config, client.clone());
    tokio::pin!(shutdown);

    // Decide nothing before the pool is complete.
    tracing::info!(cluster = %config.cluster, "following the cluster's instances in the journal");
    loop {
        tokio::select! {
            _ = &mut shutdown => return Ok(state.stats()),
            event = events.recv() => match event {
                Some(Event::Record { instance_id, record, version }) => {
                    state.pool.apply(&instance_id, *record, version)
                }
                Some(Event::CaughtUp) => break,
                None => return Err(SchedulerError::Setup {
                    what: "the journal follower",
                    reason: "it stopped".into(),
                }),
            }
        }
    }
    tracing::info!(
        cluster = %config.cluster,
        instances = state.pool.len(),
        "pool known; taking jobs"
    );

    let mut job_messages = open_jobs(&consumer, config.batch).await;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Reading a backlog: the pass waits until everything pending has been read (or a
    // batch of it), so that the pass orders the whole batch by priority.
    let mut gathering = 0usize;
    loop {
        let mut dirty = true;
        tokio::select! {
            _ = &mut shutdown => break,
            event = events.recv() => match event {
                Some(Event::Record { instance_id, record, version }) => {
                    state.pool.apply(&instance_id, *record, version);
                }
                Some(Event::CaughtUp) => {}
                None => {
                    tracing::error!("journal follower stopped");
                    break;
                }
            },
            Some(done) = state.work.next(), if !state.work.is_empty() => state.on_done(done).await,
            next = job_messages.next() => match next {
                Some(Ok(message)) => {
                    let more = message.info().map(|i| i.pending > 0).unwrap_or(false);
                    state.intake(message).await;
                    gathering += 1;
                    if more && gathering < config.batch && state.queue.len() < config.max_held {
                        dirty = false;
                    }
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, "jobs consumer reported an error");
                    dirty = false;
                }
                None => {
                    tracing::warn!("jobs consumer ended; reopening it");
                    tokio::time::sleep(LOOKUP_RETRY).await;
                    job_messages = open_jobs(&consumer, config.batch).await;
                }
            },
            Some(request) = stats_requests.next() => {
                dirty = false;
                if let Some(reply) = request.reply {
                    let body = serde_json::to_vec(&state.stats()).unwrap_or_default();
                    if let Err(error) = client.publish(reply, body.into()).await {
                        tracing::debug!(%error, "stats reply failed");
                    }
                }
            },
            _ = tick.tick() => state.on_tick().await,
        }
        if dirty {
            gathering = 0;
            for job_id in state.pass() {
                state.try_finish(&job_id).await;
            }
        }
    }

    // Stop pulling first: jobs handed back must not come straight back to this pull.
    drop(job_messages);
    drop(stats_requests);
    state.drain().await;
    let stats = state.stats();
    tracing::info!(
        cluster = %stats.cluster,
        placements = stats.placements,
        conflicts = stats.conflicts,
        retries = stats.retries,
        failed = stats.failed,
        jobs_placed = stats.jobs_placed,
        jobs_received = stats.jobs_received,
        "scheduler stopped"
    );
    Ok(stats)
}

async fn connect(config: &Config) -> Result<async_nats::Client, SchedulerError> {
    let addrs = config
        .nats
        .iter()
        .map(|s| s.parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SchedulerError::Connect(e.to_string()))?;
    async_nats::ConnectOptions::new()
        .name(format!("berth-priority-scheduler-{}", config.cluster))
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .connect(addrs)
        .await
        .map_err(|e| SchedulerError::Connect(e.to_string()))
}

/// The consumer's message stream; retried until it opens (the server may be restarting).
async fn open_jobs(
    consumer: &jetstream::consumer::Consumer<pull::Config>,
    batch: usize,
) -> pull::Stream {
    let mut backoff = Duration::from_millis(100);
    loop {
        match consumer
            .stream()
            .max_messages_per_batch(batch)
            .heartbeat(Duration::from_secs(2))
            .expires(Duration::from_secs(5))
            .messages()
            .await
        {
            Ok(stream) => return stream,
            Err(error) => {
                tracing::warn!(%error, "cannot read the jobs consumer; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a held job does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Look up the tasks an earlier attempt started, then resolve.
    Recover { not_before: Instant },
    /// Resolve the task definition into what one task needs.
    Resolve { not_before: Instant },
    /// Place tasks.
    Ready,
}

/// The resolved task definition and what one task of the job needs.
#[derive(Debug, Clone)]
struct Target {
    task_definition_arn: String,
    demand: Demand,
}

struct Held {
    job: Job,
    message: jetstream::Message,
    received: Instant,
    deadline: Option<Instant>,
    last_progress: Instant,
    phase: Phase,
    target: Option<Target>,
    placed: Vec<PlacedTask>,
    /// Tasks in StartTask calls not answered yet.
    starting: usize,
    /// A look-up (resolve or recover) is in flight.
    busy: bool,
    conflicts: u32,
    retries: u32,
    /// Refused placements since the job last placed a task.
    streak: u32,
    /// Why the job is waiting, from the last pass that could not place all of it.
    waiting: Option<Unplaced>,
    /// Set when the job will place nothing more; it ends once nothing is in flight.
    failure: Option<(String, String)>,
}

impl Held {
    fn wanted(&self) -> usize {
        (self.job.count as usize).saturating_sub(self.placed.len() + self.starting)
    }

    fn record(&mut self, task: &Task) -> bool {
        if self.placed.iter().any(|p| p.task_arn == task.task_arn) {
            return false;
        }
        self.placed.push(PlacedTask {
            task_arn: task.task_arn.clone(),
            container_instance_arn: task.container_instance_arn.clone(),
        });
        true
    }

    fn fail(&mut self, reason: impl Into<String>, detail: impl Into<String>) {
        self.failure
            .get_or_insert_with(|| (reason.into(), detail.into()));
    }

    /// Fails the job with the ECS error of a definitive refusal.
    fn refused(&mut self, e: ClientError) {
        let e = e.into_api_error();
        self.fail(e.error_type.as_str(), e.message);
    }
}

/// An answered API call.
enum Done {
    Resolved {
        job_id: String,
        reference: String,
        result: Result<Box<TaskDefinition>, ClientError>,
    },
    Recovered {
        job_id: String,
        result: Result<Vec<Task>, ClientError>,
    },
    Started {
        call: Box<StartCall>,
        choices: Vec<Choice>,
        result: Result<TasksResponse, ClientError>,
    },
}

/// One StartTask call, kept to be sent again with its command id if its result is
/// unknown.
#[derive(Clone)]
struct StartCall {
    job_id: String,
    command_id: String,
    request: StartTaskRequest,
    attempt: u32,
}

impl StartCall {
    fn send(self, api: Api, choices: Vec<Choice>, after: Duration) -> BoxFuture<'static, Done> {
        async move {
            if !after.is_zero() {
                tokio::time::sleep(after).await;
            }
            let result = api.start_task(&self.command_id, self.request.clone()).await;
            Done::Started {
                call: Box::new(self),
                choices,
                result,
            }
        }
        .boxed()
    }
}

struct State {
    cluster: String,
    client: async_nats::Client,
    api: Api,
    max_in_flight: usize,
    max_retries: u32,
    strict: bool,
    ambiguity_grace: Duration,
    pool: Pool,
    queue: JobQueue<Held>,
    definitions: HashMap<String, (Arc<TaskDefinition>, Instant)>,
    /// Task-definition references with a look-up in flight.
    resolving: HashSet<String>,
    work: FuturesUnordered<BoxFuture<'static, Done>>,
    stats: Stats,
}

impl State {
    fn new(config: &Config, client: async_nats::Client) -> Self {
        Self {
            cluster: config.cluster.clone(),
            api: Api::new(client.clone(), &config.cluster, config.request_timeout()),
            client,
            max_in_flight: config.max_in_flight,
            max_retries: config.max_retries,
            strict: config.strict_priority,
            ambiguity_grace: config.request_timeout(),
            pool: Pool::new(config.candidates, seed()),
            queue: JobQueue::default(),
            definitions: HashMap::new(),
            resolving: HashSet::new(),
            work: FuturesUnordered::new(),
            stats: Stats {
                cluster: config.cluster.clone(),
                ..Stats::default()
            },
        }
    }

    fn stats(&self) -> Stats {
        Stats {
            jobs_held: self.queue.len() as u64,
            tasks_waiting: self.queue.iter().map(|(_, h)| h.wanted() as u64).sum(),
            in_flight: self.work.len() as u64,
            instances: self.pool.len() as u64,
            ..self.stats.clone()
        }
    }

    async fn intake(&mut self, message: jetstream::Message) {
        let (sequence, delivered) = match message.info() {
            Ok(info) => (info.stream_sequence, info.delivered),
            Err(error) => {
                tracing::warn!(%error, "job message without JetStream metadata; ignored");
                return;
            }
        };
        let content_type = message
            .headers
            .as_ref()
            .and_then(|h| h.get(headers::CONTENT_TYPE))
            .map(|v| v.as_str().to_string());
        let job = match jobs::decode(content_type.as_deref(), &message.payload) {
            Ok(job) => job,
            Err(error) => {
                self.stats.jobs_received += 1;
                self.stats.failed += 1;
                tracing::warn!(%error, sequence, "refusing a job");
                if let Some(id) = jobs::salvage_id(content_type.as_deref(), &message.payload) {
                    let outcome = JobOutcome {
                        job_id: id,
                        cluster: self.cluster.clone(),
                        status: JobStatus::Failed,
                        priority: 0,
                        count: 0,
                        tasks: Vec::new(),
                        reason: Some(jobs::reason::INVALID.into()),
                        detail: Some(error.to_string()),
                        conflicts: 0,
                        retries: 0,
                        waited_seconds: 0.0,
                    };
                    publish_outcome(&self.client, &self.cluster, &outcome).await;
                }
                ack(&message, AckKind::Term).await;
                return;
            }
        };
        if let Some(held) = self.queue.get_mut_by_id(&job.id) {
            let held_sequence = held.message.info().ok().map(|i| i.stream_sequence);
            if held_sequence == Some(sequence) {
                // Redelivered while held here (a progress ack came late): keep the newest
                // delivery, whose ack the server expects.
                held.message = message;
            } else {
                // The same id submitted again after the de-duplication window.
                tracing::warn!(job = %job.id, sequence, "dropping a second submission of a held job id");
                ack(&message, AckKind::Term).await;
            }
            return;
        }
        self.stats.jobs_received += 1;
        let now = Instant::now();
        let phase = if delivered > 1 {
            Phase::Recover { not_before: now }
        } else {
            Phase::Resolve { not_before: now }
        };
        tracing::debug!(job = %job.id, priority = job.priority, count = job.count, delivered, "job received");
        let key = JobKey::new(job.priority, sequence);
        let id = job.id.clone();
        let held = Held {
            deadline: job
                .max_wait_seconds
                .map(|s| now + Duration::from_secs(s.min(365 * 24 * 3600))),
            job,
            message,
            received: now,
            last_progress: now,
            phase,
            target: None,
            placed: Vec::new(),
            starting: 0,
            busy: false,
            conflicts: 0,
            retries: 0,
            streak: 0,
            waiting: None,
            failure: None,
        };
        self.queue.insert(&id, key, held);
    }

    /// One scheduling pass over the held jobs, highest priority first. Returns the jobs
    /// it found unable to run, to be finished.
    fn pass(&mut self) -> Vec<String> {
        let now = Instant::now();
        let mut failed = Vec::new();
        // Demands that found no room in this pass: a job needing at least as much is
        // skipped without a search.
        let mut unfit: Vec<Demand> = Vec::new();
        // Set once a job earlier in serving order waits for a look-up: jobs after it may
        // start their own look-ups but take no capacity before it.
        let mut barrier = false;
        for key in self.queue.keys() {
            if self.work.len() >= self.max_in_flight {
                break;
            }
            let Some(held) = self.queue.get_mut(&key) else {
                continue;
            };
            if held.failure.is_some() {
                continue;
            }
            if held.busy {
                barrier = true;
                continue;
            }
            match held.phase {
                Phase::Recover { not_before } => {
                    if held.starting == 0 && now >= not_before {
                        held.busy = true;
                        barrier = true;
                        let api = self.api.clone();
                        let job_id = held.job.id.clone();
                        let started_by = held.job.effective_started_by().to_string();
                        self.work.push(
                            async move {
                                let result =
                                    api.tasks_tagged(&started_by, jobs::JOB_TAG, &job_id).await;
                                Done::Recovered { job_id, result }
                            }
                            .boxed(),
                        );
                    }
                    continue;
                }
                Phase::Resolve { not_before } => {
                    let reference = held.job.task_definition.clone();
                    match self.definitions.get(&reference) {
                        Some((td, at)) if pinned(&reference) || at.elapsed() < FAMILY_CACHE_TTL => {
                            let td = td.clone();
                            if let Err((reason, detail)) = target_of(held, &td) {
                                held.fail(reason, detail);
                                failed.push(held.job.id.clone());
                                continue;
                            }
                        }
                        _ if self.resolving.contains(&reference) => {
                            // Another job's look-up of the same reference will answer.
                            barrier = true;
                            continue;
                        }
                        _ => {
                            if now >= not_before {
                                held.busy = true;
                                barrier = true;
                                self.resolving.insert(reference.clone());
                                let api = self.api.clone();
                                let job_id = held.job.id.clone();
                                self.work.push(
                                    async move {
                                        let result = api
                                            .describe_task_definition(&reference)
                                            .await
                                            .map(Box::new);
                                        Done::Resolved {
                                            job_id,
                                            reference,
                                            result,
                                        }
                                    }
                                    .boxed(),
                                );
                            }
                            continue;
                        }
                    }
                }
                Phase::Ready => {}
            }
            if barrier {
                continue;
            }
            let Some(target) = held.target.clone() else {
                continue;
            };
            let wanted = held.wanted();
            if wanted == 0 {
                continue;
            }
            if unfit.iter().any(|u| dominates(&target.demand, u)) {
                if self.strict {
                    break;
                }
                continue;
            }
            let mut choices = Vec::new();
            while choices.len() < wanted.min(MAX_PER_START) {
                match self.pool.choose(&target.demand, now) {
                    Ok(choice) => choices.push(choice),
                    Err(unplaced) => {
                        held.waiting = Some(unplaced);
                        unfit.push(target.demand.clone());
                        break;
                    }
                }
            }
            let short = choices.len() < wanted;
            if !choices.is_empty() {
                held.starting += choices.len();
                let request = StartTaskRequest {
                    cluster: None,
                    task_definition: target.task_definition_arn.clone(),
                    container_instances: choices.iter().map(|c| c.instance_arn.clone()).collect(),
                    started_by: Some(held.job.effective_started_by().to_string()),
                    group: held.job.group.clone(),
                    overrides: held.job.overrides.clone(),
                    tags: vec![Tag {
                        key: Some(jobs::JOB_TAG.into()),
                        value: Some(held.job.id.clone()),
                    }],
                    reference_id: None,
                };
                let call = StartCall {
                    job_id: held.job.id.clone(),
                    command_id: format!("sched-{:032x}", rand::random::<u128>()),
                    request,
                    attempt: 1,
                };
                self.work
                    .push(call.send(self.api.clone(), choices, Duration::ZERO));
            }
            if self.strict && short {
                break;
            }
        }
        failed
    }

    async fn on_done(&mut self, done: Done) {
        let now = Instant::now();
        let job_id = match done {
            Done::Resolved {
                job_id,
                reference,
                result,
            } => {
                self.resolving.remove(&reference);
                let Some(held) = self.queue.get_mut_by_id(&job_id) else {
                    return;
                };
                held.busy = false;
                match result {
                    Ok(td) => {
                        let td = Arc::new(*td);
                        self.definitions.insert(reference, (td.clone(), now));
                        if let Err((reason, detail)) = target_of(held, &td) {
                            held.fail(reason, detail);
                        }
                    }
                    Err(e) if e.is_retryable() => {
                        tracing::warn!(job = %job_id, error = &e as &dyn std::error::Error, "task definition look-up unanswered; retrying");
                        held.phase = Phase::Resolve {
                            not_before: now + LOOKUP_RETRY,
                        };
                    }
                    Err(e) => held.refused(e),
                }
                job_id
            }
            Done::Recovered { job_id, result } => {
                let Some(held) = self.queue.get_mut_by_id(&job_id) else {
                    return;
                };
                held.busy = false;
                match result {
                    Ok(tasks) => {
                        for task in &tasks {
                            held.record(task);
                        }
                        if !tasks.is_empty() {
                            tracing::info!(job = %job_id, found = tasks.len(), "adopted tasks an earlier attempt started");
                        }
                        held.phase = match held.target {
                            Some(_) => Phase::Ready,
                            None => Phase::Resolve { not_before: now },
                        };
                    }
                    Err(e) if e.is_retryable() => {
                        tracing::warn!(job = %job_id, error = &e as &dyn std::error::Error, "task look-up unanswered; retrying");
                        held.phase = Phase::Recover {
                            not_before: now + LOOKUP_RETRY,
                        };
                    }
                    Err(e) => held.refused(e),
                }
                job_id
            }
            Done::Started {
                call,
                choices,
                result,
            } => {
                let job_id = call.job_id.clone();
                self.on_started(*call, choices, result, now);
                job_id
            }
        };
        self.try_finish(&job_id).await;
    }

    fn on_started(
        &mut self,
        call: StartCall,
        mut choices: Vec<Choice>,
        result: Result<TasksResponse, ClientError>,
        now: Instant,
    ) {
        let job_id = call.job_id.as_str();
        if let Err(e) = &result {
            if e.is_retryable()
                && call.attempt < SAME_ID_ATTEMPTS
                && self.queue.get_mut_by_id(job_id).is_some()
            {
                // The same command id: if the first call took effect, this one is
                // answered with its outcome; if not, it takes effect once.
                tracing::warn!(job = %job_id, command = %call.command_id, attempt = call.attempt, error = e as &dyn std::error::Error, "StartTask unanswered; sending it again with the same command id");
                let after = SAME_ID_BACKOFF * call.attempt;
                let again = StartCall {
                    attempt: call.attempt + 1,
                    ..call
                };
                self.work.push(again.send(self.api.clone(), choices, after));
                return;
            }
        }
        let Some(held) = self.queue.get_mut_by_id(job_id) else {
            for c in &choices {
                self.pool.cancel(&c.instance_id, c.reservation);
            }
            return;
        };
        held.starting = held.starting.saturating_sub(choices.len());
        match result {
            Ok(reply) => {
                for task in &reply.tasks {
                    let instance_id = arn::container_instance_id(&task.container_instance_arn).1;
                    if let Some(i) = choices.iter().position(|c| c.instance_id == instance_id) {
                        let c = choices.swap_remove(i);
                        let allocation =
                            Some(task.allocation.clone()).filter(|a| *a != Allocation::default());
                        self.pool.confirm(
                            &c.instance_id,
                            c.reservation,
                            arn::task_id(&task.task_arn).1,
                            task.version.unwrap_or(0),
                            allocation,
                        );
                    }
                    if held.record(task) {
                        self.stats.placements += 1;
                        held.streak = 0;
                    }
                }
                for failure in &reply.failures {
                    let reason = failure.reason.clone().unwrap_or_default();
                    let instance_id = failure
                        .arn
                        .as_deref()
                        .map(|a| arn::container_instance_id(a).1.to_string())
                        .unwrap_or_default();
                    if let Some(i) = choices.iter().position(|c| c.instance_id == instance_id) {
                        let c = choices.swap_remove(i);
                        self.pool.cancel(&c.instance_id, c.reservation);
                    }
                    self.pool.refuse(&instance_id, now);
                    if reason.starts_with("RESOURCE:") {
                        self.stats.conflicts += 1;
                        held.conflicts += 1;
                    }
                    self.stats.retries += 1;
                    held.retries += 1;
                    held.streak += 1;
                    tracing::debug!(job = %job_id, instance = %instance_id, %reason, "placement refused; placing again");
                    if held.streak > self.max_retries {
                        held.fail(
                            jobs::reason::CONFLICT,
                            format!(
                                "{} placements in a row were refused (last: {reason} on {instance_id})",
                                held.streak
                            ),
                        );
                    }
                    held.waiting = Some(Unplaced {
                        reason: jobs::reason::CONFLICT,
                        detail: format!("{reason} on {instance_id}"),
                    });
                }
                for c in &choices {
                    self.pool.cancel(&c.instance_id, c.reservation);
                }
            }
            Err(e) if e.is_retryable() => {
                // The tasks may or may not exist: look for them once the call can no
                // longer be in progress, before starting anything more for this job.
                for c in &choices {
                    self.pool.cancel(&c.instance_id, c.reservation);
                }
                tracing::warn!(job = %job_id, error = &e as &dyn std::error::Error, "StartTask unanswered; will look for its tasks");
                self.stats.retries += choices.len() as u64;
                held.retries += choices.len() as u32;
                held.phase = Phase::Recover {
                    not_before: now + self.ambiguity_grace,
                };
            }
            Err(e) => {
                for c in &choices {
                    self.pool.cancel(&c.instance_id, c.reservation);
                }
                held.refused(e);
            }
        }
    }

    /// Ends a job that is complete or failed once nothing of it is in flight: publishes
    /// its outcome, then acknowledges its message.
    async fn try_finish(&mut self, job_id: &str) {
        let Some(held) = self.queue.get_mut_by_id(job_id) else {
            return;
        };
        if held.starting > 0 || held.busy {
            return;
        }
        let placed = held.placed.len() >= held.job.count as usize;
        if !placed && held.failure.is_none() {
            return;
        }
        let Some(held) = self.queue.remove(job_id) else {
            return;
        };
        let (status, reason, detail) = if placed {
            self.stats.jobs_placed += 1;
            (JobStatus::Placed, None, None)
        } else {
            self.stats.failed += 1;
            let (reason, detail) = held.failure.clone().unwrap_or_default();
            (JobStatus::Failed, Some(reason), Some(detail))
        };
        let outcome = JobOutcome {
            job_id: held.job.id.clone(),
            cluster: self.cluster.clone(),
            status,
            priority: held.job.priority,
            count: held.job.count,
            tasks: held.placed.clone(),
            reason,
            detail,
            conflicts: held.conflicts,
            retries: held.retries,
            waited_seconds: held.received.elapsed().as_secs_f64(),
        };
        publish_outcome(&self.client, &self.cluster, &outcome).await;
        ack(&held.message, AckKind::Ack).await;
    }

    /// Deadlines, progress acks.
    async fn on_tick(&mut self) {
        let now = Instant::now();
        let mut expired = Vec::new();
        for held in self.queue.values_mut() {
            if now.duration_since(held.last_progress) >= PROGRESS_EVERY {
                held.last_progress = now;
                ack(&held.message, AckKind::Progress).await;
            }
            if held.failure.is_none() && held.deadline.is_some_and(|d| now >= d) {
                let (reason, detail) = match &held.waiting {
                    Some(u) => (u.reason.to_string(), u.detail.clone()),
                    None => (
                        jobs::reason::TIMEOUT.to_string(),
                        "the job was not tried yet".to_string(),
                    ),
                };
                held.fail(
                    reason,
                    format!(
                        "waited {} s for capacity: {detail}",
                        held.job.max_wait_seconds.unwrap_or(0)
                    ),
                );
                expired.push(held.job.id.clone());
            }
        }
        for id in expired {
            self.try_finish(&id).await;
        }
    }

    /// Shutdown: lets the calls in flight answer (bounded), finishes what it can and
    /// hands the other jobs back to the stream.
    async fn drain(&mut self) {
        let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        while !self.work.is_empty() {
            match tokio::time::timeout_at(deadline, self.work.next()).await {
                Ok(Some(done)) => self.on_done(done).await,
                Ok(None) | Err(_) => break,
            }
        }
        for held in self.queue.drain() {
            ack(&held.message, AckKind::Nak(None)).await;
        }
        // Acks and outcomes are buffered: send them before the connection goes.
        if let Err(error) = self.client.flush().await {
            tracing::warn!(%error, "could not flush acks and outcomes at shutdown");
        }
    }
}

/// A seed that differs between scheduler processes and runs.
fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ u64::from(std::process::id()).rotate_left(32)
}

/// Whether a reference names one revision (its content never changes).
fn pinned(reference: &str) -> bool {
    arn::task_definition_ref(reference).is_some_and(|r| r.revision.is_some())
}

/// Sets the job's target from its task definition, or says why it cannot run.
fn target_of(held: &mut Held, td: &TaskDefinition) -> Result<(), (String, String)> {
    let demand = demand_of(td, held.job.overrides.as_ref())
        .map_err(|e| (jobs::reason::INVALID.to_string(), e.to_string()))?;
    held.target = Some(Target {
        task_definition_arn: td.task_definition_arn.clone(),
        demand,
    });
    held.phase = Phase::Ready;
    Ok(())
}

async fn ack(message: &jetstream::Message, kind: AckKind) {
    if let Err(error) = message.ack_with(kind).await {
        tracing::debug!(%error, "job ack failed");
    }
}

/// Logs an outcome and publishes it (JSON) to the job's outcome subject.
async fn publish_outcome(client: &async_nats::Client, cluster: &str, outcome: &JobOutcome) {
    match outcome.status {
        JobStatus::Placed => tracing::info!(
            job = %outcome.job_id,
            priority = outcome.priority,
            tasks = outcome.tasks.len(),
            conflicts = outcome.conflicts,
            "job placed"
        ),
        JobStatus::Failed => tracing::warn!(
            job = %outcome.job_id,
            priority = outcome.priority,
            tasks = outcome.tasks.len(),
            reason = outcome.reason.as_deref().unwrap_or(""),
            detail = outcome.detail.as_deref().unwrap_or(""),
            "job failed"
        ),
    }
    let Ok(body) = serde_json::to_vec(outcome) else {
        return;
    };
    let mut h = HeaderMap::new();
    h.insert(headers::CONTENT_TYPE, headers::JSON);
    let subject = jobs::outcome_subject(cluster, &outcome.job_id);
    if let Err(error) = client.publish_with_headers(subject, h, body.into()).await {
        tracing::warn!(%error, job = %outcome.job_id, "outcome publish failed");
    }
}

//! The in-memory view of the whole Berth state that every `berth-control` replica keeps.
//! It follows `BERTH_STATE` with an ordered consumer (last record per subject, then live
//! changes) and indexes clusters, instances, tasks and task definitions so that point
//! reads are O(log n), counters are kept incrementally and paging never sorts a whole
//! cluster. A record's version is its stream sequence.
//!
//! One task applies records; readers take short read locks and get cloned `Arc`s back.
//! Long scans (filtered task and task-definition pages) release their lock every
//! few thousand entries so that they never hold up the apply loop for long.

use crate::{Journal, JournalError, Result, Versioned};
use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::stream;
use berth_messages::arn;
use berth_messages::codec;
use berth_messages::model::{
    Cluster, ContainerInstance, InstanceStatus, Task, TaskDefinition, TaskDefinitionFamily,
    TaskDefinitionStatus, TaskStatus,
};
use berth_messages::streams;
use berth_messages::subjects::{self, StateKey};
use berth_placement::{InstancePool, InstanceRecord};
use futures::StreamExt;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;
use tokio::sync::watch;

/// Entries a scan examines under one read lock before letting the apply loop in.
#[cfg(not(test))]
const SCAN_CHUNK: usize = 4096;
/// Small in unit tests so that scans pause and resume.
#[cfg(test)]
const SCAN_CHUNK: usize = 3;

/// Expiry of the ordered consumer's pull requests; its idle heartbeat is half of it, so a
/// consumer lost with its server while the client stays connected (to another node of
/// the cluster) is noticed and recreated within seconds.
const PULL_EXPIRY: Duration = Duration::from_secs(4);

/// How often the apply loop looks for a reconnection of the client.
const RECONNECT_CHECK: Duration = Duration::from_millis(250);
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Shared handle on the view; clones are cheap. The apply task stops when the last
/// clone is dropped.
#[derive(Clone)]
pub struct View {
    inner: Arc<Inner>,
    _apply: Option<Arc<AbortOnDrop>>,
}

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let progress = *self.inner.progress.borrow();
        f.debug_struct("View")
            .field("applied", &progress.applied)
            .field("ready", &progress.ready)
            .finish_non_exhaustive()
    }
}

/// A task with the cluster and instance its subject names.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskEntry {
    pub cluster: String,
    pub instance_id: String,
    pub task: Versioned<Task>,
}

/// Conditions of [`View::page_tasks`]; every field that is set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskFilter {
    pub instance_id: Option<String>,
    /// The family part of the task's `taskDefinitionArn`.
    pub family: Option<String>,
    pub started_by: Option<String>,
    pub desired_status: Option<TaskStatus>,
    pub group: Option<String>,
}

/// One page of a listing.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Opaque resume key (the sort key of the last item), only when more items remain.
    pub next: Option<String>,
}

impl<T> Page<T> {
    fn empty() -> Self {
        Self {
            items: Vec::new(),
            next: None,
        }
    }
}

/// The derived counters of a cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterCounts {
    /// ACTIVE and DRAINING instances.
    pub registered_instances: i64,
    /// Tasks whose lastStatus is RUNNING.
    pub running_tasks: i64,
    /// Tasks whose lastStatus comes before RUNNING.
    pub pending_tasks: i64,
}

/// Which families [`View::page_families`] lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FamilyStatusFilter {
    /// At least one ACTIVE revision.
    Active,
    /// Revisions, none of them ACTIVE.
    Inactive,
    /// Any family with revisions.
    All,
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Progress {
    applied: u64,
    ready: bool,
}

#[derive(Default)]
struct Inner {
    progress: watch::Sender<Progress>,
    clusters: RwLock<BTreeMap<String, Arc<Versioned<Cluster>>>>,
    scopes: RwLock<HashMap<String, Arc<Scope>>>,
    families: RwLock<BTreeMap<String, FamilyEntry>>,
    instances_len: AtomicUsize,
    tasks_len: AtomicUsize,
}

/// Everything that lives under one cluster's subjects.
#[derive(Default)]
struct Scope {
    data: RwLock<ScopeData>,
}

type IdSet = BTreeSet<Arc<str>>;

#[derive(Default)]
struct ScopeData {
    instances: BTreeMap<String, Arc<Versioned<ContainerInstance>>>,
    registered: i64,
    tasks: BTreeMap<Arc<str>, Arc<TaskEntry>>,
    running: i64,
    pending: i64,
    on_instance: HashMap<Arc<str>, InstanceTasks>,
    by_family: HashMap<Arc<str>, IdSet>,
    by_started_by: HashMap<Arc<str>, IdSet>,
    by_group: HashMap<Arc<str>, IdSet>,
    by_desired: HashMap<TaskStatus, IdSet>,
    /// The instances as placement scans them (remaining resources, task groups, running
    /// counts), kept up to date by the apply loop.
    pool: InstancePool,
}

#[derive(Default)]
struct InstanceTasks {
    ids: IdSet,
    running: i64,
    pending: i64,
}

impl InstanceRecord for Versioned<ContainerInstance> {
    fn instance(&self) -> &ContainerInstance {
        &self.value
    }
}

/// What placement needs to know about one instance beyond its record.
#[derive(Debug, Clone)]
pub struct PlacementEntry {
    pub instance: Arc<Versioned<ContainerInstance>>,
    /// Non-stopped tasks on the instance per task group.
    pub groups: Arc<BTreeMap<String, u32>>,
    /// Tasks whose lastStatus is RUNNING.
    pub running_tasks: i64,
}

#[derive(Default)]
struct FamilyEntry {
    record: Option<Arc<Versioned<TaskDefinitionFamily>>>,
    revisions: BTreeMap<u32, Arc<Versioned<TaskDefinition>>>,
    active: BTreeSet<u32>,
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

fn family_of(task: &Task) -> Option<String> {
    arn::task_definition_ref(&task.task_definition_arn).map(|r| r.family)
}

fn is_registered(status: InstanceStatus) -> bool {
    matches!(status, InstanceStatus::Active | InstanceStatus::Draining)
}

/// (running, pending) contribution of a lastStatus.
fn task_weight(status: TaskStatus) -> (i64, i64) {
    (
        i64::from(status == TaskStatus::Running),
        i64::from(status.is_pending()),
    )
}

fn index_insert(index: &mut HashMap<Arc<str>, IdSet>, key: &str, id: &Arc<str>) {
    match index.get_mut(key) {
        Some(set) => {
            set.insert(id.clone());
        }
        None => {
            index.insert(Arc::from(key), BTreeSet::from([id.clone()]));
        }
    }
}

fn index_remove(index: &mut HashMap<Arc<str>, IdSet>, key: &str, id: &str) {
    if let Some(set) = index.get_mut(key) {
        set.remove(id);
        if set.is_empty() {
            index.remove(key);
        }
    }
}

/// Takes up to `limit` items of (resume key, item) pairs; `next` is set when more remain.
fn page_of<'a, V: 'a>(iter: impl Iterator<Item = (&'a str, V)>, limit: usize) -> Page<V> {
    let limit = limit.max(1);
    let mut items = Vec::new();
    let mut last: Option<&str> = None;
    for (key, value) in iter {
        if items.len() == limit {
            return Page {
                items,
                next: last.map(str::to_string),
            };
        }
        items.push(value);
        last = Some(key);
    }
    Page { items, next: None }
}

impl ScopeData {
    fn index_task(&mut self, id: &Arc<str>, entry: &TaskEntry) {
        let task = &entry.task.value;
        let (running, pending) = task_weight(task.last_status);
        self.running += running;
        self.pending += pending;
        let on = match self.on_instance.get_mut(entry.instance_id.as_str()) {
            Some(on) => on,
            None => self
                .on_instance
                .entry(Arc::from(entry.instance_id.as_str()))
                .or_default(),
        };
        on.ids.insert(id.clone());
        on.running += running;
        on.pending += pending;
        self.pool.add_running(&entry.instance_id, running);
        if task.last_status != TaskStatus::Stopped {
            self.pool
                .add_group_tasks(&entry.instance_id, &task.group, 1);
        }
        if let Some(family) = family_of(task) {
            index_insert(&mut self.by_family, &family, id);
        }
        if let Some(started_by) = &task.started_by {
            index_insert(&mut self.by_started_by, started_by, id);
        }
        index_insert(&mut self.by_group, &task.group, id);
        self.by_desired
            .entry(task.desired_status)
            .or_default()
            .insert(id.clone());
    }

    fn unindex_task(&mut self, id: &str, entry: &TaskEntry) {
        let task = &entry.task.value;
        let (running, pending) = task_weight(task.last_status);
        self.running -= running;
        self.pending -= pending;
        if let Some(on) = self.on_instance.get_mut(entry.instance_id.as_str()) {
            on.ids.remove(id);
            on.running -= running;
            on.pending -= pending;
            self.pool.add_running(&entry.instance_id, -running);
            if task.last_status != TaskStatus::Stopped {
                self.pool
                    .add_group_tasks(&entry.instance_id, &task.group, -1);
            }
            if on.ids.is_empty() {
                self.on_instance.remove(entry.instance_id.as_str());
            }
        }
        if let Some(family) = family_of(task) {
            index_remove(&mut self.by_family, &family, id);
        }
        if let Some(started_by) = &task.started_by {
            index_remove(&mut self.by_started_by, started_by, id);
        }
        index_remove(&mut self.by_group, &task.group, id);
        if let Some(set) = self.by_desired.get_mut(&task.desired_status) {
            set.remove(id);
            if set.is_empty() {
                self.by_desired.remove(&task.desired_status);
            }
        }
    }

    /// The smallest index set that holds every match, `Err` if nothing can match, `Ok(None)`
    /// if no filter has an index (scan every task).
    fn candidates(&self, filter: &TaskFilter) -> std::result::Result<Option<&IdSet>, ()> {
        let wanted = [
            filter
                .instance_id
                .as_ref()
                .map(|i| self.on_instance.get(i.as_str()).map(|o| &o.ids)),
            filter
                .family
                .as_ref()
                .map(|f| self.by_family.get(f.as_str())),
            filter
                .started_by
                .as_ref()
                .map(|s| self.by_started_by.get(s.as_str())),
            filter.group.as_ref().map(|g| self.by_group.get(g.as_str())),
            filter.desired_status.map(|s| self.by_desired.get(&s)),
        ];
        let mut best: Option<&IdSet> = None;
        for set in wanted.into_iter().flatten() {
            let set = set.ok_or(())?;
            if best.is_none_or(|b| set.len() < b.len()) {
                best = Some(set);
            }
        }
        Ok(best)
    }

    fn matches(&self, filter: &TaskFilter, id: &str, entry: &TaskEntry) -> bool {
        let task = &entry.task.value;
        filter
            .instance_id
            .as_ref()
            .is_none_or(|i| *i == entry.instance_id)
            && filter
                .desired_status
                .is_none_or(|s| s == task.desired_status)
            && filter
                .started_by
                .as_ref()
                .is_none_or(|s| task.started_by.as_ref() == Some(s))
            && filter.group.as_ref().is_none_or(|g| *g == task.group)
            && filter.family.as_ref().is_none_or(|f| {
                self.by_family
                    .get(f.as_str())
                    .is_some_and(|set| set.contains(id))
            })
    }
}

enum ChunkEnd {
    /// Enough items collected.
    Full,
    /// Nothing left to examine.
    Exhausted,
    /// The chunk's budget ran out; resume after the last examined key.
    Paused,
}

impl Inner {
    fn scope(&self, cluster: &str) -> Option<Arc<Scope>> {
        read(&self.scopes).get(cluster).cloned()
    }

    fn scope_or_create(&self, cluster: &str) -> Arc<Scope> {
        if let Some(scope) = self.scope(cluster) {
            return scope;
        }
        write(&self.scopes)
            .entry(cluster.to_string())
            .or_default()
            .clone()
    }

    fn applied(&self) -> u64 {
        self.progress.borrow().applied
    }

    /// Records that `sequence` was applied (or skipped) and whether catch-up is complete.
    fn advance(&self, sequence: u64, caught_up: bool) {
        let mut became_ready = false;
        self.progress.send_if_modified(|p| {
            let mut changed = false;
            if sequence > p.applied {
                p.applied = sequence;
                changed = true;
            }
            if caught_up && !p.ready {
                p.ready = true;
                became_ready = true;
                changed = true;
            }
            changed
        });
        if became_ready {
            tracing::info!(sequence, "view caught up with the journal");
        }
    }

    fn mark_ready(&self) {
        self.advance(0, true);
    }

    /// Applies one journal message. Never fails: what cannot be applied is logged and skipped.
    fn apply(&self, subject: &str, payload: &[u8], sequence: u64) {
        let Some(key) = subjects::parse_state(subject) else {
            tracing::warn!(
                subject,
                sequence,
                "view skips a record on an unknown subject"
            );
            return;
        };
        match key {
            StateKey::Cluster { cluster } => {
                if let Some(record) = decode::<Cluster>(subject, payload, sequence) {
                    self.apply_cluster(cluster, record, sequence);
                }
            }
            StateKey::Instance {
                cluster,
                instance_id,
            } => {
                if let Some(mut record) = decode::<ContainerInstance>(subject, payload, sequence) {
                    record.version = Some(sequence);
                    self.apply_instance(cluster, instance_id, record, sequence);
                }
            }
            StateKey::Task {
                cluster,
                instance_id,
                task_id,
            } => {
                if let Some(mut record) = decode::<Task>(subject, payload, sequence) {
                    record.version = Some(sequence);
                    self.apply_task(cluster, instance_id, task_id, record, sequence);
                }
            }
            StateKey::TaskDefinition { family, revision } => {
                if let Some(record) = decode::<TaskDefinition>(subject, payload, sequence) {
                    self.apply_task_definition(family, revision, record, sequence);
                }
            }
            StateKey::TaskDefinitionFamily { family } => {
                if let Some(record) = decode::<TaskDefinitionFamily>(subject, payload, sequence) {
                    self.apply_family(family, record, sequence);
                }
            }
            StateKey::Service { .. } => {
                tracing::trace!(subject, sequence, "view does not index services");
            }
        }
    }

    fn apply_cluster(&self, cluster: &str, value: Cluster, version: u64) {
        let mut clusters = write(&self.clusters);
        if clusters.get(cluster).is_some_and(|c| c.version >= version) {
            return;
        }
        clusters.insert(cluster.to_string(), Arc::new(Versioned { value, version }));
    }

    fn apply_instance(&self, cluster: &str, id: &str, value: ContainerInstance, version: u64) {
        let scope = self.scope_or_create(cluster);
        let mut data = write(&scope.data);
        let registered = i64::from(is_registered(value.status));
        match data.instances.get(id) {
            Some(old) if old.version >= version => return,
            Some(old) => data.registered -= i64::from(is_registered(old.value.status)),
            None => {
                self.instances_len.fetch_add(1, Ordering::Relaxed);
            }
        }
        data.registered += registered;
        let record = Arc::new(Versioned { value, version });
        data.pool.upsert(id, record.clone());
        data.instances.insert(id.to_string(), record);
    }

    fn apply_task(&self, cluster: &str, instance_id: &str, task_id: &str, value: Task, seq: u64) {
        let scope = self.scope_or_create(cluster);
        let mut data = write(&scope.data);
        let existing = data
            .tasks
            .get_key_value(task_id)
            .map(|(id, entry)| (id.clone(), entry.clone()));
        let id = match existing {
            Some((_, old)) if old.task.version >= seq => {
                if old.instance_id != instance_id {
                    tracing::warn!(
                        cluster,
                        task_id,
                        instance_id,
                        kept_instance = old.instance_id.as_str(),
                        sequence = seq,
                        "task appears under two instances; keeping the newer record"
                    );
                }
                return;
            }
            Some((id, old)) => {
                if old.instance_id != instance_id {
                    tracing::warn!(
                        cluster,
                        task_id,
                        instance_id,
                        dropped_instance = old.instance_id.as_str(),
                        sequence = seq,
                        "task appears under two instances; keeping the newer record"
                    );
                }
                data.unindex_task(&id, &old);
                id
            }
            None => {
                self.tasks_len.fetch_add(1, Ordering::Relaxed);
                Arc::from(task_id)
            }
        };
        let entry = Arc::new(TaskEntry {
            cluster: cluster.to_string(),
            instance_id: instance_id.to_string(),
            task: Versioned {
                value,
                version: seq,
            },
        });
        data.index_task(&id, &entry);
        data.tasks.insert(id, entry);
    }

    fn apply_task_definition(
        &self,
        family: &str,
        revision: u32,
        value: TaskDefinition,
        version: u64,
    ) {
        let mut families = write(&self.families);
        let entry = match families.get_mut(family) {
            Some(entry) => entry,
            None => families.entry(family.to_string()).or_default(),
        };
        if entry
            .revisions
            .get(&revision)
            .is_some_and(|d| d.version >= version)
        {
            return;
        }
        if value.status == TaskDefinitionStatus::Active {
            entry.active.insert(revision);
        } else {
            entry.active.remove(&revision);
        }
        entry
            .revisions
            .insert(revision, Arc::new(Versioned { value, version }));
    }

    fn apply_family(&self, family: &str, value: TaskDefinitionFamily, version: u64) {
        let mut families = write(&self.families);
        let entry = match families.get_mut(family) {
            Some(entry) => entry,
            None => families.entry(family.to_string()).or_default(),
        };
        if entry.record.as_ref().is_some_and(|r| r.version >= version) {
            return;
        }
        entry.record = Some(Arc::new(Versioned { value, version }));
    }
}

fn decode<T: serde::de::DeserializeOwned>(subject: &str, payload: &[u8], seq: u64) -> Option<T> {
    match codec::decode_record(payload) {
        Ok(record) => Some(record),
        Err(error) => {
            tracing::warn!(subject, sequence = seq, %error, "view skips an undecodable record");
            None
        }
    }
}

type TaskDefIter<'a> =
    Box<dyn Iterator<Item = (&'a str, u32, &'a Arc<Versioned<TaskDefinition>>)> + 'a>;

/// Task definitions in (family, revision) order, or the reverse, strictly after `after`.
fn task_definitions_from<'a>(
    families: &'a BTreeMap<String, FamilyEntry>,
    prefix: Option<&'a str>,
    descending: bool,
    after: Option<(&'a str, u32)>,
) -> TaskDefIter<'a> {
    let in_prefix = move |f: &str| prefix.is_none_or(|p| f.starts_with(p));
    if descending {
        let upper = after.map_or(Bound::Unbounded, |(f, _)| Bound::Included(f));
        Box::new(
            families
                .range::<str, _>((Bound::Unbounded, upper))
                .rev()
                .skip_while(move |(f, _)| {
                    prefix.is_some_and(|p| !f.starts_with(p) && f.as_str() > p)
                })
                .take_while(move |(f, _)| in_prefix(f))
                .flat_map(move |(f, entry)| {
                    let upper = match after {
                        Some((af, ar)) if af == f.as_str() => Bound::Excluded(ar),
                        _ => Bound::Unbounded,
                    };
                    entry
                        .revisions
                        .range((Bound::Unbounded, upper))
                        .rev()
                        .map(move |(r, d)| (f.as_str(), *r, d))
                }),
        )
    } else {
        let start = match (after.map(|(f, _)| f), prefix) {
            (Some(f), Some(p)) => Bound::Included(f.max(p)),
            (Some(f), None) => Bound::Included(f),
            (None, Some(p)) => Bound::Included(p),
            (None, None) => Bound::Unbounded,
        };
        Box::new(
            families
                .range::<str, _>((start, Bound::Unbounded))
                .take_while(move |(f, _)| in_prefix(f))
                .flat_map(move |(f, entry)| {
                    let lower = match after {
                        Some((af, ar)) if af == f.as_str() => Bound::Excluded(ar),
                        _ => Bound::Unbounded,
                    };
                    entry
                        .revisions
                        .range((lower, Bound::Unbounded))
                        .map(move |(r, d)| (f.as_str(), *r, d))
                }),
        )
    }
}

/// Splits a task-definition resume key `family:revision`.
fn parse_task_definition_key(key: &str, descending: bool) -> (&str, u32) {
    match key.rsplit_once(':') {
        Some((family, revision)) => match revision.parse() {
            Ok(revision) => (family, revision),
            Err(_) => (key, if descending { u32::MAX } else { 0 }),
        },
        None => (key, if descending { u32::MAX } else { 0 }),
    }
}

async fn ordered_messages(
    stream: &stream::Stream,
    deliver_policy: DeliverPolicy,
) -> Result<(pull::Ordered, u64)> {
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: subjects::STATE_ALL.to_string(),
            deliver_policy,
            max_expires: PULL_EXPIRY,
            ..Default::default()
        })
        .await
        .map_err(|e| JournalError::Consumer(e.to_string()))?;
    let pending = consumer.cached_info().num_pending;
    let messages = consumer
        .messages()
        .await
        .map_err(|e| JournalError::Consumer(e.to_string()))?;
    Ok((messages, pending))
}

/// Why the apply loop replaces its consumer.
enum Interruption {
    /// The consumer failed or ended: wait a little before recreating it.
    Failed,
    /// The client reconnected: the server may have lost the ephemeral consumer, and the
    /// ordered consumer would take many seconds to notice.
    Reconnected,
}

/// The consumer to create after an interruption: the rest of the catch-up (records already
/// applied are skipped by version), or everything after the last applied message.
fn resume_policy(inner: &Inner) -> DeliverPolicy {
    let progress = *inner.progress.borrow();
    if progress.ready {
        DeliverPolicy::ByStartSequence {
            start_sequence: progress.applied + 1,
        }
    } else {
        DeliverPolicy::LastPerSubject
    }
}

async fn apply_loop(
    inner: Arc<Inner>,
    client: async_nats::Client,
    stream: stream::Stream,
    mut messages: pull::Ordered,
    ready_at: u64,
) {
    let statistics = client.statistics();
    let mut connects = statistics.connects.load(Ordering::Relaxed);
    let mut check = tokio::time::interval(RECONNECT_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut backoff = MIN_BACKOFF;
    loop {
        let interruption = loop {
            tokio::select! {
                next = messages.next() => match next {
                    Some(Ok(message)) => {
                        let (sequence, pending) = match message.info() {
                            Ok(info) => (info.stream_sequence, info.pending),
                            Err(error) => {
                                tracing::warn!(%error, subject = %message.subject, "view skips a message without JetStream metadata");
                                continue;
                            }
                        };
                        inner.apply(message.subject.as_str(), &message.payload, sequence);
                        inner.advance(sequence, pending == 0 || sequence >= ready_at);
                        backoff = MIN_BACKOFF;
                    }
                    Some(Err(error)) => {
                        tracing::warn!(%error, "view consumer failed; recreating it");
                        break Interruption::Failed;
                    }
                    None => {
                        tracing::warn!("view consumer ended; recreating it");
                        break Interruption::Failed;
                    }
                },
                _ = check.tick() => {
                    let now = statistics.connects.load(Ordering::Relaxed);
                    if now != connects {
                        connects = now;
                        tracing::info!("NATS connection re-established; view recreates its consumer");
                        break Interruption::Reconnected;
                    }
                }
            }
        };
        if let Interruption::Failed = interruption {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        loop {
            let policy = resume_policy(&inner);
            match ordered_messages(&stream, policy).await {
                Ok((next, pending)) => {
                    if pending == 0 {
                        inner.mark_ready();
                    }
                    messages = next;
                    break;
                }
                Err(error) => {
                    tracing::warn!(%error, ?policy, "view cannot recreate its consumer");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

impl View {
    /// Creates the consumer and spawns the apply task; returns without waiting for
    /// catch-up (see [`View::wait_ready`]).
    pub async fn start(journal: &Journal) -> Result<View> {
        let stream = journal
            .jetstream()
            .get_stream(streams::STATE)
            .await
            .map_err(|e| JournalError::Consumer(e.to_string()))?;
        let (messages, pending) = ordered_messages(&stream, DeliverPolicy::LastPerSubject).await?;
        // Every message pending at creation has a sequence at most this one; a message
        // at or past it (or one with nothing pending behind it) completes catch-up.
        let ready_at = if pending == 0 {
            0
        } else {
            journal.state_last_sequence().await?
        };
        let inner = Arc::new(Inner::default());
        if pending == 0 {
            inner.mark_ready();
        }
        let handle = tokio::spawn(apply_loop(
            inner.clone(),
            journal.client().clone(),
            stream,
            messages,
            ready_at,
        ));
        Ok(View {
            inner,
            _apply: Some(Arc::new(AbortOnDrop(handle.abort_handle()))),
        })
    }

    /// True once catch-up is complete, false if `timeout` passes first.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let mut progress = self.inner.progress.subscribe();
        let waited = tokio::time::timeout(timeout, async move {
            progress.wait_for(|p| p.ready).await.is_ok()
        });
        matches!(waited.await, Ok(true))
    }

    pub fn is_ready(&self) -> bool {
        self.inner.progress.borrow().ready
    }

    /// True once the view is ready and has applied `sequence`: every record written up to
    /// it (or a newer record of the same entity) is visible.
    pub async fn wait_for(&self, sequence: u64, timeout: Duration) -> bool {
        let mut progress = self.inner.progress.subscribe();
        let waited = tokio::time::timeout(timeout, async move {
            progress
                .wait_for(|p| p.ready && p.applied >= sequence)
                .await
                .is_ok()
        });
        matches!(waited.await, Ok(true))
    }

    /// Stream sequence of the last message applied (or skipped).
    pub fn applied_sequence(&self) -> u64 {
        self.inner.applied()
    }

    pub fn cluster(&self, name: &str) -> Option<Arc<Versioned<Cluster>>> {
        read(&self.inner.clusters).get(name).cloned()
    }

    /// Clusters of every status, by name.
    pub fn page_clusters(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Page<Arc<Versioned<Cluster>>> {
        let clusters = read(&self.inner.clusters);
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        page_of(
            clusters
                .range::<str, _>((lower, Bound::Unbounded))
                .map(|(k, v)| (k.as_str(), v.clone())),
            limit,
        )
    }

    pub fn instance(
        &self,
        cluster: &str,
        instance_id: &str,
    ) -> Option<Arc<Versioned<ContainerInstance>>> {
        let scope = self.inner.scope(cluster)?;
        let data = read(&scope.data);
        data.instances.get(instance_id).cloned()
    }

    /// Instances of every status, by id.
    pub fn instances(&self, cluster: &str) -> Vec<Arc<Versioned<ContainerInstance>>> {
        let Some(scope) = self.inner.scope(cluster) else {
            return Vec::new();
        };
        let data = read(&scope.data);
        data.instances.values().cloned().collect()
    }

    /// Instances by id; `status: None` lists every status.
    pub fn page_instances(
        &self,
        cluster: &str,
        status: Option<InstanceStatus>,
        after: Option<&str>,
        limit: usize,
    ) -> Page<Arc<Versioned<ContainerInstance>>> {
        let Some(scope) = self.inner.scope(cluster) else {
            return Page::empty();
        };
        let data = read(&scope.data);
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        page_of(
            data.instances
                .range::<str, _>((lower, Bound::Unbounded))
                .filter(|(_, v)| status.is_none_or(|s| v.value.status == s))
                .map(|(k, v)| (k.as_str(), v.clone())),
            limit,
        )
    }

    pub fn task(&self, cluster: &str, task_id: &str) -> Option<Arc<TaskEntry>> {
        let scope = self.inner.scope(cluster)?;
        let data = read(&scope.data);
        data.tasks.get(task_id).cloned()
    }

    /// Drops a task from the view if its record is still at `version` (the journal
    /// subject was purged after the stopped-task retention window; purges are not
    /// delivered to ordered consumers). Every replica applies the same rule.
    pub fn forget_task(&self, cluster: &str, task_id: &str, version: u64) -> bool {
        let Some(scope) = self.inner.scope(cluster) else {
            return false;
        };
        let mut data = write(&scope.data);
        let entry = match data.tasks.get_key_value(task_id) {
            Some((id, entry)) if entry.task.version == version => (id.clone(), entry.clone()),
            _ => return false,
        };
        data.unindex_task(&entry.0, &entry.1);
        data.tasks.remove(task_id);
        self.inner.tasks_len.fetch_sub(1, Ordering::Relaxed);
        true
    }

    /// Every instance of a cluster with its task groups and running count, by id (what the
    /// cluster query language evaluates). Cheap: records and group maps are shared.
    pub fn placement_entries(&self, cluster: &str) -> Vec<PlacementEntry> {
        let Some(scope) = self.inner.scope(cluster) else {
            return Vec::new();
        };
        let data = read(&scope.data);
        let empty: Arc<BTreeMap<String, u32>> = Arc::default();
        data.instances
            .iter()
            .map(|(id, instance)| {
                let slot = data.pool.slot(id);
                PlacementEntry {
                    instance: instance.clone(),
                    groups: slot
                        .and_then(|s| data.pool.groups_of(s))
                        .map_or_else(|| empty.clone(), Arc::clone),
                    running_tasks: slot.map_or(0, |s| data.pool.running(s)),
                }
            })
            .collect()
    }

    /// Runs `decide` over the cluster's placement pool under the view's read lock (keep it
    /// short: the apply loop waits for it). An unknown cluster has an empty pool.
    pub fn with_pool<R>(&self, cluster: &str, decide: impl FnOnce(&InstancePool) -> R) -> R {
        match self.inner.scope(cluster) {
            Some(scope) => decide(&read(&scope.data).pool),
            None => decide(&InstancePool::new()),
        }
    }

    /// Every task whose subject names this instance, by task id.
    pub fn tasks_on_instance(&self, cluster: &str, instance_id: &str) -> Vec<Arc<TaskEntry>> {
        let Some(scope) = self.inner.scope(cluster) else {
            return Vec::new();
        };
        let data = read(&scope.data);
        data.on_instance
            .get(instance_id)
            .map(|on| {
                on.ids
                    .iter()
                    .filter_map(|id| data.tasks.get(id).cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Tasks matching `filter`, by task id.
    pub fn page_tasks(
        &self,
        cluster: &str,
        filter: &TaskFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Page<Arc<TaskEntry>> {
        let limit = limit.max(1);
        let Some(scope) = self.inner.scope(cluster) else {
            return Page::empty();
        };
        let mut found: Vec<(Arc<str>, Arc<TaskEntry>)> = Vec::new();
        let mut cursor: Option<Arc<str>> = after.map(Arc::from);
        loop {
            let data = read(&scope.data);
            let Ok(candidates) = data.candidates(filter) else {
                break;
            };
            let lower = cursor.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
            let (end, last) = match candidates {
                Some(ids) => scan_tasks(
                    &data,
                    filter,
                    ids.range::<str, _>((lower, Bound::Unbounded))
                        .filter_map(|id| data.tasks.get_key_value(&**id)),
                    limit + 1,
                    &mut found,
                ),
                None => scan_tasks(
                    &data,
                    filter,
                    data.tasks.range::<str, _>((lower, Bound::Unbounded)),
                    limit + 1,
                    &mut found,
                ),
            };
            match end {
                ChunkEnd::Full | ChunkEnd::Exhausted => break,
                ChunkEnd::Paused => cursor = last,
            }
        }
        let next = (found.len() > limit).then(|| found[limit - 1].0.to_string());
        found.truncate(limit);
        Page {
            items: found.into_iter().map(|(_, entry)| entry).collect(),
            next,
        }
    }

    pub fn counts(&self, cluster: &str) -> ClusterCounts {
        let Some(scope) = self.inner.scope(cluster) else {
            return ClusterCounts::default();
        };
        let data = read(&scope.data);
        ClusterCounts {
            registered_instances: data.registered,
            running_tasks: data.running,
            pending_tasks: data.pending,
        }
    }

    /// (running, pending) tasks on one instance.
    pub fn instance_counts(&self, cluster: &str, instance_id: &str) -> (i64, i64) {
        let Some(scope) = self.inner.scope(cluster) else {
            return (0, 0);
        };
        let data = read(&scope.data);
        data.on_instance
            .get(instance_id)
            .map_or((0, 0), |on| (on.running, on.pending))
    }

    pub fn task_definition(
        &self,
        family: &str,
        revision: u32,
    ) -> Option<Arc<Versioned<TaskDefinition>>> {
        read(&self.inner.families)
            .get(family)?
            .revisions
            .get(&revision)
            .cloned()
    }

    /// The highest ACTIVE revision of a family.
    pub fn latest_active_task_definition(
        &self,
        family: &str,
    ) -> Option<Arc<Versioned<TaskDefinition>>> {
        let families = read(&self.inner.families);
        let entry = families.get(family)?;
        entry.revisions.get(entry.active.last()?).cloned()
    }

    /// The revision counter record of a family.
    pub fn family(&self, family: &str) -> Option<Arc<Versioned<TaskDefinitionFamily>>> {
        read(&self.inner.families).get(family)?.record.clone()
    }

    /// Task definitions by family, then revision number (or the reverse). The resume key
    /// is `family:revision`.
    pub fn page_task_definitions(
        &self,
        family_prefix: Option<&str>,
        status: Option<TaskDefinitionStatus>,
        descending: bool,
        after: Option<&str>,
        limit: usize,
    ) -> Page<Arc<Versioned<TaskDefinition>>> {
        let limit = limit.max(1);
        let mut found: Vec<(String, u32, Arc<Versioned<TaskDefinition>>)> = Vec::new();
        let mut cursor: Option<(String, u32)> = after.map(|key| {
            let (family, revision) = parse_task_definition_key(key, descending);
            (family.to_string(), revision)
        });
        loop {
            let families = read(&self.inner.families);
            let mut iter = task_definitions_from(
                &families,
                family_prefix,
                descending,
                cursor.as_ref().map(|(f, r)| (f.as_str(), *r)),
            );
            let mut end = ChunkEnd::Exhausted;
            let mut last = None;
            for examined in 0.. {
                if examined == SCAN_CHUNK {
                    end = ChunkEnd::Paused;
                    break;
                }
                let Some((family, revision, definition)) = iter.next() else {
                    break;
                };
                last = Some((family, revision));
                if status.is_none_or(|s| definition.value.status == s) {
                    found.push((family.to_string(), revision, definition.clone()));
                    if found.len() > limit {
                        end = ChunkEnd::Full;
                        break;
                    }
                }
            }
            let resume = match end {
                ChunkEnd::Paused => last.map(|(f, r): (&str, u32)| (f.to_string(), r)),
                ChunkEnd::Full | ChunkEnd::Exhausted => None,
            };
            drop(iter);
            match resume {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let next = (found.len() > limit).then(|| {
            let (family, revision, _) = &found[limit - 1];
            format!("{family}:{revision}")
        });
        found.truncate(limit);
        Page {
            items: found.into_iter().map(|(_, _, d)| d).collect(),
            next,
        }
    }

    /// Family names in order; the resume key is the family name.
    pub fn page_families(
        &self,
        family_prefix: Option<&str>,
        status: FamilyStatusFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Page<String> {
        let families = read(&self.inner.families);
        let lower = match (after, family_prefix) {
            (Some(a), Some(p)) if p > a => Bound::Included(p),
            (Some(a), _) => Bound::Excluded(a),
            (None, Some(p)) => Bound::Included(p),
            (None, None) => Bound::Unbounded,
        };
        page_of(
            families
                .range::<str, _>((lower, Bound::Unbounded))
                .take_while(|(f, _)| family_prefix.is_none_or(|p| f.starts_with(p)))
                .filter(|(_, e)| match status {
                    FamilyStatusFilter::Active => !e.active.is_empty(),
                    FamilyStatusFilter::Inactive => !e.revisions.is_empty() && e.active.is_empty(),
                    FamilyStatusFilter::All => !e.revisions.is_empty(),
                })
                .map(|(f, _)| (f.as_str(), f.clone())),
            limit,
        )
    }

    /// Clusters with a record.
    pub fn clusters_len(&self) -> usize {
        read(&self.inner.clusters).len()
    }

    pub fn instances_len(&self) -> usize {
        self.inner.instances_len.load(Ordering::Relaxed)
    }

    pub fn tasks_len(&self) -> usize {
        self.inner.tasks_len.load(Ordering::Relaxed)
    }
}

/// Examines up to [`SCAN_CHUNK`] tasks, collecting matches until `want` are found.
/// Returns how the chunk ended and the last key examined.
fn scan_tasks<'a>(
    data: &ScopeData,
    filter: &TaskFilter,
    ids: impl Iterator<Item = (&'a Arc<str>, &'a Arc<TaskEntry>)>,
    want: usize,
    found: &mut Vec<(Arc<str>, Arc<TaskEntry>)>,
) -> (ChunkEnd, Option<Arc<str>>) {
    let mut last: Option<&Arc<str>> = None;
    for (examined, (id, entry)) in ids.enumerate() {
        if examined == SCAN_CHUNK {
            return (ChunkEnd::Paused, last.cloned());
        }
        last = Some(id);
        if data.matches(filter, id, entry) {
            found.push((id.clone(), entry.clone()));
            if found.len() >= want {
                return (ChunkEnd::Full, last.cloned());
            }
        }
    }
    (ChunkEnd::Exhausted, last.cloned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_messages::arn::ArnScope;

    fn detached() -> View {
        View {
            inner: Arc::new(Inner::default()),
            _apply: None,
        }
    }

    struct Feed {
        view: View,
        seq: u64,
    }

    impl Feed {
        fn new() -> Self {
            Self {
                view: detached(),
                seq: 0,
            }
        }

        fn put<T: serde::Serialize>(&mut self, subject: &str, record: &T) -> u64 {
            self.seq += 1;
            let payload = codec::encode_record(record).unwrap();
            self.view.inner.apply(subject, &payload, self.seq);
            self.view.inner.advance(self.seq, true);
            self.seq
        }
    }

    #[derive(Clone)]
    struct TaskSpec {
        instance: String,
        family: String,
        last: TaskStatus,
        desired: TaskStatus,
        started_by: Option<String>,
        group: String,
    }

    fn task(cluster: &str, id: &str, spec: &TaskSpec) -> Task {
        let scope = ArnScope::default();
        Task {
            task_arn: scope.task(cluster, id),
            cluster_arn: scope.cluster(cluster),
            task_definition_arn: scope.task_definition(&spec.family, 1),
            container_instance_arn: scope.container_instance(cluster, &spec.instance),
            last_status: spec.last,
            desired_status: spec.desired,
            started_by: spec.started_by.clone(),
            group: spec.group.clone(),
            ..Default::default()
        }
    }

    fn spec(instance: &str, family: &str, last: TaskStatus) -> TaskSpec {
        TaskSpec {
            instance: instance.into(),
            family: family.into(),
            last,
            desired: TaskStatus::Running,
            started_by: None,
            group: format!("family:{family}"),
        }
    }

    fn put_task(feed: &mut Feed, cluster: &str, id: &str, spec: &TaskSpec) -> u64 {
        feed.put(
            &subjects::task(cluster, &spec.instance, id),
            &task(cluster, id, spec),
        )
    }

    fn instance(cluster: &str, id: &str, status: InstanceStatus) -> ContainerInstance {
        ContainerInstance {
            container_instance_arn: ArnScope::default().container_instance(cluster, id),
            status,
            ..Default::default()
        }
    }

    fn definition(family: &str, revision: u32, status: TaskDefinitionStatus) -> TaskDefinition {
        TaskDefinition {
            task_definition_arn: ArnScope::default().task_definition(family, revision),
            family: family.into(),
            revision,
            status,
            ..Default::default()
        }
    }

    fn ids(page: &Page<Arc<TaskEntry>>) -> Vec<String> {
        page.items
            .iter()
            .map(|e| arn::task_id(&e.task.value.task_arn).1.to_string())
            .collect()
    }

    /// Every page of a listing, following `next`.
    fn all_pages<T>(mut page: impl FnMut(Option<&str>) -> Page<T>) -> Vec<Vec<T>> {
        let mut pages = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let p = page(after.as_deref());
            after = p.next.clone();
            pages.push(p.items);
            if after.is_none() {
                return pages;
            }
            assert!(pages.len() < 10_000, "paging does not end");
        }
    }

    #[test]
    fn counts_follow_the_task_lifecycle() {
        let mut feed = Feed::new();
        feed.put(
            &subjects::instance("c", "i1"),
            &instance("c", "i1", InstanceStatus::Active),
        );
        feed.put(
            &subjects::instance("c", "i2"),
            &instance("c", "i2", InstanceStatus::Draining),
        );
        feed.put(
            &subjects::instance("c", "i3"),
            &instance("c", "i3", InstanceStatus::Inactive),
        );
        let mut a = spec("i1", "web", TaskStatus::Pending);
        let mut b = spec("i1", "web", TaskStatus::Provisioning);
        put_task(&mut feed, "c", "a", &a);
        let seq_b = put_task(&mut feed, "c", "b", &b);
        let v = &feed.view;
        assert_eq!(
            v.counts("c"),
            ClusterCounts {
                registered_instances: 2,
                running_tasks: 0,
                pending_tasks: 2
            }
        );
        assert_eq!(v.instance_counts("c", "i1"), (0, 2));
        assert_eq!(v.tasks_on_instance("c", "i1").len(), 2);
        let entry = v.task("c", "b").unwrap();
        assert_eq!(entry.task.version, seq_b);
        assert_eq!(entry.task.value.version, Some(seq_b));
        assert_eq!(entry.instance_id, "i1");
        assert_eq!(entry.cluster, "c");

        a.last = TaskStatus::Running;
        put_task(&mut feed, "c", "a", &a);
        assert_eq!(feed.view.counts("c").running_tasks, 1);
        assert_eq!(feed.view.counts("c").pending_tasks, 1);
        b.last = TaskStatus::Running;
        put_task(&mut feed, "c", "b", &b);
        a.last = TaskStatus::Stopped;
        put_task(&mut feed, "c", "a", &a);
        let v = &feed.view;
        assert_eq!(v.counts("c").running_tasks, 1);
        assert_eq!(v.counts("c").pending_tasks, 0);
        assert_eq!(v.instance_counts("c", "i1"), (1, 0));
        assert_eq!(v.tasks_len(), 2);
        assert_eq!(v.instances_len(), 3);

        // The instance leaves the registered count when it turns INACTIVE.
        feed.put(
            &subjects::instance("c", "i1"),
            &instance("c", "i1", InstanceStatus::Inactive),
        );
        assert_eq!(feed.view.counts("c").registered_instances, 1);
        let i1 = feed.view.instance("c", "i1").unwrap();
        assert_eq!(i1.value.version, Some(i1.version));
        assert_eq!(feed.view.counts("other"), ClusterCounts::default());
    }

    #[test]
    fn stale_records_and_duplicates_keep_the_newest() {
        let mut feed = Feed::new();
        let first = spec("i1", "web", TaskStatus::Pending);
        put_task(&mut feed, "c", "t", &first);
        // A newer record of the same task under another instance wins.
        let moved = spec("i2", "web", TaskStatus::Running);
        let newest = put_task(&mut feed, "c", "t", &moved);
        let v = &feed.view;
        assert_eq!(v.task("c", "t").unwrap().instance_id, "i2");
        assert!(v.tasks_on_instance("c", "i1").is_empty());
        assert_eq!(v.instance_counts("c", "i1"), (0, 0));
        assert_eq!(v.instance_counts("c", "i2"), (1, 0));
        assert_eq!(v.tasks_len(), 1);
        // An older sequence is ignored.
        let payload = codec::encode_record(&task("c", "t", &first)).unwrap();
        v.inner
            .apply(&subjects::task("c", "i1", "t"), &payload, newest - 1);
        assert_eq!(v.task("c", "t").unwrap().task.version, newest);
        assert_eq!(v.counts("c").running_tasks, 1);
        assert_eq!(v.counts("c").pending_tasks, 0);
    }

    #[test]
    fn bad_records_are_skipped() {
        let v = detached();
        v.inner.apply("berth.state.c.bogus.x", b"\x80", 1);
        v.inner
            .apply(&subjects::task("c", "i", "t"), b"not msgpack", 2);
        v.inner.apply(&subjects::cluster("c"), b"", 3);
        assert!(v.task("c", "t").is_none());
        assert!(v.cluster("c").is_none());
        assert_eq!(v.tasks_len(), 0);
    }

    #[test]
    fn task_pages_match_a_full_scan_for_every_filter() {
        let mut feed = Feed::new();
        let mut state: BTreeMap<String, TaskSpec> = BTreeMap::new();
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let statuses = [
            TaskStatus::Provisioning,
            TaskStatus::Pending,
            TaskStatus::Running,
            TaskStatus::Stopped,
        ];
        for _ in 0..400 {
            let id = format!("t{:03}", next(60));
            let s = TaskSpec {
                instance: format!("i{}", next(4)),
                family: ["web", "db", "batch"][next(3) as usize].into(),
                last: statuses[next(4) as usize],
                desired: [TaskStatus::Running, TaskStatus::Stopped][next(2) as usize],
                started_by: (next(3) > 0).then(|| format!("s{}", next(2))),
                group: format!("g{}", next(3)),
            };
            put_task(&mut feed, "c", &id, &s);
            state.insert(id, s);
        }
        let v = &feed.view;
        let running = state
            .values()
            .filter(|s| s.last == TaskStatus::Running)
            .count();
        let pending = state.values().filter(|s| s.last.is_pending()).count();
        assert_eq!(v.counts("c").running_tasks, running as i64);
        assert_eq!(v.counts("c").pending_tasks, pending as i64);
        for i in 0..4 {
            let inst = format!("i{i}");
            let on: Vec<_> = state.iter().filter(|(_, s)| s.instance == inst).collect();
            let r = on
                .iter()
                .filter(|(_, s)| s.last == TaskStatus::Running)
                .count() as i64;
            let p = on.iter().filter(|(_, s)| s.last.is_pending()).count() as i64;
            assert_eq!(v.instance_counts("c", &inst), (r, p), "{inst}");
        }

        let mut filters = vec![TaskFilter::default()];
        for i in ["i0", "i3", "nope"] {
            filters.push(TaskFilter {
                instance_id: Some(i.into()),
                ..Default::default()
            });
        }
        for f in ["web", "batch", "nope"] {
            filters.push(TaskFilter {
                family: Some(f.into()),
                ..Default::default()
            });
        }
        filters.push(TaskFilter {
            started_by: Some("s1".into()),
            desired_status: Some(TaskStatus::Running),
            ..Default::default()
        });
        filters.push(TaskFilter {
            desired_status: Some(TaskStatus::Stopped),
            ..Default::default()
        });
        filters.push(TaskFilter {
            instance_id: Some("i1".into()),
            family: Some("db".into()),
            group: Some("g2".into()),
            ..Default::default()
        });
        for filter in &filters {
            let expected: Vec<String> = state
                .iter()
                .filter(|(_, s)| {
                    filter.instance_id.as_ref().is_none_or(|i| *i == s.instance)
                        && filter.family.as_ref().is_none_or(|f| *f == s.family)
                        && filter
                            .started_by
                            .as_ref()
                            .is_none_or(|b| s.started_by.as_ref() == Some(b))
                        && filter.desired_status.is_none_or(|d| d == s.desired)
                        && filter.group.as_ref().is_none_or(|g| *g == s.group)
                })
                .map(|(id, _)| id.clone())
                .collect();
            for limit in [1, 4, 100] {
                let pages = all_pages(|after| v.page_tasks("c", filter, after, limit));
                let got: Vec<String> = pages
                    .iter()
                    .flat_map(|p| {
                        p.iter()
                            .map(|e| arn::task_id(&e.task.value.task_arn).1.to_string())
                    })
                    .collect();
                assert_eq!(got, expected, "{filter:?} limit {limit}");
                assert!(pages.iter().all(|p| p.len() <= limit));
                if !expected.is_empty() {
                    assert!(
                        pages.iter().all(|p| !p.is_empty()),
                        "{filter:?} limit {limit}"
                    );
                }
            }
        }
        assert!(ids(&v.page_tasks("none", &TaskFilter::default(), None, 10)).is_empty());
    }

    #[test]
    fn task_definitions_order_and_latest_active() {
        let mut feed = Feed::new();
        use TaskDefinitionStatus::{Active, Inactive};
        for (family, revision, status) in [
            ("web", 1, Inactive),
            ("web", 2, Active),
            ("web", 10, Active),
            ("web", 3, Active),
            ("db", 1, Inactive),
            ("worker", 1, Active),
            ("webhook", 1, Active),
        ] {
            feed.put(
                &subjects::task_definition(family, revision),
                &definition(family, revision, status),
            );
        }
        feed.put(
            &subjects::task_definition_family("web"),
            &TaskDefinitionFamily {
                family: "web".into(),
                last_revision: 10,
                last_command_id: "c".into(),
            },
        );
        // web:10 deregistered later.
        feed.put(
            &subjects::task_definition("web", 10),
            &definition("web", 10, Inactive),
        );
        let v = &feed.view;
        assert_eq!(
            v.latest_active_task_definition("web")
                .unwrap()
                .value
                .revision,
            3
        );
        assert!(v.latest_active_task_definition("db").is_none());
        assert_eq!(v.family("web").unwrap().value.last_revision, 10);
        assert!(v.family("db").is_none());
        assert_eq!(v.task_definition("web", 10).unwrap().value.status, Inactive);

        let names = |items: Vec<Vec<Arc<Versioned<TaskDefinition>>>>| -> Vec<String> {
            items
                .into_iter()
                .flatten()
                .map(|d| format!("{}:{}", d.value.family, d.value.revision))
                .collect()
        };
        for limit in [1, 2, 50] {
            let asc = names(all_pages(|a| {
                v.page_task_definitions(None, None, false, a, limit)
            }));
            assert_eq!(
                asc,
                [
                    "db:1",
                    "web:1",
                    "web:2",
                    "web:3",
                    "web:10",
                    "webhook:1",
                    "worker:1"
                ]
            );
            let desc = names(all_pages(|a| {
                v.page_task_definitions(None, None, true, a, limit)
            }));
            let mut reversed = asc.clone();
            reversed.reverse();
            assert_eq!(desc, reversed);
            let web = names(all_pages(|a| {
                v.page_task_definitions(Some("web"), Some(Active), false, a, limit)
            }));
            assert_eq!(web, ["web:2", "web:3", "webhook:1"]);
            let web_desc = names(all_pages(|a| {
                v.page_task_definitions(Some("web"), None, true, a, limit)
            }));
            assert_eq!(web_desc, ["webhook:1", "web:10", "web:3", "web:2", "web:1"]);
            let none = names(all_pages(|a| {
                v.page_task_definitions(Some("zzz"), None, true, a, limit)
            }));
            assert!(none.is_empty());
        }
        let p = v.page_task_definitions(None, None, false, None, 2);
        assert_eq!(p.next.as_deref(), Some("web:1"));

        let fams = |status, prefix| -> Vec<String> {
            all_pages(|a| v.page_families(prefix, status, a, 1))
                .into_iter()
                .flatten()
                .collect()
        };
        assert_eq!(
            fams(FamilyStatusFilter::All, None),
            ["db", "web", "webhook", "worker"]
        );
        assert_eq!(
            fams(FamilyStatusFilter::Active, None),
            ["web", "webhook", "worker"]
        );
        assert_eq!(fams(FamilyStatusFilter::Inactive, None), ["db"]);
        assert_eq!(
            fams(FamilyStatusFilter::All, Some("we")),
            ["web", "webhook"]
        );
        assert!(fams(FamilyStatusFilter::Inactive, Some("we")).is_empty());
    }

    #[test]
    fn clusters_and_instances_page_by_name() {
        let mut feed = Feed::new();
        for name in ["b", "a", "c"] {
            feed.put(
                &subjects::cluster(name),
                &Cluster {
                    cluster_arn: ArnScope::default().cluster(name),
                    cluster_name: name.into(),
                    ..Default::default()
                },
            );
        }
        for (id, status) in [
            ("i3", InstanceStatus::Active),
            ("i1", InstanceStatus::Inactive),
            ("i2", InstanceStatus::Active),
        ] {
            feed.put(&subjects::instance("a", id), &instance("a", id, status));
        }
        let v = &feed.view;
        assert_eq!(v.clusters_len(), 3);
        let p = v.page_clusters(None, 2);
        assert_eq!(p.next.as_deref(), Some("b"));
        let names: Vec<_> = all_pages(|a| v.page_clusters(a, 2))
            .into_iter()
            .flatten()
            .map(|c| c.value.cluster_name.clone())
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
        let all: Vec<_> = v
            .instances("a")
            .iter()
            .map(|i| i.value.container_instance_arn.clone())
            .collect();
        assert_eq!(all.len(), 3);
        assert!(all[0].ends_with("/i1") && all[2].ends_with("/i3"));
        let active: Vec<_> =
            all_pages(|a| v.page_instances("a", Some(InstanceStatus::Active), a, 1))
                .into_iter()
                .flatten()
                .map(|i| i.value.container_instance_arn.clone())
                .collect();
        assert_eq!(active.len(), 2);
        assert!(active[0].ends_with("/i2") && active[1].ends_with("/i3"));
        assert_eq!(v.page_instances("a", None, Some("i1"), 10).items.len(), 2);
        assert!(v.page_instances("zz", None, None, 10).items.is_empty());
    }

    #[tokio::test]
    async fn waits_resolve_on_progress() {
        let v = detached();
        assert!(!v.is_ready());
        assert!(!v.wait_ready(Duration::from_millis(10)).await);
        let waiter = {
            let v = v.clone();
            tokio::spawn(async move { v.wait_for(5, Duration::from_secs(30)).await })
        };
        v.inner.advance(5, false);
        assert!(!v.wait_for(5, Duration::from_millis(10)).await);
        v.inner.mark_ready();
        assert!(waiter.await.unwrap());
        assert!(v.is_ready());
        assert_eq!(v.applied_sequence(), 5);
        assert!(v.wait_ready(Duration::from_secs(1)).await);
    }
}

//! The in-memory view of the whole Berth state that every `berth-control` replica keeps.
//! It catches up on `BERTH_STATE` with a consumer of the last record per subject that
//! pulls thousands of messages at a time, then follows live changes with an ordered
//! consumer from the last applied sequence, and indexes clusters, instances, tasks and
//! task definitions so that point reads are O(log n), counters are kept incrementally and
//! paging never sorts a whole cluster. A record's version is its stream sequence.
//!
//! One task applies records, in batches of whatever the consumer has ready; readers take
//! short read locks and get cloned `Arc`s back. Long scans (filtered task and
//! task-definition pages) release their lock every few thousand entries so that they
//! never hold up the apply loop for long.
//!
//! Tasks are the bulk of the state (millions), so the view keeps each one lean: its record
//! in the compact form of [`crate::compact`] (decoded on read), keyed by a 16-byte id,
//! with the fields its indexes need as per-cluster symbols. During catch-up only point
//! lookups and counters are kept; the ordered task sets (per instance, family, group...)
//! are bulk-built once, just before the view reports itself ready. The view also keeps the
//! allocations that instance records still hold for STOPPED tasks, so that reconciliation
//! never walks every allocation.

use crate::compact::{CompactError, FastMap, Field, Interner};
use crate::keys::{Sym, Symbols, TaskKey, NO_SYM};
use crate::landing::{Landing, Landings};
use crate::recovery::{retry, LeaderSignals, Patience};
use crate::{Journal, JournalError, Result, Versioned};
use async_nats::jetstream;
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
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
use futures::{FutureExt, StreamExt};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
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

/// Most messages applied under one lock (and one progress update).
const APPLY_BATCH: usize = 512;

/// Batches at least this long are made compact on two threads while the view catches up.
/// A live view never does: the other core is busy with the rest of the work then, and
/// rayon's idle threads spun after each parallel batch (2% of berth-control's CPU during
/// placement).
const PARALLEL_PREPARE: usize = 128;

/// Messages and bytes the catch-up consumer asks for per pull.
const CATCH_UP_BATCH: usize = 8192;
const CATCH_UP_BATCH_BYTES: usize = 16 << 20;
/// The server removes a catch-up consumer left behind (a replica gone mid catch-up).
const CATCH_UP_INACTIVE: Duration = Duration::from_secs(10);

/// Bound of the instance records offered by this replica's writers and not yet applied.
const MAX_WRITTEN_INSTANCES: usize = 4096;

/// Pause after the consumer failed, doubling up to the max while it keeps failing.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

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
    /// Not indexed (no API filters by group; an index cost a set insert per task placed
    /// and ~40 bytes per task): a filter on it alone scans the cluster's tasks.
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
    /// Strings shared by the compact task records.
    interner: Interner,
    clusters: RwLock<BTreeMap<String, Arc<Versioned<Cluster>>>>,
    scopes: RwLock<HashMap<String, Arc<Scope>>>,
    families: RwLock<BTreeMap<String, FamilyEntry>>,
    instances_len: AtomicUsize,
    tasks_len: AtomicUsize,
    /// Instance records this replica wrote, by sequence, until the apply loop reaches
    /// them: it takes the record instead of decoding the message.
    written_instances: Mutex<BTreeMap<u64, Arc<Versioned<ContainerInstance>>>>,
    landings: Arc<Landings>,
}

/// Everything that lives under one cluster's subjects.
#[derive(Default)]
struct Scope {
    data: RwLock<ScopeData>,
}

type IdSet = BTreeSet<TaskKey>;

#[derive(Default)]
struct ScopeData {
    instances: BTreeMap<String, Arc<Versioned<ContainerInstance>>>,
    registered: i64,
    /// Instance ids, families, groups and `startedBy` values of this cluster's tasks.
    syms: Symbols,
    tasks: BTreeMap<TaskKey, StoredTask>,
    running: i64,
    pending: i64,
    on_instance: HashMap<Arc<str>, InstanceTasks>,
    by_family: HashMap<Sym, IdSet>,
    by_started_by: HashMap<Sym, IdSet>,
    /// Every desired status but RUNNING (which nearly every task has: a filter on it
    /// scans, an index would only cost memory).
    by_desired: HashMap<TaskStatus, IdSet>,
    /// (instance id, task) for allocations an instance record still holds for a task
    /// whose record is STOPPED, with the journal sequence since which it is so.
    stale: BTreeMap<(Arc<str>, TaskKey), u64>,
    /// Whether the ordered task sets (tasks per instance, family, `startedBy`, group,
    /// desired status) and the stale allocations are kept; catch-up leaves them out and
    /// builds them at its end.
    indexed: bool,
    /// The instances as placement scans them (remaining resources, task groups, running
    /// counts), kept up to date by the apply loop.
    pool: InstancePool,
}

/// A task as the view keeps it: the record in compact form and what the indexes need.
struct StoredTask {
    version: u64,
    /// `stoppedAt` of the record; NaN when it has none.
    stopped_at: f64,
    record: Box<[u8]>,
    instance: Sym,
    group: Sym,
    family: Sym,
    started_by: Sym,
    last: TaskStatus,
    desired: TaskStatus,
}

/// A task record made compact outside the view's locks, ready to apply; its strings
/// borrow from the message.
struct PreparedTask<'a> {
    stored: StoredTask,
    instance_id: &'a str,
    group: &'a str,
    family: Option<&'a str>,
    started_by: Option<&'a str>,
}

/// A task record of a batch with its cluster and task id, once prepared.
type Prepared<'a> = Option<(&'a str, &'a str, PreparedTask<'a>)>;

/// An empty vector with the allocation of `v`: batches reuse their buffers (same layout,
/// only lifetimes differ, so collecting in place keeps the allocation).
fn recycle<T, U>(mut v: Vec<T>) -> Vec<U> {
    v.clear();
    v.into_iter().filter_map(|_| None).collect()
}

/// Buffers the apply loop reuses from one batch to the next.
#[derive(Default)]
struct ApplyBuffers {
    items: Vec<(&'static str, &'static [u8], u64)>,
    prepared: Vec<Prepared<'static>>,
}

/// What a reader copies out of the view to decode a task outside the locks.
struct RawTask {
    instance_id: String,
    version: u64,
    record: Box<[u8]>,
}

/// An allocation held by an instance record for a task whose record is STOPPED.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleAllocation {
    pub cluster: String,
    pub instance_id: String,
    pub task_id: String,
    /// Journal sequence since which the allocation has been stale without interruption.
    pub since: u64,
}

/// A STOPPED task past a `stoppedAt` cutoff (see [`View::page_stopped_before`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiredTask {
    pub task_id: String,
    pub instance_id: String,
    pub version: u64,
}

#[derive(Default)]
struct InstanceTasks {
    ids: IdSet,
    /// RUNNING tasks per instance live in the placement pool.
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

fn index_insert<K: std::hash::Hash + Eq>(index: &mut HashMap<K, IdSet>, key: K, id: &TaskKey) {
    index.entry(key).or_default().insert(id.clone());
}

fn index_remove<K: std::hash::Hash + Eq>(index: &mut HashMap<K, IdSet>, key: &K, id: &TaskKey) {
    if let Some(set) = index.get_mut(key) {
        set.remove(id);
        if set.is_empty() {
            index.remove(key);
        }
    }
}

/// The task status a journal string names.
fn parse_status(s: &[u8]) -> Option<TaskStatus> {
    std::str::from_utf8(s).ok().and_then(TaskStatus::from_name)
}

/// The fields of a task record the view indexes, seen while making it compact.
#[derive(Default)]
struct TaskFields<'a> {
    last: Option<TaskStatus>,
    desired: Option<TaskStatus>,
    group: Option<&'a [u8]>,
    started_by: Option<&'a [u8]>,
    definition: Option<&'a [u8]>,
    stopped_at: Option<f64>,
    /// Required ARN fields present as strings.
    arns: u8,
}

impl<'a> TaskFields<'a> {
    fn see(&mut self, key: &[u8], value: Field<'a>) {
        match (key, value) {
            (b"lastStatus", Field::Str(s)) => self.last = parse_status(s),
            (b"desiredStatus", Field::Str(s)) => self.desired = parse_status(s),
            (b"group", Field::Str(s)) => self.group = Some(s),
            (b"startedBy", Field::Str(s)) => self.started_by = Some(s),
            (b"stoppedAt", Field::Number(n)) => self.stopped_at = Some(n),
            (b"taskDefinitionArn", Field::Str(s)) => {
                self.definition = Some(s);
                self.arns |= 1;
            }
            (b"taskArn", Field::Str(_)) => self.arns |= 2,
            (b"clusterArn", Field::Str(_)) => self.arns |= 4,
            (b"containerInstanceArn", Field::Str(_)) => self.arns |= 8,
            _ => {}
        }
    }
}

/// The family a task definition reference names (as `arn::task_definition_ref` reads it).
fn family_of(definition: &str) -> Option<&str> {
    let body = match arn::split(definition) {
        Some(("task-definition", rest)) => rest,
        Some(_) => return None,
        None => definition,
    };
    match body.split_once(':') {
        Some((family, revision)) => revision
            .parse::<u32>()
            .ok()
            .filter(|r| *r > 0)
            .map(|_| family),
        None => Some(body),
    }
}

/// Makes a task record compact and extracts its indexed fields; `None` (logged) when the
/// record is not a task.
fn prepare_task<'a>(
    encoder: &mut crate::compact::Encoder<'_>,
    subject: &str,
    instance_id: &'a str,
    payload: &'a [u8],
    version: u64,
) -> Option<PreparedTask<'a>> {
    let mut fields = TaskFields::default();
    let record = match encoder.compact(payload, |k, v| fields.see(k, v)) {
        Ok(record) => record,
        Err(error) => {
            tracing::warn!(subject, sequence = version, %error, "view skips an undecodable record");
            return None;
        }
    };
    let (Some(last), Some(desired), 15) = (fields.last, fields.desired, fields.arns) else {
        tracing::warn!(
            subject,
            sequence = version,
            "view skips a task record without its required fields"
        );
        return None;
    };
    let text = |s: Option<&'a [u8]>| s.map(std::str::from_utf8).transpose();
    let (Ok(group), Ok(started_by), Ok(Some(definition))) = (
        text(fields.group),
        text(fields.started_by),
        text(fields.definition),
    ) else {
        tracing::warn!(
            subject,
            sequence = version,
            "view skips a task record with invalid text"
        );
        return None;
    };
    Some(PreparedTask {
        stored: StoredTask {
            version,
            stopped_at: fields.stopped_at.unwrap_or(f64::NAN),
            record,
            instance: NO_SYM,
            group: NO_SYM,
            family: NO_SYM,
            started_by: NO_SYM,
            last,
            desired,
        },
        instance_id,
        group: group.unwrap_or_default(),
        family: family_of(definition),
        started_by,
    })
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

/// Whether a desired status has an index (see `ScopeData::by_desired`).
fn desired_indexed(status: TaskStatus) -> bool {
    status != TaskStatus::Running
}

impl ScopeData {
    fn sym(&self, sym: Sym) -> Option<&str> {
        (sym != NO_SYM).then(|| self.syms.name(sym))
    }

    fn index_task(&mut self, id: &TaskKey, task: &StoredTask) {
        let (running, pending) = task_weight(task.last);
        self.running += running;
        self.pending += pending;
        let instance_id = self.syms.name(task.instance);
        let on = match self.on_instance.get_mut(instance_id) {
            Some(on) => on,
            None => self.on_instance.entry(Arc::from(instance_id)).or_default(),
        };
        if self.indexed {
            on.ids.insert(id.clone());
        }
        on.pending += pending;
        self.pool.add_running(instance_id, running);
        if task.last != TaskStatus::Stopped {
            self.pool
                .add_group_tasks(instance_id, self.syms.name(task.group), 1);
        }
        if !self.indexed {
            return;
        }
        if task.family != NO_SYM {
            index_insert(&mut self.by_family, task.family, id);
        }
        if task.started_by != NO_SYM {
            index_insert(&mut self.by_started_by, task.started_by, id);
        }
        if desired_indexed(task.desired) {
            index_insert(&mut self.by_desired, task.desired, id);
        }
    }

    /// Builds the ordered task sets that catch-up leaves out: bulk-building a sorted set
    /// costs far less than millions of inserts at random places (and packs it densely).
    fn build_indexes(&mut self) {
        if self.indexed {
            return;
        }
        self.indexed = true;
        /// Keys come in order, so collecting builds each set without sorting.
        fn sets<K: std::hash::Hash + Eq>(
            tasks: &BTreeMap<TaskKey, StoredTask>,
            key_of: impl Fn(&StoredTask) -> Option<K>,
        ) -> Vec<(K, IdSet)> {
            let mut keys: FastMap<K, Vec<TaskKey>> = FastMap::default();
            for (id, task) in tasks {
                if let Some(k) = key_of(task) {
                    keys.entry(k).or_default().push(id.clone());
                }
            }
            keys.into_iter()
                .map(|(k, ids)| (k, ids.into_iter().collect::<IdSet>()))
                .collect()
        }
        let known = |sym: Sym| (sym != NO_SYM).then_some(sym);
        // The sets are independent: built on the machine's cores at once (catch-up is over,
        // nothing else is running in this replica yet).
        let tasks = &self.tasks;
        let (on, family, started_by, desired, stale) = std::thread::scope(|scope| {
            let joined = |handle: std::thread::ScopedJoinHandle<'_, Vec<(Sym, IdSet)>>| {
                handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            };
            let on = scope.spawn(|| sets(tasks, |t| Some(t.instance)));
            let family = scope.spawn(|| sets(tasks, |t| known(t.family)));
            let started_by = sets(tasks, |t| known(t.started_by));
            let desired = sets(tasks, |t| desired_indexed(t.desired).then_some(t.desired));
            let stale = self.find_stale();
            (joined(on), joined(family), started_by, desired, stale)
        });
        for (sym, ids) in on {
            if let Some(o) = self.on_instance.get_mut(self.syms.name(sym)) {
                o.ids = ids;
            }
        }
        self.on_instance.retain(|_, o| !o.ids.is_empty());
        self.by_family = family.into_iter().collect();
        self.by_started_by = started_by.into_iter().collect();
        self.by_desired = desired.into_iter().collect();
        self.stale = stale;
    }

    /// Every allocation held for a STOPPED task, found in one pass over the instances'
    /// allocations against the set of STOPPED tasks (usually few), instead of a task
    /// lookup per allocation for every instance record applied while catching up.
    fn find_stale(&self) -> BTreeMap<(Arc<str>, TaskKey), u64> {
        let stopped: HashMap<&TaskKey, u64> = self
            .tasks
            .iter()
            .filter(|(_, task)| task.last == TaskStatus::Stopped)
            .map(|(key, task)| (key, task.version))
            .collect();
        let mut stale = BTreeMap::new();
        if stopped.is_empty() {
            return stale;
        }
        for (instance_id, instance) in &self.instances {
            for task_id in instance.value.allocations.keys() {
                let key = TaskKey::new(task_id);
                if let Some(version) = stopped.get(&key) {
                    let since = instance.version.max(*version);
                    stale.insert((Arc::from(instance_id.as_str()), key), since);
                }
            }
        }
        stale
    }

    fn unindex_task(&mut self, id: &TaskKey, task: &StoredTask) {
        let (running, pending) = task_weight(task.last);
        self.running -= running;
        self.pending -= pending;
        let instance_id = self.syms.name(task.instance);
        if let Some(on) = self.on_instance.get_mut(instance_id) {
            if self.indexed {
                on.ids.remove(id);
            }
            on.pending -= pending;
            self.pool.add_running(instance_id, -running);
            if task.last != TaskStatus::Stopped {
                self.pool
                    .add_group_tasks(instance_id, self.syms.name(task.group), -1);
            }
            if self.indexed && on.ids.is_empty() {
                self.on_instance.remove(instance_id);
            }
        }
        if !self.indexed {
            return;
        }
        if task.family != NO_SYM {
            index_remove(&mut self.by_family, &task.family, id);
        }
        if task.started_by != NO_SYM {
            index_remove(&mut self.by_started_by, &task.started_by, id);
        }
        if desired_indexed(task.desired) {
            index_remove(&mut self.by_desired, &task.desired, id);
        }
    }

    /// Takes the symbols of a prepared task.
    fn acquire_syms(&mut self, prepared: &mut PreparedTask<'_>) {
        let syms = &mut self.syms;
        let stored = &mut prepared.stored;
        stored.instance = syms.acquire(prepared.instance_id);
        stored.group = syms.acquire(prepared.group);
        stored.family = prepared.family.map_or(NO_SYM, |f| syms.acquire(f));
        stored.started_by = prepared.started_by.map_or(NO_SYM, |s| syms.acquire(s));
    }

    fn release_syms(&mut self, task: &StoredTask) {
        for sym in [task.instance, task.group, task.family, task.started_by] {
            if sym != NO_SYM {
                self.syms.release(sym);
            }
        }
    }

    /// Applies a task record; returns whether the task is new to the view.
    fn apply_task(&mut self, cluster: &str, task_id: &str, mut prepared: PreparedTask<'_>) -> bool {
        let key = TaskKey::new(task_id);
        let seq = prepared.stored.version;
        let existed = self.tasks.get(&key);
        if let Some(old) = existed {
            let old_instance = self.syms.name(old.instance);
            if old_instance != prepared.instance_id {
                tracing::warn!(
                    cluster,
                    task_id,
                    instance_id = prepared.instance_id,
                    other_instance = old_instance,
                    sequence = seq,
                    "task appears under two instances; keeping the newer record"
                );
            }
            if old.version >= seq {
                return false;
            }
        }
        let existed = existed.is_some();
        self.acquire_syms(&mut prepared);
        let stored = prepared.stored;
        let old = if existed {
            self.tasks.remove(&key)
        } else {
            None
        };
        let new = old.is_none();
        if let Some(old) = &old {
            self.unindex_task(&key, old);
            if old.instance != stored.instance || stored.last != TaskStatus::Stopped {
                let instance: Arc<str> = Arc::from(self.syms.name(old.instance));
                self.stale.remove(&(instance, key.clone()));
            }
            self.release_syms(old);
        }
        self.index_task(&key, &stored);
        if stored.last == TaskStatus::Stopped && self.indexed {
            let instance_id = self.syms.name(stored.instance);
            let held = self
                .instances
                .get(instance_id)
                .is_some_and(|i| i.value.allocations.contains_key(task_id));
            if held {
                self.stale
                    .entry((Arc::from(instance_id), key.clone()))
                    .or_insert(seq);
            }
        }
        self.tasks.insert(key, stored);
        new
    }

    /// Drops a task; returns whether it was there at `version`.
    fn forget_task(&mut self, task_id: &str, version: u64) -> bool {
        let key = TaskKey::new(task_id);
        match self.tasks.get(&key) {
            Some(task) if task.version == version => {}
            _ => return false,
        }
        let Some(task) = self.tasks.remove(&key) else {
            return false;
        };
        self.unindex_task(&key, &task);
        let instance: Arc<str> = Arc::from(self.syms.name(task.instance));
        self.stale.remove(&(instance, key));
        self.release_syms(&task);
        true
    }

    /// Keeps [`ScopeData::stale`] in step with an instance record's allocations.
    fn track_allocations(
        &mut self,
        instance_id: &str,
        old: Option<&ContainerInstance>,
        new: &ContainerInstance,
        seq: u64,
    ) {
        if !self.indexed {
            // Catch-up: found in one pass at its end (see `find_stale`).
            return;
        }
        let instance: Arc<str> = Arc::from(instance_id);
        if let Some(old) = old {
            for task_id in old.allocations.keys() {
                if !new.allocations.contains_key(task_id) {
                    self.stale
                        .remove(&(instance.clone(), TaskKey::new(task_id)));
                }
            }
        }
        for task_id in new.allocations.keys() {
            if old.is_some_and(|o| o.allocations.contains_key(task_id)) {
                continue;
            }
            let key = TaskKey::new(task_id);
            if self
                .tasks
                .get(&key)
                .is_some_and(|t| t.last == TaskStatus::Stopped)
            {
                self.stale.entry((instance.clone(), key)).or_insert(seq);
            }
        }
    }

    fn raw(&self, task: &StoredTask) -> RawTask {
        RawTask {
            instance_id: self.syms.name(task.instance).to_string(),
            version: task.version,
            record: task.record.clone(),
        }
    }

    /// The smallest index set that holds every match, `Err` if nothing can match, `Ok(None)`
    /// if no filter has an index (scan every task).
    fn candidates(&self, filter: &TaskFilter) -> std::result::Result<Option<&IdSet>, ()> {
        fn by_sym<'a>(
            syms: &Symbols,
            index: &'a HashMap<Sym, IdSet>,
            name: &Option<String>,
        ) -> Option<Option<&'a IdSet>> {
            name.as_ref()
                .map(|n| syms.get(n).and_then(|sym| index.get(&sym)))
        }
        let wanted = [
            filter
                .instance_id
                .as_ref()
                .map(|i| self.on_instance.get(i.as_str()).map(|o| &o.ids)),
            by_sym(&self.syms, &self.by_family, &filter.family),
            by_sym(&self.syms, &self.by_started_by, &filter.started_by),
            filter
                .desired_status
                .filter(|s| desired_indexed(*s))
                .map(|s| self.by_desired.get(&s)),
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

    fn matches(&self, filter: &TaskFilter, task: &StoredTask) -> bool {
        let is = |sym: Sym, wanted: &Option<String>| {
            wanted.as_deref().is_none_or(|w| self.sym(sym) == Some(w))
        };
        filter.desired_status.is_none_or(|s| s == task.desired)
            && is(task.instance, &filter.instance_id)
            && is(task.started_by, &filter.started_by)
            && is(task.group, &filter.group)
            && is(task.family, &filter.family)
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
        // Scopes created after catch-up keep their task sets from the start.
        let indexed = self.progress.borrow().ready;
        write(&self.scopes)
            .entry(cluster.to_string())
            .or_insert_with(|| {
                Arc::new(Scope {
                    data: RwLock::new(ScopeData {
                        indexed,
                        ..ScopeData::default()
                    }),
                })
            })
            .clone()
    }

    /// Builds the task sets catch-up left out, in every cluster.
    fn build_indexes(&self) {
        let started = std::time::Instant::now();
        let scopes: Vec<Arc<Scope>> = read(&self.scopes).values().cloned().collect();
        for scope in &scopes {
            write(&scope.data).build_indexes();
        }
        tracing::info!(
            clusters = scopes.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "view built its task indexes"
        );
    }

    fn applied(&self) -> u64 {
        self.progress.borrow().applied
    }

    /// Decodes a task copied out of the view; `None` (logged) if its record is not a task.
    fn decode_task(&self, cluster: &str, raw: RawTask) -> Option<Arc<TaskEntry>> {
        let decoded = self
            .interner
            .with_expanded(&raw.record, codec::decode_record::<Task>)
            .map_err(|e: CompactError| e.to_string())
            .and_then(|task| task.map_err(|e| e.to_string()));
        match decoded {
            Ok(mut value) => {
                value.version = Some(raw.version);
                Some(Arc::new(TaskEntry {
                    cluster: cluster.to_string(),
                    instance_id: raw.instance_id,
                    task: Versioned {
                        value,
                        version: raw.version,
                    },
                }))
            }
            Err(error) => {
                tracing::warn!(
                    cluster,
                    instance_id = raw.instance_id,
                    sequence = raw.version,
                    %error,
                    "view cannot decode a task record"
                );
                None
            }
        }
    }

    /// Records that `sequence` was applied (or skipped) and whether catch-up is complete.
    fn advance(&self, sequence: u64, caught_up: bool) {
        let ready = self.progress.borrow().ready;
        if caught_up && !ready {
            self.build_indexes();
        }
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
    #[cfg(test)]
    fn apply(&self, subject: &str, payload: &[u8], sequence: u64) {
        self.apply_batch(&[(subject, payload, sequence)]);
    }

    /// Applies journal messages in order. Task records are made compact first, outside
    /// the view's locks; consecutive task records of one cluster are then applied under one
    /// write lock.
    #[cfg(test)]
    fn apply_batch(&self, batch: &[(&str, &[u8], u64)]) {
        self.apply_batch_with(batch, Vec::new());
    }

    /// [`Inner::apply_batch`] with a buffer to reuse; returns it (empty).
    fn apply_batch_with<'a>(
        &self,
        batch: &[(&'a str, &'a [u8], u64)],
        buffer: Vec<Prepared<'a>>,
    ) -> Vec<Prepared<'static>> {
        let mut prepared = recycle(buffer);
        prepared.reserve(batch.len());
        let prepare = |part: &[(&'a str, &'a [u8], u64)], prepared: &mut Vec<Prepared<'a>>| {
            let mut encoder = self.interner.encoder();
            for &(subject, payload, sequence) in part {
                prepared.push(match subjects::parse_state(subject) {
                    Some(StateKey::Task {
                        cluster,
                        instance_id,
                        task_id,
                    }) => prepare_task(&mut encoder, subject, instance_id, payload, sequence)
                        .map(|p| (cluster, task_id, p)),
                    _ => None,
                });
            }
        };
        if batch.len() < PARALLEL_PREPARE || self.progress.borrow().ready {
            prepare(batch, &mut prepared);
        } else {
            // Catch-up: both halves are made compact at once, on rayon's long-lived
            // threads (a thread per batch would cost a fresh allocator heap each time).
            let (first, second) = batch.split_at(batch.len() / 2);
            let ((), later) = rayon::join(
                || prepare(first, &mut prepared),
                || {
                    let mut later = Vec::with_capacity(second.len());
                    prepare(second, &mut later);
                    later
                },
            );
            prepared.extend(later);
        }
        let mut items = batch.iter().zip(prepared.drain(..)).peekable();
        while let Some((&(subject, payload, sequence), prepared)) = items.next() {
            let Some((cluster, task_id, task)) = prepared else {
                self.apply_other(subject, payload, sequence);
                continue;
            };
            let scope = self.scope_or_create(cluster);
            let mut data = write(&scope.data);
            let mut added = usize::from(data.apply_task(cluster, task_id, task));
            while let Some((_, Some((next_cluster, _, _)))) = items.peek() {
                if *next_cluster != cluster {
                    break;
                }
                if let Some((_, Some((_, task_id, task)))) = items.next() {
                    added += usize::from(data.apply_task(cluster, task_id, task));
                }
            }
            drop(data);
            self.tasks_len.fetch_add(added, Ordering::Relaxed);
        }
        drop(items);
        recycle(prepared)
    }

    /// Applies one journal message that is not a task record.
    fn apply_other(&self, subject: &str, payload: &[u8], sequence: u64) {
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
                if let Some(record) = self.take_written_instance(sequence) {
                    self.apply_instance(cluster, instance_id, record);
                } else if let Some(mut value) =
                    decode::<ContainerInstance>(subject, payload, sequence)
                {
                    value.version = Some(sequence);
                    let record = Arc::new(Versioned {
                        value,
                        version: sequence,
                    });
                    self.apply_instance(cluster, instance_id, record);
                }
            }
            StateKey::Task { .. } => {
                // Task records that could not be prepared (logged there).
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

    /// The record this replica wrote at `sequence`, if it offered it; forgets the ones
    /// before it (the apply loop has passed them).
    fn take_written_instance(&self, sequence: u64) -> Option<Arc<Versioned<ContainerInstance>>> {
        let mut written = self
            .written_instances
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if written.is_empty() {
            return None;
        }
        while let Some(entry) = written.first_entry() {
            if *entry.key() >= sequence {
                break;
            }
            entry.remove();
        }
        written.remove(&sequence)
    }

    fn apply_instance(&self, cluster: &str, id: &str, record: Arc<Versioned<ContainerInstance>>) {
        let version = record.version;
        let scope = self.scope_or_create(cluster);
        let mut data = write(&scope.data);
        let registered = i64::from(is_registered(record.value.status));
        match data.instances.get(id) {
            Some(old) if old.version >= version => return,
            Some(old) => data.registered -= i64::from(is_registered(old.value.status)),
            None => {
                self.instances_len.fetch_add(1, Ordering::Relaxed);
            }
        }
        data.registered += registered;
        data.pool.upsert(id, record.clone());
        let old = data.instances.insert(id.to_string(), record.clone());
        data.track_allocations(id, old.as_deref().map(|o| &o.value), &record.value, version);
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

/// The view's feed of journal messages: the catch-up consumer or the ordered consumer.
type Feed = futures::stream::BoxStream<'static, std::result::Result<jetstream::Message, String>>;

/// The consumer for `deliver_policy`: a catch-up consumer when the view is not ready yet
/// (large pulls: the ordered consumer asks for 500 messages at a time, which bounds a
/// replay of millions of records by round trips rather than by either process), the
/// ordered consumer afterwards. Returns the feed, the messages pending at creation and
/// the name of the catch-up consumer.
async fn consumer_feed(
    stream: &stream::Stream,
    deliver_policy: DeliverPolicy,
    catching_up: bool,
) -> Result<(Feed, u64, Option<String>)> {
    if !catching_up {
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
        let feed = messages.map(|m| m.map_err(|e| e.to_string())).boxed();
        return Ok((feed, pending, None));
    }
    // Ephemeral, unacknowledged, in memory on one server, like the ordered consumer; gaps
    // in its delivery sequence (a consumer lost with its server) end the feed, and the
    // apply loop starts catch-up again (records already applied are skipped by version).
    let consumer = stream
        .create_consumer(pull::Config {
            filter_subject: subjects::STATE_ALL.to_string(),
            deliver_policy,
            ack_policy: AckPolicy::None,
            max_deliver: 1,
            max_expires: PULL_EXPIRY,
            inactive_threshold: CATCH_UP_INACTIVE,
            num_replicas: 1,
            memory_storage: true,
            ..Default::default()
        })
        .await
        .map_err(|e| JournalError::Consumer(e.to_string()))?;
    let pending = consumer.cached_info().num_pending;
    let name = consumer.cached_info().name.clone();
    let messages = consumer
        .stream()
        .max_messages_per_batch(CATCH_UP_BATCH)
        .max_bytes_per_batch(CATCH_UP_BATCH_BYTES)
        .expires(PULL_EXPIRY)
        .heartbeat(PULL_EXPIRY / 2)
        .messages()
        .await
        .map_err(|e| JournalError::Consumer(e.to_string()))?;
    let mut delivered = 0u64;
    let feed = messages.map(move |message| {
        let message = message.map_err(|e| e.to_string())?;
        let info = message.info().map_err(|e| e.to_string())?;
        if info.consumer_sequence != delivered + 1 {
            return Err(format!(
                "catch-up consumer skipped from delivery {delivered} to {}",
                info.consumer_sequence
            ));
        }
        delivered = info.consumer_sequence;
        Ok(message)
    });
    Ok((feed.boxed(), pending, Some(name)))
}

/// Why the apply loop replaces its consumer.
enum Interruption {
    /// The consumer failed or ended: wait a little before recreating it.
    Failed,
    /// The client reconnected, or the stream elected a leader: the ephemeral consumer may
    /// be gone with its server, and the ordered consumer would take many seconds to notice
    /// (its own recreation waits for the request timeout).
    ClusterChanged,
    /// Catch-up is complete: the ordered consumer takes over after the last applied record.
    CaughtUp,
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

/// Applies a batch of consumed messages and records the progress.
fn apply_messages(
    inner: &Inner,
    batch: &[async_nats::jetstream::Message],
    ready_at: u64,
    buffers: &mut ApplyBuffers,
) {
    let mut items: Vec<(&str, &[u8], u64)> = recycle(std::mem::take(&mut buffers.items));
    let mut last = 0;
    let mut caught_up = false;
    for message in batch {
        match message.info() {
            Ok(info) => {
                items.push((
                    message.subject.as_str(),
                    &message.payload[..],
                    info.stream_sequence,
                ));
                last = last.max(info.stream_sequence);
                caught_up |= info.pending == 0 || info.stream_sequence >= ready_at;
            }
            Err(error) => {
                tracing::warn!(%error, subject = %message.subject, "view skips a message without JetStream metadata");
            }
        }
    }
    buffers.prepared = inner.apply_batch_with(&items, std::mem::take(&mut buffers.prepared));
    if !items.is_empty() {
        inner.advance(last, caught_up);
        inner.landings.applied(
            items
                .iter()
                .map(|&(subject, _, sequence)| (subject, sequence)),
        );
    }
    buffers.items = recycle(items);
}

async fn apply_loop(
    inner: Arc<Inner>,
    mut signals: LeaderSignals,
    start_patience: Patience,
    stream: stream::Stream,
    mut messages: Feed,
    mut catch_up_consumer: Option<String>,
    ready_at: u64,
) {
    let mut backoff = MIN_BACKOFF;
    let mut batch = Vec::with_capacity(APPLY_BATCH);
    let mut buffers = ApplyBuffers::default();
    loop {
        let interruption = loop {
            tokio::select! {
                next = messages.next() => {
                    batch.clear();
                    let mut ended = None;
                    let mut next = next;
                    loop {
                        match next {
                            Some(Ok(message)) => batch.push(message),
                            Some(Err(error)) => {
                                tracing::warn!(%error, "view consumer failed; recreating it");
                                ended = Some(Interruption::Failed);
                                break;
                            }
                            None => {
                                tracing::warn!("view consumer ended; recreating it");
                                ended = Some(Interruption::Failed);
                                break;
                            }
                        }
                        if batch.len() == APPLY_BATCH {
                            break;
                        }
                        match messages.next().now_or_never() {
                            Some(more) => next = more,
                            None => break,
                        }
                    }
                    if !batch.is_empty() {
                        apply_messages(&inner, &batch, ready_at, &mut buffers);
                        batch.clear();
                        backoff = MIN_BACKOFF;
                    }
                    if let Some(interruption) = ended {
                        break interruption;
                    }
                    if catch_up_consumer.is_some() && inner.progress.borrow().ready {
                        break Interruption::CaughtUp;
                    }
                }
                signal = signals.next() => {
                    tracing::info!(?signal, "view recreates its consumer");
                    break Interruption::ClusterChanged;
                }
            }
        };
        if let Interruption::Failed = interruption {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        if let Some(name) = catch_up_consumer.take() {
            let stream = stream.clone();
            tokio::spawn(async move {
                if let Err(error) = stream.delete_consumer(&name).await {
                    tracing::debug!(%error, name, "view could not delete its catch-up consumer; the server drops it when idle");
                }
            });
        }
        let policy = resume_policy(&inner);
        let catching_up = !inner.progress.borrow().ready;
        // A live view resumes from a sequence: cheap for the server, so every attempt is
        // short. A catch-up consumer over a large stream may take longer to create.
        let patience = if catching_up {
            Patience {
                give_up_after: None,
                ..start_patience
            }
        } else {
            Patience::failover()
        };
        let created = retry("view consumer", patience, Some(&mut signals), || {
            consumer_feed(&stream, policy, catching_up)
        })
        .await;
        match created {
            Ok((next, pending, catch_up)) => {
                if pending == 0 {
                    inner.mark_ready();
                }
                messages = next;
                catch_up_consumer = catch_up;
            }
            Err(error) => {
                // Not reached (the retries never give up); the old feed is kept.
                tracing::error!(%error, ?policy, "view cannot recreate its consumer");
            }
        }
    }
}

impl View {
    /// Creates the consumer and spawns the apply task; returns without waiting for
    /// catch-up (see [`View::wait_ready`]).
    pub async fn start(journal: &Journal) -> Result<View> {
        let signals = LeaderSignals::for_stream(journal.client(), streams::STATE).await;
        let js = journal.jetstream();
        let patience = Patience::start(crate::js_timeout(js), crate::START_PATIENCE);
        let stream = retry("view stream", patience, None, || {
            js.get_stream(streams::STATE)
        })
        .await
        .map_err(|e| JournalError::Consumer(crate::error_chain(&e)))?;
        let (messages, pending, catch_up_consumer) = retry("view consumer", patience, None, || {
            consumer_feed(&stream, DeliverPolicy::LastPerSubject, true)
        })
        .await
        .map_err(|e| JournalError::Consumer(crate::error_chain(&e)))?;
        tracing::info!(pending, "view catching up with the journal");
        // Every message pending at creation has a sequence at most this one; a message
        // at or past it (or one with nothing pending behind it) completes catch-up.
        let ready_at = if pending == 0 {
            0
        } else {
            retry("journal's last sequence", patience, None, || {
                journal.state_last_sequence()
            })
            .await
            .map_err(|e| JournalError::Consumer(crate::error_chain(&e)))?
        };
        let inner = Arc::new(Inner::default());
        if pending == 0 {
            inner.mark_ready();
        }
        let handle = tokio::spawn(apply_loop(
            inner.clone(),
            signals,
            patience,
            stream,
            messages,
            catch_up_consumer,
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
    /// Starts waiting for the next record on `subject` to be applied (see
    /// [`crate::landing`]); call it before publishing the record.
    pub fn expect_landing(&self, subject: &str) -> Landing {
        self.inner.landings.expect(subject)
    }

    pub fn applied_sequence(&self) -> u64 {
        self.inner.applied()
    }

    /// Offers an instance record this replica has just written (its `version` the
    /// sequence the journal acknowledged, its value exactly what was written) so that the
    /// apply loop takes it instead of decoding the message. Records the view has already
    /// passed are ignored; the view never holds more than [`MAX_WRITTEN_INSTANCES`].
    pub fn offer_written_instance(&self, record: &Arc<Versioned<ContainerInstance>>) {
        if record.version <= self.inner.applied() {
            return;
        }
        let mut written = self
            .inner
            .written_instances
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if written.len() < MAX_WRITTEN_INSTANCES {
            written.insert(record.version, record.clone());
        }
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
        let raw = {
            let data = read(&scope.data);
            let task = data.tasks.get(&TaskKey::new(task_id))?;
            data.raw(task)
        };
        self.inner.decode_task(cluster, raw)
    }

    /// [`View::task`] for several ids of one cluster, under one lock.
    pub fn tasks_by_id(
        &self,
        cluster: &str,
        task_ids: &[impl AsRef<str>],
    ) -> Vec<Option<Arc<TaskEntry>>> {
        let Some(scope) = self.inner.scope(cluster) else {
            return vec![None; task_ids.len()];
        };
        let raws: Vec<Option<RawTask>> = {
            let data = read(&scope.data);
            task_ids
                .iter()
                .map(|id| {
                    let key = TaskKey::new(id.as_ref());
                    data.tasks.get(&key).map(|t| data.raw(t))
                })
                .collect()
        };
        raws.into_iter()
            .map(|raw| raw.and_then(|raw| self.inner.decode_task(cluster, raw)))
            .collect()
    }

    /// Drops a task from the view if its record is still at `version` (the journal
    /// subject was purged after the stopped-task retention window; purges are not
    /// delivered to ordered consumers). Every replica applies the same rule.
    pub fn forget_task(&self, cluster: &str, task_id: &str, version: u64) -> bool {
        let Some(scope) = self.inner.scope(cluster) else {
            return false;
        };
        let forgotten = write(&scope.data).forget_task(task_id, version);
        if forgotten {
            self.inner.tasks_len.fetch_sub(1, Ordering::Relaxed);
        }
        forgotten
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
        let raws: Vec<RawTask> = {
            let data = read(&scope.data);
            data.on_instance
                .get(instance_id)
                .map(|on| {
                    on.ids
                        .iter()
                        .filter_map(|id| data.tasks.get(id).map(|t| data.raw(t)))
                        .collect()
                })
                .unwrap_or_default()
        };
        raws.into_iter()
            .filter_map(|raw| self.inner.decode_task(cluster, raw))
            .collect()
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
        let mut found: Vec<(TaskKey, RawTask)> = Vec::new();
        let mut cursor: Option<TaskKey> = after.map(TaskKey::new);
        loop {
            let data = read(&scope.data);
            let Ok(candidates) = data.candidates(filter) else {
                break;
            };
            let lower = cursor.as_ref().map_or(Bound::Unbounded, Bound::Excluded);
            let (end, last) = match candidates {
                Some(ids) => scan_tasks(
                    &data,
                    filter,
                    ids.range((lower, Bound::Unbounded))
                        .filter_map(|id| data.tasks.get_key_value(id)),
                    limit + 1,
                    &mut found,
                ),
                None => scan_tasks(
                    &data,
                    filter,
                    data.tasks.range((lower, Bound::Unbounded)),
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
            items: found
                .into_iter()
                .filter_map(|(_, raw)| self.inner.decode_task(cluster, raw))
                .collect(),
            next,
        }
    }

    /// STOPPED tasks whose `stoppedAt` is before `cutoff` (seconds since the epoch), by
    /// task id, without decoding their records: what the janitor purges.
    pub fn page_stopped_before(
        &self,
        cluster: &str,
        cutoff: f64,
        after: Option<&str>,
        limit: usize,
    ) -> Page<ExpiredTask> {
        let limit = limit.max(1);
        let Some(scope) = self.inner.scope(cluster) else {
            return Page::empty();
        };
        let mut items: Vec<(TaskKey, ExpiredTask)> = Vec::new();
        let mut cursor: Option<TaskKey> = after.map(TaskKey::new);
        'chunks: loop {
            let data = read(&scope.data);
            let Some(stopped) = data.by_desired.get(&TaskStatus::Stopped) else {
                break;
            };
            let lower = cursor.as_ref().map_or(Bound::Unbounded, Bound::Excluded);
            let mut last: Option<&TaskKey> = None;
            for (examined, id) in stopped.range((lower, Bound::Unbounded)).enumerate() {
                if examined == SCAN_CHUNK {
                    cursor = last.cloned();
                    continue 'chunks;
                }
                last = Some(id);
                let Some(task) = data.tasks.get(id) else {
                    continue;
                };
                if task.last == TaskStatus::Stopped && task.stopped_at < cutoff {
                    items.push((
                        id.clone(),
                        ExpiredTask {
                            task_id: id.to_string(),
                            instance_id: data.syms.name(task.instance).to_string(),
                            version: task.version,
                        },
                    ));
                    if items.len() > limit {
                        break 'chunks;
                    }
                }
            }
            break;
        }
        let next = (items.len() > limit).then(|| items[limit - 1].0.to_string());
        items.truncate(limit);
        Page {
            items: items.into_iter().map(|(_, t)| t).collect(),
            next,
        }
    }

    /// Allocations that instance records hold for tasks whose record is STOPPED, in every
    /// cluster (normally none: the task actor releases right after the STOPPED write).
    pub fn stale_allocations(&self) -> Vec<StaleAllocation> {
        let scopes: Vec<(String, Arc<Scope>)> = read(&self.inner.scopes)
            .iter()
            .map(|(name, scope)| (name.clone(), scope.clone()))
            .collect();
        let mut stale = Vec::new();
        for (cluster, scope) in scopes {
            let data = read(&scope.data);
            stale.extend(
                data.stale
                    .iter()
                    .map(|((instance_id, task), since)| StaleAllocation {
                        cluster: cluster.clone(),
                        instance_id: instance_id.to_string(),
                        task_id: task.to_string(),
                        since: *since,
                    }),
            );
        }
        stale
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
        let running = data
            .pool
            .slot(instance_id)
            .map_or(0, |s| data.pool.running(s));
        let pending = data.on_instance.get(instance_id).map_or(0, |on| on.pending);
        (running, pending)
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
    ids: impl Iterator<Item = (&'a TaskKey, &'a StoredTask)>,
    want: usize,
    found: &mut Vec<(TaskKey, RawTask)>,
) -> (ChunkEnd, Option<TaskKey>) {
    let mut last: Option<&TaskKey> = None;
    for (examined, (id, task)) in ids.enumerate() {
        if examined == SCAN_CHUNK {
            return (ChunkEnd::Paused, last.cloned());
        }
        last = Some(id);
        if data.matches(filter, task) {
            found.push((id.clone(), data.raw(task)));
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
        /// Whether the view counts as caught up (else records arrive during catch-up).
        live: bool,
    }

    impl Feed {
        fn new() -> Self {
            Self {
                view: detached(),
                seq: 0,
                live: true,
            }
        }

        /// A feed whose records all arrive during catch-up, until [`Feed::catch_up`].
        fn catching_up() -> Self {
            Self {
                live: false,
                ..Self::new()
            }
        }

        fn catch_up(&mut self) {
            self.live = true;
            self.view.inner.advance(self.seq, true);
        }

        fn put<T: serde::Serialize>(&mut self, subject: &str, record: &T) -> u64 {
            self.seq += 1;
            let payload = codec::encode_record(record).unwrap();
            self.view.inner.apply(subject, &payload, self.seq);
            self.view.inner.advance(self.seq, self.live);
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

    #[test]
    fn written_instance_records_are_taken_instead_of_decoded() {
        let mut feed = Feed::new();
        let subject = subjects::instance("c", "i-1");
        feed.put(&subject, &instance("c", "i-1", InstanceStatus::Active));
        // The writer offers the record it wrote at the next sequence: the view keeps that
        // very record (the message is not decoded).
        let mut value = instance("c", "i-1", InstanceStatus::Draining);
        value.version = Some(feed.seq + 1);
        let written = Arc::new(Versioned {
            value: value.clone(),
            version: feed.seq + 1,
        });
        feed.view.offer_written_instance(&written);
        feed.put(&subject, &instance("c", "i-1", InstanceStatus::Draining));
        let applied = feed.view.instance("c", "i-1").unwrap();
        assert!(Arc::ptr_eq(&applied, &written));
        // Offers the view has passed are ignored, and offers never applied are forgotten
        // once the apply loop is past them.
        feed.view.offer_written_instance(&written);
        let stale = Arc::new(Versioned {
            value: value.clone(),
            version: feed.seq + 1,
        });
        feed.view.offer_written_instance(&stale);
        feed.seq += 1; // a message the view never receives
        let decoded = feed.put(&subject, &instance("c", "i-1", InstanceStatus::Active));
        let applied = feed.view.instance("c", "i-1").unwrap();
        assert!(!Arc::ptr_eq(&applied, &stale));
        assert_eq!(applied.version, decoded);
        assert_eq!(applied.value.status, InstanceStatus::Active);
        assert_eq!(applied.value.version, Some(decoded));
        assert!(feed.view.inner.written_instances.lock().unwrap().is_empty());
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
        let ids = |ids: &[&str]| ids.iter().map(|i| i.to_string()).collect::<Vec<_>>();
        let found: Vec<Option<u64>> = v
            .tasks_by_id("c", &ids(&["b", "nope", "a"]))
            .into_iter()
            .map(|e| e.map(|e| e.task.version))
            .collect();
        assert_eq!(found, [Some(seq_b), None, Some(seq_b - 1)]);
        assert!(v
            .tasks_by_id("other", &ids(&["a", "b"]))
            .iter()
            .all(Option::is_none));

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
        // Applied live, and applied during catch-up (task sets built at its end).
        task_pages_match_a_full_scan(Feed::new());
        task_pages_match_a_full_scan(Feed::catching_up());
    }

    fn task_pages_match_a_full_scan(mut feed: Feed) {
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
        if !feed.live {
            assert!(!feed.view.is_ready());
            feed.catch_up();
            assert!(feed.view.is_ready());
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
        // Groups have no index: alone, the filter scans.
        filters.push(TaskFilter {
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

    fn stale(v: &View) -> Vec<(String, String, u64)> {
        v.stale_allocations()
            .into_iter()
            .map(|s| {
                assert_eq!(s.cluster, "c");
                (s.instance_id, s.task_id, s.since)
            })
            .collect()
    }

    /// An ACTIVE instance of cluster `c` holding allocations for `tasks`.
    fn holding(id: &str, tasks: &[&str]) -> ContainerInstance {
        let mut i = instance("c", id, InstanceStatus::Active);
        i.allocations = tasks
            .iter()
            .map(|t| (t.to_string(), berth_messages::model::Allocation::default()))
            .collect();
        i
    }

    #[test]
    fn stale_allocations_follow_task_and_instance_records() {
        let mut feed = Feed::new();
        let i1 = subjects::instance("c", "i1");
        let stopped = spec("i1", "web", TaskStatus::Stopped);
        let running = spec("i1", "web", TaskStatus::Running);
        // A STOPPED task whose instance record comes later.
        put_task(&mut feed, "c", "a", &stopped);
        assert!(stale(&feed.view).is_empty());
        let s1 = feed.put(&i1, &holding("i1", &["a", "b"]));
        assert_eq!(stale(&feed.view), [("i1".into(), "a".into(), s1)]);
        // A held task that stops afterwards.
        put_task(&mut feed, "c", "b", &running);
        assert_eq!(stale(&feed.view).len(), 1);
        let sb = put_task(&mut feed, "c", "b", &stopped);
        // A newer STOPPED record of a keeps the time it became stale.
        put_task(&mut feed, "c", "a", &stopped);
        assert_eq!(
            stale(&feed.view),
            [("i1".into(), "a".into(), s1), ("i1".into(), "b".into(), sb)]
        );
        // Releasing a; b is forgotten by the janitor.
        feed.put(&i1, &holding("i1", &["b"]));
        assert_eq!(stale(&feed.view), [("i1".into(), "b".into(), sb)]);
        let b = feed.view.task("c", "b").unwrap();
        assert!(feed.view.forget_task("c", "b", b.task.version));
        assert!(stale(&feed.view).is_empty());
        // A task the instance holds that is not stopped is never stale; nor is a stopped
        // task another instance holds once its record names another instance.
        let s2 = feed.put(&i1, &holding("i1", &["c1", "d"]));
        put_task(&mut feed, "c", "c1", &running);
        put_task(&mut feed, "c", "d", &stopped);
        assert_eq!(stale(&feed.view).len(), 1);
        assert!(s2 < stale(&feed.view)[0].2);
        put_task(&mut feed, "c", "d", &spec("i2", "web", TaskStatus::Stopped));
        assert!(stale(&feed.view).is_empty());
        assert_eq!(feed.view.task("c", "d").unwrap().instance_id, "i2");
    }

    #[test]
    fn stale_allocations_after_catch_up_match_live_tracking() {
        let play = |feed: &mut Feed| {
            let stopped = |on: &str| spec(on, "web", TaskStatus::Stopped);
            let running = spec("i1", "web", TaskStatus::Running);
            // Stopped before its instance record names it; held by i1.
            put_task(feed, "c", "a", &stopped("i1"));
            feed.put(
                &subjects::instance("c", "i1"),
                &holding("i1", &["a", "b", "e"]),
            );
            // Running, then stopped; running and held; never recorded as a task.
            put_task(feed, "c", "b", &running);
            put_task(feed, "c", "b", &stopped("i1"));
            put_task(feed, "c", "c1", &running);
            // Stopped on i2, which holds it after a release elsewhere.
            put_task(feed, "c", "d", &stopped("i2"));
            feed.put(&subjects::instance("c", "i2"), &holding("i2", &["c1", "d"]));
            feed.put(&subjects::instance("c", "i2"), &holding("i2", &["d"]));
        };
        let mut live = Feed::new();
        play(&mut live);
        let mut recovering = Feed::catching_up();
        play(&mut recovering);
        assert!(stale(&recovering.view).is_empty());
        recovering.catch_up();
        let found: Vec<(String, String)> = stale(&recovering.view)
            .into_iter()
            .map(|(i, t, _)| (i, t))
            .collect();
        let tracked: Vec<(String, String)> = stale(&live.view)
            .into_iter()
            .map(|(i, t, _)| (i, t))
            .collect();
        assert_eq!(
            found,
            [
                ("i1".to_string(), "a".to_string()),
                ("i1".to_string(), "b".to_string()),
                ("i2".to_string(), "d".to_string())
            ]
        );
        assert_eq!(found, tracked);
        // Once caught up, records are tracked as they come.
        recovering.put(&subjects::instance("c", "i1"), &holding("i1", &["b"]));
        assert_eq!(stale(&recovering.view).len(), 2);
    }

    #[test]
    fn stopped_tasks_page_by_stopped_at() {
        let mut feed = Feed::new();
        let mut put = |id: &str, last: TaskStatus, desired: TaskStatus, at: Option<f64>| {
            let mut s = spec("i1", "web", last);
            s.desired = desired;
            let mut t = task("c", id, &s);
            t.stopped_at = at;
            feed.put(&subjects::task("c", "i1", id), &t)
        };
        use TaskStatus::{Running, Stopped};
        let t1 = put("t1", Stopped, Stopped, Some(10.0));
        put("t2", Stopped, Stopped, Some(30.0));
        let t3 = put("t3", Stopped, Stopped, Some(20.5));
        put("t4", Stopped, Stopped, None);
        put("t5", Running, Stopped, Some(1.0));
        put("t6", Running, Running, None);
        let v = &feed.view;
        for limit in [1, 2, 10] {
            let pages = all_pages(|after| v.page_stopped_before("c", 25.0, after, limit));
            let got: Vec<ExpiredTask> = pages.into_iter().flatten().collect();
            assert_eq!(
                got,
                [
                    ExpiredTask {
                        task_id: "t1".into(),
                        instance_id: "i1".into(),
                        version: t1
                    },
                    ExpiredTask {
                        task_id: "t3".into(),
                        instance_id: "i1".into(),
                        version: t3
                    }
                ],
                "limit {limit}"
            );
        }
        assert!(v.page_stopped_before("c", 5.0, None, 10).items.is_empty());
        assert!(v.page_stopped_before("x", 50.0, None, 10).items.is_empty());
    }

    #[test]
    fn task_records_read_back_as_written() {
        let mut feed = Feed::new();
        let mut s = spec("i1", "web", TaskStatus::Running);
        s.started_by = Some("svc/web".into());
        let mut t = task("c", "0123456789abcdef0123456789abcdef", &s);
        t.containers = vec![berth_messages::model::Container {
            container_arn: ArnScope::default().container(
                "c",
                "0123456789abcdef0123456789abcdef",
                "ffffffffffffffffffffffffffffffff",
            ),
            name: "app".into(),
            exit_code: Some(3),
            ..Default::default()
        }];
        t.stopped_reason = Some("x".repeat(500));
        let seq = feed.put(
            &subjects::task("c", "i1", "0123456789abcdef0123456789abcdef"),
            &t,
        );
        let entry = feed
            .view
            .task("c", "0123456789abcdef0123456789abcdef")
            .unwrap();
        t.version = Some(seq);
        assert_eq!(entry.task.value, t);
        assert_eq!(entry.task.version, seq);
        let filter = TaskFilter {
            started_by: Some("svc/web".into()),
            ..Default::default()
        };
        assert_eq!(feed.view.page_tasks("c", &filter, None, 10).items.len(), 1);
        // A map that is not a task (required fields missing) is skipped.
        feed.put(
            &subjects::task("c", "i1", "t2"),
            &berth_messages::model::Tag::default(),
        );
        assert!(feed.view.task("c", "t2").is_none());
        assert_eq!(feed.view.tasks_len(), 1);
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

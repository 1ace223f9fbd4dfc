//! Everything under one cluster's subjects ([`Scope`]): its instances and tasks, the
//! symbols and ordered task sets (per instance, family, `startedBy`, desired status) that
//! catch-up leaves out and bulk-builds at its end, the running and pending counters, and
//! the allocations instance records still hold for STOPPED tasks.

use super::pool::count_in_pool;
use super::task::{PreparedTask, StoredTask};
use super::{read, write, Inner, View};
use crate::compact::FastMap;
use crate::keys::{Sym, Symbols, TaskKey, NO_SYM};
use crate::Versioned;
use berth_messages::model::{ContainerInstance, TaskStatus};
use berth_placement::InstancePool;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

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

/// Everything that lives under one cluster's subjects.
#[derive(Default)]
pub(super) struct Scope {
    pub(super) data: RwLock<ScopeData>,
}

pub(super) type IdSet = BTreeSet<TaskKey>;

#[derive(Default)]
pub(super) struct ScopeData {
    pub(super) instances: BTreeMap<String, Arc<Versioned<ContainerInstance>>>,
    pub(super) registered: i64,
    /// Instance ids, families, groups and `startedBy` values of this cluster's tasks.
    pub(super) syms: Symbols,
    pub(super) tasks: BTreeMap<TaskKey, StoredTask>,
    pub(super) running: i64,
    pub(super) pending: i64,
    pub(super) on_instance: HashMap<Arc<str>, InstanceTasks>,
    pub(super) by_family: HashMap<Sym, IdSet>,
    pub(super) by_started_by: HashMap<Sym, IdSet>,
    /// Every desired status but RUNNING (which nearly every task has: a filter on it
    /// scans, an index would only cost memory).
    pub(super) by_desired: HashMap<TaskStatus, IdSet>,
    /// (instance id, task) for allocations an instance record still holds for a task
    /// whose record is STOPPED, with the journal sequence since which it is so.
    pub(super) stale: BTreeMap<(Arc<str>, TaskKey), u64>,
    /// Whether the ordered task sets (tasks per instance, family, `startedBy`, group,
    /// desired status) and the stale allocations are kept; catch-up leaves them out and
    /// builds them at its end.
    pub(super) indexed: bool,
    /// The instances as placement scans them (remaining resources, task groups, running
    /// counts), kept up to date by the apply loop.
    pub(super) pool: InstancePool,
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

#[derive(Default)]
pub(super) struct InstanceTasks {
    pub(super) ids: IdSet,
    /// RUNNING tasks per instance live in the placement pool.
    pub(super) pending: i64,
}

/// (running, pending) contribution of a lastStatus.
pub(super) fn task_weight(status: TaskStatus) -> (i64, i64) {
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

/// Whether a desired status has an index (see `ScopeData::by_desired`).
pub(super) fn desired_indexed(status: TaskStatus) -> bool {
    status != TaskStatus::Running
}

impl ScopeData {
    pub(super) fn sym(&self, sym: Sym) -> Option<&str> {
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
        count_in_pool(&mut self.pool, &self.syms, instance_id, task, 1);
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
            count_in_pool(&mut self.pool, &self.syms, instance_id, task, -1);
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
    pub(super) fn apply_task(
        &mut self,
        cluster: &str,
        task_id: &str,
        mut prepared: PreparedTask<'_>,
    ) -> bool {
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
    pub(super) fn forget_task(&mut self, task_id: &str, version: u64) -> bool {
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
    pub(super) fn track_allocations(
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
}

impl Inner {
    pub(super) fn scope(&self, cluster: &str) -> Option<Arc<Scope>> {
        read(&self.scopes).get(cluster).cloned()
    }

    pub(super) fn scope_or_create(&self, cluster: &str) -> Arc<Scope> {
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
    pub(super) fn build_indexes(&self) {
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
}

impl View {
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
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::ClusterCounts;
    use super::*;
    use berth_messages::model::InstanceStatus;
    use berth_messages::subjects;

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
}

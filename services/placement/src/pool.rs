//! [`InstancePool`]: one cluster's container instances kept in the shape placement reads,
//! updated incrementally as instance and task records change, so that a decision is a scan
//! of flat per-instance figures instead of a walk over records.
//!
//! Each instance has a stable slot holding its remaining CPU and memory and whether it can
//! take tasks (computed once per record, not per decision), its running-task count and its
//! task groups. Task groups are also kept per group (group → slot → tasks), so the figures
//! spread and distinctInstance need are built without touching the other groups. What only
//! depends on an instance's facts (attributes, status, agent) and not on its tasks is cached
//! per pool revision: the value of an attribute per slot (spread buckets) and the verdict of
//! a memberOf expression per slot. The revision moves only when some instance's facts
//! change, which placements (allocations) never do.

use crate::candidate::Candidate;
use crate::capacity::{eligibility, headroom, Shortfall};
use crate::expr::{Expr, Facts};
use berth_messages::model::ContainerInstance;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

/// An instance record as the pool keeps it; implemented by whatever wraps the record
/// (a view's versioned record, or the record itself).
pub trait InstanceRecord: Send + Sync {
    fn instance(&self) -> &ContainerInstance;
}

impl InstanceRecord for ContainerInstance {
    fn instance(&self) -> &ContainerInstance {
        self
    }
}

/// What a decision reads first about one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) cpu: i64,
    pub(crate) memory: i64,
    pub(crate) eligible: Result<(), Shortfall>,
    /// The slot has an instance record (task records can name an instance first).
    pub(crate) present: bool,
}

impl Head {
    /// Whether a task of (CPU, memory) fits here, ignoring what a batch took: computed
    /// without branches, for scans that test every slot.
    #[inline(always)]
    pub(crate) fn fits(&self, cpu: i64, memory: i64) -> bool {
        self.present & self.eligible.is_ok() & (self.cpu >= cpu) & (self.memory >= memory)
    }

    const ABSENT: Head = Head {
        cpu: 0,
        memory: 0,
        eligible: Err(Shortfall::Inactive),
        present: false,
    };

    pub(crate) fn of(instance: &ContainerInstance) -> Self {
        let (cpu, memory) = headroom(instance);
        Self {
            cpu,
            memory,
            eligible: eligibility(instance),
            present: true,
        }
    }
}

/// The value of one attribute per slot, as bucket numbers (equal values, equal buckets;
/// an absent attribute is a bucket of its own).
#[derive(Debug, Default)]
pub(crate) struct Column {
    pub(crate) of: Vec<u32>,
    pub(crate) buckets: usize,
    /// The slots of each bucket, ascending.
    pub(crate) members: Vec<Vec<usize>>,
    /// Each bucket's place in the order of the values (absent first): buckets are numbered
    /// by first appearance, which depends on which instances a source holds, so equally
    /// loaded buckets are visited in this order to decide alike over any source.
    pub(crate) rank: Vec<u32>,
}

impl Column {
    /// A group's tasks, given as (slot, tasks), summed per bucket over the slots `counts`
    /// admits.
    pub(crate) fn tasks_per_bucket(
        &self,
        group_tasks: &[(usize, u32)],
        counts: impl Fn(usize) -> bool,
    ) -> Vec<u64> {
        let mut sums = vec![0u64; self.buckets];
        for &(slot, n) in group_tasks {
            if counts(slot) {
                sums[self.of[slot] as usize] += u64::from(n);
            }
        }
        sums
    }

    pub(crate) fn build<'i>(
        instances: impl Iterator<Item = Option<&'i ContainerInstance>>,
        attribute: &str,
    ) -> Self {
        let mut values: HashMap<Option<&str>, u32> = HashMap::new();
        let of: Vec<u32> = instances
            .map(|instance| {
                let value = instance.and_then(|i| {
                    i.attributes
                        .iter()
                        .find(|a| a.name == attribute)
                        .map(|a| a.value.as_deref().unwrap_or(""))
                });
                let next = values.len() as u32;
                *values.entry(value).or_insert(next)
            })
            .collect();
        let mut members = vec![Vec::new(); values.len()];
        for (slot, bucket) in of.iter().enumerate() {
            members[*bucket as usize].push(slot);
        }
        let mut by_value: Vec<(Option<&str>, u32)> = values.into_iter().collect();
        by_value.sort_unstable();
        let mut rank = vec![0; by_value.len()];
        for (place, (_, bucket)) in by_value.iter().enumerate() {
            rank[*bucket as usize] = place as u32;
        }
        Self {
            of,
            buckets: rank.len(),
            members,
            rank,
        }
    }
}

/// The slots holding tasks of one group, with their task counts: a dense list (scanned by
/// decisions) plus its index (updated in O(1)).
#[derive(Debug, Default)]
struct GroupTasks {
    entries: Vec<(usize, u32)>,
    at: HashMap<usize, usize>,
}

impl GroupTasks {
    fn set(&mut self, slot: usize, tasks: u32) {
        match (self.at.get(&slot).copied(), tasks) {
            (Some(i), 0) => {
                self.at.remove(&slot);
                self.entries.swap_remove(i);
                if let Some((moved, _)) = self.entries.get(i) {
                    self.at.insert(*moved, i);
                }
            }
            (Some(i), n) => self.entries[i].1 = n,
            (None, 0) => {}
            (None, n) => {
                self.at.insert(slot, self.entries.len());
                self.entries.push((slot, n));
            }
        }
    }
}

/// Facts-only results, valid for one pool revision.
#[derive(Default)]
struct Caches {
    revision: u64,
    columns: HashMap<String, Arc<Column>>,
    verdicts: HashMap<String, Arc<[bool]>>,
    /// Tasks of a group per bucket of an attribute's column, over present slots, by
    /// (group, attribute); kept up to date as group tasks change (they do not move the
    /// revision).
    bucket_tasks: HashMap<(String, String), (Arc<Column>, Vec<u64>)>,
}

/// Most (group, attribute) task sums kept between revisions; past it they start over.
const MAX_BUCKET_TASKS: usize = 64;

/// One cluster's instances for placement. See the module documentation.
#[derive(Default)]
pub struct InstancePool {
    ids: Vec<Arc<str>>,
    by_id: HashMap<Arc<str>, usize>,
    records: Vec<Option<Arc<dyn InstanceRecord>>>,
    heads: Vec<Head>,
    /// How many present slots have each remaining memory: the highest bounds what any
    /// instance can offer, so a decision can stop scanning once it has enough as good.
    memory_levels: BTreeMap<i64, u32>,
    running: Vec<i64>,
    groups_of: Vec<Arc<BTreeMap<String, u32>>>,
    groups: HashMap<String, GroupTasks>,
    present: usize,
    /// Moves when an instance appears or its facts change.
    revision: u64,
    caches: Mutex<Caches>,
}

impl std::fmt::Debug for InstancePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstancePool")
            .field("slots", &self.ids.len())
            .field("present", &self.present)
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

static NO_GROUPS: std::sync::OnceLock<Arc<BTreeMap<String, u32>>> = std::sync::OnceLock::new();

impl InstancePool {
    pub fn new() -> Self {
        Self::default()
    }

    /// A pool of `instances` with the task groups and running counts of each (the slot of
    /// the i-th item is i).
    pub fn from_records(
        instances: impl IntoIterator<Item = (Arc<dyn InstanceRecord>, BTreeMap<String, u32>, i64)>,
    ) -> Self {
        let mut pool = Self::new();
        for (i, (record, groups, running)) in instances.into_iter().enumerate() {
            let id: Arc<str> = Arc::from(format!("#{i}"));
            pool.upsert(&id, record);
            for (group, n) in groups {
                pool.add_group_tasks(&id, &group, i64::from(n));
            }
            pool.add_running(&id, running);
        }
        pool
    }

    fn slot_or_insert(&mut self, id: &str) -> usize {
        if let Some(slot) = self.by_id.get(id) {
            return *slot;
        }
        let slot = self.ids.len();
        let id: Arc<str> = Arc::from(id);
        self.by_id.insert(id.clone(), slot);
        self.ids.push(id);
        self.records.push(None);
        self.heads.push(Head::ABSENT);
        self.running.push(0);
        self.groups_of
            .push(NO_GROUPS.get_or_init(Arc::default).clone());
        slot
    }

    /// The instance `id` now has this record.
    pub fn upsert(&mut self, id: &str, record: Arc<dyn InstanceRecord>) {
        let slot = self.slot_or_insert(id);
        let facts_changed = match &self.records[slot] {
            Some(old) => !same_facts(old.instance(), record.instance()),
            None => {
                self.present += 1;
                true
            }
        };
        let head = Head::of(record.instance());
        if self.heads[slot].present {
            let old = self.heads[slot].memory;
            if let Some(count) = self.memory_levels.get_mut(&old) {
                *count -= 1;
                if *count == 0 {
                    self.memory_levels.remove(&old);
                }
            }
        }
        *self.memory_levels.entry(head.memory).or_insert(0) += 1;
        self.heads[slot] = head;
        self.records[slot] = Some(record);
        if facts_changed {
            self.revision += 1;
        }
    }

    /// `delta` more (or fewer) non-stopped tasks of `group` on instance `id`.
    pub fn add_group_tasks(&mut self, id: &str, group: &str, delta: i64) {
        if delta == 0 {
            return;
        }
        let slot = self.slot_or_insert(id);
        let apply =
            |n: u32| -> u32 { u32::try_from((i64::from(n) + delta).max(0)).unwrap_or(u32::MAX) };
        let groups = Arc::make_mut(&mut self.groups_of[slot]);
        let before = groups.get(group).copied().unwrap_or(0);
        let now = apply(before);
        if now == 0 {
            groups.remove(group);
        } else {
            groups.insert(group.to_string(), now);
        }
        let per_slot = match self.groups.get_mut(group) {
            Some(m) => m,
            None => self.groups.entry(group.to_string()).or_default(),
        };
        per_slot.set(slot, now);
        if per_slot.entries.is_empty() {
            self.groups.remove(group);
        }
        let caches = self
            .caches
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if self.heads[slot].present && caches.revision == self.revision {
            for ((of_group, _), (column, sums)) in caches.bucket_tasks.iter_mut() {
                if of_group == group {
                    let bucket = column.of[slot] as usize;
                    sums[bucket] =
                        (sums[bucket] + u64::from(now)).saturating_sub(u64::from(before));
                }
            }
        }
    }

    /// `delta` more (or fewer) RUNNING tasks on instance `id`.
    pub fn add_running(&mut self, id: &str, delta: i64) {
        if delta == 0 {
            return;
        }
        let slot = self.slot_or_insert(id);
        self.running[slot] += delta;
    }

    /// Slots, including those of instances named only by tasks so far.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Instances with a record.
    pub fn present(&self) -> usize {
        self.present
    }

    pub fn slot(&self, id: &str) -> Option<usize> {
        self.by_id.get(id).copied()
    }

    /// The instance id of a slot (the key it was upserted with).
    pub fn id(&self, slot: usize) -> Option<&Arc<str>> {
        self.ids.get(slot)
    }

    pub fn record(&self, slot: usize) -> Option<&Arc<dyn InstanceRecord>> {
        self.records.get(slot)?.as_ref()
    }

    /// The candidate of a slot (what the cluster query language evaluates).
    pub fn candidate(&self, slot: usize) -> Option<Candidate<'_>> {
        let record = self.record(slot)?;
        Some(Candidate {
            instance: record.instance(),
            groups: &self.groups_of[slot],
            running_tasks: self.running[slot],
        })
    }

    /// Non-stopped tasks per task group on a slot.
    pub fn groups_of(&self, slot: usize) -> Option<&Arc<BTreeMap<String, u32>>> {
        self.groups_of.get(slot)
    }

    pub fn running(&self, slot: usize) -> i64 {
        self.running.get(slot).copied().unwrap_or(0)
    }

    pub(crate) fn heads(&self) -> &[Head] {
        &self.heads
    }

    /// The most remaining memory any present instance has.
    pub(crate) fn max_memory(&self) -> Option<i64> {
        self.memory_levels.keys().next_back().copied()
    }

    /// The slots holding tasks of `group`, with their task counts, in no order.
    pub(crate) fn group_tasks(&self, group: &str) -> &[(usize, u32)] {
        self.groups.get(group).map_or(&[], |g| g.entries.as_slice())
    }

    fn caches(&self) -> std::sync::MutexGuard<'_, Caches> {
        let mut caches = self.caches.lock().unwrap_or_else(PoisonError::into_inner);
        if caches.revision != self.revision {
            *caches = Caches {
                revision: self.revision,
                ..Caches::default()
            };
        }
        caches
    }

    /// Tasks of `group` per bucket of the column of `attribute`, over present slots but
    /// those in `excluded`.
    pub(crate) fn bucket_tasks(
        &self,
        group: &str,
        attribute: &str,
        excluded: &[usize],
    ) -> Vec<u64> {
        let column = &self.column(attribute);
        let mut tasks = {
            let mut caches = self.caches();
            let key = (group.to_string(), attribute.to_string());
            match caches.bucket_tasks.get(&key) {
                Some((cached, sums)) if Arc::ptr_eq(cached, column) => sums.clone(),
                _ => {
                    let sums = column
                        .tasks_per_bucket(self.group_tasks(group), |slot| self.heads[slot].present);
                    if caches.bucket_tasks.len() >= MAX_BUCKET_TASKS {
                        caches.bucket_tasks.clear();
                    }
                    caches
                        .bucket_tasks
                        .insert(key, (column.clone(), sums.clone()));
                    sums
                }
            }
        };
        let mut excluded = excluded.to_vec();
        excluded.sort_unstable();
        excluded.dedup();
        for slot in excluded {
            if self.heads.get(slot).is_some_and(|h| h.present) {
                let n = self.groups_of[slot].get(group).copied().unwrap_or(0);
                let bucket = column.of[slot] as usize;
                tasks[bucket] = tasks[bucket].saturating_sub(u64::from(n));
            }
        }
        tasks
    }

    pub(crate) fn column(&self, attribute: &str) -> Arc<Column> {
        if let Some(column) = self.caches().columns.get(attribute) {
            return column.clone();
        }
        let column = Arc::new(Column::build(
            self.records
                .iter()
                .map(|r| r.as_ref().map(|r| r.instance())),
            attribute,
        ));
        self.caches()
            .columns
            .insert(attribute.to_string(), column.clone());
        column
    }

    /// Whether each slot satisfies `expr`; None for expressions that read tasks
    /// (`task:group`, `runningTasksCount`), whose verdicts change with every placement.
    pub(crate) fn verdicts(&self, expr: &Expr) -> Option<Arc<[bool]>> {
        if expr.depends_on_tasks() {
            return None;
        }
        let key = expr.to_string();
        if let Some(v) = self.caches().verdicts.get(&key) {
            return Some(v.clone());
        }
        let empty = BTreeMap::new();
        let verdicts: Arc<[bool]> = self
            .records
            .iter()
            .map(|r| {
                r.as_ref().is_some_and(|r| {
                    let candidate = Candidate {
                        instance: r.instance(),
                        groups: &empty,
                        running_tasks: 0,
                    };
                    Facts {
                        candidate: &candidate,
                        placed: None,
                    }
                    .eval(expr)
                })
            })
            .collect();
        self.caches().verdicts.insert(key, verdicts.clone());
        Some(verdicts)
    }
}

/// Whether two records of one instance agree on everything placement reads besides its
/// resources and tasks: what the query language and eligibility see.
fn same_facts(a: &ContainerInstance, b: &ContainerInstance) -> bool {
    a.status == b.status
        && a.agent_connected == b.agent_connected
        && a.health_status == b.health_status
        && a.attributes == b.attributes
        && a.version_info.agent_version == b.version_info.agent_version
        && a.registered_at.to_bits() == b.registered_at.to_bits()
        && a.ec2_instance_id == b.ec2_instance_id
        && a.container_instance_arn == b.container_instance_arn
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capacity::tests::instance;
    use crate::{allocate, parse};
    use berth_messages::model::{Allocation, Attribute};

    fn zoned(id: &str, zone: &str) -> ContainerInstance {
        let mut i = instance(id, 1024, 2048);
        i.attributes.push(Attribute {
            name: "zone".into(),
            value: Some(zone.into()),
            ..Default::default()
        });
        i
    }

    fn record(i: &ContainerInstance) -> Arc<dyn InstanceRecord> {
        Arc::new(i.clone())
    }

    #[test]
    fn max_memory_follows_records_down_and_up() {
        let mut pool = InstancePool::new();
        assert_eq!(pool.max_memory(), None);
        let (mut a, b) = (instance("a", 1000, 2000), instance("b", 1000, 1500));
        pool.upsert("a", record(&a));
        pool.upsert("b", record(&b));
        assert_eq!(pool.max_memory(), Some(2000));
        let used = Allocation {
            memory: 1000,
            ..Default::default()
        };
        allocate(&mut a, "t1", used);
        pool.upsert("a", record(&a));
        assert_eq!(pool.max_memory(), Some(1500));
        a.allocations.clear();
        pool.upsert("a", record(&a));
        assert_eq!(pool.max_memory(), Some(2000));
    }

    #[test]
    fn bucket_tasks_follow_group_tasks_between_revisions() {
        let mut pool = InstancePool::new();
        pool.add_group_tasks("early", "web", 5); // a slot without a record: not counted
        for (id, zone) in [("a", "z1"), ("b", "z2"), ("c", "z1")] {
            pool.upsert(id, record(&zoned(id, zone)));
        }
        // Summed again from the group's tasks, slot by slot.
        let fresh = |pool: &InstancePool, excluded: &[usize]| {
            let zone = pool.column("zone");
            let mut sums = vec![0u64; zone.buckets];
            for (slot, n) in pool.group_tasks("web") {
                if pool.heads[*slot].present && !excluded.contains(slot) {
                    sums[zone.of[*slot] as usize] += u64::from(*n);
                }
            }
            sums
        };
        let sums =
            |pool: &InstancePool, excluded: &[usize]| pool.bucket_tasks("web", "zone", excluded);
        pool.add_group_tasks("a", "web", 2);
        assert_eq!(sums(&pool, &[]), fresh(&pool, &[]));
        // Kept up to date without a new revision, for this group only.
        pool.add_group_tasks("c", "web", 3);
        pool.add_group_tasks("b", "web", 1);
        pool.add_group_tasks("a", "web", -1);
        pool.add_group_tasks("b", "db", 7);
        pool.add_group_tasks("early", "web", 1);
        assert_eq!(sums(&pool, &[]), fresh(&pool, &[]));
        let c = pool.slot("c").unwrap();
        assert_eq!(sums(&pool, &[c, c]), fresh(&pool, &[c]));
        // A fact changes: a new column, sums built again.
        pool.upsert("b", record(&zoned("b", "z1")));
        pool.add_group_tasks("b", "web", 1);
        assert_eq!(sums(&pool, &[]), fresh(&pool, &[]));
        let z1 = pool.column("zone").of[c] as usize;
        assert_eq!(sums(&pool, &[])[z1], 1 + 3 + 2);
    }

    #[test]
    fn placements_keep_the_revision_and_facts_move_it() {
        let mut pool = InstancePool::new();
        let mut a = zoned("a", "z1");
        pool.upsert("a", record(&a));
        pool.upsert("b", record(&zoned("b", "z2")));
        let revision = pool.revision;
        let zone = pool.column("zone");
        let expr = parse("attribute:zone == z1").unwrap();
        let verdicts = pool.verdicts(&expr).unwrap();
        assert_eq!(&*verdicts, &[true, false]);

        allocate(
            &mut a,
            "t1",
            Allocation {
                cpu: 24,
                memory: 48,
                ..Default::default()
            },
        );
        pool.upsert("a", record(&a));
        assert_eq!(pool.revision, revision, "an allocation is not a fact");
        assert_eq!((pool.heads()[0].cpu, pool.heads()[0].memory), (1000, 2000));
        assert!(Arc::ptr_eq(&zone, &pool.column("zone")), "cache kept");

        a.attributes[0].value = Some("z2".into());
        pool.upsert("a", record(&a));
        assert!(pool.revision > revision);
        assert_eq!(&*pool.verdicts(&expr).unwrap(), &[false, false]);
        let zone = pool.column("zone");
        assert_eq!(zone.of[0], zone.of[1]);
        assert_eq!(zone.members[zone.of[0] as usize], vec![0, 1]);
    }

    #[test]
    fn expressions_that_read_tasks_are_not_cached() {
        let mut pool = InstancePool::new();
        pool.upsert("a", record(&zoned("a", "z1")));
        assert!(pool
            .verdicts(&parse("runningTasksCount < 3").unwrap())
            .is_none());
        assert!(pool
            .verdicts(&parse("task:group == web").unwrap())
            .is_none());
    }

    #[test]
    fn group_tasks_follow_adds_and_removals() {
        let mut pool = InstancePool::new();
        // Tasks can name an instance before its record: the slot exists, absent.
        pool.add_group_tasks("a", "web", 2);
        pool.add_group_tasks("b", "web", 1);
        pool.add_group_tasks("c", "web", 3);
        assert_eq!(pool.present(), 0);
        assert!(!pool.heads()[0].present);
        pool.add_group_tasks("a", "web", -2);
        let mut web: Vec<(usize, u32)> = pool.group_tasks("web").to_vec();
        web.sort_unstable();
        assert_eq!(web, vec![(1, 1), (2, 3)]);
        pool.add_group_tasks("c", "web", -1);
        pool.add_group_tasks("b", "web", -1);
        assert_eq!(pool.group_tasks("web"), &[(2, 2)]);
        assert_eq!(pool.groups_of(2).unwrap().get("web"), Some(&2));
        assert!(pool.groups_of(0).unwrap().is_empty());
        pool.add_group_tasks("c", "web", -5);
        assert!(pool.group_tasks("web").is_empty());
        pool.upsert("b", record(&zoned("b", "z1")));
        assert_eq!(pool.present(), 1);
        assert_eq!(pool.slot("b"), Some(1));
        assert_eq!(pool.id(1).map(|id| &**id), Some("b"));
    }
}

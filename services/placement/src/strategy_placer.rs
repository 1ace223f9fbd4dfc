//! ECS placement with constraints and strategies: [`StrategyPlacer`] filters the
//! candidates by resources (status, agent, CPU, memory, ports), then by the constraints
//! (binding), then narrows by each strategy in order keeping ties (best effort), then picks
//! at random among what remains. With no strategy it picks at random among the best few by
//! remaining memory, like [`crate::RandomFitPlacer`].
//!
//! A decision reads flat per-instance figures ([`Head`]: remaining CPU and memory,
//! eligibility) from its source, either an [`InstancePool`] kept up to date as records
//! change (the control plane's path: nothing is recomputed per decision) or a slice of
//! [`Candidate`]s summarised once per call. What a batch takes is kept in a small overlay,
//! so one decision costs a scan of a few comparisons per instance; constraint verdicts are
//! computed lazily (or read from the pool's cache) only for instances with the resources,
//! and the expensive checks (ports, exact allocation) run only for candidates that could win.
//!
//! A task that cannot be placed fails with the closest instance: resources are checked
//! before constraints (as ECS filters), so if any instance has the resources, the failure
//! is the constraint that the closest of those breaks, with reason `ATTRIBUTE` and a
//! detail naming the constraint (`memberOf placement constraint unsatisfied: <expr>` or
//! `distinctInstance placement constraint unsatisfied`).

use crate::candidate::Candidate;
use crate::capacity::{capacity_with, fit_resources, ports_available, Capacity, Shortfall};
use crate::demand::Demand;
use crate::expr::{Expr, Facts};
use crate::placer::{best_few, Placement, PlacementFailure};
use crate::pool::{Column, Head, InstancePool};
use crate::rules::{BinpackField, Constraint, SpreadField, Strategy, MAX_STRATEGIES};
use berth_messages::model::{Allocation, ContainerInstance};
use fixedbitset::FixedBitSet;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::borrow::Cow;
use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// One placement decision's input besides the candidates.
#[derive(Debug, Clone, Copy)]
pub struct PlacementRequest<'a> {
    pub demand: &'a Demand,
    /// How many tasks; each sees the placements before it.
    pub count: usize,
    /// The task group (`family:<name>` by default in ECS) that spread balances and
    /// distinctInstance separates.
    pub group: &'a str,
    pub constraints: &'a [Constraint],
    /// Applied in order. Only the first [`MAX_STRATEGIES`] that narrow (binpack, spread)
    /// are used; [`crate::strategies_from`] never returns more.
    pub strategies: &'a [Strategy],
}

/// What a scheduler has promised on one instance to placements whose instance writes
/// are still in flight, which the pool does not show yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Promise {
    pub slot: usize,
    pub cpu: i64,
    pub memory: i64,
    /// How many tasks the promise holds.
    pub tasks: u32,
}

/// With no strategy, an instance holding promises for fewer than this many tasks (of
/// other requests) and none of the batch's ranks by the free memory its record shows, and
/// wins ties with instances as free: concurrent requests join the write already under way
/// (one group commit for several placements) instead of each writing another instance.
/// At this many it ranks by what is left after its promises, like any touched instance.
pub const JOIN_IN_FLIGHT: u32 = 16;

/// The constraint-and-strategy placer. Like [`crate::RandomFitPlacer`] it only proposes;
/// seeded, it is deterministic.
pub struct StrategyPlacer {
    rng: StdRng,
    /// Scan every instance for every task of a batch, with the general loop (the reference
    /// the incremental path and the specialised scans are checked against).
    rescan_every_decision: bool,
}

impl StrategyPlacer {
    pub fn new() -> Self {
        Self {
            // Seeded from the thread's generator: no system call per placer (one per
            // RunTask).
            rng: StdRng::from_rng(rand::thread_rng()).unwrap_or_else(|_| StdRng::from_entropy()),
            rescan_every_decision: false,
        }
    }

    /// Same seed, same candidates, same requests: same placements.
    pub fn with_seed(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            rescan_every_decision: false,
        }
    }

    /// Places `request.count` tasks over `candidates`; one result per task, in order.
    /// `Placement::instance_index` indexes `candidates`. With no candidates every result is
    /// a `MISSING` failure.
    pub fn place(
        &mut self,
        candidates: &[Candidate<'_>],
        request: &PlacementRequest<'_>,
    ) -> Vec<Result<Placement, PlacementFailure>> {
        let source = Candidates::new(candidates);
        self.place_from(&source, candidates.len(), request, &[], &[])
    }

    /// Places `request.count` tasks over the instances of `pool`, leaving out the slots in
    /// `excluded`; `Placement::instance_index` is a pool slot ([`InstancePool::id`] names
    /// it). With no instance left every result is a `MISSING` failure.
    pub fn place_in_pool(
        &mut self,
        pool: &InstancePool,
        request: &PlacementRequest<'_>,
        excluded: &[usize],
    ) -> Vec<Result<Placement, PlacementFailure>> {
        self.place_in_pool_reserving(pool, request, excluded, &[])
    }

    /// Like [`StrategyPlacer::place_in_pool`], counting what this scheduler `promised`
    /// as already taken. Without it, concurrent requests that score alike (binpack) all
    /// pick the same instance and most of them are refused at commit. With no strategy,
    /// promises also say which instances are being written (see [`JOIN_IN_FLIGHT`]).
    pub fn place_in_pool_reserving(
        &mut self,
        pool: &InstancePool,
        request: &PlacementRequest<'_>,
        excluded: &[usize],
        reserved: &[Promise],
    ) -> Vec<Result<Placement, PlacementFailure>> {
        let present = pool.present().saturating_sub(excluded.len());
        self.place_from(pool, present, request, excluded, reserved)
    }

    fn place_from<S: Source>(
        &mut self,
        source: &S,
        present: usize,
        request: &PlacementRequest<'_>,
        excluded: &[usize],
        reserved: &[Promise],
    ) -> Vec<Result<Placement, PlacementFailure>> {
        if request.count == 0 {
            return Vec::new();
        }
        if present == 0 {
            return vec![Err(PlacementFailure::no_instances()); request.count];
        }
        let mut round = Round::new(source, present, request, excluded);
        round.incremental &= !self.rescan_every_decision;
        round.specialised_scans = !self.rescan_every_decision;
        if self.rescan_every_decision {
            round.max_memory = None;
        }
        round.reserve(reserved);
        let mut results: Vec<Result<Placement, PlacementFailure>> =
            Vec::with_capacity(request.count);
        for _ in 0..request.count {
            // A failure changes nothing, so every later task of the batch fails alike.
            let result = match results.last() {
                Some(Err(failure)) => Err(failure.clone()),
                _ => round.place_one(&mut self.rng, request.count - results.len()),
            };
            results.push(result);
        }
        results
    }
}

impl Default for StrategyPlacer {
    fn default() -> Self {
        Self::new()
    }
}

/// Where a decision reads its instances from.
pub(crate) trait Source {
    fn heads(&self) -> &[Head];
    /// The record of a present slot.
    fn instance(&self, slot: usize) -> &ContainerInstance;
    fn candidate(&self, slot: usize) -> Candidate<'_>;
    /// Tasks of `group` per slot, as (slot, tasks) for the slots that hold some.
    fn group_tasks(&self, group: &str) -> Cow<'_, [(usize, u32)]>;
    fn column(&self, attribute: &str) -> Arc<Column>;
    /// Tasks of `group` per bucket of the column of `attribute`, over present slots but
    /// `excluded`, if the source keeps them.
    fn bucket_tasks(&self, group: &str, attribute: &str, excluded: &[usize]) -> Option<Vec<u64>>;
    /// Cached verdicts of an expression that does not read tasks, if the source keeps them.
    fn verdicts(&self, expr: &Expr) -> Option<Arc<[bool]>>;
    /// The most remaining memory of any present instance, if the source keeps it.
    fn max_memory(&self) -> Option<i64> {
        None
    }
}

impl Source for InstancePool {
    fn heads(&self) -> &[Head] {
        InstancePool::heads(self)
    }

    fn max_memory(&self) -> Option<i64> {
        InstancePool::max_memory(self)
    }

    fn instance(&self, slot: usize) -> &ContainerInstance {
        match self.record(slot) {
            Some(record) => record.instance(),
            None => absent_instance(),
        }
    }

    fn candidate(&self, slot: usize) -> Candidate<'_> {
        InstancePool::candidate(self, slot).unwrap_or_else(|| Candidate {
            instance: absent_instance(),
            groups: empty_groups(),
            running_tasks: 0,
        })
    }

    fn group_tasks(&self, group: &str) -> Cow<'_, [(usize, u32)]> {
        Cow::Borrowed(InstancePool::group_tasks(self, group))
    }

    fn column(&self, attribute: &str) -> Arc<Column> {
        InstancePool::column(self, attribute)
    }

    fn bucket_tasks(&self, group: &str, attribute: &str, excluded: &[usize]) -> Option<Vec<u64>> {
        Some(InstancePool::bucket_tasks(self, group, attribute, excluded))
    }

    fn verdicts(&self, expr: &Expr) -> Option<Arc<[bool]>> {
        InstancePool::verdicts(self, expr)
    }
}

fn absent_instance() -> &'static ContainerInstance {
    static ABSENT: std::sync::OnceLock<ContainerInstance> = std::sync::OnceLock::new();
    ABSENT.get_or_init(ContainerInstance::default)
}

fn empty_groups() -> &'static BTreeMap<String, u32> {
    static EMPTY: BTreeMap<String, u32> = BTreeMap::new();
    &EMPTY
}

/// A slice of candidates summarised once per call.
struct Candidates<'c> {
    candidates: &'c [Candidate<'c>],
    heads: Vec<Head>,
}

impl<'c> Candidates<'c> {
    fn new(candidates: &'c [Candidate<'c>]) -> Self {
        Self {
            candidates,
            heads: candidates.iter().map(|c| Head::of(c.instance)).collect(),
        }
    }
}

impl Source for Candidates<'_> {
    fn heads(&self) -> &[Head] {
        &self.heads
    }

    fn instance(&self, slot: usize) -> &ContainerInstance {
        self.candidates[slot].instance
    }

    fn candidate(&self, slot: usize) -> Candidate<'_> {
        self.candidates[slot]
    }

    fn group_tasks(&self, group: &str) -> Cow<'_, [(usize, u32)]> {
        self.candidates
            .iter()
            .enumerate()
            .filter_map(|(slot, c)| c.groups.get(group).map(|n| (slot, *n)))
            .collect()
    }

    fn column(&self, attribute: &str) -> Arc<Column> {
        Arc::new(Column::build(
            self.candidates.iter().map(|c| Some(c.instance)),
            attribute,
        ))
    }

    fn bucket_tasks(&self, _: &str, _: &str, _: &[usize]) -> Option<Vec<u64>> {
        None
    }

    fn verdicts(&self, _expr: &Expr) -> Option<Arc<[bool]>> {
        None
    }
}

/// Scores of one candidate under the narrowing strategies, lowest best, compared in order.
type Key = [i64; MAX_STRATEGIES];

#[derive(Clone, Copy)]
enum Score {
    BinpackCpu,
    BinpackMemory,
    SpreadInstance,
    /// Index into `Round::buckets`.
    SpreadAttribute(usize),
}

/// What the batch took from one slot so far.
#[derive(Clone, Copy, Default)]
struct Taken {
    cpu: i64,
    memory: i64,
    placed: u32,
    /// Tasks promised here by other requests.
    promised: u32,
}

/// A spread over an attribute: each slot's bucket and the tasks of the group per bucket.
struct Buckets {
    column: Arc<Column>,
    tasks: Vec<u64>,
}

/// What kept an instance from taking the task, closest last.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Lack {
    Resource(Shortfall),
    /// Index of the first constraint broken; a later one means more were met.
    Constraint(u16),
}

/// A memberOf constraint: its index among the constraints, the expression, and the
/// pool's cached verdict per slot when the expression does not read tasks.
type MemberOf<'e> = (u16, &'e Expr, Option<Arc<[bool]>>);

/// Memo states of a slot's first unmet memberOf constraint.
const UNMET_UNKNOWN: u16 = u16::MAX;
const UNMET_NONE: u16 = u16::MAX - 1;

/// One `place` call's state.
struct Round<'r, S: Source> {
    source: &'r S,
    request: &'r PlacementRequest<'r>,
    heads: &'r [Head],
    excluded: FixedBitSet,
    any_excluded: bool,
    touched: FixedBitSet,
    /// What this batch and the reservations took, by touched slot (a handful of slots: a
    /// map, not a vector as long as the pool, which would cost a fresh allocation per call).
    taken: HashMap<usize, Taken>,
    /// Tasks of the request's group per slot (existing plus this batch's), when a
    /// constraint or strategy reads them.
    group: Option<Vec<u32>>,
    /// Ports promised to earlier placements, by slot: (TCP, UDP).
    promised: BTreeMap<usize, (Vec<u16>, Vec<u16>)>,
    member_of: Vec<MemberOf<'r>>,
    /// Per slot: the first memberOf constraint not met, memoised (empty when the pool
    /// caches every verdict, or without memberOf).
    unmet: Vec<u16>,
    /// Whether a memberOf verdict can change when a task lands (`task:group`,
    /// `runningTasksCount`).
    recheck_member_of: bool,
    /// Index of the first distinctInstance constraint.
    distinct: Option<u16>,
    scores: Vec<Score>,
    buckets: Vec<Buckets>,
    /// Candidates tied for the best key (with strategies).
    ties: Vec<usize>,
    /// Best few by memory, best first: (memory, scan rank, index) (without strategies).
    best: Vec<(i64, Reverse<usize>, usize)>,
    /// The batch's candidates by memory, kept from its first scan (without strategies).
    shortlist: Option<Vec<(i64, Reverse<usize>, usize)>>,
    /// Where the batch's scan started.
    start: usize,
    k: usize,
    /// Whether a decision may start from the previous one's ties (with strategies whose
    /// scores are per instance: a placement changes only its own instance's key).
    incremental: bool,
    /// Whether [`Round::scan_plain_binpack`], [`Round::extend_fitting`] and
    /// [`Round::consider_by_headroom`] may stand in for the general loop of
    /// [`Round::consider`].
    specialised_scans: bool,
    /// The best key of the last full scan and the slots tied for it that no placement of
    /// this batch has touched since, in slot order.
    base: Option<(Key, Vec<usize>)>,
    /// Slots this batch placed on since the last full scan, in slot order.
    changed: Vec<usize>,
    /// The most remaining memory of any instance, if the source keeps it: a decision
    /// without strategy stops scanning once nothing left could rank among its best.
    max_memory: Option<i64>,
}

impl<'r, S: Source> Round<'r, S> {
    fn new(
        source: &'r S,
        present: usize,
        request: &'r PlacementRequest<'r>,
        excluded_slots: &[usize],
    ) -> Self {
        let heads = source.heads();
        let n = heads.len();
        let index = |i: usize| u16::try_from(i).unwrap_or(UNMET_NONE - 1);
        let member_of: Vec<MemberOf<'_>> = request
            .constraints
            .iter()
            .enumerate()
            .filter_map(|(i, c)| match c {
                Constraint::MemberOf(e) => Some((index(i), e, source.verdicts(e))),
                Constraint::DistinctInstance => None,
            })
            .collect();
        let distinct = request
            .constraints
            .iter()
            .position(|c| *c == Constraint::DistinctInstance)
            .map(index);
        let mut excluded = FixedBitSet::with_capacity(n);
        for &slot in excluded_slots {
            if slot < n {
                excluded.insert(slot);
            }
        }
        let group_tasks = source.group_tasks(request.group);
        // The dense per-slot count only when a per-slot figure is read (distinctInstance,
        // spread over instances); spread over attributes sums the group's slots directly.
        let per_slot = distinct.is_some()
            || request
                .strategies
                .iter()
                .any(|s| matches!(s, Strategy::Spread(SpreadField::InstanceId)));
        let group = per_slot.then(|| {
            let mut counts = vec![0u32; n];
            for (slot, tasks) in group_tasks.iter() {
                counts[*slot] = *tasks;
            }
            counts
        });
        let mut scores = Vec::new();
        let mut buckets = Vec::new();
        for strategy in request.strategies {
            let score = match strategy {
                Strategy::Binpack(BinpackField::Cpu) => Score::BinpackCpu,
                Strategy::Binpack(BinpackField::Memory) => Score::BinpackMemory,
                Strategy::Spread(SpreadField::InstanceId) => Score::SpreadInstance,
                Strategy::Spread(SpreadField::Attribute(name)) => {
                    let column = source.column(name);
                    let tasks = source
                        .bucket_tasks(request.group, name, excluded_slots)
                        .unwrap_or_else(|| {
                            column.tasks_per_bucket(&group_tasks, |slot| {
                                heads[slot].present && !excluded.contains(slot)
                            })
                        });
                    buckets.push(Buckets { column, tasks });
                    Score::SpreadAttribute(buckets.len() - 1)
                }
                Strategy::Random => continue,
            };
            scores.push(score);
        }
        scores.truncate(MAX_STRATEGIES);
        let k = best_few(present);
        Self {
            source,
            request,
            heads,
            excluded,
            any_excluded: !excluded_slots.is_empty(),
            touched: FixedBitSet::with_capacity(n),
            taken: HashMap::new(),
            group,
            promised: BTreeMap::new(),
            unmet: if member_of.iter().all(|(_, _, cached)| cached.is_some()) {
                Vec::new()
            } else {
                vec![UNMET_UNKNOWN; n]
            },
            recheck_member_of: member_of.iter().any(|(_, e, _)| e.depends_on_tasks()),
            member_of,
            distinct,
            scores,
            buckets,
            ties: Vec::new(),
            best: Vec::with_capacity(k),
            shortlist: None,
            start: 0,
            k,
            specialised_scans: true,
            incremental: !request.strategies.is_empty()
                && !request
                    .strategies
                    .iter()
                    .any(|s| matches!(s, Strategy::Spread(SpreadField::Attribute(_)))),
            base: None,
            changed: Vec::new(),
            max_memory: source.max_memory(),
        }
    }

    /// Remaining (CPU, memory) of a slot after this batch's placements.
    #[inline(always)]
    fn remaining(&self, slot: usize) -> (i64, i64) {
        let head = &self.heads[slot];
        if !self.taken.is_empty() && self.touched.contains(slot) {
            if let Some(t) = self.taken_of(slot) {
                return (head.cpu - t.cpu, head.memory - t.memory);
            }
        }
        (head.cpu, head.memory)
    }

    fn taken_of(&self, slot: usize) -> Option<&Taken> {
        self.taken.get(&slot)
    }

    fn placed(&self, slot: usize) -> u32 {
        if !self.touched.contains(slot) {
            return 0;
        }
        self.taken_of(slot).map_or(0, |t| t.placed)
    }

    /// Counts resources promised elsewhere as taken (no task of this batch placed).
    fn reserve(&mut self, reserved: &[Promise]) {
        for promise in reserved {
            if promise.slot >= self.heads.len() {
                continue;
            }
            self.touched.insert(promise.slot);
            let taken = self.taken_entry(promise.slot);
            taken.cpu = taken.cpu.saturating_add(promise.cpu);
            taken.memory = taken.memory.saturating_add(promise.memory);
            taken.promised = taken.promised.saturating_add(promise.tasks);
        }
    }

    /// Whether a default (no strategy) decision may join the write under way on `slot`:
    /// other requests' promises for fewer than [`JOIN_IN_FLIGHT`] tasks, none of this
    /// batch's placements.
    #[inline(always)]
    fn joinable(&self, slot: usize) -> bool {
        !self.taken.is_empty()
            && self.touched.contains(slot)
            && self
                .taken_of(slot)
                .is_some_and(|t| t.placed == 0 && (1..JOIN_IN_FLIGHT).contains(&t.promised))
    }

    /// A default decision's key for a fitting slot (higher is better): the free memory
    /// it ranks by, then joinable before not, then the scan order.
    #[inline(always)]
    fn default_key(&self, slot: usize, free_memory: i64) -> (i64, Reverse<usize>) {
        if self.joinable(slot) {
            (self.heads[slot].memory, Reverse(self.rank(slot)))
        } else {
            (free_memory, Reverse(self.heads.len() + self.rank(slot)))
        }
    }

    fn taken_entry(&mut self, slot: usize) -> &mut Taken {
        self.taken.entry(slot).or_default()
    }

    /// Whether the slot is a candidate at all: an instance record, ACTIVE, connected, and
    /// not excluded by the caller.
    #[inline(always)]
    fn eligible(&self, slot: usize) -> bool {
        let head = &self.heads[slot];
        head.present
            && head.eligible.is_ok()
            && !(self.any_excluded && self.excluded.contains(slot))
    }

    /// The first constraint the slot breaks, by index: its memberOf verdict, or
    /// distinctInstance once it holds a task of the group.
    #[inline(always)]
    fn unmet(&mut self, slot: usize) -> Option<u16> {
        if self.member_of.is_empty() && self.distinct.is_none() {
            return None;
        }
        let member_of = if self.member_of.is_empty() {
            None
        } else if self.unmet.is_empty() {
            // Every verdict is cached by the pool: read them, nothing to remember.
            self.member_of
                .iter()
                .find(|(_, _, cached)| {
                    !cached
                        .as_ref()
                        .and_then(|verdicts| verdicts.get(slot).copied())
                        .unwrap_or(false)
                })
                .map(|(i, _, _)| *i)
        } else {
            if self.unmet[slot] == UNMET_UNKNOWN {
                self.unmet[slot] = self.first_unmet_member_of(slot).unwrap_or(UNMET_NONE);
            }
            Some(self.unmet[slot]).filter(|k| *k != UNMET_NONE)
        };
        let distinct = self
            .distinct
            .filter(|_| self.group.as_ref().is_some_and(|g| g[slot] > 0));
        match (member_of, distinct) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn first_unmet_member_of(&self, slot: usize) -> Option<u16> {
        // Cached verdicts are read first; the instance's facts are gathered only for an
        // expression without one (it reads tasks).
        let evaluate = |e: &Expr| {
            let placed = self.placed(slot);
            let candidate = self.source.candidate(slot);
            Facts {
                candidate: &candidate,
                placed: (placed > 0).then_some((self.request.group, placed)),
            }
            .eval(e)
        };
        self.member_of
            .iter()
            .find(|(_, e, cached)| match cached {
                Some(verdicts) => !verdicts.get(slot).copied().unwrap_or(false),
                None => !evaluate(e),
            })
            .map(|(i, _, _)| *i)
    }

    /// Places one task; `remaining` counts it and the tasks of the batch after it.
    fn place_one(
        &mut self,
        rng: &mut StdRng,
        remaining: usize,
    ) -> Result<Placement, PlacementFailure> {
        let demand = self.request.demand;
        let (cpu, memory) = (demand.cpu.max(0), demand.memory.max(0));
        let needs_ports = !demand.ports.is_empty()
            || !demand.ports_udp.is_empty()
            || demand.dynamic_ports > 0
            || demand.dynamic_ports_udp > 0;
        let by_memory = self.request.strategies.is_empty();
        let n = self.heads.len();
        self.ties.clear();
        self.best.clear();
        if by_memory {
            match self.shortlist.take() {
                None => {
                    // The batch's first decision scans every instance and keeps enough of
                    // the best for the whole batch: k plus one per later task. Untouched
                    // instances keep their figures and touched ones only lose, so the best
                    // k of every later decision are among them.
                    self.start = rng.gen_range(0..n);
                    let limit = self.k + remaining.saturating_sub(1);
                    match self.max_memory {
                        Some(max) => self.scan_until_enough(max, limit, (cpu, memory), needs_ports),
                        None => self.scan_all(limit, (cpu, memory), needs_ports),
                    }
                    self.shortlist = Some(self.best.clone());
                }
                Some(shortlist) => {
                    let mut kept = Vec::with_capacity(shortlist.len());
                    for (free_memory, rank, slot) in shortlist {
                        if !self.touched.contains(slot) {
                            kept.push((free_memory, rank, slot));
                            continue;
                        }
                        let (free_cpu, free_memory) = self.remaining(slot);
                        if free_cpu < cpu
                            || free_memory < memory
                            || self.unmet(slot).is_some()
                            || (needs_ports && !self.ports_free(slot))
                        {
                            continue;
                        }
                        let key = self.default_key(slot, free_memory);
                        kept.push((key.0, key.1, slot));
                    }
                    kept.sort_unstable_by_key(|e| Reverse((e.0, e.1)));
                    self.best.extend(kept.iter().take(self.k).copied());
                    self.shortlist = Some(kept);
                }
            }
            self.best.truncate(self.k);
        } else {
            // Every candidate tied for the best key is kept; one is drawn below.
            let mut best_key: Option<Key> = None;
            match self.scores.first().copied() {
                Some(Score::SpreadAttribute(b)) => {
                    // The first score is the bucket's: only the least loaded buckets with a
                    // fitting instance can win, so they are visited in that order and the
                    // first level with a candidate ends the search.
                    let column = self.buckets[b].column.clone();
                    let mut order: Vec<usize> = (0..column.buckets).collect();
                    order.sort_by_key(|bucket| {
                        (self.buckets[b].tasks[*bucket], column.rank[*bucket])
                    });
                    let mut i = 0;
                    while i < order.len() && self.ties.is_empty() {
                        let level = self.buckets[b].tasks[order[i]];
                        while i < order.len() && self.buckets[b].tasks[order[i]] == level {
                            let members = column.members[order[i]].iter().copied();
                            self.consider_all(
                                members,
                                (cpu, memory),
                                needs_ports,
                                &mut best_key,
                                1,
                            );
                            i += 1;
                        }
                    }
                }
                _ if self.incremental && self.ties_since_last_scan((cpu, memory), needs_ports) => {}
                _ => {
                    if !self.scan_plain_binpack((cpu, memory), needs_ports, &mut best_key) {
                        self.consider_all(0..n, (cpu, memory), needs_ports, &mut best_key, 0);
                    }
                    if self.incremental {
                        self.base = best_key.map(|key| (key, self.ties.clone()));
                        self.changed.clear();
                    }
                }
            }
        }

        loop {
            let pool = if by_memory {
                // Joinable instances that rank first are drawn among themselves.
                match self.best.iter().take_while(|e| self.joinable(e.2)).count() {
                    0 => self.best.len(),
                    joinable => joinable,
                }
            } else {
                self.ties.len()
            };
            if pool == 0 {
                return Err(self.diagnose());
            }
            let pick = rng.gen_range(0..pool);
            let slot = if by_memory {
                self.best.remove(pick).2
            } else {
                self.ties.swap_remove(pick)
            };
            let allocation = if needs_ports {
                // Not expected to fail (the cheap checks agree with fit_resources); if it
                // does, the next candidate is tried.
                match fit_resources(&self.capacity(slot), demand) {
                    Ok(a) => a,
                    Err(_) => continue,
                }
            } else {
                Allocation {
                    cpu,
                    memory,
                    ..Default::default()
                }
            };
            self.take(slot, &allocation);
            if self.incremental {
                if let Some((_, base)) = &mut self.base {
                    if let Ok(at) = base.binary_search(&slot) {
                        base.remove(at);
                    }
                }
                if let Err(at) = self.changed.binary_search(&slot) {
                    self.changed.insert(at, slot);
                }
            }
            return Ok(Placement {
                instance_index: slot,
                allocation,
            });
        }
    }

    /// The ties of a later decision of the batch without a scan: an untouched instance
    /// keeps its key, so the best are among the last scan's ties and the instances placed
    /// on since; both are in slot order, so the ties come out exactly as a scan finds them.
    /// Every untouched instance outside the last scan's ties has a worse key than they had,
    /// so they are needed only once those ties are all placed on and no instance placed on
    /// since is as good: then (or with no previous scan) this returns false and the caller
    /// scans.
    fn ties_since_last_scan(&mut self, need: (i64, i64), needs_ports: bool) -> bool {
        let Some((base_key, base)) = self.base.take() else {
            return false;
        };
        let mut best_key: Option<Key> = None;
        let changed = std::mem::take(&mut self.changed);
        for &slot in &changed {
            self.consider(slot, need, needs_ports, &mut best_key, 0);
        }
        self.changed = changed;
        match best_key.map(|key| key.cmp(&base_key)) {
            Some(Ordering::Less) => {}
            Some(Ordering::Equal) => {
                let placed_on = std::mem::take(&mut self.ties);
                self.ties.reserve(base.len() + placed_on.len());
                let (mut a, mut b) = (base.iter().peekable(), placed_on.iter().peekable());
                while let (Some(&&x), Some(&&y)) = (a.peek(), b.peek()) {
                    if x < y {
                        self.ties.push(x);
                        a.next();
                    } else {
                        self.ties.push(y);
                        b.next();
                    }
                }
                self.ties.extend(a);
                self.ties.extend(b);
            }
            _ if base.is_empty() => {
                self.ties.clear();
                return false;
            }
            _ => {
                self.ties.clear();
                self.ties.extend_from_slice(&base);
            }
        }
        self.base = Some((base_key, base));
        true
    }

    /// A slot's free (CPU, memory) after this batch, if it is eligible and `need` fits.
    #[inline(always)]
    fn fitting(&self, slot: usize, (cpu, memory): (i64, i64)) -> Option<(i64, i64)> {
        if !self.eligible(slot) {
            return None;
        }
        let (free_cpu, free_memory) = self.remaining(slot);
        (free_cpu >= cpu && free_memory >= memory).then_some((free_cpu, free_memory))
    }

    /// Adds `slot` to the ties if it fits and its key is at least as good as the best so
    /// far (a better key starts the ties over). The scores before `known` are equal for
    /// every slot the caller considers, and not computed.
    #[inline(always)]
    fn consider(
        &mut self,
        slot: usize,
        (cpu, memory): (i64, i64),
        needs_ports: bool,
        best_key: &mut Option<Key>,
        known: usize,
    ) {
        let Some((free_cpu, free_memory)) = self.fitting(slot, (cpu, memory)) else {
            return;
        };
        // Lexicographic, one score at a time: most slots lose on the first.
        let (cpu_left, memory_left) = (free_cpu - cpu, free_memory - memory);
        let mut key: Key = [0; MAX_STRATEGIES];
        let mut ordering = if best_key.is_none() {
            Ordering::Less
        } else {
            Ordering::Equal
        };
        for (i, score) in self.scores.iter().enumerate().skip(known) {
            key[i] = self.score(*score, slot, cpu_left, memory_left);
            if let Some(best) = best_key {
                if ordering == Ordering::Equal {
                    ordering = key[i].cmp(&best[i]);
                    if ordering == Ordering::Greater {
                        return;
                    }
                }
            }
        }
        if self.unmet(slot).is_some() || (needs_ports && !self.ports_free(slot)) {
            return;
        }
        if ordering == Ordering::Less {
            self.ties.clear();
            *best_key = Some(key);
        }
        self.ties.push(slot);
    }

    /// The full scan of a decision whose only strategy is binpack and that has nothing to
    /// check per slot beyond its headroom (no constraint, no port, nothing taken or
    /// excluded yet), in two passes without branches on the data: the least headroom left
    /// among the slots that fit, then the slots that leave exactly that. Returns false,
    /// having done nothing, when the decision is not of that kind.
    fn scan_plain_binpack(
        &mut self,
        (cpu, memory): (i64, i64),
        needs_ports: bool,
        best_key: &mut Option<Key>,
    ) -> bool {
        let by_memory = match self.scores.as_slice() {
            [Score::BinpackMemory] => true,
            [Score::BinpackCpu] => false,
            _ => return false,
        };
        if !self.specialised_scans
            || needs_ports
            || self.any_excluded
            || !self.taken.is_empty()
            || !self.member_of.is_empty()
            || self.distinct.is_some()
        {
            return false;
        }
        let left = |head: &Head| -> i64 {
            let fits = head.fits(cpu, memory);
            let left = if by_memory {
                head.memory - memory
            } else {
                head.cpu - cpu
            };
            if fits {
                left
            } else {
                i64::MAX
            }
        };
        let best = self.heads.iter().map(left).min().unwrap_or(i64::MAX);
        self.ties.clear();
        if best == i64::MAX {
            return true;
        }
        let heads = self.heads;
        let ties = heads
            .iter()
            .enumerate()
            .filter(|(_, head)| left(head) == best);
        self.ties.extend(ties.map(|(slot, _)| slot));
        let mut key: Key = [0; MAX_STRATEGIES];
        key[0] = best;
        *best_key = Some(key);
        true
    }

    /// [`Round::consider`] of every slot of `slots`. When at most one score is left to
    /// compute and it reads only the slot's headroom (binpack, or nothing), the loop is
    /// specialised for it: most decisions scan every instance this way.
    fn consider_all(
        &mut self,
        slots: impl Iterator<Item = usize>,
        need: (i64, i64),
        needs_ports: bool,
        best_key: &mut Option<Key>,
        known: usize,
    ) {
        if self.specialised_scans {
            let by_memory = match self.scores.get(known..).unwrap_or(&[]) {
                [] if !needs_ports && self.member_of.is_empty() && self.distinct.is_none() => {
                    return self.extend_fitting(slots, need, best_key);
                }
                [] => {
                    let equal = |_, _| 0;
                    return self.consider_by_headroom(
                        slots,
                        need,
                        needs_ports,
                        best_key,
                        None,
                        equal,
                    );
                }
                [Score::BinpackMemory] => Some(true),
                [Score::BinpackCpu] => Some(false),
                _ => None,
            };
            if let Some(by_memory) = by_memory {
                // `by_memory` is the same for every slot: a branch always predicted right.
                let left = move |cpu, memory| if by_memory { memory } else { cpu };
                let at = Some(known);
                return self.consider_by_headroom(slots, need, needs_ports, best_key, at, left);
            }
        }
        for slot in slots {
            self.consider(slot, need, needs_ports, best_key, known);
        }
    }

    /// [`Round::consider`] of every slot of `slots` when no score is left to compute and
    /// nothing is checked per slot beyond its headroom (no constraint, no port): every
    /// slot that fits ties, so the ties are the fitting slots, found without branching on
    /// each slot's figures.
    fn extend_fitting(
        &mut self,
        slots: impl Iterator<Item = usize>,
        (cpu, memory): (i64, i64),
        best_key: &mut Option<Key>,
    ) {
        let heads = self.heads;
        let before = self.ties.len();
        if self.taken.is_empty() && !self.any_excluded {
            self.ties
                .extend(slots.filter(|slot| heads[*slot].fits(cpu, memory)));
        } else {
            for slot in slots {
                if self.fitting(slot, (cpu, memory)).is_some() {
                    self.ties.push(slot);
                }
            }
        }
        if self.ties.len() > before || best_key.is_some() {
            if best_key.is_none() {
                self.ties.drain(..before);
            }
            *best_key = Some([0; MAX_STRATEGIES]);
        }
    }

    /// [`Round::consider`] when the key's only computed score (at index `at`, if any) is
    /// `score_of` the headroom left after the task (CPU, memory); the scores before it are
    /// equal for every slot the caller considers.
    #[inline(always)]
    fn consider_by_headroom(
        &mut self,
        slots: impl Iterator<Item = usize>,
        (cpu, memory): (i64, i64),
        needs_ports: bool,
        best_key: &mut Option<Key>,
        at: Option<usize>,
        score_of: impl Fn(i64, i64) -> i64,
    ) {
        let mut best = best_key.map(|key| at.map_or(0, |i| key[i]));
        for slot in slots {
            let Some((free_cpu, free_memory)) = self.fitting(slot, (cpu, memory)) else {
                continue;
            };
            let score = score_of(free_cpu - cpu, free_memory - memory);
            let ordering = best.map_or(Ordering::Less, |best| score.cmp(&best));
            if ordering == Ordering::Greater
                || self.unmet(slot).is_some()
                || (needs_ports && !self.ports_free(slot))
            {
                continue;
            }
            if ordering == Ordering::Less {
                self.ties.clear();
                best = Some(score);
            }
            self.ties.push(slot);
        }
        if let Some(best) = best {
            let mut key: Key = [0; MAX_STRATEGIES];
            if let Some(i) = at {
                key[i] = best;
            }
            *best_key = Some(key);
        }
    }

    #[inline]
    fn score(&self, score: Score, slot: usize, cpu_left: i64, memory_left: i64) -> i64 {
        match score {
            Score::BinpackCpu => cpu_left,
            Score::BinpackMemory => memory_left,
            Score::SpreadInstance => self.group.as_ref().map_or(0, |g| i64::from(g[slot])),
            Score::SpreadAttribute(b) => {
                let buckets = &self.buckets[b];
                buckets.tasks[buckets.column.of[slot] as usize] as i64
            }
        }
    }

    fn promised(&self, slot: usize) -> (&[u16], &[u16]) {
        self.promised
            .get(&slot)
            .map_or((&[], &[]), |(tcp, udp)| (tcp.as_slice(), udp.as_slice()))
    }

    fn ports_free(&self, slot: usize) -> bool {
        let (tcp, udp) = self.promised(slot);
        ports_available(self.source.instance(slot), tcp, udp, self.request.demand).is_ok()
    }

    fn capacity(&self, slot: usize) -> Capacity {
        let (cpu, memory) = self.remaining(slot);
        let (tcp, udp) = self.promised(slot);
        capacity_with(self.source.instance(slot), cpu, memory, tcp, udp)
    }

    /// Every slot in scan order, keeping the `limit` best by [`Round::default_key`].
    fn scan_all(&mut self, limit: usize, need: (i64, i64), needs_ports: bool) {
        let n = self.heads.len();
        let start = self.start;
        for slot in (start..n).chain(0..start) {
            let Some((_, free_memory)) = self.fitting(slot, need) else {
                continue;
            };
            // Slots come in scan order, so one that is not joinable enters a full list
            // only with more memory; the key (and its rank) is computed for those that
            // enter.
            let joinable = self.joinable(slot);
            let memory_key = if joinable {
                self.heads[slot].memory
            } else {
                free_memory
            };
            let enters = self.best.len() < limit
                || self.best.last().is_some_and(|(m, r, _)| {
                    memory_key > *m
                        || (joinable && memory_key == *m && Reverse(self.rank(slot)) > *r)
                });
            if !enters || self.unmet(slot).is_some() || (needs_ports && !self.ports_free(slot)) {
                continue;
            }
            let key = self.default_key(slot, free_memory);
            self.insert_best((key.0, key.1, slot), limit);
        }
    }

    /// What [`Round::scan_all`] keeps, visiting the touched slots (promised elsewhere or
    /// placed by this batch) first and then the others in scan order, until the list is
    /// full of slots that no later one can beat: an untouched slot offers at most `max`
    /// memory and ranks after every slot scanned before it.
    fn scan_until_enough(&mut self, max: i64, limit: usize, need: (i64, i64), needs_ports: bool) {
        let n = self.heads.len();
        let mut touched: Vec<usize> = self.taken.keys().copied().collect();
        touched.sort_unstable();
        for slot in touched {
            self.consider_default(slot, limit, need, needs_ports);
        }
        let start = self.start;
        for slot in (start..n).chain(0..start) {
            if self.best.len() >= limit {
                let untouched_best = (max, Reverse(n + self.rank(slot)));
                if self
                    .best
                    .last()
                    .is_some_and(|(m, r, _)| (*m, *r) >= untouched_best)
                {
                    break;
                }
            }
            if !self.touched.contains(slot) {
                self.consider_default(slot, limit, need, needs_ports);
            }
        }
    }

    /// Keeps `slot` among the `limit` best by [`Round::default_key`] if it fits and ranks
    /// so, whatever the order slots come in.
    fn consider_default(&mut self, slot: usize, limit: usize, need: (i64, i64), needs_ports: bool) {
        let Some((_, free_memory)) = self.fitting(slot, need) else {
            return;
        };
        let key = self.default_key(slot, free_memory);
        let enters =
            self.best.len() < limit || self.best.last().is_some_and(|(m, r, _)| key > (*m, *r));
        if !enters || self.unmet(slot).is_some() || (needs_ports && !self.ports_free(slot)) {
            return;
        }
        self.insert_best((key.0, key.1, slot), limit);
    }

    /// Keeps `best` sorted best first (most memory, then earliest in the scan), at most
    /// `limit`.
    fn insert_best(&mut self, entry: (i64, Reverse<usize>, usize), limit: usize) {
        if self.best.len() >= limit {
            self.best.pop();
        }
        let at = self
            .best
            .iter()
            .position(|e| (entry.0, entry.1) > (e.0, e.1))
            .unwrap_or(self.best.len());
        self.best.insert(at, entry);
    }

    /// A slot's place in the batch's scan (which starts at a random slot).
    fn rank(&self, slot: usize) -> usize {
        let n = self.heads.len();
        (slot + n - self.start) % n
    }

    fn take(&mut self, slot: usize, allocation: &Allocation) {
        self.touched.insert(slot);
        let taken = self.taken_entry(slot);
        taken.cpu = taken.cpu.saturating_add(allocation.cpu);
        taken.memory = taken.memory.saturating_add(allocation.memory);
        taken.placed = taken.placed.saturating_add(1);
        if let Some(group) = &mut self.group {
            group[slot] = group[slot].saturating_add(1);
        }
        for buckets in &mut self.buckets {
            buckets.tasks[buckets.column.of[slot] as usize] += 1;
        }
        if !allocation.ports.is_empty() || !allocation.ports_udp.is_empty() {
            let (tcp, udp) = self.promised.entry(slot).or_default();
            tcp.extend(&allocation.ports);
            udp.extend(&allocation.ports_udp);
        }
        if self.recheck_member_of && !self.unmet.is_empty() {
            self.unmet[slot] = UNMET_UNKNOWN;
        }
    }

    /// Why nothing fits: the closest candidate and what it lacks, checked in ECS order
    /// (status, agent, CPU, memory, ports, then constraints).
    fn diagnose(&mut self) -> PlacementFailure {
        let demand = self.request.demand;
        let (cpu, memory) = (demand.cpu.max(0), demand.memory.max(0));
        let mut closest: Option<(Lack, i64, Reverse<usize>)> = None;
        for slot in 0..self.heads.len() {
            let head = self.heads[slot];
            if !head.present || self.excluded.contains(slot) {
                continue;
            }
            let (free_cpu, free_memory) = self.remaining(slot);
            let lack = if let Err(s) = head.eligible {
                (Lack::Resource(s), 0)
            } else if free_cpu < cpu {
                (Lack::Resource(Shortfall::Cpu), free_cpu)
            } else if free_memory < memory {
                (Lack::Resource(Shortfall::Memory), free_memory)
            } else {
                let (tcp, udp) = self.promised(slot);
                match ports_available(self.source.instance(slot), tcp, udp, demand) {
                    Err(s) => (Lack::Resource(s), 0),
                    Ok(()) => match self.unmet(slot) {
                        Some(k) => (Lack::Constraint(k), 0),
                        None => continue,
                    },
                }
            };
            let candidate = (lack.0, lack.1, Reverse(slot));
            if closest.is_none_or(|c| candidate > c) {
                closest = Some(candidate);
            }
        }
        match closest {
            Some((Lack::Resource(s), _, Reverse(slot))) => {
                PlacementFailure::closest(self.source.instance(slot), s)
            }
            Some((Lack::Constraint(k), _, Reverse(slot))) => {
                let arn = &self.source.instance(slot).container_instance_arn;
                match self.request.constraints.get(usize::from(k)) {
                    Some(Constraint::MemberOf(e)) => PlacementFailure::unmet_constraint(
                        arn,
                        &format!("memberOf placement constraint unsatisfied: {}", cut(e)),
                    ),
                    _ => PlacementFailure::distinct_instance(arn, self.request.group),
                }
            }
            // Only if fit_resources disagreed with the cheap checks everywhere.
            None => PlacementFailure::no_instances(),
        }
    }
}

/// An expression for a failure detail, cut to 200 characters.
fn cut(e: &Expr) -> String {
    let text = e.to_string();
    match text.char_indices().nth(200) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capacity::reserved_ports;
    use crate::capacity::tests::{instance, instance_with_ports};
    use crate::rules::Strategy;
    use crate::{allocate, evaluate, fit, parse, remaining};
    use berth_messages::model::{Attribute, ContainerInstance, InstanceStatus, Resource};
    use proptest::prelude::*;
    use proptest::strategy::Strategy as _;
    use std::collections::BTreeSet;

    const ZONE: &str = "ecs.availability-zone";

    fn demand(cpu: i64, memory: i64) -> Demand {
        Demand {
            cpu,
            memory,
            ..Default::default()
        }
    }

    fn with_attribute(mut i: ContainerInstance, name: &str, value: &str) -> ContainerInstance {
        i.attributes.push(Attribute {
            name: name.into(),
            value: Some(value.into()),
            ..Default::default()
        });
        i
    }

    fn zoned(id: &str, cpu: i64, memory: i64, zone: &str) -> ContainerInstance {
        with_attribute(instance(id, cpu, memory), ZONE, zone)
    }

    fn spread_zone() -> Strategy {
        Strategy::Spread(SpreadField::Attribute(ZONE.into()))
    }

    fn member_of(expression: &str) -> Constraint {
        Constraint::MemberOf(parse(expression).unwrap())
    }

    /// Instances plus the task groups and running counts placement reads, updated as
    /// placements are applied.
    struct Pool {
        instances: Vec<ContainerInstance>,
        groups: Vec<BTreeMap<String, u32>>,
        running: Vec<i64>,
        placed: usize,
    }

    impl Pool {
        fn new(instances: Vec<ContainerInstance>) -> Self {
            let n = instances.len();
            Self {
                instances,
                groups: vec![BTreeMap::new(); n],
                running: vec![0; n],
                placed: 0,
            }
        }

        fn with_group(mut self, index: usize, group: &str, tasks: u32) -> Self {
            self.groups[index].insert(group.into(), tasks);
            self.running[index] += i64::from(tasks);
            self
        }

        fn candidates(&self) -> Vec<Candidate<'_>> {
            self.instances
                .iter()
                .zip(&self.groups)
                .zip(&self.running)
                .map(|((instance, groups), running)| Candidate {
                    instance,
                    groups,
                    running_tasks: *running,
                })
                .collect()
        }

        fn place(
            &self,
            placer: &mut StrategyPlacer,
            request: &PlacementRequest<'_>,
        ) -> Vec<Result<Placement, PlacementFailure>> {
            placer.place(&self.candidates(), request)
        }

        /// Records one placement as the journal would.
        fn apply(&mut self, placement: &Placement, group: &str) {
            let i = placement.instance_index;
            self.placed += 1;
            allocate(
                &mut self.instances[i],
                &format!("new{}", self.placed),
                placement.allocation.clone(),
            );
            *self.groups[i].entry(group.into()).or_default() += 1;
            self.running[i] += 1;
        }

        /// Places and applies; returns the instance index of each success.
        fn run(
            &mut self,
            seed: u64,
            demand: &Demand,
            count: usize,
            constraints: &[Constraint],
            strategies: &[Strategy],
        ) -> Vec<Result<usize, PlacementFailure>> {
            let request = PlacementRequest {
                demand,
                count,
                group: "web",
                constraints,
                strategies,
            };
            let results = self.place(&mut StrategyPlacer::with_seed(seed), &request);
            assert_eq!(results.len(), count);
            results
                .into_iter()
                .map(|r| {
                    r.map(|p| {
                        self.apply(&p, "web");
                        p.instance_index
                    })
                })
                .collect()
        }

        fn tasks_by(&self, attribute: &str, group: &str) -> BTreeMap<String, u32> {
            let mut by = BTreeMap::new();
            for (i, groups) in self.instances.iter().zip(&self.groups) {
                let value = i
                    .attributes
                    .iter()
                    .find(|a| a.name == attribute)
                    .and_then(|a| a.value.clone())
                    .unwrap_or_default();
                *by.entry(value).or_default() += groups.get(group).copied().unwrap_or(0);
            }
            by
        }
    }

    fn ok(results: &[Result<usize, PlacementFailure>]) -> Vec<usize> {
        results
            .iter()
            .filter_map(|r| r.as_ref().ok().copied())
            .collect()
    }

    fn used(free: i64) -> Allocation {
        Allocation {
            cpu: 4096 - free,
            memory: 4096 - free,
            ..Default::default()
        }
    }

    #[test]
    fn no_candidates_is_missing_and_no_count_is_nothing() {
        let d = demand(1, 1);
        let request = PlacementRequest {
            demand: &d,
            count: 2,
            group: "web",
            constraints: &[],
            strategies: &[],
        };
        let r = StrategyPlacer::with_seed(1).place(&[], &request);
        assert_eq!(r.len(), 2);
        assert!(r
            .iter()
            .all(|r| r.as_ref().unwrap_err().reason == "MISSING"));
        let pool = Pool::new(vec![instance("i", 1, 1)]);
        let none = PlacementRequest {
            count: 0,
            ..request
        };
        assert!(pool.place(&mut StrategyPlacer::new(), &none).is_empty());
    }

    #[test]
    fn binpack_fills_the_fullest_instance_first() {
        for (field, seed) in [(BinpackField::Memory, 1), (BinpackField::Cpu, 2)] {
            let mut instances = vec![
                instance("roomy", 4096, 4096),
                instance("fullest", 4096, 4096),
                instance("middle", 4096, 4096),
            ];
            for (i, free) in instances.iter_mut().zip([3000, 1000, 2000]) {
                allocate(i, "old", used(free));
            }
            let mut pool = Pool::new(instances);
            let r = pool.run(
                seed,
                &demand(500, 500),
                13,
                &[],
                &[Strategy::Binpack(field)],
            );
            assert_eq!(ok(&r), [1, 1, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0], "{field:?}");
            let failure = r[12].as_ref().unwrap_err();
            // CPU is checked before memory, and both ran out together.
            assert_eq!(failure.reason, "RESOURCE:CPU");
        }
    }

    #[test]
    fn reserved_resources_count_as_taken() {
        let mut instances = [
            instance("roomy", 4096, 4096),
            instance("fullest", 4096, 4096),
        ];
        allocate(&mut instances[1], "old", used(1000));
        let mut pool = InstancePool::new();
        for (n, i) in instances.iter().enumerate() {
            pool.upsert(&format!("i{n}"), Arc::new(i.clone()));
        }
        let d = demand(500, 500);
        let binpack = [Strategy::Binpack(BinpackField::Memory)];
        let request = PlacementRequest {
            demand: &d,
            count: 2,
            group: "web",
            constraints: &[],
            strategies: &binpack,
        };
        let fullest = pool.slot("i1").unwrap();
        let slots = |r: Vec<Result<Placement, PlacementFailure>>| -> Vec<usize> {
            r.into_iter().map(|p| p.unwrap().instance_index).collect()
        };
        let mut placer = StrategyPlacer::with_seed(5);
        // Nothing promised: binpack fills the fullest instance.
        let free = placer.place_in_pool_reserving(&pool, &request, &[], &[]);
        assert_eq!(slots(free), [fullest, fullest]);
        // 600 of its 1000 promised elsewhere: one more task fits there, then the other.
        let promise = |cpu, memory| Promise {
            slot: fullest,
            cpu,
            memory,
            tasks: 1,
        };
        let r = placer.place_in_pool_reserving(&pool, &request, &[], &[promise(600, 600)]);
        assert_eq!(slots(r), [1 - fullest, 1 - fullest]);
        let r = placer.place_in_pool_reserving(&pool, &request, &[], &[promise(300, 300)]);
        assert_eq!(slots(r), [fullest, 1 - fullest]);
    }

    /// A pool of `n` equal instances and a default (no strategy) request of `count`.
    fn equal_pool(n: usize) -> InstancePool {
        let mut pool = InstancePool::new();
        for i in 0..n {
            pool.upsert(
                &format!("i{i}"),
                Arc::new(instance(&format!("i{i}"), 4096, 4096)),
            );
        }
        pool
    }

    fn promised(slot: usize, tasks: u32) -> Promise {
        Promise {
            slot,
            cpu: 100 * i64::from(tasks),
            memory: 100 * i64::from(tasks),
            tasks,
        }
    }

    #[test]
    fn default_placement_joins_writes_under_way_up_to_the_limit() {
        let pool = equal_pool(40);
        let d = demand(100, 100);
        let request = |count| web_request(&d, count, &[], &[]);
        let slots = |r: Vec<Result<Placement, PlacementFailure>>| -> Vec<usize> {
            r.into_iter().map(|p| p.unwrap().instance_index).collect()
        };
        for seed in 0..20 {
            let mut placer = StrategyPlacer::with_seed(seed);
            // An instance being written for another request is joined.
            let joined = placer.place_in_pool_reserving(&pool, &request(1), &[], &[promised(7, 1)]);
            assert_eq!(slots(joined), [7]);
            // At the limit it is not: it ranks by what its promises leave.
            let full = [promised(7, JOIN_IN_FLIGHT)];
            let elsewhere = placer.place_in_pool_reserving(&pool, &request(1), &[], &full);
            assert_ne!(slots(elsewhere), [7]);
            // A batch joins each write under way once, then spreads as before: never two
            // of its tasks on one instance while others are as free.
            let under_way = [promised(3, 2), promised(11, 1)];
            let batch = slots(placer.place_in_pool_reserving(&pool, &request(4), &[], &under_way));
            let mut first_two = batch[..2].to_vec();
            first_two.sort_unstable();
            assert_eq!(first_two, [3, 11], "{batch:?}");
            let distinct: std::collections::BTreeSet<_> = batch.iter().collect();
            assert_eq!(distinct.len(), 4, "{batch:?}");
            // Nothing promised: a random draw among the few with the most free memory.
            let free = slots(placer.place_in_pool_reserving(&pool, &request(4), &[], &[]));
            assert_eq!(
                free.iter().collect::<std::collections::BTreeSet<_>>().len(),
                4
            );
        }
    }

    #[test]
    fn the_default_scan_stops_early_only_where_a_full_scan_agrees() {
        // A promise that takes no resources and is past joining leaves its instance as
        // free as the untouched ones but ranked by scan order among them.
        let pool = equal_pool(12);
        let d = demand(100, 100);
        for count in 1..6 {
            let request = web_request(&d, count, &[], &[]);
            for slot in 0..12 {
                let promised = [Promise {
                    slot,
                    cpu: 0,
                    memory: 0,
                    tasks: JOIN_IN_FLIGHT + 1,
                }];
                for seed in 0..40 {
                    let early = StrategyPlacer::with_seed(seed).place_in_pool_reserving(
                        &pool,
                        &request,
                        &[],
                        &promised,
                    );
                    let mut full = StrategyPlacer::with_seed(seed);
                    full.rescan_every_decision = true;
                    let scanned = full.place_in_pool_reserving(&pool, &request, &[], &promised);
                    assert_eq!(
                        early, scanned,
                        "count {count}, promise on {slot}, seed {seed}"
                    );
                }
            }
        }
    }

    #[test]
    fn joining_never_overcommits_an_instance() {
        let mut pool = equal_pool(3);
        // Instance 0 has room for one task of 1000 memory, and one is promised there.
        pool.upsert("i0", Arc::new(instance("i0", 4096, 1000)));
        let slot = pool.slot("i0").unwrap();
        let d = demand(10, 1000);
        let request = web_request(&d, 1, &[], &[]);
        let promise = Promise {
            slot,
            cpu: 10,
            memory: 1000,
            tasks: 1,
        };
        for seed in 0..20 {
            let r = StrategyPlacer::with_seed(seed).place_in_pool_reserving(
                &pool,
                &request,
                &[],
                &[promise],
            );
            assert_ne!(r[0].as_ref().unwrap().instance_index, slot);
        }
    }

    #[test]
    fn binpack_breaks_ties_at_random() {
        let pool = Pool::new(
            (0..4)
                .map(|i| instance(&i.to_string(), 1024, 1024))
                .collect(),
        );
        let d = demand(1, 1);
        let strategies = [Strategy::Binpack(BinpackField::Memory)];
        let request = PlacementRequest {
            demand: &d,
            count: 1,
            group: "web",
            constraints: &[],
            strategies: &strategies,
        };
        let picked: BTreeSet<usize> = (0..64)
            .map(|seed| {
                pool.place(&mut StrategyPlacer::with_seed(seed), &request)[0]
                    .as_ref()
                    .unwrap()
                    .instance_index
            })
            .collect();
        assert_eq!(picked.len(), 4);
    }

    fn three_zones() -> Vec<ContainerInstance> {
        // Unequal numbers of instances per zone: spread balances zones, not instances.
        let mut instances = vec![zoned("a0", 100_000, 100_000, "us-east-1a")];
        instances.extend((0..2).map(|i| zoned(&format!("b{i}"), 100_000, 100_000, "us-east-1b")));
        instances.extend((0..4).map(|i| zoned(&format!("c{i}"), 100_000, 100_000, "us-east-1c")));
        instances
    }

    #[test]
    fn spread_over_three_zones_is_balanced_within_one_task() {
        for count in 1..=30 {
            let mut pool = Pool::new(three_zones());
            let r = pool.run(count as u64, &demand(10, 10), count, &[], &[spread_zone()]);
            assert_eq!(ok(&r).len(), count);
            let by_zone = pool.tasks_by(ZONE, "web");
            let (min, max) = (
                by_zone.values().min().copied().unwrap_or(0),
                by_zone.values().max().copied().unwrap_or(0),
            );
            assert!(max - min <= 1, "count {count}: {by_zone:?}");
            assert_eq!(by_zone.values().sum::<u32>() as usize, count);
        }
    }

    #[test]
    fn spread_counts_existing_tasks_of_the_group_only() {
        // Zone a already runs 4 tasks of the group and 9 of another group.
        let mut pool = Pool::new(three_zones())
            .with_group(0, "web", 4)
            .with_group(1, "db", 9);
        pool.run(3, &demand(1, 1), 8, &[], &[spread_zone()]);
        let by_zone = pool.tasks_by(ZONE, "web");
        assert_eq!(
            by_zone,
            BTreeMap::from([
                ("us-east-1a".to_string(), 4),
                ("us-east-1b".to_string(), 4),
                ("us-east-1c".to_string(), 4)
            ])
        );
    }

    #[test]
    fn instances_lacking_the_attribute_form_their_own_bucket() {
        let mut instances = three_zones();
        instances.push(instance("nozone0", 100_000, 100_000));
        instances.push(instance("nozone1", 100_000, 100_000));
        let mut pool = Pool::new(instances);
        pool.run(5, &demand(1, 1), 8, &[], &[spread_zone()]);
        let by_zone = pool.tasks_by(ZONE, "web");
        assert_eq!(by_zone.len(), 4, "{by_zone:?}");
        assert!(by_zone.values().all(|n| *n == 2), "{by_zone:?}");
    }

    #[test]
    fn spread_by_instance_balances_hosts() {
        for field in ["instanceId", "host"] {
            let strategies = crate::strategies_from(&[berth_messages::model::PlacementStrategy {
                strategy_type: Some("spread".into()),
                field: Some(field.into()),
            }])
            .unwrap();
            let mut pool = Pool::new(
                (0..4)
                    .map(|i| instance(&i.to_string(), 8192, 8192))
                    .collect(),
            )
            .with_group(2, "web", 2);
            let r = pool.run(9, &demand(1, 1), 10, &[], &strategies);
            assert_eq!(ok(&r).len(), 10);
            let per_host: Vec<u32> = pool.groups.iter().map(|g| g["web"]).collect();
            assert_eq!(per_host, [3, 3, 3, 3], "{field}");
        }
    }

    #[test]
    fn distinct_instance_never_doubles_up_and_then_fails() {
        for seed in 0..40 {
            let mut instances: Vec<_> = (0..4)
                .map(|i| instance(&i.to_string(), 4096, 4096))
                .collect();
            instances.push(instance("small", 4096, 1));
            let mut pool = Pool::new(instances)
                .with_group(1, "web", 1)
                .with_group(2, "db", 3);
            let r = pool.run(
                seed,
                &demand(64, 64),
                5,
                &[Constraint::DistinctInstance],
                &[],
            );
            let mut placed = ok(&r);
            placed.sort_unstable();
            assert_eq!(placed, [0, 2, 3], "seed {seed}");
            for failure in r[3..].iter() {
                let failure = failure.as_ref().unwrap_err();
                assert_eq!(failure.reason, "ATTRIBUTE");
                assert!(
                    failure.detail.contains(
                        "encountered error \"distinctInstance placement constraint unsatisfied: \
                         it already runs a task of group web\""
                    ),
                    "{}",
                    failure.detail
                );
            }
            assert!(pool
                .groups
                .iter()
                .all(|g| g.get("web").copied().unwrap_or(0) <= 1));
            // A second batch finds every host taken.
            let again = pool.run(
                seed,
                &demand(64, 64),
                1,
                &[Constraint::DistinctInstance],
                &[],
            );
            assert_eq!(again[0].as_ref().unwrap_err().reason, "ATTRIBUTE");
        }
    }

    fn typed(id: &str, instance_type: &str) -> ContainerInstance {
        with_attribute(instance(id, 4096, 4096), "ecs.instance-type", instance_type)
    }

    #[test]
    fn member_of_narrows() {
        let mut pool = Pool::new(vec![
            typed("0", "t2.small"),
            typed("1", "m5.large"),
            typed("2", "t2.micro"),
            typed("3", "c5.xlarge"),
        ]);
        let constraint = [member_of("attribute:ecs.instance-type =~ t2.*")];
        let r = pool.run(4, &demand(256, 256), 32, &constraint, &[]);
        let placed = ok(&r);
        assert_eq!(placed.len(), 32);
        assert!(placed.iter().all(|i| *i == 0 || *i == 2), "{placed:?}");
        assert!(placed.contains(&0) && placed.contains(&2));

        // Nothing matches: the constraint is named.
        let none = [member_of("attribute:ecs.instance-type in [p3.2xlarge]")];
        let r = pool.run(4, &demand(1, 1), 1, &none, &[]);
        let failure = r[0].as_ref().unwrap_err();
        assert_eq!(failure.reason, "ATTRIBUTE");
        assert!(
            failure.detail.ends_with(
                "encountered error \"memberOf placement constraint unsatisfied: \
                 attribute:ecs.instance-type in [p3.2xlarge]\""
            ),
            "{}",
            failure.detail
        );
    }

    #[test]
    fn resources_are_checked_before_constraints() {
        // The t2 instances are full; the others have room but break the constraint.
        let mut pool = Pool::new(vec![typed("0", "t2.small"), typed("1", "m5.large")]);
        allocate(&mut pool.instances[0], "old", used(0));
        let constraint = [member_of("attribute:ecs.instance-type =~ t2.*")];
        let r = pool.run(1, &demand(10, 10), 1, &constraint, &[]);
        let failure = r[0].as_ref().unwrap_err();
        assert_eq!(failure.reason, "ATTRIBUTE");
        assert!(
            failure.detail.contains("container-instance/c/1 "),
            "{}",
            failure.detail
        );
        // When nothing has the resources, the resource is the reason.
        allocate(&mut pool.instances[1], "old", used(5));
        let r = pool.run(1, &demand(10, 10), 1, &constraint, &[]);
        let failure = r[0].as_ref().unwrap_err();
        assert_eq!(failure.reason, "RESOURCE:CPU");
        assert!(
            failure.detail.contains("container-instance/c/1 "),
            "{}",
            failure.detail
        );
    }

    #[test]
    fn later_constraints_are_closer() {
        let mut pool =
            Pool::new(vec![typed("0", "t2.small"), typed("1", "m5.large")]).with_group(0, "web", 1);
        let constraints = [
            member_of("attribute:ecs.instance-type =~ t2.*"),
            Constraint::DistinctInstance,
        ];
        let r = pool.run(1, &demand(1, 1), 1, &constraints, &[]);
        let failure = r[0].as_ref().unwrap_err();
        assert!(
            failure.detail.contains("container-instance/c/0 "),
            "{}",
            failure.detail
        );
        assert!(
            failure.detail.contains("distinctInstance"),
            "{}",
            failure.detail
        );
    }

    #[test]
    fn strategies_compose_spread_by_zone_then_binpack_memory() {
        let mut instances = Vec::new();
        for zone in ["us-east-1a", "us-east-1b", "us-east-1c"] {
            instances.push(zoned(&format!("{zone}-roomy"), 4096, 4096, zone));
            instances.push(zoned(&format!("{zone}-full"), 4096, 4096, zone));
        }
        for (n, i) in instances.iter_mut().enumerate() {
            allocate(i, "old", used(if n % 2 == 0 { 3000 } else { 1000 }));
        }
        let strategies = [spread_zone(), Strategy::Binpack(BinpackField::Memory)];
        for seed in 0..20 {
            let mut pool = Pool::new(instances.clone());
            let r = pool.run(seed, &demand(100, 400), 6, &[], &strategies);
            let mut first: Vec<usize> = ok(&r)[..3].to_vec();
            first.sort_unstable();
            assert_eq!(first, [1, 3, 5], "one per zone, on the fuller instance");
            let mut second: Vec<usize> = ok(&r)[3..].to_vec();
            second.sort_unstable();
            assert_eq!(second, [1, 3, 5], "600 MiB left still fits best");
        }
        // The other order binpacks first: the fullest instance takes both tasks, and the
        // spread only decides among the equally full ones for the first.
        let mut pool = Pool::new(instances);
        let strategies = [Strategy::Binpack(BinpackField::Memory), spread_zone()];
        let r = pool.run(2, &demand(100, 400), 2, &[], &strategies);
        let placed = ok(&r);
        assert_eq!(placed.len(), 2);
        assert!(placed[0] % 2 == 1 && placed[0] == placed[1], "{placed:?}");
    }

    #[test]
    fn task_group_anti_affinity_sees_the_batch() {
        let mut pool = Pool::new(
            (0..3)
                .map(|i| instance(&i.to_string(), 4096, 4096))
                .collect(),
        );
        let constraint = [member_of("not(task:group == web)")];
        let r = pool.run(6, &demand(1, 1), 4, &constraint, &[]);
        let mut placed = ok(&r);
        placed.sort_unstable();
        assert_eq!(placed, [0, 1, 2]);
        let failure = r[3].as_ref().unwrap_err();
        assert_eq!(failure.reason, "ATTRIBUTE");
        assert!(
            failure.detail.contains("not task:group == web"),
            "{}",
            failure.detail
        );
    }

    #[test]
    fn running_tasks_count_sees_the_batch() {
        let mut pool = Pool::new(vec![instance("0", 4096, 4096), instance("1", 4096, 4096)])
            .with_group(1, "db", 1);
        let constraint = [member_of("runningTasksCount < 2")];
        let r = pool.run(8, &demand(1, 1), 4, &constraint, &[]);
        let mut placed = ok(&r);
        placed.sort_unstable();
        assert_eq!(placed, [0, 0, 1]);
        assert!(r[3].is_err());
    }

    #[test]
    fn without_strategies_picks_among_the_best_few_by_memory() {
        // 8 instances: k = 3, so only the three with the most memory are picked.
        let pool = Pool::new(
            (0..8)
                .map(|i| instance(&i.to_string(), 4096, 1000 + i * 100))
                .collect(),
        );
        let d = demand(1, 1);
        let request = PlacementRequest {
            demand: &d,
            count: 1,
            group: "web",
            constraints: &[],
            strategies: &[],
        };
        let mut placer = StrategyPlacer::with_seed(42);
        let picked: BTreeSet<usize> = (0..200)
            .map(|_| {
                pool.place(&mut placer, &request)[0]
                    .as_ref()
                    .unwrap()
                    .instance_index
            })
            .collect();
        assert_eq!(picked, BTreeSet::from([5, 6, 7]));
        // The random strategy narrows nothing: every instance that fits is picked.
        let random = [Strategy::Random];
        let request = PlacementRequest {
            strategies: &random,
            ..request
        };
        let picked: BTreeSet<usize> = (0..200)
            .map(|_| {
                pool.place(&mut placer, &request)[0]
                    .as_ref()
                    .unwrap()
                    .instance_index
            })
            .collect();
        assert_eq!(picked.len(), 8);
    }

    #[test]
    fn seeds_repeat() {
        let pool = Pool::new(three_zones());
        let d = demand(5, 5);
        let strategies = [spread_zone()];
        let request = PlacementRequest {
            demand: &d,
            count: 20,
            group: "web",
            constraints: &[],
            strategies: &strategies,
        };
        let run = |seed| pool.place(&mut StrategyPlacer::with_seed(seed), &request);
        assert_eq!(run(3), run(3));
    }

    #[test]
    fn ports_of_a_batch_are_distinct() {
        let pool = Pool::new(vec![instance_with_ports("i", 0, 0, &[49154], &[])]);
        let d = Demand {
            ports: vec![8080],
            dynamic_ports: 1,
            ..Default::default()
        };
        let strategies = [Strategy::Binpack(BinpackField::Cpu)];
        let request = PlacementRequest {
            demand: &d,
            count: 2,
            group: "web",
            constraints: &[],
            strategies: &strategies,
        };
        let r = pool.place(&mut StrategyPlacer::with_seed(3), &request);
        assert_eq!(r[0].as_ref().unwrap().allocation.ports, vec![8080, 49153]);
        assert_eq!(r[1].as_ref().unwrap_err().reason, "RESOURCE:PORTS");

        let dynamic = Demand {
            dynamic_ports: 2,
            ..Default::default()
        };
        let request = PlacementRequest {
            demand: &dynamic,
            ..request
        };
        let ports: Vec<_> = pool
            .place(&mut StrategyPlacer::with_seed(3), &request)
            .into_iter()
            .map(|p| p.unwrap().allocation.ports)
            .collect();
        assert_eq!(ports, vec![vec![49153, 49155], vec![49156, 49157]]);
    }

    #[test]
    fn draining_and_disconnected_instances_get_nothing() {
        let mut draining = zoned("draining", 4096, 4096, "a");
        draining.status = InstanceStatus::Draining;
        let mut lost = zoned("lost", 4096, 4096, "b");
        lost.agent_connected = false;
        let mut pool = Pool::new(vec![draining, lost]);
        let r = pool.run(1, &demand(1, 1), 1, &[], &[spread_zone()]);
        let failure = r[0].as_ref().unwrap_err();
        assert_eq!(failure.reason, "AGENT");
        pool.instances.truncate(1);
        pool.groups.truncate(1);
        pool.running.truncate(1);
        let r = pool.run(1, &demand(1, 1), 1, &[], &[spread_zone()]);
        assert_eq!(r[0].as_ref().unwrap_err().reason, "INACTIVE");
    }

    // ---- the invariant under random constraints and strategies ----

    fn arb_instance() -> impl proptest::strategy::Strategy<Value = (ContainerInstance, u32, u32)> {
        (
            (0i64..4096, 0i64..4096),
            proptest::collection::vec(49150u16..49170, 0..6),
            proptest::collection::vec(prop_oneof![Just(80u16), Just(53), 49150u16..49170], 0..4),
            0u8..10,
            proptest::collection::vec((0i64..1024, 0i64..1024, 0usize..3), 0..4),
            prop::option::of(prop::sample::select(vec!["a", "b", "c"])),
            prop::sample::select(vec!["t2.small", "m5.large"]),
            (0u32..3, 0u32..3),
        )
            .prop_map(
                |((cpu, memory), tcp, udp, state, existing, zone, kind, (web, db))| {
                    let mut i = instance_with_ports("i", cpu, memory, &tcp, &udp);
                    i.status = if state == 0 {
                        InstanceStatus::Draining
                    } else {
                        InstanceStatus::Active
                    };
                    i.agent_connected = state != 1;
                    if let Some(zone) = zone {
                        i = with_attribute(i, ZONE, zone);
                    }
                    i = with_attribute(i, "ecs.instance-type", kind);
                    for (n, (cpu, memory, dynamic)) in existing.into_iter().enumerate() {
                        let d = Demand {
                            cpu,
                            memory,
                            dynamic_ports: dynamic,
                            dynamic_ports_udp: dynamic,
                            ..Default::default()
                        };
                        if let Ok(a) = crate::fit_resources(&remaining(&i), &d) {
                            allocate(&mut i, &format!("old{n}"), a);
                        }
                    }
                    (i, web, db)
                },
            )
    }

    fn arb_demand() -> impl proptest::strategy::Strategy<Value = Demand> {
        (
            0i64..1024,
            0i64..1024,
            proptest::collection::btree_set(
                prop_oneof![Just(80u16), Just(443), 49150u16..49170],
                0..3,
            ),
            proptest::collection::btree_set(prop_oneof![Just(53u16), 49150u16..49170], 0..2),
            0usize..4,
            0usize..3,
        )
            .prop_map(
                |(cpu, memory, ports, ports_udp, dynamic, dynamic_udp)| Demand {
                    cpu,
                    memory,
                    ports: ports.into_iter().collect(),
                    ports_udp: ports_udp.into_iter().collect(),
                    dynamic_ports: dynamic,
                    dynamic_ports_udp: dynamic_udp,
                },
            )
    }

    fn arb_constraint() -> impl proptest::strategy::Strategy<Value = Constraint> {
        prop_oneof![
            Just(Constraint::DistinctInstance),
            prop::sample::select(vec![
                "attribute:ecs.availability-zone in [a, b]",
                "attribute:ecs.instance-type =~ t2.*",
                "not(task:group == web)",
                "runningTasksCount < 3",
                "task:group != db",
                "attribute:ecs.availability-zone !exists or agentConnected == true",
            ])
            .prop_map(member_of),
        ]
    }

    fn arb_strategy() -> impl proptest::strategy::Strategy<Value = Strategy> {
        prop::sample::select(vec![
            Strategy::Binpack(BinpackField::Cpu),
            Strategy::Binpack(BinpackField::Memory),
            Strategy::Spread(SpreadField::InstanceId),
            spread_zone(),
            Strategy::Random,
        ])
    }

    fn registered(i: &ContainerInstance, name: &str) -> i64 {
        i.registered_resources
            .iter()
            .find(|r| r.name == name)
            .and_then(Resource::number)
            .unwrap_or(0)
    }

    /// Whether every constraint holds for candidate `i` of `pool` right now.
    fn meets(pool: &Pool, i: usize, constraints: &[Constraint]) -> bool {
        let candidates = pool.candidates();
        constraints.iter().all(|c| match c {
            Constraint::DistinctInstance => pool.groups[i].get("web").copied().unwrap_or(0) == 0,
            Constraint::MemberOf(e) => evaluate(e, &candidates[i]),
        })
    }

    /// The first narrowing strategy's score of candidate `i` (lower is better).
    fn score(pool: &Pool, i: usize, strategy: &Strategy, d: &Demand) -> i64 {
        let web = |j: usize| i64::from(pool.groups[j].get("web").copied().unwrap_or(0));
        let zone = |j: usize| {
            pool.instances[j]
                .attributes
                .iter()
                .find(|a| a.name == ZONE)
                .map(|a| a.value.clone())
        };
        match strategy {
            Strategy::Binpack(BinpackField::Cpu) => remaining(&pool.instances[i]).cpu - d.cpu,
            Strategy::Binpack(BinpackField::Memory) => {
                remaining(&pool.instances[i]).memory - d.memory
            }
            Strategy::Spread(SpreadField::InstanceId) => web(i),
            Strategy::Spread(SpreadField::Attribute(_)) => (0..pool.instances.len())
                .filter(|j| zone(*j) == zone(i))
                .map(web)
                .sum(),
            Strategy::Random => 0,
        }
    }

    proptest! {
        /// An [`InstancePool`] kept up to date record by record (instances first seen through
        /// their tasks, allocations applied as the journal would, then the facts of one
        /// instance changed) decides exactly like a fresh slice of candidates of the same
        /// state, batch after batch, refusals included.
        #[test]
        fn pool_decides_like_fresh_candidates(
            instances in proptest::collection::vec(arb_instance(), 1..7),
            demand in arb_demand(),
            constraints in proptest::collection::vec(arb_constraint(), 0..3),
            strategies in proptest::collection::vec(arb_strategy(), 0..4),
            counts in proptest::collection::vec(1usize..5, 1..4),
            flip in any::<prop::sample::Index>(),
            excluded in proptest::collection::vec(any::<prop::sample::Index>(), 0..2),
            seed in any::<u64>(),
        ) {
            let mut state = Pool::new(instances.iter().map(|(i, _, _)| i.clone()).collect());
            let id = |n: usize| format!("i{n}");
            let mut pool = InstancePool::new();
            for (n, (_, web, db)) in instances.iter().enumerate() {
                state.instances[n].container_instance_arn = format!("arn:aws:ecs:r:a:container-instance/c/{n}");
                state = state.with_group(n, "web", *web).with_group(n, "db", *db);
                // Tasks first, the record after (as a replay can deliver them).
                pool.add_group_tasks(&id(n), "web", i64::from(*web));
                pool.add_group_tasks(&id(n), "db", i64::from(*db));
                pool.add_running(&id(n), i64::from(*web + *db));
            }
            for (n, i) in state.instances.iter().enumerate() {
                pool.upsert(&id(n), Arc::new(i.clone()));
            }
            let excluded: Vec<usize> = {
                let mut e: Vec<usize> = excluded.iter().map(|x| x.index(instances.len())).collect();
                e.sort_unstable();
                e.dedup();
                e
            };
            for (round, count) in counts.iter().enumerate() {
                if round == 1 {
                    // A fact changes on one instance: cached verdicts and columns follow.
                    let n = flip.index(instances.len());
                    let i = &mut state.instances[n];
                    i.agent_connected = !i.agent_connected;
                    i.attributes.retain(|a| a.name != ZONE);
                    *i = with_attribute(i.clone(), ZONE, "c");
                    pool.upsert(&id(n), Arc::new(i.clone()));
                }
                let request = PlacementRequest {
                    demand: &demand,
                    count: *count,
                    group: "web",
                    constraints: &constraints,
                    strategies: &strategies,
                };
                // The fresh candidates in slot order (slots are given in order of first
                // mention), without the excluded ones.
                let kept: Vec<usize> = (0..pool.len())
                    .map(|slot| pool.id(slot).unwrap().trim_start_matches('i').parse::<usize>().unwrap())
                    .filter(|n| !excluded.contains(n))
                    .collect();
                let all = state.candidates();
                let candidates: Vec<Candidate<'_>> = kept.iter().map(|n| all[*n]).collect();
                let fresh = StrategyPlacer::with_seed(seed).place(&candidates, &request);
                let slots: Vec<usize> = excluded.iter().map(|n| pool.slot(&id(*n)).unwrap()).collect();
                let pooled = StrategyPlacer::with_seed(seed).place_in_pool(&pool, &request, &slots);
                let named = |r: &Result<Placement, PlacementFailure>, by_pool: bool| {
                    r.clone().map(|p| {
                        let n = if by_pool {
                            pool.id(p.instance_index).unwrap().trim_start_matches('i').parse::<usize>().unwrap()
                        } else {
                            kept[p.instance_index]
                        };
                        (n, p.allocation)
                    })
                };
                let fresh: Vec<_> = fresh.iter().map(|r| named(r, false)).collect();
                let pooled: Vec<_> = pooled.iter().map(|r| named(r, true)).collect();
                if excluded.is_empty() || !strategies.is_empty() {
                    prop_assert_eq!(&fresh, &pooled);
                } else {
                    // The random scan start is drawn over all slots: only the exclusion and
                    // the outcome count are comparable.
                    prop_assert!(pooled.iter().flatten().all(|(n, _)| !excluded.contains(n)));
                    prop_assert_eq!(fresh.iter().flatten().count(), pooled.iter().flatten().count());
                }
                for (n, allocation) in pooled.into_iter().flatten() {
                    let placement = Placement { instance_index: n, allocation };
                    state.apply(&placement, "web");
                    pool.upsert(&id(n), Arc::new(state.instances[n].clone()));
                    pool.add_group_tasks(&id(n), "web", 1);
                    pool.add_running(&id(n), 1);
                }
            }
        }
    }

    /// A request for the group the property tests count ("web").
    fn web_request<'a>(
        demand: &'a Demand,
        count: usize,
        constraints: &'a [Constraint],
        strategies: &'a [Strategy],
    ) -> PlacementRequest<'a> {
        PlacementRequest {
            demand,
            count,
            group: "web",
            constraints,
            strategies,
        }
    }

    proptest! {
        /// Later decisions of a batch that start from the previous ties decide exactly like
        /// a scan of every instance per task, reservations and exclusions included.
        #[test]
        fn incremental_decisions_match_full_scans(
            instances in proptest::collection::vec(arb_instance(), 1..12),
            copies in 1usize..4,
            demand in arb_demand(),
            constraints in proptest::collection::vec(arb_constraint(), 0..3),
            // No strategy too: the default's early-stopping scan against a full one.
            strategies in proptest::collection::vec(arb_strategy(), 0..4),
            count in 1usize..12,
            excluded in proptest::collection::vec(any::<prop::sample::Index>(), 0..2),
            reserved in proptest::collection::vec((any::<prop::sample::Index>(), prop_oneof![Just(0i64), 0i64..600], prop_oneof![Just(0i64), 0i64..600], 1u32..40), 0..6),
            seed in any::<u64>(),
        ) {
            // Copies of each instance make ties that a batch wears down.
            let mut pool = InstancePool::new();
            let mut n = 0;
            for (instance, web, _) in &instances {
                for _ in 0..copies {
                    let mut i = instance.clone();
                    i.container_instance_arn = format!("arn:aws:ecs:r:a:container-instance/c/{n}");
                    pool.add_group_tasks(&format!("i{n}"), "web", i64::from(*web));
                    pool.upsert(&format!("i{n}"), Arc::new(i));
                    n += 1;
                }
            }
            let excluded: Vec<usize> = excluded.iter().map(|x| x.index(n)).collect();
            let reserved: Vec<Promise> = reserved
                .iter()
                .map(|(x, cpu, memory, tasks)| Promise {
                    slot: x.index(n),
                    cpu: *cpu,
                    memory: *memory,
                    tasks: *tasks,
                })
                .collect();
            let request = web_request(&demand, count, &constraints, &strategies);
            let incremental = StrategyPlacer::with_seed(seed)
                .place_in_pool_reserving(&pool, &request, &excluded, &reserved);
            let mut rescanning = StrategyPlacer::with_seed(seed);
            rescanning.rescan_every_decision = true;
            let scanned = rescanning.place_in_pool_reserving(&pool, &request, &excluded, &reserved);
            prop_assert_eq!(incremental, scanned);
        }
    }

    /// Instance `n` with headroom in steps of 256 (so that exact fits and ties are common):
    /// state 0 is DRAINING, 1 disconnected, anything else a candidate.
    fn coarse_host(n: usize, cpu: i64, memory: i64, state: u8) -> ContainerInstance {
        let mut i = instance_with_ports(&format!("i{n}"), cpu * 256, memory * 256, &[], &[]);
        i.container_instance_arn = format!("arn:aws:ecs:r:a:container-instance/c/{n}");
        i.status = if state == 0 {
            InstanceStatus::Draining
        } else {
            InstanceStatus::Active
        };
        i.agent_connected = state != 1;
        i
    }

    proptest! {
        /// The two-pass scan of a binpack-only decision decides exactly like the general
        /// loop, on headrooms coarse enough that exact fits and ties are common.
        #[test]
        fn plain_binpack_scans_match_the_general_loop(
            hosts in proptest::collection::vec((0i64..5, 0i64..5, 0u8..6), 1..40),
            need in (0i64..3, 0i64..3),
            by_memory in any::<bool>(),
            count in 1usize..6,
            seed in any::<u64>(),
        ) {
            let mut pool = InstancePool::new();
            for (n, (cpu, memory, state)) in hosts.iter().enumerate() {
                pool.upsert(&format!("i{n}"), Arc::new(coarse_host(n, *cpu, *memory, *state)));
            }
            let demand = Demand { cpu: need.0 * 256, memory: need.1 * 256, ..Default::default() };
            let field = if by_memory { BinpackField::Memory } else { BinpackField::Cpu };
            let strategies = [Strategy::Binpack(field)];
            let request = web_request(&demand, count, &[], &strategies);
            let specialised = StrategyPlacer::with_seed(seed).place_in_pool_reserving(&pool, &request, &[], &[]);
            let mut general = StrategyPlacer::with_seed(seed);
            general.rescan_every_decision = true;
            let reference = general.place_in_pool_reserving(&pool, &request, &[], &[]);
            prop_assert_eq!(specialised, reference);
        }
    }

    proptest! {
        /// The fitting-slots scan of a spread decision with nothing else to score decides
        /// exactly like the general loop, with exclusions and promises elsewhere.
        #[test]
        fn spread_only_scans_match_the_general_loop(
            hosts in proptest::collection::vec((0i64..4, 0i64..4, 0u8..6, 0u8..3, 0u32..3), 1..40),
            need in (0i64..3, 0i64..3),
            count in 1usize..8,
            excluded in proptest::collection::vec(any::<prop::sample::Index>(), 0..3),
            reserved in proptest::collection::vec((any::<prop::sample::Index>(), 0i64..600, 0i64..600), 0..4),
            seed in any::<u64>(),
        ) {
            let mut pool = InstancePool::new();
            for (n, (cpu, memory, state, zone, web)) in hosts.iter().enumerate() {
                let i = coarse_host(n, *cpu, *memory, *state);
                let i = with_attribute(i, "ecs.availability-zone", ["a", "b", "c"][usize::from(*zone)]);
                pool.add_group_tasks(&format!("i{n}"), "web", i64::from(*web));
                pool.upsert(&format!("i{n}"), Arc::new(i));
            }
            let n = hosts.len();
            let excluded: Vec<usize> = excluded.iter().map(|x| x.index(n)).collect();
            let reserved: Vec<Promise> = reserved
                .iter()
                .map(|(x, cpu, memory)| Promise { slot: x.index(n), cpu: *cpu, memory: *memory, tasks: 1 })
                .collect();
            let demand = Demand { cpu: need.0 * 256, memory: need.1 * 256, ..Default::default() };
            let strategies = [spread_zone()];
            let request = web_request(&demand, count, &[], &strategies);
            let specialised = StrategyPlacer::with_seed(seed)
                .place_in_pool_reserving(&pool, &request, &excluded, &reserved);
            let mut general = StrategyPlacer::with_seed(seed);
            general.rescan_every_decision = true;
            let reference = general.place_in_pool_reserving(&pool, &request, &excluded, &reserved);
            prop_assert_eq!(specialised, reference);
        }
    }

    proptest! {
        #[test]
        fn strategy_placer_never_overcommits(
            instances in proptest::collection::vec(arb_instance(), 0..7),
            demand in arb_demand(),
            constraints in proptest::collection::vec(arb_constraint(), 0..3),
            strategies in proptest::collection::vec(arb_strategy(), 0..4),
            count in 1usize..8,
            seed in any::<u64>(),
        ) {
            let mut pool = Pool::new(instances.iter().map(|(i, _, _)| i.clone()).collect());
            for (n, (_, web, db)) in instances.iter().enumerate() {
                pool.instances[n].container_instance_arn = format!("arn:aws:ecs:r:a:container-instance/c/{n}");
                pool = pool.with_group(n, "web", *web).with_group(n, "db", *db);
            }
            let request = web_request(&demand, count, &constraints, &strategies);
            let results = pool.place(&mut StrategyPlacer::with_seed(seed), &request);
            prop_assert_eq!(results.len(), count);
            let n = pool.instances.len();
            for result in results {
                let feasible: Vec<usize> = (0..n)
                    .filter(|i| fit(&pool.instances[*i], &demand).is_ok() && meets(&pool, *i, &constraints))
                    .collect();
                match result {
                    Ok(p) => {
                        let i = p.instance_index;
                        prop_assert!(feasible.contains(&i), "placed on {} which is not feasible", i);
                        // Exactly what fit proposes on the updated record.
                        prop_assert_eq!(fit(&pool.instances[i], &demand), Ok(p.allocation.clone()));
                        match strategies.iter().find(|s| **s != Strategy::Random) {
                            Some(first) => {
                                let best = feasible.iter().map(|j| score(&pool, *j, first, &demand)).min();
                                prop_assert_eq!(Some(score(&pool, i, first, &demand)), best, "{}", first);
                            }
                            None if strategies.is_empty() => {
                                let mut memories: Vec<i64> = feasible.iter().map(|j| remaining(&pool.instances[*j]).memory).collect();
                                memories.sort_unstable_by(|a, b| b.cmp(a));
                                let kth = memories[(best_few(n) - 1).min(memories.len() - 1)];
                                prop_assert!(remaining(&pool.instances[i]).memory >= kth);
                            }
                            None => {}
                        }
                        pool.apply(&p, "web");
                    }
                    Err(f) => {
                        prop_assert!(feasible.is_empty(), "failed ({}) while {:?} are feasible", f.detail, feasible);
                        if n == 0 {
                            prop_assert_eq!(f.reason, "MISSING");
                            continue;
                        }
                        let fits_resources = (0..n).any(|i| fit(&pool.instances[i], &demand).is_ok());
                        let expected = if fits_resources {
                            "ATTRIBUTE"
                        } else {
                            (0..n).filter_map(|i| fit(&pool.instances[i], &demand).err()).max().map_or("", Shortfall::reason)
                        };
                        prop_assert_eq!(f.reason, expected, "{}", f.detail);
                    }
                }
            }
            for (n, i) in pool.instances.iter().enumerate() {
                let held: Vec<_> = i.allocations.values().collect();
                prop_assert!(held.iter().map(|a| a.cpu).sum::<i64>() <= registered(i, Resource::CPU));
                prop_assert!(held.iter().map(|a| a.memory).sum::<i64>() <= registered(i, Resource::MEMORY));
                for (name, ports) in [
                    (Resource::PORTS, held.iter().flat_map(|a| a.ports.iter()).collect::<Vec<_>>()),
                    (Resource::PORTS_UDP, held.iter().flat_map(|a| a.ports_udp.iter()).collect()),
                ] {
                    let reserved: BTreeSet<u16> = reserved_ports(i, name).collect();
                    let mut seen = BTreeSet::new();
                    for p in ports {
                        prop_assert!(!reserved.contains(p), "reserved port {} given out", p);
                        prop_assert!(seen.insert(*p), "port {} given twice", p);
                    }
                }
                if constraints.contains(&Constraint::DistinctInstance) {
                    let new = i.allocations.keys().filter(|k| k.starts_with("new")).count();
                    prop_assert!(new <= 1, "instance {} got {} tasks of the group", n, new);
                }
                if i.status != InstanceStatus::Active || !i.agent_connected {
                    prop_assert!(i.allocations.keys().all(|k| k.starts_with("old")));
                }
            }
        }
    }
}

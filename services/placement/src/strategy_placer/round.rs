//! One placement call's state ([`Round`]): what the batch and the reservations took per
//! instance, the constraints' verdicts, the strategies' scores and buckets, and the
//! decision of each task (narrowing by scores, drawing among ties, or among the best few
//! by memory without strategies), with the diagnosis of a task that fits nowhere. The
//! scans that find the candidates live in `scan`.

mod scan;

use super::source::Source;
use super::{PlacementRequest, Promise, JOIN_IN_FLIGHT};
use crate::capacity::{fit_resources, ports_available, Shortfall};
use crate::expr::{Expr, Facts};
use crate::placer::{best_few, Placement, PlacementFailure};
use crate::pool::{Column, Head};
use crate::rules::{BinpackField, Constraint, SpreadField, Strategy, MAX_STRATEGIES};
use berth_messages::model::Allocation;
use fixedbitset::FixedBitSet;
use rand::rngs::StdRng;
use rand::Rng;
use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

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
pub(super) struct Round<'r, S: Source> {
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
    pub(super) incremental: bool,
    /// Whether [`Round::scan_plain_binpack`], [`Round::extend_fitting`] and
    /// [`Round::consider_by_headroom`] may stand in for the general loop of
    /// [`Round::consider`].
    pub(super) specialised_scans: bool,
    /// The best key of the last full scan and the slots tied for it that no placement of
    /// this batch has touched since, in slot order.
    base: Option<(Key, Vec<usize>)>,
    /// Slots this batch placed on since the last full scan, in slot order.
    changed: Vec<usize>,
    /// The most remaining memory of any instance, if the source keeps it: a decision
    /// without strategy stops scanning once nothing left could rank among its best.
    pub(super) max_memory: Option<i64>,
}

impl<'r, S: Source> Round<'r, S> {
    pub(super) fn new(
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
    pub(super) fn reserve(&mut self, reserved: &[Promise]) {
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
    pub(super) fn place_one(
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

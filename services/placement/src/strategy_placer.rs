//! ECS placement with constraints and strategies: [`StrategyPlacer`] filters the
//! candidates by resources (status, agent, CPU, memory, ports), then by the constraints
//! (binding), then narrows by each strategy in order keeping ties (best effort), then picks
//! at random among what remains. With no strategy it picks at random among the best few by
//! remaining memory, like [`crate::RandomFitPlacer`].
//!
//! Every figure a decision reads is computed once per [`StrategyPlacer::place`] call into
//! a flat per-candidate slot (headroom, tasks of the group, constraint verdicts, spread
//! buckets) and updated in place as the batch places, so choosing one instance is a scan
//! of a few comparisons per candidate; the expensive checks (ports, exact allocation) run
//! only for candidates that could win.
//!
//! A task that cannot be placed fails with the closest instance: resources are checked
//! before constraints (as ECS filters), so if any instance has the resources, the failure
//! is the constraint that the closest of those breaks, with reason `ATTRIBUTE` and a
//! detail naming the constraint (`memberOf placement constraint unsatisfied: <expr>` or
//! `distinctInstance placement constraint unsatisfied`).

use crate::candidate::Candidate;
use crate::capacity::{
    capacity_with, eligibility, fit_resources, headroom, ports_available, Capacity, Shortfall,
};
use crate::demand::Demand;
use crate::expr::{Expr, Facts};
use crate::placer::{best_few, Placement, PlacementFailure};
use crate::rules::{BinpackField, Constraint, SpreadField, Strategy, MAX_STRATEGIES};
use berth_messages::model::{reason, Allocation};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, HashMap};

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

/// The constraint-and-strategy placer. Like [`crate::RandomFitPlacer`] it only proposes;
/// seeded, it is deterministic.
pub struct StrategyPlacer {
    rng: StdRng,
}

impl StrategyPlacer {
    pub fn new() -> Self {
        Self {
            rng: StdRng::from_entropy(),
        }
    }

    /// Same seed, same candidates, same requests: same placements.
    pub fn with_seed(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
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
        if request.count == 0 {
            return Vec::new();
        }
        if candidates.is_empty() {
            return vec![Err(PlacementFailure::no_instances()); request.count];
        }
        let mut round = Round::new(candidates, request);
        let mut results: Vec<Result<Placement, PlacementFailure>> =
            Vec::with_capacity(request.count);
        for _ in 0..request.count {
            // A failure changes nothing, so every later task of the batch fails alike.
            let result = match results.last() {
                Some(Err(failure)) => Err(failure.clone()),
                _ => round.place_one(&mut self.rng),
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

/// Per-candidate figures, kept current through the batch.
#[derive(Clone, Copy)]
struct Slot {
    eligible: Result<(), Shortfall>,
    cpu: i64,
    memory: i64,
    /// Tasks of the request's group here: existing plus placed by this batch.
    group: u32,
    /// Tasks this batch placed here.
    placed: u32,
    /// The first memberOf constraint (index into the request's constraints) not met;
    /// evaluated only for instances with the resources.
    unmet: Option<u16>,
    /// ACTIVE, connected and meeting every constraint: the scan's first test.
    open: bool,
}

/// A spread over an attribute: each candidate's bucket (its value of the attribute) and
/// the tasks of the group per bucket.
struct Buckets {
    of: Vec<u32>,
    tasks: Vec<u64>,
}

/// What kept an instance from taking the task, closest last.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Lack {
    Resource(Shortfall),
    /// Index of the first constraint broken; a later one means more were met.
    Constraint(u16),
}

/// One `place` call's state.
struct Round<'r> {
    candidates: &'r [Candidate<'r>],
    request: &'r PlacementRequest<'r>,
    slots: Vec<Slot>,
    /// Ports promised to earlier placements, by candidate index: (TCP, UDP).
    promised: BTreeMap<usize, (Vec<u16>, Vec<u16>)>,
    member_of: Vec<(u16, &'r Expr)>,
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
    k: usize,
}

impl<'r> Round<'r> {
    fn new(candidates: &'r [Candidate<'r>], request: &'r PlacementRequest<'r>) -> Self {
        let index = |i: usize| u16::try_from(i).unwrap_or(u16::MAX);
        let member_of: Vec<(u16, &Expr)> = request
            .constraints
            .iter()
            .enumerate()
            .filter_map(|(i, c)| match c {
                Constraint::MemberOf(e) => Some((index(i), e)),
                Constraint::DistinctInstance => None,
            })
            .collect();
        let distinct = request
            .constraints
            .iter()
            .position(|c| *c == Constraint::DistinctInstance)
            .map(index);
        let (need_cpu, need_memory) = (request.demand.cpu.max(0), request.demand.memory.max(0));
        let slots: Vec<Slot> = candidates
            .iter()
            .map(|c| {
                let (cpu, memory) = headroom(c.instance);
                let eligible = eligibility(c.instance);
                // Resources only shrink during a batch, so an instance without them now
                // never reaches the constraints.
                let fits = eligible.is_ok() && cpu >= need_cpu && memory >= need_memory;
                let mut slot = Slot {
                    eligible,
                    cpu,
                    memory,
                    group: c.groups.get(request.group).copied().unwrap_or(0),
                    placed: 0,
                    unmet: if fits {
                        first_unmet(&member_of, c, None)
                    } else {
                        None
                    },
                    open: false,
                };
                slot.open = slot.eligible.is_ok() && unmet(&slot, distinct).is_none();
                slot
            })
            .collect();
        let mut scores = Vec::new();
        let mut buckets = Vec::new();
        for strategy in request.strategies {
            let score = match strategy {
                Strategy::Binpack(BinpackField::Cpu) => Score::BinpackCpu,
                Strategy::Binpack(BinpackField::Memory) => Score::BinpackMemory,
                Strategy::Spread(SpreadField::InstanceId) => Score::SpreadInstance,
                Strategy::Spread(SpreadField::Attribute(name)) => {
                    buckets.push(Buckets::new(candidates, &slots, name));
                    Score::SpreadAttribute(buckets.len() - 1)
                }
                Strategy::Random => continue,
            };
            scores.push(score);
        }
        scores.truncate(MAX_STRATEGIES);
        let k = best_few(candidates.len());
        Self {
            candidates,
            request,
            slots,
            promised: BTreeMap::new(),
            recheck_member_of: member_of.iter().any(|(_, e)| e.depends_on_tasks()),
            member_of,
            distinct,
            scores,
            buckets,
            ties: Vec::new(),
            best: Vec::with_capacity(k),
            k,
        }
    }

    fn place_one(&mut self, rng: &mut StdRng) -> Result<Placement, PlacementFailure> {
        let demand = self.request.demand;
        let (cpu, memory) = (demand.cpu.max(0), demand.memory.max(0));
        let needs_ports = !demand.ports.is_empty()
            || !demand.ports_udp.is_empty()
            || demand.dynamic_ports > 0
            || demand.dynamic_ports_udp > 0;
        let by_memory = self.request.strategies.is_empty();
        self.ties.clear();
        self.best.clear();
        if by_memory {
            // Ties of memory go to the earliest in a scan from a random start.
            let n = self.slots.len();
            let start = rng.gen_range(0..n);
            for (rank, index) in (start..n).chain(0..start).enumerate() {
                let slot = &self.slots[index];
                if !slot.open || slot.cpu < cpu || slot.memory < memory {
                    continue;
                }
                let enters = self.best.len() < self.k
                    || self.best.last().is_some_and(|(m, _, _)| slot.memory > *m);
                if !enters || (needs_ports && !self.ports_free(index)) {
                    continue;
                }
                let entry = (slot.memory, Reverse(rank), index);
                self.insert_best(entry);
            }
        } else {
            // Every candidate tied for the best key is kept; one is drawn below.
            let width = self.scores.len();
            let mut best_key: Option<Key> = None;
            for (index, slot) in self.slots.iter().enumerate() {
                if !slot.open || slot.cpu < cpu || slot.memory < memory {
                    continue;
                }
                let key = self.key(index, slot, cpu, memory);
                let ordering = match &best_key {
                    Some(best) => key[..width].cmp(&best[..width]),
                    None => Ordering::Less,
                };
                if ordering == Ordering::Greater || (needs_ports && !self.ports_free(index)) {
                    continue;
                }
                if ordering == Ordering::Less {
                    self.ties.clear();
                    best_key = Some(key);
                }
                self.ties.push(index);
            }
        }

        loop {
            let pool = if by_memory {
                self.best.len()
            } else {
                self.ties.len()
            };
            if pool == 0 {
                return Err(self.diagnose());
            }
            let pick = rng.gen_range(0..pool);
            let index = if by_memory {
                self.best.remove(pick).2
            } else {
                self.ties.swap_remove(pick)
            };
            let allocation = if needs_ports {
                // Not expected to fail (the cheap checks agree with fit_resources); if it
                // does, the next candidate is tried.
                match fit_resources(&self.capacity(index), demand) {
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
            self.take(index, &allocation);
            return Ok(Placement {
                instance_index: index,
                allocation,
            });
        }
    }

    fn key(&self, index: usize, slot: &Slot, cpu: i64, memory: i64) -> Key {
        let mut key = [0; MAX_STRATEGIES];
        for (k, score) in key.iter_mut().zip(&self.scores) {
            *k = match *score {
                Score::BinpackCpu => slot.cpu - cpu,
                Score::BinpackMemory => slot.memory - memory,
                Score::SpreadInstance => i64::from(slot.group),
                Score::SpreadAttribute(b) => {
                    let buckets = &self.buckets[b];
                    buckets.tasks[buckets.of[index] as usize] as i64
                }
            };
        }
        key
    }

    fn promised(&self, index: usize) -> (&[u16], &[u16]) {
        self.promised
            .get(&index)
            .map_or((&[], &[]), |(tcp, udp)| (tcp.as_slice(), udp.as_slice()))
    }

    fn ports_free(&self, index: usize) -> bool {
        let (tcp, udp) = self.promised(index);
        ports_available(
            self.candidates[index].instance,
            tcp,
            udp,
            self.request.demand,
        )
        .is_ok()
    }

    fn capacity(&self, index: usize) -> Capacity {
        let slot = &self.slots[index];
        let (tcp, udp) = self.promised(index);
        capacity_with(
            self.candidates[index].instance,
            slot.cpu,
            slot.memory,
            tcp,
            udp,
        )
    }

    /// Keeps `best` sorted best first (most memory, then earliest in the scan), at most k.
    fn insert_best(&mut self, entry: (i64, Reverse<usize>, usize)) {
        if self.best.len() == self.k {
            self.best.pop();
        }
        let at = self
            .best
            .iter()
            .position(|e| (entry.0, entry.1) > (e.0, e.1))
            .unwrap_or(self.best.len());
        self.best.insert(at, entry);
    }

    fn take(&mut self, index: usize, allocation: &Allocation) {
        let slot = &mut self.slots[index];
        slot.cpu = slot.cpu.saturating_sub(allocation.cpu);
        slot.memory = slot.memory.saturating_sub(allocation.memory);
        slot.group = slot.group.saturating_add(1);
        slot.placed = slot.placed.saturating_add(1);
        let placed = slot.placed;
        for buckets in &mut self.buckets {
            buckets.tasks[buckets.of[index] as usize] += 1;
        }
        if !allocation.ports.is_empty() || !allocation.ports_udp.is_empty() {
            let (tcp, udp) = self.promised.entry(index).or_default();
            tcp.extend(&allocation.ports);
            udp.extend(&allocation.ports_udp);
        }
        if self.recheck_member_of {
            let placed = Some((self.request.group, placed));
            self.slots[index].unmet = first_unmet(&self.member_of, &self.candidates[index], placed);
        }
        let slot = &mut self.slots[index];
        slot.open = slot.eligible.is_ok() && unmet(slot, self.distinct).is_none();
    }

    /// Why nothing fits: the closest candidate and what it lacks, checked in ECS order
    /// (status, agent, CPU, memory, ports, then constraints).
    fn diagnose(&self) -> PlacementFailure {
        let demand = self.request.demand;
        let (cpu, memory) = (demand.cpu.max(0), demand.memory.max(0));
        let mut closest: Option<(Lack, i64, Reverse<usize>)> = None;
        for (index, slot) in self.slots.iter().enumerate() {
            let lack = if let Err(s) = slot.eligible {
                (Lack::Resource(s), 0)
            } else if slot.cpu < cpu {
                (Lack::Resource(Shortfall::Cpu), slot.cpu)
            } else if slot.memory < memory {
                (Lack::Resource(Shortfall::Memory), slot.memory)
            } else {
                let (tcp, udp) = self.promised(index);
                match ports_available(self.candidates[index].instance, tcp, udp, demand) {
                    Err(s) => (Lack::Resource(s), 0),
                    Ok(()) => match unmet(slot, self.distinct) {
                        Some(k) => (Lack::Constraint(k), 0),
                        None => continue,
                    },
                }
            };
            let candidate = (lack.0, lack.1, Reverse(index));
            if closest.is_none_or(|c| candidate > c) {
                closest = Some(candidate);
            }
        }
        match closest {
            Some((Lack::Resource(s), _, Reverse(index))) => {
                PlacementFailure::closest(self.candidates[index].instance, s)
            }
            Some((Lack::Constraint(k), _, Reverse(index))) => {
                let arn = &self.candidates[index].instance.container_instance_arn;
                let why = match self.request.constraints.get(usize::from(k)) {
                    Some(Constraint::MemberOf(e)) => {
                        format!("memberOf placement constraint unsatisfied: {}", cut(e))
                    }
                    _ => format!(
                        "distinctInstance placement constraint unsatisfied: it already runs a \
                         task of group {}",
                        self.request.group
                    ),
                };
                PlacementFailure {
                    arn: Some(arn.clone()),
                    reason: reason::ATTRIBUTE,
                    detail: format!(
                        "closest matching container-instance {arn} encountered error \"{why}\""
                    ),
                }
            }
            // Only if fit_resources disagreed with the cheap checks everywhere.
            None => PlacementFailure::no_instances(),
        }
    }
}

impl Buckets {
    fn new(candidates: &[Candidate<'_>], slots: &[Slot], attribute: &str) -> Self {
        // Few distinct values (zones, instance types) are looked up in a short list; a
        // map takes over past that.
        const LINEAR: usize = 16;
        let mut values: Vec<Option<&str>> = Vec::new();
        let mut map: HashMap<Option<&str>, u32> = HashMap::new();
        let mut of = Vec::with_capacity(candidates.len());
        let mut tasks: Vec<u64> = Vec::new();
        for (c, slot) in candidates.iter().zip(slots) {
            let value = c
                .instance
                .attributes
                .iter()
                .find(|a| a.name == attribute)
                .map(|a| a.value.as_deref().unwrap_or(""));
            let known = if values.len() <= LINEAR {
                values.iter().position(|v| *v == value).map(|i| i as u32)
            } else {
                map.get(&value).copied()
            };
            let bucket = known.unwrap_or_else(|| {
                let id = values.len() as u32;
                values.push(value);
                map.insert(value, id);
                tasks.push(0);
                id
            });
            tasks[bucket as usize] += u64::from(slot.group);
            of.push(bucket);
        }
        Self { of, tasks }
    }
}

/// The first constraint the slot breaks, by index: its memberOf verdict, or
/// distinctInstance (`distinct`) once it holds a task of the group.
fn unmet(slot: &Slot, distinct: Option<u16>) -> Option<u16> {
    let distinct = distinct.filter(|_| slot.group > 0);
    match (slot.unmet, distinct) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The index of the first memberOf expression the candidate does not satisfy.
fn first_unmet(
    member_of: &[(u16, &Expr)],
    candidate: &Candidate<'_>,
    placed: Option<(&str, u32)>,
) -> Option<u16> {
    let facts = Facts { candidate, placed };
    member_of
        .iter()
        .find(|(_, e)| !facts.eval(e))
        .map(|(i, _)| *i)
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
            let request = PlacementRequest {
                demand: &demand,
                count,
                group: "web",
                constraints: &constraints,
                strategies: &strategies,
            };
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

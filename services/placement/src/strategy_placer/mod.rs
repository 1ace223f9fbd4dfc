//! ECS placement with constraints and strategies: [`StrategyPlacer`] filters the
//! candidates by resources (status, agent, CPU, memory, ports), then by the constraints
//! (binding), then narrows by each strategy in order keeping ties (best effort), then picks
//! at random among what remains. With no strategy it picks at random among the best few by
//! remaining memory, like [`crate::RandomFitPlacer`].
//!
//! A decision reads flat per-instance figures ([`Head`](crate::pool::Head): remaining CPU and memory,
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
//!
//! This module owns the placer and its requests; `source` reads instances from a pool or
//! a slice of candidates, `round` holds one call's state and decides each task (with the
//! scans in `round::scan`), and `tests` checks it, with property tests in
//! `tests::properties`.

mod round;
mod source;
#[cfg(test)]
mod tests;

use crate::candidate::Candidate;
use crate::demand::Demand;
use crate::placer::{Placement, PlacementFailure};
use crate::pool::InstancePool;
use crate::rules::{Constraint, Strategy};
use rand::rngs::StdRng;
use rand::SeedableRng;
use round::Round;
use source::{Candidates, Source};

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
    /// Applied in order. Only the first [`MAX_STRATEGIES`](crate::MAX_STRATEGIES) that narrow (binpack, spread)
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

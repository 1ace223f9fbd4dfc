//! Unit tests of the strategy placer: resources before constraints, each strategy and
//! constraint, batches, reservations and joins, seeds and ports; the property tests that
//! check it against full scans and fresh candidates are in `properties`.

use super::*;
use crate::capacity::tests::{instance, instance_with_ports};
use crate::capacity::{reserved_ports, Shortfall};
use crate::placer::best_few;
use crate::rules::Strategy;
use crate::rules::{BinpackField, SpreadField};
use crate::{allocate, evaluate, fit, parse, remaining};
use berth_messages::model::Allocation;
use berth_messages::model::{Attribute, ContainerInstance, InstanceStatus, Resource};
use proptest::prelude::*;
use proptest::strategy::Strategy as _;
use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::Arc;

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

/// A request for the group the tests count ("web").
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

mod properties;

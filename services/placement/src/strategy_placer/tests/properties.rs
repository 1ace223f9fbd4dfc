//! Property tests of the strategy placer, under random instances, demands, constraints and
//! strategies: a pool kept up to date decides like fresh candidates, incremental decisions
//! and the specialised scans decide like the general loop, and no batch overcommits (every
//! placement feasible and best by the first strategy, ports distinct, failures naming the
//! closest shortfall).

use super::*;

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
        proptest::collection::btree_set(prop_oneof![Just(80u16), Just(443), 49150u16..49170], 0..3),
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
        Strategy::Binpack(BinpackField::Memory) => remaining(&pool.instances[i]).memory - d.memory,
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

//! Choosing instances for tasks: the [`Placer`] seam (strategies and constraints plug in
//! behind it) and the default [`RandomFitPlacer`]. A placer only proposes; the conditional
//! write of the instance record decides, so two schedulers with the same view are steered
//! apart by randomness rather than serialised.

use crate::capacity::{
    capacity_with, eligibility, fit_resources, headroom, ports_available, Capacity, Shortfall,
};
use crate::demand::Demand;
use berth_messages::model::{reason, Allocation, ContainerInstance};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::BTreeMap;

/// Why a task could not be placed: the ECS reason of the closest instance (see
/// [`Shortfall`] for the order) and a sentence naming that instance and what it lacked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacementFailure {
    /// The closest instance's ARN (ECS puts it in the failure's `arn`).
    pub arn: Option<String>,
    pub reason: &'static str,
    pub detail: String,
}

impl PlacementFailure {
    pub(crate) fn no_instances() -> Self {
        Self {
            arn: None,
            reason: reason::MISSING,
            detail: "No Container Instances were found in your cluster.".into(),
        }
    }

    pub(crate) fn closest(instance: &ContainerInstance, shortfall: Shortfall) -> Self {
        let arn = &instance.container_instance_arn;
        let what = match shortfall {
            Shortfall::Inactive => format!("has status {}", instance.status.as_str()),
            Shortfall::Agent => "encountered error \"AGENT\"".to_string(),
            Shortfall::Cpu => "has insufficient CPU units available".to_string(),
            Shortfall::Memory => "has insufficient memory available".to_string(),
            Shortfall::Ports => "is already using a port required by your task".to_string(),
            Shortfall::PortsUdp => "is already using a UDP port required by your task".to_string(),
        };
        Self {
            arn: Some(arn.clone()),
            reason: shortfall.reason(),
            detail: format!("closest matching container-instance {arn} {what}"),
        }
    }

    /// The instance `arn` fails a placement constraint, `why` in ECS's words.
    pub(crate) fn unmet_constraint(arn: &str, why: &str) -> Self {
        Self {
            arn: Some(arn.to_string()),
            reason: reason::ATTRIBUTE,
            detail: format!(
                "closest matching container-instance {arn} encountered error \"{why}\""
            ),
        }
    }

    /// The instance `arn` already runs a task of `group` (distinctInstance), as the
    /// placer sees it on its view or as the instance's write finds it.
    pub fn distinct_instance(arn: &str, group: &str) -> Self {
        Self::unmet_constraint(
            arn,
            &format!(
                "distinctInstance placement constraint unsatisfied: it already runs a task of \
                 group {group}"
            ),
        )
    }
}

impl From<PlacementFailure> for berth_messages::model::Failure {
    fn from(f: PlacementFailure) -> Self {
        Self {
            arn: f.arn,
            reason: Some(f.reason.to_string()),
            detail: Some(f.detail),
        }
    }
}

/// Where one task goes: an index into the instances given to [`Placer::place`] and what
/// it takes there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub instance_index: usize,
    pub allocation: Allocation,
}

/// The seam for strategies and constraints.
pub trait Placer {
    /// Places `count` tasks of one demand over `instances` (one cluster's view). Each
    /// placement sees the ones before it. Returns one result per task, in order; with no
    /// instances at all every result is a `MISSING` failure.
    fn place(
        &mut self,
        instances: &[ContainerInstance],
        demand: &Demand,
        count: usize,
    ) -> Vec<Result<Placement, PlacementFailure>>;
}

/// The default placer. Among the instances that fit, it picks at random among the `k` with
/// the most remaining memory, `k = max(2, ceil(log2 n))` for `n` instances (Nomad's limit),
/// so concurrent schedulers with the same view rarely pick the same instance. Equal memory
/// is ranked by a scan that starts at a random instance, so ties spread too.
pub struct RandomFitPlacer {
    rng: StdRng,
}

impl RandomFitPlacer {
    pub fn new() -> Self {
        Self {
            rng: StdRng::from_entropy(),
        }
    }

    /// Same seed, same instances, same demands: same placements.
    pub fn with_seed(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
        }
    }
}

impl Default for RandomFitPlacer {
    fn default() -> Self {
        Self::new()
    }
}

impl Placer for RandomFitPlacer {
    fn place(
        &mut self,
        instances: &[ContainerInstance],
        demand: &Demand,
        count: usize,
    ) -> Vec<Result<Placement, PlacementFailure>> {
        if instances.is_empty() {
            return vec![Err(PlacementFailure::no_instances()); count];
        }
        let mut batch = Batch::new(instances);
        let mut results: Vec<Result<Placement, PlacementFailure>> = Vec::with_capacity(count);
        for _ in 0..count {
            // A failure changes nothing, so every later task of the batch fails alike.
            let result = match results.last() {
                Some(Err(failure)) => Err(failure.clone()),
                _ => batch.place_one(&mut self.rng, demand),
            };
            results.push(result);
        }
        results
    }
}

/// Per-instance figures computed once per `place` call and updated as the batch places.
#[derive(Clone, Copy)]
struct Slot {
    eligible: Result<(), Shortfall>,
    cpu: i64,
    memory: i64,
}

/// One `place` call's view: the instances plus what earlier placements of the batch took.
struct Batch<'a> {
    instances: &'a [ContainerInstance],
    slots: Vec<Slot>,
    /// Ports promised to earlier placements, by instance index: (TCP, UDP).
    promised: BTreeMap<usize, (Vec<u16>, Vec<u16>)>,
    /// The best few candidates of the current placement: (memory, scan rank, index).
    best: Vec<(i64, Reverse<usize>, usize)>,
    k: usize,
}

impl<'a> Batch<'a> {
    fn new(instances: &'a [ContainerInstance]) -> Self {
        let slots = instances
            .iter()
            .map(|i| {
                let (cpu, memory) = headroom(i);
                Slot {
                    eligible: eligibility(i),
                    cpu,
                    memory,
                }
            })
            .collect();
        let k = best_few(instances.len());
        Self {
            instances,
            slots,
            promised: BTreeMap::new(),
            best: Vec::with_capacity(k),
            k,
        }
    }

    fn promised(&self, index: usize) -> (&[u16], &[u16]) {
        self.promised
            .get(&index)
            .map_or((&[], &[]), |(tcp, udp)| (tcp.as_slice(), udp.as_slice()))
    }

    fn place_one(
        &mut self,
        rng: &mut StdRng,
        demand: &Demand,
    ) -> Result<Placement, PlacementFailure> {
        let n = self.instances.len();
        let (cpu, memory) = (demand.cpu.max(0), demand.memory.max(0));
        let needs_ports = !demand.ports.is_empty()
            || !demand.ports_udp.is_empty()
            || demand.dynamic_ports > 0
            || demand.dynamic_ports_udp > 0;
        self.best.clear();
        // Closest instance so far while nothing fits: (shortfall, amount, earlier index).
        let mut closest: Option<(Shortfall, i64, Reverse<usize>)> = None;
        let start = rng.gen_range(0..n);
        for (rank, index) in (start..n).chain(0..start).enumerate() {
            let slot = self.slots[index];
            let mut shortfall = match slot.eligible {
                Err(s) => Some(s),
                Ok(()) if slot.cpu < cpu => Some(Shortfall::Cpu),
                Ok(()) if slot.memory < memory => Some(Shortfall::Memory),
                Ok(()) => None,
            };
            if shortfall.is_none() {
                let enters = self.best.len() < self.k
                    || self.best.last().is_some_and(|(m, _, _)| slot.memory > *m);
                if !enters {
                    continue;
                }
                let ports = if needs_ports {
                    let (tcp, udp) = self.promised(index);
                    ports_available(&self.instances[index], tcp, udp, demand)
                } else {
                    Ok(())
                };
                match ports {
                    Ok(()) => {
                        self.insert_best((slot.memory, Reverse(rank), index));
                        continue;
                    }
                    Err(s) => shortfall = Some(s),
                }
            }
            if let (Some(s), true) = (shortfall, self.best.is_empty()) {
                let amount = match s {
                    Shortfall::Cpu => slot.cpu,
                    Shortfall::Memory => slot.memory,
                    _ => 0,
                };
                let candidate = (s, amount, Reverse(index));
                if closest.is_none_or(|c| candidate > c) {
                    closest = Some(candidate);
                }
            }
        }

        while !self.best.is_empty() {
            let pick = rng.gen_range(0..self.best.len());
            let (_, _, index) = self.best.remove(pick);
            match fit_resources(&self.capacity(index), demand) {
                Ok(allocation) => {
                    self.take(index, &allocation);
                    return Ok(Placement {
                        instance_index: index,
                        allocation,
                    });
                }
                // Not expected (the cheap checks agree with fit_resources); treat it as
                // that instance's shortfall and try the next candidate.
                Err(s) => {
                    let candidate = (s, 0, Reverse(index));
                    if closest.is_none_or(|c| candidate > c) {
                        closest = Some(candidate);
                    }
                }
            }
        }
        Err(match closest {
            Some((s, _, Reverse(index))) => PlacementFailure::closest(&self.instances[index], s),
            None => PlacementFailure::no_instances(),
        })
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

    /// The exact capacity of one instance with the batch's earlier placements applied.
    fn capacity(&self, index: usize) -> Capacity {
        let slot = self.slots[index];
        let (tcp, udp) = self.promised(index);
        capacity_with(&self.instances[index], slot.cpu, slot.memory, tcp, udp)
    }

    fn take(&mut self, index: usize, allocation: &Allocation) {
        let slot = &mut self.slots[index];
        slot.cpu = slot.cpu.saturating_sub(allocation.cpu);
        slot.memory = slot.memory.saturating_sub(allocation.memory);
        if !allocation.ports.is_empty() || !allocation.ports_udp.is_empty() {
            let (tcp, udp) = self.promised.entry(index).or_default();
            tcp.extend(&allocation.ports);
            udp.extend(&allocation.ports_udp);
        }
    }
}

/// max(2, ceil(log2 n)).
pub(crate) fn best_few(n: usize) -> usize {
    let log2 = if n <= 1 {
        0
    } else {
        (usize::BITS - (n - 1).leading_zeros()) as usize
    };
    log2.max(2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capacity::reserved_ports;
    use crate::capacity::tests::{instance, instance_with_ports};
    use crate::{allocate, fit, remaining};
    use berth_messages::model::{InstanceStatus, Resource};
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn demand(cpu: i64, memory: i64) -> Demand {
        Demand {
            cpu,
            memory,
            ..Default::default()
        }
    }

    #[test]
    fn best_few_is_nomads_limit() {
        assert_eq!(
            [1, 2, 3, 4, 5, 8, 9, 1000, 10_000].map(best_few),
            [2, 2, 2, 2, 3, 3, 4, 10, 14]
        );
    }

    #[test]
    fn no_instances_is_missing() {
        let r = RandomFitPlacer::with_seed(1).place(&[], &demand(1, 1), 2);
        let failure = PlacementFailure {
            arn: None,
            reason: "MISSING",
            detail: "No Container Instances were found in your cluster.".into(),
        };
        assert_eq!(r, vec![Err(failure.clone()), Err(failure)]);
        assert!(RandomFitPlacer::with_seed(1)
            .place(&[instance("i", 1, 1)], &demand(1, 1), 0)
            .is_empty());
    }

    #[test]
    fn a_batch_sees_its_earlier_placements() {
        let instances = [instance("only", 2048, 1024)];
        let r = RandomFitPlacer::with_seed(7).place(&instances, &demand(256, 512), 3);
        assert_eq!(r.len(), 3);
        for placed in &r[..2] {
            let p = placed.as_ref().unwrap();
            assert_eq!(p.instance_index, 0);
            assert_eq!((p.allocation.cpu, p.allocation.memory), (256, 512));
        }
        let failure = r[2].as_ref().unwrap_err();
        assert_eq!(failure.reason, "RESOURCE:MEMORY");
        assert_eq!(
            failure.detail,
            "closest matching container-instance arn:aws:ecs:r:a:container-instance/c/only \
             has insufficient memory available"
        );
    }

    #[test]
    fn dynamic_ports_of_a_batch_are_distinct() {
        let instances = [instance_with_ports("i", 0, 0, &[49154], &[])];
        let d = Demand {
            ports: vec![8080],
            dynamic_ports: 1,
            ..Default::default()
        };
        let r = RandomFitPlacer::with_seed(3).place(&instances, &d, 2);
        assert_eq!(r[0].as_ref().unwrap().allocation.ports, vec![8080, 49153]);
        let second = r[1].as_ref().unwrap_err();
        assert_eq!(second.reason, "RESOURCE:PORTS");
        assert!(second
            .detail
            .ends_with("is already using a port required by your task"));

        let dynamic_only = Demand {
            dynamic_ports: 2,
            ..Default::default()
        };
        let r = RandomFitPlacer::with_seed(3).place(&instances, &dynamic_only, 2);
        let ports: Vec<_> = r
            .iter()
            .map(|p| p.as_ref().unwrap().allocation.ports.clone())
            .collect();
        assert_eq!(ports, vec![vec![49153, 49155], vec![49156, 49157]]);
    }

    #[test]
    fn draining_and_disconnected_instances_get_nothing() {
        let mut draining = instance("draining", 4096, 4096);
        draining.status = InstanceStatus::Draining;
        let mut lost = instance("lost", 4096, 4096);
        lost.agent_connected = false;
        let instances = [draining, lost, instance("small", 4096, 256)];
        let mut placer = RandomFitPlacer::with_seed(11);
        for _ in 0..20 {
            let r = placer.place(&instances, &demand(128, 128), 2);
            assert_eq!(r[0].as_ref().unwrap().instance_index, 2);
            assert_eq!(r[1].as_ref().unwrap().instance_index, 2);
        }
        let r = placer.place(&instances, &demand(128, 128), 3);
        let failure = r[2].as_ref().unwrap_err();
        assert_eq!(failure.reason, "RESOURCE:MEMORY");
        assert!(failure.detail.contains("/small "));

        let r = placer.place(&instances[..2], &demand(1, 1), 1);
        let failure = r[0].as_ref().unwrap_err();
        assert_eq!(failure.reason, "AGENT");
        assert!(failure.detail.contains("/lost encountered error \"AGENT\""));
        let r = placer.place(&instances[..1], &demand(1, 1), 1);
        assert_eq!(
            r[0].as_ref().unwrap_err().detail,
            "closest matching container-instance arn:aws:ecs:r:a:container-instance/c/draining \
             has status DRAINING"
        );
    }

    #[test]
    fn failure_names_the_closest_instance() {
        let mut busy_port = instance("ports", 4096, 4096);
        allocate(
            &mut busy_port,
            "t",
            Allocation {
                ports: vec![80],
                ..Default::default()
            },
        );
        let instances = [
            instance("cpu", 100, 4096),
            busy_port,
            instance("memory", 4096, 100),
        ];
        let d = Demand {
            ports: vec![80],
            ..demand(512, 512)
        };
        let r = RandomFitPlacer::with_seed(5).place(&instances, &d, 1);
        let failure = r[0].as_ref().unwrap_err();
        assert_eq!(failure.reason, "RESOURCE:PORTS");
        assert!(failure.detail.contains("/ports "));

        let r = RandomFitPlacer::with_seed(5).place(
            &[instances[0].clone(), instances[2].clone()],
            &d,
            1,
        );
        assert_eq!(r[0].as_ref().unwrap_err().reason, "RESOURCE:MEMORY");

        // Among instances lacking the same thing, the one with the most of it is closest.
        let lacking = [
            instance("a", 100, 0),
            instance("b", 300, 0),
            instance("c", 200, 0),
        ];
        let r = RandomFitPlacer::with_seed(5).place(&lacking, &d, 1);
        let failure = r[0].as_ref().unwrap_err();
        assert_eq!(failure.reason, "RESOURCE:CPU");
        assert!(failure
            .detail
            .contains("/b has insufficient CPU units available"));
    }

    #[test]
    fn picks_among_the_best_few_by_memory() {
        // 8 instances: k = 3, so only the three with the most memory are ever picked.
        let instances: Vec<_> = (0..8)
            .map(|i| instance(&i.to_string(), 4096, 1000 + i * 100))
            .collect();
        let mut placer = RandomFitPlacer::with_seed(42);
        let mut picked = BTreeSet::new();
        for _ in 0..200 {
            let r = placer.place(&instances, &demand(1, 1), 1);
            picked.insert(r[0].as_ref().unwrap().instance_index);
        }
        assert_eq!(picked, BTreeSet::from([5, 6, 7]));
    }

    #[test]
    fn equal_instances_spread_and_seeds_repeat() {
        let instances: Vec<_> = (0..16)
            .map(|i| instance(&i.to_string(), 4096, 4096))
            .collect();
        let run = |seed| {
            let mut placer = RandomFitPlacer::with_seed(seed);
            (0..50)
                .map(|_| {
                    placer.place(&instances, &demand(1, 1), 1)[0]
                        .as_ref()
                        .unwrap()
                        .instance_index
                })
                .collect::<Vec<_>>()
        };
        let a = run(9);
        assert_eq!(a, run(9));
        assert!(a.iter().collect::<BTreeSet<_>>().len() > 4, "{a:?}");
    }

    fn arb_instance() -> impl Strategy<Value = ContainerInstance> {
        (
            0i64..4096,
            0i64..4096,
            proptest::collection::vec(49150u16..49170, 0..6),
            proptest::collection::vec(prop_oneof![Just(80u16), Just(53), 49150u16..49170], 0..4),
            0u8..10,
            proptest::collection::vec((0i64..1024, 0i64..1024, 0usize..3), 0..4),
        )
            .prop_map(|(cpu, memory, tcp, udp, state, existing)| {
                let mut i = instance_with_ports("i", cpu, memory, &tcp, &udp);
                i.status = if state == 0 {
                    InstanceStatus::Draining
                } else {
                    InstanceStatus::Active
                };
                i.agent_connected = state != 1;
                // Earlier tasks, placed with fit so the record starts consistent.
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
                i
            })
    }

    fn arb_demand() -> impl Strategy<Value = Demand> {
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

    fn registered(i: &ContainerInstance, name: &str) -> i64 {
        i.registered_resources
            .iter()
            .find(|r| r.name == name)
            .and_then(Resource::number)
            .unwrap_or(0)
    }

    proptest! {
        #[test]
        fn placer_never_overcommits(
            mut instances in proptest::collection::vec(arb_instance(), 0..6),
            demand in arb_demand(),
            count in 1usize..8,
            seed in any::<u64>(),
        ) {
            for (n, i) in instances.iter_mut().enumerate() {
                i.container_instance_arn = format!("arn:aws:ecs:r:a:container-instance/c/{n}");
            }
            let results = RandomFitPlacer::with_seed(seed).place(&instances, &demand, count);
            prop_assert_eq!(results.len(), count);
            for (t, result) in results.into_iter().enumerate() {
                match result {
                    Ok(p) => {
                        let i = &mut instances[p.instance_index];
                        // The placer proposes exactly what fit would on the updated record.
                        prop_assert_eq!(fit(i, &demand), Ok(p.allocation.clone()));
                        allocate(i, &format!("t{t}"), p.allocation);
                    }
                    Err(f) => {
                        if instances.is_empty() {
                            prop_assert_eq!(f.reason, "MISSING");
                            continue;
                        }
                        let mut closest = None;
                        for i in &instances {
                            let shortfall = fit(i, &demand);
                            prop_assert!(shortfall.is_err(), "failed while {} fits", i.container_instance_arn);
                            closest = closest.max(shortfall.err());
                        }
                        prop_assert_eq!(Some(f.reason), closest.map(Shortfall::reason), "{}", f.detail);
                    }
                }
            }
            for i in &instances {
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
                if i.status != InstanceStatus::Active || !i.agent_connected {
                    prop_assert!(i.allocations.keys().all(|k| k.starts_with("old")));
                }
            }
        }
    }
}

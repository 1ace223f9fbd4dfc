//! The scheduler's picture of the shared pool and its choice of an instance. Each
//! container instance is its latest journal record plus the placements this scheduler
//! made that the record does not show yet (tentative while the StartTask is in flight,
//! confirmed once it answered). The choice is a best fit, Hailo-style packing: among the
//! ACTIVE instances with a connected agent that fit the demand, the one left with the
//! least memory (then CPU) after the placement, so the pool fills instance by instance
//! and large holes stay free for large tasks.
//!
//! The pool only proposes: the control plane's conditional write of the instance record
//! decides. An instance whose StartTask was refused is left alone until a newer record
//! of it arrives (or a short while passes), so the retry goes elsewhere.

use berth_messages::model::{reason, Allocation, ContainerInstance, InstanceStatus};
use berth_placement::{fit_resources, remaining, Capacity, Demand, Shortfall};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long a refused instance is avoided when no newer record of it arrives.
pub const REFUSAL_COOLDOWN: Duration = Duration::from_secs(2);

/// Where one task goes: the instance and the reservation held for it there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub instance_id: String,
    pub instance_arn: String,
    pub reservation: u64,
}

/// Why nothing fits now: an ECS reason and a sentence naming the closest instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unplaced {
    pub reason: &'static str,
    pub detail: String,
}

#[derive(Debug, Clone)]
struct Reservation {
    allocation: Allocation,
    /// (task id, journal sequence of the task record) once the StartTask answered.
    confirmed: Option<(String, u64)>,
}

#[derive(Debug, Clone)]
struct Slot {
    record: ContainerInstance,
    version: u64,
    reservations: BTreeMap<u64, Reservation>,
    effective: Capacity,
    /// Refused at this record version; avoided until a newer one or the instant.
    refused: Option<(u64, Instant)>,
}

impl Slot {
    fn recompute(&mut self) {
        let mut capacity = remaining(&self.record);
        for r in self.reservations.values() {
            capacity.cpu = capacity.cpu.saturating_sub(r.allocation.cpu);
            capacity.memory = capacity.memory.saturating_sub(r.allocation.memory);
            capacity.ports.extend(&r.allocation.ports);
            capacity.ports_udp.extend(&r.allocation.ports_udp);
        }
        self.effective = capacity;
    }

    fn eligibility(&self) -> Result<(), Shortfall> {
        if self.record.status != InstanceStatus::Active {
            Err(Shortfall::Inactive)
        } else if !self.record.agent_connected {
            Err(Shortfall::Agent)
        } else {
            Ok(())
        }
    }

    fn is_refused(&self, now: Instant) -> bool {
        self.refused
            .is_some_and(|(version, until)| self.version <= version && now < until)
    }
}

/// The cluster's container instances as this scheduler sees them.
#[derive(Debug)]
pub struct Pool {
    slots: BTreeMap<String, Slot>,
    next_reservation: u64,
    /// How many of the best fits a choice picks among at random (1: always the best).
    candidates: usize,
    rng: StdRng,
}

impl Default for Pool {
    fn default() -> Self {
        Self::new(1, 0)
    }
}

impl Pool {
    /// A pool choosing at random among the `candidates` best fits (at least 1). With
    /// several schedulers on one pool, 2 or 3 makes them collide far less often at a
    /// small cost in packing.
    pub fn new(candidates: usize, seed: u64) -> Self {
        Self {
            slots: BTreeMap::new(),
            next_reservation: 0,
            candidates: candidates.max(1),
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Applies a journal record of an instance (`version`: its stream sequence). Drops the
    /// confirmed reservations it reflects: the record holds the task's allocation, or it
    /// is newer than the task record (the task came and went already).
    pub fn apply(&mut self, instance_id: &str, record: ContainerInstance, version: u64) {
        match self.slots.get_mut(instance_id) {
            Some(slot) if slot.version >= version => {}
            Some(slot) => {
                slot.reservations.retain(|_, r| match &r.confirmed {
                    Some((task_id, task_version)) => {
                        !record.allocations.contains_key(task_id) && version < *task_version
                    }
                    None => true,
                });
                slot.record = record;
                slot.version = version;
                slot.recompute();
            }
            None => {
                let mut slot = Slot {
                    record,
                    version,
                    reservations: BTreeMap::new(),
                    effective: Capacity::default(),
                    refused: None,
                };
                slot.recompute();
                self.slots.insert(instance_id.to_string(), slot);
            }
        }
    }

    /// Chooses the best-fitting instance for `demand` (or one of the few best) and
    /// reserves it there (tentatively).
    pub fn choose(&mut self, demand: &Demand, now: Instant) -> Result<Choice, Unplaced> {
        // The best fits so far, best first: ((memory left, CPU left), id, allocation).
        let mut best: Vec<((i64, i64), &String, Allocation)> = Vec::new();
        let mut closest: Option<(Shortfall, &String)> = None;
        let mut refused = 0usize;
        for (id, slot) in &self.slots {
            if slot.is_refused(now) {
                refused += 1;
                continue;
            }
            match slot
                .eligibility()
                .and_then(|()| fit_resources(&slot.effective, demand))
            {
                Ok(allocation) => {
                    let left = (
                        slot.effective.memory - allocation.memory,
                        slot.effective.cpu - allocation.cpu,
                    );
                    let at = best.partition_point(|(score, _, _)| *score <= left);
                    if at < self.candidates {
                        best.insert(at, (left, id, allocation));
                        best.truncate(self.candidates);
                    }
                }
                Err(shortfall) => {
                    if closest.is_none_or(|(s, _)| shortfall > s) {
                        closest = Some((shortfall, id));
                    }
                }
            }
        }
        if !best.is_empty() {
            let pick = if best.len() > 1 {
                self.rng.gen_range(0..best.len())
            } else {
                0
            };
            let (_, id, allocation) = best.swap_remove(pick);
            let id = id.clone();
            self.next_reservation += 1;
            let reservation = self.next_reservation;
            let Some(slot) = self.slots.get_mut(&id) else {
                return Err(Unplaced {
                    reason: reason::MISSING,
                    detail: "the chosen instance vanished".into(),
                });
            };
            slot.reservations.insert(
                reservation,
                Reservation {
                    allocation,
                    confirmed: None,
                },
            );
            slot.recompute();
            return Ok(Choice {
                instance_arn: slot.record.container_instance_arn.clone(),
                instance_id: id,
                reservation,
            });
        }
        Err(match closest {
            Some((shortfall, id)) => Unplaced {
                reason: shortfall.reason(),
                detail: closest_detail(&self.slots[id].record, shortfall),
            },
            None if refused > 0 => Unplaced {
                reason: crate::jobs::reason::CONFLICT,
                detail: format!(
                    "{refused} instance(s) refused a placement and are being refreshed"
                ),
            },
            None => Unplaced {
                reason: reason::MISSING,
                detail: "No Container Instances were found in your cluster.".into(),
            },
        })
    }

    /// The StartTask placed task `task_id` (record version `task_version`) on the
    /// reservation; `allocation` is what the task holds, when the reply says.
    pub fn confirm(
        &mut self,
        instance_id: &str,
        reservation: u64,
        task_id: &str,
        task_version: u64,
        allocation: Option<Allocation>,
    ) {
        let Some(slot) = self.slots.get_mut(instance_id) else {
            return;
        };
        if slot.record.allocations.contains_key(task_id) || slot.version > task_version {
            slot.reservations.remove(&reservation);
        } else if let Some(r) = slot.reservations.get_mut(&reservation) {
            r.confirmed = Some((task_id.to_string(), task_version));
            if let Some(a) = allocation {
                r.allocation = a;
            }
        }
        slot.recompute();
    }

    /// Gives a reservation up (the StartTask failed or was not answered).
    pub fn cancel(&mut self, instance_id: &str, reservation: u64) {
        if let Some(slot) = self.slots.get_mut(instance_id) {
            if slot.reservations.remove(&reservation).is_some() {
                slot.recompute();
            }
        }
    }

    /// The control plane refused a placement on the instance: our record of it is stale.
    pub fn refuse(&mut self, instance_id: &str, now: Instant) {
        if let Some(slot) = self.slots.get_mut(instance_id) {
            slot.refused = Some((slot.version, now + REFUSAL_COOLDOWN));
        }
    }

    /// Instances known.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Reservations not yet reflected by the journal.
    pub fn reservations(&self) -> usize {
        self.slots.values().map(|s| s.reservations.len()).sum()
    }

    /// What the pool has left on an instance, reservations included.
    pub fn effective(&self, instance_id: &str) -> Option<&Capacity> {
        self.slots.get(instance_id).map(|s| &s.effective)
    }
}

fn closest_detail(instance: &ContainerInstance, shortfall: Shortfall) -> String {
    let arn = &instance.container_instance_arn;
    let what = match shortfall {
        Shortfall::Inactive => format!("has status {}", instance.status.as_str()),
        Shortfall::Agent => "has no connected agent".to_string(),
        Shortfall::Cpu => "has insufficient CPU units available".to_string(),
        Shortfall::Memory => "has insufficient memory available".to_string(),
        Shortfall::Ports => "is already using a port required by your task".to_string(),
        Shortfall::PortsUdp => "is already using a UDP port required by your task".to_string(),
    };
    format!("closest matching container-instance {arn} {what}")
}

/// Whether `a` needs at least everything `b` needs, so that `a` cannot fit where `b` did
/// not. Lets a scheduling pass skip jobs that are certain not to fit.
pub fn dominates(a: &Demand, b: &Demand) -> bool {
    a.cpu >= b.cpu
        && a.memory >= b.memory
        && a.dynamic_ports >= b.dynamic_ports
        && a.dynamic_ports_udp >= b.dynamic_ports_udp
        && b.ports.iter().all(|p| a.ports.contains(p))
        && b.ports_udp.iter().all(|p| a.ports_udp.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_messages::model::Resource;

    fn instance(id: &str, cpu: i64, memory: i64) -> ContainerInstance {
        ContainerInstance {
            container_instance_arn: format!("arn:aws:ecs:r:a:container-instance/c/{id}"),
            registered_resources: vec![
                Resource::integer(Resource::CPU, cpu),
                Resource::integer(Resource::MEMORY, memory),
            ],
            status: InstanceStatus::Active,
            agent_connected: true,
            ..Default::default()
        }
    }

    fn demand(cpu: i64, memory: i64) -> Demand {
        Demand {
            cpu,
            memory,
            ..Default::default()
        }
    }

    fn holding(mut record: ContainerInstance, task_id: &str, memory: i64) -> ContainerInstance {
        record.allocations.insert(
            task_id.into(),
            Allocation {
                cpu: 0,
                memory,
                ..Default::default()
            },
        );
        record
    }

    #[test]
    fn best_fit_fills_the_fullest_instance_that_fits() {
        let now = Instant::now();
        let mut pool = Pool::default();
        pool.apply("big", instance("big", 4096, 4096), 1);
        pool.apply("mid", holding(instance("mid", 4096, 2048), "t0", 1024), 2);
        pool.apply("small", instance("small", 4096, 512), 3);
        // 1024 MiB fits big (4096 free) and mid (1024 free), not small: mid is fuller.
        let c = pool.choose(&demand(10, 1024), now).unwrap();
        assert_eq!(c.instance_id, "mid");
        assert!(c.instance_arn.ends_with("/mid"));
        // Its reservation counts: mid is now full, so the next one goes to big.
        assert_eq!(pool.effective("mid").unwrap().memory, 0);
        assert_eq!(
            pool.choose(&demand(10, 1024), now).unwrap().instance_id,
            "big"
        );
        // A small task packs into the small instance rather than opening big further.
        assert_eq!(
            pool.choose(&demand(10, 256), now).unwrap().instance_id,
            "small"
        );
    }

    #[test]
    fn ties_on_memory_break_on_cpu_then_id() {
        let now = Instant::now();
        let mut pool = Pool::default();
        pool.apply("b", instance("b", 1024, 1024), 1);
        pool.apply("a", instance("a", 2048, 1024), 2);
        pool.apply("c", instance("c", 1024, 1024), 3);
        assert_eq!(
            pool.choose(&demand(512, 512), now).unwrap().instance_id,
            "b"
        );
    }

    #[test]
    fn ineligible_instances_take_nothing_and_explain_the_closest() {
        let now = Instant::now();
        let mut pool = Pool::default();
        assert_eq!(
            pool.choose(&demand(1, 1), now).unwrap_err().reason,
            reason::MISSING
        );
        let mut draining = instance("d", 4096, 4096);
        draining.status = InstanceStatus::Draining;
        let mut lost = instance("l", 4096, 4096);
        lost.agent_connected = false;
        pool.apply("d", draining, 1);
        pool.apply("l", lost, 2);
        pool.apply("s", instance("s", 4096, 128), 3);
        let u = pool.choose(&demand(10, 256), now).unwrap_err();
        assert_eq!(u.reason, reason::RESOURCE_MEMORY);
        assert!(
            u.detail.contains("/s has insufficient memory"),
            "{}",
            u.detail
        );
        let u = pool.choose(&demand(8192, 64), now).unwrap_err();
        assert_eq!(u.reason, reason::RESOURCE_CPU);
    }

    #[test]
    fn reservations_last_until_the_journal_shows_them() {
        let now = Instant::now();
        let mut pool = Pool::default();
        pool.apply("i", instance("i", 1024, 1024), 10);
        let a = pool.choose(&demand(0, 512), now).unwrap();
        let b = pool.choose(&demand(0, 512), now).unwrap();
        assert!(pool.choose(&demand(0, 512), now).is_err());
        // b failed: its memory is free again.
        pool.cancel("i", b.reservation);
        assert_eq!(pool.effective("i").unwrap().memory, 512);
        // a started as task t1 (task record at 12); an older record does not free it.
        pool.confirm("i", a.reservation, "t1", 12, None);
        pool.apply("i", instance("i", 1024, 1024), 9);
        assert_eq!(pool.effective("i").unwrap().memory, 512);
        // The record written for t1 (sequence 11) holds it: counted once, not twice.
        pool.apply("i", holding(instance("i", 1024, 1024), "t1", 512), 11);
        assert_eq!(pool.reservations(), 0);
        assert_eq!(pool.effective("i").unwrap().memory, 512);
    }

    #[test]
    fn a_record_newer_than_the_task_releases_a_confirmed_reservation() {
        let now = Instant::now();
        let mut pool = Pool::default();
        pool.apply("i", instance("i", 1024, 1024), 1);
        let a = pool.choose(&demand(0, 512), now).unwrap();
        pool.confirm("i", a.reservation, "t1", 5, None);
        // Record 4 (before the task record) without t1: still reserved.
        pool.apply("i", instance("i", 1024, 1024), 4);
        assert_eq!(pool.reservations(), 1);
        // Record 7 without t1: the task already stopped and released.
        pool.apply("i", instance("i", 1024, 1024), 7);
        assert_eq!(pool.reservations(), 0);
        assert_eq!(pool.effective("i").unwrap().memory, 1024);
    }

    #[test]
    fn a_refused_instance_is_avoided_until_refreshed() {
        let now = Instant::now();
        let mut pool = Pool::default();
        pool.apply("full", instance("full", 1024, 600), 1);
        pool.apply("roomy", instance("roomy", 1024, 4096), 2);
        let c = pool.choose(&demand(0, 512), now).unwrap();
        assert_eq!(c.instance_id, "full");
        // Another scheduler took it: refused, so the retry goes to roomy.
        pool.cancel("full", c.reservation);
        pool.refuse("full", now);
        let r = pool.choose(&demand(0, 512), now).unwrap();
        assert_eq!(r.instance_id, "roomy");
        pool.cancel("roomy", r.reservation);
        // A newer record of full (still with room, say the other task stopped) lifts it.
        pool.apply("full", instance("full", 1024, 600), 3);
        assert_eq!(
            pool.choose(&demand(0, 512), now).unwrap().instance_id,
            "full"
        );
        // Without a newer record the refusal lapses after the cooldown.
        let mut pool = Pool::default();
        pool.apply("only", instance("only", 1024, 1024), 1);
        pool.refuse("only", now);
        let u = pool.choose(&demand(0, 512), now).unwrap_err();
        assert_eq!(u.reason, crate::jobs::reason::CONFLICT);
        assert!(pool.choose(&demand(0, 512), now + REFUSAL_COOLDOWN).is_ok());
    }

    #[test]
    fn with_candidates_it_picks_among_the_few_best_only() {
        let now = Instant::now();
        let mut pool = Pool::new(2, 7);
        pool.apply("a", instance("a", 4096, 1024), 1);
        pool.apply("b", instance("b", 4096, 2048), 2);
        pool.apply("c", instance("c", 4096, 4096), 3);
        let mut picked = BTreeMap::new();
        for _ in 0..200 {
            let c = pool.choose(&demand(0, 1), now).unwrap();
            pool.cancel(&c.instance_id, c.reservation);
            *picked.entry(c.instance_id).or_insert(0) += 1;
        }
        // The two fullest that fit, both of them, never the emptiest.
        assert_eq!(picked.keys().collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn dominance_is_componentwise() {
        let small = Demand {
            cpu: 10,
            memory: 256,
            ports: vec![80],
            ..Default::default()
        };
        let big = Demand {
            cpu: 20,
            memory: 512,
            ports: vec![80, 443],
            dynamic_ports: 1,
            ..Default::default()
        };
        assert!(dominates(&big, &small));
        assert!(!dominates(&small, &big));
        assert!(dominates(&small, &small));
        let other_port = Demand {
            ports: vec![8080],
            ..big.clone()
        };
        assert!(!dominates(&other_port, &small));
    }
}

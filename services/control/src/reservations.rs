//! Resources this replica has promised to placements whose instance writes are still in
//! flight. The view shows an allocation only once its write is applied; until then the
//! placer counts these as taken, so concurrent RunTasks that score alike (binpack) do not
//! all pick the same instance and get refused at commit, and a RunTask without strategy
//! knows which instances are being written so that it can join their group commit
//! (`berth_placement::JOIN_IN_FLIGHT`). Best effort: the conditional instance write stays
//! the decision.

use berth_placement::Promise;
use dashmap::DashMap;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Promised (CPU, memory, tasks) per cluster and instance, by the instance's slot in the
/// cluster's placement pool (slots are stable for the life of the view).
#[derive(Default)]
pub struct Reservations {
    by_cluster: DashMap<String, HashMap<usize, (i64, i64, u32)>>,
    decisions: DashMap<String, Arc<Mutex<()>>>,
}

impl Reservations {
    /// The lock a placement decision in `cluster` holds from reading the promises to
    /// making its own, so that concurrent RunTasks of this replica never decide on the
    /// same promises (without it, at 1,024 RunTasks in flight with binpack, thousands of
    /// tasks failed after four rounds of refusals although the cluster had room).
    pub fn decisions(&self, cluster: &str) -> Arc<Mutex<()>> {
        match self.decisions.get(cluster) {
            Some(lock) => lock.clone(),
            None => self
                .decisions
                .entry(cluster.to_string())
                .or_default()
                .clone(),
        }
    }

    /// Promises resources of an instance to one task until the returned guard is dropped.
    pub fn reserve(
        self: &Arc<Self>,
        cluster: &str,
        slot: usize,
        cpu: i64,
        memory: i64,
    ) -> Reservation {
        self.change(cluster, slot, cpu, memory, 1);
        Reservation {
            reservations: self.clone(),
            cluster: cluster.to_string(),
            slot,
            cpu,
            memory,
        }
    }

    /// What is promised in a cluster.
    pub fn of(&self, cluster: &str) -> Vec<Promise> {
        self.by_cluster.get(cluster).map_or_else(Vec::new, |held| {
            held.iter()
                .map(|(slot, (cpu, memory, tasks))| Promise {
                    slot: *slot,
                    cpu: *cpu,
                    memory: *memory,
                    tasks: *tasks,
                })
                .collect()
        })
    }

    fn change(&self, cluster: &str, slot: usize, cpu: i64, memory: i64, tasks: i32) {
        let mut held = match self.by_cluster.get_mut(cluster) {
            Some(held) => held,
            None => self.by_cluster.entry(cluster.to_string()).or_default(),
        };
        let entry = held.entry(slot).or_insert((0, 0, 0));
        entry.0 += cpu;
        entry.1 += memory;
        entry.2 = entry.2.saturating_add_signed(tasks);
        if entry.2 == 0 {
            held.remove(&slot);
        }
    }
}

/// A promise; released when dropped (once the placement is written, or refused).
pub struct Reservation {
    reservations: Arc<Reservations>,
    cluster: String,
    slot: usize,
    cpu: i64,
    memory: i64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.reservations
            .change(&self.cluster, self.slot, -self.cpu, -self.memory, -1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promises_add_up_and_end_with_their_guards() {
        let reservations = Arc::new(Reservations::default());
        let promise = |cpu, memory, tasks| Promise {
            slot: 7,
            cpu,
            memory,
            tasks,
        };
        let a = reservations.reserve("c", 7, 16, 32);
        let b = reservations.reserve("c", 7, 16, 32);
        assert_eq!(reservations.of("c"), [promise(32, 64, 2)]);
        assert!(reservations.of("other").is_empty());
        drop(a);
        assert_eq!(reservations.of("c"), [promise(16, 32, 1)]);
        drop(b);
        assert!(reservations.of("c").is_empty());
        // A task that needs nothing still counts while its write is under way.
        let free = reservations.reserve("c", 7, 0, 0);
        assert_eq!(reservations.of("c"), [promise(0, 0, 1)]);
        drop(free);
        assert!(reservations.of("c").is_empty());
    }
}

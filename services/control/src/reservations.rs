//! Resources this replica has promised to placements whose instance writes are still in
//! flight. The view shows an allocation only once its write is applied; until then the
//! placer counts these as taken, so concurrent RunTasks that score alike (binpack) do not
//! all pick the same instance and get refused at commit. Best effort: the conditional
//! instance write stays the decision.

use dashmap::DashMap;
use std::collections::HashMap;
use std::sync::Arc;

/// Promised (CPU, memory) per cluster and instance, by the instance's slot in the
/// cluster's placement pool (slots are stable for the life of the view).
#[derive(Default)]
pub struct Reservations {
    by_cluster: DashMap<String, HashMap<usize, (i64, i64)>>,
}

impl Reservations {
    /// Promises resources of an instance until the returned guard is dropped.
    pub fn reserve(
        self: &Arc<Self>,
        cluster: &str,
        slot: usize,
        cpu: i64,
        memory: i64,
    ) -> Reservation {
        self.change(cluster, slot, cpu, memory);
        Reservation {
            reservations: self.clone(),
            cluster: cluster.to_string(),
            slot,
            cpu,
            memory,
        }
    }

    /// What is promised in a cluster: (slot, CPU, memory).
    pub fn of(&self, cluster: &str) -> Vec<(usize, i64, i64)> {
        self.by_cluster.get(cluster).map_or_else(Vec::new, |held| {
            held.iter()
                .map(|(slot, (cpu, memory))| (*slot, *cpu, *memory))
                .collect()
        })
    }

    fn change(&self, cluster: &str, slot: usize, cpu: i64, memory: i64) {
        let mut held = match self.by_cluster.get_mut(cluster) {
            Some(held) => held,
            None => self.by_cluster.entry(cluster.to_string()).or_default(),
        };
        let entry = held.entry(slot).or_insert((0, 0));
        entry.0 += cpu;
        entry.1 += memory;
        if entry.0 <= 0 && entry.1 <= 0 {
            held.remove(&slot);
        }
    }
}

/// A promise; released when dropped (once the placement is written and shown by the
/// view, or refused).
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
            .change(&self.cluster, self.slot, -self.cpu, -self.memory);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promises_add_up_and_end_with_their_guards() {
        let reservations = Arc::new(Reservations::default());
        let a = reservations.reserve("c", 7, 16, 32);
        let b = reservations.reserve("c", 7, 16, 32);
        assert_eq!(reservations.of("c"), [(7, 32, 64)]);
        assert!(reservations.of("other").is_empty());
        drop(a);
        assert_eq!(reservations.of("c"), [(7, 16, 32)]);
        drop(b);
        assert!(reservations.of("c").is_empty());
    }
}

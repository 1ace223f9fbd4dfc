//! The jobs a scheduler holds, in the order it serves them: higher priority first, then
//! arrival (the job's stream sequence). Also finds a job by id, so a redelivered message
//! of a job already held is recognised.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};

/// Serving order of a job: priority descending, then stream sequence ascending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobKey {
    priority: Reverse<u8>,
    sequence: u64,
}

impl JobKey {
    pub fn new(priority: u8, sequence: u64) -> Self {
        Self {
            priority: Reverse(priority),
            sequence,
        }
    }

    pub fn priority(&self) -> u8 {
        self.priority.0
    }
}

/// Held jobs by serving order, with an index by job id.
#[derive(Debug)]
pub struct JobQueue<T> {
    jobs: BTreeMap<JobKey, T>,
    by_id: HashMap<String, JobKey>,
}

impl<T> Default for JobQueue<T> {
    fn default() -> Self {
        Self {
            jobs: BTreeMap::new(),
            by_id: HashMap::new(),
        }
    }
}

impl<T> JobQueue<T> {
    /// Adds a job; `false` (and nothing changes) when a job with this id is held.
    pub fn insert(&mut self, id: &str, key: JobKey, job: T) -> bool {
        if self.by_id.contains_key(id) {
            return false;
        }
        self.by_id.insert(id.to_string(), key);
        self.jobs.insert(key, job);
        true
    }

    pub fn contains_id(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    pub fn get_mut(&mut self, key: &JobKey) -> Option<&mut T> {
        self.jobs.get_mut(key)
    }

    pub fn get_mut_by_id(&mut self, id: &str) -> Option<&mut T> {
        let key = self.by_id.get(id)?;
        self.jobs.get_mut(key)
    }

    pub fn remove(&mut self, id: &str) -> Option<T> {
        let key = self.by_id.remove(id)?;
        self.jobs.remove(&key)
    }

    /// Keys in serving order (a snapshot, so the caller may change jobs while it walks).
    pub fn keys(&self) -> Vec<JobKey> {
        self.jobs.keys().copied().collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&JobKey, &T)> {
        self.jobs.iter()
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.jobs.values_mut()
    }

    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Removes and returns every job (shutdown).
    pub fn drain(&mut self) -> Vec<T> {
        self.by_id.clear();
        std::mem::take(&mut self.jobs).into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_higher_priority_first_then_arrival() {
        let mut q = JobQueue::default();
        // (id, priority, stream sequence) in arrival order: low priorities arrive first.
        for (id, priority, seq) in [
            ("a", 1, 1),
            ("b", 9, 5),
            ("c", 5, 2),
            ("d", 9, 3),
            ("e", 0, 4),
            ("f", 5, 6),
        ] {
            assert!(q.insert(id, JobKey::new(priority, seq), id));
        }
        let order: Vec<&str> = q.iter().map(|(_, id)| *id).collect();
        assert_eq!(order, ["d", "b", "c", "f", "a", "e"]);
        let priorities: Vec<u8> = q.keys().iter().map(JobKey::priority).collect();
        assert_eq!(priorities, [9, 9, 5, 5, 1, 0]);
    }

    #[test]
    fn a_held_id_is_not_held_twice() {
        let mut q = JobQueue::default();
        assert!(q.insert("a", JobKey::new(3, 1), 1));
        assert!(!q.insert("a", JobKey::new(3, 7), 2));
        assert_eq!(q.len(), 1);
        assert!(q.contains_id("a"));
        assert_eq!(q.remove("a"), Some(1));
        assert!(q.is_empty());
        assert!(q.insert("a", JobKey::new(3, 7), 3));
        assert_eq!(q.drain(), vec![3]);
        assert!(!q.contains_id("a"));
    }
}

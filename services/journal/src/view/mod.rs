//! The in-memory view of the whole Berth state that every `berth-control` replica keeps.
//! It catches up on `BERTH_STATE` with a consumer of the last record per subject that
//! pulls thousands of messages at a time, then follows live changes with a live
//! consumer (short pulls, recreated by the view itself) from the last applied sequence, and indexes clusters, instances, tasks and
//! task definitions so that point reads are O(log n), counters are kept incrementally and
//! paging never sorts a whole cluster. A record's version is its stream sequence.
//!
//! One task applies records, in batches of whatever the consumer has ready; readers take
//! short read locks and get cloned `Arc`s back. Long scans (filtered task and
//! task-definition pages) release their lock every few thousand entries so that they
//! never hold up the apply loop for long.
//!
//! Tasks are the bulk of the state (millions), so the view keeps each one lean: its record
//! in the compact form of [`crate::compact`] (decoded on read), keyed by a 16-byte id,
//! with the fields its indexes need as per-cluster symbols. During catch-up only point
//! lookups and counters are kept; the ordered task sets (per instance, family, group...)
//! are bulk-built once, just before the view reports itself ready. The view also keeps the
//! allocations that instance records still hold for STOPPED tasks, so that reconciliation
//! never walks every allocation.
//!
//! This module owns the [`View`] handle, its shared state (`Inner`), readiness and progress,
//! and the point reads of clusters and instances. The rest lives in:
//! - `consumer`: the consumers on `BERTH_STATE` and the apply loop that feeds them in;
//! - `apply`: applying journal records to the state (clusters, instances, the dispatch of
//!   task and task-definition records);
//! - `task`: task records in compact form, made on apply and decoded on read;
//! - `scope`: each cluster's tasks, instances, indexes, counters and stale allocations;
//! - `paging`: listings by resume key and filtered, chunked task scans;
//! - `definitions`: task definitions and families, their reads and listings;
//! - `pool`: what the cluster's placement pool sees of instances and tasks;
//! - `services`: service records, the tasks of each deployment, and the changes the
//!   service scheduler waits on.

mod apply;
mod consumer;
mod definitions;
mod paging;
mod pool;
mod scope;
mod services;
mod task;
#[cfg(test)]
mod testing;

pub use definitions::FamilyStatusFilter;
pub use paging::{ExpiredTask, Page, TaskFilter};
pub use pool::PlacementEntry;
pub use scope::{ClusterCounts, StaleAllocation};
pub use services::{DeploymentTask, ServiceChanges};
pub use task::Health;
pub use task::TaskEntry;

use crate::compact::Interner;
use crate::landing::{Landing, Landings};
use crate::Versioned;
use berth_messages::model::{Cluster, ContainerInstance};
use definitions::FamilyEntry;
use scope::Scope;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;
use tokio::sync::watch;

/// Shared handle on the view; clones are cheap. The apply task stops when the last
/// clone is dropped.
#[derive(Clone)]
pub struct View {
    inner: Arc<Inner>,
    _apply: Option<Arc<AbortOnDrop>>,
}

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let progress = *self.inner.progress.borrow();
        f.debug_struct("View")
            .field("applied", &progress.applied)
            .field("ready", &progress.ready)
            .finish_non_exhaustive()
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Progress {
    applied: u64,
    ready: bool,
}

#[derive(Default)]
struct Inner {
    progress: watch::Sender<Progress>,
    /// Strings shared by the compact task records.
    interner: Interner,
    clusters: RwLock<BTreeMap<String, Arc<Versioned<Cluster>>>>,
    scopes: RwLock<HashMap<String, Arc<Scope>>>,
    families: RwLock<BTreeMap<String, FamilyEntry>>,
    instances_len: AtomicUsize,
    tasks_len: AtomicUsize,
    /// Instance records this replica wrote, by sequence, until the apply loop reaches
    /// them: it takes the record instead of decoding the message.
    written_instances: Mutex<BTreeMap<u64, Arc<Versioned<ContainerInstance>>>>,
    landings: Arc<Landings>,
    services: services::ServiceState,
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

impl Inner {
    fn applied(&self) -> u64 {
        self.progress.borrow().applied
    }

    /// Records that `sequence` was applied (or skipped) and whether catch-up is complete.
    fn advance(&self, sequence: u64, caught_up: bool) {
        let ready = self.progress.borrow().ready;
        if caught_up && !ready {
            self.build_indexes();
        }
        let mut became_ready = false;
        self.progress.send_if_modified(|p| {
            let mut changed = false;
            if sequence > p.applied {
                p.applied = sequence;
                changed = true;
            }
            if caught_up && !p.ready {
                p.ready = true;
                became_ready = true;
                changed = true;
            }
            changed
        });
        if became_ready {
            tracing::info!(sequence, "view caught up with the journal");
        }
    }

    fn mark_ready(&self) {
        self.advance(0, true);
    }
}

impl View {
    /// True once catch-up is complete, false if `timeout` passes first.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let mut progress = self.inner.progress.subscribe();
        let waited = tokio::time::timeout(timeout, async move {
            progress.wait_for(|p| p.ready).await.is_ok()
        });
        matches!(waited.await, Ok(true))
    }

    pub fn is_ready(&self) -> bool {
        self.inner.progress.borrow().ready
    }

    /// True once the view is ready and has applied `sequence`: every record written up to
    /// it (or a newer record of the same entity) is visible.
    pub async fn wait_for(&self, sequence: u64, timeout: Duration) -> bool {
        let mut progress = self.inner.progress.subscribe();
        let waited = tokio::time::timeout(timeout, async move {
            progress
                .wait_for(|p| p.ready && p.applied >= sequence)
                .await
                .is_ok()
        });
        matches!(waited.await, Ok(true))
    }

    /// Starts waiting for the next record on `subject` to be applied (see
    /// [`crate::landing`]); call it before publishing the record.
    pub fn expect_landing(&self, subject: &str) -> Landing {
        self.inner.landings.expect(subject)
    }

    /// Stream sequence of the last message applied (or skipped).
    pub fn applied_sequence(&self) -> u64 {
        self.inner.applied()
    }

    pub fn cluster(&self, name: &str) -> Option<Arc<Versioned<Cluster>>> {
        read(&self.inner.clusters).get(name).cloned()
    }

    pub fn instance(
        &self,
        cluster: &str,
        instance_id: &str,
    ) -> Option<Arc<Versioned<ContainerInstance>>> {
        let scope = self.inner.scope(cluster)?;
        let data = read(&scope.data);
        data.instances.get(instance_id).cloned()
    }

    /// Instances of every status, by id.
    pub fn instances(&self, cluster: &str) -> Vec<Arc<Versioned<ContainerInstance>>> {
        let Some(scope) = self.inner.scope(cluster) else {
            return Vec::new();
        };
        let data = read(&scope.data);
        data.instances.values().cloned().collect()
    }

    /// Clusters with a record.
    pub fn clusters_len(&self) -> usize {
        read(&self.inner.clusters).len()
    }

    pub fn instances_len(&self) -> usize {
        self.inner.instances_len.load(Ordering::Relaxed)
    }

    pub fn tasks_len(&self) -> usize {
        self.inner.tasks_len.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::detached;
    use super::*;

    #[tokio::test]
    async fn waits_resolve_on_progress() {
        let v = detached();
        assert!(!v.is_ready());
        assert!(!v.wait_ready(Duration::from_millis(10)).await);
        let waiter = {
            let v = v.clone();
            tokio::spawn(async move { v.wait_for(5, Duration::from_secs(30)).await })
        };
        v.inner.advance(5, false);
        assert!(!v.wait_for(5, Duration::from_millis(10)).await);
        v.inner.mark_ready();
        assert!(waiter.await.unwrap());
        assert!(v.is_ready());
        assert_eq!(v.applied_sequence(), 5);
        assert!(v.wait_ready(Duration::from_secs(1)).await);
    }
}

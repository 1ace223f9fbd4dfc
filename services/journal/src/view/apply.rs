//! Applying journal records to the view: each batch's task records are made compact
//! outside the locks (on two threads while catching up), then applied per cluster under one
//! write lock; clusters and instances are applied here (an instance record this replica
//! wrote is taken as offered instead of decoded), task definitions in `definitions`.

use super::task::{prepare_task, Prepared};
use super::{write, Inner, View};
use crate::Versioned;
use berth_messages::codec;
use berth_messages::model::{
    Cluster, ContainerInstance, InstanceStatus, TaskDefinition, TaskDefinitionFamily,
};
use berth_messages::service::Service;
use berth_messages::subjects::{self, StateKey};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

/// Batches at least this long are made compact on two threads while the view catches up.
/// A live view never does: the other core is busy with the rest of the work then, and
/// rayon's idle threads spun after each parallel batch (2% of berth-control's CPU during
/// placement).
const PARALLEL_PREPARE: usize = 128;

/// Bound of the instance records offered by this replica's writers and not yet applied.
const MAX_WRITTEN_INSTANCES: usize = 4096;

/// An empty vector with the allocation of `v`: batches reuse their buffers (same layout,
/// only lifetimes differ, so collecting in place keeps the allocation).
pub(super) fn recycle<T, U>(mut v: Vec<T>) -> Vec<U> {
    v.clear();
    v.into_iter().filter_map(|_| None).collect()
}

fn is_registered(status: InstanceStatus) -> bool {
    matches!(status, InstanceStatus::Active | InstanceStatus::Draining)
}

fn decode<T: serde::de::DeserializeOwned>(subject: &str, payload: &[u8], seq: u64) -> Option<T> {
    match codec::decode_record(payload) {
        Ok(record) => Some(record),
        Err(error) => {
            tracing::warn!(subject, sequence = seq, %error, "view skips an undecodable record");
            None
        }
    }
}

impl Inner {
    /// Applies one journal message. Never fails: what cannot be applied is logged and skipped.
    #[cfg(test)]
    pub(super) fn apply(&self, subject: &str, payload: &[u8], sequence: u64) {
        self.apply_batch(&[(subject, payload, sequence)]);
    }

    /// Applies journal messages in order. Task records are made compact first, outside
    /// the view's locks; consecutive task records of one cluster are then applied under one
    /// write lock.
    #[cfg(test)]
    fn apply_batch(&self, batch: &[(&str, &[u8], u64)]) {
        self.apply_batch_with(batch, Vec::new());
    }

    /// [`Inner::apply_batch`] with a buffer to reuse; returns it (empty).
    pub(super) fn apply_batch_with<'a>(
        &self,
        batch: &[(&'a str, &'a [u8], u64)],
        buffer: Vec<Prepared<'a>>,
    ) -> Vec<Prepared<'static>> {
        let mut prepared = recycle(buffer);
        prepared.reserve(batch.len());
        let prepare = |part: &[(&'a str, &'a [u8], u64)], prepared: &mut Vec<Prepared<'a>>| {
            let mut encoder = self.interner.encoder();
            for &(subject, payload, sequence) in part {
                prepared.push(match subjects::parse_state(subject) {
                    Some(StateKey::Task {
                        cluster,
                        instance_id,
                        task_id,
                    }) => prepare_task(&mut encoder, subject, instance_id, payload, sequence)
                        .map(|p| (cluster, task_id, p)),
                    _ => None,
                });
            }
        };
        if batch.len() < PARALLEL_PREPARE || self.progress.borrow().ready {
            prepare(batch, &mut prepared);
        } else {
            // Catch-up: both halves are made compact at once, on rayon's long-lived
            // threads (a thread per batch would cost a fresh allocator heap each time).
            let (first, second) = batch.split_at(batch.len() / 2);
            let ((), later) = rayon::join(
                || prepare(first, &mut prepared),
                || {
                    let mut later = Vec::with_capacity(second.len());
                    prepare(second, &mut later);
                    later
                },
            );
            prepared.extend(later);
        }
        let mut items = batch.iter().zip(prepared.drain(..)).peekable();
        while let Some((&(subject, payload, sequence), prepared)) = items.next() {
            let Some((cluster, task_id, task)) = prepared else {
                self.apply_other(subject, payload, sequence);
                continue;
            };
            let scope = self.scope_or_create(cluster);
            let mut data = write(&scope.data);
            self.service_task_changed(cluster, task.group);
            let mut added = usize::from(data.apply_task(cluster, task_id, task));
            while let Some((_, Some((next_cluster, _, _)))) = items.peek() {
                if *next_cluster != cluster {
                    break;
                }
                if let Some((_, Some((_, task_id, task)))) = items.next() {
                    self.service_task_changed(cluster, task.group);
                    added += usize::from(data.apply_task(cluster, task_id, task));
                }
            }
            drop(data);
            self.tasks_len.fetch_add(added, Ordering::Relaxed);
        }
        drop(items);
        recycle(prepared)
    }

    /// Applies one journal message that is not a task record.
    fn apply_other(&self, subject: &str, payload: &[u8], sequence: u64) {
        let Some(key) = subjects::parse_state(subject) else {
            tracing::warn!(
                subject,
                sequence,
                "view skips a record on an unknown subject"
            );
            return;
        };
        match key {
            StateKey::Cluster { cluster } => {
                if let Some(record) = decode::<Cluster>(subject, payload, sequence) {
                    self.apply_cluster(cluster, record, sequence);
                }
            }
            StateKey::Instance {
                cluster,
                instance_id,
            } => {
                if let Some(record) = self.take_written_instance(sequence) {
                    self.apply_instance(cluster, instance_id, record);
                } else if let Some(mut value) =
                    decode::<ContainerInstance>(subject, payload, sequence)
                {
                    value.version = Some(sequence);
                    let record = Arc::new(Versioned {
                        value,
                        version: sequence,
                    });
                    self.apply_instance(cluster, instance_id, record);
                }
            }
            StateKey::Task { .. } => {
                // Task records that could not be prepared (logged there).
            }
            StateKey::TaskDefinition { family, revision } => {
                if let Some(record) = decode::<TaskDefinition>(subject, payload, sequence) {
                    self.apply_task_definition(family, revision, record, sequence);
                }
            }
            StateKey::TaskDefinitionFamily { family } => {
                if let Some(record) = decode::<TaskDefinitionFamily>(subject, payload, sequence) {
                    self.apply_family(family, record, sequence);
                }
            }
            StateKey::Service { cluster, service } => {
                if let Some(record) = decode::<Service>(subject, payload, sequence) {
                    self.apply_service(cluster, service, record, sequence);
                }
            }
        }
    }

    fn apply_cluster(&self, cluster: &str, value: Cluster, version: u64) {
        let mut clusters = write(&self.clusters);
        if clusters.get(cluster).is_some_and(|c| c.version >= version) {
            return;
        }
        clusters.insert(cluster.to_string(), Arc::new(Versioned { value, version }));
    }

    /// The record this replica wrote at `sequence`, if it offered it; forgets the ones
    /// before it (the apply loop has passed them).
    fn take_written_instance(&self, sequence: u64) -> Option<Arc<Versioned<ContainerInstance>>> {
        let mut written = self
            .written_instances
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if written.is_empty() {
            return None;
        }
        while let Some(entry) = written.first_entry() {
            if *entry.key() >= sequence {
                break;
            }
            entry.remove();
        }
        written.remove(&sequence)
    }

    fn apply_instance(&self, cluster: &str, id: &str, record: Arc<Versioned<ContainerInstance>>) {
        let version = record.version;
        let scope = self.scope_or_create(cluster);
        let mut data = write(&scope.data);
        let registered = i64::from(is_registered(record.value.status));
        match data.instances.get(id) {
            Some(old) if old.version >= version => return,
            Some(old) => data.registered -= i64::from(is_registered(old.value.status)),
            None => {
                self.instances_len.fetch_add(1, Ordering::Relaxed);
            }
        }
        data.registered += registered;
        data.pool.upsert(id, record.clone());
        let old = data.instances.insert(id.to_string(), record.clone());
        let old = old.as_deref().map(|o| &o.value);
        data.track_allocations(id, old, &record.value, version);
        let matters = super::services::instance_matters(old, &record.value);
        drop(data);
        if matters {
            self.service_instances_changed(cluster);
        }
    }
}

impl View {
    /// Offers an instance record this replica has just written (its `version` the
    /// sequence the journal acknowledged, its value exactly what was written) so that the
    /// apply loop takes it instead of decoding the message. Records the view has already
    /// passed are ignored; the view never holds more than [`MAX_WRITTEN_INSTANCES`].
    pub fn offer_written_instance(&self, record: &Arc<Versioned<ContainerInstance>>) {
        if record.version <= self.inner.applied() {
            return;
        }
        let mut written = self
            .inner
            .written_instances
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if written.len() < MAX_WRITTEN_INSTANCES {
            written.insert(record.version, record.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use berth_messages::model::{InstanceStatus, TaskStatus};

    #[test]
    fn written_instance_records_are_taken_instead_of_decoded() {
        let mut feed = Feed::new();
        let subject = subjects::instance("c", "i-1");
        feed.put(&subject, &instance("c", "i-1", InstanceStatus::Active));
        // The writer offers the record it wrote at the next sequence: the view keeps that
        // very record (the message is not decoded).
        let mut value = instance("c", "i-1", InstanceStatus::Draining);
        value.version = Some(feed.seq + 1);
        let written = Arc::new(Versioned {
            value: value.clone(),
            version: feed.seq + 1,
        });
        feed.view.offer_written_instance(&written);
        feed.put(&subject, &instance("c", "i-1", InstanceStatus::Draining));
        let applied = feed.view.instance("c", "i-1").unwrap();
        assert!(Arc::ptr_eq(&applied, &written));
        // Offers the view has passed are ignored, and offers never applied are forgotten
        // once the apply loop is past them.
        feed.view.offer_written_instance(&written);
        let stale = Arc::new(Versioned {
            value: value.clone(),
            version: feed.seq + 1,
        });
        feed.view.offer_written_instance(&stale);
        feed.seq += 1; // a message the view never receives
        let decoded = feed.put(&subject, &instance("c", "i-1", InstanceStatus::Active));
        let applied = feed.view.instance("c", "i-1").unwrap();
        assert!(!Arc::ptr_eq(&applied, &stale));
        assert_eq!(applied.version, decoded);
        assert_eq!(applied.value.status, InstanceStatus::Active);
        assert_eq!(applied.value.version, Some(decoded));
        assert!(feed.view.inner.written_instances.lock().unwrap().is_empty());
    }

    #[test]
    fn stale_records_and_duplicates_keep_the_newest() {
        let mut feed = Feed::new();
        let first = spec("i1", "web", TaskStatus::Pending);
        put_task(&mut feed, "c", "t", &first);
        // A newer record of the same task under another instance wins.
        let moved = spec("i2", "web", TaskStatus::Running);
        let newest = put_task(&mut feed, "c", "t", &moved);
        let v = &feed.view;
        assert_eq!(v.task("c", "t").unwrap().instance_id, "i2");
        assert!(v.tasks_on_instance("c", "i1").is_empty());
        assert_eq!(v.instance_counts("c", "i1"), (0, 0));
        assert_eq!(v.instance_counts("c", "i2"), (1, 0));
        assert_eq!(v.tasks_len(), 1);
        // An older sequence is ignored.
        let payload = codec::encode_record(&task("c", "t", &first)).unwrap();
        v.inner
            .apply(&subjects::task("c", "i1", "t"), &payload, newest - 1);
        assert_eq!(v.task("c", "t").unwrap().task.version, newest);
        assert_eq!(v.counts("c").running_tasks, 1);
        assert_eq!(v.counts("c").pending_tasks, 0);
    }

    #[test]
    fn bad_records_are_skipped() {
        let v = detached();
        v.inner.apply("berth.state.c.bogus.x", b"\x80", 1);
        v.inner
            .apply(&subjects::task("c", "i", "t"), b"not msgpack", 2);
        v.inner.apply(&subjects::cluster("c"), b"", 3);
        assert!(v.task("c", "t").is_none());
        assert!(v.cluster("c").is_none());
        assert_eq!(v.tasks_len(), 0);
    }
}

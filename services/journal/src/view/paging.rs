//! Listings: pages by resume key (clusters, instances, tasks, expired tasks) and the
//! filtered task scans that pick the smallest index and release the read lock every
//! [`SCAN_CHUNK`] entries so that they never hold up the apply loop for long.

use super::scope::{desired_indexed, IdSet, ScopeData};
use super::task::{RawTask, StoredTask, TaskEntry};
use super::{read, View};
use crate::keys::{Sym, Symbols, TaskKey};
use crate::Versioned;
use berth_messages::model::{Cluster, ContainerInstance, InstanceStatus, TaskStatus};
use std::collections::HashMap;
use std::ops::Bound;
use std::sync::Arc;

/// Entries a scan examines under one read lock before letting the apply loop in.
#[cfg(not(test))]
pub(super) const SCAN_CHUNK: usize = 4096;
/// Small in unit tests so that scans pause and resume.
#[cfg(test)]
pub(super) const SCAN_CHUNK: usize = 3;

/// Conditions of [`View::page_tasks`]; every field that is set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskFilter {
    pub instance_id: Option<String>,
    /// The family part of the task's `taskDefinitionArn`.
    pub family: Option<String>,
    pub started_by: Option<String>,
    pub desired_status: Option<TaskStatus>,
    /// Not indexed (no API filters by group; an index cost a set insert per task placed
    /// and ~40 bytes per task): a filter on it alone scans the cluster's tasks.
    pub group: Option<String>,
}

/// One page of a listing.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Opaque resume key (the sort key of the last item), only when more items remain.
    pub next: Option<String>,
}

impl<T> Page<T> {
    fn empty() -> Self {
        Self {
            items: Vec::new(),
            next: None,
        }
    }
}

/// A STOPPED task past a `stoppedAt` cutoff (see [`View::page_stopped_before`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiredTask {
    pub task_id: String,
    pub instance_id: String,
    pub version: u64,
}

/// Takes up to `limit` items of (resume key, item) pairs; `next` is set when more remain.
pub(super) fn page_of<'a, V: 'a>(
    iter: impl Iterator<Item = (&'a str, V)>,
    limit: usize,
) -> Page<V> {
    let limit = limit.max(1);
    let mut items = Vec::new();
    let mut last: Option<&str> = None;
    for (key, value) in iter {
        if items.len() == limit {
            return Page {
                items,
                next: last.map(str::to_string),
            };
        }
        items.push(value);
        last = Some(key);
    }
    Page { items, next: None }
}

pub(super) enum ChunkEnd {
    /// Enough items collected.
    Full,
    /// Nothing left to examine.
    Exhausted,
    /// The chunk's budget ran out; resume after the last examined key.
    Paused,
}

/// Examines up to [`SCAN_CHUNK`] tasks, collecting matches until `want` are found.
/// Returns how the chunk ended and the last key examined.
fn scan_tasks<'a>(
    data: &ScopeData,
    filter: &TaskFilter,
    ids: impl Iterator<Item = (&'a TaskKey, &'a StoredTask)>,
    want: usize,
    found: &mut Vec<(TaskKey, RawTask)>,
) -> (ChunkEnd, Option<TaskKey>) {
    let mut last: Option<&TaskKey> = None;
    for (examined, (id, task)) in ids.enumerate() {
        if examined == SCAN_CHUNK {
            return (ChunkEnd::Paused, last.cloned());
        }
        last = Some(id);
        if data.matches(filter, task) {
            found.push((id.clone(), data.raw(task)));
            if found.len() >= want {
                return (ChunkEnd::Full, last.cloned());
            }
        }
    }
    (ChunkEnd::Exhausted, last.cloned())
}

impl ScopeData {
    /// The smallest index set that holds every match, `Err` if nothing can match, `Ok(None)`
    /// if no filter has an index (scan every task).
    fn candidates(&self, filter: &TaskFilter) -> std::result::Result<Option<&IdSet>, ()> {
        fn by_sym<'a>(
            syms: &Symbols,
            index: &'a HashMap<Sym, IdSet>,
            name: &Option<String>,
        ) -> Option<Option<&'a IdSet>> {
            name.as_ref()
                .map(|n| syms.get(n).and_then(|sym| index.get(&sym)))
        }
        let wanted = [
            filter
                .instance_id
                .as_ref()
                .map(|i| self.on_instance.get(i.as_str()).map(|o| &o.ids)),
            by_sym(&self.syms, &self.by_family, &filter.family),
            by_sym(&self.syms, &self.by_started_by, &filter.started_by),
            filter
                .desired_status
                .filter(|s| desired_indexed(*s))
                .map(|s| self.by_desired.get(&s)),
        ];
        let mut best: Option<&IdSet> = None;
        for set in wanted.into_iter().flatten() {
            let set = set.ok_or(())?;
            if best.is_none_or(|b| set.len() < b.len()) {
                best = Some(set);
            }
        }
        Ok(best)
    }

    fn matches(&self, filter: &TaskFilter, task: &StoredTask) -> bool {
        let is = |sym: Sym, wanted: &Option<String>| {
            wanted.as_deref().is_none_or(|w| self.sym(sym) == Some(w))
        };
        filter.desired_status.is_none_or(|s| s == task.desired)
            && is(task.instance, &filter.instance_id)
            && is(task.started_by, &filter.started_by)
            && is(task.group, &filter.group)
            && is(task.family, &filter.family)
    }
}

impl View {
    /// Clusters of every status, by name.
    pub fn page_clusters(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Page<Arc<Versioned<Cluster>>> {
        let clusters = read(&self.inner.clusters);
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        page_of(
            clusters
                .range::<str, _>((lower, Bound::Unbounded))
                .map(|(k, v)| (k.as_str(), v.clone())),
            limit,
        )
    }

    /// Instances by id; `status: None` lists every status.
    pub fn page_instances(
        &self,
        cluster: &str,
        status: Option<InstanceStatus>,
        after: Option<&str>,
        limit: usize,
    ) -> Page<Arc<Versioned<ContainerInstance>>> {
        let Some(scope) = self.inner.scope(cluster) else {
            return Page::empty();
        };
        let data = read(&scope.data);
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        page_of(
            data.instances
                .range::<str, _>((lower, Bound::Unbounded))
                .filter(|(_, v)| status.is_none_or(|s| v.value.status == s))
                .map(|(k, v)| (k.as_str(), v.clone())),
            limit,
        )
    }

    /// Tasks matching `filter`, by task id.
    pub fn page_tasks(
        &self,
        cluster: &str,
        filter: &TaskFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Page<Arc<TaskEntry>> {
        let limit = limit.max(1);
        let Some(scope) = self.inner.scope(cluster) else {
            return Page::empty();
        };
        let mut found: Vec<(TaskKey, RawTask)> = Vec::new();
        let mut cursor: Option<TaskKey> = after.map(TaskKey::new);
        loop {
            let data = read(&scope.data);
            let Ok(candidates) = data.candidates(filter) else {
                break;
            };
            let lower = cursor.as_ref().map_or(Bound::Unbounded, Bound::Excluded);
            let (end, last) = match candidates {
                Some(ids) => scan_tasks(
                    &data,
                    filter,
                    ids.range((lower, Bound::Unbounded))
                        .filter_map(|id| data.tasks.get_key_value(id)),
                    limit + 1,
                    &mut found,
                ),
                None => scan_tasks(
                    &data,
                    filter,
                    data.tasks.range((lower, Bound::Unbounded)),
                    limit + 1,
                    &mut found,
                ),
            };
            match end {
                ChunkEnd::Full | ChunkEnd::Exhausted => break,
                ChunkEnd::Paused => cursor = last,
            }
        }
        let next = (found.len() > limit).then(|| found[limit - 1].0.to_string());
        found.truncate(limit);
        Page {
            items: found
                .into_iter()
                .filter_map(|(_, raw)| self.inner.decode_task(cluster, raw))
                .collect(),
            next,
        }
    }

    /// STOPPED tasks whose `stoppedAt` is before `cutoff` (seconds since the epoch), by
    /// task id, without decoding their records: what the janitor purges.
    pub fn page_stopped_before(
        &self,
        cluster: &str,
        cutoff: f64,
        after: Option<&str>,
        limit: usize,
    ) -> Page<ExpiredTask> {
        let limit = limit.max(1);
        let Some(scope) = self.inner.scope(cluster) else {
            return Page::empty();
        };
        let mut items: Vec<(TaskKey, ExpiredTask)> = Vec::new();
        let mut cursor: Option<TaskKey> = after.map(TaskKey::new);
        'chunks: loop {
            let data = read(&scope.data);
            let Some(stopped) = data.by_desired.get(&TaskStatus::Stopped) else {
                break;
            };
            let lower = cursor.as_ref().map_or(Bound::Unbounded, Bound::Excluded);
            let mut last: Option<&TaskKey> = None;
            for (examined, id) in stopped.range((lower, Bound::Unbounded)).enumerate() {
                if examined == SCAN_CHUNK {
                    cursor = last.cloned();
                    continue 'chunks;
                }
                last = Some(id);
                let Some(task) = data.tasks.get(id) else {
                    continue;
                };
                if task.last == TaskStatus::Stopped && task.stopped_at < cutoff {
                    items.push((
                        id.clone(),
                        ExpiredTask {
                            task_id: id.to_string(),
                            instance_id: data.syms.name(task.instance).to_string(),
                            version: task.version,
                        },
                    ));
                    if items.len() > limit {
                        break 'chunks;
                    }
                }
            }
            break;
        }
        let next = (items.len() > limit).then(|| items[limit - 1].0.to_string());
        items.truncate(limit);
        Page {
            items: items.into_iter().map(|(_, t)| t).collect(),
            next,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::TaskEntry;
    use super::*;
    use berth_messages::arn::{self, ArnScope};
    use berth_messages::subjects;
    use std::collections::BTreeMap;

    fn ids(page: &Page<Arc<TaskEntry>>) -> Vec<String> {
        page.items
            .iter()
            .map(|e| arn::task_id(&e.task.value.task_arn).1.to_string())
            .collect()
    }

    #[test]
    fn task_pages_match_a_full_scan_for_every_filter() {
        // Applied live, and applied during catch-up (task sets built at its end).
        task_pages_match_a_full_scan(Feed::new());
        task_pages_match_a_full_scan(Feed::catching_up());
    }

    fn task_pages_match_a_full_scan(mut feed: Feed) {
        let mut state: BTreeMap<String, TaskSpec> = BTreeMap::new();
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let statuses = [
            TaskStatus::Provisioning,
            TaskStatus::Pending,
            TaskStatus::Running,
            TaskStatus::Stopped,
        ];
        for _ in 0..400 {
            let id = format!("t{:03}", next(60));
            let s = TaskSpec {
                instance: format!("i{}", next(4)),
                family: ["web", "db", "batch"][next(3) as usize].into(),
                last: statuses[next(4) as usize],
                desired: [TaskStatus::Running, TaskStatus::Stopped][next(2) as usize],
                started_by: (next(3) > 0).then(|| format!("s{}", next(2))),
                group: format!("g{}", next(3)),
            };
            put_task(&mut feed, "c", &id, &s);
            state.insert(id, s);
        }
        if !feed.live {
            assert!(!feed.view.is_ready());
            feed.catch_up();
            assert!(feed.view.is_ready());
        }
        let v = &feed.view;
        let running = state
            .values()
            .filter(|s| s.last == TaskStatus::Running)
            .count();
        let pending = state.values().filter(|s| s.last.is_pending()).count();
        assert_eq!(v.counts("c").running_tasks, running as i64);
        assert_eq!(v.counts("c").pending_tasks, pending as i64);
        for i in 0..4 {
            let inst = format!("i{i}");
            let on: Vec<_> = state.iter().filter(|(_, s)| s.instance == inst).collect();
            let r = on
                .iter()
                .filter(|(_, s)| s.last == TaskStatus::Running)
                .count() as i64;
            let p = on.iter().filter(|(_, s)| s.last.is_pending()).count() as i64;
            assert_eq!(v.instance_counts("c", &inst), (r, p), "{inst}");
        }

        let mut filters = vec![TaskFilter::default()];
        for i in ["i0", "i3", "nope"] {
            filters.push(TaskFilter {
                instance_id: Some(i.into()),
                ..Default::default()
            });
        }
        for f in ["web", "batch", "nope"] {
            filters.push(TaskFilter {
                family: Some(f.into()),
                ..Default::default()
            });
        }
        filters.push(TaskFilter {
            started_by: Some("s1".into()),
            desired_status: Some(TaskStatus::Running),
            ..Default::default()
        });
        filters.push(TaskFilter {
            desired_status: Some(TaskStatus::Stopped),
            ..Default::default()
        });
        filters.push(TaskFilter {
            instance_id: Some("i1".into()),
            family: Some("db".into()),
            group: Some("g2".into()),
            ..Default::default()
        });
        // Groups have no index: alone, the filter scans.
        filters.push(TaskFilter {
            group: Some("g2".into()),
            ..Default::default()
        });
        for filter in &filters {
            let expected: Vec<String> = state
                .iter()
                .filter(|(_, s)| {
                    filter.instance_id.as_ref().is_none_or(|i| *i == s.instance)
                        && filter.family.as_ref().is_none_or(|f| *f == s.family)
                        && filter
                            .started_by
                            .as_ref()
                            .is_none_or(|b| s.started_by.as_ref() == Some(b))
                        && filter.desired_status.is_none_or(|d| d == s.desired)
                        && filter.group.as_ref().is_none_or(|g| *g == s.group)
                })
                .map(|(id, _)| id.clone())
                .collect();
            for limit in [1, 4, 100] {
                let pages = all_pages(|after| v.page_tasks("c", filter, after, limit));
                let got: Vec<String> = pages
                    .iter()
                    .flat_map(|p| {
                        p.iter()
                            .map(|e| arn::task_id(&e.task.value.task_arn).1.to_string())
                    })
                    .collect();
                assert_eq!(got, expected, "{filter:?} limit {limit}");
                assert!(pages.iter().all(|p| p.len() <= limit));
                if !expected.is_empty() {
                    assert!(
                        pages.iter().all(|p| !p.is_empty()),
                        "{filter:?} limit {limit}"
                    );
                }
            }
        }
        assert!(ids(&v.page_tasks("none", &TaskFilter::default(), None, 10)).is_empty());
    }

    #[test]
    fn clusters_and_instances_page_by_name() {
        let mut feed = Feed::new();
        for name in ["b", "a", "c"] {
            feed.put(
                &subjects::cluster(name),
                &Cluster {
                    cluster_arn: ArnScope::default().cluster(name),
                    cluster_name: name.into(),
                    ..Default::default()
                },
            );
        }
        for (id, status) in [
            ("i3", InstanceStatus::Active),
            ("i1", InstanceStatus::Inactive),
            ("i2", InstanceStatus::Active),
        ] {
            feed.put(&subjects::instance("a", id), &instance("a", id, status));
        }
        let v = &feed.view;
        assert_eq!(v.clusters_len(), 3);
        let p = v.page_clusters(None, 2);
        assert_eq!(p.next.as_deref(), Some("b"));
        let names: Vec<_> = all_pages(|a| v.page_clusters(a, 2))
            .into_iter()
            .flatten()
            .map(|c| c.value.cluster_name.clone())
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
        let all: Vec<_> = v
            .instances("a")
            .iter()
            .map(|i| i.value.container_instance_arn.clone())
            .collect();
        assert_eq!(all.len(), 3);
        assert!(all[0].ends_with("/i1") && all[2].ends_with("/i3"));
        let active: Vec<_> =
            all_pages(|a| v.page_instances("a", Some(InstanceStatus::Active), a, 1))
                .into_iter()
                .flatten()
                .map(|i| i.value.container_instance_arn.clone())
                .collect();
        assert_eq!(active.len(), 2);
        assert!(active[0].ends_with("/i2") && active[1].ends_with("/i3"));
        assert_eq!(v.page_instances("a", None, Some("i1"), 10).items.len(), 2);
        assert!(v.page_instances("zz", None, None, 10).items.is_empty());
    }

    #[test]
    fn stopped_tasks_page_by_stopped_at() {
        let mut feed = Feed::new();
        let mut put = |id: &str, last: TaskStatus, desired: TaskStatus, at: Option<f64>| {
            let mut s = spec("i1", "web", last);
            s.desired = desired;
            let mut t = task("c", id, &s);
            t.stopped_at = at;
            feed.put(&subjects::task("c", "i1", id), &t)
        };
        use TaskStatus::{Running, Stopped};
        let t1 = put("t1", Stopped, Stopped, Some(10.0));
        put("t2", Stopped, Stopped, Some(30.0));
        let t3 = put("t3", Stopped, Stopped, Some(20.5));
        put("t4", Stopped, Stopped, None);
        put("t5", Running, Stopped, Some(1.0));
        put("t6", Running, Running, None);
        let v = &feed.view;
        for limit in [1, 2, 10] {
            let pages = all_pages(|after| v.page_stopped_before("c", 25.0, after, limit));
            let got: Vec<ExpiredTask> = pages.into_iter().flatten().collect();
            assert_eq!(
                got,
                [
                    ExpiredTask {
                        task_id: "t1".into(),
                        instance_id: "i1".into(),
                        version: t1
                    },
                    ExpiredTask {
                        task_id: "t3".into(),
                        instance_id: "i1".into(),
                        version: t3
                    }
                ],
                "limit {limit}"
            );
        }
        assert!(v.page_stopped_before("c", 5.0, None, 10).items.is_empty());
        assert!(v.page_stopped_before("x", 50.0, None, 10).items.is_empty());
    }
}

//! Task definitions and their families: applying their records, the latest ACTIVE
//! revision of a family, and the listings of definitions (by family and revision, either
//! way) and of families.

use super::paging::{page_of, ChunkEnd, Page, SCAN_CHUNK};
use super::{read, write, Inner, View};
use crate::Versioned;
use berth_messages::model::{TaskDefinition, TaskDefinitionFamily, TaskDefinitionStatus};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;

/// Which families [`View::page_families`] lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FamilyStatusFilter {
    /// At least one ACTIVE revision.
    Active,
    /// Revisions, none of them ACTIVE.
    Inactive,
    /// Any family with revisions.
    All,
}

#[derive(Default)]
pub(super) struct FamilyEntry {
    record: Option<Arc<Versioned<TaskDefinitionFamily>>>,
    revisions: BTreeMap<u32, Arc<Versioned<TaskDefinition>>>,
    active: BTreeSet<u32>,
}

type TaskDefIter<'a> =
    Box<dyn Iterator<Item = (&'a str, u32, &'a Arc<Versioned<TaskDefinition>>)> + 'a>;

/// Task definitions in (family, revision) order, or the reverse, strictly after `after`.
fn task_definitions_from<'a>(
    families: &'a BTreeMap<String, FamilyEntry>,
    prefix: Option<&'a str>,
    descending: bool,
    after: Option<(&'a str, u32)>,
) -> TaskDefIter<'a> {
    let in_prefix = move |f: &str| prefix.is_none_or(|p| f.starts_with(p));
    if descending {
        let upper = after.map_or(Bound::Unbounded, |(f, _)| Bound::Included(f));
        Box::new(
            families
                .range::<str, _>((Bound::Unbounded, upper))
                .rev()
                .skip_while(move |(f, _)| {
                    prefix.is_some_and(|p| !f.starts_with(p) && f.as_str() > p)
                })
                .take_while(move |(f, _)| in_prefix(f))
                .flat_map(move |(f, entry)| {
                    let upper = match after {
                        Some((af, ar)) if af == f.as_str() => Bound::Excluded(ar),
                        _ => Bound::Unbounded,
                    };
                    entry
                        .revisions
                        .range((Bound::Unbounded, upper))
                        .rev()
                        .map(move |(r, d)| (f.as_str(), *r, d))
                }),
        )
    } else {
        let start = match (after.map(|(f, _)| f), prefix) {
            (Some(f), Some(p)) => Bound::Included(f.max(p)),
            (Some(f), None) => Bound::Included(f),
            (None, Some(p)) => Bound::Included(p),
            (None, None) => Bound::Unbounded,
        };
        Box::new(
            families
                .range::<str, _>((start, Bound::Unbounded))
                .take_while(move |(f, _)| in_prefix(f))
                .flat_map(move |(f, entry)| {
                    let lower = match after {
                        Some((af, ar)) if af == f.as_str() => Bound::Excluded(ar),
                        _ => Bound::Unbounded,
                    };
                    entry
                        .revisions
                        .range((lower, Bound::Unbounded))
                        .map(move |(r, d)| (f.as_str(), *r, d))
                }),
        )
    }
}

/// Splits a task-definition resume key `family:revision`.
fn parse_task_definition_key(key: &str, descending: bool) -> (&str, u32) {
    match key.rsplit_once(':') {
        Some((family, revision)) => match revision.parse() {
            Ok(revision) => (family, revision),
            Err(_) => (key, if descending { u32::MAX } else { 0 }),
        },
        None => (key, if descending { u32::MAX } else { 0 }),
    }
}

impl Inner {
    pub(super) fn apply_task_definition(
        &self,
        family: &str,
        revision: u32,
        value: TaskDefinition,
        version: u64,
    ) {
        let mut families = write(&self.families);
        let entry = match families.get_mut(family) {
            Some(entry) => entry,
            None => families.entry(family.to_string()).or_default(),
        };
        if entry
            .revisions
            .get(&revision)
            .is_some_and(|d| d.version >= version)
        {
            return;
        }
        if value.status == TaskDefinitionStatus::Active {
            entry.active.insert(revision);
        } else {
            entry.active.remove(&revision);
        }
        entry
            .revisions
            .insert(revision, Arc::new(Versioned { value, version }));
    }

    pub(super) fn apply_family(&self, family: &str, value: TaskDefinitionFamily, version: u64) {
        let mut families = write(&self.families);
        let entry = match families.get_mut(family) {
            Some(entry) => entry,
            None => families.entry(family.to_string()).or_default(),
        };
        if entry.record.as_ref().is_some_and(|r| r.version >= version) {
            return;
        }
        entry.record = Some(Arc::new(Versioned { value, version }));
    }
}

impl View {
    pub fn task_definition(
        &self,
        family: &str,
        revision: u32,
    ) -> Option<Arc<Versioned<TaskDefinition>>> {
        read(&self.inner.families)
            .get(family)?
            .revisions
            .get(&revision)
            .cloned()
    }

    /// The highest ACTIVE revision of a family.
    pub fn latest_active_task_definition(
        &self,
        family: &str,
    ) -> Option<Arc<Versioned<TaskDefinition>>> {
        let families = read(&self.inner.families);
        let entry = families.get(family)?;
        entry.revisions.get(entry.active.last()?).cloned()
    }

    /// The revision counter record of a family.
    pub fn family(&self, family: &str) -> Option<Arc<Versioned<TaskDefinitionFamily>>> {
        read(&self.inner.families).get(family)?.record.clone()
    }

    /// Task definitions by family, then revision number (or the reverse). The resume key
    /// is `family:revision`.
    pub fn page_task_definitions(
        &self,
        family_prefix: Option<&str>,
        status: Option<TaskDefinitionStatus>,
        descending: bool,
        after: Option<&str>,
        limit: usize,
    ) -> Page<Arc<Versioned<TaskDefinition>>> {
        let limit = limit.max(1);
        let mut found: Vec<(String, u32, Arc<Versioned<TaskDefinition>>)> = Vec::new();
        let mut cursor: Option<(String, u32)> = after.map(|key| {
            let (family, revision) = parse_task_definition_key(key, descending);
            (family.to_string(), revision)
        });
        loop {
            let families = read(&self.inner.families);
            let mut iter = task_definitions_from(
                &families,
                family_prefix,
                descending,
                cursor.as_ref().map(|(f, r)| (f.as_str(), *r)),
            );
            let mut end = ChunkEnd::Exhausted;
            let mut last = None;
            for examined in 0.. {
                if examined == SCAN_CHUNK {
                    end = ChunkEnd::Paused;
                    break;
                }
                let Some((family, revision, definition)) = iter.next() else {
                    break;
                };
                last = Some((family, revision));
                if status.is_none_or(|s| definition.value.status == s) {
                    found.push((family.to_string(), revision, definition.clone()));
                    if found.len() > limit {
                        end = ChunkEnd::Full;
                        break;
                    }
                }
            }
            let resume = match end {
                ChunkEnd::Paused => last.map(|(f, r): (&str, u32)| (f.to_string(), r)),
                ChunkEnd::Full | ChunkEnd::Exhausted => None,
            };
            drop(iter);
            match resume {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let next = (found.len() > limit).then(|| {
            let (family, revision, _) = &found[limit - 1];
            format!("{family}:{revision}")
        });
        found.truncate(limit);
        Page {
            items: found.into_iter().map(|(_, _, d)| d).collect(),
            next,
        }
    }

    /// Family names in order; the resume key is the family name.
    pub fn page_families(
        &self,
        family_prefix: Option<&str>,
        status: FamilyStatusFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Page<String> {
        let families = read(&self.inner.families);
        let lower = match (after, family_prefix) {
            (Some(a), Some(p)) if p > a => Bound::Included(p),
            (Some(a), _) => Bound::Excluded(a),
            (None, Some(p)) => Bound::Included(p),
            (None, None) => Bound::Unbounded,
        };
        page_of(
            families
                .range::<str, _>((lower, Bound::Unbounded))
                .take_while(|(f, _)| family_prefix.is_none_or(|p| f.starts_with(p)))
                .filter(|(_, e)| match status {
                    FamilyStatusFilter::Active => !e.active.is_empty(),
                    FamilyStatusFilter::Inactive => !e.revisions.is_empty() && e.active.is_empty(),
                    FamilyStatusFilter::All => !e.revisions.is_empty(),
                })
                .map(|(f, _)| (f.as_str(), f.clone())),
            limit,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use berth_messages::arn::ArnScope;
    use berth_messages::subjects;

    fn definition(family: &str, revision: u32, status: TaskDefinitionStatus) -> TaskDefinition {
        TaskDefinition {
            task_definition_arn: ArnScope::default().task_definition(family, revision),
            family: family.into(),
            revision,
            status,
            ..Default::default()
        }
    }

    #[test]
    fn task_definitions_order_and_latest_active() {
        let mut feed = Feed::new();
        use TaskDefinitionStatus::{Active, Inactive};
        for (family, revision, status) in [
            ("web", 1, Inactive),
            ("web", 2, Active),
            ("web", 10, Active),
            ("web", 3, Active),
            ("db", 1, Inactive),
            ("worker", 1, Active),
            ("webhook", 1, Active),
        ] {
            feed.put(
                &subjects::task_definition(family, revision),
                &definition(family, revision, status),
            );
        }
        feed.put(
            &subjects::task_definition_family("web"),
            &TaskDefinitionFamily {
                family: "web".into(),
                last_revision: 10,
                last_command_id: "c".into(),
            },
        );
        // web:10 deregistered later.
        feed.put(
            &subjects::task_definition("web", 10),
            &definition("web", 10, Inactive),
        );
        let v = &feed.view;
        assert_eq!(
            v.latest_active_task_definition("web")
                .unwrap()
                .value
                .revision,
            3
        );
        assert!(v.latest_active_task_definition("db").is_none());
        assert_eq!(v.family("web").unwrap().value.last_revision, 10);
        assert!(v.family("db").is_none());
        assert_eq!(v.task_definition("web", 10).unwrap().value.status, Inactive);

        let names = |items: Vec<Vec<Arc<Versioned<TaskDefinition>>>>| -> Vec<String> {
            items
                .into_iter()
                .flatten()
                .map(|d| format!("{}:{}", d.value.family, d.value.revision))
                .collect()
        };
        for limit in [1, 2, 50] {
            let asc = names(all_pages(|a| {
                v.page_task_definitions(None, None, false, a, limit)
            }));
            assert_eq!(
                asc,
                [
                    "db:1",
                    "web:1",
                    "web:2",
                    "web:3",
                    "web:10",
                    "webhook:1",
                    "worker:1"
                ]
            );
            let desc = names(all_pages(|a| {
                v.page_task_definitions(None, None, true, a, limit)
            }));
            let mut reversed = asc.clone();
            reversed.reverse();
            assert_eq!(desc, reversed);
            let web = names(all_pages(|a| {
                v.page_task_definitions(Some("web"), Some(Active), false, a, limit)
            }));
            assert_eq!(web, ["web:2", "web:3", "webhook:1"]);
            let web_desc = names(all_pages(|a| {
                v.page_task_definitions(Some("web"), None, true, a, limit)
            }));
            assert_eq!(web_desc, ["webhook:1", "web:10", "web:3", "web:2", "web:1"]);
            let none = names(all_pages(|a| {
                v.page_task_definitions(Some("zzz"), None, true, a, limit)
            }));
            assert!(none.is_empty());
        }
        let p = v.page_task_definitions(None, None, false, None, 2);
        assert_eq!(p.next.as_deref(), Some("web:1"));

        let fams = |status, prefix| -> Vec<String> {
            all_pages(|a| v.page_families(prefix, status, a, 1))
                .into_iter()
                .flatten()
                .collect()
        };
        assert_eq!(
            fams(FamilyStatusFilter::All, None),
            ["db", "web", "webhook", "worker"]
        );
        assert_eq!(
            fams(FamilyStatusFilter::Active, None),
            ["web", "webhook", "worker"]
        );
        assert_eq!(fams(FamilyStatusFilter::Inactive, None), ["db"]);
        assert_eq!(
            fams(FamilyStatusFilter::All, Some("we")),
            ["web", "webhook"]
        );
        assert!(fams(FamilyStatusFilter::Inactive, Some("we")).is_empty());
    }
}

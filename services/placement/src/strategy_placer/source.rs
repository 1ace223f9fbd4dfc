//! Where a decision reads its instances from: an [`InstancePool`] kept up to date by its
//! owner, or a slice of [`Candidate`]s summarised once per call.

use crate::candidate::Candidate;
use crate::expr::Expr;
use crate::pool::{Column, Head, InstancePool};
use berth_messages::model::ContainerInstance;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Where a decision reads its instances from.
pub(crate) trait Source {
    fn heads(&self) -> &[Head];
    /// The record of a present slot.
    fn instance(&self, slot: usize) -> &ContainerInstance;
    fn candidate(&self, slot: usize) -> Candidate<'_>;
    /// Tasks of `group` per slot, as (slot, tasks) for the slots that hold some.
    fn group_tasks(&self, group: &str) -> Cow<'_, [(usize, u32)]>;
    fn column(&self, attribute: &str) -> Arc<Column>;
    /// Tasks of `group` per bucket of the column of `attribute`, over present slots but
    /// `excluded`, if the source keeps them.
    fn bucket_tasks(&self, group: &str, attribute: &str, excluded: &[usize]) -> Option<Vec<u64>>;
    /// Cached verdicts of an expression that does not read tasks, if the source keeps them.
    fn verdicts(&self, expr: &Expr) -> Option<Arc<[bool]>>;
    /// The most remaining memory of any present instance, if the source keeps it.
    fn max_memory(&self) -> Option<i64> {
        None
    }
}

impl Source for InstancePool {
    fn heads(&self) -> &[Head] {
        InstancePool::heads(self)
    }

    fn max_memory(&self) -> Option<i64> {
        InstancePool::max_memory(self)
    }

    fn instance(&self, slot: usize) -> &ContainerInstance {
        match self.record(slot) {
            Some(record) => record.instance(),
            None => absent_instance(),
        }
    }

    fn candidate(&self, slot: usize) -> Candidate<'_> {
        InstancePool::candidate(self, slot).unwrap_or_else(|| Candidate {
            instance: absent_instance(),
            groups: empty_groups(),
            running_tasks: 0,
        })
    }

    fn group_tasks(&self, group: &str) -> Cow<'_, [(usize, u32)]> {
        Cow::Borrowed(InstancePool::group_tasks(self, group))
    }

    fn column(&self, attribute: &str) -> Arc<Column> {
        InstancePool::column(self, attribute)
    }

    fn bucket_tasks(&self, group: &str, attribute: &str, excluded: &[usize]) -> Option<Vec<u64>> {
        Some(InstancePool::bucket_tasks(self, group, attribute, excluded))
    }

    fn verdicts(&self, expr: &Expr) -> Option<Arc<[bool]>> {
        InstancePool::verdicts(self, expr)
    }
}

fn absent_instance() -> &'static ContainerInstance {
    static ABSENT: std::sync::OnceLock<ContainerInstance> = std::sync::OnceLock::new();
    ABSENT.get_or_init(ContainerInstance::default)
}

fn empty_groups() -> &'static BTreeMap<String, u32> {
    static EMPTY: BTreeMap<String, u32> = BTreeMap::new();
    &EMPTY
}

/// A slice of candidates summarised once per call.
pub(super) struct Candidates<'c> {
    candidates: &'c [Candidate<'c>],
    heads: Vec<Head>,
}

impl<'c> Candidates<'c> {
    pub(super) fn new(candidates: &'c [Candidate<'c>]) -> Self {
        Self {
            candidates,
            heads: candidates.iter().map(|c| Head::of(c.instance)).collect(),
        }
    }
}

impl Source for Candidates<'_> {
    fn heads(&self) -> &[Head] {
        &self.heads
    }

    fn instance(&self, slot: usize) -> &ContainerInstance {
        self.candidates[slot].instance
    }

    fn candidate(&self, slot: usize) -> Candidate<'_> {
        self.candidates[slot]
    }

    fn group_tasks(&self, group: &str) -> Cow<'_, [(usize, u32)]> {
        self.candidates
            .iter()
            .enumerate()
            .filter_map(|(slot, c)| c.groups.get(group).map(|n| (slot, *n)))
            .collect()
    }

    fn column(&self, attribute: &str) -> Arc<Column> {
        Arc::new(Column::build(
            self.candidates.iter().map(|c| Some(c.instance)),
            attribute,
        ))
    }

    fn bucket_tasks(&self, _: &str, _: &str, _: &[usize]) -> Option<Vec<u64>> {
        None
    }

    fn verdicts(&self, _expr: &Expr) -> Option<Arc<[bool]>> {
        None
    }
}

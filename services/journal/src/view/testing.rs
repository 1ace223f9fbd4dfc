//! Fixtures of the view's unit tests: a view without a consumer, fed records by hand.

use super::paging::Page;
use super::{Inner, View};
use berth_messages::arn::ArnScope;
use berth_messages::codec;
use berth_messages::model::{ContainerInstance, InstanceStatus, Task, TaskStatus};
use berth_messages::subjects;
use std::sync::Arc;

pub(super) fn detached() -> View {
    View {
        inner: Arc::new(Inner::default()),
        _apply: None,
    }
}

pub(super) struct Feed {
    pub(super) view: View,
    pub(super) seq: u64,
    /// Whether the view counts as caught up (else records arrive during catch-up).
    pub(super) live: bool,
}

impl Feed {
    pub(super) fn new() -> Self {
        Self {
            view: detached(),
            seq: 0,
            live: true,
        }
    }

    /// A feed whose records all arrive during catch-up, until [`Feed::catch_up`].
    pub(super) fn catching_up() -> Self {
        Self {
            live: false,
            ..Self::new()
        }
    }

    pub(super) fn catch_up(&mut self) {
        self.live = true;
        self.view.inner.advance(self.seq, true);
    }

    pub(super) fn put<T: serde::Serialize>(&mut self, subject: &str, record: &T) -> u64 {
        self.seq += 1;
        let payload = codec::encode_record(record).unwrap();
        self.view.inner.apply(subject, &payload, self.seq);
        self.view.inner.advance(self.seq, self.live);
        self.seq
    }
}

#[derive(Clone)]
pub(super) struct TaskSpec {
    pub(super) instance: String,
    pub(super) family: String,
    pub(super) last: TaskStatus,
    pub(super) desired: TaskStatus,
    pub(super) started_by: Option<String>,
    pub(super) group: String,
}

pub(super) fn task(cluster: &str, id: &str, spec: &TaskSpec) -> Task {
    let scope = ArnScope::default();
    Task {
        task_arn: scope.task(cluster, id),
        cluster_arn: scope.cluster(cluster),
        task_definition_arn: scope.task_definition(&spec.family, 1),
        container_instance_arn: scope.container_instance(cluster, &spec.instance),
        last_status: spec.last,
        desired_status: spec.desired,
        started_by: spec.started_by.clone(),
        group: spec.group.clone(),
        ..Default::default()
    }
}

pub(super) fn spec(instance: &str, family: &str, last: TaskStatus) -> TaskSpec {
    TaskSpec {
        instance: instance.into(),
        family: family.into(),
        last,
        desired: TaskStatus::Running,
        started_by: None,
        group: format!("family:{family}"),
    }
}

pub(super) fn put_task(feed: &mut Feed, cluster: &str, id: &str, spec: &TaskSpec) -> u64 {
    feed.put(
        &subjects::task(cluster, &spec.instance, id),
        &task(cluster, id, spec),
    )
}

pub(super) fn instance(cluster: &str, id: &str, status: InstanceStatus) -> ContainerInstance {
    ContainerInstance {
        container_instance_arn: ArnScope::default().container_instance(cluster, id),
        status,
        ..Default::default()
    }
}

/// Every page of a listing, following `next`.
pub(super) fn all_pages<T>(mut page: impl FnMut(Option<&str>) -> Page<T>) -> Vec<Vec<T>> {
    let mut pages = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let p = page(after.as_deref());
        after = p.next.clone();
        pages.push(p.items);
        if after.is_none() {
            return pages;
        }
        assert!(pages.len() < 10_000, "paging does not end");
    }
}

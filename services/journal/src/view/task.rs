//! Task records as the view keeps them: made compact (with the fields the indexes need)
//! when applied, copied out under the lock and decoded outside it when read; the task
//! reads by id and by instance.

use super::scope::ScopeData;
use super::{read, write, Inner, View};
use crate::compact::{CompactError, Field};
use crate::keys::{Sym, TaskKey, NO_SYM};
use crate::Versioned;
use berth_messages::arn;
use berth_messages::codec;
use berth_messages::model::{StopCode, Task, TaskStatus};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A task with the cluster and instance its subject names.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskEntry {
    pub cluster: String,
    pub instance_id: String,
    pub task: Versioned<Task>,
}

/// A task as the view keeps it: the record in compact form and what the indexes need.
pub(super) struct StoredTask {
    pub(super) version: u64,
    /// `stoppedAt` of the record; NaN when it has none.
    pub(super) stopped_at: f64,
    pub(super) record: Box<[u8]>,
    pub(super) instance: Sym,
    pub(super) group: Sym,
    pub(super) family: Sym,
    pub(super) started_by: Sym,
    pub(super) last: TaskStatus,
    pub(super) desired: TaskStatus,
    /// What the service scheduler reads of every task of a service, kept here so that
    /// it never decodes them: `startedAt` (NaN when none), the task's health and its stop
    /// code.
    pub(super) started_at: f64,
    pub(super) health: Option<Health>,
    pub(super) stop_code: Option<StopCode>,
}

/// A task's aggregated health, as its record states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Healthy,
    Unhealthy,
    Unknown,
}

impl Health {
    fn parse(s: &[u8]) -> Option<Health> {
        match s {
            b"HEALTHY" => Some(Health::Healthy),
            b"UNHEALTHY" => Some(Health::Unhealthy),
            b"UNKNOWN" => Some(Health::Unknown),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => berth_messages::model::health::HEALTHY,
            Health::Unhealthy => berth_messages::model::health::UNHEALTHY,
            Health::Unknown => berth_messages::model::health::UNKNOWN,
        }
    }
}

fn parse_stop_code(s: &[u8]) -> Option<StopCode> {
    StopCode::from_name(std::str::from_utf8(s).ok()?)
}

/// A task record made compact outside the view's locks, ready to apply; its strings
/// borrow from the message.
pub(super) struct PreparedTask<'a> {
    pub(super) stored: StoredTask,
    pub(super) instance_id: &'a str,
    pub(super) group: &'a str,
    pub(super) family: Option<&'a str>,
    pub(super) started_by: Option<&'a str>,
}

/// A task record of a batch with its cluster and task id, once prepared.
pub(super) type Prepared<'a> = Option<(&'a str, &'a str, PreparedTask<'a>)>;

/// What a reader copies out of the view to decode a task outside the locks.
pub(super) struct RawTask {
    instance_id: String,
    version: u64,
    record: Box<[u8]>,
}

/// The task status a journal string names.
fn parse_status(s: &[u8]) -> Option<TaskStatus> {
    std::str::from_utf8(s).ok().and_then(TaskStatus::from_name)
}

/// The fields of a task record the view indexes, seen while making it compact.
#[derive(Default)]
struct TaskFields<'a> {
    last: Option<TaskStatus>,
    desired: Option<TaskStatus>,
    group: Option<&'a [u8]>,
    started_by: Option<&'a [u8]>,
    definition: Option<&'a [u8]>,
    stopped_at: Option<f64>,
    started_at: Option<f64>,
    health: Option<Health>,
    stop_code: Option<StopCode>,
    /// Required ARN fields present as strings.
    arns: u8,
}

impl<'a> TaskFields<'a> {
    fn see(&mut self, key: &[u8], value: Field<'a>) {
        match (key, value) {
            (b"lastStatus", Field::Str(s)) => self.last = parse_status(s),
            (b"desiredStatus", Field::Str(s)) => self.desired = parse_status(s),
            (b"group", Field::Str(s)) => self.group = Some(s),
            (b"startedBy", Field::Str(s)) => self.started_by = Some(s),
            (b"stoppedAt", Field::Number(n)) => self.stopped_at = Some(n),
            (b"startedAt", Field::Number(n)) => self.started_at = Some(n),
            (b"healthStatus", Field::Str(s)) => self.health = Health::parse(s),
            (b"stopCode", Field::Str(s)) => self.stop_code = parse_stop_code(s),
            (b"taskDefinitionArn", Field::Str(s)) => {
                self.definition = Some(s);
                self.arns |= 1;
            }
            (b"taskArn", Field::Str(_)) => self.arns |= 2,
            (b"clusterArn", Field::Str(_)) => self.arns |= 4,
            (b"containerInstanceArn", Field::Str(_)) => self.arns |= 8,
            _ => {}
        }
    }
}

/// The family a task definition reference names (as `arn::task_definition_ref` reads it).
fn family_of(definition: &str) -> Option<&str> {
    let body = match arn::split(definition) {
        Some(("task-definition", rest)) => rest,
        Some(_) => return None,
        None => definition,
    };
    match body.split_once(':') {
        Some((family, revision)) => revision
            .parse::<u32>()
            .ok()
            .filter(|r| *r > 0)
            .map(|_| family),
        None => Some(body),
    }
}

/// Makes a task record compact and extracts its indexed fields; `None` (logged) when the
/// record is not a task.
pub(super) fn prepare_task<'a>(
    encoder: &mut crate::compact::Encoder<'_>,
    subject: &str,
    instance_id: &'a str,
    payload: &'a [u8],
    version: u64,
) -> Option<PreparedTask<'a>> {
    let mut fields = TaskFields::default();
    let record = match encoder.compact(payload, |k, v| fields.see(k, v)) {
        Ok(record) => record,
        Err(error) => {
            tracing::warn!(subject, sequence = version, %error, "view skips an undecodable record");
            return None;
        }
    };
    let (Some(last), Some(desired), 15) = (fields.last, fields.desired, fields.arns) else {
        tracing::warn!(
            subject,
            sequence = version,
            "view skips a task record without its required fields"
        );
        return None;
    };
    let text = |s: Option<&'a [u8]>| s.map(std::str::from_utf8).transpose();
    let (Ok(group), Ok(started_by), Ok(Some(definition))) = (
        text(fields.group),
        text(fields.started_by),
        text(fields.definition),
    ) else {
        tracing::warn!(
            subject,
            sequence = version,
            "view skips a task record with invalid text"
        );
        return None;
    };
    Some(PreparedTask {
        stored: StoredTask {
            version,
            stopped_at: fields.stopped_at.unwrap_or(f64::NAN),
            record,
            instance: NO_SYM,
            group: NO_SYM,
            family: NO_SYM,
            started_by: NO_SYM,
            last,
            desired,
            started_at: fields.started_at.unwrap_or(f64::NAN),
            health: fields.health,
            stop_code: fields.stop_code,
        },
        instance_id,
        group: group.unwrap_or_default(),
        family: family_of(definition),
        started_by,
    })
}

impl ScopeData {
    pub(super) fn raw(&self, task: &StoredTask) -> RawTask {
        RawTask {
            instance_id: self.syms.name(task.instance).to_string(),
            version: task.version,
            record: task.record.clone(),
        }
    }
}

impl Inner {
    /// Decodes a task copied out of the view; `None` (logged) if its record is not a task.
    pub(super) fn decode_task(&self, cluster: &str, raw: RawTask) -> Option<Arc<TaskEntry>> {
        let decoded = self
            .interner
            .with_expanded(&raw.record, codec::decode_record::<Task>)
            .map_err(|e: CompactError| e.to_string())
            .and_then(|task| task.map_err(|e| e.to_string()));
        match decoded {
            Ok(mut value) => {
                value.version = Some(raw.version);
                Some(Arc::new(TaskEntry {
                    cluster: cluster.to_string(),
                    instance_id: raw.instance_id,
                    task: Versioned {
                        value,
                        version: raw.version,
                    },
                }))
            }
            Err(error) => {
                tracing::warn!(
                    cluster,
                    instance_id = raw.instance_id,
                    sequence = raw.version,
                    %error,
                    "view cannot decode a task record"
                );
                None
            }
        }
    }
}

impl View {
    pub fn task(&self, cluster: &str, task_id: &str) -> Option<Arc<TaskEntry>> {
        let scope = self.inner.scope(cluster)?;
        let raw = {
            let data = read(&scope.data);
            let task = data.tasks.get(&TaskKey::new(task_id))?;
            data.raw(task)
        };
        self.inner.decode_task(cluster, raw)
    }

    /// [`View::task`] for several ids of one cluster, under one lock.
    pub fn tasks_by_id(
        &self,
        cluster: &str,
        task_ids: &[impl AsRef<str>],
    ) -> Vec<Option<Arc<TaskEntry>>> {
        let Some(scope) = self.inner.scope(cluster) else {
            return vec![None; task_ids.len()];
        };
        let raws: Vec<Option<RawTask>> = {
            let data = read(&scope.data);
            task_ids
                .iter()
                .map(|id| {
                    let key = TaskKey::new(id.as_ref());
                    data.tasks.get(&key).map(|t| data.raw(t))
                })
                .collect()
        };
        raws.into_iter()
            .map(|raw| raw.and_then(|raw| self.inner.decode_task(cluster, raw)))
            .collect()
    }

    /// Drops a task from the view if its record is still at `version` (the journal
    /// subject was purged after the stopped-task retention window; purges are not
    /// delivered to ordered consumers). Every replica applies the same rule.
    pub fn forget_task(&self, cluster: &str, task_id: &str, version: u64) -> bool {
        let Some(scope) = self.inner.scope(cluster) else {
            return false;
        };
        let forgotten = write(&scope.data).forget_task(task_id, version);
        if forgotten {
            self.inner.tasks_len.fetch_sub(1, Ordering::Relaxed);
        }
        forgotten
    }

    /// Every task whose subject names this instance, by task id.
    pub fn tasks_on_instance(&self, cluster: &str, instance_id: &str) -> Vec<Arc<TaskEntry>> {
        let Some(scope) = self.inner.scope(cluster) else {
            return Vec::new();
        };
        let raws = {
            let data = read(&scope.data);
            data.on_instance
                .get(instance_id)
                .map(|on| data.raws(&on.ids))
                .unwrap_or_default()
        };
        self.inner.decode_tasks(cluster, raws)
    }
}

impl ScopeData {
    /// The tasks of a set, copied out to be decoded outside the lock.
    pub(super) fn raws(&self, ids: &super::scope::IdSet) -> Vec<RawTask> {
        ids.iter()
            .filter_map(|id| self.tasks.get(id).map(|t| self.raw(t)))
            .collect()
    }
}

impl Inner {
    /// Decodes tasks copied out of the view, skipping (and logging) what is not a task.
    pub(super) fn decode_tasks(&self, cluster: &str, raws: Vec<RawTask>) -> Vec<Arc<TaskEntry>> {
        raws.into_iter()
            .filter_map(|raw| self.decode_task(cluster, raw))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::TaskFilter;
    use berth_messages::arn::ArnScope;
    use berth_messages::model::TaskStatus;
    use berth_messages::subjects;

    #[test]
    fn task_records_read_back_as_written() {
        let mut feed = Feed::new();
        let mut s = spec("i1", "web", TaskStatus::Running);
        s.started_by = Some("svc/web".into());
        let mut t = task("c", "0123456789abcdef0123456789abcdef", &s);
        t.containers = vec![berth_messages::model::Container {
            container_arn: ArnScope::default().container(
                "c",
                "0123456789abcdef0123456789abcdef",
                "ffffffffffffffffffffffffffffffff",
            ),
            name: "app".into(),
            exit_code: Some(3),
            ..Default::default()
        }];
        t.stopped_reason = Some("x".repeat(500));
        let seq = feed.put(
            &subjects::task("c", "i1", "0123456789abcdef0123456789abcdef"),
            &t,
        );
        let entry = feed
            .view
            .task("c", "0123456789abcdef0123456789abcdef")
            .unwrap();
        t.version = Some(seq);
        assert_eq!(entry.task.value, t);
        assert_eq!(entry.task.version, seq);
        let filter = TaskFilter {
            started_by: Some("svc/web".into()),
            ..Default::default()
        };
        assert_eq!(feed.view.page_tasks("c", &filter, None, 10).items.len(), 1);
        // A map that is not a task (required fields missing) is skipped.
        feed.put(
            &subjects::task("c", "i1", "t2"),
            &berth_messages::model::Tag::default(),
        );
        assert!(feed.view.task("c", "t2").is_none());
        assert_eq!(feed.view.tasks_len(), 1);
    }
}

//! The scheduler's public contract: what a job is ([`Job`]), what it ends with
//! ([`JobOutcome`]), where both travel (the subjects below and the `BERTH_JOBS` work-queue
//! stream) and a small client ([`provision`], [`submit`]). These subjects belong to the
//! scheduler, not to Berth's control plane, so they live here rather than in
//! `berth_messages::subjects`; nothing else in this crate formats a subject.

use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use berth_messages::codec::{self, Encoding};
use berth_messages::model::TaskOverride;
use berth_messages::{headers, validate};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The work-queue stream jobs are submitted to.
pub const STREAM: &str = "BERTH_JOBS";
/// Every job subject (`berth.jobs.<cluster>`); outcome and stats subjects have more
/// tokens, so the stream never captures them.
pub const STREAM_SUBJECTS: &str = "berth.jobs.*";
/// Highest priority; 0 is the lowest and the default.
pub const MAX_PRIORITY: u8 = 9;
/// Most tasks one job may ask for.
pub const MAX_COUNT: u32 = 1000;
/// Tag every task the scheduler starts carries, valued with its job id, so a scheduler
/// that lost track of a job (crash, lost reply) finds what it already started.
pub const JOB_TAG: &str = "berth-priority-scheduler-job";
/// How long the stream de-duplicates a job id (`Nats-Msg-Id`).
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// `berth.jobs.<cluster>`: submit jobs for `cluster` here (JetStream publish).
pub fn subject(cluster: &str) -> String {
    format!("berth.jobs.{cluster}")
}

/// `berth.jobs.<cluster>.outcome.<job-id>`: the job's outcome (core NATS, JSON).
pub fn outcome_subject(cluster: &str, job_id: &str) -> String {
    format!("berth.jobs.{cluster}.outcome.{job_id}")
}

/// `berth.jobs.<cluster>.outcome.*`: every outcome of the cluster's jobs.
pub fn outcomes_of(cluster: &str) -> String {
    format!("berth.jobs.{cluster}.outcome.*")
}

/// `berth.scheduler.<cluster>.stats`: request/reply, answered by every scheduler of the
/// cluster with its [`crate::Stats`] (JSON).
pub fn stats_subject(cluster: &str) -> String {
    format!("berth.scheduler.{cluster}.stats")
}

/// Name of the durable consumer every scheduler of `cluster` shares.
pub fn consumer_name(cluster: &str) -> String {
    format!("berth-priority-scheduler-{cluster}")
}

fn default_count() -> u32 {
    1
}

/// A request to run `count` tasks of a task definition, placed before every job of lower
/// priority. JSON or named MessagePack; field names are camelCase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    /// 1 to 64 letters, digits, `-`, `_`. Also the `Nats-Msg-Id` of the submission.
    pub id: String,
    /// `family`, `family:revision` or a task-definition ARN.
    pub task_definition: String,
    /// 0 (lowest, default) to 9 (highest).
    #[serde(default)]
    pub priority: u8,
    /// Tasks to start (default 1, at most [`MAX_COUNT`]).
    #[serde(default = "default_count")]
    pub count: u32,
    /// The tasks' `startedBy`; the job id when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_by: Option<String>,
    /// The tasks' `group`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overrides: Option<TaskOverride>,
    /// How long the job may wait for capacity before it fails; forever when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wait_seconds: Option<u64>,
}

impl Job {
    /// A job of one task at priority 0.
    pub fn new(id: impl Into<String>, task_definition: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            task_definition: task_definition.into(),
            priority: 0,
            count: 1,
            started_by: None,
            group: None,
            overrides: None,
            max_wait_seconds: None,
        }
    }

    pub fn with_priority(mut self, priority: u8) -> Self {
        self.priority = priority;
        self
    }

    pub fn with_count(mut self, count: u32) -> Self {
        self.count = count;
        self
    }

    /// Checks what the scheduler needs before anything is started.
    pub fn validate(&self) -> Result<(), String> {
        validate::command_id("id", &self.id).map_err(|e| e.message)?;
        if self.task_definition.trim().is_empty() {
            return Err("taskDefinition must not be empty".into());
        }
        if berth_messages::arn::task_definition_ref(&self.task_definition).is_none() {
            return Err(format!(
                "taskDefinition '{}' is not a family, family:revision or task-definition ARN",
                self.task_definition
            ));
        }
        if self.priority > MAX_PRIORITY {
            return Err(format!(
                "priority {} is out of range 0..={MAX_PRIORITY}",
                self.priority
            ));
        }
        if self.count == 0 || self.count > MAX_COUNT {
            return Err(format!(
                "count {} is out of range 1..={MAX_COUNT}",
                self.count
            ));
        }
        if let Some(s) = &self.started_by {
            validate::text("startedBy", s, 128).map_err(|e| e.message)?;
        }
        if let Some(g) = &self.group {
            if g.is_empty() {
                return Err("group must not be empty".into());
            }
            validate::text("group", g, 255).map_err(|e| e.message)?;
        }
        Ok(())
    }

    /// The `startedBy` of the job's tasks.
    pub fn effective_started_by(&self) -> &str {
        self.started_by.as_deref().unwrap_or(&self.id)
    }
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobStatus {
    /// Every task started.
    Placed,
    /// The job will start nothing more; `tasks` lists what it did start.
    Failed,
}

/// One task a job started and the instance the scheduler chose for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlacedTask {
    pub task_arn: String,
    pub container_instance_arn: String,
}

/// Failure reasons of a job besides the ECS ones (`RESOURCE:*`, `MISSING`, `AGENT`,
/// `INACTIVE`, which say what the closest instance lacked when `maxWaitSeconds` ran out)
/// and the ECS error types of a refused API call (`ClientException`, ...).
pub mod reason {
    /// The job itself is malformed (see `detail`).
    pub const INVALID: &str = "INVALID";
    /// Other schedulers kept taking the chosen capacity first, more often than the
    /// scheduler's retry bound allows.
    pub const CONFLICT: &str = "CONFLICT";
    /// `maxWaitSeconds` ran out before the job could even be tried.
    pub const TIMEOUT: &str = "TIMEOUT";
}

/// The one outcome of a job, published as JSON to [`outcome_subject`] (and logged).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobOutcome {
    pub job_id: String,
    pub cluster: String,
    pub status: JobStatus,
    pub priority: u8,
    /// Tasks asked for.
    pub count: u32,
    pub tasks: Vec<PlacedTask>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Placements another writer won first (the StartTask said `RESOURCE:*`).
    pub conflicts: u32,
    /// Placements tried again (after conflicts, a stale view or an unanswered call).
    pub retries: u32,
    /// Seconds from the scheduler receiving the job to this outcome.
    pub waited_seconds: f64,
}

/// A job body that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("job body does not decode: {0}")]
    Decode(#[from] codec::CodecError),
    #[error("invalid job: {0}")]
    Invalid(String),
}

/// Decodes a submitted body: JSON when `Content-Type` says so or, without a content type,
/// when the body starts with `{`; named MessagePack otherwise. Then validates it.
pub fn decode(content_type: Option<&str>, body: &[u8]) -> Result<Job, JobError> {
    let job: Job = codec::decode(encoding_of(content_type, body), body)?;
    job.validate().map_err(JobError::Invalid)?;
    Ok(job)
}

/// The id of a body that does not decode as a [`Job`], when it has a usable one, so its
/// submitter still gets an outcome.
pub fn salvage_id(content_type: Option<&str>, body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: Option<String>,
    }
    let probe: IdOnly = codec::decode(encoding_of(content_type, body), body).ok()?;
    probe.id.filter(|id| validate::command_id("id", id).is_ok())
}

fn encoding_of(content_type: Option<&str>, body: &[u8]) -> Encoding {
    match content_type {
        Some(ct) => Encoding::from_content_type(Some(ct)),
        None if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') => Encoding::Json,
        None => Encoding::MsgPack,
    }
}

/// The configuration of the `BERTH_JOBS` stream: file storage, work-queue retention,
/// de-duplication on `Nats-Msg-Id` for [`DUPLICATE_WINDOW`].
pub fn stream_config(replicas: usize) -> stream::Config {
    stream::Config {
        name: STREAM.to_string(),
        subjects: vec![STREAM_SUBJECTS.to_string()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        duplicate_window: DUPLICATE_WINDOW,
        num_replicas: replicas.max(1),
        ..Default::default()
    }
}

/// Creates or updates the `BERTH_JOBS` stream (idempotent).
pub async fn provision(
    js: &jetstream::Context,
    replicas: usize,
) -> Result<stream::Stream, async_nats::Error> {
    js.create_or_update_stream(stream_config(replicas)).await?;
    Ok(js.get_stream(STREAM).await?)
}

/// Submits a job for `cluster` as JSON with `Nats-Msg-Id` = job id, and waits for the
/// stream to store it. A second submission of the same id within [`DUPLICATE_WINDOW`] is
/// acknowledged as a duplicate and stored once.
pub async fn submit(
    js: &jetstream::Context,
    cluster: &str,
    job: &Job,
) -> Result<jetstream::publish::PublishAck, async_nats::Error> {
    job.validate()?;
    validate::cluster_name(cluster)?;
    let mut h = HeaderMap::new();
    h.insert(headers::MSG_ID, job.id.as_str());
    h.insert(headers::CONTENT_TYPE, headers::JSON);
    let body = serde_json::to_vec(job)?;
    Ok(js
        .publish_with_headers(subject(cluster), h, body.into())
        .await?
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_json_with_defaults_and_msgpack() {
        let job = decode(None, br#" {"id":"j1","taskDefinition":"web:2"}"#).unwrap();
        assert_eq!(job, Job::new("j1", "web:2"));
        assert_eq!(job.effective_started_by(), "j1");
        let full = Job {
            started_by: Some("ci".into()),
            group: Some("batch".into()),
            max_wait_seconds: Some(5),
            ..Job::new("j2", "web").with_priority(9).with_count(3)
        };
        let bytes = codec::encode(Encoding::MsgPack, &full).unwrap();
        assert_eq!(decode(None, &bytes).unwrap(), full);
        let json = serde_json::to_vec(&full).unwrap();
        assert_eq!(decode(Some("application/json"), &json).unwrap(), full);
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["taskDefinition"], "web");
        assert_eq!(v["maxWaitSeconds"], 5);
    }

    #[test]
    fn refuses_bad_jobs() {
        for body in [
            r#"{"id":"a.b","taskDefinition":"web"}"#,
            r#"{"id":"a","taskDefinition":""}"#,
            r#"{"id":"a","taskDefinition":"web:0"}"#,
            r#"{"id":"a","taskDefinition":"web","priority":10}"#,
            r#"{"id":"a","taskDefinition":"web","count":0}"#,
            r#"{"id":"a","taskDefinition":"web","count":1001}"#,
            r#"{"id":"a","taskDefinition":"web","group":""}"#,
        ] {
            assert!(
                matches!(decode(None, body.as_bytes()), Err(JobError::Invalid(_))),
                "{body}"
            );
        }
        assert!(matches!(
            decode(None, br#"{"id":"a"}"#),
            Err(JobError::Decode(_))
        ));
        assert_eq!(
            salvage_id(None, br#"{"id":"a","priority":"high"}"#).as_deref(),
            Some("a")
        );
        assert_eq!(salvage_id(None, br#"{"id":"a b"}"#), None);
        assert_eq!(salvage_id(None, b"garbage"), None);
    }

    #[test]
    fn subjects_do_not_overlap_the_stream() {
        assert_eq!(subject("prod"), "berth.jobs.prod");
        assert_eq!(outcome_subject("prod", "j1"), "berth.jobs.prod.outcome.j1");
        assert_eq!(outcomes_of("prod"), "berth.jobs.prod.outcome.*");
        // `berth.jobs.*` matches exactly three tokens.
        assert_eq!(subject("prod").split('.').count(), 3);
        assert!(outcome_subject("prod", "j1").split('.').count() > 3);
        assert_eq!(stats_subject("prod"), "berth.scheduler.prod.stats");
    }
}

//! Seeding a cluster with many tasks quickly, straight into `BERTH_STATE`, in a shape the
//! control plane and the auditor accept as their own:
//!
//! - seeded tasks live on seeded container instances, [`TASKS_PER_INSTANCE`] per instance
//!   (ACTIVE, `agentConnected` false so placement never picks them, registered with room
//!   for all of them); each instance record's `allocations` holds exactly its tasks, and
//!   `remainingResources` is what is left, as the control plane computes it;
//! - each task record is what RunTask would have written, already RUNNING;
//! - every write is a conditional publish (expected last subject sequence: 0 for a new
//!   subject, the version written before for an instance that grows), pipelined;
//! - every write names one seeding command (`Berth-Command-Id`), and that command gets an
//!   outcome in `BERTH_OUTCOME`, so the auditor's "every command has one outcome" holds.
//!
//! Ids are derived from the run's salt and the task index, so the benchmark names any
//! seeded task without keeping a list.

use anyhow::{bail, Context as _};
use async_nats::jetstream::{self, message::PublishMessage};
use berth_journal::Journal;
use berth_messages::api::AcknowledgmentResponse;
use berth_messages::arn::ArnScope;
use berth_messages::command::{CommandResponse, Outcome};
use berth_messages::model::{
    Allocation, Attribute, Container, ContainerDefinition, ContainerInstance, InstanceStatus,
    Resource, Task, TaskStatus, VersionInfo,
};
use berth_messages::{codec, headers, subjects};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Tasks on each seeded instance.
pub const TASKS_PER_INSTANCE: usize = 100;
/// What each seeded task holds.
const TASK_CPU: i64 = 10;
const TASK_MEMORY: i64 = 16;
/// What each seeded instance registers.
const INSTANCE_CPU: i64 = 4096;
const INSTANCE_MEMORY: i64 = 16384;
/// Publishes awaiting acknowledgement at once.
const WINDOW: usize = 8_192;

/// Names of the seeded entities of one cluster (cheap to clone).
#[derive(Debug, Clone)]
pub struct Names {
    arns: ArnScope,
    cluster: String,
    namespace: uuid::Uuid,
}

impl Names {
    pub fn id(&self, kind: &str, index: usize) -> String {
        uuid::Uuid::new_v5(&self.namespace, format!("{kind}/{index}").as_bytes())
            .simple()
            .to_string()
    }

    pub fn task_arn(&self, index: usize) -> String {
        self.arns.task(&self.cluster, &self.id("task", index))
    }
}

/// Seeded tasks of one cluster.
pub struct Seeder {
    js: jetstream::Context,
    journal: Journal,
    arns: ArnScope,
    cluster: String,
    task_definition_arn: String,
    namespace: uuid::Uuid,
    tasks: usize,
    /// Version of each seeded instance record written so far.
    instance_versions: HashMap<usize, u64>,
    stage: usize,
}

/// What one call to [`Seeder::seed_to`] did.
#[derive(Debug, Clone, Default)]
pub struct SeedReport {
    pub tasks_written: usize,
    pub instances_written: usize,
    pub elapsed: Duration,
    /// Highest journal sequence written (what a view must reach).
    pub last_sequence: u64,
}

impl Seeder {
    pub fn new(
        journal: Journal,
        client: &async_nats::Client,
        cluster: &str,
        task_definition_arn: &str,
    ) -> Self {
        let js = jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(60))
            .max_ack_inflight(WINDOW + 1)
            .build(client.clone());
        Self {
            js,
            journal,
            arns: ArnScope::default(),
            cluster: cluster.to_string(),
            task_definition_arn: task_definition_arn.to_string(),
            namespace: uuid::Uuid::new_v4(),
            tasks: 0,
            instance_versions: HashMap::new(),
            stage: 0,
        }
    }

    /// Tasks seeded so far.
    pub fn tasks(&self) -> usize {
        self.tasks
    }

    pub fn names(&self) -> Names {
        Names {
            arns: self.arns.clone(),
            cluster: self.cluster.clone(),
            namespace: self.namespace,
        }
    }

    pub fn task_id(&self, index: usize) -> String {
        self.id("task", index)
    }

    pub fn task_arn(&self, index: usize) -> String {
        self.arns.task(&self.cluster, &self.task_id(index))
    }

    fn id(&self, kind: &str, index: usize) -> String {
        uuid::Uuid::new_v5(&self.namespace, format!("{kind}/{index}").as_bytes())
            .simple()
            .to_string()
    }

    /// Seeds tasks until the cluster holds `total` seeded tasks.
    pub async fn seed_to(&mut self, total: usize) -> anyhow::Result<SeedReport> {
        let started = Instant::now();
        if total <= self.tasks {
            return Ok(SeedReport::default());
        }
        self.stage += 1;
        let command_id = format!("bench-seed-{}-{}", self.namespace.simple(), self.stage);
        let first_instance = self.tasks / TASKS_PER_INSTANCE;
        let last_instance = (total - 1) / TASKS_PER_INSTANCE;
        let now = berth_messages::now_epoch_seconds();
        let mut inflight = FuturesUnordered::new();
        let mut report = SeedReport::default();
        for instance in first_instance..=last_instance {
            let holds =
                instance * TASKS_PER_INSTANCE..((instance + 1) * TASKS_PER_INSTANCE).min(total);
            let instance_id = self.id("instance", instance);
            let record = self.instance_record(instance, holds.clone(), now);
            let expected = self.instance_versions.get(&instance).copied().unwrap_or(0);
            // Acknowledgements complete only when polled: settle some before taking
            // another publish permit, or the context's permits run out.
            while inflight.len() >= WINDOW {
                self.settle(inflight.next().await, &mut report)?;
            }
            let ack = self
                .publish(
                    subjects::instance(&self.cluster, &instance_id),
                    codec::encode_record(&record)?,
                    expected,
                    &command_id,
                )
                .await?;
            inflight.push(acked(Some(instance), ack));
            report.instances_written += 1;
            let already = self.tasks;
            for index in holds.filter(|i| *i >= already) {
                let task_id = self.task_id(index);
                let task = self.task_record(&task_id, &instance_id, now);
                while inflight.len() >= WINDOW {
                    self.settle(inflight.next().await, &mut report)?;
                }
                let ack = self
                    .publish(
                        subjects::task(&self.cluster, &instance_id, &task_id),
                        codec::encode_record(&task)?,
                        0,
                        &command_id,
                    )
                    .await?;
                inflight.push(acked(None, ack));
                report.tasks_written += 1;
            }
        }
        while let Some(done) = inflight.next().await {
            self.settle(Some(done), &mut report)?;
        }
        self.tasks = total;
        let outcome = Outcome {
            command_id: command_id.clone(),
            action: "BenchSeed".into(),
            cluster: self.cluster.clone(),
            response: Some(CommandResponse::Acknowledgment(AcknowledgmentResponse {
                acknowledgment: format!("seeded {} tasks", report.tasks_written),
            })),
            error: None,
            completed_at: berth_messages::now_epoch_seconds(),
            journal_sequence: report.last_sequence,
            request_digest: None,
        };
        self.journal
            .record_outcome(outcome)
            .await
            .context("recording the seeding command's outcome")?;
        report.elapsed = started.elapsed();
        Ok(report)
    }

    async fn publish(
        &self,
        subject: String,
        payload: Vec<u8>,
        expected: u64,
        command_id: &str,
    ) -> anyhow::Result<jetstream::context::PublishAckFuture> {
        let message = PublishMessage::build()
            .payload(payload.into())
            .expected_last_subject_sequence(expected)
            .header(headers::COMMAND_ID, command_id);
        self.js
            .send_publish(subject, message)
            .await
            .context("seeding publish")
    }

    fn settle(&mut self, done: Option<Acked>, report: &mut SeedReport) -> anyhow::Result<()> {
        match done {
            Some((instance, Ok(ack))) => {
                if let Some(instance) = instance {
                    self.instance_versions.insert(instance, ack.sequence);
                }
                report.last_sequence = report.last_sequence.max(ack.sequence);
                Ok(())
            }
            Some((_, Err(e))) => bail!("seeding write failed: {e}"),
            None => bail!("seeding writes ended early"),
        }
    }

    fn instance_record(
        &self,
        instance: usize,
        holds: std::ops::Range<usize>,
        now: f64,
    ) -> ContainerInstance {
        let allocations: std::collections::BTreeMap<String, Allocation> = holds
            .map(|index| (self.task_id(index), allocation()))
            .collect();
        let used = allocations.len() as i64;
        let id = self.id("instance", instance);
        let ports = |reserved: &[&str]| reserved.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        ContainerInstance {
            container_instance_arn: self.arns.container_instance(&self.cluster, &id),
            ec2_instance_id: id,
            version_info: VersionInfo {
                agent_version: Some(concat!("berth-bench seed ", env!("CARGO_PKG_VERSION")).into()),
                ..Default::default()
            },
            registered_resources: vec![
                Resource::integer(Resource::CPU, INSTANCE_CPU),
                Resource::integer(Resource::MEMORY, INSTANCE_MEMORY),
                Resource::string_set(Resource::PORTS, ports(&["22"])),
                Resource::string_set(Resource::PORTS_UDP, ports(&[])),
            ],
            remaining_resources: vec![
                Resource::integer(Resource::CPU, INSTANCE_CPU - used * TASK_CPU),
                Resource::integer(Resource::MEMORY, INSTANCE_MEMORY - used * TASK_MEMORY),
                Resource::string_set(Resource::PORTS, ports(&["22"])),
                Resource::string_set(Resource::PORTS_UDP, ports(&[])),
            ],
            status: InstanceStatus::Active,
            agent_connected: false,
            attributes: vec![
                Attribute {
                    name: "ecs.os-type".into(),
                    value: Some("linux".into()),
                    ..Default::default()
                },
                Attribute {
                    name: "berth.bench".into(),
                    value: Some("seeded".into()),
                    ..Default::default()
                },
            ],
            registered_at: now,
            allocations,
            ..Default::default()
        }
    }

    fn task_record(&self, task_id: &str, instance_id: &str, now: f64) -> Task {
        let task_arn = self.arns.task(&self.cluster, task_id);
        let container_id = uuid::Uuid::new_v5(&self.namespace, task_id.as_bytes())
            .simple()
            .to_string();
        Task {
            task_arn: task_arn.clone(),
            cluster_arn: self.arns.cluster(&self.cluster),
            task_definition_arn: self.task_definition_arn.clone(),
            container_instance_arn: self.arns.container_instance(&self.cluster, instance_id),
            last_status: TaskStatus::Running,
            desired_status: TaskStatus::Running,
            containers: vec![Container {
                container_arn: self.arns.container(&self.cluster, task_id, &container_id),
                task_arn,
                name: "app".into(),
                image: Some("busybox".into()),
                last_status: "RUNNING".into(),
                cpu: Some(TASK_CPU.to_string()),
                memory: Some(TASK_MEMORY.to_string()),
                ..Default::default()
            }],
            group: "family:bench-seed".into(),
            started_by: Some("berth-bench".into()),
            created_at: now,
            started_at: Some(now),
            cpu: Some(TASK_CPU.to_string()),
            memory: Some(TASK_MEMORY.to_string()),
            launch_type: "EC2".into(),
            allocation: allocation(),
            ..Default::default()
        }
    }
}

type Acked = (
    Option<usize>,
    Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
);

/// The acknowledgement of a seeding write, tagged with the instance it wrote (if any).
async fn acked(instance: Option<usize>, ack: jetstream::context::PublishAckFuture) -> Acked {
    (instance, ack.await)
}

fn allocation() -> Allocation {
    Allocation {
        cpu: TASK_CPU,
        memory: TASK_MEMORY,
        ports: Vec::new(),
        ports_udp: Vec::new(),
        group: None,
        claim: None,
    }
}

/// The task definition seeded tasks claim to run (registered through the API).
pub fn task_definition_request() -> berth_messages::api::RegisterTaskDefinitionRequest {
    definition("bench-seed", TASK_CPU, TASK_MEMORY, Vec::new())
}

/// A one-container task definition request.
pub fn definition(
    family: &str,
    cpu: i64,
    memory: i64,
    command: Vec<String>,
) -> berth_messages::api::RegisterTaskDefinitionRequest {
    berth_messages::api::RegisterTaskDefinitionRequest {
        family: family.to_string(),
        container_definitions: vec![ContainerDefinition {
            name: "app".into(),
            image: Some("busybox".into()),
            cpu,
            memory: Some(memory),
            essential: Some(true),
            command,
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definition_requests_decode() {
        let r = definition("bench-proc", 1, 8, vec!["sleep".into(), "0.2".into()]);
        assert_eq!(r.family, "bench-proc");
        let json = serde_json::to_value(&r).expect("encodes");
        assert_eq!(json["containerDefinitions"][0]["command"][1], "0.2");
        assert_eq!(json["containerDefinitions"][0]["memory"], 8);
    }
}

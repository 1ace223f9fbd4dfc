//! ECS objects as Berth stores them in the journal and returns them from the API. Field
//! names are the ECS API's (camelCase). Fields that only Berth uses are marked as
//! internal. Derived values (counters, `version`) are `None` in journal records and
//! filled in by readers: a counter stored in a record would be stale the moment another
//! entity changed.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `{name, value}` pairs (environment, statistics, settings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct KeyValuePair {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Tag {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// A resource of a container instance: CPU and MEMORY are integers, PORTS and
/// PORTS_UDP string sets (registered: reserved ports; remaining: ports in use).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Resource {
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub resource_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub double_value: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub long_value: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integer_value: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub string_set_value: Vec<String>,
}

impl Resource {
    pub const CPU: &'static str = "CPU";
    pub const MEMORY: &'static str = "MEMORY";
    pub const PORTS: &'static str = "PORTS";
    pub const PORTS_UDP: &'static str = "PORTS_UDP";

    pub fn integer(name: &str, value: i64) -> Self {
        Self {
            name: name.into(),
            resource_type: "INTEGER".into(),
            integer_value: Some(value),
            ..Default::default()
        }
    }

    pub fn string_set(name: &str, values: impl IntoIterator<Item = String>) -> Self {
        Self {
            name: name.into(),
            resource_type: "STRINGSET".into(),
            string_set_value: values.into_iter().collect(),
            ..Default::default()
        }
    }

    /// The numeric value whatever its type.
    pub fn number(&self) -> Option<i64> {
        self.integer_value
            .or(self.long_value)
            .or(self.double_value.map(|d| d as i64))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Attribute {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct VersionInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_version: Option<String>,
}

/// A per-item failure of a batch action (`failures[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Failure {
    pub fn new(arn: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            arn: Some(arn.into()),
            reason: Some(reason.into()),
            detail: None,
        }
    }
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
}

/// ECS failure reasons.
pub mod reason {
    pub const MISSING: &str = "MISSING";
    pub const INACTIVE: &str = "INACTIVE";
    pub const AGENT: &str = "AGENT";
    pub const RESOURCE_CPU: &str = "RESOURCE:CPU";
    pub const RESOURCE_MEMORY: &str = "RESOURCE:MEMORY";
    pub const RESOURCE_PORTS: &str = "RESOURCE:PORTS";
    pub const RESOURCE_PORTS_UDP: &str = "RESOURCE:PORTS_UDP";
    pub const ATTRIBUTE: &str = "ATTRIBUTE";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClusterStatus {
    #[default]
    Active,
    Provisioning,
    Deprovisioning,
    Failed,
    Inactive,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Cluster {
    pub cluster_arn: String,
    pub cluster_name: String,
    #[serde(default)]
    pub status: ClusterStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered_container_instances_count: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_tasks_count: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_tasks_count: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_services_count: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub statistics: Vec<KeyValuePair>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub settings: Vec<KeyValuePair>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InstanceStatus {
    #[default]
    Active,
    Draining,
    Inactive,
    Registering,
    Deregistering,
    RegistrationFailed,
}

impl InstanceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
            Self::Draining => "DRAINING",
            Self::Inactive => "INACTIVE",
            Self::Registering => "REGISTERING",
            Self::Deregistering => "DEREGISTERING",
            Self::RegistrationFailed => "REGISTRATION_FAILED",
        }
    }
}

/// Resources one task holds on its instance (internal to the instance record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Allocation {
    pub cpu: i64,
    pub memory: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports_udp: Vec<u16>,
    /// The task's group, kept in the instance record's copy only, so that the conditional
    /// write that places a task with distinctInstance can check the instance holds no other
    /// task of its group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The claim (delivery of its command) that made this allocation, kept in the
    /// instance record's copy only and only past the first delivery (absent means 1), so
    /// the auditor can check that no allocation lands under a claim already fenced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<u32>,
}

/// A command whose earlier claims are void on this instance: an allocation made under a
/// claim below `claim` is refused (see "Fencing" in ARCHITECTURE.md).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Fence {
    /// The lowest claim (delivery count) of the command still allowed to allocate here.
    pub claim: u32,
    /// When the fence was raised (seconds since the epoch); fences older than the
    /// outcome retention are dropped.
    pub at: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ContainerInstance {
    pub container_instance_arn: String,
    #[serde(default)]
    pub ec2_instance_id: String,
    /// The journal sequence of this record; set by readers, never stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(default)]
    pub version_info: VersionInfo,
    #[serde(default)]
    pub registered_resources: Vec<Resource>,
    #[serde(default)]
    pub remaining_resources: Vec<Resource>,
    #[serde(default)]
    pub status: InstanceStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    #[serde(default)]
    pub agent_connected: bool,
    /// The agent's own health (ECS `healthStatus`): IMPAIRED while it cannot follow its
    /// tasks, so an operator sees it and placement passes it by. Absent until reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_status: Option<InstanceHealthStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_tasks_count: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_tasks_count: Option<i64>,
    #[serde(default)]
    pub attributes: Vec<Attribute>,
    #[serde(default)]
    pub registered_at: f64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
    /// Internal: what each non-stopped task holds here, by task id. The conditional write
    /// of this map is the placement decision.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub allocations: BTreeMap<String, Allocation>,
    /// Internal: by command id, the claims fenced off this instance by a later delivery of
    /// the command (written only when a command is redelivered).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fenced_commands: BTreeMap<String, Fence>,
}

/// ECS `ContainerInstanceHealthStatus`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct InstanceHealthStatus {
    /// `OK`, `IMPAIRED`, `INSUFFICIENT_DATA` or `INITIALIZING`.
    pub overall_status: String,
    #[serde(default)]
    pub details: Vec<InstanceHealthCheckResult>,
}

/// ECS `InstanceHealthCheckResult`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct InstanceHealthCheckResult {
    /// `CONTAINER_RUNTIME`: the agent and what it runs containers with.
    #[serde(rename = "type")]
    pub check_type: String,
    pub status: String,
    /// Seconds since the epoch.
    #[serde(default)]
    pub last_updated: f64,
    /// Seconds since the epoch.
    #[serde(default)]
    pub last_status_change: f64,
}

impl InstanceHealthStatus {
    pub const OK: &'static str = "OK";
    pub const IMPAIRED: &'static str = "IMPAIRED";
    pub const CONTAINER_RUNTIME: &'static str = "CONTAINER_RUNTIME";

    /// One CONTAINER_RUNTIME check with `status`, changed at `at` (epoch seconds).
    pub fn runtime(status: &str, at: f64) -> Self {
        Self {
            overall_status: status.to_string(),
            details: vec![InstanceHealthCheckResult {
                check_type: Self::CONTAINER_RUNTIME.into(),
                status: status.to_string(),
                last_updated: at,
                last_status_change: at,
            }],
        }
    }
}

impl ContainerInstance {
    /// Whether the agent reported it cannot do its work (see `health_status`).
    pub fn is_impaired(&self) -> bool {
        self.health_status
            .as_ref()
            .is_some_and(|h| h.overall_status == InstanceHealthStatus::IMPAIRED)
    }

    /// A copy to edit and write again, without what every write recomputes
    /// (`remainingResources`) or never stores (`version` and the task counters): the
    /// instance writer copies the record it shares with the view once per write.
    pub fn clone_for_update(&self) -> Self {
        Self {
            container_instance_arn: self.container_instance_arn.clone(),
            ec2_instance_id: self.ec2_instance_id.clone(),
            version: None,
            version_info: self.version_info.clone(),
            registered_resources: self.registered_resources.clone(),
            remaining_resources: Vec::new(),
            status: self.status,
            status_reason: self.status_reason.clone(),
            agent_connected: self.agent_connected,
            health_status: self.health_status.clone(),
            running_tasks_count: None,
            pending_tasks_count: None,
            attributes: self.attributes.clone(),
            registered_at: self.registered_at,
            tags: self.tags.clone(),
            allocations: self.allocations.clone(),
            fenced_commands: self.fenced_commands.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskDefinitionStatus {
    #[default]
    Active,
    Inactive,
    DeleteInProgress,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_port: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
}

impl PortMapping {
    pub fn is_udp(&self) -> bool {
        self.protocol.as_deref() == Some("udp")
    }
}

/// A container's health check (ECS `HealthCheck`). `command` starts with `CMD` (the rest
/// is run directly) or `CMD-SHELL` (the rest is run by `/bin/sh -c`); times in seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<i64>,
}

impl HealthCheck {
    /// ECS's defaults and bounds: (default, min, max) of each setting.
    pub const INTERVAL: (i64, i64, i64) = (30, 5, 300);
    pub const TIMEOUT: (i64, i64, i64) = (5, 2, 60);
    pub const RETRIES: (i64, i64, i64) = (3, 1, 10);
    pub const START_PERIOD: (i64, i64, i64) = (0, 0, 300);

    pub fn interval_seconds(&self) -> i64 {
        self.interval.unwrap_or(Self::INTERVAL.0)
    }
    pub fn timeout_seconds(&self) -> i64 {
        self.timeout.unwrap_or(Self::TIMEOUT.0)
    }
    pub fn retries_count(&self) -> i64 {
        self.retries.unwrap_or(Self::RETRIES.0)
    }
    pub fn start_period_seconds(&self) -> i64 {
        self.start_period.unwrap_or(Self::START_PERIOD.0)
    }

    /// The program and arguments the check runs, or why the command is not valid.
    pub fn argv(&self) -> Result<Vec<String>, String> {
        match self.command.split_first() {
            Some((kind, rest)) if kind == "CMD" && !rest.is_empty() => Ok(rest.to_vec()),
            Some((kind, rest)) if kind == "CMD-SHELL" && !rest.is_empty() => {
                Ok(vec!["/bin/sh".into(), "-c".into(), rest.join(" ")])
            }
            _ => Err(
                "healthCheck command must be [\"CMD\", program, args...] or [\"CMD-SHELL\", \
                 command]"
                    .into(),
            ),
        }
    }
}

/// Health statuses of containers and tasks (ECS `HealthStatus`).
pub mod health {
    pub const HEALTHY: &str = "HEALTHY";
    pub const UNHEALTHY: &str = "UNHEALTHY";
    pub const UNKNOWN: &str = "UNKNOWN";
    pub const ALL: [&str; 3] = [HEALTHY, UNHEALTHY, UNKNOWN];
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ContainerDependency {
    pub container_name: String,
    pub condition: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ContainerDefinition {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default)]
    pub cpu: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_reservation: Option<i64>,
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub essential: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entry_point: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default)]
    pub environment: Vec<KeyValuePair>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_directory: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<ContainerDependency>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_timeout: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_timeout: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<String>,
    #[serde(default)]
    pub mount_points: Vec<serde_json::Value>,
    #[serde(default)]
    pub volumes_from: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_configuration: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub docker_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ulimits: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privileged: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readonly_root_filesystem: Option<bool>,
}

impl ContainerDefinition {
    /// Essential unless said otherwise (ECS default).
    pub fn is_essential(&self) -> bool {
        self.essential.unwrap_or(true)
    }
    /// Memory that placement reserves: memoryReservation if set, else memory.
    pub fn reserved_memory(&self) -> i64 {
        self.memory_reservation.or(self.memory).unwrap_or(0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct PlacementConstraint {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub constraint_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct PlacementStrategy {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub strategy_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct TaskDefinition {
    pub task_definition_arn: String,
    pub family: String,
    pub revision: u32,
    #[serde(default)]
    pub status: TaskDefinitionStatus,
    #[serde(default)]
    pub container_definitions: Vec<ContainerDefinition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_mode: Option<String>,
    #[serde(default)]
    pub volumes: Vec<serde_json::Value>,
    #[serde(default)]
    pub placement_constraints: Vec<PlacementConstraint>,
    #[serde(default)]
    pub requires_attributes: Vec<Attribute>,
    #[serde(default)]
    pub compatibilities: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires_compatibilities: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_role_arn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_role_arn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipc_mode: Option<String>,
    #[serde(default)]
    pub registered_at: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deregistered_at: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered_by: Option<String>,
    /// Internal: tags given at registration (returned beside the definition).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
}

/// The revision counter of a family: `berth.state.taskdef.<family>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct TaskDefinitionFamily {
    pub family: String,
    pub last_revision: u32,
    /// The command that took `last_revision`, so a redelivered registration reuses it.
    #[serde(default)]
    pub last_command_id: String,
}

/// The ECS task lifecycle, in order: `lastStatus` only moves forward.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskStatus {
    Provisioning,
    #[default]
    Pending,
    Activating,
    Running,
    Deactivating,
    Stopping,
    Deprovisioning,
    Stopped,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 8] = [
        Self::Provisioning,
        Self::Pending,
        Self::Activating,
        Self::Running,
        Self::Deactivating,
        Self::Stopping,
        Self::Deprovisioning,
        Self::Stopped,
    ];

    /// The status an ECS string names (`RUNNING`, ...).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Provisioning => "PROVISIONING",
            Self::Pending => "PENDING",
            Self::Activating => "ACTIVATING",
            Self::Running => "RUNNING",
            Self::Deactivating => "DEACTIVATING",
            Self::Stopping => "STOPPING",
            Self::Deprovisioning => "DEPROVISIONING",
            Self::Stopped => "STOPPED",
        }
    }
    /// Counted as pending in cluster and instance counters.
    pub fn is_pending(self) -> bool {
        self < Self::Running
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StopCode {
    TaskFailedToStart,
    EssentialContainerExited,
    UserInitiated,
    ServiceSchedulerInitiated,
    SpotInterruption,
    TerminationNotice,
}

impl StopCode {
    pub const ALL: [StopCode; 6] = [
        Self::TaskFailedToStart,
        Self::EssentialContainerExited,
        Self::UserInitiated,
        Self::ServiceSchedulerInitiated,
        Self::SpotInterruption,
        Self::TerminationNotice,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::TaskFailedToStart => "TaskFailedToStart",
            Self::EssentialContainerExited => "EssentialContainerExited",
            Self::UserInitiated => "UserInitiated",
            Self::ServiceSchedulerInitiated => "ServiceSchedulerInitiated",
            Self::SpotInterruption => "SpotInterruption",
            Self::TerminationNotice => "TerminationNotice",
        }
    }

    /// The stop code an ECS string names.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct NetworkBinding {
    #[serde(rename = "bindIP", default, skip_serializing_if = "Option::is_none")]
    pub bind_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_port: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    pub container_arn: String,
    pub task_arn: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_id: Option<String>,
    #[serde(default)]
    pub last_status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default)]
    pub network_bindings: Vec<NetworkBinding>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_reservation: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ContainerOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub environment: Vec<KeyValuePair>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_reservation: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct TaskOverride {
    #[serde(default)]
    pub container_overrides: Vec<ContainerOverride>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_role_arn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_role_arn: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    pub task_arn: String,
    pub cluster_arn: String,
    pub task_definition_arn: String,
    pub container_instance_arn: String,
    pub last_status: TaskStatus,
    pub desired_status: TaskStatus,
    #[serde(default)]
    pub containers: Vec<Container>,
    #[serde(default)]
    pub overrides: TaskOverride,
    #[serde(default)]
    pub group: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_by: Option<String>,
    /// The journal sequence of this record; set by readers, never stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(default)]
    pub created_at: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_started_at: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_stopped_at: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopping_at: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_stopped_at: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_code: Option<StopCode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    #[serde(default)]
    pub launch_type: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
    /// Set when a container of the task has a health check: HEALTHY once every essential
    /// container with one is HEALTHY, UNHEALTHY once any is, else UNKNOWN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_status: Option<String>,
    /// Internal: what the task holds on its instance (mirrors the instance record).
    #[serde(default)]
    pub allocation: Allocation,
}

impl Task {
    /// The task as the API shows it: with its version, and ECS's UNKNOWN health on the
    /// task and on containers where no health check set one (journal records leave it
    /// out).
    pub fn presented(mut self, version: u64) -> Task {
        self.version = Some(version);
        self.health_status
            .get_or_insert_with(|| health::UNKNOWN.to_string());
        for c in &mut self.containers {
            c.health_status
                .get_or_insert_with(|| health::UNKNOWN.to_string());
        }
        self
    }

    /// The task's health from its containers' (ECS: HEALTHY only if every essential
    /// container with a health check is HEALTHY, UNHEALTHY if any is UNHEALTHY, else
    /// UNKNOWN); `None` when no container has a health check.
    pub fn aggregate_health(&self, is_essential: impl Fn(&str) -> bool) -> Option<&'static str> {
        let mut any = false;
        let mut all_healthy = true;
        for c in &self.containers {
            let Some(status) = c.health_status.as_deref() else {
                continue;
            };
            any = true;
            if !is_essential(&c.name) {
                continue;
            }
            if status == health::UNHEALTHY {
                return Some(health::UNHEALTHY);
            }
            all_healthy &= status == health::HEALTHY;
        }
        any.then_some(if all_healthy {
            health::HEALTHY
        } else {
            health::UNKNOWN
        })
    }
}

#[cfg(test)]
mod tests;

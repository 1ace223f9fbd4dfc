//! ECS services: the journal record on `berth.state.<cluster>.service.<name>` (named
//! MessagePack with ECS field names), the API's request and response bodies, and the
//! arithmetic of ECS's deployment bounds, in one place so that the control plane, the
//! auditor and clients agree on each.
//!
//! `runningCount` and `pendingCount` (of the service and of each deployment) are never
//! stored: readers derive them from the tasks the view holds. The fields marked internal
//! are the service scheduler's own bookkeeping and are removed by [`Service::presented`].

use crate::model::{PlacementConstraint, PlacementStrategy, Tag};
use serde::{Deserialize, Serialize};

/// A service's status: ACTIVE, then DRAINING once deleted, INACTIVE once its tasks are
/// gone (still described for a while, as ECS does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServiceStatus {
    #[default]
    Active,
    Draining,
    Inactive,
}

impl ServiceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
            Self::Draining => "DRAINING",
            Self::Inactive => "INACTIVE",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SchedulingStrategy {
    #[default]
    Replica,
    Daemon,
}

impl SchedulingStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Replica => "REPLICA",
            Self::Daemon => "DAEMON",
        }
    }
}

/// `deploymentController`; Berth runs the ECS (rolling) controller only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentController {
    #[serde(rename = "type")]
    pub controller_type: String,
}

impl Default for DeploymentController {
    fn default() -> Self {
        Self {
            controller_type: "ECS".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentCircuitBreaker {
    pub enable: bool,
    pub rollback: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentConfiguration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_circuit_breaker: Option<DeploymentCircuitBreaker>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum_percent: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_healthy_percent: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeploymentStatus {
    #[default]
    Primary,
    Active,
    Inactive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RolloutState {
    #[default]
    InProgress,
    Completed,
    Failed,
}

impl RolloutState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InProgress => "IN_PROGRESS",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
        }
    }
}

/// One deployment of a service: the tasks started by its id run its task definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    /// `ecs-svc/<19 digits>`: the `startedBy` of its tasks.
    pub id: String,
    pub status: DeploymentStatus,
    pub task_definition: String,
    pub desired_count: i64,
    /// Derived by readers.
    #[serde(default)]
    pub pending_count: i64,
    /// Derived by readers.
    #[serde(default)]
    pub running_count: i64,
    #[serde(default)]
    pub failed_tasks: i64,
    pub created_at: f64,
    pub updated_at: f64,
    #[serde(default)]
    pub launch_type: String,
    #[serde(default)]
    pub rollout_state: RolloutState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_state_reason: Option<String>,
    /// Internal: tasks of this deployment that stopped before they ever ran (the restart
    /// throttle; reset when the deployment completes), and when its next launch may
    /// happen.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_failures: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttled_until: Option<f64>,
    /// Internal: the tasks counted in `failedTasks`, so that a task is counted once
    /// (kept up to the circuit breaker's largest threshold).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_task_ids: Vec<String>,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEvent {
    pub id: String,
    pub created_at: f64,
    pub message: String,
}

/// Internal: a step of the service scheduler in flight. Its effects are API commands
/// whose ids derive from the step id, so any replica can finish a step another one began
/// (see "Services" in ARCHITECTURE.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStep {
    pub id: String,
    pub started_at: f64,
    /// The most non-stopped tasks the service may have while the step runs: the
    /// maximumPercent bound of the desired count it was planned for (the auditor's bound
    /// for the tasks it launches, whatever the desired count becomes meanwhile).
    #[serde(default)]
    pub ceiling: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub launches: Vec<StepLaunch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stops: Vec<StepStop>,
}

/// Tasks to launch for a deployment: on any instance (REPLICA) or on the instances named
/// (DAEMON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct StepLaunch {
    pub deployment_id: String,
    pub task_definition: String,
    #[serde(default)]
    pub count: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub container_instances: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct StepStop {
    pub task_id: String,
    pub reason: String,
}

/// Most events a service keeps (ECS: the latest 100).
pub const MAX_EVENTS: usize = 100;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    pub service_arn: String,
    pub service_name: String,
    pub cluster_arn: String,
    pub status: ServiceStatus,
    pub desired_count: i64,
    /// Derived by readers.
    #[serde(default)]
    pub running_count: i64,
    /// Derived by readers.
    #[serde(default)]
    pub pending_count: i64,
    #[serde(default)]
    pub launch_type: String,
    pub task_definition: String,
    #[serde(default)]
    pub deployment_configuration: DeploymentConfiguration,
    #[serde(default)]
    pub deployments: Vec<Deployment>,
    /// Newest first.
    #[serde(default)]
    pub events: Vec<ServiceEvent>,
    #[serde(default)]
    pub placement_constraints: Vec<PlacementConstraint>,
    #[serde(default)]
    pub placement_strategy: Vec<PlacementStrategy>,
    #[serde(default)]
    pub scheduling_strategy: SchedulingStrategy,
    #[serde(default)]
    pub deployment_controller: DeploymentController,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_grace_period_seconds: Option<i64>,
    pub created_at: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub propagate_tags: Option<String>,
    #[serde(default)]
    pub enable_execute_command: bool,
    /// The journal sequence of this record; set by readers, never stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Internal: digest of the CreateService parameters (a repeated identical create
    /// returns the service; different parameters are refused).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub creation_digest: String,
    /// Internal: the step in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<ServiceStep>,
    /// Internal: when the steady-state event was last written (ECS repeats it at most
    /// every 6 hours).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steady_since: Option<f64>,
    /// Internal: the command that last changed the service through the API, so that a
    /// redelivered UpdateService does not make a second deployment.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_command_id: String,
    /// Internal: the task definition of the last deployment that COMPLETED (what a
    /// circuit breaker rolls back to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_task_definition: Option<String>,
    /// Internal: after a step some of whose tasks could not be placed, no launch before
    /// this time (so that a cluster without room is not asked again at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_launch_at: Option<f64>,
    /// Internal: the deployment counter, so that ids minted by any replica differ.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub deployments_made: u64,
}

impl Service {
    /// The service as DescribeServices shows it: internal fields removed, the version set.
    pub fn presented(mut self, version: u64) -> Self {
        self.version = Some(version);
        self.creation_digest.clear();
        self.last_command_id.clear();
        self.stable_task_definition = None;
        self.retry_launch_at = None;
        self.step = None;
        self.steady_since = None;
        self.deployments_made = 0;
        for d in &mut self.deployments {
            d.start_failures = 0;
            d.throttled_until = None;
            d.failed_task_ids.clear();
        }
        self
    }

    pub fn primary(&self) -> Option<&Deployment> {
        self.deployments
            .iter()
            .find(|d| d.status == DeploymentStatus::Primary)
    }

    pub fn primary_mut(&mut self) -> Option<&mut Deployment> {
        self.deployments
            .iter_mut()
            .find(|d| d.status == DeploymentStatus::Primary)
    }

    /// Deployments that may still own tasks (PRIMARY and ACTIVE).
    pub fn live_deployments(&self) -> impl Iterator<Item = &Deployment> {
        self.deployments
            .iter()
            .filter(|d| d.status != DeploymentStatus::Inactive)
    }

    /// Adds an event at the front, keeping the latest [`MAX_EVENTS`].
    pub fn push_event(&mut self, id: String, at: f64, message: String) {
        self.events.insert(
            0,
            ServiceEvent {
                id,
                created_at: at,
                message,
            },
        );
        self.events.truncate(MAX_EVENTS);
    }

    /// `(service <name>)`, the prefix of every ECS service event.
    pub fn event_subject(&self) -> String {
        format!("(service {})", self.service_name)
    }

    /// Starts a new PRIMARY deployment of `task_definition`; the previous PRIMARY becomes
    /// ACTIVE (until its tasks are gone) and INACTIVE ones are dropped; a previous PRIMARY
    /// that COMPLETED is what a circuit breaker rolls back to. Returns its id.
    pub fn start_deployment(&mut self, task_definition: &str, now: f64) -> String {
        self.deployments_made += 1;
        let id = deployment_id(&self.service_arn, self.deployments_made);
        for d in &mut self.deployments {
            if d.status == DeploymentStatus::Primary {
                if d.rollout_state == RolloutState::Completed {
                    self.stable_task_definition = Some(d.task_definition.clone());
                }
                d.status = DeploymentStatus::Active;
                d.updated_at = now;
            }
        }
        self.deployments
            .retain(|d| d.status != DeploymentStatus::Inactive);
        self.deployments.insert(
            0,
            Deployment {
                id: id.clone(),
                status: DeploymentStatus::Primary,
                task_definition: task_definition.to_string(),
                desired_count: self.desired_count,
                created_at: now,
                updated_at: now,
                launch_type: self.launch_type.clone(),
                rollout_state: RolloutState::InProgress,
                rollout_state_reason: Some(format!("ECS deployment {id} in progress.")),
                ..Default::default()
            },
        );
        self.task_definition = task_definition.to_string();
        self.steady_since = None;
        self.retry_launch_at = None;
        id
    }

    /// The bounds of a deployment step for this service's desired count.
    pub fn bounds(&self) -> Bounds {
        Bounds::of(
            self.scheduling_strategy,
            self.desired_count,
            &self.deployment_configuration,
        )
    }
}

/// The task group of a service's tasks.
pub fn group_of(service_name: &str) -> String {
    format!("service:{service_name}")
}

/// ECS defaults of `maximumPercent` and `minimumHealthyPercent` per strategy.
pub fn default_percents(strategy: SchedulingStrategy) -> (i64, i64) {
    match strategy {
        SchedulingStrategy::Replica => (200, 100),
        SchedulingStrategy::Daemon => (100, 0),
    }
}

/// What a step may do: keep at least `floor` healthy tasks and at most `ceiling`
/// non-stopped ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// `minimumHealthyPercent` of the desired count, rounded up.
    pub floor: i64,
    /// `maximumPercent` of the desired count, rounded down.
    pub ceiling: i64,
}

impl Bounds {
    pub fn of(strategy: SchedulingStrategy, desired: i64, c: &DeploymentConfiguration) -> Self {
        let (max_default, min_default) = default_percents(strategy);
        let max = c.maximum_percent.unwrap_or(max_default).max(0);
        let min = c.minimum_healthy_percent.unwrap_or(min_default).max(0);
        let desired = desired.max(0);
        Self {
            floor: (desired * min + 99) / 100,
            ceiling: desired * max / 100,
        }
    }
}

/// The circuit breaker's threshold: failed tasks of a deployment that trip it
/// (ECS: 0.5 x desiredCount, at least 10, at most 200).
pub fn circuit_breaker_threshold(desired: i64) -> i64 {
    (desired / 2 + desired % 2).clamp(10, 200)
}

/// `ecs-svc/<19 digits>`, derived from the service ARN and its deployment counter.
pub fn deployment_id(service_arn: &str, counter: u64) -> String {
    let derived = crate::ids::derived(service_arn, &format!("deployment-{counter}"));
    // 16 hex digits are 64 bits: written in decimal and padded, they make 19-20 digits.
    let n = u64::from_str_radix(&derived[..16], 16).unwrap_or(counter);
    format!("ecs-svc/{:019}", n % 10_000_000_000_000_000_000)
}

/// The id of a scheduler step taken on `version` of the service `arn`: the same decision
/// on the same version gets the same id on every replica.
pub fn step_id(service_arn: &str, version: u64) -> String {
    format!(
        "{STEP_PREFIX}{}",
        crate::ids::derived(service_arn, &format!("step-{version}"))
    )
}

/// Prefix of step ids (and of the ids of their commands).
pub const STEP_PREFIX: &str = "svc-";

/// The RunTask command of a step's `launch`-th launch, `chunk`-th batch of tasks.
pub fn launch_command_id(step_id: &str, launch: usize, chunk: usize) -> String {
    format!("{step_id}-l{launch}-{chunk}")
}

/// The StopTask command of a step's `index`-th stop.
pub fn stop_command_id(step_id: &str, index: usize) -> String {
    format!("{step_id}-s{index}")
}

/// The step a command of the service scheduler belongs to.
pub fn step_of_command(command_id: &str) -> Option<&str> {
    if !command_id.starts_with(STEP_PREFIX) {
        return None;
    }
    command_id
        .get(..STEP_PREFIX.len() + 32)
        .filter(|step| command_id.len() > step.len())
}

// ---- API bodies ----

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct CreateServiceRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    pub service_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_definition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_count: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_configuration: Option<DeploymentConfiguration>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub placement_constraints: Vec<PlacementConstraint>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub placement_strategy: Vec<PlacementStrategy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduling_strategy: Option<SchedulingStrategy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_controller: Option<DeploymentController>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_grace_period_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_token: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub propagate_tags: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_execute_command: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub load_balancers: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_registries: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_configuration: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct UpdateServiceRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    pub service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_count: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_definition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_configuration: Option<DeploymentConfiguration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement_constraints: Option<Vec<PlacementConstraint>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement_strategy: Option<Vec<PlacementStrategy>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_new_deployment: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_grace_period_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_execute_command: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub propagate_tags: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_configuration: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct DeleteServiceRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    pub service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ServiceResponse {
    pub service: Service,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct DescribeServicesRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    pub services: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct DescribeServicesResponse {
    pub services: Vec<Service>,
    pub failures: Vec<crate::model::Failure>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ListServicesRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduling_strategy: Option<SchedulingStrategy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_results: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ListServicesResponse {
    pub service_arns: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_round_as_ecs_documents() {
        let c = |max, min| DeploymentConfiguration {
            maximum_percent: Some(max),
            minimum_healthy_percent: Some(min),
            ..Default::default()
        };
        // desired 4, min 50, max 200: may stop 2 before starting 2, or start 4 first.
        let b = Bounds::of(SchedulingStrategy::Replica, 4, &c(200, 50));
        assert_eq!(
            b,
            Bounds {
                floor: 2,
                ceiling: 8
            }
        );
        // min rounds up, max rounds down.
        let b = Bounds::of(SchedulingStrategy::Replica, 3, &c(150, 50));
        assert_eq!(
            b,
            Bounds {
                floor: 2,
                ceiling: 4
            }
        );
        let d = DeploymentConfiguration::default();
        assert_eq!(
            Bounds::of(SchedulingStrategy::Replica, 10, &d),
            Bounds {
                floor: 10,
                ceiling: 20
            }
        );
        assert_eq!(
            Bounds::of(SchedulingStrategy::Daemon, 3, &d),
            Bounds {
                floor: 0,
                ceiling: 3
            }
        );
    }

    #[test]
    fn circuit_breaker_threshold_is_clamped() {
        assert_eq!(circuit_breaker_threshold(1), 10);
        assert_eq!(circuit_breaker_threshold(25), 13);
        assert_eq!(circuit_breaker_threshold(100), 50);
        assert_eq!(circuit_breaker_threshold(1000), 200);
    }

    #[test]
    fn deployment_ids_look_like_ecs_and_differ() {
        let a = deployment_id("arn:aws:ecs:r:1:service/c/web", 1);
        let b = deployment_id("arn:aws:ecs:r:1:service/c/web", 2);
        assert_ne!(a, b);
        assert!(a.starts_with("ecs-svc/"));
        assert_eq!(a.len(), "ecs-svc/".len() + 19);
        assert!(a["ecs-svc/".len()..].chars().all(|c| c.is_ascii_digit()));
    }

    #[test]
    fn step_commands_name_their_step() {
        let step = step_id("arn:aws:ecs:r:1:service/c/web", 4);
        assert_eq!(
            step_of_command(&launch_command_id(&step, 0, 3)),
            Some(step.as_str())
        );
        assert_eq!(
            step_of_command(&stop_command_id(&step, 12)),
            Some(step.as_str())
        );
        assert_eq!(step_of_command(&step), None);
        assert_eq!(step_of_command("rt-0123"), None);
        assert_ne!(step, step_id("arn:aws:ecs:r:1:service/c/web", 5));
    }

    #[test]
    fn presented_services_hide_internal_fields() {
        let s = Service {
            creation_digest: "d".into(),
            step: Some(ServiceStep::default()),
            deployments_made: 3,
            deployments: vec![Deployment {
                start_failures: 2,
                throttled_until: Some(1.0),
                ..Default::default()
            }],
            ..Default::default()
        }
        .presented(9);
        assert_eq!(s.version, Some(9));
        assert!(s.creation_digest.is_empty() && s.step.is_none());
        let json = serde_json::to_value(&s).unwrap();
        assert!(json.get("step").is_none() && json.get("creationDigest").is_none());
        assert!(json["deployments"][0].get("startFailures").is_none());
    }
}

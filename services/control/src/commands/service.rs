//! CreateService, UpdateService and DeleteService: each one conditional write of the
//! service record (the journal's read-modify-write loop), re-validated on conflict. The
//! service scheduler (`crate::services`) does the rest: these handlers only change the
//! desired state. A redelivered command finds its own write (the creation digest, the
//! command id of the last update) and answers from it instead of writing again.

use super::cluster::updated;
use super::taskdef::resolve_for_launch;
use super::Delivery;
use crate::services::present::presented;
use crate::services::validate::service_ref;
use crate::shared::{ExecResult, Shared};
use berth_journal::Versioned;
use berth_messages::command::{CommandRequest, CommandResponse};
use berth_messages::service::*;
use berth_messages::{subjects, ApiError};

const ATTEMPTS: u32 = 20;

/// The answer of a write: the record written, or the one found already so (a repeat).
fn answer_written(
    shared: &Shared,
    cluster: &str,
    written: Option<Versioned<Service>>,
    unchanged: Option<Versioned<Service>>,
    name: &str,
) -> ExecResult<(CommandResponse, u64)> {
    match (written, unchanged) {
        (Some(w), _) => Ok(answer(shared, cluster, &w, w.version)),
        (None, Some(u)) => Ok(answer(shared, cluster, &u, 0)),
        (None, None) => Err(ApiError::service_not_found(name).into()),
    }
}

fn answer(
    shared: &Shared,
    cluster: &str,
    record: &Versioned<Service>,
    seq: u64,
) -> (CommandResponse, u64) {
    (
        CommandResponse::Service(ServiceResponse {
            service: presented(shared, cluster, record, true),
        }),
        seq,
    )
}

/// The service a request names, in the cluster its ARN or the request names.
fn target(cluster_given: &str, service: &str) -> ExecResult<(String, String)> {
    let (arn_cluster, name) = service_ref(service)?;
    if let Some(c) = arn_cluster {
        if c != cluster_given {
            return Err(ApiError::invalid(format!(
                "service {service} is in cluster {c}, not {cluster_given}"
            ))
            .into());
        }
    }
    Ok((cluster_given.to_string(), name.to_string()))
}

pub async fn create(
    shared: &Shared,
    d: &Delivery,
    r: CreateServiceRequest,
) -> ExecResult<(CommandResponse, u64)> {
    let cluster = CommandRequest::CreateService(r.clone()).scope();
    super::active_cluster(shared, &cluster).await?;
    let reference = r.task_definition.clone().unwrap_or_default();
    let definition = resolve_for_launch(shared, &reference).await?;
    let task_definition = definition.value.task_definition_arn.clone();
    let digest = {
        let mut normalized = r.clone();
        normalized.client_token = None;
        normalized.cluster = None;
        normalized.task_definition = Some(task_definition.clone());
        let body = berth_messages::codec::encode_record(&normalized)
            .map_err(|e| ApiError::server(e.to_string()))?;
        super::request_digest(&body).unwrap_or_default()
    };
    let name = r.service_name.clone();
    let subject = subjects::service(&cluster, &name);
    let arn = shared.arns.service(&cluster, &name);
    let strategy = r.scheduling_strategy.unwrap_or_default();
    let mut existing: Option<Versioned<Service>> = None;
    let written = updated(
        shared
            .journal
            .update::<Service, ApiError, _>(&subject, &d.command_id, ATTEMPTS, |current| {
                let previous_deployments = match current {
                    Some(c) if c.value.status == ServiceStatus::Active => {
                        if c.value.creation_digest == digest {
                            existing = Some(c);
                            return Ok(None);
                        }
                        return Err(ApiError::invalid("Creation of service was not idempotent."));
                    }
                    Some(c) if c.value.status == ServiceStatus::Draining => {
                        return Err(ApiError::invalid(
                            "Unable to Start a service that is still Draining.",
                        ));
                    }
                    Some(c) => c.value.deployments_made,
                    None => 0,
                };
                let now = berth_messages::now_epoch_seconds();
                let mut service = Service {
                    service_arn: arn.clone(),
                    service_name: name.clone(),
                    cluster_arn: shared.arns.cluster(&cluster),
                    status: ServiceStatus::Active,
                    desired_count: r.desired_count.unwrap_or(0),
                    launch_type: r.launch_type.clone().unwrap_or_else(|| "EC2".into()),
                    deployment_configuration: with_defaults(
                        strategy,
                        r.deployment_configuration.clone().unwrap_or_default(),
                    ),
                    placement_constraints: r.placement_constraints.clone(),
                    placement_strategy: r.placement_strategy.clone(),
                    scheduling_strategy: strategy,
                    deployment_controller: DeploymentController::default(),
                    health_check_grace_period_seconds: r.health_check_grace_period_seconds,
                    created_at: now,
                    created_by: Some(format!("arn:aws:iam::{}:root", shared.config.account_id)),
                    tags: r.tags.clone(),
                    propagate_tags: r.propagate_tags.clone(),
                    enable_execute_command: r.enable_execute_command.unwrap_or(false),
                    creation_digest: digest.clone(),
                    last_command_id: d.command_id.clone(),
                    deployments_made: previous_deployments,
                    ..Default::default()
                };
                service.start_deployment(&task_definition, now);
                Ok(Some(service))
            })
            .await,
    )?;
    answer_written(shared, &cluster, written, existing, &name)
}

/// The deployment configuration with ECS's defaults filled in, as DescribeServices shows.
fn with_defaults(
    strategy: SchedulingStrategy,
    mut c: DeploymentConfiguration,
) -> DeploymentConfiguration {
    let (max, min) = default_percents(strategy);
    c.maximum_percent.get_or_insert(max);
    c.minimum_healthy_percent.get_or_insert(min);
    c.deployment_circuit_breaker
        .get_or_insert(DeploymentCircuitBreaker::default());
    c
}

pub async fn update(
    shared: &Shared,
    d: &Delivery,
    r: UpdateServiceRequest,
) -> ExecResult<(CommandResponse, u64)> {
    let scope = CommandRequest::UpdateService(r.clone()).scope();
    super::active_cluster(shared, &scope).await?;
    let (cluster, name) = target(&scope, &r.service)?;
    let task_definition = match &r.task_definition {
        Some(reference) => Some(
            resolve_for_launch(shared, reference)
                .await?
                .value
                .task_definition_arn
                .clone(),
        ),
        None => None,
    };
    let subject = subjects::service(&cluster, &name);
    let mut unchanged: Option<Versioned<Service>> = None;
    let written = updated(
        shared
            .journal
            .update::<Service, ApiError, _>(&subject, &d.command_id, ATTEMPTS, |current| {
                let current = current.ok_or_else(|| ApiError::service_not_found(&name))?;
                if current.value.last_command_id == d.command_id {
                    unchanged = Some(current);
                    return Ok(None);
                }
                if current.value.status != ServiceStatus::Active {
                    return Err(ApiError::service_not_active(&name));
                }
                let mut s = current.value;
                let now = berth_messages::now_epoch_seconds();
                if let Some(n) = r.desired_count {
                    if s.scheduling_strategy == SchedulingStrategy::Daemon {
                        return Err(ApiError::invalid(
                            "The daemon scheduling strategy does not support a desired count for services.",
                        ));
                    }
                    s.desired_count = n;
                    if let Some(p) = s.primary_mut() {
                        p.desired_count = n;
                        p.updated_at = now;
                    }
                }
                if let Some(c) = &r.deployment_configuration {
                    let mut merged = s.deployment_configuration.clone();
                    if c.maximum_percent.is_some() {
                        merged.maximum_percent = c.maximum_percent;
                    }
                    if c.minimum_healthy_percent.is_some() {
                        merged.minimum_healthy_percent = c.minimum_healthy_percent;
                    }
                    if c.deployment_circuit_breaker.is_some() {
                        merged.deployment_circuit_breaker = c.deployment_circuit_breaker;
                    }
                    crate::services::validate::deployment_configuration(&merged)?;
                    s.deployment_configuration = merged;
                }
                if let Some(list) = &r.placement_constraints {
                    s.placement_constraints = list.clone();
                }
                if let Some(list) = &r.placement_strategy {
                    if s.scheduling_strategy == SchedulingStrategy::Daemon && !list.is_empty() {
                        return Err(ApiError::invalid(
                            "Placement strategies are not supported with the DAEMON scheduling strategy.",
                        ));
                    }
                    s.placement_strategy = list.clone();
                }
                if let Some(g) = r.health_check_grace_period_seconds {
                    s.health_check_grace_period_seconds = Some(g);
                }
                if let Some(e) = r.enable_execute_command {
                    s.enable_execute_command = e;
                }
                if let Some(p) = &r.propagate_tags {
                    s.propagate_tags = Some(p.clone());
                }
                let changes_definition = task_definition
                    .as_ref()
                    .is_some_and(|td| *td != s.task_definition);
                if changes_definition || r.force_new_deployment == Some(true) {
                    let td = task_definition.clone().unwrap_or_else(|| s.task_definition.clone());
                    s.start_deployment(&td, now);
                }
                s.last_command_id = d.command_id.clone();
                Ok(Some(s))
            })
            .await,
    )?;
    answer_written(shared, &cluster, written, unchanged, &name)
}

pub async fn delete(
    shared: &Shared,
    d: &Delivery,
    r: DeleteServiceRequest,
) -> ExecResult<(CommandResponse, u64)> {
    let scope = CommandRequest::DeleteService(r.clone()).scope();
    super::active_cluster(shared, &scope).await?;
    let (cluster, name) = target(&scope, &r.service)?;
    let subject = subjects::service(&cluster, &name);
    let force = r.force == Some(true);
    let mut unchanged: Option<Versioned<Service>> = None;
    let written = updated(
        shared
            .journal
            .update::<Service, ApiError, _>(&subject, &d.command_id, ATTEMPTS, |current| {
                let current = current.ok_or_else(|| ApiError::service_not_found(&name))?;
                match current.value.status {
                    ServiceStatus::Active => {}
                    ServiceStatus::Draining => {
                        unchanged = Some(current);
                        return Ok(None);
                    }
                    ServiceStatus::Inactive => {
                        return Err(ApiError::service_not_active(&name));
                    }
                }
                let mut s = current.value;
                if s.desired_count > 0
                    && s.scheduling_strategy == SchedulingStrategy::Replica
                    && !force
                {
                    return Err(ApiError::invalid(
                        "The service cannot be stopped while it is scaled above 0.",
                    ));
                }
                s.status = ServiceStatus::Draining;
                s.desired_count = 0;
                s.last_command_id = d.command_id.clone();
                Ok(Some(s))
            })
            .await,
    )?;
    answer_written(shared, &cluster, written, unchanged, &name)
}

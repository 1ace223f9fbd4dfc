//! Stateless validation of every command request, run by the API before anything is
//! published and again by the command processor (commands may come straight from any
//! NATS publisher). State-dependent checks (does the cluster exist?) live with the
//! handlers.

use berth_messages::api::*;
use berth_messages::arn;
use berth_messages::command::CommandRequest;
use berth_messages::model::{health, HealthCheck, InstanceStatus, Resource, StopCode};
use berth_messages::validate as v;
use berth_messages::ApiError;

pub fn request(req: &CommandRequest) -> Result<(), ApiError> {
    match req {
        CommandRequest::CreateCluster(r) => {
            if let Some(name) = &r.cluster_name {
                v::cluster_name(name)?;
            }
            Ok(())
        }
        CommandRequest::DeleteCluster(r) => cluster(Some(&r.cluster)),
        CommandRequest::RegisterContainerInstance(r) => register_instance(r),
        CommandRequest::DeregisterContainerInstance(r) => {
            cluster(r.cluster.as_deref())?;
            instance_ref(&r.container_instance)
        }
        CommandRequest::UpdateContainerInstancesState(r) => {
            cluster(r.cluster.as_deref())?;
            v::batch("containerInstances", r.container_instances.len(), 10)?;
            for i in &r.container_instances {
                instance_ref(i)?;
            }
            match r.status {
                InstanceStatus::Active | InstanceStatus::Draining => Ok(()),
                other => Err(ApiError::invalid(format!(
                    "status must be ACTIVE or DRAINING, got {}",
                    other.as_str()
                ))),
            }
        }
        CommandRequest::PutAttributes(r) => attributes(r, true),
        CommandRequest::DeleteAttributes(r) => attributes(r, false),
        CommandRequest::RegisterTaskDefinition(r) => register_task_definition(r),
        CommandRequest::DeregisterTaskDefinition(r) => {
            let parsed = arn::task_definition_ref(&r.task_definition).ok_or_else(|| {
                ApiError::invalid(format!(
                    "taskDefinition '{}' is not family:revision or a task definition ARN",
                    r.task_definition
                ))
            })?;
            v::name("family", &parsed.family)?;
            if parsed.revision.is_none() {
                return Err(ApiError::invalid(
                    "taskDefinition must name a revision (family:revision or full ARN)",
                ));
            }
            Ok(())
        }
        CommandRequest::RunTask(r) => {
            cluster(r.cluster.as_deref())?;
            task_definition_ref(&r.task_definition)?;
            let count = r.count.unwrap_or(1);
            if !(1..=10).contains(&count) {
                return Err(ApiError::invalid(format!(
                    "count must be between 1 and 10, got {count}"
                )));
            }
            started_by_group(r.started_by.as_deref(), r.group.as_deref())?;
            if let Some(token) = &r.client_token {
                v::command_id("clientToken", token)?;
            }
            berth_placement::constraints_from(&r.placement_constraints)?;
            berth_placement::strategies_from(&r.placement_strategy)?;
            if let Some(lt) = &r.launch_type {
                if lt != "EC2" && lt != "EXTERNAL" {
                    return Err(ApiError::invalid(format!(
                        "launchType {lt} is not supported: Berth runs EC2/EXTERNAL-style tasks"
                    )));
                }
            }
            Ok(())
        }
        CommandRequest::StartTask(r) => {
            cluster(r.cluster.as_deref())?;
            task_definition_ref(&r.task_definition)?;
            v::batch("containerInstances", r.container_instances.len(), 10)?;
            for i in &r.container_instances {
                instance_ref(i)?;
            }
            started_by_group(r.started_by.as_deref(), r.group.as_deref())
        }
        CommandRequest::StopTask(r) => {
            cluster(r.cluster.as_deref())?;
            task_ref(&r.task)?;
            if let Some(reason) = &r.reason {
                v::text("reason", reason, 255)?;
            }
            match r.stop_code {
                None | Some(StopCode::UserInitiated | StopCode::ServiceSchedulerInitiated) => Ok(()),
                Some(other) => Err(ApiError::invalid(format!(
                    "stopCode {other:?} is set by Berth itself; a StopTask may give UserInitiated or ServiceSchedulerInitiated"
                ))),
            }
        }
        CommandRequest::SubmitTaskStateChange(r) => {
            cluster(r.cluster.as_deref())?;
            task_ref(&r.task)?;
            for c in &r.containers {
                if let Some(name) = &c.container_name {
                    v::name("containerName", name)?;
                }
            }
            Ok(())
        }
        CommandRequest::CreateService(r) => crate::services::validate::create(r),
        CommandRequest::UpdateService(r) => crate::services::validate::update(r),
        CommandRequest::DeleteService(r) => {
            cluster(r.cluster.as_deref())?;
            crate::services::validate::service_ref(&r.service).map(|_| ())
        }
        CommandRequest::SubmitContainerStateChange(r) => {
            cluster(r.cluster.as_deref())?;
            task_ref(&r.task)?;
            v::name("containerName", &r.container_name)?;
            match r.health_status.as_deref() {
                Some(h) if !health::ALL.contains(&h) => Err(ApiError::invalid(format!(
                    "healthStatus must be HEALTHY, UNHEALTHY or UNKNOWN, got {h}"
                ))),
                _ => Ok(()),
            }
        }
    }
}

pub fn cluster(given: Option<&str>) -> Result<(), ApiError> {
    match given {
        Some(c) => v::cluster_name(arn::cluster_name(c)),
        None => Ok(()),
    }
}

pub fn instance_ref(s: &str) -> Result<(), ApiError> {
    let (c, id) = arn::container_instance_id(s);
    if let Some(c) = c {
        v::cluster_name(c)?;
    }
    v::id("containerInstance", id)
}

pub fn task_ref(s: &str) -> Result<(), ApiError> {
    let (c, id) = arn::task_id(s);
    if let Some(c) = c {
        v::cluster_name(c)?;
    }
    v::id("task", id)
}

pub fn task_definition_ref(s: &str) -> Result<arn::TaskDefinitionRef, ApiError> {
    let parsed = arn::task_definition_ref(s).ok_or_else(|| {
        ApiError::invalid(format!(
            "taskDefinition '{s}' is not a family, family:revision or task definition ARN"
        ))
    })?;
    v::name("family", &parsed.family)?;
    Ok(parsed)
}

fn started_by_group(started_by: Option<&str>, group: Option<&str>) -> Result<(), ApiError> {
    if let Some(s) = started_by {
        v::text("startedBy", s, 128)?;
    }
    if let Some(g) = group {
        if g.is_empty() {
            return Err(ApiError::invalid("group must not be empty"));
        }
        v::text("group", g, 255)?;
    }
    Ok(())
}

fn register_instance(r: &RegisterContainerInstanceRequest) -> Result<(), ApiError> {
    cluster(r.cluster.as_deref())?;
    if let Some(a) = &r.container_instance_arn {
        instance_ref(a)?;
    }
    for name in [Resource::CPU, Resource::MEMORY] {
        let value = r
            .total_resources
            .iter()
            .find(|res| res.name == name)
            .and_then(Resource::number)
            .ok_or_else(|| {
                ApiError::invalid(format!("totalResources must include {name} as an integer"))
            })?;
        if value < 0 {
            return Err(ApiError::invalid(format!("{name} must not be negative")));
        }
    }
    for res in &r.total_resources {
        if res.name == Resource::PORTS || res.name == Resource::PORTS_UDP {
            for p in &res.string_set_value {
                p.parse::<u16>().map_err(|_| {
                    ApiError::invalid(format!("{} value '{p}' is not a port", res.name))
                })?;
            }
        }
    }
    if r.attributes.len() > 64 {
        return Err(ApiError::invalid("too many attributes"));
    }
    for a in &r.attributes {
        v::attribute_name(&a.name)?;
        if let Some(value) = &a.value {
            v::attribute_value(value)?;
        }
    }
    Ok(())
}

fn attributes(r: &AttributesRequest, put: bool) -> Result<(), ApiError> {
    cluster(r.cluster.as_deref())?;
    v::batch("attributes", r.attributes.len(), 10)?;
    for a in &r.attributes {
        v::attribute_name(&a.name)?;
        if put {
            if let Some(value) = &a.value {
                v::attribute_value(value)?;
            }
        }
        match a.target_type.as_deref() {
            None | Some("container-instance") => {}
            Some(other) => {
                return Err(ApiError::invalid(format!(
                    "targetType must be container-instance, got {other}"
                )))
            }
        }
        let target = a
            .target_id
            .as_deref()
            .ok_or_else(|| ApiError::invalid(format!("attribute {} has no targetId", a.name)))?;
        instance_ref(target)?;
    }
    Ok(())
}

fn health_check(container: &str, check: &HealthCheck) -> Result<(), ApiError> {
    check
        .argv()
        .map_err(|why| ApiError::invalid(format!("container {container}: {why}")))?;
    for (field, value, (_, min, max)) in [
        ("interval", check.interval, HealthCheck::INTERVAL),
        ("timeout", check.timeout, HealthCheck::TIMEOUT),
        ("retries", check.retries, HealthCheck::RETRIES),
        ("startPeriod", check.start_period, HealthCheck::START_PERIOD),
    ] {
        if let Some(v) = value.filter(|v| !(min..=max).contains(v)) {
            return Err(ApiError::invalid(format!(
                "container {container}: healthCheck {field} must be between {min} and {max}, got {v}"
            )));
        }
    }
    Ok(())
}

fn register_task_definition(r: &RegisterTaskDefinitionRequest) -> Result<(), ApiError> {
    v::name("family", &r.family)?;
    v::batch(
        "containerDefinitions",
        r.container_definitions.len(),
        v::MAX_CONTAINERS,
    )?;
    let mut names = std::collections::HashSet::new();
    for c in &r.container_definitions {
        v::name("container name", &c.name)?;
        if !names.insert(c.name.as_str()) {
            return Err(ApiError::invalid(format!(
                "container name '{}' is used twice",
                c.name
            )));
        }
        if c.cpu < 0 {
            return Err(ApiError::invalid(format!(
                "container {}: cpu must not be negative",
                c.name
            )));
        }
        if let (Some(m), Some(mr)) = (c.memory, c.memory_reservation) {
            if m < mr {
                return Err(ApiError::invalid(format!(
                    "container {}: memory must be greater than or equal to memoryReservation",
                    c.name
                )));
            }
        }
        for d in &c.depends_on {
            if !r
                .container_definitions
                .iter()
                .any(|o| o.name == d.container_name)
            {
                return Err(ApiError::invalid(format!(
                    "container {} depends on unknown container {}",
                    c.name, d.container_name
                )));
            }
            if !["START", "COMPLETE", "SUCCESS", "HEALTHY"].contains(&d.condition.as_str()) {
                return Err(ApiError::invalid(format!(
                    "dependsOn condition must be START, COMPLETE, SUCCESS or HEALTHY, got {}",
                    d.condition
                )));
            }
            let checked = r
                .container_definitions
                .iter()
                .any(|o| o.name == d.container_name && o.health_check.is_some());
            if d.condition == "HEALTHY" && !checked {
                return Err(ApiError::invalid(format!(
                    "container {} depends on {} being HEALTHY, but {} has no healthCheck",
                    c.name, d.container_name, d.container_name
                )));
            }
        }
        if let Some(check) = &c.health_check {
            health_check(&c.name, check)?;
        }
    }
    if let Some(mode) = &r.network_mode {
        if !["bridge", "host", "awsvpc", "none"].contains(&mode.as_str()) {
            return Err(ApiError::invalid(format!(
                "networkMode must be bridge, host, awsvpc or none, got {mode}"
            )));
        }
    }
    if r.placement_constraints.len() > 10 {
        return Err(ApiError::invalid("at most 10 placementConstraints"));
    }
    for pc in &r.placement_constraints {
        if pc.constraint_type.as_deref() != Some("memberOf") {
            return Err(ApiError::invalid(
                "task definition placement constraints must be of type memberOf",
            ));
        }
    }
    berth_placement::constraints_from(&r.placement_constraints)?;
    let size = berth_messages::codec::encode(berth_messages::codec::Encoding::Json, r)
        .map(|b| b.len())
        .unwrap_or(usize::MAX);
    if size > v::MAX_TASK_DEFINITION_BYTES {
        return Err(ApiError::invalid(format!(
            "task definition is {size} bytes, the limit is {}",
            v::MAX_TASK_DEFINITION_BYTES
        )));
    }
    Ok(())
}

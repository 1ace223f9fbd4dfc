//! Stateless checks of the service actions' requests (the ECS rules on names, counts,
//! deployment percentages and placement). Checks that need the service record (DAEMON
//! with a desired count on update, INACTIVE services) live with the handlers.

use crate::validation::{cluster, task_definition_ref};
use berth_messages::service::{
    CreateServiceRequest, DeploymentConfiguration, SchedulingStrategy, UpdateServiceRequest,
};
use berth_messages::{arn, validate as v, ApiError};

/// Largest `desiredCount` Berth accepts (ECS's default quota is 5,000 tasks per service).
pub const MAX_DESIRED_COUNT: i64 = 100_000;
/// Largest `maximumPercent` Berth accepts.
pub const MAX_MAXIMUM_PERCENT: i64 = 1_000;
/// Largest `healthCheckGracePeriodSeconds` (ECS: 2,147,483,647).
pub const MAX_GRACE_SECONDS: i64 = i32::MAX as i64;

/// (cluster from the ARN if any, name) of a service reference.
pub fn service_ref(s: &str) -> Result<(Option<&str>, &str), ApiError> {
    let (c, name) = arn::service_name(s);
    if let Some(c) = c {
        v::cluster_name(c)?;
    }
    v::name("service", name)?;
    Ok((c, name))
}

pub fn desired_count(count: i64) -> Result<(), ApiError> {
    if !(0..=MAX_DESIRED_COUNT).contains(&count) {
        return Err(ApiError::invalid(format!(
            "desiredCount must be between 0 and {MAX_DESIRED_COUNT}, got {count}"
        )));
    }
    Ok(())
}

pub fn deployment_configuration(c: &DeploymentConfiguration) -> Result<(), ApiError> {
    if let (Some(min), Some(max)) = (c.minimum_healthy_percent, c.maximum_percent) {
        if min > max {
            return Err(ApiError::invalid(format!(
                "minimumHealthyPercent ({min}) must not be above maximumPercent ({max})"
            )));
        }
    }
    if let Some(min) = c.minimum_healthy_percent {
        if !(0..=100).contains(&min) {
            return Err(ApiError::invalid(format!(
                "minimumHealthyPercent must be between 0 and 100, got {min}"
            )));
        }
    }
    if let Some(max) = c.maximum_percent {
        if !(100..=MAX_MAXIMUM_PERCENT).contains(&max) {
            return Err(ApiError::invalid(format!(
                "maximumPercent must be between 100 and {MAX_MAXIMUM_PERCENT}, got {max}"
            )));
        }
    }
    Ok(())
}

fn grace(seconds: Option<i64>) -> Result<(), ApiError> {
    match seconds {
        Some(s) if !(0..=MAX_GRACE_SECONDS).contains(&s) => Err(ApiError::invalid(format!(
            "healthCheckGracePeriodSeconds must be between 0 and {MAX_GRACE_SECONDS}, got {s}"
        ))),
        _ => Ok(()),
    }
}

fn launch_type(lt: Option<&str>) -> Result<(), ApiError> {
    match lt {
        None | Some("EC2") | Some("EXTERNAL") => Ok(()),
        Some(other) => Err(ApiError::invalid(format!(
            "launchType {other} is not supported: Berth runs EC2/EXTERNAL-style tasks"
        ))),
    }
}

pub fn create(r: &CreateServiceRequest) -> Result<(), ApiError> {
    cluster(r.cluster.as_deref())?;
    v::name("serviceName", &r.service_name)?;
    let td = r
        .task_definition
        .as_deref()
        .ok_or_else(|| ApiError::invalid("taskDefinition is required"))?;
    task_definition_ref(td)?;
    let strategy = r.scheduling_strategy.unwrap_or_default();
    match (strategy, r.desired_count) {
        (SchedulingStrategy::Daemon, Some(_)) => {
            return Err(ApiError::invalid(
                "The daemon scheduling strategy does not support a desired count for services.",
            ))
        }
        (SchedulingStrategy::Replica, None) => {
            return Err(ApiError::invalid(
                "desiredCount is required with the REPLICA scheduling strategy",
            ))
        }
        (_, Some(n)) => desired_count(n)?,
        (SchedulingStrategy::Daemon, None) => {}
    }
    if let Some(c) = &r.deployment_configuration {
        deployment_configuration(c)?;
    }
    if strategy == SchedulingStrategy::Daemon && !r.placement_strategy.is_empty() {
        return Err(ApiError::invalid(
            "Placement strategies are not supported with the DAEMON scheduling strategy.",
        ));
    }
    berth_placement::constraints_from(&r.placement_constraints)?;
    berth_placement::strategies_from(&r.placement_strategy)?;
    if let Some(c) = &r.deployment_controller {
        if c.controller_type != "ECS" {
            return Err(ApiError::invalid(format!(
                "deploymentController {} is not supported: Berth runs the ECS (rolling) controller",
                c.controller_type
            )));
        }
    }
    grace(r.health_check_grace_period_seconds)?;
    launch_type(r.launch_type.as_deref())?;
    if let Some(token) = &r.client_token {
        v::text("clientToken", token, 36)?;
    }
    if !r.load_balancers.is_empty() || !r.service_registries.is_empty() {
        return Err(ApiError::invalid(
            "loadBalancers and serviceRegistries are not supported: Berth has no load balancer integration",
        ));
    }
    if r.tags.len() > 50 {
        return Err(ApiError::invalid(format!(
            "at most 50 tags are allowed, got {}",
            r.tags.len()
        )));
    }
    Ok(())
}

pub fn update(r: &UpdateServiceRequest) -> Result<(), ApiError> {
    cluster(r.cluster.as_deref())?;
    service_ref(&r.service)?;
    if let Some(n) = r.desired_count {
        desired_count(n)?;
    }
    if let Some(td) = &r.task_definition {
        task_definition_ref(td)?;
    }
    if let Some(c) = &r.deployment_configuration {
        deployment_configuration(c)?;
    }
    if let Some(list) = &r.placement_constraints {
        berth_placement::constraints_from(list)?;
    }
    if let Some(list) = &r.placement_strategy {
        berth_placement::strategies_from(list)?;
    }
    grace(r.health_check_grace_period_seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create_request() -> CreateServiceRequest {
        CreateServiceRequest {
            service_name: "web".into(),
            task_definition: Some("web:1".into()),
            desired_count: Some(2),
            ..Default::default()
        }
    }

    #[test]
    fn bad_create_requests_are_refused() {
        assert!(create(&create_request()).is_ok());
        type Change = Box<dyn Fn(&mut CreateServiceRequest)>;
        let bad: Vec<Change> = vec![
            Box::new(|r| r.desired_count = Some(-1)),
            Box::new(|r| r.desired_count = Some(MAX_DESIRED_COUNT + 1)),
            Box::new(|r| r.desired_count = None),
            Box::new(|r| r.scheduling_strategy = Some(SchedulingStrategy::Daemon)),
            Box::new(|r| r.service_name = "bad name!".into()),
            Box::new(|r| r.service_name = "x".repeat(256)),
            Box::new(|r| r.task_definition = None),
            Box::new(|r| r.task_definition = Some("web:zero".into())),
            Box::new(|r| {
                r.deployment_configuration = Some(DeploymentConfiguration {
                    minimum_healthy_percent: Some(150),
                    maximum_percent: Some(100),
                    ..Default::default()
                })
            }),
            Box::new(|r| {
                r.deployment_configuration = Some(DeploymentConfiguration {
                    maximum_percent: Some(50),
                    ..Default::default()
                })
            }),
            Box::new(|r| {
                r.placement_constraints = vec![berth_messages::model::PlacementConstraint {
                    constraint_type: Some("memberOf".into()),
                    expression: Some("attribute:x ==".into()),
                }]
            }),
            Box::new(|r| r.health_check_grace_period_seconds = Some(-1)),
            Box::new(|r| r.launch_type = Some("FARGATE".into())),
        ];
        for (i, change) in bad.iter().enumerate() {
            let mut r = create_request();
            change(&mut r);
            let e = create(&r).expect_err(&format!("case {i} must be refused"));
            assert_eq!(
                e.error_type,
                berth_messages::ErrorType::InvalidParameterException,
                "case {i}: {e}"
            );
        }
        // DAEMON without a desired count is fine.
        let mut daemon = create_request();
        daemon.scheduling_strategy = Some(SchedulingStrategy::Daemon);
        daemon.desired_count = None;
        assert!(create(&daemon).is_ok());
    }

    #[test]
    fn service_references_take_names_and_arns() {
        assert_eq!(service_ref("web").unwrap(), (None, "web"));
        assert_eq!(
            service_ref("arn:aws:ecs:us-east-1:1:service/prod/web").unwrap(),
            (Some("prod"), "web")
        );
        assert!(service_ref("").is_err());
    }
}

//! `--wait stable` of `berth services create|update|scale`: DescribeServices every 250 ms
//! until the service is stable (one deployment, COMPLETED, every desired task RUNNING and
//! none pending), printing on stderr each change of its deployments' counts and each new
//! service event. A deployment that FAILED (the circuit breaker tripped) ends the wait
//! with its reason.

use super::Context;
use crate::error::CliError;
use crate::output::{self, short_task_definition};
use berth_messages::arn;
use berth_messages::command::Action;
use berth_messages::service::{
    DeploymentStatus, DescribeServicesRequest, DescribeServicesResponse, RolloutState, Service,
    ServiceStatus,
};
use std::time::Duration;
use tokio::time::Instant;

/// How often the service is described while waiting.
pub const POLL: Duration = Duration::from_millis(250);
/// How long `--wait stable` waits without `--timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// Most new events printed at once (the newest ones).
const MAX_EVENTS_SHOWN: usize = 10;

/// DescribeServices in batches of 10 (the API's limit).
pub async fn describe_services(
    ctx: &Context,
    cluster: &str,
    names: &[String],
) -> Result<DescribeServicesResponse, CliError> {
    let mut out = DescribeServicesResponse::default();
    for chunk in names.chunks(10) {
        let r: DescribeServicesResponse = ctx
            .client
            .call(
                Action::DescribeServices,
                &DescribeServicesRequest {
                    cluster: Some(cluster.to_string()),
                    services: chunk.to_vec(),
                    include: Vec::new(),
                },
            )
            .await?;
        out.services.extend(r.services);
        out.failures.extend(r.failures);
    }
    Ok(out)
}

/// The error for services DescribeServices did not find.
pub fn services_not_found(cluster: &str, r: &DescribeServicesResponse) -> Result<(), CliError> {
    if r.failures.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = r
        .failures
        .iter()
        .map(|f| arn::service_name(f.arn.as_deref().unwrap_or("?")).1)
        .collect();
    Err(CliError::other(format!(
        "service {} not found in cluster {cluster}: `berth services list` shows the cluster's \
         services (or pick another cluster with --cluster / BERTH_CLUSTER)",
        names.join(", ")
    )))
}

/// One service, described; an error when it does not exist.
pub async fn describe_service(
    ctx: &Context,
    cluster: &str,
    name: &str,
) -> Result<Service, CliError> {
    let r = describe_services(ctx, cluster, &[name.to_string()]).await?;
    services_not_found(cluster, &r)?;
    r.services.into_iter().next().ok_or_else(|| {
        CliError::other(format!(
            "DescribeServices answered nothing about service {name}"
        ))
    })
}

/// Whether the service is stable: exactly one deployment, COMPLETED, with every desired
/// task RUNNING and none pending.
pub fn is_stable(s: &Service) -> bool {
    matches!(s.deployments.as_slice(), [d] if d.rollout_state == RolloutState::Completed)
        && s.running_count == s.desired_count
        && s.pending_count == 0
}

/// Why the service can no longer become stable, if so: it was deleted, or a deployment
/// FAILED (the primary, or another one that was not FAILED yet when the wait began).
pub fn wait_ended(s: &Service, failed_before: &[String]) -> Option<CliError> {
    let name = &s.service_name;
    if s.status != ServiceStatus::Active {
        return Some(CliError::other(format!(
            "service {name} is {}: it was deleted and will not become stable",
            s.status.as_str()
        )));
    }
    let failed = s.deployments.iter().find(|d| {
        d.rollout_state == RolloutState::Failed
            && (d.status == DeploymentStatus::Primary || !failed_before.contains(&d.id))
    })?;
    let reason = failed
        .rollout_state_reason
        .as_deref()
        .unwrap_or("no reason given");
    let mut message = format!(
        "deployment {} of service {name} ({}) failed: {reason}",
        failed.id,
        short_task_definition(&failed.task_definition)
    );
    if let Some(p) = s.primary().filter(|p| p.id != failed.id) {
        message.push_str(&format!(
            "\nBerth is rolling back to {} (deployment {})",
            short_task_definition(&p.task_definition),
            p.id
        ));
    }
    message.push_str(&format!(
        "\n`berth services events {name}` shows what happened"
    ));
    Some(CliError::other(message))
}

fn deployment_status(status: DeploymentStatus) -> &'static str {
    match status {
        DeploymentStatus::Primary => "PRIMARY",
        DeploymentStatus::Active => "ACTIVE",
        DeploymentStatus::Inactive => "INACTIVE",
    }
}

/// `PRIMARY web:2 1/3 running, 2 pending, IN_PROGRESS` for each deployment, separated
/// by ` | `, after `service <name>:`.
pub fn deployments_line(s: &Service) -> String {
    let deployments: Vec<String> = s
        .deployments
        .iter()
        .map(|d| {
            let mut text = format!(
                "{} {} {}/{} running",
                deployment_status(d.status),
                short_task_definition(&d.task_definition),
                d.running_count,
                d.desired_count
            );
            if d.pending_count > 0 {
                text.push_str(&format!(", {} pending", d.pending_count));
            }
            if d.failed_tasks > 0 {
                text.push_str(&format!(", {} failed", d.failed_tasks));
            }
            text.push_str(&format!(", {}", d.rollout_state.as_str()));
            text
        })
        .collect();
    if deployments.is_empty() {
        format!("service {}: no deployment", s.service_name)
    } else {
        format!("service {}: {}", s.service_name, deployments.join(" | "))
    }
}

/// What changed between two looks at a service, as lines for a person.
#[derive(Debug, Default)]
pub struct Progress {
    /// The last deployments line printed.
    deployments: Option<String>,
    /// The id of the newest event seen; `None` before the first look.
    newest_event: Option<Option<String>>,
}

impl Progress {
    /// Lines for what changed since the last look: the deployments line when it differs,
    /// and the events written since (oldest first). Events already there at the first
    /// look are history, not progress: they are not shown.
    pub fn observe(&mut self, s: &Service) -> Vec<String> {
        let mut lines = Vec::new();
        let deployments = deployments_line(s);
        if self.deployments.as_ref() != Some(&deployments) {
            lines.push(deployments.clone());
            self.deployments = Some(deployments);
        }
        let newest = s.events.first().map(|e| e.id.clone());
        if let Some(seen) = &self.newest_event {
            let new: Vec<_> = s
                .events
                .iter()
                .take_while(|e| Some(&e.id) != seen.as_ref())
                .take(MAX_EVENTS_SHOWN)
                .collect();
            lines.extend(new.iter().rev().map(|e| format!("event: {}", e.message)));
        }
        self.newest_event = Some(newest);
        lines
    }
}

/// Follows a service from `first` (the answer of the action that changed it) until it is
/// stable; returns it as last described.
pub async fn wait_stable(
    ctx: &Context,
    first: Service,
    timeout: Option<Duration>,
) -> Result<Service, CliError> {
    let started = Instant::now();
    // A deadline beyond what the clock can hold is no deadline.
    let deadline = started.checked_add(timeout.unwrap_or(DEFAULT_TIMEOUT));
    let cluster = if first.cluster_arn.is_empty() {
        ctx.cluster.clone()
    } else {
        arn::cluster_name(&first.cluster_arn).to_string()
    };
    let name = first.service_name.clone();
    let failed_before: Vec<String> = first
        .deployments
        .iter()
        .filter(|d| d.rollout_state == RolloutState::Failed)
        .map(|d| d.id.clone())
        .collect();
    let mut progress = Progress::default();
    let mut service = first;
    loop {
        for line in progress.observe(&service) {
            output::note(&format!(
                "[{:6.1}s] {line}",
                started.elapsed().as_secs_f64()
            ));
        }
        if let Some(e) = wait_ended(&service, &failed_before) {
            return Err(e);
        }
        if is_stable(&service) {
            return Ok(service);
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            let mut message = format!(
                "timed out after {:.0} s waiting for service {name} to be stable: {}",
                (now - started).as_secs_f64(),
                deployments_line(&service)
            );
            if let Some(e) = service.events.first() {
                message.push_str(&format!("; newest event: {}", e.message));
            }
            return Err(CliError::other(message));
        }
        let pause = deadline.map_or(POLL, |d| POLL.min(d - now));
        tokio::time::sleep(pause).await;
        service = describe_service(ctx, &cluster, &name).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_messages::service::{Deployment, ServiceEvent};

    fn deployment(id: &str, status: DeploymentStatus, rollout: RolloutState) -> Deployment {
        Deployment {
            id: id.into(),
            status,
            task_definition: "arn:aws:ecs:local:0:task-definition/web:2".into(),
            desired_count: 3,
            running_count: 3,
            rollout_state: rollout,
            ..Default::default()
        }
    }

    fn steady() -> Service {
        Service {
            service_name: "web".into(),
            desired_count: 3,
            running_count: 3,
            deployments: vec![deployment(
                "ecs-svc/1",
                DeploymentStatus::Primary,
                RolloutState::Completed,
            )],
            ..Default::default()
        }
    }

    fn event(id: &str, message: &str) -> ServiceEvent {
        ServiceEvent {
            id: id.into(),
            created_at: 1.0,
            message: message.into(),
        }
    }

    #[test]
    fn stable_needs_one_completed_deployment_and_every_task_running() {
        assert!(is_stable(&steady()));

        let mut s = steady();
        s.running_count = 2;
        assert!(!is_stable(&s), "a task short");

        let mut s = steady();
        s.pending_count = 1;
        assert!(!is_stable(&s), "a task pending");

        let mut s = steady();
        s.deployments[0].rollout_state = RolloutState::InProgress;
        assert!(!is_stable(&s), "rollout in progress");

        let mut s = steady();
        s.deployments.push(deployment(
            "ecs-svc/0",
            DeploymentStatus::Active,
            RolloutState::Completed,
        ));
        assert!(!is_stable(&s), "an old deployment is left");

        let mut s = steady();
        s.deployments.clear();
        assert!(!is_stable(&s), "no deployment");

        let mut s = steady();
        s.desired_count = 0;
        s.running_count = 0;
        assert!(is_stable(&s), "scaled to zero");
    }

    #[test]
    fn a_failed_deployment_ends_the_wait_with_its_reason() {
        assert!(wait_ended(&steady(), &[]).is_none());

        let mut s = steady();
        s.deployments[0].rollout_state = RolloutState::Failed;
        s.deployments[0].rollout_state_reason =
            Some("ECS deployment circuit breaker: tasks failed to start.".into());
        let e = wait_ended(&s, &[]).expect("failed").to_string();
        assert!(
            e.starts_with(
                "deployment ecs-svc/1 of service web (web:2) failed: ECS deployment circuit \
                 breaker: tasks failed to start."
            ),
            "{e}"
        );
        assert!(e.contains("berth services events web"), "{e}");
        // A failed primary cannot recover: it ends the wait even if it failed before.
        assert!(wait_ended(&s, &["ecs-svc/1".into()]).is_some());

        // Rolled back: the failed deployment is ACTIVE, a new primary runs the old one.
        let mut s = steady();
        s.deployments[0].status = DeploymentStatus::Active;
        s.deployments[0].rollout_state = RolloutState::Failed;
        let mut back = deployment(
            "ecs-svc/2",
            DeploymentStatus::Primary,
            RolloutState::InProgress,
        );
        back.task_definition = "arn:aws:ecs:local:0:task-definition/web:1".into();
        s.deployments.insert(0, back);
        let e = wait_ended(&s, &[]).expect("failed").to_string();
        assert!(
            e.contains("Berth is rolling back to web:1 (deployment ecs-svc/2)"),
            "{e}"
        );
        // ... but a deployment that had failed before the wait began is history.
        assert!(wait_ended(&s, &["ecs-svc/1".into()]).is_none());

        let mut s = steady();
        s.status = ServiceStatus::Draining;
        let e = wait_ended(&s, &[]).expect("deleted").to_string();
        assert!(e.contains("service web is DRAINING"), "{e}");
    }

    #[test]
    fn progress_lines_show_deployment_counts_and_new_events() {
        let mut s = steady();
        s.desired_count = 3;
        s.running_count = 1;
        s.pending_count = 2;
        s.deployments[0].running_count = 1;
        s.deployments[0].pending_count = 2;
        s.deployments[0].rollout_state = RolloutState::InProgress;
        s.events = vec![event("e0", "(service web) has reached a steady state.")];
        let mut p = Progress::default();
        // The first look: the deployments, but no old events.
        assert_eq!(
            p.observe(&s),
            vec!["service web: PRIMARY web:2 1/3 running, 2 pending, IN_PROGRESS"]
        );
        // Nothing changed: nothing printed.
        assert!(p.observe(&s).is_empty());
        // Two events and a count: the events oldest first.
        s.deployments[0].running_count = 3;
        s.deployments[0].pending_count = 0;
        let mut old = deployment(
            "ecs-svc/0",
            DeploymentStatus::Active,
            RolloutState::Completed,
        );
        old.task_definition = "arn:aws:ecs:local:0:task-definition/web:1".into();
        old.desired_count = 3;
        old.running_count = 1;
        old.failed_tasks = 1;
        s.deployments.push(old);
        s.events.insert(
            0,
            event(
                "e1",
                "(service web) has started 2 tasks: (task a) (task b).",
            ),
        );
        s.events.insert(
            0,
            event("e2", "(service web) has stopped 1 running tasks: (task c)."),
        );
        assert_eq!(
            p.observe(&s),
            vec![
                "service web: PRIMARY web:2 3/3 running, IN_PROGRESS | \
                 ACTIVE web:1 1/3 running, 1 failed, COMPLETED",
                "event: (service web) has started 2 tasks: (task a) (task b).",
                "event: (service web) has stopped 1 running tasks: (task c).",
            ]
        );
        // Only an event: one line.
        s.events
            .insert(0, event("e3", "(service web) has reached a steady state."));
        assert_eq!(
            p.observe(&s),
            vec!["event: (service web) has reached a steady state."]
        );
    }

    #[test]
    fn a_new_service_shows_its_first_events() {
        let mut s = steady();
        s.deployments[0].running_count = 0;
        let mut p = Progress::default();
        assert_eq!(p.observe(&s).len(), 1);
        s.events = vec![event("e1", "(service web) has started 3 tasks.")];
        assert_eq!(
            p.observe(&s),
            vec!["event: (service web) has started 3 tasks."]
        );
        s.deployments.clear();
        assert_eq!(p.observe(&s), vec!["service web: no deployment"]);
    }
}

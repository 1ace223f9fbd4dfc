//! `berth services create|update|scale|delete|list|describe|events|deployments`.

use super::service_wait::{describe_service, describe_services, services_not_found, wait_stable};
use super::{all_pages, Context};
use crate::args::{CreateServiceArgs, SchedulingStrategyArg, ServiceWait, ServicesCommand};
use crate::error::CliError;
use crate::output::{self, short_task_definition, Table};
use crate::service_file;
use berth_messages::command::Action;
use berth_messages::service::*;
use berth_messages::{arn, ErrorType};
use serde::Serialize;
use std::time::Duration;

pub async fn run(ctx: &Context, command: ServicesCommand) -> Result<(), CliError> {
    match command {
        ServicesCommand::Create(args) => create(ctx, *args).await,
        ServicesCommand::Update {
            name,
            task_definition,
            desired_count,
            force_new_deployment,
            min_healthy_percent,
            max_percent,
            wait,
            timeout,
        } => {
            let timeout = super::tasks::seconds(timeout)?;
            let request = update_request(
                &cluster_of(ctx, &name),
                name,
                UpdateFlags {
                    task_definition,
                    desired_count,
                    force_new_deployment,
                    min_healthy_percent,
                    max_percent,
                },
            )?;
            changed(ctx, Action::UpdateService, &request, wait, timeout).await
        }
        ServicesCommand::Scale {
            name,
            count,
            wait,
            timeout,
        } => {
            let timeout = super::tasks::seconds(timeout)?;
            let request = scale_request(&cluster_of(ctx, &name), name, count);
            changed(ctx, Action::UpdateService, &request, wait, timeout).await
        }
        ServicesCommand::Delete { name, force } => delete(ctx, name, force).await,
        ServicesCommand::List {
            scheduling_strategy,
        } => list(ctx, scheduling_strategy.map(strategy)).await,
        ServicesCommand::Describe { names } => {
            let cluster = names
                .first()
                .map_or_else(|| ctx.cluster.clone(), |n| cluster_of(ctx, n));
            let r = describe_services(ctx, &cluster, &names).await?;
            ctx.emit(&r, || {
                if r.services.is_empty() {
                    String::new()
                } else {
                    service_table(&r.services)
                }
            })?;
            services_not_found(&cluster, &r)
        }
        ServicesCommand::Events { name, limit } => {
            let mut service = describe_service(ctx, &cluster_of(ctx, &name), &name).await?;
            if let Some(n) = limit {
                service
                    .events
                    .truncate(usize::try_from(n).unwrap_or(usize::MAX));
            }
            let table = events_table(&service.events);
            ctx.emit(&described(service), || table)
        }
        ServicesCommand::Deployments { name } => {
            let service = describe_service(ctx, &cluster_of(ctx, &name), &name).await?;
            let table = deployments_table(&service.deployments);
            ctx.emit(&described(service), || table)
        }
    }
}

/// The DescribeServices response of one service.
fn described(service: Service) -> DescribeServicesResponse {
    DescribeServicesResponse {
        services: vec![service],
        failures: Vec::new(),
    }
}

/// The cluster a service reference is in: the one its ARN names, else --cluster.
fn cluster_of(ctx: &Context, service: &str) -> String {
    match arn::service_name(service) {
        (Some(cluster), _) => cluster.to_string(),
        (None, _) => ctx.cluster.clone(),
    }
}

fn strategy(s: SchedulingStrategyArg) -> SchedulingStrategy {
    match s {
        SchedulingStrategyArg::Replica => SchedulingStrategy::Replica,
        SchedulingStrategyArg::Daemon => SchedulingStrategy::Daemon,
    }
}

async fn create(ctx: &Context, args: CreateServiceArgs) -> Result<(), CliError> {
    let timeout = super::tasks::seconds(args.timeout)?;
    let from_file = match &args.cli_input_json {
        Some(path) => {
            let name = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|e| {
                CliError::input(format!("cannot read --cli-input-json file {name}: {e}"))
            })?;
            let parsed = service_file::parse(&name, &text)?;
            for w in &parsed.warnings {
                output::note(&format!("warning: {w}"));
            }
            Some(parsed.request)
        }
        None => None,
    };
    let request = create_request(&ctx.cluster, from_file, &args)?;
    changed(ctx, Action::CreateService, &request, args.wait, timeout).await
}

/// The CreateService request of `berth services create`: the file's body if any (its
/// cluster wins over --cluster), with the flags given on the command line over it.
pub fn create_request(
    cluster: &str,
    from_file: Option<CreateServiceRequest>,
    args: &CreateServiceArgs,
) -> Result<CreateServiceRequest, CliError> {
    let mut r = from_file.unwrap_or_default();
    if r.cluster.as_deref().is_none_or(str::is_empty) {
        r.cluster = Some(cluster.to_string());
    }
    if let Some(name) = &args.name {
        r.service_name = name.clone();
    }
    if r.service_name.is_empty() {
        return Err(CliError::input(
            "the service needs a name: give NAME, or serviceName in the --cli-input-json file",
        ));
    }
    if let Some(td) = &args.task_definition {
        r.task_definition = Some(td.clone());
    }
    match &r.task_definition {
        Some(td) => {
            super::taskdefs::check_reference(td)?;
        }
        None => {
            return Err(CliError::input(
                "the service needs a task definition: give --task-definition, or \
                 taskDefinition in the --cli-input-json file",
            ))
        }
    }
    if args.desired_count.is_some() {
        r.desired_count = args.desired_count;
    }
    if let Some(s) = args.scheduling_strategy {
        r.scheduling_strategy = Some(strategy(s));
    }
    if args.min_healthy_percent.is_some() || args.max_percent.is_some() || args.circuit_breaker {
        let mut c = r.deployment_configuration.take().unwrap_or_default();
        if args.min_healthy_percent.is_some() {
            c.minimum_healthy_percent = args.min_healthy_percent;
        }
        if args.max_percent.is_some() {
            c.maximum_percent = args.max_percent;
        }
        if args.circuit_breaker {
            c.deployment_circuit_breaker = Some(DeploymentCircuitBreaker {
                enable: true,
                rollback: args.rollback,
            });
        }
        r.deployment_configuration = Some(c);
    }
    if !args.placement_constraints.is_empty() {
        r.placement_constraints = args.placement_constraints.clone();
    }
    if !args.placement_strategies.is_empty() {
        r.placement_strategy = args.placement_strategies.clone();
    }
    if args.health_check_grace_period.is_some() {
        r.health_check_grace_period_seconds = args.health_check_grace_period;
    }
    match (r.scheduling_strategy.unwrap_or_default(), r.desired_count) {
        (SchedulingStrategy::Replica, None) => Err(CliError::input(
            "a REPLICA service needs --desired-count N (or desiredCount in the \
             --cli-input-json file)",
        )),
        (SchedulingStrategy::Daemon, Some(_)) => Err(CliError::input(
            "a DAEMON service runs one task on each instance: leave out --desired-count \
             (and desiredCount in the --cli-input-json file)",
        )),
        _ => Ok(r),
    }
}

/// The changes `berth services update` asks for.
#[derive(Debug, Default)]
pub struct UpdateFlags {
    pub task_definition: Option<String>,
    pub desired_count: Option<i64>,
    pub force_new_deployment: bool,
    pub min_healthy_percent: Option<i64>,
    pub max_percent: Option<i64>,
}

/// The UpdateService request of `berth services update`: only what the flags change.
pub fn update_request(
    cluster: &str,
    service: String,
    f: UpdateFlags,
) -> Result<UpdateServiceRequest, CliError> {
    if let Some(td) = &f.task_definition {
        super::taskdefs::check_reference(td)?;
    }
    let deployment_configuration = (f.min_healthy_percent.is_some() || f.max_percent.is_some())
        .then(|| DeploymentConfiguration {
            minimum_healthy_percent: f.min_healthy_percent,
            maximum_percent: f.max_percent,
            ..Default::default()
        });
    Ok(UpdateServiceRequest {
        cluster: Some(cluster.to_string()),
        service,
        desired_count: f.desired_count,
        task_definition: f.task_definition,
        deployment_configuration,
        force_new_deployment: f.force_new_deployment.then_some(true),
        ..Default::default()
    })
}

/// The UpdateService request of `berth services scale`: the desired count only.
pub fn scale_request(cluster: &str, service: String, count: i64) -> UpdateServiceRequest {
    UpdateServiceRequest {
        cluster: Some(cluster.to_string()),
        service,
        desired_count: Some(count),
        ..Default::default()
    }
}

/// Sends a CreateService or UpdateService, waits if asked, prints the service.
async fn changed<Req: Serialize>(
    ctx: &Context,
    action: Action,
    request: &Req,
    wait: Option<ServiceWait>,
    timeout: Option<Duration>,
) -> Result<(), CliError> {
    let r: ServiceResponse = ctx.client.call(action, request).await?;
    let r = match wait {
        None => r,
        Some(ServiceWait::Stable) => ServiceResponse {
            service: wait_stable(ctx, r.service, timeout).await?,
        },
    };
    ctx.emit(&r, || service_table(std::slice::from_ref(&r.service)))
}

async fn delete(ctx: &Context, name: String, force: bool) -> Result<(), CliError> {
    let r: ServiceResponse = ctx
        .client
        .call(
            Action::DeleteService,
            &DeleteServiceRequest {
                cluster: Some(cluster_of(ctx, &name)),
                service: name.clone(),
                force: force.then_some(true),
            },
        )
        .await
        .map_err(|e| match e {
            CliError::Api(api)
                if api.error_type == ErrorType::InvalidParameterException
                    && api.message.contains("scaled above 0") =>
            {
                CliError::other(format!(
                    "service {name} is scaled above 0, so it was not deleted: add --force to \
                     delete it and stop its tasks, or scale it to 0 first \
                     (`berth services scale {name} 0 --wait stable`)"
                ))
            }
            other => other,
        })?;
    ctx.emit(&r, || {
        format!(
            "service {} is {}: its tasks are stopped, then it becomes INACTIVE\n",
            r.service.service_name,
            r.service.status.as_str()
        )
    })
}

async fn list(
    ctx: &Context,
    scheduling_strategy: Option<SchedulingStrategy>,
) -> Result<(), CliError> {
    let arns = all_pages(|token| async move {
        let r: ListServicesResponse = ctx
            .client
            .call(
                Action::ListServices,
                &ListServicesRequest {
                    cluster: Some(ctx.cluster.clone()),
                    scheduling_strategy,
                    next_token: token,
                    max_results: Some(100),
                    ..Default::default()
                },
            )
            .await?;
        Ok((r.service_arns, r.next_token))
    })
    .await?;
    if ctx.json() {
        return ctx.emit(
            &ListServicesResponse {
                service_arns: arns,
                next_token: None,
            },
            String::new,
        );
    }
    let r = describe_services(ctx, &ctx.cluster, &arns).await?;
    output::print(&service_table(&r.services));
    Ok(())
}

/// The rollout state of the primary deployment, `-` when there is none.
fn rollout(s: &Service) -> &'static str {
    s.primary().map_or("-", |d| d.rollout_state.as_str())
}

/// Services as a table: name, status, counts, task definition, rollout.
pub fn service_table(services: &[Service]) -> String {
    let mut t = Table::new(&[
        "NAME",
        "STATUS",
        "DESIRED",
        "RUNNING",
        "PENDING",
        "TASK DEFINITION",
        "ROLLOUT",
    ]);
    for s in services {
        t.row(vec![
            s.service_name.clone(),
            s.status.as_str().to_string(),
            s.desired_count.to_string(),
            s.running_count.to_string(),
            s.pending_count.to_string(),
            short_task_definition(&s.task_definition).to_string(),
            rollout(s).to_string(),
        ]);
    }
    t.render()
}

/// Events (newest first) as a table: time, message.
pub fn events_table(events: &[ServiceEvent]) -> String {
    let mut t = Table::new(&["TIME", "MESSAGE"]);
    for e in events {
        t.row(vec![output::timestamp(e.created_at), e.message.clone()]);
    }
    t.render()
}

/// Deployments as a table.
pub fn deployments_table(deployments: &[Deployment]) -> String {
    let mut t = Table::new(&[
        "ID",
        "STATUS",
        "TASK DEFINITION",
        "DESIRED",
        "RUNNING",
        "PENDING",
        "FAILED",
        "ROLLOUT",
        "REASON",
    ]);
    for d in deployments {
        t.row(vec![
            d.id.clone(),
            match d.status {
                DeploymentStatus::Primary => "PRIMARY",
                DeploymentStatus::Active => "ACTIVE",
                DeploymentStatus::Inactive => "INACTIVE",
            }
            .to_string(),
            short_task_definition(&d.task_definition).to_string(),
            d.desired_count.to_string(),
            d.running_count.to_string(),
            d.pending_count.to_string(),
            d.failed_tasks.to_string(),
            d.rollout_state.as_str().to_string(),
            d.rollout_state_reason.clone().unwrap_or_default(),
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::{Cli, Command};
    use clap::Parser;

    fn create_args(args: &[&str]) -> CreateServiceArgs {
        let cli = Cli::try_parse_from(["berth", "services", "create"].iter().chain(args).copied())
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        match cli.command {
            Command::Services(ServicesCommand::Create(a)) => *a,
            other => panic!("parsed {other:?}"),
        }
    }

    fn clap_error(args: &[&str]) -> String {
        Cli::try_parse_from(["berth", "services"].iter().chain(args).copied())
            .expect_err("must be refused")
            .to_string()
    }

    #[test]
    fn create_flags_become_the_request() {
        let a = create_args(&[
            "web",
            "--task-definition",
            "web:2",
            "--desired-count",
            "3",
            "--min-healthy-percent",
            "50",
            "--max-percent",
            "150",
            "--circuit-breaker",
            "--rollback",
            "--placement-constraint",
            "memberOf:attribute:zone == a",
            "--placement-strategy",
            "spread:attribute:zone",
            "--placement-strategy",
            "binpack:memory",
            "--health-check-grace-period",
            "30",
            "--wait",
            "stable",
            "--timeout",
            "60",
        ]);
        assert_eq!(a.wait, Some(ServiceWait::Stable));
        let r = create_request("prod", None, &a).unwrap();
        assert_eq!(r.cluster.as_deref(), Some("prod"));
        assert_eq!(r.service_name, "web");
        assert_eq!(r.task_definition.as_deref(), Some("web:2"));
        assert_eq!(r.desired_count, Some(3));
        assert_eq!(
            r.deployment_configuration,
            Some(DeploymentConfiguration {
                deployment_circuit_breaker: Some(DeploymentCircuitBreaker {
                    enable: true,
                    rollback: true
                }),
                maximum_percent: Some(150),
                minimum_healthy_percent: Some(50),
            })
        );
        assert_eq!(
            r.placement_constraints[0].expression.as_deref(),
            Some("attribute:zone == a")
        );
        let strategies: Vec<_> = r
            .placement_strategy
            .iter()
            .map(|s| (s.strategy_type.as_deref(), s.field.as_deref()))
            .collect();
        assert_eq!(
            strategies,
            [
                (Some("spread"), Some("attribute:zone")),
                (Some("binpack"), Some("memory"))
            ]
        );
        assert_eq!(r.health_check_grace_period_seconds, Some(30));
        assert_eq!(r.scheduling_strategy, None);

        // The smallest: no deployment configuration, nothing else set.
        let a = create_args(&["web", "--task-definition", "web", "--desired-count", "0"]);
        let r = create_request("default", None, &a).unwrap();
        assert_eq!(r.deployment_configuration, None);
        assert!(r.placement_constraints.is_empty() && r.placement_strategy.is_empty());
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"cluster": "default", "serviceName": "web",
                               "taskDefinition": "web", "desiredCount": 0})
        );
    }

    #[test]
    fn daemon_services_take_no_desired_count() {
        let a = create_args(&[
            "agentd",
            "--task-definition",
            "agentd",
            "--scheduling-strategy",
            "DAEMON",
        ]);
        let r = create_request("default", None, &a).unwrap();
        assert_eq!(r.scheduling_strategy, Some(SchedulingStrategy::Daemon));
        assert_eq!(r.desired_count, None);

        let a = create_args(&[
            "agentd",
            "--task-definition",
            "agentd",
            "--scheduling-strategy",
            "daemon",
            "--desired-count",
            "2",
        ]);
        let e = create_request("default", None, &a).unwrap_err().to_string();
        assert!(e.contains("leave out --desired-count"), "{e}");

        let a = create_args(&[
            "web",
            "--task-definition",
            "web",
            "--scheduling-strategy",
            "replica",
        ]);
        let e = create_request("default", None, &a).unwrap_err().to_string();
        assert!(e.contains("needs --desired-count"), "{e}");
    }

    #[test]
    fn the_file_is_the_base_and_flags_win() {
        let file = service_file::parse(
            "svc.json",
            r#"{"cluster": "prod", "serviceName": "web", "taskDefinition": "web:1",
                "desiredCount": 2,
                "deploymentConfiguration": {"maximumPercent": 150, "minimumHealthyPercent": 50}}"#,
        )
        .unwrap()
        .request;
        let a = create_args(&["--cli-input-json", "svc.json"]);
        let r = create_request("default", Some(file.clone()), &a).unwrap();
        assert_eq!(r, file, "the file alone, its cluster kept");

        let a = create_args(&[
            "api",
            "--cli-input-json",
            "svc.json",
            "--desired-count",
            "5",
            "--max-percent",
            "200",
        ]);
        let r = create_request("default", Some(file.clone()), &a).unwrap();
        assert_eq!(r.cluster.as_deref(), Some("prod"));
        assert_eq!(r.service_name, "api");
        assert_eq!(r.desired_count, Some(5));
        let c = r.deployment_configuration.unwrap();
        assert_eq!(
            (c.maximum_percent, c.minimum_healthy_percent),
            (Some(200), Some(50))
        );

        // No cluster in the file: --cluster.
        let mut no_cluster = file.clone();
        no_cluster.cluster = None;
        let a = create_args(&["--cli-input-json", "svc.json"]);
        let r = create_request("staging", Some(no_cluster), &a).unwrap();
        assert_eq!(r.cluster.as_deref(), Some("staging"));

        // No name anywhere.
        let mut nameless = file;
        nameless.service_name.clear();
        let e = create_request("default", Some(nameless), &a)
            .unwrap_err()
            .to_string();
        assert!(e.contains("the service needs a name"), "{e}");
    }

    #[test]
    fn a_bad_task_definition_reference_is_refused_before_the_call() {
        let a = create_args(&[
            "web",
            "--task-definition",
            "web:zero",
            "--desired-count",
            "1",
        ]);
        let e = create_request("default", None, &a).unwrap_err().to_string();
        assert!(e.contains("is not a task definition"), "{e}");
    }

    #[test]
    fn bad_flags_are_clap_errors() {
        // No task definition, no file.
        let e = clap_error(&["create", "web", "--desired-count", "1"]);
        assert!(e.contains("--task-definition"), "{e}");
        // No desired count for a REPLICA service.
        let e = clap_error(&["create", "web", "--task-definition", "web"]);
        assert!(e.contains("--desired-count"), "{e}");
        // No name, no file.
        let e = clap_error(&["create", "--task-definition", "web", "--desired-count", "1"]);
        assert!(e.contains("NAME"), "{e}");
        // A valid create with one bad flag more: (the flag and its value, what the
        // error names).
        let base = [
            "create",
            "web",
            "--task-definition",
            "web",
            "--desired-count",
            "1",
        ];
        let cases: [(&[&str], &str); 6] = [
            (
                &["--placement-strategy", "binpack:disk"],
                "binpack needs a field",
            ),
            (
                &["--placement-constraint", "memberOf"],
                "memberOf needs an expression",
            ),
            (&["--rollback"], "--circuit-breaker"),
            (&["--min-healthy-percent", "101"], "--min-healthy-percent"),
            (&["--wait", "done"], "stable"),
            (&["--timeout", "5"], "--wait"),
        ];
        for (extra, names) in cases {
            let args: Vec<&str> = base.iter().chain(extra).copied().collect();
            let e = clap_error(&args);
            assert!(e.contains(names), "{extra:?}: {e}");
        }
        // update needs something to change.
        let e = clap_error(&["update", "web"]);
        assert!(e.contains("required"), "{e}");
        let e = clap_error(&["scale", "web"]);
        assert!(e.contains("<N>"), "{e}");
        let e = clap_error(&["scale", "web", "many"]);
        assert!(e.contains("many"), "{e}");
        let e = clap_error(&["events", "web", "--limit", "0"]);
        assert!(e.contains("--limit"), "{e}");
        let e = clap_error(&["describe"]);
        assert!(e.contains("NAMES"), "{e}");
    }

    #[test]
    fn update_and_scale_send_only_what_changes() {
        let r = update_request(
            "prod",
            "web".into(),
            UpdateFlags {
                task_definition: Some("web:3".into()),
                force_new_deployment: true,
                max_percent: Some(150),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            serde_json::json!({"cluster": "prod", "service": "web", "taskDefinition": "web:3",
                               "forceNewDeployment": true,
                               "deploymentConfiguration": {"maximumPercent": 150}})
        );
        let r = update_request(
            "prod",
            "web".into(),
            UpdateFlags {
                desired_count: Some(0),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(r, scale_request("prod", "web".into(), 0));
        assert_eq!(
            serde_json::to_value(scale_request("prod", "web".into(), 4)).unwrap(),
            serde_json::json!({"cluster": "prod", "service": "web", "desiredCount": 4})
        );
        assert!(update_request(
            "prod",
            "web".into(),
            UpdateFlags {
                task_definition: Some("a:b:c".into()),
                ..Default::default()
            }
        )
        .is_err());
    }

    #[test]
    fn tables() {
        let s = Service {
            service_name: "web".into(),
            desired_count: 3,
            running_count: 2,
            pending_count: 1,
            task_definition: "arn:aws:ecs:local:0:task-definition/web:2".into(),
            deployments: vec![Deployment {
                id: "ecs-svc/1".into(),
                task_definition: "arn:aws:ecs:local:0:task-definition/web:2".into(),
                desired_count: 3,
                running_count: 2,
                pending_count: 1,
                rollout_state_reason: Some("ECS deployment ecs-svc/1 in progress.".into()),
                ..Default::default()
            }],
            events: vec![ServiceEvent {
                id: "e".into(),
                created_at: 1_700_000_000.0,
                message: "(service web) has started 3 tasks.".into(),
            }],
            ..Default::default()
        };
        let table = service_table(std::slice::from_ref(&s));
        let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(
            row,
            ["web", "ACTIVE", "3", "2", "1", "web:2", "IN_PROGRESS"]
        );
        let table = deployments_table(&s.deployments);
        assert!(table.starts_with("ID"), "{table}");
        let row = table.lines().nth(1).unwrap();
        assert!(
            row.starts_with("ecs-svc/1  PRIMARY  web:2")
                && row.ends_with("IN_PROGRESS  ECS deployment ecs-svc/1 in progress."),
            "{row}"
        );
        assert_eq!(
            events_table(&s.events),
            "TIME                  MESSAGE\n\
             2023-11-14T22:13:20Z  (service web) has started 3 tasks.\n"
        );
    }
}

//! The services phase of a run (R1, after the placement runs): see [`crate::services`].

use super::{Bins, Env, Sizes, PROC};
use crate::processes::{AgentProcess, ControlProcess};
use crate::services::{self as svc, Follower, Kill, ServicesRun};
use crate::{procfs, seed};
use anyhow::Context as _;
use std::time::Duration;

const SERVICES: &str = "services";
const SERVICE_FAMILY: &str = "bench-svc";
const LARGE: &str = "large";
const REPLACED: &str = "replaced";
const PROC_SERVICE: &str = "proc-replaced";
const PROC_SERVICE_FAMILY: &str = "bench-proc-svc";
/// The command line of the process service's tasks (the measurement kills them by it).
const PROC_COMMAND: [&str; 2] = ["sleep", "7201"];
/// Tasks of the small services whose replacement is timed.
const REPLACED_TASKS: i64 = 10;
const PROC_TASKS: i64 = 5;
/// How long berth-control's CPU is measured while the services rest.
const IDLE_WINDOW: Duration = Duration::from_secs(10);
const STEADY_TIMEOUT: Duration = Duration::from_secs(600);

/// Runs the services measurements; what was measured stays in `run` when a later step
/// fails.
pub(super) async fn services_phase(
    env: &mut Env,
    run: &mut ServicesRun,
    sizes: &Sizes,
    bins: &Bins,
    skip_runtime: bool,
) -> anyhow::Result<()> {
    run.hosts = sizes.service_hosts;
    run.tasks = sizes.service_tasks;
    env.create_cluster(SERVICES).await?;
    // One report in flight per host at least, as independent agents would have (the
    // default pool of a sim is shared by all its hosts).
    env.start_sim_reporting(
        SERVICES,
        sizes.service_hosts,
        Duration::from_millis(50),
        Duration::from_secs(3600),
        sizes
            .service_hosts
            .max(berth_sim::engine::REPORTS_IN_FLIGHT),
    )
    .await?;
    let td1 = env
        .register(&seed::definition(SERVICE_FAMILY, 8, 16, Vec::new()))
        .await?;
    let td2 = env
        .register(&seed::definition(SERVICE_FAMILY, 8, 16, Vec::new()))
        .await?;
    let api = env.api.clone();
    let large = [LARGE.to_string()];

    tracing::info!(tasks = sizes.service_tasks, "services: scale-up");
    let started = std::time::Instant::now();
    svc::create(&api, SERVICES, LARGE, &td1, sizes.service_tasks as i64).await?;
    svc::wait_steady(&api, SERVICES, &large, Some(&td1), STEADY_TIMEOUT).await?;
    run.scale_up = Some(started.elapsed());

    tracing::info!("services: rolling deployment");
    let started = std::time::Instant::now();
    svc::deploy(
        &api,
        SERVICES,
        LARGE,
        &td2,
        Some(berth_messages::service::DeploymentConfiguration {
            minimum_healthy_percent: Some(100),
            maximum_percent: Some(200),
            ..Default::default()
        }),
    )
    .await?;
    svc::wait_steady(&api, SERVICES, &large, Some(&td2), STEADY_TIMEOUT).await?;
    run.rolling = Some(started.elapsed());

    tracing::info!(
        kills = sizes.replacement_kills,
        "services: replacement on hollow hosts"
    );
    let (follower, follow) = Follower::start(
        &env.client,
        SERVICES,
        &berth_messages::service::group_of(REPLACED),
    )
    .await?;
    svc::create(&api, SERVICES, REPLACED, &td1, REPLACED_TASKS).await?;
    let kill = Kill::StopTask {
        api: &api,
        cluster: SERVICES,
    };
    let measured = svc::replacement(
        &follower,
        &kill,
        REPLACED_TASKS as usize,
        sizes.replacement_kills,
    )
    .await;
    follow.abort();
    run.replacement_hollow = Some(measured?);

    if !skip_runtime && bins.agent.is_file() {
        tracing::info!(
            kills = sizes.replacement_kills,
            "services: replacement on a real agent"
        );
        run.replacement_process = Some(process_replacement(env, sizes, bins).await?);
    }

    tracing::info!(services = sizes.idle_services, "services: idle cost");
    let names: Vec<String> = (0..sizes.idle_services)
        .map(|i| format!("idle-{i}"))
        .collect();
    run.idle_services = names.len();
    run.idle_tasks_each = 10;
    svc::create_many(&api, SERVICES, &names, &td1, 10).await?;
    svc::wait_steady(&api, SERVICES, &names, Some(&td1), STEADY_TIMEOUT).await?;
    // Let the level pass and the last settles run once before measuring.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let meter = procfs::CpuMeter::start(env.cpu_groups());
    tokio::time::sleep(IDLE_WINDOW).await;
    let cpu = meter.stop();
    run.idle_core_share = cpu
        .by_process
        .iter()
        .find(|(name, _)| name == "berth-control")
        .map(|(_, used)| used.as_secs_f64() / cpu.elapsed.as_secs_f64());

    tracing::info!(
        services = sizes.concurrent_services,
        "services: deployments under two replicas"
    );
    let log = env.dir.join("berth-control-second.log");
    let mut second = ControlProcess::spawn(&env.control_bin, &env.urls, env.replicas, &log)?;
    second.wait_serving(&api, Duration::from_secs(120)).await?;
    let deploying: Vec<String> = names
        .iter()
        .take(sizes.concurrent_services)
        .cloned()
        .collect();
    run.concurrent_services = deploying.len();
    let started = std::time::Instant::now();
    svc::deploy_many(&api, SERVICES, &deploying, &td2).await?;
    let steady = svc::wait_steady(&api, SERVICES, &deploying, Some(&td2), STEADY_TIMEOUT).await;
    run.concurrent_elapsed = Some(started.elapsed());
    second.stop().await?;
    steady?;
    Ok(())
}

/// Replacement of a killed process on a real agent.
async fn process_replacement(
    env: &mut Env,
    sizes: &Sizes,
    bins: &Bins,
) -> anyhow::Result<crate::stats::Percentiles> {
    // The data directory of the task start measurement's agent: this one comes back as
    // the same instance, so no instance of a stopped agent is left for placement.
    let data_dir = env.dir.join("agent-data");
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let agent = AgentProcess::spawn(
        &bins.agent,
        &env.urls,
        PROC,
        &data_dir,
        &env.dir.join("berth-agent-services.log"),
        Duration::from_secs(60),
    )
    .await?;
    let td = env
        .register(&seed::definition(
            PROC_SERVICE_FAMILY,
            1,
            8,
            PROC_COMMAND.iter().map(|s| s.to_string()).collect(),
        ))
        .await?;
    let api = env.api.clone();
    let (follower, follow) = Follower::start(
        &env.client,
        PROC,
        &berth_messages::service::group_of(PROC_SERVICE),
    )
    .await?;
    svc::create(&api, PROC, PROC_SERVICE, &td, PROC_TASKS).await?;
    let command_line = PROC_COMMAND.join(" ");
    let kill = Kill::Process {
        command_line: &command_line,
    };
    let measured = svc::replacement(
        &follower,
        &kill,
        PROC_TASKS as usize,
        sizes.replacement_kills,
    )
    .await;
    follow.abort();
    // Scaled to nothing, so the agent stops with no task of the service left.
    let _: berth_messages::service::ServiceResponse = api
        .call(
            berth_messages::command::Action::UpdateService,
            &berth_messages::service::UpdateServiceRequest {
                cluster: Some(PROC.into()),
                service: PROC_SERVICE.into(),
                desired_count: Some(0),
                ..Default::default()
            },
        )
        .await
        .context("scaling the process service to 0")?;
    let stopped = tokio::time::timeout(Duration::from_secs(60), async {
        while svc::listed(&api, PROC, PROC_SERVICE).await.unwrap_or(1) > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    if stopped.is_err() {
        tracing::warn!("the process service's tasks did not all stop within 60 s");
    }
    agent.stop().await?;
    measured
}

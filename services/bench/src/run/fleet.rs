//! The fleet phase of a run: hollow agents of real shape, each with its own connection.

use super::{Bins, Env, Sizes};
use crate::placement::{self, Load};
use crate::processes::Nats;
use crate::runtime::{self, StartLoad};
use crate::seed;
use std::time::Duration;

/// The fleet of real shape, and the small one its start latency is compared with.
const FLEET: &str = "fleet";
const FLEET_SMALL: &str = "fleet-small";
/// Hollow tasks that never start (placement throughput on the fleet).
const FLEET_PLACE_FAMILY: &str = "bench-fleet-place";
/// Hollow tasks that start after 50 ms and end 200 ms later (start latency).
const FLEET_START_FAMILY: &str = "bench-fleet-start";
/// Heartbeat interval of the fleets (and of the control plane): the default.
const FLEET_HEARTBEAT: Duration = Duration::from_secs(5);
/// How long the fleet is watched at rest.
const IDLE_WINDOW: Duration = Duration::from_secs(10);

/// Fleets of real shape (see [`crate::fleet`]): a small one and a large one, the large one's
/// registration, idle cost, start latency, placement throughput and a reconnect storm.
/// What was measured stays in `run` when a later step fails.
pub(super) async fn fleet_phase(
    env: &mut Env,
    nats: &mut Nats,
    run: &mut crate::fleet::FleetRun,
    sizes: &Sizes,
    bins: &Bins,
) -> anyhow::Result<()> {
    use crate::fleet;
    use crate::processes::{FleetProcess, FleetSpec};
    // The hollow hosts of the placement runs stopped beating: their instances are flipped
    // to disconnected in a burst of writes, which must not fall inside this phase.
    env.wait_agent_flips(
        sizes.instances * 2 + sizes.instances_small,
        FLEET_HEARTBEAT * 6,
    )
    .await;
    for cluster in [FLEET, FLEET_SMALL] {
        env.create_cluster(cluster).await?;
    }
    let label = |name: &str, value: &str| (name.to_string(), value.to_string());
    let mut never = seed::definition(FLEET_PLACE_FAMILY, 16, 32, Vec::new());
    never.container_definitions[0].docker_labels =
        [label("berth.sim.start-delay-ms", "86400000")].into();
    env.register(&never).await?;
    let mut quick = seed::definition(FLEET_START_FAMILY, 1, 8, Vec::new());
    quick.container_definitions[0].docker_labels = [
        label("berth.sim.start-delay-ms", "50"),
        label("berth.sim.run-ms", "200"),
    ]
    .into();
    env.register(&quick).await?;
    let start_timeout = Duration::from_secs(600);
    let start_load = |cluster: &str| StartLoad {
        cluster: cluster.into(),
        family: FLEET_START_FAMILY.into(),
        instance_arn: None,
        tasks: sizes.start_tasks.min(300),
        per_second: sizes.start_per_second,
    };
    let spawn = |cluster: &'static str, hosts: usize| {
        let data = env.dir.join("fleet-data").join(cluster);
        let log = env.dir.join(format!("berth-agent-{cluster}.log"));
        let (agent, urls) = (bins.agent.clone(), env.urls.clone());
        async move {
            let spec = FleetSpec {
                cluster,
                hosts,
                data_dir: &data,
                env: vec![(
                    "BERTH_HEARTBEAT_INTERVAL",
                    FLEET_HEARTBEAT.as_secs_f64().to_string(),
                )],
            };
            FleetProcess::spawn(&agent, &urls, &spec, &log, start_timeout).await
        }
    };

    tracing::info!(hosts = sizes.fleet_small_hosts, "fleet: the small fleet");
    let small = spawn(FLEET_SMALL, sizes.fleet_small_hosts).await?;
    run.small_hosts = small.hosts;
    run.start_small =
        Some(runtime::measure(&env.api, &start_load(FLEET_SMALL), Duration::from_secs(120)).await?);

    tracing::info!(hosts = sizes.fleet_hosts, "fleet: registration");
    let large = spawn(FLEET, sizes.fleet_hosts).await?;
    run.hosts = large.hosts;
    run.registration = large.registration;
    run.consumers = env.consumers_on_state().await;
    let mut groups = env.cpu_groups();
    groups.push(("fleet".into(), vec![large.pid(), small.pid()]));

    tracing::info!("fleet: at rest");
    // One heartbeat interval for what the start left in flight.
    tokio::time::sleep(FLEET_HEARTBEAT).await;
    run.idle = Some(
        fleet::idle(
            groups.clone(),
            &env.monitor_ports,
            &env.nats_pids,
            large.pid(),
            IDLE_WINDOW,
        )
        .await,
    );

    tracing::info!("fleet: task start");
    run.start =
        Some(runtime::measure(&env.api, &start_load(FLEET), Duration::from_secs(120)).await?);

    tracing::info!(tasks = sizes.place_tasks, "fleet: placement throughput");
    let load = Load {
        cluster: FLEET.into(),
        family: FLEET_PLACE_FAMILY.into(),
        tasks: sizes.place_tasks,
        concurrency: sizes.concurrency,
        strategies: Vec::new(),
        monitor_ports: env.monitor_ports.clone(),
    };
    let mut placed = placement::run(&env.api, &load, groups, None).await;
    placed.instances = large.hosts;
    placed.registration = large.registration;
    run.placement = Some(placed);

    tracing::info!("fleet: reconnect storm");
    let watch = fleet::SyncWatch::start(&env.client, FLEET).await?;
    run.storm = Some(fleet::storm(&env.api, &watch, large.hosts, || nats.restart_node(0)).await);
    env.nats_pids = nats.pids();
    drop(watch);

    large.stop().await?;
    small.stop().await?;
    Ok(())
}

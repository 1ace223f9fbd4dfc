//! Phase R3 of a run: three nats-servers with R3 streams: the journal ceiling, placement
//! (default and binpack) and reads under churn at one seeded size.

use super::*;

pub(super) async fn three_nodes(args: &Args, sizes: &Sizes, bins: &Bins, dir: &Path) -> Phase {
    let mut phase = Phase {
        label: "R3 (3 nodes)".into(),
        replicas: 3,
        read_instances: sizes.read_instances,
        background_per_second: sizes.background_per_second,
        churn_per_second: sizes.churn_per_second,
        ..Default::default()
    };
    let nats = match Nats::start(3).await {
        Ok(n) => n,
        Err(e) => {
            phase.errors.push(format!("{e:#}"));
            return phase;
        }
    };
    match Env::connect(&nats, &bins.control, dir).await {
        Ok(mut env) => {
            if let Err(e) = measure_three_nodes(&mut env, &mut phase, args, sizes).await {
                phase.errors.push(format!("{e:#}"));
            }
            env.finish(&mut phase).await;
        }
        Err(e) => phase.errors.push(format!("{e:#}")),
    }
    nats.stop().await;
    phase
}

async fn measure_three_nodes(
    env: &mut Env,
    phase: &mut Phase,
    args: &Args,
    sizes: &Sizes,
) -> anyhow::Result<()> {
    tracing::info!("R3: journal ceiling");
    phase.ceiling = Some(env.measure_ceiling(sizes).await?);
    env.start_control().await?;
    for cluster in [READS, PLACE, PLACE_BINPACK] {
        env.create_cluster(cluster).await?;
    }
    let seed_definition = env.register(&seed::task_definition_request()).await?;
    env.register(&seed::definition(PLACE_FAMILY, 16, 32, Vec::new()))
        .await?;
    let runs = [(PLACE, None), (PLACE_BINPACK, Some(binpack_memory()))]
        .into_iter()
        .map(|(cluster, strategy)| (cluster, sizes.r3_instances, sizes.r3_tasks, strategy));
    placement_runs(env, phase, args, sizes, runs).await?;

    let (hollow, _) = env
        .start_sim(
            READS,
            sizes.read_instances,
            Duration::from_millis(50),
            Duration::from_secs(2),
        )
        .await?;
    let mut seeder = Seeder::new(env.journal.clone(), &env.client, READS, &seed_definition);
    tracing::info!(size = sizes.r3_read_size, "R3: seeding");
    let seeding = seeder.seed_to(sizes.r3_read_size).await?;
    env.wait_view(seeding.last_sequence, VIEW_TIMEOUT).await?;
    phase.seeding.push((sizes.r3_read_size, seeding));
    if let Err(e) = env.quiesce(Duration::from_secs(60)).await {
        tracing::warn!(error = %e, "reads start before the command stream drained");
    }
    tracing::info!("R3: reads under churn");
    let read_load = ReadLoad {
        cluster: READS.into(),
        family: PLACE_FAMILY.into(),
        samples: sizes.read_samples,
        churn_per_second: sizes.churn_per_second,
        background_per_second: sizes.background_per_second,
        max_duration: sizes.read_max_duration,
    };
    let read = measure_reads(env, args, &read_load, &seeder, &hollow, true).await;
    phase.reads.push(read);
    Ok(())
}

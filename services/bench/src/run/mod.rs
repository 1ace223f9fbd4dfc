//! The order of a run. Phase R1 (one nats-server, R1 streams): the journal ceiling; a
//! `berth-control` process; read latency under churn at growing seeded sizes, with a
//! fresh replica's recovery and memory at the recovery sizes (so a recovery replays the
//! seeded tasks and nothing else of size); task start latency with a real
//! `berth-agent`; the journal ceiling again (placement is compared with the server as it
//! is then); placement throughput on the large and the small hollow clusters and
//! with binpack (last: their hosts' disconnection is a burst of writes); then
//! quiescence and the audit. Phase R3 (3-node cluster, R3 streams): ceiling, placement
//! throughput (default and binpack) and reads, then the audit.

use crate::api::Api;
use crate::ceiling;
use crate::placement::{self, Load};
use crate::processes::{AgentProcess, ControlProcess, Nats};
use crate::procfs;
use crate::reads::{self, ReadLoad};
use crate::report;
use crate::results::{AuditSummary, Machine, Phase, Placement, Recovery, Results};
use crate::runtime::{self, StartLoad};
use crate::seed::{self, Seeder};
use crate::Args;
use anyhow::{bail, Context as _};
use berth_journal::{Journal, JournalConfig};
use berth_messages::api::{
    ClusterResponse, CreateClusterRequest, DescribeTasksRequest, RegisterTaskDefinitionRequest,
    TaskDefinitionResponse, TasksResponse,
};
use berth_messages::command::Action;
use berth_messages::model::PlacementStrategy;
use berth_messages::streams::{self, StreamOptions};
use berth_sim::{SimConfig, SimHandle};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod fleet;
mod services;
mod three_nodes;
use fleet::fleet_phase;
use services::services_phase;
use three_nodes::three_nodes;

const READS: &str = "reads";
const PLACE: &str = "place";
const PLACE_SMALL: &str = "place-small";
/// Placement with binpack(memory): a RunTask's tasks share instances, so one instance
/// write carries several placements.
const PLACE_BINPACK: &str = "place-binpack";
pub(super) const PROC: &str = "proc";
const PLACE_FAMILY: &str = "bench-place";
const PROC_FAMILY: &str = "bench-proc";
const CONTROL_START_TIMEOUT: Duration = Duration::from_secs(600);
const VIEW_TIMEOUT: Duration = Duration::from_secs(900);

/// Sizes of one run.
#[derive(Debug, Clone)]
pub struct Sizes {
    pub ceiling_writes: usize,
    pub serial_writes: usize,
    pub instances: usize,
    pub instances_small: usize,
    pub place_tasks: usize,
    pub concurrency: usize,
    pub read_sizes: Vec<usize>,
    pub recovery_sizes: Vec<usize>,
    pub read_samples: usize,
    pub read_instances: usize,
    /// Longest a read measurement runs, whatever its sample count.
    pub read_max_duration: Duration,
    pub background_per_second: u32,
    pub churn_per_second: u32,
    pub start_tasks: usize,
    pub start_per_second: u32,
    pub r3_instances: usize,
    pub r3_tasks: usize,
    pub r3_read_size: usize,
    /// Hosts of the fleet of real shape, and of the small one it is compared with.
    pub fleet_hosts: usize,
    pub fleet_small_hosts: usize,
    /// Hollow hosts of the services measurements, and the tasks of the large service.
    pub service_hosts: usize,
    pub service_tasks: usize,
    /// Kills whose replacement is timed (hollow, and on a real agent).
    pub replacement_kills: usize,
    /// Services of 10 tasks resting while the control plane's CPU is measured.
    pub idle_services: usize,
    /// Of those, services deploying at once under two replicas.
    pub concurrent_services: usize,
}

impl Sizes {
    pub fn from_args(args: &Args) -> Sizes {
        let base = if args.quick {
            Sizes {
                ceiling_writes: 30_000,
                serial_writes: 1_000,
                instances: 200,
                instances_small: 50,
                place_tasks: 2_000,
                concurrency: 16,
                read_sizes: vec![1_000, 10_000],
                recovery_sizes: vec![1_000, 10_000],
                read_samples: 1_000,
                read_instances: 50,
                read_max_duration: Duration::from_secs(15),
                background_per_second: 5,
                churn_per_second: 10,
                start_tasks: 20,
                start_per_second: 20,
                r3_instances: 200,
                r3_tasks: 2_000,
                r3_read_size: 10_000,
                fleet_hosts: 200,
                fleet_small_hosts: 20,
                service_hosts: 50,
                service_tasks: 500,
                replacement_kills: 20,
                idle_services: 50,
                concurrent_services: 20,
            }
        } else {
            Sizes {
                ceiling_writes: 200_000,
                serial_writes: 5_000,
                instances: 10_000,
                instances_small: 1_000,
                place_tasks: 100_000,
                // The rate measured at 64, 128, 256, 512 and 1,024 requests in flight
                // peaks at 256 (docs/benchmarks.md, "Analysis").
                concurrency: 256,
                read_sizes: vec![1_000, 10_000, 100_000, 1_000_000],
                recovery_sizes: vec![100_000, 1_000_000],
                read_samples: 20_000,
                read_instances: 1_000,
                read_max_duration: Duration::from_secs(120),
                background_per_second: 10,
                churn_per_second: 10,
                start_tasks: 500,
                start_per_second: 20,
                r3_instances: 10_000,
                r3_tasks: 50_000,
                r3_read_size: 100_000,
                fleet_hosts: 10_000,
                fleet_small_hosts: 100,
                service_hosts: 1_000,
                service_tasks: 10_000,
                replacement_kills: 200,
                idle_services: 1_000,
                concurrent_services: 100,
            }
        };
        Sizes {
            instances: args.instances.unwrap_or(base.instances),
            instances_small: args.instances_small.unwrap_or(base.instances_small),
            place_tasks: args.place_tasks.unwrap_or(base.place_tasks),
            concurrency: args.concurrency.unwrap_or(base.concurrency),
            read_sizes: args.read_sizes.clone().unwrap_or(base.read_sizes.clone()),
            recovery_sizes: args
                .recovery_sizes
                .clone()
                .unwrap_or(base.recovery_sizes.clone()),
            read_samples: args.read_samples.unwrap_or(base.read_samples),
            read_instances: args.read_instances.unwrap_or(base.read_instances),
            start_tasks: args.start_tasks.unwrap_or(base.start_tasks),
            r3_instances: args.r3_instances.unwrap_or(base.r3_instances),
            r3_tasks: args.r3_tasks.unwrap_or(base.r3_tasks),
            r3_read_size: args.r3_read_size.unwrap_or(base.r3_read_size),
            // As many as the shared-consumer placement run it is compared with.
            fleet_hosts: args
                .fleet_hosts
                .or(args.instances)
                .unwrap_or(base.fleet_hosts),
            ..base
        }
    }
}

/// Binaries the run starts.
struct Bins {
    control: PathBuf,
    agent: PathBuf,
}

fn next_to_this_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("path of berth-bench")?;
    let dir = exe.parent().context("directory of berth-bench")?;
    Ok(dir.join(name))
}

/// Runs everything and prints the report.
pub async fn run(args: Args) -> anyhow::Result<Results> {
    let started = Instant::now();
    let sizes = Sizes::from_args(&args);
    let bins = Bins {
        control: match &args.control_bin {
            Some(p) => p.clone(),
            None => next_to_this_binary("berth-control")?,
        },
        agent: match &args.agent_bin {
            Some(p) => p.clone(),
            None => next_to_this_binary("berth-agent")?,
        },
    };
    if !bins.control.is_file() {
        bail!(
            "{} does not exist: build it (cargo build --release -p berth-control) or pass --control-bin",
            bins.control.display()
        );
    }
    let work_dir = match &args.work_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            dir.clone()
        }
        None => tempfile::Builder::new()
            .prefix("berth-bench-")
            .tempdir()
            .context("creating a work directory")?
            .keep(),
    };
    if let Some(kills) = args.failover_kills {
        crate::failover::run(&bins.control, &work_dir, kills, args.failover_starts).await?;
        eprintln!("berth-bench: logs in {}", work_dir.display());
        return Ok(Results::default());
    }
    tracing::info!(work_dir = %work_dir.display(), ?sizes, "berth-bench starting");
    let mut results = Results {
        quick: args.quick,
        command: std::iter::once("scripts/bench".to_string())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" "),
        machine: machine(),
        ..Default::default()
    };
    if let Some(path) = &args.placement_bench {
        results.criterion = crate::criterion::read(path);
    }

    results
        .phases
        .push(single_node(&args, &sizes, &bins, &work_dir.join("r1")).await);
    if !args.skip_r3 {
        results
            .phases
            .push(three_nodes(&args, &sizes, &bins, &work_dir.join("r3")).await);
    }
    results.total = started.elapsed();
    let text = report::render(&results);
    println!("{text}");
    if let Some(path) = &args.markdown {
        std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
    }
    eprintln!("berth-bench: logs and profiles in {}", work_dir.display());
    Ok(results)
}

fn machine() -> Machine {
    let nats_version = std::process::Command::new(berth_testkit::nats_server_bin())
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "nats-server (version unknown)".into());
    Machine {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_mib: procfs::memory_total_mib().unwrap_or(0),
        cpu_model: procfs::cpu_model().unwrap_or_else(|| "unknown CPU".into()),
        nats_version,
        load_average: std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next().map(str::to_string))
            .unwrap_or_default(),
    }
}

/// A nats-server setup with a control plane and the connections the benchmark uses.
struct Env {
    dir: PathBuf,
    urls: Vec<String>,
    replicas: usize,
    client: async_nats::Client,
    /// Setup calls, placement load, recovery probes.
    api: Api,
    /// Churn and background placements during reads.
    load_api: Api,
    /// Timed reads (own connection).
    read_api: Api,
    journal: Journal,
    control_bin: PathBuf,
    control: Option<ControlProcess>,
    controls_started: usize,
    nats_pids: Vec<u32>,
    monitor_ports: Vec<u16>,
    sims: Vec<SimHandle>,
}

impl Env {
    async fn connect(nats: &Nats, control_bin: &Path, dir: &Path) -> anyhow::Result<Env> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let client = nats.connect("berth-bench").await?;
        let load_client = nats.connect("berth-bench-load").await?;
        let read_client = nats.connect("berth-bench-reads").await?;
        let replicas = nats.replicas();
        let journal = Journal::with_client(
            client.clone(),
            &JournalConfig {
                servers: nats.urls(),
                streams: StreamOptions {
                    replicas,
                    ..StreamOptions::default()
                },
                name: "berth-bench".into(),
                ..JournalConfig::default()
            },
        )
        .await
        .context("opening the journal")?;
        let timeout = Duration::from_secs(60);
        Ok(Env {
            dir: dir.to_path_buf(),
            urls: nats.urls(),
            replicas,
            api: Api::new(client.clone(), timeout),
            load_api: Api::new(load_client, timeout),
            read_api: Api::new(read_client, timeout),
            client,
            journal,
            control_bin: control_bin.to_path_buf(),
            control: None,
            controls_started: 0,
            nats_pids: nats.pids(),
            monitor_ports: nats.monitor_ports(),
            sims: Vec::new(),
        })
    }

    /// The journal ceiling on this setup's server(s), with its streams' replicas.
    async fn measure_ceiling(&self, sizes: &Sizes) -> anyhow::Result<ceiling::Ceiling> {
        ceiling::measure(
            &self.client,
            &self.urls,
            self.replicas,
            sizes.ceiling_writes,
            sizes.serial_writes,
        )
        .await
    }

    /// Starts a replica and waits until it serves the API.
    async fn start_control(&mut self) -> anyhow::Result<()> {
        self.controls_started += 1;
        let log = self
            .dir
            .join(format!("berth-control-{}.log", self.controls_started));
        let mut control =
            ControlProcess::spawn(&self.control_bin, &self.urls, self.replicas, &log)?;
        control
            .wait_serving(&self.api, CONTROL_START_TIMEOUT)
            .await?;
        self.control = Some(control);
        Ok(())
    }

    fn control_pid(&self) -> Option<u32> {
        self.control.as_ref().map(ControlProcess::pid)
    }

    fn cpu_groups(&self) -> Vec<(String, Vec<u32>)> {
        vec![
            (
                "berth-control".into(),
                self.control_pid().into_iter().collect(),
            ),
            ("nats-server".into(), self.nats_pids.clone()),
            (
                "berth-bench (load and hollow hosts)".into(),
                vec![std::process::id()],
            ),
        ]
    }

    async fn create_cluster(&self, name: &str) -> anyhow::Result<()> {
        let request = CreateClusterRequest {
            cluster_name: Some(name.into()),
            ..Default::default()
        };
        self.api
            .call::<_, ClusterResponse>(Action::CreateCluster, &request)
            .await
            .with_context(|| format!("creating cluster {name}"))?;
        Ok(())
    }

    async fn register(&self, request: &RegisterTaskDefinitionRequest) -> anyhow::Result<String> {
        let r: TaskDefinitionResponse = self
            .api
            .call(Action::RegisterTaskDefinition, request)
            .await
            .with_context(|| format!("registering task definition {}", request.family))?;
        Ok(r.task_definition.task_definition_arn)
    }

    /// Starts hollow instances; returns their ARNs and how long registering them took.
    async fn start_sim(
        &mut self,
        cluster: &str,
        instances: usize,
        start_delay: Duration,
        run_time: Duration,
    ) -> anyhow::Result<(Vec<String>, Duration)> {
        self.start_sim_reporting(
            cluster,
            instances,
            start_delay,
            run_time,
            berth_sim::engine::REPORTS_IN_FLIGHT,
        )
        .await
    }

    /// [`Env::start_sim`] with `reports_in_flight` state-change reports at once.
    async fn start_sim_reporting(
        &mut self,
        cluster: &str,
        instances: usize,
        start_delay: Duration,
        run_time: Duration,
        reports_in_flight: usize,
    ) -> anyhow::Result<(Vec<String>, Duration)> {
        let started = Instant::now();
        let sim = berth_sim::start(SimConfig {
            cluster: cluster.into(),
            nats: self.urls.clone(),
            instances,
            cpu: 4096,
            memory: 16384,
            start_delay,
            run_time,
            exit_code: 0,
            heartbeat_interval: Duration::from_secs(5),
            data_dir: None,
            reports_in_flight,
        })
        .await
        .with_context(|| format!("starting {instances} hollow instances in {cluster}"))?;
        let arns = sim.instance_arns().to_vec();
        self.sims.push(sim);
        Ok((arns, started.elapsed()))
    }

    async fn stop_sims(&mut self) {
        for sim in self.sims.drain(..) {
            sim.stop().await;
        }
    }

    /// Waits until the serving replica's view has applied `sequence`.
    async fn wait_view(&self, sequence: u64, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let api = self.api.with_timeout(Duration::from_secs(5));
        loop {
            if let Ok(Some(applied)) = api.applied_sequence().await {
                if applied >= sequence {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "the control plane's view did not reach sequence {sequence} within {timeout:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn control_rss_kib(&self) -> Option<u64> {
        self.control.as_ref().and_then(ControlProcess::rss_kib)
    }

    /// Stops the replica, starts a fresh one and times it until a read reflects the whole
    /// journal; then reads its memory.
    async fn recover(&mut self, seeder: &Seeder, profile: bool) -> anyhow::Result<Recovery> {
        let js = async_nats::jetstream::new(self.client.clone());
        let last = placement::last_sequence(&js, streams::STATE).await;
        if let Some(old) = self.control.take() {
            old.stop().await?;
        }
        self.controls_started += 1;
        let log = self
            .dir
            .join(format!("berth-control-{}.log", self.controls_started));
        let mut control =
            ControlProcess::spawn(&self.control_bin, &self.urls, self.replicas, &log)?;
        let profile_dir = self
            .dir
            .join(format!("profile-recovery-{}", seeder.tasks()));
        let recording = if profile && std::fs::create_dir_all(&profile_dir).is_ok() {
            crate::profile::start(control.pid(), &profile_dir.join("perf.data"))
        } else {
            None
        };
        let probe = self.api.with_timeout(Duration::from_millis(500));
        let deadline = Instant::now() + CONTROL_START_TIMEOUT;
        loop {
            control.check_alive()?;
            if probe
                .applied_sequence()
                .await
                .is_ok_and(|applied| applied.is_some_and(|applied| applied >= last))
            {
                break;
            }
            if Instant::now() >= deadline {
                bail!("a fresh berth-control did not catch up within {CONTROL_START_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let elapsed = control.started.elapsed();
        let profile = match recording {
            Some(recording) => recording.finish().await,
            None => None,
        };
        let last_task = seeder.task_arn(seeder.tasks().saturating_sub(1));
        let found: TasksResponse = self
            .api
            .call(
                Action::DescribeTasks,
                &DescribeTasksRequest {
                    cluster: Some(READS.into()),
                    tasks: vec![last_task.clone()],
                    include: Vec::new(),
                },
            )
            .await
            .context("reading from the recovered replica")?;
        if found.tasks.len() != 1 {
            bail!("the recovered replica does not know {last_task}");
        }
        let recovery = Recovery {
            seeded_tasks: seeder.tasks(),
            tasks_in_view: control.view_ready_tasks(),
            journal_sequence: last,
            elapsed,
            rss_kib: control.rss_kib(),
            profile,
        };
        self.control = Some(control);
        Ok(recovery)
    }

    /// Waits until the control plane has made `flips` more liveness writes than when
    /// called, or `timeout` passed.
    async fn wait_agent_flips(&self, flips: usize, timeout: Duration) {
        let Ok(before) = self.api.control_stats().await else {
            return;
        };
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let made = self
                .api
                .control_stats()
                .await
                .map(|now| now.since(&before).agent_flips)
                .unwrap_or(0);
            if made >= flips as u64 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tracing::warn!(flips, ?timeout, "fewer liveness writes than hosts stopped");
    }

    /// Consumers on `BERTH_STATE`.
    async fn consumers_on_state(&self) -> usize {
        let js = async_nats::jetstream::new(self.client.clone());
        match js.get_stream(streams::STATE).await {
            Ok(mut s) => s.info().await.map_or(0, |i| i.state.consumer_count),
            Err(_) => 0,
        }
    }

    /// Waits until every command has been processed (the work-queue stream is empty).
    async fn quiesce(&self, timeout: Duration) -> anyhow::Result<()> {
        let js = async_nats::jetstream::new(self.client.clone());
        let deadline = Instant::now() + timeout;
        loop {
            let pending = match js.get_stream(streams::CMD).await {
                Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(u64::MAX),
                Err(_) => u64::MAX,
            };
            if pending == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("{pending} command(s) still unprocessed after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn audit(&self) -> anyhow::Result<AuditSummary> {
        let started = Instant::now();
        let report = berth_audit::audit(&self.client)
            .await
            .context("auditing the journal")?;
        Ok(AuditSummary {
            messages: report.messages,
            instances: report.instances,
            tasks: report.tasks,
            violations: report.violations.len(),
            first_violations: report
                .violations
                .iter()
                .take(10)
                .map(|v| v.to_string())
                .collect(),
            elapsed: started.elapsed(),
        })
    }

    /// Stops hollow hosts, waits for quiescence, audits, and stops the control plane.
    async fn finish(mut self, phase: &mut Phase) {
        self.stop_sims().await;
        if self.control.is_some() {
            if let Err(e) = self.quiesce(Duration::from_secs(120)).await {
                phase.errors.push(format!("{e:#}"));
            }
        }
        match self.audit().await {
            Ok(audit) => phase.audit = Some(audit),
            Err(e) => phase.errors.push(format!("{e:#}")),
        }
        if let Some(control) = self.control.take() {
            if let Err(e) = control.stop().await {
                phase.errors.push(format!("stopping berth-control: {e:#}"));
            }
        }
    }
}

async fn single_node(args: &Args, sizes: &Sizes, bins: &Bins, dir: &Path) -> Phase {
    let mut phase = Phase {
        label: "R1 (1 node)".into(),
        replicas: 1,
        read_instances: sizes.read_instances,
        background_per_second: sizes.background_per_second,
        churn_per_second: sizes.churn_per_second,
        ..Default::default()
    };
    let mut nats = match Nats::start(1).await {
        Ok(n) => n,
        Err(e) => {
            phase.errors.push(format!("{e:#}"));
            return phase;
        }
    };
    match Env::connect(&nats, &bins.control, dir).await {
        Ok(mut env) => {
            if let Err(e) =
                measure_single_node(&mut env, &mut nats, &mut phase, args, sizes, bins).await
            {
                phase.errors.push(format!("{e:#}"));
            }
            env.finish(&mut phase).await;
        }
        Err(e) => phase.errors.push(format!("{e:#}")),
    }
    nats.stop().await;
    phase
}

async fn measure_single_node(
    env: &mut Env,
    nats: &mut Nats,
    phase: &mut Phase,
    args: &Args,
    sizes: &Sizes,
    bins: &Bins,
) -> anyhow::Result<()> {
    tracing::info!("R1: journal ceiling");
    phase.ceiling = Some(env.measure_ceiling(sizes).await?);
    env.start_control().await?;
    for cluster in [READS, PLACE, PLACE_SMALL, PLACE_BINPACK, PROC] {
        env.create_cluster(cluster).await?;
    }
    let seed_definition = env.register(&seed::task_definition_request()).await?;
    env.register(&seed::definition(PLACE_FAMILY, 16, 32, Vec::new()))
        .await?;
    env.register(&seed::definition(
        PROC_FAMILY,
        1,
        8,
        vec!["sleep".into(), "0.2".into()],
    ))
    .await?;

    tracing::info!(
        instances = sizes.read_instances,
        "R1: hollow instances of the read cluster"
    );
    let (hollow, _) = env
        .start_sim(
            READS,
            sizes.read_instances,
            Duration::from_millis(50),
            Duration::from_secs(2),
        )
        .await?;
    let mut seeder = Seeder::new(env.journal.clone(), &env.client, READS, &seed_definition);
    let read_load = ReadLoad {
        cluster: READS.into(),
        family: PLACE_FAMILY.into(),
        samples: sizes.read_samples,
        churn_per_second: sizes.churn_per_second,
        background_per_second: sizes.background_per_second,
        max_duration: sizes.read_max_duration,
    };
    // Placements run after the seeded sizes, so that each recovery replays a journal
    // holding the seeded tasks and nothing else of size, and after the task start.
    for &size in &sizes.read_sizes {
        tracing::info!(size, "R1: seeding");
        let seeding = seeder.seed_to(size).await?;
        env.wait_view(seeding.last_sequence, VIEW_TIMEOUT).await?;
        phase.seeding.push((size, seeding));
        if sizes.recovery_sizes.contains(&size) {
            tracing::info!(size, "R1: recovery");
            let largest = sizes.recovery_sizes.iter().max() == Some(&size);
            phase
                .recoveries
                .push(env.recover(&seeder, largest && !args.no_perf).await?);
        }
        // Let the replica finish what seeding or recovery left it (sim reports retried
        // while it was down) so the reads see the steady state.
        if let Err(e) = env.quiesce(Duration::from_secs(60)).await {
            tracing::warn!(error = %e, "reads start before the command stream drained");
        }
        tracing::info!(size, "R1: reads under churn");
        let largest = sizes.read_sizes.iter().max() == Some(&size);
        let read = measure_reads(env, args, &read_load, &seeder, &hollow, largest).await;
        phase.reads.push(read);
    }
    if !args.skip_runtime {
        tracing::info!(
            tasks = sizes.start_tasks,
            "R1: task start with the process runtime"
        );
        phase.start = Some(task_start(env, sizes, bins).await?);
    }
    // Minutes have passed since the first ceiling: measure it again on the server as it
    // is now, so that placement is compared with what the journal does at the same time.
    tracing::info!("R1: journal ceiling before placement");
    phase.placement_ceiling = Some(env.measure_ceiling(sizes).await?);
    // Last: once their hollow hosts stop, the placement clusters' instances are flipped
    // to disconnected in a burst of writes that other measurements must not share.
    placements(env, phase, args, sizes).await?;
    if !args.skip_fleet && sizes.fleet_hosts > 0 {
        let mut fleet = crate::fleet::FleetRun::default();
        let measured = fleet_phase(env, nats, &mut fleet, sizes, bins).await;
        phase.fleet = Some(fleet);
        measured?;
    }
    // Last: its thousand services and their hosts stay until the phase ends, and would
    // weigh on any measurement after them.
    if !args.skip_services {
        let mut run = crate::services::ServicesRun::default();
        let measured = services_phase(env, &mut run, sizes, bins, args.skip_runtime).await;
        phase.services = Some(run);
        measured?;
    }
    Ok(())
}

/// One read measurement with the CPU of every process accounted and, if `profile`, the
/// control plane profiled.
async fn measure_reads(
    env: &Env,
    args: &Args,
    load: &ReadLoad,
    seeder: &Seeder,
    hollow: &[String],
    profile: bool,
) -> reads::ReadRun {
    let profile_dir = env.dir.join(format!("profile-reads-{}", seeder.tasks()));
    let recording = match (profile && !args.no_perf, env.control_pid()) {
        (true, Some(pid)) if std::fs::create_dir_all(&profile_dir).is_ok() => {
            crate::profile::start(pid, &profile_dir.join("perf.data"))
        }
        _ => None,
    };
    if recording.is_some() {
        // perf takes a moment to attach.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let meter = procfs::CpuMeter::start(env.cpu_groups());
    let mut read = reads::measure(&env.read_api, &env.load_api, load, seeder, hollow).await;
    read.cpu = meter.stop();
    read.control_rss_kib = env.control_rss_kib();
    if let Some(recording) = recording {
        read.profile = recording.finish().await;
    }
    read
}

/// Placement throughput on the large and the small hollow clusters.
async fn placements(
    env: &mut Env,
    phase: &mut Phase,
    args: &Args,
    sizes: &Sizes,
) -> anyhow::Result<()> {
    let runs = [
        (PLACE, sizes.instances, None),
        (PLACE_SMALL, sizes.instances_small, None),
        (PLACE_BINPACK, sizes.instances, Some(binpack_memory())),
    ]
    .into_iter()
    .filter(|(_, instances, _)| *instances > 0)
    .map(|(cluster, instances, strategy)| (cluster, instances, sizes.place_tasks, strategy));
    placement_runs(env, phase, args, sizes, runs).await
}

/// Runs placements one after the other. The hollow hosts of a run keep beating until the
/// last run ends: stopped, their instances would be flipped to disconnected in a burst of
/// writes during the next run.
async fn placement_runs(
    env: &mut Env,
    phase: &mut Phase,
    args: &Args,
    sizes: &Sizes,
    runs: impl Iterator<Item = (&'static str, usize, usize, Option<PlacementStrategy>)>,
) -> anyhow::Result<()> {
    let running_before = env.sims.len();
    for (cluster, instances, tasks, strategy) in runs {
        let run = placement_run(env, args, sizes, cluster, instances, tasks, strategy);
        phase.placements.push(run.await?);
    }
    for sim in env.sims.split_off(running_before) {
        sim.stop().await;
    }
    Ok(())
}

fn binpack_memory() -> PlacementStrategy {
    PlacementStrategy {
        strategy_type: Some("binpack".into()),
        field: Some("memory".into()),
    }
}

/// How the report names a strategy: `binpack(memory)`.
fn strategy_label(strategy: &PlacementStrategy) -> String {
    format!(
        "{}({})",
        strategy.strategy_type.as_deref().unwrap_or_default(),
        strategy.field.as_deref().unwrap_or_default()
    )
}

async fn placement_run(
    env: &mut Env,
    args: &Args,
    sizes: &Sizes,
    cluster: &str,
    instances: usize,
    tasks: usize,
    strategy: Option<PlacementStrategy>,
) -> anyhow::Result<Placement> {
    tracing::info!(cluster, instances, "hollow instances for placement");
    // Hollow hosts that never start their tasks: the run measures placement alone.
    let hour = Duration::from_secs(3600);
    let (_, registration) = env.start_sim(cluster, instances, hour, hour).await?;
    tracing::info!(
        cluster,
        instances,
        tasks,
        ?registration,
        "placement throughput"
    );
    let profile_dir = env.dir.join(format!("profile-{cluster}"));
    let profile_target = match (args.no_perf, env.control_pid()) {
        (false, Some(pid)) if std::fs::create_dir_all(&profile_dir).is_ok() => {
            Some((pid, profile_dir.as_path()))
        }
        _ => None,
    };
    let load = Load {
        cluster: cluster.into(),
        family: PLACE_FAMILY.into(),
        tasks,
        concurrency: sizes.concurrency,
        strategies: strategy.iter().cloned().collect(),
        monitor_ports: env.monitor_ports.clone(),
    };
    let mut run = placement::run(&env.api, &load, env.cpu_groups(), profile_target).await;
    run.instances = instances;
    run.registration = registration;
    Ok(Placement {
        instances,
        strategy: strategy.as_ref().map(strategy_label),
        run,
    })
}

async fn task_start(
    env: &mut Env,
    sizes: &Sizes,
    bins: &Bins,
) -> anyhow::Result<crate::runtime::StartRun> {
    if !bins.agent.is_file() {
        bail!(
            "{} does not exist: build it (cargo build --release -p berth-agent) or pass --agent-bin / --skip-runtime",
            bins.agent.display()
        );
    }
    let data_dir = env.dir.join("agent-data");
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let agent = AgentProcess::spawn(
        &bins.agent,
        &env.urls,
        PROC,
        &data_dir,
        &env.dir.join("berth-agent.log"),
        Duration::from_secs(60),
    )
    .await?;
    let load = StartLoad {
        cluster: PROC.into(),
        family: PROC_FAMILY.into(),
        instance_arn: Some(agent.instance_arn.clone()),
        tasks: sizes.start_tasks,
        per_second: sizes.start_per_second,
    };
    let result = runtime::measure(&env.api, &load, Duration::from_secs(120)).await;
    agent.stop().await?;
    result
}

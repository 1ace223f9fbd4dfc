//! `berth-bench`: Berth's benchmark. It starts its own nats-server(s), its own
//! `berth-control` process and hollow hosts (berth-sim, in this process), drives the real
//! API over NATS, and prints a table of every figure beside the journal ceiling measured
//! in the same run. Afterwards it audits the journal and exits non-zero on a violation or
//! on a measurement that could not run. `--quick` runs everything at small sizes.

mod api;
mod ceiling;
mod criterion;
mod failover;
mod fleet;
mod placement;
mod processes;
mod procfs;
mod profile;
mod reads;
mod report;
mod results;
mod run;
mod runtime;
mod seed;
mod services;
mod stats;

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// Flags of `berth-bench`. Sizes default to the full run, or to small ones with --quick.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "berth-bench",
    version,
    about = "Berth benchmark: placement throughput, read latency under churn, recovery, memory, task start"
)]
pub struct Args {
    /// Small sizes everywhere (CI): completes in under two minutes.
    #[arg(long)]
    pub quick: bool,
    /// The berth-control binary (default: next to this one).
    #[arg(long)]
    pub control_bin: Option<PathBuf>,
    /// The berth-agent binary (default: next to this one).
    #[arg(long)]
    pub agent_bin: Option<PathBuf>,
    /// Output of the placement library's criterion benchmark in bencher format, to include.
    #[arg(long)]
    pub placement_bench: Option<PathBuf>,
    /// Also write the report (markdown) to this file.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// Where logs and profiles go (default: a fresh temporary directory, kept).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Skip the 3-node (R3) phase.
    #[arg(long)]
    pub skip_r3: bool,
    /// Skip the process-runtime task start measurement.
    #[arg(long)]
    pub skip_runtime: bool,
    /// Do not profile the control plane with perf.
    #[arg(long)]
    pub no_perf: bool,
    /// Hollow instances of the main placement run.
    #[arg(long)]
    pub instances: Option<usize>,
    /// Hollow instances of the second (smaller) placement run.
    #[arg(long)]
    pub instances_small: Option<usize>,
    /// Tasks placed in each placement run.
    #[arg(long)]
    pub place_tasks: Option<usize>,
    /// RunTask requests in flight during placement runs.
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Seeded task counts at which reads are measured (comma separated).
    #[arg(long, value_delimiter = ',')]
    pub read_sizes: Option<Vec<usize>>,
    /// Seeded task counts at which recovery and memory are measured (comma separated).
    #[arg(long, value_delimiter = ',')]
    pub recovery_sizes: Option<Vec<usize>>,
    /// Timed requests per read kind and size.
    #[arg(long)]
    pub read_samples: Option<usize>,
    /// Hollow instances of the read cluster.
    #[arg(long)]
    pub read_instances: Option<usize>,
    /// Tasks started through the process runtime.
    #[arg(long)]
    pub start_tasks: Option<usize>,
    /// Hollow instances of the R3 placement run.
    #[arg(long)]
    pub r3_instances: Option<usize>,
    /// Tasks placed in the R3 placement run.
    #[arg(long)]
    pub r3_tasks: Option<usize>,
    /// Seeded tasks for the R3 read measurement.
    #[arg(long)]
    pub r3_read_size: Option<usize>,
    /// Hosts of the fleet of real shape (each its own connection and consumer).
    #[arg(long)]
    pub fleet_hosts: Option<usize>,
    /// Skip the fleet of real shape.
    #[arg(long)]
    pub skip_fleet: bool,
    /// Skip the ECS services measurements.
    #[arg(long)]
    pub skip_services: bool,
    /// Only measure NATS failover on a 3-node cluster with three replicas: kill the node
    /// leading BERTH_STATE this many times (see `failover.rs`).
    #[arg(long)]
    pub failover_kills: Option<usize>,
    /// With --failover-kills: fresh clusters on which three replicas are started together.
    #[arg(long, default_value_t = 3)]
    pub failover_starts: usize,
    #[command(flatten)]
    pub log: berth_telemetry::LogArgs,
}

/// The load generator and the hollow hosts share the two cores with what they measure;
/// with glibc's allocator a quarter of the bench's own CPU was malloc and free.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // As in berth-control: zeroing transparent huge pages was 8% of the bench's CPU.
    #[cfg(target_os = "linux")]
    if let Err(error) = nix::sys::prctl::set_thp_disable(true) {
        eprintln!("berth-bench: cannot disable transparent huge pages: {error}");
    }
    let args = Args::parse();
    if let Err(e) = berth_telemetry::init("warn,berth_bench=info,berth_sim=error", &args.log) {
        eprintln!("berth-bench: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("berth-bench")
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("berth-bench: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    // On Ctrl-C or SIGTERM the run is dropped, which stops every process it started.
    let outcome = runtime.block_on(async {
        tokio::select! {
            result = run::run(args) => Some(result),
            _ = berth_telemetry::shutdown_signal() => None,
        }
    });
    let Some(outcome) = outcome else {
        eprintln!("berth-bench: interrupted");
        return ExitCode::from(130);
    };
    match outcome {
        Ok(results) => {
            if results.failed() {
                eprintln!("berth-bench: FAILED (see the errors and the audit above)");
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("berth-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

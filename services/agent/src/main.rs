//! `berth-agent`: flags, logging, signals; everything else is in the library. The hidden
//! `shim` subcommand is the per-container shim the agent starts through itself.

use berth_agent::shim::ShimArgs;
use berth_agent::AgentConfig;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "berth-agent", version, about = "Berth host agent")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    agent: AgentConfig,
}

#[derive(Subcommand)]
enum Command {
    /// Supervises one container (started by the agent itself).
    #[command(hide = true)]
    Shim(ShimArgs),
}

/// The shim parses only its own flags: a container's environment may hold anything,
/// including variables named like the agent's.
#[derive(Parser)]
#[command(name = "berth-agent shim")]
struct ShimCli {
    #[command(flatten)]
    args: ShimArgs,
}

/// A `--sim` fleet allocates and frees a record per delivery for thousands of hosts; as
/// in berth-control, mimalloc spends less on it than glibc's allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    if std::env::args_os().nth(1).is_some_and(|a| a == "shim") {
        let shim = ShimCli::parse_from(std::env::args_os().skip(1));
        std::process::exit(berth_agent::shim::run(shim.args));
    }
    let cli = Cli::parse();
    if let Some(Command::Shim(args)) = cli.command {
        std::process::exit(berth_agent::shim::run(args));
    }
    let config = cli.agent;
    if let Err(e) = berth_telemetry::init("info", &config.log) {
        eprintln!("berth-agent: {e}");
        std::process::exit(1);
    }
    if let Err(e) = berth_agent::run_blocking(config, berth_telemetry::shutdown_signal()) {
        tracing::error!(error = %e, "berth-agent stopped");
        eprintln!("berth-agent: {e}");
        std::process::exit(1);
    }
}

//! `berth-priority-scheduler`: flags, logging, signals; everything else is in the library.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = berth_priority_scheduler::Config::parse();
    berth_telemetry::init("info", &config.log)?;
    let stats = berth_priority_scheduler::run(config, berth_telemetry::shutdown_signal()).await?;
    println!("{}", serde_json::to_string(&stats)?);
    Ok(())
}

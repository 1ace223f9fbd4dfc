//! `berth-audit`: replays the journal of a Berth deployment and reports every violated
//! invariant. Exit status: 0 when clean, 1 on violations, 2 when the audit could not run.

use anyhow::Context;
use berth_journal::JournalConfig;
use clap::Parser;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "berth-audit",
    version,
    about = "Checks Berth's journal against its invariants"
)]
struct Args {
    /// NATS server URLs, comma separated.
    #[arg(
        long,
        env = "BERTH_NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        value_delimiter = ','
    )]
    nats: Vec<String>,
    /// Print the report as JSON.
    #[arg(long, env = "BERTH_AUDIT_JSON")]
    json: bool,
    #[command(flatten)]
    log: berth_telemetry::LogArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = berth_telemetry::init("warn", &args.log) {
        eprintln!("berth-audit: {e}");
        return ExitCode::from(2);
    }
    match run(&args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("berth-audit: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Audits and prints the report; `Ok(true)` when clean.
async fn run(args: &Args) -> anyhow::Result<bool> {
    let config = JournalConfig {
        servers: args.nats.clone(),
        name: "berth-audit".into(),
        ..Default::default()
    };
    let client = berth_journal::connect(&config)
        .await
        .context("connecting to NATS")?;
    let report = berth_audit::audit(&client).await.context("auditing")?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("encoding the report")?
        );
    } else {
        print!("{report}");
    }
    Ok(report.is_clean())
}

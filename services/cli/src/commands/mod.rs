//! The implementations of `berth` subcommands against the API. Each prints its result
//! (a table, or with `--output json` the ECS response of the action behind it) and
//! returns an error worded for a person when something is wrong.

pub mod clusters;
pub mod instances;
pub mod logs;
pub mod service_wait;
pub mod services;
pub mod taskdefs;
pub mod tasks;
pub mod wait;

use crate::args::{Command, GlobalArgs, OutputFormat};
use crate::client::Client;
use crate::error::{failure_reason, CliError};
use crate::output;
use berth_messages::model::Failure;
use serde::Serialize;

/// What every command needs: the API client, the cluster and the output format.
pub struct Context {
    pub client: Client,
    pub cluster: String,
    pub output: OutputFormat,
}

impl Context {
    pub async fn connect(global: &GlobalArgs) -> Result<Context, CliError> {
        berth_messages::validate::cluster_name(berth_messages::arn::cluster_name(&global.cluster))
            .map_err(|e| CliError::input(format!("--cluster / BERTH_CLUSTER: {}", e.message)))?;
        Ok(Context {
            client: Client::connect(&global.nats).await?,
            cluster: global.cluster.clone(),
            output: global.output,
        })
    }

    pub fn json(&self) -> bool {
        self.output == OutputFormat::Json
    }

    /// Prints `value` as JSON in JSON mode, else `table()`.
    pub fn emit<T: Serialize>(
        &self,
        value: &T,
        table: impl FnOnce() -> String,
    ) -> Result<(), CliError> {
        if self.json() {
            output::print(&output::json(value)?);
        } else {
            output::print(&table());
        }
        Ok(())
    }
}

/// Runs one API command (everything but `berth dev`).
pub async fn run(global: &GlobalArgs, command: Command) -> Result<(), CliError> {
    let ctx = Context::connect(global).await?;
    match command {
        Command::Clusters(c) => clusters::run(&ctx, c).await,
        Command::Instances(c) => instances::run(&ctx, c).await,
        Command::TaskDefinitions(c) => taskdefs::run(&ctx, c).await,
        Command::Tasks(c) => tasks::run(&ctx, c).await,
        Command::Services(c) => services::run(&ctx, c).await,
        Command::Dev(_) => Err(CliError::other("`berth dev` does not call the API")),
    }
}

/// Per-item failures of a batch action as an error (after the response was printed).
pub fn failures_error(what: &str, failures: &[Failure]) -> Result<(), CliError> {
    if failures.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = failures
        .iter()
        .map(|f| {
            let arn = f.arn.as_deref().unwrap_or("?");
            let reason = failure_reason(f.reason.as_deref().unwrap_or("unknown"));
            match &f.detail {
                Some(detail) => format!("  {}: {reason} ({detail})", output::short_id(arn)),
                None => format!("  {}: {reason}", output::short_id(arn)),
            }
        })
        .collect();
    Err(CliError::other(format!("{what}:\n{}", lines.join("\n"))))
}

/// Pages through a list action: `fetch(next_token)` returns (items, next token).
pub async fn all_pages<T, F, Fut>(mut fetch: F) -> Result<Vec<T>, CliError>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, Option<String>), CliError>>,
{
    let mut out = Vec::new();
    let mut token = None;
    loop {
        let (items, next) = fetch(token).await?;
        out.extend(items);
        match next {
            Some(t) if !t.is_empty() => token = Some(t),
            _ => return Ok(out),
        }
    }
}

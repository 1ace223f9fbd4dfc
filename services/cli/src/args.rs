//! The command line of `berth`: global flags with `BERTH_*` environment twins and one
//! subcommand per ECS resource, plus `berth dev`.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Default NATS URL of the global `--nats`.
pub const DEFAULT_NATS: &str = "nats://127.0.0.1:4222";

#[derive(Debug, Parser)]
#[command(
    name = "berth",
    version,
    about = "Berth: Amazon ECS semantics on your own hosts, over NATS JetStream",
    after_help = "Start a local Berth with `berth dev` (or `scripts/dev` in the repository), then \
                  register a task definition and run it:\n  \
                  berth task-definitions register examples/hello.json\n  \
                  berth tasks run hello --wait STOPPED"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// NATS server URLs, comma separated.
    #[arg(
        long,
        global = true,
        env = "BERTH_NATS_URL",
        default_value = DEFAULT_NATS,
        value_delimiter = ','
    )]
    pub nats: Vec<String>,
    /// Cluster the command works on.
    #[arg(long, global = true, env = "BERTH_CLUSTER", default_value = "default")]
    pub cluster: String,
    /// Output format: a table for people, JSON (the ECS API response) for programs.
    #[arg(
        long,
        global = true,
        env = "BERTH_OUTPUT",
        value_enum,
        default_value_t = OutputFormat::Table,
        ignore_case = true
    )]
    pub output: OutputFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Clusters: list, describe, create, delete.
    #[command(subcommand)]
    Clusters(ClustersCommand),
    /// Container instances (hosts running berth-agent).
    #[command(subcommand)]
    Instances(InstancesCommand),
    /// Task definitions in ECS JSON format.
    #[command(subcommand, name = "task-definitions", alias = "taskdefs")]
    TaskDefinitions(TaskDefinitionsCommand),
    /// Tasks: run, start, stop, list, describe, logs, wait.
    #[command(subcommand)]
    Tasks(TasksCommand),
    /// Run a whole local Berth: nats-server, berth-control and one berth-agent.
    Dev(DevArgs),
}

#[derive(Debug, Subcommand)]
pub enum ClustersCommand {
    /// List the active clusters.
    List,
    /// Describe clusters (default: the --cluster one).
    Describe {
        /// Cluster names or ARNs.
        names: Vec<String>,
    },
    /// Create a cluster.
    Create { name: String },
    /// Delete an empty cluster.
    Delete { name: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InstanceStatusArg {
    Active,
    Draining,
    Registering,
    Deregistering,
    RegistrationFailed,
}

#[derive(Debug, Subcommand)]
pub enum InstancesCommand {
    /// List the cluster's container instances.
    List {
        /// Only instances with this status.
        #[arg(long, value_enum, ignore_case = true)]
        status: Option<InstanceStatusArg>,
    },
    /// Describe container instances.
    Describe {
        /// Instance ids or ARNs.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Set an instance DRAINING: no new tasks are placed on it.
    Drain { id: String },
    /// Set an instance ACTIVE again.
    Activate { id: String },
    /// Show an instance's attributes; add, change or remove custom ones.
    Attributes {
        /// Instance id or ARN.
        id: String,
        /// Add or change an attribute: name=value (or just name).
        #[arg(long = "put", value_name = "NAME=VALUE")]
        put: Vec<String>,
        /// Remove an attribute.
        #[arg(long = "delete", value_name = "NAME")]
        delete: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskDefinitionStatusArg {
    Active,
    Inactive,
}

#[derive(Debug, Subcommand)]
pub enum TaskDefinitionsCommand {
    /// Register a task definition from a JSON file in ECS format (the body of
    /// RegisterTaskDefinition, as `aws ecs register-task-definition --cli-input-json` takes).
    Register { file: PathBuf },
    /// List task definitions.
    List {
        /// Only this family.
        #[arg(long)]
        family: Option<String>,
        /// ACTIVE (default) or INACTIVE.
        #[arg(long, value_enum, ignore_case = true)]
        status: Option<TaskDefinitionStatusArg>,
    },
    /// Describe a task definition: family (latest active revision), family:revision or ARN.
    Describe { task_definition: String },
    /// Deregister a revision (family:revision or ARN): it becomes INACTIVE.
    Deregister { task_definition: String },
}

/// Statuses a task can be waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WaitStatus {
    Running,
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DesiredStatusArg {
    Running,
    Stopped,
}

#[derive(Debug, Subcommand)]
pub enum TasksCommand {
    /// Run tasks from a task definition, placed by Berth.
    Run {
        /// family, family:revision or task-definition ARN.
        task_definition: String,
        /// How many tasks (1 to 10).
        #[arg(long, default_value_t = 1)]
        count: i64,
        #[arg(long)]
        started_by: Option<String>,
        #[arg(long)]
        group: Option<String>,
        /// Wait until every task reaches this status, showing its progress.
        #[arg(long, value_enum, ignore_case = true)]
        wait: Option<WaitStatus>,
        /// Give up waiting after this many seconds.
        #[arg(long, value_name = "SECS")]
        timeout: Option<f64>,
    },
    /// Start a task on chosen container instances (no placement).
    Start {
        /// family, family:revision or task-definition ARN.
        task_definition: String,
        /// Instance ids or ARNs (1 to 10).
        #[arg(long = "instance", required = true)]
        instances: Vec<String>,
        #[arg(long)]
        started_by: Option<String>,
        #[arg(long)]
        group: Option<String>,
        /// Wait until every task reaches this status, showing its progress.
        #[arg(long, value_enum, ignore_case = true)]
        wait: Option<WaitStatus>,
        /// Give up waiting after this many seconds.
        #[arg(long, value_name = "SECS")]
        timeout: Option<f64>,
    },
    /// Stop a task.
    Stop {
        /// Task id or ARN.
        task: String,
        #[arg(long)]
        reason: Option<String>,
        /// Wait until it is STOPPED.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this many seconds.
        #[arg(long, value_name = "SECS")]
        timeout: Option<f64>,
    },
    /// List tasks (by default those whose desired status is RUNNING).
    List {
        /// Only tasks on this instance (id or ARN).
        #[arg(long)]
        instance: Option<String>,
        /// Only tasks of this family.
        #[arg(long)]
        family: Option<String>,
        #[arg(long)]
        started_by: Option<String>,
        /// RUNNING (default) or STOPPED.
        #[arg(long, value_enum, ignore_case = true)]
        desired_status: Option<DesiredStatusArg>,
    },
    /// Describe tasks.
    Describe {
        /// Task ids or ARNs.
        #[arg(required = true)]
        tasks: Vec<String>,
    },
    /// Print a container's output (read from the agent of its host); with --output json,
    /// one chunk (the agent's LogsResponse) per line.
    Logs {
        /// Task id or ARN.
        task: String,
        /// Container name (default: the task's first container).
        #[arg(long)]
        container: Option<String>,
        /// Keep printing new output until the container stops.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Wait until tasks reach a status, printing each status change.
    Wait {
        /// Task ids or ARNs.
        #[arg(required = true)]
        tasks: Vec<String>,
        #[arg(long, value_enum, ignore_case = true, default_value = "STOPPED")]
        status: WaitStatus,
        /// Give up after this many seconds.
        #[arg(long, value_name = "SECS")]
        timeout: Option<f64>,
    },
}

/// Flags of `berth dev`.
#[derive(Debug, Clone, Args)]
pub struct DevArgs {
    /// Where nats-server keeps its store and the agent its identity; started again on
    /// the same directory, Berth resumes where it was.
    #[arg(long, env = "BERTH_DATA_DIR", default_value = ".berth")]
    pub data_dir: PathBuf,
    /// Port of the local nats-server (on 127.0.0.1).
    #[arg(long, env = "BERTH_NATS_PORT", default_value_t = 4222)]
    pub port: u16,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli = Cli::try_parse_from([
            "berth",
            "tasks",
            "run",
            "hello",
            "--wait",
            "stopped",
            "--output",
            "json",
            "--cluster",
            "c1",
        ])
        .unwrap();
        assert_eq!(cli.global.output, OutputFormat::Json);
        assert_eq!(cli.global.cluster, "c1");
        match cli.command {
            Command::Tasks(TasksCommand::Run { wait, count, .. }) => {
                assert_eq!(wait, Some(WaitStatus::Stopped));
                assert_eq!(count, 1);
            }
            other => panic!("parsed {other:?}"),
        }
    }
}

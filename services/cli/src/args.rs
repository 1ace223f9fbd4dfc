//! The command line of `berth`: global flags with `BERTH_*` environment twins and one
//! subcommand per ECS resource, plus `berth dev`.

use berth_messages::model::{PlacementConstraint, PlacementStrategy};
use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
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
                  berth tasks run hello --wait STOPPED\n\
                  Keep tasks running as a service, rolled out and scaled by Berth:\n  \
                  berth task-definitions register examples/ticker.json\n  \
                  berth services create ticks --task-definition ticker --desired-count 2 --wait stable\n  \
                  berth services scale ticks 3 --wait stable"
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
    /// Services: create, update, scale, delete, list, describe, events, deployments.
    #[command(subcommand)]
    Services(ServicesCommand),
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

/// What `--wait` waits for on a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ServiceWait {
    /// One deployment, COMPLETED, with every desired task RUNNING and none pending.
    Stable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SchedulingStrategyArg {
    /// Keep the desired count of tasks running across the cluster.
    Replica,
    /// One task on each active container instance (no desired count).
    Daemon,
}

#[derive(Debug, Subcommand)]
pub enum ServicesCommand {
    /// Create a service: Berth keeps its desired count of tasks running, replacing those
    /// that stop, and rolls out new task definitions within the deployment bounds.
    Create(Box<CreateServiceArgs>),
    /// Change a service: a new task definition (or --force-new-deployment) starts a
    /// rolling deployment; a desired count scales it.
    #[command(group(
        ArgGroup::new("change")
            .args(["task_definition", "desired_count", "force_new_deployment",
                   "min_healthy_percent", "max_percent"])
            .required(true)
            .multiple(true)
    ))]
    Update {
        /// Service name or ARN.
        name: String,
        /// Roll out this task definition: family, family:revision or ARN.
        #[arg(long, value_name = "TD")]
        task_definition: Option<String>,
        /// New number of tasks to keep running.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(0..))]
        desired_count: Option<i64>,
        /// Start a new deployment even if the task definition is the same (replaces
        /// every task).
        #[arg(long)]
        force_new_deployment: bool,
        /// Lowest share of the desired count kept RUNNING during a deployment (0-100).
        #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(i64).range(0..=100))]
        min_healthy_percent: Option<i64>,
        /// Highest share of the desired count running during a deployment (100 or more).
        #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(i64).range(100..))]
        max_percent: Option<i64>,
        /// Wait until the service is stable, showing the rollout's progress.
        #[arg(long, value_enum, ignore_case = true)]
        wait: Option<ServiceWait>,
        /// Give up waiting after this many seconds (default 600).
        #[arg(long, value_name = "SECS", requires = "wait")]
        timeout: Option<f64>,
    },
    /// Set a service's desired count (UpdateService with only desiredCount).
    Scale {
        /// Service name or ARN.
        name: String,
        /// Number of tasks to keep running.
        #[arg(value_name = "N", value_parser = clap::value_parser!(i64).range(0..))]
        count: i64,
        /// Wait until the service is stable, showing the progress.
        #[arg(long, value_enum, ignore_case = true)]
        wait: Option<ServiceWait>,
        /// Give up waiting after this many seconds (default 600).
        #[arg(long, value_name = "SECS", requires = "wait")]
        timeout: Option<f64>,
    },
    /// Delete a service: it becomes DRAINING, its tasks are stopped, then INACTIVE.
    Delete {
        /// Service name or ARN.
        name: String,
        /// Delete it even though it is scaled above 0 (stops its tasks).
        #[arg(long)]
        force: bool,
    },
    /// List the cluster's services (every page).
    List {
        /// Only services of this scheduling strategy.
        #[arg(long, value_enum, ignore_case = true)]
        scheduling_strategy: Option<SchedulingStrategyArg>,
    },
    /// Describe services: status, counts, task definition and rollout state; with
    /// --output json, the DescribeServices response.
    Describe {
        /// Service names or ARNs.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// A service's events, newest first; with --output json, the DescribeServices
    /// response (events cut to --limit).
    Events {
        /// Service name or ARN.
        name: String,
        /// Show only the newest N events.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        limit: Option<u64>,
    },
    /// A service's deployments and their progress; with --output json, the
    /// DescribeServices response.
    Deployments {
        /// Service name or ARN.
        name: String,
    },
}

/// Flags of `berth services create`.
#[derive(Debug, Clone, Args)]
pub struct CreateServiceArgs {
    /// Service name, unique in the cluster (optional with --cli-input-json when the file
    /// names it; given, it wins over the file's serviceName).
    #[arg(required_unless_present = "cli_input_json")]
    pub name: Option<String>,
    /// Task definition to run: family, family:revision or ARN.
    #[arg(long, value_name = "TD", required_unless_present = "cli_input_json")]
    pub task_definition: Option<String>,
    /// Number of tasks to keep running (REPLICA services).
    #[arg(
        long,
        value_name = "N",
        value_parser = clap::value_parser!(i64).range(0..),
        required_unless_present_any = ["cli_input_json", "scheduling_strategy"]
    )]
    pub desired_count: Option<i64>,
    /// Lowest share of the desired count kept RUNNING during a deployment (0-100;
    /// default 100).
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(i64).range(0..=100))]
    pub min_healthy_percent: Option<i64>,
    /// Highest share of the desired count running during a deployment (100 or more;
    /// default 200).
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(i64).range(100..))]
    pub max_percent: Option<i64>,
    /// Fail a deployment whose tasks keep failing to start.
    #[arg(long)]
    pub circuit_breaker: bool,
    /// With --circuit-breaker: roll a failed deployment back to the last completed one.
    #[arg(long, requires = "circuit_breaker")]
    pub rollback: bool,
    /// REPLICA (default) keeps the desired count; DAEMON runs one task per instance.
    #[arg(long, value_enum, ignore_case = true)]
    pub scheduling_strategy: Option<SchedulingStrategyArg>,
    /// Run tasks only where this holds: 'memberOf:EXPR' (the ECS cluster query
    /// language) or 'distinctInstance'. Repeatable.
    #[arg(
        long = "placement-constraint",
        value_name = "memberOf:EXPR",
        value_parser = crate::placement::parse_constraint
    )]
    pub placement_constraints: Vec<PlacementConstraint>,
    /// How to pick instances: 'spread:FIELD' (instanceId, host, attribute:NAME),
    /// 'binpack:cpu', 'binpack:memory' or 'random'. Repeatable, applied in order.
    #[arg(
        long = "placement-strategy",
        value_name = "TYPE[:FIELD]",
        value_parser = crate::placement::parse_strategy
    )]
    pub placement_strategies: Vec<PlacementStrategy>,
    /// Seconds after a task starts during which failing health checks are ignored.
    #[arg(
        long,
        value_name = "SECONDS",
        value_parser = clap::value_parser!(i64).range(0..=i64::from(i32::MAX))
    )]
    pub health_check_grace_period: Option<i64>,
    /// Read the request from a JSON file: the ECS CreateService body, as `aws ecs
    /// create-service --cli-input-json` takes it. Its cluster wins over --cluster; flags
    /// given on the command line win over its other fields.
    #[arg(long, value_name = "FILE")]
    pub cli_input_json: Option<PathBuf>,
    /// Wait until the service is stable, showing the rollout's progress.
    #[arg(long, value_enum, ignore_case = true)]
    pub wait: Option<ServiceWait>,
    /// Give up waiting after this many seconds (default 600).
    #[arg(long, value_name = "SECS", requires = "wait")]
    pub timeout: Option<f64>,
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

//! Failures that end the agent, each with a message that names what to fix.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cluster {0} does not exist: create it with `berth clusters create {0}`")]
    ClusterMissing(String),
    #[error(
        "data directory {} is in use by another berth-agent{}: stop it or give this one another --data-dir",
        path.display(),
        holder.as_ref().map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    DataDirInUse {
        path: PathBuf,
        holder: Option<String>,
    },
    #[error(
        "data directory {} holds container instance {arn} of cluster {cluster}, not of {wanted}: \
         use --cluster {cluster} or another --data-dir",
        path.display()
    )]
    WrongCluster {
        path: PathBuf,
        arn: String,
        cluster: String,
        wanted: String,
    },
    #[error("data directory {}: {reason}", path.display())]
    DataDir { path: PathBuf, reason: String },
    #[error("invalid {flag}: {reason}")]
    Config { flag: &'static str, reason: String },
    #[error("cannot read host resources: {0}")]
    Host(String),
    #[error("registration refused: {0}")]
    Registration(#[source] berth_client::ClientError),
    #[error("cannot follow this host's tasks: {0}")]
    Follow(String),
    #[error("cannot start the runtime: {0}")]
    Runtime(#[from] std::io::Error),
    #[error("NATS connection failed: {0}")]
    Connect(String),
    #[error("hollow instances failed: {0}")]
    Sim(String),
}

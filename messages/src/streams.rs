//! Specifications of Berth's JetStream streams: the one home of their names, subjects and
//! limits. The journal library turns a [`StreamSpec`] into a server configuration.

use crate::subjects;
use std::time::Duration;

/// The journal: every entity's whole record after each change.
pub const STATE: &str = "BERTH_STATE";
/// Commands (work queue): every mutation, from the API or straight from a publisher.
pub const CMD: &str = "BERTH_CMD";
/// Outcomes of commands, looked up by command id.
pub const OUTCOME: &str = "BERTH_OUTCOME";
/// Durable consumer name shared by every `berth-control` replica on `BERTH_CMD`.
pub const CMD_CONSUMER: &str = "berth-control";

/// How a stream keeps its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    Limits,
    WorkQueue,
}

/// What a stream is, independent of the client library.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSpec {
    pub name: &'static str,
    pub subjects: Vec<String>,
    pub retention: Retention,
    pub max_msgs_per_subject: i64,
    pub max_age: Duration,
    pub duplicate_window: Duration,
    pub allow_direct: bool,
    pub replicas: usize,
}

/// Knobs an operator sets; everything else is fixed by the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamOptions {
    /// 1 in development, 3 on a three-node cluster.
    pub replicas: usize,
    /// Records kept per entity subject (default 64).
    pub history: i64,
    /// How long command outcomes stay retrievable.
    pub outcome_retention: Duration,
}

impl Default for StreamOptions {
    fn default() -> Self {
        Self {
            replicas: 1,
            history: 64,
            outcome_retention: Duration::from_secs(24 * 3600),
        }
    }
}

/// `BERTH_STATE`: file storage, direct gets, per-subject history.
pub fn state(opts: &StreamOptions) -> StreamSpec {
    StreamSpec {
        name: STATE,
        subjects: vec![subjects::STATE_ALL.to_string()],
        retention: Retention::Limits,
        max_msgs_per_subject: opts.history,
        max_age: Duration::ZERO,
        duplicate_window: Duration::from_secs(120),
        allow_direct: true,
        replicas: opts.replicas,
    }
}

/// `BERTH_CMD`: work queue, de-duplicated on `Nats-Msg-Id` for two minutes.
pub fn cmd(opts: &StreamOptions) -> StreamSpec {
    StreamSpec {
        name: CMD,
        subjects: vec![subjects::CMD_ALL.to_string()],
        retention: Retention::WorkQueue,
        max_msgs_per_subject: -1,
        max_age: Duration::from_secs(24 * 3600),
        duplicate_window: Duration::from_secs(120),
        allow_direct: false,
        replicas: opts.replicas,
    }
}

/// `BERTH_OUTCOME`: one record per command id, kept for `outcome_retention`.
pub fn outcome(opts: &StreamOptions) -> StreamSpec {
    StreamSpec {
        name: OUTCOME,
        subjects: vec![subjects::OUTCOME_ALL.to_string()],
        retention: Retention::Limits,
        max_msgs_per_subject: 1,
        max_age: opts.outcome_retention,
        duplicate_window: Duration::from_secs(120),
        allow_direct: true,
        replicas: opts.replicas,
    }
}

/// Every stream Berth provisions.
pub fn all(opts: &StreamOptions) -> Vec<StreamSpec> {
    vec![state(opts), cmd(opts), outcome(opts)]
}

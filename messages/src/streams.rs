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
    /// Consumers the stream accepts. Always explicit: nats-server 2.15 caps a stream that
    /// names no limit at 1,000 consumers, and every agent holds one on `BERTH_STATE`.
    pub max_consumers: i64,
    /// Stored messages also published on core NATS: `(source filter, destination)`.
    pub republish: Option<(&'static str, &'static str)>,
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
    /// Consumers each stream accepts (see [`DEFAULT_MAX_CONSUMERS`]).
    pub max_consumers: i64,
}

/// Consumers a stream accepts unless the operator says otherwise. `BERTH_STATE` holds one
/// per agent (its tasks), one per control-plane replica (its view) and short-lived ones
/// (the auditor, `berth` watches), across every cluster: sized for 50,000 hosts with room
/// to spare.
pub const DEFAULT_MAX_CONSUMERS: i64 = 65_536;

/// Share of a stream's consumer limit in use at which `berth-control` warns at start-up.
pub const CONSUMERS_WARNING_SHARE: f64 = 0.8;

/// Whether `consumers` is close enough to `max_consumers` to warn an operator.
pub fn consumers_near_limit(consumers: usize, max_consumers: i64) -> bool {
    max_consumers > 0 && consumers as f64 >= max_consumers as f64 * CONSUMERS_WARNING_SHARE
}

impl Default for StreamOptions {
    fn default() -> Self {
        Self {
            replicas: 1,
            history: 64,
            outcome_retention: Duration::from_secs(24 * 3600),
            max_consumers: DEFAULT_MAX_CONSUMERS,
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
        max_consumers: opts.max_consumers,
        // Agents follow their tasks on core NATS (see `subjects::TASKS_REPUBLISHED_TO`).
        republish: Some((
            subjects::TASKS_REPUBLISHED_FROM,
            subjects::TASKS_REPUBLISHED_TO,
        )),
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
        max_consumers: opts.max_consumers,
        republish: None,
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
        max_consumers: opts.max_consumers,
        republish: None,
    }
}

/// Every stream Berth provisions.
pub fn all(opts: &StreamOptions) -> Vec<StreamSpec> {
    vec![state(opts), cmd(opts), outcome(opts)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stream_names_its_consumer_limit() {
        let opts = StreamOptions::default();
        for spec in all(&opts) {
            assert_eq!(spec.max_consumers, DEFAULT_MAX_CONSUMERS, "{}", spec.name);
        }
    }

    #[test]
    fn a_limit_four_fifths_used_is_near() {
        assert!(!consumers_near_limit(799, 1000));
        assert!(consumers_near_limit(800, 1000));
        assert!(!consumers_near_limit(10, -1));
    }
}

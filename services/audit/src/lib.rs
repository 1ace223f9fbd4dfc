//! Berth's journal auditor. It replays `BERTH_STATE` from its first message up to the last
//! sequence at the start of the audit, reads which commands have an outcome in
//! `BERTH_OUTCOME`, and checks the invariants of DESIGN.md on that history. The checks
//! ([`Auditor`]) are pure; [`audit`] does the I/O. Run it on a quiescent system: checks
//! on the final state (returned resources, orphan allocations, outcomes) would otherwise
//! see writes in flight.
//!
//! The stream keeps a bounded history per subject, so the replay sees what remains; the
//! latest record of every entity is always there.

mod check;
mod report;
mod services;

pub use check::{Auditor, INTERNAL_COMMAND_PREFIX};
pub use report::{AuditReport, Invariant, Violation};

use async_nats::datetime::DateTime;
use async_nats::jetstream::{self, consumer, stream};
use berth_messages::{streams, subjects};
use futures::StreamExt;
use std::collections::HashSet;
use std::time::Duration;

/// How long the replay waits for the next message before giving up.
pub const REPLAY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a replay consumer that has delivered everything its replica holds may stay
/// silent before it is replaced (see [`replay`]).
const LAGGING_REPLICA_WAIT: Duration = Duration::from_secs(2);

/// Times the replay consumer is asked for before the audit fails.
const CONSUMER_ATTEMPTS: u32 = 5;
/// Pause before asking again, times the attempt number.
const CONSUMER_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Clock skew tolerated between this process and the server when deciding whether a
/// command's outcome may have aged out of `BERTH_OUTCOME`.
const OUTCOME_EXPIRY_MARGIN: Duration = Duration::from_secs(60);

/// Failures that prevent an audit (as opposed to violations it finds).
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("stream {stream} is not available: {reason}")]
    Stream { stream: String, reason: String },
    #[error("replay of {stream} failed: {reason}")]
    Replay { stream: String, reason: String },
    #[error("replay of {stream} stalled after sequence {sequence}: no message for {waited:?}")]
    Stalled {
        stream: String,
        sequence: u64,
        waited: Duration,
    },
}

/// Replays the journal and the outcomes through an [`Auditor`].
///
/// Journal messages older than `BERTH_OUTCOME`'s retention are not checked for an
/// outcome: theirs may have expired, which is no violation.
pub async fn audit(client: &async_nats::Client) -> Result<AuditReport, AuditError> {
    let js = jetstream::new(client.clone());
    let mut auditor = Auditor::new();

    let outcome_retention = open_stream(&js, streams::OUTCOME)
        .await?
        .cached_info()
        .config
        .max_age;
    let now = async_nats::datetime::now();
    let state = open_stream(&js, streams::STATE).await?;
    replay(&state, subjects::STATE_ALL, false, |message, sequence| {
        let command_id = message
            .headers
            .as_ref()
            .and_then(berth_journal::command_id_of);
        let outcome_kept = outcome_still_kept(message_published(message), outcome_retention, now);
        auditor.observe(
            sequence,
            message.subject.as_str(),
            command_id.as_deref().filter(|_| outcome_kept),
            &message.payload,
        );
    })
    .await?;

    // Read after the journal, so every outcome of a replayed command is already there.
    let outcome_stream = open_stream(&js, streams::OUTCOME).await?;
    let mut outcomes = HashSet::new();
    replay(
        &outcome_stream,
        subjects::OUTCOME_ALL,
        true,
        |message, _| {
            let id = message
                .subject
                .as_str()
                .strip_prefix(subjects::OUTCOME_PREFIX)
                .and_then(|rest| rest.strip_prefix('.'));
            if let Some(id) = id {
                outcomes.insert(id.to_string());
            }
        },
    )
    .await?;

    let report = auditor.finish(&outcomes);
    tracing::info!(
        messages = report.messages,
        outcomes = outcomes.len(),
        violations = report.violations.len(),
        "audit finished"
    );
    Ok(report)
}

async fn open_stream(js: &jetstream::Context, name: &str) -> Result<stream::Stream, AuditError> {
    js.get_stream(name).await.map_err(|e| AuditError::Stream {
        stream: name.to_string(),
        reason: e.to_string(),
    })
}

/// Whether the outcome of a command that wrote a journal message published at
/// `published` is still within `BERTH_OUTCOME`'s retention (`ZERO`: kept forever). An
/// outcome is written after the command's journal writes, so it expires no earlier.
fn outcome_still_kept(published: Option<DateTime>, retention: Duration, now: DateTime) -> bool {
    if retention.is_zero() {
        return true;
    }
    published.is_none_or(|published| {
        async_nats::datetime::add_std_duration(
            published,
            retention.saturating_sub(OUTCOME_EXPIRY_MARGIN),
        )
        .map_or(true, |expires| expires > now)
    })
}

fn message_published(message: &jetstream::Message) -> Option<DateTime> {
    message.info().ok().map(|info| info.published)
}

/// Delivers every message of `stream` matching `filter`, in order, up to the stream's
/// last sequence when `stream` was fetched.
///
/// A replay consumer is R1 and may sit on a replica that is still catching up (a node
/// just restarted): it reports nothing pending before the leader's last sequence, and a
/// replica that catches up by installing a snapshot does not wake it. Only the leader's
/// last sequence ends the replay, and a consumer that has delivered all its replica holds
/// and then stays silent for [`LAGGING_REPLICA_WAIT`] is replaced by a new one from the
/// next sequence.
async fn replay(
    stream: &stream::Stream,
    filter: &str,
    headers_only: bool,
    mut each: impl FnMut(&jetstream::Message, u64),
) -> Result<(), AuditError> {
    let info = stream.cached_info();
    let name = info.config.name.clone();
    let last_sequence = info.state.last_sequence;
    if info.state.messages == 0 {
        return Ok(());
    }
    let replay_error = |reason: String| AuditError::Replay {
        stream: name.clone(),
        reason,
    };
    let mut sequence = 0;
    let mut progress_at = tokio::time::Instant::now();
    loop {
        let mut messages = replay_consumer(stream, filter, headers_only, sequence + 1).await?;
        let mut caught_up_with_replica = false;
        loop {
            let wait = if caught_up_with_replica {
                LAGGING_REPLICA_WAIT
            } else {
                REPLAY_IDLE_TIMEOUT.saturating_sub(progress_at.elapsed())
            };
            let next = match tokio::time::timeout(wait, messages.next()).await {
                Ok(next) => next,
                Err(_) if progress_at.elapsed() < REPLAY_IDLE_TIMEOUT => {
                    tracing::debug!(stream = %name, sequence, last_sequence, "replay consumer silent short of the last sequence; replacing it");
                    break;
                }
                Err(_) => {
                    return Err(AuditError::Stalled {
                        stream: name.clone(),
                        sequence,
                        waited: REPLAY_IDLE_TIMEOUT,
                    })
                }
            };
            let message = match next {
                Some(Ok(message)) => message,
                Some(Err(e)) => return Err(replay_error(e.to_string())),
                None => return Err(replay_error("the consumer ended early".into())),
            };
            let (stream_sequence, pending) = message
                .info()
                .map(|info| (info.stream_sequence, info.pending))
                .map_err(|e| replay_error(format!("message without metadata: {e}")))?;
            if stream_sequence > last_sequence {
                return Ok(());
            }
            sequence = stream_sequence;
            progress_at = tokio::time::Instant::now();
            each(&message, sequence);
            if sequence >= last_sequence {
                return Ok(());
            }
            caught_up_with_replica = pending == 0;
        }
    }
}

/// An ordered consumer on `filter` from `start`. A JetStream API request can time out
/// while a busy cluster elects or catches up; it is asked for again a few times before
/// the audit gives up.
async fn replay_consumer(
    stream: &stream::Stream,
    filter: &str,
    headers_only: bool,
    start: u64,
) -> Result<consumer::pull::Ordered, AuditError> {
    let name = &stream.cached_info().config.name;
    let mut attempt = 1;
    loop {
        let created = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: filter.to_string(),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                headers_only,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string());
        let started = match created {
            Ok(consumer) => consumer.messages().await.map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        match started {
            Ok(messages) => return Ok(messages),
            Err(reason) if attempt < CONSUMER_ATTEMPTS => {
                tracing::warn!(stream = %name, attempt, %reason, "audit consumer not created; asking again");
                tokio::time::sleep(CONSUMER_RETRY_PAUSE * attempt).await;
                attempt += 1;
            }
            Err(reason) => {
                return Err(AuditError::Replay {
                    stream: name.clone(),
                    reason,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::datetime::from_nanos;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn outcomes_older_than_the_retention_are_not_expected() {
        let hours = |h: i128| from_nanos(h * 3_600_000_000_000).unwrap();
        let now = hours(100);
        assert!(outcome_still_kept(Some(hours(90)), 24 * HOUR, now));
        assert!(!outcome_still_kept(Some(hours(70)), 24 * HOUR, now));
        assert!(outcome_still_kept(Some(hours(1)), Duration::ZERO, now));
        assert!(outcome_still_kept(None, 24 * HOUR, now));
    }
}

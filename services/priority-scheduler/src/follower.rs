//! Follows the container instances of one cluster in the journal, the public contract of
//! DESIGN.md: an ordered consumer on `berth.state.<cluster>.instance.*` that delivers the
//! latest record of every instance, then each new record as it is written. Records are
//! named MessagePack `ContainerInstance`s; a record's version is its stream sequence.
//! Catch-up is complete once nothing was pending behind a message (or nothing was pending
//! at all); the consumer is recreated after a failure or a reconnection.

use async_nats::jetstream::{self, consumer::pull, consumer::DeliverPolicy, stream};
use berth_messages::model::ContainerInstance;
use berth_messages::subjects::{self, StateKey};
use berth_messages::{codec, streams};
use futures::StreamExt;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const RECONNECT_CHECK: Duration = Duration::from_secs(1);

/// What the follower reports.
#[derive(Debug)]
pub enum Event {
    /// The latest record of an instance (`version`: its stream sequence).
    Record {
        instance_id: String,
        record: Box<ContainerInstance>,
        version: u64,
    },
    /// Every record that existed when the follower started has been reported.
    CaughtUp,
}

/// Follows `cluster`'s instances until `events` is closed; spawn it.
pub async fn follow(client: async_nats::Client, cluster: String, events: mpsc::Sender<Event>) {
    let js = jetstream::new(client.clone());
    let filter = subjects::instances_of(&cluster);
    let statistics = client.statistics();
    let mut connects = statistics.connects.load(Ordering::Relaxed);
    let mut backoff = MIN_BACKOFF;
    let mut caught_up = false;
    let mut applied = 0u64;
    loop {
        let policy = if caught_up {
            DeliverPolicy::ByStartSequence {
                start_sequence: applied + 1,
            }
        } else {
            DeliverPolicy::LastPerSubject
        };
        let (mut messages, ready_at) = match open(&js, &filter, policy).await {
            Ok(opened) => opened,
            Err(error) => {
                tracing::debug!(%error, "journal not followable yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                if events.is_closed() {
                    return;
                }
                continue;
            }
        };
        if ready_at.is_none() && !caught_up {
            caught_up = true;
            if events.send(Event::CaughtUp).await.is_err() {
                return;
            }
        }
        let mut check = tokio::time::interval(RECONNECT_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let failed = loop {
            tokio::select! {
                next = messages.next() => match next {
                    Some(Ok(message)) => {
                        let Ok(info) = message.info() else { continue };
                        let (sequence, pending) = (info.stream_sequence, info.pending);
                        applied = applied.max(sequence);
                        backoff = MIN_BACKOFF;
                        if let Some(event) = decode(&cluster, &message.subject, &message.payload, sequence) {
                            if events.send(event).await.is_err() {
                                return;
                            }
                        }
                        let done = pending == 0 || ready_at.is_some_and(|r| sequence >= r);
                        if !caught_up && done {
                            caught_up = true;
                            if events.send(Event::CaughtUp).await.is_err() {
                                return;
                            }
                        }
                    }
                    Some(Err(error)) => {
                        tracing::warn!(%error, "journal follower failed; recreating it");
                        break true;
                    }
                    None => break true,
                },
                _ = check.tick() => {
                    if events.is_closed() {
                        return;
                    }
                    let now = statistics.connects.load(Ordering::Relaxed);
                    if now != connects {
                        connects = now;
                        tracing::info!("NATS reconnected; journal follower recreates its consumer");
                        break false;
                    }
                }
            }
        };
        if failed {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// An ordered consumer on the filter, and the stream's last sequence when records were
/// pending at creation (`None`: nothing to catch up on).
async fn open(
    js: &jetstream::Context,
    filter: &str,
    deliver_policy: DeliverPolicy,
) -> Result<(pull::Ordered, Option<u64>), async_nats::Error> {
    let mut stream: stream::Stream = js.get_stream(streams::STATE).await?;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: filter.to_string(),
            deliver_policy,
            ..Default::default()
        })
        .await?;
    let pending = consumer.cached_info().num_pending;
    let ready_at = if pending == 0 {
        None
    } else {
        Some(stream.info().await?.state.last_sequence)
    };
    Ok((consumer.messages().await?, ready_at))
}

fn decode(cluster: &str, subject: &str, payload: &[u8], version: u64) -> Option<Event> {
    let Some(StateKey::Instance {
        cluster: c,
        instance_id,
    }) = subjects::parse_state(subject)
    else {
        return None;
    };
    if c != cluster {
        return None;
    }
    match codec::decode_record::<ContainerInstance>(payload) {
        Ok(mut record) => {
            record.version = Some(version);
            Some(Event::Record {
                instance_id: instance_id.to_string(),
                record: Box::new(record),
                version,
            })
        }
        Err(error) => {
            tracing::warn!(%error, %subject, "skipping an instance record that does not decode");
            None
        }
    }
}

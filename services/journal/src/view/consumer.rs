//! The view's feed: the consumers on `BERTH_STATE` (a catch-up consumer of the last record
//! per subject with large pulls, then a live consumer from the last applied sequence),
//! their recreation after failures, reconnections and leader elections, and the apply
//! loop that drains them in batches into the view ([`View::start`]).

use super::apply::recycle;
use super::task::Prepared;
use super::{AbortOnDrop, Inner, View};
use crate::recovery::{retry, LeaderSignals, Patience};
use crate::{Journal, JournalError, Result};
use async_nats::jetstream;
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::stream;
use berth_messages::streams;
use berth_messages::subjects;
use futures::{FutureExt, StreamExt};
use std::sync::Arc;
use std::time::Duration;

/// Expiry of the catch-up consumer's pull requests; its idle heartbeat is half of it. A
/// server computing where a consumer over millions of subjects starts can be silent for
/// most of a second, so catch-up does not count a short silence as a lost consumer.
const CATCH_UP_EXPIRY: Duration = Duration::from_secs(4);
/// Expiry of the live consumer's pull requests; its idle heartbeat is half of it, and a
/// missed one ends the feed, which the apply loop then recreates with short attempts. A
/// pull sent in the instant the stream elects a leader can be lost without an answer, and
/// until it is replaced the view applies nothing (and every mutation waits for its view):
/// short pulls bound that to half a second, for a few status messages a second while the
/// journal is quiet.
const LIVE_EXPIRY: Duration = Duration::from_millis(500);
/// Messages the live consumer asks for per pull.
const LIVE_BATCH: usize = 500;

/// Most messages applied under one lock (and one progress update).
const APPLY_BATCH: usize = 512;

/// Messages and bytes the catch-up consumer asks for per pull.
const CATCH_UP_BATCH: usize = 8192;
const CATCH_UP_BATCH_BYTES: usize = 16 << 20;
/// The server removes a consumer left behind (a replica gone, or a consumer replaced).
const CONSUMER_INACTIVE: Duration = Duration::from_secs(10);

/// Pause after the consumer failed, doubling up to the max while it keeps failing.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Buffers the apply loop reuses from one batch to the next.
#[derive(Default)]
struct ApplyBuffers {
    items: Vec<(&'static str, &'static [u8], u64)>,
    prepared: Vec<Prepared<'static>>,
}

/// The view's feed of journal messages: the catch-up consumer or the live consumer.
type Feed = futures::stream::BoxStream<'static, std::result::Result<jetstream::Message, String>>;

/// The consumer for `deliver_policy`: a catch-up consumer when the view is not ready yet
/// (large pulls, so that a replay of millions of records is bound by neither process's
/// round trips), a live consumer afterwards. Both are ephemeral, unacknowledged, in memory
/// on one server; a gap in the delivery sequence (a consumer lost with its server), an
/// error or a missed heartbeat ends the feed, and the apply loop creates the next one from
/// the last applied record (records applied twice are skipped by version). The loop does
/// this itself, with the short attempts of [`retry`], rather than leaving it to the
/// client's ordered consumer, whose own recreation waits for the request timeout when its
/// first request is lost with a leader. Returns the feed, the messages pending at creation
/// and the name of the catch-up consumer.
async fn consumer_feed(
    stream: &stream::Stream,
    deliver_policy: DeliverPolicy,
    catching_up: bool,
) -> Result<(Feed, u64, Option<String>)> {
    let expiry = if catching_up {
        CATCH_UP_EXPIRY
    } else {
        LIVE_EXPIRY
    };
    let consumer = stream
        .create_consumer(pull::Config {
            filter_subject: subjects::STATE_ALL.to_string(),
            deliver_policy,
            ack_policy: AckPolicy::None,
            max_deliver: 1,
            max_expires: expiry,
            inactive_threshold: CONSUMER_INACTIVE,
            num_replicas: 1,
            memory_storage: true,
            ..Default::default()
        })
        .await
        .map_err(|e| JournalError::Consumer(e.to_string()))?;
    let pending = consumer.cached_info().num_pending;
    let name = consumer.cached_info().name.clone();
    let pulls = consumer.stream().expires(expiry).heartbeat(expiry / 2);
    let pulls = if catching_up {
        pulls
            .max_messages_per_batch(CATCH_UP_BATCH)
            .max_bytes_per_batch(CATCH_UP_BATCH_BYTES)
    } else {
        pulls.max_messages_per_batch(LIVE_BATCH)
    };
    let messages = pulls
        .messages()
        .await
        .map_err(|e| JournalError::Consumer(e.to_string()))?;
    let mut delivered = 0u64;
    let feed = messages.map(move |message| {
        let message = message.map_err(|e| e.to_string())?;
        let info = message.info().map_err(|e| e.to_string())?;
        if info.consumer_sequence != delivered + 1 {
            return Err(format!(
                "view consumer skipped from delivery {delivered} to {}",
                info.consumer_sequence
            ));
        }
        delivered = info.consumer_sequence;
        Ok(message)
    });
    Ok((feed.boxed(), pending, catching_up.then_some(name)))
}

/// Why the apply loop replaces its consumer.
enum Interruption {
    /// The consumer failed or ended: wait a little before recreating it.
    Failed,
    /// The client reconnected, or the stream elected a leader: the consumer may be gone
    /// with its server.
    ClusterChanged,
    /// Catch-up is complete: the live consumer takes over after the last applied record.
    CaughtUp,
}

/// The consumer to create after an interruption: the rest of the catch-up (records already
/// applied are skipped by version), or everything after the last applied message.
fn resume_policy(inner: &Inner) -> DeliverPolicy {
    let progress = *inner.progress.borrow();
    if progress.ready {
        DeliverPolicy::ByStartSequence {
            start_sequence: progress.applied + 1,
        }
    } else {
        DeliverPolicy::LastPerSubject
    }
}

/// Applies a batch of consumed messages and records the progress.
fn apply_messages(
    inner: &Inner,
    batch: &[async_nats::jetstream::Message],
    ready_at: u64,
    buffers: &mut ApplyBuffers,
) {
    let mut items: Vec<(&str, &[u8], u64)> = recycle(std::mem::take(&mut buffers.items));
    let mut last = 0;
    let mut caught_up = false;
    for message in batch {
        match message.info() {
            Ok(info) => {
                items.push((
                    message.subject.as_str(),
                    &message.payload[..],
                    info.stream_sequence,
                ));
                last = last.max(info.stream_sequence);
                caught_up |= info.pending == 0 || info.stream_sequence >= ready_at;
            }
            Err(error) => {
                tracing::warn!(%error, subject = %message.subject, "view skips a message without JetStream metadata");
            }
        }
    }
    buffers.prepared = inner.apply_batch_with(&items, std::mem::take(&mut buffers.prepared));
    if !items.is_empty() {
        inner.advance(last, caught_up);
        inner.landings.applied(
            items
                .iter()
                .map(|&(subject, _, sequence)| (subject, sequence)),
        );
    }
    buffers.items = recycle(items);
}

async fn apply_loop(
    inner: Arc<Inner>,
    mut signals: LeaderSignals,
    start_patience: Patience,
    stream: stream::Stream,
    mut messages: Feed,
    mut catch_up_consumer: Option<String>,
    ready_at: u64,
) {
    let mut backoff = MIN_BACKOFF;
    let mut batch = Vec::with_capacity(APPLY_BATCH);
    let mut buffers = ApplyBuffers::default();
    loop {
        let interruption = loop {
            tokio::select! {
                next = messages.next() => {
                    batch.clear();
                    let mut ended = None;
                    let mut next = next;
                    loop {
                        match next {
                            Some(Ok(message)) => batch.push(message),
                            Some(Err(error)) => {
                                tracing::warn!(%error, "view consumer failed; recreating it");
                                ended = Some(Interruption::Failed);
                                break;
                            }
                            None => {
                                tracing::warn!("view consumer ended; recreating it");
                                ended = Some(Interruption::Failed);
                                break;
                            }
                        }
                        if batch.len() == APPLY_BATCH {
                            break;
                        }
                        match messages.next().now_or_never() {
                            Some(more) => next = more,
                            None => break,
                        }
                    }
                    if !batch.is_empty() {
                        apply_messages(&inner, &batch, ready_at, &mut buffers);
                        batch.clear();
                        backoff = MIN_BACKOFF;
                    }
                    if let Some(interruption) = ended {
                        break interruption;
                    }
                    if catch_up_consumer.is_some() && inner.progress.borrow().ready {
                        break Interruption::CaughtUp;
                    }
                }
                signal = signals.next() => {
                    tracing::info!(?signal, "view recreates its consumer");
                    break Interruption::ClusterChanged;
                }
            }
        };
        if let Interruption::Failed = interruption {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        if let Some(name) = catch_up_consumer.take() {
            let stream = stream.clone();
            tokio::spawn(async move {
                if let Err(error) = stream.delete_consumer(&name).await {
                    tracing::debug!(%error, name, "view could not delete its catch-up consumer; the server drops it when idle");
                }
            });
        }
        let policy = resume_policy(&inner);
        let catching_up = !inner.progress.borrow().ready;
        // A live view resumes from a sequence: cheap for the server, so every attempt is
        // short (`Patience::resume`). A catch-up consumer over a large stream may take
        // longer to create.
        let patience = if catching_up {
            Patience {
                give_up_after: None,
                ..start_patience
            }
        } else {
            Patience::resume()
        };
        let created = retry("view consumer", patience, Some(&mut signals), || {
            consumer_feed(&stream, policy, catching_up)
        })
        .await;
        match created {
            Ok((next, pending, catch_up)) => {
                if pending == 0 {
                    inner.mark_ready();
                }
                messages = next;
                catch_up_consumer = catch_up;
            }
            Err(error) => {
                // Not reached (the retries never give up); the old feed is kept.
                tracing::error!(%error, ?policy, "view cannot recreate its consumer");
            }
        }
    }
}

impl View {
    /// Creates the consumer and spawns the apply task; returns without waiting for
    /// catch-up (see [`View::wait_ready`]).
    pub async fn start(journal: &Journal) -> Result<View> {
        let signals = LeaderSignals::for_stream(journal.client(), streams::STATE).await;
        let js = journal.jetstream();
        let patience = Patience::start(crate::js_timeout(js), crate::START_PATIENCE);
        let stream = retry("view stream", patience, None, || {
            js.get_stream(streams::STATE)
        })
        .await
        .map_err(|e| JournalError::Consumer(crate::error_chain(&e)))?;
        let (messages, pending, catch_up_consumer) = retry("view consumer", patience, None, || {
            consumer_feed(&stream, DeliverPolicy::LastPerSubject, true)
        })
        .await
        .map_err(|e| JournalError::Consumer(crate::error_chain(&e)))?;
        tracing::info!(pending, "view catching up with the journal");
        // Every message pending at creation has a sequence at most this one; a message
        // at or past it (or one with nothing pending behind it) completes catch-up.
        let ready_at = if pending == 0 {
            0
        } else {
            retry("journal's last sequence", patience, None, || {
                journal.state_last_sequence()
            })
            .await
            .map_err(|e| JournalError::Consumer(crate::error_chain(&e)))?
        };
        let inner = Arc::new(Inner::default());
        if pending == 0 {
            inner.mark_ready();
        }
        let handle = tokio::spawn(apply_loop(
            inner.clone(),
            signals,
            patience,
            stream,
            messages,
            catch_up_consumer,
            ready_at,
        ));
        Ok(View {
            inner,
            _apply: Some(Arc::new(AbortOnDrop(handle.abort_handle()))),
        })
    }
}

//! The command processor: consumes `BERTH_CMD` through one durable consumer shared by
//! every replica (each command goes to one replica at a time; an unacknowledged one is
//! redelivered, to another replica if this one died), executes it through the actors,
//! records its one outcome in `BERTH_OUTCOME`, publishes the outcome to the command's
//! `Berth-Reply-To`, and only then acknowledges it.
//!
//! A command already having an outcome (a duplicate, or a redelivery after the outcome
//! was written) is answered from that outcome and takes no effect again.
//!
//! The ack wait is short (`--command-ack-wait`, 5 s), so that the commands of a dead or
//! hung replica go to another one within seconds; a replica keeps its claim on a command
//! it is still executing by reporting progress (`AckKind::Progress`) every third of it.

mod cluster;
mod instance;

pub use cluster::with_counters as cluster_with_counters;
pub use instance::presented as instance_presented;
pub mod service;
mod task;
mod taskdef;

use crate::api::replies::Delivered;
use crate::shared::{ExecError, ExecResult, Metrics, Shared};
use async_nats::jetstream::{self, consumer::pull, AckKind};
use berth_journal::RecordedOutcome;
use berth_messages::codec::Encoding;
use berth_messages::command::{Action, CommandRequest, CommandResponse, Outcome};
use berth_messages::{headers, streams, subjects, validate, ApiError};
use futures::future::Either;
use futures::StreamExt;
use std::future::Future;
use std::time::Duration;
use tracing::Instrument;

/// After this many deliveries that ended without an outcome, the command fails for good.
const MAX_ATTEMPTS: i64 = 10;
/// Pause before pulling afresh after the pulls failed.
const RESUBSCRIBE_PAUSE: Duration = Duration::from_millis(50);
const MAX_RESUBSCRIBE_PAUSE: Duration = Duration::from_millis(500);
/// Idle heartbeat of the command pulls: two missed ones end them, and the replica pulls
/// afresh. A pull sent in the instant a consumer leader is elected can be lost without an
/// answer; the heartbeat bounds how long this replica then takes no command (twice it),
/// and its cost is a few status messages a second while no command waits.
const PULL_HEARTBEAT: Duration = Duration::from_millis(250);
const PULL_EXPIRY: Duration = Duration::from_secs(10);

/// Facts about the delivery that handlers need.
pub struct Delivery {
    pub command_id: String,
    /// True when this command may have run before (redelivery): handlers then look for
    /// writes a previous attempt made before minting anything.
    pub redelivered: bool,
    /// True when this replica's API minted the command id (random) and this is its first
    /// delivery: nothing derived from the id can exist yet.
    pub fresh: bool,
    /// This executor's claim on the command: the delivery count. A later delivery fences
    /// the earlier claims off the instances they could allocate on (see "Fencing" in
    /// ARCHITECTURE.md).
    pub claim: u32,
}

/// Runs the consumer until the connection ends.
pub async fn run(shared: Shared) -> Result<(), berth_journal::JournalError> {
    use berth_journal::recovery::{retry, LeaderSignals, Patience};
    use berth_journal::JournalError;
    let js = shared.journal.jetstream().clone();
    let patience = Patience::start(
        shared.config.journal().request_timeout,
        berth_journal::START_PATIENCE,
    );
    let ack_wait = shared.config.command_ack_wait();
    let consumer = retry("command consumer", patience, None, || async {
        let stream = js
            .get_stream(streams::CMD)
            .await
            .map_err(|e| JournalError::Consumer(e.to_string()))?;
        // Create or update: a consumer made by an earlier version (or with another
        // `--command-ack-wait`) takes this replica's ack wait.
        let consumer: jetstream::consumer::PullConsumer = stream
            .create_consumer(pull::Config {
                durable_name: Some(streams::CMD_CONSUMER.to_string()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait,
                max_ack_pending: 20_000,
                filter_subject: subjects::CMD_ALL.to_string(),
                ..Default::default()
            })
            .await
            .map_err(|e| JournalError::Consumer(e.to_string()))?;
        Ok::<_, JournalError>(consumer)
    })
    .await
    .map_err(|e| JournalError::Consumer(berth_journal::error_chain(&e)))?;
    // Pulls sent to a consumer leader that is gone are never answered: pull afresh as soon
    // as the client reconnects or the stream or consumer elects a leader, and notice a
    // silent consumer within two heartbeats.
    let mut signals =
        LeaderSignals::for_consumer(shared.journal.client(), streams::CMD, streams::CMD_CONSUMER)
            .await;
    // Failures in a row: the first is a warning, the rest (a consumer without a leader
    // answers every pull with "no responders" until one is elected) are debug.
    let mut failures = 0u32;
    loop {
        let pulled = consumer
            .stream()
            .max_messages_per_batch(500)
            .heartbeat(PULL_HEARTBEAT)
            .expires(PULL_EXPIRY)
            .messages()
            .await;
        signals.clear();
        let failure = match pulled {
            Ok(mut messages) => loop {
                let next = tokio::select! {
                    next = messages.next() => next,
                    signal = signals.next() => {
                        tracing::info!(?signal, "command consumer pulls afresh");
                        break None;
                    }
                };
                match next {
                    Some(Ok(msg)) => {
                        failures = 0;
                        let shared = shared.clone();
                        tokio::spawn(async move { process(shared, msg).await });
                    }
                    // A pull that nobody answered (the consumer may have no leader) or a
                    // missed heartbeat can leave the pulls stalled: pull afresh.
                    Some(Err(e)) => break Some(e.to_string()),
                    None => break Some("the pulls ended".to_string()),
                }
            },
            Err(e) => Some(e.to_string()),
        };
        let Some(error) = failure else { continue };
        failures += 1;
        if failures == 1 {
            tracing::warn!(%error, "command consumer failed; pulling afresh");
        } else {
            tracing::debug!(%error, failures, "command consumer failed again; pulling afresh");
        }
        // Until a signal says the consumer may answer again.
        let pause = RESUBSCRIBE_PAUSE
            .saturating_mul(1 << failures.min(4))
            .min(MAX_RESUBSCRIBE_PAUSE);
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = signals.next() => {}
        }
    }
}

async fn process(shared: Shared, msg: jetstream::Message) {
    let (stream_seq, delivered) = match msg.info() {
        Ok(info) => (info.stream_sequence, info.delivered),
        Err(_) => (0, 1),
    };
    let given_id = msg
        .headers
        .as_ref()
        .and_then(|h| {
            h.get(headers::MSG_ID)
                .or_else(|| h.get(headers::COMMAND_ID))
        })
        .map(|v| v.as_str().to_string());
    let reply_to = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(headers::REPLY_TO))
        .map(|v| v.as_str().to_string());
    let encoding = Encoding::from_content_type(
        msg.headers
            .as_ref()
            .and_then(|h| h.get(headers::CONTENT_TYPE))
            .map(|v| v.as_str()),
    );
    // A command without a usable id is named after its stream sequence, which is stable
    // across redeliveries.
    let (command_id, id_error) = match given_id {
        Some(id) => match validate::command_id("command id (Nats-Msg-Id)", &id) {
            Ok(()) => (id, None),
            Err(e) => (format!("seq-{stream_seq}"), Some(e)),
        },
        None => (format!("seq-{stream_seq}"), None),
    };
    let parsed = subjects::parse_command(&msg.subject);
    let action_name = parsed.map(|(_, a)| a.to_string()).unwrap_or_default();
    let scope = parsed.map(|(s, _)| s.to_string()).unwrap_or_default();
    let span = tracing::info_span!("command", command_id = %command_id, action = %action_name, cluster = %scope, delivered);
    let progress_every = shared.config.command_ack_wait() / 3;
    let work = async {
        Metrics::inc(&shared.metrics.commands);
        // A command this replica's API minted the id of, on its first delivery, has no
        // outcome yet: the look-up is skipped.
        let fresh = delivered == 1 && shared.fresh_commands.contains(&command_id);
        let existing = if fresh {
            Ok(None)
        } else {
            Box::pin(shared.journal.read_outcome_encoded(&command_id)).await
        };
        match existing {
            Ok(Some((outcome, encoded))) => {
                tracing::debug!("command already has an outcome");
                let existing = RecordedOutcome {
                    outcome,
                    encoded,
                    recorded_here: false,
                };
                Box::pin(publish_reply(&shared, reply_to.as_deref(), existing, None)).await;
                return Settle::Ack;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot read outcome; retrying later");
                return Settle::Nak(Duration::from_millis(500));
            }
        }
        if let Some(hold) = &shared.config.command_hold {
            if command_id.starts_with(&hold.id_prefix) {
                tracing::info!(hold = ?hold.duration, "test hook: holding the command");
                tokio::time::sleep(hold.duration).await;
            }
        }
        let delivery = Delivery {
            command_id: command_id.clone(),
            redelivered: delivered > 1,
            fresh,
            claim: u32::try_from(delivered).unwrap_or(u32::MAX),
        };
        let result: ExecResult<(CommandResponse, u64)> = match id_error {
            Some(e) => Err(e.into()),
            None => {
                decode_and_execute(&shared, &delivery, &msg.subject, encoding, &msg.payload).await
            }
        };
        let (response, error, sequence) = match result {
            Ok((response, sequence)) => (Some(response), None, sequence),
            Err(ExecError::Api(e)) => (None, Some(e), 0),
            Err(ExecError::Transient(e)) if delivered < MAX_ATTEMPTS => {
                tracing::warn!(error = %e, "command hit a transient failure; it will be retried");
                return Settle::Nak(backoff(delivered));
            }
            Err(ExecError::Transient(e)) => {
                tracing::error!(error = %e, "command failed after {MAX_ATTEMPTS} attempts");
                (None, Some(ApiError::server(e.to_string())), 0)
            }
            Err(ExecError::ClaimLost { claim }) => {
                // The delivery that fenced this one holds the command now: acknowledging
                // or NAKing it here would take it from that executor.
                tracing::warn!(
                    claim,
                    "a later delivery took the command over; leaving it to that one"
                );
                return Settle::Leave;
            }
        };
        if let Some(e) = &error {
            tracing::info!(error_type = %e.error_type, message = %e.message, "command refused");
        }
        // Encoded once: for the outcome's record and, handed over in memory, for the reply.
        let body = response
            .as_ref()
            .and_then(|r| r.encode_body(Encoding::MsgPack).ok());
        let outcome = Outcome {
            command_id: command_id.clone(),
            action: action_name.clone(),
            cluster: scope.clone(),
            response,
            error,
            completed_at: berth_messages::now_epoch_seconds(),
            journal_sequence: sequence,
            request_digest: request_digest(&msg.payload),
        };
        // Boxed, like the action's future, so that the future spawned per delivery stays small.
        let recorded = match &body {
            Some(body) => Box::pin(shared.journal.record_outcome_with_body(outcome, body)).await,
            None => {
                Box::pin(shared.journal.record_outcome(outcome))
                    .await
                    .map(|(outcome, encoded)| RecordedOutcome {
                        outcome,
                        encoded,
                        recorded_here: true,
                    })
            }
        };
        match recorded {
            Ok(recorded) => {
                let body = body.filter(|_| recorded.recorded_here);
                Box::pin(publish_reply(&shared, reply_to.as_deref(), recorded, body)).await;
                Settle::Ack
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot record outcome; retrying later");
                Settle::Nak(backoff(delivered))
            }
        }
    };
    async {
        // The verdict is sent after the progress reports have stopped, so none can follow
        // it (a progress report after a NAK would postpone the redelivery).
        match keep_claim(&msg, progress_every, work).await {
            Settle::Ack => ack(&msg).await,
            Settle::Nak(delay) => {
                if let Err(e) = msg.ack_with(AckKind::Nak(Some(delay))).await {
                    tracing::debug!(error = %e, "NAK failed; the command is redelivered after the ack wait");
                }
            }
            Settle::Leave => {}
        }
    }
    .instrument(span)
    .await
}

/// How a delivery ends.
enum Settle {
    /// Done: the outcome is recorded (or already was).
    Ack,
    /// To be redelivered after this delay.
    Nak(Duration),
    /// Neither: a later delivery fenced this one off and holds the command (an ack or a
    /// NAK would act on that delivery).
    Leave,
}

/// Runs `work` while reporting to the stream every `every` that the command is still being
/// worked on, so that a command taking longer than the ack wait is not given to another
/// replica while this one is alive. A dead or hung replica stops reporting and loses the
/// command within the ack wait.
async fn keep_claim<T>(
    msg: &jetstream::Message,
    every: Duration,
    work: impl Future<Output = T>,
) -> T {
    let progress = async {
        let every = every.max(Duration::from_millis(10));
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if let Err(e) = msg.ack_with(AckKind::Progress).await {
                tracing::debug!(error = %e, "progress report failed");
            }
        }
    };
    let work = std::pin::pin!(work);
    let progress = std::pin::pin!(progress);
    match futures::future::select(work, progress).await {
        Either::Left((output, _)) => output,
        Either::Right(((), work)) => work.await,
    }
}

fn backoff(delivered: i64) -> Duration {
    Duration::from_millis((100u64 << delivered.clamp(0, 6) as u64).min(5_000))
}

async fn ack(msg: &jetstream::Message) {
    // A lost ack only means a redelivery, answered from the recorded outcome: no need to
    // wait for the server to confirm it.
    if let Err(e) = msg.ack().await {
        tracing::warn!(error = %e, "ack failed; the command will be redelivered and answered from its outcome");
    }
}

/// Digest of a request body: a reused RunTask clientToken with another body conflicts.
pub fn request_digest(body: &[u8]) -> Option<String> {
    Some(
        uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, body)
            .simple()
            .to_string(),
    )
}

/// Sends an outcome to its reply subject: handed over in memory (with its response's
/// MessagePack body, if encoded here) when the waiting API call is this replica's own,
/// published otherwise.
async fn publish_reply(
    shared: &Shared,
    reply_to: Option<&str>,
    recorded: RecordedOutcome,
    msgpack_body: Option<Vec<u8>>,
) {
    let Some(reply_to) = reply_to else { return };
    let RecordedOutcome {
        outcome, encoded, ..
    } = recorded;
    if let Some(replies) = shared.replies.get() {
        let delivered = Delivered {
            outcome,
            msgpack_body,
        };
        if replies.deliver_local(reply_to, delivered) {
            return;
        }
    }
    if let Err(e) = shared
        .journal
        .client()
        .publish(reply_to.to_string(), encoded)
        .await
    {
        tracing::debug!(error = %e, "cannot publish outcome to its reply subject");
    }
}

async fn decode_and_execute(
    shared: &Shared,
    delivery: &Delivery,
    subject: &str,
    encoding: Encoding,
    body: &[u8],
) -> ExecResult<(CommandResponse, u64)> {
    let (scope, action_name) = subjects::parse_command(subject)
        .ok_or_else(|| ApiError::invalid(format!("'{subject}' is not a command subject")))?;
    let action = Action::parse(action_name)
        .ok_or_else(|| ApiError::invalid(format!("unknown action {action_name}")))?;
    if body.len() > validate::MAX_REQUEST_BYTES {
        return Err(ApiError::invalid(format!(
            "request body is {} bytes, the limit is {}",
            body.len(),
            validate::MAX_REQUEST_BYTES
        ))
        .into());
    }
    let request = CommandRequest::decode(action, encoding, body)?;
    crate::validation::request(&request)?;
    if request.scope() != scope {
        return Err(ApiError::invalid(format!(
            "command subject names '{scope}' but the request names '{}'",
            request.scope()
        ))
        .into());
    }
    execute(shared, delivery, request).await
}

/// Executes one decoded, validated command. Each action's future is boxed, so that this
/// one (and the command's, spawned per delivery) stays small instead of as large as the
/// largest action's.
pub async fn execute(
    shared: &Shared,
    delivery: &Delivery,
    request: CommandRequest,
) -> ExecResult<(CommandResponse, u64)> {
    match request {
        CommandRequest::CreateCluster(r) => Box::pin(cluster::create(shared, delivery, r)).await,
        CommandRequest::DeleteCluster(r) => Box::pin(cluster::delete(shared, delivery, r)).await,
        CommandRequest::RegisterContainerInstance(r) => {
            Box::pin(instance::register(shared, delivery, r)).await
        }
        CommandRequest::DeregisterContainerInstance(r) => {
            Box::pin(instance::deregister(shared, delivery, r)).await
        }
        CommandRequest::UpdateContainerInstancesState(r) => {
            Box::pin(instance::update_state(shared, delivery, r)).await
        }
        CommandRequest::PutAttributes(r) => {
            Box::pin(instance::put_attributes(shared, delivery, r)).await
        }
        CommandRequest::DeleteAttributes(r) => {
            Box::pin(instance::delete_attributes(shared, delivery, r)).await
        }
        CommandRequest::RegisterTaskDefinition(r) => {
            Box::pin(taskdef::register(shared, delivery, r)).await
        }
        CommandRequest::DeregisterTaskDefinition(r) => {
            Box::pin(taskdef::deregister(shared, delivery, r)).await
        }
        CommandRequest::RunTask(r) => Box::pin(task::run(shared, delivery, r)).await,
        CommandRequest::StartTask(r) => Box::pin(task::start(shared, delivery, r)).await,
        CommandRequest::StopTask(r) => Box::pin(task::stop(shared, delivery, r)).await,
        CommandRequest::SubmitTaskStateChange(r) => {
            Box::pin(task::submit_task_state(shared, delivery, r)).await
        }
        CommandRequest::SubmitContainerStateChange(r) => {
            Box::pin(task::submit_container_state(shared, delivery, r)).await
        }
        CommandRequest::CreateService(r) => Box::pin(service::create(shared, delivery, r)).await,
        CommandRequest::UpdateService(r) => Box::pin(service::update(shared, delivery, r)).await,
        CommandRequest::DeleteService(r) => Box::pin(service::delete(shared, delivery, r)).await,
    }
}

/// The cluster named by a request, which must exist and be ACTIVE. Looks in the view,
/// then (in case this replica's view lags) in the journal.
pub async fn active_cluster(
    shared: &Shared,
    name: &str,
) -> ExecResult<berth_journal::Versioned<berth_messages::model::Cluster>> {
    let found = match shared.view.cluster(name) {
        Some(c) => Some((*c).clone()),
        None => shared.journal.read(&subjects::cluster(name)).await?,
    };
    match found {
        Some(c) if c.value.status == berth_messages::model::ClusterStatus::Active => Ok(c),
        _ => Err(ApiError::cluster_not_found(name).into()),
    }
}

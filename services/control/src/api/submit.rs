//! Mutations over the API: validate, publish the command into `BERTH_CMD` with a reply
//! inbox, and answer with its outcome once this replica's view has reached the
//! outcome's journal sequence (read-your-writes for the caller).
//!
//! The command id is the request's `Nats-Msg-Id` header if the caller sets one (as a
//! direct publisher does), else one derived from RunTask's `clientToken`, else a fresh
//! one. A caller-chosen id makes retries idempotent: a repeated request gets the first
//! one's outcome, and the same id with different parameters is a `ConflictException`.

use super::replies::Delivered;
use super::Reply;
use crate::shared::Shared;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::HeaderMap;
use berth_messages::codec::Encoding;
use berth_messages::command::{Action, CommandRequest};
use berth_messages::{headers, subjects, ApiError, ErrorType};
use std::time::{Duration, Instant};

/// How long a command's publish is retried while the command stream has no leader (a
/// fresh stream, or a leader lost with its server: elections take up to ~6 s), bounded by
/// the API timeout.
const PUBLISH_PATIENCE: Duration = Duration::from_secs(15);
/// Bound on one publish's acknowledgement: one sent while the stream had no leader is
/// never answered. Once a publish was refused or a leader elected, the attempts are the
/// short ones of a recovery (`Patience::failover`): one sent in the instant of an election
/// can go unanswered too.
const PUBLISH_ATTEMPT: Duration = Duration::from_secs(1);
const FIRST_PUBLISH_PAUSE: Duration = Duration::from_millis(50);
const MAX_PUBLISH_PAUSE: Duration = Duration::from_millis(250);

pub async fn submit(
    shared: &Shared,
    action: Action,
    enc: Encoding,
    body: &[u8],
    given_id: Option<&str>,
) -> Result<Reply, ApiError> {
    if let Some(id) = given_id {
        berth_messages::validate::command_id("command id (Nats-Msg-Id)", id)?;
    }
    let request = CommandRequest::decode(action, enc, body)?;
    crate::validation::request(&request)?;
    let scope = request.scope();
    let needs_cluster = !matches!(
        request,
        CommandRequest::CreateCluster(_)
            | CommandRequest::RegisterTaskDefinition(_)
            | CommandRequest::DeregisterTaskDefinition(_)
    );
    if needs_cluster {
        crate::commands::active_cluster(shared, &scope)
            .await
            .map_err(exec_to_api)?;
    }
    let client_token = match &request {
        CommandRequest::RunTask(r) => r.client_token.clone(),
        _ => None,
    };
    let chosen_id = match (given_id, &client_token) {
        (Some(id), _) => Some(id.to_string()),
        (None, Some(token)) => Some(format!("rt-{}", crate::ids::derived(&scope, token))),
        (None, None) => None,
    };
    let command_id = chosen_id
        .clone()
        .unwrap_or_else(crate::ids::fresh_command_id);
    let _fresh = chosen_id
        .is_none()
        .then(|| FreshCommand::mark(shared, &command_id));
    let payload = request
        .encode(Encoding::MsgPack)
        .map_err(|e| ApiError::server(e.to_string()))?;
    let digest = crate::commands::request_digest(&payload);
    let Delivered {
        outcome,
        msgpack_body,
    } = publish_and_wait(shared, &scope, action, &command_id, payload).await?;
    if chosen_id.is_some() && outcome.request_digest.is_some() && outcome.request_digest != digest {
        let what = if given_id.is_some() {
            "The command id (Nats-Msg-Id)"
        } else {
            "The clientToken"
        };
        return Err(ApiError::new(
            ErrorType::ConflictException,
            format!("{what} was already used with different parameters"),
        ));
    }
    let response = outcome.result()?;
    if outcome.journal_sequence > 0 {
        shared
            .view
            .wait_for(outcome.journal_sequence, shared.config.api_timeout())
            .await;
    }
    let body = match (enc, msgpack_body) {
        (Encoding::MsgPack, Some(body)) => body,
        _ => response
            .encode_body(enc)
            .map_err(|e| ApiError::server(e.to_string()))?,
    };
    Ok(Reply {
        body,
        sequence: Some(outcome.journal_sequence),
    })
}

/// Marks a command id this call minted as fresh (see `SharedInner::fresh_commands`) until
/// the call ends.
struct FreshCommand<'a> {
    shared: &'a Shared,
    command_id: String,
}

impl<'a> FreshCommand<'a> {
    fn mark(shared: &'a Shared, command_id: &str) -> Self {
        let command_id = command_id.to_string();
        shared.fresh_commands.insert(command_id.clone());
        Self { shared, command_id }
    }
}

impl Drop for FreshCommand<'_> {
    fn drop(&mut self) {
        self.shared.fresh_commands.remove(&self.command_id);
    }
}

/// Publish failures that a leader change explains, and that a publish of the same command
/// again can get past: nothing stored yet (no stream listening, or the same id still being
/// stored), no answer, a lost connection, or the server's "unavailable" (503) JetStream
/// errors.
fn publish_retryable(error: &async_nats::jetstream::context::PublishError) -> bool {
    use std::error::Error;
    berth_journal::not_stored_yet(error)
        || match error.kind() {
            PublishErrorKind::TimedOut
            | PublishErrorKind::BrokenPipe
            | PublishErrorKind::MaxAckPending => true,
            PublishErrorKind::Other => error
                .source()
                .and_then(|s| s.downcast_ref::<async_nats::jetstream::Error>())
                .is_some_and(|e| e.code() == 503),
            _ => false,
        }
}

fn exec_to_api(e: crate::shared::ExecError) -> ApiError {
    ApiError::from(e)
}

/// Publishes a command and waits for its outcome: pushed to our inbox by the processor,
/// or, for a duplicate whose first copy answered someone else, read from the outcome
/// stream.
async fn publish_and_wait(
    shared: &Shared,
    scope: &str,
    action: Action,
    command_id: &str,
    payload: Vec<u8>,
) -> Result<Delivered, ApiError> {
    let replies = shared
        .replies
        .get_or_try_init(|| super::replies::Replies::start(shared.journal.client()))
        .await
        .map_err(|e| ApiError::server(format!("cannot subscribe to the reply inbox: {e}")))?;
    let mut waiter = replies.register();
    let command_headers = || {
        let mut h = HeaderMap::new();
        h.insert(headers::MSG_ID, command_id);
        h.insert(headers::REPLY_TO, waiter.subject.as_str());
        h.insert(headers::CONTENT_TYPE, headers::MSGPACK);
        h
    };
    let subject = subjects::command(scope, action.as_str());
    let payload = bytes::Bytes::from(payload);
    // During a leader change the stream is missing ("no stream found": no server listens
    // on the subject), has no responders, or does not answer. Each retry carries the same
    // Nats-Msg-Id, so the stream stores the command once however many copies land.
    let give_up = Instant::now() + PUBLISH_PATIENCE.min(shared.config.api_timeout());
    let mut pause = FIRST_PUBLISH_PAUSE;
    let mut attempt = 1u32;
    let mut signals = shared.journal.leader_signals();
    let mut recovery_attempts = None::<u32>;
    let ack = loop {
        let bound = recovery_attempts.map_or(PUBLISH_ATTEMPT, |attempt| {
            berth_journal::recovery::Patience::failover().timeout_of(attempt)
        });
        let publish = tokio::time::timeout(bound, async {
            shared
                .journal
                .jetstream()
                .publish_with_headers(subject.clone(), command_headers(), payload.clone())
                .await?
                .await
        });
        // A publish that reached a follower while the stream had no leader is never
        // answered: publish again as soon as one is elected.
        let published = tokio::select! {
            published = publish => Some(published),
            _ = signals.next() => None,
        };
        let error = match published {
            None if Instant::now() < give_up => {
                attempt += 1;
                pause = FIRST_PUBLISH_PAUSE;
                recovery_attempts = Some(1);
                continue;
            }
            None => "the cluster changed while waiting for the acknowledgement".to_string(),
            Some(Ok(Ok(ack))) => break ack,
            Some(Ok(Err(e))) if !publish_retryable(&e) => {
                return Err(ApiError::server(format!(
                    "command not accepted by the stream: {e}"
                )))
            }
            Some(Ok(Err(e))) => e.to_string(),
            Some(Err(_)) => format!("no acknowledgement within {bound:?}"),
        };
        recovery_attempts = Some(recovery_attempts.map_or(1, |attempt| attempt + 1));
        if Instant::now() + pause >= give_up {
            return Err(ApiError::server(format!(
                "command not accepted by the stream after {attempt} attempts: {error}"
            )));
        }
        tracing::debug!(command_id, attempt, %error, "command not accepted yet; publishing again");
        attempt += 1;
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_PUBLISH_PAUSE);
    };
    let deadline = Instant::now() + shared.config.api_timeout();
    let poll = if ack.duplicate {
        Duration::from_millis(50)
    } else {
        Duration::from_secs(1)
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ApiError::server(format!(
                "no outcome for command {command_id} yet; look it up later with GetCommandOutcome"
            )));
        }
        match tokio::time::timeout(poll.min(left), &mut waiter.outcome).await {
            Ok(Ok(delivered)) if delivered.outcome.command_id == command_id => {
                return Ok(delivered)
            }
            Ok(Ok(_)) | Ok(Err(_)) => {
                // A stray or lost reply: fall back to the outcome stream.
                waiter = replies.register();
                if let Some(delivered) = recorded_outcome(shared, command_id).await {
                    return Ok(delivered);
                }
            }
            Err(_) => {
                if let Some(delivered) = recorded_outcome(shared, command_id).await {
                    return Ok(delivered);
                }
            }
        }
    }
}

/// The command's outcome from the outcome stream, if it is there and can be read. A read
/// that fails (the stream may be electing a leader) is left to the next poll: the wait is
/// bounded by the API timeout.
async fn recorded_outcome(shared: &Shared, command_id: &str) -> Option<Delivered> {
    match shared.journal.read_outcome(command_id).await {
        Ok(outcome) => outcome.map(|outcome| Delivered {
            outcome,
            msgpack_body: None,
        }),
        Err(error) => {
            tracing::debug!(command_id, %error, "outcome not readable yet");
            None
        }
    }
}

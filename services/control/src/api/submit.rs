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

/// Publishes of a command refused for want of a stream, and the pause between them.
const STREAM_ATTEMPTS: u32 = 20;
const STREAM_RETRY: Duration = Duration::from_millis(100);

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
    let mut attempt = 1;
    let ack = loop {
        let published = match shared
            .journal
            .jetstream()
            .publish_with_headers(subject.clone(), command_headers(), payload.clone())
            .await
        {
            Ok(ack) => ack.await,
            Err(e) => return Err(ApiError::server(format!("cannot publish command: {e}"))),
        };
        match published {
            Ok(ack) => break ack,
            // Right after the streams are created on a cluster, a server may not know yet
            // that the command stream listens on the subject (the same id is deduplicated).
            Err(e) if e.kind() == PublishErrorKind::StreamNotFound && attempt < STREAM_ATTEMPTS => {
                attempt += 1;
                tokio::time::sleep(STREAM_RETRY).await;
            }
            Err(e) => {
                return Err(ApiError::server(format!(
                    "command not accepted by the stream: {e}"
                )))
            }
        }
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
                if let Some(outcome) = shared
                    .journal
                    .read_outcome(command_id)
                    .await
                    .map_err(|e| ApiError::server(e.to_string()))?
                {
                    return Ok(Delivered {
                        outcome,
                        msgpack_body: None,
                    });
                }
            }
            Err(_) => {
                if let Some(outcome) = shared
                    .journal
                    .read_outcome(command_id)
                    .await
                    .map_err(|e| ApiError::server(e.to_string()))?
                {
                    return Ok(Delivered {
                        outcome,
                        msgpack_body: None,
                    });
                }
            }
        }
    }
}

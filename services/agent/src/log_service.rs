//! The log service: answers `LogsRequest`s on `berth.host.<cluster>.<instance-id>.logs`
//! with chunks of a container's output read through the runtime, so `berth tasks logs`
//! works from any machine on the bus. Bodies are JSON when the request says
//! `Content-Type: application/json`, named MessagePack otherwise; errors carry the NATS
//! micro-service error headers and an ECS error body, like the API.

use crate::runtime::{ContainerRef, LogRange};
use crate::Shared;
use async_nats::HeaderMap;
use berth_messages::agent::{LogsRequest, LogsResponse, DEFAULT_LOG_CHUNK, MAX_LOG_CHUNK};
use berth_messages::codec::{self, Encoding};
use berth_messages::{arn, headers, subjects, ApiError, ErrorType};
use futures::StreamExt;
use std::sync::Arc;

/// Serves until the subscription ends.
pub async fn serve(shared: Arc<Shared>) -> Result<(), async_nats::SubscribeError> {
    let subject = subjects::host_logs(&shared.cluster, &shared.instance_id);
    let mut requests = shared.client.subscribe(subject).await?;
    while let Some(msg) = requests.next().await {
        let shared = shared.clone();
        tokio::spawn(async move { answer(&shared, msg).await });
    }
    Ok(())
}

async fn answer(shared: &Arc<Shared>, msg: async_nats::Message) {
    let Some(reply) = msg.reply.clone() else {
        return;
    };
    let encoding = Encoding::from_content_type(
        msg.headers
            .as_ref()
            .and_then(|h| h.get(headers::CONTENT_TYPE))
            .map(|v| v.as_str()),
    );
    let max_payload = shared.client.server_info().max_payload.max(4096);
    let request = codec::decode::<LogsRequest>(encoding, &msg.payload)
        .map_err(berth_messages::error::decode_error);
    let (h, body) = match request {
        Err(e) => error_reply(encoding, &e),
        Ok(request) => {
            let mut limit = request
                .max_bytes
                .unwrap_or(DEFAULT_LOG_CHUNK)
                .clamp(1, MAX_LOG_CHUNK);
            loop {
                let read = read_chunk(shared, &request, u64::from(limit)).await;
                let (h, body) = match read {
                    Ok(chunk) => match codec::encode(encoding, &chunk) {
                        Ok(body) => (content_type(encoding), body),
                        Err(e) => error_reply(encoding, &ApiError::server(e.to_string())),
                    },
                    Err(e) => error_reply(encoding, &e),
                };
                // Escaping can make a chunk larger than the server takes: read less.
                if body.len() + 1024 > max_payload && limit > 1024 {
                    limit /= 2;
                    continue;
                }
                break (h, body);
            }
        }
    };
    if let Err(e) = shared
        .client
        .publish_with_headers(reply, h, body.into())
        .await
    {
        tracing::debug!(error = %e, "cannot answer a log request");
    }
}

fn content_type(encoding: Encoding) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(headers::CONTENT_TYPE, encoding.content_type());
    h
}

fn error_reply(encoding: Encoding, error: &ApiError) -> (HeaderMap, Vec<u8>) {
    let mut h = content_type(encoding);
    let description: String = format!("{}: {}", error.error_type, error.message)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    h.insert(headers::SERVICE_ERROR, description.as_str());
    h.insert(
        headers::SERVICE_ERROR_CODE,
        error.error_type.status_code().to_string().as_str(),
    );
    (h, codec::encode(encoding, error).unwrap_or_default())
}

fn not_found(message: String) -> ApiError {
    ApiError::new(ErrorType::ResourceNotFoundException, message)
}

/// Reads the requested chunk through the runtime.
pub(crate) async fn read_chunk(
    shared: &Shared,
    request: &LogsRequest,
    max: u64,
) -> Result<LogsResponse, ApiError> {
    let task_id = arn::task_id(&request.task).1;
    berth_messages::validate::id("task", task_id)?;
    let info = shared.runtime.task(task_id).ok_or_else(|| {
        not_found(format!(
            "task {} has no containers on this host",
            request.task
        ))
    })?;
    let name = match &request.container_name {
        Some(n) => n.clone(),
        None => info
            .containers
            .first()
            .cloned()
            .ok_or_else(|| not_found(format!("task {} has no containers", request.task)))?,
    };
    if !info.containers.contains(&name) {
        return Err(not_found(format!(
            "task {} has no container named {name}",
            request.task
        )));
    }
    let range = LogRange {
        offset: request.offset,
        tail: request.tail_bytes,
        max,
    };
    let chunk = shared
        .runtime
        .logs(&ContainerRef::new(task_id, &name), range)
        .await
        .map_err(|e| ApiError::server(e.reason()))?;
    // A container the runtime has nothing of never started: final once its task is done.
    let finished = chunk
        .ended
        .unwrap_or_else(|| !shared.tasks.contains_key(task_id));
    Ok(LogsResponse {
        task: info.task_arn,
        container_name: name,
        offset: chunk.offset,
        next_offset: chunk.next_offset,
        data: String::from_utf8_lossy(&chunk.data).into_owned(),
        complete: finished && chunk.next_offset >= chunk.end,
    })
}

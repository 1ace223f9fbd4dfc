//! The log service: answers `LogsRequest`s on `berth.host.<cluster>.<instance-id>.logs`
//! with chunks of a container's output read from its log segments, so `berth tasks logs`
//! works from any machine on the bus. Bodies are JSON when the request says
//! `Content-Type: application/json`, named MessagePack otherwise; errors carry the NATS
//! micro-service error headers and an ECS error body, like the API.

use crate::{logs, Shared};
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
                let shared_for_read = shared.clone();
                let req = request.clone();
                let read = tokio::task::spawn_blocking(move || {
                    read_chunk(&shared_for_read, &req, u64::from(limit))
                })
                .await
                .unwrap_or_else(|e| Err(ApiError::server(format!("log read failed: {e}"))));
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

/// Reads the requested chunk from disk.
pub(crate) fn read_chunk(
    shared: &Shared,
    request: &LogsRequest,
    max: u64,
) -> Result<LogsResponse, ApiError> {
    let task_id = arn::task_id(&request.task).1;
    berth_messages::validate::id("task", task_id)?;
    let info = shared.runtime.task_info(task_id).ok_or_else(|| {
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
    let paths = shared.runtime.paths(task_id, &name);
    // Checked before reading: once the exit file exists, the output is final.
    let finished = if paths.dir.is_dir() {
        paths.exit.exists()
    } else {
        !shared.tasks.contains_key(task_id)
    };
    let chunk = logs::read(&paths.logs, request.offset, request.tail_bytes, max)
        .map_err(|e| ApiError::server(format!("cannot read the output of {name}: {e}")))?;
    Ok(LogsResponse {
        task: info.task_arn,
        container_name: name,
        offset: chunk.offset,
        next_offset: chunk.next_offset,
        data: String::from_utf8_lossy(&chunk.data).into_owned(),
        complete: finished && chunk.next_offset >= chunk.end,
    })
}

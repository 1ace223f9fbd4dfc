//! The ECS API as the NATS micro service `berth`: one endpoint per action on
//! `subjects::api(action)` (queue group shared by all replicas), bodies in JSON or
//! MessagePack by `Content-Type`, errors as micro-service error headers plus an ECS
//! error body. Reads are answered from this replica's view; mutations become commands in
//! `BERTH_CMD` and the reply is their outcome.

mod reads;
pub(crate) mod replies;
pub(crate) mod submit;

pub use replies::Replies;

use crate::shared::Shared;
use async_nats::service::{self, ServiceExt};
use async_nats::HeaderMap;
use berth_messages::codec::{self, Encoding};
use berth_messages::command::Action;
use berth_messages::{headers, subjects, ApiError};
use futures::StreamExt;
use tracing::Instrument;

/// Queue group of the catch-all that answers unknown actions.
const UNKNOWN_QUEUE: &str = "berth-unknown-action";

/// Starts the service and serves until the connection closes.
pub async fn serve(shared: Shared) -> Result<(), async_nats::Error> {
    let client = shared.journal.client().clone();
    let metrics_source = shared.clone();
    let service = client
        .service_builder()
        .description("Berth: Amazon ECS semantics over NATS JetStream")
        .stats_handler(move |_, _| metrics_source.metrics.snapshot())
        .start("berth", env!("CARGO_PKG_VERSION"))
        .await?;
    let mut tasks = Vec::new();
    for action in Action::ALL {
        let endpoint = service
            .endpoint_builder()
            .name(action.as_str())
            .add(subjects::api(action.as_str()))
            .await?;
        let shared = shared.clone();
        let action = *action;
        tasks.push(tokio::spawn(async move {
            let mut endpoint = endpoint;
            while let Some(request) = endpoint.next().await {
                let shared = shared.clone();
                tokio::spawn(async move { handle(shared, action, request).await });
            }
        }));
    }
    let mut unknown = client
        .queue_subscribe(format!("{}.*", subjects::API_PREFIX), UNKNOWN_QUEUE.into())
        .await?;
    tasks.push(tokio::spawn(async move {
        while let Some(msg) = unknown.next().await {
            let Some(reply) = msg.reply.clone() else {
                continue;
            };
            let name = msg.subject.rsplit('.').next().unwrap_or_default();
            if Action::parse(name).is_some() {
                continue;
            }
            let enc = encoding_of(msg.headers.as_ref());
            let error = ApiError::invalid(format!("unknown action {name}"));
            let (hdrs, body) = error_reply(enc, &error);
            let _ = client.publish_with_headers(reply, hdrs, body.into()).await;
        }
    }));
    futures::future::join_all(tasks).await;
    drop(service);
    Ok(())
}

fn encoding_of(h: Option<&HeaderMap>) -> Encoding {
    Encoding::from_content_type(
        h.and_then(|h| h.get(headers::CONTENT_TYPE))
            .map(|v| v.as_str()),
    )
}

/// Headers and body of an error reply.
pub fn error_reply(enc: Encoding, error: &ApiError) -> (HeaderMap, Vec<u8>) {
    let mut h = HeaderMap::new();
    // A header value cannot hold line breaks, and messages may quote the input.
    let description: String = format!("{}: {}", error.error_type, error.message)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    h.insert(headers::SERVICE_ERROR, description.as_str());
    h.insert(
        headers::SERVICE_ERROR_CODE,
        error.error_type.status_code().to_string().as_str(),
    );
    h.insert(headers::CONTENT_TYPE, enc.content_type());
    let body = codec::encode(enc, error).unwrap_or_default();
    (h, body)
}

/// A successful reply: body and the journal sequence it reflects.
pub struct Reply {
    pub body: Vec<u8>,
    pub sequence: Option<u64>,
}

async fn handle(shared: Shared, action: Action, request: service::Request) {
    let enc = encoding_of(request.message.headers.as_ref());
    let span = tracing::info_span!("api", action = %action, bytes = request.message.payload.len());
    let result = async {
        let payload = &request.message.payload;
        if payload.len() > berth_messages::validate::MAX_REQUEST_BYTES {
            return Err(ApiError::invalid(format!(
                "request body is {} bytes, the limit is {}",
                payload.len(),
                berth_messages::validate::MAX_REQUEST_BYTES
            )));
        }
        if action.is_mutation() {
            let given_id = request
                .message
                .headers
                .as_ref()
                .and_then(|h| h.get(headers::MSG_ID))
                .map(|v| v.as_str().to_string());
            submit::submit(&shared, action, enc, payload, given_id.as_deref()).await
        } else {
            let min_sequence = request
                .message
                .headers
                .as_ref()
                .and_then(|h| h.get(headers::MIN_SEQUENCE))
                .and_then(|v| v.as_str().parse::<u64>().ok());
            if let Some(seq) = min_sequence {
                shared.view.wait_for(seq, shared.config.api_timeout()).await;
            }
            reads::read(&shared, action, enc, payload).await
        }
    }
    .instrument(span.clone())
    .await;
    let sent = match result {
        Ok(reply) => {
            let mut h = HeaderMap::new();
            h.insert(headers::CONTENT_TYPE, enc.content_type());
            if let Some(seq) = reply.sequence {
                h.insert(headers::SEQUENCE, seq.to_string().as_str());
            }
            request.respond_with_headers(Ok(reply.body.into()), h).await
        }
        Err(error) => {
            span.in_scope(|| tracing::debug!(error_type = %error.error_type, message = %error.message, "request refused"));
            let (h, body) = error_reply(enc, &error);
            request.respond_with_headers(Ok(body.into()), h).await
        }
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, "cannot send API reply");
    }
}

/// Encodes a response body or maps the failure to a server error.
pub fn encode<T: serde::Serialize>(enc: Encoding, value: &T) -> Result<Vec<u8>, ApiError> {
    codec::encode(enc, value).map_err(|e| ApiError::server(e.to_string()))
}

/// Decodes a request body with the ECS error mapping.
pub fn decode<T: serde::de::DeserializeOwned>(enc: Encoding, body: &[u8]) -> Result<T, ApiError> {
    berth_messages::error::decode_request(enc, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_headers_carry_no_line_breaks() {
        let (h, body) = error_reply(
            Encoding::Json,
            &ApiError::invalid("cluster 'a\r\nb' is invalid"),
        );
        let description = h.get(headers::SERVICE_ERROR).expect("header");
        assert_eq!(
            description.as_str(),
            "InvalidParameterException: cluster 'a  b' is invalid"
        );
        let decoded: ApiError = codec::decode(Encoding::Json, &body).expect("body");
        assert_eq!(decoded.message, "cluster 'a\r\nb' is invalid");
    }
}

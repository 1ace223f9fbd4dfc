//! The sim's client of Berth's API: NATS request/reply on `berth.api.<Action>` with named
//! MessagePack bodies, error replies recognised by `Nats-Service-Error-Code`, and retries
//! with jittered exponential backoff for everything that is not a definitive refusal.
//! Within one call, an unanswered attempt is sent again at once under the API clients'
//! retry policy (`berth_messages::retry`; a mutation under the same minted `Nats-Msg-Id`).

use berth_messages::codec::{self, Encoding};
use berth_messages::retry;
use berth_messages::{headers, subjects, ApiError};
use rand::Rng;
use serde::{de::DeserializeOwned, Serialize};
use std::time::Duration;

/// How long one call waits for its reply, all attempts together; the control plane
/// answers a mutation within its API timeout (30 s by default).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(45);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Why a call did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// A definitive answer (bad request, unknown cluster or task): retrying cannot help.
    #[error(transparent)]
    Refused(ApiError),
    /// No answer, or a server-side failure: worth retrying.
    #[error("{0}")]
    Unavailable(String),
}

/// Calls `action` once.
pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
    client: &async_nats::Client,
    action: &str,
    request: &Req,
) -> Result<Resp, CallError> {
    let body = codec::encode(Encoding::MsgPack, request)
        .map_err(|e| CallError::Refused(ApiError::invalid(e.to_string())))?;
    let reply = send(client, action, body.into(), REQUEST_TIMEOUT)
        .await
        .map_err(|e| CallError::Unavailable(format!("{action}: {e}")))?;
    let code = reply
        .headers
        .as_ref()
        .and_then(|h| h.get(headers::SERVICE_ERROR_CODE))
        .map(|v| v.as_str().trim().parse::<u16>().unwrap_or(500));
    if let Some(code) = code {
        let error = codec::decode::<ApiError>(Encoding::MsgPack, &reply.payload)
            .unwrap_or_else(|_| ApiError::server(String::from_utf8_lossy(&reply.payload)));
        return Err(if code >= 500 {
            CallError::Unavailable(format!("{action}: {error}"))
        } else {
            CallError::Refused(error)
        });
    }
    codec::decode(Encoding::MsgPack, &reply.payload)
        .map_err(|e| CallError::Unavailable(format!("{action}: undecodable reply: {e}")))
}

/// Sends a request with a MessagePack `body` to `action` under the API clients' retry
/// policy, all attempts within `total`; returns the reply (which may be an error reply).
pub async fn send(
    client: &async_nats::Client,
    action: &str,
    body: bytes::Bytes,
    total: Duration,
) -> Result<async_nats::Message, async_nats::RequestError> {
    retry::call(
        action,
        None,
        total,
        |id, timeout| {
            let mut request = async_nats::Request::new()
                .payload(body.clone())
                .timeout(Some(timeout));
            if let Some(id) = id {
                let mut h = async_nats::HeaderMap::new();
                h.insert(headers::MSG_ID, id);
                request = request.headers(h);
            }
            client.send_request(subjects::api(action), request)
        },
        |e| e.kind() == async_nats::client::RequestErrorKind::TimedOut,
    )
    .await
}

/// Calls `action` until it is answered: transient failures are retried with backoff,
/// a refusal is returned.
pub async fn call_until_answered<Req: Serialize, Resp: DeserializeOwned>(
    client: &async_nats::Client,
    action: &str,
    request: &Req,
) -> Result<Resp, ApiError> {
    let mut backoff = FIRST_BACKOFF;
    let mut attempts = 0u32;
    loop {
        match call(client, action, request).await {
            Ok(resp) => return Ok(resp),
            Err(CallError::Refused(e)) => return Err(e),
            Err(CallError::Unavailable(reason)) => {
                attempts += 1;
                if attempts == 1 || attempts.is_power_of_two() {
                    tracing::warn!(%reason, attempts, "API call failed; retrying");
                }
                tokio::time::sleep(jittered(backoff)).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Between half and all of `d`, so that many callers retrying at once spread out.
fn jittered(d: Duration) -> Duration {
    let fraction = rand::thread_rng().gen_range(0.5..=1.0);
    d.mul_f64(fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_half_and_whole() {
        for _ in 0..100 {
            let d = jittered(Duration::from_millis(400));
            assert!(d >= Duration::from_millis(200) && d <= Duration::from_millis(400));
        }
    }
}

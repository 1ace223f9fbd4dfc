//! The agent's client of the Berth API (`berth.api.<Action>`, named MessagePack), and the
//! delivery of state-change reports: in order per task, retried with backoff until the
//! control plane acknowledges them. Each call is sent as the sim's are
//! (`berth_sim::api::send`, the API clients' retry policy): an unanswered attempt is sent
//! again, a mutation under the same minted `Nats-Msg-Id`, so a report that landed on a
//! hung replica reaches another.

use berth_messages::api::{
    AcknowledgmentResponse, SubmitContainerStateChangeRequest, SubmitTaskStateChangeRequest,
};
use berth_messages::codec::{self, Encoding};
use berth_messages::{headers, ApiError, ErrorType};
use serde::{de::DeserializeOwned, Serialize};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// A failed API call.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The control plane answered with an error.
    #[error(transparent)]
    Api(ApiError),
    /// No answer (no replica, timeout, connection down) or an undecodable one.
    #[error("{action}: {reason}")]
    Transport { action: String, reason: String },
}

impl CallError {
    /// Worth trying again later: the call may succeed once the control plane is back.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Transport { .. } => true,
            Self::Api(e) => e.error_type == ErrorType::ServerException,
        }
    }
}

/// How long one call may take, all its attempts together.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct ApiClient {
    client: async_nats::Client,
}

impl ApiClient {
    pub fn new(client: async_nats::Client) -> Self {
        Self { client }
    }

    /// Calls an action; the request and reply are named MessagePack.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        action: &str,
        request: &Req,
    ) -> Result<Resp, CallError> {
        let transport = |reason: String| CallError::Transport {
            action: action.to_string(),
            reason,
        };
        let body = bytes::Bytes::from(
            codec::encode(Encoding::MsgPack, request).map_err(|e| transport(e.to_string()))?,
        );
        let reply = berth_sim::api::send(&self.client, action, body, CALL_TIMEOUT)
            .await
            .map_err(|e| {
                transport(match e.kind() {
                    async_nats::RequestErrorKind::NoResponders => {
                        "no control-plane replica answers".to_string()
                    }
                    async_nats::RequestErrorKind::TimedOut => {
                        "the control plane did not answer in time".to_string()
                    }
                    _ => e.to_string(),
                })
            })?;
        let is_error = reply
            .headers
            .as_ref()
            .is_some_and(|h| h.get(headers::SERVICE_ERROR_CODE).is_some());
        if is_error {
            let error: ApiError = codec::decode(Encoding::MsgPack, &reply.payload)
                .map_err(|e| transport(format!("undecodable error reply: {e}")))?;
            return Err(CallError::Api(error));
        }
        codec::decode(Encoding::MsgPack, &reply.payload)
            .map_err(|e| transport(format!("undecodable reply: {e}")))
    }
}

/// A state change to report.
#[derive(Debug, Clone)]
pub enum Report {
    Task(SubmitTaskStateChangeRequest),
    Container(SubmitContainerStateChangeRequest),
}

enum Queued {
    Report(Report),
    /// Answered once everything queued before it has been delivered (or dropped).
    Flush(oneshot::Sender<()>),
}

/// First and largest wait between two attempts of a report.
const FIRST_RETRY: Duration = Duration::from_millis(250);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// The report queue of one task: reports leave one at a time, in order.
#[derive(Clone)]
pub struct Reporter {
    queue: mpsc::UnboundedSender<Queued>,
}

impl Reporter {
    /// Starts the delivery task (on the current tokio runtime).
    pub fn start(api: ApiClient, task: String) -> Reporter {
        let (queue, mut rx) = mpsc::unbounded_channel::<Queued>();
        tokio::spawn(async move {
            while let Some(item) = rx.recv().await {
                match item {
                    Queued::Report(report) => deliver(&api, &task, report).await,
                    Queued::Flush(done) => {
                        let _ = done.send(());
                    }
                }
            }
        });
        Reporter { queue }
    }

    pub fn send(&self, report: Report) {
        let _ = self.queue.send(Queued::Report(report));
    }

    /// Resolves once every report sent so far has been delivered or given up.
    pub fn flush(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let queued = self.queue.send(Queued::Flush(tx)).is_ok();
        async move {
            if queued {
                let _ = rx.await;
            }
        }
    }
}

async fn deliver(api: &ApiClient, task: &str, report: Report) {
    let mut wait = FIRST_RETRY;
    loop {
        let result = match &report {
            Report::Task(r) => {
                api.call::<_, AcknowledgmentResponse>("SubmitTaskStateChange", r)
                    .await
            }
            Report::Container(r) => {
                api.call::<_, AcknowledgmentResponse>("SubmitContainerStateChange", r)
                    .await
            }
        };
        match result {
            Ok(_) => {
                tracing::debug!(task, ?report, "report acknowledged");
                return;
            }
            Err(e) if e.is_retryable() => {
                tracing::info!(task, error = %e, retry_in = ?wait, "report not acknowledged yet");
                tokio::time::sleep(jitter(wait)).await;
                wait = (wait * 3 / 2).min(MAX_RETRY);
            }
            Err(e) => {
                tracing::warn!(task, error = %e, ?report, "report refused; dropping it");
                return;
            }
        }
    }
}

/// `d` plus or minus 20%.
fn jitter(d: Duration) -> Duration {
    use rand::Rng;
    let factor = rand::thread_rng().gen_range(0.8..1.2);
    d.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transport_and_server_errors_are_retried() {
        let t = CallError::Transport {
            action: "A".into(),
            reason: "r".into(),
        };
        assert!(t.is_retryable());
        assert!(CallError::Api(ApiError::server("x")).is_retryable());
        assert!(!CallError::Api(ApiError::invalid("x")).is_retryable());
        assert!(!CallError::Api(ApiError::cluster_not_found("c")).is_retryable());
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        for _ in 0..100 {
            let j = jitter(Duration::from_secs(10));
            assert!(j >= Duration::from_secs(8) && j <= Duration::from_secs(12));
        }
    }
}

//! The delivery of the agent's state-change reports: in order per task, each sent with
//! `berth-client` until the control plane answers it ([`Client::call_until_answered`]),
//! so a report that landed on a hung or absent replica reaches another; a refusal drops
//! the report.

use berth_client::{Backoff, Client};
use berth_messages::api::{
    AcknowledgmentResponse, SubmitContainerStateChangeRequest, SubmitTaskStateChangeRequest,
};
use berth_messages::command::Action;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How long one call may take, all its attempts together.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The agent's API client: MessagePack, [`CALL_TIMEOUT`].
pub fn api_client(nats: async_nats::Client) -> Client {
    Client::new(nats).with_timeout(CALL_TIMEOUT)
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

/// Waits between two calls of a report.
const REPORT_BACKOFF: Backoff = Backoff {
    first: Duration::from_millis(250),
    max: Duration::from_secs(30),
    growth: 1.5,
};

/// The report queue of one task: reports leave one at a time, in order.
#[derive(Clone)]
pub struct Reporter {
    queue: mpsc::UnboundedSender<Queued>,
}

impl Reporter {
    /// Starts the delivery task (on the current tokio runtime).
    pub fn start(api: Client, task: String) -> Reporter {
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

async fn deliver(api: &Client, task: &str, report: Report) {
    let result = match &report {
        Report::Task(r) => acknowledged(api, Action::SubmitTaskStateChange, r).await,
        Report::Container(r) => acknowledged(api, Action::SubmitContainerStateChange, r).await,
    };
    match result {
        Ok(()) => tracing::debug!(task, ?report, "report acknowledged"),
        Err(e) => tracing::warn!(
            task,
            error = &e as &dyn std::error::Error,
            ?report,
            "report refused; dropping it"
        ),
    }
}

/// Sends a report until the control plane acknowledges or refuses it.
async fn acknowledged<R: serde::Serialize>(
    api: &Client,
    action: Action,
    report: &R,
) -> Result<(), berth_client::ClientError> {
    api.call_until_answered::<_, AcknowledgmentResponse>(action, report, None, REPORT_BACKOFF)
        .await
        .map(|_| ())
}

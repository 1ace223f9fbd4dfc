//! The scheduler's client of Berth's public API: JSON request/reply on
//! `berth.api.<Action>`, ECS error replies recognised by `Nats-Service-Error-Code`. A
//! refusal (4xx) is definitive; anything else (no reply, a 5xx, an undecodable reply)
//! leaves the outcome of a mutation unknown. Calls follow the API clients' retry policy
//! (`berth_messages::retry`): an unanswered attempt is sent again within the call's
//! timeout, a mutation under the same command id (the caller's, else a minted one).

use async_nats::HeaderMap;
use berth_messages::api::{
    DescribeTasksRequest, ListTasksRequest, ListTasksResponse, StartTaskRequest,
    TaskDefinitionRefRequest, TaskDefinitionResponse, TasksResponse,
};
use berth_messages::model::{Task, TaskDefinition};
use berth_messages::retry;
use berth_messages::{api::DesiredStatusFilter, headers, subjects, ApiError, ErrorType};
use serde::{de::DeserializeOwned, Serialize};
use std::time::Duration;

/// Why a call did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// A definitive answer: retrying the same request cannot help.
    #[error(transparent)]
    Refused(ApiError),
    /// No answer or a server-side failure: a mutation may or may not have happened.
    #[error("{0}")]
    Unknown(String),
}

/// A connection to Berth's API.
#[derive(Clone)]
pub struct Api {
    client: async_nats::Client,
    cluster: String,
    timeout: Duration,
}

impl Api {
    pub fn new(client: async_nats::Client, cluster: &str, timeout: Duration) -> Self {
        Self {
            client,
            cluster: cluster.to_string(),
            timeout,
        }
    }

    /// Calls `action` with a JSON body.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        action: &str,
        request: &Req,
    ) -> Result<Resp, CallError> {
        self.call_as(None, action, request).await
    }

    /// Calls `action`; with `command_id` (`Nats-Msg-Id`) a mutation sent again with the
    /// same id takes effect once and is answered with the first one's outcome.
    pub async fn call_as<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        command_id: Option<&str>,
        action: &str,
        request: &Req,
    ) -> Result<Resp, CallError> {
        let body = serde_json::to_vec(request)
            .map_err(|e| CallError::Refused(ApiError::invalid(e.to_string())))?;
        let body = bytes::Bytes::from(body);
        let reply = retry::call(
            action,
            command_id,
            self.timeout,
            |id, timeout| {
                let mut h = HeaderMap::new();
                h.insert(headers::CONTENT_TYPE, headers::JSON);
                if let Some(id) = id {
                    h.insert(headers::MSG_ID, id);
                }
                let request = async_nats::Request::new()
                    .headers(h)
                    .payload(body.clone())
                    .timeout(Some(timeout));
                self.client.send_request(subjects::api(action), request)
            },
            |e| e.kind() == async_nats::client::RequestErrorKind::TimedOut,
        )
        .await
        .map_err(|e| CallError::Unknown(format!("{action}: {e}")))?;
        let code = reply
            .headers
            .as_ref()
            .and_then(|h| h.get(headers::SERVICE_ERROR_CODE))
            .map(|v| v.as_str().trim().parse::<u16>().unwrap_or(500));
        if let Some(code) = code {
            let error = serde_json::from_slice::<ApiError>(&reply.payload).unwrap_or_else(|_| {
                ApiError::server(String::from_utf8_lossy(&reply.payload).into_owned())
            });
            return Err(
                if code >= 500 || error.error_type == ErrorType::ServerException {
                    CallError::Unknown(format!("{action}: {error}"))
                } else {
                    CallError::Refused(error)
                },
            );
        }
        serde_json::from_slice(&reply.payload)
            .map_err(|e| CallError::Unknown(format!("{action}: undecodable reply: {e}")))
    }

    /// The task definition a reference names now (`family` means its latest ACTIVE
    /// revision).
    pub async fn describe_task_definition(
        &self,
        reference: &str,
    ) -> Result<TaskDefinition, CallError> {
        let reply: TaskDefinitionResponse = self
            .call(
                "DescribeTaskDefinition",
                &TaskDefinitionRefRequest {
                    task_definition: reference.to_string(),
                    include: Vec::new(),
                },
            )
            .await?;
        Ok(reply.task_definition)
    }

    /// StartTask: one task on each listed instance (an instance may be listed twice).
    /// Sent again with the same `command_id` after an unknown result, it starts nothing
    /// twice.
    pub async fn start_task(
        &self,
        command_id: &str,
        request: StartTaskRequest,
    ) -> Result<TasksResponse, CallError> {
        let request = StartTaskRequest {
            cluster: Some(self.cluster.clone()),
            ..request
        };
        self.call_as(Some(command_id), "StartTask", &request).await
    }

    /// Every task (running or stopped) with this `startedBy` that carries `tag = value`.
    pub async fn tasks_tagged(
        &self,
        started_by: &str,
        tag: &str,
        value: &str,
    ) -> Result<Vec<Task>, CallError> {
        let mut found = Vec::new();
        for desired in [DesiredStatusFilter::Running, DesiredStatusFilter::Stopped] {
            let mut next_token = None;
            loop {
                let page: ListTasksResponse = self
                    .call(
                        "ListTasks",
                        &ListTasksRequest {
                            cluster: Some(self.cluster.clone()),
                            started_by: Some(started_by.to_string()),
                            desired_status: Some(desired),
                            next_token: next_token.take(),
                            max_results: Some(100),
                            ..Default::default()
                        },
                    )
                    .await?;
                if !page.task_arns.is_empty() {
                    let described: TasksResponse = self
                        .call(
                            "DescribeTasks",
                            &DescribeTasksRequest {
                                cluster: Some(self.cluster.clone()),
                                tasks: page.task_arns,
                                include: vec!["TAGS".into()],
                            },
                        )
                        .await?;
                    found.extend(described.tasks.into_iter().filter(|t| {
                        t.tags.iter().any(|g| {
                            g.key.as_deref() == Some(tag) && g.value.as_deref() == Some(value)
                        })
                    }));
                }
                match page.next_token {
                    Some(token) => next_token = Some(token),
                    None => break,
                }
            }
        }
        found.sort_by(|a, b| a.task_arn.cmp(&b.task_arn));
        found.dedup_by(|a, b| a.task_arn == b.task_arn);
        Ok(found)
    }
}

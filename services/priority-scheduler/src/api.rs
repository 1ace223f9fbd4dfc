//! The scheduler's operations on Berth's public API, made with `berth-client` in JSON.
//! A refusal is definitive; a retryable failure ([`ClientError::is_retryable`]) leaves
//! the outcome of a mutation unknown. StartTask carries the scheduler's command id, so
//! sending it again after an unknown outcome starts nothing twice.

use berth_client::{CallOptions, Client, ClientError};
use berth_messages::api::DesiredStatusFilter;
use berth_messages::api::{
    DescribeTasksRequest, ListTasksRequest, ListTasksResponse, StartTaskRequest,
    TaskDefinitionRefRequest, TaskDefinitionResponse, TasksResponse,
};
use berth_messages::codec::Encoding;
use berth_messages::command::Action;
use berth_messages::model::{Task, TaskDefinition};
use std::time::Duration;

/// A connection to Berth's API for one cluster.
#[derive(Clone)]
pub struct Api {
    client: Client,
    cluster: String,
}

impl Api {
    pub fn new(client: async_nats::Client, cluster: &str, timeout: Duration) -> Self {
        Self {
            client: Client::new(client)
                .with_encoding(Encoding::Json)
                .with_timeout(timeout),
            cluster: cluster.to_string(),
        }
    }

    /// The task definition a reference names now (`family` means its latest ACTIVE
    /// revision).
    pub async fn describe_task_definition(
        &self,
        reference: &str,
    ) -> Result<TaskDefinition, ClientError> {
        let reply: TaskDefinitionResponse = self
            .client
            .call(
                Action::DescribeTaskDefinition,
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
    ) -> Result<TasksResponse, ClientError> {
        let request = StartTaskRequest {
            cluster: Some(self.cluster.clone()),
            ..request
        };
        let options = CallOptions {
            command_id: Some(command_id),
            ..CallOptions::default()
        };
        let reply = self
            .client
            .call_with(Action::StartTask, &request, options)
            .await?;
        Ok(reply.response)
    }

    /// Every task (running or stopped) with this `startedBy` that carries `tag = value`.
    pub async fn tasks_tagged(
        &self,
        started_by: &str,
        tag: &str,
        value: &str,
    ) -> Result<Vec<Task>, ClientError> {
        let mut found = Vec::new();
        for desired in [DesiredStatusFilter::Running, DesiredStatusFilter::Stopped] {
            let mut next_token = None;
            loop {
                let page: ListTasksResponse = self
                    .client
                    .call(
                        Action::ListTasks,
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
                        .client
                        .call(
                            Action::DescribeTasks,
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

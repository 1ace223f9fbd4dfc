//! `berth tasks logs`: a container's output read from the agent of the task's host over
//! NATS request/reply (`berth.host.<cluster>.<instance-id>.logs`), so it works from any
//! machine on the bus. `--follow` keeps asking from the last offset until the agent says
//! the container has stopped and everything it wrote was returned.

use super::wait::{describe_tasks, tasks_not_found};
use super::Context;
use crate::error::CliError;
use crate::output;
use async_nats::HeaderMap;
use berth_client::reply::ReplyError;
use berth_messages::agent::{LogsRequest, LogsResponse, DEFAULT_LOG_CHUNK};
use berth_messages::codec::{self, Encoding};
use berth_messages::{arn, headers, subjects};
use std::io::Write;
use std::time::Duration;

/// Pause between reads that returned nothing new while following.
const FOLLOW_POLL: Duration = Duration::from_millis(500);
/// How long one read may take.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(
    ctx: &Context,
    task: &str,
    container: Option<String>,
    follow: bool,
) -> Result<(), CliError> {
    let described = describe_tasks(ctx, &[task.to_string()]).await?;
    tasks_not_found(ctx, &described)?;
    let Some(found) = described.tasks.into_iter().next() else {
        return Err(CliError::other(format!("task {task} not found")));
    };
    if let Some(name) = &container {
        if !found.containers.iter().any(|c| &c.name == name) {
            let names: Vec<&str> = found.containers.iter().map(|c| c.name.as_str()).collect();
            return Err(CliError::input(format!(
                "task {} has no container named {name}; its containers: {}",
                output::short_id(&found.task_arn),
                names.join(", ")
            )));
        }
    }
    let (in_arn, _) = arn::task_id(&found.task_arn);
    let cluster = in_arn.unwrap_or(&ctx.cluster).to_string();
    let (_, instance_id) = arn::container_instance_id(&found.container_instance_arn);
    let subject = subjects::host_logs(&cluster, instance_id);
    let mut offset: Option<u64> = None;
    loop {
        let request = LogsRequest {
            task: found.task_arn.clone(),
            container_name: container.clone(),
            offset,
            tail_bytes: None,
            max_bytes: Some(DEFAULT_LOG_CHUNK),
        };
        let chunk = read(ctx, &subject, instance_id, &request).await?;
        if let Some(asked) = offset {
            if chunk.offset > asked {
                output::note(&format!(
                    "[{} bytes of older output were rotated away]",
                    chunk.offset - asked
                ));
            }
        }
        if ctx.json() {
            let mut line = serde_json::to_string(&chunk)
                .map_err(|e| CliError::other(format!("cannot render JSON: {e}")))?;
            line.push('\n');
            output::print(&line);
        } else if !chunk.data.is_empty() {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(chunk.data.as_bytes());
            let _ = out.flush();
        }
        let got_something = chunk.next_offset > offset.unwrap_or(0) || !chunk.data.is_empty();
        offset = Some(chunk.next_offset);
        if chunk.complete {
            return Ok(());
        }
        if !got_something {
            if !follow {
                return Ok(());
            }
            tokio::time::sleep(FOLLOW_POLL).await;
        }
    }
}

async fn read(
    ctx: &Context,
    subject: &str,
    instance_id: &str,
    request: &LogsRequest,
) -> Result<LogsResponse, CliError> {
    let body = codec::encode_record(request)
        .map_err(|e| CliError::other(format!("cannot encode the logs request: {e}")))?;
    let message = async_nats::Request::new()
        .headers(HeaderMap::new())
        .payload(body.into())
        .timeout(Some(READ_TIMEOUT));
    let reply = ctx
        .client
        .nats()
        .send_request(subject.to_string(), message)
        .await
        .map_err(|e| match e.kind() {
            async_nats::client::RequestErrorKind::NoResponders
            | async_nats::client::RequestErrorKind::TimedOut => CliError::other(format!(
                "the agent of instance {instance_id} does not answer log requests on {subject}: \
                 is berth-agent running on that host? (`berth instances describe {instance_id}` \
                 shows whether its agent is connected)"
            )),
            _ => CliError::other(format!(
                "request {subject} on {} failed: {}",
                ctx.client.url(),
                berth_client::error_chain(&e)
            )),
        })?;
    let encoding = Encoding::from_content_type(
        reply
            .headers
            .as_ref()
            .and_then(|h| h.get(headers::CONTENT_TYPE))
            .map(|v| v.as_str()),
    );
    match berth_client::reply::decode::<LogsResponse>(encoding, &reply) {
        Ok(read) => Ok(read.response),
        Err(ReplyError::Refused(e)) => {
            Err(CliError::other(format!("the agent refused: {}", e.message)))
        }
        Err(ReplyError::Undecodable(e)) => serde_json::from_slice(&reply.payload)
            .map_err(|_| CliError::other(format!("the agent's log reply cannot be read: {e}"))),
    }
}

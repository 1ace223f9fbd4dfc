//! NATS micro-service discovery: how many instances of a service answer.

use futures::StreamExt;
use std::collections::HashSet;
use std::time::Duration;

/// How long to wait for one more instance's answer to a ping.
const QUIET: Duration = Duration::from_millis(300);

/// The distinct instances of micro service `service` answering `$SRV.PING.<service>`: stops
/// at `want`, or once none has answered for 300 ms. 0 if the ping cannot be sent.
pub async fn service_instances(client: &async_nats::Client, service: &str, want: usize) -> usize {
    let inbox = client.new_inbox();
    let Ok(mut replies) = client.subscribe(inbox.clone()).await else {
        return 0;
    };
    if client
        .publish_with_reply(format!("$SRV.PING.{service}"), inbox, "".into())
        .await
        .is_err()
    {
        return 0;
    }
    let mut ids = HashSet::new();
    while ids.len() < want {
        let Ok(Some(reply)) = tokio::time::timeout(QUIET, replies.next()).await else {
            break;
        };
        let ping = serde_json::from_slice::<serde_json::Value>(&reply.payload);
        if let Some(id) = ping.ok().and_then(|p| p["id"].as_str().map(str::to_string)) {
            ids.insert(id);
        }
    }
    ids.len()
}

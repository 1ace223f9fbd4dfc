//! The benchmark's client of Berth's API: NATS request/reply on `berth.api.<Action>` with
//! named MessagePack bodies, error replies recognised by `Nats-Service-Error-Code`, and
//! the replica's `$SRV.STATS` counters.

use async_nats::HeaderMap;
use berth_messages::codec::{self, Encoding};
use berth_messages::command::Action;
use berth_messages::{headers, subjects, ApiError};
use serde::{de::DeserializeOwned, Serialize};
use std::time::Duration;

/// The NATS micro-service protocol's STATS verb for the service `berth` (a NATS subject,
/// not one of Berth's own).
const CONTROL_STATS_SUBJECT: &str = "$SRV.STATS.berth";

/// Why a call failed.
#[derive(Debug, Clone)]
pub enum CallError {
    /// Berth answered with an ECS error.
    Refused(ApiError),
    /// No answer in time, no responders, or an undecodable reply.
    Transport(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused(e) => write!(f, "{}: {}", e.error_type, e.message),
            Self::Transport(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for CallError {}

/// A connection used to call the API.
#[derive(Clone)]
pub struct Api {
    client: async_nats::Client,
    timeout: Duration,
}

impl Api {
    pub fn new(client: async_nats::Client, timeout: Duration) -> Self {
        Self { client, timeout }
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Same connection, another reply timeout.
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        Self {
            client: self.client.clone(),
            timeout,
        }
    }

    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        action: Action,
        request: &Req,
    ) -> Result<Resp, CallError> {
        self.call_after(action, request, None).await
    }

    /// Calls `action`; with `min_sequence`, a read waits until the replica's view has
    /// applied that journal sequence.
    pub async fn call_after<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        action: Action,
        request: &Req,
        min_sequence: Option<u64>,
    ) -> Result<Resp, CallError> {
        let body = codec::encode(Encoding::MsgPack, request)
            .map_err(|e| CallError::Transport(format!("cannot encode {action}: {e}")))?;
        let mut request = async_nats::Request::new()
            .payload(body.into())
            .timeout(Some(self.timeout));
        if let Some(sequence) = min_sequence {
            let mut h = HeaderMap::new();
            h.insert(headers::MIN_SEQUENCE, sequence.to_string().as_str());
            request = request.headers(h);
        }
        let reply = self
            .client
            .send_request(subjects::api(action.as_str()), request)
            .await
            .map_err(|e| CallError::Transport(format!("{action}: {e}")))?;
        let failed = reply
            .headers
            .as_ref()
            .and_then(|h| h.get(headers::SERVICE_ERROR_CODE))
            .is_some();
        if failed {
            let error = codec::decode::<ApiError>(Encoding::MsgPack, &reply.payload)
                .unwrap_or_else(|_| ApiError::server(String::from_utf8_lossy(&reply.payload)));
            return Err(CallError::Refused(error));
        }
        codec::decode(Encoding::MsgPack, &reply.payload)
            .map_err(|e| CallError::Transport(format!("{action}: undecodable reply: {e}")))
    }

    /// The journal sequence the answering replica's view has applied (the
    /// `Berth-Sequence` header of a read reply).
    pub async fn applied_sequence(&self) -> Result<u64, CallError> {
        let body = codec::encode(
            Encoding::MsgPack,
            &berth_messages::api::DescribeClustersRequest::default(),
        )
        .map_err(|e| CallError::Transport(e.to_string()))?;
        let request = async_nats::Request::new()
            .payload(body.into())
            .timeout(Some(self.timeout));
        let reply = self
            .client
            .send_request(subjects::api(Action::DescribeClusters.as_str()), request)
            .await
            .map_err(|e| CallError::Transport(format!("DescribeClusters: {e}")))?;
        reply
            .headers
            .as_ref()
            .and_then(|h| h.get(headers::SEQUENCE))
            .and_then(|v| v.as_str().parse().ok())
            .ok_or_else(|| CallError::Transport("read reply without Berth-Sequence".into()))
    }

    /// The counters a replica publishes in its `$SRV.STATS` endpoint data (`placements`,
    /// `conflicts`, `retries`, `groupCommits`, ...). With several replicas, the first to
    /// answer.
    pub async fn control_stats(&self) -> Result<ControlStats, CallError> {
        let reply = tokio::time::timeout(
            self.timeout,
            self.client.request(CONTROL_STATS_SUBJECT, "".into()),
        )
        .await
        .map_err(|_| CallError::Transport("$SRV.STATS timed out".into()))?
        .map_err(|e| CallError::Transport(format!("$SRV.STATS: {e}")))?;
        let stats: serde_json::Value = serde_json::from_slice(&reply.payload)
            .map_err(|e| CallError::Transport(format!("$SRV.STATS is not JSON: {e}")))?;
        Ok(ControlStats::from_stats(&stats))
    }
}

/// Counters of one control-plane replica.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ControlStats {
    pub commands: u64,
    pub placements: u64,
    pub placement_failures: u64,
    pub conflicts: u64,
    pub retries: u64,
    pub group_commits: u64,
}

impl ControlStats {
    /// Reads the counters from the `data` of the first endpoint that carries them.
    fn from_stats(stats: &serde_json::Value) -> Self {
        let data = stats["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|endpoint| &endpoint["data"])
            .find(|data| data.get("placements").is_some())
            .cloned()
            .unwrap_or_default();
        let n = |name: &str| data[name].as_u64().unwrap_or(0);
        Self {
            commands: n("commands"),
            placements: n("placements"),
            placement_failures: n("placementFailures"),
            conflicts: n("conflicts"),
            retries: n("retries"),
            group_commits: n("groupCommits"),
        }
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &ControlStats) -> ControlStats {
        ControlStats {
            commands: self.commands.saturating_sub(earlier.commands),
            placements: self.placements.saturating_sub(earlier.placements),
            placement_failures: self
                .placement_failures
                .saturating_sub(earlier.placement_failures),
            conflicts: self.conflicts.saturating_sub(earlier.conflicts),
            retries: self.retries.saturating_sub(earlier.retries),
            group_commits: self.group_commits.saturating_sub(earlier.group_commits),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_come_from_endpoint_data() {
        let stats = serde_json::json!({
            "name": "berth",
            "endpoints": [
                {"name": "RunTask", "data": {"commands": 7, "placements": 40, "conflicts": 2,
                  "retries": 1, "groupCommits": 30, "placementFailures": 0}},
                {"name": "StopTask", "data": {"commands": 7, "placements": 40}}
            ]
        });
        let parsed = ControlStats::from_stats(&stats);
        assert_eq!(parsed.placements, 40);
        assert_eq!(parsed.group_commits, 30);
        let later = ControlStats {
            placements: 50,
            conflicts: 5,
            ..parsed
        };
        let delta = later.since(&parsed);
        assert_eq!(
            (delta.placements, delta.conflicts, delta.commands),
            (10, 3, 0)
        );
        assert_eq!(
            ControlStats::from_stats(&serde_json::json!({})),
            ControlStats::default()
        );
    }
}

//! The benchmark's API client: `berth-client` in named MessagePack, one attempt per call
//! with the whole timeout (so each call's latency is its request's own), and the
//! replica's `$SRV.STATS` counters.

use berth_client::{CallOptions, Client, ClientError, Resend};
use berth_messages::command::Action;
use serde::{de::DeserializeOwned, Serialize};
use std::time::Duration;

/// The NATS micro-service protocol's STATS verb for the service `berth` (a NATS subject,
/// not one of Berth's own).
const CONTROL_STATS_SUBJECT: &str = "$SRV.STATS.berth";

/// Why reading the replica's counters failed.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("{CONTROL_STATS_SUBJECT} timed out")]
    TimedOut,
    #[error("{CONTROL_STATS_SUBJECT} failed")]
    Request(#[source] async_nats::RequestError),
    #[error("{CONTROL_STATS_SUBJECT} is not JSON")]
    NotJson(#[source] serde_json::Error),
}

/// A connection used to call the API.
#[derive(Clone)]
pub struct Api {
    client: Client,
}

impl Api {
    pub fn new(client: async_nats::Client, timeout: Duration) -> Self {
        Self {
            client: Client::new(client)
                .with_timeout(timeout)
                .with_resend(Resend::Never),
        }
    }

    pub fn client(&self) -> &async_nats::Client {
        self.client.nats()
    }

    /// Same connection, another reply timeout.
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        Self {
            client: self.client.clone().with_timeout(timeout),
        }
    }

    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        action: Action,
        request: &Req,
    ) -> Result<Resp, ClientError> {
        self.client.call(action, request).await
    }

    /// The journal sequence the answering replica's view has applied (the
    /// `Berth-Sequence` of a read reply; `None` if the reply carries none).
    pub async fn applied_sequence(&self) -> Result<Option<u64>, ClientError> {
        let reply = self
            .client
            .call_with::<_, serde::de::IgnoredAny>(
                Action::DescribeClusters,
                &berth_messages::api::DescribeClustersRequest::default(),
                CallOptions::default(),
            )
            .await?;
        Ok(reply.sequence)
    }

    /// The counters a replica publishes in its `$SRV.STATS` endpoint data (`placements`,
    /// `conflicts`, `retries`, `groupCommits`, ...). With several replicas, the first to
    /// answer.
    pub async fn control_stats(&self) -> Result<ControlStats, StatsError> {
        let reply = tokio::time::timeout(
            self.client.timeout(),
            self.client.nats().request(CONTROL_STATS_SUBJECT, "".into()),
        )
        .await
        .map_err(|_| StatsError::TimedOut)?
        .map_err(StatsError::Request)?;
        let stats: serde_json::Value =
            serde_json::from_slice(&reply.payload).map_err(StatsError::NotJson)?;
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
    /// Writes of `agentConnected` (and the agents' health) by the liveness loop.
    pub agent_flips: u64,
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
            agent_flips: n("agentFlips"),
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
            agent_flips: self.agent_flips.saturating_sub(earlier.agent_flips),
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

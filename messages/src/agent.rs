//! Messages between agents and the rest of Berth that are not ECS actions: heartbeats on
//! `berth.host.<cluster>.<instance-id>.heartbeat` (core NATS; any message counts as a
//! beat, this body is informative) and the agent's log service on
//! `berth.host.<cluster>.<instance-id>.logs` (request/reply).

use serde::{Deserialize, Serialize};

/// Body of a heartbeat (MessagePack, named).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Heartbeat {
    #[serde(default)]
    pub container_instance_arn: String,
    #[serde(default)]
    pub agent_version: String,
    #[serde(default)]
    pub sent_at: f64,
    #[serde(default)]
    pub running_tasks: u32,
    /// Why the agent cannot follow its tasks (its consumer cannot be created); none while
    /// it can. The control plane shows it as healthStatus IMPAIRED.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impaired: Option<String>,
    /// When (seconds since the epoch) the agent's task consumer last delivered the last
    /// record of every task of the host: the end of its latest resync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks_synced_at: Option<f64>,
}

/// Largest chunk a log reply carries.
pub const MAX_LOG_CHUNK: u32 = 1024 * 1024;
/// Chunk size when the request names none.
pub const DEFAULT_LOG_CHUNK: u32 = 64 * 1024;

/// A read of a container's output (stdout and stderr interleaved as written).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct LogsRequest {
    /// Task id or ARN.
    pub task: String,
    /// Container name; the task's first container when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    /// Byte offset to read from; absent: from the start (or the last `tailBytes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Without an offset, start this many bytes before the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail_bytes: Option<u64>,
    /// At most this many bytes (default [`DEFAULT_LOG_CHUNK`], at most [`MAX_LOG_CHUNK`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u32>,
}

/// A chunk of a container's output. Offsets count bytes since the container started,
/// across rotated files; bytes rotated away are skipped (`offset` > requested offset).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct LogsResponse {
    pub task: String,
    pub container_name: String,
    /// Where `data` starts.
    pub offset: u64,
    /// Where the next read should start.
    pub next_offset: u64,
    /// The output, lossily decoded as UTF-8.
    pub data: String,
    /// True when the container has stopped and everything it wrote has been returned:
    /// a follower can stop.
    pub complete: bool,
}

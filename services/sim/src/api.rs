//! The sim's settings of the API client (`berth-client`): named MessagePack, and calls
//! sent until answered, with backoff, unless definitively refused.

use berth_client::{Backoff, Client};
use std::time::Duration;

/// How long one call waits for its reply, all attempts together; the control plane
/// answers a mutation within its API timeout (30 s by default).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(45);

/// Waits between two calls of a request that was not answered.
pub const BACKOFF: Backoff = Backoff {
    first: Duration::from_millis(100),
    max: Duration::from_secs(5),
    growth: 2.0,
};

/// The sim's API client on `nats`.
pub fn client(nats: async_nats::Client) -> Client {
    Client::new(nats).with_timeout(REQUEST_TIMEOUT)
}

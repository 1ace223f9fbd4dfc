//! The API client: ECS actions over NATS request/reply on `berth.api.<Action>` with JSON
//! bodies. It remembers the journal sequence of its own writes and asks later reads to
//! reflect them (`Berth-Min-Sequence`), so a command sees what it just did even when
//! several control-plane replicas answer. Calls follow the API clients' retry policy
//! (`berth_messages::retry`): an unanswered attempt is sent again (a mutation under the
//! same minted `Nats-Msg-Id`), so a request that landed on a hung replica reaches another.

use crate::error::CliError;
use async_nats::client::RequestErrorKind;
use async_nats::HeaderMap;
use berth_messages::command::Action;
use berth_messages::retry;
use berth_messages::{headers, subjects, ApiError};
use serde::{de::DeserializeOwned, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an API call may take, all attempts together; above the control plane's own
/// 30 s command timeout.
pub const API_TIMEOUT: Duration = Duration::from_secs(40);

/// A connection to Berth.
pub struct Client {
    nats: async_nats::Client,
    url: String,
    min_sequence: AtomicU64,
}

impl Client {
    /// Connects to the first NATS server of `urls` that answers.
    pub async fn connect(urls: &[String]) -> Result<Client, CliError> {
        let url = urls.join(",");
        let mut addresses = Vec::with_capacity(urls.len());
        for u in urls {
            let address = u.trim().parse::<async_nats::ServerAddr>().map_err(|e| {
                CliError::input(format!(
                    "--nats / BERTH_NATS_URL: '{u}' is not a NATS URL ({e}); \
                     expected e.g. nats://127.0.0.1:4222"
                ))
            })?;
            addresses.push(address);
        }
        if addresses.is_empty() {
            return Err(CliError::input("--nats / BERTH_NATS_URL names no server"));
        }
        let options = async_nats::ConnectOptions::new()
            .name("berth")
            .connection_timeout(CONNECT_TIMEOUT)
            .request_timeout(Some(API_TIMEOUT));
        let connect = async_nats::connect_with_options(addresses, options);
        let nats = match tokio::time::timeout(CONNECT_TIMEOUT * 2, connect).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => {
                return Err(CliError::Connect {
                    url,
                    reason: e.to_string(),
                })
            }
            Err(_) => {
                return Err(CliError::Connect {
                    url,
                    reason: "timed out".into(),
                })
            }
        };
        Ok(Client {
            nats,
            url,
            min_sequence: AtomicU64::new(0),
        })
    }

    /// The underlying NATS connection.
    pub fn nats(&self) -> &async_nats::Client {
        &self.nats
    }

    /// The URL(s) this client was given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Calls an action; an ECS error reply becomes [`CliError::Api`].
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        action: Action,
        request: &Req,
    ) -> Result<Resp, CliError> {
        let body = serde_json::to_vec(request)
            .map_err(|e| CliError::other(format!("cannot encode {action} request: {e}")))?;
        let mut h = HeaderMap::new();
        h.insert(headers::CONTENT_TYPE, headers::JSON);
        let seen = self.min_sequence.load(Ordering::Relaxed);
        if !action.is_mutation() && seen > 0 {
            h.insert(headers::MIN_SEQUENCE, seen.to_string().as_str());
        }
        let reply = retry::call(
            action.as_str(),
            None,
            API_TIMEOUT,
            |id, timeout| {
                let mut h = h.clone();
                if let Some(id) = id {
                    h.insert(headers::MSG_ID, id);
                }
                let request = async_nats::Request::new()
                    .headers(h)
                    .payload(body.clone().into())
                    .timeout(Some(timeout));
                self.nats
                    .send_request(subjects::api(action.as_str()), request)
            },
            |e| e.kind() == RequestErrorKind::TimedOut,
        )
        .await
        .map_err(|e| self.request_error(action.as_str(), e))?;
        let reply_headers = reply.headers.as_ref();
        if let Some(seq) = reply_headers
            .and_then(|h| h.get(headers::SEQUENCE))
            .and_then(|v| v.as_str().parse::<u64>().ok())
        {
            self.min_sequence.fetch_max(seq, Ordering::Relaxed);
        }
        if reply_headers.is_some_and(|h| h.get(headers::SERVICE_ERROR_CODE).is_some()) {
            return Err(api_error(&reply));
        }
        serde_json::from_slice(&reply.payload).map_err(|e| {
            CliError::other(format!(
                "berth.api.{action} answered with a body this berth cannot read ({e}): \
                 is the control plane the same version?"
            ))
        })
    }

    /// Maps a failed request to the error a person can act on.
    pub fn request_error(&self, what: &str, e: async_nats::RequestError) -> CliError {
        match e.kind() {
            RequestErrorKind::NoResponders => CliError::NoApi {
                url: self.url.clone(),
                action: what.to_string(),
            },
            RequestErrorKind::TimedOut => CliError::Timeout {
                url: self.url.clone(),
                action: what.to_string(),
                seconds: API_TIMEOUT.as_secs(),
            },
            _ => CliError::other(format!("request {what} on {} failed: {e}", self.url)),
        }
    }
}

/// The ECS error of an error reply (whatever its encoding).
pub fn api_error(reply: &async_nats::Message) -> CliError {
    let decoded: Option<ApiError> = serde_json::from_slice(&reply.payload)
        .ok()
        .or_else(|| rmp_serde::from_slice(&reply.payload).ok());
    match decoded {
        Some(e) => CliError::Api(e),
        None => {
            let description = reply
                .headers
                .as_ref()
                .and_then(|h| h.get(headers::SERVICE_ERROR))
                .map(|v| v.as_str().to_string())
                .unwrap_or_else(|| String::from_utf8_lossy(&reply.payload).into_owned());
            CliError::other(format!("the server refused the request: {description}"))
        }
    }
}

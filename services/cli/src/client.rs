//! The CLI's API client: `berth-client` in JSON, reading its own writes (a command sees
//! what it just did even when several control-plane replicas answer), with every failure
//! worded for a person ([`CliError`]).

use crate::error::CliError;
use berth_client::{ClientError, ConnectError};
use berth_messages::codec::Encoding;
use berth_messages::command::Action;
use serde::{de::DeserializeOwned, Serialize};
use std::time::Duration;

/// How long an API call may take, all attempts together; above the control plane's own
/// 30 s command timeout.
pub const API_TIMEOUT: Duration = Duration::from_secs(40);

/// A connection to Berth.
pub struct Client {
    api: berth_client::Client,
    url: String,
}

impl Client {
    /// Connects to the first NATS server of `urls` that answers.
    pub async fn connect(urls: &[String]) -> Result<Client, CliError> {
        let nats = berth_client::connect(urls, "berth")
            .await
            .map_err(|e| match e {
                ConnectError::BadUrl { url, source } => CliError::input(format!(
                    "--nats / BERTH_NATS_URL: '{url}' is not a NATS URL ({source}); \
                     expected e.g. nats://127.0.0.1:4222"
                )),
                ConnectError::NoServer => {
                    CliError::input("--nats / BERTH_NATS_URL names no server")
                }
                ConnectError::Failed { servers, source } => CliError::Connect {
                    url: servers,
                    reason: source.to_string(),
                },
                ConnectError::TimedOut { servers, .. } => CliError::Connect {
                    url: servers,
                    reason: "timed out".into(),
                },
            })?;
        let api = berth_client::Client::new(nats)
            .with_encoding(Encoding::Json)
            .with_timeout(API_TIMEOUT)
            .reading_own_writes();
        Ok(Client {
            api,
            url: urls.join(","),
        })
    }

    /// The underlying NATS connection.
    pub fn nats(&self) -> &async_nats::Client {
        self.api.nats()
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
        self.api
            .call(action, request)
            .await
            .map_err(|e| self.call_error(e))
    }

    /// The failure of a call as a person can act on it.
    fn call_error(&self, e: ClientError) -> CliError {
        let url = self.url.clone();
        match e {
            ClientError::Refused { error, .. } => CliError::Api(error),
            ClientError::NoResponders { action, .. } => CliError::NoApi { url, action },
            ClientError::TimedOut {
                action, timeout, ..
            } => CliError::Timeout {
                url,
                action,
                seconds: timeout.as_secs(),
            },
            ClientError::Decode { action, source } => CliError::other(format!(
                "{action} was answered with a body this berth cannot read ({source}): \
                 is the control plane the same version?"
            )),
            other @ (ClientError::Request { .. } | ClientError::Encode { .. }) => {
                CliError::other(format!("on {url}: {}", berth_client::error_chain(&other)))
            }
        }
    }
}

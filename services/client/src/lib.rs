//! The one client of Berth's ECS API over NATS, used by every Berth program (agent,
//! hollow hosts, scheduler, CLI, benchmark) and the end-to-end tests. It owns:
//!
//! - the call: request/reply on [`subjects::api`] of an [`Action`], typed request and
//!   response, in JSON or MessagePack ([`Encoding`]; the reply comes in the request's
//!   encoding, see [`reply`]);
//! - request ids: a mutation carries a command id in `Nats-Msg-Id` (the caller's, else
//!   one minted per call), so sending it again cannot execute it twice;
//! - timeouts and resends within a call, as the I/O-free policy of
//!   [`berth_messages::retry`] says: an unanswered attempt (a request that landed on a
//!   hung replica) is sent again ([`Resend`]);
//! - the classification of failures ([`ClientError`]): the ECS error type each amounts
//!   to and whether calling again later may succeed, which [`Client::call_until_answered`]
//!   acts on with jittered exponential [`Backoff`];
//! - reading one's own writes: with [`Client::reading_own_writes`], reads wait for the
//!   highest journal sequence a reply reported (`Berth-Min-Sequence`);
//! - connecting to NATS from a list of URLs ([`connect`]).
//!
//! It does not own the journal: programs that also follow journal streams connect
//! through `berth-journal` and hand the connection to [`Client::new`].

mod error;
pub mod reply;

pub use error::{error_chain, ClientError, ConnectError};
pub use reply::Reply;

use berth_messages::codec::{self, Encoding};
use berth_messages::command::Action;
use berth_messages::retry::{self, RetryPolicy};
use berth_messages::{headers, subjects};
use rand::Rng;
use serde::{de::DeserializeOwned, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long a call may take, all attempts together, unless the client is given another
/// timeout: above the control plane's own 30 s command timeout, so that a mutation's
/// outcome arrives.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(45);

/// Which calls are sent again after an unanswered attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resend {
    /// The API clients' policy: reads, and every mutation under the caller's command id
    /// or one minted for the call.
    Policy,
    /// Reads, and mutations under the caller's command id; mutations without one are
    /// sent once without an id, so the control plane mints it (and RunTask's
    /// `clientToken` deduplicates).
    GivenIds,
    /// Nothing: one attempt with the whole timeout, so each call's latency is its
    /// request's own.
    Never,
}

/// Per-call settings.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallOptions<'a> {
    /// The command id (`Nats-Msg-Id`) of a mutation: a mutation sent again with the same
    /// id takes effect once and is answered with the first one's outcome.
    pub command_id: Option<&'a str>,
    /// A read waits until the answering replica's view has applied this journal sequence.
    pub min_sequence: Option<u64>,
}

/// A client of the API on a NATS connection. Cloning is cheap (clones share the
/// connection and the sequence of their own writes).
#[derive(Debug, Clone)]
pub struct Client {
    nats: async_nats::Client,
    encoding: Encoding,
    timeout: Duration,
    resend: Resend,
    seen_sequence: Option<Arc<AtomicU64>>,
}

impl Client {
    /// MessagePack, [`DEFAULT_TIMEOUT`], [`Resend::Policy`].
    pub fn new(nats: async_nats::Client) -> Self {
        Self {
            nats,
            encoding: Encoding::MsgPack,
            timeout: DEFAULT_TIMEOUT,
            resend: Resend::Policy,
            seen_sequence: None,
        }
    }

    pub fn with_encoding(mut self, encoding: Encoding) -> Self {
        self.encoding = encoding;
        self
    }

    /// How long a call may take, all its attempts together.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn with_resend(mut self, resend: Resend) -> Self {
        self.resend = resend;
        self
    }

    /// Reads reflect this client's own mutations (and never go back behind an earlier
    /// read) even when another replica answers them: each read asks for the highest
    /// journal sequence a reply to this client (or its clones) reported.
    pub fn reading_own_writes(mut self) -> Self {
        self.seen_sequence = Some(Arc::new(AtomicU64::new(0)));
        self
    }

    /// The underlying NATS connection.
    pub fn nats(&self) -> &async_nats::Client {
        &self.nats
    }

    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Calls `action` with `request`.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        action: Action,
        request: &Req,
    ) -> Result<Resp, ClientError> {
        let reply = self
            .call_with(action, request, CallOptions::default())
            .await?;
        Ok(reply.response)
    }

    /// Calls `action` with `request` and per-call `options`; the reply keeps the journal
    /// sequence it reflects.
    pub async fn call_with<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        action: Action,
        request: &Req,
        options: CallOptions<'_>,
    ) -> Result<Reply<Resp>, ClientError> {
        let body = codec::encode(self.encoding, request)
            .map_err(|source| ClientError::Encode { action, source })?;
        let message = self
            .send(
                action,
                Some(self.encoding.content_type()),
                body.into(),
                options,
            )
            .await?;
        reply::decode(self.encoding, &message).map_err(|e| match e {
            reply::ReplyError::Refused(error) => ClientError::Refused { action, error },
            reply::ReplyError::Undecodable(source) => ClientError::Decode { action, source },
        })
    }

    /// Sends an encoded `body` (with `content_type`, if any) to `action` under the
    /// client's timeout and [`Resend`]; returns the reply message, error replies
    /// included (see [`reply::decode`]).
    pub async fn send(
        &self,
        action: Action,
        content_type: Option<&str>,
        body: bytes::Bytes,
        options: CallOptions<'_>,
    ) -> Result<async_nats::Message, ClientError> {
        let mut h = async_nats::HeaderMap::new();
        if let Some(content_type) = content_type {
            h.insert(headers::CONTENT_TYPE, content_type);
        }
        let own = self
            .seen_sequence
            .as_ref()
            .map(|seen| seen.load(Ordering::Relaxed))
            .filter(|seen| *seen > 0 && !action.is_mutation());
        if let Some(min) = options.min_sequence.max(own) {
            h.insert(headers::MIN_SEQUENCE, min.to_string().as_str());
        }
        let (command_id, timeouts) = self.attempts(action, options.command_id);
        if let Some(id) = &command_id {
            h.insert(headers::MSG_ID, id.as_str());
        }
        let subject = subjects::api(action.as_str());
        let reply = retry::with_retries(
            &timeouts,
            |timeout| {
                let request = async_nats::Request::new()
                    .headers(h.clone())
                    .payload(body.clone())
                    .timeout(Some(timeout));
                self.nats.send_request(subject.clone(), request)
            },
            |e| e.kind() == async_nats::client::RequestErrorKind::TimedOut,
        )
        .await
        .map_err(|e| ClientError::from_request(action, self.timeout, e))?;
        if let (Some(seen), Some(sequence)) = (&self.seen_sequence, reply::sequence(&reply)) {
            seen.fetch_max(sequence, Ordering::Relaxed);
        }
        Ok(reply)
    }

    /// The command id a call carries and the timeout of each of its attempts.
    fn attempts(&self, action: Action, given: Option<&str>) -> (Option<String>, Vec<Duration>) {
        let name = action.as_str();
        let id = match self.resend {
            Resend::Policy => retry::command_id(name, given),
            Resend::GivenIds | Resend::Never => given.map(str::to_string),
        };
        let timeouts = match self.resend {
            Resend::Never => vec![self.timeout],
            Resend::Policy | Resend::GivenIds => RetryPolicy::within(self.timeout)
                .attempt_timeouts(retry::schedule(name, id.as_deref())),
        };
        (id, timeouts)
    }

    /// Calls `action` until it is answered: a retryable failure
    /// ([`ClientError::is_retryable`]) is followed by another call after a jittered wait
    /// that grows as `backoff` says; the response or the first definitive refusal is
    /// returned. Each call carries `command_id` if given; otherwise each call of a
    /// mutation gets its own (under [`Resend::Policy`]), since a command whose outcome is
    /// a server error would be answered with that outcome again under the same id.
    pub async fn call_until_answered<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        action: Action,
        request: &Req,
        command_id: Option<&str>,
        backoff: Backoff,
    ) -> Result<Resp, ClientError> {
        let options = CallOptions {
            command_id,
            ..CallOptions::default()
        };
        let mut wait = backoff.first;
        let mut failures = 0u32;
        loop {
            match self.call_with(action, request, options).await {
                Ok(reply) => return Ok(reply.response),
                Err(e) if e.is_retryable() => {
                    failures += 1;
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(
                            error = &e as &dyn std::error::Error,
                            failures,
                            retry_in = ?wait,
                            "API call not answered; calling again"
                        );
                    }
                    tokio::time::sleep(jittered(wait)).await;
                    wait = backoff.next(wait);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Waits between the calls of [`Client::call_until_answered`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The first wait.
    pub first: Duration,
    /// The largest wait.
    pub max: Duration,
    /// Each wait is the previous one times this factor, up to `max`.
    pub growth: f64,
}

impl Backoff {
    /// The wait after `wait`.
    pub fn next(&self, wait: Duration) -> Duration {
        wait.mul_f64(self.growth.max(1.0)).min(self.max)
    }
}

/// `d` plus or minus 20%, so that many callers waiting at once spread out.
fn jittered(d: Duration) -> Duration {
    d.mul_f64(rand::thread_rng().gen_range(0.8..=1.2))
}

/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to the first of `urls` that answers, as `name`, within
/// [`CONNECT_TIMEOUT`] per server; every URL is checked first.
pub async fn connect(urls: &[String], name: &str) -> Result<async_nats::Client, ConnectError> {
    let mut addresses = Vec::with_capacity(urls.len());
    for url in urls {
        let address = url
            .trim()
            .parse::<async_nats::ServerAddr>()
            .map_err(|source| ConnectError::BadUrl {
                url: url.clone(),
                source,
            })?;
        addresses.push(address);
    }
    if addresses.is_empty() {
        return Err(ConnectError::NoServer);
    }
    let servers = urls.join(",");
    let options = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(CONNECT_TIMEOUT);
    let timeout = CONNECT_TIMEOUT * 2;
    match tokio::time::timeout(
        timeout,
        async_nats::connect_with_options(addresses, options),
    )
    .await
    {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(source)) => Err(ConnectError::Failed { servers, source }),
        Err(_) => Err(ConnectError::TimedOut { servers, timeout }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client whose connection is never used (the decisions below make no request).
    async fn client(resend: Resend, timeout: Duration) -> Client {
        let nats = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect("nats://127.0.0.1:1")
            .await
            .map_err(|e| e.to_string());
        match nats {
            Ok(nats) => Client::new(nats).with_resend(resend).with_timeout(timeout),
            Err(e) => panic!("a lazy connection is made at once: {e}"),
        }
    }

    fn secs(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|s| Duration::from_secs(*s)).collect()
    }

    #[tokio::test]
    async fn the_policy_resends_reads_and_mutations_under_one_minted_id() {
        let c = client(Resend::Policy, Duration::from_secs(30)).await;
        let (id, timeouts) = c.attempts(Action::RunTask, None);
        assert!(
            id.as_deref().is_some_and(|id| id.starts_with("c-")),
            "{id:?}"
        );
        assert_eq!(timeouts, secs(&[2, 4, 8, 16]));
        let (id, timeouts) = c.attempts(Action::StopTask, Some("mine"));
        assert_eq!(id.as_deref(), Some("mine"));
        assert_eq!(timeouts.len(), 4);
        let (id, timeouts) = c.attempts(Action::DescribeTasks, None);
        assert_eq!(id, None);
        assert_eq!(timeouts, vec![retry::FIRST_ATTEMPT; 15]);
    }

    #[tokio::test]
    async fn given_ids_only_leaves_other_mutations_to_the_control_plane() {
        let c = client(Resend::GivenIds, Duration::from_secs(30)).await;
        assert_eq!(
            c.attempts(Action::RunTask, None),
            (None, secs(&[30])),
            "sent once, without an id"
        );
        let (id, timeouts) = c.attempts(Action::StartTask, Some("sched-1"));
        assert_eq!(id.as_deref(), Some("sched-1"));
        assert_eq!(timeouts, secs(&[2, 4, 8, 16]));
        assert_eq!(c.attempts(Action::ListTasks, None).1.len(), 15);
    }

    #[tokio::test]
    async fn never_sends_one_attempt_with_the_whole_timeout() {
        let c = client(Resend::Never, Duration::from_secs(30)).await;
        assert_eq!(c.attempts(Action::ListTasks, None), (None, secs(&[30])));
        assert_eq!(
            c.attempts(Action::RunTask, Some("c-1")),
            (Some("c-1".to_string()), secs(&[30]))
        );
    }

    #[test]
    fn backoff_grows_to_its_bound_and_jitter_stays_within_a_fifth() {
        let b = Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_secs(1),
            growth: 2.0,
        };
        let mut wait = b.first;
        let mut waits = Vec::new();
        for _ in 0..6 {
            waits.push(wait.as_millis());
            wait = b.next(wait);
        }
        assert_eq!(waits, vec![100, 200, 400, 800, 1000, 1000]);
        for _ in 0..100 {
            let j = jittered(Duration::from_secs(10));
            assert!(j >= Duration::from_secs(8) && j <= Duration::from_secs(12));
        }
    }

    #[tokio::test]
    async fn bad_urls_are_refused_before_connecting() {
        assert!(matches!(
            connect(&["not a url".into()], "t").await,
            Err(ConnectError::BadUrl { .. })
        ));
        assert!(matches!(
            connect(&[], "t").await,
            Err(ConnectError::NoServer)
        ));
    }
}

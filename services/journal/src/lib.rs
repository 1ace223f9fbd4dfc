//! Berth's journal on NATS JetStream. It owns the three streams (`BERTH_STATE`,
//! `BERTH_CMD`, `BERTH_OUTCOME`), their idempotent provisioning, the conditional write
//! (a publish with `Nats-Expected-Last-Subject-Sequence`, conflicts recognised by error
//! kind, never by text), direct reads of an entity's latest record, command outcomes,
//! and, with the `view` feature (on by default), the in-memory `view::View` of the whole
//! state. Programs that only follow their own subjects (agents, hollow hosts) build
//! without it, and so without the placement pool and the compact task records.
//!
//! An entity's version is the stream sequence of its last record; every write names the
//! version it read (0 to create), so a write on a stale read is refused with
//! [`JournalError::Conflict`] and the writer re-reads and re-validates.

#[cfg(feature = "view")]
mod compact;
#[cfg(feature = "view")]
mod keys;
#[cfg(feature = "view")]
pub mod landing;
pub mod recovery;
#[cfg(feature = "view")]
pub mod view;

use async_nats::jetstream::{self, context::PublishErrorKind, stream, Context};
use async_nats::HeaderMap;
use berth_messages::codec;
use berth_messages::command::{CommandResponse, Outcome};
pub use berth_messages::error_chain;
use berth_messages::headers;
use berth_messages::streams::{self, Retention, StreamOptions, StreamSpec};
use berth_messages::subjects;
use bytes::Bytes;
use recovery::{retry, Patience};
use serde::{de::DeserializeOwned, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long start-up calls (provisioning, the view's first consumer) keep trying: a fresh
/// 3-node cluster may need many seconds to elect its meta leader.
pub const START_PATIENCE: Duration = Duration::from_secs(60);

/// Failures of journal operations.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Someone wrote the subject after the version this writer read (a wrong last
    /// sequence: JetStream 10071, or 10164 from a replicated stream, see [`CONFLICT_CODES`]).
    #[error("conflict on {subject}: it changed after version {expected}")]
    Conflict { subject: String, expected: u64 },
    #[error("record on {subject} cannot be decoded: {source}")]
    Decode {
        subject: String,
        source: codec::CodecError,
    },
    #[error("record cannot be encoded: {0}")]
    Encode(#[from] codec::CodecError),
    #[error("NATS connection failed: {0}")]
    Connect(String),
    #[error("stream {stream} cannot be provisioned: {reason}")]
    Provision { stream: String, reason: String },
    #[error("publish to {subject} failed: {reason}")]
    Publish { subject: String, reason: String },
    #[error("read of {subject} failed: {reason}")]
    Read { subject: String, reason: String },
    #[error("consumer failed: {0}")]
    Consumer(String),
    #[error("gave up on {subject} after {attempts} conflicting attempts")]
    TooManyConflicts { subject: String, attempts: u32 },
}

impl JournalError {
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Conflict { .. })
    }
}

pub type Result<T, E = JournalError> = std::result::Result<T, E>;

/// JetStream error codes that answer a conditional publish whose expected last sequence
/// is not the subject's: 10071 (`wrong last sequence: <seq>`, the stored sequence differs)
/// and 10164 (`wrong last sequence`, the stream leader refused it because another write
/// of the subject is in flight, as replicated streams do). Both mean someone else wrote
/// first: re-read, re-validate, retry. 10163 (`expected last sequence per subject
/// temporarily unavailable`) is not one: the leader cannot check yet, so the write is
/// simply retried later.
pub const CONFLICT_CODES: [u64; 2] = [10071, 10164];

/// Whether a publish failure is a conflict: by the server's error code, never by text.
pub fn is_conflict_error(error: &jetstream::context::PublishError) -> bool {
    if error.kind() == PublishErrorKind::WrongLastSequence {
        return true;
    }
    std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<jetstream::Error>())
        .is_some_and(|e| CONFLICT_CODES.contains(&e.error_code().0))
}

/// A record with its version (the stream sequence of the message that holds it).
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    pub value: T,
    pub version: u64,
}

/// The one outcome of a command, as recorded.
#[derive(Debug)]
pub struct RecordedOutcome {
    pub outcome: Outcome,
    /// Its record in `BERTH_OUTCOME`.
    pub encoded: Bytes,
    /// False when another processor had recorded the outcome first (it is returned).
    pub recorded_here: bool,
}

/// Connection settings shared by every Berth process.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// One or more server URLs (comma separated in flags and env).
    pub servers: Vec<String>,
    pub streams: StreamOptions,
    /// Bound on every JetStream API call and publish acknowledgement.
    pub request_timeout: Duration,
    /// Connection name shown by the server (`nats server report connections`).
    pub name: String,
    /// Spread of the random delay added to every reconnection attempt (see
    /// [`reconnect_delay`]): short for the control plane, which must be back at once;
    /// longer for agents, thousands of which lose their server together.
    pub reconnect_jitter: Duration,
}

/// [`JournalConfig::reconnect_jitter`] unless a process says otherwise.
pub const DEFAULT_RECONNECT_JITTER: Duration = Duration::from_millis(100);

/// Delay before reconnection attempt `attempts` (from 1): none for the first, then
/// doubling from 2 ms to 4 s as async-nats does, each scaled by a random half to whole and
/// with up to `jitter` added, so that clients that lost their server together do not come
/// back in step.
pub fn reconnect_delay(attempts: usize, jitter: Duration) -> Duration {
    let base = if attempts <= 1 {
        Duration::ZERO
    } else {
        let doublings = u32::try_from(attempts - 1).unwrap_or(u32::MAX).min(12);
        Duration::from_millis(1u64 << doublings).min(Duration::from_secs(4))
    };
    base.mul_f64(0.5 + rand::random::<f64>() * 0.5) + jitter.mul_f64(rand::random::<f64>())
}

impl Default for JournalConfig {
    fn default() -> Self {
        Self {
            servers: vec!["nats://127.0.0.1:4222".into()],
            streams: StreamOptions::default(),
            request_timeout: Duration::from_secs(10),
            name: "berth".into(),
            reconnect_jitter: DEFAULT_RECONNECT_JITTER,
        }
    }
}

/// Handle on the journal: cheap to clone, shared by every actor of a process.
#[derive(Clone)]
pub struct Journal {
    client: async_nats::Client,
    js: Context,
    /// Moves on every reconnection and stream leader election (see [`Journal::write`]).
    elections: tokio::sync::watch::Receiver<u64>,
    state: stream::Stream<()>,
    outcomes: stream::Stream<()>,
}

/// Turns a client-independent [`StreamSpec`] into a server stream configuration.
pub fn stream_config(spec: &StreamSpec) -> stream::Config {
    stream::Config {
        name: spec.name.to_string(),
        subjects: spec.subjects.clone(),
        storage: stream::StorageType::File,
        retention: match spec.retention {
            Retention::Limits => stream::RetentionPolicy::Limits,
            Retention::WorkQueue => stream::RetentionPolicy::WorkQueue,
        },
        max_messages_per_subject: spec.max_msgs_per_subject,
        max_age: spec.max_age,
        duplicate_window: spec.duplicate_window,
        allow_direct: spec.allow_direct,
        num_replicas: spec.replicas,
        max_consumers: i32::try_from(spec.max_consumers).unwrap_or(i32::MAX),
        republish: spec
            .republish
            .map(|(source, destination)| stream::Republish {
                source: source.to_string(),
                destination: destination.to_string(),
                headers_only: false,
            }),
        ..Default::default()
    }
}

/// Connects to NATS with Berth's client settings.
pub async fn connect(config: &JournalConfig) -> Result<async_nats::Client> {
    client_options(config)
        .connect(server_addrs(&config.servers)?)
        .await
        .map_err(|e| JournalError::Connect(e.to_string()))
}

fn server_addrs(servers: &[String]) -> Result<Vec<async_nats::ServerAddr>> {
    servers
        .iter()
        .map(|s| s.parse::<async_nats::ServerAddr>())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| JournalError::Connect(e.to_string()))
}

fn client_options(config: &JournalConfig) -> async_nats::ConnectOptions {
    // async-nats asks for the delay of the very first connection too (as attempt 1):
    // jitter is for coming back after a loss, not for starting.
    let connected_once = Arc::new(AtomicBool::new(false));
    let seen = connected_once.clone();
    let jitter = config.reconnect_jitter;
    async_nats::ConnectOptions::new()
        .name(&config.name)
        .reconnect_delay_callback(move |attempts| {
            let jitter = if seen.load(Ordering::Relaxed) {
                jitter
            } else {
                Duration::ZERO
            };
            reconnect_delay(attempts, jitter)
        })
        .request_timeout(Some(config.request_timeout))
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .event_callback(move |event| {
            let connected_once = connected_once.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        connected_once.store(true, Ordering::Relaxed);
                        tracing::info!("connected to NATS")
                    }
                    async_nats::Event::Disconnected => {
                        tracing::warn!("disconnected from NATS; reconnecting")
                    }
                    other => tracing::info!(event = %other, "NATS connection event"),
                }
            }
        })
}

/// [`connect`], then, on a cluster where `stream` exists, to the server that leads it
/// (see [`leader_first`]); stays on the first connection if that fails.
pub async fn connect_near(config: &JournalConfig, stream: &str) -> Result<async_nats::Client> {
    let client = connect(config).await?;
    Ok(near_leader(config, &client, stream).await.unwrap_or(client))
}

/// A new connection with the server that leads `stream` first, when [`leader_first`]
/// finds one other than `client`'s and it can be reached.
async fn near_leader(
    config: &JournalConfig,
    client: &async_nats::Client,
    stream: &str,
) -> Option<async_nats::Client> {
    let addrs = leader_first(client, &config.servers, stream).await?;
    let leader = format!("{}:{}", addrs[0].host(), addrs[0].port());
    let connected = client_options(config)
        .retain_servers_order()
        .connect(addrs)
        .await;
    match connected {
        Ok(near) => {
            tracing::info!(stream, server = %leader, "connected to the server that leads the stream");
            Some(near)
        }
        Err(error) => {
            tracing::warn!(%error, stream, "cannot connect to the stream's leader; staying where connected");
            None
        }
    }
}

/// With several servers configured (a cluster), the configured servers with the one that
/// leads `stream` first: that server stores the stream's writes first and serves its
/// single-replica consumers, so a client connected elsewhere pays a route hop each way
/// for every write, acknowledgement and delivery. `None` when the client is already
/// there, or the stream, its leader or the leader's address is unknown.
pub async fn leader_first(
    client: &async_nats::Client,
    servers: &[String],
    stream: &str,
) -> Option<Vec<async_nats::ServerAddr>> {
    if servers.len() < 2 {
        return None;
    }
    let info = async {
        jetstream::new(client.clone())
            .get_stream(stream)
            .await
            .ok()?
            .info()
            .await
            .ok()
            .map(|info| info.cluster.as_ref()?.leader.clone())
    };
    // Only an optimisation: not worth waiting for a stream that has no leader yet.
    let leader = tokio::time::timeout(recovery::ATTEMPT_TIMEOUT, info)
        .await
        .ok()??;
    let leader = leader?;
    if client.server_info().server_name == leader {
        return None;
    }
    let mut addrs = server_addrs(servers).ok()?;
    for i in 0..addrs.len() {
        let probe = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .connect(addrs[i].clone())
            .await;
        if probe.is_ok_and(|probe| probe.server_info().server_name == leader) {
            addrs.swap(0, i);
            return Some(addrs);
        }
    }
    None
}

/// A new connection made with `options`, trying the server that leads `stream` first,
/// when [`leader_first`] finds one other than `client`'s (`None` otherwise).
pub async fn connect_leader_first(
    client: &async_nats::Client,
    servers: &[String],
    stream: &str,
    options: async_nats::ConnectOptions,
) -> Option<std::result::Result<async_nats::Client, async_nats::ConnectError>> {
    let addrs = leader_first(client, servers, stream).await?;
    Some(options.retain_servers_order().connect(addrs).await)
}

impl Journal {
    /// Connects and provisions the streams (idempotent: existing streams are updated to
    /// the contract's settings). On a cluster the journal's client then connects to the
    /// server that leads `BERTH_STATE` (see [`leader_first`]).
    pub async fn open(config: &JournalConfig) -> Result<Self> {
        let journal = Self::with_client(connect(config).await?, config).await?;
        match near_leader(config, journal.client(), streams::STATE).await {
            Some(client) => Self::provisioned(client, config).await,
            None => Ok(journal),
        }
    }

    /// Provisions the streams on an existing connection and returns a handle.
    pub async fn with_client(client: async_nats::Client, config: &JournalConfig) -> Result<Self> {
        let js = jetstream::ContextBuilder::new()
            .timeout(config.request_timeout)
            .build(client.clone());
        provision(&js, &config.streams).await?;
        Self::provisioned(client, config).await
    }

    /// A handle on streams already provisioned.
    async fn provisioned(client: async_nats::Client, config: &JournalConfig) -> Result<Self> {
        let js = jetstream::ContextBuilder::new()
            .timeout(config.request_timeout)
            .build(client.clone());
        let get = |name: &'static str| {
            let js = js.clone();
            async move {
                js.get_stream_no_info(name)
                    .await
                    .map_err(|e| JournalError::Provision {
                        stream: name.into(),
                        reason: e.to_string(),
                    })
            }
        };
        let state = get(streams::STATE).await?;
        let outcomes = get(streams::OUTCOME).await?;
        let elections = recovery::LeaderSignals::counted(&client).await;
        Ok(Self {
            client,
            js,
            elections,
            state,
            outcomes,
        })
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Short attempts within the request timeout, for reads that a leader change may lose.
    fn read_patience(&self) -> Patience {
        let slowest = js_timeout(&self.js);
        Patience {
            give_up_after: Some(slowest),
            ..Patience::start(slowest, slowest)
        }
    }

    /// Signals of this journal's client: its reconnections and every stream's leader
    /// elections from now on (see [`recovery::LeaderSignals`]).
    pub fn leader_signals(&self) -> recovery::LeaderSignals {
        recovery::LeaderSignals::from_count(self.elections.clone())
    }

    pub fn jetstream(&self) -> &Context {
        &self.js
    }

    /// Conditional write of a record: succeeds only if the subject's last sequence is
    /// still `expected` (0: the subject must be empty). Returns the new version.
    pub async fn write<T: Serialize>(
        &self,
        subject: &str,
        record: &T,
        expected: u64,
        command_id: &str,
    ) -> Result<u64> {
        let payload = codec::encode_record(record)?;
        self.write_bytes(subject, payload.into(), expected, command_id)
            .await
    }

    /// [`Journal::write`] of an already encoded record.
    pub async fn write_bytes(
        &self,
        subject: &str,
        payload: Bytes,
        expected: u64,
        command_id: &str,
    ) -> Result<u64> {
        self.publish_checked(subject, payload, expected, None, command_id)
            .await
    }

    /// Creates a record on `subject` only if no subject matching `unique` holds one: the
    /// server checks the last sequence over the whole filter (the
    /// `Nats-Expected-Last-Subject-Sequence-Subject` header), so one entity that may live
    /// under several subjects (a task under any instance) is created once. A
    /// [`JournalError::Conflict`] means it exists; [`Journal::read_last_matching`] finds it.
    pub async fn create_unique<T: Serialize>(
        &self,
        subject: &str,
        unique: &str,
        record: &T,
        command_id: &str,
    ) -> Result<u64> {
        let payload = codec::encode_record(record)?;
        self.publish_checked(subject, payload.into(), 0, Some(unique), command_id)
            .await
    }

    async fn publish_checked(
        &self,
        subject: &str,
        payload: Bytes,
        expected: u64,
        check_subject: Option<&str>,
        command_id: &str,
    ) -> Result<u64> {
        let publish = || {
            let publish = jetstream::message::PublishMessage::build()
                .payload(payload.clone())
                .expected_last_subject_sequence(expected)
                .header(headers::COMMAND_ID, command_id);
            match check_subject {
                Some(check) => {
                    publish.header(headers::EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT, check)
                }
                None => publish,
            }
        };
        let ack = self
            .publish_when_led(subject, publish)
            .await
            .map_err(|e| publish_error(subject, expected, &e))?;
        Ok(ack.sequence)
    }

    /// Publishes and waits for the stream's acknowledgement (each for up to the request
    /// timeout; copies are published again only within it).
    /// While a stream elects a leader a publish is either refused at once with "no
    /// responders" (`StreamNotFound`: no server listens on the subject, nothing was stored)
    /// or reaches a follower that drops it and never answers. The first (and a copy whose
    /// `Nats-Msg-Id` is still being stored, see [`not_stored_yet`]) is published
    /// again after a short pause (50 ms doubling to 250 ms), the second as soon as a
    /// leader is elected or the client reconnects, instead of failing the command and
    /// leaving it to a redelivery seconds later. A copy that did land makes the next one
    /// a conflict, which writers already handle by reading the subject again.
    async fn publish_when_led(
        &self,
        subject: &str,
        publish: impl Fn() -> jetstream::message::PublishMessage,
    ) -> std::result::Result<jetstream::publish::PublishAck, jetstream::context::PublishError> {
        let give_up = tokio::time::Instant::now() + js_timeout(&self.js);
        let mut elections = self.elections.clone();
        let mut pause = Duration::from_millis(50);
        // Once a leader was elected or the stream did not answer, this write is part of a
        // recovery: a publish sent in the instant a leader is elected can be lost without
        // an answer, so its acknowledgement is waited for with the short attempts of a
        // recovery and the write published again after each (a copy that did land makes
        // the next one a conflict, which the writer resolves by reading the subject).
        let mut recovery_attempts = None::<u32>;
        loop {
            elections.borrow_and_update();
            let ack = self.js.send_publish(subject.to_string(), publish()).await?;
            // The acknowledgement's own bound is the request timeout.
            let mut ack = std::pin::pin!(std::future::IntoFuture::into_future(ack));
            // Outside a recovery the acknowledgement's own bound is all there is: no timer
            // of its own on the normal path.
            let short_wait =
                recovery_attempts.map(|a| recovery::Patience::failover().timeout_of(a));
            let gave_up_waiting = async {
                match short_wait {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => std::future::pending().await,
                }
            };
            let result = tokio::select! {
                result = &mut ack => result,
                () = gave_up_waiting => {
                    if tokio::time::Instant::now() < give_up {
                        tracing::debug!(subject, ?short_wait, "no acknowledgement during a recovery; publishing again");
                        recovery_attempts = recovery_attempts.map(|a| a + 1);
                        continue;
                    }
                    ack.await
                }
                changed = elections.changed() => {
                    if changed.is_ok() && tokio::time::Instant::now() < give_up {
                        tracing::debug!(subject, "a leader was elected; publishing again");
                        recovery_attempts = Some(1);
                        continue;
                    }
                    ack.await
                }
            };
            match result {
                Err(e) if not_stored_yet(&e) && tokio::time::Instant::now() + pause < give_up => {
                    tracing::debug!(subject, error = %e, "not stored yet; publishing again");
                    recovery_attempts.get_or_insert(1);
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(250));
                }
                other => return other,
            }
        }
    }

    /// The conditional write of [`Journal::write_bytes`] published without a reply
    /// subject: the server applies the same check but answers nothing, so the writer learns
    /// the outcome from the view ([`crate::landing`]) or by reading the subject back.
    /// `unique`, when given, extends the check to every subject it matches (see
    /// [`Journal::create_unique`]).
    pub async fn publish_unacknowledged(
        &self,
        subject: &str,
        payload: Bytes,
        expected: u64,
        unique: Option<&str>,
        command_id: &str,
    ) -> Result<()> {
        let mut headers = HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            expected.to_string().as_str(),
        );
        if let Some(check) = unique {
            headers.insert(headers::EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT, check);
        }
        headers.insert(headers::COMMAND_ID, command_id);
        self.client
            .publish_with_headers(subject.to_string(), headers, payload)
            .await
            .map_err(|e| JournalError::Publish {
                subject: subject.to_string(),
                reason: e.to_string(),
            })
    }

    /// The latest record on a journal subject, by direct get (any replica may answer;
    /// a stale answer is caught by the conditional write that follows).
    pub async fn read<T: DeserializeOwned>(&self, subject: &str) -> Result<Option<Versioned<T>>> {
        match self.read_raw(subject).await? {
            None => Ok(None),
            Some((payload, version, _)) => codec::decode_record(&payload)
                .map(|value| Some(Versioned { value, version }))
                .map_err(|source| JournalError::Decode {
                    subject: subject.to_string(),
                    source,
                }),
        }
    }

    /// The latest record on any subject matching `filter` (which may hold wildcards), with
    /// the subject it is on. Asked of the stream leader (direct gets take no wildcards); for
    /// the rare reads after a refused [`Journal::create_unique`].
    pub async fn read_last_matching<T: DeserializeOwned>(
        &self,
        filter: &str,
    ) -> Result<Option<(String, Versioned<T>)>> {
        use async_nats::jetstream::stream::RawMessageErrorKind;
        match self
            .state
            .raw_message_builder()
            .last_by_subject(filter)
            .send()
            .await
        {
            Ok(msg) => codec::decode_record(&msg.payload)
                .map(|value| {
                    Some((
                        msg.subject.to_string(),
                        Versioned {
                            value,
                            version: msg.sequence,
                        },
                    ))
                })
                .map_err(|source| JournalError::Decode {
                    subject: msg.subject.to_string(),
                    source,
                }),
            Err(e) if matches!(e.kind(), RawMessageErrorKind::NoMessageFound) => Ok(None),
            Err(e) => Err(JournalError::Read {
                subject: filter.to_string(),
                reason: e.to_string(),
            }),
        }
    }

    /// Latest payload, version and causing command id on a journal subject.
    pub async fn read_raw(&self, subject: &str) -> Result<Option<(Bytes, u64, Option<String>)>> {
        direct_last(&self.state, subject, self).await
    }

    /// Read, modify, conditionally write; on conflict re-read and re-apply, up to
    /// `attempts` times. `change` sees the current record (if any) and returns the new
    /// one, `None` to write nothing, or an error to give up.
    pub async fn update<T, E, F>(
        &self,
        subject: &str,
        command_id: &str,
        attempts: u32,
        mut change: F,
    ) -> std::result::Result<Option<Versioned<T>>, UpdateError<E>>
    where
        T: Serialize + DeserializeOwned,
        F: FnMut(Option<Versioned<T>>) -> std::result::Result<Option<T>, E>,
    {
        for _ in 0..attempts {
            let current: Option<Versioned<T>> = self.read(subject).await?;
            let expected = current.as_ref().map_or(0, |c| c.version);
            let Some(next) = change(current).map_err(UpdateError::Rejected)? else {
                return Ok(None);
            };
            match self.write(subject, &next, expected, command_id).await {
                Ok(version) => {
                    return Ok(Some(Versioned {
                        value: next,
                        version,
                    }))
                }
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(JournalError::TooManyConflicts {
            subject: subject.to_string(),
            attempts,
        }
        .into())
    }

    /// Removes every record of one journal subject (used only for tombstones older than
    /// their retention window).
    pub async fn purge_subject(&self, subject: &str) -> Result<u64> {
        self.state
            .purge()
            .filter(subject)
            .await
            .map(|r| r.purged)
            .map_err(|e| JournalError::Publish {
                subject: subject.to_string(),
                reason: e.to_string(),
            })
    }

    /// The outcome recorded for a command, if any.
    pub async fn read_outcome(&self, command_id: &str) -> Result<Option<Outcome>> {
        Ok(self
            .read_outcome_encoded(command_id)
            .await?
            .map(|(outcome, _)| outcome))
    }

    /// A command's outcome with its encoded record, if it has one.
    pub async fn read_outcome_encoded(&self, command_id: &str) -> Result<Option<(Outcome, Bytes)>> {
        let subject = subjects::outcome(command_id);
        match direct_last(&self.outcomes, &subject, self).await? {
            None => Ok(None),
            Some((payload, _, _)) => codec::decode_record(&payload)
                .map(|outcome| Some((outcome, payload)))
                .map_err(|source| JournalError::Decode { subject, source }),
        }
    }

    /// Records a command's outcome exactly once and returns it with its encoded record. If
    /// another processor recorded one first, that one is returned instead and stays the
    /// only outcome.
    pub async fn record_outcome(&self, outcome: Outcome) -> Result<(Outcome, Bytes)> {
        let capacity = match &outcome.response {
            Some(CommandResponse::Tasks(tasks)) => tasks.expected_size(),
            _ => 2048,
        };
        let payload = codec::encode_sized(codec::Encoding::MsgPack, &outcome, capacity)?;
        let recorded = self.record_encoded(outcome, payload.into()).await?;
        Ok((recorded.outcome, recorded.encoded))
    }

    /// [`Journal::record_outcome`] with the response's body already encoded as named
    /// MessagePack (it is copied into the record, not encoded again); says whether this
    /// call recorded it, so that the caller can reuse the body only then.
    pub async fn record_outcome_with_body(
        &self,
        outcome: Outcome,
        body: &[u8],
    ) -> Result<RecordedOutcome> {
        let payload = outcome.encode_record_with_body(body)?;
        self.record_encoded(outcome, payload.into()).await
    }

    async fn record_encoded(&self, outcome: Outcome, payload: Bytes) -> Result<RecordedOutcome> {
        let subject = subjects::outcome(&outcome.command_id);
        let publish = || {
            jetstream::message::PublishMessage::build()
                .payload(payload.clone())
                .expected_last_subject_sequence(0)
                .message_id(format!("outcome-{}", outcome.command_id))
                .header(headers::COMMAND_ID, outcome.command_id.as_str())
        };
        let result = self.publish_when_led(&subject, publish).await.map(|_| ());
        match result {
            Ok(()) => Ok(RecordedOutcome {
                outcome,
                encoded: payload,
                recorded_here: true,
            }),
            Err(e) if is_conflict_error(&e) => {
                let (outcome, encoded) = Box::pin(self.read_outcome_encoded(&outcome.command_id))
                    .await?
                    .ok_or_else(|| JournalError::Read {
                        subject,
                        reason: "outcome conflict but no outcome found".into(),
                    })?;
                Ok(RecordedOutcome {
                    outcome,
                    encoded,
                    recorded_here: false,
                })
            }
            Err(e) => Err(publish_error(&subject, 0, &e)),
        }
    }

    /// Last sequence of `BERTH_STATE` (what a view must reach to have read everything
    /// written so far).
    pub async fn state_last_sequence(&self) -> Result<u64> {
        // Short attempts: one sent while the stream elects a leader is never answered.
        let mut signals = self.leader_signals();
        let failed = |e: &dyn std::fmt::Display| JournalError::Read {
            subject: streams::STATE.into(),
            reason: e.to_string(),
        };
        let info = retry(
            streams::STATE,
            self.read_patience(),
            Some(&mut signals),
            || async {
                let mut stream = self
                    .js
                    .get_stream(streams::STATE)
                    .await
                    .map_err(|e| failed(&e))?;
                stream
                    .info()
                    .await
                    .map(|info| info.state.last_sequence)
                    .map_err(|e| failed(&e))
            },
        )
        .await;
        info.map_err(|e| JournalError::Read {
            subject: streams::STATE.into(),
            reason: error_chain(&e),
        })
    }
}

/// Errors of [`Journal::update`]: the journal's, or the change's own refusal.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError<E> {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("change rejected")]
    Rejected(E),
}

/// Creates or updates every stream of the contract, all at once. A 3-node cluster may not
/// have a meta leader yet right after start, and a request sent before it has one is never
/// answered, so each call is retried after a short timeout (see [`recovery::retry`]) for up
/// to [`START_PATIENCE`].
pub async fn provision(js: &Context, opts: &StreamOptions) -> Result<()> {
    let slowest = js_timeout(js);
    let creations = streams::all(opts).into_iter().map(|spec| async move {
        let config = stream_config(&spec);
        retry(
            &format!("provisioning {}", spec.name),
            Patience::start(slowest, START_PATIENCE),
            None,
            || js.create_or_update_stream(config.clone()),
        )
        .await
        .map(|info| warn_if_consumers_near_limit(spec.name, &info))
        .map_err(|e| JournalError::Provision {
            stream: spec.name.into(),
            reason: error_chain(&e),
        })
    });
    futures::future::try_join_all(creations).await?;
    Ok(())
}

/// Warns when a stream holds nearly as many consumers as it accepts: past the limit, the
/// next agent cannot follow its tasks (`--max-consumers` raises it).
fn warn_if_consumers_near_limit(stream: &str, info: &stream::Info) {
    let max = i64::from(info.config.max_consumers);
    if streams::consumers_near_limit(info.state.consumer_count, max) {
        tracing::warn!(
            stream,
            consumers = info.state.consumer_count,
            max_consumers = max,
            "the stream holds nearly as many consumers as it accepts; raise --max-consumers"
        );
    } else {
        tracing::debug!(
            stream,
            consumers = info.state.consumer_count,
            max_consumers = max,
            "stream provisioned"
        );
    }
}

/// The request timeout a JetStream context was built with.
pub(crate) fn js_timeout(js: &Context) -> Duration {
    use async_nats::jetstream::context::traits::TimeoutProvider;
    js.timeout()
}

/// The last message on `subject`, by direct get. Any current replica answers; a request
/// that reached none (during a leader change) is never answered, so attempts are short
/// and retried at once when a leader is elected, within the request timeout in all (see
/// [`recovery::retry`]).
async fn direct_last(
    stream: &stream::Stream<()>,
    subject: &str,
    journal: &Journal,
) -> Result<Option<(Bytes, u64, Option<String>)>> {
    use async_nats::jetstream::stream::DirectGetErrorKind;
    let mut signals = journal.leader_signals();
    let found = retry(
        subject,
        journal.read_patience(),
        Some(&mut signals),
        || async {
            match stream.direct_get_last_for_subject(subject).await {
                Ok(msg) => Ok(Some(msg)),
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            }
        },
    )
    .await
    .map_err(|e| JournalError::Read {
        subject: subject.to_string(),
        reason: error_chain(&e),
    })?;
    Ok(found.map(|msg| {
        let command = command_id_of(&msg.headers);
        (msg.payload, msg.sequence, command)
    }))
}

/// JetStream's "a message with this id is being stored" (a copy published again while
/// the first is still being replicated).
const DUPLICATE_IN_PROCESS: u64 = 10158;

/// Publish failures after which the same message is published again after a short pause:
/// no stream listens on the subject (nothing was stored), or a copy with the same
/// `Nats-Msg-Id` is still being stored (the next one is answered as its duplicate).
pub fn not_stored_yet(error: &jetstream::context::PublishError) -> bool {
    use std::error::Error;
    match error.kind() {
        PublishErrorKind::StreamNotFound => true,
        PublishErrorKind::Other => error
            .source()
            .and_then(|s| s.downcast_ref::<jetstream::Error>())
            .is_some_and(|e| e.error_code().0 == DUPLICATE_IN_PROCESS),
        _ => false,
    }
}

/// The `Berth-Command-Id` header of a journal message.
pub fn command_id_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get(headers::COMMAND_ID)
        .map(|v| v.as_str().to_string())
}

fn publish_error(
    subject: &str,
    expected: u64,
    e: &jetstream::context::PublishError,
) -> JournalError {
    if is_conflict_error(e) {
        JournalError::Conflict {
            subject: subject.to_string(),
            expected,
        }
    } else {
        JournalError::Publish {
            subject: subject.to_string(),
            reason: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnections_back_off_with_jitter_within_bounds() {
        let jitter = Duration::from_millis(500);
        for _ in 0..100 {
            assert!(reconnect_delay(1, jitter) <= jitter);
            let third = reconnect_delay(3, jitter);
            assert!(third >= Duration::from_millis(2) && third <= Duration::from_millis(504));
            let late = reconnect_delay(60, jitter);
            assert!(late >= Duration::from_secs(2) && late <= Duration::from_millis(4500));
        }
        assert_eq!(reconnect_delay(1, Duration::ZERO), Duration::ZERO);
    }
}

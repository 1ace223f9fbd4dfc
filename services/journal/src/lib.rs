//! Berth's journal on NATS JetStream. It owns the three streams (`BERTH_STATE`,
//! `BERTH_CMD`, `BERTH_OUTCOME`), their idempotent provisioning, the conditional write
//! (a publish with `Nats-Expected-Last-Subject-Sequence`, conflicts recognised by error
//! kind, never by text), direct reads of an entity's latest record, command outcomes,
//! and the in-memory [`view::View`] of the whole state.
//!
//! An entity's version is the stream sequence of its last record; every write names the
//! version it read (0 to create), so a write on a stale read is refused with
//! [`JournalError::Conflict`] and the writer re-reads and re-validates.

mod compact;
mod keys;
pub mod landing;
pub mod view;

use async_nats::jetstream::{self, context::PublishErrorKind, stream, Context};
use async_nats::HeaderMap;
use berth_messages::codec;
use berth_messages::command::{CommandResponse, Outcome};
use berth_messages::headers;
use berth_messages::streams::{self, Retention, StreamOptions, StreamSpec};
use berth_messages::subjects;
use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};
use std::time::Duration;

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
}

impl Default for JournalConfig {
    fn default() -> Self {
        Self {
            servers: vec!["nats://127.0.0.1:4222".into()],
            streams: StreamOptions::default(),
            request_timeout: Duration::from_secs(10),
            name: "berth".into(),
        }
    }
}

/// Handle on the journal: cheap to clone, shared by every actor of a process.
#[derive(Clone)]
pub struct Journal {
    client: async_nats::Client,
    js: Context,
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
    async_nats::ConnectOptions::new()
        .name(&config.name)
        .request_timeout(Some(config.request_timeout))
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
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
    let mut handle = jetstream::new(client.clone())
        .get_stream(stream)
        .await
        .ok()?;
    let leader = handle.info().await.ok()?.cluster.as_ref()?.leader.clone()?;
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
            Some(client) => Self::with_client(client, config).await,
            None => Ok(journal),
        }
    }

    /// Provisions the streams on an existing connection and returns a handle.
    pub async fn with_client(client: async_nats::Client, config: &JournalConfig) -> Result<Self> {
        let js = jetstream::ContextBuilder::new()
            .timeout(config.request_timeout)
            .build(client.clone());
        provision(&js, &config.streams).await?;
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
        Ok(Self {
            client,
            js,
            state,
            outcomes,
        })
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
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
        let mut publish = jetstream::message::PublishMessage::build()
            .payload(payload)
            .expected_last_subject_sequence(expected)
            .header(headers::COMMAND_ID, command_id);
        if let Some(check) = check_subject {
            publish = publish.header(headers::EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT, check);
        }
        let ack = self
            .js
            .send_publish(subject.to_string(), publish)
            .await
            .map_err(|e| publish_error(subject, expected, &e))?;
        let ack = ack
            .await
            .map_err(|e| publish_error(subject, expected, &e))?;
        Ok(ack.sequence)
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
        direct_last(&self.state, subject).await
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
        match direct_last(&self.outcomes, &subject).await? {
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
        let publish = jetstream::message::PublishMessage::build()
            .payload(payload.clone())
            .expected_last_subject_sequence(0)
            .message_id(format!("outcome-{}", outcome.command_id))
            .header(headers::COMMAND_ID, outcome.command_id.as_str());
        let result = match self.js.send_publish(subject.clone(), publish).await {
            Ok(ack) => ack.await.map(|_| ()),
            Err(e) => Err(e),
        };
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
        let mut s = self
            .js
            .get_stream(streams::STATE)
            .await
            .map_err(|e| JournalError::Read {
                subject: streams::STATE.into(),
                reason: e.to_string(),
            })?;
        let info = s.info().await.map_err(|e| JournalError::Read {
            subject: streams::STATE.into(),
            reason: e.to_string(),
        })?;
        Ok(info.state.last_sequence)
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

/// Creates or updates every stream of the contract. A 3-node cluster may not have a
/// meta leader yet right after start, so this retries for a while.
pub async fn provision(js: &Context, opts: &StreamOptions) -> Result<()> {
    for spec in streams::all(opts) {
        let config = stream_config(&spec);
        let mut last_error = String::new();
        let mut done = false;
        for attempt in 0..40u32 {
            match js.create_or_update_stream(config.clone()).await {
                Ok(_) => {
                    done = true;
                    break;
                }
                Err(e) => {
                    last_error = e.to_string();
                    tracing::debug!(stream = spec.name, attempt, error = %e, "stream not provisioned yet");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
        if !done {
            return Err(JournalError::Provision {
                stream: spec.name.into(),
                reason: last_error,
            });
        }
    }
    Ok(())
}

async fn direct_last(
    stream: &stream::Stream<()>,
    subject: &str,
) -> Result<Option<(Bytes, u64, Option<String>)>> {
    use async_nats::jetstream::stream::DirectGetErrorKind;
    match stream.direct_get_last_for_subject(subject).await {
        Ok(msg) => {
            let command = command_id_of(&msg.headers);
            Ok(Some((msg.payload, msg.sequence, command)))
        }
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
        Err(e) => Err(JournalError::Read {
            subject: subject.to_string(),
            reason: e.to_string(),
        }),
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

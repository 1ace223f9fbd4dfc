//! Plays the tasks of every hollow instance with shared machinery: ONE ordered consumer on
//! the cluster's task records (last record per subject, then live) routes each record to
//! its instance's [`TaskBook`]; ONE timer heap serves every start delay and run time; and
//! reports go out through a pool of at most [`REPORTS_IN_FLIGHT`] requests, each retried
//! with backoff until acknowledged. The books live in a single task that owns them, so
//! there are no locks on the hot path.

use crate::api;
use crate::fleet::Fleet;
use crate::play::PlayedTask;
use crate::play::{Effect, Script, TaskBook, Wake};
use async_nats::jetstream::{
    self,
    consumer::{pull, DeliverPolicy},
};
use berth_journal::recovery::{retry, LeaderSignals, Patience};
use berth_messages::api::{AcknowledgmentResponse, SubmitTaskStateChangeRequest};
use berth_messages::command::Action;
use berth_messages::model::TaskStatus;
use berth_messages::subjects::{self, StateKey};
use berth_messages::{codec, streams};
use futures::StreamExt;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// State-change reports in flight at once.
/// Default reports in flight for a whole sim.
pub const REPORTS_IN_FLIGHT: usize = 128;
/// Longest pull request of the task consumer.
const PULL_EXPIRY: Duration = Duration::from_secs(5);
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Events queued for the engine before the follower waits.
const EVENT_QUEUE: usize = 4096;

/// Something that happened to one task of one instance.
#[derive(Debug)]
enum Event {
    Record {
        slot: usize,
        task_id: String,
        task: Box<PlayedTask>,
    },
    Acknowledged {
        slot: usize,
        task_id: String,
        status: TaskStatus,
    },
    Refused {
        slot: usize,
        task_id: String,
    },
}

struct Job {
    slot: usize,
    task_id: String,
    request: Box<SubmitTaskStateChangeRequest>,
}

/// The task consumer, created before the sim reports ready so that nothing placed from
/// then on is missed.
pub struct Follower {
    stream: jetstream::stream::Stream,
    messages: pull::Ordered,
    filter: String,
}

impl Follower {
    pub async fn create(js: &jetstream::Context, cluster: &str) -> Result<Follower, String> {
        let stream = js
            .get_stream(streams::STATE)
            .await
            .map_err(|e| format!("cannot find stream {}: {e}", streams::STATE))?;
        // Every task subject of the cluster: `berth.state.<cluster>.task.<instance>.<task>`.
        let filter = subjects::tasks_of_instance(cluster, "*");
        let messages = ordered(&stream, &filter, DeliverPolicy::LastPerSubject)
            .await
            .map_err(|e| berth_journal::error_chain(&e))?;
        Ok(Follower {
            stream,
            messages,
            filter,
        })
    }
}

/// Why the task consumer could not be (re)created.
#[derive(Debug, thiserror::Error)]
enum ConsumerError {
    #[error("cannot create the task consumer")]
    Create(#[source] jetstream::stream::ConsumerError),
    #[error("cannot consume task records")]
    Consume(#[source] jetstream::consumer::StreamError),
}

async fn ordered(
    stream: &jetstream::stream::Stream,
    filter: &str,
    deliver_policy: DeliverPolicy,
) -> Result<pull::Ordered, ConsumerError> {
    stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: filter.to_string(),
            deliver_policy,
            max_expires: PULL_EXPIRY,
            ..Default::default()
        })
        .await
        .map_err(ConsumerError::Create)?
        .messages()
        .await
        .map_err(ConsumerError::Consume)
}

/// Starts the follower, the engine and the report pool on `tasks`.
pub fn spawn(
    tasks: &mut JoinSet<()>,
    client: async_nats::Client,
    fleet: Arc<Fleet>,
    script: Script,
    follower: Follower,
    reports_in_flight: usize,
) {
    let slot_of: HashMap<String, usize> = fleet
        .slots
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.identity.get().map(|id| (id.instance_id.clone(), i)))
        .collect();
    let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
    let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
    tasks.spawn(follow(
        client.clone(),
        fleet.cluster.clone(),
        slot_of,
        follower,
        events_tx.clone(),
    ));
    tasks.spawn(play(fleet, script, events_rx, jobs_tx));
    tasks.spawn(report(client, jobs_rx, events_tx, reports_in_flight));
}

/// Routes every task record of our instances to the engine; recreates the consumer after
/// a failure or a reconnection, resuming after the last record seen.
async fn follow(
    client: async_nats::Client,
    cluster: String,
    slot_of: HashMap<String, usize>,
    follower: Follower,
    events: mpsc::Sender<Event>,
) {
    let Follower {
        stream,
        mut messages,
        filter,
    } = follower;
    // A consumer lost with its server is recreated as soon as the client reconnects or
    // the stream elects a leader, with short attempts (see berth_journal::recovery).
    let mut signals = LeaderSignals::for_stream(&client, streams::STATE).await;
    let mut last_seen: Option<u64> = None;
    let mut backoff = MIN_BACKOFF;
    loop {
        let failed = loop {
            tokio::select! {
                next = messages.next() => match next {
                    Some(Ok(message)) => {
                        if let Ok(info) = message.info() {
                            last_seen = Some(info.stream_sequence);
                        }
                        backoff = MIN_BACKOFF;
                        let Some(event) = route(&cluster, &slot_of, &message.subject, &message.payload) else {
                            continue;
                        };
                        if events.send(event).await.is_err() {
                            return;
                        }
                    }
                    Some(Err(error)) => {
                        tracing::warn!(%error, "task consumer failed; recreating it");
                        break true;
                    }
                    None => {
                        tracing::warn!("task consumer ended; recreating it");
                        break true;
                    }
                },
                signal = signals.next() => {
                    tracing::info!(?signal, "recreating the task consumer");
                    break false;
                }
            }
        };
        if failed {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        // Records seen again are harmless: the books are level-triggered.
        let policy = match last_seen {
            Some(seq) => DeliverPolicy::ByStartSequence {
                start_sequence: seq + 1,
            },
            None => DeliverPolicy::LastPerSubject,
        };
        let created = retry(
            "task consumer",
            Patience::failover(),
            Some(&mut signals),
            || ordered(&stream, &filter, policy),
        )
        .await;
        match created {
            Ok(next) => messages = next,
            // Not reached: failover patience never gives up.
            Err(error) => tracing::error!(%error, "task consumer cannot be recreated"),
        }
    }
}

/// The event for a task record, if it belongs to one of our instances.
fn route(
    cluster: &str,
    slot_of: &HashMap<String, usize>,
    subject: &str,
    payload: &[u8],
) -> Option<Event> {
    let Some(StateKey::Task {
        cluster: c,
        instance_id,
        task_id,
    }) = subjects::parse_state(subject)
    else {
        return None;
    };
    if c != cluster {
        return None;
    }
    let slot = *slot_of.get(instance_id)?;
    match codec::decode_record::<PlayedTask>(payload) {
        Ok(task) => Some(Event::Record {
            slot,
            task_id: task_id.to_string(),
            task: Box::new(task),
        }),
        Err(error) => {
            tracing::warn!(%subject, %error, "skipping an undecodable task record");
            None
        }
    }
}

/// A timer: when, then a tie-breaker, then what.
type Timer = Reverse<(Instant, u64, usize, String, Wake)>;

/// Owns every instance's book: applies events and fired timers, sets timers, queues
/// reports.
async fn play(
    fleet: Arc<Fleet>,
    script: Script,
    mut events: mpsc::Receiver<Event>,
    jobs: mpsc::UnboundedSender<Job>,
) {
    let mut books: Vec<TaskBook> = (0..fleet.slots.len())
        .map(|_| TaskBook::default())
        .collect();
    let mut timers: BinaryHeap<Timer> = BinaryHeap::new();
    let mut timer_seq = 0u64;
    loop {
        let next_timer = timers.peek().map(|Reverse((at, ..))| *at);
        let fired = tokio::select! {
            event = events.recv() => {
                let Some(event) = event else { return };
                let (slot, task_id, effect) = match event {
                    Event::Record { slot, task_id, task } => {
                        let effect = books.get_mut(slot).and_then(|b| b.observe(&task_id, &task, &script));
                        (slot, task_id, effect)
                    }
                    Event::Acknowledged { slot, task_id, status } => {
                        let effect = books.get_mut(slot).and_then(|b| b.acknowledged(&task_id, status, &script));
                        (slot, task_id, effect)
                    }
                    Event::Refused { slot, task_id } => {
                        if let Some(b) = books.get_mut(slot) {
                            b.abandon(&task_id);
                        }
                        (slot, task_id, None)
                    }
                };
                vec![(slot, task_id, effect)]
            }
            _ = sleep_until(next_timer) => {
                let now = Instant::now();
                let mut fired = Vec::new();
                while let Some(Reverse((at, ..))) = timers.peek() {
                    if *at > now {
                        break;
                    }
                    let Some(Reverse((_, _, slot, task_id, wake))) = timers.pop() else { break };
                    let effect = books.get_mut(slot).and_then(|b| b.wake(&task_id, wake, &script));
                    fired.push((slot, task_id, effect));
                }
                fired
            }
        };
        for (slot, task_id, effect) in fired {
            if let (Some(book), Some(s)) = (books.get(slot), fleet.slots.get(slot)) {
                s.tasks.store(book.len() as u32, Ordering::Relaxed);
            }
            match effect {
                None => {}
                Some(Effect::Wake { wake, after }) => {
                    timer_seq += 1;
                    timers.push(Reverse((
                        Instant::now() + after,
                        timer_seq,
                        slot,
                        task_id,
                        wake,
                    )));
                }
                Some(Effect::Report(request)) => {
                    let job = Job {
                        slot,
                        task_id,
                        request,
                    };
                    if jobs.send(job).is_err() {
                        return;
                    }
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Sends reports, at most `in_flight` at once, each until acknowledged or refused; tells
/// the engine which.
async fn report(
    client: async_nats::Client,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    events: mpsc::Sender<Event>,
    in_flight_max: usize,
) {
    let caller = api::client(client);
    let permits = Arc::new(Semaphore::new(in_flight_max));
    let mut in_flight = JoinSet::new();
    while let Some(job) = jobs.recv().await {
        while in_flight.try_join_next().is_some() {}
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let caller = caller.clone();
        let events = events.clone();
        in_flight.spawn(async move {
            let status = job.request.status.unwrap_or_default();
            let reply: Result<AcknowledgmentResponse, _> = caller
                .call_until_answered(
                    Action::SubmitTaskStateChange,
                    &*job.request,
                    None,
                    api::BACKOFF,
                )
                .await;
            drop(permit);
            let event = match reply {
                Ok(_) => Event::Acknowledged {
                    slot: job.slot,
                    task_id: job.task_id,
                    status,
                },
                Err(error) => {
                    tracing::warn!(task = %job.request.task, error = &error as &dyn std::error::Error, "state change refused; forgetting the task");
                    Event::Refused {
                        slot: job.slot,
                        task_id: job.task_id,
                    }
                }
            };
            let _ = events.send(event).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_only_our_instances_in_our_cluster() {
        let slot_of: HashMap<String, usize> = [("i1".to_string(), 7)].into_iter().collect();
        let task = berth_messages::model::Task {
            task_arn: "arn".into(),
            containers: vec![berth_messages::model::Container {
                name: "app".into(),
                image: Some("busybox".into()),
                ..Default::default()
            }],
            ..Default::default()
        };
        let payload = codec::encode_record(&task).unwrap();
        let task_record = task;
        let ours = route("c1", &slot_of, &subjects::task("c1", "i1", "t1"), &payload);
        match ours {
            Some(Event::Record {
                slot,
                task_id,
                task,
            }) => {
                assert_eq!(
                    (slot, task_id.as_str(), *task),
                    (7, "t1", PlayedTask::from(&task_record))
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(route("c1", &slot_of, &subjects::task("c1", "i2", "t1"), &payload).is_none());
        assert!(route("c2", &slot_of, &subjects::task("c1", "i1", "t1"), &payload).is_none());
        assert!(route("c1", &slot_of, &subjects::instance("c1", "i1"), &payload).is_none());
        assert!(route("c1", &slot_of, &subjects::task("c1", "i1", "t1"), b"junk").is_none());
    }
}

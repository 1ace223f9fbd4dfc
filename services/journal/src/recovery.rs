//! Prompt recovery from a lost NATS node. A JetStream API request sent while a stream or
//! the cluster has no leader is never answered: waiting for the client's request timeout
//! (10 s) to retry it kept writes down for seconds after new leaders were elected. Calls on
//! which a replica's start or its recovery waits therefore go through [`retry`]: short
//! attempts, retried after a short pause, and abandoned at once when a [`LeaderSignals`]
//! says the cluster changed (the client reconnected, or a new leader was elected).

use futures::stream::SelectAll;
use futures::{FutureExt, StreamExt};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Bound on one attempt of a call that a leader answers at once when there is one.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
/// First attempts of a recovery, and the first attempts after every signal: a consumer
/// request sent in the instant a leader is elected can go unanswered (the new leader is
/// not ready yet), and waiting a whole [`ATTEMPT_TIMEOUT`] for it would be the slowest
/// part of getting writes back after an election.
pub const RECOVERY_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(250);
/// Attempts made with the first timeout before later ones are given more time (an answer
/// that is merely slow, such as a consumer over millions of subjects, still comes).
const SHORT_ATTEMPTS: u32 = 3;
const FIRST_PAUSE: Duration = Duration::from_millis(50);
pub const MAX_PAUSE: Duration = Duration::from_millis(500);
/// Longest attempt and pause of [`Patience::resume`].
const RESUME_MAX_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(500);
const RESUME_MAX_PAUSE: Duration = Duration::from_millis(100);
/// How often the client's connection counter is looked at.
const CONNECT_CHECK: Duration = Duration::from_millis(50);

/// How long the attempts of a [`retry`] may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Patience {
    /// Bound on each of the first attempts.
    pub attempt_timeout: Duration,
    /// Later attempts get twice the previous one's time, up to this.
    pub max_attempt_timeout: Duration,
    /// Give up after this long; `None` retries for ever.
    pub give_up_after: Option<Duration>,
    /// Pauses between attempts double from 50 ms up to this.
    pub max_pause: Duration,
}

impl Patience {
    /// Recovery of a consumer that has been working: every attempt is short (its
    /// requests are cheap, and one lost with a leader must cost little), for ever: the
    /// first ones [`RECOVERY_ATTEMPT_TIMEOUT`], later ones growing to [`ATTEMPT_TIMEOUT`]
    /// (an answer that is merely slow on a loaded server still comes).
    pub const fn failover() -> Self {
        Self {
            attempt_timeout: RECOVERY_ATTEMPT_TIMEOUT,
            max_attempt_timeout: ATTEMPT_TIMEOUT,
            give_up_after: None,
            max_pause: MAX_PAUSE,
        }
    }

    /// Recovery of a consumer that resumes from a sequence (the view's live consumer):
    /// its creation is cheap for the server, so every attempt stays short and follows
    /// the last quickly. The consumer needs the meta leader, whose election no advisory
    /// of the account announces: an attempt sent just before it is lost, and only the
    /// next attempt, soon after, finds the leader.
    pub const fn resume() -> Self {
        Self {
            attempt_timeout: RECOVERY_ATTEMPT_TIMEOUT,
            max_attempt_timeout: RESUME_MAX_ATTEMPT_TIMEOUT,
            give_up_after: None,
            max_pause: RESUME_MAX_PAUSE,
        }
    }

    /// Start-up calls: short first attempts, growing to `slowest` (the configured request
    /// timeout), until `give_up_after`.
    pub fn start(slowest: Duration, give_up_after: Duration) -> Self {
        Self {
            attempt_timeout: ATTEMPT_TIMEOUT.min(slowest),
            max_attempt_timeout: slowest,
            give_up_after: Some(give_up_after),
            max_pause: MAX_PAUSE,
        }
    }

    /// Bound on attempt `attempt` (from 1).
    pub fn timeout_of(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(SHORT_ATTEMPTS).min(16);
        self.attempt_timeout
            .saturating_mul(1 << doublings)
            .min(self.max_attempt_timeout.max(self.attempt_timeout))
    }
}

/// Why [`retry`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum RetryError<E: std::error::Error + 'static> {
    #[error("{what}: no answer after {attempts} attempts (the last one waited {waited:?})")]
    TimedOut {
        what: String,
        attempts: u32,
        waited: Duration,
    },
    #[error("{what}: failed {attempts} times")]
    Failed {
        what: String,
        attempts: u32,
        #[source]
        source: E,
    },
}

/// Calls `call` until it succeeds: each attempt bounded by `patience`, every failure and
/// timeout retried after a short pause (50 ms doubling to `max_pause`), and an attempt under
/// way abandoned for a new one when `signals` fire (a request sent before a leader was
/// elected is never answered; one sent after usually is). After a signal the attempts
/// start short again, as at the start of a recovery.
pub async fn retry<T, E, F, Fut>(
    what: &str,
    patience: Patience,
    mut signals: Option<&mut LeaderSignals>,
    mut call: F,
) -> Result<T, RetryError<E>>
where
    E: std::error::Error + 'static,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = patience.give_up_after.map(|d| Instant::now() + d);
    let mut pause = FIRST_PAUSE;
    let mut attempt = 0u32;
    // Attempts made before the last signal: their growing timeouts do not carry over.
    let mut before_signal = 0u32;
    loop {
        attempt += 1;
        let timeout = patience.timeout_of(attempt - before_signal);
        let outcome = match signals.as_deref_mut() {
            Some(signals) => tokio::select! {
                outcome = tokio::time::timeout(timeout, call()) => Some(outcome),
                signal = signals.next() => {
                    tracing::debug!(what, ?signal, "cluster changed; trying again at once");
                    pause = FIRST_PAUSE;
                    before_signal = attempt;
                    None
                }
            },
            None => Some(tokio::time::timeout(timeout, call()).await),
        };
        let last = match outcome {
            None => continue,
            Some(Ok(Ok(value))) => {
                if let Some(signals) = signals.as_deref_mut() {
                    // What happened before this success is already reflected by it.
                    signals.clear();
                }
                return Ok(value);
            }
            Some(Ok(Err(source))) => {
                tracing::debug!(what, attempt, error = %source, "attempt failed; retrying");
                RetryError::Failed {
                    what: what.to_string(),
                    attempts: attempt,
                    source,
                }
            }
            Some(Err(_)) => {
                tracing::debug!(what, attempt, ?timeout, "attempt timed out; retrying");
                RetryError::TimedOut {
                    what: what.to_string(),
                    attempts: attempt,
                    waited: timeout,
                }
            }
        };
        if deadline.is_some_and(|d| Instant::now() + pause >= d) {
            return Err(last);
        }
        match signals.as_deref_mut() {
            Some(signals) => {
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = signals.next() => {
                        pause = FIRST_PAUSE;
                        before_signal = attempt;
                    }
                }
            }
            None => tokio::time::sleep(pause).await,
        }
        pause = (pause * 2).min(patience.max_pause.max(FIRST_PAUSE));
    }
}

/// What [`LeaderSignals`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// The client connected again (to this or another server): consumers that lived on
    /// the server it left are gone, and requests in flight were lost.
    Reconnected,
    /// A stream or consumer being watched elected a leader: a consumer on a server that
    /// left may be gone, and the stream answers again.
    LeaderElected,
}

/// The signals after which a consumer should be recreated and a request retried at once:
/// the client's reconnections (its connection counter, which moves on every `Connected`
/// event) and JetStream's leader-elected advisories for the watched streams and consumers.
/// Without them a consumer lost with its server is noticed only by missed heartbeats, and
/// a request lost with a leader only by its timeout.
pub struct LeaderSignals {
    source: Source,
}

enum Source {
    /// Watched here.
    Watched {
        statistics: Arc<async_nats::Statistics>,
        connects: u64,
        check: tokio::time::Interval,
        advisories: SelectAll<async_nats::Subscriber>,
    },
    /// Counted by a task of [`LeaderSignals::counted`].
    Counted(watch::Receiver<u64>),
}

impl LeaderSignals {
    /// Watches `client`'s reconnections and the leader elections of `stream`.
    pub async fn for_stream(client: &async_nats::Client, stream: &str) -> Self {
        Self::watching(
            client,
            &[format!("$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.{stream}")],
        )
        .await
    }

    /// Watches `client`'s reconnections and the leader elections of `stream` and of its
    /// durable `consumer`.
    pub async fn for_consumer(client: &async_nats::Client, stream: &str, consumer: &str) -> Self {
        Self::watching(
            client,
            &[
                format!("$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.{stream}"),
                format!("$JS.EVENT.ADVISORY.CONSUMER.LEADER_ELECTED.{stream}.{consumer}"),
            ],
        )
        .await
    }

    /// Watches `client`'s reconnections and the leader elections of every stream, counted
    /// in the returned channel by a task that ends when the last receiver is dropped; see
    /// [`LeaderSignals::from_count`].
    pub async fn counted(client: &async_nats::Client) -> watch::Receiver<u64> {
        let mut signals = Self::watching(
            client,
            &["$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.*".to_string()],
        )
        .await;
        let (tx, rx) = watch::channel(0u64);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = signals.next() => tx.send_modify(|count| *count += 1),
                    _ = tx.closed() => return,
                }
            }
        });
        rx
    }

    /// The signals of a [`LeaderSignals::counted`] channel from now on.
    pub fn from_count(mut count: watch::Receiver<u64>) -> Self {
        count.borrow_and_update();
        Self {
            source: Source::Counted(count),
        }
    }

    /// Watches `client`'s reconnections only, looking every `every`: for what a leader
    /// election leaves intact (a core subscription), where a process holding thousands
    /// of clients cannot afford a check every 50 ms for each.
    pub async fn reconnections(client: &async_nats::Client, every: Duration) -> Self {
        let mut signals = Self::watching(client, &[]).await;
        if let Source::Watched { check, .. } = &mut signals.source {
            *check = tokio::time::interval(every);
            check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        signals
    }

    async fn watching(client: &async_nats::Client, subjects: &[String]) -> Self {
        let statistics = client.statistics();
        let connects = statistics.connects.load(Ordering::Relaxed);
        let mut advisories = SelectAll::new();
        for subject in subjects {
            // Without the advisories (e.g. no permission to read them) reconnections and
            // the consumers' heartbeats still recover.
            match client.subscribe(subject.clone()).await {
                Ok(subscriber) => advisories.push(subscriber),
                Err(error) => {
                    tracing::warn!(%error, subject, "cannot watch leader elections");
                }
            }
        }
        let mut check = tokio::time::interval(CONNECT_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            source: Source::Watched {
                statistics,
                connects,
                check,
                advisories,
            },
        }
    }

    /// The next signal. Cancel safe: a signal is consumed only when returned.
    pub async fn next(&mut self) -> Signal {
        match &mut self.source {
            Source::Watched {
                statistics,
                connects,
                check,
                advisories,
            } => loop {
                tokio::select! {
                    _ = check.tick() => {
                        let now = statistics.connects.load(Ordering::Relaxed);
                        if now != *connects {
                            *connects = now;
                            return Signal::Reconnected;
                        }
                    }
                    Some(advisory) = advisories.next(), if !advisories.is_empty() => {
                        tracing::debug!(subject = %advisory.subject, "JetStream elected a leader");
                        return Signal::LeaderElected;
                    }
                }
            },
            Source::Counted(count) => {
                if count.changed().await.is_err() {
                    // The counting task is gone (its client closed): nothing more to say.
                    std::future::pending::<()>().await;
                }
                Signal::LeaderElected
            }
        }
    }

    /// Forgets the signals that have arrived so far.
    pub fn clear(&mut self) {
        match &mut self.source {
            Source::Watched {
                statistics,
                connects,
                advisories,
                ..
            } => {
                *connects = statistics.connects.load(Ordering::Relaxed);
                while let Some(Some(_)) = advisories.next().now_or_never() {}
            }
            Source::Counted(count) => {
                count.borrow_and_update();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("refused")]
    struct Refused;

    #[test]
    fn a_resumed_consumer_keeps_its_attempts_and_pauses_short() {
        let patience = Patience::resume();
        let timeouts: Vec<u128> = (1..=8)
            .map(|a| patience.timeout_of(a).as_millis())
            .collect();
        assert_eq!(timeouts, vec![250, 250, 250, 500, 500, 500, 500, 500]);
        assert_eq!(patience.max_pause, Duration::from_millis(100));
        assert_eq!(patience.give_up_after, None);
    }

    #[tokio::test(start_paused = true)]
    async fn pauses_stop_growing_at_the_patience_s_bound() {
        let started = Instant::now();
        let mut calls = 0u32;
        let result: Result<(), _> = retry(
            "refused",
            Patience {
                give_up_after: Some(Duration::from_secs(2)),
                ..Patience::resume()
            },
            None,
            || {
                calls += 1;
                async { Err::<(), _>(Refused) }
            },
        )
        .await;
        assert!(result.is_err());
        // 50 ms, then 100 ms pauses: about 20 refusals in two seconds (500 ms pauses: 6).
        assert!(calls >= 18, "{calls} calls in {:?}", started.elapsed());
    }

    #[test]
    fn attempts_grow_after_the_short_ones_up_to_the_slowest() {
        let patience = Patience::start(Duration::from_secs(10), Duration::from_secs(60));
        let timeouts: Vec<u64> = (1..=8).map(|a| patience.timeout_of(a).as_secs()).collect();
        assert_eq!(timeouts, [1, 1, 1, 2, 4, 8, 10, 10]);
        let failover = Patience::failover();
        assert!((1..=SHORT_ATTEMPTS).all(|a| failover.timeout_of(a) == RECOVERY_ATTEMPT_TIMEOUT));
        assert!((1..100).all(|a| failover.timeout_of(a) <= ATTEMPT_TIMEOUT));
        assert_eq!(failover.timeout_of(100), ATTEMPT_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn unanswered_attempts_are_retried_after_their_short_timeout() {
        let mut calls = 0;
        let started = Instant::now();
        let value = retry("answer", Patience::failover(), None, || {
            calls += 1;
            let call = calls;
            async move {
                if call < 3 {
                    std::future::pending::<()>().await;
                }
                Ok::<_, Refused>(call)
            }
        })
        .await
        .expect("answered");
        assert_eq!(value, 3);
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_signal_makes_the_attempts_short_again() {
        let (tx, rx) = watch::channel(0u64);
        let mut signals = LeaderSignals::from_count(rx);
        let mut starts = Vec::new();
        let value = retry("answer", Patience::failover(), Some(&mut signals), || {
            starts.push(Instant::now());
            let call = starts.len();
            if call == 8 {
                // The leader is elected while the 8th attempt (given 1 s) waits.
                tx.send_modify(|count| *count += 1);
            }
            async move {
                if call < 10 {
                    std::future::pending::<()>().await;
                }
                Ok::<_, Refused>(call)
            }
        })
        .await
        .expect("answered");
        assert_eq!(value, 10);
        // Before the signal the attempts had grown to a second each.
        assert!(starts[7] - starts[6] > ATTEMPT_TIMEOUT);
        // The attempt after the signal, lost like a request sent as the leader is elected,
        // is given the short timeout again.
        let lost = starts[9] - starts[8];
        assert!(lost < RECOVERY_ATTEMPT_TIMEOUT * 2, "{lost:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_with_the_last_error() {
        let patience = Patience::start(Duration::from_secs(2), Duration::from_secs(5));
        let error = retry("refusal", patience, None, || async {
            Err::<(), _>(Refused)
        })
        .await
        .expect_err("gives up");
        assert!(matches!(error, RetryError::Failed { .. }), "{error}");
    }
}

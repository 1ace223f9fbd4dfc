//! The retry policy every API client follows. A request that lands on a hung replica
//! (paused, stalled, partitioned from the journal but not from clients) is never answered,
//! because that replica keeps its place in the API's queue group; a client that sends the
//! request again after a short wait reaches another replica. Reads are answered from any
//! replica's view, so they are always safe to send again. A mutation is safe to send again
//! only under the same command id (`Nats-Msg-Id`): the command stream drops the duplicate
//! and the second API call is answered with the first one's outcome. Clients therefore
//! send every mutation with a command id, minted here when the caller gave none.
//!
//! No I/O happens here: the caller passes the attempt (a request with the given timeout)
//! and says which of its failures mean "no answer in time".

use crate::command::Action;
use std::future::Future;
use std::time::Duration;

/// Timeout of a call's first attempt. A live replica answers a read in milliseconds and a
/// mutation well within it; a request left unanswered this long most likely landed on a
/// hung replica.
pub const FIRST_ATTEMPT: Duration = Duration::from_secs(2);

/// How the attempts of one call follow each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// One attempt with the whole budget: the call is not safe to send twice.
    Once,
    /// Attempts of [`RetryPolicy::first_attempt`] each: a read costs a replica nothing
    /// once abandoned, and landing on the hung replica again is as likely as at first.
    Steady,
    /// Each attempt twice as long as the one before: a mutation sent again makes the
    /// replica it reaches follow the first copy's outcome until it is recorded, so a slow
    /// but live control plane gets few copies of a command it is still working on.
    Doubling,
}

/// How long the attempts of one call may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Timeout of the first attempt.
    pub first_attempt: Duration,
    /// Bound on the sum of every attempt's timeout.
    pub total: Duration,
}

impl RetryPolicy {
    /// Attempts from [`FIRST_ATTEMPT`], all of them together within `total`.
    pub const fn within(total: Duration) -> Self {
        Self {
            first_attempt: FIRST_ATTEMPT,
            total,
        }
    }

    /// The timeout of each attempt, in order; they add up to `total`.
    pub fn attempt_timeouts(&self, schedule: Schedule) -> Vec<Duration> {
        let first = self.first_attempt.max(Duration::from_millis(1));
        let mut timeouts = Vec::new();
        let mut left = self.total;
        let mut next = first;
        while !left.is_zero() {
            // A remainder shorter than a first attempt joins the last attempt instead of
            // becoming one too short to be answered.
            let this = if schedule == Schedule::Once || left < next + first {
                left
            } else {
                next
            };
            timeouts.push(this);
            left = left.saturating_sub(this);
            if schedule == Schedule::Doubling {
                next = next.saturating_mul(2);
            }
        }
        timeouts
    }
}

/// The command id (`Nats-Msg-Id`) a call of `action` carries: the caller's, else, for a
/// mutation, a minted one, so that sending the call again cannot execute it twice.
/// Reads and unknown actions carry none (the id is only read on mutations).
///
/// A RunTask whose `clientToken` must keep deduplicating across separate calls should be
/// given its command id by the caller: the header takes precedence over the token.
pub fn command_id(action: &str, given: Option<&str>) -> Option<String> {
    match (given, Action::parse(action)) {
        (Some(id), _) => Some(id.to_string()),
        (None, Some(a)) if a.is_mutation() => Some(mint_command_id()),
        (None, _) => None,
    }
}

/// A fresh command id: `c-` and 32 hex digits (random).
pub fn mint_command_id() -> String {
    format!("c-{}", uuid::Uuid::new_v4().simple())
}

/// How a call of `action` may be sent again after an unanswered attempt: a read steadily,
/// a mutation under a command id with doubling attempts, anything else not at all.
pub fn schedule(action: &str, command_id: Option<&str>) -> Schedule {
    match Action::parse(action) {
        Some(a) if !a.is_mutation() => Schedule::Steady,
        Some(_) if command_id.is_some() => Schedule::Doubling,
        _ => Schedule::Once,
    }
}

/// One API call of `action` under the policy within `total`: `attempt` sends the request
/// with the command id to put in `Nats-Msg-Id` (`given_id`, else one minted for a
/// mutation, the same for every attempt) and the attempt's timeout; an attempt left
/// unanswered is followed by the next one as [`schedule`] says.
pub async fn call<T, E, F, Fut>(
    action: &str,
    given_id: Option<&str>,
    total: Duration,
    mut attempt: F,
    unanswered: impl Fn(&E) -> bool,
) -> Result<T, E>
where
    F: FnMut(Option<&str>, Duration) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let id = command_id(action, given_id);
    let timeouts = RetryPolicy::within(total).attempt_timeouts(schedule(action, id.as_deref()));
    with_retries(
        &timeouts,
        |timeout| attempt(id.as_deref(), timeout),
        unanswered,
    )
    .await
}

/// Runs `attempt` with each of `timeouts` in turn while it fails with an error
/// `unanswered` recognises (no reply within the attempt's timeout); any other result, or
/// the last attempt's, ends the call.
pub async fn with_retries<T, E, F, Fut>(
    timeouts: &[Duration],
    mut attempt: F,
    unanswered: impl Fn(&E) -> bool,
) -> Result<T, E>
where
    F: FnMut(Duration) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut index = 0;
    loop {
        let timeout = timeouts.get(index).copied().unwrap_or_default();
        match attempt(timeout).await {
            Err(e) if index + 1 < timeouts.len() && unanswered(&e) => index += 1,
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    fn secs(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|s| Duration::from_secs(*s)).collect()
    }

    #[test]
    fn attempts_add_up_to_the_total() {
        let p = |total, schedule| {
            RetryPolicy::within(Duration::from_secs(total)).attempt_timeouts(schedule)
        };
        assert_eq!(p(30, Schedule::Doubling), secs(&[2, 4, 8, 16]));
        assert_eq!(p(40, Schedule::Doubling), secs(&[2, 4, 8, 16, 10]));
        assert_eq!(p(60, Schedule::Doubling), secs(&[2, 4, 8, 16, 30]));
        assert_eq!(p(3, Schedule::Doubling), secs(&[3]));
        assert_eq!(p(5, Schedule::Doubling), secs(&[2, 3]));
        assert_eq!(p(9, Schedule::Steady), secs(&[2, 2, 2, 3]));
        assert_eq!(p(30, Schedule::Once), secs(&[30]));
        assert!(p(0, Schedule::Steady).is_empty());
        for schedule in [Schedule::Once, Schedule::Steady, Schedule::Doubling] {
            for total in [1u64, 7, 31, 45, 119] {
                let sum: Duration = p(total, schedule).into_iter().sum();
                assert_eq!(sum, Duration::from_secs(total));
            }
        }
    }

    #[test]
    fn mutations_get_a_command_id_and_reads_none() {
        assert_eq!(
            command_id("StopTask", Some("mine")).as_deref(),
            Some("mine")
        );
        let minted = command_id("RunTask", None).unwrap_or_default();
        assert!(minted.starts_with("c-") && minted.len() == 34, "{minted}");
        assert!(crate::validate::command_id("id", &minted).is_ok());
        assert_ne!(command_id("RunTask", None), command_id("RunTask", None));
        assert_eq!(command_id("DescribeTasks", None), None);
        assert_eq!(command_id("NoSuchAction", None), None);
    }

    #[test]
    fn reads_and_identified_mutations_may_be_sent_again() {
        assert_eq!(schedule("ListTasks", None), Schedule::Steady);
        assert_eq!(schedule("GetCommandOutcome", None), Schedule::Steady);
        assert_eq!(schedule("RunTask", Some("c-1")), Schedule::Doubling);
        assert_eq!(schedule("RunTask", None), Schedule::Once);
        assert_eq!(schedule("NoSuchAction", Some("c-1")), Schedule::Once);
    }

    /// Drives a future that never waits (the attempts below answer at once).
    fn ready<T>(f: impl Future<Output = T>) -> T {
        let mut f = std::pin::pin!(f);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("the attempts never wait"),
        }
    }

    #[test]
    fn only_unanswered_attempts_are_repeated() {
        let timeouts = secs(&[2, 4, 8, 16]);
        let seen = RefCell::new(Vec::new());
        let timed_out = |e: &&str| *e == "timeout";
        // Unanswered every time: every attempt is made, the last error is returned.
        let r: Result<(), &str> = ready(with_retries(
            &timeouts,
            |t| {
                seen.borrow_mut().push(t);
                async { Err("timeout") }
            },
            timed_out,
        ));
        assert_eq!(r, Err("timeout"));
        assert_eq!(*seen.borrow(), timeouts);
        // An answer (here a refusal) ends the call.
        seen.borrow_mut().clear();
        let r: Result<(), &str> = ready(with_retries(
            &timeouts,
            |t| {
                seen.borrow_mut().push(t);
                let n = seen.borrow().len();
                async move { Err(if n < 2 { "timeout" } else { "refused" }) }
            },
            timed_out,
        ));
        assert_eq!(r, Err("refused"));
        assert_eq!(seen.borrow().len(), 2);
    }

    #[test]
    fn a_call_repeats_a_mutation_under_one_minted_id() {
        let ids = RefCell::new(Vec::new());
        let r: Result<(), &str> = ready(call(
            "StopTask",
            None,
            Duration::from_secs(30),
            |id, _| {
                ids.borrow_mut().push(id.map(str::to_string));
                async { Err("timeout") }
            },
            |e| *e == "timeout",
        ));
        assert_eq!(r, Err("timeout"));
        let ids = ids.into_inner();
        assert_eq!(ids.len(), 4);
        assert!(
            ids[0].is_some() && ids.iter().all(|id| *id == ids[0]),
            "{ids:?}"
        );
        // A read carries no id and is sent again every first attempt's time.
        let mut reads = Vec::new();
        let _: Result<(), &str> = ready(call(
            "DescribeTasks",
            None,
            Duration::from_secs(30),
            |id, timeout| {
                assert_eq!(id, None);
                reads.push(timeout);
                async { Err("timeout") }
            },
            |e| *e == "timeout",
        ));
        assert_eq!(reads, vec![FIRST_ATTEMPT; 15]);
    }
}

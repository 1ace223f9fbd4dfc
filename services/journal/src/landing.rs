//! Landings: a writer that publishes a record without asking the server for an
//! acknowledgement (see [`crate::Journal::publish_unacknowledged`]) learns from the view
//! that the record is in the journal, and at which sequence. The view's ordered consumer
//! delivers only what the stream stored, so a record it applies is as durable as an
//! acknowledged one; waiting on it saves the acknowledgement message, its parsing and its
//! timer, one of the few messages a placement costs.
//!
//! A writer registers the subject before it publishes (so the view cannot apply the record
//! first), and gives up after a timeout: then it reads the subject back from the journal
//! and publishes again if it is still empty (the write is conditional on an empty subject,
//! so a late first copy and a second one cannot both land).

use dashmap::DashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

#[derive(Default)]
pub(crate) struct Landings {
    waiting: DashMap<Box<str>, (u64, oneshot::Sender<u64>), rustc_hash::FxBuildHasher>,
    /// Entries in `waiting`, read by the apply loop without touching the map's shards.
    len: AtomicUsize,
    tokens: AtomicU64,
}

impl Landings {
    pub(crate) fn expect(self: &Arc<Self>, subject: &str) -> Landing {
        let token = self.tokens.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if self.waiting.insert(subject.into(), (token, tx)).is_none() {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
        Landing {
            landings: self.clone(),
            subject: subject.into(),
            token,
            landed: rx,
            delivered: false,
        }
    }

    /// Called by the apply loop once a batch is applied.
    pub(crate) fn applied<'a>(&self, records: impl IntoIterator<Item = (&'a str, u64)>) {
        if self.len.load(Ordering::Relaxed) == 0 {
            return;
        }
        for (subject, sequence) in records {
            if let Some((_, (_, tx))) = self.waiting.remove(subject) {
                self.len.fetch_sub(1, Ordering::Relaxed);
                let _ = tx.send(sequence);
            }
        }
    }

    fn forget(&self, subject: &str, token: u64) {
        if self
            .waiting
            .remove_if(subject, |_, (t, _)| *t == token)
            .is_some()
        {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A wait for one subject's next record to be applied by the view.
pub struct Landing {
    landings: Arc<Landings>,
    subject: Box<str>,
    token: u64,
    landed: oneshot::Receiver<u64>,
    delivered: bool,
}

impl Landing {
    /// The sequence of the subject's first record applied after [`crate::view::View::expect_landing`],
    /// or `None` when none came within `timeout`.
    pub async fn wait(mut self, timeout: Duration) -> Option<u64> {
        let landed = tokio::time::timeout(timeout, &mut self.landed)
            .await
            .ok()
            .and_then(Result::ok);
        // Delivered: the apply loop has already removed the entry.
        self.delivered = landed.is_some();
        landed
    }
}

impl Drop for Landing {
    fn drop(&mut self) {
        if !self.delivered {
            self.landings.forget(&self.subject, self.token);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_landing_gets_the_sequence_its_subject_is_applied_at() {
        let landings = Arc::new(Landings::default());
        let landing = landings.expect("berth.state.c.task.i.t");
        landings.applied([
            ("berth.state.c.task.i.other", 7),
            ("berth.state.c.task.i.t", 9),
        ]);
        assert_eq!(landing.wait(Duration::from_secs(5)).await, Some(9));
        assert_eq!(landings.len.load(Ordering::Relaxed), 0);
        assert!(landings.waiting.is_empty());
    }

    #[tokio::test]
    async fn a_landing_given_up_leaves_nothing_behind() {
        let landings = Arc::new(Landings::default());
        let landing = landings.expect("s");
        assert_eq!(landing.wait(Duration::from_millis(1)).await, None);
        assert_eq!(landings.len.load(Ordering::Relaxed), 0);
        assert!(landings.waiting.is_empty());
        // Records applied later find nobody waiting.
        landings.applied([("s", 3)]);
    }

    #[tokio::test]
    async fn an_older_landing_dropped_late_keeps_the_newer_one() {
        let landings = Arc::new(Landings::default());
        let first = landings.expect("s");
        let second = landings.expect("s");
        drop(first);
        assert_eq!(landings.len.load(Ordering::Relaxed), 1);
        landings.applied([("s", 4)]);
        assert_eq!(second.wait(Duration::from_secs(5)).await, Some(4));
        assert_eq!(landings.len.load(Ordering::Relaxed), 0);
    }
}

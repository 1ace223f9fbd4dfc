//! Janitor planner: which STOPPED tasks have outlived the retention window.
//!
//! Shape (shared by every planner): a snapshot in, actions out, I/O outside. The loop in
//! `crate::janitor` asks the planner for the cutoff at the current time, reads the view's
//! STOPPED tasks before that cutoff page by page (the view answers from its index,
//! without decoding records), passes each page to [`JanitorPlanner::plan`], and carries
//! out the expiries: purge the task's subject from the journal, then forget the task in
//! the view.
//!
//! The rules: a STOPPED task expires once its `stoppedAt` is more than the retention
//! window before now (a task stopped exactly the window ago stays; the view compares
//! `stoppedAt < cutoff`); the janitor looks every tenth of the window, at least once a
//! minute and at most once a second.

use berth_journal::view::ExpiredTask;
use std::time::Duration;

const MIN_PERIOD: Duration = Duration::from_secs(1);
const MAX_PERIOD: Duration = Duration::from_secs(60);

/// What the janitor does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JanitorAction {
    /// Purge the STOPPED task's subject and forget the task (at the version purged).
    Expire { cluster: String, task: ExpiredTask },
}

/// The retention rules.
#[derive(Debug, Clone, Copy)]
pub struct JanitorPlanner {
    retention: Duration,
}

impl JanitorPlanner {
    pub fn new(retention: Duration) -> Self {
        Self { retention }
    }

    /// How often the janitor looks.
    pub fn period(&self) -> Duration {
        (self.retention / 10).clamp(MIN_PERIOD, MAX_PERIOD)
    }

    /// The `stoppedAt` (seconds since the epoch) before which a task has expired at
    /// `now_epoch_seconds`.
    pub fn cutoff(&self, now_epoch_seconds: f64) -> f64 {
        now_epoch_seconds - self.retention.as_secs_f64()
    }

    /// The expiries for one page of a cluster's STOPPED tasks stopped before the cutoff.
    pub fn plan(&self, cluster: &str, expired: Vec<ExpiredTask>) -> Vec<JanitorAction> {
        expired
            .into_iter()
            .map(|task| JanitorAction::Expire {
                cluster: cluster.to_string(),
                task,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planner(retention_seconds: u64) -> JanitorPlanner {
        JanitorPlanner::new(Duration::from_secs(retention_seconds))
    }

    #[test]
    fn the_cutoff_is_the_retention_window_before_now() {
        let hour = planner(3600);
        assert_eq!(hour.cutoff(10_000.0), 6_400.0);
        // A task stopped exactly one window ago sits on the cutoff: not before it, kept.
        let stopped_at = 10_000.0 - 3600.0;
        assert!(stopped_at >= hour.cutoff(10_000.0));
        assert!(stopped_at < hour.cutoff(10_000.001));
    }

    #[test]
    fn the_period_is_a_tenth_of_the_window_within_bounds() {
        assert_eq!(planner(1).period(), Duration::from_secs(1));
        assert_eq!(planner(10).period(), Duration::from_secs(1));
        assert_eq!(planner(15).period(), Duration::from_millis(1500));
        assert_eq!(planner(600).period(), Duration::from_secs(60));
        assert_eq!(planner(601).period(), Duration::from_secs(60));
        assert_eq!(planner(3600).period(), Duration::from_secs(60));
    }

    #[test]
    fn every_expired_task_of_the_page_is_expired_in_order() {
        let task = |id: &str, version: u64| ExpiredTask {
            task_id: id.into(),
            instance_id: "i-1".into(),
            version,
        };
        let page = vec![task("a", 7), task("b", 9)];
        assert_eq!(
            planner(3600).plan("default", page.clone()),
            page.into_iter()
                .map(|task| JanitorAction::Expire {
                    cluster: "default".into(),
                    task,
                })
                .collect::<Vec<_>>()
        );
        assert!(planner(3600).plan("default", Vec::new()).is_empty());
    }
}

//! Retention of stopped tasks. A STOPPED task record is a tombstone that stays for the
//! retention window (`--stopped-task-retention`, default one hour, ECS keeps stopped tasks
//! visible for at least that long); after it the task's subject is purged from the journal
//! and the task forgotten by the view. Every replica runs the same rule on its own view;
//! purging twice is harmless.
//!
//! The rule is [`crate::planners::janitor`]; this module reads the view page by page and
//! carries out the expiries.

use crate::planners::janitor::{JanitorAction, JanitorPlanner};
use crate::shared::Shared;
use berth_messages::subjects;

pub async fn run(shared: Shared) {
    let planner = JanitorPlanner::new(shared.config.stopped_task_retention());
    let mut ticker = tokio::time::interval(planner.period());
    loop {
        ticker.tick().await;
        let cutoff = planner.cutoff(berth_messages::now_epoch_seconds());
        let mut clusters_after: Option<String> = None;
        loop {
            let clusters = shared.view.page_clusters(clusters_after.as_deref(), 100);
            for cluster in &clusters.items {
                expire(&shared, &planner, &cluster.value.cluster_name, cutoff).await;
            }
            match clusters.next {
                Some(n) => clusters_after = Some(n),
                None => break,
            }
        }
    }
}

async fn expire(shared: &Shared, planner: &JanitorPlanner, cluster: &str, cutoff: f64) {
    let mut after: Option<String> = None;
    loop {
        let page = shared
            .view
            .page_stopped_before(cluster, cutoff, after.as_deref(), 1000);
        for action in planner.plan(cluster, page.items) {
            execute(shared, action).await;
        }
        match page.next {
            Some(n) => after = Some(n),
            None => return,
        }
        tokio::task::yield_now().await;
    }
}

async fn execute(shared: &Shared, action: JanitorAction) {
    let JanitorAction::Expire { cluster, task } = action;
    let subject = subjects::task(&cluster, &task.instance_id, &task.task_id);
    match shared.journal.purge_subject(&subject).await {
        Ok(_) => {
            shared
                .view
                .forget_task(&cluster, &task.task_id, task.version);
            tracing::debug!(cluster, task = %task.task_id, "stopped task expired");
        }
        Err(e) => {
            tracing::warn!(cluster, task = %task.task_id, error = %e, "cannot purge expired task")
        }
    }
}

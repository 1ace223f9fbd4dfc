//! Level-triggered repair of what a crash between two writes can leave behind: a task
//! whose record says STOPPED while its instance still holds its resources gets them
//! released. Runs periodically on every replica; releases are idempotent.

use crate::actors::task::release;
use crate::shared::Shared;
use berth_messages::model::TaskStatus;
use std::time::Duration;

const PERIOD: Duration = Duration::from_secs(10);

pub async fn run(shared: Shared) {
    let mut ticker = tokio::time::interval(PERIOD);
    loop {
        ticker.tick().await;
        let mut after: Option<String> = None;
        loop {
            let page = shared.view.page_clusters(after.as_deref(), 200);
            for cluster in &page.items {
                let name = &cluster.value.cluster_name;
                for ci in shared.view.instances(name) {
                    let id = berth_messages::arn::container_instance_id(
                        &ci.value.container_instance_arn,
                    )
                    .1
                    .to_string();
                    for task_id in ci.value.allocations.keys() {
                        let stopped = shared
                            .view
                            .task(name, task_id)
                            .is_some_and(|t| t.task.value.last_status == TaskStatus::Stopped);
                        if stopped {
                            let command_id =
                                format!("internal-reconcile-{}", crate::ids::fresh_command_id());
                            if let Err(e) = release(&shared, name, &id, task_id, &command_id).await
                            {
                                tracing::warn!(cluster = %name, task = %task_id, error = %e, "release failed");
                            }
                        }
                    }
                }
            }
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
    }
}

//! Crash: a `berth-control` process is killed with SIGKILL in the middle of a stream of
//! commands; after a replica restarts, every accepted command has exactly one outcome,
//! nothing is placed twice, and the auditor is clean. And what a crash between a task's
//! STOPPED write and the release of its resources leaves behind is repaired.

use berth_e2e::*;
use berth_messages::model::{ContainerInstance, Task, TaskStatus};
use berth_messages::{streams, subjects};
use berth_testkit::{wait_for, NatsServer};
use serde_json::json;

const COMMANDS: usize = 600;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_command_has_exactly_one_outcome_after_a_kill() {
    let nats = NatsServer::start();
    let url = nats.url();
    let mut first = ControlProcess::start(&url);
    let api = Api::connect(&url).await;
    api.wait_serving().await;
    create_cluster(&api, "crash").await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(register_instance(&api, "crash", 1_000_000, 1_000_000, json!([])).await);
    }
    let _beats = Heartbeats::start(api.client.clone(), "crash", ids.clone());
    register_task_definition(&api, "batch", 1, 1, None).await;
    let journal = open_journal(&url).await;
    let before = outcome_count(&journal).await;

    // Accepted = acknowledged by the stream.
    let js = journal.jetstream().clone();
    let mut accepted = Vec::new();
    let mut killed = false;
    for i in 0..COMMANDS {
        let id = format!("crash-{i}");
        let body =
            json!({"cluster": "crash", "taskDefinition": "batch", "count": 2, "startedBy": id});
        publish_command(&js, "crash", "RunTask", &id, &body).await;
        accepted.push(id);
        if !killed && i >= COMMANDS / 4 && outcome_count(&journal).await > before {
            first.kill();
            killed = true;
        }
    }
    if !killed {
        first.kill();
    }
    let _second = ControlProcess::start(&url);

    let task_ids = tasks_of_outcomes(&journal, &accepted, 2).await;
    // Exactly one outcome each: the outcome stream holds one message per command and no
    // command ever got a second outcome written (each write would be a new sequence).
    let mut stream = journal
        .jetstream()
        .get_stream(streams::OUTCOME)
        .await
        .expect("outcome stream");
    let info = stream.info().await.expect("info");
    let written = info.state.last_sequence - info.state.first_sequence + 1;
    assert_eq!(info.state.messages, written, "no outcome was ever replaced");
    assert_eq!(outcome_count(&journal).await - before, COMMANDS as u64);
    // Every task the outcomes name exists, once.
    let listed = all_task_arns(&api, "crash").await;
    assert_eq!(
        listed, task_ids,
        "tasks in the cluster are exactly the ones the outcomes name"
    );
    assert_audit_clean(&url).await;
}

/// A replica that died between a task's STOPPED write and the release of its allocation
/// leaves the instance holding resources for a stopped task; reconciliation releases them
/// (and only them) once they have stayed held for a whole interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_releases_what_a_stopped_task_still_holds() {
    let nats = NatsServer::start();
    let url = nats.url();
    let _control = berth_control::spawn(berth_control::ControlConfig {
        reconcile_interval: 0.2,
        ..control_config(&url)
    });
    let api = Api::connect(&url).await;
    api.wait_serving().await;
    create_cluster(&api, "heal").await;
    let instance = register_instance(&api, "heal", 1024, 1024, json!([])).await;
    let _beats = Heartbeats::start(api.client.clone(), "heal", vec![instance.clone()]);
    register_task_definition(&api, "app", 100, 128, None).await;
    let reply = api
        .call_json(
            "RunTask",
            json!({"cluster": "heal", "taskDefinition": "app", "count": 2}),
        )
        .await
        .expect("RunTask");
    let ids: Vec<String> = reply["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|t| id_of(t["taskArn"].as_str().expect("task arn")))
        .collect();
    assert_eq!(ids.len(), 2, "{reply}");
    let journal = open_journal(&url).await;
    let instance_subject = subjects::instance("heal", &instance);
    let held = |record: &ContainerInstance| -> Vec<String> {
        let mut held: Vec<String> = record.allocations.keys().cloned().collect();
        held.sort();
        held
    };
    let before = journal
        .read::<ContainerInstance>(&instance_subject)
        .await
        .expect("read instance")
        .expect("instance record");
    let mut both = ids.clone();
    both.sort();
    assert_eq!(held(&before.value), both);

    // The crash: the task record says STOPPED, the release never happened.
    let stopped = ids[0].clone();
    journal
        .update::<Task, std::convert::Infallible, _>(
            &subjects::task("heal", &instance, &stopped),
            "internal-test-crash",
            5,
            |current| {
                Ok(current.map(|c| {
                    let mut task = c.value;
                    task.last_status = TaskStatus::Stopped;
                    task.desired_status = TaskStatus::Stopped;
                    task.stopped_at = Some(berth_messages::now_epoch_seconds());
                    task
                }))
            },
        )
        .await
        .expect("STOPPED write")
        .expect("task record");

    let after = wait_for("the stopped task's allocation released", PATIENCE, || {
        let journal = journal.clone();
        let subject = instance_subject.clone();
        let stopped = stopped.clone();
        async move {
            let record = journal
                .read::<ContainerInstance>(&subject)
                .await
                .ok()
                .flatten()?;
            (!record.value.allocations.contains_key(&stopped)).then_some(record)
        }
    })
    .await;
    assert_eq!(
        held(&after.value),
        vec![ids[1].clone()],
        "the running task keeps its"
    );
    assert_audit_clean(&url).await;
}

//! Concurrency: two `berth-control` processes and a third client that publishes commands
//! straight into BERTH_CMD race for a cluster whose free capacity is a third of the
//! demand. Every request ends placed or failed with a reason, nothing is over-committed,
//! and the auditor finds no violation.

use berth_e2e::*;
use berth_messages::command::{CommandResponse, Outcome};
use berth_testkit::wait_for;
use serde_json::json;

const INSTANCES: usize = 4;
const TASKS_PER_INSTANCE: usize = 4;
const REQUESTS_PER_CLIENT: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_writers_never_over_commit() {
    let berth = TwoReplicas::start().await;
    let (api, url) = (&berth.api, berth.url());
    let (_, _beats) = register_hosts(api, "race", INSTANCES, 4096, 1024).await;
    register_task_definition(api, "job", 10, 256, None).await;
    // Both replicas must have seen the task definition before the race starts.
    let capacity = INSTANCES * TASKS_PER_INSTANCE;
    let demand = 3 * REQUESTS_PER_CLIENT;
    assert_eq!(demand, 3 * capacity);

    let api_client = |n: usize| {
        let api = api.clone();
        tokio::spawn(async move {
            let mut placed = 0;
            let mut failed = 0;
            for i in 0..REQUESTS_PER_CLIENT {
                let reply = api
                    .call_json(
                        "RunTask",
                        json!({"cluster": "race", "taskDefinition": "job:1", "startedBy": format!("client-{n}-{i}")}),
                    )
                    .await
                    .expect("RunTask answers");
                placed += reply["tasks"].as_array().map_or(0, Vec::len);
                for f in reply["failures"].as_array().into_iter().flatten() {
                    assert!(
                        f["reason"]
                            .as_str()
                            .is_some_and(|r| r.starts_with("RESOURCE:")),
                        "{f}"
                    );
                    failed += 1;
                }
            }
            (placed, failed)
        })
    };
    let direct = {
        let client = api.client.clone();
        tokio::spawn(async move {
            let js = async_nats::jetstream::new(client.clone());
            let mut ids = Vec::new();
            for i in 0..REQUESTS_PER_CLIENT {
                let id = format!("direct-{i}");
                let body =
                    json!({"cluster": "race", "taskDefinition": "job:1", "startedBy": "direct"});
                publish_command(&js, "race", "RunTask", &id, &body).await;
                ids.push(id);
            }
            ids
        })
    };
    let (r1, r2, r3) = tokio::join!(api_client(1), api_client(2), direct);
    let (p1, f1) = r1.expect("client 1");
    let (p2, f2) = r2.expect("client 2");
    let direct_ids = r3.expect("direct client");

    let journal = berth_journal::Journal::open(&berth_journal::JournalConfig {
        servers: vec![url.clone()],
        ..Default::default()
    })
    .await
    .expect("journal");
    let mut p3 = 0;
    let mut f3 = 0;
    for id in &direct_ids {
        let journal = journal.clone();
        let outcome: Outcome = wait_for("direct command outcome", PATIENCE, || {
            let journal = journal.clone();
            let id = id.clone();
            async move { journal.read_outcome(&id).await.ok().flatten() }
        })
        .await;
        match outcome.response {
            Some(CommandResponse::Tasks(t)) => {
                p3 += t.tasks.len();
                f3 += t.failures.len();
                assert!(t.failures.iter().all(|f| f
                    .reason
                    .as_deref()
                    .is_some_and(|r| r.starts_with("RESOURCE:"))));
            }
            other => panic!("unexpected outcome {other:?} / {:?}", outcome.error),
        }
    }
    let placed = p1 + p2 + p3;
    let failed = f1 + f2 + f3;
    assert_eq!(placed + failed, demand, "every request has an outcome");
    assert_eq!(placed, capacity, "the whole capacity is used, and no more");

    let listed = api
        .call_json("ListTasks", json!({"cluster": "race", "maxResults": 100}))
        .await
        .expect("ListTasks");
    assert_eq!(listed["taskArns"].as_array().map_or(0, Vec::len), capacity);
    assert_audit_clean(&url).await;
}

/// distinctInstance is binding across replicas: the instance write that places a task
/// refuses when the record it replaces already holds a task of the group, so two
/// replicas deciding on views that do not show each other's placements never put two
/// tasks of the group on one instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_instance_holds_across_replicas() {
    const HOSTS: usize = 4;
    const REQUESTS: usize = 12;
    let berth = TwoReplicas::start().await;
    let api = &berth.api;
    let (_, _beats) = register_hosts(api, "solo", HOSTS, 4096, 4096).await;
    register_task_definition(api, "one", 10, 64, None).await;

    let requests = (0..REQUESTS).map(|i| {
        let api = api.clone();
        tokio::spawn(async move {
            api.call_json(
                "RunTask",
                json!({"cluster": "solo", "taskDefinition": "one:1", "group": "solo",
                    "startedBy": format!("r{i}"),
                    "placementConstraints": [{"type": "distinctInstance"}]}),
            )
            .await
            .expect("RunTask answers")
        })
    });
    let mut hosts = Vec::new();
    let mut failed = 0;
    for reply in futures::future::join_all(requests).await {
        let reply = reply.expect("request task");
        for t in reply["tasks"].as_array().into_iter().flatten() {
            hosts.push(id_of(t["containerInstanceArn"].as_str().expect("arn")));
        }
        for f in reply["failures"].as_array().into_iter().flatten() {
            assert_eq!(f["reason"], "ATTRIBUTE", "{f}");
            failed += 1;
        }
    }
    let mut unique = hosts.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        hosts.len(),
        "two tasks of the group share a host: {hosts:?}"
    );
    assert_eq!(hosts.len(), HOSTS, "every host takes one task of the group");
    assert_eq!(failed, REQUESTS - HOSTS);
    assert_audit_clean(&berth.url()).await;
}

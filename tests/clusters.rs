//! CreateCluster, DescribeClusters, ListClusters and DeleteCluster end to end against a
//! real nats-server: names and ARNs, idempotent creation, live counters, batch limits,
//! paging, and the rules that keep a cluster with instances from being deleted.

use berth_e2e::*;
use berth_messages::{ApiError, ErrorType};
use serde_json::{json, Value};
use std::collections::BTreeSet;

const ARN_PREFIX: &str = "arn:aws:ecs:us-test-1:123456789012:cluster/";

fn cluster_arn(name: &str) -> String {
    format!("{ARN_PREFIX}{name}")
}

fn expect_error(result: Result<Value, ApiError>, expected: ErrorType) -> ApiError {
    match result {
        Ok(v) => panic!("expected {expected}, got a success: {v}"),
        Err(e) => {
            assert_eq!(e.error_type, expected, "{e}");
            assert!(!e.message.is_empty(), "error without a message");
            e
        }
    }
}

async fn state_last_sequence(url: &str) -> u64 {
    let journal = berth_journal::Journal::open(&berth_journal::JournalConfig {
        servers: vec![url.to_string()],
        ..Default::default()
    })
    .await
    .expect("journal opens");
    journal.state_last_sequence().await.expect("stream info")
}

async fn list_all_clusters(api: &Api) -> Vec<String> {
    let reply = api
        .call_json("ListClusters", json!({}))
        .await
        .expect("ListClusters");
    assert!(reply.get("nextToken").is_none(), "{reply}");
    reply["clusterArns"]
        .as_array()
        .expect("clusterArns")
        .iter()
        .map(|a| a.as_str().expect("arn").to_string())
        .collect()
}

async fn describe_one(api: &Api, name: &str) -> Value {
    let reply = api
        .call_json("DescribeClusters", json!({ "clusters": [name] }))
        .await
        .expect("DescribeClusters");
    assert_eq!(reply["failures"], json!([]), "{reply}");
    reply["clusters"][0].clone()
}

fn assert_counters(cluster: &Value, instances: i64, running: i64, pending: i64) {
    assert_eq!(
        cluster["registeredContainerInstancesCount"], instances,
        "{cluster}"
    );
    assert_eq!(cluster["runningTasksCount"], running, "{cluster}");
    assert_eq!(cluster["pendingTasksCount"], pending, "{cluster}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_cluster_default_named_and_idempotent() {
    let berth = Berth::start().await;
    let api = &berth.api;

    // Without a name, CreateCluster creates the cluster named "default".
    let reply = api
        .call_json("CreateCluster", json!({}))
        .await
        .expect("CreateCluster default");
    let default = &reply["cluster"];
    assert_eq!(default["clusterName"], "default");
    assert_eq!(default["clusterArn"], cluster_arn("default"));
    assert_eq!(default["status"], "ACTIVE");
    assert_counters(default, 0, 0, 0);

    let reply = api
        .call_json("CreateCluster", json!({ "clusterName": "prod_1-a" }))
        .await
        .expect("CreateCluster named");
    let prod = reply["cluster"].clone();
    assert_eq!(prod["clusterName"], "prod_1-a");
    assert_eq!(prod["clusterArn"], cluster_arn("prod_1-a"));
    assert_eq!(prod["status"], "ACTIVE");
    assert_counters(&prod, 0, 0, 0);

    // Creating it again returns the same cluster and writes nothing.
    let before = state_last_sequence(&berth.url()).await;
    let again = api
        .call_json("CreateCluster", json!({ "clusterName": "prod_1-a" }))
        .await
        .expect("CreateCluster again");
    assert_eq!(again["cluster"]["clusterArn"], cluster_arn("prod_1-a"));
    assert_eq!(again["cluster"]["clusterName"], "prod_1-a");
    assert_eq!(again["cluster"]["status"], "ACTIVE");
    assert_eq!(state_last_sequence(&berth.url()).await, before);

    // DescribeClusters without names describes the default cluster.
    let reply = api
        .call_json("DescribeClusters", json!({}))
        .await
        .expect("DescribeClusters");
    assert_eq!(reply["clusters"].as_array().map(Vec::len), Some(1));
    assert_eq!(reply["clusters"][0]["clusterArn"], cluster_arn("default"));
    assert_eq!(reply["clusters"][0]["status"], "ACTIVE");
    assert_eq!(reply["failures"], json!([]));

    let listed: BTreeSet<String> = list_all_clusters(api).await.into_iter().collect();
    assert_eq!(
        listed,
        BTreeSet::from([cluster_arn("default"), cluster_arn("prod_1-a")])
    );

    // Names are ECS names: the default name is accepted by ARN as well.
    let by_arn = describe_one(api, &cluster_arn("prod_1-a")).await;
    assert_eq!(by_arn["clusterName"], "prod_1-a");
    assert_audit_clean(&berth.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_counters_follow_instances_and_tasks() {
    let berth = Berth::start().await;
    let api = &berth.api;
    create_cluster(api, "c1").await;
    assert_counters(&describe_one(api, "c1").await, 0, 0, 0);

    let i1 = register_instance(api, "c1", 1024, 1024, json!([])).await;
    let i2 = register_instance(api, "c1", 1024, 1024, json!([])).await;
    let _beats = Heartbeats::start(api.client.clone(), "c1", vec![i1.clone(), i2.clone()]);
    assert_counters(&describe_one(api, "c1").await, 2, 0, 0);

    register_task_definition(api, "web", 128, 256, None).await;
    let reply = api
        .call_json(
            "RunTask",
            json!({"cluster": "c1", "taskDefinition": "web", "count": 3}),
        )
        .await
        .expect("RunTask");
    assert_eq!(reply["failures"], json!([]), "{reply}");
    let tasks: Vec<String> = reply["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|t| t["taskArn"].as_str().expect("task arn").to_string())
        .collect();
    assert_eq!(tasks.len(), 3);
    assert_counters(&describe_one(api, "c1").await, 2, 0, 3);

    // The agent reports one task RUNNING: it moves from pending to running.
    api.call_json(
        "SubmitTaskStateChange",
        json!({"cluster": "c1", "task": tasks[0], "status": "RUNNING"}),
    )
    .await
    .expect("RUNNING");
    assert_counters(&describe_one(api, "c1").await, 2, 1, 2);

    // One RUNNING and one PENDING task stop: both counters drop.
    for task in &tasks[..2] {
        api.call_json(
            "SubmitTaskStateChange",
            json!({"cluster": "c1", "task": task, "status": "STOPPED", "reason": "done"}),
        )
        .await
        .expect("STOPPED");
    }
    assert_counters(&describe_one(api, "c1").await, 2, 0, 1);

    // Deregistering the instance that holds no live task: it no longer counts.
    let live = api
        .call_json(
            "DescribeTasks",
            json!({"cluster": "c1", "tasks": [tasks[2]]}),
        )
        .await
        .expect("DescribeTasks");
    let live_on = id_of(
        live["tasks"][0]["containerInstanceArn"]
            .as_str()
            .expect("instance of the task"),
    );
    let idle = if live_on == i1 { &i2 } else { &i1 };
    api.call_json(
        "DeregisterContainerInstance",
        json!({"cluster": "c1", "containerInstance": idle}),
    )
    .await
    .expect("DeregisterContainerInstance");
    assert_counters(&describe_one(api, "c1").await, 1, 0, 1);
    assert_audit_clean(&berth.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_clusters_reports_missing_and_limits_batches() {
    let berth = Berth::start().await;
    let api = &berth.api;
    create_cluster(api, "a").await;
    create_cluster(api, "b").await;

    let reply = api
        .call_json(
            "DescribeClusters",
            json!({ "clusters": ["a", cluster_arn("b"), "nope", "gone-too"] }),
        )
        .await
        .expect("DescribeClusters");
    let names: Vec<&str> = reply["clusters"]
        .as_array()
        .expect("clusters")
        .iter()
        .map(|c| c["clusterName"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["a", "b"]);
    for c in reply["clusters"].as_array().expect("clusters") {
        assert_eq!(c["status"], "ACTIVE");
        assert_counters(c, 0, 0, 0);
    }
    let failures = reply["failures"].as_array().expect("failures");
    assert_eq!(failures.len(), 2, "{reply}");
    assert_eq!(failures[0]["arn"], cluster_arn("nope"));
    assert_eq!(failures[0]["reason"], "MISSING");
    assert_eq!(failures[1]["arn"], cluster_arn("gone-too"));
    assert_eq!(failures[1]["reason"], "MISSING");

    // Only the default cluster is described when no names are given; it does not exist.
    let reply = api
        .call_json("DescribeClusters", json!({}))
        .await
        .expect("DescribeClusters default");
    assert_eq!(reply["clusters"], json!([]));
    assert_eq!(reply["failures"][0]["arn"], cluster_arn("default"));
    assert_eq!(reply["failures"][0]["reason"], "MISSING");

    // At most 100 clusters per request.
    let hundred: Vec<String> = (0..100).map(|i| format!("c{i}")).collect();
    let reply = api
        .call_json("DescribeClusters", json!({ "clusters": hundred }))
        .await
        .expect("100 clusters is the limit");
    assert_eq!(reply["failures"].as_array().map(Vec::len), Some(100));
    let hundred_one: Vec<String> = (0..101).map(|i| format!("c{i}")).collect();
    expect_error(
        api.call_json("DescribeClusters", json!({ "clusters": hundred_one }))
            .await,
        ErrorType::InvalidParameterException,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_clusters_pages_with_tokens() {
    let berth = Berth::start().await;
    let api = &berth.api;
    let names: Vec<String> = (0..7).map(|i| format!("page-{i}")).collect();
    for n in &names {
        create_cluster(api, n).await;
    }

    let mut seen = Vec::new();
    let mut pages = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut req = json!({ "maxResults": 3 });
        if let Some(t) = &token {
            req["nextToken"] = json!(t);
        }
        let reply = api.call_json("ListClusters", req).await.expect("page");
        let arns = reply["clusterArns"].as_array().expect("clusterArns");
        pages.push(arns.len());
        seen.extend(arns.iter().map(|a| a.as_str().expect("arn").to_string()));
        match reply.get("nextToken").and_then(Value::as_str) {
            Some(t) => token = Some(t.to_string()),
            None => break,
        }
        assert!(pages.len() <= 3, "more pages than expected: {pages:?}");
    }
    assert_eq!(pages, [3, 3, 1]);
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a cluster listed twice: {seen:?}");
    let expected: BTreeSet<String> = names.iter().map(|n| cluster_arn(n)).collect();
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), expected);

    for bad in [0, 101, -1] {
        expect_error(
            api.call_json("ListClusters", json!({ "maxResults": bad }))
                .await,
            ErrorType::InvalidParameterException,
        );
    }
    for garbage in ["not-a-token", "zz", "abc", "ffff"] {
        expect_error(
            api.call_json("ListClusters", json!({ "nextToken": garbage }))
                .await,
            ErrorType::InvalidParameterException,
        );
    }
    // The service keeps serving after the refusals.
    assert_eq!(list_all_clusters(api).await.len(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_cluster_refuses_until_instances_are_gone() {
    let berth = Berth::start().await;
    let api = &berth.api;

    expect_error(
        api.call_json("DeleteCluster", json!({ "cluster": "nope" }))
            .await,
        ErrorType::ClusterNotFoundException,
    );

    create_cluster(api, "c1").await;
    create_cluster(api, "keep").await;
    let i1 = register_instance(api, "c1", 1024, 1024, json!([])).await;
    let _beats = Heartbeats::start(api.client.clone(), "c1", vec![i1.clone()]);

    let before = state_last_sequence(&berth.url()).await;
    expect_error(
        api.call_json("DeleteCluster", json!({ "cluster": "c1" }))
            .await,
        ErrorType::ClusterContainsContainerInstancesException,
    );
    assert_eq!(state_last_sequence(&berth.url()).await, before);
    assert_eq!(describe_one(api, "c1").await["status"], "ACTIVE");

    api.call_json(
        "DeregisterContainerInstance",
        json!({"cluster": "c1", "containerInstance": i1}),
    )
    .await
    .expect("DeregisterContainerInstance");
    let reply = api
        .call_json("DeleteCluster", json!({ "cluster": cluster_arn("c1") }))
        .await
        .expect("DeleteCluster");
    assert_eq!(reply["cluster"]["clusterArn"], cluster_arn("c1"));
    assert_eq!(reply["cluster"]["status"], "INACTIVE");

    // Gone from ListClusters, still describable as INACTIVE, and no longer usable.
    assert_eq!(list_all_clusters(api).await, [cluster_arn("keep")]);
    assert_eq!(describe_one(api, "c1").await["status"], "INACTIVE");
    expect_error(
        api.call_json("DeleteCluster", json!({ "cluster": "c1" }))
            .await,
        ErrorType::ClusterNotFoundException,
    );
    expect_error(
        api.call_json("ListContainerInstances", json!({ "cluster": "c1" }))
            .await,
        ErrorType::ClusterNotFoundException,
    );

    // The name can be used again: the new cluster is ACTIVE and empty.
    let reply = api
        .call_json("CreateCluster", json!({ "clusterName": "c1" }))
        .await
        .expect("re-create");
    assert_eq!(reply["cluster"]["status"], "ACTIVE");
    assert_counters(&reply["cluster"], 0, 0, 0);
    assert_audit_clean(&berth.url()).await;
}

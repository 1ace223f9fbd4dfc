//! Production shape: a three-node nats-server cluster with R3 streams. On R3 a second
//! conditional write to a subject with one in flight is refused at once, so this is where
//! the instance actor's group commit matters: concurrent RunTasks on one instance must all
//! be placed, and the auditor must be clean.

use berth_e2e::*;
use berth_testkit::NatsCluster;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_streams_place_concurrent_tasks_on_one_instance() {
    let cluster = NatsCluster::start(3);
    let urls = cluster.urls();
    let mut config = control_config(&urls[0]);
    config.nats = urls.clone();
    config.replicas = 3;
    let _control = berth_control::spawn(config);
    let client = async_nats::connect(urls.clone()).await.expect("connect");
    let api = Api {
        client,
        encoding: berth_messages::codec::Encoding::Json,
    };
    api.wait_serving().await;
    create_cluster(&api, "prod").await;
    let instance = register_instance(&api, "prod", 4096, 4096, json!([])).await;
    let _beats = Heartbeats::start(api.client.clone(), "prod", vec![instance.clone()]);
    register_task_definition(&api, "svc", 10, 100, None).await;

    let runs = (0..20).map(|i| {
        let api = api.clone();
        async move {
            api.call_json("RunTask", json!({"cluster": "prod", "taskDefinition": "svc", "count": 2, "startedBy": format!("r{i}")}))
                .await
                .expect("RunTask")
        }
    });
    let replies = futures::future::join_all(runs).await;
    let placed: usize = replies
        .iter()
        .map(|r| r["tasks"].as_array().map_or(0, Vec::len))
        .sum();
    let failures: Vec<_> = replies
        .iter()
        .flat_map(|r| r["failures"].as_array().cloned().unwrap_or_default())
        .collect();
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(placed, 40);
    let described = api
        .call_json(
            "DescribeContainerInstances",
            json!({"cluster": "prod", "containerInstances": [instance]}),
        )
        .await
        .expect("describe");
    let memory = described["containerInstances"][0]["remainingResources"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["name"] == "MEMORY").cloned())
        .expect("memory");
    assert_eq!(memory["integerValue"], 4096 - 40 * 100);
    let client = async_nats::connect(urls).await.expect("connect");
    let report = berth_audit::audit(&client).await.expect("audit");
    assert!(report.is_clean(), "{report}");
}

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

/// On R3 the server refuses a second conditional write to a subject with one in flight
/// with JetStream error 10164, not 10071: both must read as a conflict (re-read,
/// re-validate, retry), never as a transient failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_refusals_of_concurrent_writes_are_conflicts() {
    use berth_journal::{Journal, JournalConfig, JournalError};
    let cluster = NatsCluster::start(3);
    let config = JournalConfig {
        servers: cluster.urls(),
        streams: berth_messages::streams::StreamOptions {
            replicas: 3,
            ..Default::default()
        },
        ..Default::default()
    };
    let writers = [
        Journal::open(&config).await.expect("journal"),
        Journal::open(&config).await.expect("journal"),
    ];
    let subject = berth_messages::subjects::instance("race", "one");
    let mut version = 0;
    let mut conflicts = 0;
    for round in 0..300u32 {
        // Both write the record they read at once; exactly one of them may win.
        let writes = writers.iter().enumerate().map(|(w, journal)| {
            let subject = subject.clone();
            async move {
                journal
                    .write(
                        &subject,
                        &format!("round {round} writer {w}"),
                        version,
                        "race",
                    )
                    .await
            }
        });
        let results = futures::future::join_all(writes).await;
        let mut won = None;
        for result in results {
            match result {
                Ok(v) => {
                    assert!(won.is_none(), "two writes of version {version} both landed");
                    won = Some(v);
                }
                Err(JournalError::Conflict { .. }) => conflicts += 1,
                Err(other) => panic!("round {round}: a refusal that is not a conflict: {other}"),
            }
        }
        version = match won {
            Some(v) => v,
            // Both refused (each saw the other in flight): read what is there.
            None => writers[0]
                .read_raw(&subject)
                .await
                .expect("read")
                .map_or(0, |(_, v, _)| v),
        };
    }
    assert!(conflicts > 0, "concurrent writers never conflicted");
}

/// Two replicas on R3 place and stop tasks on one instance at once: the instance actor
/// sees every refusal as a conflict and re-validates, so each stopped task's release is
/// written by the command that stopped it, and nothing is left for reconciliation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_conflicts_never_leave_a_released_allocation_held() {
    let cluster = NatsCluster::start(3);
    let urls = cluster.urls();
    let replica = || {
        let mut config = control_config(&urls[0]);
        config.nats = urls.clone();
        config.replicas = 3;
        // Far longer than the test: only the stopping command itself releases.
        config.reconcile_interval = 3600.0;
        berth_control::spawn(config)
    };
    let _replicas = [replica(), replica()];
    let client = async_nats::connect(urls.clone()).await.expect("connect");
    let api = Api {
        client,
        encoding: berth_messages::codec::Encoding::Json,
    };
    api.wait_serving().await;
    create_cluster(&api, "release").await;
    let instance = register_instance(&api, "release", 4096, 4096, json!([])).await;
    let _beats = Heartbeats::start(api.client.clone(), "release", vec![instance.clone()]);
    register_task_definition(&api, "svc", 10, 10, None).await;

    let rounds = (0..30).map(|i| {
        let api = api.clone();
        async move {
            let reply = api
                .call_json(
                    "RunTask",
                    json!({"cluster": "release", "taskDefinition": "svc", "count": 2, "startedBy": format!("r{i}")}),
                )
                .await
                .expect("RunTask");
            let arns: Vec<String> = reply["tasks"]
                .as_array()
                .expect("tasks")
                .iter()
                .map(|t| t["taskArn"].as_str().unwrap_or_default().to_string())
                .collect();
            assert_eq!(arns.len(), 2, "{reply}");
            // The agent's report that the task ended: the task goes STOPPED and its
            // allocation is released, while other rounds allocate on the same record.
            for arn in &arns {
                api.call_json(
                    "SubmitTaskStateChange",
                    json!({"cluster": "release", "task": arn, "status": "STOPPED"}),
                )
                .await
                .expect("SubmitTaskStateChange");
            }
        }
    });
    futures::future::join_all(rounds).await;
    let described = api
        .call_json(
            "DescribeContainerInstances",
            json!({"cluster": "release", "containerInstances": [instance]}),
        )
        .await
        .expect("describe");
    let record = &described["containerInstances"][0];
    assert!(
        record["allocations"]
            .as_object()
            .is_none_or(|a| a.is_empty()),
        "allocations left held: {}",
        record["allocations"]
    );
    let memory = record["remainingResources"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["name"] == "MEMORY").cloned())
        .expect("memory");
    assert_eq!(memory["integerValue"], 4096);
    let report = berth_audit::audit(&api.client).await.expect("audit");
    assert!(report.is_clean(), "{report}");
}

//! RunTask, StartTask, StopTask, the agent's state changes and the task lifecycle,
//! end to end against a real nats-server.

use berth_e2e::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_task_places_and_lifecycle_returns_resources() {
    let berth = Berth::start().await;
    let api = &berth.api;
    create_cluster(api, "c1").await;
    let i1 = register_instance(api, "c1", 2048, 1024, json!([])).await;
    let _beats = Heartbeats::start(api.client.clone(), "c1", vec![i1.clone()]);
    let td = register_task_definition(api, "web", 256, 512, Some(8080)).await;
    assert!(td.ends_with(":task-definition/web:1"), "{td}");

    let reply = api
        .call_json(
            "RunTask",
            json!({"cluster": "c1", "taskDefinition": "web", "count": 3, "startedBy": "me"}),
        )
        .await
        .expect("RunTask");
    let tasks = reply["tasks"].as_array().expect("tasks");
    let failures = reply["failures"].as_array().expect("failures");
    // 1024 MiB of memory takes two tasks of 512; host port 8080 only one task.
    assert_eq!(tasks.len(), 1, "{reply}");
    assert_eq!(failures.len(), 2, "{reply}");
    for f in failures {
        let reason = f["reason"].as_str().unwrap_or_default();
        assert!(
            reason == "RESOURCE:PORTS" || reason == "RESOURCE:MEMORY",
            "{f}"
        );
    }
    let task = &tasks[0];
    assert_eq!(task["lastStatus"], "PENDING");
    assert_eq!(task["desiredStatus"], "RUNNING");
    assert_eq!(task["startedBy"], "me");
    assert_eq!(task["group"], "family:web");
    assert_eq!(
        task["containers"][0]["networkBindings"][0]["hostPort"],
        8080
    );
    let task_arn = task["taskArn"].as_str().expect("arn").to_string();
    assert!(
        task_arn.starts_with("arn:aws:ecs:us-test-1:123456789012:task/c1/"),
        "{task_arn}"
    );

    let ci = api
        .call_json(
            "DescribeContainerInstances",
            json!({"cluster": "c1", "containerInstances": [i1]}),
        )
        .await
        .expect("describe");
    let remaining = &ci["containerInstances"][0]["remainingResources"];
    let mem = remaining
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "MEMORY")
        .unwrap();
    assert_eq!(mem["integerValue"], 512);
    assert_eq!(ci["containerInstances"][0]["pendingTasksCount"], 1);

    // The agent reports RUNNING then STOPPED.
    api.call_json(
        "SubmitTaskStateChange",
        json!({"cluster": "c1", "task": task_arn, "status": "RUNNING",
        "containers": [{"containerName": "app", "status": "RUNNING"}]}),
    )
    .await
    .expect("running");
    let clusters = api
        .call_json("DescribeClusters", json!({"clusters": ["c1"]}))
        .await
        .unwrap();
    assert_eq!(clusters["clusters"][0]["runningTasksCount"], 1);
    api.call_json("SubmitTaskStateChange", json!({"cluster": "c1", "task": task_arn, "status": "STOPPED",
        "reason": "done", "containers": [{"containerName": "app", "status": "STOPPED", "exitCode": 0}]}))
        .await
        .expect("stopped");
    // A late RUNNING report does not move it back.
    api.call_json(
        "SubmitTaskStateChange",
        json!({"cluster": "c1", "task": task_arn, "status": "RUNNING"}),
    )
    .await
    .expect("late report acknowledged");
    let t = api
        .call_json(
            "DescribeTasks",
            json!({"cluster": "c1", "tasks": [task_arn]}),
        )
        .await
        .unwrap();
    assert_eq!(t["tasks"][0]["lastStatus"], "STOPPED");
    assert_eq!(t["tasks"][0]["containers"][0]["exitCode"], 0);
    assert_eq!(t["tasks"][0]["stopCode"], "EssentialContainerExited");
    let ci = api
        .call_json(
            "DescribeContainerInstances",
            json!({"cluster": "c1", "containerInstances": [i1]}),
        )
        .await
        .unwrap();
    let mem = ci["containerInstances"][0]["remainingResources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "MEMORY")
        .unwrap()
        .clone();
    assert_eq!(mem["integerValue"], 1024);
    assert_audit_clean(&berth.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_tasks_expire_after_the_retention_window() {
    let nats = berth_testkit::NatsServer::start();
    let mut config = control_config(&nats.url());
    config.stopped_task_retention = 1.0;
    let _control = berth_control::spawn(config);
    let api = Api::connect(&nats.url()).await;
    api.wait_serving().await;
    create_cluster(&api, "ret").await;
    let i1 = register_instance(&api, "ret", 1024, 1024, json!([])).await;
    let _beats = Heartbeats::start(api.client.clone(), "ret", vec![i1.clone()]);
    register_task_definition(&api, "short", 10, 10, None).await;
    let reply = api
        .call_json(
            "RunTask",
            json!({"cluster": "ret", "taskDefinition": "short", "count": 2}),
        )
        .await
        .expect("RunTask");
    let arns: Vec<String> = reply["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|t| t["taskArn"].as_str().expect("arn").to_string())
        .collect();
    api.call_json(
        "SubmitTaskStateChange",
        json!({"cluster": "ret", "task": arns[0], "status": "STOPPED"}),
    )
    .await
    .expect("stopped");
    // The stopped task disappears; the running one stays.
    let api2 = api.clone();
    let gone = arns[0].clone();
    berth_testkit::wait_for("the stopped task to expire", PATIENCE, || {
        let api = api2.clone();
        let gone = gone.clone();
        async move {
            let r = api
                .call_json("DescribeTasks", json!({"cluster": "ret", "tasks": [gone]}))
                .await
                .ok()?;
            (r["failures"][0]["reason"] == "MISSING").then_some(())
        }
    })
    .await;
    let journal = berth_journal::Journal::open(&berth_journal::JournalConfig {
        servers: vec![nats.url()],
        ..Default::default()
    })
    .await
    .expect("journal");
    let subject = berth_messages::subjects::task("ret", &i1, &id_of(&arns[0]));
    assert!(
        journal.read_raw(&subject).await.expect("read").is_none(),
        "subject purged"
    );
    let still = api
        .call_json(
            "DescribeTasks",
            json!({"cluster": "ret", "tasks": [arns[1]]}),
        )
        .await
        .expect("describe");
    assert_eq!(still["tasks"][0]["lastStatus"], "PENDING");
    assert_audit_clean(&nats.url()).await;
}

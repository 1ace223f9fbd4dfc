//! ECS services end to end against a real nats-server, an in-process control plane and
//! hollow hosts: the service actions' shapes and errors, a service kept at its desired
//! count through stops and scaling, a rolling deployment that never leaves its bounds,
//! and a deleted service drained to INACTIVE; each ends with a clean audit.

use berth_e2e::*;
use berth_testkit::wait_for;
use serde_json::{json, Value};
use std::time::Duration;

/// Hollow tasks run for ten minutes: longer than any test.
const RUN_TIME: Duration = Duration::from_secs(600);

async fn error_of(api: &Api, action: &str, body: Value) -> (String, String) {
    let e = api
        .call_json(action, body)
        .await
        .expect_err(&format!("{action} must be refused"));
    (e.error_type.to_string(), e.message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn service_actions_have_ecs_shapes_and_errors() {
    let berth = Berth::start().await;
    let api = &berth.api;
    create_cluster(api, "svc").await;
    let _sim = berth_sim::start(sim_config(&berth.url(), "svc", 4, RUN_TIME))
        .await
        .expect("sim starts");
    let td = register_task_definition(api, "web", 128, 128, None).await;
    let created = api
        .call_json(
            "CreateService",
            json!({"cluster": "svc", "serviceName": "web", "taskDefinition": "web",
                   "desiredCount": 3, "tags": [{"key": "team", "value": "a"}]}),
        )
        .await
        .expect("CreateService");
    let s = &created["service"];
    assert_eq!(
        s["serviceArn"],
        "arn:aws:ecs:us-test-1:123456789012:service/svc/web"
    );
    assert_eq!(s["serviceName"], "web");
    assert_eq!(
        s["clusterArn"],
        "arn:aws:ecs:us-test-1:123456789012:cluster/svc"
    );
    assert_eq!(s["status"], "ACTIVE");
    assert_eq!(s["desiredCount"], 3);
    assert_eq!(s["taskDefinition"], td.as_str());
    assert_eq!(s["schedulingStrategy"], "REPLICA");
    assert_eq!(s["launchType"], "EC2");
    assert_eq!(s["deploymentController"]["type"], "ECS");
    assert_eq!(s["deploymentConfiguration"]["maximumPercent"], 200);
    assert_eq!(s["deploymentConfiguration"]["minimumHealthyPercent"], 100);
    let deployment = &s["deployments"][0];
    assert_eq!(deployment["status"], "PRIMARY");
    assert_eq!(deployment["rolloutState"], "IN_PROGRESS");
    let deployment_id = deployment["id"]
        .as_str()
        .expect("deployment id")
        .to_string();
    assert!(deployment_id.starts_with("ecs-svc/"), "{deployment_id}");
    for internal in ["step", "creationDigest", "lastCommandId", "deploymentsMade"] {
        assert!(s.get(internal).is_none(), "{internal} is internal");
    }

    let s = wait_service_steady(api, "svc", "web", 3).await;
    let messages: Vec<&str> = s["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["message"].as_str())
        .collect();
    assert_eq!(messages[0], "(service web) has reached a steady state.");
    assert!(messages
        .iter()
        .any(|m| m.starts_with("(service web) has started 3 tasks:")));
    for e in s["events"].as_array().expect("events") {
        assert!(e["id"].is_string() && e["createdAt"].is_number());
    }
    assert_eq!(s["tags"][0]["key"], "team");
    let tasks = service_tasks(api, "svc", "web").await;
    assert_eq!(tasks.len(), 3);
    for t in &tasks {
        assert_eq!(t["group"], "service:web");
        assert_eq!(t["startedBy"], deployment_id.as_str());
        assert_eq!(t["lastStatus"], "RUNNING");
    }
    let cluster = api
        .call_json("DescribeClusters", json!({"clusters": ["svc"]}))
        .await
        .expect("DescribeClusters");
    assert_eq!(cluster["clusters"][0]["activeServicesCount"], 1);

    // Identical parameters return the existing service; others are refused.
    let again = api
        .call_json(
            "CreateService",
            json!({"cluster": "svc", "serviceName": "web", "taskDefinition": "web",
                   "desiredCount": 3, "tags": [{"key": "team", "value": "a"}]}),
        )
        .await
        .expect("identical CreateService");
    assert_eq!(
        again["service"]["deployments"][0]["id"],
        deployment_id.as_str()
    );
    let (kind, message) = error_of(
        api,
        "CreateService",
        json!({"cluster": "svc", "serviceName": "web", "taskDefinition": "web", "desiredCount": 4}),
    )
    .await;
    assert_eq!(kind, "InvalidParameterException");
    assert_eq!(message, "Creation of service was not idempotent.");

    // Bad input: an ECS error each, nothing written.
    let before = describe_service(api, "svc", "web").await;
    let bad = [
        (
            json!({"cluster": "svc", "serviceName": "a", "taskDefinition": "web", "desiredCount": -1}),
            "InvalidParameterException",
        ),
        (
            json!({"cluster": "svc", "serviceName": "a", "taskDefinition": "web", "desiredCount": 1_000_000_000}),
            "InvalidParameterException",
        ),
        (
            json!({"cluster": "svc", "serviceName": "a", "taskDefinition": "web", "desiredCount": 1, "schedulingStrategy": "DAEMON"}),
            "InvalidParameterException",
        ),
        (
            json!({"cluster": "svc", "serviceName": "a", "taskDefinition": "web", "desiredCount": 1,
                "deploymentConfiguration": {"minimumHealthyPercent": 150, "maximumPercent": 100}}),
            "InvalidParameterException",
        ),
        (
            json!({"cluster": "svc", "serviceName": "bad name!", "taskDefinition": "web", "desiredCount": 1}),
            "InvalidParameterException",
        ),
        (
            json!({"cluster": "svc", "serviceName": "a", "taskDefinition": "nope", "desiredCount": 1}),
            "ClientException",
        ),
        (
            json!({"cluster": "svc", "serviceName": "a", "taskDefinition": "web", "desiredCount": 1,
                "placementConstraints": [{"type": "memberOf", "expression": "attribute:x =="}]}),
            "InvalidParameterException",
        ),
        (
            json!({"cluster": "nope", "serviceName": "a", "taskDefinition": "web", "desiredCount": 1}),
            "ClusterNotFoundException",
        ),
    ];
    for (body, expected) in bad {
        let (kind, message) = error_of(api, "CreateService", body.clone()).await;
        assert_eq!(kind, expected, "{body}: {message}");
    }
    let (kind, _) = error_of(
        api,
        "UpdateService",
        json!({"cluster": "svc", "service": "nope", "desiredCount": 1}),
    )
    .await;
    assert_eq!(kind, "ServiceNotFoundException");
    let (kind, _) = error_of(
        api,
        "DeleteService",
        json!({"cluster": "svc", "service": "web"}),
    )
    .await;
    assert_eq!(kind, "InvalidParameterException");
    let (kind, _) = error_of(
        api,
        "UpdateService",
        json!({"cluster": "svc", "service": "web", "desiredCount": -2}),
    )
    .await;
    assert_eq!(kind, "InvalidParameterException");
    let after = describe_service(api, "svc", "web").await;
    assert_eq!(before["desiredCount"], after["desiredCount"]);
    let listed = api
        .call_json("ListServices", json!({"cluster": "svc"}))
        .await
        .expect("ListServices");
    assert_eq!(listed["serviceArns"].as_array().map(Vec::len), Some(1));

    // Paging, filters and missing services.
    api.call_json(
        "CreateService",
        json!({"cluster": "svc", "serviceName": "zero", "taskDefinition": "web", "desiredCount": 0}),
    )
    .await
    .expect("CreateService zero");
    let first = api
        .call_json("ListServices", json!({"cluster": "svc", "maxResults": 1}))
        .await
        .expect("ListServices page 1");
    assert_eq!(first["serviceArns"].as_array().map(Vec::len), Some(1));
    let token = first["nextToken"].as_str().expect("nextToken");
    let second = api
        .call_json(
            "ListServices",
            json!({"cluster": "svc", "maxResults": 1, "nextToken": token}),
        )
        .await
        .expect("ListServices page 2");
    assert_ne!(first["serviceArns"][0], second["serviceArns"][0]);
    let daemons = api
        .call_json(
            "ListServices",
            json!({"cluster": "svc", "schedulingStrategy": "DAEMON"}),
        )
        .await
        .expect("ListServices DAEMON");
    assert_eq!(daemons["serviceArns"].as_array().map(Vec::len), Some(0));
    let missing = api
        .call_json(
            "DescribeServices",
            json!({"cluster": "svc", "services": ["ghost"]}),
        )
        .await
        .expect("DescribeServices");
    assert_eq!(missing["failures"][0]["reason"], "MISSING");
    assert_eq!(
        missing["failures"][0]["arn"],
        "arn:aws:ecs:us-test-1:123456789012:service/svc/ghost"
    );
    assert_audit_clean(&berth.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_service_keeps_its_tasks_and_rolls_within_bounds() {
    let berth = Berth::start().await;
    let api = &berth.api;
    create_cluster(api, "keep").await;
    let _sim = berth_sim::start(sim_config(&berth.url(), "keep", 4, RUN_TIME))
        .await
        .expect("sim starts");
    register_task_definition(api, "app", 128, 128, None).await;
    api.call_json(
        "CreateService",
        json!({"cluster": "keep", "serviceName": "app", "taskDefinition": "app", "desiredCount": 3}),
    )
    .await
    .expect("CreateService");
    wait_service_steady(api, "keep", "app", 3).await;

    // A task stopped by a user is replaced.
    let tasks = service_tasks(api, "keep", "app").await;
    let victim = tasks[0]["taskArn"].as_str().expect("task arn").to_string();
    api.call_json(
        "StopTask",
        json!({"cluster": "keep", "task": victim, "reason": "test"}),
    )
    .await
    .expect("StopTask");
    wait_for("the stopped task replaced", PATIENCE, || async {
        let now = service_tasks(api, "keep", "app").await;
        let running = now.iter().filter(|t| t["lastStatus"] == "RUNNING").count();
        (running == 3 && now.iter().all(|t| t["taskArn"] != victim.as_str())).then_some(())
    })
    .await;
    let s = describe_service(api, "keep", "app").await;
    assert_eq!(
        s["deployments"][0]["failedTasks"], 0,
        "a user's stop is no failure"
    );

    // Scale out and in.
    api.call_json(
        "UpdateService",
        json!({"cluster": "keep", "service": "app", "desiredCount": 6}),
    )
    .await
    .expect("scale out");
    wait_service_steady(api, "keep", "app", 6).await;
    api.call_json(
        "UpdateService",
        json!({"cluster": "keep", "service": "app", "desiredCount": 2}),
    )
    .await
    .expect("scale in");
    wait_service_steady(api, "keep", "app", 2).await;

    // A rolling deployment (min 100, max 150 of 2: start one, then stop one) never has
    // fewer than 2 RUNNING nor more than 3 tasks.
    let td2 = register_task_definition(api, "app", 64, 64, None).await;
    api.call_json(
        "UpdateService",
        json!({"cluster": "keep", "service": "app", "taskDefinition": td2,
               "deploymentConfiguration": {"minimumHealthyPercent": 100, "maximumPercent": 150}}),
    )
    .await
    .expect("UpdateService with a new task definition");
    let seen = std::sync::Mutex::new((i64::MAX, 0i64));
    let (seen_ref, td2_ref) = (&seen, &td2);
    let done = wait_for("the deployment completes", PATIENCE, move || async move {
        let tasks = service_tasks(api, "keep", "app").await;
        let running = tasks
            .iter()
            .filter(|t| t["lastStatus"] == "RUNNING")
            .count() as i64;
        let live = tasks
            .iter()
            .filter(|t| t["lastStatus"] != "STOPPED")
            .count() as i64;
        if let Ok(mut s) = seen_ref.lock() {
            s.0 = s.0.min(running);
            s.1 = s.1.max(live);
        }
        let s = describe_service(api, "keep", "app").await;
        let deployments = s["deployments"].as_array()?.clone();
        (deployments.len() == 1
            && deployments[0]["rolloutState"] == "COMPLETED"
            && deployments[0]["taskDefinition"] == td2_ref.as_str()
            && s["runningCount"] == 2)
            .then_some(s)
    })
    .await;
    let (least, most) = *seen.lock().expect("samples");
    assert!(least >= 2, "RUNNING went down to {least}");
    assert!(most <= 3, "non-stopped tasks went up to {most}");
    let tasks = service_tasks(api, "keep", "app").await;
    assert!(tasks.iter().all(|t| t["taskDefinitionArn"] == td2.as_str()));
    assert!(done["events"][0]["message"]
        .as_str()
        .is_some_and(|m| m.ends_with("has reached a steady state.")));

    // Deleted: DRAINING, then INACTIVE once its tasks are gone, still described.
    let (kind, _) = error_of(
        api,
        "DeleteService",
        json!({"cluster": "keep", "service": "app"}),
    )
    .await;
    assert_eq!(kind, "InvalidParameterException");
    let deleted = api
        .call_json(
            "DeleteService",
            json!({"cluster": "keep", "service": "app", "force": true}),
        )
        .await
        .expect("DeleteService");
    assert_eq!(deleted["service"]["status"], "DRAINING");
    wait_for("the service INACTIVE", PATIENCE, || async {
        (describe_service(api, "keep", "app").await["status"] == "INACTIVE").then_some(())
    })
    .await;
    assert!(service_tasks(api, "keep", "app").await.is_empty());
    let (kind, _) = error_of(
        api,
        "UpdateService",
        json!({"cluster": "keep", "service": "app", "desiredCount": 1}),
    )
    .await;
    assert_eq!(kind, "ServiceNotActiveException");
    // The name can be used again.
    api.call_json(
        "CreateService",
        json!({"cluster": "keep", "serviceName": "app", "taskDefinition": "app", "desiredCount": 1}),
    )
    .await
    .expect("CreateService again");
    wait_service_steady(api, "keep", "app", 1).await;
    assert_audit_clean(&berth.url()).await;
}

/// Services deploying at once under two replica processes, one of them SIGKILLed in the
/// middle of the deployments and started again: every service converges, and the
/// auditor (which replays every step against the bounds) is clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_deploy_many_services_within_bounds() {
    const SERVICES: usize = 20;
    let mut berth = TwoReplicas::start().await;
    let api = berth.api.clone();
    let api = &api;
    create_cluster(api, "many").await;
    let _sim = berth_sim::start(sim_config(&berth.url(), "many", 20, RUN_TIME))
        .await
        .expect("sim starts");
    register_task_definition(api, "many", 64, 64, None).await;
    let names: Vec<String> = (0..SERVICES).map(|i| format!("s{i}")).collect();
    for name in &names {
        api.call_json(
            "CreateService",
            json!({"cluster": "many", "serviceName": name, "taskDefinition": "many:1",
                   "desiredCount": 4,
                   "deploymentConfiguration": {"minimumHealthyPercent": 50, "maximumPercent": 150}}),
        )
        .await
        .expect("CreateService");
    }
    for name in &names {
        wait_service_steady(api, "many", name, 4).await;
    }
    let td2 = register_task_definition(api, "many", 32, 32, None).await;
    for name in &names {
        api.call_json(
            "UpdateService",
            json!({"cluster": "many", "service": name, "taskDefinition": td2}),
        )
        .await
        .expect("UpdateService");
    }
    // One replica dies in the middle of the deployments and comes back.
    berth.replicas[0].kill();
    berth.replicas[0] = ControlProcess::start(&berth.url());
    for name in &names {
        let s = wait_service_steady(api, "many", name, 4).await;
        assert_eq!(s["deployments"][0]["taskDefinition"], td2.as_str());
    }
    assert_audit_clean(&berth.url()).await;
}

/// A service's tasks leave a DRAINING instance (replacements first, within the bounds)
/// and a host whose agent stays away past `--host-lost-after` (its tasks are marked
/// STOPPED with ECS-style wording, and replaced elsewhere).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_service_moves_off_drained_and_lost_hosts() {
    let berth = Berth::start_with(|url| berth_control::ControlConfig {
        host_lost_after: 2.0,
        ..control_config(url)
    })
    .await;
    let api = &berth.api;
    create_cluster(api, "move").await;
    let first = berth_sim::start(sim_config(&berth.url(), "move", 2, RUN_TIME))
        .await
        .expect("first hosts start");
    register_task_definition(api, "mover", 128, 128, None).await;
    api.call_json(
        "CreateService",
        json!({"cluster": "move", "serviceName": "mover", "taskDefinition": "mover", "desiredCount": 2}),
    )
    .await
    .expect("CreateService");
    wait_service_steady(api, "move", "mover", 2).await;

    // Drain one host: its task moves to the other.
    let drained = first.instance_arns()[0].clone();
    api.call_json(
        "UpdateContainerInstancesState",
        json!({"cluster": "move", "containerInstances": [drained], "status": "DRAINING"}),
    )
    .await
    .expect("drain");
    let moved = wait_for("the drained host empty", PATIENCE, || async {
        let tasks = service_tasks(api, "move", "mover").await;
        let live: Vec<&Value> = tasks
            .iter()
            .filter(|t| t["lastStatus"] != "STOPPED")
            .collect();
        (live.len() == 2
            && live.iter().all(|t| {
                t["lastStatus"] == "RUNNING" && t["containerInstanceArn"] != drained.as_str()
            }))
        .then_some(tasks)
    })
    .await;
    assert!(moved.iter().all(|t| t["desiredStatus"] == "RUNNING"));

    // Lose every first host; new ones take the tasks.
    let second = berth_sim::start(sim_config(&berth.url(), "move", 2, RUN_TIME))
        .await
        .expect("second hosts start");
    first.stop().await;
    wait_for("the tasks moved to the new hosts", PATIENCE, || async {
        let tasks = service_tasks(api, "move", "mover").await;
        let on_new = tasks
            .iter()
            .filter(|t| {
                t["lastStatus"] == "RUNNING"
                    && second
                        .instance_arns()
                        .iter()
                        .any(|a| t["containerInstanceArn"] == a.as_str())
            })
            .count();
        (on_new == 2).then_some(())
    })
    .await;
    let stopped = api
        .call_json(
            "ListTasks",
            json!({"cluster": "move", "serviceName": "mover", "desiredStatus": "STOPPED"}),
        )
        .await
        .expect("ListTasks STOPPED");
    let arns = stopped["taskArns"].as_array().cloned().unwrap_or_default();
    let described = api
        .call_json("DescribeTasks", json!({"cluster": "move", "tasks": arns}))
        .await
        .expect("DescribeTasks");
    assert!(described["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .any(|t| t["stoppedReason"] == "Host lost: agent disconnected"));
    wait_service_steady(api, "move", "mover", 2).await;
    assert_audit_clean(&berth.url()).await;
}

/// A DAEMON service runs one task on every ACTIVE instance: a host that joins gets one, a
/// DRAINING host's is stopped and not replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_daemon_follows_its_instances() {
    let berth = Berth::start().await;
    let api = &berth.api;
    create_cluster(api, "dmn").await;
    let first = berth_sim::start(sim_config(&berth.url(), "dmn", 3, RUN_TIME))
        .await
        .expect("hosts start");
    register_task_definition(api, "agentd", 64, 64, None).await;
    let created = api
        .call_json(
            "CreateService",
            json!({"cluster": "dmn", "serviceName": "agentd", "taskDefinition": "agentd",
                   "schedulingStrategy": "DAEMON"}),
        )
        .await
        .expect("CreateService DAEMON");
    assert_eq!(created["service"]["schedulingStrategy"], "DAEMON");
    assert_eq!(
        created["service"]["deploymentConfiguration"]["maximumPercent"],
        100
    );
    assert_eq!(
        created["service"]["deploymentConfiguration"]["minimumHealthyPercent"],
        0
    );
    let one_per_instance = |expected: usize| async move {
        let tasks = service_tasks(api, "dmn", "agentd").await;
        let running: Vec<&Value> = tasks
            .iter()
            .filter(|t| t["lastStatus"] == "RUNNING")
            .collect();
        let hosts: std::collections::HashSet<&str> = running
            .iter()
            .filter_map(|t| t["containerInstanceArn"].as_str())
            .collect();
        (running.len() == expected && hosts.len() == expected).then_some(hosts.len())
    };
    wait_for("a task on each of 3 hosts", PATIENCE, || {
        one_per_instance(3)
    })
    .await;
    wait_service_steady(api, "dmn", "agentd", 3).await;
    let _second = berth_sim::start(sim_config(&berth.url(), "dmn", 1, RUN_TIME))
        .await
        .expect("a fourth host starts");
    wait_for("a task on the new host", PATIENCE, || one_per_instance(4)).await;
    api.call_json(
        "UpdateContainerInstancesState",
        json!({"cluster": "dmn", "containerInstances": [first.instance_arns()[0]], "status": "DRAINING"}),
    )
    .await
    .expect("drain");
    wait_for("the drained host's task gone", PATIENCE, || {
        one_per_instance(3)
    })
    .await;
    let s = wait_service_steady(api, "dmn", "agentd", 3).await;
    assert_eq!(s["desiredCount"], 3);
    let (kind, _) = error_of(
        api,
        "UpdateService",
        json!({"cluster": "dmn", "service": "agentd", "desiredCount": 5}),
    )
    .await;
    assert_eq!(kind, "InvalidParameterException");
    assert_audit_clean(&berth.url()).await;
}

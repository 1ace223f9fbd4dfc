//! Services on real agents: a service task whose process is killed on a process-runtime
//! agent is replaced; tasks that never start are relaunched with a growing delay (the
//! restart throttle); and on hollow agents whose tasks exit at once, a deployment trips
//! the circuit breaker and rolls back to the last deployment that completed.

use berth_e2e::*;
use berth_testkit::wait_for;
use serde_json::{json, Value};

fn messages(service: &Value) -> Vec<String> {
    service["events"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter_map(|e| e["message"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

async fn running_tasks(api: &Api, cluster: &str, service: &str) -> Vec<String> {
    service_tasks(api, cluster, service)
        .await
        .iter()
        .filter(|t| t["lastStatus"] == "RUNNING")
        .filter_map(|t| t["taskArn"].as_str().map(String::from))
        .collect()
}

/// The pids of processes whose command line holds `needle`.
fn pids_of(needle: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.trim() == needle {
            pids.push(pid);
        }
    }
    pids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn process_agent_service_replaces_killed_tasks_and_throttles() {
    let berth = Berth::start().await;
    let api = &berth.api;
    create_cluster(api, "proc").await;
    let data = TempDir::new("service-agent");
    let mut agent = AgentProcess::start(&berth.url(), "proc", data.path(), &[]);
    agent.ready().await;
    // A command line no other test runs, so the test kills only its own processes.
    api.call_json(
        "RegisterTaskDefinition",
        json!({"family": "sleeper", "containerDefinitions": [{
            "name": "app", "image": "busybox", "cpu": 64, "memory": 32, "essential": true,
            "command": ["sleep", "6061"]}]}),
    )
    .await
    .expect("RegisterTaskDefinition");
    api.call_json(
        "CreateService",
        json!({"cluster": "proc", "serviceName": "sleeper", "taskDefinition": "sleeper",
               "desiredCount": 2}),
    )
    .await
    .expect("CreateService");
    let before = wait_for("two sleepers running", PATIENCE, || async {
        let running = running_tasks(api, "proc", "sleeper").await;
        (running.len() == 2 && pids_of("sleep 6061").len() == 2).then_some(running)
    })
    .await;
    let victim = pids_of("sleep 6061")[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill a service process");
    wait_for("the killed task replaced", PATIENCE, || async {
        let running = running_tasks(api, "proc", "sleeper").await;
        let replaced = running.len() == 2 && running.iter().any(|t| !before.contains(t));
        (replaced && pids_of("sleep 6061").len() == 2).then_some(())
    })
    .await;
    let s = describe_service(api, "proc", "sleeper").await;
    assert_eq!(s["deployments"][0]["failedTasks"], 1, "{s}");

    // Tasks whose command cannot start: relaunched with a growing delay, and said so.
    api.call_json(
        "RegisterTaskDefinition",
        json!({"family": "broken", "containerDefinitions": [{
            "name": "app", "image": "busybox", "cpu": 64, "memory": 32, "essential": true,
            "command": ["/nonexistent/berth-test-binary"]}]}),
    )
    .await
    .expect("RegisterTaskDefinition");
    api.call_json(
        "CreateService",
        json!({"cluster": "proc", "serviceName": "broken", "taskDefinition": "broken",
               "desiredCount": 1}),
    )
    .await
    .expect("CreateService");
    let throttled = wait_for("the throttle event", PATIENCE, || async {
        let s = describe_service(api, "proc", "broken").await;
        messages(&s)
            .iter()
            .any(|m| m == "(service broken) is unable to consistently start tasks successfully. For more information, see the Troubleshooting section of the Amazon ECS Developer Guide.")
            .then_some(s)
    })
    .await;
    let failed = throttled["deployments"][0]["failedTasks"]
        .as_i64()
        .unwrap_or(0);
    assert!(failed >= 3, "{throttled}");
    // While throttled, no task is launched at once.
    let stopped_now = api
        .call_json(
            "ListTasks",
            json!({"cluster": "proc", "serviceName": "broken", "desiredStatus": "STOPPED"}),
        )
        .await
        .expect("ListTasks")["taskArns"]
        .as_array()
        .map_or(0, Vec::len);
    assert!(
        stopped_now < 10,
        "{stopped_now} tasks stopped: the throttle holds launches back"
    );
    api.call_json(
        "DeleteService",
        json!({"cluster": "proc", "service": "broken", "force": true}),
    )
    .await
    .expect("DeleteService");
    api.call_json(
        "DeleteService",
        json!({"cluster": "proc", "service": "sleeper", "force": true}),
    )
    .await
    .expect("DeleteService");
    wait_for("the services INACTIVE", PATIENCE, || async {
        let a = describe_service(api, "proc", "sleeper").await;
        let b = describe_service(api, "proc", "broken").await;
        (a["status"] == "INACTIVE" && b["status"] == "INACTIVE").then_some(())
    })
    .await;
    assert!(pids_of("sleep 6061").is_empty());
    agent.terminate().await;
    assert_audit_clean(&berth.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_circuit_breaker_trips_and_rolls_back() {
    let berth = Berth::start().await;
    let api = &berth.api;
    create_cluster(api, "cb").await;
    let data = TempDir::new("service-breaker");
    let mut fleet = AgentProcess::start(
        &berth.url(),
        "cb",
        data.path(),
        &[
            ("BERTH_SIM", "3"),
            ("BERTH_SIM_SHAPE", "real"),
            ("BERTH_SIM_RUN_MS", "3600000"),
        ],
    );
    wait_for("the hollow fleet ready", PATIENCE, || {
        let line = fleet.lines.try_recv().ok();
        async move { line.filter(|l| l.starts_with("berth-agent ready sim=")) }
    })
    .await;
    let good = register_task_definition(api, "web", 64, 64, None).await;
    api.call_json(
        "CreateService",
        json!({"cluster": "cb", "serviceName": "web", "taskDefinition": good, "desiredCount": 2,
               "deploymentConfiguration": {"deploymentCircuitBreaker": {"enable": true, "rollback": true}}}),
    )
    .await
    .expect("CreateService");
    wait_for("the first deployment COMPLETED", PATIENCE, || async {
        let s = describe_service(api, "cb", "web").await;
        (s["deployments"][0]["rolloutState"] == "COMPLETED" && s["runningCount"] == 2).then_some(())
    })
    .await;
    // The new revision's container runs 50 ms, then exits 1.
    let bad = api
        .call_json(
            "RegisterTaskDefinition",
            json!({"family": "web", "containerDefinitions": [{
                "name": "app", "image": "busybox", "cpu": 64, "memory": 64, "essential": true,
                "dockerLabels": {"berth.sim.run-ms": "50", "berth.sim.exit-code": "1"}}]}),
        )
        .await
        .expect("RegisterTaskDefinition")["taskDefinition"]["taskDefinitionArn"]
        .as_str()
        .expect("arn")
        .to_string();
    api.call_json(
        "UpdateService",
        json!({"cluster": "cb", "service": "web", "taskDefinition": bad}),
    )
    .await
    .expect("UpdateService");
    let rolled_back = wait_for("the rollback completed", PATIENCE, || {
        let (good, bad) = (good.clone(), bad.clone());
        async move {
            let s = describe_service(api, "cb", "web").await;
            let events = messages(&s);
            let failed = events
                .iter()
                .any(|m| m.ends_with("deployment failed: tasks failed to start."));
            let primary = s["deployments"][0].clone();
            let back = primary["taskDefinition"] == good.as_str()
                && primary["rolloutState"] == "COMPLETED"
                && s["deployments"].as_array().map(Vec::len) == Some(1)
                && s["runningCount"] == 2;
            let _ = bad;
            (failed && back).then_some(s)
        }
    })
    .await;
    assert!(messages(&rolled_back)
        .iter()
        .any(|m| m.contains("rolling back to")));
    fleet.terminate().await;
    assert_audit_clean(&berth.url()).await;
}

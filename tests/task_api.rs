//! Tasks end to end, beyond the basic lifecycle of tasks.rs: RunTask spread, every
//! placement failure reason, groups and overrides, StartTask on named instances,
//! StopTask, the agent's container and task state changes, every ListTasks filter,
//! DescribeTasks failures, clientToken idempotency, and commands published straight
//! into `BERTH_CMD` (duplicate ids, outcome lookup, `Berth-Reply-To`).

use async_nats::HeaderMap;
use berth_e2e::berth_testkit::wait_for;
use berth_e2e::*;
use berth_journal::{Journal, JournalConfig};
use berth_messages::codec::{self, Encoding};
use berth_messages::command::{CommandResponse, Outcome};
use berth_messages::{headers, subjects, ApiError, ErrorType};
use futures::StreamExt;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

const ACCOUNT: &str = "arn:aws:ecs:us-test-1:123456789012";

async fn journal(url: &str) -> Journal {
    Journal::open(&JournalConfig {
        servers: vec![url.to_string()],
        ..Default::default()
    })
    .await
    .expect("journal opens")
}

fn expect_error(result: Result<Value, ApiError>, expected: ErrorType, what: &str) -> ApiError {
    match result {
        Ok(v) => panic!("{what}: expected {expected}, got success {v}"),
        Err(e) => {
            assert_eq!(e.error_type, expected, "{what}: {e}");
            e
        }
    }
}

async fn call(api: &Api, action: &str, body: Value) -> Value {
    api.call_json(action, body.clone())
        .await
        .unwrap_or_else(|e| panic!("{action} {body}: {e}"))
}

fn instance_arn(cluster: &str, id: &str) -> String {
    format!("{ACCOUNT}:container-instance/{cluster}/{id}")
}

fn task_arns(reply: &Value) -> Vec<String> {
    reply["tasks"]
        .as_array()
        .unwrap_or_else(|| panic!("no tasks in {reply}"))
        .iter()
        .map(|t| t["taskArn"].as_str().expect("taskArn").to_string())
        .collect()
}

fn reasons(reply: &Value) -> Vec<String> {
    reply["failures"]
        .as_array()
        .unwrap_or_else(|| panic!("no failures in {reply}"))
        .iter()
        .map(|f| f["reason"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn arns_of(list: &Value) -> BTreeSet<String> {
    list["taskArns"]
        .as_array()
        .unwrap_or_else(|| panic!("no taskArns in {list}"))
        .iter()
        .map(|s| s.as_str().expect("arn").to_string())
        .collect()
}

async fn describe_instance(api: &Api, cluster: &str, id: &str) -> Value {
    let reply = call(
        api,
        "DescribeContainerInstances",
        json!({"cluster": cluster, "containerInstances": [id]}),
    )
    .await;
    reply["containerInstances"][0].clone()
}

fn remaining(ci: &Value, name: &str) -> Value {
    ci["remainingResources"]
        .as_array()
        .unwrap_or_else(|| panic!("no remainingResources in {ci}"))
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {ci}"))
        .clone()
}

fn remaining_int(ci: &Value, name: &str) -> i64 {
    remaining(ci, name)["integerValue"]
        .as_i64()
        .unwrap_or_else(|| panic!("{name} is not an integer in {ci}"))
}

fn ports_in_use(ci: &Value) -> BTreeSet<u16> {
    remaining(ci, "PORTS")["stringSetValue"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| p.as_str().expect("port").parse().expect("port number"))
                .collect()
        })
        .unwrap_or_default()
}

async fn wait_agent_disconnected(api: &Api, cluster: &str, id: &str) {
    wait_for("agentConnected to become false", PATIENCE, || async move {
        let ci = describe_instance(api, cluster, id).await;
        (ci["agentConnected"] == false).then_some(())
    })
    .await
}

async fn register_td(api: &Api, body: Value) -> String {
    let reply = call(api, "RegisterTaskDefinition", body).await;
    reply["taskDefinition"]["taskDefinitionArn"]
        .as_str()
        .expect("arn")
        .to_string()
}

/// A read that waits until the replica's view has applied journal sequence `min`.
async fn read_at(api: &Api, action: &str, body: Value, min: u64) -> Value {
    let mut h = HeaderMap::new();
    h.insert(headers::CONTENT_TYPE, headers::JSON);
    h.insert(headers::MIN_SEQUENCE, min.to_string().as_str());
    let msg = api
        .client
        .request_with_headers(
            subjects::api(action),
            h,
            serde_json::to_vec(&body).unwrap().into(),
        )
        .await
        .expect("read answered");
    decode_reply(Encoding::Json, &msg).unwrap_or_else(|e| panic!("{action}: {e}"))
}

async fn get_outcome(api: &Api, command_id: &str) -> Value {
    wait_for("the command's outcome", PATIENCE, || async move {
        api.call_json("GetCommandOutcome", json!({"commandId": command_id}))
            .await
            .ok()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_task_count_ten_spreads_over_instances() {
    let berth = Berth::start().await;
    let api = &berth.api;
    create_cluster(api, "c1").await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(register_instance(api, "c1", 4096, 2048, json!([])).await);
    }
    let _beats = Heartbeats::start(api.client.clone(), "c1", ids.clone());
    register_task_definition(api, "web", 256, 512, None).await;

    // Each instance takes four tasks by memory: ten fit in twelve slots.
    let reply = call(
        api,
        "RunTask",
        json!({"cluster": "c1", "taskDefinition": "web", "count": 10}),
    )
    .await;
    let tasks = reply["tasks"].as_array().expect("tasks");
    assert_eq!(tasks.len(), 10, "{reply}");
    assert!(reasons(&reply).is_empty(), "{reply}");
    let distinct: BTreeSet<String> = task_arns(&reply).into_iter().collect();
    assert_eq!(distinct.len(), 10, "task ARNs are distinct");

    let mut per_instance: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for t in tasks {
        let ci = t["containerInstanceArn"].as_str().expect("instance arn");
        assert!(
            ids.iter().any(|id| instance_arn("c1", id) == ci),
            "{ci} is not one of the cluster's instances"
        );
        per_instance
            .entry(id_of(ci))
            .or_default()
            .insert(t["taskArn"].as_str().unwrap().to_string());
    }
    assert!(
        per_instance.len() >= 3,
        "ten tasks of four per instance need all three instances: {per_instance:?}"
    );
    let mut total = 0;
    for id in &ids {
        let placed = per_instance.get(id).cloned().unwrap_or_default();
        let n = placed.len() as i64;
        assert!(n <= 4, "instance {id} over-committed with {n} tasks");
        total += n;
        let ci = describe_instance(api, "c1", id).await;
        assert_eq!(remaining_int(&ci, "CPU"), 4096 - 256 * n, "{ci}");
        assert_eq!(remaining_int(&ci, "MEMORY"), 2048 - 512 * n, "{ci}");
        assert_eq!(ci["pendingTasksCount"], n, "{ci}");
        // Each task is listed on exactly the instance it was placed on.
        let listed = call(
            api,
            "ListTasks",
            json!({"cluster": "c1", "containerInstance": id}),
        )
        .await;
        assert_eq!(arns_of(&listed), placed, "ListTasks on {id}");
    }
    assert_eq!(total, 10);
    let clusters = call(api, "DescribeClusters", json!({"clusters": ["c1"]})).await;
    assert_eq!(clusters["clusters"][0]["pendingTasksCount"], 10);
    assert_eq!(
        clusters["clusters"][0]["registeredContainerInstancesCount"],
        3
    );

    // Two slots left: a third task fails for memory.
    let reply = call(
        api,
        "RunTask",
        json!({"cluster": "c1", "taskDefinition": "web", "count": 3}),
    )
    .await;
    assert_eq!(task_arns(&reply).len(), 2, "{reply}");
    assert_eq!(reasons(&reply), ["RESOURCE:MEMORY"], "{reply}");

    // count is 1..=10.
    for count in [0, 11, -1] {
        expect_error(
            api.call_json(
                "RunTask",
                json!({"cluster": "c1", "taskDefinition": "web", "count": count}),
            )
            .await,
            ErrorType::InvalidParameterException,
            &format!("count {count}"),
        );
    }
    assert_audit_clean(&berth.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_task_failures_name_the_missing_resource() {
    let berth = Berth::start().await;
    let api = &berth.api;
    for c in ["cpu", "mem", "ports", "lost", "empty"] {
        create_cluster(api, c).await;
    }
    let cpu_i = register_instance(api, "cpu", 512, 8192, json!([])).await;
    let mem_i = register_instance(api, "mem", 8192, 512, json!([])).await;
    let ports_i = register_instance(api, "ports", 8192, 8192, json!([])).await;
    let _b1 = Heartbeats::start(api.client.clone(), "cpu", vec![cpu_i.clone()]);
    let _b2 = Heartbeats::start(api.client.clone(), "mem", vec![mem_i.clone()]);
    let _b3 = Heartbeats::start(api.client.clone(), "ports", vec![ports_i.clone()]);
    let lost_i = register_instance(api, "lost", 8192, 8192, json!([])).await;

    register_task_definition(api, "cpuhog", 400, 64, None).await;
    register_task_definition(api, "memhog", 10, 400, None).await;
    register_task_definition(api, "static", 10, 10, Some(8080)).await;
    register_task_definition(api, "sshd", 10, 10, Some(22)).await;
    register_td(
        api,
        json!({"family": "dyn", "containerDefinitions": [{
            "name": "app", "image": "busybox", "cpu": 10, "memory": 10,
            "portMappings": [{"containerPort": 80, "hostPort": 0}, {"containerPort": 81}]
        }]}),
    )
    .await;

    let run = |cluster: &'static str, family: &'static str, count: i64| async move {
        call(
            api,
            "RunTask",
            json!({"cluster": cluster, "taskDefinition": family, "count": count}),
        )
        .await
    };

    let r = run("cpu", "cpuhog", 2).await;
    assert_eq!(task_arns(&r).len(), 1, "{r}");
    assert_eq!(reasons(&r), ["RESOURCE:CPU"], "{r}");

    let r = run("mem", "memhog", 2).await;
    assert_eq!(task_arns(&r).len(), 1, "{r}");
    assert_eq!(reasons(&r), ["RESOURCE:MEMORY"], "{r}");

    // A static host port is held by one task at a time.
    let r = run("ports", "static", 2).await;
    assert_eq!(task_arns(&r).len(), 1, "{r}");
    assert_eq!(reasons(&r), ["RESOURCE:PORTS"], "{r}");
    // Port 22 is reserved by the instance's registration.
    let r = run("ports", "sshd", 1).await;
    assert!(task_arns(&r).is_empty(), "{r}");
    assert_eq!(reasons(&r), ["RESOURCE:PORTS"], "{r}");

    // Dynamic host ports: from 49153-65535, distinct across the tasks of one instance.
    let r = run("ports", "dyn", 3).await;
    let tasks = r["tasks"].as_array().expect("tasks");
    assert_eq!(tasks.len(), 3, "{r}");
    let mut host_ports = BTreeSet::new();
    for t in tasks {
        let bindings = t["containers"][0]["networkBindings"]
            .as_array()
            .expect("bindings");
        assert_eq!(bindings.len(), 2, "{t}");
        let container_ports: Vec<i64> = bindings
            .iter()
            .map(|b| b["containerPort"].as_i64().unwrap())
            .collect();
        assert_eq!(container_ports, [80, 81], "{t}");
        for b in bindings {
            let p = b["hostPort"].as_i64().expect("hostPort") as u16;
            assert!((49153..=65535).contains(&p), "dynamic port {p}");
            assert!(host_ports.insert(p), "host port {p} given twice");
        }
    }
    assert_eq!(host_ports.len(), 6);
    let ci = describe_instance(api, "ports", &ports_i).await;
    let in_use = ports_in_use(&ci);
    for p in host_ports.iter().chain([22u16, 8080].iter()) {
        assert!(in_use.contains(p), "port {p} not in use on {ci}");
    }
    assert_eq!(in_use.len(), 8, "{ci}");

    // Refusals that write nothing.
    wait_agent_disconnected(api, "lost", &lost_i).await;
    let journal = journal(&berth.url()).await;
    let before = journal.state_last_sequence().await.unwrap();
    let r = run("lost", "memhog", 1).await;
    assert!(task_arns(&r).is_empty(), "{r}");
    assert_eq!(reasons(&r), ["AGENT"], "{r}");

    expect_error(
        api.call_json(
            "RunTask",
            json!({"cluster": "nope", "taskDefinition": "memhog"}),
        )
        .await,
        ErrorType::ClusterNotFoundException,
        "unknown cluster",
    );
    let e = expect_error(
        api.call_json(
            "RunTask",
            json!({"cluster": "empty", "taskDefinition": "memhog"}),
        )
        .await,
        ErrorType::InvalidParameterException,
        "empty cluster",
    );
    assert_eq!(
        e.message,
        "No Container Instances were found in your cluster."
    );
    for bad in [
        json!({"cluster": "cpu"}),
        json!({"cluster": "cpu", "taskDefinition": "memhog", "count": "two"}),
        json!({"cluster": "c.1", "taskDefinition": "memhog"}),
        json!({"cluster": "cpu", "taskDefinition": "mem*hog"}),
        json!({"cluster": "cpu", "taskDefinition": "memhog", "launchType": "FARGATE"}),
    ] {
        expect_error(
            api.call_json("RunTask", bad.clone()).await,
            ErrorType::InvalidParameterException,
            &format!("RunTask {bad}"),
        );
    }
    assert_eq!(
        journal.state_last_sequence().await.unwrap(),
        before,
        "refused launches wrote to the journal"
    );
    assert_audit_clean(&berth.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_started_by_and_overrides() {
    let berth = Berth::start().await;
    let api = &berth.api;
    create_cluster(api, "c1").await;
    let i1 = register_instance(api, "c1", 2048, 4096, json!([])).await;
    let _beats = Heartbeats::start(api.client.clone(), "c1", vec![i1.clone()]);
    register_task_definition(api, "web", 256, 512, None).await;

    let plain = call(
        api,
        "RunTask",
        json!({"cluster": "c1", "taskDefinition": "web"}),
    )
    .await;
    assert_eq!(plain["tasks"][0]["group"], "family:web", "{plain}");
    assert!(plain["tasks"][0]
        .get("startedBy")
        .is_none_or(Value::is_null));
    assert_eq!(plain["tasks"][0]["memory"], "512");

    let grouped = call(
        api,
        "RunTask",
        json!({"cluster": "c1", "taskDefinition": "web", "group": "nightly:etl", "startedBy": "cron"}),
    )
    .await;
    assert_eq!(grouped["tasks"][0]["group"], "nightly:etl", "{grouped}");
    assert_eq!(grouped["tasks"][0]["startedBy"], "cron");

    // Container overrides change the reservation.
    let overridden = call(
        api,
        "RunTask",
        json!({"cluster": "c1", "taskDefinition": "web", "overrides": {
            "containerOverrides": [{"name": "app", "cpu": 512, "memory": 1024,
                                    "command": ["sleep", "60"]}]
        }}),
    )
    .await;
    let t = &overridden["tasks"][0];
    assert_eq!(t["cpu"], "512", "{t}");
    assert_eq!(t["memory"], "1024", "{t}");
    assert_eq!(t["containers"][0]["cpu"], "512");
    assert_eq!(t["containers"][0]["memory"], "1024");
    assert_eq!(t["overrides"]["containerOverrides"][0]["name"], "app");
    let ci = describe_instance(api, "c1", &i1).await;
    assert_eq!(remaining_int(&ci, "CPU"), 2048 - 256 - 256 - 512);
    assert_eq!(remaining_int(&ci, "MEMORY"), 4096 - 512 - 512 - 1024);

    // A task-level memory override larger than the containers' sum is the reservation.
    let task_level = call(
        api,
        "RunTask",
        json!({"cluster": "c1", "taskDefinition": "web", "overrides": {"memory": "1536"}}),
    )
    .await;
    assert_eq!(task_level["tasks"][0]["memory"], "1536", "{task_level}");
    let ci = describe_instance(api, "c1", &i1).await;
    assert_eq!(remaining_int(&ci, "MEMORY"), 4096 - 512 - 512 - 1024 - 1536);

    // The override makes it too big to fit what is left.
    let too_big = call(
        api,
        "RunTask",
        json!({"cluster": "c1", "taskDefinition": "web", "overrides": {
            "containerOverrides": [{"name": "app", "memory": 1024}]
        }}),
    )
    .await;
    assert_eq!(reasons(&too_big), ["RESOURCE:MEMORY"], "{too_big}");

    let journal = journal(&berth.url()).await;
    let before = journal.state_last_sequence().await.unwrap();
    for (what, body) in [
        (
            "override of an unknown container",
            json!({"cluster": "c1", "taskDefinition": "web", "overrides": {
                "containerOverrides": [{"name": "db", "memory": 64}]}}),
        ),
        (
            "empty group",
            json!({"cluster": "c1", "taskDefinition": "web", "group": ""}),
        ),
        (
            "group too long",
            json!({"cluster": "c1", "taskDefinition": "web", "group": "g".repeat(256)}),
        ),
        (
            "startedBy too long",
            json!({"cluster": "c1", "taskDefinition": "web", "startedBy": "s".repeat(129)}),
        ),
    ] {
        expect_error(
            api.call_json("RunTask", body).await,
            ErrorType::InvalidParameterException,
            what,
        );
    }
    assert_eq!(journal.state_last_sequence().await.unwrap(), before);
    assert_audit_clean(&berth.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_task_on_named_instances() {
    let berth = Berth::start().await;
    let api = &berth.api;
    create_cluster(api, "c1").await;
    let i1 = register_instance(api, "c1", 1024, 1024, json!([])).await;
    let i2 = register_instance(api, "c1", 1024, 1024, json!([])).await;
    let _beats = Heartbeats::start(api.client.clone(), "c1", vec![i1.clone(), i2.clone()]);
    let i3 = register_instance(api, "c1", 1024, 1024, json!([])).await;
    register_task_definition(api, "web", 256, 256, None).await;
    register_task_definition(api, "big", 512, 256, None).await;
    let start = |instances: Vec<String>| async move {
        call(
            api,
            "StartTask",
            json!({"cluster": "c1", "taskDefinition": "web", "containerInstances": instances,
                   "startedBy": "my-scheduler"}),
        )
        .await
    };

    let one = start(vec![i1.clone()]).await;
    assert_eq!(task_arns(&one).len(), 1, "{one}");
    assert!(reasons(&one).is_empty(), "{one}");
    let t = &one["tasks"][0];
    assert_eq!(t["containerInstanceArn"], instance_arn("c1", &i1));
    assert_eq!(t["startedBy"], "my-scheduler");
    assert_eq!(t["group"], "family:web");
    assert_eq!(t["lastStatus"], "PENDING");

    // One task per named instance, by id or by ARN.
    let two = start(vec![i1.clone(), instance_arn("c1", &i2)]).await;
    let placed: Vec<&str> = two["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["containerInstanceArn"].as_str().unwrap())
        .collect();
    assert_eq!(
        placed,
        [instance_arn("c1", &i1), instance_arn("c1", &i2)],
        "{two}"
    );

    // An unknown instance is a MISSING failure next to the task that did start.
    let unknown = "0123456789abcdef0123456789abcdef".to_string();
    let mixed = start(vec![i1.clone(), unknown.clone()]).await;
    assert_eq!(task_arns(&mixed).len(), 1, "{mixed}");
    assert_eq!(mixed["failures"][0]["reason"], "MISSING", "{mixed}");
    assert_eq!(mixed["failures"][0]["arn"], instance_arn("c1", &unknown));
    let ci = describe_instance(api, "c1", &i1).await;
    assert_eq!(remaining_int(&ci, "CPU"), 1024 - 3 * 256, "{ci}");

    // What is left on i1 is not enough for "big".
    let short = call(
        api,
        "StartTask",
        json!({"cluster": "c1", "taskDefinition": "big", "containerInstances": [i1]}),
    )
    .await;
    assert!(task_arns(&short).is_empty(), "{short}");
    assert_eq!(reasons(&short), ["RESOURCE:CPU"], "{short}");
    assert_eq!(short["failures"][0]["arn"], instance_arn("c1", &i1));

    // A DRAINING instance takes no new task.
    call(
        api,
        "UpdateContainerInstancesState",
        json!({"cluster": "c1", "containerInstances": [i2], "status": "DRAINING"}),
    )
    .await;
    let draining = start(vec![i2.clone()]).await;
    assert!(task_arns(&draining).is_empty(), "{draining}");
    assert_eq!(reasons(&draining), ["INACTIVE"], "{draining}");
    assert_eq!(draining["failures"][0]["arn"], instance_arn("c1", &i2));

    // An instance whose agent stopped beating takes no new task either.
    wait_agent_disconnected(api, "c1", &i3).await;
    let lost = start(vec![i3.clone()]).await;
    assert!(task_arns(&lost).is_empty(), "{lost}");
    assert_eq!(reasons(&lost), ["AGENT"], "{lost}");
    assert_eq!(lost["failures"][0]["arn"], instance_arn("c1", &i3));

    // Bad requests.
    let eleven: Vec<String> = (0..11).map(|_| i1.clone()).collect();
    for (what, body, expected) in [
        (
            "more than 10 instances",
            json!({"cluster": "c1", "taskDefinition": "web", "containerInstances": eleven}),
            ErrorType::InvalidParameterException,
        ),
        (
            "no instances",
            json!({"cluster": "c1", "taskDefinition": "web", "containerInstances": []}),
            ErrorType::InvalidParameterException,
        ),
        (
            "instance of another cluster",
            json!({"cluster": "c1", "taskDefinition": "web",
                   "containerInstances": [instance_arn("c2", &i1)]}),
            ErrorType::InvalidParameterException,
        ),
        (
            "bad instance id",
            json!({"cluster": "c1", "taskDefinition": "web", "containerInstances": ["a.b"]}),
            ErrorType::InvalidParameterException,
        ),
        (
            "unknown cluster",
            json!({"cluster": "nope", "taskDefinition": "web", "containerInstances": [i1]}),
            ErrorType::ClusterNotFoundException,
        ),
    ] {
        expect_error(api.call_json("StartTask", body).await, expected, what);
    }
    let listed = call(
        api,
        "ListTasks",
        json!({"cluster": "c1", "startedBy": "my-scheduler"}),
    )
    .await;
    assert_eq!(arns_of(&listed).len(), 4, "{listed}");
    assert_audit_clean(&berth.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_task_then_agent_report_returns_resources() {
    let berth = Berth::start().await;
    let api = &berth.api;
    create_cluster(api, "c1").await;
    let i1 = register_instance(api, "c1", 1024, 1024, json!([])).await;
    let _beats = Heartbeats::start(api.client.clone(), "c1", vec![i1.clone()]);
    register_task_definition(api, "web", 256, 512, Some(8080)).await;
    let ran = call(
        api,
        "RunTask",
        json!({"cluster": "c1", "taskDefinition": "web"}),
    )
    .await;
    let task_arn = task_arns(&ran)[0].clone();

    let stopped = call(
        api,
        "StopTask",
        json!({"cluster": "c1", "task": task_arn, "reason": "scaling down"}),
    )
    .await;
    let t = &stopped["task"];
    assert_eq!(t["taskArn"], task_arn.as_str());
    assert_eq!(t["desiredStatus"], "STOPPED", "{t}");
    assert_eq!(t["stopCode"], "UserInitiated", "{t}");
    assert_eq!(t["stoppedReason"], "scaling down", "{t}");
    // The agent has not stopped it yet: it still holds its resources.
    assert_eq!(t["lastStatus"], "PENDING", "{t}");
    let ci = describe_instance(api, "c1", &i1).await;
    assert_eq!(remaining_int(&ci, "MEMORY"), 512);
    assert!(ports_in_use(&ci).contains(&8080));
    let blocked = call(
        api,
        "RunTask",
        json!({"cluster": "c1", "taskDefinition": "web"}),
    )
    .await;
    assert_eq!(reasons(&blocked), ["RESOURCE:PORTS"], "{blocked}");
    let desired_stopped = call(
        api,
        "ListTasks",
        json!({"cluster": "c1", "desiredStatus": "STOPPED"}),
    )
    .await;
    assert_eq!(
        arns_of(&desired_stopped),
        BTreeSet::from([task_arn.clone()])
    );

    // The agent reports the task stopped: its resources return to the instance.
    call(
        api,
        "SubmitTaskStateChange",
        json!({"cluster": "c1", "task": task_arn, "status": "STOPPED",
               "containers": [{"containerName": "app", "status": "STOPPED", "exitCode": 143}]}),
    )
    .await;
    let described = call(
        api,
        "DescribeTasks",
        json!({"cluster": "c1", "tasks": [task_arn]}),
    )
    .await;
    let t = &described["tasks"][0];
    assert_eq!(t["lastStatus"], "STOPPED", "{t}");
    assert_eq!(t["stopCode"], "UserInitiated", "{t}");
    assert_eq!(t["stoppedReason"], "scaling down", "{t}");
    assert_eq!(t["containers"][0]["exitCode"], 143);
    assert!(t["stoppedAt"].is_number(), "{t}");
    let ci = describe_instance(api, "c1", &i1).await;
    assert_eq!(remaining_int(&ci, "MEMORY"), 1024, "{ci}");
    assert_eq!(remaining_int(&ci, "CPU"), 1024, "{ci}");
    assert_eq!(ports_in_use(&ci), BTreeSet::from([22]), "{ci}");
    assert_eq!(ci["pendingTasksCount"], 0);
    assert_eq!(ci["runningTasksCount"], 0);

    // Stopping again changes nothing.
    let again = call(api, "StopTask", json!({"cluster": "c1", "task": task_arn})).await;
    assert_eq!(again["task"]["stoppedReason"], "scaling down");
    assert_eq!(again["task"]["lastStatus"], "STOPPED");

    // The port is free again.
    let rerun = call(
        api,
        "RunTask",
        json!({"cluster": "c1", "taskDefinition": "web"}),
    )
    .await;
    assert_eq!(task_arns(&rerun).len(), 1, "{rerun}");
    let second = task_arns(&rerun)[0].clone();
    let by_id = call(
        api,
        "StopTask",
        json!({"cluster": "c1", "task": id_of(&second)}),
    )
    .await;
    assert_eq!(by_id["task"]["desiredStatus"], "STOPPED");
    assert_eq!(by_id["task"]["stopCode"], "UserInitiated");
    assert!(by_id["task"]["stoppedReason"].is_string(), "{by_id}");

    let journal = journal(&berth.url()).await;
    let before = journal.state_last_sequence().await.unwrap();
    for (what, body, expected) in [
        (
            "unknown task",
            json!({"cluster": "c1", "task": "0123456789abcdef0123456789abcdef"}),
            ErrorType::InvalidParameterException,
        ),
        (
            "unknown cluster",
            json!({"cluster": "nope", "task": task_arn}),
            ErrorType::ClusterNotFoundException,
        ),
        (
            "task of another cluster",
            json!({"cluster": "c1", "task": format!("{ACCOUNT}:task/c2/{}", id_of(&task_arn))}),
            ErrorType::InvalidParameterException,
        ),
        (
            "reason too long",
            json!({"cluster": "c1", "task": task_arn, "reason": "r".repeat(256)}),
            ErrorType::InvalidParameterException,
        ),
        (
            "missing task",
            json!({"cluster": "c1"}),
            ErrorType::InvalidParameterException,
        ),
    ] {
        expect_error(api.call_json("StopTask", body).await, expected, what);
    }
    assert_eq!(journal.state_last_sequence().await.unwrap(), before);
    assert_audit_clean(&berth.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_state_changes_are_stored_and_only_move_forward() {
    let berth = Berth::start().await;
    let api = &berth.api;
    create_cluster(api, "c1").await;
    let i1 = register_instance(api, "c1", 1024, 1024, json!([])).await;
    let _beats = Heartbeats::start(api.client.clone(), "c1", vec![i1.clone()]);
    register_td(
        api,
        json!({"family": "pair", "containerDefinitions": [
            {"name": "app", "image": "busybox", "cpu": 10, "memory": 64,
             "portMappings": [{"containerPort": 80}]},
            {"name": "sidecar", "image": "busybox", "cpu": 10, "memory": 64, "essential": false}
        ]}),
    )
    .await;
    let ran = call(
        api,
        "RunTask",
        json!({"cluster": "c1", "taskDefinition": "pair"}),
    )
    .await;
    let task_arn = task_arns(&ran)[0].clone();
    let host_port = ran["tasks"][0]["containers"][0]["networkBindings"][0]["hostPort"]
        .as_i64()
        .expect("dynamic host port");
    let describe = || async {
        call(
            api,
            "DescribeTasks",
            json!({"cluster": "c1", "tasks": [task_arn]}),
        )
        .await["tasks"][0]
            .clone()
    };

    let bindings = json!([{"bindIP": "0.0.0.0", "containerPort": 80, "hostPort": host_port, "protocol": "tcp"}]);
    let ack = call(
        api,
        "SubmitContainerStateChange",
        json!({"cluster": "c1", "task": task_arn, "containerName": "app", "status": "RUNNING",
               "runtimeId": "rt-app-1", "networkBindings": bindings}),
    )
    .await;
    assert_eq!(ack["acknowledgment"], "ACK");
    call(
        api,
        "SubmitContainerStateChange",
        json!({"cluster": "c1", "task": id_of(&task_arn), "containerName": "sidecar",
               "status": "STOPPED", "exitCode": 3, "reason": "sidecar crashed"}),
    )
    .await;
    let t = describe().await;
    let app = &t["containers"][0];
    let sidecar = &t["containers"][1];
    assert_eq!(app["name"], "app");
    assert_eq!(app["lastStatus"], "RUNNING", "{t}");
    assert_eq!(app["runtimeId"], "rt-app-1");
    assert_eq!(app["networkBindings"], bindings);
    assert_eq!(sidecar["lastStatus"], "STOPPED", "{t}");
    assert_eq!(sidecar["exitCode"], 3);
    assert_eq!(sidecar["reason"], "sidecar crashed");
    // Container changes alone do not move the task.
    assert_eq!(t["lastStatus"], "PENDING");

    // A container does not go back from STOPPED.
    call(
        api,
        "SubmitContainerStateChange",
        json!({"cluster": "c1", "task": task_arn, "containerName": "sidecar", "status": "RUNNING"}),
    )
    .await;
    assert_eq!(describe().await["containers"][1]["lastStatus"], "STOPPED");

    call(
        api,
        "SubmitTaskStateChange",
        json!({"cluster": "c1", "task": task_arn, "status": "RUNNING"}),
    )
    .await;
    let t = describe().await;
    assert_eq!(t["lastStatus"], "RUNNING");
    assert!(t["startedAt"].is_number(), "{t}");
    let clusters = call(api, "DescribeClusters", json!({"clusters": ["c1"]})).await;
    assert_eq!(clusters["clusters"][0]["runningTasksCount"], 1);
    assert_eq!(clusters["clusters"][0]["pendingTasksCount"], 0);
    // PENDING after RUNNING is ignored.
    call(
        api,
        "SubmitTaskStateChange",
        json!({"cluster": "c1", "task": task_arn, "status": "PENDING"}),
    )
    .await;
    assert_eq!(describe().await["lastStatus"], "RUNNING");

    call(
        api,
        "SubmitTaskStateChange",
        json!({"cluster": "c1", "task": task_arn, "status": "STOPPED", "reason": "app exited",
               "containers": [{"containerName": "app", "status": "STOPPED", "exitCode": 0}]}),
    )
    .await;
    let stopped = describe().await;
    assert_eq!(stopped["lastStatus"], "STOPPED");
    assert_eq!(stopped["desiredStatus"], "STOPPED");
    assert_eq!(stopped["stoppedReason"], "app exited");
    assert_eq!(stopped["containers"][0]["exitCode"], 0);
    // RUNNING after STOPPED is ignored, and so is a container's late RUNNING.
    call(
        api,
        "SubmitTaskStateChange",
        json!({"cluster": "c1", "task": task_arn, "status": "RUNNING",
               "containers": [{"containerName": "app", "status": "RUNNING"}]}),
    )
    .await;
    let t = describe().await;
    assert_eq!(t["lastStatus"], "STOPPED");
    assert_eq!(t["containers"][0]["lastStatus"], "STOPPED");
    assert_eq!(t["stoppedAt"], stopped["stoppedAt"]);
    let ci = describe_instance(api, "c1", &i1).await;
    assert_eq!(remaining_int(&ci, "MEMORY"), 1024);
    assert_eq!(ports_in_use(&ci), BTreeSet::from([22]));

    let journal = journal(&berth.url()).await;
    let before = journal.state_last_sequence().await.unwrap();
    for (action, body, expected) in [
        (
            "SubmitContainerStateChange",
            json!({"cluster": "c1", "task": task_arn, "containerName": "db", "status": "RUNNING"}),
            ErrorType::InvalidParameterException,
        ),
        (
            "SubmitContainerStateChange",
            json!({"cluster": "c1", "task": task_arn}),
            ErrorType::InvalidParameterException,
        ),
        (
            "SubmitTaskStateChange",
            json!({"cluster": "c1", "task": task_arn, "status": "RUNNING",
                   "containers": [{"containerName": "db", "status": "RUNNING"}]}),
            ErrorType::InvalidParameterException,
        ),
        (
            "SubmitTaskStateChange",
            json!({"cluster": "c1", "task": task_arn, "status": "SLEEPING"}),
            ErrorType::InvalidParameterException,
        ),
        (
            "SubmitTaskStateChange",
            json!({"cluster": "c1", "task": "0123456789abcdef0123456789abcdef", "status": "RUNNING"}),
            ErrorType::InvalidParameterException,
        ),
        (
            "SubmitTaskStateChange",
            json!({"cluster": "nope", "task": task_arn, "status": "RUNNING"}),
            ErrorType::ClusterNotFoundException,
        ),
    ] {
        expect_error(
            api.call_json(action, body.clone()).await,
            expected,
            &format!("{action} {body}"),
        );
    }
    assert_eq!(journal.state_last_sequence().await.unwrap(), before);
    assert_audit_clean(&berth.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_tasks_filters_and_pages() {
    let berth = Berth::start().await;
    let api = &berth.api;
    create_cluster(api, "c1").await;
    create_cluster(api, "c2").await;
    let i1 = register_instance(api, "c1", 4096, 4096, json!([])).await;
    let i2 = register_instance(api, "c1", 4096, 4096, json!([])).await;
    let other = register_instance(api, "c2", 4096, 4096, json!([])).await;
    let _beats = Heartbeats::start(api.client.clone(), "c1", vec![i1.clone(), i2.clone()]);
    let _beats2 = Heartbeats::start(api.client.clone(), "c2", vec![other.clone()]);
    register_task_definition(api, "web", 10, 64, None).await;
    register_task_definition(api, "api", 10, 64, None).await;

    let start = |family: &'static str, instance: String, started_by: &'static str| async move {
        task_arns(
            &call(
                api,
                "StartTask",
                json!({"cluster": "c1", "taskDefinition": family,
                       "containerInstances": [instance], "startedBy": started_by}),
            )
            .await,
        )
        .remove(0)
    };
    let web_a1 = start("web", i1.clone(), "alice").await;
    let web_a2 = start("web", i2.clone(), "alice").await;
    let web_b1 = start("web", i1.clone(), "bob").await;
    let api_b2 = start("api", i2.clone(), "bob").await;
    let api_c1 = start("api", i1.clone(), "carol").await;
    // A task in another cluster never shows up in c1's lists.
    call(
        api,
        "RunTask",
        json!({"cluster": "c2", "taskDefinition": "web", "startedBy": "alice"}),
    )
    .await;
    // web_b1 is stopped by its user: desiredStatus STOPPED.
    call(api, "StopTask", json!({"cluster": "c1", "task": web_b1})).await;

    let list = |body: Value| async move {
        let mut body = body;
        body["cluster"] = json!("c1");
        arns_of(&call(api, "ListTasks", body).await)
    };
    let set = |arns: &[&String]| arns.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();

    let running = set(&[&web_a1, &web_a2, &api_b2, &api_c1]);
    assert_eq!(list(json!({})).await, running);
    assert_eq!(list(json!({"desiredStatus": "RUNNING"})).await, running);
    assert_eq!(
        list(json!({"desiredStatus": "STOPPED"})).await,
        set(&[&web_b1])
    );
    assert!(list(json!({"desiredStatus": "PENDING"})).await.is_empty());
    assert!(list(json!({"serviceName": "svc"})).await.is_empty());
    assert_eq!(
        list(json!({"family": "web"})).await,
        set(&[&web_a1, &web_a2])
    );
    assert_eq!(
        list(json!({"family": "api"})).await,
        set(&[&api_b2, &api_c1])
    );
    assert!(list(json!({"family": "nope"})).await.is_empty());
    assert_eq!(
        list(json!({"startedBy": "alice"})).await,
        set(&[&web_a1, &web_a2])
    );
    assert_eq!(list(json!({"startedBy": "bob"})).await, set(&[&api_b2]));
    assert_eq!(
        list(json!({"startedBy": "bob", "desiredStatus": "STOPPED"})).await,
        set(&[&web_b1])
    );
    assert_eq!(
        list(json!({"containerInstance": i1})).await,
        set(&[&web_a1, &api_c1])
    );
    assert_eq!(
        list(json!({"containerInstance": instance_arn("c1", &i2)})).await,
        set(&[&web_a2, &api_b2])
    );
    assert_eq!(
        list(json!({"containerInstance": i1, "family": "web", "startedBy": "alice"})).await,
        set(&[&web_a1])
    );
    assert_eq!(
        list(json!({"family": "api", "startedBy": "alice"})).await,
        BTreeSet::new()
    );
    assert_eq!(list(json!({"launchType": "EC2"})).await, running);
    assert!(list(json!({"launchType": "FARGATE"})).await.is_empty());

    // Paging: one task per page, every task once.
    let mut seen = Vec::new();
    let mut req = json!({"cluster": "c1", "maxResults": 1});
    for _ in 0..20 {
        let page = call(api, "ListTasks", req.clone()).await;
        let arns = arns_of(&page);
        assert!(arns.len() <= 1, "{page}");
        seen.extend(arns);
        match page.get("nextToken").and_then(Value::as_str) {
            Some(t) => req["nextToken"] = json!(t),
            None => break,
        }
    }
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), running);

    for (what, body, expected) in [
        (
            "unknown cluster",
            json!({"cluster": "nope"}),
            ErrorType::ClusterNotFoundException,
        ),
        (
            "maxResults 0",
            json!({"cluster": "c1", "maxResults": 0}),
            ErrorType::InvalidParameterException,
        ),
        (
            "maxResults 101",
            json!({"cluster": "c1", "maxResults": 101}),
            ErrorType::InvalidParameterException,
        ),
        (
            "bad nextToken",
            json!({"cluster": "c1", "nextToken": "zz"}),
            ErrorType::InvalidParameterException,
        ),
        (
            "bad desiredStatus",
            json!({"cluster": "c1", "desiredStatus": "DONE"}),
            ErrorType::InvalidParameterException,
        ),
        (
            "bad family",
            json!({"cluster": "c1", "family": "a b"}),
            ErrorType::InvalidParameterException,
        ),
        (
            "bad container instance",
            json!({"cluster": "c1", "containerInstance": "a>b"}),
            ErrorType::InvalidParameterException,
        ),
    ] {
        expect_error(api.call_json("ListTasks", body).await, expected, what);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_tasks_reports_missing_tasks() {
    let berth = Berth::start().await;
    let api = &berth.api;
    create_cluster(api, "c1").await;
    create_cluster(api, "c2").await;
    let i1 = register_instance(api, "c1", 1024, 1024, json!([])).await;
    let _beats = Heartbeats::start(api.client.clone(), "c1", vec![i1]);
    register_task_definition(api, "web", 10, 64, None).await;
    let ran = call(
        api,
        "RunTask",
        json!({"cluster": "c1", "taskDefinition": "web"}),
    )
    .await;
    let task_arn = task_arns(&ran)[0].clone();
    let unknown = "0123456789abcdef0123456789abcdef";

    let reply = call(
        api,
        "DescribeTasks",
        json!({"cluster": "c1", "tasks": [task_arn, unknown, id_of(&task_arn)]}),
    )
    .await;
    assert_eq!(
        task_arns(&reply),
        [task_arn.clone(), task_arn.clone()],
        "by ARN and by id"
    );
    assert_eq!(reply["failures"].as_array().unwrap().len(), 1, "{reply}");
    assert_eq!(reply["failures"][0]["reason"], "MISSING");
    assert_eq!(
        reply["failures"][0]["arn"],
        format!("{ACCOUNT}:task/c1/{unknown}")
    );
    // The task is not in c2.
    let elsewhere = call(
        api,
        "DescribeTasks",
        json!({"cluster": "c2", "tasks": [id_of(&task_arn)]}),
    )
    .await;
    assert!(task_arns(&elsewhere).is_empty(), "{elsewhere}");
    assert_eq!(reasons(&elsewhere), ["MISSING"]);

    let too_many: Vec<String> = (0..101).map(|_| unknown.to_string()).collect();
    for (what, body, expected) in [
        (
            "more than 100 tasks",
            json!({"cluster": "c1", "tasks": too_many}),
            ErrorType::InvalidParameterException,
        ),
        (
            "no tasks",
            json!({"cluster": "c1", "tasks": []}),
            ErrorType::InvalidParameterException,
        ),
        (
            "unknown cluster",
            json!({"cluster": "nope", "tasks": [unknown]}),
            ErrorType::ClusterNotFoundException,
        ),
        (
            "bad task id",
            json!({"cluster": "c1", "tasks": ["a.b"]}),
            ErrorType::InvalidParameterException,
        ),
        (
            "tasks missing",
            json!({"cluster": "c1"}),
            ErrorType::InvalidParameterException,
        ),
    ] {
        expect_error(api.call_json("DescribeTasks", body).await, expected, what);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_token_makes_run_task_idempotent() {
    let berth = Berth::start().await;
    let api = &berth.api;
    create_cluster(api, "c1").await;
    let i1 = register_instance(api, "c1", 4096, 4096, json!([])).await;
    let _beats = Heartbeats::start(api.client.clone(), "c1", vec![i1.clone()]);
    register_task_definition(api, "web", 256, 512, None).await;
    let body =
        json!({"cluster": "c1", "taskDefinition": "web", "count": 2, "clientToken": "deploy-42"});

    let first = call(api, "RunTask", body.clone()).await;
    let arns = task_arns(&first);
    assert_eq!(arns.len(), 2, "{first}");
    let journal = journal(&berth.url()).await;
    let after_first = journal.state_last_sequence().await.unwrap();

    let second = call(api, "RunTask", body.clone()).await;
    assert_eq!(task_arns(&second), arns, "the retry returns the same tasks");
    assert_eq!(
        journal.state_last_sequence().await.unwrap(),
        after_first,
        "the retry wrote nothing"
    );
    // Placed once: the instance holds two tasks, not four.
    let ci = describe_instance(api, "c1", &i1).await;
    assert_eq!(remaining_int(&ci, "MEMORY"), 4096 - 2 * 512, "{ci}");
    assert_eq!(remaining_int(&ci, "CPU"), 4096 - 2 * 256, "{ci}");
    let listed = call(api, "ListTasks", json!({"cluster": "c1"})).await;
    assert_eq!(arns_of(&listed), arns.iter().cloned().collect());

    // The same token with other parameters is a conflict, and writes nothing.
    let mut changed = body.clone();
    changed["count"] = json!(1);
    expect_error(
        api.call_json("RunTask", changed).await,
        ErrorType::ConflictException,
        "same clientToken, other count",
    );
    let mut changed = body.clone();
    changed["startedBy"] = json!("someone-else");
    expect_error(
        api.call_json("RunTask", changed).await,
        ErrorType::ConflictException,
        "same clientToken, other startedBy",
    );
    assert_eq!(journal.state_last_sequence().await.unwrap(), after_first);

    // Another token is another launch.
    let mut other = body.clone();
    other["clientToken"] = json!("deploy-43");
    let third = call(api, "RunTask", other).await;
    assert_eq!(task_arns(&third).len(), 2);
    assert!(task_arns(&third).iter().all(|a| !arns.contains(a)));

    expect_error(
        api.call_json(
            "RunTask",
            json!({"cluster": "c1", "taskDefinition": "web", "clientToken": "bad token!"}),
        )
        .await,
        ErrorType::InvalidParameterException,
        "bad clientToken",
    );
    expect_error(
        api.call_json(
            "RunTask",
            json!({"cluster": "c1", "taskDefinition": "web", "clientToken": "t".repeat(65)}),
        )
        .await,
        ErrorType::InvalidParameterException,
        "clientToken too long",
    );
    assert_audit_clean(&berth.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_id_header_makes_any_mutation_idempotent() {
    let berth = Berth::start().await;
    let api = &berth.api;
    let (hosts, _beats) = register_hosts(api, "c1", 1, 4096, 4096).await;
    let i1 = hosts[0].clone();
    register_task_definition(api, "web", 256, 512, None).await;
    let journal = journal(&berth.url()).await;

    // StartTask has no clientToken in ECS: a scheduler that did not hear the answer
    // sends the same request with the same id and gets the same task, started once.
    let start = json!({"cluster": "c1", "taskDefinition": "web", "containerInstances": [i1]});
    let first = api
        .call_json_as("sched-job-7-1", "StartTask", start.clone())
        .await
        .expect("StartTask");
    let arns = task_arns(&first);
    assert_eq!(arns.len(), 1, "{first}");
    let after_first = journal.state_last_sequence().await.unwrap();
    let again = api
        .call_json_as("sched-job-7-1", "StartTask", start.clone())
        .await
        .expect("StartTask again");
    assert_eq!(task_arns(&again), arns, "the retry returns the same task");
    assert_eq!(journal.state_last_sequence().await.unwrap(), after_first);
    let ci = describe_instance(api, "c1", &i1).await;
    assert_eq!(remaining_int(&ci, "MEMORY"), 4096 - 512, "{ci}");
    // Its outcome can be looked up by that id.
    let outcome = call(
        api,
        "GetCommandOutcome",
        json!({"commandId": "sched-job-7-1"}),
    )
    .await;
    assert!(outcome.to_string().contains(&arns[0]), "{outcome}");

    // The same id with other parameters is a conflict and writes nothing.
    let mut other = start.clone();
    other["startedBy"] = json!("someone-else");
    expect_error(
        api.call_json_as("sched-job-7-1", "StartTask", other).await,
        ErrorType::ConflictException,
        "same command id, other startedBy",
    );
    // Any mutation: a StopTask retried with its id is answered, not refused.
    let stop = json!({"cluster": "c1", "task": arns[0], "reason": "done"});
    let stopped = api
        .call_json_as("stop-7", "StopTask", stop.clone())
        .await
        .expect("StopTask");
    let after_stop = journal.state_last_sequence().await.unwrap();
    let retried = api
        .call_json_as("stop-7", "StopTask", stop)
        .await
        .expect("StopTask again");
    assert_eq!(stopped, retried);
    assert_eq!(journal.state_last_sequence().await.unwrap(), after_stop);

    for bad in ["bad id!", &"x".repeat(200)] {
        expect_error(
            api.call_json_as(bad, "StartTask", start.clone()).await,
            ErrorType::InvalidParameterException,
            "bad command id",
        );
    }
    assert_audit_clean(&berth.url()).await;
}

/// Publishes a RunTask command straight into `BERTH_CMD`; returns whether JetStream
/// took it as a duplicate.
async fn publish_command(
    api: &Api,
    cluster: &str,
    command_id: Option<&str>,
    reply_to: Option<&str>,
    body: &Value,
) -> bool {
    let js = async_nats::jetstream::new(api.client.clone());
    let mut h = HeaderMap::new();
    if let Some(id) = command_id {
        h.insert(headers::MSG_ID, id);
    }
    if let Some(r) = reply_to {
        h.insert(headers::REPLY_TO, r);
    }
    h.insert(headers::CONTENT_TYPE, headers::JSON);
    let ack = js
        .publish_with_headers(
            subjects::command(cluster, "RunTask"),
            h,
            serde_json::to_vec(body).unwrap().into(),
        )
        .await
        .expect("publish")
        .await
        .expect("stream accepts the command");
    ack.duplicate
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_command_id_takes_effect_once() {
    let berth = Berth::start().await;
    let api = &berth.api;
    create_cluster(api, "c1").await;
    let i1 = register_instance(api, "c1", 4096, 4096, json!([])).await;
    let _beats = Heartbeats::start(api.client.clone(), "c1", vec![i1.clone()]);
    register_task_definition(api, "web", 256, 512, None).await;
    let body = json!({"cluster": "c1", "taskDefinition": "web", "startedBy": "integration"});

    assert!(!publish_command(api, "c1", Some("cmd-dup-1"), None, &body).await);
    assert!(
        publish_command(api, "c1", Some("cmd-dup-1"), None, &body).await,
        "the second copy is a duplicate"
    );

    let outcome = get_outcome(api, "cmd-dup-1").await;
    assert_eq!(outcome["commandId"], "cmd-dup-1", "{outcome}");
    assert_eq!(outcome["action"], "RunTask");
    assert_eq!(outcome["cluster"], "c1");
    assert!(outcome.get("error").is_none_or(Value::is_null), "{outcome}");
    let tasks = outcome["response"]["Tasks"]["tasks"]
        .as_array()
        .unwrap_or_else(|| panic!("no tasks in outcome {outcome}"));
    assert_eq!(tasks.len(), 1, "{outcome}");
    let task_arn = tasks[0]["taskArn"].as_str().unwrap().to_string();
    assert_eq!(tasks[0]["startedBy"], "integration");
    let sequence = outcome["journalSequence"]
        .as_u64()
        .expect("journalSequence");
    assert!(sequence > 0);

    // Everything written so far is in the view: exactly one task, placed once.
    let journal = journal(&berth.url()).await;
    let last = journal.state_last_sequence().await.unwrap();
    let listed = read_at(api, "ListTasks", json!({"cluster": "c1"}), last).await;
    assert_eq!(arns_of(&listed), BTreeSet::from([task_arn.clone()]));
    let ci = read_at(
        api,
        "DescribeContainerInstances",
        json!({"cluster": "c1", "containerInstances": [i1]}),
        last,
    )
    .await;
    assert_eq!(
        remaining_int(&ci["containerInstances"][0], "MEMORY"),
        4096 - 512
    );

    // Publishing it again later still changes nothing.
    assert!(publish_command(api, "c1", Some("cmd-dup-1"), None, &body).await);
    assert_eq!(get_outcome(api, "cmd-dup-1").await, outcome);

    // Unknown or malformed command ids.
    expect_error(
        api.call_json("GetCommandOutcome", json!({"commandId": "never-sent"}))
            .await,
        ErrorType::ResourceNotFoundException,
        "unknown command id",
    );
    expect_error(
        api.call_json("GetCommandOutcome", json!({"commandId": "a.b"}))
            .await,
        ErrorType::InvalidParameterException,
        "bad command id",
    );
    assert_audit_clean(&berth.url()).await;
}

/// The next outcome on a reply subject: its named-MessagePack map as JSON, and decoded.
async fn next_outcome(replies: &mut async_nats::Subscriber) -> (Value, Outcome) {
    let msg = tokio::time::timeout(PATIENCE, replies.next())
        .await
        .expect("an outcome arrives")
        .expect("subscription open");
    // A named MessagePack map: it decodes into JSON with the field names.
    let named: Value = rmp_serde::from_slice(&msg.payload).expect("MessagePack");
    assert!(named.is_object(), "{named}");
    let outcome: Outcome = codec::decode_record(&msg.payload).expect("an Outcome");
    (named, outcome)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_command_outcome_reaches_reply_subject() {
    let berth = Berth::start().await;
    let api = &berth.api;
    create_cluster(api, "c1").await;
    let i1 = register_instance(api, "c1", 4096, 4096, json!([])).await;
    let _beats = Heartbeats::start(api.client.clone(), "c1", vec![i1]);
    register_task_definition(api, "web", 256, 512, None).await;
    let inbox = api.client.new_inbox();
    let mut replies = api.client.subscribe(inbox.clone()).await.unwrap();
    api.client.flush().await.unwrap();

    let body = json!({"cluster": "c1", "taskDefinition": "web", "count": 2});
    publish_command(api, "c1", Some("cmd-reply-1"), Some(&inbox), &body).await;
    let (named, outcome) = next_outcome(&mut replies).await;
    assert_eq!(named["commandId"], "cmd-reply-1", "{named}");
    assert_eq!(named["action"], "RunTask");
    assert!(named["response"]["Tasks"]["tasks"].is_array(), "{named}");
    assert_eq!(outcome.command_id, "cmd-reply-1");
    match outcome.result() {
        Ok(CommandResponse::Tasks(t)) => {
            assert_eq!(t.tasks.len(), 2, "{named}");
            assert!(t.failures.is_empty());
        }
        other => panic!("unexpected outcome {other:?}"),
    }
    // The same outcome is stored under the command id.
    let stored = get_outcome(api, "cmd-reply-1").await;
    assert_eq!(stored["commandId"], "cmd-reply-1");
    assert_eq!(
        stored["response"]["Tasks"]["tasks"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // A command without an id gets one, and its outcome still reaches the publisher.
    publish_command(
        api,
        "c1",
        None,
        Some(&inbox),
        &json!({"cluster": "c1", "taskDefinition": "web"}),
    )
    .await;
    let (named, outcome) = next_outcome(&mut replies).await;
    assert!(outcome.command_id.starts_with("seq-"), "{named}");
    assert!(matches!(outcome.result(), Ok(CommandResponse::Tasks(t)) if t.tasks.len() == 1));

    // A bad command gets an error outcome and writes nothing.
    let journal = journal(&berth.url()).await;
    let before = journal.state_last_sequence().await.unwrap();
    publish_command(
        api,
        "c1",
        Some("cmd-reply-bad"),
        Some(&inbox),
        &json!({"cluster": "c1"}),
    )
    .await;
    let (named, outcome) = next_outcome(&mut replies).await;
    assert_eq!(
        named["error"]["__type"], "InvalidParameterException",
        "{named}"
    );
    assert_eq!(
        outcome.result().unwrap_err().error_type,
        ErrorType::InvalidParameterException
    );
    // A command whose subject names another cluster than its body is refused too.
    publish_command(
        api,
        "c1",
        Some("cmd-reply-mismatch"),
        Some(&inbox),
        &json!({"cluster": "c2", "taskDefinition": "web"}),
    )
    .await;
    let (named, _) = next_outcome(&mut replies).await;
    assert_eq!(named["commandId"], "cmd-reply-mismatch");
    assert_eq!(
        named["error"]["__type"], "InvalidParameterException",
        "{named}"
    );
    assert_eq!(journal.state_last_sequence().await.unwrap(), before);
    assert_audit_clean(&berth.url()).await;
}

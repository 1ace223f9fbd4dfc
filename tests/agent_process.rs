//! `berth-agent` with the process runtime, end to end: a real nats-server, a control-plane
//! replica, and the agent as a process (configured through its env twins) running tasks
//! as host processes.

use berth_e2e::AgentProcess as Agent;
use berth_e2e::*;
use berth_messages::{headers, subjects};
use berth_testkit::wait_for;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A scratch directory; on drop, kills any container still running under it, then
/// removes it.
struct Scratch {
    path: PathBuf,
}

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "berth-agent-e2e-{tag}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).expect("scratch dir");
        Scratch { path }
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn data_dir(&self) -> PathBuf {
        self.path.join("agent")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let cgroups = berth_agent::cgroup::Cgroups::detect();
        for (state, exit) in container_states(&self.data_dir()) {
            if !exit.exists() {
                if let Some((shim, pid)) = read_state(&state) {
                    let _ = Command::new("kill")
                        .args(["-KILL", "--", &format!("-{pid}"), &shim.to_string()])
                        .stderr(Stdio::null())
                        .status();
                }
            }
            // The agent removes a container's cgroup when it sees it end; a test that
            // killed the agent first leaves it (`<task-id>-<container>`).
            let container = state.parent();
            let task = container.and_then(Path::parent).and_then(Path::parent);
            if let (Some(cg), Some(c), Some(t)) = (&cgroups, container, task) {
                if let (Some(c), Some(t)) = (c.file_name(), t.file_name()) {
                    let name = format!("{}-{}", t.to_string_lossy(), c.to_string_lossy());
                    for _ in 0..50 {
                        if cg.remove_now(&name) {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// (state.json, exit.json) of every container under an agent's data directory.
fn container_states(data_dir: &Path) -> Vec<(PathBuf, PathBuf)> {
    let mut found = Vec::new();
    let Ok(tasks) = std::fs::read_dir(data_dir.join("tasks")) else {
        return found;
    };
    for task in tasks.flatten() {
        let Ok(containers) = std::fs::read_dir(task.path().join("containers")) else {
            continue;
        };
        for c in containers.flatten() {
            found.push((c.path().join("state.json"), c.path().join("exit.json")));
        }
    }
    found
}

/// (shim pid, command pid) from a container's state.json.
fn read_state(path: &Path) -> Option<(i64, i64)> {
    let v: Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    Some((v["shimPid"].as_i64()?, v["pid"].as_i64()?))
}

async fn register_td(api: &Api, body: Value) -> String {
    let reply = api
        .call_json("RegisterTaskDefinition", body)
        .await
        .expect("RegisterTaskDefinition");
    reply["taskDefinition"]["taskDefinitionArn"]
        .as_str()
        .expect("task definition arn")
        .to_string()
}

async fn run_task(api: &Api, cluster: &str, td: &str, overrides: Option<Value>) -> Value {
    let mut req = json!({"cluster": cluster, "taskDefinition": td});
    if let Some(o) = overrides {
        req["overrides"] = o;
    }
    api.call_json("RunTask", req).await.expect("RunTask")
}

async fn run_one(api: &Api, cluster: &str, td: &str, overrides: Option<Value>) -> String {
    let reply = run_task(api, cluster, td, overrides).await;
    assert_eq!(reply["failures"], json!([]), "{reply}");
    reply["tasks"][0]["taskArn"]
        .as_str()
        .expect("task arn")
        .to_string()
}

async fn wait_status(api: &Api, cluster: &str, task: &str, status: &str) -> Value {
    wait_task(api, cluster, task, &format!("task {status}"), |t| {
        t["lastStatus"] == status
    })
    .await
}

fn container<'a>(task: &'a Value, name: &str) -> &'a Value {
    task["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no container {name} in {task}"))
}

async fn describe_instance(api: &Api, cluster: &str, arn: &str) -> Value {
    let reply = api
        .call_json(
            "DescribeContainerInstances",
            json!({"cluster": cluster, "containerInstances": [arn]}),
        )
        .await
        .expect("DescribeContainerInstances");
    reply["containerInstances"][0].clone()
}

fn resource(instance: &Value, field: &str, name: &str) -> Value {
    instance[field]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no {field} {name} in {instance}"))
}

/// One request to the agent's log service (JSON).
async fn logs(api: &Api, cluster: &str, instance_arn: &str, request: Value) -> Value {
    let mut h = async_nats::HeaderMap::new();
    h.insert(headers::CONTENT_TYPE, headers::JSON);
    let subject = subjects::host_logs(cluster, &id_of(instance_arn));
    let reply = api
        .client
        .request_with_headers(subject, h, request.to_string().into())
        .await
        .expect("log service answers");
    serde_json::from_slice(&reply.payload).expect("log reply is JSON")
}

/// Everything a container wrote, following offsets until the log is complete.
async fn all_output(api: &Api, cluster: &str, instance_arn: &str, task: &str) -> String {
    let mut text = String::new();
    let mut offset = 0u64;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let chunk = logs(
            api,
            cluster,
            instance_arn,
            json!({"task": task, "offset": offset}),
        )
        .await;
        text.push_str(chunk["data"].as_str().unwrap_or_default());
        offset = chunk["nextOffset"].as_u64().unwrap_or(offset);
        if chunk["complete"] == true {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "output of {task} never complete; so far {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A container's output so far.
async fn output_so_far(api: &Api, cluster: &str, instance_arn: &str, task: &str) -> String {
    let chunk = logs(api, cluster, instance_arn, json!({"task": task})).await;
    chunk["data"].as_str().unwrap_or_default().to_string()
}

/// Waits until a task's output so far contains `text`.
async fn wait_output(api: &Api, cluster: &str, instance_arn: &str, task: &str, text: &str) {
    wait_for(&format!("{text:?} in the output"), PATIENCE, || async {
        output_so_far(api, cluster, instance_arn, task)
            .await
            .contains(text)
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_task_runs_through_the_whole_path() {
    let berth = Berth::start().await;
    let api = &berth.api;
    create_cluster(api, "c1").await;
    let scratch = Scratch::new("whole");
    let mut agent = Agent::start(
        &berth.url(),
        "c1",
        &scratch.data_dir(),
        &[("BERTH_ATTRIBUTES", "role=web,zone=a")],
    );
    let instance_arn = agent.ready().await;

    // Registered with the host's real resources and attributes.
    let instance = describe_instance(api, "c1", &instance_arn).await;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as i64;
    assert_eq!(
        resource(&instance, "registeredResources", "CPU")["integerValue"],
        cores * 1024
    );
    let memory = resource(&instance, "registeredResources", "MEMORY")["integerValue"]
        .as_i64()
        .expect("memory");
    assert!(memory > 0, "{instance}");
    assert_eq!(
        resource(&instance, "registeredResources", "PORTS")["stringSetValue"],
        json!(["22"])
    );
    let attribute = |name: &str| {
        instance["attributes"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["name"] == name))
            .map(|x| x["value"].clone())
    };
    assert_eq!(attribute("ecs.os-type"), Some(json!("linux")));
    assert!(attribute("ecs.cpu-architecture").is_some());
    assert_eq!(attribute("role"), Some(json!("web")));
    assert!(instance["versionInfo"]["agentVersion"].is_string());
    assert_eq!(instance["agentConnected"], true);

    let td = register_td(
        api,
        json!({"family": "hello", "containerDefinitions": [{
            "name": "app", "image": "none", "cpu": 128, "memory": 64, "essential": true,
            "entryPoint": ["sh", "-c"],
            "command": ["echo hello; echo \"port=$PORT web=$PORT_8080 mode=$MODE\"; exit 0"],
            "environment": [{"name": "MODE", "value": "base"}],
            "portMappings": [{"containerPort": 8080, "hostPort": 0}]
        }]}),
    )
    .await;
    let task = run_one(
        api,
        "c1",
        &td,
        Some(json!({"containerOverrides": [
            {"name": "app", "environment": [{"name": "MODE", "value": "override"}]}
        ]})),
    )
    .await;
    let stopped = wait_status(api, "c1", &task, "STOPPED").await;
    let app = container(&stopped, "app");
    assert_eq!(app["exitCode"], 0, "{stopped}");
    assert_eq!(stopped["stopCode"], "EssentialContainerExited", "{stopped}");
    assert!(
        stopped["startedAt"].is_number(),
        "reported RUNNING first: {stopped}"
    );
    let host_port = app["networkBindings"][0]["hostPort"]
        .as_i64()
        .expect("host port");

    let output = all_output(api, "c1", &instance_arn, &task).await;
    assert_eq!(
        output,
        format!("hello\nport={host_port} web={host_port} mode=override\n")
    );
    let by_name = logs(
        api,
        "c1",
        &instance_arn,
        json!({"task": id_of(&task), "containerName": "app", "tailBytes": 6}),
    )
    .await;
    assert_eq!(by_name["data"], "rride\n");
    assert_eq!(by_name["complete"], true);
    // MessagePack without a Content-Type, like the API.
    let request = berth_messages::agent::LogsRequest {
        task: task.clone(),
        max_bytes: Some(5),
        ..Default::default()
    };
    let body = berth_messages::codec::encode_record(&request).expect("encode");
    let reply = api
        .client
        .request(
            subjects::host_logs("c1", &id_of(&instance_arn)),
            body.into(),
        )
        .await
        .expect("log service answers");
    let chunk: berth_messages::agent::LogsResponse =
        berth_messages::codec::decode_record(&reply.payload).expect("MessagePack reply");
    assert_eq!((chunk.data.as_str(), chunk.next_offset), ("hello", 5));
    assert!(!chunk.complete, "more to read");
    let unknown = logs(
        api,
        "c1",
        &instance_arn,
        json!({"task": task, "containerName": "nope"}),
    )
    .await;
    assert_eq!(unknown["__type"], "ResourceNotFoundException", "{unknown}");

    // Resources returned.
    let instance = wait_for("resources returned", PATIENCE, || async {
        let i = describe_instance(api, "c1", &instance_arn).await;
        (resource(&i, "remainingResources", "MEMORY")["integerValue"] == memory).then_some(i)
    })
    .await;
    assert_eq!(
        resource(&instance, "remainingResources", "CPU")["integerValue"],
        cores * 1024
    );
    assert!(agent.terminate().await.success(), "{}", agent.output());
    assert_audit_clean(&berth.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn essential_exit_stops_the_task_and_non_essential_exit_does_not() {
    let berth = Berth::start().await;
    let api = &berth.api;
    create_cluster(api, "c1").await;
    let scratch = Scratch::new("essential");
    let mut agent = Agent::start(&berth.url(), "c1", &scratch.data_dir(), &[]);
    agent.ready().await;

    let td = register_td(
        api,
        json!({"family": "ess", "containerDefinitions": [
            {"name": "helper", "cpu": 64, "memory": 32, "essential": false,
             "command": ["sleep", "1000"]},
            {"name": "app", "cpu": 64, "memory": 32, "essential": true,
             "command": ["sh", "-c", "exit 3"],
             "dependsOn": [{"containerName": "helper", "condition": "START"}]}
        ]}),
    )
    .await;
    let task = run_one(api, "c1", &td, None).await;
    let stopped = wait_status(api, "c1", &task, "STOPPED").await;
    assert_eq!(stopped["stopCode"], "EssentialContainerExited", "{stopped}");
    assert_eq!(
        stopped["stoppedReason"],
        "Essential container in task exited"
    );
    assert_eq!(container(&stopped, "app")["exitCode"], 3, "{stopped}");
    // The helper was stopped by the agent (SIGTERM: 128 + 15).
    assert_eq!(container(&stopped, "helper")["exitCode"], 143, "{stopped}");

    let td = register_td(
        api,
        json!({"family": "side", "containerDefinitions": [
            {"name": "main", "cpu": 64, "memory": 32, "essential": true,
             "command": ["sleep", "1000"]},
            {"name": "side", "cpu": 64, "memory": 32, "essential": false,
             "command": ["sh", "-c", "exit 5"]}
        ]}),
    )
    .await;
    let task = run_one(api, "c1", &td, None).await;
    // The side container may exit (and be reported) before the task is reported RUNNING:
    // wait for both; a task stopped by the non-essential exit never gets there.
    let running = wait_task(
        api,
        "c1",
        &task,
        "side container stopped, task running",
        |t| container(t, "side")["lastStatus"] == "STOPPED" && t["lastStatus"] == "RUNNING",
    )
    .await;
    assert_eq!(container(&running, "side")["exitCode"], 5, "{running}");
    assert_eq!(running["lastStatus"], "RUNNING", "{running}");
    assert_eq!(container(&running, "main")["lastStatus"], "RUNNING");

    api.call_json("StopTask", json!({"cluster": "c1", "task": task}))
        .await
        .expect("StopTask");
    let stopped = wait_status(api, "c1", &task, "STOPPED").await;
    assert_eq!(stopped["stopCode"], "UserInitiated", "{stopped}");
    assert_eq!(container(&stopped, "main")["exitCode"], 143, "{stopped}");
    assert_eq!(container(&stopped, "side")["exitCode"], 5, "{stopped}");
    assert_audit_clean(&berth.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_task_kills_a_process_that_ignores_sigterm_after_its_stop_timeout() {
    let berth = Berth::start().await;
    let api = &berth.api;
    create_cluster(api, "c1").await;
    let scratch = Scratch::new("stubborn");
    let mut agent = Agent::start(&berth.url(), "c1", &scratch.data_dir(), &[]);
    let instance_arn = agent.ready().await;

    let td = register_td(
        api,
        json!({"family": "stubborn", "containerDefinitions": [{
            "name": "app", "cpu": 64, "memory": 32, "essential": true, "stopTimeout": 2,
            "command": ["sh", "-c", "trap '' TERM; echo trapped; sleep 1000"]
        }]}),
    )
    .await;
    let task = run_one(api, "c1", &td, None).await;
    wait_status(api, "c1", &task, "RUNNING").await;
    // SIGTERM only matters once the trap is set.
    wait_output(api, "c1", &instance_arn, &task, "trapped").await;
    api.call_json(
        "StopTask",
        json!({"cluster": "c1", "task": task, "reason": "enough"}),
    )
    .await
    .expect("StopTask");
    let stopped = wait_status(api, "c1", &task, "STOPPED").await;
    // Killed by SIGKILL (128 + 9) once the stop timeout passed.
    assert_eq!(container(&stopped, "app")["exitCode"], 137, "{stopped}");
    assert_eq!(stopped["stopCode"], "UserInitiated");
    assert_eq!(stopped["stoppedReason"], "enough");
    assert_audit_clean(&berth.url()).await;
}

fn lines_in(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_comes_back_as_the_same_instance_and_adopts_its_tasks() {
    let berth = Berth::start().await;
    let api = &berth.api;
    create_cluster(api, "c1").await;
    let scratch = Scratch::new("restart");
    let mut agent = Agent::start(&berth.url(), "c1", &scratch.data_dir(), &[]);
    let instance_arn = agent.ready().await;

    // Each start appends the process's pid to its task's file.
    let td = register_td(
        api,
        json!({"family": "pidwriter", "containerDefinitions": [{
            "name": "app", "cpu": 64, "memory": 32, "essential": true,
            "command": ["sh", "-c", "echo $$ >> \"$PID_FILE\"; exec sleep 1000"]
        }]}),
    )
    .await;
    let pid_file = |name: &str| scratch.path().join(format!("{name}.pids"));
    let with_pid_file = |name: &str| {
        json!({"containerOverrides": [{"name": "app", "environment": [
            {"name": "PID_FILE", "value": pid_file(name).display().to_string()}
        ]}]})
    };
    let keeps = run_one(api, "c1", &td, Some(with_pid_file("keeps"))).await;
    let dies = run_one(api, "c1", &td, Some(with_pid_file("dies"))).await;
    let vanishes = run_one(api, "c1", &td, Some(with_pid_file("vanishes"))).await;
    for task in [&keeps, &dies, &vanishes] {
        wait_status(api, "c1", task, "RUNNING").await;
    }
    for name in ["keeps", "dies", "vanishes"] {
        wait_for("the pid to be written", PATIENCE, || async {
            (lines_in(&pid_file(name)).len() == 1).then_some(())
        })
        .await;
    }

    agent.kill();
    // While the agent is away: one task's process is killed (its shim records the exit),
    // another loses its shim too (nothing is recorded).
    let dies_pid = lines_in(&pid_file("dies"))[0].clone();
    assert!(Command::new("kill")
        .args(["-KILL", &dies_pid])
        .status()
        .expect("kill")
        .success());
    let vanishes_state = container_states(&scratch.data_dir())
        .into_iter()
        .map(|(state, _)| state)
        .find(|state| state.to_string_lossy().contains(&id_of(&vanishes)))
        .expect("state of the vanishing task");
    let (shim, pid) = read_state(&vanishes_state).expect("state.json");
    assert!(Command::new("kill")
        .args(["-KILL", &shim.to_string(), &pid.to_string()])
        .status()
        .expect("kill")
        .success());

    let mut agent = Agent::start(&berth.url(), "c1", &scratch.data_dir(), &[]);
    assert_eq!(agent.ready().await, instance_arn, "same container instance");
    let listed = api
        .call_json("ListContainerInstances", json!({"cluster": "c1"}))
        .await
        .expect("ListContainerInstances");
    assert_eq!(listed["containerInstanceArns"], json!([instance_arn]));

    let died = wait_status(api, "c1", &dies, "STOPPED").await;
    assert_eq!(container(&died, "app")["exitCode"], 137, "{died}");
    assert_eq!(died["stopCode"], "EssentialContainerExited", "{died}");
    let vanished = wait_status(api, "c1", &vanishes, "STOPPED").await;
    let reason = container(&vanished, "app")["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        reason.contains("without recording an exit status"),
        "{vanished}"
    );
    assert!(vanished["stoppedReason"].is_string(), "{vanished}");

    // The survivor was adopted, not started again, and the new agent can stop it.
    let kept = wait_task(api, "c1", &keeps, "the kept task", |t| {
        t["lastStatus"] == "RUNNING"
    })
    .await;
    assert_eq!(container(&kept, "app")["lastStatus"], "RUNNING");
    api.call_json("StopTask", json!({"cluster": "c1", "task": keeps}))
        .await
        .expect("StopTask");
    let stopped = wait_status(api, "c1", &keeps, "STOPPED").await;
    assert_eq!(container(&stopped, "app")["exitCode"], 143, "{stopped}");
    assert_eq!(lines_in(&pid_file("keeps")).len(), 1, "started once");
    assert_eq!(lines_in(&pid_file("dies")).len(), 1, "not restarted");
    assert_audit_clean(&berth.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_connected_follows_the_agent_and_run_task_refuses_without_it() {
    let berth = Berth::start().await;
    let api = &berth.api;
    create_cluster(api, "c1").await;
    let scratch = Scratch::new("connected");
    let mut agent = Agent::start(&berth.url(), "c1", &scratch.data_dir(), &[]);
    let instance_arn = agent.ready().await;
    assert_eq!(
        describe_instance(api, "c1", &instance_arn).await["agentConnected"],
        true
    );
    let td = register_td(
        api,
        json!({"family": "quick", "containerDefinitions": [{
            "name": "app", "cpu": 64, "memory": 32, "command": ["true"]
        }]}),
    )
    .await;

    assert!(agent.terminate().await.success(), "{}", agent.output());
    wait_for("agentConnected false", PATIENCE, || async {
        (describe_instance(api, "c1", &instance_arn).await["agentConnected"] == false).then_some(())
    })
    .await;
    let refused = run_task(api, "c1", &td, None).await;
    assert_eq!(refused["tasks"], json!([]), "{refused}");
    assert_eq!(refused["failures"][0]["reason"], "AGENT", "{refused}");

    let mut agent = Agent::start(&berth.url(), "c1", &scratch.data_dir(), &[]);
    assert_eq!(agent.ready().await, instance_arn);
    wait_for("agentConnected true", PATIENCE, || async {
        (describe_instance(api, "c1", &instance_arn).await["agentConnected"] == true).then_some(())
    })
    .await;
    let task = run_one(api, "c1", &td, None).await;
    let stopped = wait_status(api, "c1", &task, "STOPPED").await;
    assert_eq!(container(&stopped, "app")["exitCode"], 0, "{stopped}");
    assert_audit_clean(&berth.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_that_cannot_start_stop_their_task_with_a_precise_reason() {
    let berth = Berth::start().await;
    let api = &berth.api;
    create_cluster(api, "c1").await;
    let scratch = Scratch::new("badinput");
    let mut agent = Agent::start(&berth.url(), "c1", &scratch.data_dir(), &[]);
    agent.ready().await;

    let cases = [
        (
            json!({"command": ["no-such-command-xyz", "arg"]}),
            "CannotStartContainerError: executable \"no-such-command-xyz\" not found",
        ),
        (
            json!({"command": ["true"], "workingDirectory": "/no/such/dir"}),
            "CannotStartContainerError: working directory \"/no/such/dir\" does not exist",
        ),
        (
            json!({"command": ["true"], "user": "no-such-user-xyz"}),
            "CannotStartContainerError: user \"no-such-user-xyz\" does not exist on the host",
        ),
    ];
    for (i, (container_fields, reason)) in cases.into_iter().enumerate() {
        let mut def = json!({"name": "app", "cpu": 64, "memory": 32});
        for (k, v) in container_fields.as_object().expect("object") {
            def[k] = v.clone();
        }
        let td = register_td(
            api,
            json!({"family": format!("bad{i}"), "containerDefinitions": [def]}),
        )
        .await;
        let task = run_one(api, "c1", &td, None).await;
        let stopped = wait_status(api, "c1", &task, "STOPPED").await;
        assert_eq!(stopped["stopCode"], "TaskFailedToStart", "{stopped}");
        assert_eq!(stopped["stoppedReason"], reason, "{stopped}");
        assert_eq!(container(&stopped, "app")["reason"], reason, "{stopped}");
    }

    // A container that exits at once is just an exit.
    let td = register_td(
        api,
        json!({"family": "quitter", "containerDefinitions": [{
            "name": "app", "cpu": 64, "memory": 32, "command": ["sh", "-c", "exit 9"]
        }]}),
    )
    .await;
    let task = run_one(api, "c1", &td, None).await;
    let stopped = wait_status(api, "c1", &task, "STOPPED").await;
    assert_eq!(container(&stopped, "app")["exitCode"], 9, "{stopped}");
    assert_eq!(stopped["stopCode"], "EssentialContainerExited", "{stopped}");
    assert_audit_clean(&berth.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_on_the_same_data_dir_exits_and_disturbs_nothing() {
    let berth = Berth::start().await;
    let api = &berth.api;
    create_cluster(api, "c1").await;
    let scratch = Scratch::new("twice");
    let mut first = Agent::start(&berth.url(), "c1", &scratch.data_dir(), &[]);
    let instance_arn = first.ready().await;

    let mut second = Agent::start(&berth.url(), "c1", &scratch.data_dir(), &[]);
    let status = second.exited().await;
    assert!(!status.success(), "{status}");
    let said = second.output();
    assert!(
        said.contains("is in use by another berth-agent"),
        "unclear message: {said}"
    );

    // The first agent still serves its instance, alone.
    let listed = api
        .call_json("ListContainerInstances", json!({"cluster": "c1"}))
        .await
        .expect("ListContainerInstances");
    assert_eq!(listed["containerInstanceArns"], json!([instance_arn]));
    let td = register_td(
        api,
        json!({"family": "quick", "containerDefinitions": [{
            "name": "app", "cpu": 64, "memory": 32, "command": ["true"]
        }]}),
    )
    .await;
    let task = run_one(api, "c1", &td, None).await;
    let stopped = wait_status(api, "c1", &task, "STOPPED").await;
    assert_eq!(container(&stopped, "app")["exitCode"], 0, "{stopped}");
    assert!(first.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_for_a_missing_cluster_exits_with_a_clear_message() {
    let berth = Berth::start().await;
    let scratch = Scratch::new("nocluster");
    let mut agent = Agent::start(&berth.url(), "nope", &scratch.data_dir(), &[]);
    let status = agent.exited().await;
    assert!(!status.success(), "{status}");
    let said = agent.output();
    assert!(
        said.contains("cluster nope does not exist: create it with `berth clusters create nope`"),
        "unclear message: {said}"
    );
    assert!(
        !scratch.data_dir().join("identity.json").exists(),
        "no identity kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_tasks_on_exit_stops_and_reports_tasks_before_the_agent_exits() {
    let berth = Berth::start().await;
    let api = &berth.api;
    create_cluster(api, "c1").await;
    let scratch = Scratch::new("stoponexit");
    let mut agent = Agent::start(
        &berth.url(),
        "c1",
        &scratch.data_dir(),
        &[
            ("BERTH_STOP_TASKS_ON_EXIT", "true"),
            ("BERTH_STOP_TIMEOUT", "2"),
        ],
    );
    let instance_arn = agent.ready().await;
    let td = register_td(
        api,
        json!({"family": "sleeper", "containerDefinitions": [{
            "name": "app", "cpu": 64, "memory": 32,
            "command": ["sh", "-c", "trap '' TERM; echo trapped; sleep 1000"]
        }]}),
    )
    .await;
    let task = run_one(api, "c1", &td, None).await;
    wait_status(api, "c1", &task, "RUNNING").await;
    // SIGTERM only matters once the trap is set.
    wait_output(api, "c1", &instance_arn, &task, "trapped").await;
    assert!(agent.terminate().await.success(), "{}", agent.output());
    // Reported before the agent exited: no agent is left to report it later.
    let reply = api
        .call_json("DescribeTasks", json!({"cluster": "c1", "tasks": [task]}))
        .await
        .expect("DescribeTasks");
    let stopped = &reply["tasks"][0];
    assert_eq!(stopped["lastStatus"], "STOPPED", "{stopped}");
    assert_eq!(stopped["stopCode"], "UserInitiated", "{stopped}");
    // BERTH_STOP_TIMEOUT bounds the wait for a container that ignores SIGTERM.
    assert_eq!(container(stopped, "app")["exitCode"], 137, "{stopped}");
    assert_audit_clean(&berth.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_gate_healthy_dependencies_and_make_the_task_health() {
    let berth = Berth::start().await;
    let api = &berth.api;
    create_cluster(api, "hc").await;
    let scratch = Scratch::new("health");
    let mut agent = Agent::start(
        &berth.url(),
        "hc",
        &scratch.data_dir(),
        &[
            ("BERTH_LOG_JSON", "true"),
            ("RUST_LOG", "info,berth_agent=debug"),
        ],
    );
    agent.ready().await;

    // `db` is healthy once the flag exists; its failures before that fall in its start
    // period. `web` starts only once `db` is HEALTHY.
    let flag = scratch.path().join("db-ready");
    let gate = register_td(
        api,
        json!({"family": "gate", "containerDefinitions": [
            {"name": "db", "cpu": 64, "memory": 32, "command": ["sleep", "1000"],
             "healthCheck": {"command": ["CMD-SHELL", format!("test -f {}", flag.display())],
                             "interval": 5, "timeout": 2, "retries": 1, "startPeriod": 300}},
            {"name": "web", "cpu": 64, "memory": 32, "command": ["sleep", "1000"],
             "dependsOn": [{"containerName": "db", "condition": "HEALTHY"}]}
        ]}),
    )
    .await;
    // `db` never passes: after one failure it is UNHEALTHY, and `web` can never start.
    let sick = register_td(
        api,
        json!({"family": "sick", "containerDefinitions": [
            {"name": "db", "cpu": 64, "memory": 32, "command": ["sleep", "1000"],
             "healthCheck": {"command": ["CMD", "false"], "interval": 5, "retries": 1}},
            {"name": "web", "cpu": 64, "memory": 32, "command": ["sleep", "1000"],
             "dependsOn": [{"containerName": "db", "condition": "HEALTHY"}]}
        ]}),
    )
    .await;
    let gated = run_one(api, "hc", &gate, None).await;
    let failing = run_one(api, "hc", &sick, None).await;

    let created = describe_task(api, "hc", &gated).await;
    assert_eq!(created["healthStatus"], "UNKNOWN", "{created}");
    assert_eq!(container(&created, "db")["healthStatus"], "UNKNOWN");
    // ECS shows UNKNOWN for a container without a health check.
    assert_eq!(container(&created, "web")["healthStatus"], "UNKNOWN");

    // Once `db` has failed a probe, `web` still waits: the task is not RUNNING.
    let gated_id = id_of(&gated);
    let probe_failed = async {
        while let Some(line) = agent.lines.recv().await {
            if line.contains("\"health check\"")
                && line.contains(&gated_id)
                && line.contains("\"passed\":false")
            {
                return;
            }
        }
        panic!("the agent ended");
    };
    tokio::time::timeout(PATIENCE, probe_failed)
        .await
        .expect("a failed probe of db");
    let waiting = describe_task(api, "hc", &gated).await;
    assert_eq!(waiting["lastStatus"], "PENDING", "{waiting}");
    assert_eq!(waiting["healthStatus"], "UNKNOWN", "{waiting}");

    std::fs::write(&flag, b"").expect("flag");
    let running = wait_status(api, "hc", &gated, "RUNNING").await;
    assert_eq!(
        container(&running, "db")["healthStatus"],
        "HEALTHY",
        "{running}"
    );
    assert_eq!(running["healthStatus"], "HEALTHY", "{running}");
    assert_eq!(container(&running, "web")["lastStatus"], "RUNNING");

    let stopped = wait_status(api, "hc", &failing, "STOPPED").await;
    assert_eq!(stopped["stopCode"], "TaskFailedToStart", "{stopped}");
    let reason = stopped["stoppedReason"].as_str().unwrap_or_default();
    assert!(reason.contains("UNHEALTHY"), "{stopped}");
    assert_eq!(container(&stopped, "db")["healthStatus"], "UNHEALTHY");
    assert_eq!(stopped["healthStatus"], "UNHEALTHY", "{stopped}");
    drop(agent);
    assert_audit_clean(&berth.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_over_its_memory_limit_is_killed_where_the_host_has_cgroups() {
    let berth = Berth::start().await;
    let api = &berth.api;
    create_cluster(api, "oom").await;
    let scratch = Scratch::new("oom");
    let mut agent = Agent::start(&berth.url(), "oom", &scratch.data_dir(), &[]);
    agent.ready().await;
    // `tail` keeps 200 MB of a line without newlines in memory; the limit is 16 MiB.
    let td = register_td(
        api,
        json!({"family": "greedy", "containerDefinitions": [
            {"name": "app", "cpu": 64, "memory": 16,
             "command": ["sh", "-c", "head -c 200000000 /dev/zero | tail > /dev/null"]}
        ]}),
    )
    .await;
    let task = run_one(api, "oom", &td, None).await;
    let stopped = wait_status(api, "oom", &task, "STOPPED").await;
    let app = container(&stopped, "app");
    if berth_agent::cgroup::Cgroups::detect().is_some() {
        assert_eq!(app["exitCode"], 137, "{stopped}");
        assert_eq!(
            app["reason"], "OutOfMemoryError: Container killed due to memory usage",
            "{stopped}"
        );
        assert_eq!(stopped["stopCode"], "EssentialContainerExited", "{stopped}");
    } else {
        // No memory controller the agent can use: limits are off and the command ends.
        assert_eq!(app["exitCode"], 0, "{stopped}");
    }
    assert_audit_clean(&berth.url()).await;
}

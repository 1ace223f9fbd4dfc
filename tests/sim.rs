//! Hollow instances (berth-sim, `berth-agent --sim N`) end to end against a real
//! nats-server and an in-process control plane: 2,000 hollow instances run 20,000 tasks
//! to completion with a clean audit, and the lifecycle a hollow instance plays (exit
//! codes, stop requests, identities kept across a restart, bad input).

use berth_e2e::*;
use berth_messages::api::{
    DescribeClustersRequest, DescribeClustersResponse, DescribeTasksRequest, ListTasksRequest,
    ListTasksResponse, RunTaskRequest, TasksResponse,
};
use berth_messages::codec::{self, Encoding};
use berth_messages::model::{StopCode, TaskStatus};
use berth_messages::{api::DesiredStatusFilter, ErrorType};
use berth_sim::{SimConfig, SimError};
use futures::StreamExt;
use serde_json::json;
use std::time::{Duration, Instant};

/// Hollow tasks run for half a second.
const RUN_TIME: Duration = Duration::from_millis(500);

const INSTANCES: usize = 2_000;
const RUN_TASK_CALLS: usize = 2_000;
const TASKS_PER_CALL: i64 = 10;
const TASKS: usize = RUN_TASK_CALLS * TASKS_PER_CALL as usize;
const RUN_TASKS_IN_FLIGHT: usize = 32;
/// Bound on the whole run of 20,000 tasks: generous for a loaded 2-core debug build.
const SCALE_PATIENCE: Duration = Duration::from_secs(900);

async fn cluster_counts(api: &Api, cluster: &str) -> (i64, i64, i64) {
    let reply: DescribeClustersResponse = api
        .call(
            "DescribeClusters",
            &DescribeClustersRequest {
                clusters: Some(vec![cluster.into()]),
                ..Default::default()
            },
        )
        .await
        .expect("DescribeClusters");
    let c = &reply.clusters[0];
    (
        c.registered_container_instances_count.unwrap_or(0),
        c.pending_tasks_count.unwrap_or(0),
        c.running_tasks_count.unwrap_or(0),
    )
}

/// Runs `count` tasks of `td` in cluster `scale` as a careful ECS client does; returns how
/// many were placed and how many had to be placed again.
/// - Each request carries a `clientToken`, so when the answer is slow (a request timeout or
///   the API's `ServerException` "no outcome yet") the same request is sent again and gets
///   the one outcome of that command: no task runs twice.
/// - On this loaded 2-core machine with 0.5 s heartbeats the control plane can judge a
///   starved-but-alive agent disconnected for a moment, and RunTask then fails a placement
///   with `AGENT`; those tasks are run again by a new request.
///
/// Every other failure fails the test.
async fn run_tasks(api: &Api, call: usize, td: &str, count: usize) -> (usize, usize) {
    const ROUNDS: usize = 100;
    const SENDS: usize = 20;
    let (mut placed, mut again) = (0, 0);
    for round in 0..ROUNDS {
        let request = RunTaskRequest {
            cluster: Some("scale".into()),
            task_definition: td.to_string(),
            count: Some((count - placed) as i64),
            client_token: Some(format!("sim-{call}-{round}")),
            ..Default::default()
        };
        let body = codec::encode(Encoding::MsgPack, &request).expect("encode RunTask");
        let mut reply = None;
        for _ in 0..SENDS {
            match api.try_raw("RunTask", None, body.clone()).await {
                Ok(msg) => match decode_reply::<TasksResponse>(Encoding::MsgPack, &msg) {
                    Ok(r) => {
                        reply = Some(r);
                        break;
                    }
                    Err(e) if e.error_type == ErrorType::ServerException => {}
                    Err(e) => panic!("RunTask refused: {e}"),
                },
                Err(e) => eprintln!("sim: RunTask not answered ({e}); sending it again"),
            }
        }
        let reply = reply.unwrap_or_else(|| panic!("RunTask unanswered after {SENDS} sends"));
        placed += reply.tasks.len();
        if let Some(f) = reply
            .failures
            .iter()
            .find(|f| f.reason.as_deref() != Some("AGENT"))
        {
            panic!("placement failure: {f:?}");
        }
        if placed == count {
            return (placed, again);
        }
        again += count - placed;
        tokio::time::sleep(HEARTBEAT).await;
    }
    panic!(
        "{} tasks still refused with AGENT after {ROUNDS} rounds",
        count - placed
    );
}

async fn stopped_task_arns(api: &Api, cluster: &str) -> Vec<String> {
    let mut arns = Vec::new();
    let mut next_token = None;
    loop {
        let page: ListTasksResponse = api
            .call(
                "ListTasks",
                &ListTasksRequest {
                    cluster: Some(cluster.into()),
                    desired_status: Some(DesiredStatusFilter::Stopped),
                    max_results: Some(100),
                    next_token: next_token.take(),
                    ..Default::default()
                },
            )
            .await
            .expect("ListTasks");
        arns.extend(page.task_arns);
        match page.next_token {
            Some(t) => next_token = Some(t),
            None => return arns,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_2000_instances_run_20000_tasks_to_completion() {
    let berth = Berth::start().await;
    let api = berth.api.with_encoding(Encoding::MsgPack);
    create_cluster(&api, "scale").await;
    let td = register_task_definition(&api, "hollow", 32, 128, None).await;

    let t0 = Instant::now();
    let sim = berth_sim::start(sim_config(&berth.url(), "scale", INSTANCES, RUN_TIME))
        .await
        .expect("sim starts");
    let registered = t0.elapsed();
    assert_eq!(sim.instance_arns().len(), INSTANCES);
    let (instances, _, _) = cluster_counts(&api, "scale").await;
    assert_eq!(instances, INSTANCES as i64);
    eprintln!("sim: {INSTANCES} hollow instances registered in {registered:?}");

    let t1 = Instant::now();
    let results: Vec<(usize, usize)> = futures::stream::iter(0..RUN_TASK_CALLS)
        .map(|call| run_tasks(&api, call, &td, TASKS_PER_CALL as usize))
        .buffer_unordered(RUN_TASKS_IN_FLIGHT)
        .collect()
        .await;
    let submitted = t1.elapsed();
    let placed: usize = results.iter().map(|(placed, _)| placed).sum();
    let replaced: usize = results.iter().map(|(_, agent)| agent).sum();
    assert_eq!(placed, TASKS);
    eprintln!(
        "sim: control plane after RunTask: {}; tasks placed again after an AGENT refusal: {replaced}",
        control_metrics(&api).await
    );
    eprintln!(
        "sim: {TASKS} tasks placed by {RUN_TASK_CALLS} RunTask calls in {submitted:?} ({:.0} tasks/s)",
        TASKS as f64 / submitted.as_secs_f64()
    );

    // Every task runs and stops: nothing pending or running, and 20,000 tasks STOPPED.
    let deadline = Instant::now() + SCALE_PATIENCE;
    let mut last_report = Instant::now();
    loop {
        let (_, pending, running) = cluster_counts(&api, "scale").await;
        if pending == 0 && running == 0 {
            break;
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            eprintln!(
                "sim: after {:?}: {pending} pending, {running} running",
                t1.elapsed()
            );
            last_report = Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {SCALE_PATIENCE:?}: {pending} pending, {running} running"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let completed = t1.elapsed();
    eprintln!(
        "sim: all {TASKS} tasks STOPPED {completed:?} after the first RunTask ({:.0} tasks/s end to end)",
        TASKS as f64 / completed.as_secs_f64()
    );
    eprintln!(
        "sim: control plane after completion: {}",
        control_metrics(&api).await
    );
    let stopped = stopped_task_arns(&api, "scale").await;
    assert_eq!(stopped.len(), TASKS);

    // Each went PENDING -> RUNNING -> STOPPED, its container exiting 0.
    for chunk in stopped.chunks(100) {
        let reply: TasksResponse = api
            .call(
                "DescribeTasks",
                &DescribeTasksRequest {
                    cluster: Some("scale".into()),
                    tasks: chunk.to_vec(),
                    ..Default::default()
                },
            )
            .await
            .expect("DescribeTasks");
        assert_eq!(reply.tasks.len(), chunk.len(), "{:?}", reply.failures);
        for t in &reply.tasks {
            assert_eq!(t.last_status, TaskStatus::Stopped, "{}", t.task_arn);
            assert!(
                t.started_at.is_some(),
                "{} never reported RUNNING",
                t.task_arn
            );
            assert_eq!(t.stop_code, Some(StopCode::EssentialContainerExited));
            assert!(t.containers.iter().all(|c| c.exit_code == Some(0)), "{t:?}");
        }
    }

    let t2 = Instant::now();
    let report = assert_audit_clean(&berth.url()).await;
    eprintln!("sim: audit clean in {:?}: {report}", t2.elapsed());
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hollow_lifecycle_exit_codes_stops_and_restart() {
    let berth = Berth::start().await;
    let api = &berth.api;
    create_cluster(api, "small").await;
    let td = register_task_definition(api, "hollow", 64, 128, None).await;
    let dir = TempDir::new("lifecycle");

    // A cluster that does not exist is a clear registration failure.
    let missing = berth_sim::start(sim_config(&berth.url(), "nope", 1, RUN_TIME))
        .await
        .err()
        .expect("unknown cluster refused");
    match &missing {
        SimError::Register { error, .. } => {
            assert_eq!(
                error.error_type(),
                ErrorType::ClusterNotFoundException,
                "{missing}"
            )
        }
        other => panic!("unexpected error {other}"),
    }

    let config = SimConfig {
        exit_code: 3,
        run_time: Duration::from_millis(300),
        data_dir: Some(dir.0.clone()),
        ..sim_config(&berth.url(), "small", 2, RUN_TIME)
    };
    let first = berth_sim::start(config.clone()).await.expect("sim starts");
    let arns = first.instance_arns().to_vec();
    assert_eq!(arns.len(), 2);

    // A second sim on the same data directory is refused.
    let second = berth_sim::start(config.clone())
        .await
        .err()
        .expect("second sim on the same data dir refused");
    assert!(matches!(second, SimError::DataDir(_)), "{second}");

    let described = api
        .call_json(
            "DescribeContainerInstances",
            json!({"cluster": "small", "containerInstances": arns}),
        )
        .await
        .expect("DescribeContainerInstances");
    for ci in described["containerInstances"]
        .as_array()
        .expect("instances")
    {
        let attrs = ci["attributes"].as_array().expect("attributes");
        let has = |name: &str, value: &str| {
            attrs
                .iter()
                .any(|a| a["name"] == name && a["value"] == value)
        };
        assert!(
            has("berth.sim", "true") && has("ecs.os-type", "linux"),
            "{ci}"
        );
        let registered = ci["registeredResources"].as_array().expect("resources");
        let memory = registered
            .iter()
            .find(|r| r["name"] == "MEMORY")
            .expect("memory");
        assert_eq!(memory["integerValue"], 16384, "{ci}");
        let ports = registered
            .iter()
            .find(|r| r["name"] == "PORTS")
            .expect("ports");
        assert_eq!(ports["stringSetValue"], json!(["22"]), "{ci}");
        assert_eq!(ci["agentConnected"], true, "{ci}");
    }

    // Run time over: STOPPED with every container's exit code.
    let reply = api
        .call_json(
            "RunTask",
            json!({"cluster": "small", "taskDefinition": td, "count": 2}),
        )
        .await
        .expect("RunTask");
    for t in reply["tasks"].as_array().expect("tasks") {
        let arn = t["taskArn"].as_str().expect("arn");
        let stopped = wait_task(api, "small", arn, "task to exit", |t| {
            t["lastStatus"] == "STOPPED"
        })
        .await;
        assert_eq!(stopped["stopCode"], "EssentialContainerExited", "{stopped}");
        assert_eq!(
            stopped["stoppedReason"],
            "Essential container in task exited"
        );
        assert_eq!(stopped["containers"][0]["exitCode"], 3, "{stopped}");
        assert!(stopped.get("startedAt").is_some(), "{stopped}");
    }

    // Restarted on the same data directory: the same instances come back.
    first.stop().await;
    let restarted = berth_sim::start(SimConfig {
        run_time: Duration::from_secs(600),
        ..config.clone()
    })
    .await
    .expect("sim restarts");
    assert_eq!(restarted.instance_arns(), &arns[..]);

    // A stop request while RUNNING: STOPPED at once, the control plane's stop code kept.
    let reply = api
        .call_json("RunTask", json!({"cluster": "small", "taskDefinition": td}))
        .await
        .expect("RunTask");
    let arn = reply["tasks"][0]["taskArn"]
        .as_str()
        .expect("arn")
        .to_string();
    wait_task(api, "small", &arn, "task to run", |t| {
        t["lastStatus"] == "RUNNING"
    })
    .await;
    api.call_json("StopTask", json!({"cluster": "small", "task": arn}))
        .await
        .expect("StopTask");
    let stopped = wait_task(api, "small", &arn, "task to stop", |t| {
        t["lastStatus"] == "STOPPED"
    })
    .await;
    assert_eq!(stopped["stopCode"], "UserInitiated", "{stopped}");
    assert_eq!(stopped["containers"][0]["exitCode"], 143, "{stopped}");

    // A task RUNNING when its sim stops is adopted by the next sim on the same data
    // directory, which plays it on (run time, exit code) instead of starting it again.
    let reply = api
        .call_json("RunTask", json!({"cluster": "small", "taskDefinition": td}))
        .await
        .expect("RunTask");
    let arn = reply["tasks"][0]["taskArn"]
        .as_str()
        .expect("arn")
        .to_string();
    let running = wait_task(api, "small", &arn, "task to run", |t| {
        t["lastStatus"] == "RUNNING"
    })
    .await;
    restarted.stop().await;
    let adopting = berth_sim::start(SimConfig {
        exit_code: 7,
        ..config
    })
    .await
    .expect("sim restarts again");
    assert_eq!(adopting.instance_arns(), &arns[..]);
    let stopped = wait_task(api, "small", &arn, "adopted task to exit", |t| {
        t["lastStatus"] == "STOPPED"
    })
    .await;
    assert_eq!(stopped["stopCode"], "EssentialContainerExited", "{stopped}");
    assert_eq!(stopped["containers"][0]["exitCode"], 7, "{stopped}");
    assert_eq!(stopped["startedAt"], running["startedAt"], "started once");

    assert_audit_clean(&berth.url()).await;
    adopting.stop().await;
}

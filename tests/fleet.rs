//! Fleets of real shape (`berth-agent --sim N --sim-shape real`): every hollow host is a
//! whole agent with its own NATS connection, its own subscription to its task records
//! and its own snapshot consumer on `BERTH_STATE`, as real agents are. More of them than
//! nats-server's default cap of 1,000 consumers per stream all follow their tasks;
//! agents that cannot take their snapshot say so and are passed by; a restart of
//! nats-server resyncs every agent, and the auditor is clean.

use berth_e2e::*;
use berth_messages::agent::Heartbeat;
use berth_messages::{codec, streams, subjects};
use berth_testkit::wait_for;
use futures::StreamExt;
use serde_json::json;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Agents and control plane beat (and judge beats) at this interval: thousands of hosts
/// beating every half second would load a debug build for nothing.
const FLEET_HEARTBEAT: Duration = Duration::from_secs(2);
/// Bound on a fleet's start or resync in a debug build on two cores.
const FLEET_PATIENCE: Duration = Duration::from_secs(300);

/// A `berth-agent --sim N --sim-shape real` process, killed on drop.
struct Fleet {
    child: Child,
    ready: Arc<Mutex<bool>>,
    output: Arc<Mutex<Vec<String>>>,
}

impl Fleet {
    fn start(url: &str, cluster: &str, hosts: usize, data_dir: &std::path::Path) -> Fleet {
        let bin = berth_testkit::workspace_bin("berth-agent", "berth-agent");
        let mut child = Command::new(bin)
            .env("BERTH_NATS_URL", url)
            .env("BERTH_CLUSTER", cluster)
            .env("BERTH_DATA_DIR", data_dir)
            .env("BERTH_SIM", hosts.to_string())
            .env("BERTH_SIM_SHAPE", "real")
            .env("BERTH_SIM_RUN_MS", "3600000")
            .env(
                "BERTH_HEARTBEAT_INTERVAL",
                FLEET_HEARTBEAT.as_secs_f64().to_string(),
            )
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("berth-agent starts");
        let stderr = child.stderr.take().expect("stderr");
        let ready = Arc::new(Mutex::new(false));
        let output = Arc::new(Mutex::new(Vec::new()));
        let (seen, kept) = (ready.clone(), output.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.starts_with("berth-agent ready sim=") {
                    *seen.lock().expect("lock") = true;
                }
                if let Ok(mut all) = kept.lock() {
                    if all.len() < 200 {
                        all.push(line);
                    }
                }
            }
        });
        Fleet {
            child,
            ready,
            output,
        }
    }

    async fn wait_ready(&mut self) {
        let ready = self.ready.clone();
        let output = self.output.clone();
        let child = &mut self.child;
        wait_for(
            "every host of the fleet to follow its tasks",
            FLEET_PATIENCE,
            || {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "the fleet exited ({status}) before it was ready:\n{}",
                        output.lock().expect("lock").join("\n")
                    );
                }
                let ready = *ready.lock().expect("lock");
                async move { ready.then_some(()) }
            },
        )
        .await;
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A control plane that judges beats at the fleet's interval.
async fn berth_for_fleets() -> Berth {
    Berth::start_with(|url| berth_control::ControlConfig {
        heartbeat_interval: FLEET_HEARTBEAT.as_secs_f64(),
        ..control_config(url)
    })
    .await
}

/// Every container instance of a cluster (all pages), as DescribeContainerInstances shows it.
async fn instances(api: &Api, cluster: &str) -> Vec<serde_json::Value> {
    let mut arns = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut request = json!({ "cluster": cluster, "maxResults": 100 });
        if let Some(t) = &token {
            request["nextToken"] = json!(t);
        }
        let page = api
            .call_json("ListContainerInstances", request)
            .await
            .expect("ListContainerInstances");
        for arn in page["containerInstanceArns"].as_array().expect("arns") {
            arns.push(arn.as_str().expect("arn").to_string());
        }
        match page["nextToken"].as_str() {
            Some(t) => token = Some(t.to_string()),
            None => break,
        }
    }
    let mut out = Vec::new();
    for chunk in arns.chunks(100) {
        let reply = api
            .call_json(
                "DescribeContainerInstances",
                json!({ "cluster": cluster, "containerInstances": chunk }),
            )
            .await
            .expect("DescribeContainerInstances");
        out.extend(
            reply["containerInstances"]
                .as_array()
                .expect("instances")
                .iter()
                .cloned(),
        );
    }
    out
}

/// Starts one task on `instance_arn` and waits until it is RUNNING.
async fn start_and_see_running(api: &Api, cluster: &str, family: &str, instance_arn: &str) {
    let reply = api
        .call_json(
            "StartTask",
            json!({
                "cluster": cluster,
                "taskDefinition": family,
                "containerInstances": [instance_arn],
            }),
        )
        .await
        .expect("StartTask");
    let task_arn = reply["tasks"][0]["taskArn"]
        .as_str()
        .unwrap_or_else(|| panic!("StartTask placed nothing: {reply}"))
        .to_string();
    wait_for("the task on the last host to run", FLEET_PATIENCE, || {
        let (api, task_arn) = (api.clone(), task_arn.clone());
        async move {
            let task = describe_task(&api, cluster, &task_arn).await;
            (task["lastStatus"] == "RUNNING").then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_agents_than_the_old_cap_of_a_thousand_all_follow_their_tasks() {
    const HOSTS: usize = 1_100;
    let berth = berth_for_fleets().await;
    create_cluster(&berth.api, "big").await;
    register_task_definition(&berth.api, "web", 1, 1, None).await;
    let dir = TempDir::new("big");
    let mut fleet = Fleet::start(&berth.url(), "big", HOSTS, &dir.0);
    fleet.wait_ready().await;

    // Snapshots in a storm take a consumer each: the limit is explicit and above the cap.
    let js = async_nats::jetstream::new(berth.api.client.clone());
    let mut state = js.get_stream(streams::STATE).await.expect("state stream");
    let config = state.info().await.expect("info").config.clone();
    assert_eq!(
        i64::from(config.max_consumers),
        streams::DEFAULT_MAX_CONSUMERS
    );
    let all = instances(&berth.api, "big").await;
    assert_eq!(all.len(), HOSTS);
    // The host that registered last: its consumer was among the last created.
    let last = all
        .iter()
        .max_by(|a, b| {
            let at = |i: &serde_json::Value| i["registeredAt"].as_f64().unwrap_or(0.0);
            at(a).total_cmp(&at(b))
        })
        .expect("instances");
    assert!(last["attributes"]
        .as_array()
        .expect("attributes")
        .iter()
        .any(|a| a["name"] == "berth.runtime" && a["value"] == "sim"));
    let arn = last["containerInstanceArn"].as_str().expect("arn");
    start_and_see_running(&berth.api, "big", "web", arn).await;
    drop(fleet);
    assert_audit_clean(&berth.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_that_cannot_follow_their_tasks_are_impaired_and_passed_by() {
    const FOLLOWING: usize = 2;
    const CAPPED: usize = 2;
    let berth = berth_for_fleets().await;
    create_cluster(&berth.api, "capped").await;
    register_task_definition(&berth.api, "web", 1, 1, None).await;
    let (following_dir, capped_dir) = (TempDir::new("following"), TempDir::new("capped"));
    let mut following = Fleet::start(&berth.url(), "capped", FOLLOWING, &following_dir.0);
    following.wait_ready().await;

    // An operator's limit that leaves no room for another consumer: agents starting now
    // cannot take the snapshot of their tasks.
    let js = async_nats::jetstream::new(berth.api.client.clone());
    let mut state = js.get_stream(streams::STATE).await.expect("state stream");
    let info = state.info().await.expect("info").clone();
    let mut config = info.config.clone();
    config.max_consumers = i32::try_from(info.state.consumer_count.max(1)).expect("small");
    js.update_stream(config.clone())
        .await
        .expect("limit consumers");
    let _capped = Fleet::start(&berth.url(), "capped", CAPPED, &capped_dir.0);
    let impaired = wait_for(
        "the hosts without a snapshot to show IMPAIRED",
        FLEET_PATIENCE,
        || async {
            let all = instances(&berth.api, "capped").await;
            let impaired: Vec<serde_json::Value> = all
                .into_iter()
                .filter(|i| i["healthStatus"]["overallStatus"] == "IMPAIRED")
                .collect();
            (impaired.len() == CAPPED).then_some(impaired)
        },
    )
    .await;
    for i in &impaired {
        assert_eq!(i["healthStatus"]["details"][0]["type"], "CONTAINER_RUNTIME");
        assert_eq!(i["agentConnected"], true, "an impaired agent still beats");
    }
    // Placement passes the impaired hosts by: every task lands on a following host.
    let reply = berth
        .api
        .call_json(
            "RunTask",
            json!({ "cluster": "capped", "taskDefinition": "web", "count": 6 }),
        )
        .await
        .expect("RunTask");
    let impaired_arns: Vec<&str> = impaired
        .iter()
        .map(|i| i["containerInstanceArn"].as_str().expect("arn"))
        .collect();
    let tasks = reply["tasks"].as_array().expect("tasks");
    assert_eq!(tasks.len(), 6, "{reply}");
    for task in tasks {
        let on = task["containerInstanceArn"].as_str().expect("instance");
        assert!(
            !impaired_arns.contains(&on),
            "a task was placed on impaired {on}"
        );
    }

    // Room again: the impaired agents take their snapshots and recover.
    config.max_consumers = streams::DEFAULT_MAX_CONSUMERS as i32;
    js.update_stream(config).await.expect("lift the limit");
    wait_for("every host healthy again", FLEET_PATIENCE, || async {
        let all = instances(&berth.api, "capped").await;
        (all.len() == FOLLOWING + CAPPED
            && all
                .iter()
                .all(|i| i["healthStatus"]["overallStatus"] != "IMPAIRED"))
        .then_some(())
    })
    .await;
    assert_audit_clean(&berth.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_resyncs_every_agent_and_the_audit_is_clean() {
    const HOSTS: usize = 300;
    const TASKS: i64 = 60;
    let mut berth = berth_for_fleets().await;
    create_cluster(&berth.api, "storm").await;
    register_task_definition(&berth.api, "web", 1, 1, None).await;
    let dir = TempDir::new("storm");
    let mut fleet = Fleet::start(&berth.url(), "storm", HOSTS, &dir.0);
    fleet.wait_ready().await;
    let mut running = Vec::new();
    for _ in 0..TASKS / 10 {
        let reply = berth
            .api
            .call_json(
                "RunTask",
                json!({ "cluster": "storm", "taskDefinition": "web", "count": 10 }),
            )
            .await
            .expect("RunTask");
        for task in reply["tasks"].as_array().expect("tasks") {
            running.push(task["taskArn"].as_str().expect("arn").to_string());
        }
    }
    assert_eq!(running.len(), TASKS as usize);
    wait_for("every task RUNNING", FLEET_PATIENCE, || async {
        let mut all = true;
        for arn in &running {
            all &= describe_task(&berth.api, "storm", arn).await["lastStatus"] == "RUNNING";
        }
        all.then_some(())
    })
    .await;

    // Each agent's latest resync, from its heartbeats (a connection of its own that
    // reconnects with everyone else's).
    let synced: Arc<Mutex<HashMap<String, f64>>> = Arc::default();
    let watcher = {
        let synced = synced.clone();
        let mut beats = berth
            .api
            .client
            .subscribe(subjects::heartbeat("storm", "*"))
            .await
            .expect("subscribe to beats");
        tokio::spawn(async move {
            while let Some(msg) = beats.next().await {
                if let Ok(beat) = codec::decode_record::<Heartbeat>(&msg.payload) {
                    if let Some(at) = beat.tasks_synced_at {
                        synced
                            .lock()
                            .expect("lock")
                            .insert(beat.container_instance_arn, at);
                    }
                }
            }
        })
    };
    let restarted_at = berth_messages::now_epoch_seconds();
    tokio::task::block_in_place(|| berth.nats.restart());
    wait_for(
        "every agent resynced after the restart",
        FLEET_PATIENCE,
        || {
            let synced = synced.clone();
            async move {
                let synced = synced.lock().expect("lock");
                let after = synced.values().filter(|at| **at > restarted_at).count();
                (after == HOSTS).then_some(())
            }
        },
    )
    .await;
    watcher.abort();

    // The agents still run their tasks and follow them: every stop reaches its agent.
    for arn in &running {
        berth
            .api
            .call_json("StopTask", json!({ "cluster": "storm", "task": arn }))
            .await
            .expect("StopTask");
    }
    wait_for(
        "every task STOPPED by its agent",
        FLEET_PATIENCE,
        || async {
            let mut all = true;
            for arn in &running {
                all &= describe_task(&berth.api, "storm", arn).await["lastStatus"] == "STOPPED";
            }
            all.then_some(())
        },
    )
    .await;
    drop(fleet);
    assert_audit_clean(&berth.url()).await;
}

//! NATS failover on a 3-node cluster with R3 streams: the node that leads `BERTH_STATE` is
//! killed under a steady trickle of RunTask and StopTask, and restarted; every command the
//! API acknowledged has exactly one outcome and the auditor is clean. And three replicas
//! started together on a fresh cluster all come to serve.
//!
//! Timings are printed for the notes, never asserted.

use berth_e2e::*;
use berth_journal::{Journal, JournalConfig};
use berth_messages::{headers, streams, subjects};
use berth_testkit::{wait_for, NatsCluster};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bound on one API request of the test client; it retries with the same command id.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const FIRST_RETRY: Duration = Duration::from_millis(50);
const MAX_RETRY: Duration = Duration::from_millis(500);
/// Commands acknowledged between the phases of the test.
const PHASE: usize = 10;

/// Replicas' logs on stderr when RUST_LOG is set.
fn log_if_asked() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
}

fn r3_config(urls: &[String]) -> berth_control::ControlConfig {
    let mut config = control_config(&urls[0]);
    config.nats = urls.to_vec();
    config.replicas = 3;
    // Longer than the test: what reconciliation would repair must not be needed.
    config.reconcile_interval = 3600.0;
    config
}

/// A client connected to every node, so that it survives the loss of any one.
async fn cluster_api(urls: &[String]) -> Api {
    let client = async_nats::ConnectOptions::new()
        .request_timeout(Some(REQUEST_TIMEOUT))
        .connect(urls.to_vec())
        .await
        .expect("connect to the cluster");
    Api {
        client,
        encoding: berth_messages::codec::Encoding::Json,
    }
}

/// One API call with `Nats-Msg-Id` = `id`, retried (same id) until it is answered without a
/// server error; ECS errors other than server ones are answers.
async fn call_until_answered(api: &Api, id: &str, action: &str, body: &Value) -> Value {
    let mut pause = FIRST_RETRY;
    let started = Instant::now();
    loop {
        let mut h = async_nats::HeaderMap::new();
        h.insert(headers::CONTENT_TYPE, headers::JSON);
        h.insert(headers::MSG_ID, id);
        let payload = serde_json::to_vec(body).expect("encode request");
        let answer = tokio::time::timeout(
            REQUEST_TIMEOUT,
            api.client
                .request_with_headers(subjects::api(action), h, payload.into()),
        )
        .await;
        match answer {
            Ok(Ok(msg)) => match decode_reply::<Value>(berth_messages::codec::Encoding::Json, &msg)
            {
                Ok(value) => return value,
                Err(e) if e.error_type == berth_messages::ErrorType::ServerException => {
                    eprintln!("{action} {id}: {e}; retrying");
                }
                Err(e) => panic!("{action} {id}: {e}"),
            },
            Ok(Err(e)) => eprintln!("{action} {id}: {e}; retrying"),
            Err(_) => eprintln!("{action} {id}: no answer within {REQUEST_TIMEOUT:?}; retrying"),
        }
        assert!(
            started.elapsed() < PATIENCE,
            "{action} {id} not answered within {PATIENCE:?}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_RETRY);
    }
}

/// What the trickle has had acknowledged.
#[derive(Default)]
struct Acknowledged {
    commands: Vec<String>,
    tasks: Vec<String>,
    /// When each command was first sent and when it was answered.
    at: Vec<(Instant, Instant)>,
}

/// RunTask and StopTask, one at a time, until `stop` is set.
async fn trickle(api: Api, acknowledged: Arc<Mutex<Acknowledged>>, stop: Arc<tokio::sync::Notify>) {
    let mut i = 0usize;
    let stopped = stop.notified();
    tokio::pin!(stopped);
    loop {
        let (id, action, body) = {
            let acked = acknowledged.lock().expect("lock");
            match acked.tasks.get(i / 2) {
                Some(task) if i % 2 == 1 => (
                    format!("fo-stop-{i}"),
                    "StopTask",
                    json!({"cluster": "fo", "task": task, "reason": "trickle"}),
                ),
                _ => (
                    format!("fo-run-{i}"),
                    "RunTask",
                    json!({"cluster": "fo", "taskDefinition": "fo", "count": 1, "startedBy": "trickle"}),
                ),
            }
        };
        let sent = Instant::now();
        let reply = tokio::select! {
            reply = call_until_answered(&api, &id, action, &body) => reply,
            _ = &mut stopped => return,
        };
        let mut acked = acknowledged.lock().expect("lock");
        if action == "RunTask" {
            let failures = reply["failures"].as_array().map_or(0, Vec::len);
            assert_eq!(failures, 0, "{id}: {reply}");
            for task in reply["tasks"].as_array().expect("tasks") {
                acked
                    .tasks
                    .push(task["taskArn"].as_str().expect("arn").to_string());
            }
        }
        acked.commands.push(id);
        acked.at.push((sent, Instant::now()));
        drop(acked);
        i += 1;
    }
}

/// The name of the server that leads `stream`, once it has one.
async fn leader_of(js: &async_nats::jetstream::Context, stream: &str) -> String {
    wait_for(&format!("a leader of {stream}"), PATIENCE, || async {
        let mut s = js.get_stream(stream).await.ok()?;
        s.info().await.ok()?.cluster.as_ref()?.leader.clone()
    })
    .await
}

async fn acknowledged_count(acknowledged: &Mutex<Acknowledged>) -> usize {
    acknowledged.lock().expect("lock").commands.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_survive_the_loss_of_the_state_leader() {
    log_if_asked();
    let mut cluster = NatsCluster::start(3);
    let urls = cluster.urls();
    let _first = berth_control::spawn(r3_config(&urls));
    let _second = berth_control::spawn(r3_config(&urls));
    let api = cluster_api(&urls).await;
    api.wait_serving().await;
    create_cluster(&api, "fo").await;
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(register_instance(&api, "fo", 1_000_000, 1_000_000, json!([])).await);
    }
    let _beats = Heartbeats::start(api.client.clone(), "fo", instances);
    register_task_definition(&api, "fo", 1, 1, None).await;

    let acknowledged = Arc::new(Mutex::new(Acknowledged::default()));
    let stop = Arc::new(tokio::sync::Notify::new());
    let load = tokio::spawn(trickle(api.clone(), acknowledged.clone(), stop.clone()));
    let reached = |n: usize| {
        let acknowledged = acknowledged.clone();
        move || {
            let acknowledged = acknowledged.clone();
            async move { (acknowledged_count(&acknowledged).await >= n).then_some(()) }
        }
    };
    wait_for("the trickle to get going", PATIENCE, reached(PHASE)).await;

    let observer = async_nats::connect(urls.clone()).await.expect("connect");
    let js = async_nats::jetstream::new(observer);
    let leader = leader_of(&js, streams::STATE).await;
    let victim = cluster
        .nodes
        .iter()
        .position(|node| node.server_name() == leader)
        .expect("the leader is one of the nodes");
    let before = acknowledged_count(&acknowledged).await;
    let killed_at = Instant::now();
    tokio::task::block_in_place(|| cluster.nodes[victim].kill());
    let elected = wait_for("a new leader of BERTH_STATE", PATIENCE, || async {
        // Short: a request sent while there is no leader is never answered.
        let info = tokio::time::timeout(Duration::from_millis(200), async {
            let mut stream = js.get_stream(streams::STATE).await.ok()?;
            stream.info().await.ok().cloned()
        });
        let info = info.await.ok()??;
        let leader = info.cluster.as_ref()?.leader.clone()?;
        (leader != cluster.nodes[victim].server_name()).then_some(Instant::now())
    })
    .await;
    wait_for(
        "commands acknowledged after the kill",
        PATIENCE,
        reached(before + PHASE),
    )
    .await;
    let answered = acknowledged
        .lock()
        .expect("lock")
        .at
        .iter()
        .find(|(sent, _)| *sent > killed_at)
        .map(|(_, answered)| *answered);
    eprintln!(
        "failover: new BERTH_STATE leader seen {:?} after the kill; the first command sent after the kill answered {:?} after it",
        elected - killed_at,
        answered.map(|at| at - killed_at)
    );

    tokio::task::block_in_place(|| cluster.nodes[victim].restart());
    let restarted = acknowledged_count(&acknowledged).await;
    wait_for(
        "commands acknowledged after the restart",
        PATIENCE,
        reached(restarted + PHASE),
    )
    .await;
    stop.notify_one();
    load.await.expect("the trickle ends");

    let acked = Arc::try_unwrap(acknowledged)
        .ok()
        .expect("the trickle has ended")
        .into_inner()
        .expect("lock");
    let journal = Journal::open(&JournalConfig {
        servers: urls.clone(),
        ..Default::default()
    })
    .await
    .expect("journal");
    for id in &acked.commands {
        let outcome = journal.read_outcome(id).await.expect("read outcome");
        assert!(
            outcome.is_some(),
            "acknowledged command {id} has no outcome"
        );
    }
    let mut outcomes = journal
        .jetstream()
        .get_stream(streams::OUTCOME)
        .await
        .expect("outcome stream");
    let info = outcomes.info().await.expect("info");
    assert_eq!(
        info.state.messages,
        info.state.last_sequence - info.state.first_sequence + 1,
        "no outcome was ever written twice"
    );
    let unique: HashSet<&String> = acked.tasks.iter().collect();
    assert_eq!(unique.len(), acked.tasks.len(), "a task acknowledged twice");
    // Reconciliation is far off: every stopped task's release is the stopping command's.
    assert_audit_clean(&urls[0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_started_together_on_a_fresh_cluster_all_serve() {
    let cluster = NatsCluster::start(3);
    let urls = cluster.urls();
    let started = Instant::now();
    let _replicas: Vec<_> = (0..3)
        .map(|_| berth_control::spawn(r3_config(&urls)))
        .collect();
    let api = cluster_api(&urls).await;
    wait_for("three replicas serving", PATIENCE, || async {
        (berth_testkit::service_instances(&api.client, "berth", 3).await == 3).then_some(())
    })
    .await;
    eprintln!(
        "three replicas on a fresh cluster serve {:?} after they started",
        started.elapsed()
    );
    create_cluster(&api, "fresh").await;
    assert_audit_clean(&urls[0]).await;
}

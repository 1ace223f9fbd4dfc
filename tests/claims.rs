//! Claims on commands: a replica executing a command longer than the ack wait keeps it
//! (progress reports), the commands a killed replica held are answered by another within
//! the ack wait, and a paused replica costs clients little (they send again). The last
//! test is ignored by default: it prints the figures of a pause and a kill under load.

use berth_control::{CommandHold, ControlConfig};
use berth_e2e::*;
use berth_journal::Journal;
use berth_messages::retry;
use berth_messages::{headers, streams, subjects};
use berth_testkit::{wait_for, NatsServer};
use nix::sys::signal::Signal;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

async fn command_consumer(journal: &Journal) -> async_nats::jetstream::consumer::Info {
    let stream = journal
        .jetstream()
        .get_stream(streams::CMD)
        .await
        .expect("command stream");
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = stream
        .get_consumer(streams::CMD_CONSUMER)
        .await
        .expect("command consumer");
    consumer.info().await.expect("consumer info").clone()
}

/// Deliveries of commands the replica has processed.
async fn commands_processed(api: &Api) -> u64 {
    control_metrics(api).await["commands"]
        .as_u64()
        .expect("commands counter")
}

/// Publishes RunTask commands (count 1) straight into the command stream; returns their ids
/// once the stream has accepted each.
async fn publish_run_tasks(
    journal: &Journal,
    cluster: &str,
    prefix: &str,
    n: usize,
) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("{prefix}-{i}");
        let body =
            json!({"cluster": cluster, "taskDefinition": "batch", "count": 1, "startedBy": id});
        publish_command(journal.jetstream(), cluster, "RunTask", &id, &body).await;
        ids.push(id);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_longer_than_the_ack_wait_keeps_its_claim() {
    let nats = NatsServer::start();
    let url = nats.url();
    // The consumer as an earlier version left it (30 s): start-up updates it.
    let journal = open_journal(&url).await;
    journal
        .jetstream()
        .get_stream(streams::CMD)
        .await
        .expect("command stream")
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some(streams::CMD_CONSUMER.to_string()),
            ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 20_000,
            filter_subject: subjects::CMD_ALL.to_string(),
            ..Default::default()
        })
        .await
        .expect("old consumer");
    let ack_wait = Duration::from_secs(2);
    let _control = berth_control::spawn(ControlConfig {
        command_ack_wait: ack_wait.as_secs_f64(),
        // Executed over two and a half ack waits: without progress reports the stream
        // would give it to the consumer again (delivery 2) while the first is held.
        command_hold: Some(CommandHold {
            id_prefix: "slow-".into(),
            duration: ack_wait * 5 / 2,
        }),
        ..control_config(&url)
    });
    let api = Api::connect(&url).await;
    api.wait_serving().await;
    assert_eq!(command_consumer(&journal).await.config.ack_wait, ack_wait);

    let before = commands_processed(&api).await;
    let reply = api
        .call_json_as("slow-1", "CreateCluster", json!({"clusterName": "slow"}))
        .await
        .expect("CreateCluster");
    assert_eq!(reply["cluster"]["status"], "ACTIVE", "{reply}");
    wait_for("the command acknowledged", PATIENCE, || async {
        let info = command_consumer(&journal).await;
        (info.num_ack_pending == 0 && info.num_pending == 0).then_some(())
    })
    .await;
    assert_eq!(
        commands_processed(&api).await - before,
        1,
        "the slow command was delivered once"
    );
    // Answered once: a second call with the id gets the same outcome, with no new delivery
    // taking effect.
    let again = api
        .call_json_as("slow-1", "CreateCluster", json!({"clusterName": "slow"}))
        .await
        .expect("CreateCluster again");
    assert_eq!(again["cluster"], reply["cluster"]);
    assert_audit_clean(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_commands_are_answered_by_another() {
    let nats = NatsServer::start();
    let url = nats.url();
    let mut first = ControlProcess::start(&url);
    let api = Api::connect(&url).await;
    api.wait_serving().await;
    let (_ids, _beats) = register_hosts(&api, "held", 2, 1_000_000, 1_000_000).await;
    register_task_definition(&api, "batch", 1, 1, None).await;
    let journal = open_journal(&url).await;

    // Paused, the replica keeps its pull open: the stream delivers the commands to it
    // and they stay unacknowledged, as with a replica that dies while executing them.
    first.signal(Signal::SIGSTOP);
    let ids = publish_run_tasks(&journal, "held", "held", 20).await;
    wait_for(
        "the paused replica to hold every command",
        PATIENCE,
        || async {
            let info = command_consumer(&journal).await;
            (info.num_pending == 0 && info.num_ack_pending == ids.len()).then_some(())
        },
    )
    .await;
    let _second = ControlProcess::start(&url);
    first.kill();

    let tasks = tasks_of_outcomes(&journal, &ids, 1).await;
    let listed = all_task_arns(&api, "held").await;
    assert_eq!(
        listed, tasks,
        "the tasks are exactly those the outcomes name"
    );
    assert_audit_clean(&url).await;
}

/// One request of the load and how it ended.
struct Sample {
    action: &'static str,
    started: Duration,
    latency: Duration,
    failure: Option<String>,
}

/// Tasks the load has run: all of them (to describe) and those not stopped yet.
#[derive(Default)]
struct Known {
    all: Vec<String>,
    running: Vec<String>,
}

/// A RunTask, StopTask or DescribeTasks through the retrying client (a ListTasks while
/// the load has no task to stop or describe).
async fn one_request(
    api: &Api,
    kind: usize,
    known: &Mutex<Known>,
) -> (&'static str, Result<(), String>) {
    let list = ("ListTasks", json!({"cluster": "load", "maxResults": 10}));
    let (action, body) = match kind {
        0 => (
            "RunTask",
            json!({"cluster": "load", "taskDefinition": "batch", "count": 1}),
        ),
        1 => match known.lock().expect("known").running.pop() {
            Some(task) => ("StopTask", json!({"cluster": "load", "task": task})),
            None => list,
        },
        _ => {
            let known = known.lock().expect("known");
            let some: Vec<&String> = known.all.iter().rev().take(10).collect();
            if some.is_empty() {
                list
            } else {
                ("DescribeTasks", json!({"cluster": "load", "tasks": some}))
            }
        }
    };
    (action, send(api, action, body, known).await)
}

async fn send(
    api: &Api,
    action: &str,
    body: serde_json::Value,
    known: &Mutex<Known>,
) -> Result<(), String> {
    let id = retry::command_id(action, None);
    let msg = api
        .request(
            action,
            Some(headers::JSON),
            id.as_deref(),
            serde_json::to_vec(&body).expect("json"),
        )
        .await
        .map_err(|e| format!("{action}: {e}"))?;
    let reply: serde_json::Value = decode_reply(berth_messages::codec::Encoding::Json, &msg)
        .map_err(|e| format!("{action}: {e}"))?;
    if action == "RunTask" {
        if let Some(f) = reply["failures"].as_array().filter(|f| !f.is_empty()) {
            return Err(format!("RunTask failures: {f:?}"));
        }
        let mut known = known.lock().expect("known");
        for t in reply["tasks"].as_array().into_iter().flatten() {
            if let Some(arn) = t["taskArn"].as_str() {
                known.all.push(arn.to_string());
                known.running.push(arn.to_string());
            }
        }
    }
    Ok(())
}

/// The median, 99th percentile and largest of some latencies.
fn quantiles(latencies: impl Iterator<Item = Duration>) -> (Duration, Duration, Duration) {
    let mut sorted: Vec<Duration> = latencies.collect();
    sorted.sort();
    let at = |q: f64| {
        sorted
            .get(((sorted.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    (at(0.5), at(0.99), at(1.0))
}

/// Figures of claims under faults: (a) the share of requests that fail while one of three replicas is
/// paused for 15 s under 50 requests/s; (b) how long the commands a SIGKILLed replica held
/// wait for their outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "figures: cargo test -p berth-e2e --test claims -- --ignored --nocapture"]
async fn figures_of_a_pause_and_a_kill_under_load() {
    const RATE: u32 = 50;
    const WARM: Duration = Duration::from_secs(5);
    const PAUSE: Duration = Duration::from_secs(15);
    const AFTER: Duration = Duration::from_secs(10);
    const HELD: usize = 60;
    let nats = NatsServer::start();
    let url = nats.url();
    let mut replicas = [
        ControlProcess::start(&url),
        ControlProcess::start(&url),
        ControlProcess::start(&url),
    ];
    let api = Api::connect(&url).await;
    api.wait_serving().await;
    wait_for("three replicas to serve", PATIENCE, || async {
        (berth_testkit::service_instances(&api.client, "berth", 3).await >= 3).then_some(())
    })
    .await;
    let (_ids, _beats) = register_hosts(&api, "load", 10, 1_000_000, 1_000_000).await;
    register_task_definition(&api, "batch", 1, 1, None).await;
    let journal = open_journal(&url).await;

    // (a) Steady load; replica 0 paused from WARM to WARM + PAUSE.
    let known = Arc::new(Mutex::new(Known::default()));
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let start = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / RATE);
    let mut requests = Vec::new();
    let (mut paused, mut resumed) = (false, false);
    let mut n = 0usize;
    while start.elapsed() < WARM + PAUSE + AFTER {
        ticks.tick().await;
        if !paused && start.elapsed() >= WARM {
            replicas[0].signal(Signal::SIGSTOP);
            paused = true;
        }
        if !resumed && start.elapsed() >= WARM + PAUSE {
            replicas[0].signal(Signal::SIGCONT);
            resumed = true;
        }
        let (api, known, samples) = (api.clone(), known.clone(), samples.clone());
        let kind = n % 3;
        n += 1;
        requests.push(tokio::spawn(async move {
            let started = start.elapsed();
            let t0 = Instant::now();
            let (action, result) = one_request(&api, kind, &known).await;
            samples.lock().expect("samples").push(Sample {
                action,
                started,
                latency: t0.elapsed(),
                failure: result.err(),
            });
        }));
    }
    for r in requests {
        r.await.expect("request task");
    }
    let samples = std::mem::take(&mut *samples.lock().expect("samples"));
    let report = |what: &str, pick: &dyn Fn(&Sample) -> bool| {
        let chosen: Vec<&Sample> = samples.iter().filter(|s| pick(s)).collect();
        let failed: Vec<&Sample> = chosen
            .iter()
            .copied()
            .filter(|s| s.failure.is_some())
            .collect();
        let (p50, p99, max) = quantiles(chosen.iter().map(|s| s.latency));
        println!(
            "figures (a) {what}: {} requests, {} failed ({:.2}%), latency p50 {p50:?} p99 {p99:?} max {max:?}",
            chosen.len(),
            failed.len(),
            100.0 * failed.len() as f64 / chosen.len().max(1) as f64,
        );
        for action in ["RunTask", "StopTask", "DescribeTasks", "ListTasks"] {
            let of: Vec<&&Sample> = chosen.iter().filter(|s| s.action == action).collect();
            let slow = of
                .iter()
                .filter(|s| s.latency > Duration::from_secs(2))
                .count();
            let failed = of.iter().filter(|s| s.failure.is_some()).count();
            let (p50, p99, max) = quantiles(of.iter().map(|s| s.latency));
            println!(
                "  {action}: {} requests, {failed} failed, {slow} answered after more than 2 s; p50 {p50:?} p99 {p99:?} max {max:?}",
                of.len()
            );
        }
        for f in failed.iter().take(5) {
            println!(
                "  failed at {:?} after {:?}: {:?}",
                f.started, f.latency, f.failure
            );
        }
    };
    report("sent during the 15 s pause", &|s| {
        s.started >= WARM && s.started < WARM + PAUSE
    });
    report("whole run", &|_| true);

    // (b) Replica 1 paused while commands arrive, then SIGKILLed: the commands it holds
    // go to the others once the ack wait has passed since their delivery.
    wait_for("the load to drain", PATIENCE, || async {
        let info = command_consumer(&journal).await;
        (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
    })
    .await;
    replicas[1].signal(Signal::SIGSTOP);
    let published = Instant::now();
    let ids = publish_run_tasks(&journal, "load", "kill", HELD).await;
    let held = wait_for(
        "the paused replica's share to be the only one left",
        PATIENCE,
        || {
            let (journal, ids) = (&journal, &ids);
            async move {
                let info = command_consumer(journal).await;
                let mut missing = 0;
                for id in ids {
                    if journal.read_outcome(id).await.ok()?.is_none() {
                        missing += 1;
                    }
                }
                (info.num_pending == 0 && info.num_ack_pending == missing).then_some(missing)
            }
        },
    )
    .await;
    assert!(
        held > 0,
        "the paused replica was delivered none of the commands"
    );
    let killed = Instant::now();
    replicas[1].kill();
    tasks_of_outcomes(&journal, &ids, 1).await;
    println!(
        "figures (b) {held} of {HELD} commands held by the killed replica: all answered {:?} after the kill ({:?} after they were published; ack wait 5 s)",
        killed.elapsed(),
        published.elapsed(),
    );
    assert_audit_clean(&url).await;
    println!("auditor: clean");
}

//! The shared-state race of the source document: four schedulers in separate processes or
//! tasks — two `berth-control` replicas serving RunTask, the priority scheduler
//! (`berth-priority-scheduler`) and a client calling StartTask on instances it picks itself —
//! place 20,000 tasks on 200 hollow instances whose capacity covers half of the demand.
//! Every request gets an outcome, no instance is over-committed (the auditor replays the
//! journal), and the run prints the conflict rate.
//!
//! `BERTH_RACE_TASKS` scales the demand (default 20,000, the figure).

use berth_e2e::*;
use berth_priority_scheduler::jobs::{self, Job, JobOutcome, JobStatus};
use berth_testkit::wait_for;
use futures::StreamExt;
use rand::seq::SliceRandom;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

const INSTANCES: usize = 200;
const TASK_MEMORY: i64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_schedulers_share_one_pool_without_over_commit() {
    let demand: usize = std::env::var("BERTH_RACE_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let capacity = demand / 2;
    let per_instance = capacity / INSTANCES;
    let berth = TwoReplicas::start().await;
    let (api, url) = (&berth.api, berth.url());
    create_cluster(api, "pool").await;
    let sim = berth_sim::start(berth_sim::SimConfig {
        cluster: "pool".into(),
        nats: vec![url.clone()],
        instances: INSTANCES,
        cpu: 1_000_000,
        memory: per_instance as i64 * TASK_MEMORY,
        start_delay: Duration::from_millis(50),
        run_time: Duration::from_secs(3600),
        exit_code: 0,
        heartbeat_interval: HEARTBEAT,
        data_dir: None,
        reports_in_flight: berth_sim::engine::REPORTS_IN_FLIGHT,
    })
    .await
    .expect("sim starts");
    let instance_arns: Arc<Vec<String>> = Arc::new(sim.instance_arns().to_vec());
    register_task_definition(api, "job", 1, TASK_MEMORY, None).await;

    // The priority scheduler, in-process.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let scheduler = tokio::spawn(berth_priority_scheduler::run(
        berth_priority_scheduler::Config {
            nats: vec![url.clone()],
            cluster: "pool".into(),
            candidates: 3,
            ..berth_priority_scheduler::Config::default()
        },
        async move {
            let _ = stop_rx.await;
        },
    ));
    let js = async_nats::jetstream::new(api.client.clone());
    jobs::provision(&js, 1).await.expect("jobs stream");
    let mut outcomes = api
        .client
        .subscribe(jobs::outcomes_of("pool"))
        .await
        .expect("subscribe outcomes");

    let started = Instant::now();
    let run_calls = demand * 4 / 10 / 10;
    let job_count = demand * 3 / 10 / 10;
    let start_calls = (demand - run_calls * 10 - job_count * 10) / 10;

    let run_client = {
        let api = api.clone();
        tokio::spawn(async move {
            let results = futures::stream::iter(0..run_calls)
                .map(|i| {
                    let api = api.clone();
                    async move {
                        let r = api
                            .call_json("RunTask", json!({"cluster": "pool", "taskDefinition": "job", "count": 10, "startedBy": format!("run-{i}")}))
                            .await
                            .expect("RunTask has an outcome");
                        let placed = r["tasks"].as_array().map_or(0, Vec::len);
                        let failed = r["failures"].as_array().map_or(0, Vec::len);
                        assert_eq!(placed + failed, 10, "{r}");
                        (placed, failed)
                    }
                })
                .buffer_unordered(16)
                .collect::<Vec<_>>()
                .await;
            results
                .into_iter()
                .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
        })
    };
    let start_client = {
        let api = api.clone();
        let arns = instance_arns.clone();
        tokio::spawn(async move {
            let results = futures::stream::iter(0..start_calls)
                .map(|i| {
                    let api = api.clone();
                    let chosen: Vec<String> = arns
                        .choose_multiple(&mut rand::thread_rng(), 10)
                        .cloned()
                        .collect();
                    async move {
                        let r = api
                            .call_json("StartTask", json!({"cluster": "pool", "taskDefinition": "job", "containerInstances": chosen, "startedBy": format!("start-{i}")}))
                            .await
                            .expect("StartTask has an outcome");
                        let placed = r["tasks"].as_array().map_or(0, Vec::len);
                        let failed = r["failures"].as_array().map_or(0, Vec::len);
                        assert_eq!(placed + failed, 10, "{r}");
                        (placed, failed)
                    }
                })
                .buffer_unordered(8)
                .collect::<Vec<_>>()
                .await;
            results
                .into_iter()
                .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
        })
    };
    for i in 0..job_count {
        let mut job = Job::new(format!("job-{i}"), "job")
            .with_priority((i % 10) as u8)
            .with_count(10);
        job.max_wait_seconds = Some(15);
        jobs::submit(&js, "pool", &job).await.expect("job accepted");
    }
    let (mut job_placed, mut job_failed, mut jobs_done) = (0usize, 0usize, 0usize);
    let deadline = Duration::from_secs(900);
    while jobs_done < job_count {
        let msg = tokio::time::timeout(deadline, outcomes.next())
            .await
            .expect("every job gets an outcome")
            .expect("outcome subscription open");
        let outcome: JobOutcome = serde_json::from_slice(&msg.payload).expect("outcome JSON");
        jobs_done += 1;
        match outcome.status {
            JobStatus::Placed => job_placed += outcome.tasks.len(),
            _ => {
                job_placed += outcome.tasks.len();
                job_failed += outcome.count as usize - outcome.tasks.len();
            }
        }
    }
    let (run_placed, run_failed) = run_client.await.expect("run client");
    let (start_placed, start_failed) = start_client.await.expect("start client");
    let elapsed = started.elapsed();
    let placed = run_placed + start_placed + job_placed;
    let failed = run_failed + start_failed + job_failed;
    assert_eq!(
        placed + failed,
        demand,
        "every requested task is placed or failed"
    );
    assert!(placed <= capacity, "placed {placed} > capacity {capacity}");

    // Conflict rate: control replicas' counters and the scheduler's.
    let stats = replica_stats(&api.client).await;
    let sched =
        berth_priority_scheduler::request_stats(&api.client, "pool", Duration::from_secs(5))
            .await
            .expect("scheduler stats");
    let control_conflicts: u64 = stats
        .iter()
        .map(|s| s["conflicts"].as_u64().unwrap_or(0))
        .sum();
    let control_placements: u64 = stats
        .iter()
        .map(|s| s["placements"].as_u64().unwrap_or(0))
        .sum();
    let conflicts = control_conflicts + sched.conflicts;
    println!(
        "race: {demand} tasks requested, {placed} placed (capacity {capacity}), {failed} failed, in {:.1} s; \
         conflicts {conflicts} ({:.1} per 1,000 placements; control {control_conflicts}/{control_placements}, scheduler {}/{})",
        elapsed.as_secs_f64(),
        conflicts as f64 * 1000.0 / placed.max(1) as f64,
        sched.conflicts,
        sched.placements,
    );
    let _ = stop_tx.send(());
    let _ = scheduler.await;
    // Every task the outcomes name exists: the cluster's pending+running count is `placed`.
    let api2 = api.clone();
    wait_for("the view to count every placed task", PATIENCE, || {
        let api = api2.clone();
        async move {
            let c = api
                .call_json("DescribeClusters", json!({"clusters": ["pool"]}))
                .await
                .ok()?;
            let n = c["clusters"][0]["runningTasksCount"].as_u64()?
                + c["clusters"][0]["pendingTasksCount"].as_u64()?;
            (n == placed as u64).then_some(())
        }
    })
    .await;
    sim.stop().await;
    assert_audit_clean(&url).await;
}

/// `$SRV.STATS.berth` answers once per replica; collects the endpoint data of each.
async fn replica_stats(client: &async_nats::Client) -> Vec<serde_json::Value> {
    let inbox = client.new_inbox();
    let mut sub = client.subscribe(inbox.clone()).await.expect("subscribe");
    client
        .publish_with_reply("$SRV.STATS.berth", inbox, "".into())
        .await
        .expect("stats request");
    let mut out = Vec::new();
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(2), sub.next()).await {
        let v: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap_or_default();
        if let Some(data) = v["endpoints"]
            .as_array()
            .and_then(|e| e.first())
            .map(|e| e["data"].clone())
        {
            out.push(data);
        }
    }
    out
}

//! The priority scheduler (`berth-priority-scheduler`) against a real control plane: jobs of mixed
//! priorities on a pool too small for all of them are placed highest priority first, the
//! rest wait until the pool grows (also across a scheduler restart); bad and impossible
//! jobs get a clear outcome; two schedulers and a RunTask client racing for one pool
//! never over-commit it. The auditor checks the journal after each.

use berth_e2e::*;
use berth_messages::api::TasksResponse;
use berth_messages::api::{DescribeTasksRequest, ListTasksRequest, ListTasksResponse};
use berth_priority_scheduler::jobs::{self, Job, JobOutcome, JobStatus};
use berth_priority_scheduler::{Config, SchedulerError, Stats};
use berth_testkit::wait_for;
use futures::StreamExt;
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;

/// A scheduler running in this process.
struct Scheduler {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<Stats, SchedulerError>>,
}

impl Scheduler {
    fn start(url: &str, cluster: &str) -> Scheduler {
        Self::with(Config {
            nats: vec![url.to_string()],
            cluster: cluster.to_string(),
            ..Config::default()
        })
    }

    fn with(config: Config) -> Scheduler {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(berth_priority_scheduler::run(config, async move {
            let _ = stopped.await;
        }));
        Scheduler { stop, task }
    }

    async fn stop(self) -> Stats {
        let _ = self.stop.send(());
        self.task
            .await
            .expect("scheduler task")
            .expect("scheduler ran")
    }
}

/// The next `n` job outcomes.
async fn outcomes(sub: &mut async_nats::Subscriber, n: usize) -> Vec<JobOutcome> {
    let mut out = Vec::new();
    while out.len() < n {
        let msg = tokio::time::timeout(PATIENCE, sub.next())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for outcome {} of {n}", out.len() + 1))
            .expect("outcome subscription open");
        out.push(serde_json::from_slice(&msg.payload).expect("outcome is JSON"));
    }
    out
}

async fn wait_stats(
    client: &async_nats::Client,
    cluster: &str,
    what: &str,
    check: impl Fn(&Stats) -> bool,
) -> Stats {
    let check = &check;
    wait_for(what, PATIENCE, || async move {
        let stats =
            berth_priority_scheduler::request_stats(client, cluster, Duration::from_secs(2))
                .await
                .ok()?;
        check(&stats).then_some(stats)
    })
    .await
}

async fn task_arns(api: &Api, cluster: &str) -> Vec<String> {
    let reply: ListTasksResponse = api
        .call(
            "ListTasks",
            &ListTasksRequest {
                cluster: Some(cluster.into()),
                max_results: Some(100),
                ..Default::default()
            },
        )
        .await
        .expect("ListTasks");
    assert!(reply.next_token.is_none(), "more tasks than one page");
    reply.task_arns
}

fn ids(outcomes: &[JobOutcome]) -> BTreeSet<String> {
    outcomes.iter().map(|o| o.job_id.clone()).collect()
}

/// A subscription to the cluster's job outcomes, in place on the server when it returns.
async fn outcome_subscription(api: &Api, cluster: &str) -> async_nats::Subscriber {
    let subscription = api
        .client
        .subscribe(jobs::outcomes_of(cluster))
        .await
        .expect("subscribe to outcomes");
    api.client.flush().await.expect("flush");
    subscription
}

async fn jetstream_with_jobs(api: &Api) -> async_nats::jetstream::Context {
    let js = async_nats::jetstream::new(api.client.clone());
    jobs::provision(&js, 1)
        .await
        .expect("BERTH_JOBS provisioned");
    js
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priorities_first_and_lower_ones_wait_for_capacity() {
    const CLUSTER: &str = "pool";
    let berth = Berth::start().await;
    let api = &berth.api;
    create_cluster(api, CLUSTER).await;
    // Two instances with room for four 256 MiB tasks each: 8 tasks for 16 jobs.
    let a = register_instance(api, CLUSTER, 1024, 1024, json!([])).await;
    let b = register_instance(api, CLUSTER, 1024, 1024, json!([])).await;
    let _beats = Heartbeats::start(api.client.clone(), CLUSTER, vec![a, b]);
    register_task_definition(api, "work", 10, 256, None).await;

    let js = jetstream_with_jobs(api).await;
    let mut subscription = outcome_subscription(api, CLUSTER).await;
    // Arrival order p1, p1, p5, p9, four times: the low priorities arrive first.
    let mut by_priority: [Vec<String>; 10] = Default::default();
    for round in 0..4 {
        for (slot, priority) in [1u8, 1, 5, 9].into_iter().enumerate() {
            let id = format!("p{priority}-{round}-{slot}");
            let job = Job {
                group: Some("batch".into()),
                ..Job::new(&id, "work").with_priority(priority)
            };
            let ack = jobs::submit(&js, CLUSTER, &job).await.expect("submit");
            assert!(!ack.duplicate);
            by_priority[priority as usize].push(id);
        }
    }
    // A resubmission of a job id is stored once.
    let again = jobs::submit(&js, CLUSTER, &Job::new("p9-0-3", "work").with_priority(9))
        .await
        .expect("resubmit");
    assert!(again.duplicate);

    let scheduler = Scheduler::start(&berth.url(), CLUSTER);
    let first = outcomes(&mut subscription, 8).await;
    let expected: BTreeSet<String> = by_priority[9]
        .iter()
        .chain(&by_priority[5])
        .cloned()
        .collect();
    assert_eq!(ids(&first), expected, "the priority 9 and 5 jobs go first");
    for o in &first {
        assert_eq!(o.status, JobStatus::Placed, "{o:?}");
        assert_eq!(o.tasks.len(), 1);
        assert_eq!(o.cluster, CLUSTER);
    }
    let stats = wait_stats(&api.client, CLUSTER, "8 placed, 8 tasks waiting", |s| {
        s.placements == 8 && s.in_flight == 0 && s.jobs_held == 8 && s.tasks_waiting == 8
    })
    .await;
    assert_eq!(stats.instances, 2);
    assert_eq!(stats.jobs_received, 16);

    // The tasks exist, on the instances the outcomes name, tagged with their job.
    let arns = task_arns(api, CLUSTER).await;
    assert_eq!(arns.len(), 8);
    let described: TasksResponse = api
        .call(
            "DescribeTasks",
            &DescribeTasksRequest {
                cluster: Some(CLUSTER.into()),
                tasks: arns,
                include: vec!["TAGS".into()],
            },
        )
        .await
        .expect("DescribeTasks");
    for task in &described.tasks {
        let outcome = first
            .iter()
            .find(|o| o.tasks[0].task_arn == task.task_arn)
            .expect("every task belongs to an outcome");
        assert_eq!(
            outcome.tasks[0].container_instance_arn,
            task.container_instance_arn
        );
        assert_eq!(task.started_by.as_deref(), Some(outcome.job_id.as_str()));
        assert_eq!(task.group, "batch");
        assert!(task
            .tags
            .iter()
            .any(|t| t.key.as_deref() == Some(jobs::JOB_TAG)
                && t.value.as_deref() == Some(outcome.job_id.as_str())));
    }

    // The elastic pool grows by four slots: the four oldest waiting jobs take them.
    let c = register_instance(api, CLUSTER, 1024, 1024, json!([])).await;
    let _beats_c = Heartbeats::start(api.client.clone(), CLUSTER, vec![c]);
    let second = outcomes(&mut subscription, 4).await;
    assert_eq!(
        ids(&second),
        by_priority[1][..4].iter().cloned().collect::<BTreeSet<_>>()
    );
    assert!(second.iter().all(|o| o.status == JobStatus::Placed));
    wait_stats(&api.client, CLUSTER, "12 placed", |s| {
        s.placements == 12 && s.in_flight == 0 && s.tasks_waiting == 4
    })
    .await;
    let stats = scheduler.stop().await;
    assert_eq!(
        (
            stats.placements,
            stats.conflicts,
            stats.failed,
            stats.jobs_placed
        ),
        (12, 0, 0, 12),
        "{stats:?}"
    );

    // The four jobs still waiting went back to the stream; a new scheduler picks them
    // up, finds they started nothing yet, and places them once the pool grows again.
    let scheduler = Scheduler::start(&berth.url(), CLUSTER);
    wait_stats(&api.client, CLUSTER, "4 jobs held again", |s| {
        s.jobs_held == 4 && s.tasks_waiting == 4 && s.in_flight == 0
    })
    .await;
    let d = register_instance(api, CLUSTER, 1024, 1024, json!([])).await;
    let _beats_d = Heartbeats::start(api.client.clone(), CLUSTER, vec![d]);
    let third = outcomes(&mut subscription, 4).await;
    assert_eq!(
        ids(&third),
        by_priority[1][4..].iter().cloned().collect::<BTreeSet<_>>()
    );
    let stats = scheduler.stop().await;
    assert_eq!((stats.placements, stats.failed), (4, 0), "{stats:?}");
    assert_eq!(task_arns(api, CLUSTER).await.len(), 16);
    assert_audit_clean(&berth.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_job_gets_an_outcome_bad_or_impossible_ones_too() {
    const CLUSTER: &str = "odd";
    let berth = Berth::start().await;
    let api = &berth.api;
    create_cluster(api, CLUSTER).await;
    let a = register_instance(api, CLUSTER, 4096, 2048, json!([])).await;
    let b = register_instance(api, CLUSTER, 4096, 2048, json!([])).await;
    let _beats = Heartbeats::start(api.client.clone(), CLUSTER, vec![a, b]);
    register_task_definition(api, "small", 10, 128, None).await;
    register_task_definition(api, "huge", 10, 4096, None).await;

    let js = jetstream_with_jobs(api).await;
    let mut subscription = outcome_subscription(api, CLUSTER).await;
    let scheduler = Scheduler::start(&berth.url(), CLUSTER);

    // More than one StartTask's worth (10) of tasks in one job.
    jobs::submit(&js, CLUSTER, &Job::new("many", "small").with_count(12))
        .await
        .expect("submit");
    // Fits no instance: fails when its wait runs out, naming the closest instance.
    let huge = Job {
        max_wait_seconds: Some(1),
        ..Job::new("huge", "huge")
    };
    jobs::submit(&js, CLUSTER, &huge).await.expect("submit");
    jobs::submit(&js, CLUSTER, &Job::new("unknown", "nosuch"))
        .await
        .expect("submit");
    // Malformed: published raw, past the client's validation.
    js.publish(
        jobs::subject(CLUSTER),
        br#"{"id":"bad","taskDefinition":"small","priority":12}"#
            .to_vec()
            .into(),
    )
    .await
    .expect("publish")
    .await
    .expect("stored");

    let mut all = outcomes(&mut subscription, 4).await;
    all.sort_by(|x, y| x.job_id.cmp(&y.job_id));
    let [bad, huge, many, unknown] = <[JobOutcome; 4]>::try_from(all).expect("four outcomes");

    assert_eq!(bad.status, JobStatus::Failed);
    assert_eq!(bad.reason.as_deref(), Some(jobs::reason::INVALID));
    assert!(
        bad.detail.as_deref().unwrap_or("").contains("priority"),
        "{bad:?}"
    );

    assert_eq!(huge.status, JobStatus::Failed);
    assert_eq!(huge.reason.as_deref(), Some("RESOURCE:MEMORY"), "{huge:?}");
    assert!(
        huge.detail
            .as_deref()
            .unwrap_or("")
            .contains("closest matching container-instance"),
        "{huge:?}"
    );
    assert!(huge.tasks.is_empty());

    assert_eq!(many.status, JobStatus::Placed, "{many:?}");
    assert_eq!(many.tasks.len(), 12);
    let distinct: BTreeSet<&str> = many.tasks.iter().map(|t| t.task_arn.as_str()).collect();
    assert_eq!(distinct.len(), 12);
    // Best fit packs: the first instance is filled (16 x 128 MiB) before the second.
    let on_first = many
        .tasks
        .iter()
        .filter(|t| t.container_instance_arn == many.tasks[0].container_instance_arn)
        .count();
    assert_eq!(on_first, 12, "{many:?}");

    assert_eq!(unknown.status, JobStatus::Failed);
    assert_eq!(
        unknown.reason.as_deref(),
        Some("ClientException"),
        "{unknown:?}"
    );

    let stats = scheduler.stop().await;
    assert_eq!((stats.placements, stats.failed), (12, 3), "{stats:?}");
    assert_eq!(task_arns(api, CLUSTER).await.len(), 12);
    assert_audit_clean(&berth.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_schedulers_and_run_task_share_a_pool_without_over_commit() {
    const CLUSTER: &str = "shared";
    const SLOTS: usize = 16;
    const JOBS: usize = 24;
    const RUN_TASKS: usize = 8;
    let berth = Berth::start().await;
    let api = &berth.api;
    create_cluster(api, CLUSTER).await;
    let mut instances = Vec::new();
    for _ in 0..4 {
        instances.push(register_instance(api, CLUSTER, 1024, 1024, json!([])).await);
    }
    let _beats = Heartbeats::start(api.client.clone(), CLUSTER, instances);
    register_task_definition(api, "work", 10, 256, None).await;
    let js = jetstream_with_jobs(api).await;
    let mut subscription = outcome_subscription(api, CLUSTER).await;
    // Choosing among the two best fits steers the two schedulers apart.
    let config = Config {
        nats: vec![berth.url()],
        cluster: CLUSTER.into(),
        candidates: 2,
        ..Config::default()
    };
    let first = Scheduler::with(config.clone());
    let second = Scheduler::with(config);
    wait_stats(&api.client, CLUSTER, "a scheduler serving", |s| {
        s.instances == 4
    })
    .await;

    let submitter = {
        let js = js.clone();
        tokio::spawn(async move {
            for i in 0..JOBS {
                let job = Job {
                    max_wait_seconds: Some(10),
                    ..Job::new(format!("job-{i}"), "work:1").with_priority((i % 10) as u8)
                };
                jobs::submit(&js, CLUSTER, &job).await.expect("submit");
            }
        })
    };
    let runner = {
        let api = api.clone();
        tokio::spawn(async move {
            let mut placed = 0;
            for i in 0..RUN_TASKS {
                let reply = api
                    .call_json(
                        "RunTask",
                        json!({"cluster": CLUSTER, "taskDefinition": "work:1", "startedBy": format!("direct-{i}")}),
                    )
                    .await
                    .expect("RunTask answers");
                placed += reply["tasks"].as_array().map_or(0, Vec::len);
            }
            placed
        })
    };
    submitter.await.expect("submitter");
    let by_run_task = runner.await.expect("runner");
    let all = outcomes(&mut subscription, JOBS).await;
    assert_eq!(ids(&all).len(), JOBS, "one outcome per job");
    let mut by_jobs = 0;
    for o in &all {
        match o.status {
            JobStatus::Placed => by_jobs += o.tasks.len(),
            JobStatus::Failed => {
                let reason = o.reason.as_deref().unwrap_or("");
                assert!(
                    reason.starts_with("RESOURCE:")
                        || reason == jobs::reason::CONFLICT
                        || reason == jobs::reason::TIMEOUT,
                    "{o:?}"
                );
                assert!(o.tasks.is_empty());
            }
        }
    }
    let a = first.stop().await;
    let b = second.stop().await;
    let conflicts = a.conflicts + b.conflicts;
    println!(
        "pool of {SLOTS}: {by_jobs} tasks by the schedulers, {by_run_task} by RunTask; \
         {conflicts} conflicts, {} retries over {} placements",
        a.retries + b.retries,
        a.placements + b.placements
    );
    assert_eq!((a.placements + b.placements) as usize, by_jobs);
    assert_eq!(
        by_jobs + by_run_task,
        SLOTS,
        "the pool ends full, never over-full"
    );
    assert_eq!(task_arns(api, CLUSTER).await.len(), SLOTS);
    assert_audit_clean(&berth.url()).await;
}

/// Every StartTask the scheduler sends names its command (`Nats-Msg-Id`), so a call whose
/// answer was lost can be sent again with the same id and start nothing twice: the
/// outcome is addressable by that id, and the same request sent again is answered with
/// the same task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_task_calls_carry_a_command_id_that_makes_a_resend_harmless() {
    const CLUSTER: &str = "ids";
    let berth = Berth::start().await;
    let api = &berth.api;
    let (_, _beats) = register_hosts(api, CLUSTER, 1, 4096, 2048).await;
    register_task_definition(api, "small", 10, 128, None).await;
    let js = jetstream_with_jobs(api).await;
    // A plain subscriber sees a copy of each StartTask request (the replicas answer them
    // in their queue group).
    let mut calls = api
        .client
        .subscribe(berth_messages::subjects::api("StartTask"))
        .await
        .expect("subscribe to StartTask calls");
    let mut outcomes_sub = outcome_subscription(api, CLUSTER).await;
    let scheduler = Scheduler::start(&berth.url(), CLUSTER);
    jobs::submit(&js, CLUSTER, &Job::new("one", "small"))
        .await
        .expect("submit");
    let outcome = outcomes(&mut outcomes_sub, 1).await.remove(0);
    assert_eq!(outcome.status, JobStatus::Placed, "{outcome:?}");
    assert_eq!(outcome.tasks.len(), 1, "{outcome:?}");

    let call = tokio::time::timeout(PATIENCE, calls.next())
        .await
        .expect("a StartTask call")
        .expect("subscription open");
    let command_id = call
        .headers
        .as_ref()
        .and_then(|h| h.get(berth_messages::headers::MSG_ID))
        .map(|v| v.as_str().to_string())
        .expect("StartTask carries Nats-Msg-Id");
    assert!(command_id.starts_with("sched-"), "{command_id}");
    let body: serde_json::Value = serde_json::from_slice(&call.payload).expect("JSON body");
    let resent = api
        .call_json_as(&command_id, "StartTask", body)
        .await
        .expect("the same call sent again");
    let resent: Vec<&str> = resent["tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["taskArn"].as_str())
        .collect();
    assert_eq!(resent, vec![outcome.tasks[0].task_arn.as_str()]);
    assert_eq!(task_arns(api, CLUSTER).await.len(), 1, "started once");
    scheduler.stop().await;
    assert_audit_clean(&berth.url()).await;
}

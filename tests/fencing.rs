//! Fencing: three `berth-control` processes on a three-node cluster with R3 streams, 50
//! hosts, and a burst of RunTask commands (count 5, each with its own `Nats-Msg-Id`)
//! published straight into `BERTH_CMD`. In the middle of the burst one replica is paused
//! with SIGSTOP past the command ack wait (its commands are redelivered to the others,
//! which fence its claims off), paused shorter than the ack wait (it keeps its claims), or
//! killed. In every case each accepted command ends with exactly one outcome naming five
//! tasks, every task exists exactly once, the auditor (which also checks that no write
//! lands under a fenced claim) is clean, and the faulted replica serves again.

use berth_e2e::*;
use berth_journal::{Journal, JournalConfig};
use berth_messages::model::ContainerInstance;
use berth_messages::streams::StreamOptions;
use berth_messages::subjects;
use berth_testkit::{wait_for, NatsCluster};
use futures::StreamExt;
use std::time::Duration;

const CLUSTER: &str = "fence";
const HOSTS: usize = 50;
const COMMANDS: usize = 150;
const TASKS_PER_COMMAND: usize = 5;
/// Short, so that a pause past it is short too.
const ACK_WAIT_SECONDS: &str = "3";

enum Fault {
    /// SIGSTOP until another replica has fenced the paused one's claims, then SIGCONT.
    PausePastAckWait,
    /// SIGSTOP for less than the ack wait, then SIGCONT.
    PauseWithinAckWait,
    /// SIGKILL, then a new process.
    Kill,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_paused_past_the_ack_wait_places_nothing_twice() {
    run(Fault::PausePastAckWait).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_paused_within_the_ack_wait_places_nothing_twice() {
    run(Fault::PauseWithinAckWait).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_in_a_burst_on_r3_places_nothing_twice() {
    run(Fault::Kill).await;
}

fn replica(urls: &str) -> ControlProcess {
    ControlProcess::start_with(
        urls,
        &[
            ("BERTH_REPLICAS", "3"),
            ("BERTH_COMMAND_ACK_WAIT", ACK_WAIT_SECONDS),
        ],
    )
}

async fn run(fault: Fault) {
    let nats = NatsCluster::start(3);
    let urls = nats.urls().join(",");
    let mut replicas = [replica(&urls), replica(&urls), replica(&urls)];
    let client = async_nats::connect(nats.urls()).await.expect("connect");
    let api = Api {
        client,
        encoding: berth_messages::codec::Encoding::Json,
    };
    api.wait_serving().await;
    let (_hosts, _beats) = register_hosts(&api, CLUSTER, HOSTS, 100_000, 100_000).await;
    register_task_definition(&api, "burst", 1, 1, None).await;
    let journal = Journal::open(&JournalConfig {
        servers: nats.urls(),
        streams: StreamOptions {
            replicas: 3,
            ..StreamOptions::default()
        },
        ..Default::default()
    })
    .await
    .expect("journal");
    let before = outcome_count(&journal).await;

    // Accepted = acknowledged by the stream.
    let js = journal.jetstream().clone();
    let mut accepted = Vec::new();
    let mut faulted = false;
    for i in 0..COMMANDS {
        let id = format!("fence-{i}");
        let body = serde_json::json!({"cluster": CLUSTER, "taskDefinition": "burst",
            "count": TASKS_PER_COMMAND, "startedBy": id});
        publish_command(&js, CLUSTER, "RunTask", &id, &body).await;
        accepted.push(id);
        // Fault once commands are flowing, so the faulted replica holds some.
        if !faulted && i >= COMMANDS / 3 && outcome_count(&journal).await > before {
            faulted = true;
            match fault {
                Fault::Kill => replicas[0].kill(),
                Fault::PausePastAckWait | Fault::PauseWithinAckWait => replicas[0].pause(),
            }
        }
    }
    match fault {
        Fault::PausePastAckWait => {
            // The ack wait passes and the others take the paused replica's commands over,
            // fencing its claims off the hosts.
            wait_for("a redelivery to fence the paused claims", PATIENCE, || {
                let journal = journal.clone();
                async move { fenced_instances(&journal).await.then_some(()) }
            })
            .await;
            replicas[0].resume();
        }
        Fault::PauseWithinAckWait => {
            // The fault itself lasts a while; nothing waits on it.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            replicas[0].resume();
        }
        Fault::Kill => replicas[0] = replica(&urls),
    }

    let task_ids = tasks_of_outcomes(&journal, &accepted, TASKS_PER_COMMAND).await;
    assert_eq!(outcome_count(&journal).await - before, COMMANDS as u64);
    // Listed by whichever replica answers: one just resumed may still be catching up.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let listed = all_task_arns(&api, CLUSTER).await;
        if listed == task_ids {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            let extra: Vec<_> = listed.difference(&task_ids).collect();
            let missing: Vec<_> = task_ids.difference(&listed).collect();
            panic!("tasks no outcome names: {extra:?}; tasks of outcomes not listed: {missing:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The faulted replica serves again: all three answer the service's PING.
    wait_for("all three replicas to answer", PATIENCE, || {
        let client = api.client.clone();
        async move { (berth_testkit::service_instances(&client, "berth", 3).await == 3).then_some(()) }
    })
    .await;
    let report = berth_audit::audit(&api.client).await.expect("audit");
    assert!(report.is_clean(), "{report}");
}

/// Whether some host's record fences a command's earlier claims.
async fn fenced_instances(journal: &Journal) -> bool {
    let stream = match journal
        .jetstream()
        .get_stream(berth_messages::streams::STATE)
        .await
    {
        Ok(s) => s,
        Err(_) => return false,
    };
    let filter = subjects::instances_of(CLUSTER);
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            filter_subject: filter,
            deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await;
    let Ok(consumer) = consumer else {
        return false;
    };
    let pending = consumer.cached_info().num_pending;
    let Ok(mut messages) = consumer.messages().await else {
        return false;
    };
    for _ in 0..pending {
        let next = tokio::time::timeout(Duration::from_secs(5), messages.next()).await;
        let Ok(Some(Ok(msg))) = next else {
            return false;
        };
        let record: Result<ContainerInstance, _> =
            berth_messages::codec::decode_record(&msg.payload);
        if record.is_ok_and(|r| !r.fenced_commands.is_empty()) {
            return true;
        }
    }
    false
}

//! The auditor against a real nats-server: a clean history written through the journal is
//! clean, an over-committed instance record is found, and the binary's exit status says so.

use berth_audit::{audit, Invariant};
use berth_journal::{Journal, JournalConfig};
use berth_messages::command::Outcome;
use berth_messages::model::{Allocation, Cluster, ContainerInstance, Resource, Task, TaskStatus};
use berth_messages::subjects;
use berth_testkit::NatsServer;
use std::collections::BTreeMap;
use std::process::Output;

const CLUSTER: &str = "prod";

fn instance(allocations: &[(&str, i64)]) -> ContainerInstance {
    ContainerInstance {
        container_instance_arn: "arn:aws:ecs:r:1:container-instance/prod/i1".into(),
        registered_resources: vec![
            Resource::integer(Resource::CPU, 1024),
            Resource::integer(Resource::MEMORY, 2048),
            Resource::string_set(Resource::PORTS, ["22".to_string()]),
        ],
        allocations: allocations
            .iter()
            .map(|(task, cpu)| {
                (
                    task.to_string(),
                    Allocation {
                        cpu: *cpu,
                        memory: 256,
                        ports: vec![8080],
                        ports_udp: Vec::new(),
                        group: None,
                        claim: None,
                    },
                )
            })
            .collect::<BTreeMap<_, _>>(),
        ..Default::default()
    }
}

fn task(last: TaskStatus, desired: TaskStatus) -> Task {
    Task {
        task_arn: "arn:aws:ecs:r:1:task/prod/t1".into(),
        container_instance_arn: "arn:aws:ecs:r:1:container-instance/prod/i1".into(),
        last_status: last,
        desired_status: desired,
        ..Default::default()
    }
}

async fn outcome(journal: &Journal, command_id: &str, action: &str) {
    journal
        .record_outcome(Outcome {
            command_id: command_id.into(),
            action: action.into(),
            cluster: CLUSTER.into(),
            response: None,
            error: None,
            completed_at: 1.0,
            journal_sequence: 0,
            request_digest: None,
        })
        .await
        .unwrap();
}

async fn run_binary(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_berth-audit"))
        .args(args)
        .env_remove("BERTH_NATS_URL")
        .env_remove("BERTH_AUDIT_JSON")
        .output()
        .await
        .unwrap()
}

#[tokio::test]
async fn audits_a_real_journal() {
    let server = NatsServer::start();
    let url = server.url();
    let journal = Journal::open(&JournalConfig {
        servers: vec![url.clone()],
        ..Default::default()
    })
    .await
    .unwrap();
    let instance_subject = subjects::instance(CLUSTER, "i1");
    let task_subject = subjects::task(CLUSTER, "i1", "t1");

    // Create the cluster, register an instance, run a task, then stop it.
    journal
        .write(
            &subjects::cluster(CLUSTER),
            &Cluster {
                cluster_arn: "arn:aws:ecs:r:1:cluster/prod".into(),
                cluster_name: CLUSTER.into(),
                ..Default::default()
            },
            0,
            "c-create",
        )
        .await
        .unwrap();
    outcome(&journal, "c-create", "CreateCluster").await;
    let v = journal
        .write(&instance_subject, &instance(&[]), 0, "c-register")
        .await
        .unwrap();
    outcome(&journal, "c-register", "RegisterContainerInstance").await;
    let v = journal
        .write(&instance_subject, &instance(&[("t1", 512)]), v, "c-run")
        .await
        .unwrap();
    let t = journal
        .write(
            &task_subject,
            &task(TaskStatus::Pending, TaskStatus::Running),
            0,
            "c-run",
        )
        .await
        .unwrap();
    outcome(&journal, "c-run", "RunTask").await;
    let t = journal
        .write(
            &task_subject,
            &task(TaskStatus::Running, TaskStatus::Running),
            t,
            "c-running",
        )
        .await
        .unwrap();
    outcome(&journal, "c-running", "SubmitTaskStateChange").await;
    journal
        .write(
            &task_subject,
            &task(TaskStatus::Stopped, TaskStatus::Stopped),
            t,
            "c-stop",
        )
        .await
        .unwrap();
    let v = journal
        .write(&instance_subject, &instance(&[]), v, "c-stop")
        .await
        .unwrap();
    outcome(&journal, "c-stop", "StopTask").await;
    let mut disconnected = instance(&[]);
    disconnected.agent_connected = false;
    let v = journal
        .write(&instance_subject, &disconnected, v, "internal-liveness-1")
        .await
        .unwrap();

    let report = audit(journal.client()).await.unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.messages, 8);
    assert_eq!((report.instances, report.tasks), (1, 1));

    let clean = run_binary(&["--nats", &url]).await;
    assert_eq!(clean.status.code(), Some(0), "{clean:?}");
    assert!(String::from_utf8_lossy(&clean.stdout).contains("clean"));

    // Two tasks holding 1536 of 1024 CPU.
    journal
        .write(
            &instance_subject,
            &instance(&[("t2", 768), ("t3", 768)]),
            v,
            "c-over",
        )
        .await
        .unwrap();
    for t in ["t2", "t3"] {
        journal
            .write(
                &subjects::task(CLUSTER, "i1", t),
                &task(TaskStatus::Running, TaskStatus::Running),
                0,
                "c-over",
            )
            .await
            .unwrap();
    }
    outcome(&journal, "c-over", "StartTask").await;

    let report = audit(journal.client()).await.unwrap();
    assert_eq!(report.messages, 11);
    let kinds: Vec<Invariant> = report.violations.iter().map(|v| v.invariant).collect();
    // Both tasks also hold host port 8080.
    assert_eq!(
        kinds,
        [Invariant::OverCommit, Invariant::PortHeldTwice],
        "{report}"
    );
    assert_eq!(report.violations[0].subject, instance_subject);

    let dirty = run_binary(&["--nats", &url, "--json"]).await;
    assert_eq!(dirty.status.code(), Some(1), "{dirty:?}");
    let json: serde_json::Value = serde_json::from_slice(&dirty.stdout).unwrap();
    assert_eq!(json["messages"], 11);
    assert_eq!(json["violations"][0]["invariant"], "OverCommit");

    let broken = run_binary(&["--nats", "nats://bad host:not-a-port"]).await;
    assert_eq!(broken.status.code(), Some(2), "{broken:?}");
    assert!(!broken.stderr.is_empty());
}

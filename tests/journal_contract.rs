//! The journal's public contract, read straight from `BERTH_STATE` after a RunTask: the
//! task and instance subjects hold named-MessagePack records with ECS field names and a
//! header naming the causing command; an entity's version is the stream sequence of the
//! last message on its subject; a write on a stale version is refused.

use berth_e2e::berth_testkit::wait_for;
use berth_e2e::*;
use berth_journal::{Journal, JournalConfig};
use berth_messages::model::{ContainerInstance, Task};
use berth_messages::subjects;
use serde_json::{json, Value};

async fn journal(url: &str) -> Journal {
    Journal::open(&JournalConfig {
        servers: vec![url.to_string()],
        ..Default::default()
    })
    .await
    .expect("journal opens")
}

/// Whether a MessagePack payload starts with a map marker (fixmap, map16 or map32).
fn is_msgpack_map(payload: &[u8]) -> bool {
    matches!(payload.first(), Some(0x80..=0x8f | 0xde | 0xdf))
}

/// Reads the latest record on a subject: the record as JSON, its version and command.
async fn read_named(journal: &Journal, subject: &str) -> (Value, u64, String) {
    let (payload, version, command) = journal
        .read_raw(subject)
        .await
        .expect("direct get")
        .unwrap_or_else(|| panic!("nothing on {subject}"));
    assert!(
        is_msgpack_map(&payload),
        "{subject} does not hold a MessagePack map"
    );
    let value: Value = rmp_serde::from_slice(&payload).expect("MessagePack decodes");
    let command = command.unwrap_or_else(|| panic!("no Berth-Command-Id on {subject}"));
    assert!(!command.is_empty());
    (value, version, command)
}

fn assert_fields(record: &Value, fields: &[&str], what: &str) {
    let map = record
        .as_object()
        .unwrap_or_else(|| panic!("{what} is not a map: {record}"));
    for f in fields {
        assert!(map.contains_key(*f), "{what} lacks {f}: {record}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_task_records_follow_the_journal_contract() {
    let berth = Berth::start().await;
    let api = &berth.api;
    create_cluster(api, "c1").await;
    let instance_id = register_instance(api, "c1", 2048, 2048, json!([])).await;
    let _beats = Heartbeats::start(api.client.clone(), "c1", vec![instance_id.clone()]);
    register_task_definition(api, "web", 256, 512, Some(8080)).await;
    let reply = api
        .call_json(
            "RunTask",
            json!({"cluster": "c1", "taskDefinition": "web", "startedBy": "contract"}),
        )
        .await
        .expect("RunTask");
    let task = &reply["tasks"][0];
    let task_arn = task["taskArn"].as_str().expect("taskArn").to_string();
    let task_id = id_of(&task_arn);
    assert_eq!(
        id_of(task["containerInstanceArn"].as_str().unwrap()),
        instance_id
    );
    let journal = journal(&berth.url()).await;

    // The task's record.
    let task_subject = subjects::task("c1", &instance_id, &task_id);
    assert_eq!(
        task_subject,
        format!("berth.state.c1.task.{instance_id}.{task_id}")
    );
    let (record, task_version, task_command) = read_named(&journal, &task_subject).await;
    assert_fields(
        &record,
        &[
            "taskArn",
            "clusterArn",
            "containerInstanceArn",
            "taskDefinitionArn",
            "lastStatus",
            "desiredStatus",
            "containers",
            "startedBy",
            "group",
            "createdAt",
        ],
        "task record",
    );
    assert_eq!(record["taskArn"], task_arn.as_str());
    assert_eq!(
        record["clusterArn"],
        "arn:aws:ecs:us-test-1:123456789012:cluster/c1"
    );
    assert_eq!(record["containerInstanceArn"], task["containerInstanceArn"]);
    assert_eq!(
        record["taskDefinitionArn"],
        "arn:aws:ecs:us-test-1:123456789012:task-definition/web:1"
    );
    assert_eq!(record["lastStatus"], "PENDING");
    assert_eq!(record["desiredStatus"], "RUNNING");
    assert_eq!(record["startedBy"], "contract");
    assert_eq!(record["group"], "family:web");
    assert!(record["createdAt"].is_number(), "{record}");
    assert_eq!(record["containers"][0]["name"], "app");
    assert_eq!(
        record["containers"][0]["networkBindings"][0]["hostPort"],
        8080
    );

    // The command named in the header is the RunTask, and its outcome names this task.
    let outcome = api
        .call_json("GetCommandOutcome", json!({"commandId": task_command}))
        .await
        .expect("the causing command has an outcome");
    assert_eq!(outcome["action"], "RunTask", "{outcome}");
    assert_eq!(
        outcome["response"]["Tasks"]["tasks"][0]["taskArn"],
        task_arn.as_str()
    );

    // The version DescribeTasks reports is the stream sequence of the last message.
    let described = describe_task(api, "c1", &task_arn).await;
    assert_eq!(described["version"], task_version, "{described}");
    assert_eq!(task["version"], task_version, "RunTask's reply version");

    // The instance's record.
    let instance_subject = subjects::instance("c1", &instance_id);
    let (ci, instance_version, instance_command) = read_named(&journal, &instance_subject).await;
    assert_fields(
        &ci,
        &[
            "containerInstanceArn",
            "registeredResources",
            "remainingResources",
            "status",
            "agentConnected",
            "allocations",
        ],
        "instance record",
    );
    assert_eq!(ci["containerInstanceArn"], task["containerInstanceArn"]);
    assert_eq!(ci["status"], "ACTIVE");
    assert_eq!(ci["agentConnected"], true);
    // The placement is the instance write: it names the RunTask and holds the allocation.
    assert_eq!(instance_command, task_command);
    let allocation = &ci["allocations"][&task_id];
    assert_eq!(allocation["cpu"], 256, "{ci}");
    assert_eq!(allocation["memory"], 512, "{ci}");
    assert_eq!(allocation["ports"], json!([8080]), "{ci}");
    let memory = ci["remainingResources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "MEMORY")
        .unwrap()
        .clone();
    assert_eq!(memory["integerValue"], 2048 - 512);
    let described_ci = api
        .call_json(
            "DescribeContainerInstances",
            json!({"cluster": "c1", "containerInstances": [instance_id]}),
        )
        .await
        .expect("DescribeContainerInstances");
    assert_eq!(
        described_ci["containerInstances"][0]["version"],
        instance_version
    );
    // The placement came before the task record.
    assert!(instance_version < task_version);

    // The agent's report moves the task to a new version.
    api.call_json(
        "SubmitTaskStateChange",
        json!({"cluster": "c1", "task": task_arn, "status": "RUNNING"}),
    )
    .await
    .expect("RUNNING");
    let (running, running_version, running_command) = read_named(&journal, &task_subject).await;
    assert_eq!(running["lastStatus"], "RUNNING");
    assert!(running_version > task_version);
    assert_ne!(running_command, task_command);
    let described = describe_task(api, "c1", &task_arn).await;
    assert_eq!(described["version"], running_version);

    // A write on the stale version is refused with a conflict; nothing changes.
    let current: Task = journal
        .read(&task_subject)
        .await
        .expect("read")
        .expect("task record")
        .value;
    let refused = journal
        .write(&task_subject, &current, task_version, "contract-stale")
        .await
        .expect_err("a stale write is refused");
    assert!(refused.is_conflict(), "{refused}");
    assert!(matches!(
        refused,
        berth_journal::JournalError::Conflict { .. }
    ));
    // Creating an existing entity (expected version 0) is refused too.
    let refused = journal
        .write(&task_subject, &current, 0, "contract-create")
        .await
        .expect_err("a create over an existing record is refused");
    assert!(refused.is_conflict(), "{refused}");
    let (_, unchanged_version, _) = read_named(&journal, &task_subject).await;
    assert_eq!(unchanged_version, running_version);

    let instance: ContainerInstance = journal
        .read(&instance_subject)
        .await
        .expect("read")
        .expect("instance record")
        .value;
    let refused = journal
        .write(
            &instance_subject,
            &instance,
            instance_version - 1,
            "contract-stale",
        )
        .await
        .expect_err("a stale instance write is refused");
    assert!(refused.is_conflict(), "{refused}");

    // Everything so far came through commands: the auditor finds nothing.
    assert_audit_clean(&berth.url()).await;

    // The current version is accepted and becomes the new version.
    let written = journal
        .write(&task_subject, &current, running_version, "contract-current")
        .await
        .expect("a write on the current version is accepted");
    assert!(written > running_version);
    let (_, version, command) = read_named(&journal, &task_subject).await;
    assert_eq!(version, written);
    assert_eq!(command, "contract-current");
    wait_for("the view to apply the write", PATIENCE, || async {
        let t = describe_task(api, "c1", &task_arn).await;
        (t["version"] == written).then_some(())
    })
    .await;
    // That write bypassed the command stream, and the auditor says exactly that.
    let client = async_nats::connect(berth.url()).await.expect("connect");
    let report = berth_audit::audit(&client).await.expect("audit runs");
    assert_eq!(report.violations.len(), 1, "{report}");
    let v = &report.violations[0];
    assert_eq!(
        v.invariant,
        berth_audit::Invariant::MissingOutcome,
        "{report}"
    );
    assert_eq!(v.sequence, written);
    assert_eq!(v.subject, task_subject);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_and_task_definition_records_are_named_too() {
    let berth = Berth::start().await;
    let api = &berth.api;
    create_cluster(api, "c1").await;
    register_task_definition(api, "web", 256, 512, None).await;
    let journal = journal(&berth.url()).await;

    let (cluster, _, _) = read_named(&journal, &subjects::cluster("c1")).await;
    assert_fields(
        &cluster,
        &["clusterArn", "clusterName", "status"],
        "cluster",
    );
    assert_eq!(cluster["clusterName"], "c1");
    assert_eq!(cluster["status"], "ACTIVE");

    let (td, td_version, _) = read_named(&journal, &subjects::task_definition("web", 1)).await;
    assert_fields(
        &td,
        &[
            "taskDefinitionArn",
            "family",
            "revision",
            "status",
            "containerDefinitions",
        ],
        "task definition",
    );
    assert_eq!(td["revision"], 1);
    assert_eq!(td["containerDefinitions"][0]["memory"], 512);
    let (family, family_version, _) =
        read_named(&journal, &subjects::task_definition_family("web")).await;
    assert_eq!(family["family"], "web");
    assert!(family_version < td_version, "the revision is taken first");

    // Deregistration is a tombstone, not a purge: a new record on the same subject.
    api.call_json(
        "DeregisterTaskDefinition",
        json!({"taskDefinition": "web:1"}),
    )
    .await
    .expect("deregister");
    let (gone, gone_version, _) = read_named(&journal, &subjects::task_definition("web", 1)).await;
    assert_eq!(gone["status"], "INACTIVE");
    assert!(gone_version > td_version);
    assert_audit_clean(&berth.url()).await;
}

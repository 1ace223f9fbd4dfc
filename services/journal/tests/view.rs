//! The view against a real nats-server: catch-up, live updates, paging, filters, counters
//! and task definitions.

use berth_journal::view::{ClusterCounts, FamilyStatusFilter, TaskFilter, View};
use berth_journal::{Journal, JournalConfig};
use berth_messages::arn::{self, ArnScope};
use berth_messages::model::{
    Cluster, ContainerInstance, InstanceStatus, Task, TaskDefinition, TaskDefinitionFamily,
    TaskDefinitionStatus, TaskStatus,
};
use berth_messages::subjects;
use berth_testkit::NatsServer;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

async fn open(server: &NatsServer) -> Journal {
    Journal::open(&JournalConfig {
        servers: vec![server.url()],
        ..Default::default()
    })
    .await
    .expect("open journal")
}

async fn start(journal: &Journal) -> View {
    let view = View::start(journal).await.expect("start view");
    assert!(view.wait_ready(WAIT).await, "view never caught up");
    view
}

fn cluster(name: &str) -> Cluster {
    Cluster {
        cluster_arn: ArnScope::default().cluster(name),
        cluster_name: name.into(),
        ..Default::default()
    }
}

fn instance(cluster: &str, id: &str, status: InstanceStatus) -> ContainerInstance {
    ContainerInstance {
        container_instance_arn: ArnScope::default().container_instance(cluster, id),
        status,
        ..Default::default()
    }
}

fn task(cluster: &str, instance: &str, id: &str, family: &str, last: TaskStatus) -> Task {
    let scope = ArnScope::default();
    Task {
        task_arn: scope.task(cluster, id),
        cluster_arn: scope.cluster(cluster),
        task_definition_arn: scope.task_definition(family, 1),
        container_instance_arn: scope.container_instance(cluster, instance),
        last_status: last,
        desired_status: TaskStatus::Running,
        group: format!("family:{family}"),
        ..Default::default()
    }
}

fn definition(family: &str, revision: u32, status: TaskDefinitionStatus) -> TaskDefinition {
    TaskDefinition {
        task_definition_arn: ArnScope::default().task_definition(family, revision),
        family: family.into(),
        revision,
        status,
        ..Default::default()
    }
}

fn task_ids(entries: &[std::sync::Arc<berth_journal::view::TaskEntry>]) -> Vec<String> {
    entries
        .iter()
        .map(|e| arn::task_id(&e.task.value.task_arn).1.to_string())
        .collect()
}

/// Writes a new version of a record whatever the current one is.
async fn put<T: serde::Serialize>(journal: &Journal, subject: &str, record: &T) -> u64 {
    let current = journal
        .read_raw(subject)
        .await
        .expect("read")
        .map_or(0, |(_, version, _)| version);
    journal
        .write(subject, record, current, "test")
        .await
        .expect("write")
}

#[tokio::test]
async fn empty_stream_is_ready_at_once() {
    let server = NatsServer::start();
    let journal = open(&server).await;
    let view = View::start(&journal).await.expect("start view");
    assert!(view.is_ready());
    assert_eq!(view.tasks_len(), 0);
    let seq = put(&journal, &subjects::cluster("c"), &cluster("c")).await;
    assert!(view.wait_for(seq, WAIT).await);
    assert_eq!(view.cluster("c").expect("cluster").version, seq);
}

#[tokio::test]
async fn catches_up_then_follows_live_changes() {
    let server = NatsServer::start();
    let journal = open(&server).await;
    put(&journal, &subjects::cluster("c"), &cluster("c")).await;
    put(
        &journal,
        &subjects::instance("c", "i1"),
        &instance("c", "i1", InstanceStatus::Active),
    )
    .await;
    let t1 = subjects::task("c", "i1", "t1");
    put(
        &journal,
        &t1,
        &task("c", "i1", "t1", "web", TaskStatus::Pending),
    )
    .await;
    let t1_running = put(
        &journal,
        &t1,
        &task("c", "i1", "t1", "web", TaskStatus::Running),
    )
    .await;
    put(
        &journal,
        &subjects::task("c", "i1", "t2"),
        &task("c", "i1", "t2", "web", TaskStatus::Pending),
    )
    .await;
    // An undecodable record on a valid subject is skipped, not fatal.
    let garbage = journal
        .write_bytes(
            &subjects::task("c", "i1", "bad"),
            "not a record".into(),
            0,
            "test",
        )
        .await
        .expect("write garbage");

    let view = start(&journal).await;
    assert!(view.applied_sequence() >= garbage);
    assert!(view.task("c", "bad").is_none());
    let entry = view.task("c", "t1").expect("t1");
    assert_eq!(entry.task.version, t1_running);
    assert_eq!(entry.task.value.version, Some(t1_running));
    assert_eq!(entry.task.value.last_status, TaskStatus::Running);
    assert_eq!(
        view.counts("c"),
        ClusterCounts {
            registered_instances: 1,
            running_tasks: 1,
            pending_tasks: 1
        }
    );
    assert_eq!(view.instance_counts("c", "i1"), (1, 1));
    assert_eq!(task_ids(&view.tasks_on_instance("c", "i1")), ["t1", "t2"]);
    assert_eq!(view.tasks_len(), 2);
    assert_eq!(view.instances_len(), 1);
    assert_eq!(view.clusters_len(), 1);

    // Live: t2 runs, then t1 stops, then the instance drains.
    let t2 = subjects::task("c", "i1", "t2");
    let seq = put(
        &journal,
        &t2,
        &task("c", "i1", "t2", "web", TaskStatus::Running),
    )
    .await;
    assert!(view.wait_for(seq, WAIT).await);
    assert_eq!(view.counts("c").running_tasks, 2);
    assert_eq!(view.counts("c").pending_tasks, 0);
    let seq = put(
        &journal,
        &t1,
        &task("c", "i1", "t1", "web", TaskStatus::Stopped),
    )
    .await;
    assert!(view.wait_for(seq, WAIT).await);
    assert_eq!(view.instance_counts("c", "i1"), (1, 0));
    assert_eq!(
        view.task("c", "t1").expect("t1").task.value.last_status,
        TaskStatus::Stopped
    );
    let seq = put(
        &journal,
        &subjects::instance("c", "i1"),
        &instance("c", "i1", InstanceStatus::Draining),
    )
    .await;
    assert!(view.wait_for(seq, WAIT).await);
    let i1 = view.instance("c", "i1").expect("i1");
    assert_eq!(i1.value.status, InstanceStatus::Draining);
    assert_eq!(i1.value.version, Some(seq));
    assert_eq!(view.counts("c").registered_instances, 1);
    assert!(!view.wait_for(seq + 1000, Duration::from_millis(50)).await);
}

#[tokio::test]
async fn pages_and_filters_tasks() {
    let server = NatsServer::start();
    let journal = open(&server).await;
    let mut last = 0;
    for n in 0..250u32 {
        let id = format!("t{n:04}");
        let inst = format!("i{}", n % 3);
        let family = if n % 5 == 0 { "batch" } else { "web" };
        let mut t = task("c", &inst, &id, family, TaskStatus::Pending);
        if n % 2 == 0 {
            t.started_by = Some("svc".into());
        }
        if n % 7 == 0 {
            t.desired_status = TaskStatus::Stopped;
        }
        last = journal
            .write(&subjects::task("c", &inst, &id), &t, 0, "test")
            .await
            .expect("write");
    }
    let view = start(&journal).await;
    assert!(view.wait_for(last, WAIT).await);
    assert_eq!(view.tasks_len(), 250);
    assert_eq!(view.counts("c").pending_tasks, 250);

    let collect = |filter: &TaskFilter, limit: usize| {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        let mut pages = 0;
        loop {
            let page = view.page_tasks("c", filter, after.as_deref(), limit);
            pages += 1;
            assert!(page.items.len() <= limit);
            all.extend(task_ids(&page.items));
            match page.next {
                Some(next) => after = Some(next),
                None => return (all, pages),
            }
        }
    };
    let (all, pages) = collect(&TaskFilter::default(), 100);
    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..250).map(|n| format!("t{n:04}")).collect();
    assert_eq!(all, expected);
    let first = view.page_tasks("c", &TaskFilter::default(), None, 100);
    assert_eq!(first.next.as_deref(), Some("t0099"));

    let expect = |pred: &dyn Fn(u32) -> bool| -> Vec<String> {
        (0..250u32)
            .filter(|n| pred(*n))
            .map(|n| format!("t{n:04}"))
            .collect()
    };
    let by_instance = TaskFilter {
        instance_id: Some("i1".into()),
        ..Default::default()
    };
    assert_eq!(collect(&by_instance, 30).0, expect(&|n| n % 3 == 1));
    let by_family = TaskFilter {
        family: Some("batch".into()),
        ..Default::default()
    };
    assert_eq!(collect(&by_family, 7).0, expect(&|n| n % 5 == 0));
    let combined = TaskFilter {
        family: Some("web".into()),
        started_by: Some("svc".into()),
        desired_status: Some(TaskStatus::Running),
        group: Some("family:web".into()),
        ..Default::default()
    };
    assert_eq!(
        collect(&combined, 10).0,
        expect(&|n| n % 5 != 0 && n % 2 == 0 && n % 7 != 0)
    );
    let stopped = TaskFilter {
        desired_status: Some(TaskStatus::Stopped),
        instance_id: Some("i0".into()),
        ..Default::default()
    };
    assert_eq!(
        collect(&stopped, 5).0,
        expect(&|n| n % 7 == 0 && n % 3 == 0)
    );
    let nobody = TaskFilter {
        started_by: Some("nobody".into()),
        ..Default::default()
    };
    let page = view.page_tasks("c", &nobody, None, 10);
    assert!(page.items.is_empty() && page.next.is_none());
}

#[tokio::test]
async fn task_definitions_and_families() {
    let server = NatsServer::start();
    let journal = open(&server).await;
    use TaskDefinitionStatus::{Active, Inactive};
    for (family, revision, status) in [
        ("web", 1, Active),
        ("web", 2, Active),
        ("web", 10, Active),
        ("db", 1, Inactive),
        ("webhook", 1, Active),
    ] {
        put(
            &journal,
            &subjects::task_definition(family, revision),
            &definition(family, revision, status),
        )
        .await;
    }
    put(
        &journal,
        &subjects::task_definition_family("web"),
        &TaskDefinitionFamily {
            family: "web".into(),
            last_revision: 10,
            last_command_id: "cmd".into(),
        },
    )
    .await;
    let view = start(&journal).await;
    assert_eq!(
        view.latest_active_task_definition("web")
            .expect("latest")
            .value
            .revision,
        10
    );
    assert_eq!(view.family("web").expect("family").value.last_revision, 10);

    let seq = put(
        &journal,
        &subjects::task_definition("web", 10),
        &definition("web", 10, Inactive),
    )
    .await;
    assert!(view.wait_for(seq, WAIT).await);
    assert_eq!(
        view.latest_active_task_definition("web")
            .expect("latest")
            .value
            .revision,
        2
    );
    assert_eq!(
        view.task_definition("web", 10).expect("web:10").version,
        seq
    );

    let list = |prefix: Option<&str>,
                status: Option<TaskDefinitionStatus>,
                descending: bool,
                limit: usize| {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page =
                view.page_task_definitions(prefix, status, descending, after.as_deref(), limit);
            all.extend(
                page.items
                    .iter()
                    .map(|d| format!("{}:{}", d.value.family, d.value.revision)),
            );
            match page.next {
                Some(next) => after = Some(next),
                None => return all,
            }
        }
    };
    assert_eq!(
        list(None, None, false, 2),
        ["db:1", "web:1", "web:2", "web:10", "webhook:1"]
    );
    assert_eq!(
        list(None, None, true, 2),
        ["webhook:1", "web:10", "web:2", "web:1", "db:1"]
    );
    assert_eq!(
        list(Some("web"), Some(Active), false, 1),
        ["web:1", "web:2", "webhook:1"]
    );

    let families = |status| {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = view.page_families(None, status, after.as_deref(), 1);
            all.extend(page.items);
            match page.next {
                Some(next) => after = Some(next),
                None => return all,
            }
        }
    };
    assert_eq!(families(FamilyStatusFilter::All), ["db", "web", "webhook"]);
    assert_eq!(families(FamilyStatusFilter::Active), ["web", "webhook"]);
    assert_eq!(families(FamilyStatusFilter::Inactive), ["db"]);
}

#[tokio::test]
async fn recovers_after_a_server_restart() {
    let mut server = NatsServer::start();
    // Short request timeout: a write sent while the client reconnects is lost and times out.
    let journal = Journal::open(&JournalConfig {
        servers: vec![server.url()],
        request_timeout: Duration::from_secs(2),
        ..Default::default()
    })
    .await
    .expect("open journal");
    put(&journal, &subjects::cluster("c"), &cluster("c")).await;
    let view = start(&journal).await;
    server.restart();
    let seq = berth_testkit::wait_for("a write after the restart", WAIT, || async {
        // A write whose acknowledgement was lost may have landed: then it is there to read.
        match journal
            .write(&subjects::cluster("d"), &cluster("d"), 0, "test")
            .await
        {
            Ok(seq) => Some(seq),
            Err(e) if e.is_conflict() => journal
                .read_raw(&subjects::cluster("d"))
                .await
                .ok()
                .flatten()
                .map(|(_, version, _)| version),
            Err(_) => None,
        }
    })
    .await;
    assert!(view.wait_for(seq, WAIT).await);
    assert_eq!(view.clusters_len(), 2);
    assert!(view.cluster("d").is_some());
}

/// A record published without acknowledgement lands where the view says, and the
/// server still applies the expected-sequence check: a second creation of the same
/// subject writes nothing, and no landing reports it.
#[tokio::test]
async fn unacknowledged_creation_is_confirmed_by_the_view() {
    let server = NatsServer::start();
    let journal = open(&server).await;
    let view = start(&journal).await;
    let subject = subjects::task("c", "i-1", "t-1");
    let create = |last: TaskStatus, command: &'static str| {
        let record = task("c", "i-1", "t-1", "web", last);
        let payload = berth_messages::codec::encode_record(&record).expect("encode");
        // Registered before the publish, as a writer must.
        let landing = view.expect_landing(&subject);
        let published = journal.publish_unacknowledged(&subject, payload.into(), 0, None, command);
        async move {
            published.await.expect("publish");
            landing
        }
    };
    let landing = create(TaskStatus::Pending, "cmd-1").await;
    let version = landing
        .wait(WAIT)
        .await
        .expect("the view applies the record");
    let (_, read_version, command) = journal
        .read_raw(&subject)
        .await
        .expect("read")
        .expect("record");
    assert_eq!(read_version, version);
    assert_eq!(command.as_deref(), Some("cmd-1"));
    assert_eq!(
        view.task("c", "t-1").expect("in the view").task.version,
        version
    );

    // Expected sequence 0 on a subject that has a record: refused, silently.
    let refused = create(TaskStatus::Running, "cmd-2").await;
    // A later record on another subject proves the server has handled the refused one.
    let marker = put(&journal, &subjects::cluster("c"), &cluster("c")).await;
    assert!(view.wait_for(marker, WAIT).await);
    assert_eq!(refused.wait(Duration::from_millis(1)).await, None);
    let (_, after, command) = journal
        .read_raw(&subject)
        .await
        .expect("read")
        .expect("record");
    assert_eq!((after, command.as_deref()), (version, Some("cmd-1")));
    assert_eq!(
        view.task("c", "t-1")
            .expect("in the view")
            .task
            .value
            .last_status,
        TaskStatus::Pending
    );
}

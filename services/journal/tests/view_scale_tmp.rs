use berth_journal::view::{TaskFilter, View};
use berth_journal::{Journal, JournalConfig};
use berth_messages::arn::ArnScope;
use berth_messages::model::{Task, TaskStatus};
use berth_messages::{codec, subjects};
use berth_testkit::NatsServer;
use std::time::{Duration, Instant};

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale() {
    let n: usize = std::env::var("N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let server = NatsServer::start();
    let journal = Journal::open(&JournalConfig {
        servers: vec![server.url()],
        ..Default::default()
    })
    .await
    .unwrap();
    let scope = ArnScope::default();
    let js = journal.jetstream().clone();
    let t0 = Instant::now();
    let mut acks = Vec::new();
    let mut payload_bytes = 0usize;
    for i in 0..n {
        let id = format!("{:032x}", i as u128 * 2654435761);
        let inst = format!("i{}", i % 500);
        let t = Task {
            task_arn: scope.task("c", &id),
            cluster_arn: scope.cluster("c"),
            task_definition_arn: scope
                .task_definition(if i % 10 == 0 { "batch" } else { "web" }, 1),
            container_instance_arn: scope.container_instance("c", &inst),
            last_status: if i % 3 == 0 {
                TaskStatus::Pending
            } else {
                TaskStatus::Running
            },
            desired_status: TaskStatus::Running,
            group: "family:web".into(),
            started_by: Some("svc".into()),
            ..Default::default()
        };
        let p = codec::encode_record(&t).unwrap();
        payload_bytes += p.len();
        acks.push(
            js.publish(subjects::task("c", &inst, &id), p.into())
                .await
                .unwrap(),
        );
        if acks.len() >= 5000 {
            for a in acks.drain(..) {
                a.await.unwrap();
            }
        }
    }
    for a in acks.drain(..) {
        a.await.unwrap();
    }
    eprintln!(
        "wrote {n} in {:?}, avg payload {}",
        t0.elapsed(),
        payload_bytes / n
    );
    eprintln!("size_of Task {} TaskEntry {}", std::mem::size_of::<Task>(), std::mem::size_of::<berth_journal::view::TaskEntry>());
    let before = rss_kib();
    let recs: Vec<std::sync::Arc<Task>> = (0..n).map(|i| {
        let id = format!("{:032x}", i as u128 * 2654435761);
        let inst = format!("i{}", i % 500);
        std::sync::Arc::new(Task {
            task_arn: scope.task("c", &id),
            cluster_arn: scope.cluster("c"),
            task_definition_arn: scope.task_definition(if i % 10 == 0 { "batch" } else { "web" }, 1),
            container_instance_arn: scope.container_instance("c", &inst),
            group: "family:web".into(),
            started_by: Some("svc".into()),
            ..Default::default()
        })
    }).collect();
    let mid = rss_kib();
    eprintln!("records alone: {} bytes/task", (mid - before) * 1024 / n as u64);
    drop(recs);
    let before = rss_kib();
    let t0 = Instant::now();
    let view = View::start(&journal).await.unwrap();
    assert!(view.wait_ready(Duration::from_secs(600)).await);
    eprintln!("caught up in {:?}", t0.elapsed());
    let after = rss_kib();
    eprintln!(
        "rss delta {} KiB = {} bytes/task (incl. record)",
        after - before,
        (after - before) * 1024 / n as u64
    );
    assert_eq!(view.tasks_len(), n);
    eprintln!("counts {:?}", view.counts("c"));
    for (name, f) in [
        ("all", TaskFilter::default()),
        (
            "family batch",
            TaskFilter {
                family: Some("batch".into()),
                ..Default::default()
            },
        ),
        (
            "desired stopped",
            TaskFilter {
                desired_status: Some(TaskStatus::Stopped),
                ..Default::default()
            },
        ),
        (
            "instance",
            TaskFilter {
                instance_id: Some("i7".into()),
                ..Default::default()
            },
        ),
        (
            "batch+instance i3",
            TaskFilter {
                family: Some("batch".into()),
                instance_id: Some("i3".into()),
                ..Default::default()
            },
        ),
    ] {
        let t0 = Instant::now();
        let p = view.page_tasks("c", &f, None, 100);
        let p2 = view.page_tasks("c", &f, p.next.as_deref(), 100);
        eprintln!(
            "{name}: {} + {} items in {:?}",
            p.items.len(),
            p2.items.len(),
            t0.elapsed()
        );
    }
    let t0 = Instant::now();
    for _ in 0..10000 {
        let _ = view.task("c", &format!("{:032x}", 12345u128 * 2654435761));
    }
    eprintln!("10k point reads {:?}", t0.elapsed());
}

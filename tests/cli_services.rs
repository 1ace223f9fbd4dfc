//! `berth services` end to end: the CLI binary driven as a user would, against a real
//! nats-server, an in-process control plane and hollow hosts. A service is created and
//! scaled with `--wait stable` (exit 0 once its tasks run), described, its events and
//! deployments shown, another one created from an ECS CreateService JSON file, and both
//! deleted (`--force` needed while scaled above 0); the audit ends clean.

use berth_e2e::berth_testkit::wait_for;
use berth_e2e::*;
use serde_json::{json, Value};
use std::time::Duration;

/// Hollow tasks run for ten minutes: longer than the test.
const RUN_TIME: Duration = Duration::from_secs(600);

/// Runs `berth [--cluster <cluster>] <args>` against `url`.
async fn berth(url: &str, cluster: Option<&str>, args: &[&str]) -> CliRun {
    let mut all: Vec<&str> = Vec::new();
    if let Some(c) = cluster {
        all.extend(["--cluster", c]);
    }
    all.extend(args);
    run_berth(url, &all).await
}

fn running(tasks: &[Value]) -> usize {
    tasks
        .iter()
        .filter(|t| t["lastStatus"] == "RUNNING")
        .count()
}

/// The whitespace-separated cells of the table row that starts with `first`.
fn row<'a>(table: &'a str, first: &str) -> Vec<&'a str> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&first))
        .unwrap_or_else(|| panic!("no row {first} in:\n{table}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn services_through_the_cli() {
    let b = Berth::start().await;
    let url = b.url();
    let api = &b.api;
    let c = Some("c");
    berth(&url, None, &["clusters", "create", "c"]).await.ok();
    let _sim = berth_sim::start(sim_config(&url, "c", 4, RUN_TIME))
        .await
        .expect("sim starts");
    let files = TempDir::new("cli-services");
    let td = files.file(
        "web.json",
        r#"{"family": "web", "containerDefinitions": [
             {"name": "app", "image": "busybox", "cpu": 128, "memory": 128,
              "essential": true, "command": ["sleep", "3600"]}]}"#,
    );
    berth(&url, c, &["task-definitions", "register", &td])
        .await
        .ok();

    // Created and waited for: it exits 0 once both tasks run, showing its progress.
    let created = berth(
        &url,
        c,
        &[
            "services",
            "create",
            "web",
            "--task-definition",
            "web",
            "--desired-count",
            "2",
            "--wait",
            "stable",
            "--timeout",
            "60",
        ],
    )
    .await
    .ok();
    assert_eq!(
        row(&created.stdout, "web"),
        ["web", "ACTIVE", "2", "2", "0", "web:1", "COMPLETED"],
        "{}",
        created.stdout
    );
    assert!(
        created.stderr.contains("service web: PRIMARY web:1 ")
            && created.stderr.contains("has reached a steady state"),
        "progress on stderr:\n{}",
        created.stderr
    );
    let tasks = service_tasks(api, "c", "web").await;
    assert_eq!(tasks.len(), 2, "{tasks:?}");
    assert_eq!(running(&tasks), 2, "{tasks:?}");

    // Scaled and waited for.
    berth(
        &url,
        c,
        &["services", "scale", "web", "3", "--wait", "stable"],
    )
    .await
    .ok();
    assert_eq!(running(&service_tasks(api, "c", "web").await), 3);
    let described = berth(
        &url,
        c,
        &["services", "describe", "web", "--output", "json"],
    )
    .await
    .ok()
    .json();
    let s = &described["services"][0];
    assert_eq!(s["serviceName"], "web");
    assert_eq!(s["desiredCount"], 3);
    assert_eq!(s["runningCount"], 3);
    assert_eq!(s["deployments"][0]["rolloutState"], "COMPLETED");
    assert_eq!(described["failures"], json!([]));
    let table = berth(&url, c, &["services", "describe", "web"]).await.ok();
    assert_eq!(
        row(&table.stdout, "web"),
        ["web", "ACTIVE", "3", "3", "0", "web:1", "COMPLETED"]
    );

    let events = berth(&url, c, &["services", "events", "web"]).await.ok();
    assert!(events.stdout.starts_with("TIME"), "{}", events.stdout);
    assert!(
        events
            .stdout
            .lines()
            .nth(1)
            .is_some_and(|l| l.ends_with("(service web) has reached a steady state.")),
        "newest first:\n{}",
        events.stdout
    );
    let one = berth(&url, c, &["services", "events", "web", "--limit", "1"])
        .await
        .ok();
    assert_eq!(one.stdout.lines().count(), 2, "{}", one.stdout);
    let deployments = berth(&url, c, &["services", "deployments", "web"])
        .await
        .ok();
    let d = row(
        &deployments.stdout,
        s["deployments"][0]["id"].as_str().expect("id"),
    );
    assert_eq!(
        &d[1..8],
        ["PRIMARY", "web:1", "3", "3", "0", "0", "COMPLETED"]
    );

    // A rolling deployment of a new revision, followed to the end.
    berth(&url, c, &["task-definitions", "register", &td])
        .await
        .ok();
    let updated = berth(
        &url,
        c,
        &[
            "services",
            "update",
            "web",
            "--task-definition",
            "web:2",
            "--wait",
            "stable",
        ],
    )
    .await
    .ok();
    assert_eq!(
        row(&updated.stdout, "web"),
        ["web", "ACTIVE", "3", "3", "0", "web:2", "COMPLETED"]
    );
    assert!(
        updated.stderr.contains("ACTIVE web:1"),
        "both deployments shown while rolling:\n{}",
        updated.stderr
    );
    let tasks = service_tasks(api, "c", "web").await;
    assert_eq!(running(&tasks), 3);
    assert!(tasks.iter().all(|t| t["taskDefinitionArn"]
        .as_str()
        .is_some_and(|a| a.ends_with("web:2"))));

    // A second service from an ECS CreateService body; its cluster wins over --cluster.
    let bad = files.file(
        "bad.json",
        "{\"cluster\": \"c\", \"serviceName\": \"api\",\n \"desiredCont\": 1}",
    );
    let refused = berth(
        &url,
        None,
        &["services", "create", "--cli-input-json", &bad],
    )
    .await
    .fails();
    assert!(
        refused
            .stderr
            .contains(&format!("{bad}:2: unknown field \"desiredCont\""))
            && refused.stderr.contains("did you mean \"desiredCount\"?"),
        "{}",
        refused.stderr
    );
    let body = files.file(
        "api.json",
        r#"{"cluster": "c", "serviceName": "api", "taskDefinition": "web:1",
            "desiredCount": 1, "schedulingStrategy": "REPLICA",
            "deploymentConfiguration": {"maximumPercent": 200, "minimumHealthyPercent": 0},
            "placementStrategy": [{"type": "spread", "field": "instanceId"}]}"#,
    );
    let from_file = berth(
        &url,
        None,
        &[
            "services",
            "create",
            "--cli-input-json",
            &body,
            "--wait",
            "stable",
            "--output",
            "json",
        ],
    )
    .await
    .ok()
    .json();
    let s = &from_file["service"];
    assert_eq!(s["serviceName"], "api");
    assert_eq!(s["runningCount"], 1);
    assert_eq!(s["deploymentConfiguration"]["minimumHealthyPercent"], 0);
    assert_eq!(s["placementStrategy"][0]["field"], "instanceId");
    assert!(s["clusterArn"]
        .as_str()
        .is_some_and(|a| a.ends_with(":cluster/c")));
    assert_eq!(running(&service_tasks(api, "c", "api").await), 1);
    let listed = berth(&url, c, &["services", "list", "--output", "json"])
        .await
        .ok()
        .json();
    let arns: Vec<&str> = listed["serviceArns"]
        .as_array()
        .expect("serviceArns")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(arns.len(), 2, "{arns:?}");
    let table = berth(&url, c, &["services", "list"]).await.ok();
    assert_eq!(row(&table.stdout, "api")[2], "1");
    assert_eq!(row(&table.stdout, "web")[2], "3");

    // Errors a person can act on.
    let missing = berth(&url, c, &["services", "describe", "nope"])
        .await
        .fails();
    assert!(
        missing
            .stderr
            .contains("service nope not found in cluster c"),
        "{}",
        missing.stderr
    );
    let missing = berth(&url, c, &["services", "scale", "nope", "1"])
        .await
        .fails();
    assert!(
        missing.stderr.contains("service nope not found"),
        "{}",
        missing.stderr
    );

    // Deleted: refused while scaled above 0 unless forced.
    let refused = berth(&url, c, &["services", "delete", "web"]).await.fails();
    assert!(
        refused.stderr.contains("scaled above 0") && refused.stderr.contains("--force"),
        "{}",
        refused.stderr
    );
    assert_eq!(running(&service_tasks(api, "c", "web").await), 3);
    let deleted = berth(&url, c, &["services", "delete", "web", "--force"])
        .await
        .ok();
    assert!(
        deleted.stdout.starts_with("service web is DRAINING"),
        "{}",
        deleted.stdout
    );
    berth(
        &url,
        c,
        &["services", "scale", "api", "0", "--wait", "stable"],
    )
    .await
    .ok();
    berth(&url, c, &["services", "delete", "api"]).await.ok();
    for name in ["web", "api"] {
        wait_for(
            &format!("service {name} INACTIVE"),
            PATIENCE,
            || async move {
                let r = api
                    .call_json(
                        "DescribeServices",
                        json!({"cluster": "c", "services": [name]}),
                    )
                    .await
                    .ok()?;
                (r["services"][0]["status"] == "INACTIVE").then_some(())
            },
        )
        .await;
    }
    assert!(service_tasks(api, "c", "web").await.is_empty());
    let gone = berth(
        &url,
        c,
        &["services", "update", "web", "--desired-count", "1"],
    )
    .await
    .fails();
    assert!(
        gone.stderr.contains("service web is not ACTIVE"),
        "{}",
        gone.stderr
    );
    assert_audit_clean(&url).await;
}

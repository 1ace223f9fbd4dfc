//! Placement strategies and constraints end to end: binpack, spread over zones,
//! distinctInstance, memberOf, ListContainerInstances filters and their bad input.

use berth_e2e::*;
use serde_json::{json, Value};
use std::collections::HashMap;

/// A cluster with `zones.len()` instances, each in its zone, with heartbeats.
async fn cluster_with(api: &Api, name: &str, specs: &[(&str, i64)]) -> (Vec<String>, Heartbeats) {
    create_cluster(api, name).await;
    let mut ids = Vec::new();
    for (zone, memory) in specs {
        let attrs = json!([{"name": "ecs.availability-zone", "value": zone}, {"name": "tier", "value": if *memory > 2000 { "big" } else { "small" }}]);
        ids.push(register_instance(api, name, 8192, *memory, attrs).await);
    }
    let beats = Heartbeats::start(api.client.clone(), name, ids.clone());
    (ids, beats)
}

fn instance_of(task: &Value) -> String {
    id_of(task["containerInstanceArn"].as_str().expect("instance arn"))
}

async fn run(api: &Api, req: Value) -> Value {
    api.call_json("RunTask", req).await.expect("RunTask")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binpack_fills_the_fullest_instance_first() {
    let berth = Berth::start().await;
    let api = &berth.api;
    let (ids, _beats) = cluster_with(api, "bp", &[("a", 1024), ("a", 4096), ("a", 2048)]).await;
    register_task_definition(api, "w", 10, 256, None).await;
    let strategy = json!([{"type": "binpack", "field": "memory"}]);
    // The 1024 MiB instance is the fullest that fits: it takes 4 tasks, then the 2048 one.
    let mut order = Vec::new();
    for _ in 0..6 {
        let r = run(
            api,
            json!({"cluster": "bp", "taskDefinition": "w", "placementStrategy": strategy}),
        )
        .await;
        order.push(instance_of(&r["tasks"][0]));
    }
    assert_eq!(
        order[..4],
        [
            ids[0].clone(),
            ids[0].clone(),
            ids[0].clone(),
            ids[0].clone()
        ]
    );
    assert_eq!(order[4..], [ids[2].clone(), ids[2].clone()]);
    assert_audit_clean(&berth.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spread_over_zones_is_balanced_within_one_task() {
    let berth = Berth::start().await;
    let api = &berth.api;
    let specs = [
        ("z1", 8192),
        ("z1", 8192),
        ("z2", 8192),
        ("z3", 8192),
        ("z3", 8192),
        ("z3", 8192),
    ];
    let (ids, _beats) = cluster_with(api, "sp", &specs).await;
    let zone_of: HashMap<String, &str> =
        ids.iter().cloned().zip(specs.iter().map(|s| s.0)).collect();
    register_task_definition(api, "s", 10, 64, None).await;
    let strategy = json!([{"type": "spread", "field": "attribute:ecs.availability-zone"}, {"type": "binpack", "field": "memory"}]);
    let mut per_zone: HashMap<&str, i32> = HashMap::new();
    for round in 0..5 {
        let r = run(api, json!({"cluster": "sp", "taskDefinition": "s", "count": 5, "group": "g", "placementStrategy": strategy})).await;
        assert_eq!(
            r["tasks"].as_array().map_or(0, Vec::len),
            5,
            "round {round}: {r}"
        );
        for t in r["tasks"].as_array().into_iter().flatten() {
            *per_zone.entry(zone_of[&instance_of(t)]).or_default() += 1;
        }
        let max = per_zone.values().max().copied().unwrap_or(0);
        let min = ["z1", "z2", "z3"]
            .iter()
            .map(|z| per_zone.get(z).copied().unwrap_or(0))
            .min()
            .unwrap_or(0);
        assert!(
            max - min <= 1,
            "unbalanced after round {round}: {per_zone:?}"
        );
    }
    assert_audit_clean(&berth.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_instance_and_member_of() {
    let berth = Berth::start().await;
    let api = &berth.api;
    let (ids, _beats) = cluster_with(api, "dc", &[("a", 1024), ("b", 4096), ("c", 4096)]).await;
    register_task_definition(api, "d", 10, 64, None).await;
    // distinctInstance: three tasks land on three hosts, a fourth fails.
    let r = run(
        api,
        json!({"cluster": "dc", "taskDefinition": "d", "count": 4, "group": "one-per-host",
        "placementConstraints": [{"type": "distinctInstance"}]}),
    )
    .await;
    let hosts: Vec<String> = r["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(instance_of)
        .collect();
    let mut unique = hosts.clone();
    unique.sort();
    unique.dedup();
    assert_eq!((hosts.len(), unique.len()), (3, 3), "{r}");
    assert_eq!(r["failures"][0]["reason"], "ATTRIBUTE", "{r}");
    let again = run(
        api,
        json!({"cluster": "dc", "taskDefinition": "d", "group": "one-per-host",
        "placementConstraints": [{"type": "distinctInstance"}]}),
    )
    .await;
    assert!(again["tasks"].as_array().unwrap().is_empty(), "{again}");
    // memberOf narrows to big instances in zone b or c, never the small one.
    for _ in 0..6 {
        let r = run(api, json!({"cluster": "dc", "taskDefinition": "d",
            "placementConstraints": [{"type": "memberOf", "expression": "attribute:tier == big and attribute:ecs.availability-zone in [b, c]"}]})).await;
        let host = instance_of(&r["tasks"][0]);
        assert_ne!(host, ids[0], "memberOf must exclude the small instance");
    }
    let none = run(api, json!({"cluster": "dc", "taskDefinition": "d",
        "placementConstraints": [{"type": "memberOf", "expression": "attribute:ecs.availability-zone == nowhere"}]})).await;
    assert_eq!(none["failures"][0]["reason"], "ATTRIBUTE", "{none}");
    // ListContainerInstances filter in the same language.
    let listed = api
        .call_json(
            "ListContainerInstances",
            json!({"cluster": "dc", "filter": "attribute:tier == small"}),
        )
        .await
        .unwrap();
    let arns: Vec<String> = listed["containerInstanceArns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| id_of(a.as_str().unwrap()))
        .collect();
    assert_eq!(arns, vec![ids[0].clone()]);
    let grouped = api
        .call_json(
            "ListContainerInstances",
            json!({"cluster": "dc", "filter": "task:group == one-per-host"}),
        )
        .await
        .unwrap();
    assert_eq!(
        grouped["containerInstanceArns"].as_array().unwrap().len(),
        3
    );
    assert_audit_clean(&berth.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_placement_input_is_refused_and_writes_nothing() {
    let berth = Berth::start().await;
    let api = &berth.api;
    let (_ids, _beats) = cluster_with(api, "bad", &[("a", 1024)]).await;
    register_task_definition(api, "b", 10, 64, None).await;
    let journal = berth_journal::Journal::open(&berth_journal::JournalConfig {
        servers: vec![berth.url()],
        ..Default::default()
    })
    .await
    .expect("journal");
    let before = journal.state_last_sequence().await.unwrap();
    let cases = [
        json!({"placementConstraints": [{"type": "memberOf", "expression": "attribute:x === y"}]}),
        json!({"placementConstraints": [{"type": "memberOf", "expression": "attribute:x == a and"}]}),
        json!({"placementConstraints": [{"type": "distinctInstance", "expression": "attribute:x == a"}]}),
        json!({"placementConstraints": [{"type": "sameHost"}]}),
        json!({"placementStrategy": [{"type": "pack", "field": "memory"}]}),
        json!({"placementStrategy": [{"type": "binpack", "field": "disk"}]}),
        json!({"placementStrategy": (0..6).map(|_| json!({"type": "random"})).collect::<Vec<_>>()}),
        json!({"placementConstraints": (0..11).map(|_| json!({"type": "distinctInstance"})).collect::<Vec<_>>()}),
    ];
    for case in cases {
        let mut req = json!({"cluster": "bad", "taskDefinition": "b"});
        for (k, v) in case.as_object().unwrap() {
            req[k] = v.clone();
        }
        let err = api
            .call_json("RunTask", req.clone())
            .await
            .expect_err("refused");
        assert_eq!(
            err.error_type.as_str(),
            "InvalidParameterException",
            "{req}: {err}"
        );
    }
    let err = api
        .call_json(
            "ListContainerInstances",
            json!({"cluster": "bad", "filter": "attribute:x == a or"}),
        )
        .await
        .expect_err("bad filter");
    assert_eq!(err.error_type.as_str(), "InvalidParameterException");
    assert!(err.message.contains("position"), "{err}");
    assert_eq!(
        journal.state_last_sequence().await.unwrap(),
        before,
        "nothing written"
    );
}

//! Container instances end to end against a real nats-server: registration and
//! re-registration, describe and list (status filter, paging), ACTIVE/DRAINING, custom
//! attributes, deregistration, and agent liveness (one journal write per flip, right
//! again on a fresh control-plane replica).

use berth_e2e::berth_testkit::wait_for;
use berth_e2e::*;
use berth_messages::{streams, subjects, ApiError, ErrorType};
use futures::StreamExt;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

const ARN_PREFIX: &str = "arn:aws:ecs:us-test-1:123456789012:";

fn instance_arn(cluster: &str, id: &str) -> String {
    format!("{ARN_PREFIX}container-instance/{cluster}/{id}")
}

fn expect_error(result: Result<Value, ApiError>, expected: ErrorType) -> ApiError {
    match result {
        Ok(v) => panic!("expected {expected}, got a success: {v}"),
        Err(e) => {
            assert_eq!(e.error_type, expected, "{e}");
            assert!(!e.message.is_empty(), "error without a message");
            e
        }
    }
}

async fn journal(url: &str) -> berth_journal::Journal {
    berth_journal::Journal::open(&berth_journal::JournalConfig {
        servers: vec![url.to_string()],
        ..Default::default()
    })
    .await
    .expect("journal opens")
}

async fn state_last_sequence(url: &str) -> u64 {
    journal(url)
        .await
        .state_last_sequence()
        .await
        .expect("stream info")
}

/// How many records the journal holds on one subject.
async fn records_on(journal: &berth_journal::Journal, subject: &str) -> usize {
    let stream = journal
        .jetstream()
        .get_stream(streams::STATE)
        .await
        .expect("state stream");
    let mut counts = stream
        .info_with_subjects(subject)
        .await
        .expect("stream info with subjects");
    let mut total = 0;
    while let Some(entry) = counts.next().await {
        let (s, n) = entry.expect("subject count");
        if s == subject {
            total += n;
        }
    }
    total
}

fn resource<'a>(resources: &'a Value, name: &str) -> &'a Value {
    resources
        .as_array()
        .expect("resources")
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {resources}"))
}

fn string_set(resource: &Value) -> Vec<String> {
    resource
        .get("stringSetValue")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().expect("string").to_string())
                .collect()
        })
        .unwrap_or_default()
}

async fn describe(api: &Api, cluster: &str, id: &str) -> Value {
    let reply = api
        .call_json(
            "DescribeContainerInstances",
            json!({"cluster": cluster, "containerInstances": [id]}),
        )
        .await
        .expect("DescribeContainerInstances");
    assert_eq!(reply["failures"], json!([]), "{reply}");
    reply["containerInstances"][0].clone()
}

async fn list_instances(api: &Api, req: Value) -> BTreeSet<String> {
    let reply = api
        .call_json("ListContainerInstances", req)
        .await
        .expect("ListContainerInstances");
    assert!(reply.get("nextToken").is_none(), "{reply}");
    reply["containerInstanceArns"]
        .as_array()
        .expect("arns")
        .iter()
        .map(|a| id_of(a.as_str().expect("arn")))
        .collect()
}

async fn set_state(api: &Api, cluster: &str, ids: &[&str], status: &str) -> Value {
    api.call_json(
        "UpdateContainerInstancesState",
        json!({"cluster": cluster, "containerInstances": ids, "status": status}),
    )
    .await
    .expect("UpdateContainerInstancesState")
}

fn is_instance_id(id: &str) -> bool {
    id.len() == 32
        && id
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_describe_and_reregister() {
    let berth = Berth::start().await;
    let api = &berth.api;
    create_cluster(api, "c1").await;

    let reply = api
        .call_json(
            "RegisterContainerInstance",
            json!({
                "cluster": "c1",
                "totalResources": [
                    {"name": "CPU", "type": "INTEGER", "integerValue": 1024},
                    {"name": "MEMORY", "type": "INTEGER", "integerValue": 2048},
                    {"name": "PORTS", "type": "STRINGSET", "stringSetValue": ["2376", "22"]},
                    {"name": "PORTS_UDP", "type": "STRINGSET", "stringSetValue": ["53"]}
                ],
                "versionInfo": {"agentVersion": "1.2.3"},
                "attributes": [{"name": "stack", "value": "prod"}, {"name": "has-gpu"}],
            }),
        )
        .await
        .expect("RegisterContainerInstance");
    let ci = &reply["containerInstance"];
    let arn = ci["containerInstanceArn"]
        .as_str()
        .expect("arn")
        .to_string();
    let id = id_of(&arn);
    assert!(is_instance_id(&id), "{arn}");
    assert_eq!(arn, instance_arn("c1", &id));
    assert_eq!(ci["status"], "ACTIVE");
    assert_eq!(ci["agentConnected"], true);
    assert_eq!(ci["versionInfo"]["agentVersion"], "1.2.3");
    assert_eq!(ci["runningTasksCount"], 0);
    assert_eq!(ci["pendingTasksCount"], 0);
    let registered = &ci["registeredResources"];
    assert_eq!(resource(registered, "CPU")["integerValue"], 1024);
    assert_eq!(resource(registered, "MEMORY")["integerValue"], 2048);
    assert_eq!(string_set(resource(registered, "PORTS")), ["22", "2376"]);
    assert_eq!(string_set(resource(registered, "PORTS_UDP")), ["53"]);
    let remaining = &ci["remainingResources"];
    assert_eq!(resource(remaining, "CPU")["integerValue"], 1024);
    assert_eq!(resource(remaining, "MEMORY")["integerValue"], 2048);
    assert_eq!(string_set(resource(remaining, "PORTS")), ["22", "2376"]);
    assert_eq!(string_set(resource(remaining, "PORTS_UDP")), ["53"]);
    let attributes = ci["attributes"].as_array().expect("attributes");
    assert!(
        attributes
            .iter()
            .any(|a| a["name"] == "stack" && a["value"] == "prod"),
        "{ci}"
    );
    assert!(attributes.iter().any(|a| a["name"] == "has-gpu"), "{ci}");

    // Describe agrees with the registration reply, by id or by ARN.
    for reference in [id.as_str(), arn.as_str()] {
        let d = describe(api, "c1", reference).await;
        assert_eq!(d["containerInstanceArn"], arn);
        assert_eq!(d["registeredResources"], ci["registeredResources"]);
        assert_eq!(d["remainingResources"], ci["remainingResources"]);
        assert_eq!(d["status"], "ACTIVE");
    }

    // An agent that kept its identity re-registers as the same instance.
    let reply = api
        .call_json(
            "RegisterContainerInstance",
            json!({
                "cluster": "c1",
                "containerInstanceArn": arn,
                "totalResources": [
                    {"name": "CPU", "type": "INTEGER", "integerValue": 4096},
                    {"name": "MEMORY", "type": "INTEGER", "integerValue": 8192}
                ],
                "versionInfo": {"agentVersion": "1.2.4"},
            }),
        )
        .await
        .expect("re-registration");
    let again = &reply["containerInstance"];
    assert_eq!(again["containerInstanceArn"], arn);
    assert_eq!(again["status"], "ACTIVE");
    assert_eq!(again["versionInfo"]["agentVersion"], "1.2.4");
    assert_eq!(
        resource(&again["registeredResources"], "CPU")["integerValue"],
        4096
    );
    assert_eq!(
        resource(&again["remainingResources"], "MEMORY")["integerValue"],
        8192
    );
    assert_eq!(
        list_instances(api, json!({"cluster": "c1"})).await,
        BTreeSet::from([id.clone()])
    );

    // Unknown instances are failures with reason MISSING, not errors.
    let unknown = "0123456789abcdef0123456789abcdef";
    let reply = api
        .call_json(
            "DescribeContainerInstances",
            json!({"cluster": "c1", "containerInstances": [id, unknown, instance_arn("c1", "feedface")]}),
        )
        .await
        .expect("DescribeContainerInstances");
    assert_eq!(
        reply["containerInstances"].as_array().map(Vec::len),
        Some(1)
    );
    let failures = reply["failures"].as_array().expect("failures");
    assert_eq!(failures.len(), 2, "{reply}");
    assert_eq!(failures[0]["arn"], instance_arn("c1", unknown));
    assert_eq!(failures[0]["reason"], "MISSING");
    assert_eq!(failures[1]["arn"], instance_arn("c1", "feedface"));
    assert_eq!(failures[1]["reason"], "MISSING");

    // A second registration without an ARN is a second instance.
    let other = register_instance(api, "c1", 512, 512, json!([])).await;
    assert_ne!(other, id);
    assert!(is_instance_id(&other));
    assert_eq!(
        list_instances(api, json!({"cluster": "c1"})).await,
        BTreeSet::from([id, other])
    );
    assert_audit_clean(&berth.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_cluster_is_refused_on_every_instance_action() {
    let berth = Berth::start().await;
    let api = &berth.api;
    create_cluster(api, "c1").await;
    let id = register_instance(api, "c1", 512, 512, json!([])).await;
    let _beats = Heartbeats::start(api.client.clone(), "c1", vec![id.clone()]);
    let before = state_last_sequence(&berth.url()).await;
    let requests = [
        (
            "RegisterContainerInstance",
            json!({"cluster": "nope", "totalResources": [
                {"name": "CPU", "type": "INTEGER", "integerValue": 1},
                {"name": "MEMORY", "type": "INTEGER", "integerValue": 1}]}),
        ),
        (
            "DescribeContainerInstances",
            json!({"cluster": "nope", "containerInstances": [id]}),
        ),
        ("ListContainerInstances", json!({"cluster": "nope"})),
        (
            "UpdateContainerInstancesState",
            json!({"cluster": "nope", "containerInstances": [id], "status": "DRAINING"}),
        ),
        (
            "DeregisterContainerInstance",
            json!({"cluster": "nope", "containerInstance": id, "force": true}),
        ),
        (
            "PutAttributes",
            json!({"cluster": "nope", "attributes": [{"name": "a", "value": "b", "targetId": id}]}),
        ),
        (
            "DeleteAttributes",
            json!({"cluster": "nope", "attributes": [{"name": "a", "targetId": id}]}),
        ),
        (
            "ListAttributes",
            json!({"cluster": "nope", "targetType": "container-instance"}),
        ),
    ];
    for (action, req) in requests {
        let e = expect_error(
            api.call_json(action, req).await,
            ErrorType::ClusterNotFoundException,
        );
        assert!(e.message.contains("nope"), "{action}: {e}");
    }
    // Without a cluster the default cluster is meant, and it does not exist either.
    expect_error(
        api.call_json("ListContainerInstances", json!({})).await,
        ErrorType::ClusterNotFoundException,
    );
    assert_eq!(state_last_sequence(&berth.url()).await, before);
    assert_eq!(describe(api, "c1", &id).await["status"], "ACTIVE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_instances_filters_by_status_and_pages() {
    let berth = Berth::start().await;
    let api = &berth.api;
    create_cluster(api, "c1").await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(register_instance(api, "c1", 512, 512, json!([])).await);
    }
    let _beats = Heartbeats::start(api.client.clone(), "c1", ids.clone());
    let reply = set_state(api, "c1", &[&ids[0], &ids[1]], "DRAINING").await;
    assert_eq!(reply["failures"], json!([]));
    for ci in reply["containerInstances"].as_array().expect("instances") {
        assert_eq!(ci["status"], "DRAINING");
    }

    let all: BTreeSet<String> = ids.iter().cloned().collect();
    let draining: BTreeSet<String> = ids[..2].iter().cloned().collect();
    let active: BTreeSet<String> = ids[2..].iter().cloned().collect();
    assert_eq!(list_instances(api, json!({"cluster": "c1"})).await, all);
    assert_eq!(
        list_instances(api, json!({"cluster": "c1", "status": "ACTIVE"})).await,
        active
    );
    assert_eq!(
        list_instances(api, json!({"cluster": "c1", "status": "DRAINING"})).await,
        draining
    );

    // Pages of two: 2, 2, 1, every instance once.
    for filter in [json!(null), json!("ACTIVE")] {
        let mut seen = Vec::new();
        let mut pages = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut req = json!({"cluster": "c1", "maxResults": 2});
            if !filter.is_null() {
                req["status"] = filter.clone();
            }
            if let Some(t) = &token {
                req["nextToken"] = json!(t);
            }
            let reply = api
                .call_json("ListContainerInstances", req)
                .await
                .expect("page");
            let arns = reply["containerInstanceArns"].as_array().expect("arns");
            pages.push(arns.len());
            seen.extend(arns.iter().map(|a| id_of(a.as_str().expect("arn"))));
            match reply.get("nextToken").and_then(Value::as_str) {
                Some(t) => token = Some(t.to_string()),
                None => break,
            }
            assert!(pages.len() <= 3, "too many pages: {pages:?}");
        }
        let unique: BTreeSet<String> = seen.iter().cloned().collect();
        assert_eq!(unique.len(), seen.len(), "listed twice: {seen:?}");
        if filter.is_null() {
            assert_eq!(pages, [2, 2, 1]);
            assert_eq!(unique, all);
        } else {
            assert_eq!(pages, [2, 1]);
            assert_eq!(unique, active);
        }
    }

    for bad in [
        json!({"maxResults": 0}),
        json!({"maxResults": 101}),
        json!({"nextToken": "garbage"}),
        json!({"status": "BOGUS"}),
    ] {
        let mut req = bad.clone();
        req["cluster"] = json!("c1");
        expect_error(
            api.call_json("ListContainerInstances", req).await,
            ErrorType::InvalidParameterException,
        );
    }
    assert_audit_clean(&berth.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_instances_take_no_new_tasks() {
    let berth = Berth::start().await;
    let api = &berth.api;
    create_cluster(api, "c1").await;
    let i1 = register_instance(api, "c1", 2048, 2048, json!([])).await;
    let i2 = register_instance(api, "c1", 2048, 2048, json!([])).await;
    let _beats = Heartbeats::start(api.client.clone(), "c1", vec![i1.clone(), i2.clone()]);
    register_task_definition(api, "web", 128, 128, None).await;

    // ACTIVE -> DRAINING
    let reply = set_state(api, "c1", &[&i1], "DRAINING").await;
    assert_eq!(reply["failures"], json!([]));
    assert_eq!(reply["containerInstances"][0]["status"], "DRAINING");
    assert_eq!(
        reply["containerInstances"][0]["containerInstanceArn"],
        instance_arn("c1", &i1)
    );
    assert_eq!(describe(api, "c1", &i1).await["status"], "DRAINING");

    let reply = api
        .call_json(
            "RunTask",
            json!({"cluster": "c1", "taskDefinition": "web", "count": 6}),
        )
        .await
        .expect("RunTask");
    assert_eq!(reply["failures"], json!([]), "{reply}");
    let tasks = reply["tasks"].as_array().expect("tasks");
    assert_eq!(tasks.len(), 6);
    for t in tasks {
        assert_eq!(
            t["containerInstanceArn"],
            instance_arn("c1", &i2),
            "a task was placed on the DRAINING instance"
        );
    }

    // With every instance draining, nothing is placed.
    set_state(api, "c1", &[&i2], "DRAINING").await;
    let reply = api
        .call_json(
            "RunTask",
            json!({"cluster": "c1", "taskDefinition": "web", "count": 1}),
        )
        .await
        .expect("RunTask");
    assert_eq!(reply["tasks"], json!([]), "{reply}");
    assert_eq!(reply["failures"][0]["reason"], "INACTIVE", "{reply}");

    // DRAINING -> ACTIVE: placement resumes.
    let reply = set_state(api, "c1", &[&i1, &instance_arn("c1", &i2)], "ACTIVE").await;
    assert_eq!(reply["failures"], json!([]));
    for ci in reply["containerInstances"].as_array().expect("instances") {
        assert_eq!(ci["status"], "ACTIVE");
    }
    let reply = api
        .call_json(
            "RunTask",
            json!({"cluster": "c1", "taskDefinition": "web", "count": 1}),
        )
        .await
        .expect("RunTask");
    assert_eq!(reply["tasks"].as_array().map(Vec::len), Some(1), "{reply}");

    // Only ACTIVE and DRAINING may be asked for; nothing is written otherwise.
    let before = state_last_sequence(&berth.url()).await;
    for status in ["INACTIVE", "REGISTERING", "DEREGISTERING", "BOGUS"] {
        expect_error(
            api.call_json(
                "UpdateContainerInstancesState",
                json!({"cluster": "c1", "containerInstances": [i1], "status": status}),
            )
            .await,
            ErrorType::InvalidParameterException,
        );
    }
    let eleven: Vec<String> = (0..11).map(|_| i1.clone()).collect();
    expect_error(
        api.call_json(
            "UpdateContainerInstancesState",
            json!({"cluster": "c1", "containerInstances": eleven, "status": "DRAINING"}),
        )
        .await,
        ErrorType::InvalidParameterException,
    );
    assert_eq!(state_last_sequence(&berth.url()).await, before);

    // An unknown instance is a failure with reason MISSING; the known one changes.
    let unknown = "0123456789abcdef0123456789abcdef";
    let reply = set_state(api, "c1", &[&i1, unknown], "DRAINING").await;
    assert_eq!(
        reply["containerInstances"].as_array().map(Vec::len),
        Some(1)
    );
    assert_eq!(reply["containerInstances"][0]["status"], "DRAINING");
    assert_eq!(reply["failures"][0]["arn"], instance_arn("c1", unknown));
    assert_eq!(reply["failures"][0]["reason"], "MISSING");
    assert_audit_clean(&berth.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attributes_put_list_delete() {
    let berth = Berth::start().await;
    let api = &berth.api;
    create_cluster(api, "c1").await;
    let i1 = register_instance(api, "c1", 512, 512, json!([])).await;
    let i2 = register_instance(api, "c1", 512, 512, json!([])).await;
    let _beats = Heartbeats::start(api.client.clone(), "c1", vec![i1.clone(), i2.clone()]);

    let reply = api
        .call_json(
            "PutAttributes",
            json!({"cluster": "c1", "attributes": [
                {"name": "color", "value": "red", "targetId": i1},
                {"name": "color", "value": "blue", "targetId": instance_arn("c1", &i2)},
                {"name": "gpu", "targetType": "container-instance", "targetId": i1},
            ]}),
        )
        .await
        .expect("PutAttributes");
    let echoed = reply["attributes"].as_array().expect("attributes");
    assert_eq!(echoed.len(), 3);
    assert_eq!(echoed[0]["name"], "color");
    assert_eq!(echoed[0]["value"], "red");
    assert_eq!(echoed[0]["targetType"], "container-instance");
    assert_eq!(echoed[0]["targetId"], instance_arn("c1", &i1));
    assert_eq!(echoed[1]["targetId"], instance_arn("c1", &i2));

    let attrs = |reply: &Value| -> BTreeSet<(String, String, String)> {
        reply["attributes"]
            .as_array()
            .expect("attributes")
            .iter()
            .map(|a| {
                assert_eq!(a["targetType"], "container-instance");
                (
                    id_of(a["targetId"].as_str().expect("target")),
                    a["name"].as_str().expect("name").to_string(),
                    a["value"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    };
    let t = |id: &str, n: &str, v: &str| (id.to_string(), n.to_string(), v.to_string());

    let all = api
        .call_json(
            "ListAttributes",
            json!({"cluster": "c1", "targetType": "container-instance"}),
        )
        .await
        .expect("ListAttributes");
    assert_eq!(
        attrs(&all),
        BTreeSet::from([
            t(&i1, "color", "red"),
            t(&i2, "color", "blue"),
            t(&i1, "gpu", "")
        ])
    );
    let by_name = api
        .call_json(
            "ListAttributes",
            json!({"cluster": "c1", "targetType": "container-instance", "attributeName": "color"}),
        )
        .await
        .expect("ListAttributes by name");
    assert_eq!(
        attrs(&by_name),
        BTreeSet::from([t(&i1, "color", "red"), t(&i2, "color", "blue")])
    );
    let by_value = api
        .call_json(
            "ListAttributes",
            json!({"cluster": "c1", "targetType": "container-instance",
                   "attributeName": "color", "attributeValue": "blue"}),
        )
        .await
        .expect("ListAttributes by value");
    assert_eq!(attrs(&by_value), BTreeSet::from([t(&i2, "color", "blue")]));

    // Paging over the three attributes.
    let first = api
        .call_json(
            "ListAttributes",
            json!({"cluster": "c1", "targetType": "container-instance", "maxResults": 2}),
        )
        .await
        .expect("page 1");
    let token = first["nextToken"].as_str().expect("nextToken").to_string();
    let second = api
        .call_json(
            "ListAttributes",
            json!({"cluster": "c1", "targetType": "container-instance", "maxResults": 2, "nextToken": token}),
        )
        .await
        .expect("page 2");
    assert!(second.get("nextToken").is_none(), "{second}");
    let mut paged = attrs(&first);
    paged.extend(attrs(&second));
    assert_eq!(paged, attrs(&all));

    // The attributes show on the instance too.
    let d = describe(api, "c1", &i1).await;
    let names: BTreeSet<&str> = d["attributes"]
        .as_array()
        .expect("attributes")
        .iter()
        .map(|a| a["name"].as_str().expect("name"))
        .collect();
    assert!(names.contains("color") && names.contains("gpu"), "{d}");

    // DeleteAttributes removes only what it names.
    api.call_json(
        "DeleteAttributes",
        json!({"cluster": "c1", "attributes": [{"name": "color", "targetId": i1}]}),
    )
    .await
    .expect("DeleteAttributes");
    let by_name = api
        .call_json(
            "ListAttributes",
            json!({"cluster": "c1", "targetType": "container-instance", "attributeName": "color"}),
        )
        .await
        .expect("ListAttributes");
    assert_eq!(attrs(&by_name), BTreeSet::from([t(&i2, "color", "blue")]));

    // Refusals write nothing.
    let before = state_last_sequence(&berth.url()).await;
    let unknown = "0123456789abcdef0123456789abcdef";
    expect_error(
        api.call_json(
            "PutAttributes",
            json!({"cluster": "c1", "attributes": [
                {"name": "ok", "value": "1", "targetId": i1},
                {"name": "ok", "value": "1", "targetId": unknown}]}),
        )
        .await,
        ErrorType::TargetNotFoundException,
    );
    expect_error(
        api.call_json(
            "DeleteAttributes",
            json!({"cluster": "c1", "attributes": [{"name": "gpu", "targetId": unknown}]}),
        )
        .await,
        ErrorType::TargetNotFoundException,
    );
    for bad_name in ["bad name", "a*b", "x>", "", &"n".repeat(129)] {
        expect_error(
            api.call_json(
                "PutAttributes",
                json!({"cluster": "c1", "attributes": [{"name": bad_name, "value": "v", "targetId": i1}]}),
            )
            .await,
            ErrorType::InvalidParameterException,
        );
    }
    expect_error(
        api.call_json(
            "PutAttributes",
            json!({"cluster": "c1", "attributes": [{"name": "ok", "value": "v", "targetId": i1, "targetType": "task"}]}),
        )
        .await,
        ErrorType::InvalidParameterException,
    );
    expect_error(
        api.call_json(
            "PutAttributes",
            json!({"cluster": "c1", "attributes": [{"name": "ok", "value": "v"}]}),
        )
        .await,
        ErrorType::InvalidParameterException,
    );
    expect_error(
        api.call_json(
            "ListAttributes",
            json!({"cluster": "c1", "targetType": "task"}),
        )
        .await,
        ErrorType::InvalidParameterException,
    );
    let eleven: Vec<Value> = (0..11)
        .map(|n| json!({"name": format!("a{n}"), "value": "v", "targetId": i2}))
        .collect();
    expect_error(
        api.call_json(
            "PutAttributes",
            json!({"cluster": "c1", "attributes": eleven}),
        )
        .await,
        ErrorType::InvalidParameterException,
    );
    assert_eq!(state_last_sequence(&berth.url()).await, before);
    assert_audit_clean(&berth.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_ten_custom_attributes_per_instance() {
    let berth = Berth::start().await;
    let api = &berth.api;
    create_cluster(api, "c1").await;
    let i1 = register_instance(api, "c1", 512, 512, json!([])).await;
    let _beats = Heartbeats::start(api.client.clone(), "c1", vec![i1.clone()]);

    let nine: Vec<Value> = (0..9)
        .map(|n| json!({"name": format!("a{n}"), "value": "v", "targetId": i1}))
        .collect();
    api.call_json(
        "PutAttributes",
        json!({"cluster": "c1", "attributes": nine}),
    )
    .await
    .expect("nine attributes");
    let count = || async {
        api.call_json(
            "ListAttributes",
            json!({"cluster": "c1", "targetType": "container-instance"}),
        )
        .await
        .expect("ListAttributes")["attributes"]
            .as_array()
            .expect("attributes")
            .len()
    };
    assert_eq!(count().await, 9);

    // Two more would make eleven: refused as a whole, nothing written.
    let before = state_last_sequence(&berth.url()).await;
    expect_error(
        api.call_json(
            "PutAttributes",
            json!({"cluster": "c1", "attributes": [
                {"name": "x", "value": "1", "targetId": i1},
                {"name": "y", "value": "1", "targetId": i1}]}),
        )
        .await,
        ErrorType::AttributeLimitExceededException,
    );
    assert_eq!(state_last_sequence(&berth.url()).await, before);
    assert_eq!(count().await, 9);

    // The tenth fits; an eleventh does not; replacing an existing value still works.
    api.call_json(
        "PutAttributes",
        json!({"cluster": "c1", "attributes": [{"name": "x", "value": "1", "targetId": i1}]}),
    )
    .await
    .expect("tenth attribute");
    assert_eq!(count().await, 10);
    let before = state_last_sequence(&berth.url()).await;
    expect_error(
        api.call_json(
            "PutAttributes",
            json!({"cluster": "c1", "attributes": [{"name": "y", "value": "1", "targetId": i1}]}),
        )
        .await,
        ErrorType::AttributeLimitExceededException,
    );
    assert_eq!(state_last_sequence(&berth.url()).await, before);
    api.call_json(
        "PutAttributes",
        json!({"cluster": "c1", "attributes": [{"name": "a0", "value": "w", "targetId": i1}]}),
    )
    .await
    .expect("replace a value");
    let a0 = api
        .call_json(
            "ListAttributes",
            json!({"cluster": "c1", "targetType": "container-instance", "attributeName": "a0"}),
        )
        .await
        .expect("ListAttributes");
    assert_eq!(a0["attributes"][0]["value"], "w");
    assert_eq!(count().await, 10);
    assert_audit_clean(&berth.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deregister_refuses_live_tasks_unless_forced() {
    let berth = Berth::start().await;
    let api = &berth.api;
    create_cluster(api, "c1").await;
    let i1 = register_instance(api, "c1", 1024, 1024, json!([])).await;
    let _beats = Heartbeats::start(api.client.clone(), "c1", vec![i1.clone()]);
    register_task_definition(api, "web", 128, 128, None).await;
    let reply = api
        .call_json("RunTask", json!({"cluster": "c1", "taskDefinition": "web"}))
        .await
        .expect("RunTask");
    let task = reply["tasks"][0]["taskArn"]
        .as_str()
        .expect("task")
        .to_string();

    let before = state_last_sequence(&berth.url()).await;
    expect_error(
        api.call_json(
            "DeregisterContainerInstance",
            json!({"cluster": "c1", "containerInstance": i1}),
        )
        .await,
        ErrorType::InvalidParameterException,
    );
    expect_error(
        api.call_json(
            "DeregisterContainerInstance",
            json!({"cluster": "c1", "containerInstance": i1, "force": false}),
        )
        .await,
        ErrorType::InvalidParameterException,
    );
    assert_eq!(state_last_sequence(&berth.url()).await, before);
    assert_eq!(describe(api, "c1", &i1).await["status"], "ACTIVE");

    // Once the task has stopped, deregistration needs no force.
    api.call_json(
        "SubmitTaskStateChange",
        json!({"cluster": "c1", "task": task, "status": "STOPPED", "reason": "done"}),
    )
    .await
    .expect("STOPPED");
    let reply = api
        .call_json(
            "DeregisterContainerInstance",
            json!({"cluster": "c1", "containerInstance": instance_arn("c1", &i1)}),
        )
        .await
        .expect("DeregisterContainerInstance");
    assert_eq!(reply["containerInstance"]["status"], "INACTIVE");
    assert_eq!(
        reply["containerInstance"]["containerInstanceArn"],
        instance_arn("c1", &i1)
    );

    // With a live task, force deregisters.
    let i2 = register_instance(api, "c1", 1024, 1024, json!([])).await;
    let _beats2 = Heartbeats::start(api.client.clone(), "c1", vec![i2.clone()]);
    let reply = api
        .call_json("RunTask", json!({"cluster": "c1", "taskDefinition": "web"}))
        .await
        .expect("RunTask");
    assert_eq!(
        reply["tasks"][0]["containerInstanceArn"],
        instance_arn("c1", &i2),
        "{reply}"
    );
    let reply = api
        .call_json(
            "DeregisterContainerInstance",
            json!({"cluster": "c1", "containerInstance": i2, "force": true}),
        )
        .await
        .expect("forced DeregisterContainerInstance");
    assert_eq!(reply["containerInstance"]["status"], "INACTIVE");
    assert_eq!(describe(api, "c1", &i2).await["status"], "INACTIVE");

    // Inactive instances leave the default listing but stay listable by status.
    assert_eq!(
        list_instances(api, json!({"cluster": "c1"})).await,
        BTreeSet::new()
    );
    assert_eq!(
        list_instances(api, json!({"cluster": "c1", "status": "INACTIVE"})).await,
        BTreeSet::from([i1.clone(), i2.clone()])
    );

    // An INACTIVE instance cannot be set to ACTIVE or DRAINING.
    let reply = set_state(api, "c1", &[&i1], "ACTIVE").await;
    assert_eq!(reply["containerInstances"], json!([]));
    assert_eq!(reply["failures"][0]["reason"], "INACTIVE");

    // Unknown instances are refused and nothing is written.
    let before = state_last_sequence(&berth.url()).await;
    expect_error(
        api.call_json(
            "DeregisterContainerInstance",
            json!({"cluster": "c1", "containerInstance": "0123456789abcdef0123456789abcdef"}),
        )
        .await,
        ErrorType::InvalidParameterException,
    );
    expect_error(
        api.call_json(
            "DeregisterContainerInstance",
            json!({"cluster": "c1", "containerInstance": "not.an.id"}),
        )
        .await,
        ErrorType::InvalidParameterException,
    );
    assert_eq!(state_last_sequence(&berth.url()).await, before);
    assert_audit_clean(&berth.url()).await;
}

/// Counts heartbeats seen on one subject: a clock made of beats, so a test can let
/// several heartbeat intervals pass without sleeping.
struct BeatCounter {
    seen: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl BeatCounter {
    async fn start(client: &async_nats::Client, cluster: &str, id: &str) -> BeatCounter {
        let mut sub = client
            .subscribe(subjects::heartbeat(cluster, id))
            .await
            .expect("subscribe to heartbeats");
        client.flush().await.expect("flush");
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        let task = tokio::spawn(async move {
            while sub.next().await.is_some() {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        });
        BeatCounter { seen, task }
    }

    /// Waits until `n` more beats have been seen.
    async fn wait_beats(&self, n: usize) {
        let target = self.seen.load(Ordering::SeqCst) + n;
        wait_for(&format!("{n} heartbeats"), PATIENCE, || async {
            (self.seen.load(Ordering::SeqCst) >= target).then_some(())
        })
        .await
    }
}

impl Drop for BeatCounter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Beats on an id no instance has: they keep time and touch no record.
const CLOCK_ID: &str = "clock";
/// Heartbeats publishes four beats per interval: this is more than four intervals,
/// longer than the three missed intervals that mark an agent lost.
const SEVERAL_INTERVALS: usize = 18;

async fn wait_connected(api: &Api, cluster: &str, id: &str, connected: bool) -> Value {
    wait_for(
        &format!("agentConnected={connected} on {id}"),
        PATIENCE,
        || async {
            let ci = describe(api, cluster, id).await;
            (ci["agentConnected"] == connected).then_some(ci)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_liveness_flips_with_one_write_per_change() {
    let berth = Berth::start().await;
    let api = &berth.api;
    let journal = journal(&berth.url()).await;
    create_cluster(api, "c1").await;
    let _clock_beats = Heartbeats::start(api.client.clone(), "c1", vec![CLOCK_ID.into()]);
    let clock = BeatCounter::start(&api.client, "c1", CLOCK_ID).await;
    let i1 = register_instance(api, "c1", 1024, 1024, json!([])).await;
    let beats = Heartbeats::start(api.client.clone(), "c1", vec![i1.clone()]);
    register_task_definition(api, "web", 128, 128, None).await;
    let subject = subjects::instance("c1", &i1);

    // While beats flow, nothing is written, whatever the number of beats.
    let connected = describe(api, "c1", &i1).await;
    assert_eq!(connected["agentConnected"], true);
    let v0 = connected["version"].as_u64().expect("version");
    let records0 = records_on(&journal, &subject).await;
    assert_eq!(records0, 1, "registration is the only record");
    clock.wait_beats(SEVERAL_INTERVALS).await;
    let still = describe(api, "c1", &i1).await;
    assert_eq!(still["agentConnected"], true);
    assert_eq!(still["version"].as_u64(), Some(v0));
    assert_eq!(records_on(&journal, &subject).await, records0);

    // Beats stop: the agent is lost, with one write, and RunTask refuses the instance.
    drop(beats);
    let lost = wait_connected(api, "c1", &i1, false).await;
    let v1 = lost["version"].as_u64().expect("version");
    assert!(v1 > v0);
    assert_eq!(lost["status"], "ACTIVE");
    let reply = api
        .call_json("RunTask", json!({"cluster": "c1", "taskDefinition": "web"}))
        .await
        .expect("RunTask");
    assert_eq!(reply["tasks"], json!([]), "{reply}");
    assert_eq!(reply["failures"][0]["reason"], "AGENT", "{reply}");
    clock.wait_beats(SEVERAL_INTERVALS).await;
    let still_lost = describe(api, "c1", &i1).await;
    assert_eq!(still_lost["agentConnected"], false);
    assert_eq!(still_lost["version"].as_u64(), Some(v1));
    assert_eq!(records_on(&journal, &subject).await, records0 + 1);

    // Beats resume: connected again, with one more write.
    let beats = Heartbeats::start(api.client.clone(), "c1", vec![i1.clone()]);
    let back = wait_connected(api, "c1", &i1, true).await;
    let v2 = back["version"].as_u64().expect("version");
    assert!(v2 > v1);
    clock.wait_beats(SEVERAL_INTERVALS).await;
    let steady = describe(api, "c1", &i1).await;
    assert_eq!(steady["agentConnected"], true);
    assert_eq!(steady["version"].as_u64(), Some(v2));
    assert_eq!(records_on(&journal, &subject).await, records0 + 2);
    let reply = api
        .call_json("RunTask", json!({"cluster": "c1", "taskDefinition": "web"}))
        .await
        .expect("RunTask");
    assert_eq!(reply["failures"], json!([]), "{reply}");
    assert_eq!(
        reply["tasks"][0]["containerInstanceArn"],
        instance_arn("c1", &i1)
    );
    drop(beats);
    assert_audit_clean(&berth.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_replica_judges_agents_right() {
    let mut berth = Berth::start().await;
    let api = berth.api.clone();
    let journal = journal(&berth.url()).await;
    create_cluster(&api, "c1").await;
    let _clock_beats = Heartbeats::start(api.client.clone(), "c1", vec![CLOCK_ID.into()]);
    let clock = BeatCounter::start(&api.client, "c1", CLOCK_ID).await;
    let alive = register_instance(&api, "c1", 1024, 1024, json!([])).await;
    let silent = register_instance(&api, "c1", 1024, 1024, json!([])).await;
    let alive_beats = Heartbeats::start(api.client.clone(), "c1", vec![alive.clone()]);
    wait_connected(&api, "c1", &silent, false).await;
    let alive_records = records_on(&journal, &subjects::instance("c1", &alive)).await;
    let silent_records = records_on(&journal, &subjects::instance("c1", &silent)).await;
    assert_eq!((alive_records, silent_records), (1, 2));

    // Replace the replica with a fresh one.
    let old = berth.control.take().expect("in-process replica");
    tokio::task::block_in_place(|| old.stop()).expect("replica stops cleanly");
    berth.control = Some(berth_control::spawn(control_config(&berth.url())));
    api.wait_serving().await;

    // It keeps both right without writing, over several intervals.
    clock.wait_beats(SEVERAL_INTERVALS).await;
    assert_eq!(describe(&api, "c1", &alive).await["agentConnected"], true);
    assert_eq!(describe(&api, "c1", &silent).await["agentConnected"], false);
    assert_eq!(
        records_on(&journal, &subjects::instance("c1", &alive)).await,
        alive_records
    );
    assert_eq!(
        records_on(&journal, &subjects::instance("c1", &silent)).await,
        silent_records
    );

    // And it flips both ways, once each.
    let silent_beats = Heartbeats::start(api.client.clone(), "c1", vec![silent.clone()]);
    drop(alive_beats);
    wait_connected(&api, "c1", &silent, true).await;
    wait_connected(&api, "c1", &alive, false).await;
    clock.wait_beats(SEVERAL_INTERVALS).await;
    assert_eq!(describe(&api, "c1", &silent).await["agentConnected"], true);
    assert_eq!(describe(&api, "c1", &alive).await["agentConnected"], false);
    assert_eq!(
        records_on(&journal, &subjects::instance("c1", &alive)).await,
        alive_records + 1
    );
    assert_eq!(
        records_on(&journal, &subjects::instance("c1", &silent)).await,
        silent_records + 1
    );
    drop(silent_beats);
    assert_audit_clean(&berth.url()).await;
}

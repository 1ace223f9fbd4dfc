//! Task definitions end to end: revisions (from 1, never reused), deregistration,
//! describe by family / family:revision / ARN, the two List actions with their filters,
//! sort and paging, launching an INACTIVE revision, and bad definitions that must be
//! refused without writing anything.

use berth_e2e::*;
use berth_journal::{Journal, JournalConfig};
use berth_messages::{ApiError, ErrorType};
use serde_json::{json, Value};

const ARN_PREFIX: &str = "arn:aws:ecs:us-test-1:123456789012:task-definition/";

fn td_arn(family: &str, revision: u32) -> String {
    format!("{ARN_PREFIX}{family}:{revision}")
}

async fn journal(url: &str) -> Journal {
    Journal::open(&JournalConfig {
        servers: vec![url.to_string()],
        ..Default::default()
    })
    .await
    .expect("journal opens")
}

fn expect_error(result: Result<Value, ApiError>, expected: ErrorType, what: &str) -> ApiError {
    match result {
        Ok(v) => panic!("{what}: expected {expected}, got success {v}"),
        Err(e) => {
            assert_eq!(e.error_type, expected, "{what}: {e}");
            e
        }
    }
}

async fn register(api: &Api, family: &str) -> Value {
    api.call_json(
        "RegisterTaskDefinition",
        json!({
            "family": family,
            "containerDefinitions": [
                {"name": "app", "image": "busybox", "cpu": 128, "memory": 256, "essential": true}
            ],
        }),
    )
    .await
    .unwrap_or_else(|e| panic!("RegisterTaskDefinition {family}: {e}"))
}

async fn deregister(api: &Api, reference: &str) -> Value {
    api.call_json(
        "DeregisterTaskDefinition",
        json!({ "taskDefinition": reference }),
    )
    .await
    .unwrap_or_else(|e| panic!("DeregisterTaskDefinition {reference}: {e}"))
}

async fn describe(api: &Api, reference: &str) -> Result<Value, ApiError> {
    api.call_json(
        "DescribeTaskDefinition",
        json!({ "taskDefinition": reference }),
    )
    .await
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().expect("string").to_string())
        .collect()
}

/// Follows nextToken until the end, `max_results` per page; returns every item of `field`.
async fn list_all(api: &Api, action: &str, mut req: Value, field: &str, max: i64) -> Vec<String> {
    let mut out = Vec::new();
    req["maxResults"] = json!(max);
    for _ in 0..100 {
        let page = api
            .call_json(action, req.clone())
            .await
            .unwrap_or_else(|e| panic!("{action}: {e}"));
        let items = strings(&page[field]);
        assert!(
            items.len() <= max as usize,
            "{action} page exceeds maxResults {max}: {page}"
        );
        out.extend(items);
        match page.get("nextToken").and_then(Value::as_str) {
            Some(token) => req["nextToken"] = json!(token),
            None => return out,
        }
    }
    panic!("{action} paging never ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revisions_start_at_one_and_are_never_reused() {
    let berth = Berth::start().await;
    let api = &berth.api;

    for rev in 1..=3u32 {
        let reply = register(api, "web").await;
        let td = &reply["taskDefinition"];
        assert_eq!(td["taskDefinitionArn"], td_arn("web", rev), "{reply}");
        assert_eq!(td["family"], "web");
        assert_eq!(td["revision"], rev);
        assert_eq!(td["status"], "ACTIVE");
        assert_eq!(td["containerDefinitions"][0]["name"], "app");
        assert_eq!(td["containerDefinitions"][0]["memory"], 256);
        assert_eq!(td["networkMode"], "bridge");
    }

    let gone = deregister(api, "web:3").await;
    assert_eq!(gone["taskDefinition"]["status"], "INACTIVE", "{gone}");
    assert_eq!(gone["taskDefinition"]["revision"], 3);
    assert!(
        gone["taskDefinition"]["deregisteredAt"].is_number(),
        "{gone}"
    );

    // The family now resolves to its latest ACTIVE revision.
    let latest = describe(api, "web").await.expect("describe web");
    assert_eq!(latest["taskDefinition"]["revision"], 2, "{latest}");

    // Revision 3 stays taken: the next registration gets 4.
    let next = register(api, "web").await;
    assert_eq!(
        next["taskDefinition"]["taskDefinitionArn"],
        td_arn("web", 4),
        "{next}"
    );
    let latest = describe(api, "web").await.expect("describe web");
    assert_eq!(latest["taskDefinition"]["revision"], 4, "{latest}");

    // Deregistering the newest revision does not hand its number out again either.
    deregister(api, &td_arn("web", 4)).await;
    let after = register(api, "web").await;
    assert_eq!(after["taskDefinition"]["revision"], 5, "{after}");

    // An INACTIVE revision can still be described by family:revision and by ARN.
    let three = describe(api, "web:3").await.expect("describe web:3");
    assert_eq!(three["taskDefinition"]["status"], "INACTIVE");
    let by_arn = describe(api, &td_arn("web", 2)).await.expect("by arn");
    assert_eq!(by_arn["taskDefinition"]["revision"], 2);
    assert_eq!(by_arn["taskDefinition"]["status"], "ACTIVE");
    assert_eq!(by_arn["taskDefinition"]["family"], "web");

    // Families are independent counters.
    let other = register(api, "worker").await;
    assert_eq!(
        other["taskDefinition"]["taskDefinitionArn"],
        td_arn("worker", 1)
    );
    assert_audit_clean(&berth.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deregister_and_describe_errors() {
    let berth = Berth::start().await;
    let api = &berth.api;
    register(api, "web").await;
    let journal = journal(&berth.url()).await;
    let before = journal.state_last_sequence().await.unwrap();

    // A bare family names no revision.
    expect_error(
        api.call_json("DeregisterTaskDefinition", json!({"taskDefinition": "web"}))
            .await,
        ErrorType::InvalidParameterException,
        "deregister bare family",
    );
    // Unknown family, unknown revision, unknown ARN.
    for unknown in ["nope:1", "web:99", &td_arn("nope", 7)] {
        expect_error(
            api.call_json(
                "DeregisterTaskDefinition",
                json!({"taskDefinition": unknown}),
            )
            .await,
            ErrorType::ClientException,
            &format!("deregister {unknown}"),
        );
    }
    for unknown in ["nope", "nope:1", "web:2", &td_arn("web", 99)] {
        expect_error(
            describe(api, unknown).await,
            ErrorType::ClientException,
            &format!("describe {unknown}"),
        );
    }
    // Malformed references and missing fields.
    for bad in [
        json!({"taskDefinition": "we.b:1"}),
        json!({}),
        json!({"taskDefinition": 5}),
    ] {
        expect_error(
            api.call_json("DeregisterTaskDefinition", bad.clone()).await,
            ErrorType::InvalidParameterException,
            &format!("deregister {bad}"),
        );
        expect_error(
            api.call_json("DescribeTaskDefinition", bad.clone()).await,
            ErrorType::InvalidParameterException,
            &format!("describe {bad}"),
        );
    }
    assert_eq!(
        journal.state_last_sequence().await.unwrap(),
        before,
        "refused requests wrote to the journal"
    );

    // A family whose only revision is INACTIVE has no latest ACTIVE revision.
    register(api, "solo").await;
    deregister(api, "solo:1").await;
    expect_error(
        describe(api, "solo").await,
        ErrorType::ClientException,
        "describe family without ACTIVE revision",
    );
    // Deregistering again keeps it INACTIVE.
    let again = deregister(api, "solo:1").await;
    assert_eq!(again["taskDefinition"]["status"], "INACTIVE");
    assert_audit_clean(&berth.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_task_definitions_filters_sorts_and_pages() {
    let berth = Berth::start().await;
    let api = &berth.api;
    for family in ["web", "web", "web", "webapp", "api", "api"] {
        register(api, family).await;
    }
    deregister(api, "web:2").await;

    let all_active = vec![
        td_arn("api", 1),
        td_arn("api", 2),
        td_arn("web", 1),
        td_arn("web", 3),
        td_arn("webapp", 1),
    ];
    // Default: ACTIVE, ascending by family then revision.
    let listed = api
        .call_json("ListTaskDefinitions", json!({}))
        .await
        .expect("list");
    assert_eq!(strings(&listed["taskDefinitionArns"]), all_active);
    assert!(listed.get("nextToken").is_none_or(Value::is_null));

    let asc = api
        .call_json(
            "ListTaskDefinitions",
            json!({"status": "ACTIVE", "sort": "ASC"}),
        )
        .await
        .expect("list asc");
    assert_eq!(strings(&asc["taskDefinitionArns"]), all_active);

    let desc = api
        .call_json("ListTaskDefinitions", json!({"sort": "DESC"}))
        .await
        .expect("list desc");
    let mut reversed = all_active.clone();
    reversed.reverse();
    assert_eq!(strings(&desc["taskDefinitionArns"]), reversed);

    let inactive = api
        .call_json("ListTaskDefinitions", json!({"status": "INACTIVE"}))
        .await
        .expect("list inactive");
    assert_eq!(
        strings(&inactive["taskDefinitionArns"]),
        vec![td_arn("web", 2)]
    );

    // familyPrefix is the full family name in ECS: "web" does not list "webapp".
    let web = api
        .call_json("ListTaskDefinitions", json!({"familyPrefix": "web"}))
        .await
        .expect("list web");
    assert_eq!(
        strings(&web["taskDefinitionArns"]),
        vec![td_arn("web", 1), td_arn("web", 3)]
    );
    let web_desc = api
        .call_json(
            "ListTaskDefinitions",
            json!({"familyPrefix": "web", "sort": "DESC"}),
        )
        .await
        .expect("list web desc");
    assert_eq!(
        strings(&web_desc["taskDefinitionArns"]),
        vec![td_arn("web", 3), td_arn("web", 1)]
    );
    let web_inactive = api
        .call_json(
            "ListTaskDefinitions",
            json!({"familyPrefix": "web", "status": "INACTIVE"}),
        )
        .await
        .expect("list web inactive");
    assert_eq!(
        strings(&web_inactive["taskDefinitionArns"]),
        vec![td_arn("web", 2)]
    );
    let none = api
        .call_json("ListTaskDefinitions", json!({"familyPrefix": "we"}))
        .await
        .expect("list we");
    assert!(strings(&none["taskDefinitionArns"]).is_empty(), "{none}");

    // Paging: every page within maxResults, together the whole list, in order.
    for max in [1, 2, 3] {
        assert_eq!(
            list_all(
                api,
                "ListTaskDefinitions",
                json!({}),
                "taskDefinitionArns",
                max
            )
            .await,
            all_active,
            "maxResults {max}"
        );
        assert_eq!(
            list_all(
                api,
                "ListTaskDefinitions",
                json!({"sort": "DESC"}),
                "taskDefinitionArns",
                max
            )
            .await,
            reversed,
            "DESC maxResults {max}"
        );
        assert_eq!(
            list_all(
                api,
                "ListTaskDefinitions",
                json!({"familyPrefix": "web"}),
                "taskDefinitionArns",
                max
            )
            .await,
            vec![td_arn("web", 1), td_arn("web", 3)],
            "familyPrefix web, maxResults {max}"
        );
    }

    // Bad parameters.
    for bad in [
        json!({"maxResults": 0}),
        json!({"maxResults": 101}),
        json!({"status": "GONE"}),
        json!({"sort": "UP"}),
        json!({"familyPrefix": "a.b"}),
        json!({"nextToken": "not-a-token"}),
    ] {
        expect_error(
            api.call_json("ListTaskDefinitions", bad.clone()).await,
            ErrorType::InvalidParameterException,
            &format!("ListTaskDefinitions {bad}"),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_task_definition_families_by_status_and_prefix() {
    let berth = Berth::start().await;
    let api = &berth.api;
    for family in ["web", "web", "webapp", "api", "old", "old"] {
        register(api, family).await;
    }
    deregister(api, "old:1").await;
    deregister(api, "old:2").await;
    // web keeps one ACTIVE revision: still an ACTIVE family.
    deregister(api, "web:1").await;

    let families = |req: Value| {
        let api = api.clone();
        async move {
            let reply = api
                .call_json("ListTaskDefinitionFamilies", req.clone())
                .await
                .unwrap_or_else(|e| panic!("ListTaskDefinitionFamilies {req}: {e}"));
            strings(&reply["families"])
        }
    };
    assert_eq!(
        families(json!({"status": "ACTIVE"})).await,
        ["api", "web", "webapp"]
    );
    assert_eq!(families(json!({"status": "INACTIVE"})).await, ["old"]);
    assert_eq!(
        families(json!({"status": "ALL"})).await,
        ["api", "old", "web", "webapp"]
    );
    // ECS lists ACTIVE and INACTIVE families when no status is given.
    assert_eq!(families(json!({})).await, ["api", "old", "web", "webapp"]);
    assert_eq!(
        families(json!({"familyPrefix": "web"})).await,
        ["web", "webapp"]
    );
    assert_eq!(
        families(json!({"familyPrefix": "o", "status": "ACTIVE"})).await,
        Vec::<String>::new()
    );
    assert_eq!(
        families(json!({"familyPrefix": "o", "status": "INACTIVE"})).await,
        ["old"]
    );
    assert_eq!(
        list_all(
            api,
            "ListTaskDefinitionFamilies",
            json!({"status": "ALL"}),
            "families",
            1
        )
        .await,
        ["api", "old", "web", "webapp"]
    );
    assert_eq!(
        list_all(
            api,
            "ListTaskDefinitionFamilies",
            json!({"familyPrefix": "web", "status": "ACTIVE"}),
            "families",
            1
        )
        .await,
        ["web", "webapp"]
    );
    for bad in [
        json!({"status": "SOMETIMES"}),
        json!({"maxResults": 0}),
        json!({"familyPrefix": "w*"}),
    ] {
        expect_error(
            api.call_json("ListTaskDefinitionFamilies", bad.clone())
                .await,
            ErrorType::InvalidParameterException,
            &format!("ListTaskDefinitionFamilies {bad}"),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_task_of_an_inactive_revision_is_refused() {
    let berth = Berth::start().await;
    let api = &berth.api;
    create_cluster(api, "c1").await;
    let i1 = register_instance(api, "c1", 1024, 1024, json!([])).await;
    let _beats = Heartbeats::start(api.client.clone(), "c1", vec![i1.clone()]);
    register_task_definition(api, "web", 128, 128, None).await;
    register_task_definition(api, "web", 128, 128, None).await;
    deregister(api, "web:2").await;
    let journal = journal(&berth.url()).await;
    let before = journal.state_last_sequence().await.unwrap();

    for reference in ["web:2".to_string(), td_arn("web", 2)] {
        let e = expect_error(
            api.call_json(
                "RunTask",
                json!({"cluster": "c1", "taskDefinition": reference}),
            )
            .await,
            ErrorType::ClientException,
            &format!("RunTask {reference}"),
        );
        assert!(e.message.contains("inactive"), "{e}");
        expect_error(
            api.call_json(
                "StartTask",
                json!({"cluster": "c1", "taskDefinition": reference, "containerInstances": [i1]}),
            )
            .await,
            ErrorType::ClientException,
            &format!("StartTask {reference}"),
        );
    }
    // Unknown definitions are ClientException too.
    for reference in ["nope", "web:9"] {
        expect_error(
            api.call_json(
                "RunTask",
                json!({"cluster": "c1", "taskDefinition": reference}),
            )
            .await,
            ErrorType::ClientException,
            &format!("RunTask {reference}"),
        );
    }
    assert_eq!(
        journal.state_last_sequence().await.unwrap(),
        before,
        "refused launches wrote to the journal"
    );

    // The bare family runs its latest ACTIVE revision, 1.
    let ran = api
        .call_json("RunTask", json!({"cluster": "c1", "taskDefinition": "web"}))
        .await
        .expect("RunTask web");
    assert_eq!(
        ran["tasks"][0]["taskDefinitionArn"],
        td_arn("web", 1),
        "{ran}"
    );
    assert_audit_clean(&berth.url()).await;
}

fn container(name: &str) -> Value {
    json!({"name": name, "image": "busybox", "cpu": 10, "memory": 32})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_task_definitions_are_refused_and_write_nothing() {
    let berth = Berth::start().await;
    let api = &berth.api;
    let journal = journal(&berth.url()).await;
    let before = journal.state_last_sequence().await.unwrap();

    let eleven: Vec<Value> = (0..11).map(|i| container(&format!("c{i}"))).collect();
    let long_family = "f".repeat(256);
    let cases: Vec<(&str, Value)> = vec![
        (
            "no memory anywhere",
            json!({"family": "web", "containerDefinitions": [{"name": "app", "image": "busybox", "cpu": 10}]}),
        ),
        (
            "one of two containers lacks memory",
            json!({"family": "web", "containerDefinitions": [container("a"), {"name": "b", "image": "busybox"}]}),
        ),
        (
            "more than 10 containers",
            json!({"family": "web", "containerDefinitions": eleven}),
        ),
        (
            "no containers",
            json!({"family": "web", "containerDefinitions": []}),
        ),
        (
            "duplicate container names",
            json!({"family": "web", "containerDefinitions": [container("app"), container("app")]}),
        ),
        (
            "dot in family",
            json!({"family": "web.app", "containerDefinitions": [container("app")]}),
        ),
        (
            "wildcard in family",
            json!({"family": "web*", "containerDefinitions": [container("app")]}),
        ),
        (
            "subject wildcard in family",
            json!({"family": "web>", "containerDefinitions": [container("app")]}),
        ),
        (
            "space in family",
            json!({"family": "web app", "containerDefinitions": [container("app")]}),
        ),
        (
            "empty family",
            json!({"family": "", "containerDefinitions": [container("app")]}),
        ),
        (
            "family too long",
            json!({"family": long_family, "containerDefinitions": [container("app")]}),
        ),
        (
            "dependsOn unknown container",
            json!({"family": "web", "containerDefinitions": [
                {"name": "app", "image": "busybox", "memory": 32,
                 "dependsOn": [{"containerName": "db", "condition": "START"}]}
            ]}),
        ),
        (
            "missing family",
            json!({"containerDefinitions": [container("app")]}),
        ),
        ("missing containerDefinitions", json!({"family": "web"})),
        (
            "wrong type of memory",
            json!({"family": "web", "containerDefinitions": [
                {"name": "app", "image": "busybox", "memory": "lots"}
            ]}),
        ),
        (
            "bad container name",
            json!({"family": "web", "containerDefinitions": [container("a.b")]}),
        ),
        (
            "memory below memoryReservation",
            json!({"family": "web", "containerDefinitions": [
                {"name": "app", "image": "busybox", "memory": 32, "memoryReservation": 64}
            ]}),
        ),
        (
            "host port out of range",
            json!({"family": "web", "containerDefinitions": [
                {"name": "app", "image": "busybox", "memory": 32,
                 "portMappings": [{"containerPort": 80, "hostPort": 70000}]}
            ]}),
        ),
        (
            "unknown network mode",
            json!({"family": "web", "networkMode": "mesh", "containerDefinitions": [container("app")]}),
        ),
    ];
    for (what, body) in cases {
        expect_error(
            api.call_json("RegisterTaskDefinition", body).await,
            ErrorType::InvalidParameterException,
            what,
        );
    }
    // An undecodable body.
    let msg = api
        .raw(
            "RegisterTaskDefinition",
            Some(berth_messages::headers::JSON),
            b"{not json".to_vec(),
        )
        .await;
    let reply = decode_reply::<Value>(berth_messages::codec::Encoding::Json, &msg);
    // A body that is not JSON at all is a ClientException (a well-formed body with wrong
    // fields is an InvalidParameterException, above).
    expect_error(reply, ErrorType::ClientException, "undecodable body");
    assert_eq!(
        journal.state_last_sequence().await.unwrap(),
        before,
        "refused registrations wrote to the journal"
    );
    let families = api
        .call_json("ListTaskDefinitionFamilies", json!({"status": "ALL"}))
        .await
        .expect("families");
    assert!(strings(&families["families"]).is_empty(), "{families}");

    // Memory given at task level only is enough, and the service still serves.
    let ok = api
        .call_json(
            "RegisterTaskDefinition",
            json!({"family": "web", "memory": "512", "cpu": "256",
                   "containerDefinitions": [{"name": "app", "image": "busybox"}]}),
        )
        .await
        .expect("task-level memory is enough");
    assert_eq!(ok["taskDefinition"]["revision"], 1);
    assert_eq!(ok["taskDefinition"]["memory"], "512");
    // Ten containers is the limit, not over it; dependsOn a known container is fine.
    let mut ten: Vec<Value> = (0..10).map(|i| container(&format!("c{i}"))).collect();
    ten[1]["dependsOn"] = json!([{"containerName": "c0", "condition": "START"}]);
    let ok = api
        .call_json(
            "RegisterTaskDefinition",
            json!({"family": "ten", "containerDefinitions": ten}),
        )
        .await
        .expect("ten containers");
    assert_eq!(
        ok["taskDefinition"]["containerDefinitions"]
            .as_array()
            .unwrap()
            .len(),
        10
    );
    assert_audit_clean(&berth.url()).await;
}

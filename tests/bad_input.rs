//! Bad input end to end against a real nats-server: unknown actions, undecodable bodies,
//! wrong types, missing fields, names that would break subjects, counts out of range,
//! unknown clusters/instances/tasks and oversized payloads each get an ECS error (body
//! `{"__type", "message"}` plus the micro-service error headers), the service keeps
//! serving, and the journal is untouched. Also: MessagePack end to end and the NATS
//! micro-service discovery subjects.

use berth_e2e::*;
use berth_messages::api::{ClusterResponse, CreateClusterRequest, ListClustersRequest};
use berth_messages::codec::{self, Encoding};
use berth_messages::command::Action;
use berth_messages::{headers, ApiError, ErrorType};
use serde_json::{json, Value};
use std::collections::BTreeSet;

/// Largest body the API accepts (256 KiB).
const LIMIT: usize = 256 * 1024;

fn msgpack(value: &Value) -> Vec<u8> {
    rmp_serde::to_vec_named(value).expect("encode MessagePack")
}

/// A JSON object padded with whitespace to exactly `size` bytes.
fn padded_json(value: &Value, size: usize) -> Vec<u8> {
    let mut body = serde_json::to_vec(value).expect("encode JSON");
    assert!(body.len() < size);
    let close = body.pop().expect("closing brace");
    body.resize(size - 1, b' ');
    body.push(close);
    body
}

struct Bench {
    berth: Berth,
    journal: berth_journal::Journal,
    instance: String,
    _beats: Heartbeats,
}

impl Bench {
    /// A cluster `c1` with one connected instance and a task definition `web`, so that
    /// requests fail for the reason a case names and not for a missing cluster.
    async fn start() -> Bench {
        let berth = Berth::start().await;
        let api = &berth.api;
        create_cluster(api, "c1").await;
        let instance = register_instance(api, "c1", 1024, 1024, json!([])).await;
        let beats = Heartbeats::start(api.client.clone(), "c1", vec![instance.clone()]);
        register_task_definition(api, "web", 128, 128, None).await;
        let journal = berth_journal::Journal::open(&berth_journal::JournalConfig {
            servers: vec![berth.url()],
            ..Default::default()
        })
        .await
        .expect("journal opens");
        Bench {
            berth,
            journal,
            instance,
            _beats: beats,
        }
    }

    async fn state_sequence(&self) -> u64 {
        self.journal
            .state_last_sequence()
            .await
            .expect("stream info")
    }

    /// Sends a raw request that must be refused with `expected`; checks the error body
    /// and headers, that nothing was written, and that the service still serves.
    async fn refused(
        &self,
        what: &str,
        action: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
        expected: ErrorType,
    ) -> ApiError {
        let api = &self.berth.api;
        let before = self.state_sequence().await;
        let enc = Encoding::from_content_type(content_type);
        let reply = api.raw(action, content_type, body).await;

        let h = reply
            .headers
            .as_ref()
            .unwrap_or_else(|| panic!("{what}: error reply without headers"));
        let code = h
            .get(headers::SERVICE_ERROR_CODE)
            .unwrap_or_else(|| panic!("{what}: no {}", headers::SERVICE_ERROR_CODE));
        assert_eq!(
            code.as_str(),
            expected.status_code().to_string(),
            "{what}: error code"
        );
        let description = h
            .get(headers::SERVICE_ERROR)
            .unwrap_or_else(|| panic!("{what}: no {}", headers::SERVICE_ERROR));
        assert!(
            description.as_str().contains(expected.as_str()),
            "{what}: {} is {description}",
            headers::SERVICE_ERROR
        );
        assert_eq!(
            h.get(headers::CONTENT_TYPE).map(|v| v.as_str().to_string()),
            Some(enc.content_type().to_string()),
            "{what}: reply encoding"
        );

        // The body is exactly {"__type", "message"}, in the request's encoding.
        let body: Value = codec::decode(enc, &reply.payload)
            .unwrap_or_else(|e| panic!("{what}: error body does not decode: {e}"));
        let keys: BTreeSet<&str> = body
            .as_object()
            .unwrap_or_else(|| panic!("{what}: error body is not an object: {body}"))
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            BTreeSet::from(["__type", "message"]),
            "{what}: {body}"
        );
        let error: ApiError = codec::decode(enc, &reply.payload).expect("ApiError");
        assert_eq!(error.error_type, expected, "{what}: {}", error.message);
        assert!(!error.message.is_empty(), "{what}: empty message");

        assert_eq!(
            self.state_sequence().await,
            before,
            "{what}: the journal was written"
        );
        let listed = api
            .call_json("ListClusters", json!({}))
            .await
            .unwrap_or_else(|e| panic!("{what}: service stopped serving: {e}"));
        assert!(listed["clusterArns"].is_array(), "{what}");
        error
    }

    async fn refused_json(&self, what: &str, action: &str, body: Value, expected: ErrorType) {
        let bytes = serde_json::to_vec(&body).expect("encode JSON");
        self.refused(what, action, Some(headers::JSON), bytes, expected)
            .await;
    }

    async fn refused_msgpack(&self, what: &str, action: &str, body: Value, expected: ErrorType) {
        self.refused(what, action, None, msgpack(&body), expected)
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_actions_and_undecodable_bodies() {
    let bench = Bench::start().await;
    use ErrorType::*;

    for name in ["NoSuchAction", "runTask", "Listclusters"] {
        bench
            .refused_json(name, name, json!({}), InvalidParameterException)
            .await;
        bench
            .refused_msgpack(name, name, json!({}), InvalidParameterException)
            .await;
    }

    let json_garbage: [(&str, &[u8]); 5] = [
        ("unterminated object", b"{not json"),
        ("unterminated array", b"[1, 2"),
        ("binary", b"\xff\xfe\x00garbage"),
        ("trailing garbage", b"{} {"),
        ("bare word", b"clusters"),
    ];
    for action in ["CreateCluster", "RunTask", "ListClusters", "DescribeTasks"] {
        for (what, body) in json_garbage {
            bench
                .refused(
                    &format!("{action}: {what}"),
                    action,
                    Some(headers::JSON),
                    body.to_vec(),
                    ClientException,
                )
                .await;
        }
    }

    // MessagePack that ends in the middle of a value, or is not MessagePack at all.
    let msgpack_garbage: [(&str, &[u8]); 5] = [
        ("map cut short", b"\x85\xa3abc"),
        ("string cut short", b"\x81\xabclusterName\xd9\x40ab"),
        ("reserved marker", b"\xc1"),
        ("trailing bytes", b"\x80\x81"),
        ("text", b"{\"clusterName\": \"x\"}"),
    ];
    for action in ["CreateCluster", "RunTask", "ListClusters"] {
        for (what, body) in msgpack_garbage {
            bench
                .refused(
                    &format!("{action}: msgpack {what}"),
                    action,
                    None,
                    body.to_vec(),
                    ClientException,
                )
                .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_types_and_missing_fields() {
    let bench = Bench::start().await;
    use ErrorType::*;
    let id = bench.instance.clone();

    let wrong_types = [
        (
            "RunTask",
            json!({"cluster": "c1", "taskDefinition": "web", "count": "x"}),
        ),
        (
            "RunTask",
            json!({"cluster": "c1", "taskDefinition": "web", "count": 1.5}),
        ),
        ("RunTask", json!({"cluster": "c1", "taskDefinition": 7})),
        ("CreateCluster", json!({"clusterName": 5})),
        ("CreateCluster", json!("c2")),
        ("DescribeClusters", json!({"clusters": "c1"})),
        ("ListClusters", json!({"maxResults": "ten"})),
        (
            "UpdateContainerInstancesState",
            json!({"cluster": "c1", "containerInstances": [id], "status": 5}),
        ),
        (
            "DeregisterContainerInstance",
            json!({"cluster": "c1", "containerInstance": id, "force": "yes"}),
        ),
        (
            "RegisterContainerInstance",
            json!({"cluster": "c1", "totalResources": {"CPU": 1}}),
        ),
    ];
    for (action, body) in &wrong_types {
        let what = format!("{action} {body}");
        bench
            .refused_json(&what, action, body.clone(), InvalidParameterException)
            .await;
        bench
            .refused_msgpack(&what, action, body.clone(), InvalidParameterException)
            .await;
    }

    let missing = [
        ("RunTask", json!({"cluster": "c1"})),
        ("RunTask", json!({})),
        (
            "StartTask",
            json!({"cluster": "c1", "taskDefinition": "web"}),
        ),
        ("StopTask", json!({"cluster": "c1"})),
        ("DeleteCluster", json!({})),
        ("DescribeContainerInstances", json!({"cluster": "c1"})),
        ("DescribeTasks", json!({"cluster": "c1"})),
        (
            "RegisterTaskDefinition",
            json!({"containerDefinitions": []}),
        ),
        ("RegisterTaskDefinition", json!({"family": "x"})),
        ("RegisterContainerInstance", json!({"cluster": "c1"})),
        (
            "UpdateContainerInstancesState",
            json!({"cluster": "c1", "containerInstances": [id]}),
        ),
        (
            "DeregisterContainerInstance",
            json!({"cluster": "c1", "force": true}),
        ),
        ("ListAttributes", json!({"cluster": "c1"})),
        (
            "PutAttributes",
            json!({"cluster": "c1", "attributes": [{"value": "v", "targetId": id}]}),
        ),
        ("SubmitContainerStateChange", json!({"cluster": "c1"})),
    ];
    for (action, body) in &missing {
        let what = format!("{action} {body}");
        bench
            .refused_json(&what, action, body.clone(), InvalidParameterException)
            .await;
        bench
            .refused_msgpack(&what, action, body.clone(), InvalidParameterException)
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_break_ecs_rules() {
    let bench = Bench::start().await;
    use ErrorType::*;
    let long = "x".repeat(256);
    let bad_names = [
        "a.b",
        "a*",
        "a>",
        "a b",
        long.as_str(),
        "",
        "a\tb",
        "a\nb",
        "caf\u{e9}",
        "a/b",
        "a:b",
        "taskdef",
    ];
    for name in bad_names {
        let shown: String = name.chars().take(20).collect();
        bench
            .refused_json(
                &format!("CreateCluster {shown:?}"),
                "CreateCluster",
                json!({ "clusterName": name }),
                InvalidParameterException,
            )
            .await;
    }
    for name in ["a.b", "a*", "a>", "a b", long.as_str()] {
        let shown: String = name.chars().take(20).collect();
        let cases = [
            ("RunTask", json!({"cluster": name, "taskDefinition": "web"})),
            ("RunTask", json!({"cluster": "c1", "taskDefinition": name})),
            (
                "RegisterTaskDefinition",
                json!({"family": name, "containerDefinitions": [
                    {"name": "app", "image": "busybox", "memory": 64}]}),
            ),
            (
                "RegisterTaskDefinition",
                json!({"family": "ok", "containerDefinitions": [
                    {"name": name, "image": "busybox", "memory": 64}]}),
            ),
            (
                "RegisterContainerInstance",
                json!({"cluster": name, "totalResources": [
                    {"name": "CPU", "type": "INTEGER", "integerValue": 1},
                    {"name": "MEMORY", "type": "INTEGER", "integerValue": 1}]}),
            ),
            (
                "DescribeContainerInstances",
                json!({"cluster": name, "containerInstances": ["x"]}),
            ),
            (
                "DescribeContainerInstances",
                json!({"cluster": "c1", "containerInstances": [name]}),
            ),
            ("ListTasks", json!({"cluster": name})),
            ("ListContainerInstances", json!({"cluster": name})),
            ("DeleteCluster", json!({"cluster": name})),
            ("StopTask", json!({"cluster": "c1", "task": name})),
            (
                "DeregisterContainerInstance",
                json!({"cluster": "c1", "containerInstance": name}),
            ),
            (
                "SubmitTaskStateChange",
                json!({"cluster": name, "task": "t1", "status": "RUNNING"}),
            ),
        ];
        for (action, body) in cases {
            bench
                .refused_json(
                    &format!("{action} with {shown:?}"),
                    action,
                    body,
                    InvalidParameterException,
                )
                .await;
        }
    }

    // A name of exactly 255 allowed characters is fine.
    let longest = "y".repeat(255);
    let reply = bench
        .berth
        .api
        .call_json("CreateCluster", json!({ "clusterName": longest }))
        .await
        .expect("255-character name");
    assert_eq!(reply["cluster"]["clusterName"], longest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_and_batches_out_of_range() {
    let bench = Bench::start().await;
    use ErrorType::*;
    let id = bench.instance.clone();
    for count in [0, 11, -1, 1_000_000] {
        bench
            .refused_json(
                &format!("RunTask count {count}"),
                "RunTask",
                json!({"cluster": "c1", "taskDefinition": "web", "count": count}),
                InvalidParameterException,
            )
            .await;
    }
    let eleven: Vec<String> = (0..11).map(|_| id.clone()).collect();
    let hundred_one: Vec<String> = (0..101).map(|i| format!("c{i}")).collect();
    let cases = [
        (
            "StartTask",
            json!({"cluster": "c1", "taskDefinition": "web", "containerInstances": eleven}),
        ),
        (
            "StartTask",
            json!({"cluster": "c1", "taskDefinition": "web", "containerInstances": []}),
        ),
        ("DescribeClusters", json!({"clusters": hundred_one})),
        (
            "DescribeTasks",
            json!({"cluster": "c1", "tasks": hundred_one}),
        ),
        (
            "DescribeContainerInstances",
            json!({"cluster": "c1", "containerInstances": []}),
        ),
        ("ListClusters", json!({"maxResults": 0})),
        ("ListClusters", json!({"maxResults": 101})),
        ("ListTasks", json!({"cluster": "c1", "maxResults": 101})),
    ];
    for (action, body) in cases {
        bench
            .refused_json(
                &format!(
                    "{action} {}",
                    body.to_string().chars().take(80).collect::<String>()
                ),
                action,
                body,
                InvalidParameterException,
            )
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_out_of_ecs_bounds() {
    let bench = Bench::start().await;
    let container = |health_check: Value, depends: Value| {
        json!({"family": "hc", "containerDefinitions": [
            {"name": "db", "cpu": 1, "memory": 8, "command": ["sleep", "9"],
             "healthCheck": health_check},
            {"name": "app", "cpu": 1, "memory": 8, "command": ["sleep", "9"],
             "dependsOn": depends}
        ]})
    };
    let ok = json!(["CMD", "true"]);
    let cases = [
        container(json!({"command": []}), json!([])),
        container(json!({"command": ["CMD"]}), json!([])),
        container(json!({"command": ["curl", "-f", "x"]}), json!([])),
        container(json!({"command": ok, "interval": 4}), json!([])),
        container(json!({"command": ok, "interval": 301}), json!([])),
        container(json!({"command": ok, "timeout": 1}), json!([])),
        container(json!({"command": ok, "retries": 0}), json!([])),
        container(json!({"command": ok, "retries": 11}), json!([])),
        container(json!({"command": ok, "startPeriod": -1}), json!([])),
        container(json!({"command": ok, "startPeriod": 301}), json!([])),
        // HEALTHY on a container without a health check.
        json!({"family": "hc", "containerDefinitions": [
            {"name": "db", "cpu": 1, "memory": 8, "command": ["sleep", "9"]},
            {"name": "app", "cpu": 1, "memory": 8, "command": ["sleep", "9"],
             "dependsOn": [{"containerName": "db", "condition": "HEALTHY"}]}
        ]}),
    ];
    for body in cases {
        bench
            .refused_json(
                &format!("RegisterTaskDefinition {}", body["containerDefinitions"][0]),
                "RegisterTaskDefinition",
                body,
                ErrorType::InvalidParameterException,
            )
            .await;
    }
    bench
        .refused_json(
            "SubmitContainerStateChange with an unknown healthStatus",
            "SubmitContainerStateChange",
            json!({"cluster": "c1", "task": "0123456789abcdef0123456789abcdef",
                   "containerName": "web", "healthStatus": "GREAT"}),
            ErrorType::InvalidParameterException,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_cluster_instance_task_and_definition() {
    let bench = Bench::start().await;
    use ErrorType::*;
    let unknown = "0123456789abcdef0123456789abcdef";
    let id = bench.instance.clone();

    let not_found = [
        (
            "RunTask",
            json!({"cluster": "nope", "taskDefinition": "web"}),
        ),
        (
            "StartTask",
            json!({"cluster": "nope", "taskDefinition": "web", "containerInstances": [id]}),
        ),
        ("StopTask", json!({"cluster": "nope", "task": unknown})),
        (
            "DescribeTasks",
            json!({"cluster": "nope", "tasks": [unknown]}),
        ),
        ("ListTasks", json!({"cluster": "nope"})),
        ("DeleteCluster", json!({"cluster": "nope"})),
        (
            "SubmitTaskStateChange",
            json!({"cluster": "nope", "task": unknown, "status": "RUNNING"}),
        ),
        // Without a cluster, the default cluster is meant; it does not exist here.
        ("RunTask", json!({"taskDefinition": "web"})),
    ];
    for (action, body) in not_found {
        bench
            .refused_json(
                &format!("{action} {body}"),
                action,
                body,
                ClusterNotFoundException,
            )
            .await;
    }

    let invalid = [
        ("StopTask", json!({"cluster": "c1", "task": unknown})),
        (
            "SubmitTaskStateChange",
            json!({"cluster": "c1", "task": unknown, "status": "RUNNING"}),
        ),
        (
            "DeregisterContainerInstance",
            json!({"cluster": "c1", "containerInstance": unknown}),
        ),
    ];
    for (action, body) in invalid {
        bench
            .refused_json(
                &format!("{action} {body}"),
                action,
                body,
                InvalidParameterException,
            )
            .await;
    }
    bench
        .refused_json(
            "RunTask with an unknown task definition",
            "RunTask",
            json!({"cluster": "c1", "taskDefinition": "nope"}),
            ClientException,
        )
        .await;
    bench
        .refused_json(
            "RunTask with an unknown revision",
            "RunTask",
            json!({"cluster": "c1", "taskDefinition": "web:9"}),
            ClientException,
        )
        .await;
    bench
        .refused_json(
            "PutAttributes on an unknown instance",
            "PutAttributes",
            json!({"cluster": "c1", "attributes": [{"name": "a", "value": "b", "targetId": unknown}]}),
            TargetNotFoundException,
        )
        .await;

    // Unknown ids in a batch are failures with reason MISSING, and write nothing.
    let api = &bench.berth.api;
    let before = bench.state_sequence().await;
    let reply = api
        .call_json(
            "DescribeTasks",
            json!({"cluster": "c1", "tasks": [unknown]}),
        )
        .await
        .expect("DescribeTasks");
    assert_eq!(reply["failures"][0]["reason"], "MISSING");
    let reply = api
        .call_json(
            "StartTask",
            json!({"cluster": "c1", "taskDefinition": "web", "containerInstances": [unknown]}),
        )
        .await
        .expect("StartTask");
    assert_eq!(reply["tasks"], json!([]));
    assert_eq!(reply["failures"][0]["reason"], "MISSING", "{reply}");
    let reply = api
        .call_json(
            "UpdateContainerInstancesState",
            json!({"cluster": "c1", "containerInstances": [unknown], "status": "DRAINING"}),
        )
        .await
        .expect("UpdateContainerInstancesState");
    assert_eq!(reply["failures"][0]["reason"], "MISSING");
    assert_eq!(bench.state_sequence().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_payloads() {
    let bench = Bench::start().await;
    use ErrorType::*;
    for action in ["CreateCluster", "ListClusters", "RunTask", "NoSuchAction"] {
        let body = json!({"clusterName": "big", "cluster": "c1", "taskDefinition": "web"});
        let expected = InvalidParameterException;
        for size in [LIMIT + 1, 300 * 1024, 900 * 1024] {
            bench
                .refused(
                    &format!("{action} JSON of {size} bytes"),
                    action,
                    Some(headers::JSON),
                    padded_json(&body, size),
                    expected,
                )
                .await;
        }
        let big = json!({"cluster": "c1", "taskDefinition": "web", "startedBy": "s".repeat(LIMIT)});
        bench
            .refused(
                &format!("{action} MessagePack over the limit"),
                action,
                None,
                msgpack(&big),
                expected,
            )
            .await;
    }
    // A body at the limit is read (and here refused only for its content).
    let at_limit = padded_json(&json!({"clusterName": "a.b"}), LIMIT);
    let e = bench
        .refused(
            "CreateCluster at the limit",
            "CreateCluster",
            Some(headers::JSON),
            at_limit,
            InvalidParameterException,
        )
        .await;
    assert!(e.message.contains("a.b"), "{}", e.message);
    let reply = bench
        .berth
        .api
        .raw(
            "CreateCluster",
            Some(headers::JSON),
            padded_json(&json!({"clusterName": "fits"}), LIMIT),
        )
        .await;
    let cluster: Value = decode_reply(Encoding::Json, &reply).expect("CreateCluster at the limit");
    assert_eq!(cluster["cluster"]["clusterName"], "fits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messagepack_end_to_end() {
    let berth = Berth::start().await;
    let mp = berth.api.with_encoding(Encoding::MsgPack);

    // A request without Content-Type is MessagePack, and so is its reply.
    let body = codec::encode(
        Encoding::MsgPack,
        &CreateClusterRequest {
            cluster_name: Some("packed".into()),
            ..Default::default()
        },
    )
    .expect("encode");
    let reply = berth.api.raw("CreateCluster", None, body).await;
    let ct = reply
        .headers
        .as_ref()
        .and_then(|h| h.get(headers::CONTENT_TYPE))
        .map(|v| v.as_str().to_string());
    assert_eq!(ct.as_deref(), Some(headers::MSGPACK));
    assert!(
        serde_json::from_slice::<Value>(&reply.payload).is_err(),
        "the reply is JSON"
    );
    let created: ClusterResponse =
        codec::decode(Encoding::MsgPack, &reply.payload).expect("MessagePack reply");
    assert_eq!(created.cluster.cluster_name, "packed");
    assert_eq!(
        created.cluster.cluster_arn,
        "arn:aws:ecs:us-test-1:123456789012:cluster/packed"
    );

    // Typed calls in MessagePack, including errors.
    let listed: berth_messages::api::ListClustersResponse = mp
        .call("ListClusters", &ListClustersRequest::default())
        .await
        .expect("ListClusters");
    assert_eq!(
        listed.cluster_arns,
        std::slice::from_ref(&created.cluster.cluster_arn)
    );
    let e = mp
        .call::<_, Value>("DeleteCluster", &json!({"cluster": "nope"}))
        .await
        .expect_err("unknown cluster");
    assert_eq!(e.error_type, ErrorType::ClusterNotFoundException);

    // MessagePack with a Content-Type that says so works the same.
    let reply = berth
        .api
        .raw(
            "DescribeClusters",
            Some(headers::MSGPACK),
            msgpack(&json!({"clusters": ["packed"]})),
        )
        .await;
    let described: Value = codec::decode(Encoding::MsgPack, &reply.payload).expect("decode");
    assert_eq!(described["clusters"][0]["clusterName"], "packed");

    // A whole flow in MessagePack: instance, task definition, task.
    let i1 = register_instance(&berth.api, "packed", 1024, 1024, json!([])).await;
    let _beats = Heartbeats::start(berth.api.client.clone(), "packed", vec![i1.clone()]);
    let td: Value = mp
        .call(
            "RegisterTaskDefinition",
            &json!({"family": "mp", "containerDefinitions": [
                {"name": "app", "image": "busybox", "cpu": 10, "memory": 64}]}),
        )
        .await
        .expect("RegisterTaskDefinition");
    assert_eq!(td["taskDefinition"]["revision"], 1);
    let run: Value = mp
        .call(
            "RunTask",
            &json!({"cluster": "packed", "taskDefinition": "mp", "count": 2}),
        )
        .await
        .expect("RunTask");
    assert_eq!(run["tasks"].as_array().map(Vec::len), Some(2), "{run}");
    let arn = run["tasks"][0]["taskArn"]
        .as_str()
        .expect("arn")
        .to_string();
    let described: Value = mp
        .call(
            "DescribeTasks",
            &json!({"cluster": "packed", "tasks": [arn]}),
        )
        .await
        .expect("DescribeTasks");
    assert_eq!(described["tasks"][0]["taskArn"], arn);
    assert_eq!(described["tasks"][0]["lastStatus"], "PENDING");
    assert_audit_clean(&berth.url()).await;
}

async fn service_request(client: &async_nats::Client, subject: &str) -> Value {
    let reply = client
        .request(subject.to_string(), "".into())
        .await
        .unwrap_or_else(|e| panic!("{subject} answered: {e}"));
    serde_json::from_slice(&reply.payload)
        .unwrap_or_else(|e| panic!("{subject} reply is JSON: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn micro_service_discovery() {
    let berth = Berth::start().await;
    let client = &berth.api.client;
    // A few requests, one of them refused, so the stats have something to count.
    create_cluster(&berth.api, "c1").await;
    berth
        .api
        .call_json("ListClusters", json!({}))
        .await
        .expect("ListClusters");
    let _ = berth
        .api
        .call_json("DeleteCluster", json!({"cluster": "nope"}))
        .await;

    for subject in ["$SRV.PING", "$SRV.PING.berth"] {
        let ping = service_request(client, subject).await;
        assert_eq!(ping["name"], "berth", "{ping}");
        assert_eq!(ping["type"], "io.nats.micro.v1.ping_response");
        assert!(ping["id"].as_str().is_some_and(|s| !s.is_empty()));
    }

    let info = service_request(client, "$SRV.INFO.berth").await;
    assert_eq!(info["name"], "berth");
    assert_eq!(info["type"], "io.nats.micro.v1.info_response");
    let endpoints: BTreeSet<(String, String)> = info["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .map(|e| {
            (
                e["name"].as_str().expect("name").to_string(),
                e["subject"].as_str().expect("subject").to_string(),
            )
        })
        .collect();
    for action in Action::ALL {
        let expected = (
            action.as_str().to_string(),
            format!("berth.api.{}", action.as_str()),
        );
        assert!(endpoints.contains(&expected), "{expected:?} in {info}");
    }
    for (name, subject) in &endpoints {
        assert_eq!(subject, &format!("berth.api.{name}"));
    }

    let stats = service_request(client, "$SRV.STATS.berth").await;
    assert_eq!(stats["name"], "berth");
    assert_eq!(stats["type"], "io.nats.micro.v1.stats_response");
    let by_name = |name: &str| -> Value {
        stats["endpoints"]
            .as_array()
            .expect("endpoints")
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no stats for {name}: {stats}"))
            .clone()
    };
    assert!(
        by_name("ListClusters")["num_requests"]
            .as_u64()
            .is_some_and(|n| n >= 1),
        "{stats}"
    );
    assert!(
        by_name("CreateCluster")["num_requests"]
            .as_u64()
            .is_some_and(|n| n >= 1),
        "{stats}"
    );
}

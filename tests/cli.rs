//! The `berth` CLI end to end: the binary driven as a user would, against a real
//! nats-server, a control-plane replica and a real `berth-agent` process running tasks
//! as host processes. JSON output is checked field by field; bad input must produce a
//! message that names what to fix.

use berth_e2e::berth_testkit::{free_port, wait_for, workspace_bin, NatsServer};
use berth_e2e::*;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A `berth-agent` process (process runtime) on its own data directory.
struct Agent {
    child: Child,
    arn: String,
    _dir: TempDir,
}

impl Agent {
    async fn start(url: &str, cluster: &str) -> Agent {
        let url = url.to_string();
        let cluster = cluster.to_string();
        tokio::task::spawn_blocking(move || Agent::start_blocking(&url, &cluster))
            .await
            .expect("agent start thread")
    }

    fn start_blocking(url: &str, cluster: &str) -> Agent {
        let dir = TempDir::new("agent");
        let mut child = Command::new(workspace_bin("berth-agent", "berth-agent"))
            .env("BERTH_NATS_URL", url)
            .env("BERTH_CLUSTER", cluster)
            .env("BERTH_DATA_DIR", dir.path().join("agent"))
            .env(
                "BERTH_HEARTBEAT_INTERVAL",
                HEARTBEAT.as_secs_f64().to_string(),
            )
            .env("BERTH_STOP_TASKS_ON_EXIT", "true")
            .env_remove("BERTH_SIM")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("berth-agent starts");
        let stderr = child.stderr.take().expect("agent stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let marker = "berth-agent ready instance=";
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[agent] {line}");
                if let Some(at) = line.find(marker) {
                    let arn: String = line[at + marker.len()..]
                        .chars()
                        .take_while(|c| !c.is_whitespace())
                        .collect();
                    let _ = tx.send(arn);
                }
            }
        });
        let arn = match rx.recv_timeout(PATIENCE) {
            Ok(arn) => arn,
            Err(_) => {
                let status = child.try_wait().ok().flatten();
                let _ = child.kill();
                panic!("berth-agent did not report ready (exit status {status:?})");
            }
        };
        Agent {
            child,
            arn,
            _dir: dir,
        }
    }

    fn id(&self) -> String {
        id_of(&self.arn)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SIGTERM: the agent stops its tasks (BERTH_STOP_TASKS_ON_EXIT) and exits.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Berth (nats-server and one replica) with a cluster and a real agent in it.
async fn berth_with_agent(cluster: &str) -> (Berth, Agent) {
    let berth = Berth::start().await;
    berth_ok(&berth, &["clusters", "create", cluster]).await;
    let agent = Agent::start(&berth.url(), cluster).await;
    let api = berth.api.clone();
    let (c, arn) = (cluster.to_string(), agent.arn.clone());
    wait_for("the agent's instance to be connected", PATIENCE, || {
        let (api, c, arn) = (api.clone(), c.clone(), arn.clone());
        async move {
            let r = api
                .call_json(
                    "DescribeContainerInstances",
                    serde_json::json!({"cluster": c, "containerInstances": [arn]}),
                )
                .await
                .ok()?;
            (r["containerInstances"][0]["agentConnected"] == true).then_some(())
        }
    })
    .await;
    (berth, agent)
}

async fn berth_ok(server: &Berth, args: &[&str]) -> CliRun {
    run_berth(&server.url(), args).await.ok()
}

fn arns(v: &Value, field: &str) -> Vec<String> {
    v[field]
        .as_array()
        .unwrap_or_else(|| panic!("{field} in {v}"))
        .iter()
        .map(|a| a.as_str().expect("arn").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_through_the_cli() {
    let b = Berth::start().await;
    let url = b.url();

    let created = run_berth(&url, &["clusters", "create", "c1", "--output", "json"])
        .await
        .ok()
        .json();
    assert_eq!(created["cluster"]["clusterName"], "c1");
    assert_eq!(created["cluster"]["status"], "ACTIVE");
    let table = run_berth(&url, &["clusters", "create", "c2"]).await.ok();
    assert!(
        table.stdout.starts_with("cluster c2 is ACTIVE"),
        "{}",
        table.stdout
    );

    let listed = run_berth(&url, &["clusters", "list", "--output", "json"])
        .await
        .ok()
        .json();
    let listed = arns(&listed, "clusterArns");
    assert!(
        listed.iter().any(|a| a.ends_with(":cluster/c1")),
        "{listed:?}"
    );
    assert!(
        listed.iter().any(|a| a.ends_with(":cluster/c2")),
        "{listed:?}"
    );
    let table = run_berth(&url, &["clusters", "list"]).await.ok().stdout;
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{table}");
    assert!(
        lines
            .iter()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["c1", "ACTIVE", "0", "0", "0"]),
        "{table}"
    );

    // --cluster (and its env twin) picks the cluster of describe without names.
    let described = run_berth(
        &url,
        &[
            "--cluster",
            "c1",
            "clusters",
            "describe",
            "--output",
            "json",
        ],
    )
    .await
    .ok()
    .json();
    assert_eq!(described["clusters"][0]["clusterName"], "c1");
    assert_eq!(described["failures"].as_array().map(Vec::len), Some(0));

    let missing = run_berth(&url, &["clusters", "describe", "nope"])
        .await
        .fails();
    assert!(
        missing
            .stderr
            .contains("cluster nope not found: create it with `berth clusters create nope`"),
        "{}",
        missing.stderr
    );
    let missing = run_berth(&url, &["--cluster", "nope", "tasks", "list"])
        .await
        .fails();
    assert!(
        missing
            .stderr
            .contains("cluster nope not found: create it with `berth clusters create nope`"),
        "{}",
        missing.stderr
    );
    let bad_name = run_berth(&url, &["--cluster", "a.b", "tasks", "list"])
        .await
        .fails();
    assert!(bad_name.stderr.contains("--cluster"), "{}", bad_name.stderr);

    let deleted = run_berth(&url, &["clusters", "delete", "c2", "--output", "json"])
        .await
        .ok()
        .json();
    assert_eq!(deleted["cluster"]["status"], "INACTIVE");
    let listed = run_berth(&url, &["clusters", "list", "--output", "json"])
        .await
        .ok()
        .json();
    assert!(!arns(&listed, "clusterArns")
        .iter()
        .any(|a| a.ends_with(":cluster/c2")));
    run_berth(&url, &["clusters", "delete", "c2"]).await.fails();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_server_or_api_is_explained() {
    let nowhere = format!("nats://127.0.0.1:{}", free_port());
    let run = run_berth(&nowhere, &["clusters", "list"]).await.fails();
    assert!(
        run.stderr
            .contains(&format!("cannot connect to NATS at {nowhere}")),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("is `berth dev` running?"),
        "{}",
        run.stderr
    );

    let nats = NatsServer::start();
    let run = run_berth(&nats.url(), &["tasks", "list"]).await.fails();
    assert!(
        run.stderr.contains(&format!(
            "no Berth API answers on {}: is `berth dev` running?",
            nats.url()
        )),
        "{}",
        run.stderr
    );

    let run = run_berth(&nats.url(), &["--output", "yaml", "clusters", "list"]).await;
    assert!(!run.success);
    assert!(
        run.stderr.contains("possible values: table, json"),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_definitions_through_the_cli() {
    let b = Berth::start().await;
    let url = b.url();
    let files = TempDir::new("taskdefs");

    let registered = run_berth(
        &url,
        &[
            "task-definitions",
            "register",
            "examples/hello.json",
            "--output",
            "json",
        ],
    )
    .await
    .ok()
    .json();
    let td = &registered["taskDefinition"];
    assert_eq!(td["family"], "hello");
    assert_eq!(td["revision"], 1);
    assert_eq!(td["containerDefinitions"][0]["memory"], 64);
    let again = run_berth(
        &url,
        &["task-definitions", "register", "examples/hello.json"],
    )
    .await
    .ok();
    assert!(
        again.stdout.starts_with("registered hello:2 ("),
        "{}",
        again.stdout
    );

    let listed = run_berth(
        &url,
        &[
            "task-definitions",
            "list",
            "--family",
            "hello",
            "--output",
            "json",
        ],
    )
    .await
    .ok()
    .json();
    let listed = arns(&listed, "taskDefinitionArns");
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(
        listed[0].ends_with(":task-definition/hello:1"),
        "{listed:?}"
    );

    let described = run_berth(
        &url,
        &["task-definitions", "describe", "hello", "--output", "json"],
    )
    .await
    .ok()
    .json();
    assert_eq!(described["taskDefinition"]["revision"], 2);
    let table = run_berth(&url, &["task-definitions", "describe", "hello:1"])
        .await
        .ok()
        .stdout;
    assert!(table.contains("task-definition/hello:1"), "{table}");
    assert!(table.contains("echo hello from berth"), "{table}");

    let gone = run_berth(
        &url,
        &[
            "task-definitions",
            "deregister",
            "hello:1",
            "--output",
            "json",
        ],
    )
    .await
    .ok()
    .json();
    assert_eq!(gone["taskDefinition"]["status"], "INACTIVE");
    let inactive = run_berth(
        &url,
        &[
            "task-definitions",
            "list",
            "--status",
            "INACTIVE",
            "--output",
            "json",
        ],
    )
    .await
    .ok()
    .json();
    assert_eq!(arns(&inactive, "taskDefinitionArns").len(), 1);

    // Bad input: each message names the file, the place and the fix.
    let no_revision = run_berth(&url, &["task-definitions", "deregister", "hello"])
        .await
        .fails();
    assert!(
        no_revision.stderr.contains("deregister needs a revision"),
        "{}",
        no_revision.stderr
    );
    let unknown = run_berth(&url, &["task-definitions", "describe", "nope"])
        .await
        .fails();
    assert!(
        unknown.stderr.contains(
            "task definition nope not found: register it with `berth task-definitions register"
        ),
        "{}",
        unknown.stderr
    );
    let syntax = files.file(
        "syntax.json",
        "{\n  \"family\": \"x\",\n  \"containerDefinitions\": [\n}\n",
    );
    let run = run_berth(&url, &["task-definitions", "register", &syntax])
        .await
        .fails();
    assert!(
        run.stderr
            .contains(&format!("{syntax}:4:1: not valid JSON")),
        "{}",
        run.stderr
    );
    let typo = files.file(
        "typo.json",
        "{\"family\": \"x\",\n \"containerDefinitions\": [\n  {\"name\": \"a\", \"memory\": 8, \"comand\": [\"true\"]}]}",
    );
    let run = run_berth(&url, &["task-definitions", "register", &typo])
        .await
        .fails();
    assert!(
        run.stderr.contains(&format!(
            "{typo}:3: unknown field \"containerDefinitions[0].comand\""
        )) && run.stderr.contains("did you mean \"command\"?"),
        "{}",
        run.stderr
    );
    let wrong_type = files.file(
        "type.json",
        "{\"family\": \"x\",\n \"containerDefinitions\": [\n  {\"name\": \"a\", \"memory\": \"lots\"}]}",
    );
    let run = run_berth(&url, &["task-definitions", "register", &wrong_type])
        .await
        .fails();
    assert!(
        run.stderr
            .contains("containerDefinitions[0].memory: invalid type: string \"lots\""),
        "{}",
        run.stderr
    );
    let refused = files.file(
        "refused.json",
        "{\"family\": \"bad.family\", \"containerDefinitions\": [{\"name\": \"a\", \"memory\": 8}]}",
    );
    let run = run_berth(&url, &["task-definitions", "register", &refused])
        .await
        .fails();
    assert!(
        run.stderr
            .contains("the task definition was refused: InvalidParameterException"),
        "{}",
        run.stderr
    );
    let missing = run_berth(&url, &["task-definitions", "register", "no/such/file.json"])
        .await
        .fails();
    assert!(
        missing
            .stderr
            .contains("cannot read task definition file no/such/file.json"),
        "{}",
        missing.stderr
    );
    // Nothing was written by the refused files.
    let all = run_berth(&url, &["task-definitions", "list", "--output", "json"])
        .await
        .ok()
        .json();
    assert_eq!(arns(&all, "taskDefinitionArns").len(), 1, "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_through_the_cli_with_a_real_agent() {
    let (b, agent) = berth_with_agent("c1").await;
    let url = b.url();
    let id = agent.id();
    let c = ["--cluster", "c1"];
    let with =
        |args: &[&'static str]| -> Vec<&'static str> { c.iter().chain(args).copied().collect() };

    let listed = run_berth(&url, &with(&["instances", "list", "--output", "json"]))
        .await
        .ok()
        .json();
    assert_eq!(
        arns(&listed, "containerInstanceArns"),
        vec![agent.arn.clone()]
    );
    let table = run_berth(&url, &with(&["instances", "list"]))
        .await
        .ok()
        .stdout;
    let row = table
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{id} in {table}"));
    assert!(row.contains("ACTIVE") && row.contains("connected"), "{row}");

    let mut args = with(&["instances", "describe"]);
    let id_arg: &str = &id;
    args.push(id_arg);
    args.extend(["--output", "json"]);
    let described = run_berth(&url, &args).await.ok().json();
    let ci = &described["containerInstances"][0];
    assert_eq!(ci["agentConnected"], true);
    assert_eq!(ci["status"], "ACTIVE");
    let table = run_berth(&url, &["--cluster", "c1", "instances", "describe", id_arg])
        .await
        .ok()
        .stdout;
    assert!(table.contains("agent:      connected"), "{table}");
    assert!(table.contains("ecs.os-type="), "{table}");

    let put = run_berth(
        &url,
        &[
            "--cluster",
            "c1",
            "instances",
            "attributes",
            id_arg,
            "--put",
            "stack=prod",
            "--put",
            "gpu",
            "--output",
            "json",
        ],
    )
    .await
    .ok()
    .json();
    let attributes = put["attributes"].as_array().expect("attributes").clone();
    assert!(
        attributes.iter().any(|a| a["name"] == "stack"
            && a["value"] == "prod"
            && a["targetId"] == agent.arn.as_str()),
        "{put}"
    );
    assert!(attributes.iter().any(|a| a["name"] == "gpu"), "{put}");
    let deleted = run_berth(
        &url,
        &[
            "--cluster",
            "c1",
            "instances",
            "attributes",
            id_arg,
            "--delete",
            "stack",
            "--output",
            "json",
        ],
    )
    .await
    .ok()
    .json();
    assert!(
        !deleted["attributes"]
            .as_array()
            .expect("attributes")
            .iter()
            .any(|a| a["name"] == "stack"),
        "{deleted}"
    );
    let bad = run_berth(
        &url,
        &[
            "--cluster",
            "c1",
            "instances",
            "attributes",
            id_arg,
            "--put",
            "=x",
        ],
    )
    .await
    .fails();
    assert!(bad.stderr.contains("expected NAME=VALUE"), "{}", bad.stderr);

    // Draining: the instance takes no new task; active again, it does.
    let drained = run_berth(
        &url,
        &[
            "--cluster",
            "c1",
            "instances",
            "drain",
            id_arg,
            "--output",
            "json",
        ],
    )
    .await
    .ok()
    .json();
    assert_eq!(drained["containerInstances"][0]["status"], "DRAINING");
    let draining = run_berth(
        &url,
        &with(&[
            "instances",
            "list",
            "--status",
            "DRAINING",
            "--output",
            "json",
        ]),
    )
    .await
    .ok()
    .json();
    assert_eq!(
        arns(&draining, "containerInstanceArns"),
        vec![agent.arn.clone()]
    );
    run_berth(
        &url,
        &["task-definitions", "register", "examples/hello.json"],
    )
    .await
    .ok();
    run_berth(&url, &with(&["tasks", "run", "hello"]))
        .await
        .fails();
    let active = run_berth(&url, &["--cluster", "c1", "instances", "activate", id_arg])
        .await
        .ok();
    assert!(
        active.stdout.contains(&format!("instance {id} is ACTIVE")),
        "{}",
        active.stdout
    );
    let ran = run_berth(
        &url,
        &with(&[
            "tasks", "run", "hello", "--wait", "STOPPED", "--output", "json",
        ]),
    )
    .await
    .ok()
    .json();
    assert_eq!(ran["tasks"][0]["lastStatus"], "STOPPED", "{ran}");

    let missing = run_berth(&url, &with(&["instances", "describe", "nope"]))
        .await
        .fails();
    assert!(missing.stderr.contains("nope"), "{}", missing.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_through_the_cli_with_a_real_agent() {
    let (b, agent) = berth_with_agent("c1").await;
    let url = b.url();
    let instance = agent.id();
    let files = TempDir::new("tasks");
    let c = |args: &[&str]| -> Vec<String> {
        ["--cluster", "c1"]
            .iter()
            .chain(args)
            .map(|s| s.to_string())
            .collect()
    };
    let run = |args: Vec<String>| {
        let url = url.clone();
        async move {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            run_berth(&url, &refs).await
        }
    };

    run(c(&["task-definitions", "register", "examples/hello.json"]))
        .await
        .ok();

    // The example runs to completion: STOPPED, exit code 0, its output in the logs.
    let ran = run(c(&[
        "tasks", "run", "hello", "--wait", "STOPPED", "--output", "json",
    ]))
    .await
    .ok();
    let task = &ran.json()["tasks"][0];
    assert_eq!(task["lastStatus"], "STOPPED", "{task}");
    assert_eq!(task["containers"][0]["exitCode"], 0, "{task}");
    assert_eq!(task["stopCode"], "EssentialContainerExited", "{task}");
    assert!(ran.stderr.contains("STOPPED  exit 0"), "{}", ran.stderr);
    let hello_arn = task["taskArn"].as_str().expect("arn").to_string();
    let hello = id_of(&hello_arn);
    let logs = run(c(&["tasks", "logs", &hello])).await.ok().stdout;
    assert!(logs.contains("hello from berth"), "{logs}");
    assert!(logs.contains(&format!("I am task {hello}")), "{logs}");
    let chunks = run(c(&["tasks", "logs", &hello, "--output", "json"]))
        .await
        .ok()
        .stdout;
    let last: Value = serde_json::from_str(chunks.lines().last().expect("a chunk")).expect("json");
    assert_eq!(last["complete"], true, "{chunks}");
    assert_eq!(last["containerName"], "app", "{chunks}");

    let described = run(c(&["tasks", "describe", &hello])).await.ok().stdout;
    assert!(
        described.contains("STOPPED (desired STOPPED)"),
        "{described}"
    );
    assert!(
        described.contains("EssentialContainerExited"),
        "{described}"
    );
    let stopped = run(c(&[
        "tasks",
        "list",
        "--desired-status",
        "STOPPED",
        "--output",
        "json",
    ]))
    .await
    .ok()
    .json();
    assert!(arns(&stopped, "taskArns").contains(&hello_arn), "{stopped}");
    let table = run(c(&[
        "tasks",
        "list",
        "--family",
        "hello",
        "--desired-status",
        "stopped",
    ]))
    .await
    .ok()
    .stdout;
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&hello) && l.contains("hello:1")),
        "{table}"
    );
    // Waiting for a task that is already there returns at once.
    let waited = run(c(&["tasks", "wait", &hello, "--output", "json"]))
        .await
        .ok()
        .json();
    assert_eq!(waited["tasks"][0]["lastStatus"], "STOPPED");

    // StartTask on a chosen instance.
    let started = run(c(&[
        "tasks",
        "start",
        "hello",
        "--instance",
        &instance,
        "--wait",
        "STOPPED",
        "--output",
        "json",
    ]))
    .await
    .ok()
    .json();
    assert_eq!(
        started["tasks"][0]["containers"][0]["exitCode"], 0,
        "{started}"
    );
    assert_eq!(
        started["tasks"][0]["containerInstanceArn"],
        agent.arn.as_str()
    );

    // A long-running task: RUNNING, its output read while it runs, followed, stopped.
    let ticker = files.file(
        "ticker.json",
        r#"{"family": "ticker", "containerDefinitions": [{"name": "tick", "memory": 16,
            "stopTimeout": 5,
            "command": ["sh", "-c", "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done"]}]}"#,
    );
    run(c(&["task-definitions", "register", &ticker]))
        .await
        .ok();
    let running = run(c(&[
        "tasks",
        "run",
        "ticker",
        "--started-by",
        "cli-test",
        "--wait",
        "RUNNING",
        "--output",
        "json",
    ]))
    .await
    .ok()
    .json();
    assert_eq!(running["tasks"][0]["lastStatus"], "RUNNING", "{running}");
    let ticker_arn = running["tasks"][0]["taskArn"]
        .as_str()
        .expect("arn")
        .to_string();
    let tick = id_of(&ticker_arn);
    let mine = run(c(&[
        "tasks",
        "list",
        "--started-by",
        "cli-test",
        "--output",
        "json",
    ]))
    .await
    .ok()
    .json();
    assert_eq!(arns(&mine, "taskArns"), vec![ticker_arn.clone()]);
    let here = run(c(&[
        "tasks",
        "list",
        "--instance",
        &instance,
        "--output",
        "json",
    ]))
    .await
    .ok()
    .json();
    assert_eq!(arns(&here, "taskArns"), vec![ticker_arn.clone()]);
    let tick_for_logs = tick.clone();
    wait_for("the ticker's output", PATIENCE, || {
        let args = c(&["tasks", "logs", &tick_for_logs]);
        let run = &run;
        async move {
            let out = run(args).await;
            (out.success && out.stdout.contains("tick 2")).then_some(())
        }
    })
    .await;
    let timed_out = run(c(&["tasks", "wait", &tick, "--timeout", "0.5"]))
        .await
        .fails();
    assert!(
        timed_out.stderr.contains("timed out after")
            && timed_out.stderr.contains(&format!("{tick} is RUNNING")),
        "{}",
        timed_out.stderr
    );

    // `logs --follow` ends by itself once the stopped container's output is all read.
    let mut follower = berth_command(&url)
        .args(c(&["tasks", "logs", &tick, "--follow"]))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("berth tasks logs --follow");
    let stopped = run(c(&[
        "tasks", "stop", &tick, "--reason", "cli test", "--wait", "--output", "json",
    ]))
    .await
    .ok()
    .json();
    assert_eq!(stopped["task"]["lastStatus"], "STOPPED", "{stopped}");
    assert_eq!(stopped["task"]["stopCode"], "UserInitiated", "{stopped}");
    let followed = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = follower.try_wait().expect("follower status") {
                let mut out = String::new();
                if let Some(mut s) = follower.stdout.take() {
                    let _ = s.read_to_string(&mut out);
                }
                return (status, out);
            }
            assert!(
                Instant::now() < deadline,
                "`berth tasks logs --follow` did not end after the task stopped"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .expect("follower thread");
    assert!(followed.0.success(), "follower exit: {:?}", followed.0);
    assert!(followed.1.contains("tick 1\n"), "{}", followed.1);

    // Bad input and tasks that cannot start.
    let failing = files.file(
        "failing.json",
        r#"{"family": "failing", "containerDefinitions": [{"name": "app", "memory": 16,
            "command": ["/no/such/program"]}]}"#,
    );
    run(c(&["task-definitions", "register", &failing]))
        .await
        .ok();
    let never = run(c(&["tasks", "run", "failing", "--wait", "RUNNING"]))
        .await
        .fails();
    assert!(
        never.stderr.contains("stopped before it was RUNNING"),
        "{}",
        never.stderr
    );
    let unknown = run(c(&["tasks", "run", "nope"])).await.fails();
    assert!(
        unknown.stderr.contains("task definition nope not found"),
        "{}",
        unknown.stderr
    );
    let too_many = run(c(&["tasks", "run", "hello", "--count", "11"]))
        .await
        .fails();
    assert!(
        too_many.stderr.contains("--count 11"),
        "{}",
        too_many.stderr
    );
    let no_task = run(c(&["tasks", "logs", "nope"])).await.fails();
    assert!(
        no_task.stderr.contains("task nope not found in cluster c1"),
        "{}",
        no_task.stderr
    );
    let no_container = run(c(&["tasks", "logs", &hello, "--container", "nope"]))
        .await
        .fails();
    assert!(
        no_container.stderr.contains("has no container named nope"),
        "{}",
        no_container.stderr
    );
    run(c(&["tasks", "stop", "nope"])).await.fails();
    assert_audit_clean(&url).await;
}

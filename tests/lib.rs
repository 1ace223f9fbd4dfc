//! Support for Berth's end-to-end tests: a real nats-server per test, control-plane
//! replicas (in-process or as `berth-control` processes), an API client speaking JSON or
//! MessagePack, and simulated agent heartbeats.
//!
//! The client is `berth-client` under [`Resend::GivenIds`]: reads and mutations sent with
//! a command id go again after an unanswered attempt. Mutations sent without one are sent
//! once, so that the suite keeps exercising the control plane's own minted ids (and
//! RunTask's `clientToken`).

use async_nats::HeaderMap;
use berth_client::reply::{self, ReplyError};
use berth_client::{CallOptions, Client, ClientError, Resend};
use berth_control::ControlConfig;
use berth_messages::codec::{self, Encoding};
use berth_messages::command::Action;
use berth_messages::{headers, subjects, ApiError};
use berth_testkit::{wait_for, NatsServer};
use serde::{de::DeserializeOwned, Serialize};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use berth_testkit;

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "berth-e2e-{what}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }

    /// Writes `contents` to `name` in the directory; returns the file's path.
    pub fn file(&self, name: &str, contents: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("write file");
        path.display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Heartbeat interval used by test replicas (an agent is lost after three missed).
pub const HEARTBEAT: Duration = Duration::from_millis(500);
/// Generous bound for anything a test waits on.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The configuration of a test replica against `url`.
pub fn control_config(url: &str) -> ControlConfig {
    ControlConfig {
        nats: vec![url.to_string()],
        heartbeat_interval: HEARTBEAT.as_secs_f64(),
        region: "us-test-1".into(),
        account_id: "123456789012".into(),
        ..ControlConfig::default()
    }
}

/// A nats-server and one in-process control-plane replica.
pub struct Berth {
    pub api: Api,
    pub control: Option<berth_control::ControlHandle>,
    pub nats: NatsServer,
}

impl Berth {
    pub async fn start() -> Berth {
        Self::start_with(control_config).await
    }

    /// A nats-server and a replica configured by `config` from the server's URL.
    pub async fn start_with(config: impl FnOnce(&str) -> ControlConfig) -> Berth {
        let nats = NatsServer::start();
        let control = berth_control::spawn(config(&nats.url()));
        let api = Api::connect(&nats.url()).await;
        api.wait_serving().await;
        Berth {
            api,
            control: Some(control),
            nats,
        }
    }

    pub fn url(&self) -> String {
        self.nats.url()
    }
}

/// A nats-server with two `berth-control` processes, and a client once they serve.
pub struct TwoReplicas {
    pub api: Api,
    pub replicas: [ControlProcess; 2],
    pub nats: NatsServer,
}

impl TwoReplicas {
    pub async fn start() -> TwoReplicas {
        let nats = NatsServer::start();
        let url = nats.url();
        let replicas = [ControlProcess::start(&url), ControlProcess::start(&url)];
        let api = Api::connect(&url).await;
        api.wait_serving().await;
        TwoReplicas {
            api,
            replicas,
            nats,
        }
    }

    pub fn url(&self) -> String {
        self.nats.url()
    }
}

/// A `berth-control` replica running as its own process.
pub struct ControlProcess {
    pub child: Child,
}

impl ControlProcess {
    pub fn start(url: &str) -> ControlProcess {
        Self::start_with(url, &[])
    }

    /// A replica of `url` (comma-separated URLs for a cluster) with more `BERTH_*`
    /// settings in its environment.
    pub fn start_with(url: &str, env: &[(&str, &str)]) -> ControlProcess {
        let bin = berth_testkit::workspace_bin("berth-control", "berth-control");
        let config = control_config(url);
        let child = Command::new(bin)
            .envs(env.iter().copied())
            .env("BERTH_NATS_URL", url)
            .env(
                "BERTH_HEARTBEAT_INTERVAL",
                config.heartbeat_interval.to_string(),
            )
            .env("BERTH_REGION", &config.region)
            .env("BERTH_ACCOUNT_ID", &config.account_id)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("berth-control starts");
        ControlProcess { child }
    }

    /// Sends a signal (SIGSTOP pauses the replica, SIGCONT resumes it).
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        self.try_signal(signal).expect("signal sent");
    }

    /// SIGKILL, no cleanup.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGSTOP: the process stays, holding its connections and subscriptions, and does
    /// nothing (a long stall, a frozen VM or container).
    pub fn pause(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// SIGCONT after [`ControlProcess::pause`].
    pub fn resume(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    fn try_signal(&self, signal: nix::sys::signal::Signal) -> nix::Result<()> {
        let pid = i32::try_from(self.child.id()).map_err(|_| nix::errno::Errno::ESRCH)?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
    }
}

impl Drop for ControlProcess {
    fn drop(&mut self) {
        // Continued first, in case a test left it paused (a process already gone or
        // reaped refuses the signal, which is fine).
        let _ = self.try_signal(nix::sys::signal::Signal::SIGCONT);
        self.kill();
    }
}

/// Messages in `BERTH_OUTCOME`: one per command that has its outcome.
pub async fn outcome_count(journal: &berth_journal::Journal) -> u64 {
    let mut stream = journal
        .jetstream()
        .get_stream(berth_messages::streams::OUTCOME)
        .await
        .expect("outcome stream");
    stream.info().await.expect("info").state.messages
}

/// A client of the API for tests: `berth-client` on a connection of the test, in JSON
/// unless told otherwise, keyed by action names so that tests can also send names the API
/// does not serve.
#[derive(Clone)]
pub struct Api {
    pub client: async_nats::Client,
    pub encoding: Encoding,
}

/// Why a raw request got no reply message.
pub type RequestFailure = Box<dyn std::error::Error + Send + Sync>;

impl Api {
    pub async fn connect(url: &str) -> Api {
        let client = async_nats::ConnectOptions::new()
            .request_timeout(Some(Duration::from_secs(60)))
            .connect(url)
            .await
            .expect("connect to nats");
        Api {
            client,
            encoding: Encoding::Json,
        }
    }

    pub fn with_encoding(&self, encoding: Encoding) -> Api {
        Api {
            client: self.client.clone(),
            encoding,
        }
    }

    /// The client every call goes through: all attempts within [`PATIENCE`], resent
    /// after an unanswered attempt if a read or carrying a command id.
    pub fn berth(&self) -> Client {
        Client::new(self.client.clone())
            .with_encoding(self.encoding)
            .with_timeout(PATIENCE)
            .with_resend(Resend::GivenIds)
    }

    /// Waits until a replica answers ListClusters.
    pub async fn wait_serving(&self) {
        let probe = self
            .berth()
            .with_encoding(Encoding::Json)
            .with_timeout(Duration::from_secs(2));
        wait_for("berth-control to serve", PATIENCE, || {
            let probe = probe.clone();
            async move {
                let listed: Result<serde_json::Value, _> = probe
                    .call(Action::ListClusters, &serde_json::json!({}))
                    .await;
                listed.ok().map(|_| ())
            }
        })
        .await
    }

    /// Sends a raw request; returns the reply message.
    pub async fn raw(
        &self,
        action: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> async_nats::Message {
        self.try_raw(action, content_type, body)
            .await
            .expect("API request answered")
    }

    pub async fn try_raw(
        &self,
        action: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Result<async_nats::Message, RequestFailure> {
        self.request(action, content_type, None, body).await
    }

    /// Sends a request with `command_id` in `Nats-Msg-Id` through [`Api::berth`]; a name
    /// the API does not serve gets one plain request, as a mutation without an id would.
    pub async fn request(
        &self,
        action: &str,
        content_type: Option<&str>,
        command_id: Option<&str>,
        body: Vec<u8>,
    ) -> Result<async_nats::Message, RequestFailure> {
        let body = bytes::Bytes::from(body);
        if let Some(known) = Action::parse(action) {
            let options = CallOptions {
                command_id,
                ..CallOptions::default()
            };
            return Ok(self
                .berth()
                .send(known, content_type, body, options)
                .await?);
        }
        let mut h = HeaderMap::new();
        if let Some(ct) = content_type {
            h.insert(headers::CONTENT_TYPE, ct);
        }
        if let Some(id) = command_id {
            h.insert(headers::MSG_ID, id);
        }
        let request = async_nats::Request::new()
            .headers(h)
            .payload(body)
            .timeout(Some(PATIENCE));
        Ok(self
            .client
            .send_request(subjects::api(action), request)
            .await?)
    }

    /// Calls an action with typed request and response.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        action: &str,
        req: &Req,
    ) -> Result<Resp, ApiError> {
        self.call_as(None, action, req).await
    }

    /// Calls an action, with `command_id` in `Nats-Msg-Id` if given; a call that is not
    /// answered, or answered with a body that does not decode, fails the test.
    pub async fn call_as<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        command_id: Option<&str>,
        action: &str,
        req: &Req,
    ) -> Result<Resp, ApiError> {
        let Some(known) = Action::parse(action) else {
            let body = codec::encode(self.encoding, req).expect("encode request");
            let ct = Some(self.encoding.content_type());
            let msg = self
                .request(action, ct, command_id, body)
                .await
                .expect("API request answered");
            return decode_reply(self.encoding, &msg);
        };
        let options = CallOptions {
            command_id,
            ..CallOptions::default()
        };
        match self.berth().call_with(known, req, options).await {
            Ok(reply) => Ok(reply.response),
            Err(ClientError::Refused { error, .. }) => Err(error),
            Err(e) => panic!("{}", berth_client::error_chain(&e)),
        }
    }

    /// Calls an action with a JSON value and the command id in `Nats-Msg-Id`.
    pub async fn call_json_as(
        &self,
        command_id: &str,
        action: &str,
        req: serde_json::Value,
    ) -> Result<serde_json::Value, ApiError> {
        self.with_encoding(Encoding::Json)
            .call_as(Some(command_id), action, &req)
            .await
    }

    /// Calls an action with a JSON value.
    pub async fn call_json(
        &self,
        action: &str,
        req: serde_json::Value,
    ) -> Result<serde_json::Value, ApiError> {
        self.with_encoding(Encoding::Json).call(action, &req).await
    }
}

/// Decodes a reply: an ECS error if it carries the service error headers, whose body must
/// then be in the request's encoding.
pub fn decode_reply<Resp: DeserializeOwned>(
    enc: Encoding,
    msg: &async_nats::Message,
) -> Result<Resp, ApiError> {
    match reply::decode(enc, msg) {
        Ok(reply) => Ok(reply.response),
        Err(ReplyError::Refused(e)) => {
            let body: ApiError = codec::decode(enc, &msg.payload).expect("error body decodes");
            assert_eq!(body, e, "the error body is the error");
            Err(e)
        }
        Err(ReplyError::Undecodable(e)) => panic!(
            "reply does not decode: {}: {}",
            berth_client::error_chain(&e),
            String::from_utf8_lossy(&msg.payload)
        ),
    }
}

/// Publishes heartbeats for instances until dropped.
pub struct Heartbeats {
    task: tokio::task::JoinHandle<()>,
}

impl Heartbeats {
    pub fn start(
        client: async_nats::Client,
        cluster: &str,
        instance_ids: Vec<String>,
    ) -> Heartbeats {
        let subjects: Vec<String> = instance_ids
            .iter()
            .map(|i| subjects::heartbeat(cluster, i))
            .collect();
        let task = tokio::spawn(async move {
            loop {
                for s in &subjects {
                    let _ = client.publish(s.clone(), "{}".into()).await;
                }
                let _ = client.flush().await;
                tokio::time::sleep(HEARTBEAT / 4).await;
            }
        });
        Heartbeats { task }
    }
}

impl Drop for Heartbeats {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The id at the end of an ARN.
pub fn id_of(arn: &str) -> String {
    arn.rsplit('/').next().unwrap_or(arn).to_string()
}

/// Creates a cluster and returns its name.
pub async fn create_cluster(api: &Api, name: &str) {
    api.call_json("CreateCluster", serde_json::json!({ "clusterName": name }))
        .await
        .expect("CreateCluster");
}

/// Registers an instance with CPU, MEMORY and reserved ports; returns its id.
pub async fn register_instance(
    api: &Api,
    cluster: &str,
    cpu: i64,
    memory: i64,
    attributes: serde_json::Value,
) -> String {
    let reply = api
        .call_json(
            "RegisterContainerInstance",
            serde_json::json!({
                "cluster": cluster,
                "totalResources": [
                    {"name": "CPU", "type": "INTEGER", "integerValue": cpu},
                    {"name": "MEMORY", "type": "INTEGER", "integerValue": memory},
                    {"name": "PORTS", "type": "STRINGSET", "stringSetValue": ["22"]},
                    {"name": "PORTS_UDP", "type": "STRINGSET", "stringSetValue": []}
                ],
                "versionInfo": {"agentVersion": "test"},
                "attributes": attributes,
            }),
        )
        .await
        .expect("RegisterContainerInstance");
    id_of(
        reply["containerInstance"]["containerInstanceArn"]
            .as_str()
            .expect("instance arn"),
    )
}

/// Creates a cluster of `count` attribute-less instances with heartbeats; returns their ids.
pub async fn register_hosts(
    api: &Api,
    cluster: &str,
    count: usize,
    cpu: i64,
    memory: i64,
) -> (Vec<String>, Heartbeats) {
    create_cluster(api, cluster).await;
    let mut ids = Vec::new();
    for _ in 0..count {
        ids.push(register_instance(api, cluster, cpu, memory, serde_json::json!([])).await);
    }
    let beats = Heartbeats::start(api.client.clone(), cluster, ids.clone());
    (ids, beats)
}

/// Registers a one-container task definition; returns its ARN.
pub async fn register_task_definition(
    api: &Api,
    family: &str,
    cpu: i64,
    memory: i64,
    host_port: Option<i64>,
) -> String {
    let mut container = serde_json::json!({
        "name": "app", "image": "busybox", "cpu": cpu, "memory": memory, "essential": true,
        "command": ["sleep", "1"],
    });
    if let Some(p) = host_port {
        container["portMappings"] = serde_json::json!([{ "containerPort": 80, "hostPort": p }]);
    }
    let reply = api
        .call_json(
            "RegisterTaskDefinition",
            serde_json::json!({ "family": family, "containerDefinitions": [container] }),
        )
        .await
        .expect("RegisterTaskDefinition");
    reply["taskDefinition"]["taskDefinitionArn"]
        .as_str()
        .expect("task definition arn")
        .to_string()
}

/// A journal client of the server (provisions the streams if they do not exist yet).
pub async fn open_journal(url: &str) -> berth_journal::Journal {
    berth_journal::Journal::open(&berth_journal::JournalConfig {
        servers: vec![url.to_string()],
        ..Default::default()
    })
    .await
    .expect("journal")
}

/// Publishes a command (JSON body) straight into `BERTH_CMD` with `Nats-Msg-Id` = `id`,
/// and waits until the stream has accepted it.
pub async fn publish_command(
    js: &async_nats::jetstream::Context,
    cluster: &str,
    action: &str,
    id: &str,
    body: &serde_json::Value,
) {
    let mut h = HeaderMap::new();
    h.insert(headers::MSG_ID, id);
    h.insert(headers::CONTENT_TYPE, headers::JSON);
    js.publish_with_headers(
        subjects::command(cluster, action),
        h,
        serde_json::to_vec(body).expect("json").into(),
    )
    .await
    .expect("publish")
    .await
    .expect("accepted");
}

/// Waits for the outcome of each command and checks that each placed `per_command`
/// tasks and that no task is named by two outcomes; returns the task ARNs.
pub async fn tasks_of_outcomes(
    journal: &berth_journal::Journal,
    ids: &[String],
    per_command: usize,
) -> std::collections::HashSet<String> {
    let mut tasks = std::collections::HashSet::new();
    for id in ids {
        let outcome = wait_for("the outcome of every accepted command", PATIENCE, || {
            let journal = journal.clone();
            let id = id.clone();
            async move { journal.read_outcome(&id).await.ok().flatten() }
        })
        .await;
        match outcome.response {
            Some(berth_messages::command::CommandResponse::Tasks(t)) => {
                assert_eq!(t.tasks.len(), per_command, "{id}: {:?}", t.failures);
                for task in t.tasks {
                    assert!(
                        tasks.insert(task.task_arn.clone()),
                        "task {} in two outcomes",
                        task.task_arn
                    );
                }
            }
            other => panic!("{id}: unexpected outcome {other:?} {:?}", outcome.error),
        }
    }
    tasks
}

/// Every task ARN of a cluster, all pages of ListTasks.
pub async fn all_task_arns(api: &Api, cluster: &str) -> std::collections::HashSet<String> {
    let mut out = std::collections::HashSet::new();
    let mut token: Option<String> = None;
    loop {
        let mut req = serde_json::json!({"cluster": cluster, "maxResults": 100});
        if let Some(t) = &token {
            req["nextToken"] = serde_json::json!(t);
        }
        let page = api.call_json("ListTasks", req).await.expect("ListTasks");
        for arn in page["taskArns"].as_array().into_iter().flatten() {
            out.insert(arn.as_str().unwrap_or_default().to_string());
        }
        match page["nextToken"].as_str() {
            Some(t) => token = Some(t.to_string()),
            None => return out,
        }
    }
}

/// A replica's counters (`$SRV.STATS` data; with several replicas, the first to answer).
pub async fn control_metrics(api: &Api) -> serde_json::Value {
    let reply = api
        .client
        .request("$SRV.STATS.berth", "".into())
        .await
        .expect("$SRV.STATS");
    let stats: serde_json::Value = serde_json::from_slice(&reply.payload).expect("stats JSON");
    stats["endpoints"][0]["data"].clone()
}

/// Runs the auditor against the server and panics with its report on violations.
pub async fn assert_audit_clean(url: &str) -> berth_audit::AuditReport {
    let client = async_nats::connect(url).await.expect("connect for audit");
    let report = berth_audit::audit(&client).await.expect("audit runs");
    assert!(report.is_clean(), "auditor found violations:\n{report}");
    report
}

/// One task as DescribeTasks shows it (JSON).
pub async fn describe_task(api: &Api, cluster: &str, task_arn: &str) -> serde_json::Value {
    api.call_json(
        "DescribeTasks",
        serde_json::json!({"cluster": cluster, "tasks": [task_arn]}),
    )
    .await
    .expect("DescribeTasks")["tasks"][0]
        .clone()
}

/// Waits until `check` on a DescribeTasks reply of one task holds.
pub async fn wait_task(
    api: &Api,
    cluster: &str,
    task_arn: &str,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let check = &check;
    wait_for(what, PATIENCE, || async move {
        let reply = api
            .call_json(
                "DescribeTasks",
                serde_json::json!({"cluster": cluster, "tasks": [task_arn]}),
            )
            .await
            .ok()?;
        let task = reply["tasks"].get(0)?.clone();
        check(&task).then_some(task)
    })
    .await
}

/// Hollow hosts (`berth-sim`) of `instances` 4 vCPU / 16 GiB instances in `cluster`
/// whose tasks start after 50 ms and run for `run_time`.
pub fn sim_config(
    url: &str,
    cluster: &str,
    instances: usize,
    run_time: Duration,
) -> berth_sim::SimConfig {
    berth_sim::SimConfig {
        cluster: cluster.into(),
        nats: vec![url.to_string()],
        instances,
        cpu: 4096,
        memory: 16384,
        start_delay: Duration::from_millis(50),
        run_time,
        exit_code: 0,
        heartbeat_interval: HEARTBEAT,
        data_dir: None,
        reports_in_flight: berth_sim::engine::REPORTS_IN_FLIGHT,
    }
}

/// A `berth-agent` process (configured through its env twins, `extra` added); its stderr
/// is forwarded to the test's and kept.
pub struct AgentProcess {
    child: Child,
    output: Arc<Mutex<String>>,
    /// Its stderr, line by line, as it comes.
    pub lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl AgentProcess {
    pub fn start(
        url: &str,
        cluster: &str,
        data_dir: &Path,
        extra: &[(&str, &str)],
    ) -> AgentProcess {
        let bin = berth_testkit::workspace_bin("berth-agent", "berth-agent");
        let mut command = Command::new(bin);
        command
            .env("BERTH_NATS_URL", url)
            .env("BERTH_CLUSTER", cluster)
            .env("BERTH_DATA_DIR", data_dir)
            .env(
                "BERTH_HEARTBEAT_INTERVAL",
                HEARTBEAT.as_secs_f64().to_string(),
            )
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in extra {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("berth-agent starts");
        let stderr = child.stderr.take().expect("agent stderr");
        let output = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        let kept = output.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[agent] {line}");
                if let Ok(mut all) = kept.lock() {
                    all.push_str(&line);
                    all.push('\n');
                }
                let _ = tx.send(line);
            }
        });
        AgentProcess {
            child,
            output,
            lines,
            reader: Some(reader),
        }
    }

    /// Waits for the ready line; returns the container instance ARN.
    pub async fn ready(&mut self) -> String {
        let wait = async {
            while let Some(line) = self.lines.recv().await {
                if let Some(arn) = line.strip_prefix("berth-agent ready instance=") {
                    return arn.trim().to_string();
                }
            }
            panic!("berth-agent ended before it was ready:\n{}", self.output());
        };
        tokio::time::timeout(PATIENCE, wait)
            .await
            .expect("berth-agent ready in time")
    }

    pub fn output(&self) -> String {
        self.output.lock().map(|o| o.clone()).unwrap_or_default()
    }

    /// Waits for the process to exit by itself, and for the last of its output.
    pub async fn exited(&mut self) -> ExitStatus {
        let child = &mut self.child;
        let status = wait_for("berth-agent to exit", PATIENCE, || {
            let status = child.try_wait().expect("try_wait");
            async move { status }
        })
        .await;
        if let Some(reader) = self.reader.take() {
            tokio::task::spawn_blocking(move || reader.join())
                .await
                .expect("join")
                .expect("stderr reader");
        }
        status
    }

    /// SIGTERM, then waits for the exit.
    pub async fn terminate(&mut self) -> ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.exited().await
    }

    /// SIGKILL: no cleanup at all.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One service as DescribeServices shows it, tags included (JSON).
pub async fn describe_service(api: &Api, cluster: &str, service: &str) -> serde_json::Value {
    let reply = api
        .call_json(
            "DescribeServices",
            serde_json::json!({"cluster": cluster, "services": [service], "include": ["TAGS"]}),
        )
        .await
        .expect("DescribeServices");
    reply["services"][0].clone()
}

/// Waits until the service has one deployment, COMPLETED, with `running` tasks RUNNING
/// and none pending.
pub async fn wait_service_steady(
    api: &Api,
    cluster: &str,
    service: &str,
    running: i64,
) -> serde_json::Value {
    wait_for(
        &format!("service {service} steady at {running}"),
        PATIENCE,
        || async move {
            let s = describe_service(api, cluster, service).await;
            let deployments = s["deployments"].as_array()?;
            let steady = s["runningCount"] == running
                && s["pendingCount"] == 0
                && deployments.len() == 1
                && deployments[0]["rolloutState"] == "COMPLETED";
            steady.then_some(s)
        },
    )
    .await
}

/// The service's tasks that are meant to run (ListTasks by service, then DescribeTasks).
pub async fn service_tasks(api: &Api, cluster: &str, service: &str) -> Vec<serde_json::Value> {
    let listed = api
        .call_json(
            "ListTasks",
            serde_json::json!({"cluster": cluster, "serviceName": service}),
        )
        .await
        .expect("ListTasks");
    let arns = listed["taskArns"].as_array().cloned().unwrap_or_default();
    if arns.is_empty() {
        return Vec::new();
    }
    api.call_json(
        "DescribeTasks",
        serde_json::json!({"cluster": cluster, "tasks": arns}),
    )
    .await
    .expect("DescribeTasks")["tasks"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// What a `berth` invocation did.
pub struct CliRun {
    pub args: Vec<String>,
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl CliRun {
    pub fn ok(self) -> CliRun {
        assert!(
            self.success,
            "berth {:?} failed:\nstdout:\n{}\nstderr:\n{}",
            self.args, self.stdout, self.stderr
        );
        self
    }

    /// Fails with an error message on stderr, never a panic.
    pub fn fails(self) -> CliRun {
        assert!(
            !self.success,
            "berth {:?} should fail:\nstdout:\n{}\nstderr:\n{}",
            self.args, self.stdout, self.stderr
        );
        assert!(
            self.stderr.contains("error: ") && !self.stderr.contains("panicked"),
            "berth {:?}: {}",
            self.args,
            self.stderr
        );
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "berth {:?} did not print JSON ({e}):\n{}\nstderr:\n{}",
                self.args, self.stdout, self.stderr
            )
        })
    }
}

/// The repository's root directory.
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `berth` CLI binary, run from the repository root against `url`.
pub fn berth_command(url: &str) -> Command {
    let mut command = Command::new(berth_testkit::workspace_bin("berth-cli", "berth"));
    command
        .current_dir(repo_root())
        .env("BERTH_NATS_URL", url)
        .env_remove("BERTH_CLUSTER")
        .env_remove("BERTH_OUTPUT")
        .stdin(Stdio::null());
    command
}

/// Runs `berth <args>` against `url` from the repository root.
pub async fn run_berth(url: &str, args: &[&str]) -> CliRun {
    let url = url.to_string();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let output = berth_command(&url)
            .args(&args)
            .output()
            .expect("berth runs");
        CliRun {
            args,
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    })
    .await
    .expect("berth invocation thread")
}

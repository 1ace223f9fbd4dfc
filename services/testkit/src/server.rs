//! Real `nats-server` processes for tests: a single JetStream node ([`NatsServer`]) or an
//! n-node JetStream cluster on loopback ([`NatsCluster`]). Each node owns a temporary
//! directory holding its config file, log and store; dropping a node kills it and removes
//! that directory.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::bins::nats_server_bin;
use crate::monitor::{client_port_greets, http_get};
use crate::ports::free_ports;

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_millis(100);
/// Another process may take a chosen free port before the server binds it; start again on
/// fresh ports this many times.
const START_ATTEMPTS: usize = 3;
const LOG_TAIL_LINES: usize = 40;
const CLUSTER_NAME: &str = "berth-test";

/// The cluster block of one node's config.
struct ClusterMembership {
    server_name: String,
    cluster_port: u16,
    route_ports: Vec<u16>,
}

/// Why a server did not become ready.
struct NotReady {
    /// The port was taken between choosing and binding it; worth starting on fresh ports.
    port_in_use: bool,
    report: String,
}

/// One nats-server process with JetStream enabled, listening on 127.0.0.1.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    monitor_port: u16,
    server_name: String,
    clustered: bool,
    store_dir: PathBuf,
    config_path: PathBuf,
    log_path: PathBuf,
    stderr_path: PathBuf,
    // Last field: removed after `Drop::drop` has killed the process.
    _dir: TempDir,
}

impl NatsServer {
    /// Starts a single JetStream node on a free port with its own temporary store and waits
    /// (up to 30 s) until it accepts clients and JetStream is ready.
    pub fn start() -> NatsServer {
        let mut last_report = String::new();
        for _ in 0..START_ATTEMPTS {
            let ports = free_ports(2);
            let mut server = NatsServer::configure(ports[0], ports[1], None);
            server.spawn();
            match server.wait_ready(Instant::now() + READY_TIMEOUT) {
                Ok(()) => return server,
                Err(not_ready) if not_ready.port_in_use => last_report = not_ready.report,
                Err(not_ready) => panic!("{}", not_ready.report),
            }
        }
        panic!("{last_report}")
    }

    /// "nats://127.0.0.1:<port>"
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Port of the HTTP monitor (`/healthz`, `/varz`, `/jsz`, ...).
    pub fn monitor_port(&self) -> u16 {
        self.monitor_port
    }

    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// The server's name (`n1`..`nN` in a [`NatsCluster`]), as stream infos name leaders.
    pub fn server_name(&self) -> &str {
        &self.server_name
    }

    /// Kills the process with SIGKILL and waits for it to exit. Does nothing if not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Fails only if the process already exited; `wait` reaps it either way.
            let _ = child.kill();
            child.wait().expect("wait for killed nats-server to exit");
        }
    }

    /// Starts the server again on the same ports, config and store dir (killing it first if
    /// it is running) and waits until it is ready. A cluster node is ready once it accepts
    /// clients with JetStream enabled: the cluster may still lack a quorum.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
        if let Err(not_ready) = self.wait_ready(Instant::now() + READY_TIMEOUT) {
            panic!("restart: {}", not_ready.report);
        }
    }

    fn configure(port: u16, monitor_port: u16, cluster: Option<ClusterMembership>) -> NatsServer {
        let dir = tempfile::Builder::new()
            .prefix("berth-testkit-nats-")
            .tempdir()
            .expect("create temporary directory for nats-server");
        let store_dir = dir.path().join("store");
        let config_path = dir.path().join("nats-server.conf");
        let log_path = dir.path().join("nats-server.log");
        let stderr_path = dir.path().join("nats-server.stderr");
        let server_name = cluster
            .as_ref()
            .map_or_else(|| format!("testkit-{port}"), |c| c.server_name.clone());
        let mut config = format!(
            "server_name: \"{server_name}\"\n\
             listen: \"127.0.0.1:{port}\"\n\
             http: \"127.0.0.1:{monitor_port}\"\n\
             max_payload: 1048576\n\
             jetstream {{\n  store_dir: \"{}\"\n  max_file_store: 10GB\n  max_mem_store: 256MB\n}}\n",
            store_dir.display()
        );
        if let Some(cluster) = &cluster {
            let routes: Vec<String> = cluster
                .route_ports
                .iter()
                .map(|route_port| format!("\"nats-route://127.0.0.1:{route_port}\""))
                .collect();
            config.push_str(&format!(
                "cluster {{\n  name: \"{CLUSTER_NAME}\"\n  listen: \"127.0.0.1:{}\"\n  routes: [{}]\n}}\n",
                cluster.cluster_port,
                routes.join(", ")
            ));
        }
        fs::write(&config_path, config).expect("write nats-server config file");
        NatsServer {
            child: None,
            port,
            monitor_port,
            server_name,
            clustered: cluster.is_some(),
            store_dir,
            config_path,
            log_path,
            stderr_path,
            _dir: dir,
        }
    }

    fn spawn(&mut self) {
        let bin = nats_server_bin();
        let stderr = fs::File::create(&self.stderr_path).expect("create nats-server stderr file");
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&self.config_path)
            .arg("-l")
            .arg(&self.log_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", bin.display()));
        self.child = Some(child);
    }

    /// Polls until the client port greets and the monitor reports healthy: a whole healthy
    /// JetStream for a single node, JetStream enabled for a cluster node.
    fn wait_ready(&mut self, deadline: Instant) -> Result<(), NotReady> {
        let health_path = if self.clustered {
            "/healthz?js-enabled-only=true"
        } else {
            "/healthz"
        };
        let mut backoff = FIRST_BACKOFF;
        let mut last_answer = String::from("none yet");
        loop {
            let child = self.child.as_mut().expect("wait_ready on a spawned server");
            if let Some(status) = child.try_wait().expect("poll nats-server process") {
                self.child = None;
                let report =
                    self.report(&format!("exited during startup ({status})"), &last_answer);
                let port_in_use = report.contains("address already in use");
                return Err(NotReady {
                    port_in_use,
                    report,
                });
            }
            match http_get(self.monitor_port, health_path) {
                Ok((200, _)) if client_port_greets(self.port) => return Ok(()),
                Ok((status, body)) => last_answer = format!("{status} {}", body.trim()),
                Err(error) => last_answer = error.to_string(),
            }
            if Instant::now() >= deadline {
                let reason = format!("not ready after {READY_TIMEOUT:?}");
                return Err(NotReady {
                    port_in_use: false,
                    report: self.report(&reason, &last_answer),
                });
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn report(&self, reason: &str, last_answer: &str) -> String {
        format!(
            "nats-server -c {} (client port {}, monitor port {}) {reason}; last health answer: \
             {last_answer}\n--- log tail ({}) ---\n{}\n--- stderr ---\n{}",
            self.config_path.display(),
            self.port,
            self.monitor_port,
            self.log_path.display(),
            tail(&self.log_path, LOG_TAIL_LINES),
            tail(&self.stderr_path, LOG_TAIL_LINES),
        )
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn tail(path: &Path, lines: usize) -> String {
    match fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(error) => format!("(cannot read {}: {error})", path.display()),
    }
}

/// n nodes forming one JetStream cluster on loopback, each with its own client, cluster and
/// monitor port, server name (`n1`..`nN`) and store dir.
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `n` nodes (normally 3) and waits (up to 30 s) until every node is healthy and
    /// agrees on a JetStream meta leader that sees all its peers as current.
    pub fn start(n: usize) -> NatsCluster {
        assert!(
            n >= 2,
            "a JetStream cluster needs at least 2 nodes (nats-server refuses a clustered node \
             without routes); use NatsServer::start for a single node"
        );
        let mut last_report = String::new();
        for _ in 0..START_ATTEMPTS {
            let deadline = Instant::now() + READY_TIMEOUT;
            let ports = free_ports(3 * n);
            let (client_ports, rest) = ports.split_at(n);
            let (cluster_ports, monitor_ports) = rest.split_at(n);
            let mut nodes: Vec<NatsServer> = (0..n)
                .map(|index| {
                    let membership = ClusterMembership {
                        server_name: format!("n{}", index + 1),
                        cluster_port: cluster_ports[index],
                        route_ports: cluster_ports
                            .iter()
                            .enumerate()
                            .filter(|(other, _)| *other != index)
                            .map(|(_, port)| *port)
                            .collect(),
                    };
                    NatsServer::configure(
                        client_ports[index],
                        monitor_ports[index],
                        Some(membership),
                    )
                })
                .collect();
            nodes.iter_mut().for_each(NatsServer::spawn);
            match nodes
                .iter_mut()
                .try_for_each(|node| node.wait_ready(deadline))
            {
                Ok(()) => {
                    let cluster = NatsCluster { nodes };
                    cluster.wait_ready_until(deadline);
                    return cluster;
                }
                Err(not_ready) if not_ready.port_in_use => last_report = not_ready.report,
                Err(not_ready) => panic!("{}", not_ready.report),
            }
        }
        panic!("{last_report}")
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::url).collect()
    }

    /// All node URLs, comma-joined, as binaries take them on the command line. For
    /// `async_nats::connect` pass [`NatsCluster::urls`]: it parses a string as one address.
    pub fn url(&self) -> String {
        self.urls().join(",")
    }

    /// Waits (up to 30 s) until every running node is healthy and agrees on a JetStream meta
    /// leader that sees all its running peers as current; e.g. after restarting nodes.
    pub fn wait_ready(&self) {
        self.wait_ready_until(Instant::now() + READY_TIMEOUT);
    }

    fn wait_ready_until(&self, deadline: Instant) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let problem = match self.readiness_problem() {
                None => return,
                Some(problem) => problem,
            };
            if Instant::now() >= deadline {
                let logs: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|node| node.report("in a cluster without a ready meta leader", &problem))
                    .collect();
                panic!(
                    "JetStream cluster not ready after {READY_TIMEOUT:?}: {problem}\n{}",
                    logs.join("\n")
                );
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// What still keeps the running nodes from being a ready cluster, if anything.
    fn readiness_problem(&self) -> Option<String> {
        let running: Vec<&NatsServer> = self
            .nodes
            .iter()
            .filter(|node| node.child.is_some())
            .collect();
        let mut leaders = Vec::new();
        for node in &running {
            match http_get(node.monitor_port, "/healthz") {
                Ok((200, _)) => {}
                Ok((status, body)) => {
                    return Some(format!(
                        "node :{} healthz {status} {}",
                        node.port,
                        body.trim()
                    ))
                }
                Err(error) => return Some(format!("node :{} healthz: {error}", node.port)),
            }
            let jsz = match http_get(node.monitor_port, "/jsz") {
                Ok((200, body)) => body,
                other => return Some(format!("node :{} jsz: {other:?}", node.port)),
            };
            let jsz: serde_json::Value = match serde_json::from_str(&jsz) {
                Ok(value) => value,
                Err(error) => return Some(format!("node :{} jsz is not JSON: {error}", node.port)),
            };
            let meta = &jsz["meta_cluster"];
            let leader = meta["leader"].as_str().unwrap_or_default().to_owned();
            if leader.is_empty() {
                return Some(format!("node :{} knows no meta leader", node.port));
            }
            // Only the leader knows whether its followers are current.
            if leader == node.server_name {
                let replicas = meta["replicas"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                let current = replicas
                    .iter()
                    .filter(|replica| replica["current"].as_bool() == Some(true))
                    .count();
                if current + 1 < running.len() {
                    return Some(format!(
                        "meta leader {leader} sees {current} of {} peers current",
                        running.len() - 1
                    ));
                }
            }
            leaders.push(leader);
        }
        leaders.dedup();
        (leaders.len() > 1).then(|| format!("nodes disagree on the meta leader: {leaders:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wait::wait_for;
    use async_nats::jetstream::{self, stream};

    const TEST_TIMEOUT: Duration = Duration::from_secs(30);

    fn stream_config(name: &str, replicas: usize) -> stream::Config {
        stream::Config {
            name: name.to_owned(),
            subjects: vec![format!("{}.>", name.to_lowercase())],
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn single_node_persists_a_stream_across_kill_and_restart() {
        let mut server = NatsServer::start();
        assert_eq!(server.url(), format!("nats://127.0.0.1:{}", server.port()));
        let store_dir = server.store_dir().to_path_buf();
        assert!(store_dir.is_dir());

        let client = async_nats::connect(server.url()).await.expect("connect");
        let js = jetstream::new(client);
        js.create_stream(stream_config("PERSIST", 1))
            .await
            .expect("create stream");
        for index in 0..3 {
            js.publish(format!("persist.{index}"), "payload".into())
                .await
                .expect("publish")
                .await
                .expect("publish ack");
        }
        drop(js);

        server.kill();
        assert!(
            async_nats::connect(server.url()).await.is_err(),
            "a killed server refuses connections"
        );
        server.restart();
        assert_eq!(server.store_dir(), store_dir);

        let js = jetstream::new(async_nats::connect(server.url()).await.expect("reconnect"));
        let mut persisted = js
            .get_stream("PERSIST")
            .await
            .expect("stream survives restart");
        let info = persisted.info().await.expect("stream info");
        assert_eq!(info.state.messages, 3);
    }

    #[tokio::test]
    async fn drop_kills_the_server_and_removes_its_directory() {
        let server = NatsServer::start();
        let url = server.url();
        let dir = server
            .store_dir()
            .parent()
            .expect("store in temp dir")
            .to_path_buf();
        assert!(dir.is_dir());
        drop(server);
        assert!(
            !dir.exists(),
            "temporary directory {} removed",
            dir.display()
        );
        assert!(async_nats::connect(url).await.is_err());
    }

    #[tokio::test]
    async fn two_servers_run_side_by_side() {
        let first = NatsServer::start();
        let second = NatsServer::start();
        assert_ne!(first.port(), second.port());
        assert_ne!(first.store_dir(), second.store_dir());
    }

    #[tokio::test]
    async fn three_node_cluster_replicates_a_stream_and_survives_a_node_restart() {
        let mut cluster = NatsCluster::start(3);
        assert_eq!(cluster.nodes.len(), 3);
        assert_eq!(cluster.url(), cluster.urls().join(","));

        let client = async_nats::connect(cluster.urls())
            .await
            .expect("connect to cluster");
        let js = jetstream::new(client);
        let info = wait_for("an R3 stream to be created", TEST_TIMEOUT, || async {
            let mut created = js
                .get_or_create_stream(stream_config("REPLICATED", 3))
                .await
                .ok()?;
            created.info().await.ok().cloned()
        })
        .await;
        assert_eq!(info.config.num_replicas, 3);
        let stream_cluster = info.cluster.expect("cluster info of an R3 stream");
        assert_eq!(stream_cluster.name.as_deref(), Some(CLUSTER_NAME));
        assert_eq!(stream_cluster.replicas.len(), 2);
        publish_once(&js, "replicated.before").await;

        cluster.nodes[2].kill();
        publish_once(&js, "replicated.during").await;
        cluster.nodes[2].restart();
        cluster.wait_ready();

        wait_for(
            "all replicas current with both messages",
            TEST_TIMEOUT,
            || async {
                let mut replicated = js.get_stream("REPLICATED").await.ok()?;
                let info = replicated.info().await.ok()?;
                let replicas = info.cluster.as_ref()?.replicas.clone();
                let all_current = replicas.len() == 2 && replicas.iter().all(|peer| peer.current);
                (all_current && info.state.messages == 2).then_some(())
            },
        )
        .await;
    }

    /// Publishes until acknowledged; the message id makes retries after a lost ack harmless
    /// while a stream leader is being elected.
    async fn publish_once(js: &jetstream::Context, subject: &'static str) {
        wait_for(subject, TEST_TIMEOUT, || async {
            let publish = jetstream::message::PublishMessage::build()
                .payload(subject.into())
                .message_id(subject);
            js.send_publish(subject, publish).await.ok()?.await.ok()
        })
        .await;
    }

    #[test]
    #[should_panic(expected = "at least 2 nodes")]
    fn one_node_cluster_is_refused() {
        NatsCluster::start(1);
    }
}

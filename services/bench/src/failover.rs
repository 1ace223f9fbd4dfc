//! `berth-bench --failover-kills N`: NATS failover on a 3-node cluster (R3 streams) with
//! three `berth-control` processes. First, on fresh clusters, the time from starting three
//! replicas together to all three serving. Then, N times: kill the node that leads
//! `BERTH_STATE` (SIGKILL) while RunTask probes are sent every 50 ms, and measure the time
//! from the kill until `BERTH_STATE`, `BERTH_CMD` and `BERTH_OUTCOME` all have a leader
//! again (their leader-elected advisories; 0 for a stream the node did not lead) and the
//! JetStream meta layer has a leader (polled from the survivors' `/jsz`: creating a
//! consumer needs it, and the view recreates its consumer after losing its server), and
//! from the last of those elections to the first RunTask answered with its task placed;
//! then restart the node and let the cluster settle.

use crate::api::Api;
use crate::processes::ControlProcess;
use crate::stats::{human, Samples};
use anyhow::{bail, Context as _};
use berth_messages::command::Action;
use berth_messages::streams;
use berth_testkit::NatsCluster;
use futures::StreamExt;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bound on everything one phase waits for.
const PATIENCE: Duration = Duration::from_secs(120);
/// A RunTask probe is sent this often while writes are down.
const PROBE_EVERY: Duration = Duration::from_millis(50);
const POLL: Duration = Duration::from_millis(25);
/// Without an advisory for this long, the bench asks for the leaders itself.
const ADVISORY_QUIET: Duration = Duration::from_secs(1);
const STREAMS: [&str; 3] = [streams::STATE, streams::CMD, streams::OUTCOME];
const ADVISORIES: &str = "$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.*";
/// The command consumer is a replicated group of its own, with its own election: no
/// command is delivered before it has a leader.
const CONSUMER_ADVISORIES: &str = "$JS.EVENT.ADVISORY.CONSUMER.LEADER_ELECTED.*.*";

/// What one kill measured.
struct Kill {
    victim: String,
    /// Kill → a leader for each of STATE, CMD, OUTCOME, the command consumer and the
    /// meta layer.
    elected: [Duration; 5],
    /// Kill → the first probe answered with its task.
    written: Duration,
    /// Kill → when that probe was sent.
    sent: Duration,
    /// Wall-clock time of the kill, to find it in the replicas' logs.
    at: String,
}

pub async fn run(
    control_bin: &Path,
    work_dir: &Path,
    kills: usize,
    starts: usize,
) -> anyhow::Result<()> {
    let mut start_times = Samples::default();
    let mut kept = None;
    for round in 0..starts.max(1) {
        let dir = work_dir.join(format!("start-{round}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let cluster = tokio::task::spawn_blocking(|| NatsCluster::start(3))
            .await
            .context("starting nats-server")?;
        let (replicas, took) = start_three(control_bin, &cluster, &dir).await?;
        println!(
            "fresh cluster {round}: three replicas serve after {}",
            human(took)
        );
        start_times.push(took);
        if let Some((cluster, replicas)) = kept.replace((cluster, replicas)) {
            drop(replicas);
            tokio::task::spawn_blocking(move || drop(cluster))
                .await
                .ok();
        }
    }
    let Some((mut cluster, _replicas)) = kept else {
        bail!("no cluster started");
    };
    let urls = cluster.urls();
    let client = async_nats::ConnectOptions::new()
        .name("berth-bench-failover")
        .connect(urls.clone())
        .await
        .context("connecting")?;
    let api = Api::new(client.clone(), Duration::from_secs(30));
    setup(&api, &client).await?;
    let js = async_nats::jetstream::new(client.clone());
    let mut results = Vec::new();
    for round in 0..kills {
        let victim_name = leader_of(&js, streams::STATE).await?;
        let victim = cluster
            .nodes
            .iter()
            .position(|n| n.server_name() == victim_name)
            .context("the leader is a node of the cluster")?;
        let kill = measure_kill(&mut cluster, victim, &js, &api).await?;
        println!(
            "kill {round} ({}, at {}): leaders STATE {} CMD {} OUTCOME {} command consumer {} meta {}; first write {} after the kill (its probe sent after {}), {} after the last election",
            kill.victim,
            kill.at,
            human(kill.elected[0]),
            human(kill.elected[1]),
            human(kill.elected[2]),
            human(kill.elected[3]),
            human(kill.elected[4]),
            human(kill.written),
            human(kill.sent),
            signed(kill.written, last_election(&kill)),
        );
        results.push(kill);
        let mut node = cluster.nodes.remove(victim);
        node = tokio::task::spawn_blocking(move || {
            node.restart();
            node
        })
        .await
        .context("restarting the node")?;
        cluster.nodes.insert(victim, node);
        settle(&api).await?;
    }
    report(&mut start_times, &results);
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .ok();
    Ok(())
}

/// `a - b`, with a sign.
fn signed(a: Duration, b: Duration) -> String {
    if a >= b {
        human(a - b)
    } else {
        format!("-{}", human(b - a))
    }
}

fn last_election(kill: &Kill) -> Duration {
    kill.elected.iter().copied().max().unwrap_or_default()
}

fn report(start_times: &mut Samples, kills: &[Kill]) {
    let p = start_times.summary();
    println!(
        "\nthree replicas on a fresh 3-node cluster, start to serving ({} starts): p50 {}, max {}",
        p.count,
        human(p.p50),
        human(p.max)
    );
    if kills.is_empty() {
        return;
    }
    let series = |name: &str, value: &dyn Fn(&Kill) -> Duration| {
        let mut samples = Samples::default();
        kills.iter().for_each(|k| samples.push(value(k)));
        let p = samples.summary();
        println!(
            "{name:<48} p50 {:>9}  p99 {:>9}  max {:>9}",
            human(p.p50),
            human(p.p99),
            human(p.max)
        );
    };
    println!("\nover {} kills of the BERTH_STATE leader:", kills.len());
    series("kill → BERTH_STATE leader", &|k| k.elected[0]);
    series("kill → BERTH_CMD leader", &|k| k.elected[1]);
    series("kill → command consumer leader", &|k| k.elected[3]);
    series("kill → meta leader", &|k| k.elected[4]);
    series("kill → streams, consumer and meta led", &last_election);
    series("kill → first RunTask answered", &|k| k.written);
    let mut after = Samples::default();
    kills
        .iter()
        .for_each(|k| after.push(k.written.saturating_sub(last_election(k))));
    let p = after.summary();
    println!(
        "{:<48} p50 {:>9}  p99 {:>9}  max {:>9}  (0 when a write came first)",
        "last election → first RunTask answered",
        human(p.p50),
        human(p.p99),
        human(p.max)
    );
}

/// Starts three replicas at once; returns them once all three answer `$SRV.PING.berth`.
async fn start_three(
    control_bin: &Path,
    cluster: &NatsCluster,
    dir: &Path,
) -> anyhow::Result<(Vec<ControlProcess>, Duration)> {
    let urls = cluster.urls();
    let started = Instant::now();
    let replicas = (0..3)
        .map(|i| {
            let log: PathBuf = dir.join(format!("berth-control-{i}.log"));
            ControlProcess::spawn(control_bin, &urls, 3, &log)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let client = async_nats::connect(urls).await.context("connecting")?;
    loop {
        if berth_testkit::service_instances(&client, "berth", 3).await >= 3 {
            return Ok((replicas, started.elapsed()));
        }
        if started.elapsed() > PATIENCE {
            bail!("three replicas did not all serve within {PATIENCE:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn setup(api: &Api, client: &async_nats::Client) -> anyhow::Result<()> {
    let _: Value = api
        .call(Action::CreateCluster, &json!({"clusterName": "failover"}))
        .await?;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let reply: Value = api
            .call(
                Action::RegisterContainerInstance,
                &json!({
                    "cluster": "failover",
                    "totalResources": [
                        {"name": "CPU", "type": "INTEGER", "integerValue": 10_000_000},
                        {"name": "MEMORY", "type": "INTEGER", "integerValue": 10_000_000},
                    ],
                    "versionInfo": {"agentVersion": "bench"},
                }),
            )
            .await?;
        let arn = reply["containerInstance"]["containerInstanceArn"]
            .as_str()
            .context("instance arn")?;
        ids.push(arn.rsplit('/').next().unwrap_or(arn).to_string());
    }
    // Heartbeats for the whole run (the task ends with the process).
    let beats: Vec<String> = ids
        .iter()
        .map(|id| berth_messages::subjects::heartbeat("failover", id))
        .collect();
    let client = client.clone();
    tokio::spawn(async move {
        loop {
            for subject in &beats {
                let _ = client.publish(subject.clone(), "{}".into()).await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let _: Value = api
        .call(
            Action::RegisterTaskDefinition,
            &json!({"family": "probe", "containerDefinitions": [
                {"name": "app", "image": "busybox", "cpu": 1, "memory": 1, "essential": true}
            ]}),
        )
        .await?;
    settle(api).await
}

/// One RunTask answered with its task placed.
async fn probe(api: &Api) -> bool {
    let reply: Result<Value, _> = api
        .call(
            Action::RunTask,
            &json!({"cluster": "failover", "taskDefinition": "probe", "count": 1}),
        )
        .await;
    reply.is_ok_and(|r| r["tasks"].as_array().is_some_and(|t| t.len() == 1))
}

/// Waits until a RunTask is answered within a second (the cluster serves normally).
async fn settle(api: &Api) -> anyhow::Result<()> {
    let quick = api.with_timeout(Duration::from_secs(1));
    let started = Instant::now();
    while !probe(&quick).await {
        if started.elapsed() > PATIENCE {
            bail!("RunTask not answered within {PATIENCE:?}");
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

async fn stream_leader(js: &async_nats::jetstream::Context, stream: &str) -> Option<String> {
    let info = tokio::time::timeout(Duration::from_millis(200), async {
        let mut s = js.get_stream(stream).await.ok()?;
        s.info().await.ok().cloned()
    });
    info.await.ok()??.cluster?.leader
}

/// The server leading the command consumer.
async fn consumer_leader(js: &async_nats::jetstream::Context) -> anyhow::Result<String> {
    let started = Instant::now();
    loop {
        let info = tokio::time::timeout(Duration::from_millis(200), async {
            let stream = js.get_stream(streams::CMD).await.ok()?;
            let mut consumer: async_nats::jetstream::consumer::PullConsumer =
                stream.get_consumer(streams::CMD_CONSUMER).await.ok()?;
            consumer.info().await.ok().cloned()
        });
        if let Some(leader) = info.await.ok().flatten().and_then(|i| i.cluster?.leader) {
            return Ok(leader);
        }
        if started.elapsed() > PATIENCE {
            bail!("the command consumer has no leader");
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn leader_of(js: &async_nats::jetstream::Context, stream: &str) -> anyhow::Result<String> {
    let started = Instant::now();
    loop {
        if let Some(leader) = stream_leader(js, stream).await {
            return Ok(leader);
        }
        if started.elapsed() > PATIENCE {
            bail!("{stream} has no leader");
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn measure_kill(
    cluster: &mut NatsCluster,
    victim: usize,
    js: &async_nats::jetstream::Context,
    api: &Api,
) -> anyhow::Result<Kill> {
    let victim_name = cluster.nodes[victim].server_name().to_string();
    // Elections are timed by their advisories, as the replicas see them, through a
    // connection to a node that survives (one to the victim would miss those sent while
    // it reconnects).
    let survivor_url = (cluster.nodes.iter().enumerate())
        .find(|(i, _)| *i != victim)
        .map(|(_, node)| node.url())
        .context("a node survives")?;
    let watcher = async_nats::ConnectOptions::new()
        .name("berth-bench-failover-watch")
        .connect(survivor_url.as_str())
        .await
        .context("connecting to a surviving node")?;
    let watch_js = async_nats::jetstream::new(watcher.clone());
    let streams_elect = watcher
        .subscribe(ADVISORIES)
        .await
        .context("subscribing to leader elections")?;
    let consumers_elect = watcher
        .subscribe(CONSUMER_ADVISORIES)
        .await
        .context("subscribing to leader elections")?;
    let mut advisories = futures::stream::select(streams_elect, consumers_elect);
    let mut led_by_victim = [false; 4];
    for (i, stream) in STREAMS.iter().enumerate() {
        led_by_victim[i] = leader_of(js, stream).await? == victim_name;
    }
    led_by_victim[3] = consumer_leader(js).await? == victim_name;
    let survivors: Vec<u16> = (cluster.nodes.iter().enumerate())
        .filter(|(i, _)| *i != victim)
        .map(|(_, node)| node.monitor_port())
        .collect();
    let meta_led_by_victim = survivors
        .iter()
        .any(|port| meta_leader(*port).as_deref() == Some(victim_name.as_str()));
    let node = &mut cluster.nodes[victim];
    let killed_at = Instant::now();
    let at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    tokio::task::block_in_place(|| node.kill());
    // Probes every 50 ms, each waiting as long as it takes; the first answered wins.
    let written = Arc::new(tokio::sync::Notify::new());
    // (sent, answered) of the first probe answered.
    let first_write = Arc::new(std::sync::Mutex::new(None::<(Instant, Instant)>));
    let probes = {
        let api = api.clone();
        let written = written.clone();
        let first_write = first_write.clone();
        tokio::spawn(async move {
            let mut sent = tokio::task::JoinSet::new();
            let mut every = tokio::time::interval(PROBE_EVERY);
            loop {
                every.tick().await;
                if first_write.lock().map(|w| w.is_some()).unwrap_or(true) {
                    break;
                }
                let api = api.clone();
                let written = written.clone();
                let first_write = first_write.clone();
                sent.spawn(async move {
                    let sent_at = Instant::now();
                    if probe(&api).await {
                        if let Ok(mut first) = first_write.lock() {
                            first.get_or_insert_with(|| (sent_at, Instant::now()));
                        }
                        written.notify_one();
                    }
                });
            }
            while sent.join_next().await.is_some() {}
        })
    };
    let meta = {
        let victim_name = victim_name.clone();
        tokio::task::spawn_blocking(move || {
            if !meta_led_by_victim {
                return Some(Duration::ZERO);
            }
            while killed_at.elapsed() < PATIENCE {
                let elected = survivors
                    .iter()
                    .any(|port| meta_leader(*port).is_some_and(|leader| leader != victim_name));
                if elected {
                    return Some(killed_at.elapsed());
                }
                std::thread::sleep(POLL);
            }
            None
        })
    };
    let mut elected = [None; 5];
    for (slot, led) in elected.iter_mut().zip(led_by_victim) {
        if !led {
            *slot = Some(Duration::ZERO);
        }
    }
    elected[4] = Some(Duration::ZERO);
    while elected[..4].iter().any(Option::is_none) {
        if killed_at.elapsed() > PATIENCE {
            bail!("the streams did not all elect a leader");
        }
        // An advisory sent while this client reconnects is lost: after a quiet second,
        // the leaders are asked for (the time is then an upper bound).
        let Ok(Some(advisory)) = tokio::time::timeout(ADVISORY_QUIET, advisories.next()).await
        else {
            for (i, stream) in STREAMS.iter().enumerate() {
                if elected[i].is_none()
                    && stream_leader(&watch_js, stream)
                        .await
                        .is_some_and(|l| l != victim_name)
                {
                    elected[i] = Some(killed_at.elapsed());
                }
            }
            if elected[3].is_none()
                && consumer_leader(&watch_js)
                    .await
                    .is_ok_and(|l| !l.is_empty() && l != victim_name)
            {
                elected[3] = Some(killed_at.elapsed());
            }
            continue;
        };
        let subject = advisory.subject.as_str();
        let stream = subject.rsplit('.').next().unwrap_or_default();
        let slot = if subject.starts_with("$JS.EVENT.ADVISORY.CONSUMER.") {
            subject
                .ends_with(&format!(".{}.{}", streams::CMD, streams::CMD_CONSUMER))
                .then_some(3)
        } else {
            STREAMS.iter().position(|s| *s == stream)
        };
        if let Some(i) = slot {
            elected[i].get_or_insert_with(|| killed_at.elapsed());
        }
    }
    elected[4] = Some(
        meta.await
            .context("meta leader watch")?
            .context("the meta layer elected no leader")?,
    );
    tokio::time::timeout(PATIENCE, written.notified())
        .await
        .context("no RunTask answered after the kill")?;
    probes.await.context("probes")?;
    let (sent, written) = first_write
        .lock()
        .ok()
        .and_then(|w| *w)
        .context("first write")?;
    Ok(Kill {
        victim: victim_name,
        elected: elected.map(Option::unwrap_or_default),
        written: written - killed_at,
        sent: sent - killed_at,
        at,
    })
}

/// The meta leader a node's `/jsz` names, if it names one.
fn meta_leader(monitor_port: u16) -> Option<String> {
    let (status, body) = berth_testkit::http_get(monitor_port, "/jsz").ok()?;
    if status != 200 {
        return None;
    }
    let jsz: Value = serde_json::from_str(&body).ok()?;
    let leader = jsz["meta_cluster"]["leader"].as_str()?;
    (!leader.is_empty()).then(|| leader.to_string())
}

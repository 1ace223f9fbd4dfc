//! Fleets of real shape (`berth-agent --sim N --sim-shape real`): every hollow host holds
//! its own NATS connection and its own consumer on `BERTH_STATE`, as real agents do. The
//! run measures their registration, what they cost nats-server at idle, placement
//! throughput on them (beside the shared-consumer hosts of the same run), task start to
//! RUNNING on a large and a small fleet, and a reconnect storm: nats-server restarted
//! under the fleet, every agent's resync (from the `tasksSyncedAt` of its heartbeats) and
//! the API's latency meanwhile.

use crate::api::Api;
use crate::placement::PlacementRun;
use crate::processes::Traffic;
use crate::procfs::{CpuMeter, CpuUse};
use crate::runtime::StartRun;
use crate::stats::{Percentiles, Samples};
use berth_messages::agent::Heartbeat;
use berth_messages::api::{DescribeClustersRequest, DescribeClustersResponse};
use berth_messages::command::Action;
use berth_messages::{codec, subjects};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The storm goal: every agent resynced this soon after the server went down.
pub const RESYNC_GOAL: Duration = Duration::from_secs(30);
/// How long the storm measurement waits for stragglers before it reports them missing.
const RESYNC_PATIENCE: Duration = Duration::from_secs(120);
/// API probes per second during the storm.
const PROBES_PER_SECOND: u32 = 20;
/// Bound on one probe: a probe that gets no answer counts as an error.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the fleet phase measured.
#[derive(Debug, Clone, Default)]
pub struct FleetRun {
    pub hosts: usize,
    /// From starting the process to every host following its tasks.
    pub registration: Duration,
    /// Consumers on `BERTH_STATE` once the fleet is up.
    pub consumers: usize,
    pub idle: Option<Idle>,
    /// Placement throughput on the fleet (tasks that never start).
    pub placement: Option<PlacementRun>,
    /// Task start to RUNNING on the fleet, and on a fleet of `small_hosts`.
    pub start: Option<StartRun>,
    pub small_hosts: usize,
    pub start_small: Option<StartRun>,
    pub storm: Option<Storm>,
}

/// The fleet connected and doing nothing.
#[derive(Debug, Clone, Default)]
pub struct Idle {
    pub cpu: CpuUse,
    pub nats_rss_kib: Option<u64>,
    pub fleet_rss_kib: Option<u64>,
    /// Client connections nats-server holds (`/varz`).
    pub connections: Option<u64>,
    /// Messages nats-server received and sent over the window.
    pub traffic: Option<Traffic>,
}

/// nats-server restarted under the fleet.
#[derive(Debug, Clone, Default)]
pub struct Storm {
    pub hosts: usize,
    /// From the kill until the restarted server accepts clients.
    pub restart: Duration,
    /// Agents seen resynced (a `tasksSyncedAt` after the kill) within the patience.
    pub resynced: usize,
    /// Agents resynced within [`RESYNC_GOAL`].
    pub within_goal: usize,
    /// Per agent, from the kill to the end of its resync.
    pub resync: Percentiles,
    /// API probes (DescribeClusters) from the restart until every agent resynced.
    pub api: Percentiles,
    pub api_calls: u64,
    pub api_errors: u64,
}

impl Idle {
    /// nats-server's CPU share of one core over the window.
    pub fn nats_cpu_share(&self) -> Option<f64> {
        share(&self.cpu, "nats-server")
    }

    /// The fleet process's CPU share of one core over the window.
    pub fn fleet_cpu_share(&self) -> Option<f64> {
        share(&self.cpu, "fleet")
    }

    /// Messages per second through nats-server, both ways, per host.
    pub fn messages_per_host_second(&self, hosts: usize) -> Option<f64> {
        let t = self.traffic?;
        let secs = self.cpu.elapsed.as_secs_f64();
        (secs > 0.0 && hosts > 0).then(|| (t.in_msgs + t.out_msgs) as f64 / secs / hosts as f64)
    }
}

fn share(cpu: &CpuUse, group: &str) -> Option<f64> {
    let secs = cpu.elapsed.as_secs_f64();
    let used = cpu.by_process.iter().find(|(name, _)| name == group)?.1;
    (secs > 0.0).then(|| used.as_secs_f64() / secs)
}

/// Measures the fleet at rest over `window`.
pub async fn idle(
    groups: Vec<(String, Vec<u32>)>,
    monitor_ports: &[u16],
    nats_pids: &[u32],
    fleet_pid: u32,
    window: Duration,
) -> Idle {
    let traffic_before = Traffic::read(monitor_ports).await;
    let meter = CpuMeter::start(groups);
    tokio::time::sleep(window).await;
    let cpu = meter.stop();
    let traffic = match (Traffic::read(monitor_ports).await, traffic_before) {
        (Some(after), Some(before)) => Some(after.since(&before)),
        _ => None,
    };
    Idle {
        cpu,
        nats_rss_kib: nats_pids
            .iter()
            .filter_map(|pid| crate::procfs::rss_kib(*pid))
            .reduce(|a, b| a + b),
        fleet_rss_kib: crate::procfs::rss_kib(fleet_pid),
        connections: connections(monitor_ports).await,
        traffic,
    }
}

/// Client connections over every node (`/varz`).
async fn connections(monitor_ports: &[u16]) -> Option<u64> {
    let ports = monitor_ports.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut total = 0;
        for port in ports {
            let (_, body) = berth_testkit::http_get(port, "/varz").ok()?;
            let varz: serde_json::Value = serde_json::from_str(&body).ok()?;
            total += varz.get("connections")?.as_u64()?;
        }
        Some(total)
    })
    .await
    .ok()
    .flatten()
}

/// The latest `tasksSyncedAt` of every host of `cluster`, from their heartbeats.
pub struct SyncWatch {
    synced: Arc<Mutex<HashMap<String, f64>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SyncWatch {
    pub async fn start(client: &async_nats::Client, cluster: &str) -> anyhow::Result<SyncWatch> {
        let mut beats = client.subscribe(subjects::heartbeat(cluster, "*")).await?;
        let synced: Arc<Mutex<HashMap<String, f64>>> = Arc::default();
        let kept = synced.clone();
        let task = tokio::spawn(async move {
            while let Some(msg) = beats.next().await {
                let Ok(beat) = codec::decode_record::<Heartbeat>(&msg.payload) else {
                    continue;
                };
                if let (Some(at), Ok(mut synced)) = (beat.tasks_synced_at, kept.lock()) {
                    synced.insert(beat.container_instance_arn, at);
                }
            }
        });
        Ok(SyncWatch { synced, task })
    }

    /// Seconds from `since` (epoch seconds) to each resync that ended after it.
    fn resynced_after(&self, since: f64) -> Vec<f64> {
        self.synced
            .lock()
            .map(|s| {
                s.values()
                    .filter(|at| **at > since)
                    .map(|at| at - since)
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for SyncWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Restarts the server with `restart` (blocking: kill, start, wait until it accepts
/// clients) under a fleet of `hosts` watched by `watch`, and measures the storm.
pub async fn storm(api: &Api, watch: &SyncWatch, hosts: usize, restart: impl FnOnce()) -> Storm {
    let killed_at = berth_messages::now_epoch_seconds();
    let killed = Instant::now();
    tokio::task::block_in_place(restart);
    let restart = killed.elapsed();

    let probe = api.with_timeout(PROBE_TIMEOUT);
    let done = Arc::new(tokio::sync::Notify::new());
    let prober = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut samples = Samples::with_capacity(4096);
            let mut errors = 0u64;
            let mut tick =
                tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(PROBES_PER_SECOND)));
            let request = DescribeClustersRequest::default();
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = done.notified() => break,
                }
                let t0 = Instant::now();
                let answer: Result<DescribeClustersResponse, _> =
                    probe.call(Action::DescribeClusters, &request).await;
                match answer {
                    Ok(_) => samples.push(t0.elapsed()),
                    Err(_) => errors += 1,
                }
            }
            (samples, errors)
        })
    };
    let deadline = killed + RESYNC_PATIENCE;
    while watch.resynced_after(killed_at).len() < hosts && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    done.notify_one();
    let (mut samples, api_errors) = prober.await.unwrap_or_default();
    let waits = watch.resynced_after(killed_at);
    let mut resync = Samples::with_capacity(waits.len());
    for w in &waits {
        resync.push(Duration::from_secs_f64(w.max(0.0)));
    }
    let api_calls = samples.len() as u64 + api_errors;
    Storm {
        hosts,
        restart,
        resynced: waits.len(),
        within_goal: waits
            .iter()
            .filter(|w| **w <= RESYNC_GOAL.as_secs_f64())
            .count(),
        resync: resync.summary(),
        api: samples.summary(),
        api_calls,
        api_errors,
    }
}

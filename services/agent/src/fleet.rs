//! `berth-agent --sim N --sim-shape real`: N hollow hosts of real shape in one process.
//! Each is a whole agent ([`crate::run_host`]) with the hollow runtime: its own NATS
//! connection, its own subscription to its task records and snapshots of them, its own
//! heartbeats, task actors, reports and log service. Only what runs the containers is hollow, so the load
//! such a fleet puts on nats-server and the control plane is the load of N real agents.
//!
//! Hosts start at most [`STARTS_IN_FLIGHT`] at a time (connect, register, create the
//! consumer), each keeping its identity in `<data-dir>/host-<n>`, so a fleet started
//! again comes back as the same instances. The fleet holds the one lock, on
//! `<data-dir>`: a host holds its connection and no file, so 10,000 hosts fit in a
//! process allowed 20,000 descriptors. The ready line (`berth-agent ready sim=N`)
//! comes once every host follows its tasks.

use crate::config::AgentConfig;
use crate::datadir::DataDir;
use crate::error::AgentError;
use crate::runtime::Kind;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify, Semaphore};

/// Hosts starting (connecting, registering, creating their consumer) at once.
pub const STARTS_IN_FLIGHT: usize = 64;
/// How long the hosts get to wind down once asked to stop.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// The directory of host `n`, inside the fleet's.
fn host_dir(n: usize) -> String {
    format!("host-{n}")
}

/// The configuration of host `n` of the fleet.
pub fn host_config(fleet: &AgentConfig, n: usize) -> AgentConfig {
    AgentConfig {
        runtime: Kind::Sim,
        sim: None,
        data_dir: fleet.data_dir.join(host_dir(n)),
        ..fleet.clone()
    }
}

/// Runs `instances` hosts of real shape until `shutdown`; fails with the first host that
/// cannot start (a missing cluster, a data directory in use).
pub async fn run(
    config: AgentConfig,
    instances: usize,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    if instances == 0 {
        return Err(AgentError::Config {
            flag: "--sim",
            reason: "the number of hollow instances must be at least 1".into(),
        });
    }
    // One lock for the whole fleet: thousands of hosts must not hold a file each.
    let root = Arc::new(DataDir::open(&config.data_dir)?);
    let (stop_tx, stop_rx) = watch::channel(false);
    let starts = Arc::new(Semaphore::new(STARTS_IN_FLIGHT));
    let ready = Arc::new(AtomicUsize::new(0));
    let all_ready = Arc::new(Notify::new());
    let started = Instant::now();
    let mut hosts: FuturesUnordered<_> = (0..instances)
        .map(|n| {
            let host = host_config(&config, n);
            let root = root.clone();
            let starts = starts.clone();
            let ready = ready.clone();
            let all_ready = all_ready.clone();
            let mut stop = stop_rx.clone();
            async move {
                let Ok(permit) = starts.acquire_owned().await else {
                    return Ok(());
                };
                let data = DataDir::open_in_fleet(&root, Path::new(&host_dir(n)))?;
                let (tx, rx) = tokio::sync::oneshot::channel();
                let stopped = async move {
                    let _ = stop.wait_for(|stop| *stop).await;
                };
                let watch_ready = async move {
                    tokio::pin!(rx);
                    // A host that cannot follow its tasks (impaired) lets the next start.
                    let became_ready = tokio::select! {
                        r = &mut rx => r.is_ok(),
                        _ = tokio::time::sleep(crate::IMPAIRED_AFTER) => {
                            drop(permit);
                            rx.await.is_ok()
                        }
                    };
                    if became_ready && ready.fetch_add(1, Ordering::AcqRel) + 1 == instances {
                        all_ready.notify_one();
                    }
                };
                let (result, ()) = futures::join!(
                    crate::run_host(host, stopped, Some(crate::FleetHost { data, ready: tx })),
                    watch_ready
                );
                result
            }
        })
        .collect();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            done = hosts.next() => match done {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    let _ = stop_tx.send(true);
                    drain(&mut hosts).await;
                    return Err(e);
                }
                None => return Ok(()),
            },
            _ = all_ready.notified() => {
                tracing::info!(instances, elapsed = ?started.elapsed(), "hollow hosts of real shape ready");
                eprintln!("berth-agent ready sim={instances}");
            }
            _ = &mut shutdown => {
                let _ = stop_tx.send(true);
                drain(&mut hosts).await;
                return Ok(());
            }
        }
    }
}

/// Lets the hosts finish their shutdown, for at most [`STOP_GRACE`].
async fn drain<F: Future<Output = Result<(), AgentError>>>(hosts: &mut FuturesUnordered<F>) {
    let all = async {
        while let Some(done) = hosts.next().await {
            if let Err(e) = done {
                tracing::debug!(error = %e, "hollow host ended with an error");
            }
        }
    };
    if tokio::time::timeout(STOP_GRACE, all).await.is_err() {
        tracing::warn!("some hollow hosts did not stop in time");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_host_has_its_own_directory_and_the_hollow_runtime() {
        let fleet = AgentConfig {
            data_dir: "/var/lib/berth".into(),
            sim: Some(3),
            ..AgentConfig::default()
        };
        let host = host_config(&fleet, 2);
        assert_eq!(host.data_dir, std::path::Path::new("/var/lib/berth/host-2"));
        assert_eq!(host.runtime, Kind::Sim);
        assert_eq!(host.sim, None);
        assert_eq!(host.cluster, fleet.cluster);
    }
}

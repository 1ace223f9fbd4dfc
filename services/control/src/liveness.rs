//! Agent liveness, control-plane side. Any message on
//! `berth.host.<cluster>.<instance-id>.heartbeat` is a beat from that instance's agent.
//! Every replica hears every beat; `agentConnected` flips to false after three missed
//! intervals and back to true on the next beat. A flip is one conditional write through
//! the instance actor, and a flip that another replica already made re-reads as a no-op,
//! so there is one journal write per flip, never one per beat. After a restart a replica
//! grants every instance three intervals of grace before judging it.

use crate::actors::instance::{InstanceOp, OpKind};
use crate::shared::{Metrics, Shared};
use berth_messages::model::{ContainerInstance, InstanceStatus};
use berth_messages::subjects;
use dashmap::{DashMap, DashSet};
use futures::StreamExt;
use std::sync::Arc;
use std::time::Instant;

const MISSED_BEATS: u32 = 3;

pub async fn run(shared: Shared) -> Result<(), async_nats::Error> {
    let beats: Arc<DashMap<(String, String), Instant>> = Arc::new(DashMap::new());
    let flipping: Arc<DashSet<(String, String)>> = Arc::new(DashSet::new());
    let started = Instant::now();
    let mut sub = shared
        .journal
        .client()
        .subscribe(subjects::HEARTBEAT_ALL.to_string())
        .await?;
    let checker = {
        let shared = shared.clone();
        let beats = beats.clone();
        let flipping = flipping.clone();
        tokio::spawn(async move {
            let interval = shared.config.heartbeat();
            let mut ticker = tokio::time::interval(interval / 2);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_tick = Instant::now();
            // When this replica itself was starved of CPU, silence says nothing about the
            // agents: it grants a new grace period instead of flipping every instance.
            let mut grace_until = started;
            loop {
                ticker.tick().await;
                let limit = interval * MISSED_BEATS;
                if last_tick.elapsed() > interval {
                    grace_until = Instant::now() + limit;
                    tracing::warn!(
                        late_ms = last_tick.elapsed().as_millis() as u64,
                        "liveness check ran late; granting agents a grace period"
                    );
                }
                last_tick = Instant::now();
                if Instant::now() < grace_until {
                    continue;
                }
                for cluster in clusters(&shared) {
                    for ci in shared.view.instances(&cluster) {
                        if !ci.value.agent_connected || ci.value.status == InstanceStatus::Inactive
                        {
                            continue;
                        }
                        let id = berth_messages::arn::container_instance_id(
                            &ci.value.container_instance_arn,
                        )
                        .1
                        .to_string();
                        let key = (cluster.clone(), id);
                        // A registration counts as a beat: the agent has just spoken.
                        let since_registration =
                            berth_messages::now_epoch_seconds() - ci.value.registered_at;
                        if since_registration < limit.as_secs_f64() {
                            continue;
                        }
                        let last = beats
                            .get(&key)
                            .map(|t| *t)
                            .unwrap_or(started)
                            .max(grace_until.checked_sub(limit).unwrap_or(started));
                        if last.elapsed() > limit {
                            flip(&shared, &flipping, key, false);
                        }
                    }
                }
            }
        })
    };
    while let Some(msg) = sub.next().await {
        let Some((cluster, instance)) = subjects::parse_heartbeat(&msg.subject) else {
            continue;
        };
        let key = (cluster.to_string(), instance.to_string());
        beats.insert(key.clone(), Instant::now());
        let disconnected = shared.view.instance(cluster, instance).is_some_and(|ci| {
            !ci.value.agent_connected && ci.value.status != InstanceStatus::Inactive
        });
        if disconnected {
            flip(&shared, &flipping, key, true);
        }
    }
    checker.abort();
    Ok(())
}

fn clusters(shared: &Shared) -> Vec<String> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = shared.view.page_clusters(after.as_deref(), 500);
        out.extend(page.items.iter().map(|c| c.value.cluster_name.clone()));
        match page.next {
            Some(n) => after = Some(n),
            None => return out,
        }
    }
}

/// Writes `agentConnected = connected` unless a flip for this instance is in flight.
fn flip(
    shared: &Shared,
    flipping: &Arc<DashSet<(String, String)>>,
    key: (String, String),
    connected: bool,
) {
    if !flipping.insert(key.clone()) {
        return;
    }
    let shared = shared.clone();
    let flipping = flipping.clone();
    tokio::spawn(async move {
        let command_id = format!("internal-liveness-{}", crate::ids::fresh_command_id());
        let op = OpKind::Mutate(Box::new(move |ci: &mut ContainerInstance| {
            if ci.status != InstanceStatus::Inactive {
                ci.agent_connected = connected;
            }
            Ok(())
        }));
        match InstanceOp::run(&shared, &key.0, &key.1, &command_id, op).await {
            Ok(done) => {
                Metrics::inc(&shared.metrics.agent_flips);
                tracing::info!(cluster = %key.0, instance = %key.1, connected, version = done.version, "agent connectivity changed");
                // Let the view catch up so the next tick does not flip again.
                shared
                    .view
                    .wait_for(done.version, shared.config.heartbeat())
                    .await;
            }
            Err(e) => {
                tracing::warn!(cluster = %key.0, instance = %key.1, error = %e, "agent flip failed")
            }
        }
        flipping.remove(&key);
    });
}

//! The hollow instances themselves: one slot each, filled in as its registration is
//! answered; registration of all of them with bounded concurrency; and the one heartbeat
//! loop that beats for every registered slot, spread evenly over the interval so that
//! thousands of instances make a steady trickle rather than bursts.

use crate::api;
use berth_client::ClientError;
use berth_messages::agent::Heartbeat;
use berth_messages::api::{ContainerInstanceResponse, RegisterContainerInstanceRequest};
use berth_messages::command::Action;
use berth_messages::model::{Attribute, Resource, VersionInfo};
use berth_messages::{arn, codec, subjects};
use futures::StreamExt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Registrations in flight at once.
pub const REGISTRATIONS_IN_FLIGHT: usize = 64;
/// At most this many heartbeat slices per interval.
const MAX_SLICES: usize = 50;
/// At most one warning about late heartbeats this often.
const LATE_WARNING_EVERY: Duration = Duration::from_secs(10);
/// What hollow instances report as their agent version.
pub const AGENT_VERSION: &str = concat!("berth-sim ", env!("CARGO_PKG_VERSION"));

/// A registered hollow instance.
#[derive(Debug)]
pub struct Identity {
    pub arn: String,
    pub instance_id: String,
    heartbeat_subject: String,
}

/// One hollow instance: its identity once registered and how many tasks it holds.
#[derive(Debug, Default)]
pub struct Slot {
    pub identity: OnceLock<Identity>,
    pub tasks: AtomicU32,
}

/// Every hollow instance of this process.
#[derive(Debug)]
pub struct Fleet {
    pub cluster: String,
    pub slots: Vec<Slot>,
}

/// What every registration asks for.
#[derive(Debug, Clone)]
pub struct Shape {
    pub cpu: i64,
    pub memory: i64,
}

impl Fleet {
    pub fn new(cluster: &str, instances: usize) -> Fleet {
        Fleet {
            cluster: cluster.to_string(),
            slots: (0..instances).map(|_| Slot::default()).collect(),
        }
    }

    pub fn identity(&self, slot: usize) -> Option<&Identity> {
        self.slots.get(slot).and_then(|s| s.identity.get())
    }

    /// ARNs of the registered instances, in slot order.
    pub fn arns(&self) -> Vec<String> {
        self.slots
            .iter()
            .filter_map(|s| s.identity.get().map(|i| i.arn.clone()))
            .collect()
    }

    fn fill(&self, slot: usize, arn: String) {
        let instance_id = arn::container_instance_id(&arn).1.to_string();
        let heartbeat_subject = subjects::heartbeat(&self.cluster, &instance_id);
        if let Some(s) = self.slots.get(slot) {
            let _ = s.identity.set(Identity {
                arn,
                instance_id,
                heartbeat_subject,
            });
        }
    }
}

fn registration(
    cluster: &str,
    shape: &Shape,
    known: Option<&str>,
) -> RegisterContainerInstanceRequest {
    RegisterContainerInstanceRequest {
        cluster: Some(cluster.to_string()),
        total_resources: vec![
            Resource::integer(Resource::CPU, shape.cpu),
            Resource::integer(Resource::MEMORY, shape.memory),
            Resource::string_set(Resource::PORTS, ["22".to_string()]),
            Resource::string_set(Resource::PORTS_UDP, []),
        ],
        version_info: Some(VersionInfo {
            agent_version: Some(AGENT_VERSION.into()),
            ..Default::default()
        }),
        container_instance_arn: known.map(str::to_string),
        attributes: vec![
            attribute("ecs.os-type", "linux"),
            attribute("berth.sim", "true"),
        ],
        ..Default::default()
    }
}

fn attribute(name: &str, value: &str) -> Attribute {
    Attribute {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

/// Registers every slot (re-registering the ARNs in `known`, by slot), at most
/// [`REGISTRATIONS_IN_FLIGHT`] at a time. Stops at the first refusal.
pub async fn register_all(
    client: &async_nats::Client,
    fleet: &Fleet,
    shape: &Shape,
    known: &[String],
) -> Result<(), ClientError> {
    let caller = api::client(client.clone());
    let mut results = futures::stream::iter(0..fleet.slots.len())
        .map(|slot| {
            let request = registration(&fleet.cluster, shape, known.get(slot).map(String::as_str));
            let caller = &caller;
            async move {
                let reply: Result<ContainerInstanceResponse, ClientError> = caller
                    .call_until_answered(
                        Action::RegisterContainerInstance,
                        &request,
                        None,
                        api::BACKOFF,
                    )
                    .await;
                (slot, reply)
            }
        })
        .buffer_unordered(REGISTRATIONS_IN_FLIGHT);
    while let Some((slot, reply)) = results.next().await {
        let instance = reply?.container_instance;
        fleet.fill(slot, instance.container_instance_arn);
    }
    Ok(())
}

/// Beats for every registered slot once per `interval`, forever.
pub async fn heartbeats(client: async_nats::Client, fleet: Arc<Fleet>, interval: Duration) {
    let n = fleet.slots.len();
    let slices = n.clamp(1, MAX_SLICES);
    let mut ticker = tokio::time::interval(interval / slices as u32);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut slice = 0usize;
    let mut warned: Option<tokio::time::Instant> = None;
    loop {
        let due = ticker.tick().await;
        let late = due.elapsed();
        // The control plane judges an agent lost after three missed intervals: say so
        // when this process cannot keep up, before it shows as disconnected instances.
        if late > interval && warned.is_none_or(|w| w.elapsed() > LATE_WARNING_EVERY) {
            tracing::warn!(late = ?late, "heartbeats are late: this process is starved of CPU");
            warned = Some(tokio::time::Instant::now());
        }
        let (from, to) = (slice * n / slices, (slice + 1) * n / slices);
        let now = berth_messages::now_epoch_seconds();
        for s in &fleet.slots[from..to] {
            let Some(id) = s.identity.get() else { continue };
            let beat = Heartbeat {
                container_instance_arn: id.arn.clone(),
                agent_version: AGENT_VERSION.into(),
                sent_at: now,
                running_tasks: s.tasks.load(Ordering::Relaxed),
                impaired: None,
                tasks_synced_at: None,
            };
            let body = codec::encode_record(&beat).unwrap_or_default();
            if let Err(e) = client
                .publish(id.heartbeat_subject.clone(), body.into())
                .await
            {
                tracing::debug!(error = %e, "heartbeat not sent");
            }
        }
        slice = (slice + 1) % slices;
    }
}

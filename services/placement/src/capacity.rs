//! The resource model of a container instance, shared with the control plane and the
//! auditor: registered CPU and MEMORY (integers) and reserved PORTS / PORTS_UDP (string
//! sets), minus what the `allocations` of its non-stopped tasks hold. Decides whether one
//! demand fits and which concrete ports it gets.

use crate::demand::Demand;
use berth_messages::model::{reason, Allocation, ContainerInstance, InstanceStatus, Resource};
use std::collections::BTreeSet;
use std::ops::RangeInclusive;

/// Host ports a dynamic mapping may get (the Linux ephemeral range ECS uses).
pub const DYNAMIC_PORT_RANGE: RangeInclusive<u16> = 49153..=65535;

const DYNAMIC_PORT_COUNT: usize =
    (*DYNAMIC_PORT_RANGE.end() as usize) - (*DYNAMIC_PORT_RANGE.start() as usize) + 1;

/// Why a demand does not fit an instance. The variants are declared in the order [`fit`]
/// checks them, so the order is also closeness: an instance whose shortfall is greater
/// got further through the checks and is closer to fitting (only lacking UDP ports is the
/// closest; an instance that is not ACTIVE is the farthest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Shortfall {
    /// Not ACTIVE (DRAINING and the others take nothing new).
    Inactive,
    /// ACTIVE but its agent is not connected.
    Agent,
    Cpu,
    Memory,
    /// A static TCP port is in use, or no dynamic TCP port is left.
    Ports,
    PortsUdp,
}

impl Shortfall {
    /// The ECS failure reason.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Inactive => reason::INACTIVE,
            Self::Agent => reason::AGENT,
            Self::Cpu => reason::RESOURCE_CPU,
            Self::Memory => reason::RESOURCE_MEMORY,
            Self::Ports => reason::RESOURCE_PORTS,
            Self::PortsUdp => reason::RESOURCE_PORTS_UDP,
        }
    }
}

/// What an instance has left: CPU and memory remaining, and the host ports in use
/// (reserved at registration plus allocated to tasks).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capacity {
    pub cpu: i64,
    pub memory: i64,
    pub ports: BTreeSet<u16>,
    pub ports_udp: BTreeSet<u16>,
}

/// Registered CPU and memory minus the allocations; reserved plus allocated ports.
pub fn remaining(instance: &ContainerInstance) -> Capacity {
    let (cpu, memory) = headroom(instance);
    let mut capacity = Capacity {
        cpu,
        memory,
        ports: reserved_ports(instance, Resource::PORTS).collect(),
        ports_udp: reserved_ports(instance, Resource::PORTS_UDP).collect(),
    };
    for a in instance.allocations.values() {
        capacity.ports.extend(&a.ports);
        capacity.ports_udp.extend(&a.ports_udp);
    }
    capacity
}

/// The instance's ECS `remainingResources`: CPU and MEMORY remaining, PORTS and PORTS_UDP
/// in use (numerically sorted), then any other registered resource unchanged.
pub fn remaining_resources(instance: &ContainerInstance) -> Vec<Resource> {
    let capacity = remaining(instance);
    let port_strings = |ports: &BTreeSet<u16>| ports.iter().map(u16::to_string).collect::<Vec<_>>();
    let mut resources = vec![
        Resource::integer(Resource::CPU, capacity.cpu),
        Resource::integer(Resource::MEMORY, capacity.memory),
        Resource::string_set(Resource::PORTS, port_strings(&capacity.ports)),
        Resource::string_set(Resource::PORTS_UDP, port_strings(&capacity.ports_udp)),
    ];
    resources.extend(
        instance
            .registered_resources
            .iter()
            .filter(|r| {
                ![
                    Resource::CPU,
                    Resource::MEMORY,
                    Resource::PORTS,
                    Resource::PORTS_UDP,
                ]
                .contains(&r.name.as_str())
            })
            .cloned(),
    );
    resources
}

/// Whether `demand` fits `instance`, checking in [`Shortfall`] order: ACTIVE, agent
/// connected, CPU, memory, TCP ports, UDP ports. On success, the concrete allocation:
/// the static ports plus, for each dynamic mapping, the lowest free port of
/// [`DYNAMIC_PORT_RANGE`] (deterministic, so a re-validation against the same record
/// proposes the same ports), each list sorted.
pub fn fit(instance: &ContainerInstance, demand: &Demand) -> Result<Allocation, Shortfall> {
    eligibility(instance)?;
    fit_resources(&remaining(instance), demand)
}

/// [`fit`] without the status and agent checks.
pub fn fit_resources(capacity: &Capacity, demand: &Demand) -> Result<Allocation, Shortfall> {
    let (cpu, memory) = (demand.cpu.max(0), demand.memory.max(0));
    if capacity.cpu < cpu {
        return Err(Shortfall::Cpu);
    }
    if capacity.memory < memory {
        return Err(Shortfall::Memory);
    }
    let ports =
        take_ports(&capacity.ports, &demand.ports, demand.dynamic_ports).ok_or(Shortfall::Ports)?;
    let ports_udp = take_ports(
        &capacity.ports_udp,
        &demand.ports_udp,
        demand.dynamic_ports_udp,
    )
    .ok_or(Shortfall::PortsUdp)?;
    Ok(Allocation {
        cpu,
        memory,
        ports,
        ports_udp,
        group: None,
        claim: None,
    })
}

/// Records that `task_id` holds `allocation` on `instance` (replacing what it held) and
/// refreshes the instance's `remaining_resources`.
pub fn allocate(instance: &mut ContainerInstance, task_id: &str, allocation: Allocation) {
    instance.allocations.insert(task_id.to_string(), allocation);
    instance.remaining_resources = remaining_resources(instance);
}

/// Returns what `task_id` held on `instance` to the instance (the task stopped) and
/// refreshes `remaining_resources`.
pub fn release(instance: &mut ContainerInstance, task_id: &str) -> Option<Allocation> {
    let released = instance.allocations.remove(task_id);
    instance.remaining_resources = remaining_resources(instance);
    released
}

/// The capacity of `instance` given its remaining CPU and memory and the ports promised
/// to earlier placements of a batch.
pub(crate) fn capacity_with(
    instance: &ContainerInstance,
    cpu: i64,
    memory: i64,
    extra_tcp: &[u16],
    extra_udp: &[u16],
) -> Capacity {
    let mut capacity = Capacity {
        cpu,
        memory,
        ports: reserved_ports(instance, Resource::PORTS)
            .chain(extra_tcp.iter().copied())
            .collect(),
        ports_udp: reserved_ports(instance, Resource::PORTS_UDP)
            .chain(extra_udp.iter().copied())
            .collect(),
    };
    for a in instance.allocations.values() {
        capacity.ports.extend(&a.ports);
        capacity.ports_udp.extend(&a.ports_udp);
    }
    capacity
}

/// Status and agent checks: only ACTIVE instances with a connected agent that is not
/// impaired (it can follow its tasks) take new tasks.
pub(crate) fn eligibility(instance: &ContainerInstance) -> Result<(), Shortfall> {
    if instance.status != InstanceStatus::Active {
        Err(Shortfall::Inactive)
    } else if !instance.agent_connected || instance.is_impaired() {
        Err(Shortfall::Agent)
    } else {
        Ok(())
    }
}

/// Remaining (CPU, memory) in one pass over the registered resources and the allocations.
pub(crate) fn headroom(instance: &ContainerInstance) -> (i64, i64) {
    let (mut cpu, mut memory) = (0i64, 0i64);
    for r in &instance.registered_resources {
        if r.name == Resource::CPU {
            cpu = r.number().unwrap_or(0);
        } else if r.name == Resource::MEMORY {
            memory = r.number().unwrap_or(0);
        }
    }
    for a in instance.allocations.values() {
        cpu = cpu.saturating_sub(a.cpu);
        memory = memory.saturating_sub(a.memory);
    }
    (cpu, memory)
}

/// The reserved ports of the registered string set `name`; strings that are not ports are
/// ignored.
pub(crate) fn reserved_ports<'a>(
    instance: &'a ContainerInstance,
    name: &'a str,
) -> impl Iterator<Item = u16> + 'a {
    instance
        .registered_resources
        .iter()
        .filter(move |r| r.name == name)
        .flat_map(|r| r.string_set_value.iter())
        .filter_map(|s| s.trim().parse::<u16>().ok())
}

/// Whether the TCP and UDP ports of `demand` are available on `instance`, given
/// `extra_tcp`/`extra_udp` ports already promised to earlier placements of a batch, without
/// allocating in the common case. Agrees with [`fit_resources`] on the same ports.
pub(crate) fn ports_available(
    instance: &ContainerInstance,
    extra_tcp: &[u16],
    extra_udp: &[u16],
    demand: &Demand,
) -> Result<(), Shortfall> {
    let tcp = PortNeed {
        reserved: Resource::PORTS,
        allocated: |a| &a.ports,
        extra: extra_tcp,
        statics: &demand.ports,
        dynamic: demand.dynamic_ports,
    };
    if !tcp.available(instance) {
        return Err(Shortfall::Ports);
    }
    let udp = PortNeed {
        reserved: Resource::PORTS_UDP,
        allocated: |a| &a.ports_udp,
        extra: extra_udp,
        statics: &demand.ports_udp,
        dynamic: demand.dynamic_ports_udp,
    };
    if !udp.available(instance) {
        return Err(Shortfall::PortsUdp);
    }
    Ok(())
}

/// The ports of one protocol that a demand needs from one instance.
struct PortNeed<'a> {
    reserved: &'static str,
    allocated: fn(&Allocation) -> &Vec<u16>,
    extra: &'a [u16],
    statics: &'a [u16],
    dynamic: usize,
}

impl PortNeed<'_> {
    fn used<'i>(&'i self, instance: &'i ContainerInstance) -> impl Iterator<Item = u16> + 'i {
        reserved_ports(instance, self.reserved)
            .chain(
                instance
                    .allocations
                    .values()
                    .flat_map(move |a| (self.allocated)(a).iter().copied()),
            )
            .chain(self.extra.iter().copied())
    }

    fn available(&self, instance: &ContainerInstance) -> bool {
        if self.statics.is_empty() && self.dynamic == 0 {
            return true;
        }
        if has_duplicates(self.statics) {
            return false;
        }
        // One pass: any static port in use fails; count (with repeats, an upper bound) the
        // used ports in the dynamic range.
        let mut used_in_range = 0usize;
        for port in self.used(instance) {
            if self.statics.contains(&port) {
                return false;
            }
            used_in_range += usize::from(DYNAMIC_PORT_RANGE.contains(&port));
        }
        if self.dynamic == 0 {
            return true;
        }
        let statics_in_range = self
            .statics
            .iter()
            .filter(|p| DYNAMIC_PORT_RANGE.contains(p))
            .count();
        let free_at_least = DYNAMIC_PORT_COUNT.saturating_sub(used_in_range + statics_in_range);
        if free_at_least >= self.dynamic {
            return true;
        }
        // Near exhaustion the bound is not enough: count the distinct ports.
        let taken: BTreeSet<u16> = self
            .used(instance)
            .chain(self.statics.iter().copied())
            .filter(|p| DYNAMIC_PORT_RANGE.contains(p))
            .collect();
        DYNAMIC_PORT_COUNT - taken.len() >= self.dynamic
    }
}

fn has_duplicates(ports: &[u16]) -> bool {
    ports
        .iter()
        .enumerate()
        .any(|(i, p)| ports[i + 1..].contains(p))
}

/// The static ports plus `dynamic` lowest free ports of the dynamic range, sorted; None if
/// a static port is in use (or asked twice) or the range runs out.
fn take_ports(used: &BTreeSet<u16>, statics: &[u16], dynamic: usize) -> Option<Vec<u16>> {
    if statics.iter().any(|p| used.contains(p)) || has_duplicates(statics) {
        return None;
    }
    let mut taken = Vec::with_capacity(statics.len() + dynamic);
    taken.extend_from_slice(statics);
    let mut busy = used.range(DYNAMIC_PORT_RANGE).copied().peekable();
    let mut found = 0;
    for port in DYNAMIC_PORT_RANGE {
        if found == dynamic {
            break;
        }
        while busy.next_if(|b| *b < port).is_some() {}
        if busy.peek() == Some(&port) || statics.contains(&port) {
            continue;
        }
        taken.push(port);
        found += 1;
    }
    if found < dynamic {
        return None;
    }
    taken.sort_unstable();
    Some(taken)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use berth_messages::model::InstanceHealthStatus;

    /// An ACTIVE, connected instance with the usual ECS reserved ports.
    pub(crate) fn instance(id: &str, cpu: i64, memory: i64) -> ContainerInstance {
        instance_with_ports(id, cpu, memory, &[22, 2375, 2376, 51678, 51679], &[])
    }

    pub(crate) fn instance_with_ports(
        id: &str,
        cpu: i64,
        memory: i64,
        tcp: &[u16],
        udp: &[u16],
    ) -> ContainerInstance {
        ContainerInstance {
            container_instance_arn: format!("arn:aws:ecs:r:a:container-instance/c/{id}"),
            registered_resources: vec![
                Resource::integer(Resource::CPU, cpu),
                Resource::integer(Resource::MEMORY, memory),
                Resource::string_set(Resource::PORTS, tcp.iter().map(u16::to_string)),
                Resource::string_set(Resource::PORTS_UDP, udp.iter().map(u16::to_string)),
            ],
            status: InstanceStatus::Active,
            agent_connected: true,
            ..Default::default()
        }
    }

    fn demand(cpu: i64, memory: i64) -> Demand {
        Demand {
            cpu,
            memory,
            ..Default::default()
        }
    }

    #[test]
    fn remaining_subtracts_allocations_and_unions_ports() {
        let mut i = instance("i", 2048, 4096);
        allocate(
            &mut i,
            "t1",
            Allocation {
                cpu: 512,
                memory: 1024,
                ports: vec![80, 49153],
                ports_udp: vec![53],
                group: None,
                claim: None,
            },
        );
        allocate(
            &mut i,
            "t2",
            Allocation {
                cpu: 256,
                memory: 256,
                ..Default::default()
            },
        );
        let c = remaining(&i);
        assert_eq!((c.cpu, c.memory), (1280, 2816));
        assert_eq!(
            c.ports.iter().copied().collect::<Vec<_>>(),
            vec![22, 80, 2375, 2376, 49153, 51678, 51679]
        );
        assert_eq!(c.ports_udp.iter().copied().collect::<Vec<_>>(), vec![53]);
        assert_eq!(release(&mut i, "t2").map(|a| a.cpu), Some(256));
        assert_eq!(remaining(&i).cpu, 1536);
    }

    #[test]
    fn remaining_resources_are_ecs_shaped_and_sorted_numerically() {
        let mut i = instance_with_ports("i", 1024, 2048, &[2376, 22, 100], &[]);
        i.registered_resources
            .push(Resource::integer("NEURON_CORES", 2));
        allocate(
            &mut i,
            "t",
            Allocation {
                cpu: 24,
                memory: 48,
                ports: vec![9, 49153],
                ports_udp: vec![5353],
                group: None,
                claim: None,
            },
        );
        let r = &i.remaining_resources;
        assert_eq!(r, &remaining_resources(&i));
        assert_eq!(r.len(), 5);
        assert_eq!(
            (r[0].name.as_str(), r[0].integer_value),
            ("CPU", Some(1000))
        );
        assert_eq!(r[0].resource_type, "INTEGER");
        assert_eq!(
            (r[1].name.as_str(), r[1].integer_value),
            ("MEMORY", Some(2000))
        );
        assert_eq!(r[2].name, "PORTS");
        assert_eq!(r[2].resource_type, "STRINGSET");
        assert_eq!(r[2].string_set_value, ["9", "22", "100", "2376", "49153"]);
        assert_eq!(r[3].name, "PORTS_UDP");
        assert_eq!(r[3].string_set_value, ["5353"]);
        assert_eq!(r[4].name, "NEURON_CORES");
    }

    #[test]
    fn fit_reports_each_shortfall() {
        let i = instance("i", 1024, 2048);
        assert_eq!(fit(&i, &demand(2048, 0)), Err(Shortfall::Cpu));
        assert_eq!(fit(&i, &demand(0, 4096)), Err(Shortfall::Memory));
        assert_eq!(fit(&i, &demand(4096, 4096)), Err(Shortfall::Cpu));
        let ports = Demand {
            ports: vec![22],
            ..demand(0, 0)
        };
        assert_eq!(fit(&i, &ports), Err(Shortfall::Ports));
        let mut udp_taken = i.clone();
        allocate(
            &mut udp_taken,
            "t",
            Allocation {
                ports_udp: vec![53],
                ..Default::default()
            },
        );
        let udp = Demand {
            ports_udp: vec![53],
            ..demand(0, 0)
        };
        assert_eq!(fit(&udp_taken, &udp), Err(Shortfall::PortsUdp));
        assert!(fit(&i, &udp).is_ok());

        let mut draining = i.clone();
        draining.status = InstanceStatus::Draining;
        assert_eq!(fit(&draining, &demand(1, 1)), Err(Shortfall::Inactive));
        let mut lost = i.clone();
        lost.agent_connected = false;
        assert_eq!(fit(&lost, &demand(1, 1)), Err(Shortfall::Agent));
        let mut impaired = i.clone();
        impaired.health_status = Some(InstanceHealthStatus::runtime(
            InstanceHealthStatus::IMPAIRED,
            1.0,
        ));
        assert_eq!(fit(&impaired, &demand(1, 1)), Err(Shortfall::Agent));

        assert_eq!(Shortfall::Inactive.reason(), "INACTIVE");
        assert_eq!(Shortfall::Agent.reason(), "AGENT");
        assert_eq!(Shortfall::Cpu.reason(), "RESOURCE:CPU");
        assert_eq!(Shortfall::Memory.reason(), "RESOURCE:MEMORY");
        assert_eq!(Shortfall::Ports.reason(), "RESOURCE:PORTS");
        assert_eq!(Shortfall::PortsUdp.reason(), "RESOURCE:PORTS_UDP");
        assert!(Shortfall::Inactive < Shortfall::Agent && Shortfall::Cpu < Shortfall::Memory);
    }

    #[test]
    fn fit_allocates_exactly_what_is_asked() {
        let i = instance("i", 1024, 1024);
        let d = Demand {
            cpu: 1024,
            memory: 1024,
            ports: vec![8080, 80],
            ports_udp: vec![53],
            dynamic_ports: 0,
            dynamic_ports_udp: 0,
        };
        assert_eq!(
            fit(&i, &d),
            Ok(Allocation {
                cpu: 1024,
                memory: 1024,
                ports: vec![80, 8080],
                ports_udp: vec![53],
                group: None,
                claim: None,
            })
        );
    }

    #[test]
    fn dynamic_ports_skip_reserved_allocated_and_static_ports() {
        let mut i = instance_with_ports("i", 0, 0, &[49153, 49155], &[49153]);
        allocate(
            &mut i,
            "t",
            Allocation {
                ports: vec![49154],
                ..Default::default()
            },
        );
        let d = Demand {
            ports: vec![49156, 80],
            dynamic_ports: 3,
            dynamic_ports_udp: 2,
            ..Default::default()
        };
        let a = fit(&i, &d).unwrap();
        assert_eq!(a.ports, vec![80, 49156, 49157, 49158, 49159]);
        assert_eq!(a.ports_udp, vec![49154, 49155]);
        assert_eq!(ports_available(&i, &[], &[], &d), Ok(()));
        assert_eq!(
            ports_available(&i, &[80], &[], &d),
            Err(Shortfall::Ports),
            "a port promised earlier in the batch is taken"
        );
    }

    #[test]
    fn exhausted_dynamic_range_is_a_ports_shortfall() {
        let all_but_two: Vec<u16> = DYNAMIC_PORT_RANGE
            .filter(|p| *p != 50000 && *p != 65535)
            .collect();
        let mut i = instance_with_ports("i", 0, 0, &all_but_two, &[]);
        // An allocation repeating reserved ports makes the cheap bound overcount.
        allocate(
            &mut i,
            "t",
            Allocation {
                ports: all_but_two[..10].to_vec(),
                ..Default::default()
            },
        );
        let two = Demand {
            dynamic_ports: 2,
            ..Default::default()
        };
        assert_eq!(fit(&i, &two).unwrap().ports, vec![50000, 65535]);
        assert_eq!(ports_available(&i, &[], &[], &two), Ok(()));
        let three = Demand {
            dynamic_ports: 3,
            ..Default::default()
        };
        assert_eq!(fit(&i, &three), Err(Shortfall::Ports));
        assert_eq!(ports_available(&i, &[], &[], &three), Err(Shortfall::Ports));
        let static_and_two = Demand {
            ports: vec![50000],
            dynamic_ports: 1,
            ..Default::default()
        };
        assert_eq!(fit(&i, &static_and_two).unwrap().ports, vec![50000, 65535]);
        let too_many_udp = Demand {
            dynamic_ports_udp: DYNAMIC_PORT_COUNT + 1,
            ..Default::default()
        };
        assert_eq!(fit(&i, &too_many_udp), Err(Shortfall::PortsUdp));
    }

    #[test]
    fn hand_built_duplicate_static_ports_never_fit() {
        let i = instance("i", 0, 0);
        let d = Demand {
            ports: vec![80, 80],
            ..Default::default()
        };
        assert_eq!(fit(&i, &d), Err(Shortfall::Ports));
        assert_eq!(ports_available(&i, &[], &[], &d), Err(Shortfall::Ports));
    }
}

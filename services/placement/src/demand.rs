//! What one task of a task definition needs from a container instance ([`Demand`]), with
//! the run's overrides applied, and how its port mappings bind to the host ports of an
//! [`Allocation`]. Also the definition-level checks placement depends on (memory at some
//! level, valid host ports), so bad input fails before anything is written.

use berth_messages::error::ApiError;
use berth_messages::model::{
    Allocation, ContainerOverride, NetworkBinding, PortMapping, TaskDefinition, TaskOverride,
};

/// The resources one task reserves on its instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Demand {
    pub cpu: i64,
    pub memory: i64,
    /// Static TCP host ports.
    pub ports: Vec<u16>,
    /// Static UDP host ports.
    pub ports_udp: Vec<u16>,
    /// TCP mappings whose host port the instance picks (hostPort 0 or absent, bridge mode).
    pub dynamic_ports: usize,
    pub dynamic_ports_udp: usize,
}

/// Why a task definition (with overrides) has no valid demand. The messages are meant as
/// `InvalidParameterException` / `ClientException` text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DemandError {
    #[error("Task definition has no container definitions.")]
    NoContainers,
    #[error(
        "Invalid setting for container '{container}'. At least one of 'memory' or 'memoryReservation' must be specified."
    )]
    MissingMemory { container: String },
    #[error("Invalid '{field}' setting for container '{container}': {value} is negative.")]
    NegativeValue {
        container: String,
        field: &'static str,
        value: i64,
    },
    #[error("Invalid '{field}' setting for task: '{value}'.")]
    InvalidTaskSize { field: &'static str, value: String },
    #[error("Invalid network mode '{0}': must be one of bridge, host, awsvpc, none.")]
    InvalidNetworkMode(String),
    #[error(
        "Container '{container}' has port mappings, which network mode 'none' does not allow."
    )]
    PortsWithoutNetwork { container: String },
    #[error(
        "Invalid host port {port} for container '{container}': host ports must be between 0 and 65535."
    )]
    InvalidHostPort { container: String, port: i64 },
    #[error(
        "Invalid port mapping for container '{container}': network mode '{network_mode}' needs a containerPort between 1 and 65535."
    )]
    MissingContainerPort {
        container: String,
        network_mode: String,
    },
    #[error("Invalid protocol '{protocol}' for container '{container}': must be tcp or udp.")]
    InvalidProtocol { container: String, protocol: String },
    #[error("Host port {port}/{protocol} is mapped more than once in the task definition.")]
    DuplicateHostPort { port: u16, protocol: &'static str },
    #[error("Override for container named {0} is not a container in the TaskDefinition.")]
    UnknownContainerOverride(String),
}

impl From<DemandError> for ApiError {
    fn from(e: DemandError) -> Self {
        ApiError::invalid(e.to_string())
    }
}

/// What one task of `td` needs, with `overrides` applied.
///
/// - CPU: the sum of the containers' `cpu` (a container override's `cpu` wins).
/// - Memory: the sum of each container's `memoryReservation` if set, else `memory`
///   (a container override's values win over the definition's).
/// - Task-level `cpu`/`memory` (the override's, else the definition's; "512", "1 vCPU",
///   "2 GB") replace the sums when larger: for EC2 they are the task's reservation.
/// - Ports: in bridge mode (the default) a mapping with `hostPort > 0` is static and one
///   with `hostPort` 0 or absent is dynamic. In `host` and `awsvpc` mode the host port is
///   `hostPort`, else `containerPort` (Berth has no per-task network interfaces, so an
///   awsvpc task shares its host's ports). Mode `none` takes no port mappings.
pub fn demand_of(
    td: &TaskDefinition,
    overrides: Option<&TaskOverride>,
) -> Result<Demand, DemandError> {
    if td.container_definitions.is_empty() {
        return Err(DemandError::NoContainers);
    }
    let container_overrides: &[ContainerOverride] =
        overrides.map_or(&[], |o| o.container_overrides.as_slice());
    for o in container_overrides {
        if let Some(name) = &o.name {
            if !td.container_definitions.iter().any(|c| &c.name == name) {
                return Err(DemandError::UnknownContainerOverride(name.clone()));
            }
        }
    }

    let task_cpu = overrides
        .and_then(|o| o.cpu.as_deref())
        .or(td.cpu.as_deref())
        .map(|v| task_size(TaskSize::Cpu, v))
        .transpose()?;
    let task_memory = overrides
        .and_then(|o| o.memory.as_deref())
        .or(td.memory.as_deref())
        .map(|v| task_size(TaskSize::Memory, v))
        .transpose()?;

    let mut demand = Demand::default();
    for c in &td.container_definitions {
        let ov = container_overrides
            .iter()
            .find(|o| o.name.as_deref() == Some(c.name.as_str()));
        let cpu = ov.and_then(|o| o.cpu).unwrap_or(c.cpu);
        let memory = ov.and_then(|o| o.memory).or(c.memory);
        let reservation = ov
            .and_then(|o| o.memory_reservation)
            .or(c.memory_reservation);
        for (field, value) in [
            ("cpu", Some(cpu)),
            ("memory", memory),
            ("memoryReservation", reservation),
        ] {
            if let Some(value) = value.filter(|v| *v < 0) {
                return Err(DemandError::NegativeValue {
                    container: c.name.clone(),
                    field,
                    value,
                });
            }
        }
        match reservation.or(memory) {
            Some(m) => demand.memory = demand.memory.saturating_add(m),
            None if task_memory.is_none() => {
                return Err(DemandError::MissingMemory {
                    container: c.name.clone(),
                })
            }
            None => {}
        }
        demand.cpu = demand.cpu.saturating_add(cpu);
    }
    if let Some(t) = task_cpu {
        demand.cpu = demand.cpu.max(t);
    }
    if let Some(t) = task_memory {
        demand.memory = demand.memory.max(t);
    }

    for m in host_port_mappings(td)? {
        match (m.udp, m.host_port) {
            (false, Some(p)) => demand.ports.push(p),
            (true, Some(p)) => demand.ports_udp.push(p),
            (false, None) => demand.dynamic_ports += 1,
            (true, None) => demand.dynamic_ports_udp += 1,
        }
    }
    for (ports, protocol) in [(&mut demand.ports, "tcp"), (&mut demand.ports_udp, "udp")] {
        ports.sort_unstable();
        if let Some(w) = ports.windows(2).find(|w| w[0] == w[1]) {
            return Err(DemandError::DuplicateHostPort {
                port: w[0],
                protocol,
            });
        }
    }
    Ok(demand)
}

/// The host port each port mapping of `td` gets under `allocation`, per container name, in
/// definition order. Dynamic mappings take the allocation's ports that are not static ones,
/// in ascending order, in definition order (the rule [`crate::fit`] allocates by); a
/// dynamic mapping left without a port (an allocation made for another definition) gets
/// no host port.
pub fn network_bindings(
    td: &TaskDefinition,
    allocation: &Allocation,
) -> Result<Vec<(String, NetworkBinding)>, DemandError> {
    let mappings = host_port_mappings(td)?;
    let mut dynamic_tcp = dynamic_ports(&mappings, false, &allocation.ports).into_iter();
    let mut dynamic_udp = dynamic_ports(&mappings, true, &allocation.ports_udp).into_iter();
    Ok(mappings
        .iter()
        .map(|m| {
            let host_port = m.host_port.or_else(|| {
                if m.udp {
                    dynamic_udp.next()
                } else {
                    dynamic_tcp.next()
                }
            });
            let binding = NetworkBinding {
                bind_ip: Some("0.0.0.0".into()),
                container_port: m.mapping.container_port,
                host_port: host_port.map(i64::from),
                protocol: Some(if m.udp { "udp" } else { "tcp" }.into()),
            };
            (m.container.to_string(), binding)
        })
        .collect())
}

/// The allocated ports of one protocol that no static mapping claims, ascending.
fn dynamic_ports(mappings: &[HostPortMapping<'_>], udp: bool, allocated: &[u16]) -> Vec<u16> {
    let mut ports = allocated.to_vec();
    for m in mappings.iter().filter(|m| m.udp == udp) {
        if let Some(p) = m.host_port {
            if let Some(i) = ports.iter().position(|a| *a == p) {
                ports.remove(i);
            }
        }
    }
    ports.sort_unstable();
    ports
}

struct HostPortMapping<'a> {
    container: &'a str,
    mapping: &'a PortMapping,
    udp: bool,
    /// None: the instance picks a dynamic port.
    host_port: Option<u16>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum NetworkMode {
    Bridge,
    /// host and awsvpc: the task binds its container ports on the host.
    Host,
    None,
}

fn network_mode(td: &TaskDefinition) -> Result<NetworkMode, DemandError> {
    match td.network_mode.as_deref() {
        None | Some("") | Some("bridge") => Ok(NetworkMode::Bridge),
        Some("host") | Some("awsvpc") => Ok(NetworkMode::Host),
        Some("none") => Ok(NetworkMode::None),
        Some(other) => Err(DemandError::InvalidNetworkMode(other.to_string())),
    }
}

fn host_port_mappings(td: &TaskDefinition) -> Result<Vec<HostPortMapping<'_>>, DemandError> {
    let mode = network_mode(td)?;
    let mut out = Vec::new();
    for c in &td.container_definitions {
        if mode == NetworkMode::None && !c.port_mappings.is_empty() {
            return Err(DemandError::PortsWithoutNetwork {
                container: c.name.clone(),
            });
        }
        for mapping in &c.port_mappings {
            let udp = match mapping.protocol.as_deref() {
                None | Some("tcp") => false,
                Some("udp") => true,
                Some(other) => {
                    return Err(DemandError::InvalidProtocol {
                        container: c.name.clone(),
                        protocol: other.to_string(),
                    })
                }
            };
            let host_port = match mapping.host_port {
                Some(p) if !(0..=i64::from(u16::MAX)).contains(&p) => {
                    return Err(DemandError::InvalidHostPort {
                        container: c.name.clone(),
                        port: p,
                    })
                }
                Some(p) if p > 0 => Some(p as u16),
                _ if mode == NetworkMode::Bridge => None,
                _ => match mapping.container_port {
                    Some(p) if (1..=i64::from(u16::MAX)).contains(&p) => Some(p as u16),
                    _ => {
                        return Err(DemandError::MissingContainerPort {
                            container: c.name.clone(),
                            network_mode: td.network_mode.clone().unwrap_or_default(),
                        })
                    }
                },
            };
            out.push(HostPortMapping {
                container: &c.name,
                mapping,
                udp,
                host_port,
            });
        }
    }
    Ok(out)
}

#[derive(Clone, Copy)]
enum TaskSize {
    Cpu,
    Memory,
}

/// Parses a task-level size: an integer (CPU units, MiB), or "<n> vCPU" / "<n> GB".
fn task_size(kind: TaskSize, value: &str) -> Result<i64, DemandError> {
    let (field, unit) = match kind {
        TaskSize::Cpu => ("cpu", "vcpu"),
        TaskSize::Memory => ("memory", "gb"),
    };
    let invalid = || DemandError::InvalidTaskSize {
        field,
        value: value.to_string(),
    };
    let lower = value.trim().to_ascii_lowercase();
    let parsed = match lower.strip_suffix(unit) {
        Some(number) => number
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|n| n.is_finite() && *n > 0.0 && *n <= 1e12)
            .map(|n| (n * 1024.0).round() as i64),
        None => lower.parse::<i64>().ok(),
    };
    parsed.filter(|n| *n > 0).ok_or_else(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_messages::model::ContainerDefinition;

    fn container(name: &str, cpu: i64, memory: Option<i64>) -> ContainerDefinition {
        ContainerDefinition {
            name: name.into(),
            cpu,
            memory,
            ..Default::default()
        }
    }

    fn mapping(container_port: i64, host_port: Option<i64>, protocol: Option<&str>) -> PortMapping {
        PortMapping {
            container_port: Some(container_port),
            host_port,
            protocol: protocol.map(str::to_string),
            ..Default::default()
        }
    }

    fn definition(containers: Vec<ContainerDefinition>) -> TaskDefinition {
        TaskDefinition {
            task_definition_arn: "arn:aws:ecs:r:a:task-definition/web:1".into(),
            family: "web".into(),
            revision: 1,
            container_definitions: containers,
            ..Default::default()
        }
    }

    #[test]
    fn sums_container_cpu_and_memory() {
        let td = definition(vec![
            container("a", 256, Some(512)),
            container("b", 128, Some(256)),
        ]);
        let d = demand_of(&td, None).unwrap();
        assert_eq!((d.cpu, d.memory), (384, 768));
        assert!(d.ports.is_empty() && d.dynamic_ports == 0);
    }

    #[test]
    fn memory_reservation_wins_over_memory() {
        let mut a = container("a", 0, Some(1024));
        a.memory_reservation = Some(300);
        let mut b = container("b", 0, None);
        b.memory_reservation = Some(200);
        let d = demand_of(&definition(vec![a, b]), None).unwrap();
        assert_eq!(d.memory, 500);
    }

    #[test]
    fn container_overrides_win() {
        let mut a = container("a", 256, Some(1024));
        a.memory_reservation = Some(512);
        let td = definition(vec![a, container("b", 128, Some(256))]);
        let ov = TaskOverride {
            container_overrides: vec![
                ContainerOverride {
                    name: Some("a".into()),
                    cpu: Some(1024),
                    memory_reservation: Some(100),
                    ..Default::default()
                },
                ContainerOverride {
                    name: Some("b".into()),
                    memory: Some(64),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let d = demand_of(&td, Some(&ov)).unwrap();
        assert_eq!((d.cpu, d.memory), (1024 + 128, 100 + 64));
    }

    #[test]
    fn override_memory_counts_only_without_a_reservation() {
        let mut a = container("a", 0, Some(1024));
        a.memory_reservation = Some(512);
        let ov = TaskOverride {
            container_overrides: vec![ContainerOverride {
                name: Some("a".into()),
                memory: Some(2048),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            demand_of(&definition(vec![a]), Some(&ov)).unwrap().memory,
            512
        );
    }

    #[test]
    fn unknown_container_override_is_an_error() {
        let td = definition(vec![container("a", 0, Some(128))]);
        let ov = TaskOverride {
            container_overrides: vec![ContainerOverride {
                name: Some("nope".into()),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            demand_of(&td, Some(&ov)),
            Err(DemandError::UnknownContainerOverride("nope".into()))
        );
    }

    #[test]
    fn task_level_sizes_replace_smaller_sums() {
        let mut td = definition(vec![container("a", 256, Some(512))]);
        td.cpu = Some("1024".into());
        td.memory = Some("256".into());
        let d = demand_of(&td, None).unwrap();
        assert_eq!((d.cpu, d.memory), (1024, 512));

        td.cpu = Some("0.5 vCPU".into());
        td.memory = Some("2 GB".into());
        let d = demand_of(&td, None).unwrap();
        assert_eq!((d.cpu, d.memory), (512, 2048));

        let ov = TaskOverride {
            cpu: Some("2vcpu".into()),
            memory: Some("4096".into()),
            ..Default::default()
        };
        let d = demand_of(&td, Some(&ov)).unwrap();
        assert_eq!((d.cpu, d.memory), (2048, 4096));
    }

    #[test]
    fn task_memory_stands_in_for_container_memory() {
        let mut td = definition(vec![container("a", 0, None), container("b", 0, None)]);
        td.memory = Some("1024".into());
        assert_eq!(demand_of(&td, None).unwrap().memory, 1024);
    }

    #[test]
    fn missing_memory_at_every_level_is_an_error() {
        let td = definition(vec![container("a", 0, Some(128)), container("b", 0, None)]);
        let e = demand_of(&td, None).unwrap_err();
        assert_eq!(
            e,
            DemandError::MissingMemory {
                container: "b".into()
            }
        );
        assert!(e.to_string().contains("'memory' or 'memoryReservation'"));
        assert_eq!(
            demand_of(&definition(vec![]), None),
            Err(DemandError::NoContainers)
        );
    }

    #[test]
    fn invalid_task_sizes_and_negative_values_are_errors() {
        for bad in ["", "lots", "-5", "0", "1 GB"] {
            let mut td = definition(vec![container("a", 0, Some(128))]);
            td.cpu = Some(bad.into());
            assert!(
                matches!(
                    demand_of(&td, None),
                    Err(DemandError::InvalidTaskSize { field: "cpu", .. })
                ),
                "{bad:?}"
            );
        }
        let td = definition(vec![container("a", -1, Some(128))]);
        assert!(matches!(
            demand_of(&td, None),
            Err(DemandError::NegativeValue { field: "cpu", .. })
        ));
    }

    #[test]
    fn static_and_dynamic_ports_by_protocol() {
        let mut a = container("a", 0, Some(128));
        a.port_mappings = vec![
            mapping(80, Some(8080), None),
            mapping(81, Some(0), Some("tcp")),
            mapping(82, None, None),
            mapping(53, Some(5353), Some("udp")),
            mapping(54, None, Some("udp")),
        ];
        let mut b = container("b", 0, Some(128));
        b.port_mappings = vec![mapping(443, Some(443), Some("tcp"))];
        let d = demand_of(&definition(vec![a, b]), None).unwrap();
        assert_eq!(d.ports, vec![443, 8080]);
        assert_eq!(d.ports_udp, vec![5353]);
        assert_eq!((d.dynamic_ports, d.dynamic_ports_udp), (2, 1));
    }

    #[test]
    fn host_mode_binds_container_ports() {
        let mut a = container("a", 0, Some(128));
        a.port_mappings = vec![mapping(80, None, None), mapping(53, Some(0), Some("udp"))];
        let mut td = definition(vec![a]);
        td.network_mode = Some("host".into());
        let d = demand_of(&td, None).unwrap();
        assert_eq!((d.ports, d.ports_udp), (vec![80], vec![53]));
        assert_eq!((d.dynamic_ports, d.dynamic_ports_udp), (0, 0));
    }

    #[test]
    fn bad_port_mappings_are_errors() {
        let with = |m: PortMapping| {
            let mut a = container("a", 0, Some(128));
            a.port_mappings = vec![m];
            definition(vec![a])
        };
        for port in [-1, 65536] {
            assert!(matches!(
                demand_of(&with(mapping(80, Some(port), None)), None),
                Err(DemandError::InvalidHostPort { .. })
            ));
        }
        assert!(matches!(
            demand_of(&with(mapping(80, Some(80), Some("sctp"))), None),
            Err(DemandError::InvalidProtocol { .. })
        ));
        let mut a = container("a", 0, Some(128));
        a.port_mappings = vec![mapping(80, Some(80), None), mapping(81, Some(80), None)];
        assert_eq!(
            demand_of(&definition(vec![a]), None),
            Err(DemandError::DuplicateHostPort {
                port: 80,
                protocol: "tcp"
            })
        );
        let mut td = with(mapping(80, None, None));
        td.network_mode = Some("none".into());
        assert!(matches!(
            demand_of(&td, None),
            Err(DemandError::PortsWithoutNetwork { .. })
        ));
        let mut td = with(PortMapping::default());
        td.network_mode = Some("awsvpc".into());
        assert!(matches!(
            demand_of(&td, None),
            Err(DemandError::MissingContainerPort { .. })
        ));
        let api: ApiError = DemandError::NoContainers.into();
        assert_eq!(
            api.error_type,
            berth_messages::error::ErrorType::InvalidParameterException
        );
    }

    #[test]
    fn bindings_give_dynamic_ports_in_definition_order() {
        let mut a = container("a", 0, Some(128));
        a.port_mappings = vec![mapping(80, None, None), mapping(8080, Some(50000), None)];
        let mut b = container("b", 0, Some(128));
        b.port_mappings = vec![mapping(81, Some(0), None), mapping(53, None, Some("udp"))];
        let td = definition(vec![a, b]);
        let allocation = Allocation {
            ports: vec![49153, 49154, 50000],
            ports_udp: vec![49153],
            ..Default::default()
        };
        let got: Vec<(String, Option<i64>, Option<i64>)> = network_bindings(&td, &allocation)
            .unwrap()
            .into_iter()
            .map(|(c, b)| (c, b.container_port, b.host_port))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a".into(), Some(80), Some(49153)),
                ("a".into(), Some(8080), Some(50000)),
                ("b".into(), Some(81), Some(49154)),
                ("b".into(), Some(53), Some(49153)),
            ]
        );
    }
}

//! What this host offers the cluster: CPU units (cores x 1024), memory (MemTotal minus the
//! reservation), reserved ports, the built-in attributes (`ecs.os-type`,
//! `ecs.cpu-architecture`) and the operator's attributes, as a RegisterContainerInstance
//! request.

use crate::config::AgentConfig;
use crate::error::AgentError;
use crate::runtime::Kind;
use berth_messages::api::RegisterContainerInstanceRequest;
use berth_messages::model::{Attribute, Resource, VersionInfo};

/// The attribute naming the runtime this instance's containers run under.
pub const RUNTIME_ATTRIBUTE: &str = "berth.runtime";

/// Version this agent reports in `versionInfo.agentVersion` and heartbeats.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// CPU units of this host: 1024 per core the process may use.
pub fn cpu_units() -> i64 {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    i64::try_from(cores).unwrap_or(1) * 1024
}

/// MemTotal in MiB from the text of /proc/meminfo.
pub fn parse_mem_total_mib(meminfo: &str) -> Option<i64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut fields = line.split_whitespace().skip(1);
    let value: i64 = fields.next()?.parse().ok()?;
    let unit = fields.next().unwrap_or("kB");
    match unit {
        "kB" => Some(value / 1024),
        _ => None,
    }
}

/// Total memory of this host in MiB.
pub fn mem_total_mib() -> Result<i64, AgentError> {
    let text = std::fs::read_to_string("/proc/meminfo")
        .map_err(|e| AgentError::Host(format!("/proc/meminfo: {e}")))?;
    parse_mem_total_mib(&text)
        .ok_or_else(|| AgentError::Host("/proc/meminfo has no MemTotal line".into()))
}

/// `ecs.cpu-architecture` as ECS spells it.
pub fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "x86_64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// A comma-separated port list ("22,2375").
pub fn parse_ports(flag: &'static str, text: &str) -> Result<Vec<u16>, AgentError> {
    let mut ports = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let port: u16 = item.parse().map_err(|_| AgentError::Config {
            flag,
            reason: format!("{item:?} is not a port number (1-65535)"),
        })?;
        if port == 0 {
            return Err(AgentError::Config {
                flag,
                reason: "port 0 cannot be reserved".into(),
            });
        }
        ports.push(port);
    }
    ports.sort_unstable();
    ports.dedup();
    Ok(ports)
}

/// "name=value,name2=value2"; a name alone is an attribute without a value.
pub fn parse_attributes(text: &str) -> Result<Vec<Attribute>, AgentError> {
    let mut attributes: Vec<Attribute> = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, value) = match item.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().to_string())),
            None => (item, None),
        };
        let invalid = |reason: String| AgentError::Config {
            flag: "--attributes",
            reason,
        };
        berth_messages::validate::attribute_name(name).map_err(|e| invalid(e.message))?;
        if let Some(v) = &value {
            berth_messages::validate::attribute_value(v).map_err(|e| invalid(e.message))?;
        }
        if name == RUNTIME_ATTRIBUTE {
            return Err(invalid(format!(
                "{name} is set by the agent from --runtime"
            )));
        }
        if name.starts_with("ecs.") {
            return Err(invalid(format!(
                "{name}: names starting with ecs. are set by the agent"
            )));
        }
        attributes.retain(|a| a.name != name);
        attributes.push(Attribute {
            name: name.to_string(),
            value,
            target_type: None,
            target_id: None,
        });
    }
    Ok(attributes)
}

/// The registration of this host; `known_arn` is the identity kept in the data directory.
pub fn registration(
    config: &AgentConfig,
    known_arn: Option<String>,
) -> Result<RegisterContainerInstanceRequest, AgentError> {
    let hollow = config.runtime == Kind::Sim;
    let (cpu, memory) = if hollow {
        (config.sim_cpu, config.sim_memory - config.reserved_memory)
    } else {
        (cpu_units(), mem_total_mib()? - config.reserved_memory)
    };
    if cpu <= 0 {
        return Err(AgentError::Config {
            flag: "--sim-cpu",
            reason: format!("{cpu} CPU units leave nothing for tasks"),
        });
    }
    if config.reserved_memory < 0 || memory <= 0 {
        return Err(AgentError::Config {
            flag: "--reserved-memory",
            reason: format!(
                "{} MiB leaves no memory for tasks on a host with {} MiB",
                config.reserved_memory,
                memory + config.reserved_memory
            ),
        });
    }
    let ports = parse_ports("--reserved-ports", &config.reserved_ports)?;
    let mut attributes = vec![
        Attribute {
            name: "ecs.os-type".into(),
            value: Some("linux".into()),
            target_type: None,
            target_id: None,
        },
        Attribute {
            name: "ecs.cpu-architecture".into(),
            value: Some(architecture().into()),
            target_type: None,
            target_id: None,
        },
    ];
    attributes.push(Attribute {
        name: RUNTIME_ATTRIBUTE.into(),
        value: Some(config.runtime.attribute_value().into()),
        target_type: None,
        target_id: None,
    });
    if hollow {
        attributes.push(Attribute {
            name: "berth.sim".into(),
            value: Some("true".into()),
            target_type: None,
            target_id: None,
        });
    }
    attributes.extend(parse_attributes(&config.attributes)?);
    Ok(RegisterContainerInstanceRequest {
        cluster: Some(config.cluster.clone()),
        total_resources: vec![
            Resource::integer(Resource::CPU, cpu),
            Resource::integer(Resource::MEMORY, memory),
            Resource::string_set(Resource::PORTS, ports.iter().map(u16::to_string)),
            Resource::string_set(Resource::PORTS_UDP, Vec::new()),
        ],
        version_info: Some(VersionInfo {
            agent_version: Some(AGENT_VERSION.into()),
            agent_hash: None,
            docker_version: None,
        }),
        container_instance_arn: known_arn,
        attributes,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_total_is_read_in_mib() {
        let text = "MemTotal:       24683656 kB\nMemFree:         1000 kB\n";
        assert_eq!(parse_mem_total_mib(text), Some(24683656 / 1024));
        assert_eq!(parse_mem_total_mib("MemFree: 1 kB"), None);
    }

    #[test]
    fn ports_parse_sorted_and_refuse_nonsense() {
        assert_eq!(parse_ports("f", "2375, 22,22").unwrap(), vec![22, 2375]);
        assert_eq!(parse_ports("f", "").unwrap(), Vec::<u16>::new());
        assert!(parse_ports("f", "70000").is_err());
        assert!(parse_ports("f", "0").is_err());
        let e = parse_ports("--reserved-ports", "ssh")
            .unwrap_err()
            .to_string();
        assert!(e.contains("--reserved-ports") && e.contains("ssh"), "{e}");
    }

    #[test]
    fn attributes_parse_with_and_without_values() {
        let a = parse_attributes("zone=a, gpu ,zone=b").unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].name, "gpu");
        assert_eq!(a[0].value, None);
        assert_eq!(a[1].name, "zone");
        assert_eq!(a[1].value.as_deref(), Some("b"));
        assert!(parse_attributes("ecs.os-type=windows").is_err());
        assert!(parse_attributes("bad name=x").is_err());
    }

    #[test]
    fn registration_offers_the_host() {
        let config = AgentConfig {
            reserved_memory: 1,
            reserved_ports: "22,80".into(),
            attributes: "role=web".into(),
            ..AgentConfig::default()
        };
        let r = registration(&config, Some("arn".into())).unwrap();
        let by_name = |n: &str| r.total_resources.iter().find(|x| x.name == n).unwrap();
        assert_eq!(by_name("CPU").integer_value, Some(cpu_units()));
        assert_eq!(
            by_name("MEMORY").integer_value,
            Some(mem_total_mib().unwrap() - 1)
        );
        assert_eq!(by_name("PORTS").string_set_value, vec!["22", "80"]);
        assert!(r
            .attributes
            .iter()
            .any(|a| a.name == "ecs.os-type" && a.value.as_deref() == Some("linux")));
        assert!(r.attributes.iter().any(|a| a.name == "role"));
        assert!(r
            .attributes
            .iter()
            .any(|a| a.name == RUNTIME_ATTRIBUTE && a.value.as_deref() == Some("process")));
        assert_eq!(r.container_instance_arn.as_deref(), Some("arn"));
        let too_much = AgentConfig {
            reserved_memory: i64::MAX / 2,
            ..AgentConfig::default()
        };
        assert!(registration(&too_much, None).is_err());
    }

    #[test]
    fn a_hollow_host_offers_its_configured_shape() {
        let config = AgentConfig {
            runtime: Kind::Sim,
            sim_cpu: 2048,
            sim_memory: 4096,
            ..AgentConfig::default()
        };
        let r = registration(&config, None).unwrap();
        let by_name = |n: &str| r.total_resources.iter().find(|x| x.name == n).unwrap();
        assert_eq!(by_name("CPU").integer_value, Some(2048));
        assert_eq!(by_name("MEMORY").integer_value, Some(4096));
        let value = |n: &str| {
            r.attributes
                .iter()
                .find(|a| a.name == n)
                .and_then(|a| a.value.clone())
        };
        assert_eq!(value(RUNTIME_ATTRIBUTE).as_deref(), Some("sim"));
        assert_eq!(value("berth.sim").as_deref(), Some("true"));
        assert!(parse_attributes("berth.runtime=docker").is_err());
    }
}

//! The invariant checks, free of I/O: an [`Auditor`] is fed the journal's messages in
//! stream order, checks what can be checked at each version as it goes, and checks what
//! needs the final state (returned resources, orphan allocations, missing outcomes) in
//! [`Auditor::finish`]. Keeping this pure lets every violation kind be tested with
//! hand-built records.

use crate::report::{AuditReport, Invariant, Violation};
use berth_messages::codec::{self, CodecError};
use berth_messages::model::{
    Allocation, Cluster, ContainerInstance, Fence, InstanceStatus, Resource, Task, TaskDefinition,
    TaskDefinitionFamily, TaskStatus,
};
use berth_messages::subjects::{self, StateKey};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

pub use berth_messages::ids::INTERNAL_COMMAND_PREFIX;

type InstanceKey = (String, String);
type TaskKey = (String, String, String);
type ClusterTask = (String, String);

/// The latest decodable record of an instance, reduced to what the checks need.
#[derive(Debug)]
struct InstanceState {
    sequence: u64,
    subject: String,
    status: InstanceStatus,
    allocations: BTreeMap<String, Allocation>,
    fenced_commands: BTreeMap<String, Fence>,
}

/// The latest decodable record of a task subject.
#[derive(Debug)]
struct TaskState {
    last_status: TaskStatus,
    desired_status: TaskStatus,
}

/// Where a command id was first seen in the journal.
#[derive(Debug)]
struct FirstWrite {
    sequence: u64,
    subject: String,
}

/// Replays journal messages and collects violations; see the module documentation.
#[derive(Debug, Default)]
pub struct Auditor {
    messages: u64,
    instances: HashMap<InstanceKey, InstanceState>,
    tasks: HashMap<TaskKey, TaskState>,
    /// The first instance each task was seen under (task subjects).
    task_homes: HashMap<ClusterTask, String>,
    /// Instances whose latest record allocates each task.
    holders: HashMap<ClusterTask, BTreeSet<String>>,
    commands: BTreeMap<String, FirstWrite>,
    /// The command of each task a fenced command may have launched (filled in as fences
    /// appear in instance records).
    fenced_task_commands: HashMap<ClusterTask, String>,
    /// Commands whose task ids are in `fenced_task_commands`, by (cluster, command id).
    fenced_commands_seen: HashSet<(String, String)>,
    /// TaskPlacedTwice findings already reported, so a later version showing the same
    /// pair again does not repeat them.
    placed_twice_reported: HashSet<(ClusterTask, String, String)>,
    services: crate::services::ServiceAudit,
    violations: Vec<Violation>,
}

impl Auditor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one journal message, in stream order. `command_id` is its
    /// `Berth-Command-Id` header (`None` when absent or when its outcome may legitimately
    /// have expired).
    pub fn observe(
        &mut self,
        sequence: u64,
        subject: &str,
        command_id: Option<&str>,
        payload: &[u8],
    ) {
        self.messages += 1;
        if let Some(id) = command_id.filter(|id| !id.starts_with(INTERNAL_COMMAND_PREFIX)) {
            self.commands
                .entry(id.to_string())
                .or_insert_with(|| FirstWrite {
                    sequence,
                    subject: subject.to_string(),
                });
        }
        let Some(key) = subjects::parse_state(subject) else {
            return;
        };
        let decoded = match key {
            StateKey::Instance {
                cluster,
                instance_id,
            } => codec::decode_record::<ContainerInstance>(payload).map(|record| {
                self.observe_instance(sequence, subject, cluster, instance_id, record)
            }),
            StateKey::Task {
                cluster,
                instance_id,
                task_id,
            } => codec::decode_record::<Task>(payload).map(|record| {
                for (invariant, detail) in self
                    .services
                    .observe_task(cluster, task_id, command_id, &record)
                {
                    self.violate(sequence, subject, invariant, detail);
                }
                self.observe_task(sequence, subject, cluster, instance_id, task_id, record)
            }),
            StateKey::Cluster { .. } => decodes::<Cluster>(payload),
            StateKey::TaskDefinition { .. } => decodes::<TaskDefinition>(payload),
            StateKey::TaskDefinitionFamily { .. } => decodes::<TaskDefinitionFamily>(payload),
            StateKey::Service { cluster, service } => {
                codec::decode_record::<berth_messages::service::Service>(payload).map(|record| {
                    for (invariant, detail) in
                        self.services.observe_service(cluster, service, &record)
                    {
                        self.violate(sequence, subject, invariant, detail);
                    }
                })
            }
        };
        if let Err(e) = decoded {
            self.violate(
                sequence,
                subject,
                Invariant::UndecodableRecord,
                format!("{} byte(s): {e}", payload.len()),
            );
        }
    }

    /// Ends the replay. `outcomes` holds the ids of every command that has an outcome.
    pub fn finish(mut self, outcomes: &HashSet<String>) -> AuditReport {
        self.check_final_allocations();
        let missing: Vec<Violation> = self
            .commands
            .iter()
            .filter(|(id, _)| !outcomes.contains(*id))
            .map(|(id, first)| Violation {
                sequence: first.sequence,
                subject: first.subject.clone(),
                invariant: Invariant::MissingOutcome,
                detail: format!("command {id} wrote to the journal but has no outcome"),
            })
            .collect();
        self.violations.extend(missing);
        self.violations.sort_by_key(|v| (v.sequence, v.invariant));
        AuditReport {
            messages: self.messages,
            instances: self.instances.len(),
            tasks: self.task_homes.len(),
            violations: self.violations,
        }
    }

    fn observe_instance(
        &mut self,
        sequence: u64,
        subject: &str,
        cluster: &str,
        instance_id: &str,
        record: ContainerInstance,
    ) {
        self.check_capacity(sequence, subject, &record);
        self.check_ports(sequence, subject, &record);

        let key = (cluster.to_string(), instance_id.to_string());
        self.check_fenced_claims(sequence, subject, cluster, instance_id, &record);
        if let Some(previous) = self.instances.get(&key) {
            for task_id in previous.allocations.keys() {
                let holder = (cluster.to_string(), task_id.clone());
                if let Some(set) = self.holders.get_mut(&holder) {
                    set.remove(instance_id);
                }
            }
        }
        for task_id in record.allocations.keys() {
            let holder = (cluster.to_string(), task_id.clone());
            let set = self.holders.entry(holder.clone()).or_default();
            let others: Vec<String> = set.iter().cloned().collect();
            set.insert(instance_id.to_string());
            for other in others {
                let detail = format!(
                    "task {task_id} is allocated on instance {instance_id} while instance {other} still allocates it"
                );
                self.report_placed_twice(
                    sequence,
                    subject,
                    holder.clone(),
                    other,
                    instance_id,
                    detail,
                );
            }
        }
        self.instances.insert(
            key,
            InstanceState {
                sequence,
                subject: subject.to_string(),
                status: record.status,
                allocations: record.allocations,
                fenced_commands: record.fenced_commands,
            },
        );
    }

    /// An allocation new in this version must not come from a claim that the version it
    /// replaces had fenced off (a fence and an allocation in one version: the allocation
    /// came first, as the writer applies a batch in order and refuses what a fence in it
    /// forbids). Fences are per instance: a claim may still allocate on an instance its
    /// command's later delivery has not fenced yet, which that delivery then adopts.
    fn check_fenced_claims(
        &mut self,
        sequence: u64,
        subject: &str,
        cluster: &str,
        instance_id: &str,
        record: &ContainerInstance,
    ) {
        for command in record.fenced_commands.keys() {
            if self
                .fenced_commands_seen
                .insert((cluster.to_string(), command.clone()))
            {
                for task_id in berth_messages::ids::launched_task_ids(command) {
                    self.fenced_task_commands
                        .insert((cluster.to_string(), task_id), command.clone());
                }
            }
        }
        let key = (cluster.to_string(), instance_id.to_string());
        let Some(previous) = self.instances.get(&key) else {
            return;
        };
        if previous.fenced_commands.is_empty() {
            return;
        }
        let mut stale = Vec::new();
        for (task_id, allocation) in &record.allocations {
            if previous.allocations.contains_key(task_id) {
                continue;
            }
            let Some(command) = self
                .fenced_task_commands
                .get(&(cluster.to_string(), task_id.clone()))
            else {
                continue;
            };
            let claim = allocation.claim.unwrap_or(1);
            if let Some(fence) = previous.fenced_commands.get(command) {
                if claim < fence.claim {
                    stale.push(format!(
                        "task {task_id} of command {command} allocated on instance {instance_id} under claim {claim} after claim {} fenced it off",
                        fence.claim
                    ));
                }
            }
        }
        for detail in stale {
            self.violate(sequence, subject, Invariant::StaleClaim, detail);
        }
    }

    fn check_capacity(&mut self, sequence: u64, subject: &str, record: &ContainerInstance) {
        for (resource, allocated) in [
            (
                Resource::CPU,
                record.allocations.values().map(|a| a.cpu).sum::<i64>(),
            ),
            (
                Resource::MEMORY,
                record.allocations.values().map(|a| a.memory).sum::<i64>(),
            ),
        ] {
            let registered = registered_number(record, resource);
            if allocated > registered.unwrap_or(0) {
                let registered = registered.map_or("none".to_string(), |r| r.to_string());
                self.violate(
                    sequence,
                    subject,
                    Invariant::OverCommit,
                    format!(
                        "{resource}: {allocated} allocated to {} task(s), {registered} registered",
                        record.allocations.len()
                    ),
                );
            }
        }
    }

    fn check_ports(&mut self, sequence: u64, subject: &str, record: &ContainerInstance) {
        for (resource, udp) in [(Resource::PORTS, false), (Resource::PORTS_UDP, true)] {
            let reserved = reserved_ports(record, resource);
            let mut holder_of: BTreeMap<u16, &str> = BTreeMap::new();
            let mut findings = Vec::new();
            for (task_id, allocation) in &record.allocations {
                let ports = if udp {
                    &allocation.ports_udp
                } else {
                    &allocation.ports
                };
                for &port in ports {
                    if reserved.contains(&port) {
                        findings.push(format!(
                            "{resource} {port} is reserved but allocated to task {task_id}"
                        ));
                    }
                    if let Some(first) = holder_of.insert(port, task_id) {
                        findings.push(format!(
                            "{resource} {port} is allocated to task {first} and to task {task_id}"
                        ));
                    }
                }
            }
            for detail in findings {
                self.violate(sequence, subject, Invariant::PortHeldTwice, detail);
            }
        }
    }

    fn observe_task(
        &mut self,
        sequence: u64,
        subject: &str,
        cluster: &str,
        instance_id: &str,
        task_id: &str,
        record: Task,
    ) {
        let placement = (cluster.to_string(), task_id.to_string());
        match self.task_homes.get(&placement) {
            None => {
                self.task_homes.insert(placement, instance_id.to_string());
            }
            Some(home) if home != instance_id => {
                let home = home.clone();
                let detail = format!(
                    "task {task_id} has records under instance {home} and instance {instance_id}"
                );
                self.report_placed_twice(sequence, subject, placement, home, instance_id, detail);
            }
            Some(_) => {}
        }

        let key = (
            cluster.to_string(),
            instance_id.to_string(),
            task_id.to_string(),
        );
        if let Some(previous) = self.tasks.get(&key) {
            let mut findings = Vec::new();
            if record.last_status < previous.last_status {
                findings.push(format!(
                    "lastStatus went from {} back to {}",
                    previous.last_status.as_str(),
                    record.last_status.as_str()
                ));
            }
            if previous.desired_status == TaskStatus::Stopped
                && record.desired_status != TaskStatus::Stopped
            {
                findings.push(format!(
                    "desiredStatus went from STOPPED back to {}",
                    record.desired_status.as_str()
                ));
            }
            for detail in findings {
                self.violate(sequence, subject, Invariant::LifecycleBackwards, detail);
            }
        }
        self.tasks.insert(
            key,
            TaskState {
                last_status: record.last_status,
                desired_status: record.desired_status,
            },
        );
    }

    /// Returned resources and orphan allocations, on the latest record of each instance.
    fn check_final_allocations(&mut self) {
        let mut findings = Vec::new();
        for ((cluster, instance_id), instance) in &self.instances {
            for task_id in instance.allocations.keys() {
                let key = (cluster.clone(), instance_id.clone(), task_id.clone());
                match self.tasks.get(&key) {
                    Some(task) if task.last_status == TaskStatus::Stopped => {
                        findings.push((
                            instance,
                            Invariant::ResourcesNotReturned,
                            format!("task {task_id} is STOPPED but instance {instance_id} still allocates it"),
                        ));
                    }
                    Some(_) => {}
                    None if instance.status == InstanceStatus::Inactive => {}
                    None => findings.push((
                        instance,
                        Invariant::OrphanAllocation,
                        format!("instance {instance_id} allocates task {task_id}, which has no record on it"),
                    )),
                }
            }
        }
        let found: Vec<Violation> = findings
            .into_iter()
            .map(|(instance, invariant, detail)| Violation {
                sequence: instance.sequence,
                subject: instance.subject.clone(),
                invariant,
                detail,
            })
            .collect();
        self.violations.extend(found);
    }

    fn report_placed_twice(
        &mut self,
        sequence: u64,
        subject: &str,
        placement: ClusterTask,
        first: String,
        second: &str,
        detail: String,
    ) {
        let (a, b) = if first.as_str() <= second {
            (first, second.to_string())
        } else {
            (second.to_string(), first)
        };
        if self.placed_twice_reported.insert((placement, a, b)) {
            self.violate(sequence, subject, Invariant::TaskPlacedTwice, detail);
        }
    }

    fn violate(&mut self, sequence: u64, subject: &str, invariant: Invariant, detail: String) {
        self.violations.push(Violation {
            sequence,
            subject: subject.to_string(),
            invariant,
            detail,
        });
    }
}

fn decodes<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<(), CodecError> {
    codec::decode_record::<T>(payload).map(|_| ())
}

fn registered_number(record: &ContainerInstance, name: &str) -> Option<i64> {
    record
        .registered_resources
        .iter()
        .find(|r| r.name == name)
        .and_then(Resource::number)
}

fn reserved_ports(record: &ContainerInstance, name: &str) -> BTreeSet<u16> {
    record
        .registered_resources
        .iter()
        .filter(|r| r.name == name)
        .flat_map(|r| r.string_set_value.iter())
        .filter_map(|p| p.trim().parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_messages::codec::encode_record;

    const CLUSTER: &str = "prod";

    fn instance(
        cpu: i64,
        memory: i64,
        reserved: &[u16],
        allocations: &[(&str, Allocation)],
    ) -> ContainerInstance {
        ContainerInstance {
            container_instance_arn: "arn:aws:ecs:r:1:container-instance/prod/i".into(),
            registered_resources: vec![
                Resource::integer(Resource::CPU, cpu),
                Resource::integer(Resource::MEMORY, memory),
                Resource::string_set(Resource::PORTS, reserved.iter().map(u16::to_string)),
                Resource::string_set(Resource::PORTS_UDP, std::iter::empty()),
            ],
            allocations: allocations
                .iter()
                .map(|(id, a)| (id.to_string(), a.clone()))
                .collect(),
            ..Default::default()
        }
    }

    fn alloc(cpu: i64, memory: i64, ports: &[u16]) -> Allocation {
        Allocation {
            cpu,
            memory,
            ports: ports.to_vec(),
            ports_udp: Vec::new(),
            group: None,
            claim: None,
        }
    }

    fn task(last: TaskStatus, desired: TaskStatus) -> Task {
        Task {
            task_arn: "arn:aws:ecs:r:1:task/prod/t".into(),
            last_status: last,
            desired_status: desired,
            ..Default::default()
        }
    }

    /// Feeds records with consecutive sequences from 1, each caused by command `cmd-<seq>`.
    #[derive(Default)]
    struct History {
        auditor: Auditor,
        sequence: u64,
        outcomes: HashSet<String>,
    }

    impl History {
        fn write_as(&mut self, subject: &str, command: &str, payload: &[u8]) -> &mut Self {
            self.sequence += 1;
            self.auditor
                .observe(self.sequence, subject, Some(command), payload);
            self
        }
        /// A write by a command that has its outcome.
        fn write(&mut self, subject: &str, record: &impl serde::Serialize) -> &mut Self {
            let command = format!("cmd-{}", self.sequence + 1);
            self.outcomes.insert(command.clone());
            self.write_as(subject, &command, &encode_record(record).unwrap())
        }
        fn instance(&mut self, id: &str, record: &ContainerInstance) -> &mut Self {
            self.write(&subjects::instance(CLUSTER, id), record)
        }
        fn task(&mut self, instance: &str, id: &str, record: &Task) -> &mut Self {
            self.write(&subjects::task(CLUSTER, instance, id), record)
        }
        fn finish(self) -> AuditReport {
            self.auditor.finish(&self.outcomes)
        }
    }

    fn only(report: &AuditReport, invariant: Invariant) -> &Violation {
        assert_eq!(
            report.violations.len(),
            1,
            "expected one {invariant} violation:\n{report}"
        );
        let v = &report.violations[0];
        assert_eq!(v.invariant, invariant, "{report}");
        v
    }

    /// Register, place, run, stop and release one task; then deregister the instance.
    fn clean_history() -> History {
        let mut h = History::default();
        let held = [("t1", alloc(512, 1024, &[8080]))];
        h.write(
            &subjects::cluster(CLUSTER),
            &Cluster {
                cluster_name: CLUSTER.into(),
                ..Default::default()
            },
        )
        .instance("i1", &instance(1024, 2048, &[22], &[]))
        .instance("i1", &instance(1024, 2048, &[22], &held))
        .task("i1", "t1", &task(TaskStatus::Pending, TaskStatus::Running))
        .task("i1", "t1", &task(TaskStatus::Running, TaskStatus::Running))
        .task("i1", "t1", &task(TaskStatus::Running, TaskStatus::Stopped))
        .task("i1", "t1", &task(TaskStatus::Stopped, TaskStatus::Stopped))
        .instance("i1", &instance(1024, 2048, &[22], &[]));
        // A liveness flip by the control plane: no outcome expected.
        let mut flipped = instance(1024, 2048, &[22], &[]);
        flipped.agent_connected = false;
        h.write_as(
            &subjects::instance(CLUSTER, "i1"),
            "internal-liveness-1",
            &encode_record(&flipped).unwrap(),
        );
        h
    }

    #[test]
    fn a_clean_history_has_no_violations() {
        let report = clean_history().finish();
        assert!(report.is_clean(), "{report}");
        assert_eq!(report.messages, 9);
        assert_eq!(report.instances, 1);
        assert_eq!(report.tasks, 1);
    }

    #[test]
    fn over_commit_is_found_at_the_version_that_breaks_it() {
        let mut h = clean_history();
        h.instance(
            "i1",
            &instance(
                1024,
                2048,
                &[],
                &[("a", alloc(1000, 100, &[])), ("b", alloc(100, 100, &[]))],
            ),
        )
        .task("i1", "a", &task(TaskStatus::Running, TaskStatus::Running))
        .task("i1", "b", &task(TaskStatus::Running, TaskStatus::Running));
        let report = h.finish();
        let v = only(&report, Invariant::OverCommit);
        assert_eq!(v.sequence, 10);
        assert_eq!(v.subject, subjects::instance(CLUSTER, "i1"));
        assert!(v.detail.contains("CPU: 1100"), "{}", v.detail);
    }

    #[test]
    fn memory_over_commit_and_missing_registration_count() {
        let mut h = History::default();
        let mut record = instance(1024, 256, &[], &[("a", alloc(1, 512, &[]))]);
        h.instance("i1", &record);
        record.registered_resources.clear();
        h.instance("i1", &record)
            .task("i1", "a", &task(TaskStatus::Running, TaskStatus::Running));
        let report = h.finish();
        // Version 1: memory; version 2: both CPU and memory are unregistered.
        assert_eq!(report.count(Invariant::OverCommit), 3, "{report}");
    }

    #[test]
    fn a_port_allocated_twice_or_reserved_is_found() {
        let mut h = History::default();
        h.instance(
            "i1",
            &instance(
                1024,
                1024,
                &[22],
                &[("a", alloc(1, 1, &[8080])), ("b", alloc(1, 1, &[8080]))],
            ),
        )
        .task("i1", "a", &task(TaskStatus::Running, TaskStatus::Running))
        .task("i1", "b", &task(TaskStatus::Running, TaskStatus::Running));
        let v = only(&h.finish(), Invariant::PortHeldTwice).clone();
        assert!(v.detail.contains("PORTS 8080"), "{}", v.detail);

        let mut h = History::default();
        h.instance(
            "i1",
            &instance(1024, 1024, &[22], &[("a", alloc(1, 1, &[22]))]),
        )
        .task("i1", "a", &task(TaskStatus::Running, TaskStatus::Running));
        let v = only(&h.finish(), Invariant::PortHeldTwice).clone();
        assert!(v.detail.contains("reserved"), "{}", v.detail);
    }

    #[test]
    fn udp_and_tcp_ports_are_separate() {
        let mut h = History::default();
        let udp = Allocation {
            cpu: 1,
            memory: 1,
            ports: Vec::new(),
            ports_udp: vec![53],
            group: None,
            claim: None,
        };
        h.instance(
            "i1",
            &instance(
                1024,
                1024,
                &[],
                &[("a", alloc(1, 1, &[53])), ("b", udp.clone()), ("c", udp)],
            ),
        );
        for t in ["a", "b", "c"] {
            h.task("i1", t, &task(TaskStatus::Running, TaskStatus::Running));
        }
        let v = only(&h.finish(), Invariant::PortHeldTwice).clone();
        assert!(v.detail.contains("PORTS_UDP 53"), "{}", v.detail);
    }

    #[test]
    fn a_task_under_two_instances_is_placed_twice() {
        let mut h = History::default();
        h.instance("i1", &instance(1024, 1024, &[], &[("a", alloc(1, 1, &[]))]))
            .instance("i2", &instance(1024, 1024, &[], &[]))
            .task("i1", "a", &task(TaskStatus::Running, TaskStatus::Running))
            .task("i2", "a", &task(TaskStatus::Stopped, TaskStatus::Stopped))
            .task("i2", "a", &task(TaskStatus::Stopped, TaskStatus::Stopped));
        let report = h.finish();
        let v = only(&report, Invariant::TaskPlacedTwice);
        assert_eq!(v.sequence, 4);
        assert_eq!(v.subject, subjects::task(CLUSTER, "i2", "a"));
    }

    #[test]
    fn a_task_allocated_on_two_instances_at_once_is_placed_twice() {
        let mut h = History::default();
        h.instance("i1", &instance(1024, 1024, &[], &[("a", alloc(1, 1, &[]))]))
            .instance("i2", &instance(1024, 1024, &[], &[("a", alloc(1, 1, &[]))]))
            .instance("i2", &instance(1024, 1024, &[], &[("a", alloc(1, 1, &[]))]))
            .task("i1", "a", &task(TaskStatus::Running, TaskStatus::Running));
        let report = h.finish();
        assert_eq!(report.count(Invariant::TaskPlacedTwice), 1, "{report}");
        assert_eq!(report.violations[0].sequence, 2);
        // i2's allocation has no task record on i2.
        assert_eq!(report.count(Invariant::OrphanAllocation), 1, "{report}");
    }

    #[test]
    fn an_allocation_under_a_fenced_claim_is_a_stale_claim() {
        use berth_messages::ids::run_task_id;
        let (t0, t1, t2) = (
            run_task_id("cmd", 0),
            run_task_id("cmd", 1),
            run_task_id("cmd", 2),
        );
        let fenced = |allocations: &[(&str, Allocation)]| {
            let mut record = instance(1024, 1024, &[], allocations);
            record
                .fenced_commands
                .insert("cmd".into(), Fence { claim: 2, at: 0.0 });
            record
        };
        let claimed = |claim: u32| Allocation {
            claim: (claim > 1).then_some(claim),
            ..alloc(1, 1, &[])
        };
        let mut h = History::default();
        // Claim 1 allocated t0 before the fence (adopted), claim 2 places t1 on i2, then
        // the stale claim 1 lands t1 on i1. Claim 1 allocating on i3, which no fence has
        // reached yet, is no violation (the later delivery adopts what it finds there).
        h.instance("i1", &fenced(&[(&t0, claimed(1))]))
            .instance("i2", &fenced(&[(&t1, claimed(2))]))
            .instance("i3", &instance(1024, 1024, &[], &[]))
            .instance("i3", &instance(1024, 1024, &[], &[(&t2, claimed(1))]))
            .instance("i1", &fenced(&[(&t0, claimed(1)), (&t1, claimed(1))]))
            .task("i1", &t0, &task(TaskStatus::Running, TaskStatus::Running))
            .task("i2", &t1, &task(TaskStatus::Running, TaskStatus::Running))
            .task("i3", &t2, &task(TaskStatus::Running, TaskStatus::Running));
        let report = h.finish();
        assert_eq!(report.count(Invariant::StaleClaim), 1, "{report}");
        let v = report
            .violations
            .iter()
            .find(|v| v.invariant == Invariant::StaleClaim)
            .cloned();
        assert_eq!(v.map(|v| v.sequence), Some(5));
        // The same history without the stale write is clean.
        let mut h = History::default();
        h.instance("i1", &fenced(&[(&t0, claimed(1))]))
            .instance("i2", &fenced(&[(&t1, claimed(2))]))
            .task("i1", &t0, &task(TaskStatus::Running, TaskStatus::Running))
            .task("i2", &t1, &task(TaskStatus::Running, TaskStatus::Running));
        let report = h.finish();
        assert!(report.is_clean(), "{report}");
    }

    #[test]
    fn moving_an_allocation_after_releasing_it_is_not_placed_twice() {
        let mut h = History::default();
        h.instance("i1", &instance(1024, 1024, &[], &[("a", alloc(1, 1, &[]))]))
            .instance("i1", &instance(1024, 1024, &[], &[]))
            .instance("i2", &instance(1024, 1024, &[], &[("a", alloc(1, 1, &[]))]))
            .task("i2", "a", &task(TaskStatus::Running, TaskStatus::Running));
        let report = h.finish();
        assert!(report.is_clean(), "{report}");
    }

    #[test]
    fn last_status_moving_backwards_is_found() {
        let mut h = History::default();
        h.task("i1", "a", &task(TaskStatus::Running, TaskStatus::Running))
            .task("i1", "a", &task(TaskStatus::Pending, TaskStatus::Running));
        let v = only(&h.finish(), Invariant::LifecycleBackwards).clone();
        assert_eq!(v.sequence, 2);
        assert!(v.detail.contains("RUNNING back to PENDING"), "{}", v.detail);
    }

    #[test]
    fn desired_status_leaving_stopped_is_found() {
        let mut h = History::default();
        h.task("i1", "a", &task(TaskStatus::Pending, TaskStatus::Stopped))
            .task("i1", "a", &task(TaskStatus::Pending, TaskStatus::Running));
        let v = only(&h.finish(), Invariant::LifecycleBackwards).clone();
        assert!(v.detail.contains("desiredStatus"), "{}", v.detail);
    }

    #[test]
    fn a_stopped_task_still_allocated_has_not_returned_its_resources() {
        let mut h = History::default();
        h.instance("i1", &instance(1024, 1024, &[], &[("a", alloc(1, 1, &[]))]))
            .task("i1", "a", &task(TaskStatus::Stopped, TaskStatus::Stopped));
        let report = h.finish();
        let v = only(&report, Invariant::ResourcesNotReturned);
        assert_eq!(v.sequence, 1);
        assert_eq!(v.subject, subjects::instance(CLUSTER, "i1"));
    }

    #[test]
    fn an_allocation_without_a_task_is_an_orphan_unless_the_instance_is_inactive() {
        let mut h = History::default();
        h.instance(
            "i1",
            &instance(1024, 1024, &[], &[("ghost", alloc(1, 1, &[]))]),
        );
        let v = only(&h.finish(), Invariant::OrphanAllocation).clone();
        assert!(v.detail.contains("ghost"), "{}", v.detail);

        let mut h = History::default();
        let mut record = instance(1024, 1024, &[], &[("ghost", alloc(1, 1, &[]))]);
        record.status = InstanceStatus::Inactive;
        h.instance("i1", &record);
        assert!(h.finish().is_clean());
    }

    #[test]
    fn a_command_without_outcome_is_found_once_and_internal_ones_are_exempt() {
        let mut h = clean_history();
        let record = encode_record(&task(TaskStatus::Pending, TaskStatus::Running)).unwrap();
        h.write_as(&subjects::task(CLUSTER, "i1", "t9"), "lost", &record);
        h.write_as(&subjects::task(CLUSTER, "i1", "t9"), "lost", &record);
        h.write_as(
            &subjects::task(CLUSTER, "i1", "t9"),
            "internal-reconcile-1",
            &record,
        );
        let report = h.finish();
        let v = only(&report, Invariant::MissingOutcome);
        assert_eq!(v.sequence, 10);
        assert!(v.detail.contains("lost"), "{}", v.detail);
    }

    #[test]
    fn undecodable_entity_records_are_found_and_other_subjects_ignored() {
        let mut h = History::default();
        h.write_as(
            &subjects::instance(CLUSTER, "i1"),
            "internal-x",
            b"\xc1garbage",
        );
        h.write_as(&subjects::task(CLUSTER, "i1", "a"), "internal-x", b"");
        h.write_as(&subjects::service(CLUSTER, "web"), "internal-x", b"\x01");
        h.write_as(&subjects::task_definition("web", 1), "internal-x", b"\x80");
        h.write_as("berth.state.prod.unknown.kind.x", "internal-x", b"anything");
        let report = h.finish();
        assert_eq!(report.count(Invariant::UndecodableRecord), 4, "{report}");
        assert_eq!(report.messages, 5);
        let sequences: Vec<u64> = report.violations.iter().map(|v| v.sequence).collect();
        assert_eq!(sequences, [1, 2, 3, 4]);
    }

    #[test]
    fn report_renders_a_table_and_json() {
        let mut h = History::default();
        h.task("i1", "a", &task(TaskStatus::Running, TaskStatus::Running))
            .task("i1", "a", &task(TaskStatus::Pending, TaskStatus::Running));
        let report = h.finish();
        let text = report.to_string();
        assert!(text.contains("LifecycleBackwards            1"), "{text}");
        assert!(
            text.contains("#2 berth.state.prod.task.i1.a LifecycleBackwards: lastStatus"),
            "{text}"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["messages"], 2);
        assert_eq!(json["violations"][0]["invariant"], "LifecycleBackwards");
    }
}

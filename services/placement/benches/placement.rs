//! One placement decision over 10,000 instances (the goal is ≤ 50 µs): binpack on
//! memory, spread over three availability zones, and a memberOf constraint; plus a batch
//! of 100. Measured on an `InstancePool` (the control plane's path: the pool is kept up to
//! date as records change, so a decision reads precomputed figures) and, for comparison,
//! on a slice of candidates that each call summarises first (custom schedulers' path).

use berth_messages::model::{
    Allocation, Attribute, ContainerInstance, InstanceStatus, Resource, VersionInfo,
};
use berth_placement::{
    allocate, parse, BinpackField, Candidate, Constraint, Demand, InstancePool, InstanceRecord,
    PlacementRequest, Placer, RandomFitPlacer, SpreadField, Strategy, StrategyPlacer,
};
use criterion::{criterion_group, criterion_main, Criterion};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;

const INSTANCES: usize = 10_000;

fn attribute(name: &str, value: Option<&str>) -> Attribute {
    Attribute {
        name: name.into(),
        value: value.map(str::to_string),
        ..Default::default()
    }
}

/// A pool shaped like a real cluster: ECS's reserved ports, the built-in attributes, a
/// few tasks already on most instances.
fn pool() -> (Vec<ContainerInstance>, Vec<BTreeMap<String, u32>>) {
    let zones = ["us-east-1a", "us-east-1b", "us-east-1c"];
    let types = ["m5.large", "m5.xlarge", "c5.2xlarge", "t3.medium"];
    let mut instances = Vec::with_capacity(INSTANCES);
    let mut groups = Vec::with_capacity(INSTANCES);
    for n in 0..INSTANCES {
        let mut i = ContainerInstance {
            container_instance_arn: format!(
                "arn:aws:ecs:us-east-1:1:container-instance/c/{n:032x}"
            ),
            ec2_instance_id: format!("i-{n:017x}"),
            version_info: VersionInfo {
                agent_version: Some("1.80.0".into()),
                ..Default::default()
            },
            registered_resources: vec![
                Resource::integer(Resource::CPU, 4096),
                Resource::integer(Resource::MEMORY, 16_384),
                Resource::string_set(
                    Resource::PORTS,
                    ["22", "2375", "2376", "51678", "51679"].map(String::from),
                ),
                Resource::string_set(Resource::PORTS_UDP, Vec::<String>::new()),
            ],
            status: InstanceStatus::Active,
            agent_connected: true,
            attributes: vec![
                attribute("ecs.ami-id", Some("ami-0123456789abcdef0")),
                attribute("ecs.availability-zone", Some(zones[n % 3])),
                attribute("ecs.instance-type", Some(types[n % 4])),
                attribute("ecs.os-type", Some("linux")),
                attribute("ecs.os-family", Some("LINUX")),
                attribute("ecs.cpu-architecture", Some("x86_64")),
                attribute("ecs.vpc-id", Some("vpc-0123456789")),
                attribute("ecs.subnet-id", Some("subnet-0123456789")),
                attribute("ecs.capability.task-eni", None),
                attribute("com.amazonaws.ecs.capability.docker-remote-api.1.44", None),
            ],
            registered_at: 1_700_000_000.0 + n as f64,
            ..Default::default()
        };
        let tasks = n % 4;
        for t in 0..tasks {
            allocate(
                &mut i,
                &format!("task-{n}-{t}"),
                Allocation {
                    cpu: 256 * (1 + (n % 3) as i64),
                    memory: 512 * (1 + (n % 5) as i64),
                    ..Default::default()
                },
            );
        }
        let mut g = BTreeMap::new();
        if tasks > 0 {
            g.insert("family:web".to_string(), (tasks as u32).div_ceil(2));
            g.insert("service:db".to_string(), tasks as u32 / 2);
        }
        i.running_tasks_count = Some(tasks as i64);
        instances.push(i);
        groups.push(g);
    }
    (instances, groups)
}

fn bench(c: &mut Criterion) {
    let (instances, groups) = pool();
    let candidates: Vec<Candidate<'_>> = instances
        .iter()
        .zip(&groups)
        .map(|(i, g)| Candidate::from_record(i, g))
        .collect();
    let demand = Demand {
        cpu: 256,
        memory: 512,
        ..Default::default()
    };
    let binpack = [Strategy::Binpack(BinpackField::Memory)];
    let spread = [Strategy::Spread(SpreadField::Attribute(
        "ecs.availability-zone".into(),
    ))];
    let member_of = [Constraint::MemberOf(
        parse("attribute:ecs.instance-type in [m5.large, m5.xlarge] and agentVersion >= 1.70.0")
            .expect("benchmark expression parses"),
    )];
    let cases: [(&str, &[Constraint], &[Strategy], usize); 6] = [
        ("binpack(memory), 1 task", &[], &binpack, 1),
        ("binpack(memory), batch of 10 tasks", &[], &binpack, 10),
        (
            "spread(attribute:ecs.availability-zone), 1 task",
            &[],
            &spread,
            1,
        ),
        (
            "memberOf(instance-type and agentVersion), 1 task",
            &member_of,
            &[],
            1,
        ),
        ("spread(zone), batch of 100 tasks", &[], &spread, 100),
        (
            "memberOf + spread(zone) + binpack(memory), 1 task",
            &member_of,
            &[spread[0].clone(), binpack[0].clone()],
            1,
        ),
    ];
    let pool = InstancePool::from_records(instances.iter().zip(&groups).map(|(i, g)| {
        let record: Arc<dyn InstanceRecord> = Arc::new(i.clone());
        (record, g.clone(), i.running_tasks_count.unwrap_or(0))
    }));
    let requests: Vec<(&str, PlacementRequest<'_>)> = cases
        .iter()
        .map(|(name, constraints, strategies, count)| {
            let request = PlacementRequest {
                demand: &demand,
                count: *count,
                group: "family:web",
                constraints,
                strategies,
            };
            (*name, request)
        })
        .collect();
    let mut placer = StrategyPlacer::with_seed(7);
    let mut on_pool = c.benchmark_group("place over 10,000 instances (InstancePool)");
    for (name, request) in &requests {
        on_pool.bench_function(*name, |b| {
            b.iter(|| black_box(placer.place_in_pool(black_box(&pool), request, &[])))
        });
    }
    on_pool.finish();

    let mut on_slice =
        c.benchmark_group("place over 10,000 candidates (slice summarised per call)");
    for (name, request) in &requests {
        on_slice.bench_function(*name, |b| {
            b.iter(|| black_box(placer.place(black_box(&candidates), request)))
        });
    }
    let mut random_fit = RandomFitPlacer::with_seed(7);
    on_slice.bench_function("RandomFitPlacer, 1 task", |b| {
        b.iter(|| black_box(random_fit.place(black_box(&instances), &demand, 1)))
    });
    on_slice.finish();

    c.bench_function("parse a 3-condition expression", |b| {
        b.iter(|| {
            parse(black_box(
                "attribute:ecs.instance-type =~ m5.* and attribute:ecs.availability-zone in \
                 [us-east-1a, us-east-1b] and not(task:group == family:web)",
            ))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! Unit tests of the journal and API model.

use super::*;

#[test]
fn an_instance_copied_for_update_drops_only_what_writes_recompute() {
    let cpu = Resource::integer(Resource::CPU, 1024);
    let original = ContainerInstance {
        container_instance_arn: "arn:aws:ecs:r:1:container-instance/c/i1".into(),
        version: Some(7),
        registered_resources: vec![cpu.clone()],
        remaining_resources: vec![Resource::integer(Resource::CPU, 512)],
        status: InstanceStatus::Draining,
        agent_connected: true,
        running_tasks_count: Some(1),
        pending_tasks_count: Some(2),
        attributes: vec![Attribute {
            name: "ecs.os-type".into(),
            value: Some("linux".into()),
            ..Default::default()
        }],
        allocations: BTreeMap::from([(
            "t1".to_string(),
            Allocation {
                cpu: 512,
                group: Some("family:web".into()),
                ..Default::default()
            },
        )]),
        ..Default::default()
    };
    let copy = original.clone_for_update();
    assert_eq!(
        copy,
        ContainerInstance {
            version: None,
            remaining_resources: Vec::new(),
            running_tasks_count: None,
            pending_tasks_count: None,
            ..original
        }
    );
}

#[test]
fn task_health_follows_its_essential_containers() {
    let container = |name: &str, status: Option<&str>| Container {
        name: name.into(),
        health_status: status.map(String::from),
        ..Default::default()
    };
    let task = |containers: Vec<Container>| Task {
        containers,
        ..Default::default()
    };
    let all = |_: &str| true;
    assert_eq!(task(vec![container("a", None)]).aggregate_health(all), None);
    let t = task(vec![
        container("a", Some(health::HEALTHY)),
        container("b", None),
    ]);
    assert_eq!(t.aggregate_health(all), Some(health::HEALTHY));
    let t = task(vec![
        container("a", Some(health::HEALTHY)),
        container("b", Some(health::UNKNOWN)),
    ]);
    assert_eq!(t.aggregate_health(all), Some(health::UNKNOWN));
    let t = task(vec![
        container("a", Some(health::UNKNOWN)),
        container("b", Some(health::UNHEALTHY)),
    ]);
    assert_eq!(t.aggregate_health(all), Some(health::UNHEALTHY));
    // A non-essential container's health does not make the task's.
    assert_eq!(
        t.aggregate_health(|name| name == "a"),
        Some(health::UNKNOWN)
    );
    let t = task(vec![
        container("a", Some(health::HEALTHY)),
        container("side", Some(health::UNHEALTHY)),
    ]);
    assert_eq!(
        t.aggregate_health(|name| name != "side"),
        Some(health::HEALTHY)
    );
}

#[test]
fn presented_tasks_show_unknown_health_where_no_check_set_one() {
    let task = Task {
        containers: vec![
            Container {
                name: "a".into(),
                health_status: Some(health::HEALTHY.into()),
                ..Default::default()
            },
            Container {
                name: "b".into(),
                ..Default::default()
            },
        ],
        ..Default::default()
    }
    .presented(7);
    assert_eq!(task.version, Some(7));
    assert_eq!(task.health_status.as_deref(), Some(health::UNKNOWN));
    let shown: Vec<_> = task
        .containers
        .iter()
        .map(|c| c.health_status.as_deref())
        .collect();
    assert_eq!(shown, [Some(health::HEALTHY), Some(health::UNKNOWN)]);
}

#[test]
fn health_check_commands() {
    let check = |command: &[&str]| HealthCheck {
        command: command.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    assert_eq!(
        check(&["CMD", "curl", "-f", "x"]).argv(),
        Ok(vec!["curl".into(), "-f".into(), "x".into()])
    );
    assert_eq!(
        check(&["CMD-SHELL", "test -f a", "&& true"]).argv(),
        Ok(vec![
            "/bin/sh".into(),
            "-c".into(),
            "test -f a && true".into()
        ])
    );
    for bad in [&[][..], &["CMD"], &["CMD-SHELL"], &["curl", "x"]] {
        assert!(check(bad).argv().is_err(), "{bad:?}");
    }
    let defaults = check(&["CMD", "true"]);
    assert_eq!(
        (
            defaults.interval_seconds(),
            defaults.timeout_seconds(),
            defaults.retries_count(),
            defaults.start_period_seconds()
        ),
        (30, 5, 3, 0)
    );
}

#[test]
fn task_status_names_round_trip_like_serde() {
    for status in TaskStatus::ALL {
        assert_eq!(TaskStatus::from_name(status.as_str()), Some(status));
        let json = serde_json::to_value(status).unwrap();
        assert_eq!(json, status.as_str());
    }
    assert_eq!(TaskStatus::from_name("running"), None);
}

#[test]
fn task_status_orders_the_lifecycle() {
    assert!(TaskStatus::Provisioning < TaskStatus::Pending);
    assert!(TaskStatus::Running < TaskStatus::Stopped);
    assert_eq!(
        serde_json::to_value(TaskStatus::Deprovisioning).unwrap(),
        "DEPROVISIONING"
    );
}

#[test]
fn task_record_is_a_named_map_with_ecs_fields() {
    let t = Task {
        task_arn: "arn:aws:ecs:r:a:task/c/t".into(),
        last_status: TaskStatus::Pending,
        desired_status: TaskStatus::Running,
        ..Default::default()
    };
    let bytes = crate::codec::encode_record(&t).unwrap();
    let v: serde_json::Value = rmp_serde::from_slice(&bytes).unwrap();
    assert_eq!(v["taskArn"], "arn:aws:ecs:r:a:task/c/t");
    assert_eq!(v["lastStatus"], "PENDING");
    assert_eq!(v["desiredStatus"], "RUNNING");
    assert!(v.get("version").is_none());
    let back: Task = crate::codec::decode_record(&bytes).unwrap();
    assert_eq!(back, t);
}

//! The service invariants (DESIGN.md invariant 6): a task launched for a service never
//! takes the service's non-stopped tasks above `maximumPercent` of the desired count in
//! force when its step was taken, and a step never stops healthy tasks of a deployment
//! below `minimumHealthyPercent` of it.
//!
//! Service tasks are the tasks whose `startedBy` is a deployment id of a service. A step
//! is seen when a service record first carries it: the tasks it stops are checked against
//! the healthy tasks at that version, and its bounds are kept for the tasks its RunTask
//! commands create (their command ids name the step).

use crate::report::Invariant;
use berth_messages::model::{health, Task, TaskStatus};
use berth_messages::service::{step_of_command, Bounds, Service, ServiceStatus};
use std::collections::{HashMap, HashSet};

type ServiceKey = (String, String);

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    live: i64,
    healthy: i64,
}

#[derive(Debug)]
struct TaskFact {
    live: bool,
    healthy: bool,
}

/// Replay state of the service checks.
#[derive(Debug, Default)]
pub(crate) struct ServiceAudit {
    /// (cluster, deployment id) → service.
    deployments: HashMap<(String, String), ServiceKey>,
    /// Steps seen, with the maximum of non-stopped tasks in force for them.
    steps: HashMap<String, i64>,
    /// The step the last record seen of each service carried (`None`: none).
    current_step: HashMap<ServiceKey, Option<String>>,
    tasks: HashMap<(String, String), TaskFact>,
    counts: HashMap<ServiceKey, Counts>,
}

fn healthy(t: &Task) -> bool {
    t.last_status == TaskStatus::Running
        && t.desired_status == TaskStatus::Running
        && t.health_status
            .as_deref()
            .is_none_or(|h| h == health::HEALTHY)
}

fn bounds(s: &Service) -> Bounds {
    if s.status == ServiceStatus::Active {
        s.bounds()
    } else {
        Bounds {
            floor: 0,
            ceiling: 0,
        }
    }
}

impl ServiceAudit {
    pub(crate) fn observe_service(
        &mut self,
        cluster: &str,
        name: &str,
        record: &Service,
    ) -> Vec<(Invariant, String)> {
        let key = (cluster.to_string(), name.to_string());
        for d in &record.deployments {
            self.deployments
                .insert((cluster.to_string(), d.id.clone()), key.clone());
        }
        // Once a record of a service has been seen, every later one is (a subject keeps
        // its newest records): a step first seen after that was made by that record.
        let previous = self
            .current_step
            .insert(key.clone(), record.step.as_ref().map(|s| s.id.clone()));
        let Some(step) = &record.step else {
            return Vec::new();
        };
        let made_here = match &previous {
            Some(Some(id)) if *id == step.id => return Vec::new(),
            Some(_) => true,
            None => false,
        };
        if !made_here {
            // The record that made it is gone from the journal's history: its own
            // bound stands.
            self.steps.insert(step.id.clone(), step.ceiling);
            return Vec::new();
        }
        let b = bounds(record);
        self.steps.insert(step.id.clone(), b.ceiling);
        let counts = self.counts.get(&key).copied().unwrap_or_default();
        let mut found = Vec::new();
        let stopped: HashSet<&str> = step.stops.iter().map(|s| s.task_id.as_str()).collect();
        let healthy_stops = stopped
            .iter()
            .filter(|id| {
                self.tasks
                    .get(&(cluster.to_string(), id.to_string()))
                    .is_some_and(|t| t.healthy)
            })
            .count() as i64;
        if healthy_stops > 0 && counts.healthy - healthy_stops < b.floor {
            found.push((
                Invariant::ServiceBelowHealthyFloor,
                format!(
                    "step {} of service {name} stops {healthy_stops} healthy task(s) of {}: below the floor of {}",
                    step.id, counts.healthy, b.floor
                ),
            ));
        }
        let launches: i64 = step.launches.iter().map(|l| l.count).sum();
        if launches > 0 && counts.live + launches > b.ceiling {
            found.push((
                Invariant::ServiceAboveMaximum,
                format!(
                    "step {} of service {name} launches {launches} task(s) beside {} non-stopped: above the maximum of {}",
                    step.id, counts.live, b.ceiling
                ),
            ));
        }
        found
    }

    pub(crate) fn observe_task(
        &mut self,
        cluster: &str,
        task_id: &str,
        command_id: Option<&str>,
        record: &Task,
    ) -> Vec<(Invariant, String)> {
        let Some(started_by) = record.started_by.as_deref() else {
            return Vec::new();
        };
        let Some(service) = self
            .deployments
            .get(&(cluster.to_string(), started_by.to_string()))
            .cloned()
        else {
            return Vec::new();
        };
        let live = record.last_status != TaskStatus::Stopped;
        let is_healthy = healthy(record);
        let key = (cluster.to_string(), task_id.to_string());
        let counts = self.counts.entry(service.clone()).or_default();
        let created = match self.tasks.get(&key) {
            Some(old) => {
                counts.live -= i64::from(old.live);
                counts.healthy -= i64::from(old.healthy);
                false
            }
            None => true,
        };
        counts.live += i64::from(live);
        counts.healthy += i64::from(is_healthy);
        let now = *counts;
        self.tasks.insert(
            key,
            TaskFact {
                live,
                healthy: is_healthy,
            },
        );
        if !(created && live) {
            return Vec::new();
        }
        let Some((step, ceiling)) = command_id
            .and_then(step_of_command)
            .and_then(|step| self.steps.get(step).map(|c| (step, *c)))
        else {
            return Vec::new();
        };
        if now.live > ceiling {
            return vec![(
                Invariant::ServiceAboveMaximum,
                format!(
                    "task {task_id} of step {step} takes service {} to {} non-stopped task(s): above the maximum of {ceiling}",
                    service.1, now.live
                ),
            )];
        }
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_messages::service::*;

    fn service(desired: i64, step: Option<ServiceStep>) -> Service {
        let mut s = Service {
            service_arn: "arn:aws:ecs:r:1:service/c/web".into(),
            service_name: "web".into(),
            desired_count: desired,
            deployment_configuration: DeploymentConfiguration {
                maximum_percent: Some(150),
                minimum_healthy_percent: Some(50),
                ..Default::default()
            },
            ..Default::default()
        };
        s.start_deployment("td:1", 0.0);
        s.step = step;
        s
    }

    fn task(deployment: &str, last: TaskStatus) -> Task {
        Task {
            started_by: Some(deployment.into()),
            last_status: last,
            desired_status: TaskStatus::Running,
            ..Default::default()
        }
    }

    #[test]
    fn launches_above_the_maximum_are_found() {
        let mut a = ServiceAudit::default();
        let step = step_id("arn", 1);
        let s = service(
            2,
            Some(ServiceStep {
                id: step.clone(),
                launches: vec![StepLaunch {
                    count: 4,
                    ..Default::default()
                }],
                ..Default::default()
            }),
        );
        let d = s.primary().unwrap().id.clone();
        assert!(a.observe_service("c", "web", &service(2, None)).is_empty());
        // desired 2, max 150: at most 3; the step itself asks for 4.
        let found = a.observe_service("c", "web", &s);
        assert_eq!(found[0].0, Invariant::ServiceAboveMaximum);
        let cmd = launch_command_id(&step, 0, 0);
        for (i, expect) in [(0, 0), (1, 0), (2, 0), (3, 1)] {
            let found = a.observe_task(
                "c",
                &format!("t{i}"),
                Some(&cmd),
                &task(&d, TaskStatus::Pending),
            );
            assert_eq!(found.len(), expect, "task {i}");
        }
        // A task of no service is not counted.
        assert!(a
            .observe_task("c", "x", Some(&cmd), &task("other", TaskStatus::Pending))
            .is_empty());
    }

    #[test]
    fn a_step_whose_first_record_is_gone_keeps_its_own_bound() {
        let mut a = ServiceAudit::default();
        let step = step_id("arn", 3);
        // First seen in a DRAINING record (desired 0): the step's own ceiling counts.
        let mut s = service(
            0,
            Some(ServiceStep {
                id: step.clone(),
                ceiling: 2,
                ..Default::default()
            }),
        );
        s.status = ServiceStatus::Draining;
        let d = s.primary().unwrap().id.clone();
        assert!(a.observe_service("c", "web", &s).is_empty());
        let cmd = launch_command_id(&step, 0, 0);
        for (i, expect) in [(0, 0), (1, 0), (2, 1)] {
            let found = a.observe_task(
                "c",
                &format!("t{i}"),
                Some(&cmd),
                &task(&d, TaskStatus::Pending),
            );
            assert_eq!(found.len(), expect, "task {i}");
        }
    }

    #[test]
    fn stops_below_the_floor_are_found() {
        let mut a = ServiceAudit::default();
        let s = service(4, None);
        let d = s.primary().unwrap().id.clone();
        a.observe_service("c", "web", &s);
        for i in 0..4 {
            a.observe_task("c", &format!("t{i}"), None, &task(&d, TaskStatus::Running));
        }
        let stops = |n: usize| ServiceStep {
            id: step_id("arn", n as u64),
            stops: (0..n)
                .map(|i| StepStop {
                    task_id: format!("t{i}"),
                    reason: "x".into(),
                })
                .collect(),
            ..Default::default()
        };
        // 4 healthy, floor 2 (50% of 4): stopping 2 is fine, 3 is not.
        assert!(a
            .observe_service("c", "web", &service(4, Some(stops(2))))
            .is_empty());
        let found = a.observe_service("c", "web", &service(4, Some(stops(3))));
        assert_eq!(found[0].0, Invariant::ServiceBelowHealthyFloor);
    }
}

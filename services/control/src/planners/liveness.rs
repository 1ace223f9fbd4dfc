//! Liveness planner: which instances to mark disconnected or connected again.
//!
//! Shape (shared by every planner): a snapshot in, actions out, I/O outside. The loop in
//! `crate::liveness` takes a snapshot of the instances the view holds together with the
//! last beat heard from each, passes it with the current time to
//! [`LivenessPlanner::plan`], and writes the returned flips through the instance actor.
//! The planner keeps only its own memory of the previous check (to notice when this
//! replica itself ran late); it reads no clock and writes nothing.
//!
//! The rules: an agent is disconnected after [`MISSED_BEATS`] intervals without a beat;
//! a registration counts as a beat; a replica that starts, or whose check runs more than
//! an interval late (starved of CPU), grants every agent [`MISSED_BEATS`] intervals of
//! grace before judging it, since its own silence says nothing about the agents; any beat
//! from a disconnected, not INACTIVE instance marks it connected.

#[cfg(test)]
use berth_messages::model::InstanceHealthStatus;
use berth_messages::model::{ContainerInstance, InstanceStatus};
use std::time::Duration;
use tokio::time::Instant;

/// Intervals without a beat after which an agent is disconnected.
pub const MISSED_BEATS: u32 = 3;

/// The time of a check, on both clocks it needs: beats are timed on the monotonic clock,
/// registrations carry wall-clock seconds since the epoch.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub instant: Instant,
    pub epoch_seconds: f64,
}

impl Now {
    pub fn current() -> Self {
        Self {
            instant: Instant::now(),
            epoch_seconds: berth_messages::now_epoch_seconds(),
        }
    }
}

/// One instance as a check sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservedInstance {
    pub cluster: String,
    pub instance_id: String,
    pub agent_connected: bool,
    pub status: InstanceStatus,
    /// Seconds since the epoch.
    pub registered_at: f64,
    /// The last beat this replica heard from the agent, if any.
    pub last_beat: Option<Instant>,
}

impl ObservedInstance {
    pub fn new(cluster: &str, record: &ContainerInstance, last_beat: Option<Instant>) -> Self {
        Self {
            cluster: cluster.to_string(),
            instance_id: instance_id(record).to_string(),
            agent_connected: record.agent_connected,
            status: record.status,
            registered_at: record.registered_at,
            last_beat,
        }
    }
}

/// The instance id part of a record's ARN (the key beats are heard under).
pub fn instance_id(record: &ContainerInstance) -> &str {
    berth_messages::arn::container_instance_id(&record.container_instance_arn).1
}

/// What the liveness loop does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LivenessAction {
    /// The check ran `late` after the previous one; agents get a new grace period.
    GraceGranted { late: Duration },
    /// Write `agentConnected = false`: no beat for [`MISSED_BEATS`] intervals.
    MarkDisconnected {
        cluster: String,
        instance_id: String,
    },
    /// Mark the tasks of a host whose agent has been silent past the host-lost limit
    /// STOPPED.
    HostLost {
        cluster: String,
        instance_id: String,
    },
    /// Write `agentConnected = true` and the health the beat reports: a disconnected
    /// instance's agent spoke, or its agent became impaired or recovered.
    MarkConnected {
        cluster: String,
        instance_id: String,
        /// Why the agent cannot follow its tasks (healthStatus IMPAIRED); none: it can.
        impaired: Option<String>,
    },
}

/// The liveness rules and the memory of the previous check.
#[derive(Debug, Clone)]
pub struct LivenessPlanner {
    interval: Duration,
    lost_after: Duration,
    started: Instant,
    last_check: Instant,
    grace_until: Instant,
}

impl LivenessPlanner {
    /// A planner for agents beating every `interval`, on a replica started at `started`.
    #[cfg(test)]
    pub fn new(interval: Duration, started: Instant) -> Self {
        Self::with_host_lost_after(interval, Duration::from_secs(300), started)
    }

    /// A planner that also declares hosts lost after `lost_after` of silence.
    pub fn with_host_lost_after(
        interval: Duration,
        lost_after: Duration,
        started: Instant,
    ) -> Self {
        Self {
            interval,
            lost_after,
            started,
            last_check: started,
            grace_until: started,
        }
    }

    /// How often the loop should check: twice per interval.
    pub fn check_period(&self) -> Duration {
        self.interval / 2
    }

    /// Silence after which an agent is disconnected.
    pub fn limit(&self) -> Duration {
        self.interval * MISSED_BEATS
    }

    /// The actions of one check at `now`.
    pub fn plan(&mut self, instances: &[ObservedInstance], now: Now) -> Vec<LivenessAction> {
        let limit = self.limit();
        let mut actions = Vec::new();
        let late = now.instant.saturating_duration_since(self.last_check);
        if late > self.interval {
            self.grace_until = now.instant + limit;
            actions.push(LivenessAction::GraceGranted { late });
        }
        self.last_check = now.instant;
        if now.instant < self.grace_until {
            return actions;
        }
        // Silence before the latest grace period began does not count.
        let counted_from = self.grace_until.checked_sub(limit).unwrap_or(self.started);
        for instance in instances {
            if instance.status == InstanceStatus::Inactive {
                continue;
            }
            if !instance.agent_connected {
                let last = instance.last_beat.unwrap_or(self.started).max(counted_from);
                if now.instant.saturating_duration_since(last) > self.lost_after {
                    actions.push(LivenessAction::HostLost {
                        cluster: instance.cluster.clone(),
                        instance_id: instance.instance_id.clone(),
                    });
                }
                continue;
            }
            if now.epoch_seconds - instance.registered_at < limit.as_secs_f64() {
                continue;
            }
            let last = instance.last_beat.unwrap_or(self.started).max(counted_from);
            if now.instant.saturating_duration_since(last) > limit {
                actions.push(LivenessAction::MarkDisconnected {
                    cluster: instance.cluster.clone(),
                    instance_id: instance.instance_id.clone(),
                });
            }
        }
        actions
    }
}

/// The action for a beat heard from `instance_id`, given its record in the view (none
/// when the view does not hold it).
pub fn plan_beat(
    cluster: &str,
    instance_id: &str,
    record: Option<&ContainerInstance>,
    impaired: Option<&str>,
) -> Option<LivenessAction> {
    let record = record?;
    let active = record.status != InstanceStatus::Inactive;
    let reconnects = !record.agent_connected;
    // Health is written on change only: an instance never reported impaired needs no
    // OK record, so a healthy fleet costs no write per beat or per registration.
    let health_changes = record.is_impaired() != impaired.is_some();
    (active && (reconnects || health_changes)).then(|| LivenessAction::MarkConnected {
        cluster: cluster.to_string(),
        instance_id: instance_id.to_string(),
        impaired: impaired.map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_secs(5);
    /// Wall-clock seconds at the replica's start in these tests.
    const EPOCH_AT_START: f64 = 1_000_000.0;

    struct Clock {
        started: Instant,
    }

    impl Clock {
        fn new() -> Self {
            Self {
                started: Instant::now(),
            }
        }
        fn at(&self, after_start: Duration) -> Now {
            Now {
                instant: self.started + after_start,
                epoch_seconds: EPOCH_AT_START + after_start.as_secs_f64(),
            }
        }
        fn beat(&self, after_start: Duration) -> Option<Instant> {
            Some(self.started + after_start)
        }
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    /// A connected ACTIVE instance registered an hour before the replica started.
    fn instance(id: &str, last_beat: Option<Instant>) -> ObservedInstance {
        ObservedInstance {
            cluster: "default".into(),
            instance_id: id.into(),
            agent_connected: true,
            status: InstanceStatus::Active,
            registered_at: EPOCH_AT_START - 3600.0,
            last_beat,
        }
    }

    fn disconnected(id: &str) -> LivenessAction {
        LivenessAction::MarkDisconnected {
            cluster: "default".into(),
            instance_id: id.into(),
        }
    }

    /// Checks every half interval from `from` to `to` (seconds after start), as the loop
    /// does, and returns the actions of the last check.
    fn check_until(
        planner: &mut LivenessPlanner,
        clock: &Clock,
        instances: &[ObservedInstance],
        from: f64,
        to: f64,
    ) -> Vec<LivenessAction> {
        let step = planner.check_period().as_secs_f64();
        let mut t = from;
        loop {
            let actions = planner.plan(instances, clock.at(secs(t)));
            if t >= to {
                return actions;
            }
            t = (t + step).min(to);
        }
    }

    /// Checks from the replica's start: none plans anything up to `quiet_until`, the one
    /// at `at` (seconds after start) marks exactly `ids` disconnected.
    fn assert_disconnected_at(
        clock: &Clock,
        observed: &[ObservedInstance],
        quiet_until: f64,
        at: f64,
        ids: &[&str],
    ) {
        let mut planner = LivenessPlanner::new(INTERVAL, clock.started);
        let quiet = check_until(&mut planner, clock, observed, 0.0, quiet_until);
        assert!(quiet.is_empty(), "{quiet:?} by {quiet_until} s");
        let expected: Vec<_> = ids.iter().map(|id| disconnected(id)).collect();
        assert_eq!(planner.plan(observed, clock.at(secs(at))), expected);
    }

    #[test]
    fn a_beat_older_than_the_limit_is_planned_disconnected() {
        let clock = Clock::new();
        let stale = instance("stale", clock.beat(secs(10.0)));
        let fresh = instance("fresh", clock.beat(secs(20.0)));
        assert_disconnected_at(&clock, &[stale, fresh], 25.0, 25.5, &["stale"]);
    }

    #[test]
    fn a_host_silent_past_the_lost_limit_is_lost() {
        let clock = Clock::new();
        let mut planner =
            LivenessPlanner::with_host_lost_after(INTERVAL, secs(60.0), clock.started);
        let mut gone = instance("gone", clock.beat(secs(10.0)));
        gone.agent_connected = false;
        let mut back = instance("back", clock.beat(secs(65.0)));
        back.agent_connected = false;
        let observed = [gone, back];
        let early = check_until(&mut planner, &clock, &observed, 0.0, 70.0);
        assert!(early.is_empty(), "{early:?}");
        let lost = planner.plan(&observed, clock.at(secs(70.5)));
        assert_eq!(
            lost,
            vec![LivenessAction::HostLost {
                cluster: "default".into(),
                instance_id: "gone".into()
            }]
        );
    }

    #[test]
    fn silence_of_exactly_the_limit_is_not_yet_disconnected() {
        let clock = Clock::new();
        let edge = [instance("edge", clock.beat(secs(20.0)))];
        // 20 s + three 5 s intervals: 35 s is on the limit, a millisecond more is past it.
        assert_disconnected_at(&clock, &edge, 35.0, 35.001, &["edge"]);
    }

    #[test]
    fn a_starting_replica_grants_the_limit_before_judging() {
        let clock = Clock::new();
        // Never heard by this replica: judged from the replica's start.
        let silent = [instance("silent", None)];
        assert_disconnected_at(&clock, &silent, 15.0, 15.5, &["silent"]);
    }

    #[test]
    fn a_recent_registration_counts_as_a_beat() {
        let clock = Clock::new();
        let mut registered = instance("new", None);
        registered.registered_at = EPOCH_AT_START + 20.0;
        assert_disconnected_at(&clock, &[registered], 34.5, 35.0, &["new"]);
    }

    #[test]
    fn disconnected_and_inactive_instances_are_left_alone() {
        let clock = Clock::new();
        let mut planner = LivenessPlanner::new(INTERVAL, clock.started);
        let mut gone = instance("gone", None);
        gone.agent_connected = false;
        let mut inactive = instance("inactive", None);
        inactive.status = InstanceStatus::Inactive;
        let mut draining = instance("draining", None);
        draining.status = InstanceStatus::Draining;
        let actions = check_until(&mut planner, &clock, &[gone, inactive, draining], 0.0, 60.0);
        assert_eq!(actions, vec![disconnected("draining")]);
    }

    #[test]
    fn a_late_check_grants_a_new_grace_period() {
        let clock = Clock::new();
        let mut planner = LivenessPlanner::new(INTERVAL, clock.started);
        let observed = [instance("quiet", clock.beat(secs(1.0)))];
        assert!(check_until(&mut planner, &clock, &observed, 0.0, 10.0).is_empty());
        // The replica was starved for 30 s: the beat is old, but the replica's own
        // silence is no evidence against the agent.
        let late = planner.plan(&observed, clock.at(secs(40.0)));
        assert_eq!(
            late,
            vec![LivenessAction::GraceGranted { late: secs(30.0) }]
        );
        assert!(check_until(&mut planner, &clock, &observed, 42.5, 55.0).is_empty());
        assert_eq!(
            planner.plan(&observed, clock.at(secs(55.5))),
            vec![disconnected("quiet")]
        );
    }

    #[test]
    fn a_check_late_by_one_interval_exactly_is_on_time() {
        let clock = Clock::new();
        let mut planner = LivenessPlanner::new(INTERVAL, clock.started);
        assert!(planner.plan(&[], clock.at(secs(5.0))).is_empty());
        assert_eq!(
            planner.plan(&[], clock.at(secs(10.5))),
            vec![LivenessAction::GraceGranted { late: secs(5.5) }]
        );
    }

    #[test]
    fn a_beat_marks_a_disconnected_instance_connected() {
        let mut record = ContainerInstance {
            agent_connected: false,
            ..ContainerInstance::default()
        };
        assert_eq!(
            plan_beat("default", "i-1", Some(&record), None),
            Some(LivenessAction::MarkConnected {
                cluster: "default".into(),
                instance_id: "i-1".into(),
                impaired: None,
            })
        );
        record.status = InstanceStatus::Inactive;
        assert_eq!(plan_beat("default", "i-1", Some(&record), None), None);
        record.status = InstanceStatus::Active;
        record.agent_connected = true;
        assert_eq!(plan_beat("default", "i-1", Some(&record), None), None);
        assert_eq!(plan_beat("default", "i-1", None, None), None);
    }

    #[test]
    fn health_is_written_when_it_changes_only() {
        let mut record = ContainerInstance {
            agent_connected: true,
            ..ContainerInstance::default()
        };
        let impaired = Some(LivenessAction::MarkConnected {
            cluster: "default".into(),
            instance_id: "i-1".into(),
            impaired: Some("no consumer".into()),
        });
        assert_eq!(
            plan_beat("default", "i-1", Some(&record), Some("no consumer")),
            impaired
        );
        record.health_status = Some(InstanceHealthStatus::runtime(
            InstanceHealthStatus::IMPAIRED,
            1.0,
        ));
        assert_eq!(
            plan_beat("default", "i-1", Some(&record), Some("no consumer")),
            None
        );
        assert_eq!(
            plan_beat("default", "i-1", Some(&record), None),
            Some(LivenessAction::MarkConnected {
                cluster: "default".into(),
                instance_id: "i-1".into(),
                impaired: None,
            })
        );
        record.health_status = Some(InstanceHealthStatus::runtime(InstanceHealthStatus::OK, 2.0));
        assert_eq!(plan_beat("default", "i-1", Some(&record), None), None);
        record.status = InstanceStatus::Inactive;
        assert_eq!(plan_beat("default", "i-1", Some(&record), Some("x")), None);
    }
}

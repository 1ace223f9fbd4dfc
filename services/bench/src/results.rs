//! Everything one benchmark run measured, phase by phase (one nats-server with R1
//! streams, then a 3-node cluster with R3 streams).

use crate::ceiling::Ceiling;
use crate::criterion::Figure;
use crate::placement::PlacementRun;
use crate::reads::ReadRun;
use crate::runtime::StartRun;
use crate::seed::SeedReport;
use std::time::Duration;

/// The machine the run happened on.
#[derive(Debug, Clone, Default)]
pub struct Machine {
    pub cores: usize,
    pub memory_mib: u64,
    pub cpu_model: String,
    pub nats_version: String,
    /// 1-minute load average when the run started (other work on the machine).
    pub load_average: String,
}

/// A fresh replica catching up with the whole journal.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    pub seeded_tasks: usize,
    /// Tasks in the new replica's view (its "view ready" log line).
    pub tasks_in_view: Option<u64>,
    /// Journal messages at the time (what the view had to read, at most).
    pub journal_sequence: u64,
    /// From starting the process to the first read reflecting the whole journal.
    pub elapsed: Duration,
    /// Resident memory of the fresh replica right after, KiB.
    pub rss_kib: Option<u64>,
    /// Where the fresh replica spent its CPU while catching up (largest size only).
    pub profile: Option<crate::profile::Profile>,
}

/// The auditor's verdict.
#[derive(Debug, Clone, Default)]
pub struct AuditSummary {
    pub messages: u64,
    pub instances: usize,
    pub tasks: usize,
    pub violations: usize,
    pub first_violations: Vec<String>,
    pub elapsed: Duration,
}

/// One placement run with the cluster size it ran on.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    pub instances: usize,
    /// The requests' placement strategy, as written in the report (`None`: the default).
    pub strategy: Option<String>,
    pub run: PlacementRun,
}

/// One nats-server setup and what was measured on it.
#[derive(Debug, Clone, Default)]
pub struct Phase {
    pub label: String,
    pub replicas: usize,
    pub ceiling: Option<Ceiling>,
    /// The ceiling measured again right before the placement runs when they come long
    /// after the first (R1: after seeding, reads and recovery): the host's speed drifts
    /// within a run, so placement is compared with the server as it is then.
    pub placement_ceiling: Option<Ceiling>,
    pub placements: Vec<Placement>,
    pub seeding: Vec<(usize, SeedReport)>,
    pub reads: Vec<ReadRun>,
    pub recoveries: Vec<Recovery>,
    pub start: Option<StartRun>,
    /// Hollow hosts of real shape (R1).
    pub fleet: Option<crate::fleet::FleetRun>,
    /// ECS services (R1).
    pub services: Option<crate::services::ServicesRun>,
    pub audit: Option<AuditSummary>,
    /// Hollow instances the read cluster's sim runs.
    pub read_instances: usize,
    /// RunTask (count 10) per second during reads, churn joins per second.
    pub background_per_second: u32,
    pub churn_per_second: u32,
    /// What went wrong (a phase that could not finish).
    pub errors: Vec<String>,
}

/// The whole run.
#[derive(Debug, Clone, Default)]
pub struct Results {
    pub quick: bool,
    pub command: String,
    pub machine: Machine,
    pub phases: Vec<Phase>,
    pub criterion: Vec<Figure>,
    pub total: Duration,
}

impl Results {
    /// Whether the run is a failure: an error in any phase or a violation found.
    pub fn failed(&self) -> bool {
        self.phases
            .iter()
            .any(|p| !p.errors.is_empty() || p.audit.as_ref().is_none_or(|a| a.violations > 0))
    }
}

impl Phase {
    /// The ceiling placement figures are compared with.
    pub fn ceiling_for_placement(&self) -> Option<&Ceiling> {
        self.placement_ceiling.as_ref().or(self.ceiling.as_ref())
    }

    /// Memory per task from the fresh replicas: the slope between the smallest and the
    /// largest recovery (so fixed costs cancel out), in bytes per task.
    pub fn bytes_per_task(&self) -> Option<f64> {
        let points: Vec<(f64, f64)> = self
            .recoveries
            .iter()
            .filter_map(|r| Some((r.tasks_in_view? as f64, r.rss_kib? as f64 * 1024.0)))
            .collect();
        let (first, last) = (points.first()?, points.last()?);
        if last.0 - first.0 < 1.0 {
            return None;
        }
        Some((last.1 - first.1) / (last.0 - first.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_slope_between_recoveries() {
        let phase = Phase {
            recoveries: vec![
                Recovery {
                    tasks_in_view: Some(100_000),
                    rss_kib: Some(200_000),
                    ..Default::default()
                },
                Recovery {
                    tasks_in_view: Some(1_000_000),
                    rss_kib: Some(1_100_000),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let per_task = phase.bytes_per_task().expect("two points");
        assert!((per_task - 1024.0).abs() < 1e-6);
        assert_eq!(Phase::default().bytes_per_task(), None);
    }

    #[test]
    fn a_phase_without_audit_fails_the_run() {
        let mut results = Results {
            phases: vec![Phase::default()],
            ..Default::default()
        };
        assert!(results.failed());
        results.phases[0].audit = Some(AuditSummary::default());
        assert!(!results.failed());
        results.phases[0].errors.push("boom".into());
        assert!(results.failed());
    }
}

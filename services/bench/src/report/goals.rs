//! The goals table: each goal of the benchmark beside where this run stands.

use super::{percent, shared_peer, size};
use crate::results::{Phase, Placement, Results};
use crate::stats::{human, rate, thousands};
use std::fmt::Write as _;
use std::time::Duration;

enum Verdict {
    Met,
    Short,
    Unmeasured,
}

impl Verdict {
    fn of(met: Option<bool>) -> Self {
        match met {
            Some(true) => Self::Met,
            Some(false) => Self::Short,
            None => Self::Unmeasured,
        }
    }
    fn as_str(&self) -> &'static str {
        match self {
            Self::Met => "met",
            Self::Short => "short",
            Self::Unmeasured => "not measured",
        }
    }
}

pub(super) fn goals(out: &mut String, results: &Results) {
    let _ = writeln!(out, "\n### Goals\n");
    let _ = writeln!(out, "| figure | goal | this run | status |");
    let _ = writeln!(out, "|---|---|---|---|");
    let r1 = results.phases.iter().find(|p| p.replicas == 1);
    let r3 = results.phases.iter().find(|p| p.replicas == 3);
    let mut row = |figure: &str, goal: &str, measured: String, met: Option<bool>| {
        let _ = writeln!(
            out,
            "| {figure} | {goal} | {measured} | {} |",
            Verdict::of(met).as_str()
        );
    };

    let largest = |phase: Option<&Phase>| -> Option<(Placement, f64)> {
        let phase = phase?;
        let ceiling = phase.ceiling_for_placement()?.pipelined_rate;
        phase
            .placements
            .iter()
            .filter(|p| p.strategy.is_none())
            .max_by_key(|p| p.instances)
            .map(|p| (p.clone(), ceiling))
    };
    match largest(r1) {
        Some((p, ceiling)) => row(
            &format!("placement throughput, R1, {} instances", size(p.instances)),
            ">= 20,000 tasks/s and >= 15% of the ceiling",
            format!("{} = {}", rate(p.run.rate), percent(p.run.rate, ceiling)),
            Some(p.run.rate >= 20_000.0 && p.run.rate >= 0.15 * ceiling),
        ),
        None => row(
            "placement throughput, R1",
            ">= 20,000 tasks/s and >= 15% of the ceiling",
            "—".into(),
            None,
        ),
    }
    match largest(r3) {
        Some((p, ceiling)) => row(
            &format!("placement throughput, R3, {} instances", size(p.instances)),
            ">= 10,000 tasks/s",
            format!("{} = {}", rate(p.run.rate), percent(p.run.rate, ceiling)),
            Some(p.run.rate >= 10_000.0),
        ),
        None => row(
            "placement throughput, R3",
            ">= 10,000 tasks/s",
            "—".into(),
            None,
        ),
    }
    match r1.and_then(|p| Some((p.reads.first()?, p.reads.last()?))) {
        Some((first, last)) => {
            let flat = last.describe_tasks.p99.as_secs_f64()
                / first.describe_tasks.p99.as_secs_f64().max(1e-9);
            row(
                &format!(
                    "DescribeTasks p99, {} tasks, under churn",
                    size(last.seeded_tasks)
                ),
                "<= 2 ms, and <= 1.5x the p99 at 1,000 tasks",
                format!(
                    "{} ({flat:.2}x the p99 at {})",
                    human(last.describe_tasks.p99),
                    size(first.seeded_tasks)
                ),
                Some(last.describe_tasks.p99 <= Duration::from_millis(2) && flat <= 1.5),
            );
        }
        None => row(
            "DescribeTasks p99 under churn",
            "<= 2 ms, and <= 1.5x the p99 at 1,000 tasks",
            "—".into(),
            None,
        ),
    }
    match r1.and_then(|p| p.recoveries.last()) {
        Some(r) => row(
            &format!("recovery at {} tasks", size(r.seeded_tasks)),
            "<= 10 s (at 1,000,000 tasks)",
            human(r.elapsed),
            Some(r.elapsed <= Duration::from_secs(10)),
        ),
        None => row("recovery at 1,000,000 tasks", "<= 10 s", "—".into(), None),
    }
    match r1.and_then(Phase::bytes_per_task) {
        Some(bytes) => row(
            "memory",
            "<= 1 KiB per task in the view",
            format!("{bytes:.0} bytes per task"),
            Some(bytes <= 1024.0),
        ),
        None => row("memory", "<= 1 KiB per task in the view", "—".into(), None),
    }
    match r1.and_then(|p| p.start.as_ref()) {
        Some(s) => row(
            "task start, process runtime",
            "p99 <= 100 ms",
            format!("p99 {} over {} tasks", human(s.latency.p99), s.observed),
            Some(s.observed > 0 && s.latency.p99 <= Duration::from_millis(100)),
        ),
        None => row(
            "task start, process runtime",
            "p99 <= 100 ms",
            "—".into(),
            None,
        ),
    }
    fleet_goals(&mut row, r1);
    super::services::goals(&mut row, r1);
    let decisions: Vec<(String, Duration)> = results
        .criterion
        .iter()
        .filter(|f| f.name.contains("instances"))
        .map(|f| (f.name.clone(), per_decision(&f.name, f.per_iteration)))
        .collect();
    if decisions.is_empty() {
        row(
            "one placement decision over 10,000 instances",
            "<= 50 us",
            "—".into(),
            None,
        );
    }
    for (name, per_decision) in decisions {
        row(
            &format!("one placement decision: `{name}`"),
            "<= 50 us",
            format!("{} per task", human(per_decision)),
            Some(per_decision <= Duration::from_micros(50)),
        );
    }
}

fn fleet_goals(row: &mut impl FnMut(&str, &str, String, Option<bool>), r1: Option<&Phase>) {
    let fleet = r1.and_then(|p| Some((p, p.fleet.as_ref()?)));
    let placement =
        fleet.and_then(|(phase, f)| Some((f, f.placement.as_ref()?, shared_peer(phase, f.hosts)?)));
    match placement {
        Some((f, run, peer)) => row(
            &format!(
                "placement throughput on {} agents of real shape",
                size(f.hosts)
            ),
            ">= 80% of shared-consumer hosts, same run",
            format!(
                "{} = {} of {}",
                rate(run.rate),
                percent(run.rate, peer.run.rate),
                rate(peer.run.rate)
            ),
            Some(run.rate >= 0.8 * peer.run.rate),
        ),
        None => row(
            "placement throughput on agents of real shape",
            ">= 80% of shared-consumer hosts, same run",
            "—".into(),
            None,
        ),
    }
    match fleet.and_then(|(_, f)| Some((f, f.storm.as_ref()?))) {
        Some((f, storm)) => row(
            &format!("reconnect storm, {} agents", size(f.hosts)),
            "every agent resynced within 30 s",
            format!(
                "{} of {} within 30 s; p99 {}, max {}",
                thousands(storm.within_goal as u64),
                thousands(storm.hosts as u64),
                human(storm.resync.p99),
                human(storm.resync.max)
            ),
            Some(storm.hosts > 0 && storm.within_goal == storm.hosts),
        ),
        None => row(
            "reconnect storm",
            "every agent resynced within 30 s",
            "—".into(),
            None,
        ),
    }
    let starts = fleet.and_then(|(_, f)| Some((f, f.start.as_ref()?, f.start_small.as_ref()?)));
    match starts {
        Some((f, large, small)) => {
            let ratio = large.latency.p99.as_secs_f64() / small.latency.p99.as_secs_f64().max(1e-9);
            row(
                &format!(
                    "placement to RUNNING at {} agents of real shape",
                    size(f.hosts)
                ),
                &format!("p99 <= 2x the p99 at {} agents", size(f.small_hosts)),
                format!(
                    "p99 {} = {ratio:.2}x {}",
                    human(large.latency.p99),
                    human(small.latency.p99)
                ),
                Some(large.observed > 0 && small.observed > 0 && ratio <= 2.0),
            );
        }
        None => row(
            "placement to RUNNING at 10k agents of real shape",
            "p99 <= 2x the p99 at 100 agents",
            "—".into(),
            None,
        ),
    }
}

/// Time per task of a criterion figure: benchmarks named "... batch of N tasks" place N
/// tasks per iteration.
pub(super) fn per_decision(name: &str, per_iteration: Duration) -> Duration {
    let batch = name
        .split("batch of ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.replace(',', "").parse::<u32>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(1);
    per_iteration / batch
}

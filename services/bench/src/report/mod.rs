//! The printed report: one markdown table of every figure beside the journal ceiling
//! measured in the same run (and their ratio), where the time goes in each placement run,
//! and the goals with where the run stands.

use crate::ceiling::Ceiling;
use crate::results::{Phase, Placement, Results};
use crate::stats::{human, rate, thousands};
use std::fmt::Write as _;
use std::time::Duration;

mod goals;
mod services;
use goals::goals;

fn percent(value: f64, of: f64) -> String {
    if of > 0.0 {
        format!("{:.1}%", value * 100.0 / of)
    } else {
        "—".into()
    }
}

fn times(value: Duration, of: Duration) -> String {
    if of.is_zero() {
        "—".into()
    } else {
        format!("{:.1}×", value.as_secs_f64() / of.as_secs_f64())
    }
}

fn size(n: usize) -> String {
    match n {
        n if n >= 1_000_000 && n.is_multiple_of(1_000_000) => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n.is_multiple_of(1_000) => format!("{}k", n / 1_000),
        n => thousands(n as u64),
    }
}

struct Table {
    out: String,
}

impl Table {
    fn new() -> Self {
        let mut out = String::new();
        out.push_str("| phase | figure | value | journal ceiling (same run) | ratio |\n");
        out.push_str("|---|---|---|---|---|\n");
        Self { out }
    }
    fn row(&mut self, phase: &str, figure: &str, value: String, ceiling: String, ratio: String) {
        let _ = writeln!(
            self.out,
            "| {phase} | {figure} | {value} | {ceiling} | {ratio} |"
        );
    }
}

/// The whole report as markdown.
pub fn render(results: &Results) -> String {
    let mut out = String::new();
    let m = &results.machine;
    let _ = writeln!(
        out,
        "## Berth benchmark ({})\n",
        if results.quick {
            "quick sizes"
        } else {
            "full sizes"
        }
    );
    let _ = writeln!(out, "- command: `{}`", results.command);
    let _ = writeln!(
        out,
        "- machine: {} cores ({}), {} MiB memory, {}, load average at start {}",
        m.cores,
        m.cpu_model,
        thousands(m.memory_mib),
        m.nats_version,
        m.load_average
    );
    let _ = writeln!(out, "- wall time: {}\n", human(results.total));

    let mut table = Table::new();
    for phase in &results.phases {
        phase_rows(&mut table, phase);
    }
    for figure in &results.criterion {
        table.row(
            "library",
            &format!("placement library: `{}` (criterion)", figure.name),
            human(figure.per_iteration),
            "—".into(),
            "—".into(),
        );
    }
    out.push_str(&table.out);

    for phase in &results.phases {
        for placement in &phase.placements {
            where_time_goes(&mut out, phase, placement);
        }
    }
    for phase in &results.phases {
        for read in &phase.reads {
            reads_cpu(&mut out, phase, read);
        }
        for recovery in &phase.recoveries {
            if let Some(profile) = &recovery.profile {
                let _ = writeln!(
                    out,
                    "\n### Recovery at {} tasks ({}): {} to replay {} journal messages\n",
                    size(recovery.seeded_tasks),
                    phase.label,
                    human(recovery.elapsed),
                    thousands(recovery.journal_sequence)
                );
                profile_lines(&mut out, profile);
            }
        }
    }
    goals(&mut out, results);
    for phase in &results.phases {
        if let Some(audit) = &phase.audit {
            let _ = writeln!(
                out,
                "\nAudit {}: {} journal messages, {} instances, {} tasks replayed in {}: {} violation(s).",
                phase.label,
                thousands(audit.messages),
                thousands(audit.instances as u64),
                thousands(audit.tasks as u64),
                human(audit.elapsed),
                audit.violations
            );
            for v in &audit.first_violations {
                let _ = writeln!(out, "  - {v}");
            }
        }
        for e in &phase.errors {
            let _ = writeln!(out, "\n**{} failed:** {e}", phase.label);
        }
    }
    out
}

fn phase_rows(t: &mut Table, phase: &Phase) {
    let p = phase.label.as_str();
    let Some(c) = &phase.ceiling else {
        t.row(
            p,
            "journal ceiling",
            "not measured".into(),
            "—".into(),
            "—".into(),
        );
        return;
    };
    let pipelined = rate(c.pipelined_rate);
    let serial_p99 = c.serial.p99;
    t.row(
        p,
        "journal ceiling: pipelined conditional writes (10,000 subjects, 200 B)",
        format!(
            "{} ({} writes in {})",
            pipelined,
            thousands(c.pipelined_writes as u64),
            human(c.pipelined_elapsed)
        ),
        pipelined.clone(),
        "100%".into(),
    );
    t.row(
        p,
        "journal ceiling: one conditional write waited for, p50 / p99",
        format!("{} / {}", human(c.serial.p50), human(c.serial.p99)),
        format!("{} serially", rate(c.serial_rate)),
        "1×".into(),
    );
    if let Some(again) = &phase.placement_ceiling {
        let value = rate(again.pipelined_rate);
        t.row(
            p,
            "journal ceiling measured again right before the placement runs (their reference)",
            format!(
                "{} ({} writes in {}); one write waited for p50 {} / p99 {}",
                value,
                thousands(again.pipelined_writes as u64),
                human(again.pipelined_elapsed),
                human(again.serial.p50),
                human(again.serial.p99)
            ),
            value,
            percent(again.pipelined_rate, c.pipelined_rate) + " of the first",
        );
    }
    let placement_ceiling = phase.ceiling_for_placement().unwrap_or(c);
    for placement in &phase.placements {
        placement_rows(t, p, placement_ceiling, placement);
    }
    for (tasks, seed) in &phase.seeding {
        t.row(
            p,
            &format!(
                "seeding to {} tasks (pipelined conditional writes)",
                size(*tasks)
            ),
            format!(
                "{} tasks + {} instances in {}",
                thousands(seed.tasks_written as u64),
                thousands(seed.instances_written as u64),
                human(seed.elapsed)
            ),
            pipelined.clone(),
            percent(
                crate::stats::per_second(
                    (seed.tasks_written + seed.instances_written) as u64,
                    seed.elapsed,
                ),
                c.pipelined_rate,
            ),
        );
    }
    for read in &phase.reads {
        let s = size(read.seeded_tasks);
        let dt = read.describe_tasks;
        let dci = read.describe_instances;
        t.row(
            p,
            &format!("DescribeTasks (10 tasks) at {s} tasks, p50 / p99 / p99.9"),
            format!("{} / {} / {}", human(dt.p50), human(dt.p99), human(dt.p999)),
            format!("p99 {}", human(serial_p99)),
            times(dt.p99, serial_p99),
        );
        t.row(
            p,
            &format!("DescribeContainerInstances (10) at {s} tasks, p50 / p99 / p99.9"),
            format!(
                "{} / {} / {}",
                human(dci.p50),
                human(dci.p99),
                human(dci.p999)
            ),
            format!("p99 {}", human(serial_p99)),
            times(dci.p99, serial_p99),
        );
        t.row(
            p,
            &format!("  churn during reads at {s}"),
            format!(
                "{:.1} joins/s, {:.1} leaves/s (target {}/s), {} background tasks placed ({:.1} RunTask/s achieved of {} on {} hollow instances), {} samples per read kind in {}, {} errors",
                read.joins_per_second(),
                read.leaves_per_second(),
                phase.churn_per_second,
                thousands(read.background_tasks),
                crate::stats::per_second(read.background_tasks, read.elapsed) / crate::placement::COUNT as f64,
                phase.background_per_second,
                thousands(phase.read_instances as u64),
                thousands(dt.count as u64),
                human(read.elapsed),
                read.read_errors + read.churn_errors + read.background_errors
            ),
            "—".into(),
            "—".into(),
        );
    }
    if let (Some(first), Some(last)) = (phase.reads.first(), phase.reads.last()) {
        if phase.reads.len() > 1 && !first.describe_tasks.p99.is_zero() {
            t.row(
                p,
                &format!(
                    "DescribeTasks flatness: p99 at {} / p99 at {}",
                    size(last.seeded_tasks),
                    size(first.seeded_tasks)
                ),
                format!(
                    "{:.2}",
                    last.describe_tasks.p99.as_secs_f64() / first.describe_tasks.p99.as_secs_f64()
                ),
                "—".into(),
                "—".into(),
            );
        }
    }
    for r in &phase.recoveries {
        let replay = crate::stats::per_second(r.journal_sequence, r.elapsed);
        t.row(
            p,
            &format!(
                "recovery: fresh berth-control serving reads at {} tasks",
                size(r.seeded_tasks)
            ),
            format!(
                "{} ({} tasks in view, {} journal messages)",
                human(r.elapsed),
                r.tasks_in_view.map_or("?".into(), thousands),
                thousands(r.journal_sequence)
            ),
            pipelined.clone(),
            format!(
                "replay {} = {}",
                rate(replay),
                percent(replay, c.pipelined_rate)
            ),
        );
        if let (Some(rss), Some(tasks)) = (r.rss_kib, r.tasks_in_view) {
            t.row(
                p,
                &format!(
                    "memory: berth-control RSS after recovery at {}",
                    size(r.seeded_tasks)
                ),
                format!(
                    "{} MiB ({} bytes per task in view, fixed costs included)",
                    thousands(rss / 1024),
                    thousands((rss * 1024).checked_div(tasks).unwrap_or(0))
                ),
                "—".into(),
                "—".into(),
            );
        }
    }
    if let Some(per_task) = phase.bytes_per_task() {
        t.row(
            p,
            "memory: berth-control RSS per 100,000 tasks in view (slope between recoveries)",
            format!(
                "{:.1} MiB ({:.0} bytes per task)",
                per_task * 100_000.0 / 1_048_576.0,
                per_task
            ),
            "—".into(),
            "—".into(),
        );
    }
    if let Some(s) = &phase.start {
        t.row(
            p,
            "task start, process runtime: RunTask to RUNNING in the journal, p50 / p99",
            format!(
                "{} / {} ({} of {} seen RUNNING, {} stopped without RUNNING, {} STOPPED by the end, {} errors{}, {} in all)",
                human(s.latency.p50),
                human(s.latency.p99),
                s.observed,
                s.requested,
                s.never_running,
                s.stopped,
                s.errors,
                s.first_error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default(),
                human(s.elapsed)
            ),
            format!("p99 {}", human(serial_p99)),
            times(s.latency.p99, serial_p99),
        );
    }
    if let Some(s) = &phase.services {
        services::rows(t, p, phase, s, serial_p99);
    }
    if let Some(f) = &phase.fleet {
        fleet_rows(t, p, phase, f);
    }
}

/// The shared-consumer placement run the fleet's is compared with: the default
/// strategy on as many instances.
fn shared_peer(phase: &Phase, hosts: usize) -> Option<&Placement> {
    phase
        .placements
        .iter()
        .find(|pl| pl.strategy.is_none() && pl.instances == hosts)
}

fn fleet_rows(t: &mut Table, p: &str, phase: &Phase, f: &crate::fleet::FleetRun) {
    let n = size(f.hosts);
    t.row(
        p,
        &format!("fleet of real shape: {n} agents registered and following their tasks"),
        format!(
            "{} ({} consumers on BERTH_STATE)",
            human(f.registration),
            thousands(f.consumers as u64)
        ),
        "—".into(),
        "—".into(),
    );
    if let Some(idle) = &f.idle {
        let cores =
            |share: Option<f64>| share.map_or("—".into(), |s| format!("{:.1}%", s * 100.0));
        t.row(
            p,
            &format!("  at rest, {n} agents: nats-server RSS / CPU (of one core)"),
            format!(
                "{} MiB / {} ({} connections); the agents' process {} MiB / {}",
                idle.nats_rss_kib
                    .map_or("—".into(), |k| thousands(k / 1024)),
                cores(idle.nats_cpu_share()),
                idle.connections.map_or("—".into(), thousands),
                idle.fleet_rss_kib
                    .map_or("—".into(), |k| thousands(k / 1024)),
                cores(idle.fleet_cpu_share()),
            ),
            "—".into(),
            "—".into(),
        );
        if let Some(per_host) = idle.messages_per_host_second(f.hosts) {
            t.row(
                p,
                "  at rest: messages through nats-server per agent (heartbeats and their deliveries)",
                format!(
                    "{per_host:.2}/s per agent ({} for the fleet)",
                    rate(per_host * f.hosts as f64)
                ),
                "—".into(),
                "—".into(),
            );
        }
    }
    if let Some(run) = &f.placement {
        let peer = shared_peer(phase, f.hosts);
        t.row(
            p,
            &format!("  placement throughput on {n} agents of real shape (RunTask count 10, {} in flight)", run.concurrency),
            format!("{} ({} tasks in {})", rate(run.rate), thousands(run.placed), human(run.elapsed)),
            peer.map_or("—".into(), |pl| format!("{} shared-consumer hosts", rate(pl.run.rate))),
            peer.map_or("—".into(), |pl| percent(run.rate, pl.run.rate)),
        );
        t.row(
            p,
            "  CPU per 1,000 tasks placed, agents of real shape (shared-consumer hosts beside)",
            cpu_per_1000(run),
            peer.map_or("—".into(), |pl| cpu_per_1000(&pl.run)),
            "—".into(),
        );
    }
    for (hosts, start) in [(f.small_hosts, &f.start_small), (f.hosts, &f.start)] {
        if let Some(s) = start {
            t.row(
                p,
                &format!(
                    "  task start on {} agents of real shape: RunTask to RUNNING, p50 / p99",
                    size(hosts)
                ),
                format!(
                    "{} / {} ({} of {} seen RUNNING, {} errors)",
                    human(s.latency.p50),
                    human(s.latency.p99),
                    s.observed,
                    s.requested,
                    s.errors
                ),
                "—".into(),
                "—".into(),
            );
        }
    }
    if let Some(storm) = &f.storm {
        t.row(
            p,
            &format!("  reconnect storm: nats-server restarted under {n} agents, resync per agent from the kill, p50 / p99 / max"),
            format!(
                "{} / {} / {} ({} of {} resynced, {} within {}; server back after {})",
                human(storm.resync.p50),
                human(storm.resync.p99),
                human(storm.resync.max),
                thousands(storm.resynced as u64),
                thousands(storm.hosts as u64),
                thousands(storm.within_goal as u64),
                human(crate::fleet::RESYNC_GOAL),
                human(storm.restart)
            ),
            "—".into(),
            "—".into(),
        );
        t.row(
            p,
            "  reconnect storm: API (DescribeClusters) during the resync, p50 / p99",
            format!(
                "{} / {} ({} calls, {} failed)",
                human(storm.api.p50),
                human(storm.api.p99),
                storm.api_calls,
                storm.api_errors
            ),
            "—".into(),
            "—".into(),
        );
    }
}

/// "10k" or "10k, binpack(memory)": which placement run a row is about.
fn placement_name(placement: &Placement) -> String {
    match &placement.strategy {
        Some(strategy) => format!("{}, {strategy}", size(placement.instances)),
        None => size(placement.instances),
    }
}

/// "10k instances" or "10k instances, binpack(memory)".
fn placement_title(placement: &Placement) -> String {
    match &placement.strategy {
        Some(strategy) => format!("{} instances, {strategy}", size(placement.instances)),
        None => format!("{} instances", size(placement.instances)),
    }
}

fn placement_rows(t: &mut Table, p: &str, c: &Ceiling, placement: &Placement) {
    let run = &placement.run;
    let n = placement_name(placement);
    t.row(
        p,
        &format!(
            "placement throughput on {} hollow instances (RunTask count 10, {} in flight{})",
            size(placement.instances),
            run.concurrency,
            placement
                .strategy
                .as_ref()
                .map(|s| format!(", {s}"))
                .unwrap_or_default()
        ),
        format!(
            "{} ({} tasks in {})",
            rate(run.rate),
            thousands(run.placed),
            human(run.elapsed)
        ),
        rate(c.pipelined_rate),
        percent(run.rate, c.pipelined_rate),
    );
    t.row(
        p,
        &format!("  conflicts per 1,000 placements on {n}"),
        format!(
            "{:.2} ({} conflicts, {} retries, {} group commits for {} placements)",
            run.conflicts_per_1000(),
            run.stats.conflicts,
            run.stats.retries,
            thousands(run.stats.group_commits),
            thousands(run.stats.placements)
        ),
        "—".into(),
        "—".into(),
    );
    t.row(
        p,
        &format!("  RunTask round trip on {n}, p50 / p99"),
        format!("{} / {}", human(run.latency.p50), human(run.latency.p99)),
        format!("p99 {}", human(c.serial.p99)),
        times(run.latency.p99, c.serial.p99),
    );
    if run.failures + run.errors > 0 {
        t.row(
            p,
            &format!("  unplaced on {n}"),
            format!(
                "{} failures, {} errors{}",
                run.failures,
                run.errors,
                run.first_error
                    .as_deref()
                    .map(|e| format!(" (first: {e})"))
                    .unwrap_or_default()
            ),
            "—".into(),
            "—".into(),
        );
    }
}

fn where_time_goes(out: &mut String, phase: &Phase, placement: &Placement) {
    let run = &placement.run;
    let _ = writeln!(
        out,
        "\n### Where the time goes: placement on {} ({})\n",
        placement_title(placement),
        phase.label
    );
    let ceiling = phase
        .ceiling_for_placement()
        .map_or(0.0, |c| c.pipelined_rate);
    let per_task = run.writes_per_task();
    let _ = writeln!(
        out,
        "- journal traffic per task placed: {:.2} messages ({:.2} BERTH_STATE writes, {:.3} commands, {:.3} outcomes); \
         at the measured ceiling that bounds placement at {} if the journal were the only limit",
        per_task,
        run.state_writes as f64 / run.placed.max(1) as f64,
        run.commands as f64 / run.placed.max(1) as f64,
        run.outcomes as f64 / run.placed.max(1) as f64,
        if per_task > 0.0 { rate(ceiling / per_task) } else { "—".into() }
    );
    let _ = writeln!(
        out,
        "- instance writes: {} group commits for {} placements ({:.2} placements per instance write)",
        thousands(run.stats.group_commits),
        thousands(run.stats.placements),
        run.stats.placements as f64 / run.stats.group_commits.max(1) as f64
    );
    if let Some(traffic) = &run.traffic {
        let placed = run.placed.max(1) as f64;
        let _ = writeln!(
            out,
            "- nats-server traffic per task placed (`/varz`, all nodes): {:.2} messages in and {:.2} out, \
             {:.1} KB in and {:.1} KB out",
            traffic.in_msgs as f64 / placed,
            traffic.out_msgs as f64 / placed,
            traffic.in_bytes as f64 / placed / 1000.0,
            traffic.out_bytes as f64 / placed / 1000.0
        );
    }
    if let Some(stages) = &run.stages {
        let stage =
            |p: &crate::stats::Percentiles| format!("p50 {} / p99 {}", human(p.p50), human(p.p99));
        let _ = writeln!(
            out,
            "- RunTask stages ({} sampled requests, from journal timestamps): sent → first task placed \
             (API, command stream, consumer, outcome check, placement, instance write durable) {}; \
             first placed → last task record durable {}; → outcome built {}; → reply at the client \
             (outcome write, reply, API waits for its view) {}",
            stages.samples,
            stage(&stages.to_first_placed),
            stage(&stages.task_writes),
            stage(&stages.to_outcome),
            stage(&stages.to_reply)
        );
    }
    let _ = writeln!(
        out,
        "- CPU during the run (of {} cores): {}; CPU per 1,000 tasks placed: {}",
        num_cores(),
        cpu_split(&run.cpu),
        cpu_per_1000(run)
    );
    match &run.profile {
        Some(profile) => profile_lines(out, profile),
        None => {
            let _ = writeln!(out, "- no perf profile (perf unavailable or disabled)");
        }
    }
}

/// CPU of each process per 1,000 tasks placed: "berth-control 40 ms, nats-server 30 ms".
fn cpu_per_1000(run: &crate::placement::PlacementRun) -> String {
    run.cpu
        .by_process
        .iter()
        .map(|(name, used)| {
            let ms = used.as_secs_f64() * 1_000_000.0 / run.placed.max(1) as f64;
            format!("{name} {ms:.0} ms")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn cpu_split(cpu: &crate::procfs::CpuUse) -> String {
    let elapsed = cpu.elapsed.as_secs_f64().max(1e-9);
    let mut parts: Vec<String> = cpu
        .by_process
        .iter()
        .map(|(name, used)| format!("{name} {:.2} cores", used.as_secs_f64() / elapsed))
        .collect();
    if let Some(others) = cpu.others() {
        parts.push(format!(
            "everything else on the machine {:.2} cores",
            others.as_secs_f64() / elapsed
        ));
    }
    parts.join(", ")
}

fn profile_lines(out: &mut String, profile: &crate::profile::Profile) {
    let areas: Vec<String> = profile
        .by_area
        .iter()
        .take(10)
        .map(|(a, p)| format!("{a} {p:.1}%"))
        .collect();
    let _ = writeln!(
        out,
        "- berth-control profile (perf, self time by crate): {}",
        areas.join(", ")
    );
    let _ = writeln!(out, "- hottest symbols:");
    for (symbol, p) in &profile.top {
        let short: String = symbol.chars().take(140).collect();
        let _ = writeln!(out, "  - {p:.1}% `{short}`");
    }
}

/// CPU during each read measurement, and the control plane's profile where taken.
fn reads_cpu(out: &mut String, phase: &Phase, read: &crate::reads::ReadRun) {
    if read.cpu.by_process.is_empty() && read.profile.is_none() {
        return;
    }
    let _ = writeln!(
        out,
        "\n### Reads at {} tasks ({}): {} requests in {}\n",
        size(read.seeded_tasks),
        phase.label,
        thousands(2 * read.describe_tasks.count as u64),
        human(read.elapsed)
    );
    let _ = writeln!(
        out,
        "- CPU (of {} cores): {}",
        num_cores(),
        cpu_split(&read.cpu)
    );
    if let Some(profile) = &read.profile {
        profile_lines(out, profile);
    }
}

fn num_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::goals::per_decision;
    use super::*;
    use crate::results::{AuditSummary, Recovery};
    use crate::stats::Percentiles;

    #[test]
    fn renders_every_section() {
        let ceiling = Ceiling {
            pipelined_rate: 100_000.0,
            serial: Percentiles {
                p50: Duration::from_micros(100),
                p99: Duration::from_micros(200),
                ..Default::default()
            },
            serial_rate: 9_000.0,
            ..Default::default()
        };
        let mut placement = crate::placement::PlacementRun {
            placed: 1_000,
            rate: 20_000.0,
            elapsed: Duration::from_millis(50),
            state_writes: 2_000,
            ..Default::default()
        };
        placement.stats.placements = 1_000;
        placement.stats.conflicts = 3;
        let results = Results {
            command: "scripts/bench".into(),
            phases: vec![Phase {
                label: "R1".into(),
                replicas: 1,
                ceiling: Some(ceiling),
                placements: vec![Placement {
                    instances: 10_000,
                    strategy: None,
                    run: placement,
                }],
                recoveries: vec![Recovery {
                    seeded_tasks: 1_000_000,
                    elapsed: Duration::from_secs(4),
                    ..Default::default()
                }],
                audit: Some(AuditSummary::default()),
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = render(&results);
        assert!(text.contains("| R1 | placement throughput on 10k hollow instances"));
        assert!(text.contains("20.0%"));
        assert!(text.contains("3.00 (3 conflicts"));
        assert!(
            text.contains("| recovery at 1M tasks | <= 10 s (at 1,000,000 tasks) | 4.00 s | met |")
        );
        assert!(text.contains("Where the time goes: placement on 10k instances"));
        assert!(text.contains("2.00 messages"));
    }

    #[test]
    fn a_fleet_is_judged_against_the_shared_run_of_its_size() {
        let shared = crate::placement::PlacementRun {
            placed: 1_000,
            rate: 20_000.0,
            ..Default::default()
        };
        let fleet_placement = crate::placement::PlacementRun {
            placed: 1_000,
            rate: 17_000.0,
            ..Default::default()
        };
        let start = |p99_ms: u64| crate::runtime::StartRun {
            observed: 300,
            latency: Percentiles {
                p99: Duration::from_millis(p99_ms),
                ..Default::default()
            },
            ..Default::default()
        };
        let results = Results {
            phases: vec![Phase {
                label: "R1".into(),
                replicas: 1,
                placements: vec![Placement {
                    instances: 10_000,
                    strategy: None,
                    run: shared,
                }],
                fleet: Some(crate::fleet::FleetRun {
                    hosts: 10_000,
                    placement: Some(fleet_placement),
                    start: Some(start(90)),
                    small_hosts: 100,
                    start_small: Some(start(60)),
                    storm: Some(crate::fleet::Storm {
                        hosts: 10_000,
                        resynced: 10_000,
                        within_goal: 9_999,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                audit: Some(AuditSummary::default()),
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = render(&results);
        assert!(text.contains("= 85.0% of 20,000/s | met |"), "{text}");
        assert!(text.contains("9,999 of 10,000 within 30 s"), "{text}");
        assert!(
            text.contains("every agent resynced within 30 s | 9,999"),
            "{text}"
        );
        assert_eq!(text.matches("| short |").count(), 1, "{text}");
        assert!(text.contains("= 1.50x 60.00 ms | met |"), "{text}");
    }

    #[test]
    fn batch_benchmarks_are_per_task() {
        let d = Duration::from_micros(1_000);
        assert_eq!(
            per_decision("place/spread, batch of 100 tasks", d),
            Duration::from_micros(10)
        );
        assert_eq!(per_decision("place/binpack, 1 task", d), d);
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(size(1_000_000), "1M");
        assert_eq!(size(10_000), "10k");
        assert_eq!(size(1_500), "1,500");
    }
}

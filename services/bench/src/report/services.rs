//! The rows and goals of the ECS services measurements.

use super::{percent, shared_peer, size, times, Table};
use crate::results::Phase;
use crate::services::ServicesRun;
use crate::stats::{human, rate};
use std::time::Duration;

fn per_second(tasks: usize, elapsed: Duration) -> f64 {
    tasks as f64 / elapsed.as_secs_f64().max(1e-9)
}

pub(super) fn rows(t: &mut Table, p: &str, phase: &Phase, s: &ServicesRun, serial_p99: Duration) {
    let peer = shared_peer(phase, s.hosts);
    if let Some(up) = s.scale_up {
        let r = per_second(s.tasks, up);
        t.row(
            p,
            &format!(
                "service scale-up: {} tasks on {} hollow hosts, CreateService to steady state",
                size(s.tasks),
                size(s.hosts)
            ),
            format!("{} = {}", human(up), rate(r)),
            peer.map_or("—".into(), |pl| {
                format!(
                    "RunTask placement on {} instances {}",
                    size(pl.instances),
                    rate(pl.run.rate)
                )
            }),
            peer.map_or("—".into(), |pl| percent(r, pl.run.rate)),
        );
    }
    if let (Some(rolling), Some(up)) = (s.rolling, s.scale_up) {
        t.row(
            p,
            "rolling deployment of that service (min 100%, max 200%) to COMPLETED",
            human(rolling),
            format!("scale-up {}", human(up)),
            times(rolling, up),
        );
    }
    if let Some(r) = &s.replacement_hollow {
        t.row(
            p,
            &format!(
                "replacement of a stopped service task, hollow hosts, p50 / p99 ({} kills)",
                r.count
            ),
            format!("{} / {}", human(r.p50), human(r.p99)),
            format!("p99 {}", human(serial_p99)),
            times(r.p99, serial_p99),
        );
    }
    if let Some(r) = &s.replacement_process {
        let start = phase.start.as_ref().map(|st| st.latency.p99);
        t.row(
            p,
            &format!(
                "replacement of a killed service process, real agent, p50 / p99 ({} kills)",
                r.count
            ),
            format!("{} / {}", human(r.p50), human(r.p99)),
            start.map_or("—".into(), |st| format!("task start p99 {}", human(st))),
            start.map_or("—".into(), |st| times(r.p99, st)),
        );
    }
    if let Some(share) = s.idle_core_share {
        t.row(
            p,
            &format!(
                "{} services of {} tasks at rest: berth-control CPU",
                size(s.idle_services),
                s.idle_tasks_each
            ),
            format!("{:.1}% of one core", share * 100.0),
            "—".into(),
            "—".into(),
        );
    }
    if let Some(elapsed) = s.concurrent_elapsed {
        t.row(
            p,
            &format!(
                "{} services deploying at once under 2 replicas, to steady state",
                s.concurrent_services
            ),
            human(elapsed),
            "—".into(),
            "—".into(),
        );
    }
}

pub(super) fn goals(row: &mut impl FnMut(&str, &str, String, Option<bool>), r1: Option<&Phase>) {
    let services = r1.and_then(|p| Some((p, p.services.as_ref()?)));
    let scale = services.and_then(|(phase, s)| {
        let up = s.scale_up?;
        Some((s, up, shared_peer(phase, s.hosts)?))
    });
    match scale {
        Some((s, up, peer)) => {
            let r = per_second(s.tasks, up);
            row(
                &format!("service scale-up, {} tasks", size(s.tasks)),
                ">= 50% of RunTask placement, same run",
                format!(
                    "{} = {} of {}",
                    rate(r),
                    percent(r, peer.run.rate),
                    rate(peer.run.rate)
                ),
                Some(r >= 0.5 * peer.run.rate),
            )
        }
        None => row(
            "service scale-up",
            ">= 50% of RunTask placement, same run",
            "—".into(),
            None,
        ),
    }
    match services.and_then(|(_, s)| Some((s.rolling?, s.scale_up?))) {
        Some((rolling, up)) => row(
            "rolling deployment to COMPLETED",
            "<= 3x the scale-up time, same run",
            format!("{} = {}", human(rolling), times(rolling, up)),
            Some(rolling <= up * 3),
        ),
        None => row(
            "rolling deployment to COMPLETED",
            "<= 3x the scale-up time, same run",
            "—".into(),
            None,
        ),
    }
    let hollow = services.and_then(|(_, s)| s.replacement_hollow);
    row(
        "service task replacement, hollow hosts",
        "p99 <= 200 ms",
        hollow.map_or("—".into(), |r| format!("p99 {}", human(r.p99))),
        hollow.map(|r| r.p99 <= Duration::from_millis(200)),
    );
    let process = services.and_then(|(_, s)| s.replacement_process);
    row(
        "service task replacement, real process agent",
        "p99 <= 1 s",
        process.map_or("—".into(), |r| format!("p99 {}", human(r.p99))),
        process.map(|r| r.p99 <= Duration::from_secs(1)),
    );
    let idle = services.and_then(|(_, s)| Some((s, s.idle_core_share?)));
    row(
        &idle.map_or("services at rest".into(), |(s, _)| {
            format!(
                "{} services of {} tasks at rest",
                size(s.idle_services),
                s.idle_tasks_each
            )
        }),
        "berth-control <= 5% of one core",
        idle.map_or("—".into(), |(_, share)| format!("{:.1}%", share * 100.0)),
        idle.map(|(_, share)| share <= 0.05),
    );
}

//! What the benchmark reads about processes from `/proc`: resident memory (`VmRSS`), CPU
//! time spent (user + system), the pid of a process by a word of its command line (the
//! nats-server processes that berth-testkit starts), and the machine's busy time, so the
//! report can say how much of the two cores other work took during a measurement.

use std::path::Path;
use std::time::Duration;

/// `USER_HZ`: the unit of the times in `/proc/<pid>/stat` and `/proc/stat`, fixed at 100
/// by the Linux ABI whatever the kernel's own tick rate.
const USER_HZ: f64 = 100.0;

/// Resident memory of a process in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_rss_kib(&status)
}

fn parse_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// User plus system CPU time a process has used so far.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_time(&stat)
}

fn parse_cpu_time(stat: &str) -> Option<Duration> {
    // The command name (field 2) may hold spaces: count fields after its closing paren.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime) of the whole line are 12 and 13 after the name.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_secs_f64((utime + stime) as f64 / USER_HZ))
}

/// Busy CPU time of the whole machine (all cores, everything but idle and iowait).
pub fn machine_busy() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_machine_busy(&stat)
}

fn parse_machine_busy(stat: &str) -> Option<Duration> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy: u64 = values
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .take(8)
        .map(|(_, v)| v)
        .sum();
    Some(Duration::from_secs_f64(busy as f64 / USER_HZ))
}

/// Pids of the processes whose command line has an argument equal to `argument`.
pub fn pids_with_argument(argument: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let wanted = argument.as_os_str().as_encoded_bytes();
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|cmdline| cmdline.split(|b| *b == 0).any(|arg| arg == wanted))
                .unwrap_or(false)
        })
        .collect()
}

/// Pids of the processes whose whole command line (arguments joined by spaces) is
/// `line`.
pub fn pids_with_command_line(line: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                let args: Vec<&[u8]> = cmdline
                    .split(|b| *b == 0)
                    .filter(|a| !a.is_empty())
                    .collect();
                args.join(&b' ') == line.as_bytes()
            })
        })
        .collect()
}

/// Total memory of the machine in MiB (`MemTotal` of `/proc/meminfo`).
pub fn memory_total_mib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse::<u64>().ok())
        .map(|kib| kib / 1024)
}

/// The CPU model name (`/proc/cpuinfo`).
pub fn cpu_model() -> Option<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map(|(_, model)| model.trim().to_string())
}

/// CPU time of a set of processes, sampled at the start of a measurement.
#[derive(Debug, Clone)]
pub struct CpuMeter {
    pids: Vec<(String, Vec<u32>)>,
    start: Vec<Duration>,
    machine_start: Option<Duration>,
    started: std::time::Instant,
}

/// CPU used during a measurement, by process group, plus the whole machine's.
#[derive(Debug, Clone, Default)]
pub struct CpuUse {
    pub elapsed: Duration,
    pub by_process: Vec<(String, Duration)>,
    pub machine: Option<Duration>,
}

impl CpuUse {
    pub fn ours(&self) -> Duration {
        self.by_process.iter().map(|(_, d)| *d).sum()
    }
    /// Machine CPU used by processes other than ours (other builds, other tests).
    pub fn others(&self) -> Option<Duration> {
        self.machine.map(|m| m.saturating_sub(self.ours()))
    }
}

impl CpuMeter {
    /// Starts measuring the named groups of pids.
    pub fn start(pids: Vec<(String, Vec<u32>)>) -> Self {
        let start = pids.iter().map(|(_, group)| group_cpu(group)).collect();
        Self {
            pids,
            start,
            machine_start: machine_busy(),
            started: std::time::Instant::now(),
        }
    }

    pub fn stop(&self) -> CpuUse {
        let by_process = self
            .pids
            .iter()
            .zip(&self.start)
            .map(|((name, group), start)| (name.clone(), group_cpu(group).saturating_sub(*start)))
            .collect();
        let machine = match (self.machine_start, machine_busy()) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        CpuUse {
            elapsed: self.started.elapsed(),
            by_process,
            machine,
        }
    }
}

fn group_cpu(pids: &[u32]) -> Duration {
    pids.iter().filter_map(|pid| cpu_time(*pid)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rss() {
        let status = "Name:\tberth-control\nVmPeak:\t  2000 kB\nVmRSS:\t  123456 kB\nThreads: 4\n";
        assert_eq!(parse_rss_kib(status), Some(123_456));
        assert_eq!(parse_rss_kib("Name: x\n"), None);
    }

    #[test]
    fn parses_cpu_time_with_spaces_in_the_name() {
        let stat = "42 (berth control) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 1 1 1";
        assert_eq!(parse_cpu_time(stat), Some(Duration::from_secs(3)));
    }

    #[test]
    fn parses_machine_busy() {
        let stat = "cpu  100 0 100 5000 300 0 0 0 0 0\ncpu0 50 0 50 2500 150 0 0 0 0 0\n";
        assert_eq!(parse_machine_busy(stat), Some(Duration::from_secs(2)));
    }

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        assert!(rss_kib(pid).is_some_and(|kib| kib > 0));
        assert!(cpu_time(pid).is_some());
        assert!(machine_busy().is_some());
        let exe = std::fs::read_link("/proc/self/exe").expect("own executable");
        let _ = pids_with_argument(&exe);
    }
}

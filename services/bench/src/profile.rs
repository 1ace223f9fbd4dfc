//! A CPU profile of one process during a measurement, with `perf` when the machine has it:
//! `perf record` at a low sampling rate (no call graphs, negligible overhead), then
//! `perf report` by symbol, summarised by crate (`tokio`, `async_nats`, `berth_journal`,
//! `rmp_serde`, libc, the kernel...) so the report can say where the time goes.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

/// Samples per second.
const FREQUENCY: &str = "499";
/// Symbols kept in the report.
pub const TOP_SYMBOLS: usize = 12;

/// A `perf record` in progress.
pub struct Recording {
    child: Child,
    output: PathBuf,
}

/// Where a process spent its CPU.
#[derive(Debug, Clone, Default)]
pub struct Profile {
    /// (crate or area, percent of samples), largest first.
    pub by_area: Vec<(String, f64)>,
    /// (symbol, percent of samples), largest first.
    pub top: Vec<(String, f64)>,
}

/// Starts `perf record` on `pid`; `None` when perf is missing or refuses.
pub fn start(pid: u32, output: &Path) -> Option<Recording> {
    let mut command = Command::new("perf");
    command.args(["record", "-F", FREQUENCY, "-p", &pid.to_string()]);
    // Call graphs for a closer look (`perf report -i <file>`); off by default: they cost
    // the profiled process noticeably. `fp` walks frame pointers (for a build with
    // `-C force-frame-pointers=yes`), anything else unwinds with DWARF.
    match std::env::var("BERTH_BENCH_CALL_GRAPH").as_deref() {
        Ok("fp") => {
            command.args(["--call-graph", "fp"]);
        }
        Ok(_) => {
            command.args(["--call-graph", "dwarf,8192"]);
        }
        Err(_) => {}
    }
    let child = command
        .arg("-o")
        .arg(output)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    Some(Recording {
        child,
        output: output.to_path_buf(),
    })
}

impl Recording {
    /// Stops recording and summarises the samples.
    pub async fn finish(mut self) -> Option<Profile> {
        let pid = self.child.id().and_then(|p| i32::try_from(p).ok())?;
        let _ = kill(Pid::from_raw(pid), Signal::SIGINT);
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(Ok(_)) => {}
            _ => {
                let _ = self.child.kill().await;
                return None;
            }
        }
        let report = Command::new("perf")
            .args([
                "report",
                "--no-children",
                "--stdio",
                "-q",
                "--sort",
                "dso,sym",
                "--percent-limit",
                "0.2",
                "-i",
            ])
            .arg(&self.output)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .await
            .ok()?;
        let profile = summarise(&String::from_utf8_lossy(&report.stdout));
        (!profile.top.is_empty()).then_some(profile)
    }
}

/// Parses `perf report --sort dso,sym -q` lines: `  12.34%  dso  [.] symbol`.
fn summarise(report: &str) -> Profile {
    let mut areas: BTreeMap<String, f64> = BTreeMap::new();
    let mut top = Vec::new();
    for line in report.lines() {
        let line = line.trim();
        let Some((percent, rest)) = line.split_once('%') else {
            continue;
        };
        let Ok(percent) = percent.trim().parse::<f64>() else {
            continue;
        };
        let mut parts = rest.trim().splitn(2, ' ');
        let dso = parts.next().unwrap_or_default().trim();
        let rest = parts.next().unwrap_or_default().trim();
        let (kernel, symbol) = if let Some(s) = rest.strip_prefix("[k]") {
            (true, s.trim())
        } else if let Some(s) = rest.strip_prefix("[.]") {
            (false, s.trim())
        } else {
            (false, rest)
        };
        *areas.entry(area(kernel, dso, symbol)).or_default() += percent;
        top.push((symbol.to_string(), percent));
    }
    let mut by_area: Vec<(String, f64)> = areas.into_iter().collect();
    by_area.sort_by(|a, b| b.1.total_cmp(&a.1));
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    top.truncate(TOP_SYMBOLS);
    Profile { by_area, top }
}

/// The crate (or area) a symbol belongs to: the first path segment, two for Berth's own
/// crates (`berth_journal::view`), "kernel", or the shared library's name.
fn area(kernel: bool, dso: &str, symbol: &str) -> String {
    if kernel || dso.contains("kernel") {
        return "kernel".into();
    }
    if dso.starts_with("libc") || dso.starts_with("ld-linux") {
        return "libc (malloc, memcpy, ...)".into();
    }
    let path = symbol.trim_start_matches(['<', '&', '*', ' ']);
    let path = path.strip_prefix("dyn ").unwrap_or(path);
    let mut segments = path.split("::");
    let first = segments.next().unwrap_or_default();
    if !path.contains("::") {
        return if first.starts_with("0x") || first.is_empty() {
            format!("{dso} (no symbol)")
        } else {
            format!("{dso} (other)")
        };
    }
    if first.starts_with("berth_") {
        if let Some(second) = segments.next() {
            let second: String = second
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            return format!("{first}::{second}");
        }
    }
    first.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summarises_by_area() {
        let report = "\
    20.00%  berth-control  [.] tokio::runtime::scheduler::multi_thread::worker::Context::run
    10.00%  berth-control  [.] <berth_journal::view::View as core::fmt::Debug>::fmt
     5.00%  berth-control  [.] berth_journal::view::Inner::apply
     8.00%  [kernel.kallsyms]  [k] do_syscall_64
     7.00%  libc.so.6      [.] __memmove_avx_unaligned_erms
     1.00%  berth-control  [.] 0x0000000000001234
";
        let p = summarise(report);
        assert_eq!(
            p.top[0],
            (
                "tokio::runtime::scheduler::multi_thread::worker::Context::run".into(),
                20.0
            )
        );
        let area = |name: &str| p.by_area.iter().find(|(a, _)| a == name).map(|(_, v)| *v);
        assert_eq!(area("tokio"), Some(20.0));
        assert_eq!(area("berth_journal::view"), Some(15.0));
        assert_eq!(area("kernel"), Some(8.0));
        assert_eq!(area("libc (malloc, memcpy, ...)"), Some(7.0));
        assert_eq!(area("berth-control (no symbol)"), Some(1.0));
        assert_eq!(p.by_area[0].0, "tokio");
    }
}

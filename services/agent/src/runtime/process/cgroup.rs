//! Memory limits through cgroups, where the host offers them: a writable cgroup2 mount
//! whose root delegates the `memory` controller, else a writable cgroup v1 `memory`
//! hierarchy. Each container with a `memory` limit gets `<mount>/berth/<task-id>-<container>`
//! with its hard limit set (`memory.max` in v2, `memory.limit_in_bytes` in v1), and the
//! command joins it (`cgroup.procs`, the same in both) before it runs (see the shim). Whether
//! the kernel killed something in it for want of memory is read back from `oom_kill` in
//! `memory.events` (v2) or `memory.oom_control` (v1). Anything missing (no memory
//! controller, read-only mount, no permission) turns limits off, logged at debug level.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Cgroups {
    base: PathBuf,
    version: Version,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V2,
    V1,
}

impl Version {
    fn limit_file(self) -> &'static str {
        match self {
            Version::V2 => "memory.max",
            Version::V1 => "memory.limit_in_bytes",
        }
    }
    fn oom_file(self) -> &'static str {
        match self {
            Version::V2 => "memory.events",
            Version::V1 => "memory.oom_control",
        }
    }
}

/// Mount point of the cgroup2 file system in the text of /proc/self/mountinfo.
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let mount_point = left.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(unescape(mount_point)))
    })
}

/// Mount point of a cgroup v1 hierarchy with the `memory` controller in the text of
/// /proc/self/mountinfo.
pub fn cgroup_v1_memory_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut fields = right.split_whitespace();
        let fstype = fields.next()?;
        let options = fields.nth(1)?;
        let mount_point = left.split_whitespace().nth(4)?;
        (fstype == "cgroup" && options.split(',').any(|o| o == "memory"))
            .then(|| PathBuf::from(unescape(mount_point)))
    })
}

/// mountinfo escapes spaces and a few other bytes as `\ooo`.
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let oct = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(oct, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Cgroups {
    /// Memory limits on this host, or `None` (logged at debug level) when unavailable.
    pub fn detect() -> Option<Cgroups> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| tracing::debug!(error = %e, "no /proc/self/mountinfo: memory limits off"))
            .ok()?;
        if let Some(cgroups) = cgroup2_mount(&mountinfo).and_then(|m| Self::at(&m)) {
            return Some(cgroups);
        }
        let Some(mount) = cgroup_v1_memory_mount(&mountinfo) else {
            tracing::debug!(
                "neither a cgroup2 nor a cgroup v1 memory controller: memory limits off"
            );
            return None;
        };
        Self::at_v1(&mount)
    }

    /// Memory limits under a cgroup v1 `memory` hierarchy.
    pub fn at_v1(mount: &Path) -> Option<Cgroups> {
        if !mount.join(Version::V1.limit_file()).exists() {
            tracing::debug!(mount = %mount.display(), "not a cgroup v1 memory hierarchy: memory limits off");
            return None;
        }
        let base = mount.join("berth");
        match std::fs::create_dir_all(&base) {
            Ok(()) => Some(Cgroups {
                base,
                version: Version::V1,
            }),
            Err(e) => {
                tracing::debug!(mount = %mount.display(), error = %e, "cannot create cgroups: memory limits off");
                None
            }
        }
    }

    /// Memory limits under a cgroup2 mount point.
    pub fn at(mount: &Path) -> Option<Cgroups> {
        let controllers = std::fs::read_to_string(mount.join("cgroup.controllers")).ok()?;
        if !controllers.split_whitespace().any(|c| c == "memory") {
            tracing::debug!(mount = %mount.display(), "cgroup2 has no memory controller: memory limits off");
            return None;
        }
        let base = mount.join("berth");
        let prepared = enable_memory(mount)
            .and_then(|_| std::fs::create_dir_all(&base))
            .and_then(|_| enable_memory(&base));
        match prepared {
            Ok(()) => Some(Cgroups {
                base,
                version: Version::V2,
            }),
            Err(e) => {
                tracing::debug!(mount = %mount.display(), error = %e, "cannot delegate the memory controller: memory limits off");
                None
            }
        }
    }

    /// A cgroup limited to `memory_mib`, or `None` if it cannot be made.
    pub fn create(&self, name: &str, memory_mib: i64) -> Option<PathBuf> {
        let dir = self.base.join(name);
        let bytes = memory_mib.max(1).saturating_mul(1024 * 1024);
        let made = std::fs::create_dir_all(&dir)
            .and_then(|_| std::fs::write(dir.join(self.version.limit_file()), bytes.to_string()));
        match made {
            Ok(()) => Some(dir),
            Err(e) => {
                tracing::debug!(cgroup = %dir.display(), error = %e, "cannot create a memory-limited cgroup");
                None
            }
        }
    }

    /// Whether the kernel killed a process of this cgroup for want of memory.
    pub fn oom_killed(&self, name: &str) -> bool {
        let text = std::fs::read_to_string(self.base.join(name).join(self.version.oom_file()))
            .unwrap_or_default();
        oom_kills(&text) > 0
    }

    /// Removes a container's cgroup once it is empty (best effort).
    pub fn remove(&self, name: &str) {
        if let Err(e) = self.try_remove(name) {
            tracing::debug!(cgroup = %self.base.join(name).display(), error = %e, "cannot remove cgroup");
        }
    }

    /// Removes a container's cgroup; true once it is gone (it fails while processes
    /// remain in it).
    pub fn remove_now(&self, name: &str) -> bool {
        self.try_remove(name).is_ok()
    }

    fn try_remove(&self, name: &str) -> std::io::Result<()> {
        match std::fs::remove_dir(self.base.join(name)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
}

/// The `oom_kill` count of a `memory.events` or `memory.oom_control` file.
fn oom_kills(text: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

fn enable_memory(dir: &Path) -> std::io::Result<()> {
    let control = dir.join("cgroup.subtree_control");
    let current = std::fs::read_to_string(&control)?;
    if current.split_whitespace().any(|c| c == "memory") {
        return Ok(());
    }
    std::fs::write(control, "+memory")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount() {
        let text = "\
35 24 0:30 / /sys/fs/cgroup/memory rw,relatime shared:13 - cgroup cgroup rw,memory
40 24 0:35 / /sys/fs/cgroup/unified rw,relatime shared:18 - cgroup2 cgroup2 rw
";
        assert_eq!(
            cgroup2_mount(text),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(cgroup2_mount("1 2 0:1 / / rw - ext4 /dev/x rw"), None);
        let spaced = "1 2 0:1 / /mnt/a\\040b rw - cgroup2 none rw";
        assert_eq!(cgroup2_mount(spaced), Some(PathBuf::from("/mnt/a b")));
    }

    #[test]
    fn finds_the_v1_memory_hierarchy_and_reads_oom_kills() {
        let text = "\
34 24 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 24 0:30 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
";
        assert_eq!(
            cgroup_v1_memory_mount(text),
            Some(PathBuf::from("/sys/fs/cgroup/memory"))
        );
        assert_eq!(
            cgroup_v1_memory_mount("1 2 0:1 / / rw - ext4 /dev/x rw"),
            None
        );
        assert_eq!(
            oom_kills("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"),
            2
        );
        assert_eq!(oom_kills("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n"), 1);
        assert_eq!(oom_kills(""), 0);
    }

    #[test]
    fn v1_limits_are_written_in_bytes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("memory.limit_in_bytes"), "").unwrap();
        let cg = Cgroups::at_v1(dir.path()).expect("limits available");
        let path = cg.create("t-app", 16).unwrap();
        assert_eq!(
            std::fs::read_to_string(path.join("memory.limit_in_bytes")).unwrap(),
            (16 * 1024 * 1024).to_string()
        );
        std::fs::write(path.join("memory.oom_control"), "oom_kill 1\n").unwrap();
        assert!(cg.oom_killed("t-app"));
        assert!(!cg.oom_killed("other"));
        assert!(Cgroups::at_v1(&dir.path().join("nothing-here")).is_none());
    }

    #[test]
    fn a_mount_without_memory_controller_gives_no_limits() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cgroup.controllers"), "cpu pids\n").unwrap();
        assert!(Cgroups::at(dir.path()).is_none());
    }

    #[test]
    fn limits_are_written_in_bytes() {
        // A directory that looks like a cgroup2 root delegating memory.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cgroup.controllers"), "cpu memory\n").unwrap();
        std::fs::write(dir.path().join("cgroup.subtree_control"), "").unwrap();
        std::fs::create_dir_all(dir.path().join("berth")).unwrap();
        std::fs::write(dir.path().join("berth/cgroup.subtree_control"), "memory").unwrap();
        let cg = Cgroups::at(dir.path()).expect("limits available");
        let path = cg.create("t-app", 64).unwrap();
        assert_eq!(
            std::fs::read_to_string(path.join("memory.max")).unwrap(),
            (64 * 1024 * 1024).to_string()
        );
    }
}

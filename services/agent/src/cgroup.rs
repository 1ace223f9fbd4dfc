//! Memory limits through cgroup v2, where the host offers them: a writable cgroup2 mount
//! whose root delegates the `memory` controller. Each container with a `memory` limit
//! gets `<mount>/berth/<task-id>-<container>` with `memory.max` set, and its shim joins
//! it before starting the command. Anything missing (no cgroup2, memory bound to a v1
//! hierarchy, read-only mount, no permission) turns limits off, logged at debug level.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Cgroups {
    base: PathBuf,
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
        let Some(mount) = cgroup2_mount(&mountinfo) else {
            tracing::debug!("no cgroup2 mount: memory limits off");
            return None;
        };
        Self::at(&mount)
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
            Ok(()) => Some(Cgroups { base }),
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
            .and_then(|_| std::fs::write(dir.join("memory.max"), bytes.to_string()));
        match made {
            Ok(()) => Some(dir),
            Err(e) => {
                tracing::debug!(cgroup = %dir.display(), error = %e, "cannot create a memory-limited cgroup");
                None
            }
        }
    }

    /// Removes a container's cgroup once it is empty (best effort).
    pub fn remove(&self, name: &str) {
        let dir = self.base.join(name);
        if let Err(e) = std::fs::remove_dir(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::debug!(cgroup = %dir.display(), error = %e, "cannot remove cgroup");
            }
        }
    }
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

//! The agent's data directory: an exclusive lock (one agent per directory), the identity
//! (which container instance this host is, so a restarted agent comes back as the same
//! one) and the runtime's per-task directories.
//!
//! Layout:
//! ```text
//! agent.lock                      held (flock) for the agent's lifetime; holds its pid
//! identity.json                   {"cluster", "containerInstanceArn"}
//! tasks/                          the runtime's (see crate::runtime::process for its layout)
//! ```

use crate::error::AgentError;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// Which container instance this data directory belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    pub cluster: String,
    pub container_instance_arn: String,
}

/// An opened and locked data directory. The lock is released when this is dropped (or
/// the process dies); it is never inherited by the containers (close-on-exec).
#[derive(Debug)]
pub struct DataDir {
    root: PathBuf,
    /// None for a host of a `--sim` fleet, whose whole directory the fleet has locked.
    _lock: Option<File>,
}

impl DataDir {
    /// Creates the directory if needed and takes its lock. A second agent on the same
    /// directory gets [`AgentError::DataDirInUse`] and touches nothing.
    pub fn open(path: &Path) -> Result<DataDir, AgentError> {
        let fail = |reason: String| AgentError::DataDir {
            path: path.to_path_buf(),
            reason,
        };
        std::fs::create_dir_all(path).map_err(|e| fail(format!("cannot create it: {e}")))?;
        let root = path
            .canonicalize()
            .map_err(|e| fail(format!("cannot resolve it: {e}")))?;
        let lock_path = root.join("agent.lock");
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| fail(format!("cannot open {}: {e}", lock_path.display())))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = lock.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(AgentError::DataDirInUse {
                    path: root,
                    holder: (!holder.is_empty()).then(|| holder.to_string()),
                });
            }
            Err(TryLockError::Error(e)) => {
                return Err(fail(format!("cannot lock {}: {e}", lock_path.display())))
            }
        }
        let pid = std::process::id().to_string();
        let written = lock
            .set_len(0)
            .and_then(|_| lock.rewind())
            .and_then(|_| lock.write_all(pid.as_bytes()));
        if let Err(e) = written {
            tracing::debug!(error = %e, "cannot record the pid in the lock file");
        }
        std::fs::create_dir_all(root.join("tasks"))
            .map_err(|e| fail(format!("cannot create tasks/: {e}")))?;
        Ok(DataDir {
            root,
            _lock: Some(lock),
        })
    }

    /// A host's directory inside a fleet's, which the fleet has opened (and locked) with
    /// [`DataDir::open`]: thousands of hosts in one process must not hold a file each.
    pub fn open_in_fleet(fleet: &DataDir, host: &Path) -> Result<DataDir, AgentError> {
        let root = fleet.root.join(host);
        std::fs::create_dir_all(root.join("tasks")).map_err(|e| AgentError::DataDir {
            path: root.clone(),
            reason: format!("cannot create it: {e}"),
        })?;
        Ok(DataDir { root, _lock: None })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn tasks_dir(&self) -> PathBuf {
        self.root.join("tasks")
    }

    fn identity_path(&self) -> PathBuf {
        self.root.join("identity.json")
    }

    /// The identity kept by an earlier run, if any.
    pub fn identity(&self) -> Result<Option<Identity>, AgentError> {
        let path = self.identity_path();
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| AgentError::DataDir {
                        path: path.clone(),
                        reason: format!(
                        "is not a valid identity ({e}): remove it to register as a new instance"
                    ),
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(AgentError::DataDir {
                path,
                reason: e.to_string(),
            }),
        }
    }

    pub fn save_identity(&self, identity: &Identity) -> Result<(), AgentError> {
        let path = self.identity_path();
        let body = serde_json::to_vec_pretty(identity).map_err(|e| AgentError::DataDir {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_atomically(&path, &body).map_err(|e| AgentError::DataDir {
            path,
            reason: e.to_string(),
        })
    }
}

/// Writes a file so that readers see either the old or the whole new content.
pub fn write_atomically(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(body)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_open_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDir::open(dir.path()).unwrap();
        let e = DataDir::open(dir.path()).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, AgentError::DataDirInUse { .. }), "{text}");
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        drop(first);
        DataDir::open(dir.path()).unwrap();
    }

    #[test]
    fn a_fleet_s_hosts_share_its_lock() {
        let dir = tempfile::tempdir().unwrap();
        let fleet = DataDir::open(dir.path()).unwrap();
        let host = DataDir::open_in_fleet(&fleet, Path::new("host-7")).unwrap();
        assert!(host.root().ends_with("host-7"));
        assert!(host.tasks_dir().is_dir());
        assert!(!host.root().join("agent.lock").exists());
        assert!(matches!(
            DataDir::open(dir.path()).unwrap_err(),
            AgentError::DataDirInUse { .. }
        ));
    }

    #[test]
    fn identity_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let d = DataDir::open(dir.path()).unwrap();
        assert_eq!(d.identity().unwrap(), None);
        let id = Identity {
            cluster: "c".into(),
            container_instance_arn: "arn:aws:ecs:r:a:container-instance/c/i".into(),
        };
        d.save_identity(&id).unwrap();
        assert_eq!(d.identity().unwrap(), Some(id));
        std::fs::write(dir.path().join("identity.json"), b"nope").unwrap();
        assert!(d.identity().unwrap_err().to_string().contains("remove it"));
    }
}

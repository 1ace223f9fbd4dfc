//! Identities of hollow instances kept in the data directory, so that a restarted sim
//! re-registers as the same container instances (RegisterContainerInstance with their
//! `containerInstanceArn`) and plays on the tasks they hold. One file per cluster,
//! `sim-<cluster>.json`, written atomically; a lock file keeps a second sim off the
//! same directory.

use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Why the data directory cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("data directory {path}: {reason}")]
pub struct DataDirError {
    pub path: PathBuf,
    pub reason: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Identities {
    cluster: String,
    container_instance_arns: Vec<String>,
}

/// The data directory, locked for as long as this value lives.
#[derive(Debug)]
pub struct DataDir {
    dir: PathBuf,
    _lock: File,
}

impl DataDir {
    /// Creates the directory if needed and takes its lock.
    pub fn open(dir: &Path) -> Result<DataDir, DataDirError> {
        let fail = |reason: String| DataDirError {
            path: dir.to_path_buf(),
            reason,
        };
        fs::create_dir_all(dir).map_err(|e| fail(format!("cannot create it: {e}")))?;
        let lock_path = dir.join("sim.lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| fail(format!("cannot open {}: {e}", lock_path.display())))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(fail(
                    "another berth-agent --sim is using it; give each sim its own --data-dir"
                        .into(),
                ))
            }
            Err(TryLockError::Error(e)) => {
                return Err(fail(format!("cannot lock {}: {e}", lock_path.display())))
            }
        }
        Ok(DataDir {
            dir: dir.to_path_buf(),
            _lock: lock,
        })
    }

    fn file(&self, cluster: &str) -> PathBuf {
        self.dir.join(format!("sim-{cluster}.json"))
    }

    /// The instance ARNs kept for `cluster`, in slot order (empty if none).
    pub fn load(&self, cluster: &str) -> Result<Vec<String>, DataDirError> {
        let path = self.file(cluster);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(DataDirError {
                    path,
                    reason: format!("cannot read: {e}"),
                })
            }
        };
        let ids: Identities = serde_json::from_slice(&bytes).map_err(|e| DataDirError {
            path: path.clone(),
            reason: format!("not a sim identity file ({e}); remove it to start afresh"),
        })?;
        if ids.cluster != cluster {
            return Err(DataDirError {
                path,
                reason: format!("holds instances of cluster {}, not {cluster}", ids.cluster),
            });
        }
        Ok(ids.container_instance_arns)
    }

    /// Replaces the ARNs kept for `cluster`.
    pub fn store(&self, cluster: &str, arns: &[String]) -> Result<(), DataDirError> {
        let path = self.file(cluster);
        let fail = |reason: String| DataDirError {
            path: path.clone(),
            reason,
        };
        let body = serde_json::to_vec_pretty(&Identities {
            cluster: cluster.to_string(),
            container_instance_arns: arns.to_vec(),
        })
        .map_err(|e| fail(e.to_string()))?;
        let tmp = path.with_extension("json.tmp");
        let mut f = File::create(&tmp).map_err(|e| fail(format!("cannot write: {e}")))?;
        f.write_all(&body)
            .and_then(|_| f.sync_all())
            .map_err(|e| fail(format!("cannot write: {e}")))?;
        fs::rename(&tmp, &path).map_err(|e| fail(format!("cannot replace: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_and_loads_per_cluster() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        assert!(dir.load("c1").unwrap().is_empty());
        let arns = vec!["arn:1".to_string(), "arn:2".to_string()];
        dir.store("c1", &arns).unwrap();
        assert_eq!(dir.load("c1").unwrap(), arns);
        assert!(dir.load("c2").unwrap().is_empty());
    }

    #[test]
    fn second_user_of_a_directory_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let first = DataDir::open(tmp.path()).unwrap();
        let second = DataDir::open(tmp.path()).unwrap_err();
        assert!(second.reason.contains("another"), "{second}");
        drop(first);
        DataDir::open(tmp.path()).unwrap();
    }

    #[test]
    fn garbage_file_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("sim-c1.json"), b"nonsense").unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        let e = dir.load("c1").unwrap_err();
        assert!(e.reason.contains("remove it"), "{e}");
    }
}

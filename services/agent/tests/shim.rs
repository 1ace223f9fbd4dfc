//! The shim as a process: output capture with rotation, exit records, start failures and
//! signal forwarding.

use berth_agent::runtime::process::shim::{ExitRecord, StateRecord};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Shim {
    dir: tempfile::TempDir,
    child: Child,
}

impl Shim {
    fn start(log_max_bytes: u64, command: &[&str]) -> Shim {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_berth-agent"))
            .arg("shim")
            .arg("--state-file")
            .arg(dir.path().join("state.json"))
            .arg("--exit-file")
            .arg(dir.path().join("exit.json"))
            .arg("--log-dir")
            .arg(dir.path().join("logs"))
            .arg("--log-max-bytes")
            .arg(log_max_bytes.to_string())
            .arg("--log-files")
            .arg("2")
            .arg("--")
            .args(command)
            .stdin(Stdio::null())
            .spawn()
            .expect("shim starts");
        Shim { dir, child }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn wait_file<T: serde::de::DeserializeOwned>(&self, name: &str) -> T {
        let path = self.path(name);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(bytes) = std::fs::read(&path) {
                if let Ok(v) = serde_json::from_slice(&bytes) {
                    return v;
                }
            }
            assert!(Instant::now() < deadline, "no {name} after 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn output(&self) -> String {
        let chunk = berth_agent::runtime::process::log_files::read(
            &self.path("logs"),
            Some(0),
            None,
            1 << 20,
        )
        .unwrap();
        String::from_utf8(chunk.data).unwrap()
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn segment_count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn output_and_exit_code_are_recorded() {
    let shim = Shim::start(1 << 20, &["sh", "-c", "echo out; echo err >&2; exit 7"]);
    let exit: ExitRecord = shim.wait_file("exit.json");
    assert_eq!(exit.exit_code, Some(7));
    assert_eq!(exit.reported_code(), Some(7));
    assert!(exit.started());
    let state: StateRecord = shim.wait_file("state.json");
    assert!(state.pid > 1);
    assert_eq!(shim.output(), "out\nerr\n");
}

#[test]
fn a_missing_executable_is_recorded_as_a_start_failure() {
    let shim = Shim::start(1 << 20, &["no-such-program-xyz", "a"]);
    let exit: ExitRecord = shim.wait_file("exit.json");
    assert_eq!(
        exit.error.as_deref(),
        Some("executable \"no-such-program-xyz\" not found")
    );
    assert!(!shim.path("state.json").exists());
}

#[test]
fn output_rotates_and_keeps_the_newest() {
    // 3000 bytes through 1000-byte segments, two kept.
    let shim = Shim::start(
        1000,
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 300 ]; do echo 123456789; i=$((i+1)); done",
        ],
    );
    let exit: ExitRecord = shim.wait_file("exit.json");
    assert_eq!(exit.exit_code, Some(0));
    assert_eq!(segment_count(&shim.path("logs")), 2);
    let kept =
        berth_agent::runtime::process::log_files::read(&shim.path("logs"), Some(0), None, 1 << 20)
            .unwrap();
    assert_eq!(kept.offset, 1000, "the oldest segment was rotated away");
    assert_eq!(kept.end, 3000);
    assert_eq!(kept.data.len(), 2000);
}

#[test]
fn signals_to_the_shim_reach_the_command() {
    let shim = Shim::start(
        1 << 20,
        &[
            "sh",
            "-c",
            "trap 'echo bye; exit 4' TERM; echo up; while :; do sleep 0.1; done",
        ],
    );
    let _state: StateRecord = shim.wait_file("state.json");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !shim.output().contains("up") {
        assert!(Instant::now() < deadline, "command never printed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = nix::unistd::Pid::from_raw(i32::try_from(shim.child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let exit: ExitRecord = shim.wait_file("exit.json");
    assert_eq!(exit.exit_code, Some(4));
    assert!(shim.output().contains("bye"));
}

//! The README's first command from a clean state. `scripts/dev` runs the setup, builds
//! and then execs `berth dev`; this test runs that same `berth dev` (the test profile's
//! binaries) on a fresh data directory and a free port, checks that `berth tasks run` of
//! examples/hello.json reaches STOPPED with exit code 0 and that its output is readable,
//! stops it with SIGINT as Ctrl-C would and checks that every process it started has
//! exited, then starts it again on the same data directory and checks that Berth resumes
//! with the same instance and the same task definitions.

use berth_e2e::berth_testkit::{free_port, nats_server_bin, workspace_bin};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Start-up builds nothing but may replay a journal and wait for the agent.
const START_TIMEOUT: Duration = Duration::from_secs(300);
const STOP_TIMEOUT: Duration = Duration::from_secs(120);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Environment variables of the developer's shell that would change what is tested.
const CLEARED: &[&str] = &[
    "BERTH_NATS_URL",
    "BERTH_CLUSTER",
    "BERTH_OUTPUT",
    "BERTH_DATA_DIR",
    "BERTH_NATS_PORT",
    "BERTH_SIM",
];

/// A running `berth dev`.
struct Dev {
    child: Child,
    summary: String,
}

impl Dev {
    fn start(data_dir: &Path, port: u16) -> Dev {
        // `berth dev` runs the control plane and the agent from its own directory.
        workspace_bin("berth-control", "berth-control");
        workspace_bin("berth-agent", "berth-agent");
        let mut command = Command::new(workspace_bin("berth-cli", "berth"));
        command
            .current_dir(repo_root())
            .arg("dev")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--port")
            .arg(port.to_string())
            .env("NATS_SERVER_BIN", nats_server_bin())
            .env("BERTH_HEARTBEAT_INTERVAL", "0.5")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for name in CLEARED {
            command.env_remove(name);
        }
        let mut child = command.spawn().expect("berth dev starts");
        let (tx, rx) = mpsc::channel::<String>();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                eprintln!("[berth dev] {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[berth dev stderr] {line}");
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        let mut summary = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.min(Duration::from_millis(500))) {
                Ok(line) => {
                    summary.push_str(&line);
                    summary.push('\n');
                    if line.contains("Press Ctrl-C") {
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        panic!("berth dev exited ({status}) before it was ready:\n{summary}");
                    }
                    assert!(
                        Instant::now() < deadline,
                        "berth dev was not ready within {START_TIMEOUT:?}:\n{summary}"
                    );
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().ok();
                    panic!("berth dev closed its output ({status:?}):\n{summary}");
                }
            }
        }
        Dev { child, summary }
    }

    /// (process name, pid) of the processes the summary lists.
    fn processes(&self) -> Vec<(String, u32)> {
        self.summary
            .lines()
            .filter_map(|l| {
                let words: Vec<&str> = l.split_whitespace().collect();
                match words.as_slice() {
                    [name, "pid", pid, ..] => Some((name.to_string(), pid.parse().ok()?)),
                    _ => None,
                }
            })
            .collect()
    }

    /// The agent's instance id as the summary reports it.
    fn instance_id(&self) -> String {
        let line = self
            .summary
            .lines()
            .find(|l| l.trim_start().starts_with("berth-agent"))
            .unwrap_or_else(|| panic!("no berth-agent line in:\n{}", self.summary));
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = words
            .iter()
            .position(|w| *w == "instance")
            .unwrap_or_else(|| panic!("no instance in {line}"));
        words[at + 1].to_string()
    }

    /// SIGINT, as Ctrl-C in a terminal, then waits for the exit.
    fn interrupt(&mut self) -> ExitStatus {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("berth dev status") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "berth dev did not stop within {STOP_TIMEOUT:?} of SIGINT"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args(["-INT", &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn berth(url: &str, args: &[&str]) -> (bool, String, String) {
    let mut command = Command::new(workspace_bin("berth-cli", "berth"));
    command
        .current_dir(repo_root())
        .args(["--nats", url])
        .args(args);
    for name in CLEARED {
        command.env_remove(name);
    }
    let out = command.output().expect("berth runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn berth_json(url: &str, args: &[&str]) -> Value {
    let (ok, stdout, stderr) = berth(url, args);
    assert!(ok, "berth {args:?} failed:\n{stdout}\n{stderr}");
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("berth {args:?} printed no JSON ({e}):\n{stdout}\n{stderr}"))
}

fn is_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn stop_and_check(dev: &mut Dev) {
    let processes = dev.processes();
    let names: Vec<&str> = processes.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["nats-server", "berth-control", "berth-agent"],
        "{}",
        dev.summary
    );
    for (name, pid) in &processes {
        assert!(is_alive(*pid), "{name} (pid {pid}) is not running");
    }
    let status = dev.interrupt();
    assert!(
        status.success(),
        "berth dev exited with {status} after SIGINT"
    );
    for (name, pid) in &processes {
        assert!(
            !is_alive(*pid),
            "{name} (pid {pid}) still runs after berth dev stopped"
        );
    }
}

#[test]
fn the_readme_first_command_runs_the_example_to_completion() {
    let data =
        TempDir(std::env::temp_dir().join(format!("berth-e2e-readme-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&data.0);
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");

    let mut dev = Dev::start(&data.0, port);
    assert!(dev.summary.contains("Berth is running"), "{}", dev.summary);
    assert!(
        dev.summary
            .contains("task-definitions register examples/hello.json"),
        "{}",
        dev.summary
    );
    let instance = dev.instance_id();

    let registered = berth_json(
        &url,
        &[
            "task-definitions",
            "register",
            "examples/hello.json",
            "--output",
            "json",
        ],
    );
    assert_eq!(registered["taskDefinition"]["revision"], 1);
    let ran = berth_json(
        &url,
        &[
            "tasks", "run", "hello", "--wait", "STOPPED", "--output", "json",
        ],
    );
    let task = &ran["tasks"][0];
    assert_eq!(task["lastStatus"], "STOPPED", "{ran}");
    assert_eq!(task["containers"][0]["exitCode"], 0, "{ran}");
    assert!(
        task["containerInstanceArn"]
            .as_str()
            .is_some_and(|a| a.ends_with(&format!("/{instance}"))),
        "{ran}"
    );
    let task_arn = task["taskArn"].as_str().expect("task arn").to_string();
    let (ok, logs, stderr) = berth(&url, &["tasks", "logs", &task_arn]);
    assert!(ok && logs.contains("hello from berth"), "{logs}\n{stderr}");
    // The second `berth dev` on the same data directory is refused, naming the fix.
    let (ok, _, stderr) = {
        let mut command = Command::new(workspace_bin("berth-cli", "berth"));
        command
            .current_dir(repo_root())
            .arg("dev")
            .arg("--data-dir")
            .arg(&data.0)
            .arg("--port")
            .arg(free_port().to_string())
            .env("NATS_SERVER_BIN", nats_server_bin());
        for name in CLEARED {
            command.env_remove(name);
        }
        let out = command.output().expect("second berth dev runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert!(!ok);
    assert!(
        stderr.contains("another `berth dev`") && stderr.contains("--data-dir"),
        "{stderr}"
    );

    stop_and_check(&mut dev);
    drop(dev);

    // Started again on the same data directory, it resumes: same instance, same state.
    let mut dev = Dev::start(&data.0, port);
    assert_eq!(dev.instance_id(), instance, "{}", dev.summary);
    let listed = berth_json(
        &url,
        &[
            "task-definitions",
            "list",
            "--family",
            "hello",
            "--output",
            "json",
        ],
    );
    assert_eq!(
        listed["taskDefinitionArns"].as_array().map(Vec::len),
        Some(1)
    );
    let described = berth_json(&url, &["tasks", "describe", &task_arn, "--output", "json"]);
    assert_eq!(
        described["tasks"][0]["lastStatus"], "STOPPED",
        "{described}"
    );
    let instances = berth_json(&url, &["instances", "list", "--output", "json"]);
    assert_eq!(
        instances["containerInstanceArns"].as_array().map(Vec::len),
        Some(1),
        "{instances}"
    );
    stop_and_check(&mut dev);
}

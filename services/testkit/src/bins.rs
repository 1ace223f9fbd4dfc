//! Locating executables for tests: the pinned `nats-server` and the binaries of this workspace.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// (package, binary) pairs this process has already built; also serialises `cargo build`
/// calls made by concurrent tests.
static BUILT: Mutex<BTreeSet<(String, String)>> = Mutex::new(BTreeSet::new());

fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// $NATS_SERVER_BIN if set, else <workspace root>/.tools/nats/bin/nats-server if it exists,
/// else "nats-server" from PATH. Panics telling the user to run scripts/setup if none is found.
pub fn nats_server_bin() -> PathBuf {
    if let Some(configured) = std::env::var_os("NATS_SERVER_BIN").filter(|value| !value.is_empty())
    {
        let path = PathBuf::from(configured);
        assert!(
            path.is_file(),
            "NATS_SERVER_BIN={} does not exist; unset it or run scripts/setup",
            path.display()
        );
        return path;
    }
    let pinned = workspace_root().join(".tools/nats/bin/nats-server");
    if pinned.is_file() {
        return pinned;
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("nats-server"))
            .find(|candidate| candidate.is_file())
    });
    on_path.unwrap_or_else(|| {
        panic!(
            "nats-server not found: run scripts/setup (installs {}), put nats-server on PATH, \
             or set NATS_SERVER_BIN",
            pinned.display()
        )
    })
}

/// Path of a binary of this workspace (e.g. "berth-control"): looks next to the running test
/// executable (target/<profile>/), building it with `cargo build -p <package> --bin <name>`
/// into that same target directory and profile. The build runs once per test process even
/// when the binary exists (a no-op for cargo when it is fresh), so tests never run a stale
/// binary left by an earlier build.
pub fn workspace_bin(package: &str, name: &str) -> PathBuf {
    let current_exe = std::env::current_exe().expect("path of the running test executable");
    let mut profile_dir = current_exe
        .parent()
        .expect("test executable has a parent directory")
        .to_path_buf();
    if profile_dir.file_name().is_some_and(|dir| dir == "deps") {
        profile_dir.pop();
    }
    let binary = profile_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    let mut built = BUILT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if built.insert((package.to_owned(), name.to_owned())) {
        build(package, name, &profile_dir);
    }
    assert!(
        binary.is_file(),
        "`cargo build -p {package} --bin {name}` succeeded but {} does not exist",
        binary.display()
    );
    binary
}

fn build(package: &str, name: &str, profile_dir: &Path) {
    let profile = profile_dir
        .file_name()
        .and_then(|dir| dir.to_str())
        .expect("profile directory has a UTF-8 name");
    let mut target_dir = profile_dir
        .parent()
        .expect("profile directory lies in a target directory")
        .to_path_buf();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace_root())
        .args(["build", "-p", package, "--bin", name]);
    // target/<triple>/<profile>: cargo tags the target directory root with CACHEDIR.TAG.
    if !target_dir.join("CACHEDIR.TAG").exists() {
        if let Some(parent) = target_dir
            .parent()
            .filter(|p| p.join("CACHEDIR.TAG").exists())
        {
            let triple = target_dir
                .file_name()
                .and_then(|dir| dir.to_str())
                .expect("target triple directory has a UTF-8 name")
                .to_owned();
            command.args(["--target", &triple]);
            target_dir = parent.to_path_buf();
        }
    }
    command.arg("--target-dir").arg(&target_dir);
    match profile {
        "debug" => {}
        "release" => {
            command.arg("--release");
        }
        custom => {
            command.args(["--profile", custom]);
        }
    }
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_server_bin_is_runnable() {
        let bin = nats_server_bin();
        let output = Command::new(&bin)
            .arg("--version")
            .output()
            .expect("run nats-server --version");
        assert!(
            output.status.success(),
            "{} --version failed",
            bin.display()
        );
        assert!(String::from_utf8_lossy(&output.stdout).contains("nats-server: v"));
    }
}

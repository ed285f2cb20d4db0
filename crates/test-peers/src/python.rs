//! Python packages from PyPI for peers written in Python, in a
//! virtualenv under `target/` (never in the system's Python).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::require;

/// The Python interpreter of a virtualenv under the workspace's `target/`
/// holding `package` (installed with pip from PyPI the first time).
///
/// # Panics
///
/// When the virtualenv cannot be made (python3 or its venv module missing,
/// no access to PyPI).
pub fn python_with(package: &str, module: &str) -> PathBuf {
    python_venv(package, &[package], module)
}

/// The Python interpreter of the virtualenv `target/test-venv-NAME` holding
/// `packages` (installed with pip from PyPI the first time), which must
/// make `modules` (a comma-separated `import` list) importable.
///
/// # Panics
///
/// As [`python_with`].
pub fn python_venv(name: &str, packages: &[&str], modules: &str) -> PathBuf {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
    let venv = target.join(format!("test-venv-{name}"));
    let python = venv.join("bin/python");
    let has = |python: &Path| {
        Command::new(python)
            .args(["-c", &format!("import {modules}")])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if has(&python) {
        return python;
    }
    // Built aside and renamed into place, so concurrent test binaries never
    // see half a virtualenv.
    let _ = fs::create_dir_all(&target);
    let scratch = tempfile::Builder::new()
        .prefix("venv-build")
        .tempdir_in(&target)
        .expect("tempdir in target/");
    let build = scratch.path().join("venv");
    let python3 = require("python3", "python3");
    let status = Command::new(python3)
        .args(["-m", "venv"])
        .arg(&build)
        .status()
        .expect("run python3 -m venv");
    assert!(
        status.success(),
        "python3 -m venv failed (Debian package python3-venv)"
    );
    let status = Command::new(build.join("bin/python"))
        .args(["-m", "pip", "install", "-q"])
        .args(packages)
        .status()
        .expect("run pip");
    assert!(status.success(), "pip install {packages:?} failed");
    // Moving a virtualenv keeps `bin/python` working (it finds pyvenv.cfg
    // next to itself); only console-script shebangs would break, and none
    // is used. A rename that loses the race leaves the winner's in place.
    let _ = fs::rename(&build, &venv);
    assert!(
        has(&python),
        "{packages:?} do not make {modules} importable"
    );
    python
}

//! Black-box tests of the built `slimta` binary: its command line, exit
//! codes, error output, logging and signal handling, as an operator sees them.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

mod common;

use common::config::{
    blackhole_relay, memory_queue, memory_queue_via, process, relay, smtp_edge, smtp_edge_on,
};

const BIN: &str = env!("CARGO_BIN_EXE_slimta");

/// A runnable configuration that needs nothing outside the process: a
/// memory queue, a blackhole relay and a port the system picks.
fn runnable() -> String {
    [
        process("mx.example.test", "log_level = \"info\""),
        smtp_edge("\"example.test\"", ""),
        memory_queue(""),
        blackhole_relay(),
    ]
    .concat()
    .replace("{port}", "0")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn slimta(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn version_prints_the_crate_version() {
    let out = slimta(&["--version"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        text(&out.stdout),
        format!("slimta {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn check_config_accepts_a_good_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "good.toml", &runnable());
    let out = slimta(&["--check-config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(text(&out.stdout), format!("{}: ok\n", path.display()));
    assert_eq!(text(&out.stderr), "");
}

#[test]
fn check_config_prints_every_error_with_its_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "bad.toml",
        &[
            smtp_edge_on("\"127.0.0.1:2525\", \"x\"", "bogus = true"),
            memory_queue_via("out2", ""),
            relay("static", "port = 70000\n"),
        ]
        .concat(),
    );
    let out = slimta(&["--check-config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(text(&out.stdout), "", "errors go to stderr only");
    let stderr = text(&out.stderr);
    let p = path.display();
    let expected = [
        format!("{p}: relay.out.host: missing required key"),
        format!("{p}: relay.out.port: must be between 1 and 65535, found 70000"),
        format!("{p}: queue.main.relay: no relay named \"out2\""),
        format!(
            "{p}: edge.in.listen[1]: invalid socket address \"x\" (expected IP:PORT, e.g. \"127.0.0.1:2525\" or \"[::1]:2525\")"
        ),
        format!(
            "{p}: edge.in.bogus: unknown key (expected one of: accept_domains, auth, checks, command_timeout, data_timeout, listen, max_connections, max_recipients, max_size, proxy_protocol, queue, reverse_dns, tls, tls_immediately, type)"
        ),
        format!("{p}: 5 errors"),
    ];
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines, expected, "stderr:\n{stderr}");
}

#[test]
fn check_config_reports_a_syntax_error_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    // Not a configuration but a broken one: the first lines of an edge,
    // cut inside the array (the line and column are asserted).
    let path = write(
        dir.path(),
        "syntax.toml",
        "[edge.in]\ntype = \"smtp\"\nlisten = [\n",
    );
    let out = slimta(&["--check-config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(
        text(&out.stderr),
        format!(
            "{p}: line 3, column 11: TOML syntax: unclosed array, expected `]`\n{p}: 1 error\n",
            p = path.display()
        )
    );
}

#[test]
fn check_config_knows_the_user_and_group_to_run_as() {
    let dir = tempfile::tempdir().unwrap();
    let known = runnable().replace(
        "log_level = \"info\"",
        "log_level = \"info\"\nuser = \"nobody\"\ngroup = \"nogroup\"",
    );
    let path = write(dir.path(), "known.toml", &known);
    let out = slimta(&["--check-config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let unknown = runnable().replace(
        "log_level = \"info\"",
        "log_level = \"info\"\nuser = \"no-such-user-slimta\"\ngroup = \"no-such-group-slimta\"",
    );
    let path = write(dir.path(), "unknown.toml", &unknown);
    let out = slimta(&["--check-config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(
        text(&out.stderr),
        format!(
            "{p}: process.user: no user named \"no-such-user-slimta\"\n\
             {p}: process.group: no group named \"no-such-group-slimta\"\n{p}: 2 errors\n",
            p = path.display()
        )
    );
}

#[test]
fn check_config_of_a_missing_file_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.toml");
    let out = slimta(&["--check-config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        text(&out.stderr).starts_with(&format!("{}: cannot read:", path.display())),
        "{out:?}"
    );
}

#[test]
fn the_embedded_default_checks_ok_and_is_not_an_open_relay() {
    let out = slimta(&["--print-default"]);
    assert!(out.status.success(), "{out:?}");
    let default = text(&out.stdout);
    assert_eq!(default, slimta_app::config::DEFAULT_CONFIG);
    assert!(
        default.contains("listen = [\"127.0.0.1:2525\"]"),
        "{default}"
    );
    assert!(default.contains("accept_domains = []"), "{default}");

    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "default.toml", &default);
    let out = slimta(&["--check-config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(text(&out.stdout), format!("{}: ok\n", path.display()));
}

#[test]
fn conflicting_options_are_a_usage_error() {
    let out = slimta(&["--config", "a.toml", "--check-config", "b.toml"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).contains("cannot be used with"), "{out:?}");
}

/// A running daemon whose stderr is collected line by line.
struct Daemon {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Daemon {
    fn start(args: &[&str], dir: &Path, rust_log: Option<&str>) -> Self {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .current_dir(dir)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(filter) = rust_log {
            command.env("RUST_LOG", filter);
        }
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a stderr line containing `needle`.
    fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    panic!(
                        "no stderr line with {needle:?}; saw:\n{}",
                        self.seen.join("\n")
                    );
                }
            }
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // The rest of stderr, for assertions on the shutdown lines.
                while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
                    self.seen.push(line);
                }
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("slimta did not exit; stderr:\n{}", self.seen.join("\n"));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn stderr(&self) -> String {
        self.seen.join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sigterm_stops_the_daemon_with_exit_0_and_sighup_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "run.toml", &runnable());
    let mut daemon = Daemon::start(&["--config", path.to_str().unwrap()], dir.path(), None);
    daemon.wait_for("slimta starting");
    daemon.signal("HUP");
    daemon.wait_for("SIGHUP: reloading the configuration");
    daemon.wait_for("configuration reloaded");
    daemon.signal("TERM");
    let status = daemon.wait_exit();
    assert_eq!(status.code(), Some(0), "stderr:\n{}", daemon.stderr());
    assert!(
        daemon.stderr().contains("SIGTERM: shutting down"),
        "{}",
        daemon.stderr()
    );
}

#[test]
fn sigint_stops_the_daemon_too_and_the_pid_file_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("slimta.pid");
    let file = runnable().replace(
        "[process]\n",
        &format!("[process]\npid_file = \"{}\"\n", pid_file.display()),
    );
    let path = write(dir.path(), "run.toml", &file);
    let mut daemon = Daemon::start(&["--config", path.to_str().unwrap()], dir.path(), None);
    daemon.wait_for("slimta starting");
    let written = std::fs::read_to_string(&pid_file).unwrap();
    assert_eq!(written, format!("{}\n", daemon.child.id()));
    daemon.signal("INT");
    let status = daemon.wait_exit();
    assert_eq!(status.code(), Some(0), "stderr:\n{}", daemon.stderr());
    assert!(!pid_file.exists(), "pid file left behind");
}

#[test]
fn json_logs_and_rust_log_override() {
    let dir = tempfile::tempdir().unwrap();
    let file = runnable().replace(
        "log_level = \"info\"",
        "log_level = \"error\"\nlog_format = \"json\"",
    );
    let path = write(dir.path(), "json.toml", &file);
    // log_level = "error" would hide the info line; RUST_LOG wins.
    let mut daemon = Daemon::start(
        &["--config", path.to_str().unwrap()],
        dir.path(),
        Some("info"),
    );
    let line = daemon.wait_for("slimta starting");
    assert!(
        line.starts_with('{') && line.ends_with('}'),
        "not JSON: {line}"
    );
    assert!(line.contains("\"level\":\"INFO\""), "{line}");
    assert!(line.contains("\"hostname\":\"mx.example.test\""), "{line}");
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit().code(), Some(0), "{}", daemon.stderr());
}

#[test]
fn no_arguments_runs_the_embedded_default_and_says_where_it_listens() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(&[], dir.path(), None);
    let line = daemon.wait_for("running the embedded default");
    assert!(line.contains("127.0.0.1:2525"), "{line}");
    assert!(line.contains("no domain"), "{line}");
    daemon.wait_for("slimta starting");
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit().code(), Some(0), "{}", daemon.stderr());
}

#[test]
fn the_readme_example_passes_check_config() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let start = readme
        .find("```toml\n")
        .expect("README has a ```toml example")
        + 8;
    let length = readme[start..].find("```").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "readme.toml", &readme[start..start + length]);
    let out = slimta(&["--check-config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

//! A shell watchdog for peers shared by a whole test binary (a static is
//! never dropped): it starts the peer's processes, then blocks reading a
//! pipe whose write end this process holds. When the test binary exits,
//! however it exits, the pipe closes and the watchdog stops the processes
//! (SIGTERM, then waits) and removes the scratch directory.
//!
//! `shared_peer.rs` does the same for a peer of one process; this one
//! starts several, in order (Swift's memcached and four servers, Zaqar and
//! its redis-server), and can tell when one of them died while starting.

use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};

/// The running watchdog; its processes live as long as it does.
#[derive(Debug)]
pub(crate) struct Watchdog {
    child: Child,
    _pipe: ChildStdin,
}

/// `args` as one shell word each.
fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

impl Watchdog {
    /// Starts each command of `commands` (program and arguments, and the
    /// name of its log file in `dir`) in the background, in order.
    ///
    /// # Panics
    ///
    /// When `sh` cannot be started.
    pub(crate) fn start(dir: &Path, what: &str, commands: &[(Vec<String>, &str)]) -> Self {
        let mut script = String::from("cd \"$1\" || exit 1\nPIDS=\n");
        for (args, log) in commands {
            script.push_str(&format!(
                "{} </dev/null >{} 2>&1 &\nPIDS=\"$PIDS $!\"\necho $! >>pids\n",
                shell_words(args),
                shell_words(&[(*log).to_owned()])
            ));
        }
        script.push_str("read _ignored\nkill -TERM $PIDS 2>/dev/null\nwait\ncd /\nrm -rf \"$1\"\n");
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(script)
            .arg(format!("{what}-watchdog"))
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what} under sh: {e}"));
        let pipe = child.stdin.take().expect("piped stdin");
        Self { child, _pipe: pipe }
    }

    /// Whether every process it started still runs (false once one of
    /// them exited, e.g. failed to start).
    pub(crate) fn all_alive(&mut self, dir: &Path) -> bool {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return false;
        }
        let Ok(pids) = std::fs::read_to_string(dir.join("pids")) else {
            return true;
        };
        pids.split_whitespace().all(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                // A zombie (state Z) has exited.
                .is_ok_and(|stat| {
                    stat.rsplit_once(')')
                        .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
                })
        })
    }
}

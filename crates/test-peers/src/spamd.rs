//! spamd (SpamAssassin's daemon) on a free port, with `--local` so no rule
//! asks the network: the GTUBE string scores 1000 and a plain message stays
//! clean, in about 0.1 s a scan.

use std::fs;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Peer, free_port, require, set_mode, user_ids};

/// A spamd instance with its own scratch directory (pid file, log, the
/// helper home of its `debian-spamd` children), stopped with SIGTERM (so
/// its children go too) when dropped.
#[derive(Debug)]
pub struct Spamd {
    /// The master process.
    pub peer: Peer,
    dir: tempfile::TempDir,
    stopped: bool,
}

impl Spamd {
    /// Starts spamd on a free port of 127.0.0.1, printing how long it took.
    ///
    /// # Panics
    ///
    /// If spamd is not installed or does not come up (under CI too: a peer
    /// that cannot start fails the test, it is never skipped).
    pub fn start() -> Self {
        let program = require("spamd", "spamd");
        let began = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("spamd")
            .tempdir()
            .expect("tempdir");
        let d = dir.path();
        set_mode(d, 0o755);
        let (uid, gid) = user_ids("debian-spamd");
        fs::create_dir(d.join("home")).expect("mkdir home");
        std::os::unix::fs::chown(d.join("home"), Some(uid), Some(gid)).expect("chown home");
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let stderr = fs::File::create(d.join("stderr.log")).expect("stderr log");
        let mut command = Command::new(program);
        command
            .arg(format!("--listen=127.0.0.1:{port}"))
            .args(["--allowed-ips=127.0.0.1", "--local", "--nouser-config"])
            .args(["--username=debian-spamd", "--groupname=debian-spamd"])
            .arg(format!("--helper-home-dir={}", d.join("home").display()))
            .arg(format!("--pidfile={}", d.join("spamd.pid").display()))
            .arg("--max-children=2")
            .arg(format!("--syslog={}", d.join("spamd.log").display()))
            .current_dir(d)
            .stdout(Stdio::null())
            .stderr(stderr);
        let peer = Peer::spawn(command, addr, "spamd");
        eprintln!(
            "test-peers: spamd on {addr} started in {:?}",
            began.elapsed()
        );
        Self {
            peer,
            dir,
            stopped: false,
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.peer.addr
    }

    /// spamd's log (for failure messages).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("spamd.log")).unwrap_or_default()
    }

    /// Stops spamd (SIGTERM; the master stops its children) and waits for
    /// it; later scans find nothing listening.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        self.peer.signal("TERM");
        if self.peer.wait_exit(Duration::from_secs(10)).is_none() {
            self.peer.signal("KILL");
        }
    }
}

impl Drop for Spamd {
    fn drop(&mut self) {
        self.stop();
    }
}

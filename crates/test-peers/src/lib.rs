//! Real peers for slimta's tests, started on loopback on free ports.
//!
//! Tests talk to real programs (real parts, not mocks: a mock only
//! agrees with our own reading of the protocol). Each
//! peer here is started by the test that needs it and killed when its handle
//! is dropped. A peer whose program is missing or does not come up makes the
//! test fail with a message saying what to install: the README's test command
//! (`scripts/test`) installs every peer, so a missing one is a broken machine,
//! never a reason to skip.
//!
//! One file per peer; this file holds what they share (free ports, finding
//! a program, the process guard [`Peer`], small file helpers) and
//! re-exports every peer, so tests import everything from the crate root.

mod aiosmtpd;
mod clamav;
mod dkimpy;
mod dnsmasq;
mod dovecot;
mod maildrop;
pub mod moto;
mod opendkim;
mod opendkim_verify;
mod python;
mod redis;
mod rspamd;
pub mod seaweedfs;
pub mod shared_peer;
mod smtp_sink;
mod spamd;
mod swaks;
mod swift;
mod watchdog;
mod wiretap;
mod zaqar;

pub use aiosmtpd::{AioMessage, AioSmtpd};
pub use clamav::{ClamAv, EICAR};
pub use dkimpy::dkimpy_verify;
pub use dnsmasq::Dnsmasq;
pub use dovecot::Dovecot;
pub use maildrop::MaildropBox;
pub use opendkim::OpenDkim;
pub use opendkim_verify::opendkim_verify;
pub use python::{python_venv, python_with};
pub use redis::RedisServer;
pub use rspamd::Rspamd;
pub use smtp_sink::{DumpedMessage, SmtpSink, crlf_to_lf, parse_dump};
pub use spamd::Spamd;
pub use swaks::swaks;
pub use swift::Swift;
pub use wiretap::Wiretap;
pub use zaqar::Zaqar;

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// A port on 127.0.0.1 that was free a moment ago, and that this process
/// has not handed out before.
///
/// The port is released before the peer binds it, and a slow starter (a
/// Python server takes about a second) leaves a window in which the kernel
/// may give the same port to another test of the same binary: then one
/// peer fails to bind while the readiness probe reaches the other test's
/// server. Never repeating a port within the process closes that window
/// (test binaries run one at a time).
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("cannot bind 127.0.0.1:0");
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
}

/// The path of `program` on PATH (or in /usr/sbin), or a panic naming the
/// Debian package that provides it.
pub fn require(program: &str, package: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/bin", "/sbin"].map(PathBuf::from));
    for dir in dirs {
        let candidate = dir.join(program);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "test peer `{program}` is not installed (Debian package `{package}`); \
         run scripts/test, which installs every peer (CI={})",
        std::env::var("CI").unwrap_or_default()
    );
}

/// Waits until something accepts TCP connections on `addr`.
///
/// # Panics
///
/// After `timeout` without success.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration, what: &str) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        sleep(Duration::from_millis(20));
    }
    panic!("{what} did not accept connections on {addr} within {timeout:?}");
}

/// One HTTP/1.0 exchange on a fresh connection: the answer's head and
/// body as text, or `None` when the connection or the exchange failed
/// (readiness probes of HTTP peers).
pub(crate) fn http_exchange(addr: SocketAddr, request: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.write_all(request.as_bytes()).ok()?;
    let mut answer = Vec::new();
    stream.take(64 * 1024).read_to_end(&mut answer).ok()?;
    Some(String::from_utf8_lossy(&answer).into_owned())
}

/// A child process killed (and reaped) on drop.
#[derive(Debug)]
pub struct Peer {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Peer {
    /// Starts `command`, then waits for `addr` to accept connections.
    ///
    /// # Panics
    ///
    /// If the program cannot be started or never listens.
    pub fn spawn(mut command: Command, addr: SocketAddr, what: &str) -> Self {
        command.stdin(Stdio::null());
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what} ({command:?}): {e}"));
        let mut peer = Self { child, addr };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = peer.child.try_wait() {
                panic!("{what} exited before listening: {status} ({command:?})");
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return peer;
            }
            assert!(
                Instant::now() < deadline,
                "{what} did not listen on {addr} within 10s"
            );
            sleep(Duration::from_millis(20));
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. "TERM", "KILL") to the process.
    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status();
    }

    /// Waits for the process to exit (up to `timeout`); its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The uid and gid of `nobody` (Dovecot's and maildrop's mailbox owner in
/// the tests), from /etc/passwd.
pub fn nobody_ids() -> (u32, u32) {
    user_ids("nobody")
}

/// The uid and gid of the system user `name` (a daemon's own user, which its
/// package creates), from /etc/passwd.
///
/// # Panics
///
/// When there is no such user.
pub fn user_ids(name: &str) -> (u32, u32) {
    let passwd = fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    passwd
        .lines()
        .find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.first() == Some(&name) && f.len() > 3)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        })
        .unwrap_or_else(|| panic!("no user {name} in /etc/passwd (its package creates it)"))
}

/// Every file in `dir` (not recursive), sorted by name, read whole.
pub(crate) fn read_files(dir: &Path) -> Vec<Vec<u8>> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    paths.iter().filter_map(|p| fs::read(p).ok()).collect()
}

/// Sets `path`'s permission bits (peers running as `nobody` must reach
/// their scratch files).
pub(crate) fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

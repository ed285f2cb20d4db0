//! Real peers for slimta's tests, started on loopback on free ports.
//!
//! Tests talk to real programs (real parts, not mocks: a mock only
//! agrees with our own reading of the protocol). Each
//! peer here is started by the test that needs it and killed when its handle
//! is dropped. A peer whose program is missing or does not come up makes the
//! test fail with a message saying what to install: the README's test command
//! (`scripts/test`) installs every peer, so a missing one is a broken machine,
//! never a reason to skip.

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

/// Postfix's `smtp-sink`, optionally dumping every message into a directory.
#[derive(Debug)]
pub struct SmtpSink {
    /// The running process.
    pub peer: Peer,
    dump: Option<tempfile::TempDir>,
}

/// One message as dumped by `smtp-sink -d`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DumpedMessage {
    /// The `X-Mail-Args` value (`<sender>` plus parameters).
    pub mail_args: String,
    /// Each `X-Rcpt-Args` value.
    pub rcpt_args: Vec<String>,
    /// The message as received, without smtp-sink's own `X-*` and
    /// `Received` lines, with CRLF turned into LF (smtp-sink writes LF).
    pub content: Vec<u8>,
}

impl SmtpSink {
    /// Starts `smtp-sink` on a free port with extra flags such as `["-r",
    /// "RCPT"]` (fault injection), dumping messages when `dump` is true.
    pub fn start(extra: &[&str], dump: bool) -> Self {
        Self::start_on("127.0.0.1", extra, dump)
    }

    /// Like [`SmtpSink::start`] on a given loopback address (127.0.0.2, ...).
    pub fn start_on(ip: &str, extra: &[&str], dump: bool) -> Self {
        let program = require("smtp-sink", "postfix");
        let port = free_port();
        let addr: SocketAddr = format!("{ip}:{port}").parse().expect("bad address");
        let mut command = Command::new(program);
        command.args(["-u", "nobody"]).args(extra);
        let dump = dump.then(|| {
            let dir = tempfile::Builder::new()
                .prefix("sink")
                .tempdir()
                .expect("tempdir");
            set_mode(dir.path(), 0o777);
            command
                .arg("-d")
                .arg(format!("{}/%M.", dir.path().display()));
            dir
        });
        command.arg(addr.to_string()).arg("1000");
        Self {
            peer: Peer::spawn(command, addr, "smtp-sink"),
            dump,
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.peer.addr
    }

    /// Every completely dumped message so far (unordered).
    ///
    /// smtp-sink writes a dump while the data arrives and gives no sign when
    /// it is done, so a file counts as complete once its size stayed the same
    /// over 100 ms (the sink's writes of one message are microseconds apart).
    pub fn messages(&self) -> Vec<DumpedMessage> {
        let Some(dir) = &self.dump else {
            return Vec::new();
        };
        let sizes = |dir: &Path| -> Vec<(PathBuf, u64)> {
            let mut v: Vec<(PathBuf, u64)> = fs::read_dir(dir)
                .expect("read dump dir")
                .flatten()
                .filter_map(|e| Some((e.path(), e.metadata().ok()?.len())))
                .collect();
            v.sort();
            v
        };
        let before = sizes(dir.path());
        sleep(Duration::from_millis(100));
        let after = sizes(dir.path());
        before
            .iter()
            .filter(|entry| after.contains(entry))
            .filter_map(|(path, _)| fs::read(path).ok())
            .map(|bytes| parse_dump(&bytes))
            .collect()
    }

    /// Waits until at least `n` messages were dumped (up to `timeout`).
    pub fn wait_for_messages(&self, n: usize, timeout: Duration) -> Vec<DumpedMessage> {
        let deadline = Instant::now() + timeout;
        loop {
            let messages = self.messages();
            if messages.len() >= n || Instant::now() >= deadline {
                return messages;
            }
            sleep(Duration::from_millis(25));
        }
    }

    /// The dump directory, if dumping.
    pub fn dump_dir(&self) -> Option<&Path> {
        self.dump.as_ref().map(|d| d.path())
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Splits smtp-sink's dump into its envelope lines and the message.
pub fn parse_dump(bytes: &[u8]) -> DumpedMessage {
    let mut mail_args = String::new();
    let mut rcpt_args = Vec::new();
    let mut rest = bytes;
    // X-Client-Addr, X-Client-Proto, X-Helo-Args, X-Mail-Args, X-Rcpt-Args*,
    // then smtp-sink's own three-line Received header.
    while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
        let line = String::from_utf8_lossy(&rest[..nl]).into_owned();
        if let Some(v) = line.strip_prefix("X-Mail-Args: ") {
            mail_args = v.to_string();
        } else if let Some(v) = line.strip_prefix("X-Rcpt-Args: ") {
            rcpt_args.push(v.to_string());
        } else if !line.starts_with("X-Client-") && !line.starts_with("X-Helo-Args: ") {
            break;
        }
        rest = &rest[nl + 1..];
    }
    if rest.starts_with(b"Received: ") && memfind(rest, b"by smtp-sink").is_some() {
        for _ in 0..3 {
            match rest.iter().position(|&b| b == b'\n') {
                Some(nl) => rest = &rest[nl + 1..],
                None => break,
            }
        }
    }
    // smtp-sink ends every dump with one extra newline of its own.
    let content = rest.strip_suffix(b"\n").unwrap_or(rest).to_vec();
    DumpedMessage {
        mail_args,
        rcpt_args,
        content,
    }
}

fn memfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Turns CRLF into LF, as smtp-sink does when dumping.
pub fn crlf_to_lf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\r' && bytes.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_dump() {
        let dump = b"X-Client-Addr: 127.0.0.1\nX-Client-Proto: ESMTP\nX-Helo-Args: vm\nX-Mail-Args: <a@x.test>\nX-Rcpt-Args: <b@y.test>\nX-Rcpt-Args: <c@y.test>\nReceived: from vm ([127.0.0.1])\n\tby smtp-sink (smtp-sink) with ESMTP id 1;\n\tSat, 21 Nov 2026 15:14:37 +0000 (UTC)\nSubject: x\n\nbody\n\n";
        let m = parse_dump(dump);
        assert_eq!(m.mail_args, "<a@x.test>");
        assert_eq!(m.rcpt_args, vec!["<b@y.test>", "<c@y.test>"]);
        assert_eq!(m.content, b"Subject: x\n\nbody\n");
        assert_eq!(crlf_to_lf(b"a\r\nb\rc\n"), b"a\nb\rc\n");
    }

    #[test]
    fn smtp_sink_dumps_what_it_receives() {
        use std::io::{Read, Write};
        let sink = SmtpSink::start(&[], true);
        let mut s = TcpStream::connect(sink.addr()).unwrap();
        s.write_all(b"HELO t\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n")
            .unwrap();
        let mut buf = [0u8; 4096];
        let mut seen = Vec::new();
        while !String::from_utf8_lossy(&seen).contains("354") {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0);
            seen.extend_from_slice(&buf[..n]);
        }
        s.write_all(b"Subject: t\r\n\r\nhi\r\n.\r\n").unwrap();
        let n = s.read(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("250"));
        let got = sink.wait_for_messages(1, Duration::from_secs(5));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].content, b"Subject: t\n\nhi\n");
    }
}

/// dnsmasq answering fixed records on a free port of 127.0.0.1 (UDP and TCP),
/// authoritative for `.test` (unknown `.test` names are NXDOMAIN) and with no
/// upstream: nothing it is asked reaches another resolver.
#[derive(Debug)]
pub struct Dnsmasq {
    /// The running process.
    pub peer: Peer,
}

impl Dnsmasq {
    /// Starts dnsmasq with record flags such as
    /// `"--mx-host=example.test,mx1.example.test,10"` or
    /// `"--host-record=mx1.example.test,127.0.0.2"` (see peers.md).
    pub fn start(records: &[&str]) -> Self {
        let program = require("dnsmasq", "dnsmasq");
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("bad address");
        let mut command = Command::new(program);
        command
            .args([
                "--no-daemon",
                "--no-resolv",
                "--no-hosts",
                "--no-poll",
                "--bind-interfaces",
            ])
            .args([
                "--listen-address=127.0.0.1",
                "--local=/test/",
                "--local-ttl=300",
            ])
            .arg(format!("--port={port}"))
            .arg("--conf-file=/dev/null")
            .arg("--user=root")
            .args(records)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Self {
            peer: Peer::spawn(command, addr, "dnsmasq"),
        }
    }

    /// Where it answers (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.peer.addr
    }
}

impl SmtpSink {
    /// Like [`SmtpSink::start`] on a given address, for tests that need
    /// several sinks on one port (127.0.0.2:P and 127.0.0.3:P, as MX hosts
    /// that share the relay's port).
    pub fn start_at(addr: SocketAddr, extra: &[&str], dump: bool) -> Self {
        let program = require("smtp-sink", "postfix");
        let mut command = Command::new(program);
        command.args(["-u", "nobody"]).args(extra);
        let dump = dump.then(|| {
            let dir = tempfile::Builder::new()
                .prefix("sink")
                .tempdir()
                .expect("tempdir");
            set_mode(dir.path(), 0o777);
            command
                .arg("-d")
                .arg(format!("{}/%M.", dir.path().display()));
            dir
        });
        command.arg(addr.to_string()).arg("1000");
        Self {
            peer: Peer::spawn(command, addr, "smtp-sink"),
            dump,
        }
    }
}

/// The uid and gid of `nobody` (Dovecot's and maildrop's mailbox owner in
/// the tests), from /etc/passwd.
pub fn nobody_ids() -> (u32, u32) {
    let passwd = fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    passwd
        .lines()
        .find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.first() == Some(&"nobody") && f.len() > 3)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        })
        .expect("no user nobody in /etc/passwd")
}

/// Every file in `dir` (not recursive), sorted by name, read whole.
fn read_files(dir: &Path) -> Vec<Vec<u8>> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    paths.iter().filter_map(|p| fs::read(p).ok()).collect()
}

/// A Dovecot instance with an LMTP listener on a free port of 127.0.0.1 and
/// on a unix socket, its own scratch directory, and fresh mailboxes (see
/// peers.md). Users are virtual, owned by `nobody`, and listed in a
/// passwd-file: an address whose local part is not listed is refused at RCPT
/// (`550 5.1.1`), and a user given a quota refuses a larger message after
/// the data (`552 5.2.2`).
#[derive(Debug)]
pub struct Dovecot {
    /// The running master process (in the foreground, `-F`).
    pub peer: Peer,
    dir: tempfile::TempDir,
}

impl Dovecot {
    /// Starts Dovecot for `users`: (local part, optional storage quota such
    /// as `"1K"`).
    pub fn start(users: &[(&str, Option<&str>)]) -> Self {
        let program = require("dovecot", "dovecot-core");
        assert!(
            Path::new("/usr/lib/dovecot/lmtp").is_file(),
            "Dovecot's LMTP server is not installed (Debian package `dovecot-lmtpd`); \
             run scripts/test, which installs every peer"
        );
        let dir = tempfile::Builder::new()
            .prefix("dovecot")
            .tempdir()
            .expect("tempdir");
        let d = dir.path();
        set_mode(d, 0o755);
        let (uid, gid) = nobody_ids();
        for sub in ["run", "state", "mail"] {
            fs::create_dir(d.join(sub)).expect("mkdir");
        }
        std::os::unix::fs::chown(d.join("mail"), Some(uid), Some(gid)).expect("chown mail");
        let mut passwd = String::new();
        for (user, quota) in users {
            let extra = quota
                .map(|q| format!("userdb_quota_rule=*:storage={q}"))
                .unwrap_or_default();
            passwd.push_str(&format!(
                "{user}::{uid}:{gid}::{}/mail/{user}::{extra}\n",
                d.display()
            ));
        }
        fs::write(d.join("users"), passwd).expect("write users");
        let port = free_port();
        let conf = format!(
            "instance_name = test-dovecot-{port}
base_dir = {d}/run
state_dir = {d}/state
protocols = lmtp
listen = 127.0.0.1
ssl = no
log_path = {d}/dovecot.log
first_valid_uid = 1
mail_location = maildir:~/Maildir
mail_plugins = quota
plugin {{
  quota = maildir:User quota
}}
userdb {{
  driver = passwd-file
  args = username_format=%n {d}/users
}}
passdb {{
  driver = static
  args = nopassword=y
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {port}
  }}
  unix_listener lmtp {{
    mode = 0666
  }}
}}
",
            d = d.display()
        );
        fs::write(d.join("dovecot.conf"), conf).expect("write dovecot.conf");
        set_mode(&d.join("dovecot.conf"), 0o644);
        let mut command = Command::new(program);
        command.arg("-F").arg("-c").arg(d.join("dovecot.conf"));
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let peer = Peer::spawn(command, addr, "dovecot");
        Self { peer, dir }
    }

    /// The LMTP listener on 127.0.0.1.
    pub fn lmtp_addr(&self) -> SocketAddr {
        self.peer.addr
    }

    /// The LMTP unix socket.
    pub fn lmtp_socket(&self) -> PathBuf {
        self.dir.path().join("run/lmtp")
    }

    /// The configuration file (for `dovecot-lda -c`).
    pub fn config(&self) -> PathBuf {
        self.dir.path().join("dovecot.conf")
    }

    /// Dovecot's log (for failure messages).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("dovecot.log")).unwrap_or_default()
    }

    /// The messages delivered to `user`'s INBOX (`Maildir/new`), by file name.
    pub fn messages(&self, user: &str) -> Vec<Vec<u8>> {
        read_files(&self.dir.path().join("mail").join(user).join("Maildir/new"))
    }

    /// Stops Dovecot (SIGTERM, then waits); later deliveries find no daemon.
    pub fn stop(&mut self) {
        self.peer.signal("TERM");
        self.peer.wait_exit(Duration::from_secs(10));
        // The master's children (lmtp, auth) leave on their own once it is
        // gone; wait until the auth socket is no longer served.
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::os::unix::net::UnixStream::connect(self.dir.path().join("run/auth-userdb"))
            .is_ok()
            && Instant::now() < deadline
        {
            sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Maildir with a maildrop filter file that delivers into it (peers.md).
#[derive(Debug)]
pub struct MaildropBox {
    dir: tempfile::TempDir,
}

impl MaildropBox {
    /// Creates the Maildir (`maildirmake.maildrop`) and the mailfilter.
    pub fn new() -> Self {
        require("maildrop", "maildrop");
        let make = require("maildirmake.maildrop", "maildrop");
        let dir = tempfile::Builder::new()
            .prefix("maildrop")
            .tempdir()
            .expect("tempdir");
        let d = dir.path();
        let status = Command::new(make)
            .arg(d.join("Maildir"))
            .status()
            .expect("run maildirmake.maildrop");
        assert!(status.success(), "maildirmake.maildrop failed: {status}");
        fs::write(
            d.join("mailfilter"),
            format!("DEFAULT=\"{}/Maildir/\"\nto \"$DEFAULT\"\n", d.display()),
        )
        .expect("write mailfilter");
        set_mode(&d.join("mailfilter"), 0o600);
        Self { dir }
    }

    /// The filter file to give maildrop.
    pub fn mailfilter(&self) -> PathBuf {
        self.dir.path().join("mailfilter")
    }

    /// The messages delivered (`Maildir/new`), by file name.
    pub fn messages(&self) -> Vec<Vec<u8>> {
        read_files(&self.dir.path().join("Maildir/new"))
    }
}

impl Default for MaildropBox {
    fn default() -> Self {
        Self::new()
    }
}

/// The Python interpreter of a virtualenv under the workspace's `target/`
/// holding `package` (installed with pip from PyPI the first time).
///
/// # Panics
///
/// When the virtualenv cannot be made (python3 or its venv module missing,
/// no access to PyPI).
pub fn python_with(package: &str, module: &str) -> PathBuf {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
    let venv = target.join(format!("test-venv-{package}"));
    let python = venv.join("bin/python");
    let has = |python: &Path| {
        Command::new(python)
            .args(["-c", &format!("import {module}")])
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
        .args(["-m", "pip", "install", "-q", package])
        .status()
        .expect("run pip");
    assert!(status.success(), "pip install {package} failed");
    // Moving a virtualenv keeps `bin/python` working (it finds pyvenv.cfg
    // next to itself); only console-script shebangs would break, and none
    // is used. A rename that loses the race leaves the winner's in place.
    let _ = fs::rename(&build, &venv);
    assert!(has(&python), "{package} is not importable as {module}");
    python
}

/// aiosmtpd (PyPI) as an SMTP server with STARTTLS or implicit TLS and
/// AUTH PLAIN, LOGIN and CRAM-MD5, storing each message it accepts.
#[derive(Debug)]
pub struct AioSmtpd {
    /// The running process.
    pub peer: Peer,
    dir: tempfile::TempDir,
}

/// One message stored by [`AioSmtpd`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AioMessage {
    /// `key=value` facts: `mail_from`, `rcpt` (repeated), `tls` (`True`/`False`),
    /// `auth` (the authenticated user), `mech`, `helo`, `peer_port` (the
    /// client port: one value per connection).
    pub meta: Vec<(String, String)>,
    /// The message as received (CRLF line ends).
    pub content: Vec<u8>,
}

impl AioMessage {
    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.meta
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

impl AioSmtpd {
    /// Starts the server on a free port with flags of
    /// `aiosmtpd_server.py`: `--mode plain|starttls|implicit`, `--cert`,
    /// `--key`, `--user`, `--password`, `--mechs "PLAIN LOGIN CRAM-MD5"`,
    /// `--auth-reply "454 4.7.0 ..."`, `--auth-plaintext`.
    pub fn start(args: &[&str]) -> Self {
        let python = python_with("aiosmtpd", "aiosmtpd");
        let dir = tempfile::Builder::new()
            .prefix("aiosmtpd")
            .tempdir()
            .expect("tempdir");
        let script = dir.path().join("server.py");
        fs::write(&script, include_str!("aiosmtpd_server.py")).expect("write server.py");
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let mut command = Command::new(python);
        command
            .arg(&script)
            .arg("--port")
            .arg(port.to_string())
            .arg("--dir")
            .arg(dir.path())
            .args(args);
        Self {
            peer: Peer::spawn(command, addr, "aiosmtpd"),
            dir,
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.peer.addr
    }

    /// The messages stored so far, in order.
    pub fn messages(&self) -> Vec<AioMessage> {
        let mut out = Vec::new();
        for n in 1.. {
            let base = self.dir.path().join(n.to_string());
            let (Ok(meta), Ok(content)) = (
                fs::read_to_string(base.with_extension("meta")),
                fs::read(base.with_extension("eml")),
            ) else {
                break;
            };
            let meta = meta
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            out.push(AioMessage { meta, content });
        }
        out
    }
}

impl SmtpSink {
    /// The `X-Client-Addr` of every dumped message so far (unordered): the
    /// address each client connected from.
    pub fn client_addrs(&self) -> Vec<String> {
        let Some(dir) = &self.dump else {
            return Vec::new();
        };
        read_files(dir.path())
            .iter()
            .filter_map(|bytes| {
                String::from_utf8_lossy(bytes)
                    .lines()
                    .find_map(|l| l.strip_prefix("X-Client-Addr: ").map(String::from))
            })
            .collect()
    }
}

/// A TCP relay between a client under test and a real server that keeps a
/// copy of every byte the client sent, one buffer per connection. It
/// changes nothing: the server answers. Tests use it to see *how* the
/// client spoke (BDAT or DATA, pipelined or not) where the server only
/// shows the result.
pub struct Wiretap {
    addr: SocketAddr,
    sent: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl Wiretap {
    /// Listens on a free loopback port and forwards each connection to
    /// `upstream`.
    pub fn start(upstream: SocketAddr) -> Self {
        use std::io::{Read, Write};
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the wiretap");
        let addr = listener.local_addr().expect("wiretap address");
        let sent: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let record = sent.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let server = TcpStream::connect(upstream).expect("the wiretap's upstream");
                let index = {
                    let mut sent = record.lock().expect("wiretap lock");
                    sent.push(Vec::new());
                    sent.len() - 1
                };
                let (mut from_client, mut to_server) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                let record = record.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0; 64 * 1024];
                    loop {
                        match from_client.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                record.lock().expect("wiretap lock")[index]
                                    .extend_from_slice(&buf[..n]);
                                if to_server.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = to_server.shutdown(std::net::Shutdown::Write);
                });
                let (mut from_server, mut to_client) = (server, client);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from_server, &mut to_client);
                    let _ = to_client.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Self { addr, sent }
    }

    /// Where the client under test connects.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What the client sent so far, one buffer per connection.
    pub fn sent(&self) -> Vec<Vec<u8>> {
        self.sent.lock().expect("wiretap lock").clone()
    }
}

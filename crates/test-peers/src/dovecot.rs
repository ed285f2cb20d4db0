//! Dovecot as an LMTP server (and the configuration `dovecot-lda` reads).

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::{Peer, free_port, nobody_ids, read_files, require, set_mode};

/// A Dovecot instance with an LMTP listener on a free port of 127.0.0.1 and
/// on a unix socket, its own scratch directory, and fresh mailboxes. Users are virtual, owned by `nobody`, and listed in a
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

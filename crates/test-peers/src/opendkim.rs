//! OpenDKIM as a signing milter on a free loopback port, with a fresh RSA
//! key for `example.test` (selector `rsa`), stopped when the handle is
//! dropped.
//!
//! It starts in about 0.1 s (the key takes about as long), so every test
//! gets its own. The configuration is the project's
//! `peer-configs/opendkim.conf` with the port made a free one: mode `sv`,
//! `InternalHosts 127.0.0.1` (mail from there is signed),
//! `relaxed/simple`. The public key record is kept for tests that verify.
//! [`OpenDkim::start_unix`] puts the milter on a unix socket instead.

use std::fs;
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::{Peer, free_port, require, set_mode, user_ids};

/// opendkim (see the module docs).
#[derive(Debug)]
pub struct OpenDkim {
    peer: Peer,
    socket: Option<PathBuf>,
    dir: tempfile::TempDir,
}

impl OpenDkim {
    /// Makes a key and starts opendkim, printing how long it took.
    ///
    /// # Panics
    ///
    /// If opendkim or opendkim-genkey is missing, or opendkim does not
    /// listen in time (under CI too: never skipped).
    pub fn start() -> Self {
        Self::start_on(false)
    }

    /// Like [`OpenDkim::start`], with the milter on a unix socket in its
    /// scratch directory ([`OpenDkim::socket_path`]).
    ///
    /// # Panics
    ///
    /// As [`OpenDkim::start`].
    pub fn start_unix() -> Self {
        Self::start_on(true)
    }

    fn start_on(unix: bool) -> Self {
        let opendkim = require("opendkim", "opendkim");
        let genkey = require("opendkim-genkey", "opendkim-tools");
        let began = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("opendkim")
            .tempdir()
            .expect("tempdir");
        let d = dir.path();
        set_mode(d, 0o755);
        let status = Command::new(genkey)
            .arg("-D")
            .arg(d)
            .args(["-d", "example.test", "-s", "rsa"])
            .status()
            .expect("run opendkim-genkey");
        assert!(status.success(), "opendkim-genkey failed: {status}");
        fs::rename(d.join("rsa.private"), d.join("rsa.key")).expect("rename key");
        let (uid, gid) = user_ids("opendkim");
        std::os::unix::fs::chown(d.join("rsa.key"), Some(uid), Some(gid)).expect("chown");
        set_mode(&d.join("rsa.key"), 0o600);
        let port = free_port();
        let socket_path = d.join("milter.sock");
        let socket = if unix {
            format!("local:{}", socket_path.display())
        } else {
            format!("inet:{port}@127.0.0.1")
        };
        fs::write(
            d.join("opendkim.conf"),
            format!(
                "Syslog no\nLogWhy yes\nMode sv\nSocket {socket}\n\
                 Domain example.test\nSelector rsa\nKeyFile {d}/rsa.key\n\
                 InternalHosts 127.0.0.1\nUserID opendkim\nPidFile {d}/opendkim.pid\n\
                 Background no\nCanonicalization relaxed/simple\nRequireSafeKeys false\n",
                d = d.display()
            ),
        )
        .expect("write opendkim.conf");
        std::os::unix::fs::chown(d, Some(uid), Some(gid)).expect("chown");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let mut command = Command::new(opendkim);
        command.arg("-x").arg(d.join("opendkim.conf")).arg("-f");
        let peer = if unix {
            command.stdin(Stdio::null());
            let child = command
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start opendkim ({command:?}): {e}"));
            let mut peer = Peer { child, addr };
            wait_for_socket(&mut peer, &socket_path);
            peer
        } else {
            Peer::spawn(command, addr, "opendkim")
        };
        eprintln!(
            "test-peers: opendkim on {socket} started in {:?}",
            began.elapsed()
        );
        Self {
            peer,
            socket: unix.then_some(socket_path),
            dir,
        }
    }

    /// The unix socket of an instance from [`OpenDkim::start_unix`].
    ///
    /// # Panics
    ///
    /// For an instance on TCP.
    pub fn socket_path(&self) -> PathBuf {
        self.socket.clone().expect("opendkim was started on TCP")
    }

    /// The milter's address.
    pub fn milter_addr(&self) -> SocketAddr {
        self.peer.addr
    }

    /// The DNS TXT record of the key (`rsa._domainkey.example.test`), as
    /// opendkim-genkey wrote it.
    pub fn dns_record(&self) -> String {
        fs::read_to_string(self.dir.path().join("rsa.txt")).unwrap_or_default()
    }
}

/// Waits until something accepts connections on the unix socket `path`.
fn wait_for_socket(peer: &mut Peer, path: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = peer.child.try_wait() {
            panic!(
                "opendkim exited before listening on {}: {status}",
                path.display()
            );
        }
        if UnixStream::connect(path).is_ok() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "opendkim did not listen on {} within 10s",
            path.display()
        );
        sleep(Duration::from_millis(20));
    }
}

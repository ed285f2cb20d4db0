//! redis-server on a free port of loopback, persisting to a scratch
//! directory with `appendonly yes` and `appendfsync always` (a reply means
//! fsync'd, as slimta's Redis queue requires), no RDB snapshots. It can be
//! killed and started again on the same port and directory, to test that
//! acknowledged data survives a Redis restart. [`RedisServer::start_tls`]
//! serves TLS only, with a certificate for 127.0.0.1 from a CA of its own
//! (made with `openssl`).

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::{Peer, free_port, require};

/// A redis-server with its own scratch directory, killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    peer: Option<Peer>,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    tls: bool,
}

impl RedisServer {
    /// Starts redis-server on a free port of 127.0.0.1, printing how long it
    /// took to answer `PING`.
    ///
    /// # Panics
    ///
    /// If redis-server is not installed or does not come up (under CI too: a
    /// peer that cannot start fails the test, it is never skipped).
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("redis")
            .tempdir()
            .expect("tempdir");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let mut server = Self {
            peer: None,
            addr,
            dir,
            tls: false,
        };
        server.restart();
        server
    }

    /// Like [`RedisServer::start`], serving TLS only (no client
    /// certificates asked); [`RedisServer::ca_pem`] is the CA to trust.
    ///
    /// # Panics
    ///
    /// As [`RedisServer::start`], or if `openssl` cannot make the keys.
    pub fn start_tls() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("redis-tls")
            .tempdir()
            .expect("tempdir");
        let openssl = require("openssl", "openssl");
        let d = dir.path();
        let run = |args: &[&str]| {
            let out = Command::new(&openssl)
                .args(args)
                .current_dir(d)
                .stdin(Stdio::null())
                .output()
                .expect("openssl");
            assert!(out.status.success(), "openssl {args:?}: {out:?}");
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ]);
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]);
        fs::write(
            d.join("ext.cnf"),
            "basicConstraints=critical,CA:FALSE\nsubjectAltName=IP:127.0.0.1\n",
        )
        .expect("ext.cnf");
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.pem",
        ]);
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let mut server = Self {
            peer: None,
            addr,
            dir,
            tls: true,
        };
        server.restart();
        server
    }

    /// The CA certificate (PEM) of a TLS server.
    pub fn ca_pem(&self) -> Vec<u8> {
        fs::read(self.dir.path().join("ca.pem")).expect("a TLS server's ca.pem")
    }

    /// `redis://127.0.0.1:PORT/0` (`rediss://` for a TLS server).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://{}/0", self.addr)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Kills the server (SIGKILL: no shutdown save, like a crash) and waits
    /// for it; calls fail until [`RedisServer::restart`].
    pub fn kill(&mut self) {
        if let Some(mut peer) = self.peer.take() {
            peer.signal("KILL");
            let _ = peer.wait_exit(Duration::from_secs(10));
        }
    }

    /// Starts the server (again, after [`RedisServer::kill`]) on the same
    /// port and directory, and waits until it answers `PING` (it has
    /// loaded its append-only file).
    ///
    /// # Panics
    ///
    /// If it does not come up within 20 s.
    pub fn restart(&mut self) {
        self.kill();
        let program = require("redis-server", "redis-server");
        let began = Instant::now();
        let d = self.dir.path();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("stdout.log"))
            .expect("redis log");
        let mut command = Command::new(program);
        let port = self.addr.port().to_string();
        if self.tls {
            command
                .args(["--port", "0", "--tls-port", &port])
                .args([
                    "--tls-cert-file",
                    "server.pem",
                    "--tls-key-file",
                    "server.key",
                ])
                .args(["--tls-ca-cert-file", "ca.pem", "--tls-auth-clients", "no"]);
        } else {
            command.args(["--port", &port]);
        }
        command
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "yes"])
            .args(["--appendfsync", "always"])
            .arg("--dir")
            .arg(d)
            .current_dir(d)
            .stdout(log)
            .stderr(Stdio::null());
        let peer = Peer::spawn(command, self.addr, "redis-server");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.pong() {
            assert!(
                Instant::now() < deadline,
                "redis-server on {} did not answer PING within 20s; its log:\n{}",
                self.addr,
                self.log()
            );
            sleep(Duration::from_millis(20));
        }
        self.peer = Some(peer);
        eprintln!(
            "test-peers: redis-server on {} answered PING {:?} after its start",
            self.addr,
            began.elapsed()
        );
    }

    /// The server's log (for failure messages).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default()
    }
}

impl RedisServer {
    /// Whether the server answers `PING` with `PONG` (not `LOADING`).
    fn pong(&self) -> bool {
        if !self.tls {
            return pong(self.addr);
        }
        let cli = require("redis-cli", "redis-tools");
        Command::new(cli)
            .args(["--tls", "--cacert", "ca.pem", "-h", "127.0.0.1"])
            .args(["-p", &self.addr.port().to_string(), "PING"])
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .is_ok_and(|out| out.stdout.starts_with(b"PONG"))
    }
}

/// Whether the server at `addr` answers `PING` with `+PONG` (not `-LOADING`).
fn pong(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut answer = [0u8; 7];
    stream.read_exact(&mut answer).is_ok() && &answer == b"+PONG\r\n"
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

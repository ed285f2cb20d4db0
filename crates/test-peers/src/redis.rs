//! redis-server on a free port of loopback, persisting to a scratch
//! directory with `appendonly yes` and `appendfsync always` (a reply means
//! fsync'd, as slimta's Redis queue requires), no RDB snapshots. It can be
//! killed and started again on the same port and directory, to test that
//! acknowledged data survives a Redis restart.

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
        };
        server.restart();
        server
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
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
        command
            .args(["--port", &self.addr.port().to_string()])
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
        while !pong(self.addr) {
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

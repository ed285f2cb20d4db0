//! dnsmasq as a private DNS server with fixed records (MX, A, ...).

use std::net::SocketAddr;
use std::process::{Command, Stdio};

use crate::{Peer, free_port, require};

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
    /// `"--host-record=mx1.example.test,127.0.0.2"`.
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

//! aiosmtpd: a Python SMTP server with STARTTLS, implicit TLS and AUTH,
//! for the relay's client-side TLS and AUTH tests.

use std::fs;
use std::net::SocketAddr;
use std::process::Command;

use crate::{Peer, free_port, python_with};

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

//! Starts the built `slimta` binary with a config and talks raw SMTP to it.

#![allow(dead_code, unreachable_pub, unused_imports)]

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

pub use test_peers::{Peer, SmtpSink, crlf_to_lf, free_port};

use crate::common::config;

/// A running `slimta --config FILE`, killed on drop.
pub struct Slimta {
    pub peer: Peer,
    pub dir: tempfile::TempDir,
}

impl Slimta {
    /// Writes `config` (with `{port}` replaced by a free port) and starts
    /// the binary on it, waiting until it listens.
    pub fn start(config: &str) -> Self {
        let port = free_port();
        let dir = tempfile::Builder::new()
            .prefix("slimta")
            .tempdir()
            .expect("tempdir");
        let config = config
            .replace("{port}", &port.to_string())
            .replace("{dir}", &dir.path().display().to_string());
        let path = dir.path().join("slimta.toml");
        fs::write(&path, config).expect("write config");
        let log = fs::File::create(dir.path().join("slimta.log")).expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_slimta"));
        command
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().expect("dup"))
            .stderr(log);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let peer = Peer::spawn(command, addr, "slimta");
        Self { peer, dir }
    }

    /// The SMTP address.
    pub fn addr(&self) -> SocketAddr {
        self.peer.addr
    }

    /// What the process logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("slimta.log")).unwrap_or_default()
    }

    /// The resident set size of the process in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.peer.pid())
    }

    /// The config directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// VmRSS of a process in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A config: SMTP edge on `{port}`, memory queue, static relay to `sink`.
pub fn relay_config(sink: SocketAddr, edge_extra: &str) -> String {
    [
        config::process("mx.example.test", "log_level = \"info\""),
        config::smtp_edge(
            "\"example.test\"",
            &format!("reverse_dns = false\n{edge_extra}"),
        ),
        config::memory_queue(""),
        config::static_relay(sink, ""),
    ]
    .concat()
}

/// A raw SMTP client that reads whole (multi-line) replies.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Reads one complete reply (all its lines), as text with CRLF kept.
    pub fn reply(&mut self) -> String {
        loop {
            if let Some(end) = complete_reply(&self.buf) {
                let reply: Vec<u8> = self.buf.drain(..end).collect();
                return String::from_utf8_lossy(&reply).into_owned();
            }
            let mut chunk = [0u8; 8192];
            let n = self.stream.read(&mut chunk).expect("read reply");
            assert!(
                n > 0,
                "connection closed while waiting for a reply; had {:?}",
                String::from_utf8_lossy(&self.buf)
            );
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads a reply and checks that it starts with `prefix`.
    pub fn expect(&mut self, prefix: &str) -> String {
        let reply = self.reply();
        assert!(
            reply.starts_with(prefix),
            "expected {prefix:?}, got {reply:?}"
        );
        reply
    }

    /// Sends a command line and expects a reply prefix.
    pub fn cmd(&mut self, line: &str, prefix: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.expect(prefix)
    }

    /// Whether the server closed the connection (reads until EOF or error).
    pub fn closed(&mut self) -> bool {
        let mut chunk = [0u8; 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

/// The length of the first complete reply in `buf`, if there is one.
fn complete_reply(buf: &[u8]) -> Option<usize> {
    let mut start = 0;
    while let Some(nl) = buf[start..].windows(2).position(|w| w == b"\r\n") {
        let line = &buf[start..start + nl];
        let end = start + nl + 2;
        if line.len() < 4 || line[3] == b' ' {
            return Some(end);
        }
        start = end;
    }
    None
}

/// Runs a Python 3 script and returns its stdout (panics on failure).
pub fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new(test_peers::require("python3", "python3"))
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "python failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts that `delivered` (as dumped by smtp-sink, LF line ends) is `sent`
/// (CRLF line ends) with at most trace/header fields added on top by the MTA.
pub fn assert_delivered_as_sent(delivered: &[u8], sent: &[u8]) {
    let sent = crlf_to_lf(sent);
    assert!(
        delivered.ends_with(&sent),
        "delivered content does not end with the sent content:\n--- delivered\n{}\n--- sent\n{}",
        String::from_utf8_lossy(delivered),
        String::from_utf8_lossy(&sent)
    );
    let added = String::from_utf8_lossy(&delivered[..delivered.len() - sent.len()]).into_owned();
    for line in added.lines() {
        let ok = line.starts_with(' ')
            || line.starts_with('\t')
            || ["Received:", "Date:", "Message-Id:", "Message-ID:"]
                .iter()
                .any(|h| line.starts_with(h));
        assert!(ok, "unexpected line added by the MTA: {line:?}");
    }
}

/// The path of a test program, or a panic naming its package.
pub fn program(name: &str, package: &str) -> PathBuf {
    test_peers::require(name, package)
}

/// A CA, and a certificate for mx.example.test signed by it, written as PEM
/// files into `dir` (ca.pem, cert.pem, key.pem).
pub fn make_pki(dir: &Path, ca_name: &str) -> PathBuf {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, ca_name);
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    // The IP too, for clients (smtplib) that check the address they dialled.
    let mut leaf =
        rcgen::CertificateParams::new(vec!["mx.example.test".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, "mx.example.test");
    let cert_pem = leaf.signed_by(&key, &issuer).unwrap().pem();
    std::fs::write(dir.join("ca.pem"), ca_pem).unwrap();
    std::fs::write(dir.join("cert.pem"), cert_pem).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    dir.join("ca.pem")
}

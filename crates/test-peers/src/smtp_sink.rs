//! Postfix's `smtp-sink`: an SMTP server that accepts (or, with fault
//! flags, refuses) everything and can dump each message to a file.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::{Peer, free_port, read_files, require, set_mode};

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
        let addr: SocketAddr = format!("{ip}:{}", free_port())
            .parse()
            .expect("bad address");
        Self::start_at(addr, extra, dump)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;

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

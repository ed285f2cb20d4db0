//! Helpers for the queue's black-box tests: a daemon that can be killed
//! and restarted on the same spool, the `slimta queue` command, and a
//! scripted SMTP server for faults smtp-sink cannot make.

#![allow(dead_code, unreachable_pub, unused_imports)]

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub use test_peers::{Peer, SmtpSink, free_port};

/// A scratch directory with a config file; the daemon can be started,
/// killed and started again on it (same port, same spool).
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub peer: Option<Peer>,
    runs: usize,
}

impl Daemon {
    /// Writes `config` with `{port}` and `{dir}` replaced.
    pub fn new(config: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("slimta-q")
            .tempdir()
            .expect("tempdir");
        let port = free_port();
        let config = config
            .replace("{port}", &port.to_string())
            .replace("{dir}", &dir.path().display().to_string());
        fs::write(dir.path().join("slimta.toml"), config).expect("write config");
        Self {
            dir,
            port,
            peer: None,
            runs: 0,
        }
    }

    /// The config file.
    pub fn config(&self) -> PathBuf {
        self.dir.path().join("slimta.toml")
    }

    /// The SMTP address.
    pub fn addr(&self) -> SocketAddr {
        format!("127.0.0.1:{}", self.port).parse().expect("addr")
    }

    /// Starts the daemon (a new log file per run) and waits until it listens.
    pub fn start(&mut self) {
        self.runs += 1;
        let log = fs::File::create(self.dir.path().join(format!("run{}.log", self.runs)))
            .expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_slimta"));
        command
            .arg("--config")
            .arg(self.config())
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().expect("dup"))
            .stderr(log);
        self.peer = Some(Peer::spawn(command, self.addr(), "slimta"));
    }

    /// SIGKILL, and wait until it is gone.
    pub fn kill9(&mut self) {
        if let Some(mut peer) = self.peer.take() {
            peer.signal("KILL");
            assert!(peer.wait_exit(Duration::from_secs(20)).is_some());
        }
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut peer) = self.peer.take() {
            peer.signal("TERM");
            let status = peer.wait_exit(Duration::from_secs(30)).expect("exits");
            assert!(status.success(), "exit status {status}\n{}", self.log());
        }
    }

    /// Every run's log, in order.
    pub fn log(&self) -> String {
        (1..=self.runs)
            .map(|n| {
                fs::read_to_string(self.dir.path().join(format!("run{n}.log"))).unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n---- restart ----\n")
    }

    /// The last `lines` lines of the logs.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Waits until the logs contain `needle` (up to `timeout`).
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Runs `slimta queue ARGS --config FILE`.
    pub fn queue_cmd(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_slimta"))
            .arg("queue")
            .args(args)
            .arg("--config")
            .arg(self.config())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .expect("run slimta queue")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Sends one message over raw SMTP; returns the final reply line.
pub fn send(addr: SocketAddr, from: &str, to: &[&str], message: &str) -> String {
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut writer = stream;
    let mut reply = || {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("read");
            assert!(!line.is_empty(), "connection closed after {all:?}");
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] == b' ' {
                return all;
            }
        }
    };
    let mut expect = |w: &mut TcpStream, cmd: Option<String>, want: &str| {
        if let Some(cmd) = &cmd {
            w.write_all(cmd.as_bytes()).expect("write");
        }
        let r = reply();
        assert!(r.starts_with(want), "{cmd:?}: expected {want}, got {r:?}");
        r
    };
    expect(&mut writer, None, "220");
    expect(&mut writer, Some("EHLO client.test\r\n".into()), "250");
    expect(&mut writer, Some(format!("MAIL FROM:<{from}>\r\n")), "250");
    for r in to {
        expect(&mut writer, Some(format!("RCPT TO:<{r}>\r\n")), "250");
    }
    expect(&mut writer, Some("DATA\r\n".into()), "354");
    let body = message.replace("\r\n", "\n").replace('\n', "\r\n");
    let last = expect(&mut writer, Some(format!("{body}.\r\n")), "250");
    let _ = writer.write_all(b"QUIT\r\n");
    last
}

/// What a scripted server saw in one completed transaction.
#[derive(Clone, Debug)]
pub struct Transaction {
    pub sender: String,
    pub recipients: Vec<String>,
    pub data: String,
}

/// A loopback SMTP server driven by a script: `rcpt_reply(recipient, how
/// many times it was offered before)` decides each RCPT's reply. It
/// records every transaction that got its 250 after DATA.
pub struct ScriptedServer {
    pub addr: SocketAddr,
    pub transactions: Arc<Mutex<Vec<Transaction>>>,
}

type RcptScript = dyn Fn(&str, usize) -> String + Send + Sync;

impl ScriptedServer {
    pub fn start(rcpt_reply: impl Fn(&str, usize) -> String + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let transactions = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<RcptScript> = Arc::new(rcpt_reply);
        let offered = Arc::new(Mutex::new(std::collections::HashMap::<String, usize>::new()));
        let seen = transactions.clone();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (script, offered, seen) = (script.clone(), offered.clone(), seen.clone());
                thread::spawn(move || {
                    let _ = serve(stream, &*script, &offered, &seen);
                });
            }
        });
        Self { addr, transactions }
    }

    pub fn transactions(&self) -> Vec<Transaction> {
        self.transactions.lock().unwrap().clone()
    }
}

fn serve(
    stream: TcpStream,
    script: &RcptScript,
    offered: &Mutex<std::collections::HashMap<String, usize>>,
    seen: &Mutex<Vec<Transaction>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut w = stream;
    w.write_all(b"220 scripted.test ESMTP\r\n")?;
    let mut tx = Transaction {
        sender: String::new(),
        recipients: Vec::new(),
        data: String::new(),
    };
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let upper = line.to_ascii_uppercase();
        let arg = |prefix: &str| {
            line[prefix.len()..]
                .trim()
                .trim_start_matches('<')
                .split('>')
                .next()
                .unwrap_or_default()
                .to_string()
        };
        if upper.starts_with("EHLO") {
            w.write_all(b"250-scripted.test\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n")?;
        } else if upper.starts_with("HELO") {
            w.write_all(b"250 scripted.test\r\n")?;
        } else if upper.starts_with("MAIL FROM:") {
            tx.sender = arg("MAIL FROM:");
            tx.recipients.clear();
            w.write_all(b"250 2.1.0 Ok\r\n")?;
        } else if upper.starts_with("RCPT TO:") {
            let rcpt = arg("RCPT TO:");
            let n = {
                let mut o = offered.lock().unwrap();
                let n = o.entry(rcpt.clone()).or_insert(0);
                *n += 1;
                *n - 1
            };
            let reply = script(&rcpt, n);
            if reply.starts_with('2') {
                tx.recipients.push(rcpt);
            }
            w.write_all(format!("{reply}\r\n").as_bytes())?;
        } else if upper.starts_with("DATA") {
            if tx.recipients.is_empty() {
                w.write_all(b"554 5.5.1 No valid recipients\r\n")?;
                continue;
            }
            w.write_all(b"354 go ahead\r\n")?;
            let mut data = String::new();
            loop {
                let mut l = String::new();
                if reader.read_line(&mut l)? == 0 {
                    return Ok(());
                }
                if l == ".\r\n" {
                    break;
                }
                data.push_str(&l);
            }
            tx.data = data;
            seen.lock().unwrap().push(tx.clone());
            tx.recipients.clear();
            w.write_all(b"250 2.0.0 Ok: queued\r\n")?;
        } else if upper.starts_with("RSET") {
            tx.recipients.clear();
            w.write_all(b"250 2.0.0 Ok\r\n")?;
        } else if upper.starts_with("QUIT") {
            w.write_all(b"221 2.0.0 Bye\r\n")?;
            return Ok(());
        } else {
            w.write_all(b"250 2.0.0 Ok\r\n")?;
        }
    }
}

/// The `Message-Id` header value in a dumped message, if any.
pub fn message_id(content: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(content);
    text.lines().take_while(|l| !l.is_empty()).find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("message-id")
            .then(|| value.trim().to_string())
    })
}

/// A path under a directory, as a string.
pub fn path_str(dir: &Path, rest: &str) -> String {
    dir.join(rest).display().to_string()
}

/// The load client of the crash and shared-queue tests: `threads` threads
/// each send `per_thread` messages (4 KiB-ish, a unique Message-Id with
/// `tag` in it) to the ports in turn, moving to the next port after a
/// failure, and print `ACK <message-id>` after each 250, `ERR <repr>` after
/// each failure and `DONE` at the end. A thread gives up after
/// `max_failures` failures in a row.
const LOAD_CLIENT: &str = r#"
import smtplib, sys, threading, time, uuid
host = sys.argv[1]
ports = [int(p) for p in sys.argv[2].split(",")]
threads, per_thread, max_failures, tag = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
lock = threading.Lock()

def say(line):
    with lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

def worker(n):
    s, failures, sent = None, 0, 0
    port = n % len(ports)
    while sent < per_thread and failures < max_failures:
        mid = "<%s.%s%d@load.test>" % (uuid.uuid4().hex, tag, n)
        msg = ("From: a@x.test\r\nTo: b@example.test\r\nSubject: %s %d\r\n"
               "Message-Id: %s\r\n\r\n" % (tag, n, mid)) + ("line of body text\r\n" * 40)
        try:
            if s is None:
                s = smtplib.SMTP(host, ports[port], timeout=30)
            s.sendmail("a@x.test", ["b@example.test"], msg.encode())
            say("ACK " + mid)
            sent += 1
            failures = 0
        except Exception as e:
            say("ERR %r" % (e,))
            failures += 1
            try:
                s.close()
            except Exception:
                pass
            s = None
            port = (port + 1) % len(ports)
            time.sleep(0.05)
    try:
        s.quit()
    except Exception:
        pass

ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
for t in ts: t.start()
for t in ts: t.join()
say("DONE")
"#;

/// Starts [`LOAD_CLIENT`] against `ports` on 127.0.0.1, its output piped.
pub fn load_client(
    ports: &[u16],
    threads: usize,
    per_thread: usize,
    max_failures: usize,
    tag: &str,
) -> std::process::Child {
    let python = test_peers::require("python3", "python3");
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    Command::new(python)
        .arg("-c")
        .arg(LOAD_CLIENT)
        .arg("127.0.0.1")
        .arg(ports.join(","))
        .args([
            threads.to_string(),
            per_thread.to_string(),
            max_failures.to_string(),
            tag.to_owned(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3")
}

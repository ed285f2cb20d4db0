//! A peer started once per test binary (a server every test of the binary
//! shares, each in its own bucket, prefix or queue) and stopped when the
//! binary exits.
//!
//! Decision: a static cannot be dropped, so the process is not guarded by
//! [`crate::Peer`]'s `Drop`. Instead it runs under a small `sh` watchdog
//! that polls the test process and, once it is gone, stops the server and
//! deletes its scratch directory: no server outlives its tests, even after
//! a panic or a `kill -9` of the test binary.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// A server shared by the tests of one binary.
#[derive(Debug)]
pub struct SharedPeer {
    /// Where its main port listens.
    pub addr: SocketAddr,
    /// Its scratch directory (deleted when the test binary exits).
    pub dir: PathBuf,
    /// How long it took to become ready.
    pub started_in: Duration,
    /// The watchdog shell (never reaped: it ends with the binary).
    _watchdog: Child,
}

const WATCHDOG: &str = r#"
"$0" "$@" >"$TIE_DIR/log" 2>&1 &
child=$!
while kill -0 "$TIE_PID" 2>/dev/null && kill -0 "$child" 2>/dev/null; do sleep 0.5; done
kill "$child" 2>/dev/null
sleep 1
kill -9 "$child" 2>/dev/null
rm -rf "$TIE_DIR"
"#;

impl SharedPeer {
    /// Starts `program` with `args` and `envs` in a fresh scratch
    /// directory (`dir(&scratch)` gives the arguments that need it), then
    /// waits up to `within` for `ready(addr)`; prints how long it took.
    ///
    /// # Panics
    ///
    /// When it cannot be started or is not ready in time, with its log.
    pub fn start(
        what: &str,
        program: &Path,
        args: impl FnOnce(&Path) -> Vec<String>,
        envs: &[(&str, &str)],
        addr: SocketAddr,
        within: Duration,
        ready: impl Fn(SocketAddr) -> bool,
    ) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("peer-{what}-"))
            .tempdir()
            .expect("scratch directory")
            .keep();
        let started = Instant::now();
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(WATCHDOG)
            .arg(program)
            .args(args(&dir))
            .env("TIE_PID", std::process::id().to_string())
            .env("TIE_DIR", &dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in envs {
            command.env(k, v);
        }
        let mut watchdog = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what} ({program:?}): {e}"));
        loop {
            if ready(addr) {
                break;
            }
            let log = || fs::read_to_string(dir.join("log")).unwrap_or_default();
            if let Ok(Some(status)) = watchdog.try_wait() {
                panic!(
                    "{what} exited before it was ready ({status}; CI={}):\n{}",
                    std::env::var("CI").unwrap_or_default(),
                    log()
                );
            }
            assert!(
                started.elapsed() < within,
                "{what} was not ready on {addr} within {within:?} (CI={}):\n{}",
                std::env::var("CI").unwrap_or_default(),
                log()
            );
            sleep(Duration::from_millis(50));
        }
        let started_in = started.elapsed();
        eprintln!("test peer {what} ready on {addr} in {started_in:?}");
        Self {
            addr,
            dir,
            started_in,
            _watchdog: watchdog,
        }
    }
}

/// One HTTP/1.1 request to `addr` (no TLS, `Connection: close`): the
/// status code and the body, or `None` if the server could not be reached.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<(u16, Vec<u8>)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    stream.write_all(body).ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let text = String::from_utf8_lossy(&response);
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let at = response.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    Some((status, response[at..].to_vec()))
}

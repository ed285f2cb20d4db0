//! rspamd 3.4 on free loopback ports, started once per test binary.
//!
//! rspamd takes about 9 s to load its rules, too long to pay per test, so
//! [`Rspamd::shared`] starts one instance the first time a test asks and
//! every later test of the same binary reuses it. A static is never dropped,
//! so the instance runs under a small shell watchdog that holds the read end
//! of a pipe whose write end this process keeps: when the test binary exits
//! (however it exits) the pipe closes, and the watchdog stops rspamd and the
//! private dnsmasq and removes the scratch directory.
//!
//! rspamd's DNS is pointed at that dnsmasq (which answers only `.test`
//! names and has no upstream), and the `fuzzy_check` module, whose servers
//! are resolved through the system resolver, is disabled: nothing a test
//! does leaves loopback. The configuration is the project's
//! `peer-configs/rspamd-override.d` with the ports made free ones, plus
//! `add_header = 3` so that a message merely missing Date and Message-Id
//! gets the "add header" action.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::{Dnsmasq, free_port, require, set_mode, user_ids};

/// How long rspamd may take to answer `/ping` (it takes about 9 s here).
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// The shared rspamd (see the module docs).
#[derive(Debug)]
pub struct Rspamd {
    /// The normal worker (`/checkv2`).
    addr: SocketAddr,
    /// The proxy in milter mode.
    milter_addr: SocketAddr,
    dir: std::path::PathBuf,
    _dns: Dnsmasq,
    _watchdog: Child,
    _watch_pipe: ChildStdin,
}

impl Rspamd {
    /// The instance of this test binary, started on first use (printing how
    /// long it took).
    ///
    /// # Panics
    ///
    /// If rspamd is not installed or does not answer `/ping` in time (under
    /// CI too: a peer that cannot start fails the test, it is never skipped).
    pub fn shared() -> &'static Self {
        static SHARED: OnceLock<Rspamd> = OnceLock::new();
        SHARED.get_or_init(Self::start)
    }

    fn start() -> Self {
        let program = require("rspamd", "rspamd");
        let began = Instant::now();
        let dns = Dnsmasq::start(&[]);
        let dir = tempfile::Builder::new()
            .prefix("rspamd")
            .tempdir()
            .expect("tempdir")
            .keep();
        set_mode(&dir, 0o755);
        let (uid, gid) = user_ids("_rspamd");
        let (normal, controller, proxy) = (free_port(), free_port(), free_port());
        write_config(&dir, dns.addr(), normal, controller, proxy);
        for sub in ["etc", "etc/override.d", "etc/local.d", "db", "run", "log"] {
            std::os::unix::fs::chown(dir.join(sub), Some(uid), Some(gid)).expect("chown");
        }
        let mut watchdog = Command::new("sh");
        watchdog
            .arg("-c")
            .arg(
                r#"R=$1; shift
"$@" </dev/null >"$R/out.log" 2>&1 &
echo $! >"$R/rspamd.pid"
read _ignored
kill -TERM $! "$DNS_PID" 2>/dev/null
wait
rm -rf "$R""#,
            )
            .arg("rspamd-watchdog")
            .arg(&dir)
            .arg(program)
            .args(["-f", "-u", "_rspamd", "-g", "_rspamd"])
            .arg(format!("--var=LOCAL_CONFDIR={}/etc", dir.display()))
            .arg(format!("--var=DBDIR={}/db", dir.display()))
            .arg(format!("--var=RUNDIR={}/run", dir.display()))
            .arg(format!("--var=LOGDIR={}/log", dir.display()))
            .env("DNS_PID", dns.peer.pid().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = watchdog
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start rspamd ({watchdog:?}): {e}"));
        let watch_pipe = child.stdin.take().expect("piped stdin");
        let addr: SocketAddr = format!("127.0.0.1:{normal}").parse().expect("addr");
        let milter_addr: SocketAddr = format!("127.0.0.1:{proxy}").parse().expect("addr");
        let peer = Self {
            addr,
            milter_addr,
            dir,
            _dns: dns,
            _watchdog: child,
            _watch_pipe: watch_pipe,
        };
        peer.wait_ready(began);
        eprintln!(
            "test-peers: rspamd on {addr} started in {:?}",
            began.elapsed()
        );
        peer
    }

    fn wait_ready(&self, began: Instant) {
        let pid_file = self.dir.join("rspamd.pid");
        loop {
            if ping(self.addr) {
                return;
            }
            if let Ok(pid) = fs::read_to_string(&pid_file) {
                let pid = pid.trim();
                if !pid.is_empty() && !Path::new(&format!("/proc/{pid}")).exists() {
                    panic!("rspamd exited before answering /ping:\n{}", self.log());
                }
            }
            assert!(
                began.elapsed() < START_TIMEOUT,
                "rspamd did not answer /ping on {} within {START_TIMEOUT:?}:\n{}",
                self.addr,
                self.log()
            );
            sleep(Duration::from_millis(100));
        }
    }

    /// The normal worker's base URL (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The normal worker's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy's address (milter protocol).
    pub fn milter_addr(&self) -> SocketAddr {
        self.milter_addr
    }

    /// What rspamd printed (for failure messages).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("out.log")).unwrap_or_default()
    }
}

/// Whether rspamd answers `GET /ping` with `pong`.
fn ping(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /ping HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = Vec::new();
    let _ = stream.take(4096).read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).contains("pong")
}

/// `etc/override.d` (workers on the given ports, DNS at `dns`, warnings
/// only, `add_header` at score 3), `etc/local.d/fuzzy_check.conf`
/// (disabled) and `etc/local.d/milter_headers.conf` (X-Spamd-Bar and
/// X-Spam-Status in the answer's milter part).
fn write_config(dir: &Path, dns: SocketAddr, normal: u16, controller: u16, proxy: u16) {
    for sub in ["etc/override.d", "etc/local.d", "db", "run", "log"] {
        fs::create_dir_all(dir.join(sub)).expect("mkdir");
    }
    let files = [
        (
            "override.d/logging.inc",
            "type = \"console\";\nlevel = \"warning\";\n".to_owned(),
        ),
        (
            "override.d/options.inc",
            format!(
                "dns {{\n  nameserver = [\"{dns}\"];\n  timeout = 1s;\n  retransmits = 1;\n}}\n"
            ),
        ),
        (
            "override.d/worker-controller.inc",
            format!("bind_socket = \"127.0.0.1:{controller}\";\nsecure_ip = \"127.0.0.1\";\n"),
        ),
        (
            "override.d/worker-normal.inc",
            format!("bind_socket = \"127.0.0.1:{normal}\";\n"),
        ),
        (
            "override.d/worker-proxy.inc",
            format!(
                "bind_socket = \"127.0.0.1:{proxy}\";\nmilter = yes;\ntimeout = 120s;\n\
                 upstream \"local\" {{\n  default = yes;\n  self_scan = yes;\n}}\n"
            ),
        ),
        ("local.d/fuzzy_check.conf", "enabled = false;\n".to_owned()),
        // A message without Date and Message-Id scores 3.4: low enough to
        // pass, high enough for "add header" (6 by default), so the tests
        // see that action without a spam corpus.
        // (greylist, 4 by default, must stay below add_header.)
        (
            "override.d/actions.conf",
            "greylist = 2.5;\nadd_header = 3;\n".to_owned(),
        ),
        // Header changes in the milter part of the answer, one of which
        // (X-Spam-Status) the policy must not take over its own.
        (
            "local.d/milter_headers.conf",
            "use = [\"x-spamd-bar\", \"x-spam-status\"];\nskip_local = false;\n".to_owned(),
        ),
    ];
    for (name, text) in files {
        let path = dir.join("etc").join(name);
        fs::write(&path, text).expect("write rspamd config");
        set_mode(&path, 0o644);
    }
}

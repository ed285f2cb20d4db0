//! OpenStack Swift 2.30 as a one-node all-in-one (proxy with tempauth,
//! account, container and object servers, memcached for the tokens) on
//! free loopback ports, started once per test binary.
//!
//! Swift takes 10-20 s to come up, too long to pay per test, so
//! [`Swift::shared`] starts one instance the first time a test asks and
//! every later test of the same binary reuses it (tests keep apart by
//! container or object prefix). It runs under the watchdog of
//! `watchdog.rs`, which stops it when the test binary exits.
//!
//! Everything lives in a scratch directory: the configuration (written
//! here, with the free ports), the rings (built with `swift-ring-builder`,
//! one device, one replica), the device `node/sdb1` (`mount_check =
//! false`) and the logs. The proxy's memcache client gets room for the
//! tests' bursts: Swift's defaults (2 connections, a 1 s pool timeout,
//! memcached ignored for 60 s after 10 errors) turn 200 concurrent requests
//! on a loaded machine into a minute of `503` from tempauth. One tempauth user, `test:tester` with key
//! `testing`, is an admin of the account `AUTH_test`.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::watchdog::Watchdog;
use crate::{free_port, http_exchange as http, require, user_ids};

/// How long Swift may take to answer a request end to end (it takes
/// 10-20 s here).
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// The shared Swift (see the module docs).
#[derive(Debug)]
pub struct Swift {
    proxy: SocketAddr,
    memcached: SocketAddr,
    dir: PathBuf,
    watchdog: Mutex<Watchdog>,
}

impl Swift {
    /// The tempauth user (`account:user`).
    pub const USER: &'static str = "test:tester";
    /// Its key.
    pub const KEY: &'static str = "testing";

    /// The instance of this test binary, started on first use (printing how
    /// long it took).
    ///
    /// # Panics
    ///
    /// If Swift is not installed or does not come up in time (under CI too:
    /// a peer that cannot start fails the test, it is never skipped).
    pub fn shared() -> &'static Self {
        static SHARED: OnceLock<Swift> = OnceLock::new();
        SHARED.get_or_init(Self::start)
    }

    fn start() -> Self {
        let proxy_server = require("swift-proxy-server", "swift-proxy");
        let servers = [
            ("account", require("swift-account-server", "swift-account")),
            (
                "container",
                require("swift-container-server", "swift-container"),
            ),
            ("object", require("swift-object-server", "swift-object")),
        ];
        let ring_builder = require("swift-ring-builder", "swift");
        let memcached = require("memcached", "memcached");
        let began = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("swift")
            .tempdir()
            .expect("tempdir")
            .keep();
        let ports = Ports {
            proxy: free_port(),
            account: free_port(),
            container: free_port(),
            object: free_port(),
            memcached: free_port(),
        };
        let user = write_config(&dir, &ports);
        build_rings(&ring_builder, &dir, &ports);
        if user == "swift" {
            let (uid, gid) = user_ids("swift");
            chown_tree(&dir, uid, gid);
        }
        let conf = |name: &str| dir.join("etc").join(format!("{name}-server.conf"));
        let mut commands = vec![(
            vec![
                memcached.display().to_string(),
                "-l".into(),
                "127.0.0.1".into(),
                "-p".into(),
                ports.memcached.to_string(),
                "-U".into(),
                "0".into(),
                "-u".into(),
                "nobody".into(),
            ],
            "memcached.log",
        )];
        for (name, program) in &servers {
            commands.push((
                vec![
                    program.display().to_string(),
                    conf(name).display().to_string(),
                ],
                match *name {
                    "account" => "account.log",
                    "container" => "container.log",
                    _ => "object.log",
                },
            ));
        }
        commands.push((
            vec![
                proxy_server.display().to_string(),
                conf("proxy").display().to_string(),
            ],
            "proxy.log",
        ));
        let watchdog = Watchdog::start(&dir, "swift", &commands);
        let addr = |port: u16| -> SocketAddr { format!("127.0.0.1:{port}").parse().expect("addr") };
        let swift = Self {
            proxy: addr(ports.proxy),
            memcached: addr(ports.memcached),
            dir,
            watchdog: Mutex::new(watchdog),
        };
        swift.wait_ready(began);
        // Straight to stderr, not eprintln!: the test harness captures
        // that, and the start-up time is worth seeing in every run.
        let _ = writeln!(
            std::io::stderr(),
            "test-peers: swift on {} started in {:?}",
            swift.proxy,
            began.elapsed()
        );
        swift
    }

    fn wait_ready(&self, began: Instant) {
        loop {
            if self.answers() {
                return;
            }
            let alive = self
                .watchdog
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .all_alive(&self.dir);
            assert!(
                alive,
                "a swift process exited while starting:\n{}",
                self.log()
            );
            assert!(
                began.elapsed() < START_TIMEOUT,
                "swift did not answer on {} within {START_TIMEOUT:?}:\n{}",
                self.proxy,
                self.log()
            );
            sleep(Duration::from_millis(200));
        }
    }

    /// Whether a token can be had and a container made with it: the proxy,
    /// tempauth, memcached and the account and container servers all work.
    fn answers(&self) -> bool {
        let Some(auth) = http(
            self.proxy,
            &format!(
                "GET /auth/v1.0 HTTP/1.0\r\nX-Auth-User: {}\r\nX-Auth-Key: {}\r\n\r\n",
                Self::USER,
                Self::KEY
            ),
        ) else {
            return false;
        };
        let header = |name: &str| {
            auth.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
        };
        let (Some(url), Some(token)) = (header("X-Storage-Url"), header("X-Auth-Token")) else {
            return false;
        };
        let Some(path) = url
            .split_once("://")
            .and_then(|(_, rest)| rest.find('/').map(|i| rest[i..].to_owned()))
        else {
            return false;
        };
        http(
            self.proxy,
            &format!(
                "PUT {path}/readiness-probe HTTP/1.0\r\nX-Auth-Token: {token}\r\n\
                 Content-Length: 0\r\n\r\n"
            ),
        )
        .is_some_and(|answer| {
            answer.starts_with("HTTP/1.1 201") || answer.starts_with("HTTP/1.1 202")
        })
    }

    /// The tempauth (v1) auth URL, `http://127.0.0.1:PORT/auth/v1.0`.
    pub fn auth_url(&self) -> String {
        format!("http://{}/auth/v1.0", self.proxy)
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.proxy
    }

    /// Forgets every token handed out (memcached's `flush_all`): the next
    /// request with an old token is answered `401`.
    ///
    /// # Panics
    ///
    /// When memcached does not acknowledge.
    pub fn forget_tokens(&self) {
        let mut stream = TcpStream::connect_timeout(&self.memcached, Duration::from_secs(2))
            .expect("connect to swift's memcached");
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        stream.write_all(b"flush_all\r\n").expect("flush_all");
        let mut answer = [0u8; 4];
        stream.read_exact(&mut answer).expect("flush_all answer");
        assert_eq!(&answer, b"OK\r\n", "memcached flush_all");
    }

    /// What the Swift processes printed (for failure messages).
    pub fn log(&self) -> String {
        let mut all = String::new();
        for name in ["memcached", "account", "container", "object", "proxy"] {
            let text = fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            all.push_str(&format!("--- {name}.log\n"));
            for line in tail.iter().rev() {
                all.push_str(line);
                all.push('\n');
            }
        }
        all
    }
}

struct Ports {
    proxy: u16,
    account: u16,
    container: u16,
    object: u16,
    memcached: u16,
}

/// Whether this process runs as root (the owner of `/proc/self`).
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Writes `etc/` (swift.conf and the four server configs); the user the
/// servers run as (`swift` as root, else whoever runs the tests).
fn write_config(dir: &Path, ports: &Ports) -> String {
    fs::create_dir_all(dir.join("etc")).expect("mkdir etc");
    fs::create_dir_all(dir.join("node/sdb1")).expect("mkdir node/sdb1");
    let user = if is_root() {
        "swift".to_owned()
    } else {
        std::env::var("USER").unwrap_or_else(|_| "nobody".to_owned())
    };
    let etc = dir.join("etc");
    let common = |port: u16, name: &str| {
        format!(
            "[DEFAULT]\ndevices = {node}\nmount_check = false\nbind_ip = 127.0.0.1\n\
             bind_port = {port}\nworkers = 1\nuser = {user}\nswift_dir = {etc}\n\
             log_name = {name}\n\n[pipeline:main]\npipeline = {name}-server\n\n\
             [app:{name}-server]\nuse = egg:swift#{name}\n",
            node = dir.join("node").display(),
            etc = etc.display(),
        )
    };
    let files = [
        (
            "swift.conf",
            "[swift-hash]\nswift_hash_path_suffix = slimtatest\n\
             swift_hash_path_prefix = slimtatest\n\n[storage-policy:0]\n\
             name = Policy-0\ndefault = yes\n"
                .to_owned(),
        ),
        ("account-server.conf", common(ports.account, "account")),
        (
            "container-server.conf",
            common(ports.container, "container"),
        ),
        ("object-server.conf", common(ports.object, "object")),
        (
            "proxy-server.conf",
            format!(
                "[DEFAULT]\nbind_ip = 127.0.0.1\nbind_port = {proxy}\nworkers = 1\n\
                 user = {user}\nswift_dir = {etc}\n\n[pipeline:main]\n\
                 pipeline = catch_errors healthcheck proxy-logging cache tempauth \
                 proxy-logging proxy-server\n\n[filter:catch_errors]\n\
                 use = egg:swift#catch_errors\n\n[filter:healthcheck]\n\
                 use = egg:swift#healthcheck\n\n[filter:proxy-logging]\n\
                 use = egg:swift#proxy_logging\n\n[app:proxy-server]\n\
                 use = egg:swift#proxy\naccount_autocreate = true\n\n[filter:cache]\n\
                 use = egg:swift#memcache\nmemcache_servers = 127.0.0.1:{memcached}\n\
                 memcache_max_connections = 64\nconnect_timeout = 2\npool_timeout = 10\n\
                 io_timeout = 5\nerror_suppression_limit = 100000\n\n\
                 [filter:tempauth]\nuse = egg:swift#tempauth\n\
                 user_test_tester = testing .admin\n",
                proxy = ports.proxy,
                memcached = ports.memcached,
                etc = etc.display(),
            ),
        ),
    ];
    for (name, text) in files {
        fs::write(etc.join(name), text).expect("write swift config");
    }
    user
}

/// One ring per server kind: 2^4 partitions, one replica, one device.
fn build_rings(ring_builder: &Path, dir: &Path, ports: &Ports) {
    let etc = dir.join("etc");
    for (kind, port) in [
        ("account", ports.account),
        ("container", ports.container),
        ("object", ports.object),
    ] {
        let builder = etc.join(format!("{kind}.builder"));
        for args in [
            vec!["create".to_owned(), "4".into(), "1".into(), "1".into()],
            vec![
                "add".to_owned(),
                format!("r1z1-127.0.0.1:{port}/sdb1"),
                "100".into(),
            ],
            vec!["rebalance".to_owned()],
        ] {
            let out = Command::new(ring_builder)
                .arg(&builder)
                .args(&args)
                .stdin(Stdio::null())
                .output()
                .expect("run swift-ring-builder");
            // `rebalance` exits 1 with a warning on a one-device ring that
            // it did rebalance; the ring file is what counts.
            assert!(
                out.status.success() || args[0] == "rebalance",
                "swift-ring-builder {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let ring = etc.join(format!("{kind}.ring.gz"));
        assert!(
            ring.is_file(),
            "swift-ring-builder wrote no {}",
            ring.display()
        );
    }
}

/// `chown -R` (the servers drop to the user `swift` and write under `dir`).
fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown");
    if path.is_dir() {
        for entry in fs::read_dir(path).expect("read_dir").flatten() {
            chown_tree(&entry.path(), uid, gid);
        }
    }
}

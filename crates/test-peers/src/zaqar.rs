//! OpenStack Zaqar 23 (Cloud Queues' open implementation) with its Redis
//! message store, on free loopback ports, started once per test binary.
//!
//! Zaqar comes only from PyPI here (`zaqar==23.0.1` and `redis`, in the
//! virtualenv `target/test-venv-zaqar`): Debian's package lacks the Lua
//! scripts of its Redis driver. Its own redis-server (no persistence) and
//! an sqlite management store live in a scratch directory with the
//! configuration; no authentication (`auth_strategy` empty), so requests
//! carry only `Client-ID` and `X-Project-ID`. It starts in about a second,
//! but [`Zaqar::shared`] starts one per test binary all the same (tests
//! keep apart by queue name) under the watchdog of `watchdog.rs`.
//!
//! The console scripts (`zaqar-server`, `zaqar-sql-db-manage`) are run
//! through the venv's interpreter (`python -c`), because a virtualenv
//! built aside and renamed into place keeps a working `bin/python` but not
//! working script shebangs.

use std::fs;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::watchdog::Watchdog;
use crate::{free_port, http_exchange, python_venv, require};

/// How long Zaqar may take to answer (about 1 s here).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The shared Zaqar (see the module docs).
#[derive(Debug)]
pub struct Zaqar {
    addr: SocketAddr,
    dir: PathBuf,
    watchdog: Mutex<Watchdog>,
}

impl Zaqar {
    /// The instance of this test binary, started on first use (printing how
    /// long it took).
    ///
    /// # Panics
    ///
    /// If redis-server or the Zaqar virtualenv is missing, or Zaqar does not
    /// answer in time (under CI too: never a silent skip).
    pub fn shared() -> &'static Self {
        static SHARED: OnceLock<Zaqar> = OnceLock::new();
        SHARED.get_or_init(Self::start)
    }

    fn start() -> Self {
        let redis = require("redis-server", "redis-server");
        let python = python_venv("zaqar", &["zaqar==23.0.1", "redis"], "zaqar, redis");
        let began = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("zaqar")
            .tempdir()
            .expect("tempdir")
            .keep();
        let (port, redis_port) = (free_port(), free_port());
        let conf = dir.join("zaqar.conf");
        fs::write(
            &conf,
            format!(
                "[DEFAULT]\nauth_strategy =\nunreliable = true\npooling = false\ndebug = false\n\n\
                 [drivers]\ntransport = wsgi\nmessage_store = redis\n\
                 management_store = sqlalchemy\n\n[drivers:transport:wsgi]\n\
                 bind = 127.0.0.1\nport = {port}\n\n[drivers:message_store:redis]\n\
                 uri = redis://127.0.0.1:{redis_port}\n\n\
                 [drivers:management_store:sqlalchemy]\nuri = sqlite:///{db}\n",
                db = dir.join("zaqar.db").display()
            ),
        )
        .expect("write zaqar.conf");
        // The schema of the management store. Its last migration is an
        // ALTER that sqlite does not speak; the tables Zaqar needs exist by
        // then, so its exit status is not checked (the server's readiness
        // is).
        let migrate = Command::new(&python)
            .arg("-c")
            .arg(
                "import sys\nfrom zaqar.storage.sqlalchemy.migration.cli import main\n\
                 sys.argv = ['zaqar-sql-db-manage', '--config-file', sys.argv[1], 'upgrade', 'head']\n\
                 sys.exit(main())",
            )
            .arg(&conf)
            .stdin(Stdio::null())
            .output()
            .expect("run zaqar-sql-db-manage");
        fs::write(
            dir.join("migrate.log"),
            [migrate.stdout, migrate.stderr].concat(),
        )
        .expect("write migrate.log");
        let commands = [
            (
                vec![
                    redis.display().to_string(),
                    "--port".into(),
                    redis_port.to_string(),
                    "--bind".into(),
                    "127.0.0.1".into(),
                    "--save".into(),
                    String::new(),
                    "--appendonly".into(),
                    "no".into(),
                    "--dir".into(),
                    dir.display().to_string(),
                ],
                "redis.log",
            ),
            (
                vec![
                    python.display().to_string(),
                    "-c".into(),
                    "import sys\nfrom zaqar.cmd.server import run\n\
                     sys.argv = ['zaqar-server', '--config-file', sys.argv[1]]\nsys.exit(run())"
                        .into(),
                    conf.display().to_string(),
                ],
                "zaqar.log",
            ),
        ];
        let watchdog = Watchdog::start(&dir, "zaqar", &commands);
        let zaqar = Self {
            addr: format!("127.0.0.1:{port}").parse().expect("addr"),
            dir,
            watchdog: Mutex::new(watchdog),
        };
        zaqar.wait_ready(began);
        // Straight to stderr, not eprintln!: the test harness captures
        // that, and the start-up time is worth seeing in every run.
        let _ = writeln!(
            std::io::stderr(),
            "test-peers: zaqar on {} started in {:?}",
            zaqar.addr,
            began.elapsed()
        );
        zaqar
    }

    fn wait_ready(&self, began: Instant) {
        loop {
            // A queue listing goes through the transport to the Redis store.
            let answer = http_exchange(
                self.addr,
                "GET /v2/queues HTTP/1.0\r\n\
                 Client-ID: 5b1e4c52-7f1a-4bd0-9c39-0d6c6f0b9a01\r\n\
                 X-Project-ID: readiness\r\n\r\n",
            );
            if answer
                .is_some_and(|a| a.starts_with("HTTP/1.0 200") || a.starts_with("HTTP/1.1 200"))
            {
                return;
            }
            let alive = self
                .watchdog
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .all_alive(&self.dir);
            assert!(
                alive,
                "zaqar or its redis exited while starting:\n{}",
                self.log()
            );
            assert!(
                began.elapsed() < START_TIMEOUT,
                "zaqar did not answer on {} within {START_TIMEOUT:?}:\n{}",
                self.addr,
                self.log()
            );
            sleep(Duration::from_millis(100));
        }
    }

    /// The base URL (`http://127.0.0.1:PORT`; the API is under `/v2`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What Zaqar, its redis and the migration printed (for failure
    /// messages).
    pub fn log(&self) -> String {
        let mut all = String::new();
        for name in ["migrate", "redis", "zaqar"] {
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

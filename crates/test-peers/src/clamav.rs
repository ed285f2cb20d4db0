//! ClamAV without network: clamd with a one-line signature database (the
//! EICAR test file's MD5) and clamav-milter in front of it, both on free
//! loopback ports, stopped when the handle is dropped.
//!
//! Both start in well under a second, so every test gets its own pair; no
//! freshclam, no downloaded databases: `test.hdb` holds
//! `44d88612fea8a8f36de82e1278abb02f:68:Eicar-Test-Signature`, which is
//! enough for clamd to refuse the EICAR string. The configuration is the
//! project's `peer-configs/clamd.conf` and `clamav-milter.conf` with the
//! ports made free ones and a `RejectMsg` (without one clamav-milter
//! refuses with a bare `SMFIR_REJECT`, so the MTA's default text; with it,
//! an `SMFIR_REPLYCODE` naming the virus); both daemons run as `clamav`,
//! which owns the scratch directory.

use std::fs;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Instant;

use crate::{Peer, free_port, require, set_mode, user_ids};

/// The EICAR test string, which every virus scanner flags.
pub const EICAR: &str = r"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

/// clamd and clamav-milter (see the module docs).
#[derive(Debug)]
pub struct ClamAv {
    milter: Peer,
    _clamd: Peer,
    dir: tempfile::TempDir,
}

impl ClamAv {
    /// Starts clamd, then clamav-milter, printing how long they took.
    ///
    /// # Panics
    ///
    /// If either program is missing or does not listen in time (under CI
    /// too: a peer that cannot start fails the test, it is never skipped).
    pub fn start() -> Self {
        let clamd = require("clamd", "clamav-daemon");
        let milter = require("clamav-milter", "clamav-milter");
        let began = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("clamav")
            .tempdir()
            .expect("tempdir");
        let d = dir.path();
        set_mode(d, 0o755);
        fs::create_dir(d.join("db")).expect("mkdir db");
        fs::write(
            d.join("db/test.hdb"),
            "44d88612fea8a8f36de82e1278abb02f:68:Eicar-Test-Signature\n",
        )
        .expect("write test.hdb");
        let (clamd_port, milter_port) = (free_port(), free_port());
        fs::write(
            d.join("clamd.conf"),
            format!(
                "DatabaseDirectory {d}/db\nTCPSocket {clamd_port}\nTCPAddr 127.0.0.1\n\
                 Foreground yes\nUser clamav\nLogFile {d}/clamd.log\nPidFile {d}/clamd.pid\n",
                d = d.display()
            ),
        )
        .expect("write clamd.conf");
        fs::write(
            d.join("clamav-milter.conf"),
            format!(
                "MilterSocket inet:{milter_port}@127.0.0.1\nClamdSocket tcp:127.0.0.1:{clamd_port}\n\
                 Foreground yes\nUser clamav\nOnInfected Reject\nAddHeader Replace\n\
                 RejectMsg \"Virus found: %v\"\n\
                 LogFile {d}/milter.log\nPidFile {d}/milter.pid\n",
                d = d.display()
            ),
        )
        .expect("write clamav-milter.conf");
        let (uid, gid) = user_ids("clamav");
        for path in [d.to_path_buf(), d.join("db"), d.join("db/test.hdb")] {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).expect("chown");
        }
        let addr = |port: u16| -> SocketAddr { format!("127.0.0.1:{port}").parse().expect("addr") };
        let mut command = Command::new(clamd);
        command.arg("-c").arg(d.join("clamd.conf"));
        let clamd = Peer::spawn(command, addr(clamd_port), "clamd");
        let mut command = Command::new(milter);
        command.arg("-c").arg(d.join("clamav-milter.conf"));
        let milter = Peer::spawn(command, addr(milter_port), "clamav-milter");
        eprintln!(
            "test-peers: clamd and clamav-milter on {} started in {:?}",
            milter.addr,
            began.elapsed()
        );
        Self {
            milter,
            _clamd: clamd,
            dir,
        }
    }

    /// clamav-milter's address.
    pub fn milter_addr(&self) -> SocketAddr {
        self.milter.addr
    }

    /// What clamd and clamav-milter logged (for failure messages).
    pub fn log(&self) -> String {
        ["clamd.log", "milter.log"]
            .iter()
            .map(|f| fs::read_to_string(self.dir.path().join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

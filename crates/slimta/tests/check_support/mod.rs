//! A real SMTP edge for the check tests: it runs the given validators and
//! records what it hands off, and a client that connects from a chosen
//! loopback address (all of 127.0.0.0/8 is local on Linux), so a DNS list
//! or SPF record can be about the client the edge sees.

#![allow(dead_code)] // each test file uses part of it

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use slimta::edge::{SmtpEdge, Validators, listener};
use slimta::{Envelope, Handoff, HandoffResult};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpSocket;
use tokio::sync::watch;

/// Keeps every envelope handed off.
#[derive(Clone, Default)]
pub(crate) struct Recorder(pub Arc<Mutex<Vec<Envelope>>>);

impl Handoff for Recorder {
    async fn handoff(&self, envelope: Envelope) -> Vec<HandoffResult> {
        let recipients = envelope.recipients.clone();
        let mut all = self.0.lock().unwrap();
        all.push(envelope);
        vec![HandoffResult {
            recipients,
            result: Ok(format!("id{}", all.len())),
        }]
    }
}

/// An edge serving on a loopback port until dropped.
pub(crate) struct Running {
    pub(crate) addr: SocketAddr,
    pub(crate) recorder: Recorder,
    _stop: watch::Sender<bool>,
}

pub(crate) async fn start(validators: impl Validators) -> Running {
    let listener = listener::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let recorder = Recorder::default();
    let edge = SmtpEdge::new("mx.test", recorder.clone()).validators(validators);
    let (stop, shutdown) = watch::channel(false);
    tokio::spawn(async move { edge.serve(listener, shutdown).await });
    Running {
        addr,
        recorder,
        _stop: stop,
    }
}

pub(crate) struct Client {
    read: BufReader<tokio::net::tcp::OwnedReadHalf>,
    write: tokio::net::tcp::OwnedWriteHalf,
}

impl Client {
    /// Connects to `addr` from `from` (a loopback address).
    pub(crate) async fn connect_from(addr: SocketAddr, from: &str) -> Self {
        let from: IpAddr = from.parse().unwrap();
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(from, 0)).unwrap();
        let (r, w) = socket.connect(addr).await.unwrap().into_split();
        Self {
            read: BufReader::new(r),
            write: w,
        }
    }

    /// One whole reply, lines joined.
    pub(crate) async fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            tokio::time::timeout(Duration::from_secs(20), self.read.read_line(&mut line))
                .await
                .expect("reply in time")
                .unwrap();
            assert!(!line.is_empty(), "closed; had {all:?}");
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    }

    /// Sends one command line and returns its reply.
    pub(crate) async fn command(&mut self, line: &str) -> String {
        self.write
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
        self.reply().await
    }
}

//! Helpers shared by the spam scanner tests (`policy_spamassassin.rs`,
//! `policy_rspamd.rs`): a real SMTP edge into a queue holding one policy
//! (memory storage, never started, so what was queued stays to be looked
//! at), a small SMTP client, and the messages scanners know.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::Duration;

use slimta::edge::{AcceptDomains, SmtpEdge, listener};
use slimta::policy::QueuePolicy;
use slimta::queue::{MemoryStorage, Queue, QueueStorage};
use slimta::relay::blackhole::BlackholeRelay;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// The GTUBE test string: every SpamAssassin and rspamd calls it spam.
pub const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

/// A message carrying GTUBE.
pub fn gtube_message() -> String {
    format!("From: a@x.test\r\nTo: b@example.test\r\nSubject: gtube\r\n\r\n{GTUBE}\r\n")
}

/// A plain message, with a forged verdict from the sender on top.
pub fn plain_message() -> String {
    "X-Spam-Status: NO, score=-100.0 required=5.0\r\nX-Spam-Flag: NO\r\n\
     From: a@x.test\r\nTo: b@example.test\r\nSubject: lunch\r\n\
     Date: Fri, 04 Dec 2026 12:00:00 +0000\r\nMessage-Id: <lunch@x.test>\r\n\r\n\
     Shall we have lunch on Friday at noon?\r\n"
        .to_owned()
}

/// An SMTP edge on a free port into a queue running `policy` before it
/// stores (nothing is delivered: the queue is not started).
pub struct Mta {
    pub addr: SocketAddr,
    pub storage: MemoryStorage,
    _stop: watch::Sender<bool>,
}

impl Mta {
    pub async fn start(policy: impl QueuePolicy) -> Self {
        let storage = MemoryStorage::new();
        let queue = Queue::new(storage.clone(), BlackholeRelay::new()).add_policy(policy);
        let listener = listener::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let edge = SmtpEdge::new("mx.test", queue).validators(AcceptDomains::new(["example.test"]));
        let (stop, shutdown) = watch::channel(false);
        tokio::spawn(async move { edge.serve(listener, shutdown).await });
        Self {
            addr,
            storage,
            _stop: stop,
        }
    }

    /// The messages queued so far.
    pub async fn queued(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (id, _) in self.storage.load().await.unwrap() {
            let stored = self.storage.get(&id).await.unwrap();
            out.push(String::from_utf8(stored.envelope.message.clone()).unwrap());
        }
        out
    }

    /// Sends `message` from a@x.test to b@example.test; the reply to the
    /// end of DATA.
    pub async fn send(&self, message: &str) -> String {
        let (r, mut w) = TcpStream::connect(self.addr).await.unwrap().into_split();
        let mut r = BufReader::new(r);
        let mut reply = read_reply(&mut r).await;
        assert!(reply.starts_with("220"), "{reply}");
        for command in [
            "EHLO client.test\r\n",
            "MAIL FROM:<a@x.test>\r\n",
            "RCPT TO:<b@example.test>\r\n",
            "DATA\r\n",
        ] {
            w.write_all(command.as_bytes()).await.unwrap();
            reply = read_reply(&mut r).await;
            assert!(
                reply.starts_with('2') || reply.starts_with('3'),
                "{command:?} got {reply}"
            );
        }
        w.write_all(message.as_bytes()).await.unwrap();
        w.write_all(b".\r\n").await.unwrap();
        let end = read_reply(&mut r).await;
        w.write_all(b"QUIT\r\n").await.unwrap();
        end
    }
}

/// One whole reply (its last line), waiting long enough for a scan.
async fn read_reply(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> String {
    loop {
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(60), r.read_line(&mut line))
            .await
            .expect("reply in time")
            .unwrap();
        assert!(!line.is_empty(), "connection closed");
        if line.as_bytes().get(3) != Some(&b'-') {
            return line.trim_end().to_owned();
        }
    }
}

/// The value of the first header field `name` of `message`, unfolded.
pub fn header(message: &str, name: &str) -> Option<String> {
    let head = message.split("\r\n\r\n").next().unwrap_or("");
    let unfolded = head.replace("\r\n\t", "").replace("\r\n ", " ");
    unfolded.split("\r\n").find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
    })
}

/// A port on 127.0.0.1 where nothing listens.
pub fn closed_port() -> SocketAddr {
    format!("127.0.0.1:{}", test_peers::free_port())
        .parse()
        .unwrap()
}

/// A listener that takes connections (the kernel completes them) but never
/// reads or answers; keep it alive for the test.
pub fn silent_listener() -> std::net::TcpListener {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap()
}

//! The SMTP edge driver over real sockets: the state machine, validators,
//! hand-off, timeouts and shutdown, with a hand-off that records envelopes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use slimta::edge::{AcceptDomains, SmtpEdge, listener};
use slimta::{Envelope, Handoff, HandoffResult, Reply};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Envelope>>>, Option<Reply>);

impl Handoff for Recorder {
    async fn handoff(&self, envelope: Envelope) -> Vec<HandoffResult> {
        let recipients = envelope.recipients.clone();
        let result = match &self.1 {
            Some(reply) => Err(reply.clone()),
            None => {
                self.0.lock().unwrap().push(envelope);
                Ok(format!("id{}", self.0.lock().unwrap().len()))
            }
        };
        vec![HandoffResult { recipients, result }]
    }
}

struct Running {
    addr: std::net::SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(recorder: Recorder, timeout: Duration) -> Running {
    let listener = listener::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let edge = SmtpEdge::new("mx.test", recorder)
        .validators(AcceptDomains::new(["example.test"]))
        .command_timeout(timeout);
    let (stop, shutdown) = watch::channel(false);
    let task = tokio::spawn(async move { edge.serve(listener, shutdown).await });
    Running { addr, stop, task }
}

struct Client {
    read: BufReader<tokio::net::tcp::OwnedReadHalf>,
    write: tokio::net::tcp::OwnedWriteHalf,
}

impl Client {
    async fn connect(addr: std::net::SocketAddr) -> Self {
        let (r, w) = TcpStream::connect(addr).await.unwrap().into_split();
        Self {
            read: BufReader::new(r),
            write: w,
        }
    }

    async fn line(&mut self) -> String {
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(10), self.read.read_line(&mut line))
            .await
            .expect("reply in time")
            .unwrap();
        line
    }

    /// One whole reply, lines joined.
    async fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let line = self.line().await;
            assert!(!line.is_empty(), "closed; had {all:?}");
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.write.write_all(bytes).await.unwrap();
    }
}

#[tokio::test]
async fn a_pipelined_session_is_answered_in_one_flush_and_handed_off() {
    let recorder = Recorder::default();
    let running = start(recorder.clone(), Duration::from_secs(30)).await;
    let mut c = Client::connect(running.addr).await;
    assert_eq!(c.reply().await, "220 mx.test ESMTP slimta-rs\r\n");
    c.send(b"EHLO c.test\r\nMAIL FROM:<a@x.test> BODY=8BITMIME\r\nRCPT TO:<b@example.test>\r\nRCPT TO:<c@relay.test>\r\nDATA\r\n")
        .await;
    assert!(c.reply().await.starts_with("250-mx.test\r\n"));
    assert_eq!(c.reply().await, "250 2.1.0 Sender <a@x.test> ok\r\n");
    assert_eq!(
        c.reply().await,
        "250 2.1.5 Recipient <b@example.test> ok\r\n"
    );
    assert_eq!(
        c.reply().await,
        "550 5.7.1 <c@relay.test>: Relaying denied\r\n"
    );
    assert!(c.reply().await.starts_with("354 "));
    c.send(b"Subject: hi\r\n\r\n..dot\r\n\xff\r\n.\r\n").await;
    assert_eq!(c.reply().await, "250 2.6.0 Message queued as id1\r\n");
    c.send(b"QUIT\r\n").await;
    assert_eq!(c.reply().await, "221 2.0.0 Bye\r\n");
    let got = recorder.0.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].sender, "a@x.test");
    assert_eq!(got[0].recipients, vec!["b@example.test"]);
    assert_eq!(got[0].message, b"Subject: hi\r\n\r\n.dot\r\n\xff\r\n");
    assert_eq!(got[0].client.helo.as_deref(), Some("c.test"));
    assert_eq!(got[0].client.ip, Some("127.0.0.1".parse().unwrap()));
    assert_eq!(got[0].body, slimta::BodyType::EightBitMime);
    running.stop.send(true).unwrap();
    running.task.await.unwrap();
}

#[tokio::test]
async fn a_queue_failure_is_passed_to_the_client() {
    let recorder = Recorder(
        Arc::default(),
        Some(Reply::new(452, "4.3.1", "Insufficient system storage")),
    );
    let running = start(recorder.clone(), Duration::from_secs(30)).await;
    let mut c = Client::connect(running.addr).await;
    c.reply().await;
    c.send(b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<postmaster>\r\nDATA\r\n")
        .await;
    for _ in 0..4 {
        c.reply().await;
    }
    c.send(b"x\r\n.\r\n").await;
    assert_eq!(c.reply().await, "452 4.3.1 Insufficient system storage\r\n");
    assert!(recorder.0.lock().unwrap().is_empty());
}

#[tokio::test]
async fn idle_clients_time_out_and_shutdown_says_421() {
    let running = start(Recorder::default(), Duration::from_millis(300)).await;
    let mut idle = Client::connect(running.addr).await;
    idle.reply().await;
    assert_eq!(
        idle.reply().await,
        "421 4.4.2 mx.test Error: timeout exceeded\r\n"
    );
    assert_eq!(idle.line().await, "", "closed after the timeout");

    let running = start(Recorder::default(), Duration::from_secs(30)).await;
    let mut c = Client::connect(running.addr).await;
    c.reply().await;
    running.stop.send(true).unwrap();
    assert_eq!(
        c.reply().await,
        "421 4.3.2 mx.test Service shutting down\r\n"
    );
    tokio::time::timeout(Duration::from_secs(10), running.task)
        .await
        .expect("drained")
        .unwrap();
    assert!(
        TcpStream::connect(running.addr).await.is_err(),
        "still accepting after shutdown"
    );
}

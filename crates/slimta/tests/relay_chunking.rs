//! BDAT (RFC 3030) in the SMTP client, against our own SMTP edge (which
//! offers CHUNKING and PIPELINING) on loopback. A [`Wiretap`] between the
//! two keeps what the client sent, so the tests see that BDAT, not DATA,
//! carried the message, while the edge shows what arrived.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use slimta::edge::{SessionInfo, SmtpEdge, Validators};
use slimta::relay::smtp::{ClientOptions, StaticSmtpRelay};
use slimta::smtp::{MailParams, RcptParams};
use slimta::{Envelope, Handoff, HandoffResult, Relay, Reply};
use test_peers::Wiretap;
use tokio::net::TcpListener;

/// Keeps what the edge queues; refuses a message whose subject says so.
#[derive(Default)]
struct Queued(Mutex<Vec<Envelope>>);

impl Handoff for Queued {
    async fn handoff(&self, envelope: Envelope) -> Vec<HandoffResult> {
        let recipients = envelope.recipients.clone();
        let refuse = memchr::memmem::find(&envelope.message, b"Subject: refuse").is_some();
        self.0.lock().unwrap().push(envelope);
        let result = if refuse {
            Err(Reply::new(554, "5.6.0", "Content refused"))
        } else {
            Ok("Q1".into())
        };
        vec![HandoffResult { recipients, result }]
    }
}

/// Refuses recipients whose local part is `nobody`, and the sender
/// `blocked@x.test`.
struct NoNobody;

impl Validators for NoNobody {
    async fn mail(
        &self,
        reply: &mut Reply,
        _session: &SessionInfo,
        sender: &str,
        _params: &MailParams,
    ) {
        if sender == "blocked@x.test" {
            reply.set(550, "5.7.1", "Sender refused");
        }
    }

    async fn rcpt(
        &self,
        reply: &mut Reply,
        _session: &SessionInfo,
        recipient: &str,
        _params: &RcptParams,
    ) {
        if recipient.starts_with("nobody@") {
            reply.set(550, "5.1.1", "No such user");
        }
    }
}

/// Our edge on a free port, behind a wiretap.
async fn edge() -> (Wiretap, Arc<Queued>) {
    let queued = Arc::new(Queued::default());
    let edge = SmtpEdge::new("mx.example.test", queued.clone()).validators(NoNobody);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        edge.serve(listener, rx).await;
        drop(stop);
    });
    (Wiretap::start(addr), queued)
}

fn options() -> ClientOptions {
    ClientOptions::new()
        .ehlo_as("relay.test")
        .connect_timeout(Duration::from_secs(5))
        .command_timeout(Duration::from_secs(10))
}

fn relay_with(addr: SocketAddr, options: ClientOptions) -> StaticSmtpRelay {
    StaticSmtpRelay::new(addr.ip().to_string(), addr.port()).options(options)
}

fn envelope(recipients: &[&str], message: &[u8]) -> Envelope {
    Envelope::new(
        "sender@x.test",
        recipients.iter().map(|r| (*r).to_string()).collect(),
        message.to_vec(),
    )
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Lines that start with dots, a bare LF, a bare CR, 8-bit bytes and no
/// final line end: what arrives has CRLF line ends and nothing else changed
/// (no dot-stuffing to undo).
const AWKWARD: &[u8] =
    b"Subject: dots\r\n\r\n.\r\n..two\r\nbare\nlf\rcr\r\n\xc3\xa9t\xc3\xa9\r\n.end";
const AWKWARD_CRLF: &[u8] =
    b"Subject: dots\r\n\r\n.\r\n..two\r\nbare\r\nlf\r\ncr\r\n\xc3\xa9t\xc3\xa9\r\n.end\r\n";

#[tokio::test]
async fn the_message_goes_as_one_bdat_chunk_when_chunking_is_offered() {
    let (tap, queued) = edge().await;
    let relay = relay_with(
        tap.addr(),
        options().pool_size(1).idle_timeout(Duration::from_secs(30)),
    );
    for message in [&b"Subject: plain\r\n\r\nhello\r\n"[..], AWKWARD] {
        let delivery = relay
            .attempt(&envelope(&["a@y.test", "b@y.test"], message), 1)
            .await
            .expect("queued by our edge");
        assert_eq!(delivery.reply().code(), 250, "{:?}", delivery.reply());
        assert!(delivery.result_for(0).is_ok() && delivery.result_for(1).is_ok());
    }
    let got = queued.0.lock().unwrap().clone();
    assert_eq!(got.len(), 2);
    assert_eq!(text(&got[0].message), "Subject: plain\r\n\r\nhello\r\n");
    assert_eq!(text(&got[1].message), text(AWKWARD_CRLF));
    assert_eq!(got[1].recipients, ["a@y.test", "b@y.test"]);

    // One session (pooled); MAIL and both RCPTs in one write, then BDAT
    // with the exact chunk size, never DATA.
    let sent = tap.sent();
    assert_eq!(sent.len(), 1, "one pooled session");
    let sent = text(&sent[0]);
    assert!(
        sent.contains(
            "MAIL FROM:<sender@x.test> SIZE=25\r\nRCPT TO:<a@y.test>\r\nRCPT TO:<b@y.test>\r\nBDAT 25 LAST\r\nSubject: plain\r\n\r\nhello\r\n"
        ),
        "{sent}"
    );
    let chunk = format!("BDAT {} LAST\r\n{}", AWKWARD_CRLF.len(), text(AWKWARD_CRLF));
    assert!(sent.contains(&chunk), "{sent}");
    assert!(!sent.contains("DATA\r\n"), "{sent}");
}

#[tokio::test]
async fn chunking_off_uses_data() {
    let (tap, queued) = edge().await;
    let relay = relay_with(tap.addr(), options().chunking(false));
    relay
        .attempt(&envelope(&["a@y.test"], AWKWARD), 1)
        .await
        .expect("queued by our edge");
    assert_eq!(
        text(&queued.0.lock().unwrap()[0].message),
        text(AWKWARD_CRLF)
    );
    let sent = text(&tap.sent()[0]);
    assert!(sent.contains("\r\nDATA\r\n"), "{sent}");
    assert!(sent.contains("\r\n...two\r\n"), "dot-stuffed: {sent}");
    assert!(!sent.contains("BDAT"), "{sent}");
}

#[tokio::test]
async fn refusals_around_bdat_keep_their_stage_and_the_session() {
    let (tap, queued) = edge().await;
    let relay = relay_with(
        tap.addr(),
        options().pool_size(1).idle_timeout(Duration::from_secs(30)),
    );
    let message = b"Subject: hi\r\n\r\nbody\r\n";

    // One recipient refused: the other still gets the chunk.
    let d = relay
        .attempt(&envelope(&["nobody@y.test", "b@y.test"], message), 1)
        .await
        .expect("a per-recipient result");
    let refused = d.result_for(0).unwrap_err();
    assert!(refused.is_permanent());
    assert_eq!(refused.reply().code(), 550);
    assert!(d.result_for(1).is_ok());

    // Every recipient refused: no chunk is sent at all.
    let d = relay
        .attempt(&envelope(&["nobody@y.test"], message), 1)
        .await
        .expect("a per-recipient result");
    assert_eq!(d.result_for(0).unwrap_err().reply().code(), 550);

    // The sender refused: only the pipelined RCPT replies follow (there is
    // no BDAT in the batch to wait for).
    let mut blocked = envelope(&["b@y.test"], message);
    blocked.sender = "blocked@x.test".into();
    let e = relay.attempt(&blocked, 1).await.expect_err("MAIL refused");
    assert!(e.is_permanent());
    assert!(
        e.reply().to_string().contains("in reply to MAIL FROM"),
        "{e}"
    );

    // The final reply to BDAT LAST refuses the message: permanent, and
    // the error says it answered BDAT.
    let d = relay
        .attempt(&envelope(&["b@y.test"], b"Subject: refuse\r\n\r\nx\r\n"), 1)
        .await
        .expect("a per-recipient result");
    let e = d.result_for(0).unwrap_err();
    assert!(e.is_permanent());
    assert_eq!(e.reply().code(), 554);
    assert!(e.reply().to_string().contains("in reply to BDAT"), "{e}");

    // The session survived all of that: a last message on it.
    relay
        .attempt(&envelope(&["b@y.test"], message), 1)
        .await
        .expect("queued");
    let got = queued.0.lock().unwrap().clone();
    assert_eq!(
        got.len(),
        3,
        "the refused recipient's message, the refused one, the last"
    );
    assert_eq!(got[0].recipients, ["b@y.test"]);
    let sent = tap.sent();
    assert_eq!(sent.len(), 1, "one pooled session: {sent:?}");
    assert_eq!(
        text(&sent[0]).matches("BDAT ").count(),
        3,
        "{}",
        text(&sent[0])
    );
}

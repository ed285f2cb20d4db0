//! HttpRelay against a Python `http.server` (status and `X-Smtp-Reply`
//! handling, the request it sends, timeouts) and against our own HTTP edge
//! (the two must interoperate).
#![cfg(all(feature = "http-relay", feature = "http"))]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use slimta::edge::AcceptDomains;
use slimta::edge::http::HttpEdge;
use slimta::relay::http::HttpRelay;
use slimta::{Envelope, Handoff, HandoffResult, Relay, Reply};
use test_peers::{Peer, free_port, require};
use tokio::net::TcpListener;
use tokio::sync::watch;

const MESSAGE: &[u8] = b"From: sender@x.test\r\nSubject: http\r\n\r\nbody line\r\n";

fn envelope(sender: &str, recipients: &[&str]) -> Envelope {
    Envelope::new(
        sender,
        recipients.iter().map(|r| (*r).to_string()).collect(),
        MESSAGE.to_vec(),
    )
}

/// Answers by path: `/reply/CODE/STATUS` sends `X-Smtp-Reply: CODE; ...`
/// with that status, `/status/N` sends status N without the header,
/// `/slow` never answers in time. Each request is recorded in DIR/N.req
/// (headers) and DIR/N.body.
const SERVER: &str = r#"
import http.server, os, sys, time, itertools
DIR = sys.argv[2]
counter = itertools.count(1)
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        n = next(counter)
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with open(os.path.join(DIR, f"{n}.body"), "wb") as f:
            f.write(body)
        with open(os.path.join(DIR, f"{n}.req"), "w") as f:
            f.write(self.path + "\n")
            for k, v in self.headers.items():
                f.write(f"{k.lower()}: {v}\n")
        parts = self.path.strip("/").split("/")
        if parts[0] == "slow":
            time.sleep(30)
        if parts[0] == "reply":
            self.send_response(int(parts[2]))
            self.send_header("X-Smtp-Reply", f'{parts[1]}; message="{parts[1][0]}.6.0 from \\"python\\""')
        else:
            self.send_response(int(parts[1]))
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

struct PyServer {
    peer: Peer,
    dir: tempfile::TempDir,
}

impl PyServer {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("server.py");
        std::fs::write(&script, SERVER).unwrap();
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut command = Command::new(require("python3", "python3"));
        command.arg(&script).arg(port.to_string()).arg(dir.path());
        Self {
            peer: Peer::spawn(command, addr, "python http.server"),
            dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.peer.addr)
    }

    fn request(&self, n: usize) -> (Vec<String>, Vec<u8>) {
        let base = self.dir.path();
        let read = |p: &Path| std::fs::read(p).unwrap();
        let head = String::from_utf8(read(&base.join(format!("{n}.req")))).unwrap();
        (
            head.lines().map(String::from).collect(),
            read(&base.join(format!("{n}.body"))),
        )
    }
}

fn relay(url: &str) -> HttpRelay {
    HttpRelay::new(url)
        .unwrap()
        .ehlo_as("relay.test")
        .timeout(Duration::from_secs(20))
}

#[tokio::test]
async fn sends_the_envelope_in_headers_and_the_message_as_body() {
    let server = PyServer::start();
    let d = relay(&server.url("/reply/250/204"))
        .attempt(&envelope("sender@x.test", &["a@y.test", "b@y.test"]), 1)
        .await
        .expect("delivered");
    assert_eq!(d.reply().code(), 250);
    assert_eq!(d.reply().enhanced().unwrap().to_string(), "2.6.0");
    assert_eq!(d.reply().text(), "from \"python\"");
    assert!(d.result_for(1).is_ok());
    let (head, body) = server.request(1);
    assert_eq!(body, MESSAGE);
    let has = |line: &str| head.iter().any(|h| h == line);
    assert!(has("content-type: message/rfc822"), "{head:?}");
    assert!(has("x-envelope-sender: c2VuZGVyQHgudGVzdA=="), "{head:?}");
    assert!(has("x-envelope-recipient: YUB5LnRlc3Q="), "{head:?}");
    assert!(has("x-envelope-recipient: YkB5LnRlc3Q="), "{head:?}");
    assert!(has("x-ehlo: relay.test"), "{head:?}");
}

#[tokio::test]
async fn the_reply_header_decides_and_without_it_the_status() {
    let server = PyServer::start();
    let env = envelope("", &["a@y.test"]);
    let e = relay(&server.url("/reply/451/503"))
        .attempt(&env, 1)
        .await
        .unwrap_err();
    assert!(e.is_transient() && e.reply().code() == 451, "{e}");
    let e = relay(&server.url("/reply/550/500"))
        .attempt(&env, 1)
        .await
        .unwrap_err();
    assert!(e.is_permanent() && e.reply().code() == 550, "{e}");

    let d = relay(&server.url("/status/200"))
        .attempt(&env, 1)
        .await
        .expect("2xx");
    assert_eq!(d.reply().code(), 250);
    for (status, permanent) in [
        (400, true),
        (404, true),
        (500, false),
        (503, false),
        (302, false),
    ] {
        let e = relay(&server.url(&format!("/status/{status}")))
            .attempt(&env, 1)
            .await
            .unwrap_err();
        assert_eq!(e.is_permanent(), permanent, "{status}: {e}");
        assert!(e.reply().text().contains(&status.to_string()), "{e}");
    }
    // The null sender is an empty header value.
    let (head, _) = server.request(1);
    assert!(head.iter().any(|h| h == "x-envelope-sender: "), "{head:?}");
}

#[tokio::test]
async fn timeouts_and_refused_connections_are_transient() {
    let server = PyServer::start();
    let env = envelope("s@x.test", &["a@y.test"]);
    let e = relay(&server.url("/slow"))
        .timeout(Duration::from_secs(1))
        .attempt(&env, 1)
        .await
        .unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert_eq!(e.reply().enhanced().unwrap().to_string(), "4.4.2", "{e}");

    let closed = free_port();
    let e = relay(&format!("http://127.0.0.1:{closed}/"))
        .attempt(&env, 1)
        .await
        .unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert_eq!(e.reply().enhanced().unwrap().to_string(), "4.4.1", "{e}");
}

#[test]
fn a_bad_url_is_refused() {
    assert!(HttpRelay::new("not a url").is_err());
    assert!(HttpRelay::new("ftp://127.0.0.1/").is_err());
}

/// A queue for our edge that records what it got and answers `answer`.
struct TestQueue {
    answer: Result<String, Reply>,
    got: Mutex<Vec<Envelope>>,
}

impl Handoff for TestQueue {
    async fn handoff(&self, envelope: Envelope) -> Vec<HandoffResult> {
        let recipients = envelope.recipients.clone();
        self.got.lock().unwrap().push(envelope);
        vec![HandoffResult {
            recipients,
            result: self.answer.clone(),
        }]
    }
}

async fn our_edge(
    answer: Result<String, Reply>,
) -> (Arc<TestQueue>, SocketAddr, watch::Sender<bool>) {
    let queue = Arc::new(TestQueue {
        answer,
        got: Mutex::new(Vec::new()),
    });
    let edge = HttpEdge::new("mx.example.test", queue.clone())
        .accept_domains(AcceptDomains::new(["example.test"]));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = watch::channel(false);
    tokio::spawn(async move { edge.serve(listener, rx).await });
    (queue, addr, stop)
}

#[tokio::test]
async fn interoperates_with_our_http_edge() {
    let (queue, addr, _stop) = our_edge(Ok("Q1".into())).await;
    let url = format!("http://{addr}/messages/");
    let env = envelope("sender@x.test", &["a@example.test", "b@example.test"]);
    let d = relay(&url)
        .attempt(&env, 1)
        .await
        .expect("queued by our edge");
    assert_eq!(d.reply().code(), 250, "{:?}", d.reply());
    assert!(d.result_for(0).is_ok() && d.result_for(1).is_ok());
    let got = queue.got.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].sender, "sender@x.test");
    assert_eq!(got[0].recipients, ["a@example.test", "b@example.test"]);
    assert_eq!(got[0].message, MESSAGE);
    assert_eq!(got[0].client.helo.as_deref(), Some("relay.test"));

    // A recipient outside the edge's domains: its 550 is permanent here.
    let e = relay(&url)
        .attempt(&envelope("sender@x.test", &["x@elsewhere.test"]), 1)
        .await
        .unwrap_err();
    assert!(e.is_permanent() && e.reply().code() == 550, "{e}");

    let (_queue, addr, _stop2) = our_edge(Err(Reply::new(451, "4.3.0", "queue busy"))).await;
    let e = relay(&format!("http://{addr}/"))
        .attempt(&envelope("", &["a@example.test"]), 1)
        .await
        .unwrap_err();
    assert!(e.is_transient() && e.reply().code() == 451, "{e}");
    assert!(e.reply().text().contains("queue busy"), "{e}");
}

//! The HTTP edge driven by `curl`, a real HTTP client, over loopback:
//! status and `X-Smtp-Reply` mapping, the envelope handed to the queue,
//! limits, relay control, Basic auth and HTTPS (`curl --cacert` with a CA
//! made at test time).
#![cfg(feature = "http")]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use slimta::edge::AcceptDomains;
use slimta::edge::credentials::Credentials;
use slimta::edge::http::HttpEdge;
use slimta::edge::tls::{ReloadableTls, TlsConfig};
use slimta::{Envelope, Handoff, HandoffResult, Protocol, Reply};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A queue that records what it gets and answers with a fixed result.
struct TestQueue {
    answer: Result<String, Reply>,
    got: Mutex<Vec<Envelope>>,
}

impl TestQueue {
    fn new(answer: Result<String, Reply>) -> Arc<Self> {
        Arc::new(Self {
            answer,
            got: Mutex::new(Vec::new()),
        })
    }

    fn taken(&self) -> Vec<Envelope> {
        self.got.lock().unwrap().clone()
    }
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

struct Running {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("serve returns after shutdown")
            .unwrap();
    }
}

async fn start(edge: HttpEdge<Arc<TestQueue>>) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(async move { edge.serve(listener, rx).await });
    Running { addr, stop, task }
}

fn edge(queue: &Arc<TestQueue>) -> HttpEdge<Arc<TestQueue>> {
    HttpEdge::new("mx.example.test", queue.clone())
        .accept_domains(AcceptDomains::new(["example.test"]))
        .auth_failure_delay(Duration::ZERO)
}

/// What curl saw: the status and the response headers (names lowercased).
#[derive(Debug)]
struct CurlResult {
    status: u16,
    headers: Vec<(String, String)>,
}

impl CurlResult {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Runs curl with `args` (the URL among them) and parses `-D -`.
async fn curl(args: &[&str]) -> CurlResult {
    let program = test_peers::require("curl", "curl");
    let out = tokio::process::Command::new(program)
        .args([
            "-sS",
            "--http1.1",
            "-o",
            "/dev/null",
            "-D",
            "-",
            "--max-time",
            "20",
        ])
        .args(args)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl {args:?} failed: {}{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    // With `100 Continue` curl dumps two header blocks; the last is the answer.
    let block = text
        .split("\r\n\r\n")
        .filter(|b| !b.trim().is_empty())
        .last()
        .unwrap_or("");
    let mut lines = block.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    CurlResult { status, headers }
}

fn b64(s: &str) -> String {
    B64.encode(s)
}

fn message_file(dir: &Path, content: &[u8]) -> PathBuf {
    let path = dir.join("message.eml");
    std::fs::write(&path, content).unwrap();
    path
}

/// curl arguments for a submission of `file` with the given envelope.
fn post_args(url: &str, file: &Path, sender: Option<&str>, recipients: &[&str]) -> Vec<String> {
    let mut args = vec![
        url.to_string(),
        "-X".into(),
        "POST".into(),
        "-H".into(),
        "Content-Type: message/rfc822".into(),
        "--data-binary".into(),
        format!("@{}", file.display()),
    ];
    match sender {
        // curl's syntax for a header with an empty value.
        Some("") => args.extend(["-H".into(), "X-Envelope-Sender;".into()]),
        Some(sender) => args.extend(["-H".into(), format!("X-Envelope-Sender: {sender}")]),
        None => {}
    }
    for r in recipients {
        args.extend(["-H".into(), format!("X-Envelope-Recipient: {r}")]);
    }
    args
}

async fn curl_owned(args: &[String]) -> CurlResult {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    curl(&args).await
}

#[tokio::test]
async fn queued_message_gets_204_and_the_reply_header() {
    let dir = tempfile::tempdir().unwrap();
    let queue = TestQueue::new(Ok("Q123".into()));
    let running = start(edge(&queue)).await;
    let url = format!("http://{}/any/path", running.addr);
    // A Unix file: LF line ends become CRLF in the envelope.
    let file = message_file(dir.path(), b"From: a@x.test\nSubject: hi\n\nbody\n");
    let mut args = post_args(
        &url,
        &file,
        Some(&b64("a@x.test")),
        &[
            &b64("b@example.test"),
            &format!("{}, {}", b64("c@example.test"), b64("postmaster")),
        ],
    );
    args.extend(["-H".into(), "X-Ehlo: client.x.test".into()]);
    let got = curl_owned(&args).await;
    assert_eq!(got.status, 204, "{got:?}");
    assert_eq!(
        got.header("x-smtp-reply"),
        Some(r#"250; message="2.6.0 Message queued as Q123""#)
    );
    let taken = queue.taken();
    assert_eq!(taken.len(), 1);
    let envelope = &taken[0];
    assert_eq!(envelope.sender, "a@x.test");
    assert_eq!(
        envelope.recipients,
        ["b@example.test", "c@example.test", "postmaster"]
    );
    assert_eq!(
        envelope.message,
        b"From: a@x.test\r\nSubject: hi\r\n\r\nbody\r\n"
    );
    assert_eq!(envelope.client.protocol, Protocol::Http);
    assert_eq!(envelope.client.ip, Some("127.0.0.1".parse().unwrap()));
    assert_eq!(envelope.client.helo.as_deref(), Some("client.x.test"));
    assert_eq!(envelope.client.auth, None);
    assert_eq!(envelope.client.tls, None);

    // The null sender is an empty header value.
    let args = post_args(&url, &file, Some(""), &[&b64("b@example.test")]);
    assert_eq!(curl_owned(&args).await.status, 204);
    assert_eq!(queue.taken()[1].sender, "");
    running.stop().await;
}

#[tokio::test]
async fn queue_failures_map_to_503_and_500() {
    let dir = tempfile::tempdir().unwrap();
    let file = message_file(dir.path(), b"Subject: x\r\n\r\nx\r\n");
    let cases = [
        (
            Reply::new(452, "4.3.1", "Insufficient system storage"),
            503,
            r#"452; message="4.3.1 Insufficient system storage""#,
        ),
        (
            Reply::new(554, "5.6.0", "Message \"refused\""),
            500,
            r#"554; message="5.6.0 Message \"refused\"""#,
        ),
    ];
    for (reply, status, header) in cases {
        let queue = TestQueue::new(Err(reply));
        let running = start(edge(&queue)).await;
        let url = format!("http://{}/", running.addr);
        let args = post_args(
            &url,
            &file,
            Some(&b64("a@x.test")),
            &[&b64("b@example.test")],
        );
        let got = curl_owned(&args).await;
        assert_eq!(got.status, status, "{got:?}");
        assert_eq!(got.header("x-smtp-reply"), Some(header));
        assert_eq!(queue.taken().len(), 1);
        running.stop().await;
    }
}

#[tokio::test]
async fn wrong_method_type_and_headers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = message_file(dir.path(), b"Subject: x\r\n\r\nx\r\n");
    let queue = TestQueue::new(Ok("Q".into()));
    let running = start(edge(&queue)).await;
    let url = format!("http://{}/", running.addr);

    for method in ["GET", "PUT", "DELETE"] {
        let got = curl(&[&url, "-X", method]).await;
        assert_eq!(got.status, 405, "{method}");
        assert_eq!(got.header("allow"), Some("POST"));
    }
    let sender = format!("X-Envelope-Sender: {}", b64("a@x.test"));
    let rcpt = format!("X-Envelope-Recipient: {}", b64("b@example.test"));
    let data = format!("@{}", file.display());
    for content_type in ["text/plain", "message/rfc8222", "application/octet-stream"] {
        let ct = format!("Content-Type: {content_type}");
        let got = curl(&[
            &url,
            "-H",
            &ct,
            "-H",
            &sender,
            "-H",
            &rcpt,
            "--data-binary",
            &data,
        ])
        .await;
        assert_eq!(got.status, 415, "{content_type}");
    }
    // A parameter and another case are still message/rfc822.
    let ct = "Content-Type: Message/RFC822; charset=utf-8";
    let got = curl(&[
        &url,
        "-H",
        ct,
        "-H",
        &sender,
        "-H",
        &rcpt,
        "--data-binary",
        &data,
    ])
    .await;
    assert_eq!(got.status, 204);

    let good = b64("b@example.test");
    let cases: Vec<(Option<String>, Vec<String>, &str)> = vec![
        (
            None,
            vec![good.clone()],
            "501; message=\"5.5.4 X-Envelope-Sender header missing\"",
        ),
        (
            Some("!!notbase64".into()),
            vec![good.clone()],
            "501; message=\"5.5.4 X-Envelope-Sender is not base64 of UTF-8 text\"",
        ),
        (
            Some(b64("a b@x.test")),
            vec![good.clone()],
            "553; message=\"5.1.7 X-Envelope-Sender: bad sender address syntax\"",
        ),
        (
            Some(b64("a@x.test")),
            vec![],
            "501; message=\"5.5.4 X-Envelope-Recipient header missing\"",
        ),
        (
            Some(b64("a@x.test")),
            vec![format!("{good},@@@")],
            "501; message=\"5.5.4 X-Envelope-Recipient is not base64 of UTF-8 text\"",
        ),
        (
            Some(b64("a@x.test")),
            vec![b64("<b@example.test>")],
            "553; message=\"5.1.3 X-Envelope-Recipient: bad recipient address syntax\"",
        ),
        (
            Some(b64("a@x.test")),
            vec![b64("b@example.test\r\nRCPT TO:<c@evil.test>")],
            "553; message=\"5.1.3 X-Envelope-Recipient: bad recipient address syntax\"",
        ),
    ];
    for (sender, rcpts, reply) in cases {
        let rcpts: Vec<&str> = rcpts.iter().map(String::as_str).collect();
        let args = post_args(&url, &file, sender.as_deref(), &rcpts);
        let got = curl_owned(&args).await;
        assert_eq!(got.status, 400, "{sender:?} {rcpts:?}");
        assert_eq!(got.header("x-smtp-reply"), Some(reply));
    }
    assert_eq!(queue.taken().len(), 1, "only the good request was queued");
    running.stop().await;
}

#[tokio::test]
async fn bodies_over_max_size_get_413() {
    let dir = tempfile::tempdir().unwrap();
    let queue = TestQueue::new(Ok("Q".into()));
    let running = start(edge(&queue).max_size(1000)).await;
    let url = format!("http://{}/", running.addr);
    let exact = message_file(dir.path(), &vec![b'a'; 1000]);
    let args = post_args(
        &url,
        &exact,
        Some(&b64("a@x.test")),
        &[&b64("b@example.test")],
    );
    assert_eq!(curl_owned(&args).await.status, 204);

    let big = message_file(dir.path(), &vec![b'a'; 50_000]);
    let args = post_args(
        &url,
        &big,
        Some(&b64("a@x.test")),
        &[&b64("b@example.test")],
    );
    let got = curl_owned(&args).await;
    assert_eq!(got.status, 413);
    assert_eq!(
        got.header("x-smtp-reply"),
        Some(r#"552; message="5.3.4 Message exceeds the size limit of 1000 bytes""#)
    );
    // Chunked: no Content-Length to refuse early, the limit applies while
    // reading.
    let mut args = post_args(
        &url,
        &big,
        Some(&b64("a@x.test")),
        &[&b64("b@example.test")],
    );
    args.extend(["-H".into(), "Transfer-Encoding: chunked".into()]);
    assert_eq!(curl_owned(&args).await.status, 413);
    assert_eq!(queue.taken().len(), 1);
    running.stop().await;
}

#[tokio::test]
async fn relay_control_and_basic_auth() {
    let dir = tempfile::tempdir().unwrap();
    let file = message_file(dir.path(), b"Subject: x\r\n\r\nx\r\n");
    let queue = TestQueue::new(Ok("Q".into()));
    let running = start(edge(&queue)).await;
    let url = format!("http://{}/", running.addr);
    let args = post_args(
        &url,
        &file,
        Some(&b64("a@x.test")),
        &[&b64("b@example.test"), &b64("c@elsewhere.test")],
    );
    let got = curl_owned(&args).await;
    assert_eq!(got.status, 500);
    assert_eq!(
        got.header("x-smtp-reply"),
        Some(r#"550; message="5.7.1 <c@elsewhere.test>: Relaying denied""#)
    );
    assert!(queue.taken().is_empty());
    running.stop().await;

    let users = [("alice".to_string(), "{PLAIN}wonderland".to_string())].into();
    let running = start(edge(&queue).credentials(Credentials::from_map(users).unwrap())).await;
    let url = format!("http://{}/", running.addr);
    let args = post_args(
        &url,
        &file,
        Some(&b64("a@x.test")),
        &[&b64("c@elsewhere.test")],
    );
    for auth in [None, Some("alice:wrong"), Some("mallory:wonderland")] {
        let mut args = args.clone();
        if let Some(auth) = auth {
            args.extend(["-u".into(), auth.into()]);
        }
        let got = curl_owned(&args).await;
        assert_eq!(got.status, 401, "{auth:?}");
        assert_eq!(
            got.header("www-authenticate"),
            Some(r#"Basic realm="slimta""#)
        );
    }
    // Authenticated: any domain.
    let mut with_auth = args.clone();
    with_auth.extend(["-u".into(), "alice:wonderland".into()]);
    assert_eq!(curl_owned(&with_auth).await.status, 204);
    let taken = queue.taken();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].client.auth.as_deref(), Some("alice"));
    assert_eq!(taken[0].recipients, ["c@elsewhere.test"]);
    running.stop().await;
}

#[tokio::test]
async fn https_with_curl_cacert() {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "test CA");
    std::fs::write(
        dir.path().join("ca.pem"),
        ca.self_signed(&ca_key).unwrap().pem(),
    )
    .unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["mx.example.test".to_string()]).unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
    let tls = ReloadableTls::new(TlsConfig::new(
        dir.path().join("cert.pem"),
        dir.path().join("key.pem"),
    ))
    .unwrap();

    let file = message_file(dir.path(), b"Subject: x\r\n\r\nx\r\n");
    let queue = TestQueue::new(Ok("TLS1".into()));
    let running = start(edge(&queue).tls(tls)).await;
    let port = running.addr.port();
    let url = format!("https://mx.example.test:{port}/");
    let resolve = format!("mx.example.test:{port}:127.0.0.1");
    let cacert = dir.path().join("ca.pem").display().to_string();
    let mut args = post_args(
        &url,
        &file,
        Some(&b64("a@x.test")),
        &[&b64("b@example.test")],
    );
    args.extend([
        "--resolve".into(),
        resolve.clone(),
        "--cacert".into(),
        cacert,
    ]);
    let got = curl_owned(&args).await;
    assert_eq!(got.status, 204);
    assert_eq!(
        got.header("x-smtp-reply"),
        Some(r#"250; message="2.6.0 Message queued as TLS1""#)
    );
    let tls = queue.taken()[0].client.tls.clone().expect("TLS recorded");
    assert!(tls.protocol.starts_with("TLSv1."), "{tls:?}");
    assert!(!tls.cipher.is_empty());

    // Without the CA curl refuses the certificate; plain HTTP gets no answer.
    let program = test_peers::require("curl", "curl");
    let out = tokio::process::Command::new(&program)
        .args(["-sS", "--max-time", "10", "--resolve", &resolve, &url])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let plain = format!("http://127.0.0.1:{port}/");
    let out = tokio::process::Command::new(&program)
        .args(["-sS", "--max-time", "10", &plain])
        .output()
        .await
        .unwrap();
    assert!(
        !out.status.success(),
        "plain HTTP on the HTTPS port must fail"
    );
    assert_eq!(queue.taken().len(), 1);
    running.stop().await;
}

/// A client that connects and sends nothing (or stops inside the headers)
/// does not hold a connection slot forever: it is closed after `timeout`.
#[tokio::test]
async fn silent_clients_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let queue = TestQueue::new(Ok("Q".into()));
    let running = start(edge(&queue).timeout(Duration::from_millis(500))).await;
    for sent in [&b""[..], b"POST / HTTP/1.1\r\nHost: x\r\n"] {
        let mut stream = tokio::net::TcpStream::connect(running.addr).await.unwrap();
        stream.write_all(sent).await.unwrap();
        let mut buf = Vec::new();
        // End of stream or a reset (possibly after a 408 answer): either way
        // the edge let go of the connection.
        let _closed = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut buf))
            .await
            .expect("the edge closes a silent connection");
    }
    running.stop().await;
}

/// Refuses one sender at MAIL and messages containing "SPAM" at the end of
/// the data; notes every hook it sees.
struct SenderAndContent {
    seen: Arc<Mutex<Vec<String>>>,
}

impl slimta::edge::Validators for SenderAndContent {
    async fn mail(
        &self,
        reply: &mut Reply,
        session: &slimta::edge::SessionInfo,
        sender: &str,
        _: &slimta::smtp::MailParams,
    ) {
        self.seen
            .lock()
            .unwrap()
            .push(format!("mail {sender} via {:?}", session.client.protocol));
        if sender == "bad@x.test" {
            reply.set(550, "5.7.1", "Sender refused");
        }
    }
    async fn rcpt(
        &self,
        _: &mut Reply,
        _: &slimta::edge::SessionInfo,
        recipient: &str,
        _: &slimta::smtp::RcptParams,
    ) {
        self.seen.lock().unwrap().push(format!("rcpt {recipient}"));
    }
    async fn have_data(
        &self,
        reply: &mut Reply,
        _: &slimta::edge::SessionInfo,
        envelope: &mut Envelope,
    ) {
        self.seen.lock().unwrap().push("have_data".into());
        if envelope.message.windows(4).any(|w| w == b"SPAM") {
            reply.set(554, "5.7.1", "Content refused");
        }
    }
}

/// The HTTP edge runs the same checks as the SMTP edge: relay control
/// first (its refusal stops the chain), then the configured links for the
/// sender, each recipient and the message.
#[tokio::test]
async fn the_validator_chain_judges_sender_recipients_and_message() {
    let dir = tempfile::tempdir().unwrap();
    let clean = message_file(dir.path(), b"Subject: x\r\n\r\nclean\r\n");
    let spam = dir.path().join("spam.eml");
    std::fs::write(&spam, b"Subject: x\r\n\r\nSPAM\r\n").unwrap();
    let queue = TestQueue::new(Ok("Q".into()));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let checks = slimta::edge::ValidatorChain::new().then(SenderAndContent { seen: seen.clone() });
    let running = start(edge(&queue).validators(checks)).await;
    let url = format!("http://{}/", running.addr);
    let post = async |file: &Path, sender: &str, rcpt: &str| {
        curl_owned(&post_args(&url, file, Some(&b64(sender)), &[&b64(rcpt)])).await
    };

    let got = post(&clean, "bad@x.test", "a@example.test").await;
    assert_eq!(got.status, 500);
    assert_eq!(
        got.header("x-smtp-reply"),
        Some(r#"550; message="5.7.1 Sender refused""#)
    );
    assert_eq!(*seen.lock().unwrap(), ["mail bad@x.test via Http"]);
    seen.lock().unwrap().clear();

    // Relay control refuses first: the link never sees that recipient.
    let got = post(&clean, "a@x.test", "c@elsewhere.test").await;
    assert_eq!(got.status, 500);
    assert_eq!(*seen.lock().unwrap(), ["mail a@x.test via Http"]);
    seen.lock().unwrap().clear();

    let got = post(&spam, "a@x.test", "b@example.test").await;
    assert_eq!(got.status, 500);
    assert_eq!(
        got.header("x-smtp-reply"),
        Some(r#"554; message="5.7.1 Content refused""#)
    );
    assert!(queue.taken().is_empty());
    seen.lock().unwrap().clear();

    let got = post(&clean, "a@x.test", "b@example.test").await;
    assert_eq!(got.status, 204);
    assert_eq!(
        *seen.lock().unwrap(),
        ["mail a@x.test via Http", "rcpt b@example.test", "have_data"]
    );
    assert_eq!(queue.taken().len(), 1);
    running.stop().await;
}

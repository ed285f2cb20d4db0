//! The SMTP client's TLS and AUTH against a real server: aiosmtpd (PyPI) with
//! STARTTLS or implicit TLS and AUTH PLAIN/LOGIN/CRAM-MD5, certificates made
//! here with rcgen, and our own SMTP edge (implicit TLS). A scripted server covers the one byte-exact case no real
//! server produces: data after the STARTTLS reply (CVE-2011-0411).
#![cfg(feature = "tls")]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use slimta::relay::smtp::{ClientOptions, Credentials, MxSmtpRelay, StaticSmtpRelay, TlsMode};
use slimta::{Delivery, Envelope, Relay, RelayError};
use test_peers::{AioMessage, AioSmtpd};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// A CA and a server certificate for 127.0.0.1 and localhost, as PEM files.
struct TestPki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn test_pki() -> TestPki {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "slimta relay test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let write = |name: &str, pem: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    TestPki {
        ca: write("ca.pem", ca_cert.pem()),
        cert: write("cert.pem", cert.pem()),
        key: write("key.pem", key.serialize_pem()),
        _dir: dir,
    }
}

fn server(pki: &TestPki, mode: &str, extra: &[&str]) -> AioSmtpd {
    let mut args = vec![
        "--mode",
        mode,
        "--cert",
        pki.cert.to_str().unwrap(),
        "--key",
        pki.key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    AioSmtpd::start(&args)
}

fn options() -> ClientOptions {
    ClientOptions::new()
        .ehlo_as("relay.test")
        .connect_timeout(Duration::from_secs(5))
        .command_timeout(Duration::from_secs(20))
}

fn relay_with(addr: SocketAddr, options: ClientOptions) -> StaticSmtpRelay {
    StaticSmtpRelay::new(addr.ip().to_string(), addr.port()).options(options)
}

fn relay_to(addr: SocketAddr) -> StaticSmtpRelay {
    relay_with(addr, options())
}

const MESSAGE: &[u8] = b"From: sender@x.test\r\nSubject: tls\r\n\r\nsecret\r\n";

async fn send(relay: &StaticSmtpRelay) -> Result<Delivery, RelayError> {
    let env = Envelope::new(
        "sender@x.test",
        vec!["rcpt@y.test".into()],
        MESSAGE.to_vec(),
    );
    relay.attempt(&env, 1).await
}

fn only_message(server: &AioSmtpd) -> AioMessage {
    let got = server.messages();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].content, MESSAGE);
    assert_eq!(got[0].get("rcpt"), Some("rcpt@y.test"));
    got[0].clone()
}

#[tokio::test]
async fn starttls_with_a_verified_certificate_then_ehlo_again() {
    let pki = test_pki();
    let server = server(&pki, "starttls", &[]);
    let relay = relay_with(server.addr(), options().tls_ca_file(&pki.ca));
    let d = send(&relay).await.expect("delivered");
    assert!(d.result_for(0).is_ok(), "{:?}", d.result_for(0));
    let m = only_message(&server);
    assert_eq!(m.get("tls"), Some("True"));
    // aiosmtpd forgets the greeting at STARTTLS: MAIL needs a new EHLO.
    assert_eq!(m.get("helo"), Some("relay.test"));
}

#[tokio::test]
async fn an_untrusted_certificate_fails_unless_verification_is_off() {
    let pki = test_pki();
    let server = server(&pki, "starttls", &[]);
    // The system store does not know the test CA.
    let e = send(&relay_to(server.addr())).await.expect_err("untrusted");
    assert!(e.is_transient(), "{e}");
    assert_eq!(e.reply().enhanced().unwrap().to_string(), "4.7.5", "{e}");
    assert!(e.reply().text().contains("TLS handshake"), "{e}");
    assert!(server.messages().is_empty());

    let relay = relay_with(server.addr(), options().tls_verify(false));
    send(&relay).await.expect("delivered without verification");
    assert_eq!(only_message(&server).get("tls"), Some("True"));
}

#[tokio::test]
async fn implicit_tls_from_the_first_byte() {
    let pki = test_pki();
    let server = server(&pki, "implicit", &[]);
    let relay = relay_with(
        server.addr(),
        options().tls(TlsMode::Immediate).tls_ca_file(&pki.ca),
    );
    send(&relay).await.expect("delivered");
    assert_eq!(only_message(&server).get("tls"), Some("True"));
}

#[tokio::test]
async fn required_tls_without_starttls_is_transient_and_opportunistic_goes_plain() {
    let pki = test_pki();
    let server = server(&pki, "plain", &[]);
    let e = send(&relay_with(server.addr(), options().tls(TlsMode::Required)))
        .await
        .expect_err("no STARTTLS offered");
    assert!(e.is_transient(), "{e}");
    assert_eq!(e.reply().code(), 451);
    assert_eq!(e.reply().enhanced().unwrap().to_string(), "4.7.4", "{e}");
    assert!(server.messages().is_empty());

    send(&relay_to(server.addr())).await.expect("plaintext");
    assert_eq!(only_message(&server).get("tls"), Some("False"));
}

#[tokio::test]
async fn auth_uses_the_strongest_offered_mechanism() {
    let pki = test_pki();
    for (mechs, want) in [
        ("PLAIN LOGIN CRAM-MD5", "CRAM-MD5"),
        ("PLAIN LOGIN", "PLAIN"),
        ("LOGIN", "LOGIN"),
    ] {
        let server = server(
            &pki,
            "starttls",
            &[
                "--mechs",
                mechs,
                "--user",
                "relayuser",
                "--password",
                "s3cret pass",
            ],
        );
        let relay = relay_with(
            server.addr(),
            options()
                .tls_ca_file(&pki.ca)
                .credentials(Credentials::new("relayuser", "s3cret pass")),
        );
        send(&relay)
            .await
            .unwrap_or_else(|e| panic!("{mechs}: {e}"));
        let m = only_message(&server);
        assert_eq!(m.get("mech"), Some(want), "{mechs}");
        assert_eq!(m.get("auth"), Some("relayuser"), "{mechs}");
    }
}

#[tokio::test]
async fn auth_failures_are_classified_and_name_the_step() {
    let pki = test_pki();
    let server = server(
        &pki,
        "starttls",
        &[
            "--mechs",
            "PLAIN LOGIN CRAM-MD5",
            "--user",
            "u",
            "--password",
            "right",
        ],
    );
    let relay = relay_with(
        server.addr(),
        options()
            .tls_ca_file(&pki.ca)
            .credentials(Credentials::new("u", "wrong")),
    );
    let e = send(&relay).await.expect_err("bad password");
    assert!(e.is_permanent(), "{e}");
    assert_eq!(e.reply().code(), 535, "{e}");
    assert_eq!(e.reply().enhanced().unwrap().to_string(), "5.7.8", "{e}");
    let text = e.reply().text();
    assert!(
        text.contains("Authentication as u with CRAM-MD5 failed"),
        "{e}"
    );
    assert!(text.contains("(in reply to AUTH)"), "{e}");
    let server2 = self::server(
        &pki,
        "starttls",
        &[
            "--mechs",
            "PLAIN",
            "--auth-reply",
            "454 4.7.0 Temporary authentication failure",
        ],
    );
    let relay = relay_with(
        server2.addr(),
        options()
            .tls_ca_file(&pki.ca)
            .credentials(Credentials::new("u", "right")),
    );
    let e = send(&relay).await.expect_err("454");
    assert!(e.is_transient(), "{e}");
    assert_eq!(e.reply().code(), 454, "{e}");
    assert!(server.messages().is_empty() && server2.messages().is_empty());
}

#[tokio::test]
async fn no_password_in_plaintext_unless_allowed() {
    let pki = test_pki();
    let server = server(
        &pki,
        "plain",
        &[
            "--auth-plaintext",
            "--mechs",
            "PLAIN LOGIN",
            "--user",
            "u",
            "--password",
            "p",
        ],
    );
    let with_password = options().credentials(Credentials::new("u", "p"));
    let relay = relay_with(server.addr(), with_password.clone());
    let e = send(&relay).await.expect_err("would reveal the password");
    assert!(e.is_transient(), "{e}");
    assert!(e.reply().text().contains("reveal the password"), "{e}");
    assert!(server.messages().is_empty());

    send(&relay_with(
        server.addr(),
        with_password.allow_plaintext_auth(true),
    ))
    .await
    .expect("allowed");
    let m = only_message(&server);
    assert_eq!(
        (m.get("mech"), m.get("tls")),
        (Some("PLAIN"), Some("False"))
    );
}

#[tokio::test]
async fn mx_delivery_is_opportunistic_without_verification() {
    let pki = test_pki();
    let server = server(&pki, "starttls", &[]);
    let dns = test_peers::Dnsmasq::start(&[]);
    let resolver = slimta::dns::Resolver::new(&[dns.addr()]).unwrap();
    let relay = MxSmtpRelay::new(resolver)
        .force_mx("y.test", "127.0.0.1")
        .port(server.addr().port())
        .options(options());
    let env = Envelope::new(
        "sender@x.test",
        vec!["rcpt@y.test".into()],
        MESSAGE.to_vec(),
    );
    let d = relay.attempt(&env, 1).await.expect("delivered");
    assert!(d.result_for(0).is_ok(), "{:?}", d.result_for(0));
    assert_eq!(only_message(&server).get("tls"), Some("True"));
}

/// A server that answers STARTTLS with `220` and, in the same write, a
/// second reply that a vulnerable client would read inside TLS.
#[tokio::test]
async fn server_bytes_after_the_starttls_reply_fail_the_session() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let script = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (r, mut w) = stream.into_split();
        let mut lines = BufReader::new(r).lines();
        w.write_all(b"220 scripted ESMTP\r\n").await.unwrap();
        let mut seen = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push(line.clone());
            if line.starts_with("EHLO") {
                w.write_all(b"250-scripted\r\n250-PIPELINING\r\n250 STARTTLS\r\n")
                    .await
                    .unwrap();
            } else if line == "STARTTLS" {
                w.write_all(b"220 2.0.0 Ready to start TLS\r\n250 2.0.0 injected\r\n")
                    .await
                    .unwrap();
            }
        }
        seen
    });
    let relay = relay_with(addr, options().tls(TlsMode::Required).tls_verify(false));
    let e = send(&relay).await.expect_err("injection detected");
    assert!(e.is_transient(), "{e}");
    assert!(e.reply().text().contains("after its STARTTLS reply"), "{e}");
    let seen = script.await.unwrap();
    assert_eq!(
        seen,
        ["EHLO relay.test", "STARTTLS"],
        "nothing after STARTTLS"
    );
}

#[tokio::test]
async fn pooled_tls_sessions_are_reused() {
    let pki = test_pki();
    let server = server(
        &pki,
        "starttls",
        &["--mechs", "PLAIN", "--user", "u", "--password", "p"],
    );
    let relay = relay_with(
        server.addr(),
        options()
            .tls_ca_file(&pki.ca)
            .credentials(Credentials::new("u", "p"))
            .pool_size(1)
            .idle_timeout(Duration::from_secs(30)),
    );
    for _ in 0..3 {
        send(&relay).await.expect("delivered");
    }
    let got = server.messages();
    assert_eq!(got.len(), 3);
    for m in &got {
        assert_eq!((m.get("tls"), m.get("auth")), (Some("True"), Some("u")));
    }
    let port = got[0].get("peer_port");
    assert!(port.is_some());
    assert!(got.iter().all(|m| m.get("peer_port") == port), "{got:?}");
}

/// Records what our edge hands over.
struct Recorder(std::sync::Mutex<Vec<Envelope>>);

impl slimta::Handoff for Recorder {
    async fn handoff(&self, envelope: Envelope) -> Vec<slimta::HandoffResult> {
        let recipients = envelope.recipients.clone();
        self.0.lock().unwrap().push(envelope);
        vec![slimta::HandoffResult {
            recipients,
            result: Ok("Q1".into()),
        }]
    }
}

/// A second slimta: our SMTP edge with implicit TLS, verified with the
/// test CA. (STARTTLS and AUTH follow when the edge's driver does them.)
#[tokio::test]
async fn implicit_tls_into_our_own_smtp_edge() {
    use slimta::edge::smtp::SmtpEdge;
    use slimta::edge::tls::{ReloadableTls, TlsConfig};
    let pki = test_pki();
    let tls = ReloadableTls::new(TlsConfig::new(&pki.cert, &pki.key)).unwrap();
    let recorder = std::sync::Arc::new(Recorder(std::sync::Mutex::new(Vec::new())));
    let edge = SmtpEdge::new("mx.example.test", recorder.clone())
        .tls(tls)
        .tls_immediately(true);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_stop, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move { edge.serve(listener, rx).await });

    let relay = relay_with(addr, options().tls(TlsMode::Immediate).tls_ca_file(&pki.ca));
    let d = send(&relay).await.expect("queued by our edge");
    assert_eq!(d.reply().code(), 250, "{:?}", d.reply());
    let got = recorder.0.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message, MESSAGE);
    assert_eq!(got[0].client.helo.as_deref(), Some("relay.test"));
    let info = got[0].client.tls.clone().expect("the edge saw TLS");
    assert!(info.protocol.starts_with("TLS"), "{info:?}");
}

//! The examples run end to end: each is started as its own program on a
//! free port, pointed at a real peer, and sent mail with swaks.
//!
//! `cargo test` builds the examples before it runs this; the test still
//! asks cargo for the one it runs (with its own features, so that is a
//! no-op then), which makes `--test examples_e2e` alone work too.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use test_peers::{Dnsmasq, Dovecot, Peer, SmtpSink, free_port, swaks};

/// The example `name`, built (a no-op when it is fresh) with this test's
/// features and profile, so the run never uses a stale binary.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let features: Vec<&str> = [
        ("mx", cfg!(feature = "mx")),
        ("tls", cfg!(feature = "tls")),
        ("http", cfg!(feature = "http")),
        ("http-relay", cfg!(feature = "http-relay")),
    ]
    .into_iter()
    .filter_map(|(feature, on)| on.then_some(feature))
    .collect();
    let mut build = Command::new(env!("CARGO"));
    build
        .args([
            "build",
            "-p",
            "slimta",
            "--example",
            name,
            "--no-default-features",
        ])
        .arg(format!("--features={}", features.join(",")));
    if dir.ends_with("release") {
        build.arg("--release");
    }
    let status = build.status().expect("run cargo build --example");
    assert!(status.success(), "cargo build --example {name} failed");
    dir.join("examples").join(name)
}

#[test]
fn mda_example_delivers_into_dovecot_and_refuses_unknown_users() {
    let dovecot = Dovecot::start(&[("alice", None)]);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut command = Command::new(example("mda"));
    command
        .arg(addr.to_string())
        .arg(dovecot.config())
        .arg("alice");
    let _mda = Peer::spawn(command, addr, "the mda example");

    let unknown = swaks(addr, &["--from", "s@x.test", "--to", "ghost@example.test"]);
    assert!(!unknown.status.success());
    let transcript = String::from_utf8_lossy(&unknown.stdout);
    assert!(transcript.contains("550 5.1.1"), "{transcript}");

    let sent = swaks(
        addr,
        &[
            "--from",
            "s@x.test",
            "--to",
            "alice@example.test",
            "--header",
            "Subject: via the example",
            "--body",
            "hello mda",
        ],
    );
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stdout)
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got = dovecot.messages("alice");
    while got.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        got = dovecot.messages("alice");
    }
    assert_eq!(got.len(), 1, "{}", dovecot.log());
    let message = String::from_utf8_lossy(&got[0]);
    for needle in [
        "Subject: via the example",
        "hello mda",
        "Received: ",
        "Message-Id: ",
        "Date: ",
    ] {
        assert!(message.contains(needle), "no {needle:?} in {message}");
    }
}

#[test]
fn msa_example_wants_starttls_then_auth_and_relays_to_the_smart_host() {
    let sink = SmtpSink::start(&[], true);
    let pki = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let (cert_file, key_file) = (pki.path().join("cert.pem"), pki.path().join("key.pem"));
    std::fs::write(&cert_file, params.self_signed(&key).unwrap().pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut command = Command::new(example("msa"));
    command
        .arg(addr.to_string())
        .args([&cert_file, &key_file])
        .arg(sink.addr().to_string())
        .args(["alice", "secret"]);
    let _msa = Peer::spawn(command, addr, "the msa example");
    let envelope = ["--from", "alice@x.test", "--to", "bob@y.test"];
    let auth = [
        "--auth",
        "PLAIN",
        "--auth-user",
        "alice",
        "--auth-password",
        "secret",
    ];

    let no_auth = swaks(addr, &envelope);
    assert!(
        String::from_utf8_lossy(&no_auth.stdout).contains("530 5.7.0"),
        "{no_auth:?}"
    );
    let plain_before_tls = swaks(addr, &[&envelope[..], &auth[..]].concat());
    assert!(!plain_before_tls.status.success(), "{plain_before_tls:?}");
    let bad_password = swaks(
        addr,
        &[&envelope[..], &["--tls"], &auth[..5], &["wrong"]].concat(),
    );
    assert!(!bad_password.status.success(), "{bad_password:?}");
    assert!(sink.messages().is_empty());

    let sent = swaks(addr, &[&envelope[..], &["--tls"], &auth[..]].concat());
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stdout)
    );
    let got = sink.wait_for_messages(1, Duration::from_secs(30));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].rcpt_args, vec!["<bob@y.test>"]);
}

#[cfg(feature = "mx")]
#[test]
fn mta_example_accepts_its_domains_and_delivers_by_mx() {
    let sink = SmtpSink::start(&[], true);
    let mx = format!("--host-record=mx.example.test,{}", sink.addr().ip());
    let dns = Dnsmasq::start(&["--mx-host=example.test,mx.example.test,10", &mx]);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut command = Command::new(example("mta"));
    command
        .arg(addr.to_string())
        .arg("example.test")
        .env("MTA_NAMESERVER", dns.addr().to_string())
        .env("MTA_PORT", sink.addr().port().to_string());
    let _mta = Peer::spawn(command, addr, "the mta example");

    let elsewhere = swaks(addr, &["--from", "a@x.test", "--to", "c@elsewhere.test"]);
    assert!(
        String::from_utf8_lossy(&elsewhere.stdout).contains("550 5.7.1"),
        "{elsewhere:?}"
    );
    let sent = swaks(addr, &["--from", "a@x.test", "--to", "bob@example.test"]);
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stdout)
    );
    let got = sink.wait_for_messages(1, Duration::from_secs(30));
    assert_eq!(got.len(), 1, "the MX (smtp-sink) got nothing");
    assert_eq!(got[0].rcpt_args, vec!["<bob@example.test>"]);
}
